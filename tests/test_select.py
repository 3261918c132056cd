"""Science tests of meireport.select: analytic and synthetic ground truth."""

import sys
import warnings

import numpy as np
import pandas as pd
import pytest

from meireport.errors import MeireportError
from meireport.select import (
    SelectionRule,
    anomaly_scores,
    fev,
    oracle_correlation,
    oracle_correlation_random,
    pairwise_correlation,
    rastermap_order,
    response_entropy,
    response_variance,
    rule_thresholds,
    select_units,
    snr,
    unit_metrics,
)


def brute_force_oracle(trials):
    """Straightforward loops: every valid trial vs the mean of the other valid trials."""
    out = []
    for unit in trials:
        singles, others = [], []
        for image in unit:
            valid = image[~np.isnan(image)]
            if len(valid) < 2:
                continue
            for r in range(len(valid)):
                singles.append(valid[r])
                others.append(np.delete(valid, r).mean())
        out.append(np.corrcoef(singles, others)[0, 1])
    return np.array(out)


def nan_tensor(rng, shape=(6, 9, 7), frac=0.3):
    trials = rng.poisson(rng.uniform(0.5, 5, size=shape[:2])[..., None], size=shape).astype(float)
    trials[rng.random(shape) < frac] = np.nan
    trials[0, 0, 1:] = np.nan  # one valid trial: image left out
    trials[1, 2, :] = np.nan  # no valid trial
    return trials


def gaussian_trials(rng, signal_sd, noise_sd, n_units=1, n_images=2000, n_repeats=20):
    signal = rng.normal(0, signal_sd, size=(n_units, n_images, 1))
    return 5 + signal + rng.normal(0, noise_sd, size=(n_units, n_images, n_repeats))


# ------------------------------------------------------------------------------------ oracle


def test_oracle_is_one_for_noise_free_repeats():
    rng = np.random.default_rng(1)
    signal = rng.uniform(0, 10, size=(4, 30, 1))
    trials = np.repeat(signal, 8, axis=2)
    trials[rng.random(trials.shape) < 0.2] = np.nan
    np.testing.assert_allclose(oracle_correlation(trials), 1.0, atol=1e-12)


def test_oracle_is_near_zero_for_pure_noise():
    rng = np.random.default_rng(2)
    trials = rng.poisson(3.0, size=(40, 118, 50)).astype(float)
    r = oracle_correlation(trials)
    assert abs(r.mean()) < 0.01
    assert np.abs(r).max() < 0.06


def test_oracle_equals_brute_force_with_nans():
    rng = np.random.default_rng(3)
    trials = nan_tensor(rng)
    np.testing.assert_allclose(oracle_correlation(trials), brute_force_oracle(trials), atol=1e-12)


def test_oracle_invariant_to_unit_order_and_nan_padding():
    rng = np.random.default_rng(4)
    trials = nan_tensor(rng)
    base = oracle_correlation(trials)
    perm = rng.permutation(trials.shape[0])
    np.testing.assert_allclose(oracle_correlation(trials[perm]), base[perm], atol=1e-14)
    padded = np.concatenate([trials, np.full(trials.shape[:2] + (5,), np.nan)], axis=2)
    np.testing.assert_allclose(oracle_correlation(padded), base, atol=1e-14)
    shuffled = trials[:, :, rng.permutation(trials.shape[2])]  # repeat order is irrelevant
    np.testing.assert_allclose(oracle_correlation(shuffled), base, atol=1e-12)


def test_oracle_of_silent_unit_is_nan_without_warnings():
    rng = np.random.default_rng(5)
    trials = rng.poisson(2.0, size=(3, 10, 5)).astype(float)
    trials[1] = 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = oracle_correlation(trials)
        f = fev(trials)
    assert np.isnan(r[1]) and np.isnan(f[1])
    assert np.isfinite(r[[0, 2]]).all()


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.zeros((0, 5, 3)), "trials: expected a non-empty"),
        (np.zeros((5, 3)), "trials: expected a 3-D"),
        (np.full((2, 3, 4), np.inf), "found inf|got inf"),
    ],
)
def test_oracle_rejects_bad_tensor(bad, match):
    with pytest.raises(MeireportError, match=match):
        oracle_correlation(bad)


# ------------------------------------------------------------------------- randomised oracle


