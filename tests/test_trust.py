"""Trust assessment: labels and reasons, thresholds, selection stability, summary and panel."""

from __future__ import annotations

import json
import math
from html import escape

import numpy as np
import pandas as pd
import pytest

from meireport.artifacts import load_json, save_csv, save_json
from meireport.errors import MeireportError
from meireport.plots.summary import style_summary, trust_panel
from meireport.report.params import parse_params
from meireport.report.stages import trust_stage
from meireport.report.summary import SUMMARY_COLUMNS, sort_by_trust, summary_table, trust_sentence
from meireport.select import SelectionRule, oracle_correlation, select_units, selection_stability
from meireport.select.stability import _weighted_oracle
from meireport.trust import Trust, TrustThresholds, assess

GOOD = {"test_corr_ci_low": 0.3, "test_corr_ci_high": 0.7, "frac_oracle": 0.8,
        "mei_reliability": 0.9, "selection_stability": 1.0, "rf_p_value": 0.001}
CRITERIA = ["test_corr_ci_low", "frac_oracle", "mei_reliability", "selection_stability",
            "rf_p_value"]


# -------------------------------------------------------------------------------------------
# assess
# -------------------------------------------------------------------------------------------
def test_all_criteria_met_is_high():
    t = assess(GOOD)
    assert t.label == "high" and t.reasons == ["all criteria met"]
    assert list(t.criteria.index) == CRITERIA
    assert list(t.criteria.columns) == ["value", "threshold", "ok"]
    assert t.criteria["ok"].tolist() == [True] * 5
    assert t.criteria.loc["frac_oracle", "value"] == 0.8


@pytest.mark.parametrize("ci_low", [-0.12, 0.0])  # "must exceed": reaching 0 fails
def test_ci_reaching_zero_is_low(ci_low):
    t = assess(GOOD | {"test_corr_ci_low": ci_low, "test_corr_ci_high": 0.61})
    assert t.label == "low"
    assert t.reasons == [f"test correlation CI reaches 0 ({ci_low:.2f} .. 0.61)"]
    assert t.criteria.loc["test_corr_ci_low", "ok"] is False


def test_mei_agreement_low_is_low_even_with_unknowns():
    t = assess(GOOD | {"mei_reliability": 0.3, "rf_p_value": None})
    assert t.label == "low"
    assert any("0.30" in r and ">= 0.5" in r and "agree" in r for r in t.reasons)
    assert any("RF-mapping p-value unknown" in r for r in t.reasons)


def test_frac_oracle_low_only_is_medium():
    t = assess(GOOD | {"frac_oracle": 0.3})
    assert t.label == "medium"
    assert t.reasons == ["model reaches 0.30 of the oracle (needs >= 0.5)"]
    assert assess(GOOD | {"frac_oracle": 0.5}).label == "high"  # at the threshold: met


@pytest.mark.parametrize("missing", [None, float("nan"), "drop"])
def test_missing_value_is_not_high_and_named(missing):
    values = dict(GOOD)
    if missing == "drop":
        del values["selection_stability"]
    else:
        values["selection_stability"] = missing
    t = assess(values)
    assert t.label == "medium"
    assert t.reasons == ["selection stability unknown (needs >= 0.8)"]
    assert t.criteria.loc["selection_stability", "ok"] is None
    assert math.isnan(t.criteria.loc["selection_stability", "value"])


def test_every_failing_criterion_is_a_reason():
    bad = {"test_corr_ci_low": -0.1, "frac_oracle": 0.1, "mei_reliability": 0.1,
           "selection_stability": 0.5, "rf_p_value": 0.2}
    t = assess(bad)
    assert t.label == "low" and len(t.reasons) == 5
    assert "selected in 50% of trial resamples (needs >= 80%)" in t.reasons
    assert "(-0.10 .. ?)" in t.reasons[0]  # the CI's high end is unknown
    assert t.criteria["ok"].tolist() == [False] * 5


def test_to_dict_is_strict_json():
    d = assess({"frac_oracle": 0.7, "mei_reliability": float("nan")}).to_dict()
    text = json.dumps(d, allow_nan=False)  # NaN would be invalid JSON for other tools
    back = json.loads(text)
    assert back["label"] == "medium" and set(back["criteria"]) == set(CRITERIA)
    assert back["criteria"]["mei_reliability"] == {"value": None, "threshold": 0.5, "ok": None}
    assert back["criteria"]["frac_oracle"]["ok"] is True


