"""The data-limit study: tables, caching, the trust label against the truth, CI coverage."""

from __future__ import annotations

import tempfile

import numpy as np
import pandas as pd
import pytest

from meireport.errors import MeireportError
from meireport.models import bootstrap_corr_ci, new_images, pearson
from meireport.report import limits
from meireport.report.limits import OPTION_VARIANTS, session_limits
from meireport.report.params import LimitsParams, parse_params

TINY = parse_params({"source": {"kind": "simulated"},
                     "model": {"core": {"hidden_channels": 4, "layers": 2, "input_kern": 9}},
                     "train": {"max_epochs": 5, "patience": 3}}).to_json_dict()


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_torch_thread):
    """Every test of this module with torch on one thread (conftest)."""


def test_config_validation():
    assert LimitsParams.from_dict({"n_images": [300, 118, 118]}).n_images == [118, 300]
    with pytest.raises(MeireportError, match=r"^limits.n_images: sizes must be >= 10, got \[5\]$"):
        LimitsParams.from_dict({"n_images": [5]})
    with pytest.raises(MeireportError, match=r"^limits.n_imgs: unknown field \(check the spell"):
        LimitsParams.from_dict({"n_imgs": [30]})
    with pytest.raises(MeireportError, match="limits.n_images: sizes must be >= 10"):
        parse_params({"source": {"kind": "simulated"}, "limits": {"n_images": [4]}})


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    cfg = LimitsParams(n_images=[30], n_repeats=6, area_population=(6, 4, 3, 2), n_units=2,
                       mei_steps=20, options_at=30)
    work = tmp_path_factory.mktemp("limits") / "n30"
    tables = session_limits(30, cfg, work, TINY["model"], TINY["train"], TINY["selection"],
                            options=True)
    return cfg, work, tables


def test_tables_hold_every_model_option_and_unit(tiny):
    cfg, _, t = tiny
    s = t["session"].iloc[0]
    assert s["n_tuned"] == 10 and 10 < s["n_units"] <= 15  # poor units may fail the filter
    assert 0 <= s["precision"] <= 1 and 0 < s["recall"] <= 1
    u = t["units"]
    assert u["true_kind"].tolist() == ["simple"] * 2 + ["complex"] * 2  # 2 of each kind
    assert set(u["trust"]) <= {"high", "medium", "low"}
    assert u["trust_reasons"].str.len().gt(0).all()
    for _, d in u.groupby("true_kind"):  # spread from the most reliable down
        assert d["oracle_corr"].is_monotonic_decreasing
    m = t["models"]
    names = {v.name for v in OPTION_VARIANTS} | {"LN", "CNN", "population CNN"}
    assert set(m["variant"]) == names
    n = m.groupby("variant").size()
    crop = n.index.str.contains("crop")  # units without a mapped RF have no crop fit
    assert (n[~crop] == 4).all() and (n[crop] <= 4).all() and n[crop].sum() > 0
    assert m["true_corr"].between(-1, 1).all() and (m["seconds"] > 0).all()
    # "CNN" and "CNN full field" are the same configuration here: fitted once, same numbers
    a = m[m["variant"] == "CNN"].set_index("unit_id")["true_corr"]
    b = m[m["variant"] == "CNN full field"].set_index("unit_id")["true_corr"]
    pd.testing.assert_series_equal(a, b, check_names=False)


def test_rerun_and_new_trust_thresholds_reuse_the_heavy_work(tiny, monkeypatch):
    cfg, work, t = tiny

    def boom(*a, **k):
        raise AssertionError("recomputed")

    monkeypatch.setattr(limits, "_compute", boom)
    again = session_limits(30, cfg, work, TINY["model"], TINY["train"], TINY["selection"],
                           options=True)
    pd.testing.assert_frame_equal(again["units"], t["units"])
    strict = session_limits(30, cfg, work, TINY["model"], TINY["train"], TINY["selection"],
                            trust={"min_frac_oracle": 5.0}, options=True)
    assert "high" not in set(strict["units"]["trust"])
    assert strict["units"]["trust_reasons"].str.contains("oracle").all()
    with pytest.raises(AssertionError, match="recomputed"):  # another setting: recomputed
        session_limits(30, cfg, work, TINY["model"], dict(TINY["train"], seed=1),
                       TINY["selection"], options=True)