def test_random_oracle_reproducible_and_seed_dependent():
    rng = np.random.default_rng(6)
    trials = nan_tensor(rng, shape=(8, 30, 10), frac=0.1)
    a = oracle_correlation_random(trials, n_iter=10, seed=7)
    b = oracle_correlation_random(trials, n_iter=10, seed=7)
    c = oracle_correlation_random(trials, n_iter=10, seed=8)
    np.testing.assert_array_equal(a.corr, b.corr)
    np.testing.assert_array_equal(a.rank, b.rank)
    assert not np.array_equal(a.per_iteration, c.per_iteration)
    assert a.per_iteration.shape == (10, 8)


def test_random_oracle_close_to_jackknife_on_large_data():
    rng = np.random.default_rng(9)
    sd = np.linspace(0.0, 2.0, 12)[:, None, None]
    trials = 5 + sd * rng.normal(size=(12, 600, 1)) + rng.normal(0, 1.5, size=(12, 600, 12))
    rand = oracle_correlation_random(trials, n_iter=50, seed=0)
    np.testing.assert_allclose(rand.corr, oracle_correlation(trials), atol=0.03)
    # ranks follow the planted reliability: the most reliable unit is first on average
    assert np.argmin(rand.rank) == 11
    assert rand.rank[0] > rand.rank[11]


def test_random_oracle_scaled_by_fraction_of_images_with_repeats():
    signal = np.arange(20.0)[None, :, None]
    trials = np.repeat(signal, 4, axis=2)
    trials[:, :5, 1:] = np.nan  # 5 of 20 images keep a single trial
    out = oracle_correlation_random(trials, n_iter=5, seed=0)
    np.testing.assert_allclose(out.per_iteration, 15 / 20, atol=1e-12)


def test_random_oracle_draws_only_valid_trials():
    # every valid trial equals its image's signal: drawing a NaN slot would break r = 1
    rng = np.random.default_rng(10)
    trials = np.repeat(rng.uniform(1, 5, size=(3, 25, 1)), 9, axis=2)
    missing = rng.random(trials.shape) < 0.6
    missing[:, :, :2] = False  # at least two valid trials per image
    trials[missing] = np.nan
    out = oracle_correlation_random(trials, n_iter=20, seed=3)
    np.testing.assert_allclose(out.per_iteration, 1.0, atol=1e-12)


# ------------------------------------------------------------------------------ FEV and SNR


def test_fev_matches_known_signal_and_noise():
    rng = np.random.default_rng(11)
    trials = gaussian_trials(rng, signal_sd=1.0, noise_sd=2.0)  # true FEV = 1 / (1 + 4)
    assert fev(trials)[0] == pytest.approx(0.2, abs=0.025)


def test_fev_near_zero_for_untuned_and_one_for_noise_free():
    rng = np.random.default_rng(12)
    untuned = gaussian_trials(rng, signal_sd=0.0, noise_sd=1.0, n_units=5)
    assert np.abs(fev(untuned)).max() < 0.01
    noise_free = np.repeat(rng.normal(size=(2, 50, 1)), 6, axis=2)
    np.testing.assert_allclose(fev(noise_free), 1.0, atol=1e-12)


def test_fev_handles_missing_repeats():
    rng = np.random.default_rng(13)
    trials = gaussian_trials(rng, signal_sd=1.0, noise_sd=1.0)
    trials[rng.random(trials.shape) < 0.3] = np.nan
    assert fev(trials)[0] == pytest.approx(0.5, abs=0.03)


def test_snr_by_hand():
    trials = np.array([[[0.0, 2.0], [4.0, 6.0], [1.0, 1.0]]])
    # means 1, 5, 1 -> population variance 32/9; noise variances 2, 2, 0 -> mean 4/3
    assert snr(trials, anscombe=False)[0] == pytest.approx((32 / 9) / (4 / 3))
    with pytest.raises(MeireportError, match="Anscombe"):
        snr(-trials, anscombe=True)


def test_snr_grows_with_signal():
    rng = np.random.default_rng(14)
    weak = rng.poisson(np.linspace(2, 3, 100)[None, :, None], size=(1, 100, 20))
    strong = rng.poisson(np.linspace(1, 10, 100)[None, :, None], size=(1, 100, 20))
    assert snr(strong)[0] > 5 * snr(weak)[0]


# ------------------------------------------------------------- measures on image means


