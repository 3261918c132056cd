"""A content-addressed store of computed results, shared by every run of a machine.

An entry is a folder named by a key: a sha256 over everything the computation reads (its
settings, the keys of the entries it reads, the source of the code it runs;
:func:`content_key`, :func:`code_hash`). An entry is written into a temporary folder and renamed
into place whole, with a manifest (``entry.json``: its files and their sizes) written last, so a
killed writer never leaves an entry that :meth:`Store.get` accepts; two processes that compute
the same entry at once both succeed and one copy is kept.

The store's root (:func:`cache_root`): the ``run.cache`` params field, else the
``MEIREPORT_CACHE`` environment variable, else ``$XDG_CACHE_HOME/meireport``, else
``~/.cache/meireport``.

Examples
--------
>>> import tempfile
>>> store = Store(tempfile.mkdtemp())
>>> key = content_key("demo", {"n": 3})
>>> store.get(key) is None
True
>>> entry = store.put(key, lambda d: (d / "x.txt").write_text("3"), meta={"n": 3})
>>> store.get(key) == entry, (entry / "x.txt").read_text(), store.meta(key)["n"]
(True, '3', 3)
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

from meireport.artifacts import file_sha256, save_json
from meireport.errors import MeireportError

__all__ = ["CACHE_ENV", "cache_root", "content_key", "code_hash", "Store"]

#: Environment variable naming the shared cache folder (overridden by ``run.cache``).
CACHE_ENV = "MEIREPORT_CACHE"
_MANIFEST = "entry.json"
_PACKAGE = Path(__file__).resolve().parent


def cache_root(override=None) -> Path:
    """The shared cache folder: ``override``, ``$MEIREPORT_CACHE``, the user's cache folder.

    Examples
    --------
    >>> str(cache_root("/tmp/x"))
    '/tmp/x'
    """
    if override:
        return Path(override).expanduser().resolve()
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser().resolve()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return (Path(base) / "meireport").expanduser().resolve()


def content_key(*parts) -> str:
    """sha256 of the parts as canonical JSON (dict keys sorted; other objects by ``str``).

    Examples
    --------
    >>> content_key({"a": 1, "b": 2}) == content_key({"b": 2, "a": 1})
    True
    """
    text = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


@lru_cache(maxsize=64)
def code_hash(*modules: str) -> str:
    """sha256 over the source of the named parts of the package.

    Parameters
    ----------
    *modules : str
        Subpackages or modules relative to ``meireport`` (``"mei"``, ``"report/stages"``).

    Raises
    ------
    MeireportError
        A name that is neither a subpackage nor a module.

    Examples
    --------
    >>> code_hash("mei") == code_hash("mei"), code_hash("mei") != code_hash("models")
    (True, True)
    """
    files: list[Path] = []
    for name in sorted(set(modules)):
        p = _PACKAGE / name
        if p.is_dir():
            files += sorted(p.rglob("*.py"))
        elif p.with_suffix(".py").is_file():
            files.append(p.with_suffix(".py"))
        else:
            raise MeireportError(f"code_hash: {name!r} is not a part of the meireport package")
    return content_key([(str(f.relative_to(_PACKAGE)), file_sha256(f)) for f in files])


class Store:
    """Entries under ``root``, one folder per key (``root/<key[:2]>/<key>``).

    Parameters
    ----------
    root : path
        The store's folder (made on first write).
    """

    def __init__(self, root) -> None:
        self.root = Path(root)

    def entry(self, key: str) -> Path:
        """Where the entry of ``key`` lives (whether or not it exists)."""
        if len(key) < 8 or not all(c in "0123456789abcdef" for c in key):
            raise MeireportError(f"store key: expected a hex digest, got {key!r}")
        return self.root / key[:2] / key

    def get(self, key: str) -> Path | None:
        """The entry's folder when it is complete (manifest present, every file its size)."""
        d = self.entry(key)
        try:
            manifest = json.loads((d / _MANIFEST).read_text())
            files = manifest["files"]
            ok = all((d / n).stat().st_size == size for n, size in files.items())
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None
        return d if ok else None

    def meta(self, key: str) -> dict:
        """The ``meta`` recorded with a complete entry (empty when there is none)."""
        d = self.get(key)
        return json.loads((d / _MANIFEST).read_text()).get("meta", {}) if d else {}

    def put(self, key: str, write: Callable[[Path], object], meta: dict | None = None) -> Path:
        """Write an entry: ``write(folder)`` fills a temporary folder, renamed into place whole.

        A complete entry of the same key already there (another process computed it) is kept
        and this one is discarded. An incomplete one (a killed writer) is replaced.

        Returns
        -------
        Path
            The entry's folder.
        """
        final = self.entry(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key[:12]}.", suffix=".tmp", dir=final.parent))
        try:
            write(tmp)
            files = {str(p.relative_to(tmp)): p.stat().st_size
                     for p in sorted(tmp.rglob("*")) if p.is_file()}
            save_json(tmp / _MANIFEST, {"key": key, "files": files, "meta": meta or {}})
            if self.get(key) is not None:
                return final
            if final.exists():  # an incomplete entry of a killed writer
                shutil.rmtree(final, ignore_errors=True)
            try:
                os.rename(tmp, final)
            except OSError:  # another writer's complete entry won the race
                if self.get(key) is None:
                    raise
            return final
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
