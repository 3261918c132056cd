"""Many areas, many sessions (#15 part 5): ``extract.area`` as a list or ``visual``, the
selection rule per area, the run-level summary across sessions and areas, and a tiny report of
two sessions x two areas end to end."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest

from meireport.errors import MeireportError
from meireport.extract import area_unit_ids, is_visual_area, resolve_areas
from meireport.report.params import load_params, parse_params
from meireport.report.stages import extract_stage, rule_sentence, select_stage, selection_groups
from meireport.report.summary import RUN_SUMMARY_COLUMNS, run_summary_table, run_tables
from meireport.select import SelectionRule, group_thresholds, rule_thresholds, select_units
from meireport.sources import open_session
from meireport.sources.from_params import ensure_source

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "params" / "tiny.yaml"
TUNED = ("simple", "complex", "corner", "surround")


# ------------------------------------------------------------------------------ the field


@pytest.mark.parametrize(("value", "expected"), [
    (3, "extract.area: expected a structure acronym (e.g. VISam), a list of them, or 'visual'; "
        "got 3"),
    ([], "extract.area: expected a structure acronym"),
    (["VISam", "VISam"], "extract.area: expected distinct acronyms, got ['VISam', 'VISam'] "
                         "(VISam repeated)"),
    (["visual", "VISp"], "extract.area: 'visual' stands alone"),
    ("  ", "extract.area: expected a structure acronym (e.g. VISam), a list of them, or "
           "'visual'; got an empty text"),
])
def test_a_bad_area_field_is_one_line_naming_it(value, expected):
    with pytest.raises(MeireportError) as e:
        parse_params({"source": {"kind": "simulated"}, "extract": {"area": value}})
    (line,) = str(e.value).splitlines()
    assert line.startswith(expected), line


def test_per_area_is_off_by_default_so_an_area_without_reliable_units_gives_none(
        default_session, tmp_path):
    """All areas, the seed's pooled rule: CA1 (untuned only) contributes no unit; per area, its
    quantile would keep its best untuned units, which is why per_area is opt-in."""
    with open_session(default_session.cache_dir) as s:
        extract_stage(s, tmp_path, area=None)
    assert parse_params({"source": {"kind": "simulated"}}).selection.per_area is False
    pooled = select_stage(tmp_path, {"seed": 0})
    assert "CA1" not in set(pooled.loc[pooled["selected"], "area"])
    per_area = select_stage(tmp_path, {"seed": 0, "per_area": True})
    ca1 = per_area[per_area["selected"] & (per_area["area"] == "CA1")]
    assert len(ca1) and (ca1["true_kind"] == "untuned").all()
    floor = select_stage(tmp_path, {"seed": 0, "per_area": True, "min_oracle": 0.1})
    assert "CA1" not in set(floor.loc[floor["selected"], "area"])


def test_the_area_field_takes_one_area_a_list_visual_or_null():
    for value, kept in (("VISp", "VISp"), (["VISp", "VISam"], ("VISp", "VISam")),
                        ("visual", "visual"), (None, None)):
        p = parse_params({"source": {"kind": "simulated"}, "extract": {"area": value}})
        assert p.extract.area == kept
    # the default stays the seed's area
    assert parse_params({"source": {"kind": "simulated"}}).extract.area == "VISam"


def test_visual_is_the_visual_cortex_only():
    assert [is_visual_area(a) for a in ("VISp", "VISl", "VISal", "VISrl", "VISam", "VISpm")] \
        == [True] * 6
    assert not any(is_visual_area(a) for a in ("VISC", "LGd", "LP", "CA1", "DG", "APN", ""))


def test_areas_resolve_on_a_session_and_a_missing_one_names_what_is_there(small_session):
    with open_session(small_session.cache_dir) as s:
        assert sorted(s.areas) == ["CA1", "VISam", "VISp"]
        assert resolve_areas(s, "visual") == ["VISam", "VISp"]  # CA1 left out
        assert resolve_areas(s, None) == ["CA1", "VISam", "VISp"]
        assert resolve_areas(s, ["VISp", "VISam"]) == ["VISp", "VISam"]  # the order given
        ids = area_unit_ids(s, ["VISp", "VISam"])
        assert list(ids) == list(s.unit_ids("VISp")) + list(s.unit_ids("VISam"))
        assert len(area_unit_ids(s, None)) == len(s.unit_ids(None))
        with pytest.raises(MeireportError) as e:
            resolve_areas(s, ["VISam", "LGd", "LP"])
        assert str(e.value) == (f"extract.area: 'LGd', 'LP' have no units in session "
                                f"{s.session_id}; available: CA1, VISam, VISp")


def test_preflight_checks_every_area_before_anything_runs(tmp_path):
    src = {"kind": "simulated", "n_images": 4, "n_repeats": 2, "seed": 0}
    assert ensure_source(src, tmp_path, progress=False, extract={"area": ["VISam", "VISp"]})
    with pytest.raises(MeireportError) as e:
        ensure_source(src, tmp_path, progress=False, extract={"area": ["VISam", "LGd"]})
    (line,) = str(e.value).splitlines()
    assert line.startswith("extract.area: 'LGd' has no units in session"), line


# -------------------------------------------------------------------------- per-area rule


def _two_areas() -> pd.DataFrame:
    """VISp's units are all more reliable than VISam's: a pooled quantile keeps only VISp."""
    return pd.DataFrame({
        "unit_id": np.arange(10),
        "area": ["VISam"] * 5 + ["VISp"] * 5,
        "oracle_corr": [0.10, 0.12, 0.14, 0.16, 0.18, 0.50, 0.52, 0.54, 0.56, 0.58],
    })


def test_per_area_quantiles_compare_each_unit_with_its_own_area():
    table = _two_areas()
    pooled = select_units(table, SelectionRule(above_quantile={"oracle_corr": 0.5}))
    assert set(pooled.loc[pooled["selected"], "area"]) == {"VISp"}
    rule = SelectionRule(above_quantile={"oracle_corr": 0.5}, group_by="area")
    out = select_units(table, rule)
    # the median of each area: 0.14 (VISam), 0.54 (VISp); strictly above it: 2 units each
    assert out.loc[out["selected"], "unit_id"].tolist() == [3, 4, 8, 9]
    th = group_thresholds(table, rule)
    assert {a: t["oracle_corr"] for a, t in th.items()} == pytest.approx(
        {"VISam": 0.14, "VISp": 0.54})
    assert out.attrs["group_thresholds"] == th and out.attrs["thresholds"] == {}
    assert out.loc[0, "reason"] == "oracle_corr 0.1 <= VISam q0.50 0.14"
    with pytest.raises(MeireportError, match="2 groups"):
        rule_thresholds(table, rule)


def test_max_units_caps_each_area_by_its_best_oracle():
    table = _two_areas()
    rule = SelectionRule(above_quantile={"oracle_corr": 0.0}, group_by="area", max_units=1)
    out = select_units(table, rule)
    assert out.loc[out["selected"], "unit_id"].tolist() == [4, 9]
    assert out.loc[3, "reason"] == "not in the top 1 of VISam by oracle_corr (rank 2)"
    # one area only: the same as the rule without groups
    one = table[table["area"] == "VISp"].reset_index(drop=True)
    seed = {"oracle_corr": 0.6}
    grouped = select_units(one, SelectionRule(above_quantile=seed, group_by="area"))
    plain = select_units(one, SelectionRule(above_quantile=seed))
    assert grouped["selected"].tolist() == plain["selected"].tolist()
    assert grouped.attrs["thresholds"] == plain.attrs["thresholds"]


def test_selection_of_two_simulated_areas_finds_tuned_units_in_each(default_session, tmp_path):
    """On the data-rich default session, per area: each area's selected units are tuned."""
    with open_session(default_session.cache_dir) as s:
        info = extract_stage(s, tmp_path, area="visual")
    assert info["analysed_areas"] == ["VISam", "VISp"] and info["area"] == "visual"
    units = pd.read_csv(tmp_path / "units.csv")
    assert set(units["ecephys_structure_acronym"]) == {"VISam", "VISp"}
    sel = select_stage(tmp_path, {"max_units": 4, "per_area": True})
    groups = selection_groups(sel)
    assert [a for a, _, _ in groups] == ["VISam", "VISp"]
    for area, rows, th in groups:
        chosen = rows[rows["selected"]]
        assert len(chosen) == 4, area
        assert chosen["true_kind"].isin(TUNED).all(), (area, chosen["true_kind"].tolist())
        assert set(th) == {"oracle_corr", "variance"}
    text = rule_sentence(sel, 4)
    assert text.startswith(f"**8 of {len(sel)} units selected** by the rule: VISam (4 of ")
    assert text.endswith("at most 4 units per area (best oracle).")


