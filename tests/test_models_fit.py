"""Training, metrics and checkpoints, asserted on simulated ground truth.

The positive control fits a data-rich simulated session (1000 images): if the models and the
training are right, they recover the true neurons on images never shown. The 118-image session
measures what the data-efficiency options buy. Torch runs on one thread here: two threads on
two cores shared with other jobs can be ten times slower.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch

from meireport.errors import MeireportError
from meireport.models import (
    CNNConfig,
    CoreConfig,
    Ensemble,
    LNConfig,
    ResponseData,
    TrainConfig,
    bootstrap_corr_ci,
    evaluate,
    fit_model,
    gabor_set,
    load_model,
    load_responses,
    make_split,
    pearson,
    poisson_loglik,
    single_trial_corr,
)

pytestmark = pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad")

TINY_CORE = CoreConfig(hidden_channels=4, layers=2, input_kern=9, hidden_kern=3)
CONTROL_CORE = CoreConfig(hidden_channels=8, layers=2, input_kern=9)
QUICK = TrainConfig(max_epochs=6, patience=3, n_boot=200, n_new_images=100)


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_torch_thread):
    """Every test of this module with torch on one thread (conftest)."""


def _centres(truth, unit_ids, geometry):
    idx = truth.index_of(unit_ids)
    col, row = geometry.deg_to_px(truth.rf_params["x_deg"][idx], truth.rf_params["y_deg"][idx])
    return {int(u): (float(c), float(r)) for u, c, r in zip(unit_ids, col, row, strict=True)}


@pytest.fixture(scope="module")
def default(default_session):
    """VISam responses of the default 118-image session, with gabors, truth and RF centres.

    RF centres are the true ones here (mapping them from the gabors is rfmap's job and test).
    """
    from meireport.select import oracle_correlation
    from meireport.sources import open_session

    with open_session(default_session.cache_dir) as s:
        data = load_responses(s, area="VISam", gabors=True)
        geometry = s.geometry
    truth = default_session.truth
    kinds = dict(zip(truth.unit_id.tolist(), truth.kind.tolist(), strict=True))
    oracle = dict(zip(data.unit_ids.tolist(), oracle_correlation(data.trials), strict=True))
    return {
        "data": data,
        "truth": truth,
        "kinds": kinds,
        "centres": _centres(truth, data.unit_ids, geometry),
        "oracle": oracle,
        "tuned": [int(u) for u in data.unit_ids if kinds[int(u)] in ("simple", "complex")],
    }


@pytest.fixture(scope="module")
def rich(rich_control_session):
    """Data-rich positive control: 1000 images x 8 repeats, 3 simple, 3 complex, 1 untuned."""
    from meireport.sources import open_session, true_rate

    sim = rich_control_session
    with open_session(sim.cache_dir) as s:
        data = load_responses(s, area="VISam")
        geometry = s.geometry
    truth = sim.truth
    peak = np.percentile(true_rate(truth, data.images, data.unit_ids), 99, axis=1)
    return {
        "data": data,
        "truth": truth,
        "kinds": dict(zip(truth.unit_id.tolist(), truth.kind.tolist(), strict=True)),
        "peak": dict(zip(data.unit_ids.tolist(), peak.tolist(), strict=True)),
        "centres": _centres(truth, data.unit_ids, geometry),
    }


# --------------------------------------------------------------------------------------------
# measures and split
# --------------------------------------------------------------------------------------------
def test_split_is_fixed_disjoint_and_seeded():
    s = make_split(np.arange(118))
    assert (len(s.train), len(s.val), len(s.test)) == (90, 14, 14)
    assert not set(s.train) & set(s.val) and not set(s.train) & set(s.test)
    assert not set(s.val) & set(s.test)
    assert set(s.train) | set(s.val) | set(s.test) == set(range(118))
    assert make_split(range(118)) == s
    assert make_split(range(118), seed=1).test != s.test
    with pytest.raises(MeireportError, match="image_ids"):
        make_split(range(10))
    with pytest.raises(MeireportError, match="val_frac"):
        make_split(range(100), val_frac=1.5)


def test_pearson_and_single_trial_correlation():
    rng = np.random.default_rng(0)
    x = rng.normal(size=50)
    assert float(pearson(x, 3 * x + 1)) == pytest.approx(1.0)
    assert float(pearson(x, -x)) == pytest.approx(-1.0)
    assert np.isnan(pearson(x, np.ones(50)))
    trials = x[:, None] + rng.normal(scale=2.0, size=(50, 20))
    st = single_trial_corr(x, trials)
    mean_r = float(pearson(x, trials.mean(axis=1)))
    assert 0 < st < mean_r  # single trials are noisier than their mean
    assert st == pytest.approx(1 / np.sqrt(1 + 4), abs=0.06)  # signal var 1, noise var 4


def test_poisson_loglik_matches_scipy_and_prefers_the_true_rate():
    from scipy.stats import poisson

    rng = np.random.default_rng(1)
    lam = rng.uniform(0.5, 8, size=30)
    trials = rng.poisson(lam[:, None], size=(30, 40)).astype(float)
    trials[0, 5] = np.nan
    ok = np.isfinite(trials)
    expected = poisson.logpmf(trials[ok], np.broadcast_to(lam[:, None], trials.shape)[ok]).mean()
    assert poisson_loglik(lam, trials) == pytest.approx(expected)
    assert poisson_loglik(lam, trials) > poisson_loglik(np.full(30, lam.mean()), trials)


def test_bootstrap_ci_covers_the_truth_and_narrows_with_more_images():
    rng = np.random.default_rng(2)
    r_true, covered, widths = 0.6, 0, {}
    cov = [[1, r_true], [r_true, 1]]
    for n in (14, 120):
        w = []
        for rep in range(40):
            x, y = rng.multivariate_normal([0, 0], cov, size=n).T
            lo, hi = bootstrap_corr_ci(x, y, n_boot=300, seed=rep)
            w.append(hi - lo)
            covered += n == 14 and lo <= r_true <= hi
        widths[n] = np.mean(w)
    assert covered >= 32  # ~95 % nominal; percentile bootstrap of r undercovers a little
    assert widths[14] > 2 * widths[120]
    assert 0.3 < widths[14] < 0.9  # 14 test images: about +-0.25 around r
    with pytest.raises(MeireportError, match="pred, obs"):
        bootstrap_corr_ci([1, 2], [1, 2])


def test_config_validation():
    with pytest.raises(MeireportError, match="loss"):
        TrainConfig(loss="l1")
    with pytest.raises(MeireportError, match="patience"):
        TrainConfig(patience=0)
    with pytest.raises(MeireportError, match="lr_factor"):
        TrainConfig(lr_factor=1.5)
    with pytest.raises(MeireportError, match="unknown field"):
        TrainConfig.from_dict({"lr": 0.1, "momentum": 0.9})
    assert TrainConfig.from_dict(TrainConfig(seed=3).to_dict()) == TrainConfig(seed=3)


# --------------------------------------------------------------------------------------------
# gabor presentations as training stimuli
# --------------------------------------------------------------------------------------------
def test_rendered_gabor_conditions_explain_the_recorded_gabor_responses(default_session,
                                                                        default):
    """Shown to the true neurons, the rendered drift phases give the recorded responses.

    Every tuned visual unit (VISam and VISp): few RFs lie where the 9 x 9 gabor grid's patches
    modulate them, and the median needs ten such units.
    """
    from meireport.sources import open_session, true_rate

    with open_session(default_session.cache_dir) as s:
        data = load_responses(s, area=None, gabors=True)
    truth, g = default["truth"], data.gabors
    assert g.images.shape == (243, 8, 60, 96) and set(g.n_repeats) == {15}
    kinds = default["kinds"]
    ids = [int(u) for u in data.unit_ids if kinds[int(u)] in ("simple", "complex")]
    rate = true_rate(truth, g.images.reshape(-1, 60, 96), ids).reshape(len(ids), 243, 8)
    expected = rate.mean(axis=2)  # rate averaged over the drift, as the simulator does
    observed = g.responses[data.rows(ids)]
    strong = expected.std(axis=1) > 2.0  # spikes/s of modulation across conditions
    r = pearson(expected[strong], observed[strong], axis=1)
    assert strong.sum() >= 10 and np.median(r) > 0.9
    # a static (phase 0) rendering explains them worse for simple cells: the drift matters
    simple = np.array([default["kinds"][u] == "simple" for u in ids]) & strong
    r_static = pearson(rate[simple, :, 0], observed[simple], axis=1)
    assert np.median(r_static) < np.median(r[simple[strong]])


def test_gabor_set_validates_its_inputs():
    t = pd.DataFrame({"orientation": [0.0], "x_position": [0.0], "y_position": [0.0]})
    with pytest.raises(MeireportError, match="counts"):
        gabor_set(t, pd.DataFrame({1: [1, 2]}, index=[5, 6]))


# --------------------------------------------------------------------------------------------
# positive control: data-rich session, true rate on new images
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def control(rich):
    """LN and CNN fits (24 px RF crops) of the high-rate simple cells and all complex cells."""
    data, truth = rich["data"], rich["truth"]
    units = [u for u in data.unit_ids.tolist()
             if rich["kinds"][u] == "complex" or (rich["kinds"][u] == "simple"
                                                 and rich["peak"][u] >= 30)]
    cfg = TrainConfig(batch_size=32, n_boot=200, n_new_images=300)
    rows = []
    for u in units:
        c = rich["centres"][u]
        ln = fit_model(data, [u], "ln", LNConfig(crop_size=(24, 24)), cfg, rf_centres=c,
                       truth=truth)
        cnn = fit_model(data, [u], "cnn", CNNConfig(core=CONTROL_CORE, crop_size=(24, 24)), cfg,
                        rf_centres=c, truth=truth)
        rows.append({"unit_id": u, "kind": rich["kinds"][u],
                     "ln": ln.metrics.loc[u, "true_corr"], "cnn": cnn.metrics.loc[u, "true_corr"]})
    return pd.DataFrame(rows).set_index("unit_id")


def test_positive_control_recovers_high_rate_simple_cells(control):
    simple = control[control["kind"] == "simple"]
    assert len(simple) >= 2
    assert (simple["ln"] >= 0.8).all(), simple
    assert (simple["cnn"] >= 0.8).all(), simple


def test_positive_control_recovers_complex_cells_and_cnn_beats_ln(control):
    cx = control[control["kind"] == "complex"]
    assert len(cx) == 3
    assert (cx["cnn"] >= 0.7).all(), cx
    assert (cx["cnn"] > cx["ln"] + 0.3).all(), cx  # an LN model cannot do the energy model


# --------------------------------------------------------------------------------------------
# the 118-image session: what the data-efficiency options buy
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ln_options(default):
    """True-rate correlation of LN fits of 8 simple cells: full field, RF crop, crop + gabors."""
    data, truth, kinds = default["data"], default["truth"], default["kinds"]
    simple = [u for u in default["tuned"] if kinds[u] == "simple"][:8]
    base = dataclasses.replace(QUICK, max_epochs=150, patience=12, n_new_images=200)
    options = {
        "full field": (None, base),
        "24 px RF crop": ((24, 24), base),
        "crop + gabors": ((24, 24), dataclasses.replace(base, gabors=True)),
    }
    res = {}
    for name, (crop, cfg) in options.items():
        res[name] = [
            fit_model(data, [u], "ln", LNConfig(crop_size=crop), cfg,
                      rf_centres=default["centres"][u], truth=truth).metrics.loc[u, "true_corr"]
            for u in simple
        ]
    table = pd.DataFrame(res, index=simple)
    print("LN true-rate corr on new images, 118-image session, simple cells (median):",
          table.median().round(2).to_dict())
    return table


def test_rf_crop_improves_the_ln_model_on_118_images(ln_options):
    full, crop = ln_options["full field"], ln_options["24 px RF crop"]
    assert crop.median() > full.median() + 0.1
    assert (crop > full).mean() >= 0.6


def test_gabor_presentations_join_the_training_set(ln_options):
    """Measured, not asserted better: on this session the gabors do not robustly help (see the
    printed medians and bench/bench_train.py compare); the fit with them must still work."""
    gab = ln_options["crop + gabors"]
    assert gab.notna().all() and gab.median() > 0.2


def test_fixed_seed_gives_identical_metrics(default):
    data, u = default["data"], default["tuned"][0]
    kw = dict(model_config=CNNConfig(core=TINY_CORE, crop_size=(24, 24)), train_config=QUICK,
              rf_centres=default["centres"][u], truth=default["truth"])
    a = fit_model(data, [u], "cnn", **kw)
    b = fit_model(data, [u], "cnn", **kw)
    pd.testing.assert_frame_equal(a.metrics.drop(columns="seconds"),
                                  b.metrics.drop(columns="seconds"))
    for k, v in a.model.state_dict().items():
        torch.testing.assert_close(v, b.model.state_dict()[k], rtol=0, atol=0)
    c = fit_model(data, [u], "cnn", **(kw | {"train_config": dataclasses.replace(QUICK, seed=1)}))
    assert not np.allclose(a.predict(data.images[:5]), c.predict(data.images[:5]))


def test_test_images_never_influence_training(default):
    data = default["data"]
    u = default["tuned"][1]
    split = make_split(data.image_ids)
    scrambled = data.trials.copy()
    te = data.image_rows(split.test)
    scrambled[:, te] = np.random.default_rng(0).permutation(scrambled[:, te], axis=1)
    other = dataclasses.replace(data, trials=scrambled)
    cfg = LNConfig(crop_size=(24, 24))
    kw = dict(train_config=QUICK, rf_centres=default["centres"][u])
    a = fit_model(data, [u], "ln", cfg, **kw)
    b = fit_model(other, [u], "ln", cfg, **kw)
    torch.testing.assert_close(a.model.weight, b.model.weight, rtol=0, atol=0)
    assert a.metrics.loc[u, "val_corr"] == b.metrics.loc[u, "val_corr"]
    assert [r["val_corr"] for r in a.history] == [r["val_corr"] for r in b.history]


def test_best_weights_are_restored_and_history_is_complete(default):
    data, u = default["data"], default["tuned"][2]
    cfg = dataclasses.replace(QUICK, max_epochs=40, patience=4, min_delta=0.0)
    fit = fit_model(data, [u], "ln", LNConfig(crop_size=(24, 24)), cfg,
                    rf_centres=default["centres"][u], oracle=default["oracle"])
    h = fit.history
    assert [r["epoch"] for r in h] == list(range(1, len(h) + 1))
    best = [r for r in h if r["best"]]
    assert len(best) == 1
    assert best[0]["val_corr"] == pytest.approx(max(r["val_corr"] for r in h))
    assert fit.metrics.loc[u, "val_corr"] == pytest.approx(best[0]["val_corr"], abs=1e-5)
    if len(h) < cfg.max_epochs:  # stopped early: exactly `patience` epochs after the best
        assert len(h) - best[0]["epoch"] == cfg.patience
    m = fit.metrics.loc[u]
    assert m["frac_oracle"] == pytest.approx(m["single_trial_corr"] / default["oracle"][u])
    assert m["test_corr_ci_low"] <= m["test_corr"] <= m["test_corr_ci_high"]
    assert m["n_test"] == 14 and len(fit.test["pred"][0]) == 14


def test_population_model_ensemble(default, tmp_path):
    data, ids = default["data"], default["tuned"][:3]
    cfg = dataclasses.replace(QUICK, max_epochs=3, ensemble=2)
    fit = fit_model(data, ids, "cnn", CNNConfig(core=TINY_CORE), cfg,
                    rf_centres=[default["centres"][u] for u in ids], truth=default["truth"])
    assert isinstance(fit.model, Ensemble) and fit.model.n_units == 3
    assert list(fit.metrics.index) == ids
    assert {"spread", "true_corr", "true_kind"} <= set(fit.metrics.columns)
    assert (fit.metrics["spread"] > 0).all()
    assert {r["member"] for r in fit.history} == {0, 1}
    mean, spread = fit.predict_with_spread(data.images[:4])
    assert mean.shape == spread.shape == (4, 3) and (spread > 0).all()
    loaded = load_model(fit.save(tmp_path / "pop.pt"))
    np.testing.assert_array_equal(loaded.predict(data.images[:8]), fit.predict(data.images[:8]))


def test_fine_tuning_a_shared_readout_starts_from_it_and_never_ends_worse(default):
    """``fit_model(start=...)``: a unit's readout of a shared core, fitted further on its own
    responses. The start is a copy (the shared model is untouched), it competes in early
    stopping as epoch 0 (a fit that cannot beat it returns it), and the result's validation
    correlation is never below the start's."""
    data, ids = default["data"], default["tuned"][:4]
    shared = fit_model(data, ids, "cnn", CNNConfig(core=TINY_CORE), QUICK,
                       rf_centres=[default["centres"][u] for u in ids])
    u = ids[1]
    sub = shared.subset([u])
    before = [p.detach().clone() for p in sub.model.parameters()]
    val = np.isin(data.image_ids, np.asarray(shared.split.val))
    obs = np.nanmean(data.trials[data.rows([u])[0], val], axis=-1)

    def val_corr(model) -> float:
        return pearson(model.predict(data.images[val])[:, 0], obs)

    kw = dict(split=shared.split, rf_centres=[default["centres"][u]], start=sub.model)
    tuned = fit_model(data, [u], "cnn", CNNConfig(core=TINY_CORE),
                      dataclasses.replace(QUICK, lr=3e-3), **kw)
    assert all(torch.equal(a, b) for a, b in zip(before, sub.model.parameters(), strict=True))
    assert val_corr(tuned) >= val_corr(sub) - 1e-6
    assert tuned.split.val == shared.split.val and tuned.unit_ids.tolist() == [u]
    frozen = fit_model(data, [u], "cnn", CNNConfig(core=TINY_CORE),
                       dataclasses.replace(QUICK, lr=1e-12, min_delta=0.5, patience=1), **kw)
    np.testing.assert_array_equal(frozen.predict(data.images[:8]), sub.predict(data.images[:8]))
    assert not any(r["best"] for r in frozen.history)  # epoch 0, the start, was kept
    with pytest.raises(MeireportError, match=r"^start: expected a model of 2 unit\(s\), got 1"):
        fit_model(data, ids[:2], "cnn", CNNConfig(core=TINY_CORE), QUICK, start=sub.model)


def test_mse_loss_and_input_checks(default):
    data, u = default["data"], default["tuned"][0]
    fit = fit_model(data, [u], "ln", LNConfig(), dataclasses.replace(QUICK, loss="mse"),
                    rf_centres=[None])  # no RF centre known: fine without a crop
    assert np.isfinite(fit.metrics.loc[u, "test_corr"])
    with pytest.raises(MeireportError, match="kind"):
        fit_model(data, [u], "rnn")
    with pytest.raises(MeireportError, match="rf_centres"):
        fit_model(data, [u], "ln", LNConfig(crop_size=(24, 24)), QUICK)
    with pytest.raises(MeireportError, match="unit_ids"):
        fit_model(data, [1], "ln", train_config=QUICK)
    with pytest.raises(MeireportError, match="model_config"):
        fit_model(data, [u], "ln", CNNConfig(), QUICK)
    with pytest.raises(MeireportError, match="oracle"):
        fit_model(data, [u], "ln", train_config=QUICK, oracle=[0.5, 0.6])
    no_gabors = dataclasses.replace(data, gabors=None)
    with pytest.raises(MeireportError, match="gabors"):
        fit_model(no_gabors, [u], "ln", train_config=dataclasses.replace(QUICK, gabors=True))
    with pytest.raises(MeireportError, match="trials"):
        ResponseData(data.images, data.trials[:, :5], data.unit_ids, data.image_ids)


# --------------------------------------------------------------------------------------------
# checkpoints
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained_cnn(default):
    data, u = default["data"], default["tuned"][0]
    return fit_model(data, [u], "cnn", CNNConfig(core=TINY_CORE), QUICK,
                     rf_centres=default["centres"][u], oracle=default["oracle"])


def test_checkpoint_roundtrip_gives_identical_predictions(trained_cnn, default, tmp_path):
    images = default["data"].images[:10]
    path = trained_cnn.save(tmp_path / "unit.pt")
    raw = torch.load(path, weights_only=True)  # plain values and tensors only
    assert {"spec", "state_dict", "train_config", "metrics", "split", "versions"} <= set(raw)
    loaded = load_model(path)
    np.testing.assert_array_equal(loaded.predict(images), trained_cnn.predict(images))
    assert loaded.split == trained_cnn.split
    assert loaded.train_config == trained_cnn.train_config
    assert loaded.history == trained_cnn.history
    pd.testing.assert_frame_equal(loaded.metrics, trained_cnn.metrics, check_dtype=False)
    assert loaded.extra["versions"]["torch"] == torch.__version__
    ln = fit_model(default["data"], [default["tuned"][0]], "ln",
                   LNConfig(crop_size=(20, 20)), QUICK,
                   rf_centres=default["centres"][default["tuned"][0]])
    again = load_model(ln.save(tmp_path / "ln.pt"))
    np.testing.assert_array_equal(again.predict(images), ln.predict(images))


def test_truncated_or_foreign_checkpoint_gives_one_clear_error(trained_cnn, tmp_path):
    path = trained_cnn.save(tmp_path / "m.pt")
    blob = path.read_bytes()
    bad = tmp_path / "truncated.pt"
    bad.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(MeireportError, match="corrupt or truncated"):
        load_model(bad)
    foreign = tmp_path / "tensor.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    with pytest.raises(MeireportError, match="not a meireport model"):
        load_model(foreign)
    with pytest.raises(MeireportError, match="does not exist"):
        load_model(tmp_path / "missing.pt")
    ck = torch.load(path, weights_only=True)
    ck["spec"]["config"]["core"]["hidden_channels"] = 5  # weights no longer fit the spec
    mismatched = tmp_path / "mismatched.pt"
    torch.save(ck, mismatched)
    with pytest.raises(MeireportError, match="does not match its model spec"):
        load_model(mismatched)
    ck["format_version"] = 99
    torch.save(ck, mismatched)
    with pytest.raises(MeireportError, match="format version"):
        load_model(mismatched)


# --------------------------------------------------------------------------------------------
# figures
# --------------------------------------------------------------------------------------------
def test_model_figures(trained_cnn, default):
    from meireport.plots.models import (
        plot_learning_curves,
        plot_ln_filter,
        plot_predicted_vs_observed,
        plot_readout_position,
    )
    from meireport.select import rf_maps

    fig = plot_learning_curves(trained_cnn.history)
    assert all("(" in ax.get_xlabel() and "(" in ax.get_ylabel() for ax in fig.axes)
    u = int(trained_cnn.unit_ids[0])
    t, m = trained_cnn.test, trained_cnn.metrics.loc[u]
    fig = plot_predicted_vs_observed(t["pred"][0], t["obs"][0], t["sem"][0],
                                     (m["test_corr_ci_low"], m["test_corr_ci_high"]), str(u))
    assert "[" in fig.axes[0].get_title()
    data = default["data"]
    g = data.gabors
    counts = pd.DataFrame(np.repeat(g.responses[data.rows([u])].T, 2, axis=0), columns=[u])
    table = pd.concat([g.conditions] * 2, ignore_index=True)
    maps = rf_maps(table, counts)
    fig = plot_readout_position(maps.maps[0], maps.x_deg, maps.y_deg,
                                trained_cnn.model.readout_positions_px()[0],
                                true_centre_px=default["centres"][u])
    assert fig.axes[0].get_xlabel() == "Azimuth (deg)"
    truth = default["truth"]
    true_rf = truth.rf_even[truth.index_of([u])[0]]
    fig = plot_ln_filter(true_rf * 2, true_rf)
    assert "r = 1.00" in fig._suptitle.get_text()
    with pytest.raises(MeireportError, match="history"):
        plot_learning_curves([])


def test_evaluate_reports_the_true_rate_correlation(trained_cnn, default):
    metrics, test = evaluate(trained_cnn.model, default["data"], trained_cnn.unit_ids,
                             trained_cnn.split, QUICK, truth=default["truth"])
    u = int(trained_cnn.unit_ids[0])
    assert -1 <= metrics.loc[u, "true_corr"] <= 1
    assert metrics.loc[u, "true_kind"] == default["kinds"][u]
    assert metrics.loc[u, "test_corr"] == pytest.approx(trained_cnn.metrics.loc[u, "test_corr"])
