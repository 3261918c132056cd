"""Fetch a real Visual Coding Neuropixels session into an AllenSDK cache (``nox -s allen`` only).

``meireport fetch --session ID --cache DIR`` asks AllenSDK 2.16.2's
``EcephysProjectCache.from_warehouse`` for the project tables (``sessions.csv``, ``probes.csv``,
``channels.csv``, ``units.csv``, with ``manifest.json``), the session's NWB file
(``session_<id>/session_<id>.nwb``, 2-3 GB; LFP files stay lazy and are not downloaded) and the
118 natural-scene templates (``natural_scene_templates/natural_scene_<k>.tiff``).

allensdk pins numpy<1.24 and pandas==1.5.3 and so lives only in ``nox -s allen``'s env: it is
imported inside functions, never at module level. Offline, a short connectivity probe fails with
one line before allensdk starts (no hang: DNS and connect are bounded by ``timeout_s``). A cache
that already holds everything is left untouched and needs no network. Our reader needs only the
NWB file and the templates; AllenSDK's own cache also wants the tables and the manifest.

AllenSDK's cache deletes a cached session file when reading it fails; this module never hands an
existing session file to AllenSDK (it only downloads missing pieces).
"""

from __future__ import annotations

import argparse
import importlib.util
import operator
import socket
import threading
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from meireport.errors import MeireportError
from meireport.sources.cache import TEMPLATES_DIRNAME, template_path

__all__ = [
    "ALLEN_TABLES",
    "N_SCENES",
    "WAREHOUSE_HOST",
    "CacheStatus",
    "add_fetch_parser",
    "cache_status",
    "check_warehouse",
    "fetch_session",
]

WAREHOUSE_HOST = "api.brain-map.org"  # AllenSDK 2.16's EcephysProjectWarehouseApi default
WAREHOUSE_PORT = 80  # it speaks plain http
N_SCENES = 118
MANIFEST = "manifest.json"
ALLEN_TABLES = ("sessions.csv", "probes.csv", "channels.csv", "units.csv")
NEEDS_ALLEN_ENV = (
    "fetch: needs allensdk 2.16.2, which lives only in `nox -s allen`'s env; run `nox -s allen` "
    "once, then `.nox/allen/bin/meireport fetch --session ID --cache DIR`"
)


@dataclass
class CacheStatus:
    """Which pieces of one session an AllenSDK cache folder holds.

    Attributes
    ----------
    cache_dir : Path
    session_id : int
    missing_for_reader : list of str
        Paths (relative to ``cache_dir``) our reader needs and the cache lacks: the session NWB
        and natural-scene templates.
    missing_for_allensdk : list of str
        What AllenSDK's ``EcephysProjectCache`` also wants: its tables and manifest.
    downloaded : list of str
        Filled by :func:`fetch_session`: what it fetched.
    """

    cache_dir: Path
    session_id: int
    missing_for_reader: list[str]
    missing_for_allensdk: list[str]
    downloaded: list[str] = field(default_factory=list)

    @property
    def nwb_path(self) -> Path:
        """Where the session's NWB file lives (or will)."""
        sid = int(self.session_id)
        return self.cache_dir / f"session_{sid}" / f"session_{sid}.nwb"

    @property
    def complete(self) -> bool:
        """Nothing is missing, for our reader or for AllenSDK."""
        return not self.missing_for_reader and not self.missing_for_allensdk

    def describe(self) -> str:
        """One line naming what is missing (templates are summarised as a count)."""
        if self.complete:
            return f"cache {self.cache_dir} holds session {self.session_id} completely"
        parts = []
        for label, missing in (
            ("our reader needs", self.missing_for_reader),
            ("AllenSDK's cache also wants", self.missing_for_allensdk),
        ):
            if not missing:
                continue
            scenes = [m for m in missing if m.startswith(TEMPLATES_DIRNAME + "/")]
            named = [m for m in missing if m not in scenes]
            if scenes:
                named.append(f"{len(scenes)} of {TEMPLATES_DIRNAME}/natural_scene_<k>.tiff")
            parts.append(f"{label} {', '.join(named)}")
        return f"cache {self.cache_dir} lacks: " + "; ".join(parts)


def _check_session_id(session_id) -> int:
    bad = MeireportError(f"session: expected a positive integer session id, got {session_id!r}")
    if isinstance(session_id, str):
        if not session_id.strip().isdigit():
            raise bad
        sid = int(session_id)
    else:
        try:
            sid = operator.index(session_id)
        except TypeError:
            raise bad from None
    if isinstance(session_id, bool) or sid <= 0:
        raise bad
    return sid


