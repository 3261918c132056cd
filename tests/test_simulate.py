"""The simulated session: ground truth is visible in the data, determinism, atomic writes."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from meireport.errors import MeireportError
from meireport.extract import gabor_responses, spike_counts, trial_tensor
from meireport.sources import load_ground_truth, open_session, simulate_session, true_rate
from meireport.stimuli import render_gabor


@pytest.fixture(scope="module")
def data(default_session):
    truth = load_ground_truth(default_session.truth_path)
    with open_session(default_session.cache_dir) as s:
        counts = spike_counts(s, "natural_scenes")
        tr = trial_tensor(counts, s.stimulus_table("natural_scenes"))
        imgs = s.model_images(tr.image_ids)
        units = s.units.copy()
        gab = gabor_responses(s)
    return truth, tr, imgs, units, gab


def test_layout_and_areas(default_session):
    d = default_session.cache_dir
    sid = default_session.session_id
    assert (d / f"session_{sid}" / f"session_{sid}.nwb").is_file()
    assert (d / f"session_{sid}" / "ground_truth.npz").is_file()
    meta = json.loads((d / f"session_{sid}" / "ground_truth.json").read_text())
    assert meta["geometry"] == {"deg_per_px": 1.5, "shape": [60, 96]}
    tiffs = sorted((d / "natural_scene_templates").glob("natural_scene_*.tiff"))
    assert len(tiffs) == 118
    with open_session(d) as s:
        assert {"VISam", "VISp"} <= set(s.areas)
        ns = s.stimulus_table("natural_scenes")
        assert len(ns) == 119 * 50 and set(ns["frame"]) == set(range(-1, 118))
        assert ns["stimulus_block"].nunique() == 3
        assert np.allclose(ns["duration"], 0.25, atol=1e-3)
        assert len(s.stimulus_table("gabors")) == 3645


def test_poor_units_filtered_tuned_kept(data):
    truth, _, _, units, _ = data
    kinds = dict(zip(truth.unit_id.tolist(), truth.kind.tolist(), strict=True))
    kept = {kinds[int(u)] for u in units.index}
    assert "poor" not in kept and {"simple", "complex", "untuned"} <= kept
    n_not_poor = sum(k != "poor" for k in kinds.values())
    assert len(units) == n_not_poor


def test_image_means_follow_true_rate(data):
    truth, tr, imgs, _, _ = data
    rate = true_rate(truth, imgs, unit_ids=tr.unit_ids)
    means = np.nanmean(tr.data, axis=2) / 0.25  # spikes/s; latency shifts a little rate out
    kind = truth.kind[truth.index_of(tr.unit_ids)]
    tuned = np.flatnonzero((kind != "untuned") & (rate.std(axis=1) > 3.0))
    assert len(tuned) >= 30
    r = np.array([np.corrcoef(means[i], rate[i])[0, 1] for i in tuned])
    assert np.all(r > 0.9), r.min()
    # untuned units: image means carry no image information (one-way ANOVA across images)
    p_untuned = [stats.f_oneway(*tr.data[i]).pvalue for i in np.flatnonzero(kind == "untuned")]
    p_tuned = [stats.f_oneway(*tr.data[i]).pvalue for i in tuned]
    assert np.mean(np.array(p_untuned) < 0.01) <= 0.15
    assert np.median(p_tuned) < 1e-6


def test_gabor_responses_peak_near_true_rf(data):
    truth, _, _, units, gab = data
    g = pd.concat([gab.table, gab.counts.rename(columns=str)], axis=1)
    near = []
    for u in gab.counts.columns:
        i = truth.index_of([u])[0]
        if truth.kind[i] == "untuned":
            continue
        m = g.groupby(["x_position", "y_position"])[str(u)].mean()
        if m.max() < 1.5 * m.median():
            continue  # weakly driven by the small gabors
        x, y = m.idxmax()
        dist = np.hypot(x - truth.rf_params["x_deg"][i], y - truth.rf_params["y_deg"][i])
        near.append(dist <= 15.0)
    assert len(near) >= 20
    assert np.mean(near) >= 0.8


def test_true_rate_contract(default_session):
    truth = default_session.truth
    grey = np.full((60, 96), 0.5)
    np.testing.assert_allclose(true_rate(truth, grey)[:, 0], truth.baseline)
    i = int(np.flatnonzero(truth.kind == "simple")[0])
    rf = truth.rf_even[i]
    best = 0.5 + 0.2 * rf / rf.std()
    worst = 0.5 - 0.2 * rf / rf.std()
    r = true_rate(truth, np.stack([best, worst]), unit_ids=[truth.unit_id[i]])[0]
    assert r[0] > truth.baseline[i] + 5 and r[1] == pytest.approx(truth.baseline[i])
    # a complex cell answers both phases of its preferred grating alike
    j = int(np.flatnonzero(truth.kind == "complex")[0])
    p = {k: v[j] for k, v in truth.rf_params.items()}
    g0, g1 = (
        render_gabor(
            truth.geometry,
            p["x_deg"],
            p["y_deg"],
            p["orientation_deg"],
            p["sf_cpd"],
            6 * p["sigma_deg"],
            ph,
        )
        for ph in (0.0, np.pi)
    )
    rc = true_rate(truth, np.stack([g0, g1]), unit_ids=[truth.unit_id[j]])[0]
    assert rc[0] == pytest.approx(rc[1], rel=0.05) and rc[0] > truth.baseline[j] + 2
    with pytest.raises(MeireportError, match="images: expected n x 60 x 96"):
        true_rate(truth, np.zeros((2, 10, 10)))


def test_rf_image_beats_best_natural_image_at_equal_contrast(data):
    truth, tr, imgs, _, _ = data
    rate = true_rate(truth, imgs)
    for i in np.flatnonzero(truth.kind == "simple")[:10]:
        b = int(np.argmax(rate[i]))
        std = imgs[b].std()
        rf = truth.rf_even[i]
        mei_like = np.clip(0.5 + std * rf / rf.std(), 0, 1)
        assert true_rate(truth, mei_like)[i, 0] > rate[i, b]


def test_deterministic_and_seed_dependent(tmp_path):
    kw = dict(n_images=4, n_repeats=2)
    a = simulate_session(tmp_path / "a", seed=5, **kw)
    b = simulate_session(tmp_path / "b", seed=5, **kw)
    c = simulate_session(tmp_path / "c", seed=6, **kw)
    ta, tb, tc = (load_ground_truth(x.truth_path) for x in (a, b, c))
    np.testing.assert_array_equal(ta.rf_even, tb.rf_even)
    np.testing.assert_array_equal(ta.unit_id, tb.unit_id)
    assert not np.array_equal(ta.unit_id, tc.unit_id)
    with open_session(a.cache_dir) as sa, open_session(b.cache_dir) as sb:
        u = sa.units.index[0]
        np.testing.assert_array_equal(sa.spike_times[u], sb.spike_times[u])
    # the same templates whatever the seed: caches can hold several sessions
    assert (a.templates_dir / "natural_scene_3.tiff").read_bytes() == (
        c.templates_dir / "natural_scene_3.tiff"
    ).read_bytes()


def test_rerun_reuses_and_never_overwrites(tmp_path):
    a = simulate_session(tmp_path, seed=1, n_images=4, n_repeats=2)
    mtime = a.nwb_path.stat().st_mtime_ns
    again = simulate_session(tmp_path, seed=1, n_images=4, n_repeats=2)
    assert again.reused and a.nwb_path.stat().st_mtime_ns == mtime
    with pytest.raises(MeireportError, match="already exists with other settings"):
        simulate_session(tmp_path, seed=2, n_images=4, n_repeats=2)
    assert a.nwb_path.stat().st_mtime_ns == mtime
    # a second session beside the first shares (and extends) the templates
    simulate_session(tmp_path, seed=2, session_id=5, n_images=6, n_repeats=2)
    assert len(list((tmp_path / "natural_scene_templates").glob("*.tiff"))) == 6
    assert not list(tmp_path.glob(".meireport-sim-*"))
    with pytest.raises(MeireportError, match="n_images: must be >= 2"):
        simulate_session(tmp_path / "x", n_images=1)
