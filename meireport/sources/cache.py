"""AllenSDK cache layout: find a session's NWB file and the natural-scene templates, read-only.

An AllenSDK ``EcephysProjectCache`` folder looks like::

    <cache>/session_<id>/session_<id>.nwb
    <cache>/natural_scene_templates/natural_scene_<k>.tiff

Nothing here writes to, moves or deletes anything in the cache.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

from meireport.errors import MeireportError

__all__ = [
    "resolve_session",
    "cached_session_ids",
    "check_path",
    "find_templates_dir",
    "one_line",
    "template_header",
    "template_path",
    "TEMPLATES_DIRNAME",
]

TEMPLATES_DIRNAME = "natural_scene_templates"
_SESSION_DIR = re.compile(r"^session_(\d+)$")


def one_line(error: BaseException) -> str:
    """An exception's text on one line (the CLI prints one line per error)."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def check_path(path, kind: str, name: str = "path", hint: str = "") -> Path:
    """The resolved ``path`` if it exists, is a ``kind`` ("file" or "folder") and is readable.

    ``name`` names the path in the error (a params field such as ``source.path``); ``hint`` is
    added to a does-not-exist error (what would create the path). The path is only looked at
    (``stat``, ``access``), never opened, written or passed to a shell.

    Raises
    ------
    MeireportError
        One line: the path does not exist, is the other kind, or cannot be read.

    Examples
    --------
    >>> check_path("/nonexistent-meireport", "folder", "source.path")
    Traceback (most recent call last):
    ...
    meireport.errors.MeireportError: source.path: /nonexistent-meireport does not exist
    """
    p = Path(path).expanduser().resolve()
    try:
        exists, is_dir, is_file = p.exists(), p.is_dir(), p.is_file()
    except OSError as e:
        raise MeireportError(f"{name}: {p} cannot be looked at ({one_line(e)})") from None
    if not exists:
        raise MeireportError(f"{name}: {p} does not exist{hint}")
    if kind == "folder" and not is_dir:
        raise MeireportError(f"{name}: {p} is not a folder; expected a folder")
    if kind == "file" and not is_file:
        what = "a folder" if is_dir else "not a regular file"
        raise MeireportError(f"{name}: {p} is {what}; expected a file")
    mode = os.R_OK | (os.X_OK if is_dir else 0)
    if not os.access(p, mode):
        raise MeireportError(f"{name}: {p} is not readable (permission denied)")
    return p


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


def template_path(templates_dir: Path, k: int) -> Path:
    """Where natural scene ``k`` lies in a templates folder (``natural_scene_<k>.tiff``)."""
    return Path(templates_dir) / f"natural_scene_{int(k)}.tiff"


def template_header(f: Path) -> tuple[tuple[int, ...], str]:
    """``(shape, dtype)`` of a template TIFF from its header alone; no pixel is decoded.

    Checks that the file is a readable TIFF holding a 2-D grey or 3-D colour image whose pixel
    data lies inside the file (a file cut short is caught).

    Raises
    ------
    MeireportError
        One line naming the file: missing, unreadable, not a TIFF, cut short, not an image.
    """
    import tifffile

    f = Path(f)
    what = "expected a natural-scene template TIFF (natural_scene_<k>.tiff, as AllenSDK has it)"
    check_path(f, "file", "natural_scene_templates")
    try:
        size = f.stat().st_size
        with tifffile.TiffFile(f) as tif:
            page = tif.pages[0]
            shape, dtype = tuple(int(n) for n in page.shape), page.dtype
            extents = list(zip(page.dataoffsets, page.databytecounts, strict=False))
            compressed = page.compression != 1
    except Exception as e:  # noqa: BLE001 - any failure to parse a header is "not a TIFF"
        raise MeireportError(
            f"natural_scene_templates: {f} is not a readable TIFF image ({one_line(e)}); {what}"
        ) from None
    if dtype is None or len(shape) not in (2, 3) or min(shape) < 1 or (
            len(shape) == 3 and shape[-1] not in (3, 4)):
        raise MeireportError(
            f"natural_scene_templates: {f} holds an array of shape {shape}, not a grey or "
            f"colour image; {what}")
    end = max((int(o) + int(n) for o, n in extents), default=0)
    stored = sum(int(n) for _, n in extents)
    if end > size or stored == 0 or (not compressed
                                     and stored < math.prod(shape) * dtype.itemsize):
        raise MeireportError(
            f"natural_scene_templates: {f} is cut short or damaged ({size} bytes; its "
            f"{' x '.join(map(str, shape))} image needs bytes up to {end}); {what}")
    return shape, str(dtype)


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