def cache_status(cache_dir, session_id, n_scenes: int = N_SCENES) -> CacheStatus:
    """List which pieces of ``session_id`` the cache folder holds (no network, no allensdk).

    Parameters
    ----------
    cache_dir : str or Path
        AllenSDK cache folder (need not exist yet).
    session_id : int
        The session's ``ecephys_session_id``.
    n_scenes : int
        Natural-scene templates expected (118 in the Allen sessions).

    Returns
    -------
    CacheStatus

    Examples
    --------
    >>> import tempfile
    >>> st = cache_status(tempfile.mkdtemp(), 798911424, n_scenes=2)
    >>> st.missing_for_reader[0]
    'session_798911424/session_798911424.nwb'
    >>> len(st.missing_for_reader)
    3
    >>> st.missing_for_allensdk
    ['manifest.json', 'sessions.csv', 'probes.csv', 'channels.csv', 'units.csv']
    """
    sid = _check_session_id(session_id)
    cache = Path(cache_dir).expanduser().resolve()
    if cache.exists() and not cache.is_dir():
        raise MeireportError(f"cache: {cache} exists and is not a folder")
    reader = [f"session_{sid}/session_{sid}.nwb"] + [
        f"{TEMPLATES_DIRNAME}/natural_scene_{k}.tiff" for k in range(int(n_scenes))
    ]
    allen = [MANIFEST, *ALLEN_TABLES]
    return CacheStatus(
        cache_dir=cache,
        session_id=sid,
        missing_for_reader=[p for p in reader if not (cache / p).is_file()],
        missing_for_allensdk=[p for p in allen if not (cache / p).is_file()],
    )


def _allensdk_available() -> bool:
    return importlib.util.find_spec("allensdk") is not None


def _probe_target(host: str, port: int) -> tuple[str, int, str]:
    """Where a connection really goes: the HTTP proxy if one is set for ``host``, else ``host``."""
    proxies = urllib.request.getproxies()
    proxy = proxies.get("http")
    if proxy and not urllib.request.proxy_bypass(host):
        parsed = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        if parsed.hostname:
            return parsed.hostname, parsed.port or 80, f"proxy {parsed.hostname}"
    return host, port, host


def check_warehouse(
    timeout_s: float = 10.0, host: str = WAREHOUSE_HOST, port: int = WAREHOUSE_PORT
) -> None:
    """Return when a TCP connection to the Allen warehouse opens within ``timeout_s``.

    Name resolution and connect run in a daemon thread that is waited for at most
    ``timeout_s`` seconds, so a hanging resolver cannot hang the caller.

    Raises
    ------
    MeireportError
        One line: the warehouse (or the proxy) is unreachable or did not answer in time.
    """
    try:
        timeout_s = float(timeout_s)
    except (TypeError, ValueError):
        raise MeireportError(f"timeout: expected seconds > 0, got {timeout_s!r}") from None
    if not timeout_s > 0:
        raise MeireportError(f"timeout: expected seconds > 0, got {timeout_s}")
    target_host, target_port, label = _probe_target(host, int(port))
    outcome: dict[str, object] = {}

    def probe() -> None:
        try:
            with socket.create_connection((target_host, target_port), timeout=timeout_s):
                outcome["ok"] = True
        except OSError as e:  # gaierror, refused, unreachable, timeout
            outcome["error"] = e

    t = threading.Thread(target=probe, name="meireport-warehouse-probe", daemon=True)
    t.start()
    t.join(timeout_s)
    where = f"the Allen warehouse {host}:{port}" + (f" (via {label})" if label != host else "")
    if t.is_alive() or not outcome:
        raise MeireportError(
            f"fetch: no answer from {where} within {timeout_s:g} s; offline? nothing downloaded"
        )
    if "error" in outcome:
        err = outcome["error"]
        reason = " ".join(str(err).split()) or type(err).__name__
        raise MeireportError(f"fetch: cannot reach {where} ({reason}); offline? nothing downloaded")


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:300]}" if text else type(e).__name__