def test_bad_values_give_one_line_errors():
    with pytest.raises(MeireportError, match=r"^values\.frac_oracle: expected a number") as e:
        assess(GOOD | {"frac_oracle": "0.7"})
    assert "\n" not in str(e.value)
    with pytest.raises(MeireportError, match=r"^values: expected a mapping"):
        assess([0.1, 0.2])
    with pytest.raises(MeireportError, match=r"^thresholds: expected TrustThresholds"):
        assess(GOOD, {"min_ci_low": 0.1})


# -------------------------------------------------------------------------------------------
# thresholds
# -------------------------------------------------------------------------------------------
def test_thresholds_from_params_change_the_label():
    values = GOOD | {"frac_oracle": 0.3, "rf_p_value": 0.03}
    assert assess(values).label == "medium"
    th = TrustThresholds.from_params({"min_frac_oracle": 0.2, "max_rf_p": 0.05})
    assert (th.min_frac_oracle, th.max_rf_p, th.min_ci_low) == (0.2, 0.05, 0.0)
    assert assess(values, th).label == "high"
    assert TrustThresholds.from_params(None) == TrustThresholds()
    strict = TrustThresholds.from_params({"min_ci_low": 0.35})
    assert assess(GOOD, strict).label == "low"


def test_params_section_defaults_match_the_thresholds():
    p = parse_params({"source": {"kind": "simulated"}})
    assert p.trust == TrustThresholds()  # the section is the library's thresholds
    assert TrustThresholds.from_params(p.to_json_dict()["trust"]) == TrustThresholds()
    p = parse_params({"source": {"kind": "simulated"}, "trust": {"min_mei_agreement": 0.7},
                      "selection": {"stability_resamples": 5}})
    assert p.trust.min_mei_agreement == 0.7
    assert TrustThresholds.from_params(p.to_json_dict()["trust"]).min_mei_agreement == 0.7
    assert p.selection.stability_resamples == 5


@pytest.mark.parametrize("bad, message", [
    ({"min_frac": 0.3}, "trust.min_frac: unknown field"),
    ({"max_rf_p": 2.0}, "trust.max_rf_p: expected a value in [0, 1], got 2.0"),
    ({"min_ci_low": "low"}, "trust.min_ci_low: expected a number, got 'low'"),
    ({"min_selection_stability": float("nan")}, "trust.min_selection_stability: expected a finite"),
    ({"min_frac_oracle": -0.1}, "trust.min_frac_oracle: expected a value >= 0, got -0.1"),
    ([0.1], "trust: expected a mapping"),
])
def test_bad_thresholds_give_one_line_errors(bad, message):
    with pytest.raises(MeireportError) as e:
        TrustThresholds.from_params(bad)
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_bad_trust_params_name_the_field():
    with pytest.raises(MeireportError) as e:
        parse_params({"source": {"kind": "simulated"},
                      "trust": {"max_rf_p": 2, "min_frac": 1},
                      "selection": {"stability_resamples": 0}})
    lines = str(e.value).splitlines()
    assert "trust.max_rf_p: expected a value in [0, 1], got 2.0" in lines
    assert "trust.min_frac: unknown field (check the spelling), got 1" in lines
    assert "selection.stability_resamples: must be >= 1, got 0" in lines


# -------------------------------------------------------------------------------------------
# selection stability
# -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def graded_trials():
    """24 units x 40 images x 10 repeats: 8 strongly tuned, 8 weakly tuned, 8 untuned."""
    rng = np.random.default_rng(1)
    amplitude = np.r_[np.full(8, 1.0), np.full(8, 0.25), np.zeros(8)]
    shape = rng.uniform(-1, 1, size=(1, 40))
    rate = 6.0 * np.exp(amplitude[:, None] * shape)
    trials = rng.poisson(rate[:, :, None], size=(24, 40, 10)).astype(float)
    trials[3, 5, 4:] = np.nan  # one unit misses repeats of one image
    trials[:, 7, 8:] = np.nan  # one image shown fewer times
    return trials, list(range(100, 124))


