"""The data-limit study: tables, its pieces and their shared store, the trust label against the
truth, CI coverage."""

from __future__ import annotations

import importlib
import json
import shutil
import tempfile

import numpy as np
import pandas as pd
import pytest

from meireport.errors import MeireportError
from meireport.models import bootstrap_corr_ci, new_images, pearson
from meireport.report import limits
from meireport.report.engine import CACHED, execute_call
from meireport.report.limits import OPTION_VARIANTS
from meireport.report.params import LimitsParams, parse_params
from meireport.store import Store, cache_root

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


TINY_STUDY = LimitsParams(n_images=[30], n_repeats=6, area_population=(6, 4, 3, 2), n_units=2,
                          mei_steps=20, options_at=30, pooled_units=[12],
                          pool_sessions=1).model_dump(mode="json")


def _stage(out_dir, cache, **changes):
    """The tiny study's limits stage into ``out_dir`` with the store in ``cache``."""
    args = {"limits": TINY_STUDY, "model": TINY["model"], "train": TINY["train"],
            "selection": TINY["selection"]} | changes
    return limits.limits_stage(out_dir, cache=cache, **args)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny study computed once: its store, its run's out_dir and its tables."""
    cache, out = tmp_path_factory.mktemp("cache"), tmp_path_factory.mktemp("run")
    return cache, out, _stage(out, cache)


@pytest.fixture
def cache(tiny, tmp_path):
    """A copy of the tiny study's store, for a test that may change it."""
    shutil.copytree(tiny[0], tmp_path / "cache")
    return tmp_path / "cache"


@pytest.fixture
def calls(monkeypatch):
    """How many fits, simulations and selection stages the pieces run (counted, then run)."""
    import meireport.models
    import meireport.report.stages
    import meireport.sources

    n = {"fit": 0, "simulate": 0, "select": 0}

    def counting(name, real):
        def counted(*a, **k):
            n[name] += 1
            return real(*a, **k)
        return counted

    for name, module, attr in (("fit", meireport.models, "fit_model"),
                               ("simulate", meireport.sources, "simulate_session"),
                               ("select", meireport.report.stages, "select_stage")):
        monkeypatch.setattr(module, attr, counting(name, getattr(module, attr)))
    return n


def _entry(cache, task_id: str):
    """The store folder of one task of the tiny study."""
    (task,) = [t for t in limits.plan_tasks(TINY_STUDY, TINY["model"], TINY["train"],
                                            TINY["selection"], cache=str(cache))
               if t.task_id == task_id]
    return Store(cache_root(cache) / "store").entry(limits._ensure(task))


def test_tables_hold_every_model_option_and_unit(tiny):
    t = tiny[2]
    s = t["session"].iloc[0]
    assert s["n_tuned"] == 10 and 10 < s["n_units"] <= 15  # poor units may fail the filter
    assert 0 <= s["precision"] <= 1 and 0 < s["recall"] <= 1 and s["seconds"] > 0
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