# ---------------------------------------------------------------------- run-level summary


def test_run_summary_counts_and_medians_per_session_and_area():
    sel = pd.DataFrame({"session_id": [1, 1, 1, 2, 2], "area": ["VISp", "VISp", "VISam",
                                                                  "VISp", "VISp"],
                        "unit_id": [5, 6, 7, 8, 9], "selected": [True, True, False, True, False],
                        "oracle_corr": [0.6, 0.4, 0.1, 0.3, 0.2]})
    summ = pd.DataFrame({"session_id": [1, 1, 2], "area": ["VISp", "VISp", "VISp"],
                         "unit_id": [5, 6, 8], "oracle_corr": [0.6, 0.4, 0.3],
                         "test_corr": [0.5, 0.3, 0.2], "trust": ["high", "low", None],
                         "mei_pred": [4.0, 2.0, 3.0], "best_gabor_pred": [2.0, 4.0, 0.0]})
    from meireport.report.summary import mei_gabor_ratios

    t = run_summary_table(sel, mei_gabor_ratios(summ))
    assert list(t.columns) == list(RUN_SUMMARY_COLUMNS)
    rows = {(r["session_id"], r["area"]): r for r in t.to_dict("records")}
    assert list(rows) == [(1, "VISam"), (1, "VISp"), (2, "VISp")]
    a = rows[(1, "VISp")]
    assert (a["analysed"], a["selected"], a["reported"]) == (2, 2, 2)
    assert a["oracle_corr_all"] == pytest.approx(0.5) and a["test_corr"] == pytest.approx(0.4)
    assert (a["high"], a["medium"], a["low"], a["unassessed"]) == (1, 0, 1, 0)
    assert a["mei_gabor_ratio"] == pytest.approx((2.0 + 0.5) / 2)  # 4/2 and 2/4
    b = rows[(1, "VISam")]
    assert (b["analysed"], b["selected"], b["reported"]) == (1, 0, 0)
    assert math.isnan(b["test_corr"])
    c = rows[(2, "VISp")]
    assert c["unassessed"] == 1 and math.isnan(c["mei_gabor_ratio"])  # Gabor response 0