def test_stability_tuned_near_boundary_untuned(graded_trials):
    trials, ids = graded_trials
    oracle = oracle_correlation(trials)
    boundary = float(np.median(oracle[8:16]))  # the weak units straddle the threshold
    rule = SelectionRule(above_quantile={}, above={"oracle_corr": boundary})
    s = selection_stability(trials, ids, rule, n_resamples=20, seed=0)
    assert s.name == "selection_stability" and s.index.tolist() == ids
    assert (s.iloc[:8] == 1.0).all()
    assert (s.iloc[16:] <= 0.1).all()  # untuned: not selected (copies are never paired)
    weak = s.iloc[8:16]
    assert ((weak > 0) & (weak < 1)).sum() >= 4, weak.tolist()
    # the seed's quantile rule, recomputed on the whole population each time
    q = selection_stability(trials, ids, SelectionRule(), n_resamples=20, seed=0)
    assert (q.iloc[:8] == 1.0).all() and (q.iloc[16:] == 0.0).all()


def test_stability_is_reproducible_and_seeded(graded_trials):
    trials, ids = graded_trials
    rule = SelectionRule(above_quantile={}, above={"oracle_corr": 0.23})
    a = selection_stability(trials, ids, rule, n_resamples=10, seed=4)
    pd.testing.assert_series_equal(a, selection_stability(trials, ids, rule, 10, seed=4))
    assert not a.equals(selection_stability(trials, ids, rule, 10, seed=5))
    assert set(np.round(a * 10, 9)) <= set(range(11))  # fractions of 10 resamples


def test_resampled_oracle_has_no_copy_bias(graded_trials):
    trials, _ = graded_trials
    valid = (~np.isnan(trials)).astype(int)
    np.testing.assert_allclose(_weighted_oracle(trials, valid), oracle_correlation(trials))
    # every trial drawn twice: the naive tensor pairs each trial with its own copy
    doubled = np.concatenate([trials, trials], axis=2)
    naive = oracle_correlation(doubled)[16:]
    fair = _weighted_oracle(doubled, np.concatenate([valid, 0 * valid], axis=2) * 2)
    assert naive.mean() > 0.15  # untuned units look tuned
    np.testing.assert_allclose(fair, oracle_correlation(trials))  # copies change nothing


def test_stability_with_fixed_metrics_and_bad_input(graded_trials):
    trials, ids = graded_trials
    rule = SelectionRule(above_quantile={"oracle_corr": 0.25}, areas=("VISam",))
    with pytest.raises(MeireportError, match=r"^metrics: the rule uses \['area'\]"):
        selection_stability(trials, ids, rule, n_resamples=2)
    areas = pd.DataFrame({"unit_id": ids, "area": ["VISam"] * 12 + ["VISp"] * 12})
    s = selection_stability(trials, ids, rule, n_resamples=5, metrics=areas)
    assert (s.iloc[12:] == 0).all() and (s.iloc[:8] == 1).all()
    with pytest.raises(MeireportError, match=r"^unit_ids: expected 24 unique ids"):
        selection_stability(trials, ids[:-1], rule)
    with pytest.raises(MeireportError, match=r"^n_resamples: expected an integer >= 1"):
        selection_stability(trials, ids, SelectionRule(), n_resamples=0)
    explicit = selection_stability(trials, ids, SelectionRule(units=(100, 105)), n_resamples=3)
    assert explicit[explicit > 0].index.tolist() == [100, 105]


def test_stability_is_fast_at_session_size():
    import time

    rng = np.random.default_rng(0)
    trials = rng.poisson(rng.gamma(2, 2, size=(135, 118, 1)), size=(135, 118, 50)).astype(float)
    t0 = time.perf_counter()
    s = selection_stability(trials, range(135), SelectionRule(), n_resamples=20)
    assert time.perf_counter() - t0 < 10.0  # ~1 s on a busy 2-core machine
    base = select_units(pd.DataFrame({"unit_id": range(135),
                                      "oracle_corr": oracle_correlation(trials),
                                      "variance": np.nanmean(trials, 2).var(1, ddof=1)}))
    # units the rule selects on the data are mostly stable, rejected ones mostly not
    assert s[base["selected"].to_numpy()].mean() > 0.7
    assert s[~base["selected"].to_numpy()].mean() < 0.3


def test_select_to_dir_writes_selection_stability(small_session, tmp_path):
    from meireport.report.stages import extract_stage, select_stage
    from meireport.sources import open_session

    with open_session(small_session.cache_dir) as s:
        extract_stage(s, tmp_path, area=None)
    sel = select_stage(tmp_path, {"oracle_quantile": 0.6, "variance_quantile": 0.5,
                                   "stability_resamples": 4, "seed": 0})
    on_disk = pd.read_csv(tmp_path / "selection.csv")
    st = on_disk["selection_stability"]
    assert st.notna().all() and st.between(0, 1).all()
    assert set(np.round(st * 4, 9)) <= {0, 1, 2, 3, 4}  # fractions of 4 resamples
    assert st.nunique() > 1
    np.testing.assert_allclose(st, sel["selection_stability"])


