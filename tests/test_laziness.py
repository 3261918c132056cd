"""Opening a session and counting spikes reads none of the large datasets a real file holds."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from meireport.sources import simulate_session

BIG_MB = 400

OPEN_AND_COUNT = """
import sys
from meireport.sources import open_session
from meireport.extract import spike_counts
with open_session(sys.argv[1]) as s:
    spike_counts(s, "natural_scenes"); spike_counts(s, "gabors")
    s.units; s.stimulus_presentations
    if len(sys.argv) > 2:  # control: what reading the big dataset costs
        import h5py
        h5py.File(s.path, "r")["acquisition/probe_lfp_placeholder/data"][()]
# VmHWM: this process image's peak RSS (ru_maxrss would include the forking parent's peak)
hwm = [ln for ln in open("/proc/self/status") if ln.startswith("VmHWM:")][0]
print(int(hwm.split()[1]) // 1024)
"""


@pytest.fixture(scope="module")
def big_session(tmp_path_factory):
    return simulate_session(
        tmp_path_factory.mktemp("big"), n_images=8, n_repeats=2, seed=2, extra_acquisition_mb=BIG_MB
    )


def _peak_rss_mb(*args) -> int:
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(OPEN_AND_COUNT), *args],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_open_and_count_reads_no_large_dataset(big_session):
    lazy = _peak_rss_mb(str(big_session.cache_dir))
    eager = _peak_rss_mb(str(big_session.cache_dir), "read-it")
    assert eager > lazy + BIG_MB * 0.9  # the control shows the bound can fail
    assert lazy < 300, f"peak RSS {lazy} MB"
