"""Find a Visual Coding Neuropixels session on the DANDI archive (dandiset 000021).

A thin call of the ``dandi`` client (``pip install 'meireport[dandi]'``): the dandiset's version
-> the asset ``sub-<specimen>/sub-<specimen>_ses-<session>.nwb`` -> its content URL on the
archive's S3 bucket, which :func:`meireport.sources.nwb.open_remote` then reads by byte ranges.
A resolved URL is remembered in the byte-range cache folder (``dandi-<dandiset>.json``), so a
second report does not ask the archive again. The session files hold the
``natural_scenes_presentations`` table but not the 118 template images: those come from
``source.templates``.

The archive cannot be reached from the machines this project is tested on: the lookup is tested
with a stand-in client; the reading of the file it names is tested over loopback HTTP.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from meireport.errors import MeireportError

__all__ = ["asset_glob", "dandi_url", "NEEDS_DANDI"]

NEEDS_DANDI = ("source.kind: dandi needs the DANDI client, which is not installed "
               "(pip install 'meireport[dandi]', or pip install dandi)")


def asset_glob(session_id: int) -> str:
    """The asset path pattern of a session's NWB file (not its per-probe LFP files).

    Examples
    --------
    >>> asset_glob(798911424)
    'sub-*/sub-*_ses-798911424.nwb'
    """
    return f"sub-*/sub-*_ses-{int(session_id)}.nwb"


def _default_client():
    try:
        from dandi.dandiapi import DandiAPIClient
    except ImportError:
        raise MeireportError(NEEDS_DANDI) from None
    return DandiAPIClient()


def _remembered(memo: Path | None, key: str) -> str | None:
    if memo is None:
        return None
    try:
        return json.loads(memo.read_text()).get(key)
    except (OSError, ValueError, AttributeError):
        return None


def _remember(memo: Path | None, key: str, url: str) -> None:
    """Add ``key -> url`` to the memo file atomically; a cache that cannot be written is skipped."""
    if memo is None:
        return
    try:
        memo.parent.mkdir(parents=True, exist_ok=True)
        try:
            known = json.loads(memo.read_text())
        except (OSError, ValueError):
            known = {}
        known[key] = url
        fd, tmp = tempfile.mkstemp(prefix=".dandi.", dir=memo.parent)
        with os.fdopen(fd, "w") as out:
            json.dump(known, out, indent=1, sort_keys=True)
        os.replace(tmp, memo)
    except OSError:
        pass


def dandi_url(dandiset: str, session_id: int, version: str | None = None, cache_dir=None,
              client: Callable[[], object] | None = None) -> str:
    """The content URL of a session's NWB file in a dandiset.

    Parameters
    ----------
    dandiset : str
        Dandiset id, e.g. ``"000021"`` (Visual Coding Neuropixels).
    session_id : int
        ``ecephys_session_id``, e.g. 798911424.
    version : str, optional
        Dandiset version; default the most recent published one.
    cache_dir : path, optional
        Where resolved URLs are remembered (the byte-range cache folder).
    client : callable, optional
        Returns a ``DandiAPIClient``-like object (tests pass a stand-in); default the real one.

    Returns
    -------
    str
        ``https://`` address of the asset's blob (no query string).

    Raises
    ------
    MeireportError
        One line: the client is not installed, the archive cannot be reached, the dandiset or
        version does not exist, the session has no asset.

    Examples
    --------
    >>> class Asset:
    ...     path = "sub-1/sub-1_ses-5.nwb"
    ...     def get_content_url(self, regex=".*", follow_redirects=False, strip_query=False):
    ...         return "https://bucket.example/blobs/abc"
    >>> class Dandiset:
    ...     version_id = "0.1"
    ...     def get_assets_by_glob(self, pattern, order=None):
    ...         return iter([Asset()] if pattern.endswith("_ses-5.nwb") else [])
    >>> class Client:
    ...     def get_dandiset(self, dandiset_id, version_id=None):
    ...         return Dandiset()
    >>> dandi_url("000021", 5, client=Client)
    'https://bucket.example/blobs/abc'
    """
    key = f"{int(session_id)}@{version or 'latest'}"
    memo = Path(cache_dir) / f"dandi-{dandiset}.json" if cache_dir is not None else None
    known = _remembered(memo, key)
    if known:
        return known
    where = f"dandiset {dandiset}" + (f" version {version}" if version else "")
    try:
        api = (client or _default_client)()
        ds = api.get_dandiset(dandiset, version)
        assets = list(ds.get_assets_by_glob(asset_glob(session_id)))
        if not assets:
            raise MeireportError(
                f"source.session_ids: session {session_id} has no file in {where} (looked for "
                f"{asset_glob(session_id)}); is it a Visual Coding Neuropixels session id?")
        url = assets[0].get_content_url(regex="s3", follow_redirects=1, strip_query=True)
    except MeireportError:
        raise
    except Exception as e:  # noqa: BLE001 - the client's network/HTTP/lookup errors: one line
        text = " ".join(str(e).split())[:300]
        raise MeireportError(
            f"source.dandiset: the DANDI archive lookup of session {session_id} in {where} "
            f"failed ({type(e).__name__}: {text})") from None
    _remember(memo, key, url)
    return url