def test_the_pooled_axis_judges_a_shared_core_on_the_per_neuron_units(tiny):
    """A shared core on 12 units of two sessions: the modelled units (2 simple, 2 complex of the
    30-image session) are in its pool, with their MEIs on it, beside their per-neuron CNNs."""
    t = tiny[2]
    both, units = t["pooled"], t["units"]
    pooled, tuned = both[~both["finetuned"]], both[both["finetuned"]]
    assert pooled["unit_id"].tolist() == units["unit_id"].tolist()  # the same units, in order
    assert tuned["unit_id"].tolist() == units["unit_id"].tolist()  # each also fine-tuned
    assert (both["n_pool"] == 12).all() and (both["sessions"] == 2).all()
    assert pooled["true_kind"].tolist() == units["true_kind"].tolist()
    for col in ("true_corr", "mei_rf_corr", "test_corr"):
        assert both[col].between(-1, 1).all()
    assert (both["mei_true_resp"] > 0).all() and (both["seconds_per_unit"] > 0).all()
    # a fine-tuned model costs the shared fit's share plus its own fit
    assert (tuned["seconds_per_unit"].to_numpy() > pooled["seconds_per_unit"].to_numpy()).all()
    table = limits.pooled_table(t)
    assert table.index.tolist() == ["per-neuron CNN", "shared core, 12 units",
                                    "shared core, 12 units + fine-tune"]
    assert (table["units"] == 4).all()
    per = units.set_index("unit_id")["mei_rf_corr"]
    simple = units.loc[units["true_kind"] == "simple", "unit_id"]
    assert table.loc["per-neuron CNN", "MEI vs truth simple"] == pytest.approx(
        per.loc[simple].median())
    assert "per-neuron CNN" in limits.pooled_verdict(table)
    # the trust label on the shared core's MEIs: the same rule, the shared model's own figures
    # beside the unit's selection figures
    from meireport.trust import TrustThresholds, assess

    th = TrustThresholds()
    for r in both.to_dict("records"):
        assert r["selection_stability"] == units.set_index("unit_id").loc[
            r["unit_id"], "selection_stability"]
        assert r["test_corr_ci_low"] <= r["test_corr"] <= r["test_corr_ci_high"]
        assert r["trust"] == assess(r, th).label
    sep, auc = limits.pooled_trust(both)  # the shared cores' own readouts
    assert sep.index.get_level_values(0).unique().tolist() == [12]
    assert sep["units"].sum() == len(pooled)
    assert "frac_oracle" in auc and "test_corr_ci_low" in auc


def test_a_second_run_reads_the_store_and_writes_only_its_tables(tiny, cache, calls, tmp_path):
    again = _stage(tmp_path / "other", cache)
    assert calls == {"fit": 0, "simulate": 0, "select": 0}
    for name, df in tiny[2].items():
        pd.testing.assert_frame_equal(again[name], df)
        csv = f"limits_{name}.csv"
        assert (tmp_path / "other" / csv).read_bytes() == (tiny[1] / csv).read_bytes()
    assert sorted(p.name for p in (tmp_path / "other").iterdir()) == [
        "limits_models.csv", "limits_pooled.csv", "limits_session.csv", "limits_units.csv"]


def test_new_trust_thresholds_change_the_labels_only(tiny, cache, calls, tmp_path):
    t = tiny[2]
    strict = _stage(tmp_path, cache, trust={"min_frac_oracle": 5.0})
    assert calls == {"fit": 0, "simulate": 0, "select": 0}
    assert "high" not in set(strict["units"]["trust"])
    assert strict["units"]["trust_reasons"].str.contains("oracle").all()
    label = ["trust", "trust_reasons"]
    pd.testing.assert_frame_equal(strict["units"].drop(columns=label),
                                  t["units"].drop(columns=label))
    pd.testing.assert_frame_equal(strict["models"], t["models"])
    pd.testing.assert_frame_equal(strict["session"], t["session"])


def test_a_new_selection_rule_recomputes_the_select_pieces_only(tiny, cache, calls, tmp_path):
    t = tiny[2]
    loose = _stage(tmp_path, cache, selection=dict(TINY["selection"], oracle_quantile=0.1))
    assert calls == {"fit": 0, "simulate": 0, "select": 1}
    pd.testing.assert_frame_equal(loose["models"], t["models"])  # same units, same fits
    rule = ["selected", "selection_stability", "trust", "trust_reasons"]
    pd.testing.assert_frame_equal(loose["units"].drop(columns=rule), t["units"].drop(columns=rule))
    s, s0 = loose["session"].iloc[0], t["session"].iloc[0]
    assert s["n_selected"] > s0["n_selected"] and s["recall"] >= s0["recall"]