def fetch_session(
    session_id,
    cache_dir,
    timeout_s: float = 10.0,
    *,
    download_timeout_s: float = 3 * 3600.0,
    n_scenes: int = N_SCENES,
    host: str = WAREHOUSE_HOST,
    port: int = WAREHOUSE_PORT,
    log=print,
) -> CacheStatus:
    """Download what the cache lacks of one session with AllenSDK's ``EcephysProjectCache``.

    Parameters
    ----------
    session_id : int
        Visual Coding Neuropixels ``ecephys_session_id`` (e.g. 798911424).
    cache_dir : str or Path
        AllenSDK cache folder (created; ``manifest.json`` is written there).
    timeout_s : float
        Seconds the warehouse has to accept a connection before we give up (the offline check).
    download_timeout_s : float
        AllenSDK's limit for one download (its default, 1200 s, is short for a 2-3 GB file).
    n_scenes : int
        Natural-scene templates to fetch.
    host, port : str, int
        Warehouse address (AllenSDK's default); the probe checks this address.
    log : callable
        Called with one line per step (``print`` by default; ``None`` for silence).

    Returns
    -------
    CacheStatus
        What is there now; ``downloaded`` lists what was fetched.

    Raises
    ------
    MeireportError
        allensdk is not installed (the core env), the warehouse is unreachable (one line naming
        what the cache still lacks), the session is unknown, or a download failed.
    """
    say = log or (lambda _msg: None)
    status = cache_status(cache_dir, session_id, n_scenes)
    if not _allensdk_available():
        raise MeireportError(NEEDS_ALLEN_ENV)
    if status.complete:
        say(f"{status.describe()}; nothing to fetch")
        return status
    try:
        check_warehouse(timeout_s, host, port)
    except MeireportError as e:
        raise MeireportError(f"{e}; {status.describe()}") from None

    from allensdk.brain_observatory.ecephys.ecephys_project_cache import EcephysProjectCache

    cache_path = status.cache_dir
    cache_path.mkdir(parents=True, exist_ok=True)
    sid = status.session_id
    step = "the project tables"
    try:
        cache = EcephysProjectCache.from_warehouse(
            manifest=str(cache_path / MANIFEST), timeout=int(download_timeout_s)
        )
        if status.missing_for_allensdk or f"session_{sid}/session_{sid}.nwb" in (
            status.missing_for_reader
        ):
            say("fetching the project tables (sessions, probes, channels, units)")
            sessions = cache.get_session_table()
            if sid not in set(sessions.index.tolist()):
                raise MeireportError(
                    f"session: {sid} is not a Visual Coding Neuropixels session "
                    f"({len(sessions)} known, e.g. {sessions.index[0]})"
                )
        nwb_rel = f"session_{sid}/session_{sid}.nwb"
        if nwb_rel in status.missing_for_reader:
            step = f"session {sid}'s NWB file (2-3 GB)"
            say(f"fetching {step}")
            t0 = time.perf_counter()
            cache.get_session_data(sid)  # downloads, then reads it once (its own check)
            say(f"  done in {time.perf_counter() - t0:.0f} s")
        for rel in status.missing_for_reader:
            if rel.startswith(TEMPLATES_DIRNAME + "/"):
                k = int(rel.rsplit("_", 1)[1].removesuffix(".tiff"))
                step = f"natural scene template {k}"
                cache.get_natural_scene_template(k)
        say(f"natural scene templates: {n_scenes} present")
    except MeireportError:
        raise
    except Exception as e:  # any AllenSDK or network failure becomes one line
        raise MeireportError(f"fetch: AllenSDK failed on {step}: {_one_line(e)}") from None
    after = cache_status(cache_path, sid, n_scenes)
    before = set(status.missing_for_reader) | set(status.missing_for_allensdk)
    now = set(after.missing_for_reader) | set(after.missing_for_allensdk)
    after.downloaded = sorted(before - now)
    if after.missing_for_reader:
        raise MeireportError(f"fetch: incomplete after download; {after.describe()}")
    return after


