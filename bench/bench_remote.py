"""Remote reading at real scale: bytes fetched over HTTP vs the file's size, cold and warm.

The full-scale simulated session (:mod:`bench.bench_reader`'s, written once into
``runs/bench/``) is served by ``RangeHTTPServer`` on 127.0.0.1; ``open_remote`` opens it and
counts the natural-scenes spikes of one area (VISam) and of all the visual areas, with a fresh
byte-range cache (cold) and again from that cache (warm). Figures: bytes fetched as a fraction
of the file (target < 5 % for open + one area) and against the bytes of the spike times the
counts need (at real scale one area's spikes alone are ~5 % of the file: the floor), requests,
the warm read's bytes, and the seconds
against the local read of the same file in the same run (loopback: the cost of the block
protocol, not of a network). Counts must equal the local read's.

Run alone: ``python -m bench.bench_remote``; in the suite: ``python -m bench.run_all --only
remote``.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # `python bench/bench_remote.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import Figure, Results, log  # noqa: E402

SECTION = "remote"
MIB = 2**20
VISUAL = ("VISp", "VISl", "VISal", "VISrl", "VISam", "VISpm")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(folder: Path) -> tuple[subprocess.Popen, str]:
    """RangeHTTPServer on 127.0.0.1 serving ``folder`` (stops by itself after an hour)."""
    port = _free_port()
    proc = subprocess.Popen(
        ["timeout", "3600", sys.executable, "-m", "RangeHTTPServer", str(port), "--bind",
         "127.0.0.1"], cwd=folder, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.monotonic()
    while time.monotonic() - t0 < 20:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return proc, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.1)
    proc.terminate()
    raise RuntimeError("the HTTP server did not start listening")


def _read(open_fn, areas) -> tuple[float, object, dict]:
    """Seconds from the open to the counts of ``areas``; the counts; the remote's stats."""
    from meireport.extract import spike_counts

    t0 = time.perf_counter()
    with open_fn() as s:
        ids = [u for a in areas for u in s.unit_ids(a)]
        counts = spike_counts(s, "natural_scenes", (0.0, 0.25), unit_ids=ids)
        remote = getattr(s, "remote", None)
        stats = ({"bytes": remote.bytes_fetched, "requests": remote.n_requests}
                 if remote is not None else {})
    return time.perf_counter() - t0, counts, stats


def _needed_bytes(nwb: Path, areas) -> int:
    """Bytes of the spike times the counts of ``areas`` need (their filtered units' slices)."""
    import numpy as np

    from meireport.sources import open_session

    with open_session(nwb) as s:
        f = s._file  # the reader's own h5py file: the same units, the same filter
        row = {int(u): i for i, u in enumerate(f["units/id"][()])}
        end = np.asarray(f["units/spike_times_index"][()], dtype=np.int64)
        begin = np.concatenate([[0], end[:-1]])
        n = sum(int(end[row[int(u)]] - begin[row[int(u)]]) for a in areas for u in s.unit_ids(a))
        return n * f["units/spike_times"].dtype.itemsize


def run_section(res: Results) -> None:
    """Measure and record the remote figures (section ``remote``)."""
    import pandas as pd

    from bench.bench_reader import full_session
    from meireport.sources import open_session
    from meireport.sources.nwb import open_remote

    data = full_session()
    nwb = Path(data["nwb"])
    size = nwb.stat().st_size
    templates = Path(data["cache_dir"]) / "natural_scene_templates"
    sid = int(data["session_id"])
    proc, base = _serve(nwb.parent)
    url = f"{base}/{nwb.name}"
    try:
        for label, areas in (("VISam", ("VISam",)), ("visual", VISUAL)):
            with tempfile.TemporaryDirectory() as cache:
                def remote(cache=cache):
                    return open_remote(url, templates, session_id=sid, cache_dir=cache)

                t_local, local, _ = _read(lambda: open_session(nwb), areas)
                t_cold, cold, s_cold = _read(remote, areas)
                t_warm, warm, s_warm = _read(remote, areas)
            pd.testing.assert_frame_equal(cold, local)
            pd.testing.assert_frame_equal(warm, local)
            frac = s_cold["bytes"] / size
            needed = _needed_bytes(nwb, areas)
            log(f"remote {label}: cold {s_cold['bytes'] / MIB:.1f} MiB of {size / MIB:.0f} MiB "
                f"({100 * frac:.2f} %), {s_cold['requests']} requests, {t_cold:.2f} s (local "
                f"{t_local:.2f} s); warm {s_warm['bytes'] / MIB:.2f} MiB, {t_warm:.2f} s; "
                f"the area's spike times alone are {needed / MIB:.1f} MiB")
            res.add(Figure(SECTION, f"open + {label} counts: bytes fetched / file size",
                           100 * frac, unit="%", baseline="file size",
                           baseline_value=size / MIB, ratio=frac, ratio_kind="of the file",
                           target="< 5 % (open + one area)" if label == "VISam" else None,
                           met=frac < 0.05 if label == "VISam" else None,
                           note=f"{s_cold['bytes'] / MIB:.1f} MiB in {s_cold['requests']} "
                                f"requests, {s_cold['bytes'] / needed:.2f}x the "
                                f"{needed / MIB:.1f} MiB of spike times the counts need; counts "
                                "identical to the local read"))
            res.add(Figure(SECTION, f"open + {label} counts over loopback HTTP, cold", t_cold,
                           baseline="local read of the same file", baseline_value=t_local,
                           ratio=t_local / t_cold, note="fresh byte-range cache"))
            res.add(Figure(SECTION, f"open + {label} counts, warm (disk cache)", t_warm,
                           baseline="local read of the same file", baseline_value=t_local,
                           ratio=t_local / t_warm,
                           note=f"{s_warm['bytes'] / MIB:.2f} MiB fetched in "
                                f"{s_warm['requests']} request(s) (size and validator check)"))
    finally:
        proc.terminate()
        proc.wait(10)


def main(argv: list[str] | None = None) -> int:
    """Run the section alone and save ``runs/bench/remote/results.json``."""
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args(argv)
    from bench.common import WORK_DIR

    (WORK_DIR / "remote").mkdir(parents=True, exist_ok=True)
    res = Results(WORK_DIR / "remote" / "results.json")
    run_section(res)
    res.save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