def test_a_new_model_setting_refits_without_resimulating(tiny, cache, calls, monkeypatch):
    import meireport.models

    def boom(*a, **k):
        raise AssertionError("refitted")

    monkeypatch.setattr(meireport.models, "fit_model", boom)
    same = limits.unit_piece(30, "simple", 0, TINY_STUDY, TINY["model"], TINY["train"], cache)
    assert same == CACHED  # found, not computed: what the engine reports as cached
    (task,) = [t for t in limits.plan_tasks(TINY_STUDY, TINY["model"], TINY["train"],
                                            TINY["selection"], cache=str(cache))
               if t.task_id == "limits/n30/population"]
    assert execute_call(task).status == "cached"
    with pytest.raises(AssertionError, match="refitted"):
        limits.unit_piece(30, "simple", 0, TINY_STUDY, TINY["model"],
                          dict(TINY["train"], seed=1), cache)
    assert calls["simulate"] == 0


def test_an_incomplete_entry_is_recomputed_not_used(tiny, cache, calls, tmp_path):
    t = tiny[2]
    timing = {"session": ["seconds"], "units": ["mei_seconds", "dei_seconds"],
              "models": ["seconds"],
              "pooled": ["mei_seconds", "dei_seconds", "seconds_per_unit", "fit_seconds"]}
    (_entry(cache, "limits/n30/unit/complex/1") / "entry.json").unlink()  # a killed writer
    again = _stage(tmp_path / "a", cache)
    assert calls["fit"] > 0 and calls["simulate"] == 0 and calls["select"] == 0
    for name, df in t.items():  # the same numbers, recomputed
        pd.testing.assert_frame_equal(again[name].drop(columns=timing[name]),
                                      df.drop(columns=timing[name]))
    trials = _entry(cache, "limits/n30/sim") / "session" / "trials.npz"
    trials.write_bytes(trials.read_bytes()[:100])  # a truncated file
    calls.update(fit=0)
    again = _stage(tmp_path / "b", cache)
    assert calls == {"fit": 0, "simulate": 1, "select": 0}  # the pieces after it: same keys
    pd.testing.assert_frame_equal(again["units"], t["units"].assign(
        mei_seconds=again["units"]["mei_seconds"], dei_seconds=again["units"]["dei_seconds"]))
    assert np.load(trials)["data"].shape[1] == 30


def test_plan_tasks_is_a_graph_of_the_pieces(tmp_path):
    args = (TINY["model"], TINY["train"], TINY["selection"])
    tasks = limits.plan_tasks(TINY_STUDY, *args, cache=str(tmp_path))
    ids = [t.task_id for t in tasks]
    # sim, select, 2 x 2 units, population; the pooled axis: one extra session, one pool
    assert len(ids) == len(set(ids)) == 1 + 1 + 2 * 2 + 1 + 2
    seen = set()
    for t in tasks:  # every dep exists and comes first: no cycle
        assert set(t.deps) <= seen, (t.task_id, t.deps)
        seen.add(t.task_id)
        assert (t.stage, t.session_id) == ("limits", -1)
        assert json.loads(json.dumps(t.kwargs)) == t.kwargs
        assert t.kwargs["cache"] == str(tmp_path.resolve())
        module, _, name = t.func.partition(":")
        assert callable(getattr(importlib.import_module(module), name))
    units = [t for t in tasks if "/unit/" in t.task_id]
    assert [t.task_id for t in units] == ["limits/n30/unit/simple/0", "limits/n30/unit/simple/1",
                                          "limits/n30/unit/complex/0", "limits/n30/unit/complex/1"]
    assert all(t.deps == ("limits/n30/sim",) for t in units)
    assert "selection" not in units[0].kwargs and "selection" in tasks[1].kwargs
    assert tasks[-1].task_id == "limits/pool/u12"
    assert tasks[-1].deps == ("limits/n30/sim", "limits/pool/sim/1")
    two = dict(TINY_STUDY, n_images=[30, 60], population=False, pooled_units=[])
    assert len(limits.plan_tasks(two, *args, cache=str(tmp_path))) == 2 * (1 + 1 + 2 * 2)
    assert limits.plan_tasks(dict(TINY_STUDY, enabled=False), *args) == []


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
                       mei_steps=150, population=False, pooled_units=[])
    tables = limits.limits_stage(tmp_path_factory.mktemp("study"), cfg.model_dump(mode="json"),
                                 p["model"], p["train"], p["selection"],
                                 cache=tmp_path_factory.mktemp("study_cache"))
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
