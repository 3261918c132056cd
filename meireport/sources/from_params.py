"""Turn the ``source`` section of a params file into sessions (simulating the default if asked)."""

from __future__ import annotations

from pathlib import Path

from meireport.errors import MeireportError
from meireport.sources.cache import cached_session_ids
from meireport.sources.nwb import Session, UnitFilter, open_session
from meireport.sources.simulate import DEFAULT_SESSION_ID, simulate_session

__all__ = ["source_location", "ensure_source", "open_source"]


def source_location(source: dict, run_dir) -> Path:
    """Cache folder or NWB file the source points to (simulated default: ``<run_dir>/cache``)."""
    if source.get("path"):
        return Path(source["path"]).expanduser().resolve()
    if source["kind"] != "simulated":
        raise MeireportError(f"source.path: required for kind '{source['kind']}'")
    return (Path(run_dir) / "cache").resolve()


def ensure_source(source: dict, run_dir, progress: bool = True) -> list[int]:
    """Make sure the source exists (simulate it if needed); return the session ids to report.

    Examples
    --------
    >>> import tempfile
    >>> src = {"kind": "simulated", "n_images": 4, "n_repeats": 2, "seed": 0}
    >>> ensure_source(src, tempfile.mkdtemp(), progress=False)
    [700000001]
    """
    where = source_location(source, run_dir)
    ids = source.get("session_ids")
    if source["kind"] == "simulated":
        for sid in ids or [DEFAULT_SESSION_ID]:
            simulate_session(where, seed=source.get("seed", 0), session_id=sid,
                             n_images=source.get("n_images", 118),
                             n_repeats=source.get("n_repeats", 50), progress=progress)
        return list(ids or [DEFAULT_SESSION_ID])
    if not where.exists():
        raise MeireportError(f"source.path: {where} does not exist")
    if source["kind"] == "nwb":
        with open_session(where) as s:
            found = [s.session_id]
    else:
        found = cached_session_ids(where)
        if not found:
            raise MeireportError(f"source.path: {where} holds no session_<id>/session_<id>.nwb")
    if ids:
        missing = [i for i in ids if i not in found]
        if missing:
            raise MeireportError(
                f"source.session_ids: {missing} not found in {where}; available: {found}"
            )
        return list(ids)
    return found


def open_source(source: dict, session_id: int, run_dir, extract: dict | None = None) -> Session:
    """Open one session of the source with the unit filter of the ``extract`` section."""
    ex = extract or {}
    flt = UnitFilter(
        amplitude_cutoff_max=ex.get("amplitude_cutoff_max", 0.1),
        presence_ratio_min=ex.get("presence_ratio_min", 0.95),
        isi_violations_max=ex.get("isi_violations_max", 0.5),
    )
    where = source_location(source, run_dir)
    sid = None if source["kind"] == "nwb" else int(session_id)
    return open_session(where, sid, unit_filter=flt)
