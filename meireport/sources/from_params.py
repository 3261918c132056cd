"""Turn the ``source`` section of a params file into sessions (simulating the default if asked).

:func:`ensure_source` is the run's preflight: before any notebook runs it checks every path of
the section and opens every session to check what the report needs of it (the area's units, the
``natural_scenes`` and ``gabors`` stimuli, one readable template per natural scene). Each
problem is one :class:`~meireport.errors.MeireportError` line naming the params field or the
file. The checks read headers and tables only, never spike times, pixels or other large data.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from meireport.areas import area_unit_ids
from meireport.errors import MeireportError
from meireport.sources.cache import (
    TEMPLATES_DIRNAME,
    cached_session_ids,
    check_path,
    one_line,
    template_header,
    template_path,
)
from meireport.sources.nwb import Session, UnitFilter, open_remote, open_session
from meireport.sources.simulate import DEFAULT_SESSION_ID, simulate_session

__all__ = ["source_location", "ensure_source", "open_source", "preflight_session",
           "REQUIRED_COLUMNS", "REMOTE_KINDS"]

#: Source kinds read over HTTP(S) by byte ranges.
REMOTE_KINDS = ("url", "dandi")

#: Stimuli the report needs, with the columns of their tables it reads.
REQUIRED_COLUMNS: dict[str, tuple[str, ...]] = {
    "natural_scenes": ("frame",),
    "gabors": ("orientation", "x_position", "y_position", "size", "spatial_frequency",
               "contrast"),
}

_FETCH_HINT = ("; expected an AllenSDK cache folder (`meireport fetch --session ID --cache DIR` "
               "fills one)")


def source_location(source: dict, run_dir) -> Path:
    """Cache folder or NWB file the source points to (simulated default: ``<run_dir>/cache``).

    For a remote source (``url``, ``dandi``): the byte-range cache folder.
    """
    if source["kind"] in REMOTE_KINDS:
        return _remote_cache(source)
    if source.get("path"):
        return Path(source["path"]).expanduser().resolve()
    if source["kind"] != "simulated":
        raise MeireportError(f"source.path: required for kind '{source['kind']}'")
    return (Path(run_dir) / "cache").resolve()


def _remote_cache(source: Mapping) -> Path:
    from meireport.sources.remote import default_cache_dir

    return Path(source.get("cache_dir") or default_cache_dir()).expanduser().resolve()


def _remote_url(source: Mapping, session_id: int | None) -> tuple[str, str]:
    """The URL a remote source reads for a session, and the field its errors name."""
    if source["kind"] == "url":
        return source["url"], "source.url"
    from meireport.sources.dandi import dandi_url

    url = dandi_url(source.get("dandiset", "000021"), int(session_id), source.get("version"),
                    cache_dir=_remote_cache(source))
    return url, f"source (dandiset {source.get('dandiset', '000021')}, session {session_id})"


def _check_location(source: Mapping, where: Path) -> None:
    """``source.path`` exists and is what its kind needs (a simulated one may not exist yet)."""
    kind = source["kind"]
    if source.get("templates") is not None:
        check_path(source["templates"], "folder", "source.templates")
    if kind in REMOTE_KINDS:
        if where.exists() and not where.is_dir():
            raise MeireportError(f"source.cache_dir: {where} is not a folder; expected the "
                                 "folder of the byte-range cache")
    elif kind == "allen_cache":
        if where.is_file():
            raise MeireportError(f"source.path: {where} is a file; kind allen_cache expects a "
                                 "cache folder (use kind: nwb for one .nwb file)")
        check_path(where, "folder", "source.path", _FETCH_HINT)
    elif kind == "nwb":
        if where.is_dir():
            raise MeireportError(f"source.path: {where} is a folder; kind nwb expects an .nwb "
                                 "file (use kind: allen_cache for a cache folder)")
        check_path(where, "file", "source.path")
    elif where.exists() and not where.is_dir():
        raise MeireportError(f"source.path: {where} is not a folder; kind simulated writes its "
                             "cache into a folder")


#: A reader error's field (``path: ...``) as the params field it comes from.
_PARAMS_FIELD = {"path": "source.path", "session_id": "source.session_ids",
                 "area": "extract.area", "window": "extract.window"}


@contextmanager
def _field(name: str) -> Iterator[None]:
    """Name the params field in a reader error (``path: ...`` -> ``source.path: ...``)."""
    try:
        yield
    except MeireportError as e:
        text = str(e)
        head, sep, rest = text.partition(": ")
        if sep and (head.startswith(("source.", "source ")) or head == name):  # named already
            raise
        if sep and head in _PARAMS_FIELD:
            raise MeireportError(f"{_PARAMS_FIELD[head]}: {rest}") from None
        raise MeireportError(f"{name}: {text}") from None


def session_seed(seed: int, session_id: int) -> int:
    """The simulator's seed of one session of a simulated source.

    The default session keeps ``source.seed`` itself; every other session id draws units and
    spikes of its own from ``seed`` and its id, so that several simulated sessions of one source
    differ as recorded sessions do (and a session keeps its units whatever the list's order).

    Examples
    --------
    >>> session_seed(0, DEFAULT_SESSION_ID), session_seed(0, 700000002) != 0
    (0, True)
    >>> session_seed(0, 700000002) == session_seed(0, 700000002) != session_seed(1, 700000002)
    True
    """
    if int(session_id) == DEFAULT_SESSION_ID:
        return int(seed)
    return int(np.random.SeedSequence([int(seed), int(session_id)]).generate_state(1)[0])


def ensure_source(source: dict, run_dir, progress: bool = True,
                  extract: Mapping | None = None) -> list[int]:
    """Make sure the source exists (simulate it if needed), check it; return the session ids.

    Every session to report is opened and checked by :func:`preflight_session` (with
    ``extract``, the params' ``extract`` section, also its area and unit filter), so that a bad
    source fails here, in one line, before anything runs.

    Raises
    ------
    MeireportError
        One line naming the params field or the file: a path that does not exist or is the
        wrong kind, a session that is missing, unreadable, lacks a stimulus, units of the area
        or its templates.

    Examples
    --------
    >>> import tempfile
    >>> src = {"kind": "simulated", "n_images": 4, "n_repeats": 2, "seed": 0}
    >>> ensure_source(src, tempfile.mkdtemp(), progress=False, extract={"area": "VISam"})
    [700000001]
    """
    where = source_location(source, run_dir)
    _check_location(source, where)
    ids = source.get("session_ids")
    if source["kind"] == "simulated":
        scale = source.get("scale", "default")
        if scale == "full":  # a real session's shape and size (meireport.sources.fullscale)
            from meireport.sources.fullscale import FULL_SESSION_ID, simulate_full_session

            for field, fixed in (("n_images", 118), ("n_repeats", 50)):
                if source.get(field, fixed) != fixed:
                    raise MeireportError(
                        f"source.{field}: must be {fixed} (or left out) with scale: full, got "
                        f"{source[field]!r} (the full-scale session's natural scenes are a "
                        "real session's: 118 images x 50 repeats)")
            default_ids = [FULL_SESSION_ID]
            for sid in ids or default_ids:
                simulate_full_session(where, seed=source.get("seed", 0), session_id=sid,
                                      progress=progress)
        elif scale == "default":
            default_ids = [DEFAULT_SESSION_ID]
            for sid in ids or default_ids:
                simulate_session(where, seed=session_seed(source.get("seed", 0), sid),
                                 session_id=sid,
                                 n_images=source.get("n_images", 118),
                                 n_repeats=source.get("n_repeats", 50), progress=progress)
        else:
            raise MeireportError(f"source.scale: expected 'default' or 'full', got {scale!r}")
        found = list(ids or default_ids)
    elif source["kind"] == "nwb":
        with _field("source.path"), open_session(where) as s:
            found = [s.session_id]
    elif source["kind"] == "url":
        with _field("source.url"), open_source(source, None, run_dir, extract) as s:
            found = [s.session_id]
    elif source["kind"] == "dandi":
        found = list(ids)
    else:
        try:
            found = cached_session_ids(where)
        except OSError as e:
            raise MeireportError(f"source.path: {where} cannot be listed ({one_line(e)})") from None
        if not found:
            raise MeireportError(
                f"source.path: {where} holds no session_<id>/session_<id>.nwb{_FETCH_HINT}")
    if ids:
        missing = [i for i in ids if i not in found]
        if missing:
            fetch = (f" (`meireport fetch --session {missing[0]} --cache {where}` fetches it)"
                     if source["kind"] == "allen_cache" else "")
            raise MeireportError(
                f"source.session_ids: {missing} not found in {where}; available: {found}{fetch}"
            )
        found = list(ids)
    for sid in found:
        preflight_session(source, sid, run_dir, extract)
    return found


def _unit_filter(extract: Mapping | None) -> UnitFilter:
    ex = extract or {}
    return UnitFilter(
        amplitude_cutoff_max=ex.get("amplitude_cutoff_max", 0.1),
        presence_ratio_min=ex.get("presence_ratio_min", 0.95),
        isi_violations_max=ex.get("isi_violations_max", 0.5),
    )


def open_source(source: dict, session_id: int | None, run_dir,
                extract: dict | None = None) -> Session:
    """Open one session of the source with the unit filter of the ``extract`` section."""
    where = source_location(source, run_dir)
    if source["kind"] in REMOTE_KINDS:
        url, field = _remote_url(source, session_id)
        sid = int(session_id) if session_id is not None else None
        return open_remote(url, source.get("templates"), sid, _unit_filter(extract),
                           timeout_s=source.get("timeout_s", 30.0), cache_dir=where, field=field)
    sid = None if source["kind"] == "nwb" else int(session_id)
    s = open_session(where, sid, unit_filter=_unit_filter(extract))
    if source.get("templates") is not None:  # the images from elsewhere than the cache
        s.templates_dir = Path(source["templates"]).expanduser().resolve()
    return s


def preflight_session(source: dict, session_id: int, run_dir,
                      extract: Mapping | None = None) -> None:
    """Check one session has what the report reads, cheaply; raise one line if not.

    Opens the session (a truncated or damaged file fails here), reads its units and stimulus
    tables (not the spike times), checks the ``natural_scenes`` and ``gabors`` stimuli and the
    columns the report reads of them, the area of ``extract`` (when given) has units that pass
    its unit filter, and every natural scene shown has its template: a readable TIFF image, all
    of one size (headers only; no pixel is decoded).
    """
    with _field("source.path"):
        s = open_source(source, session_id, run_dir, extract)
    with s:
        what = f"session {s.session_id} ({s.where})"
        try:
            names = s.stimulus_names
            tables = {name: s.stimulus_table(name) for name in REQUIRED_COLUMNS if name in names}
            units = s.units
        except MeireportError as e:
            raise MeireportError(f"source.path: {e}") from None
        except (OSError, KeyError, ValueError, TypeError) as e:  # damaged inside the file
            raise MeireportError(
                f"source.path: {s.where} cannot be read as an Allen-format NWB ({one_line(e)})"
            ) from None
        for name, columns in REQUIRED_COLUMNS.items():
            if name not in tables:
                raise MeireportError(
                    f"source.path: {what} has no '{name}' stimulus; the report needs "
                    f"{' and '.join(REQUIRED_COLUMNS)}; available: {', '.join(names) or 'none'}")
            lacking = [c for c in columns if c not in tables[name]]
            if lacking:
                raise MeireportError(
                    f"source.path: the '{name}' table of {what} has no column "
                    f"{', '.join(lacking)}; expected an Allen-format stimulus table")
        if extract is not None:
            area = extract.get("area")
            with _field("extract.area"):
                ids = area_unit_ids(s, area)
            if not len(ids):
                raise MeireportError(
                    f"extract: no unit of {what} passes the unit filter ({len(units)} of "
                    f"{len(s.all_units)} units do; amplitude_cutoff_max, presence_ratio_min, "
                    "isi_violations_max)")
        _check_templates(s, tables["natural_scenes"]["frame"])


def _check_templates(s: Session, frames) -> None:
    """Every shown frame's template exists and is a readable TIFF of one size (headers only)."""
    shown = sorted({int(k) for k in np.asarray(frames, dtype=float) if np.isfinite(k) and k >= 0})
    if not shown:
        raise MeireportError(f"source.path: the natural_scenes table of session {s.session_id} "
                             f"({s.where}) shows no image (only the blank frame -1)")
    if s.templates_dir is None and s.remote is not None:
        raise MeireportError(
            f"source.templates: required for a remote session ({s.where} holds the "
            f"natural_scenes table but not the {len(shown)} images); set it to a folder of "
            "natural_scene_<k>.tiff, e.g. an AllenSDK cache's natural_scene_templates/ "
            "(`meireport fetch --templates-only --cache DIR` in `nox -s allen`'s env downloads "
            "only the images)")
    if s.templates_dir is None:
        raise MeireportError(
            f"natural_scene_templates: no {TEMPLATES_DIRNAME} folder beside {s.path} (looked in "
            f"{s.path.parent.parent} and {s.path.parent}); expected "
            f"<cache>/{TEMPLATES_DIRNAME}/natural_scene_<k>.tiff for the {len(shown)} scenes "
            "shown")
    first = None
    for k in shown:
        f = template_path(s.templates_dir, k)
        if not f.exists():
            raise MeireportError(
                f"natural_scene_templates: {f} does not exist; session {s.session_id} shows "
                f"natural scene {k} (expected natural_scene_<k>.tiff for frames "
                f"{shown[0]}..{shown[-1]})")
        shape, _ = template_header(f)
        if first is None:
            first = (f, shape)
        elif shape[:2] != first[1][:2]:
            raise MeireportError(
                f"natural_scene_templates: {f} is {shape[0]} x {shape[1]} px; expected "
                f"{first[1][0]} x {first[1][1]} like {first[0].name}")
