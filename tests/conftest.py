"""Shared fixtures: simulated sessions (written once per test run) and a hand-built NWB writer."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")


@pytest.fixture(scope="session", autouse=True)
def _shared_cache(tmp_path_factory):
    """The shared cache of every test run in a folder of its own (never the user's ~/.cache).

    Tests and the notebooks they run (kernels inherit the environment) share it: the
    data-limit study is computed once per test run for each configuration.
    """
    import os

    from meireport.store import CACHE_ENV

    before = os.environ.get(CACHE_ENV)
    os.environ[CACHE_ENV] = str(tmp_path_factory.mktemp("meireport_cache"))
    yield
    if before is None:
        os.environ.pop(CACHE_ENV, None)
    else:
        os.environ[CACHE_ENV] = before


@pytest.fixture(scope="session")
def default_session(tmp_path_factory):
    """The embedded default: 118 images x 50 repeats, seed 0."""
    from meireport.sources import simulate_session

    return simulate_session(tmp_path_factory.mktemp("default_cache"), seed=0)


@pytest.fixture(scope="session")
def rich_control_session(tmp_path_factory):
    """Data-rich positive control: 1000 images x 8 repeats; VISam 3 simple, 3 complex, 1 untuned."""
    from meireport.sources import simulate_session

    return simulate_session(tmp_path_factory.mktemp("rich_control"), n_images=1000, n_repeats=8,
                            population={"VISam": (3, 3, 1, 0)}, seed=1)


@pytest.fixture(scope="module")
def one_torch_thread():
    """torch on one thread for a module, as the pipeline's stages run: reproducible numbers."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def small_session(tmp_path_factory):
    """A seconds-scale session: 8 images x 2 repeats (gabors complete)."""
    from meireport.sources import simulate_session

    return simulate_session(tmp_path_factory.mktemp("small_cache"), n_images=8, n_repeats=2, seed=3)


def write_nwb(
    path: Path,
    units: list[dict],
    channels: list[dict],
    intervals: dict[str, dict],
    identifier: str = "123",
) -> Path:
    """Write a small Allen-format NWB by hand with pynwb (independent of the simulator).

    ``units``: dicts with id, spike_times, peak_channel_id, quality, amplitude_cutoff,
    presence_ratio, isi_violations, firing_rate. ``channels``: dicts with id, location,
    valid_data. ``intervals``: table name -> column dict (start_time, stop_time, ...).
    """
    import pynwb
    from hdmf.common import VectorData
    from pynwb.epoch import TimeIntervals

    nwb = pynwb.NWBFile(
        session_description="hand-built test session",
        identifier=identifier,
        session_start_time=datetime(2020, 1, 1, tzinfo=UTC),
    )
    dev = nwb.create_device(name="probe", description="test")
    grp = nwb.create_electrode_group(
        name="probeA", description="test", location="brain", device=dev
    )
    nwb.add_electrode_column(name="valid_data", description="usable")
    nwb.add_electrode_column(name="probe_id", description="probe")
    for ch in channels:
        nwb.add_electrode(
            id=ch["id"], group=grp, location=ch["location"], valid_data=ch["valid_data"], probe_id=1
        )
    cols = [
        "peak_channel_id",
        "quality",
        "amplitude_cutoff",
        "presence_ratio",
        "isi_violations",
        "firing_rate",
    ]
    for c in cols:
        nwb.add_unit_column(name=c, description=c)
    for u in units:
        nwb.add_unit(
            id=u["id"],
            spike_times=np.asarray(u["spike_times"], dtype=float),
            **{c: u[c] for c in cols},
        )
    for name, table in intervals.items():
        columns = [
            VectorData(
                name=k,
                description=k,
                data=[str(x) for x in v] if isinstance(v[0], str) else np.asarray(v),
            )
            for k, v in table.items()
        ]
        nwb.add_time_intervals(TimeIntervals(name=name, description=name, columns=columns))
    with pynwb.NWBHDF5IO(str(path), "w") as io:
        io.write(nwb)
    return path


def good_unit(uid, channel, spikes=(), **changes):
    u = dict(
        id=uid,
        spike_times=list(spikes),
        peak_channel_id=channel,
        quality="good",
        amplitude_cutoff=0.05,
        presence_ratio=0.99,
        isi_violations=0.1,
        firing_rate=1.0,
    )
    u.update(changes)
    return u


@pytest.fixture()
def nwb_writer():
    return write_nwb, good_unit