def test_variance_and_seed_entropy():
    means = pd.DataFrame({11: [0.0, 1, 2, 3], 12: [1.0, 1, 2, 2], 13: [4.0, 4, 4, 4]})
    assert response_variance(means).tolist() == pytest.approx([5 / 3, 1 / 3, 0.0])
    np.testing.assert_allclose(response_entropy(means), [np.log(4), np.log(2), 0.0])


def test_binned_entropy_ignores_float_rounding():
    values = np.repeat([0.1, 0.45, 0.9], 40)  # 0.45 lies mid-bin
    jittered = values + np.random.default_rng(15).normal(0, 1e-12, size=values.size)
    means = pd.DataFrame({1: values, 2: jittered})
    seed_style = response_entropy(means)
    binned = response_entropy(means, n_bins=8)
    assert seed_style[1] == pytest.approx(np.log(3))
    assert seed_style[2] > 4.0  # every jittered mean counted as distinct
    np.testing.assert_allclose(binned, np.log(3), atol=1e-12)
    wide = pd.DataFrame({1: np.random.default_rng(16).uniform(size=5000)})
    assert response_entropy(wide, n_bins=8)[1] <= np.log(8) + 1e-12


def test_anomaly_flags_planted_outlier_reproducibly():
    rng = np.random.default_rng(17)
    means = pd.DataFrame(rng.normal(2.0, 0.2, size=(50, 40)), columns=range(100, 140))
    means[117] += rng.normal(0, 5, size=50) + 10
    a = anomaly_scores(means, seed=3)
    b = anomaly_scores(means, seed=3)
    pd.testing.assert_frame_equal(a, b)
    assert a.loc[117, "is_anomaly"] and a["anomaly_score"].idxmin() == 117
    assert a["is_anomaly"].sum() <= 5


def test_pairwise_partners_and_constant_unit():
    base = np.sin(np.linspace(0, 6, 30))
    noise = np.random.default_rng(18).normal(0, 0.3, 30)
    means = pd.DataFrame({1: base, 2: base + noise, 3: -base, 4: np.ones(30), 5: noise})
    corr, partners = pairwise_correlation(means)
    np.testing.assert_allclose(corr.to_numpy(), corr.to_numpy().T, equal_nan=True)
    assert partners.loc[1, "most_correlated"] == 2
    assert partners.loc[1, "least_correlated"] == 3
    assert partners.loc[3, "least_correlated"] == 1
    assert partners.loc[1, "min_corr"] == pytest.approx(-1.0)
    assert pd.isna(partners.loc[4, "most_correlated"]) and np.isnan(partners.loc[4, "max_corr"])
    assert 4 not in set(partners["most_correlated"].dropna())


# ------------------------------------------------------------------------------- rastermap


def sequence_activity(n_units=24, n_bins=2000, seed=19):
    """Units fire in a travelling wave: unit i peaks at phase i / n_units (the true order)."""
    rng = np.random.default_rng(seed)
    t = np.arange(n_bins)
    phase = (t % 200) / 200.0
    centres = np.arange(n_units) / n_units
    dist = np.abs(phase[None, :] - centres[:, None])
    dist = np.minimum(dist, 1 - dist)
    rate = 0.2 + 4.0 * np.exp(-(dist**2) / (2 * 0.05**2))
    perm = rng.permutation(n_units)
    return rng.poisson(rate[perm]).astype(float), perm  # row j is true unit perm[j]


def test_rastermap_recovers_a_planted_sequence():
    binned, true_rank = sequence_activity()
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        order = rastermap_order(binned, n_PCs=20, time_lag_window=5)
    assert order.method == "rastermap" and order.message == ""
    position = np.empty(len(order.isort))
    position[order.isort] = np.arange(len(order.isort))
    # a wave is circular: neighbours in the true sequence are neighbours in the raster
    gaps = np.abs(np.diff(position[np.argsort(true_rank)]))
    assert np.median(np.minimum(gaps, len(gaps) + 1 - gaps)) <= 1.5


def test_rastermap_falls_back_to_pc1_on_tiny_data():
    rng = np.random.default_rng(20)
    weights = np.array([-1.0, -0.5, 0.0, 0.5, 1.0])
    common = rng.normal(size=300)
    binned = 5 + weights[:, None] * common + rng.normal(0, 0.3, size=(5, 300))
    perm = rng.permutation(5)
    with pytest.warns(UserWarning, match="only 5 active units.*first principal component"):
        order = rastermap_order(binned[perm])
    assert order.method == "pc1"
    ranked = weights[perm][order.isort].tolist()
    assert ranked in (sorted(ranked), sorted(ranked, reverse=True))


