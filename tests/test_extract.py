"""Spike counting and response arrangements, checked against brute force and hand examples."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pynwb
import pytest

from meireport.errors import MeireportError
from meireport.extract import (
    binned_activity,
    count_in_windows,
    counts_per_area,
    gabor_responses,
    image_means,
    spike_counts,
    trial_tensor,
)
from meireport.sources import open_session


def _raw_spikes(nwb_path):
    """Spike times read with pynwb: independent of meireport's h5py reader."""
    with pynwb.NWBHDF5IO(str(nwb_path), "r") as io:
        units = io.read().units
        ids = units.id[:]
        return {int(u): np.asarray(units["spike_times"][i]) for i, u in enumerate(ids)}


@pytest.mark.parametrize("window", [(0.0, 0.25), (0.05, 0.31), (-0.1, 0.02)])
def test_counts_equal_brute_force(small_session, window):
    raw = _raw_spikes(small_session.nwb_path)
    rng = np.random.default_rng(0)
    with open_session(small_session.cache_dir) as s:
        for stim in ("natural_scenes", "gabors"):
            counts = spike_counts(s, stim, window=window)
            assert list(counts.columns) == list(s.units.index)
            table = s.stimulus_table(stim)
            rows = np.sort(rng.choice(len(table), min(400, len(table)), replace=False))
            starts = table["start_time"].to_numpy()[rows]
            a, b = starts + window[0], starts + window[1]
            for u in counts.columns:
                t = raw[int(u)]
                brute = ((t[None, :] >= a[:, None]) & (t[None, :] < b[:, None])).sum(axis=1)
                np.testing.assert_array_equal(counts[u].to_numpy()[rows], brute)
            assert counts.to_numpy().dtype == np.int64


def test_count_in_windows_edges():
    t = np.array([0.0, 0.25, 0.5, 0.75])
    assert count_in_windows(t, np.array([0.0, 0.5]), (0.0, 0.25)).tolist() == [1, 1]
    assert count_in_windows(t, np.array([0.0]), (0.0, 0.2500001)).tolist() == [2]
    assert count_in_windows(np.array([]), np.array([0.0, 1.0])).tolist() == [0, 0]


def test_trial_tensor_pairs_by_frame_not_order():
    table = pd.DataFrame({"frame": [5.0, 2.0, -1.0, 5.0, 2.0, 5.0]}, index=[40, 41, 42, 43, 44, 45])
    counts = pd.DataFrame({101: [1, 2, 9, 3, 4, 5], 102: [0, 0, 0, 0, 0, 7]}, index=table.index)
    tr = trial_tensor(counts, table)
    assert tr.image_ids.tolist() == [2, 5]
    assert tr.unit_ids.tolist() == [101, 102]
    np.testing.assert_array_equal(tr.data[0], [[2, 4, np.nan], [1, 3, 5]])
    assert tr.n_repeats.tolist() == [2, 3]
    means = image_means(counts, table)
    assert means.index.tolist() == [-1, 2, 5]
    assert means.loc[5, 101] == 3.0 and means.loc[-1, 101] == 9.0
    # shuffled rows give the same tensor
    perm = [3, 0, 5, 1, 4, 2]
    tr2 = trial_tensor(counts.iloc[perm].sort_index(), table.iloc[perm])
    np.testing.assert_array_equal(tr.data, tr2.data)


def test_trial_tensor_default_session_shape(default_session):
    with open_session(default_session.cache_dir) as s:
        counts = spike_counts(s, "natural_scenes", area="VISam")
        tr = trial_tensor(counts, s.stimulus_table("natural_scenes"))
    assert tr.data.shape == (counts.shape[1], 118, 50)
    assert not np.isnan(tr.data).any()
    assert tr.image_ids.tolist() == list(range(118))


def test_gabor_responses_and_binning(small_session):
    with open_session(small_session.cache_dir) as s:
        g = gabor_responses(s, area="VISam")
        assert len(g.table) == 3645 == len(g.counts)
        assert set(g.table["orientation"]) == {0.0, 45.0, 90.0}
        assert sorted(set(g.table["x_position"])) == list(np.arange(-40.0, 41.0, 10.0))
        assert (g.table.index == g.counts.index).all()
        binned, edges = binned_activity(
            s, g.counts.columns[:5], bin_size=0.5, stimulus="natural_scenes"
        )
        assert binned.shape == (5, len(edges) - 1)
        u = int(g.counts.columns[0])
        t = s.spike_times[u]
        assert binned[0].sum() == np.sum((t >= edges[0]) & (t < edges[-1]))
        with pytest.raises(MeireportError, match="bin_size"):
            binned_activity(s, bin_size=0, stimulus="gabors")
        summary = counts_per_area(s)
        assert summary["units"].sum() == len(s.units)
