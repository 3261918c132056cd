"""AllenSDK cache layout: find a session's NWB file and the natural-scene templates, read-only.

An AllenSDK ``EcephysProjectCache`` folder looks like::

    <cache>/session_<id>/session_<id>.nwb
    <cache>/natural_scene_templates/natural_scene_<k>.tiff

Nothing here writes to, moves or deletes anything in the cache.
"""

from __future__ import annotations

import re
from pathlib import Path

from meireport.errors import MeireportError

__all__ = ["resolve_session", "cached_session_ids", "find_templates_dir", "TEMPLATES_DIRNAME"]

TEMPLATES_DIRNAME = "natural_scene_templates"
_SESSION_DIR = re.compile(r"^session_(\d+)$")


def cached_session_ids(cache: Path) -> list[int]:
    """Session ids that have a ``session_<id>/session_<id>.nwb`` file in ``cache``.

    Examples
    --------
    >>> import tempfile
    >>> cached_session_ids(Path(tempfile.mkdtemp()))
    []
    """
    ids = []
    for child in Path(cache).iterdir():
        m = _SESSION_DIR.match(child.name)
        if m and child.is_dir() and (child / f"{child.name}.nwb").is_file():
            ids.append(int(m.group(1)))
    return sorted(ids)


def find_templates_dir(nwb_path: Path) -> Path | None:
    """Locate ``natural_scene_templates`` beside a session folder (cache layout) or the file."""
    for cand in (nwb_path.parent.parent / TEMPLATES_DIRNAME, nwb_path.parent / TEMPLATES_DIRNAME):
        if cand.is_dir():
            return cand
    return None


def resolve_session(path, session_id: int | None = None) -> tuple[Path, Path | None]:
    """Resolve a cache folder or a bare ``.nwb`` path to ``(nwb_path, templates_dir)``.

    Parameters
    ----------
    path : str or Path
        An AllenSDK cache folder, a ``session_<id>`` folder, or an Allen-format ``.nwb`` file.
    session_id : int, optional
        Which session of the cache; may be omitted when the cache holds exactly one.

    Returns
    -------
    nwb_path : Path
    templates_dir : Path or None
        The natural-scene templates folder if one was found.

    Raises
    ------
    MeireportError
        The path does not exist, holds no session, or not the requested one.
    """
    p = Path(path).expanduser().resolve()
    if not p.exists():
        raise MeireportError(
            f"path: {p} does not exist; "
            "expected an AllenSDK cache folder or an Allen-format .nwb file"
        )
    if p.is_file():
        return p, find_templates_dir(p)
    m = _SESSION_DIR.match(p.name)
    if m and (p / f"{p.name}.nwb").is_file():
        if session_id is not None and int(session_id) != int(m.group(1)):
            raise MeireportError(f"session_id: {session_id} does not match folder {p}")
        nwb = p / f"{p.name}.nwb"
        return nwb, find_templates_dir(nwb)
    ids = cached_session_ids(p)
    if not ids:
        raise MeireportError(
            f"path: {p} holds no session_<id>/session_<id>.nwb; expected an AllenSDK cache folder "
            "(`meireport fetch --session ID --cache DIR` fills one; `meireport simulate --out DIR` "
            "makes a simulated one)"
        )
    if session_id is None:
        if len(ids) > 1:
            raise MeireportError(
                f"session_id: cache {p} holds {len(ids)} sessions ({', '.join(map(str, ids))}); "
                "name one"
            )
        session_id = ids[0]
    if int(session_id) not in ids:
        raise MeireportError(
            f"session_id: {session_id} not in cache {p} (expected session_{int(session_id)}/"
            f"session_{int(session_id)}.nwb; fetch it with `meireport fetch --session "
            f"{int(session_id)} --cache {p}`); available: {', '.join(map(str, ids))}"
        )
    nwb = p / f"session_{int(session_id)}" / f"session_{int(session_id)}.nwb"
    return nwb, find_templates_dir(nwb)