def test_rastermap_falls_back_when_not_installed(monkeypatch):
    binned, _ = sequence_activity(n_units=12, n_bins=400)
    monkeypatch.setitem(sys.modules, "rastermap", None)
    with pytest.warns(UserWarning, match="rastermap is not installed"):
        order = rastermap_order(binned)
    assert order.method == "pc1" and sorted(order.isort) == list(range(12))


def test_rastermap_puts_silent_units_last_and_checks_input():
    binned, _ = sequence_activity(n_units=12, n_bins=400)
    binned[[3, 7]] = 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        order = rastermap_order(binned, n_PCs=8)
    assert order.isort[-2:].tolist() == [3, 7]
    assert np.isnan(order.embedding[[3, 7]]).all()
    assert np.all(order.zscored[[3, 7]] == 0)
    with pytest.raises(MeireportError, match="binned: expected a non-empty"):
        rastermap_order(np.zeros((0, 10)))


# ------------------------------------------------------------------------------- selection


@pytest.fixture
def table():
    return pd.DataFrame({
        "unit_id": [101, 102, 103, 104, 105, 106, 107, 108, 109, 110],
        "area": ["VISam"] * 6 + ["VISp"] * 4,
        "oracle_corr": [0.05, 0.10, 0.20, 0.30, 0.40, 0.50, 0.60, 0.70, 0.80, np.nan],
        "variance": [5.0, 4.0, 3.0, 2.0, 1.0, 6.0, 7.0, 8.0, 0.5, 9.0],
        "has_rf": [True] * 9 + [False],
    })


def test_seed_rule_selects_expected_units_with_reasons(table):
    out = select_units(table)
    # 9 finite oracles: q0.6 at position 4.8 -> 0.4 + 0.8 * 0.1 = 0.48; median variance 4.5
    assert out.attrs["thresholds"] == pytest.approx({"oracle_corr": 0.48, "variance": 4.5})
    assert out.loc[out["selected"], "unit_id"].tolist() == [106, 107, 108]
    reasons = dict(zip(out["unit_id"], out["reason"], strict=True))
    assert reasons[106] == reasons[107] == reasons[108] == ""
    assert reasons[105] == "oracle_corr 0.4 <= q0.60 0.48; variance 1 <= q0.50 4.5"
    assert reasons[109] == "variance 0.5 <= q0.50 4.5"
    assert reasons[101] == "oracle_corr 0.05 <= q0.60 0.48"
    assert reasons[110] == "oracle_corr is NaN"
    assert list(out.columns[: table.shape[1]]) == list(table.columns)


def test_absolute_thresholds_require_and_max_units(table):
    rule = SelectionRule(above_quantile={}, above={"oracle_corr": 0.25, "variance": 1.5},
                         require=("has_rf",), max_units=2)
    out = select_units(table, rule).set_index("unit_id")
    assert out.index[out["selected"]].tolist() == [107, 108]
    assert out.loc[106, "reason"] == "not in the top 2 by oracle_corr (rank 3)"
    assert out.loc[104, "reason"] == "not in the top 2 by oracle_corr (rank 4)"
    assert out.loc[105, "reason"] == "variance 1 <= 1.5"
    assert out.loc[110, "reason"] == "oracle_corr is NaN; has_rf is not True"


def test_area_filter_uses_area_population(table):
    rule = SelectionRule(above_quantile={"oracle_corr": 0.5}, areas=("VISam",))
    out = select_units(table, rule).set_index("unit_id")
    # median oracle of VISam units only: 0.25
    assert out.attrs["thresholds"]["oracle_corr"] == pytest.approx(0.25)
    assert out.index[out["selected"]].tolist() == [104, 105, 106]
    assert out.loc[108, "reason"] == "area VISp not in ['VISam']"


def test_explicit_units_override_everything(table):
    rule = SelectionRule(units=(101, 110), areas=("VISp",))
    out = select_units(table, rule).set_index("unit_id")
    assert out.index[out["selected"]].tolist() == [101, 110]
    assert out.loc[108, "reason"] == "not in the explicit unit list"
    with pytest.raises(MeireportError, match=r"rule.units: unit ids not in metrics: \[999\]"):
        select_units(table, SelectionRule(units=(999,)))


