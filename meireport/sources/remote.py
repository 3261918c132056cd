"""Read an NWB file over HTTP(S) by byte ranges: only the bytes h5py touches are fetched.

:class:`RemoteFile` is a read-only, seekable file object for ``h5py.File``. Reads are served in
fixed-size blocks; a run of missing blocks is fetched with one ``Range`` request. Fetched blocks
are kept in memory (bounded) and, with ``cache_dir``, on disk, so a second report of the same
file fetches nothing again. A cache entry is keyed by the URL, the file's size and its
validator (``ETag`` or ``Last-Modified``): a file that changed on the server is never served
from the old entry. Each block is written to a temporary file and renamed into place, so a fetch
cut short never leaves a partial block behind.

Every network problem is one :class:`~meireport.errors.MeireportError` line naming the URL: no
answer within ``timeout_s`` (a stalled server), a dropped connection (after two quick retries),
an HTTP error status, a server that ignores ``Range`` requests.

Why not ``remfile``: its requests carry no timeout (a server that accepts the connection and
never answers blocks the report for ever), a failing request is retried 8 times with backoff
(about 25 s before the error), and its disk cache writes blocks in place, keyed by URL only.
"""

from __future__ import annotations

import hashlib
import http.client
import io
import json
import os
import ssl
import tempfile
from collections import OrderedDict
from pathlib import Path
from urllib.parse import urlsplit

from meireport.errors import MeireportError

__all__ = ["BLOCK_SIZE", "RemoteFile", "default_cache_dir", "check_url"]

BLOCK_SIZE = 1 << 17  # 128 KiB: h5py's metadata reads are small and scattered
_MEMORY = 256 << 20  # bytes of blocks kept in memory
_RETRIES = 2  # quick retries of a dropped connection (never of a timeout)
_REDIRECTS = 5
_STATUS_REDIRECT = {301, 302, 303, 307, 308}


class _Dropped(Exception):
    """The connection closed before the answer was complete (worth one quick retry)."""


def default_cache_dir() -> Path:
    """The byte-range cache: ``http/`` in the shared cache (:func:`meireport.store.cache_root`).

    That is ``$MEIREPORT_CACHE/http`` if the variable is set, else
    ``$XDG_CACHE_HOME/meireport/http`` or ``~/.cache/meireport/http``.

    Examples
    --------
    >>> default_cache_dir().name
    'http'
    """
    from meireport.store import cache_root

    return cache_root() / "http"


def check_url(url: str, field: str = "source.url") -> str:
    """Return ``url`` if it is an ``http(s)://host/...`` address, else raise one line.

    Examples
    --------
    >>> check_url("https://example.org/a.nwb")
    'https://example.org/a.nwb'
    >>> check_url("ftp://example.org/a.nwb")
    Traceback (most recent call last):
    ...
    meireport.errors.MeireportError: source.url: expected an http:// or https:// address, got 'ftp://example.org/a.nwb'
    """
    parts = urlsplit(str(url))
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise MeireportError(f"{field}: expected an http:// or https:// address, got {url!r}")
    return str(url)


def _content_range_total(value: str | None) -> int | None:
    """Total size from a ``Content-Range: bytes a-b/total`` header (None if absent/unknown)."""
    if not value or "/" not in value:
        return None
    total = value.rsplit("/", 1)[1].strip()
    return int(total) if total.isdigit() else None