# ------------------------------------------------------- two sessions x two areas, end to end

SESSIONS = [700000001, 700000002]


@pytest.fixture(scope="module")
def two_session_run(tmp_path_factory):
    import yaml

    from meireport.report.book import build_book
    from meireport.report.run import run

    d = yaml.safe_load(TINY.read_text())
    d["source"]["session_ids"] = SESSIONS
    d["extract"]["area"] = ["VISam", "VISp"]
    d["selection"]["per_area"] = True
    d["limits"] = {"enabled": False}  # the study has its own tests (test_report_limits)
    d["name"] = "two-areas"
    out = tmp_path_factory.mktemp("two_areas")
    res = run(parse_params(d, base_dir=ROOT / "params"), out=out, progress=False)
    return out, res, build_book(out)


@pytest.mark.slow
def test_two_sessions_two_areas_report_end_to_end(two_session_run):
    out, res, index = two_session_run
    assert not res.failed, [(r.task_id, r.error) for r in res.failed]
    for sid in SESSIONS:
        sdir = out / "results" / str(sid)
        assert json.loads((sdir / "session.json").read_text())["analysed_areas"] \
            == ["VISam", "VISp"]
        sel = pd.read_csv(sdir / "selection.csv")
        chosen = sel[sel["selected"]]
        assert sorted(chosen["area"]) == ["VISam", "VISp"]  # max_units 1 per area
        summary = pd.read_csv(sdir / "summary.csv")
        assert sorted(summary["area"]) == ["VISam", "VISp"]
        assert (summary["status"] == "ok").all()
    # the two simulated sessions are two recordings, not one copied
    a, b = (pd.read_csv(out / "results" / str(s) / "selection.csv") for s in SESSIONS)
    assert not np.allclose(a["oracle_corr"].to_numpy()[:5], b["oracle_corr"].to_numpy()[:5])
    table = pd.read_csv(out / "results" / "across" / "run_summary.csv")
    assert [(r.session_id, r.area) for r in table.itertuples()] == [
        (s, a) for s in SESSIONS for a in ("VISam", "VISp")]
    assert (table["selected"] == 1).all() and (table["reported"] == 1).all()
    units, reported = run_tables(out, SESSIONS)
    assert table["analysed"].sum() == len(units) and len(reported) == 4
    assert table["test_corr"].notna().all()
    (across,) = [r for r in res.results if r.stage == "across"]
    nb = nbformat.read(across.notebook, as_version=4)
    assert not [o for c in nb.cells for o in c.get("outputs", [])
                if o.get("output_type") == "error"]
    page = index.parent / "across" / "08_across.html"
    text = page.read_text()
    assert "Across sessions and areas" in text and "<img" in text
    # the table is an HTML table in the page, not Markdown shown as text (a notebook's
    # Markdown output is rendered as CommonMark, which has no tables)
    tables = re.findall(r"<table.*?</table>", text, flags=re.S)
    assert len(tables) == 1, len(tables)
    assert "| session |" not in text and "<th>session</th>" in tables[0]
    for sid in SESSIONS:
        assert f'<a href="../sessions/{sid}/06_summary.html">{sid}</a>' in tables[0]
        assert (page.parent / f"../sessions/{sid}/06_summary.html").resolve().is_file()
    assert tables[0].count("<tr>") == 1 + 2 * 2  # header + two sessions x two areas
    landing = (index.parent / "intro.html").read_text()
    assert "across/08_across.html" in landing
    assert load_params(TINY).extract.area == "VISam"  # the shipped tiny params untouched