def test_unit_id_may_come_from_index(table):
    out = select_units(table.drop(columns="unit_id").set_index(table["unit_id"]))
    assert out.loc[out["selected"], "unit_id"].tolist() == [106, 107, 108]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"above_quantile": {"oracle_corr": 1.2}}, r"rule.above_quantile\['oracle_corr'\]"),
        ({"above_quantile": {"oracle_corr": -0.1}}, "expected a quantile in \\[0, 1\\]"),
        ({"above": {"fev": "high"}}, r"rule.above\['fev'\]: expected a number"),
        ({"max_units": 0}, "rule.max_units: expected an integer >= 1"),
    ],
)
def test_rule_rejects_bad_fields(kwargs, match):
    with pytest.raises(MeireportError, match=match):
        SelectionRule(**kwargs)


def test_unknown_metric_and_bad_table(table):
    with pytest.raises(MeireportError, match="rule.above: unknown metric 'snrr'"):
        select_units(table, SelectionRule(above={"snrr": 1.0}))
    with pytest.raises(MeireportError, match="metrics: expected a non-empty DataFrame"):
        select_units(table.iloc[:0])
    with pytest.raises(MeireportError, match="rule.areas: unknown metric 'area'"):
        rule_thresholds(table.drop(columns="area"), SelectionRule(areas=("VISp",)))


def test_unit_metrics_table_and_silent_unit_rejected():
    rng = np.random.default_rng(21)
    rates = np.outer(np.linspace(0, 1, 6), rng.uniform(0, 8, 40)) + 1
    trials = rng.poisson(rates[..., None], size=(6, 40, 20)).astype(float)
    trials[2] = 0.0  # a unit with no spikes at all
    ids = [501, 502, 503, 504, 505, 506]
    means = pd.DataFrame(trials.mean(axis=2).T, columns=ids)[ids[::-1]]  # columns out of order
    table = unit_metrics(trials, means, ids, areas=["VISam"] * 6, seed=0)
    assert table["unit_id"].tolist() == ids
    np.testing.assert_allclose(table["variance"], trials.mean(axis=2).var(axis=1, ddof=1))
    np.testing.assert_allclose(table["oracle_corr"], oracle_correlation(trials), equal_nan=True)
    assert table.loc[5, "oracle_corr"] > table.loc[1, "oracle_corr"]
    out = select_units(table).set_index("unit_id")
    assert not out.loc[503, "selected"]
    assert out.loc[503, "reason"].startswith("oracle_corr is NaN")
    assert out.loc[506, "selected"]
    with pytest.raises(MeireportError, match="unit_ids: expected 6 unique ids"):
        unit_metrics(trials, means, ids[:5])


# --------------------------------------------------------------------------------- figures


def test_selection_figures_draw_the_rule(table):
    from meireport.plots.select import plot_oracle_distribution, plot_selection

    out = select_units(table)
    ax = plot_selection(out).axes[0]
    vertical = [ln.get_xdata()[0] for ln in ax.lines if ln.get_xdata()[0] == ln.get_xdata()[1]]
    horizontal = [ln.get_ydata()[0] for ln in ax.lines if ln.get_ydata()[0] == ln.get_ydata()[1]]
    assert vertical == pytest.approx([4.5]) and horizontal == pytest.approx([0.48])
    assert ax.get_xlabel().endswith("(spikes$^2$)") and ax.get_ylabel().endswith("(Pearson r)")
    hist = plot_oracle_distribution(out).axes[0]
    assert [ln.get_xdata()[0] for ln in hist.lines] == pytest.approx([0.48])
    assert "1 NaN" in hist.get_title()


def test_raster_and_heatmap_follow_the_order():
    from meireport.plots.select import plot_correlation_heatmap, plot_raster

    binned, _ = sequence_activity(n_units=12, n_bins=400)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        order = rastermap_order(binned, n_PCs=8)
    image = plot_raster(order, bin_size_s=0.05).axes[0].images[0].get_array()
    np.testing.assert_array_equal(image, order.zscored[order.isort])
    corr, _ = pairwise_correlation(pd.DataFrame(binned.T))
    ax = plot_correlation_heatmap(corr, order=order.isort).axes[0]
    np.testing.assert_allclose(ax.images[0].get_array(),
                               corr.to_numpy()[np.ix_(order.isort, order.isort)])
    assert ax.get_xlabel() == "Unit (index)"