# -------------------------------------------------------------------------------------------
# stage, summary, page
# -------------------------------------------------------------------------------------------
def _session_dir(tmp_path, trust_values=None):
    sdir = tmp_path / "results" / "7"
    save_csv(sdir / "selection.csv", pd.DataFrame({
        "unit_id": [5, 6], "oracle_corr": [0.4, 0.1], "selected": [True, False],
        "selection_stability": [0.95, 0.1], "rf_p_value": [0.001, 0.5]}), index=False)
    save_json(sdir / "5" / "train.json", {"test_corr": 0.5, "test_corr_ci_low": 0.2,
                                          "test_corr_ci_high": 0.7, "frac_oracle": 0.6,
                                          "rf_centre_px": [3.0, 4.0]})
    save_json(sdir / "status.json", [{"task_id": "7/5/train", "stage": "train", "unit_id": 5,
                                      "status": "ok", "error": None}])
    return sdir


def test_trust_stage_merges_artifacts_and_writes_trust_json(tmp_path):
    sdir = _session_dir(tmp_path)
    t = trust_stage(sdir, sdir / "5", 5, {"mei_reliability": 0.9})
    assert isinstance(t, Trust) and t.label == "high"
    assert load_json(sdir / "5" / "trust.json") == t.to_dict()
    assert t.criteria.loc["selection_stability", "value"] == 0.95
    t = trust_stage(sdir, sdir / "5", 5, {"mei_reliability": 0.9}, {"min_frac_oracle": 0.7})
    assert t.label == "medium" and load_json(sdir / "5" / "trust.json")["label"] == "medium"
    with pytest.raises(MeireportError, match="trust.foo: unknown field"):
        trust_stage(sdir, sdir / "5", 5, {}, {"foo": 1})


def test_summary_carries_trust_and_reasons(tmp_path):
    sdir = _session_dir(tmp_path)
    save_json(sdir / "5" / "mei.json", {"mei_pred": 3.0, "trust": "medium",
                                        "trust_reasons": "model reaches 0.30 of the oracle"})
    df = summary_table(sdir)
    row = df.set_index("unit_id").loc[5]
    assert row["trust"] == "medium" and row["trust_reasons"].startswith("model reaches")
    assert list(df.columns[: len(SUMMARY_COLUMNS) + 1]) == [*SUMMARY_COLUMNS, "trust_reasons"]


def test_trust_sentence_and_order():
    df = pd.DataFrame({"unit_id": [1, 2, 3, 4, 5],
                       "trust": ["low", np.nan, "high", "medium", "high"]})
    assert sort_by_trust(df)["unit_id"].tolist() == [3, 5, 4, 1, 2]
    assert trust_sentence(df) == ("2 of 5 neurons have an MEI the data support (trust high); "
                                  "1 medium, 1 low, 1 not assessed.")
    assert trust_sentence(df.iloc[[2]]) == "1 of 1 neuron has an MEI the data support (trust high)."
    assert trust_sentence(df.iloc[:0]) == "No neuron was reported."
    html = style_summary(sort_by_trust(df)).to_html()
    assert html.index(">high<") < html.index(">medium<") < html.index(">low<")
    assert "#e8f5e9" in html and "#fff3e0" in html and "#ffebee" in html


@pytest.mark.parametrize("label, values, colour", [
    ("high", GOOD, "#2e7d32"),
    ("medium", GOOD | {"rf_p_value": None}, "#ef6c00"),
    ("low", GOOD | {"mei_reliability": 0.1}, "#c62828"),
])
def test_trust_panel_shows_label_criteria_and_reasons(label, values, colour):
    t = assess(values)
    for given in (t, t.to_dict()):
        html = trust_panel(given)
        assert f"trust: {label}" in html and f"background:{colour}" in html
        for name in CRITERIA:
            assert f"<code>{name}</code>" in html
        for reason in t.reasons:
            assert f"<li>{escape(reason)}</li>" in html  # "<=" escaped
    marks = {"high": "✓", "medium": "?", "low": "✗"}
    assert marks[label] in trust_panel(t)
    with pytest.raises(MeireportError, match="^trust: expected a Trust"):
        trust_panel({"label": "high"})
