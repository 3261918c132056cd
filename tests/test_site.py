"""The site's generated pages (issue #19): landing counts, gallery order, neuron pages, downloads.

A hand-made run folder (three neurons of one session, no notebooks executed) is enough: the
pages are generated from the run's artifacts. The browser checks of a built site are in
test_report.py (tiny run) and below (this folder, built).
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest
import yaml

from meireport.artifacts import save_npz
from meireport.report import book, site

SID = 42
# unit id -> (trust, oracle_corr, mei_pred)
UNITS = {11: ("low", 0.9, 30.0), 12: ("high", 0.5, 10.0), 13: ("medium", 0.7, 20.0)}


def _notebook(path: Path, title: str) -> str:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell(f"# {title}\n\nIntro."),
                nbformat.v4.new_code_cell("1 + 1")]
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return str(path)


def _result(run_dir: Path, stage: str, uid: int | None, stem: str) -> dict:
    folder = run_dir / "results" / str(SID) / ("" if uid is None else str(uid))
    return {"stage": stage, "session_id": SID, "unit_id": uid, "status": "ok",
            "notebook": _notebook(folder / f"{stem}.ipynb", stem), "ended": 1.7e9}


def make_run(tmp_path: Path) -> Path:
    """The hand-made run folder (also used to look at its built site by hand)."""
    run_dir = tmp_path / "run"
    sdir = run_dir / "results" / str(SID)
    sdir.mkdir(parents=True)
    rng = np.random.default_rng(0)
    pd.DataFrame({"unit_id": [11, 12, 13, 14, 15], "area": "VISp",
                  "selected": [True, True, True, False, False]}).to_csv(
        sdir / "selection.csv", index=False)
    rows = []
    for uid, (trust, oracle, pred) in UNITS.items():
        ndir = sdir / str(uid)
        ndir.mkdir()
        for name in ("mei", "gabor"):
            np.save(ndir / f"{name}.npy", rng.uniform(0, 1, (60, 96)))
        save_npz(ndir / "mei_starts.npz", best_image=rng.uniform(0, 1, (60, 96)))
        (ndir / "mei.json").write_text(json.dumps({"mei_pred": pred}))
        rows.append({"unit_id": uid, "area": "VISp", "oracle_corr": oracle, "test_corr": 0.4,
                     "mei_pred": pred, "status": "ok", "trust": trust,
                     "trust_reasons": "a reason"})
    pd.DataFrame(rows).to_csv(sdir / "summary.csv", index=False)
    results = [_result(run_dir, "extract", None, "01_extract"),
               _result(run_dir, "select", None, "02_select"),
               _result(run_dir, "summary", None, "06_summary")]
    for uid in UNITS:
        results += [_result(run_dir, "train", uid, "03_train"),
                    _result(run_dir, "mei", uid, "04_mei"),
                    _result(run_dir, "gabor", uid, "05_gabor")]
    (run_dir / "run.json").write_text(json.dumps({
        "params": {"title": "site test", "name": "sitetest", "source": {"kind": "simulated"}},
        "session_ids": [SID], "results": results, "meireport_version": "9.9"}))
    return run_dir


@pytest.fixture()
def fake_run(tmp_path) -> Path:
    return make_run(tmp_path)


def _source(run_dir: Path, tmp_path: Path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    book._write_source(src, run_dir)
    return src


def test_landing_page_counts_and_top_row_come_from_the_artifacts(fake_run, tmp_path):
    text = (_source(fake_run, tmp_path) / "intro.md").read_text()
    assert text.startswith("# site test")
    # session, areas, analysed 5, selected 3, reported 3, trust high/medium/low 1/1/1
    assert f"| {{doc}}`{SID} </sessions/{SID}/06_summary>` | VISp | 5 | 3 | 3 | 1 | 1 | 1 | 0 |" \
        in text
    assert "**3 neurons reported; MEIs trusted high: 1, medium: 1, low: 1.**" in text
    cards = [line for line in text.splitlines() if "{grid-item-card}" in line]
    assert [c.split()[2] for c in cards] == ["12", "13", "11"]  # by trust: high, medium, low
    assert "meireport 9.9" in text and "sitetest" in text and "params.yaml" in text


def test_gallery_tabs_order_by_trust_oracle_and_predicted_response(fake_run, tmp_path):
    src = _source(fake_run, tmp_path)
    nb = nbformat.read(src / "sessions" / str(SID) / "06_summary.ipynb", as_version=4)
    gallery = nb.cells[1].source  # right after the page's heading and introduction
    assert gallery.startswith("## MEI gallery")
    tabs = gallery.split("{tab-item}")[1:]
    orders = [[line.split()[2] for line in t.splitlines() if "{grid-item-card}" in line]
              for t in tabs]
    assert orders == [["12", "13", "11"], ["11", "13", "12"], ["11", "13", "12"]]
    assert "{download}`summary.csv <data/summary.csv>`" in gallery
    assert "{download}`meis_gabors.zip <data/meis_gabors.zip>`" in gallery


def test_each_neuron_is_one_entry_with_its_pages_named_and_neighbours_linked(fake_run, tmp_path):
    src = _source(fake_run, tmp_path)
    toc = yaml.safe_load((src / "_toc.yml").read_text())
    (part,) = [p for p in toc["parts"] if p["caption"] == f"Session {SID}"]
    neurons = [c for c in part["chapters"] if c.get("title", "").startswith("Neuron 1")]
    assert [c["title"] for c in neurons] == ["Neuron 12", "Neuron 13", "Neuron 11"]
    assert all([s["title"] for s in c["sections"]]
               == ["Model training", "Most exciting input", "MEI vs Gabor"] for c in neurons)
    middle = (src / f"sessions/{SID}/units/13/neuron.md").read_text()
    assert "previous: neuron 12 <" in middle and "next: neuron 11 →" in middle
    assert "{download}`mei.npy <data/mei.npy>`" in middle
    # the neuron's notebook pages end with the same links
    nb = nbformat.read(src / f"sessions/{SID}/units/13/04_mei.ipynb", as_version=4)
    assert nb.cells[0].source.startswith("# Neuron 13: Most exciting input")
    assert "next: neuron 11" in nb.cells[-1].source
    first = (src / f"sessions/{SID}/units/12/neuron.md").read_text()
    assert "previous:" not in first and "next: neuron 13" in first


def test_downloads_are_copied_into_the_site_source(fake_run, tmp_path):
    src = _source(fake_run, tmp_path)
    data = src / "sessions" / str(SID) / "data"
    assert (data / "summary.csv").read_bytes() == (
        fake_run / "results" / str(SID) / "summary.csv").read_bytes()
    assert (data / "selection.csv").is_file()
    with zipfile.ZipFile(data / "meis_gabors.zip") as z:
        names = set(z.namelist())
        mei = np.load(z.open("12/mei.npy"), allow_pickle=False)
    for uid in UNITS:
        assert {f"{uid}/{n}" for n in ("mei.npy", "gabor.npy", "best_image.npy", "mei.png",
                                       "best_image.png", "gabor.png")} <= names
    np.testing.assert_array_equal(mei, np.load(fake_run / "results" / str(SID) / "12" / "mei.npy"))
    ndata = src / "sessions" / str(SID) / "units" / "12" / "data"
    assert {"mei.npy", "gabor.npy", "best_image.npy", "mei.json", "mei.png"} <= {
        p.name for p in ndata.iterdir()}
    assert yaml.safe_load((src / "params.yaml").read_text())["name"] == "sitetest"


def test_a_session_without_a_summary_has_no_gallery_but_a_landing_page(fake_run, tmp_path):
    (fake_run / "results" / str(SID) / "summary.csv").unlink()
    text = (_source(fake_run, tmp_path) / "intro.md").read_text()
    assert "**0 neurons reported" in text and "{grid-item-card}" not in text


def test_sort_cards_puts_missing_values_last():
    cards = [site.Card(1, 1, mei_pred=float("nan")), site.Card(1, 2, mei_pred=3.0),
             site.Card(1, 3, mei_pred=5.0)]
    assert [c.unit_id for c in site.sort_cards(cards, "mei_pred", True)] == [3, 2, 1]
    assert [c.unit_id for c in site.sort_cards(cards, "mei_pred", False)] == [2, 3, 1]