class RemoteFile(io.RawIOBase):
    """A read-only, seekable file object over HTTP(S) ``Range`` requests.

    Parameters
    ----------
    url : str
        ``http://`` or ``https://`` address of the file (redirects are followed once, at open).
    timeout_s : float
        Seconds to wait for the server to answer or send more bytes before giving up.
    cache_dir : path, optional
        Folder for the on-disk block cache (None: memory only).
    block_size : int
        Bytes per block (the smallest request).
    field : str
        Params field named in error messages.

    Attributes
    ----------
    size : int
        The file's length in bytes.
    bytes_fetched : int
        Bytes received from the server so far (not from the cache).
    n_requests : int
        Range requests sent so far.

    Examples
    --------
    >>> RemoteFile("file:///tmp/x.nwb")
    Traceback (most recent call last):
    ...
    meireport.errors.MeireportError: source.url: expected an http:// or https:// address, got 'file:///tmp/x.nwb'
    """

    def __init__(self, url: str, *, timeout_s: float = 30.0, cache_dir=None,
                 block_size: int = BLOCK_SIZE, field: str = "source.url"):
        super().__init__()
        self.url = check_url(url, field)
        self.field = field
        self.timeout_s = float(timeout_s)
        self.block_size = int(block_size)
        self.bytes_fetched = 0
        self.n_requests = 0
        self._target = self.url
        self._conn: http.client.HTTPConnection | None = None
        self._memory: OrderedDict[int, bytes] = OrderedDict()
        self._memory_bytes = 0
        self._pos = 0
        self.size, validator, first = self._open()
        self._blocks_dir = self._cache_folder(cache_dir, validator)
        self._remember(0, first)
        self._store(0, first)

    # -- io.RawIOBase ------------------------------------------------------------------------
    def readable(self) -> bool:
        """Always True."""
        return True

    def seekable(self) -> bool:
        """Always True."""
        return True

    def tell(self) -> int:
        """The read position."""
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        """Move the read position; returns it."""
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}[whence]
        self._pos = max(0, base + int(offset))
        return self._pos

    def readinto(self, buffer) -> int:
        """Read into ``buffer`` from the position; returns the byte count."""
        view = memoryview(buffer).cast("B")
        n = min(len(view), max(0, self.size - self._pos))
        if n == 0:
            return 0
        data = self._read_range(self._pos, self._pos + n)
        view[:n] = data
        self._pos += n
        return n

    def close(self) -> None:
        """Close the connection and drop the in-memory blocks."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        self._memory.clear()
        super().close()

    def __repr__(self) -> str:
        return f"RemoteFile({self.url!r}, size={self.size})"

    # -- blocks ------------------------------------------------------------------------------
    def _read_range(self, start: int, stop: int) -> bytes:
        b0, b1 = start // self.block_size, (stop - 1) // self.block_size
        blocks = {i: self._cached(i) for i in range(b0, b1 + 1)}
        missing = [i for i, b in blocks.items() if b is None]
        for run in _runs(missing):
            lo = run[0] * self.block_size
            hi = min(self.size, (run[-1] + 1) * self.block_size)
            data = self._fetch(lo, hi)
            for i in run:
                piece = data[(i - run[0]) * self.block_size:(i - run[0] + 1) * self.block_size]
                blocks[i] = piece
                self._remember(i, piece)
                self._store(i, piece)
        joined = b"".join(blocks[i] for i in range(b0, b1 + 1))
        off = start - b0 * self.block_size
        return joined[off:off + (stop - start)]

    def _block_length(self, i: int) -> int:
        return min(self.block_size, self.size - i * self.block_size)

    def _cached(self, i: int) -> bytes | None:
        if i in self._memory:
            self._memory.move_to_end(i)
            return self._memory[i]
        if self._blocks_dir is None:
            return None
        f = self._blocks_dir / f"{i}.blk"
        try:
            data = f.read_bytes()
        except OSError:
            return None
        if len(data) != self._block_length(i):  # not ours or damaged: fetch again
            return None
        self._remember(i, data)
        return data

    def _remember(self, i: int, data: bytes) -> None:
        self._memory[i] = data
        self._memory_bytes += len(data)
        while self._memory_bytes > _MEMORY and len(self._memory) > 1:
            _, old = self._memory.popitem(last=False)
            self._memory_bytes -= len(old)

    def _store(self, i: int, data: bytes) -> None:
        """Write one block atomically (temporary file, then rename); a failed write is skipped."""
        if self._blocks_dir is None:
            return
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{i}.", dir=self._blocks_dir)
            with os.fdopen(fd, "wb") as out:
                out.write(data)
            os.replace(tmp, self._blocks_dir / f"{i}.blk")
        except OSError:
            try:
                os.unlink(tmp)
            except (OSError, UnboundLocalError):
                pass

    def _cache_folder(self, cache_dir, validator: str) -> Path | None:
        """``<cache_dir>/<hash of URL>/<hash of size+validator+block>/``, created; None: off."""
        if cache_dir is None:
            return None
        root = Path(cache_dir).expanduser().resolve()
        entry = root / hashlib.sha256(self.url.encode()).hexdigest()[:24]
        version = hashlib.sha256(
            f"{self.size}|{validator}|{self.block_size}".encode()).hexdigest()[:16]
        folder = entry / version
        try:
            folder.mkdir(parents=True, exist_ok=True)
            about = entry / "about.json"
            if not about.exists():
                text = json.dumps({"url": self.url, "size": self.size, "validator": validator})
                fd, tmp = tempfile.mkstemp(prefix=".about.", dir=entry)
                with os.fdopen(fd, "w") as out:
                    out.write(text)
                os.replace(tmp, about)
        except OSError as e:
            raise MeireportError(
                f"source.cache_dir: {root} cannot hold the byte-range cache ({e.strerror or e})"
            ) from None
        return folder

    # -- HTTP --------------------------------------------------------------------------------
    def _open(self) -> tuple[int, str, bytes]:
        """First request (the first block): size, validator, bytes; follows redirects."""
        for _ in range(_REDIRECTS + 1):
            status, headers, body = self._request(0, self.block_size)
            if status in _STATUS_REDIRECT and headers.get("location"):
                self._target = _join(self._target, headers["location"])
                self._drop_connection()
                continue
            break
        else:
            self._fail(f"redirected more than {_REDIRECTS} times")
        total = _content_range_total(headers.get("content-range"))
        if status == 200:
            length = int(headers.get("content-length") or len(body))
            if length > len(body):
                self._fail("answered with the whole file: the server does not honour Range "
                           "requests (expected 206 Partial Content)")
            total = len(body)
        elif total is None:
            self._fail("gave no file size (no Content-Range total)")
        validator = headers.get("etag") or headers.get("last-modified") or ""
        return total, validator, body[: self.block_size]

    def _fetch(self, start: int, stop: int) -> bytes:
        status, headers, body = self._request(start, stop)
        if status != 206 and not (status == 200 and start == 0 and len(body) == self.size):
            self._fail(f"answered {status} to a Range request for bytes {start}-{stop - 1} "
                       "(expected 206 Partial Content)")
        if len(body) != stop - start:
            self._fail(f"sent {len(body)} bytes for bytes {start}-{stop - 1} "
                       f"(expected {stop - start}; did the file change on the server?)")
        return body

    def _request(self, start: int, stop: int) -> tuple[int, dict[str, str], bytes]:
        """One GET with ``Range: bytes=start-(stop-1)``; status, lower-case headers, body."""
        for attempt in range(_RETRIES + 1):
            try:
                return self._request_once(start, stop)
            except _Dropped as e:
                self._drop_connection()
                if attempt == _RETRIES:
                    self._fail(f"closed the connection {attempt + 1} times while sending bytes "
                               f"{start}-{stop - 1} ({e})")
            except TimeoutError:
                self._drop_connection()
                self._fail(f"did not answer within {self.timeout_s:g} s (bytes {start}-{stop - 1})"
                           "; is the server up? (source.timeout_s sets the wait)")
            except ssl.SSLError as e:
                self._drop_connection()
                self._fail(f"TLS failed ({e.reason or e})")
            except OSError as e:
                self._drop_connection()
                self._fail(f"cannot be reached ({e.strerror or e})")
        raise AssertionError("unreachable")  # pragma: no cover

    def _request_once(self, start: int, stop: int) -> tuple[int, dict[str, str], bytes]:
        parts = urlsplit(self._target)
        if self._conn is None:
            cls = http.client.HTTPSConnection if parts.scheme == "https" else \
                http.client.HTTPConnection
            self._conn = cls(parts.hostname, parts.port, timeout=self.timeout_s)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self.n_requests += 1
        try:
            self._conn.request("GET", path, headers={
                "Range": f"bytes={start}-{stop - 1}", "User-Agent": "meireport",
                "Accept-Encoding": "identity"})
            resp = self._conn.getresponse()
            headers = {k.lower(): v for k, v in resp.getheaders()}
            if resp.status in _STATUS_REDIRECT:
                resp.read()
                return resp.status, headers, b""
            if resp.status not in (200, 206):
                resp.read()
                self._fail(f"answered HTTP {resp.status} {resp.reason}".rstrip())
            if resp.status == 200 and start > 0:  # the whole file: do not download it
                self._drop_connection()
                return resp.status, headers, b""
            body = resp.read(stop - start) if resp.status == 200 else resp.read()
            if resp.status == 200:
                self._drop_connection()  # the rest of the file is not wanted
        except (http.client.RemoteDisconnected, http.client.IncompleteRead,
                ConnectionResetError, BrokenPipeError) as e:
            raise _Dropped(type(e).__name__) from None
        except http.client.HTTPException as e:
            raise _Dropped(f"{type(e).__name__}: {e}") from None
        self.bytes_fetched += len(body)
        if headers.get("connection", "").lower() == "close" or resp.will_close:
            self._drop_connection()
        return resp.status, headers, body

    def _drop_connection(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _fail(self, what: str) -> None:
        raise MeireportError(f"{self.field}: {self.url} {what}")


def _join(base: str, location: str) -> str:
    from urllib.parse import urljoin

    return urljoin(base, location)


def _runs(indices: list[int]) -> list[list[int]]:
    """Consecutive runs of sorted block indices: ``[1, 2, 5] -> [[1, 2], [5]]``."""
    out: list[list[int]] = []
    for i in indices:
        if out and i == out[-1][-1] + 1:
            out[-1].append(i)
        else:
            out.append([i])
    return out