def fetch_templates(
    cache_dir,
    timeout_s: float = 10.0,
    *,
    download_timeout_s: float = 1200.0,
    n_scenes: int = N_SCENES,
    host: str = WAREHOUSE_HOST,
    port: int = WAREHOUSE_PORT,
    log=print,
) -> list[Path]:
    """Download only the natural-scene templates (~118 small TIFFs), not any session's NWB file.

    For a session read remotely (``source.kind: url`` or ``dandi``): the DANDI session files hold
    the ``natural_scenes`` table but not the images; point ``source.templates`` at the folder
    this fills, ``<cache_dir>/natural_scene_templates``.

    Parameters
    ----------
    cache_dir : str or Path
        AllenSDK cache folder (created; ``manifest.json`` is written there).
    timeout_s, download_timeout_s, n_scenes, host, port, log
        As :func:`fetch_session`.

    Returns
    -------
    list of Path
        The templates downloaded (empty when all were there: no network is used).

    Raises
    ------
    MeireportError
        allensdk is missing (the core env), the warehouse is unreachable (naming how many
        templates are still missing), or a download failed.
    """
    say = log or (lambda _msg: None)
    folder = Path(cache_dir).expanduser().resolve() / TEMPLATES_DIRNAME
    missing = [k for k in range(n_scenes) if not template_path(folder, k).is_file()]
    if not missing:
        say(f"natural scene templates: {n_scenes} present in {folder}; nothing to fetch")
        return []
    if not _allensdk_available():
        raise MeireportError(NEEDS_ALLEN_ENV)
    lacking = f"{len(missing)} of {n_scenes} natural scene templates missing in {folder}"
    try:
        check_warehouse(timeout_s, host, port)
    except MeireportError as e:
        raise MeireportError(f"{e}; {lacking}") from None

    from allensdk.brain_observatory.ecephys.ecephys_project_cache import EcephysProjectCache

    folder.parent.mkdir(parents=True, exist_ok=True)
    got: list[Path] = []
    k = missing[0]
    try:
        cache = EcephysProjectCache.from_warehouse(
            manifest=str(folder.parent / MANIFEST), timeout=int(download_timeout_s))
        say(f"fetching {len(missing)} natural scene templates")
        for k in missing:
            cache.get_natural_scene_template(k)
            got.append(template_path(folder, k))
    except Exception as e:  # any AllenSDK or network failure becomes one line
        raise MeireportError(f"fetch: AllenSDK failed on natural scene template {k}: "
                             f"{_one_line(e)}; {lacking}") from None
    return got


def _cmd_fetch(args: argparse.Namespace) -> int:
    if args.templates_only:
        got = fetch_templates(args.cache, timeout_s=args.timeout,
                              download_timeout_s=min(args.download_timeout, 1200.0))
        print(f"templates: {Path(args.cache).expanduser().resolve() / TEMPLATES_DIRNAME} "
              f"(fetched {len(got)}); set source.templates to this folder")
        return 0
    if args.session is None:
        raise MeireportError("fetch: --session is required (or --templates-only)")
    status = fetch_session(
        args.session,
        args.cache,
        timeout_s=args.timeout,
        download_timeout_s=args.download_timeout,
    )
    print(f"session {status.session_id}: {status.nwb_path}")
    print(f"  templates: {status.cache_dir / TEMPLATES_DIRNAME}")
    print(f"  fetched {len(status.downloaded)} file(s); {status.describe()}")
    print(f"  next: meireport extract {status.cache_dir} --session-id {status.session_id}")
    return 0


def add_fetch_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``meireport fetch --session ID --cache DIR [--timeout S]`` on ``subparsers``.

    Parameters
    ----------
    subparsers
        What ``ArgumentParser.add_subparsers()`` returned.

    Returns
    -------
    argparse.ArgumentParser
        The ``fetch`` parser; its ``func`` default runs the command and returns the exit status.

    Examples
    --------
    >>> p = argparse.ArgumentParser(prog="meireport")
    >>> _ = add_fetch_parser(p.add_subparsers(dest="command"))
    >>> a = p.parse_args(["fetch", "--session", "798911424", "--cache", "allen_cache"])
    >>> a.session, a.cache, a.timeout
    (798911424, 'allen_cache', 10.0)
    """
    f = subparsers.add_parser(
        "fetch",
        help="download a real Allen session into an AllenSDK cache (needs `nox -s allen`'s env)",
        description=__doc__.splitlines()[0],
    )
    f.add_argument("--session", type=int, help="ecephys_session_id, e.g. 798911424 (required "
                   "unless --templates-only)")
    f.add_argument("--templates-only", action="store_true",
                   help="download only the 118 natural-scene images (for source.kind url / "
                        "dandi: source.templates), no session file")
    f.add_argument("--cache", required=True, help="AllenSDK cache folder (manifest.json goes here)")
    f.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        help="seconds the warehouse has to answer before we call it offline (default 10)",
    )
    f.add_argument(
        "--download-timeout",
        type=float,
        default=3 * 3600.0,
        help="AllenSDK's limit for one download in seconds (default 10800)",
    )
    f.set_defaults(func=_cmd_fetch)
    return f
