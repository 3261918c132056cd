"""Remote sessions over real HTTP on 127.0.0.1: byte-range reads, the block cache, network faults.

A simulated session is served by RangeHTTPServer (PyPI ``rangehttpserver``, started and stopped
here, bound to 127.0.0.1 only) and read with :func:`meireport.sources.nwb.open_remote`; faults come
from a small stdlib server of this file (stalls, drops connections, ignores ``Range``, 404).
"""

from __future__ import annotations

import http.server
import json
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest

from meireport.errors import MeireportError
from meireport.extract import spike_counts
from meireport.sources import open_session, simulate_session
from meireport.sources.nwb import open_remote
from meireport.sources.remote import BLOCK_SIZE

BIG_MB = 320  # an unused acquisition dataset, LFP-sized, that a remote read must not fetch


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_listening(port: int, proc: subprocess.Popen, timeout: float = 20.0) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"the HTTP server exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("the HTTP server did not start listening")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A simulated session (plus a copy padded with a big unused dataset) served over HTTP."""
    root = tmp_path_factory.mktemp("remote")
    sim = simulate_session(root / "cache", n_images=12, n_repeats=3, seed=1)
    www = root / "www"
    www.mkdir()
    shutil.copy(sim.nwb_path, www / sim.nwb_path.name)
    big = www / "big.nwb"
    shutil.copy(sim.nwb_path, big)
    with h5py.File(big, "a") as f:  # contiguous, uncompressed, written: really BIG_MB on disk
        rows = 1 << 20  # 16 MiB per write
        ds = f.create_dataset("acquisition/unused_lfp/data", shape=(BIG_MB // 16 * rows, 2),
                              dtype="<f8")
        slab = np.ones((rows, 2))
        for i in range(BIG_MB // 16):
            ds[i * rows:(i + 1) * rows] = slab
    port = _free_port()
    # `timeout`: the server stops by itself even if this process dies before the teardown
    proc = subprocess.Popen(
        ["timeout", "3600", sys.executable, "-m", "RangeHTTPServer", str(port), "--bind",
         "127.0.0.1"], cwd=www, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_listening(port, proc)
        yield {"sim": sim, "www": www, "base": f"http://127.0.0.1:{port}",
               "name": sim.nwb_path.name, "big": big}
    finally:
        proc.terminate()
        proc.wait(10)


def _url(served, name=None) -> str:
    return f"{served['base']}/{name or served['name']}"


# -- the same session as the local read ------------------------------------------------------

def test_remote_session_reads_the_same_tables_ids_and_counts(served, tmp_path):
    sim = served["sim"]
    with open_remote(_url(served), sim.templates_dir, cache_dir=tmp_path) as r, \
            open_session(sim.cache_dir) as loc:
        assert r.session_id == loc.session_id == sim.session_id
        assert r.path is None and r.where == _url(served)
        pd.testing.assert_frame_equal(r.all_units, loc.all_units)
        pd.testing.assert_frame_equal(r.units, loc.units)
        pd.testing.assert_frame_equal(r.channels, loc.channels)
        pd.testing.assert_frame_equal(r.stimulus_presentations, loc.stimulus_presentations)
        assert r.areas == loc.areas and len(r.areas) >= 2
        for name in ("natural_scenes", "gabors"):
            pd.testing.assert_frame_equal(r.stimulus_table(name), loc.stimulus_table(name))
        for area in r.areas:
            pd.testing.assert_frame_equal(spike_counts(r, "natural_scenes", area=area),
                                          spike_counts(loc, "natural_scenes", area=area))
        u = int(r.unit_ids()[0])
        np.testing.assert_array_equal(r.spike_times[u], loc.spike_times[u])
        np.testing.assert_array_equal(r.model_images([0, -1, 3]), loc.model_images([0, -1, 3]))


def test_open_and_one_area_fetch_under_5_percent_of_a_big_file(served, tmp_path):
    size = served["big"].stat().st_size
    assert size > BIG_MB * 2**20  # the padding is really there
    with open_remote(_url(served, "big.nwb"), served["sim"].templates_dir,
                     session_id=served["sim"].session_id, cache_dir=tmp_path) as r:
        counts = spike_counts(r, "natural_scenes", area="VISam")
        fetched = r.remote.bytes_fetched
    with open_session(served["sim"].cache_dir) as loc:
        pd.testing.assert_frame_equal(counts, spike_counts(loc, "natural_scenes", area="VISam"))
    print(f"\nfetched {fetched / 2**20:.1f} MiB of {size / 2**20:.0f} MiB "
          f"({100 * fetched / size:.2f} %)")
    assert fetched < 0.05 * size
    # what was fetched is what the cache holds: nothing was counted twice or lost
    on_disk = sum(f.stat().st_size for f in tmp_path.rglob("*.blk"))
    assert on_disk == fetched


def test_a_second_read_comes_from_the_disk_cache(served, tmp_path):
    sim = served["sim"]
    with open_remote(_url(served), sim.templates_dir, cache_dir=tmp_path) as r:
        first = spike_counts(r, "natural_scenes", area="VISam")
        assert r.remote.bytes_fetched > r.remote.block_size
    with open_remote(_url(served), sim.templates_dir, cache_dir=tmp_path) as r:
        again = spike_counts(r, "natural_scenes", area="VISam")
        # one request only: the first block, which tells the size and the validator
        assert r.remote.n_requests == 1
        assert r.remote.bytes_fetched == r.remote.block_size
    pd.testing.assert_frame_equal(first, again)


def test_a_damaged_cache_block_is_fetched_again(served, tmp_path):
    sim = served["sim"]
    with open_remote(_url(served), sim.templates_dir, cache_dir=tmp_path) as r:
        first = spike_counts(r, "natural_scenes", area="VISam")
    blocks = sorted(tmp_path.rglob("*.blk"), key=lambda p: int(p.stem))
    blocks[-1].write_bytes(blocks[-1].read_bytes()[:100])  # a partial block, as a crash leaves
    with open_remote(_url(served), sim.templates_dir, cache_dir=tmp_path) as r:
        pd.testing.assert_frame_equal(spike_counts(r, "natural_scenes", area="VISam"), first)
        assert r.remote.n_requests >= 2


def test_a_changed_file_is_not_served_from_the_old_cache_entry(served, tmp_path):
    www = served["www"]
    f = www / "changing.nwb"
    shutil.copy(served["sim"].nwb_path, f)
    with open_remote(_url(served, f.name), session_id=1, cache_dir=tmp_path) as r:
        n_before = len(r.all_units)
    other = simulate_session(tmp_path / "other", n_images=6, n_repeats=2, seed=7,
                             population={"VISam": (1, 1, 1, 0)})
    shutil.copy(other.nwb_path, f)
    time.sleep(1.1)  # Last-Modified has 1 s resolution
    f.touch()
    with open_remote(_url(served, f.name), session_id=1, cache_dir=tmp_path) as r:
        assert len(r.all_units) != n_before
        with open_session(other.cache_dir) as loc:
            pd.testing.assert_frame_equal(r.all_units, loc.all_units)
    assert len([p for p in tmp_path.iterdir() if p.is_dir() and (p / "about.json").exists()]) == 1


# -- faults: one line, within the timeout, nothing corrupt left behind ------------------------

class _Faulty(http.server.BaseHTTPRequestHandler):
    """Serves ``server.data`` with Range support, or misbehaves as ``server.mode`` says."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        srv = self.server
        srv.hits += 1
        if srv.mode == "stall":
            time.sleep(srv.stall_s)
            return
        if srv.mode == "404":
            self.send_error(404, "Not Found")
            return
        data = srv.data
        rng = self.headers.get("Range", "")
        if srv.mode == "norange" or not rng.startswith("bytes="):
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            try:
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass
            return
        a, b = (int(x) for x in rng.removeprefix("bytes=").split("-"))
        b = min(b, len(data) - 1)
        body = data[a:b + 1]
        self.send_response(206)
        self.send_header("Content-Range", f"bytes {a}-{b}/{len(data)}")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("ETag", '"v1"')
        self.end_headers()
        if srv.mode == "drop" and srv.hits > srv.ok_requests:
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return
        self.wfile.write(body)


@pytest.fixture()
def faulty(served):
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Faulty)
    srv.daemon_threads = True
    srv.mode, srv.hits, srv.ok_requests, srv.stall_s = "ok", 0, 0, 30.0
    srv.data = served["sim"].nwb_path.read_bytes()
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()


def _faulty_url(srv) -> str:
    return f"http://127.0.0.1:{srv.server_address[1]}/s.nwb"


def _one_line(e: pytest.ExceptionInfo) -> str:
    text = str(e.value)
    assert "\n" not in text and "Traceback" not in text
    return text


def test_a_stalled_server_gives_one_line_within_the_timeout(faulty, tmp_path):
    faulty.mode = "stall"
    t0 = time.monotonic()
    with pytest.raises(MeireportError) as e:
        open_remote(_faulty_url(faulty), cache_dir=tmp_path, timeout_s=1.0)
    took = time.monotonic() - t0
    text = _one_line(e)
    assert text.startswith(f"source.url: {_faulty_url(faulty)} did not answer within 1 s")
    assert took < 4.0, took
    assert not list(tmp_path.rglob("*.blk"))


def test_a_dropped_connection_gives_one_line_and_leaves_no_partial_block(faulty, tmp_path):
    faulty.mode, faulty.ok_requests = "drop", 1  # the open succeeds, every later read drops
    t0 = time.monotonic()
    with pytest.raises(MeireportError) as e:
        with open_remote(_faulty_url(faulty), cache_dir=tmp_path, timeout_s=5.0,
                         session_id=1) as r:
            r.spike_times[int(r.unit_ids()[0])]
    text = _one_line(e)
    assert "closed the connection 3 times" in text and text.startswith("source.url: ")
    assert time.monotonic() - t0 < 10.0
    blocks = list(tmp_path.rglob("*.blk"))
    assert [b.name for b in blocks] == ["0.blk"]  # only the block that came whole
    assert blocks[0].read_bytes() == faulty.data[:BLOCK_SIZE]
    assert not [p for p in tmp_path.rglob(".*") if p.is_file() and p.name != "about.json"]


def test_a_server_that_ignores_range_is_refused_without_downloading_the_file(faulty, tmp_path):
    faulty.mode = "norange"
    with pytest.raises(MeireportError) as e:
        open_remote(_faulty_url(faulty), cache_dir=tmp_path)
    assert "does not honour Range requests" in _one_line(e)


def test_a_missing_file_gives_the_status(faulty, tmp_path):
    faulty.mode = "404"
    with pytest.raises(MeireportError) as e:
        open_remote(_faulty_url(faulty), cache_dir=tmp_path)
    assert _one_line(e) == f"source.url: {_faulty_url(faulty)} answered HTTP 404 Not Found"


def test_nobody_listening_gives_one_line(tmp_path):
    url = f"http://127.0.0.1:{_free_port()}/s.nwb"
    with pytest.raises(MeireportError) as e:
        open_remote(url, cache_dir=tmp_path, timeout_s=2)
    assert _one_line(e).startswith(f"source.url: {url} cannot be reached (")


def test_a_file_that_is_not_hdf5_gives_one_line(faulty, tmp_path):
    faulty.data = b"<html>not an nwb</html>" * 5000
    with pytest.raises(MeireportError) as e:
        open_remote(_faulty_url(faulty), cache_dir=tmp_path)
    assert "cannot be opened as an NWB (HDF5) file" in _one_line(e)


# -- the params: kind url and kind dandi --------------------------------------------------------

def test_kind_url_passes_the_preflight_and_needs_templates(served, tmp_path):
    from meireport.sources.from_params import ensure_source, open_source

    src = {"kind": "url", "url": _url(served), "templates": served["sim"].templates_dir,
           "cache_dir": tmp_path / "http", "timeout_s": 10}
    assert ensure_source(src, tmp_path, extract={"area": "VISam"}) == [served["sim"].session_id]
    with open_source(src, served["sim"].session_id, tmp_path) as s:
        assert s.remote is not None and len(s.unit_ids("VISam"))
    no_images = {**src, "templates": None}
    with pytest.raises(MeireportError) as e:
        ensure_source(no_images, tmp_path, extract={"area": "VISam"})
    assert _one_line(e).startswith("source.templates: required for a remote session")
    assert "--templates-only" in str(e.value)


class _Asset:
    def __init__(self, url):
        self.url = url

    def get_content_url(self, regex=".*", follow_redirects=False, strip_query=False):
        return self.url


def _standin_client(url, session_id, calls):
    class Dandiset:
        def get_assets_by_glob(self, pattern, order=None):
            calls.append(pattern)
            return iter([_Asset(url)] if pattern.endswith(f"_ses-{session_id}.nwb") else [])

    class Client:
        def get_dandiset(self, dandiset_id, version_id=None):
            calls.append((dandiset_id, version_id))
            return Dandiset()

    return Client


def test_kind_dandi_resolves_the_asset_once_and_reads_it(served, tmp_path, monkeypatch):
    from meireport.sources import dandi
    from meireport.sources.from_params import ensure_source, open_source

    sid = served["sim"].session_id
    calls: list = []
    monkeypatch.setattr(dandi, "_default_client", _standin_client(_url(served), sid, calls))
    src = {"kind": "dandi", "dandiset": "000021", "session_ids": [sid],
           "templates": served["sim"].templates_dir, "cache_dir": tmp_path / "http"}
    assert ensure_source(src, tmp_path, extract={"area": "VISam"}) == [sid]
    assert calls == [("000021", None), f"sub-*/sub-*_ses-{sid}.nwb"]
    with open_source(src, sid, tmp_path) as s:  # remembered: the archive is not asked again
        assert s.session_id == sid and s.where == _url(served)
    assert len(calls) == 2
    with pytest.raises(MeireportError) as e:
        ensure_source({**src, "session_ids": [123]}, tmp_path)
    assert _one_line(e).startswith("source.session_ids: session 123 has no file in dandiset "
                                   "000021")


def test_kind_dandi_without_the_client_says_how_to_install_it(tmp_path, monkeypatch):
    from meireport.sources.dandi import NEEDS_DANDI, dandi_url

    monkeypatch.setitem(sys.modules, "dandi", None)  # import dandi -> ImportError
    monkeypatch.setitem(sys.modules, "dandi.dandiapi", None)
    with pytest.raises(MeireportError) as e:
        dandi_url("000021", 1, cache_dir=tmp_path)
    assert str(e.value) == NEEDS_DANDI


def test_a_failing_archive_lookup_is_one_line(tmp_path):
    from meireport.sources.dandi import dandi_url

    class Client:
        def get_dandiset(self, dandiset_id, version_id=None):
            raise ConnectionError("Max retries exceeded with url: /api/dandisets/000021/\n(x)")

    with pytest.raises(MeireportError) as e:
        dandi_url("000021", 5, "0.1", cache_dir=tmp_path, client=Client)
    assert _one_line(e).startswith("source.dandiset: the DANDI archive lookup of session 5 in "
                                   "dandiset 000021 version 0.1 failed (ConnectionError: Max")


def test_params_of_remote_kinds(tmp_path):
    from meireport.report.params import parse_params

    p = parse_params({"source": {"kind": "dandi", "session_ids": [798911424],
                                 "templates": "imgs"}}, base_dir=tmp_path)
    assert p.source.dandiset == "000021" and p.source.templates == (tmp_path / "imgs").resolve()
    bad = [
        ({"kind": "url"}, "source: url is required for kind 'url'"),
        ({"kind": "url", "url": "file:///x.nwb"},
         "source.url: expected an http:// or https:// address, got 'file:///x.nwb'"),
        ({"kind": "dandi"}, "source: session_ids is required for kind 'dandi'"),
        ({"kind": "dandi", "session_ids": [1], "dandiset": 17},
         "source.dandiset: expected a 6-digit id in quotes"),
        ({"kind": "url", "url": "http://h/a.nwb", "timeout_s": 0},
         "source.timeout_s: "),
    ]
    for src, start in bad:
        with pytest.raises(MeireportError) as e:
            parse_params({"source": src})
        assert str(e.value).startswith(start), str(e.value)


@pytest.mark.slow
def test_the_tiny_report_runs_on_a_remote_session(served, tmp_path):
    """The whole report over HTTP: the tiny params with ``source.kind: url``."""
    import yaml

    from meireport.report.params import parse_params
    from meireport.report.run import run

    tiny = yaml.safe_load((Path(__file__).parent.parent / "params" / "tiny.yaml").read_text())
    sim = simulate_session(served["www"] / "tiny", seed=tiny["source"]["seed"],
                           n_images=tiny["source"]["n_images"],
                           n_repeats=tiny["source"]["n_repeats"])
    url = f"{served['base']}/tiny/{sim.nwb_path.parent.name}/{sim.nwb_path.name}"
    tiny["source"] = {"kind": "url", "url": url, "templates": str(sim.templates_dir),
                      "cache_dir": str(tmp_path / "http")}
    tiny["limits"] = {**(tiny.get("limits") or {}), "enabled": False}
    res = run(parse_params(tiny), out=tmp_path / "run", progress=False)
    assert not res.failed, [(r.task_id, r.error) for r in res.failed]
    (sdir,) = [p for p in (tmp_path / "run" / "results").iterdir()
               if (p / "session.json").is_file()]
    info = json.loads((sdir / "session.json").read_text())
    assert info["nwb"] == url and info["session_id"] == sim.session_id
    summary = pd.read_csv(sdir / "summary.csv")
    assert len(summary) >= 1 and (summary["status"] == "ok").all()
    units = pd.read_csv(sdir / "units.csv", index_col=0)
    with open_session(sim.cache_dir) as loc:
        assert sorted(units.index) == sorted(loc.unit_ids("VISam").tolist())
