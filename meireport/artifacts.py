"""Atomic reading and writing of run artifacts (npz, json, csv): temp file + rename.

Loading never executes what it reads: ``np.load(..., allow_pickle=False)``, plain JSON and CSV.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import zipfile
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd

from meireport.errors import MeireportError

__all__ = [
    "atomic_path",
    "is_leftover_temp",
    "remove_leftover_temps",
    "save_npz",
    "load_npz",
    "save_json",
    "load_json",
    "save_csv",
    "load_csv",
    "save_npy",
    "file_sha256",
]


@contextmanager
def atomic_path(path, suffix: str = ""):
    """Yield a temporary path beside ``path``; rename it onto ``path`` if the block succeeds.

    Examples
    --------
    >>> import tempfile
    >>> target = Path(tempfile.mkdtemp()) / "x.txt"
    >>> with atomic_path(target) as tmp:
    ...     _ = tmp.write_text("hello")
    >>> target.read_text()
    'hello'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


#: Names of the temporary files of an atomic write (:func:`atomic_path`:
#: ``.<name>.<random>.tmp<suffix>``; the fixed ``.<name>.tmp`` of the model checkpoint and the
#: simulator) and of the temporary folders of a site build or a simulation. A process killed in
#: the middle of a write leaves them behind; nothing else in a run folder is named so.
_TEMP_FILE = re.compile(r"^\..+\.tmp(\.[A-Za-z0-9]+)?$")
_TEMP_DIR = re.compile(r"^\.(book-build-[a-z0-9_]+|book-old|meireport-sim-[a-z0-9_]+)$")


def is_leftover_temp(path) -> bool:
    """Whether ``path`` is named like a temporary file or folder of an interrupted write.

    Examples
    --------
    >>> is_leftover_temp("r/.07_limits.ipynb.k2j4_x9a.tmp.ipynb"), is_leftover_temp("mei.npy")
    (True, False)
    >>> is_leftover_temp(".book-build-abc123")
    True
    """
    name = Path(path).name
    return bool(_TEMP_FILE.match(name) or _TEMP_DIR.match(name))


def remove_leftover_temps(folder) -> list[Path]:
    """Delete the temporary files and folders of interrupted writes under ``folder``.

    Call it only while no other process writes into ``folder`` (hold its lock): a temporary
    file of a write in progress looks the same.

    Returns
    -------
    list of Path
        What was removed.

    Examples
    --------
    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> _ = (d / ".mei.npy.abcd1234.tmp").write_text("half")
    >>> _ = (d / "mei.npy").write_text("whole")
    >>> [p.name for p in remove_leftover_temps(d)], sorted(p.name for p in d.iterdir())
    (['.mei.npy.abcd1234.tmp'], ['mei.npy'])
    """
    removed = []
    for root, dirs, files in os.walk(folder):
        for name in [d for d in dirs if _TEMP_DIR.match(d)]:
            dirs.remove(name)
            shutil.rmtree(Path(root) / name, ignore_errors=True)
            removed.append(Path(root) / name)
        for name in files:
            if _TEMP_FILE.match(name):
                Path(root, name).unlink(missing_ok=True)
                removed.append(Path(root) / name)
    return removed


def _write(path, writer: Callable[[Path], None], suffix: str = "") -> Path:
    with atomic_path(path, suffix) as tmp:
        writer(tmp)
    return Path(path)


def _write_npz(target: Path, arrays: dict) -> None:
    """Like ``np.savez_compressed`` but byte-reproducible (fixed zip timestamps).

    The same arrays always give the same file, so a re-created artifact does not invalidate the
    cache of the stages that read it.
    """
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, value in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            with zf.open(info, "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.asanyarray(value), allow_pickle=False)


def save_npz(path, **arrays) -> Path:
    """Write arrays to ``path`` (``.npz``, compressed, reproducible bytes) atomically.

    Examples
    --------
    >>> import tempfile
    >>> f = Path(tempfile.mkdtemp()) / "a.npz"
    >>> _ = save_npz(f, x=np.arange(3))
    >>> load_npz(f)["x"].tolist()
    [0, 1, 2]
    """
    return _write(path, lambda t: _write_npz(t, arrays), ".npz")


def load_npz(path) -> dict[str, np.ndarray]:
    """Read an ``.npz`` written by :func:`save_npz` (no pickles)."""
    p = Path(path)
    if not p.is_file():
        raise MeireportError(f"artifact: {p} does not exist")
    with np.load(p, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def save_npy(path, array: np.ndarray) -> Path:
    """Write one array to ``path`` (``.npy``) atomically."""

    def w(t: Path) -> None:
        with open(t, "wb") as f:
            np.save(f, np.asarray(array), allow_pickle=False)

    return _write(path, w)


def save_json(path, obj) -> Path:
    """Write JSON (NaN allowed, numpy scalars converted) atomically."""

    def default(o):
        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
        if isinstance(o, Path):
            return str(o)
        raise TypeError(f"not JSON serialisable: {type(o).__name__}")

    return _write(path, lambda t: t.write_text(json.dumps(obj, indent=2, default=default)))


def load_json(path):
    """Read a JSON artifact.

    Raises
    ------
    MeireportError
        The file does not exist, or is not JSON (naming the file and where it breaks).
    """
    p = Path(path)
    if not p.is_file():
        raise MeireportError(f"artifact: {p} does not exist")
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise MeireportError(f"artifact: {p} is not valid JSON ({e})") from None
    except UnicodeDecodeError:
        raise MeireportError(f"artifact: {p} is not valid JSON (not UTF-8 text)") from None


def save_csv(path, df: pd.DataFrame, index: bool = True) -> Path:
    """Write a DataFrame as CSV atomically."""
    return _write(path, lambda t: df.to_csv(t, index=index))


def load_csv(path, **kw) -> pd.DataFrame:
    """Read a CSV artifact."""
    p = Path(path)
    if not p.is_file():
        raise MeireportError(f"artifact: {p} does not exist")
    return pd.read_csv(p, **kw)


def file_sha256(path) -> str:
    """sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
