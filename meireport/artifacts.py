"""Atomic reading and writing of run artifacts (npz, json, csv): temp file + rename.

Loading never executes what it reads: ``np.load(..., allow_pickle=False)``, plain JSON and CSV.
"""

from __future__ import annotations

import hashlib
import json
import os
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
    """Read a JSON artifact."""
    p = Path(path)
    if not p.is_file():
        raise MeireportError(f"artifact: {p} does not exist")
    return json.loads(p.read_text())


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