# --------------------------------------------------------------------------------------------
# the trust label against the truth (the test), on the 118-image and a rich session
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """Small models (24 px crop CNN) on 118 and 1000 images, 3 simple + 3 complex units."""
    p = parse_params({"source": {"kind": "simulated"},
                      "model": {"core": {"hidden_channels": 8, "layers": 2, "input_kern": 9},
                                "crop_size": 24}}).to_json_dict()
    cfg = LimitsParams(n_images=[118, 1000], n_repeats=50, n_units=3, options_at=None,
                       mei_steps=150, population=False)
    tables = limits.run_limits(cfg, tmp_path_factory.mktemp("study"), p["model"], p["train"],
                               p["selection"])
    u = tables["units"]
    print(u[["n_images", "unit_id", "true_kind", "oracle_corr", "true_corr", "mei_rf_corr",
             "mei_reliability", "trust"]].round(2).to_string())
    print(limits.trust_separation(u).round(2).to_string())
    return tables


def test_trust_label_predicts_mei_correctness(study):
    """Units labelled high have better MEIs (vs the true optimum) than units labelled low."""
    u = study["units"]
    u = u[u["true_kind"].isin(("simple", "complex"))]
    compared = 0
    for n, d in u.groupby("n_images"):
        high = d.loc[d["trust"] == "high", "mei_rf_corr"]
        low = d.loc[d["trust"] == "low", "mei_rf_corr"]
        assert len(high), (n, d["trust"].tolist())
        assert (high >= limits.MATCH).mean() >= 0.5, (n, high.tolist())
        if len(low):
            compared += 1
            assert high.median() > low.median() + 0.2, (n, high.median(), low.median())
    assert compared >= 1  # the 118-image session has units labelled low


def test_more_images_teach_the_models_more(study):
    t = limits.curve_table(study)
    cnn = [c for c in t.columns if c.startswith("true_corr CNN")]
    assert (t.loc[1000, cnn] > t.loc[118, cnn]).all(), t[cnn]
    assert t.loc[1000, "mei_rf_corr simple"] > t.loc[118, "mei_rf_corr simple"]


# --------------------------------------------------------------------------------------------
# the bootstrap CI of the test correlation covers the true-rate correlation
# --------------------------------------------------------------------------------------------
def test_bootstrap_ci_covers_the_true_rate_correlation_at_its_nominal_rate():
    """90 % intervals from 14 test images x 50 repeats, simulated units' true rates."""
    from meireport.sources import simulate_session, true_rate

    sim = simulate_session(tempfile.mkdtemp(), n_images=4, n_repeats=1, seed=3,
                           population={"VISam": (2, 2, 0, 0)})
    images = new_images(0, 3000, (60, 96))
    rng = np.random.default_rng(0)
    coverage = []
    for u in sim.truth.unit_id[:3]:
        rate = true_rate(sim.truth, images, [u])[0] * 0.25  # spikes per 250 ms window
        for model_error in (0.5, 1.0):  # a good and a mediocre model
            pred = rate + rng.normal(0, model_error * rate.std(), len(rate))
            rho = float(pearson(pred, rate))
            hits = 0
            for k in range(150):
                i = rng.choice(len(rate), 14, replace=False)
                means = rng.poisson(rate[i][:, None] * np.ones((1, 50))).mean(axis=1)
                lo, hi = bootstrap_corr_ci(pred[i], means, n_boot=1000, level=0.9, seed=k)
                hits += lo <= rho <= hi
            coverage.append(hits / 150)
    print("coverage of 90 % intervals:", np.round(coverage, 2))
    assert np.mean(coverage) >= 0.8
    assert min(coverage) >= 0.7
