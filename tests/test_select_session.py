"""Selection on the simulated session: it must find the tuned units and their receptive fields."""

from __future__ import annotations

import numpy as np
import pytest

from meireport.report.stages import extract_stage, select_stage
from meireport.select import SelectionRule, select_units
from meireport.sources import load_ground_truth, open_session

# every simulated kind whose rate depends on the image (poor units fail QC, never reach selection)
TUNED = {"simple", "complex", "corner", "surround"}


@pytest.fixture(scope="module")
def selection(default_session, tmp_path_factory):
    out = tmp_path_factory.mktemp("sel")
    with open_session(default_session.cache_dir) as s:
        extract_stage(s, out, area=None)
    sel = select_stage(out, {"oracle_quantile": 0.6, "variance_quantile": 0.5, "seed": 0})
    return sel, load_ground_truth(default_session.truth_path)


def test_seed_rule_selects_only_tuned_units(selection):
    sel, _ = selection
    chosen = sel[sel["selected"]]
    assert len(chosen) >= 10
    assert set(chosen["true_kind"]) <= TUNED  # precision 1
    assert sel.loc[~sel["selected"], "reason"].str.len().gt(0).all()


def test_absolute_oracle_rule_finds_the_tuned_units(selection):
    sel, _ = selection
    out = select_units(sel.drop(columns=["selected", "reason"]),
                       SelectionRule(above_quantile={}, above={"oracle_corr": 0.1}))
    tuned = out["true_kind"].isin(TUNED)
    recall = (out["selected"] & tuned).sum() / tuned.sum()
    precision = (out["selected"] & tuned).sum() / out["selected"].sum()
    assert recall >= 0.9 and precision >= 0.9, (recall, precision)
    untuned = out[out["true_kind"] == "untuned"]
    assert untuned["oracle_corr"].abs().max() < 0.1


def test_rf_centres_match_truth(selection):
    sel, truth = selection
    rows = sel[sel["true_kind"].isin(["simple", "complex"]) & sel["has_rf"].astype(bool)]
    assert len(rows) >= 20
    idx = truth.index_of(rows["unit_id"])
    err = np.hypot(rows["rf_x_deg"].to_numpy() - truth.rf_params["x_deg"][idx],
                   rows["rf_y_deg"].to_numpy() - truth.rf_params["y_deg"][idx])
    assert np.median(err) < 5.0 and np.mean(err < 10.0) >= 0.9, np.sort(err)
    untuned = sel[sel["true_kind"] == "untuned"]
    assert untuned["rf_significant"].astype(bool).mean() <= 0.1
