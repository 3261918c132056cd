"""The report: tiny end-to-end run + book, caching, failure isolation, Dask, browser, params."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest

from meireport.errors import MeireportError
from meireport.report.book import build_book
from meireport.report.params import load_params, parse_params
from meireport.report.run import available_stages, run
from meireport.report.summary import SIMULATED_COLUMNS, SUMMARY_COLUMNS

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "params" / "tiny.yaml"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny_run")
    res = run(TINY, out=out, progress=False)
    index = build_book(out)
    return out, res, index


def _session_dir(run_dir: Path) -> Path:
    """The one session's results folder (run-level folders have no session.json)."""
    (sdir,) = [p for p in (run_dir / "results").iterdir() if (p / "session.json").is_file()]
    return sdir


def _summary(run_dir: Path) -> pd.DataFrame:
    return pd.read_csv(_session_dir(run_dir) / "summary.csv")


def test_end_to_end(tiny_run):
    out, res, index = tiny_run
    assert not res.failed, [(r.task_id, r.error) for r in res.failed]
    stages = {r.stage for r in res.results}
    assert stages == {s.name for s in available_stages()}
    summary = _summary(out)
    assert set(SUMMARY_COLUMNS) | set(SIMULATED_COLUMNS) <= set(summary.columns)
    assert len(summary) >= 1 and (summary["status"] == "ok").all()
    # every neuron has a trust label with its reasons, the same as its trust.json
    assert summary["trust"].isin(["high", "medium", "low"]).all(), summary["trust"].tolist()
    assert summary["trust_reasons"].astype(str).str.len().gt(0).all()
    sdir = _session_dir(out)
    for uid, label in zip(summary["unit_id"], summary["trust"], strict=True):
        assert json.loads((sdir / str(uid) / "trust.json").read_text())["label"] == label
    sel = pd.read_csv(sdir / "selection.csv")
    assert sel["selection_stability"].between(0, 1).all()
    for uid in summary["unit_id"]:  # the DEIs' similarity to the MEI, also inside the RF mask
        comp = json.loads((sdir / str(uid) / "comparison.json").read_text())
        assert -1 <= comp["dei_median_mei_corr_rf"] <= 1
        # the natural images' own contrast inside the same RF mask, beside the MEI's
        assert 0 < comp["natural_rf_contrast_median"] <= comp["natural_rf_contrast_p90"] < 0.5
        assert comp["mei_contrast"] > 0
    notebooks = [r for r in res.results if r.notebook]  # the study's pieces have none
    assert {r.stage for r in notebooks} == stages
    for r in notebooks:  # every notebook executed without an error output
        nb = nbformat.read(r.notebook, as_version=4)
        outputs = [o for c in nb.cells for o in c.get("outputs", [])]
        errors = [o for o in outputs if o.get("output_type") == "error"]
        assert not errors, r.task_id
    html = {p.stem for p in index.parent.rglob("*.html")}
    assert {Path(r.notebook).stem for r in notebooks} <= html
    # the data-limit chapter: its tables, and the page with its headline and figures
    ldir = out / "results" / "limits"
    units = pd.read_csv(ldir / "limits_units.csv")
    assert sorted(units["n_images"].unique()) == [30, 60]
    assert units["trust"].isin(["high", "medium", "low"]).all()
    assert {"LN + crop", "CNN + ensemble", "population"} <= set(
        pd.read_csv(ldir / "limits_models.csv")["variant"])
    (chapter,) = index.parent.rglob("07_limits.html")
    text = chapter.read_text()
    assert "With 30 images" in text and text.count("<img") >= 3
    assert index.is_file()
    mei_pages = list((index.parent / "sessions").rglob("04_mei.html"))
    assert len(mei_pages) == len(summary)
    for page in mei_pages:
        text = page.read_text()
        assert "How far to trust this MEI" in text and "trust: " in text
    (summary_page,) = (index.parent / "sessions").rglob("06_summary.html")
    assert "an MEI the data support (trust high)" in summary_page.read_text()


def test_rerun_executes_nothing_and_changes_reexecute_dependents(tiny_run, tmp_path):
    src, _, _ = tiny_run
    out = tmp_path / "moved_run"
    shutil.copytree(src, out, ignore=shutil.ignore_patterns("book"))  # a moved run stays cached
    again = run(TINY, out=out, progress=False)
    assert again.executed == [] and all(r.status == "cached" for r in again.results)
    # an MEI parameter: only the MEI, the Gabor comparison and the summary re-run, and the
    # run-level summary when the session summary it reads changed
    p = load_params(TINY)
    mei = p.model_copy(update={"mei": p.mei.model_copy(update={"steps": 25})})
    summary_csv = _session_dir(out) / "summary.csv"
    before = summary_csv.read_bytes()
    res = run(mei, out=out, progress=False)
    across = {"across"} if summary_csv.read_bytes() != before else set()
    assert {r.stage for r in res.executed} == {"mei", "gabor", "summary"} | across
    # a trust threshold: the MEI stage assesses trust, so it re-runs with what reads its outputs;
    # the data-limit chapter relabels its units (its models and MEIs are reused, not refitted)
    strict = mei.model_copy(update={"trust": dataclasses.replace(mei.trust, max_rf_p=0.5)})
    fitted = _store_entries()
    mei_file = next(_session_dir(out).rglob("mei.npy"))
    stamp = mei_file.stat().st_mtime_ns
    mei_json = (mei_file.parent / "mei.json").read_bytes()
    before = summary_csv.read_bytes()
    res = run(strict, out=out, progress=False)
    # the Gabor page re-renders only when the relabelled mei.json it reads changed
    changed = (mei_file.parent / "mei.json").read_bytes() != mei_json
    across = {"across"} if summary_csv.read_bytes() != before else set()
    assert {r.stage for r in res.executed} == {"mei", "summary", "limits"} | across | (
        {"gabor"} if changed else set())
    assert fitted and _store_entries() == fitted  # nothing of the study recomputed
    assert mei_file.stat().st_mtime_ns == stamp  # relabelled, not resynthesised
    mei = strict
    # deleting one artifact re-executes just its producer (outputs are byte-reproducible)
    sdir = _session_dir(out)
    (sdir / "images.npz").unlink()
    res = run(mei, out=out, progress=False)
    assert {r.stage for r in res.executed} == {"extract"}
    assert (sdir / "images.npz").is_file()


def _store_entries() -> dict[str, int]:
    """Every entry of the shared store (its manifest's mtime): what the study computed."""
    from meireport.store import cache_root

    return {str(f.parent.name): f.stat().st_mtime_ns
            for f in (cache_root() / "store").rglob("entry.json")}


def _heavy_files(run_dir: Path) -> dict[str, int]:
    sdir = _session_dir(run_dir)
    files = [sdir / "selection.csv", *sdir.rglob("model.pt"), *sdir.rglob("mei.npy"),
             *sdir.rglob("gabor.npy")]
    return {str(f.relative_to(run_dir)): f.stat().st_mtime_ns for f in files}


def test_a_rendering_change_re_renders_every_page_and_refits_nothing(tiny_run, tmp_path,
                                                                     monkeypatch):
    """A change of plotting or notebook code (the package hash) re-executes every notebook;
    the stages find their computations cached (models, MEIs, Gabors, selection, the study)."""
    from meireport.report import run as run_mod

    src, _, _ = tiny_run
    out = tmp_path / "run"
    shutil.copytree(src, out, ignore=shutil.ignore_patterns("book"))
    heavy, study = _heavy_files(out), _store_entries()
    assert len(heavy) >= 4 and study
    monkeypatch.setattr(run_mod, "package_hash", lambda: "a figure's label changed")
    res = run(TINY, out=out, progress=False)
    assert not res.failed and all(r.status == "ok" for r in res.results if r.notebook)
    assert {r.stage for r in res.executed} == {s.name for s in available_stages()}
    assert _heavy_files(out) == heavy and _store_entries() == study
    for r in res.results:  # the re-rendered pages show results, not errors
        if r.notebook:
            nb = nbformat.read(r.notebook, as_version=4)
            assert not [o for c in nb.cells for o in c.get("outputs", [])
                        if o.get("output_type") == "error"], r.task_id


def test_failure_is_isolated(tiny_run):
    out, res, _ = tiny_run
    good = sorted({r.unit_id for r in res.results if r.unit_id is not None})
    assert good, "the tiny run selected no neuron"
    again = run(TINY, out=out, neurons=[good[0], 1], progress=False)  # unit 1 does not exist
    bad = [r for r in again.results if r.unit_id == 1]
    assert bad and all(r.status in ("failed", "skipped") for r in bad)
    assert any("unit_id: 1 is not a unit" in (r.error or "") for r in bad)
    assert all(r.status in ("ok", "cached") for r in again.results if r.unit_id == good[0])
    index = build_book(out)
    page = index.parent / "sessions" / str(res.results[0].session_id) / "units" / "1"
    text = " ".join(re.sub(r"<[^>]+>", "", f.read_text()) for f in page.rglob("*.html"))
    assert "unit_id: 1 is not a unit" in " ".join(text.split())
    summary = _summary(out)
    assert summary.set_index("unit_id").loc[1, "status"].startswith("failed at train")
    # back to the selected neurons: the summary only, and the run-level summary that reads it
    back = run(TINY, out=out, progress=False)
    assert {r.stage for r in back.executed} == {"summary", "across"}
    build_book(out)


def test_select_session_failure_does_not_stop_the_run(tmp_path):
    p = load_params(TINY)
    bad = p.model_copy(update={"selection": p.selection.model_copy(update={"units": [1, 2]}),
                               "limits": p.limits.model_copy(update={"enabled": False})})
    res = run(bad, out=tmp_path, progress=False)
    assert {(r.stage, r.status) for r in res.failed} == {("select", "failed"),
                                                         ("summary", "skipped")}
    assert any(r.stage == "extract" and r.status == "ok" for r in res.results)
    # the run-level summary runs on what there is (no session with a selection here)
    (across,) = [r for r in res.results if r.stage == "across"]
    assert across.status == "ok"
    index = build_book(tmp_path)
    text = "\n".join(f.read_text() for f in index.parent.rglob("*.html"))
    assert "MeireportError" in text or "could not be produced" in text


def test_dask_cluster_gives_same_summary(tiny_run, tmp_path):
    from distributed import LocalCluster

    out, _, _ = tiny_run
    with LocalCluster(n_workers=2, threads_per_worker=1, host="127.0.0.1",
                      dashboard_address=None, processes=True) as cluster:
        res = run(TINY, out=tmp_path, scheduler=cluster.scheduler_address, progress=False)
    assert not res.failed
    a, b = _summary(tmp_path), _summary(out)
    timing = [c for c in a.columns if "seconds" in c]  # wall-clock differs, nothing else
    # stages run torch single-threaded, so pool and Dask workers compute the same numbers
    pd.testing.assert_frame_equal(a.drop(columns=timing), b.drop(columns=timing),
                                  check_exact=False, rtol=1e-9)


def test_params_errors_one_line_per_field(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("source: {kind: simulated}\nmei: {steps: -5}\nextract: {window: [0.3, 0.1]}\n"
                   "selection: {oracle_quantile: 2}\nfoo: 1\n")
    with pytest.raises(MeireportError) as e:
        load_params(bad)
    lines = str(e.value).splitlines()
    assert "mei.steps: expected an integer >= 1, got -5" in lines
    assert "extract.window: t1 must be > t0, got [0.3, 0.1]" in lines
    assert "selection.oracle_quantile: expected a quantile in [0, 1], got 2.0" in lines
    assert "foo: unknown field (check the spelling), got 1" in lines
    assert len(lines) == 4
    with pytest.raises(MeireportError, match="source.kind: must be one of"):
        parse_params({"source": {"kind": "allen"}})
    with pytest.raises(MeireportError, match="source: path is required for kind 'allen_cache'"):
        parse_params({"source": {"kind": "allen_cache"}})
    with pytest.raises(MeireportError, match="does not exist"):
        load_params(tmp_path / "none.yaml")
    (tmp_path / "x.yaml").write_text("source: [unclosed")
    with pytest.raises(MeireportError, match="not valid YAML"):
        load_params(tmp_path / "x.yaml")
    for f in (ROOT / "params").glob("*.yaml"):
        load_params(f)  # every shipped params file is valid


def test_renamed_params_fields_name_their_new_name():
    with pytest.raises(MeireportError) as e:
        parse_params({"source": {"kind": "simulated"},
                      "mei": {"lr": 0.1, "precondition_exponent": 0.2, "steps": -5},
                      "train": {"epochs": 5, "val_fraction": 0.1, "test_fraction": 0.1},
                      "model": {"core_channels": 4, "crop": 24, "use_gabors": True,
                                "ensemble": 3, "readout": "pyramid"}})
    lines = str(e.value).splitlines()
    for old, new in [("mei.lr", "mei.step_size"), ("mei.precondition_exponent",
                                                   "mei.fourier_exponent"),
                     ("train.epochs", "train.max_epochs"), ("train.val_fraction", "train.val_frac"),
                     ("train.test_fraction", "train.test_frac"),
                     ("model.core_channels", "model.core.hidden_channels"),
                     ("model.crop", "model.crop_size"), ("model.use_gabors", "train.gabors"),
                     ("model.ensemble", "train.ensemble")]:
        assert f"{old}: renamed to {new}" in lines
    assert any(ln.startswith("model.readout: renamed to model.readout.kind") for ln in lines)
    assert "mei.steps: expected an integer >= 1, got -5" in lines  # reported beside the renames
    assert len(lines) == 11


def test_library_checks_name_every_bad_field_of_a_section():
    with pytest.raises(MeireportError) as e:
        parse_params({"source": {"kind": "simulated"},
                      "mei": {"steps": 0, "step_size": -1, "n_starts": 0, "blur_end": "x"},
                      "model": {"core": {"hidden_channels": 0, "input_kern": 4},
                                "readout": {"kind": "grid"}},
                      "train": {"max_epochs": 0, "val_frac": 1.5},
                      "trust": {"max_rf_p": 2}})
    assert set(str(e.value).splitlines()) == {
        "mei.steps: expected an integer >= 1, got 0",
        "mei.step_size: expected > 0, got -1.0",
        "mei.n_starts: expected an integer >= 1, got 0",
        "mei.blur_end: input should be a valid number, unable to parse string as a number, "
        "got 'x'",
        "model.core.hidden_channels: expected an integer >= 1, got 0",
        "model.core.input_kern: expected an odd kernel size, got 4",
        "model.readout.kind: expected one of ('point', 'factorized'), got 'grid'",
        "train.max_epochs: expected an integer >= 1, got 0",
        "train.val_frac: expected a fraction in (0, 1), got 1.5",
        "trust.max_rf_p: expected a value in [0, 1], got 2.0",
    }
    with pytest.raises(MeireportError) as e:  # checks across fields name the field
        parse_params({"source": {"kind": "simulated"}, "model": {"crop_size": 2},
                      "train": {"val_frac": 0.6, "test_frac": 0.5}})
    assert set(str(e.value).splitlines()) == {
        "model.crop_size: expected (rows, cols) >= 2 * pooling, got (2, 2)",
        "train.test_frac: expected val_frac + test_frac < 1, got 0.6 + 0.5",
    }


def test_sections_build_the_library_configs():
    from meireport.mei import MEIConfig, default_starts
    from meireport.models import CNNConfig, CoreConfig, LNConfig, TrainConfig
    from meireport.report.params import MEIParams, ModelParams
    from meireport.trust import TrustThresholds

    p = parse_params({"source": {"kind": "simulated"}})
    # the defaults are the library's: one definition
    assert p.model.configs() == (CNNConfig(), LNConfig())
    assert p.mei.config() == MEIConfig() and MEIConfig().starts == default_starts(4)
    assert p.train == TrainConfig() and p.trust == TrustThresholds()
    d = load_params(TINY).to_json_dict()  # what a notebook gets, as JSON
    cnn, ln = ModelParams.from_dict(dict(d["model"], crop_size=16)).configs((60, 96))
    assert cnn.core == CoreConfig(hidden_channels=4, layers=2, input_kern=9)
    assert cnn.crop_size == ln.crop_size == (16, 16)
    assert TrainConfig.from_dict(d["train"]).max_epochs == 5
    assert MEIParams.from_dict(d["mei"]).config() == MEIConfig(steps=20,
                                                               starts=("noise", "black"))
    with pytest.raises(MeireportError, match=r"^mei\.lr: renamed to mei\.step_size$"):
        MEIParams.from_dict({"lr": 0.1})


# Tables on a page that stick out of the content column and are not inside a scroll container
# (a table hidden in another tab has no size and is skipped).
_OVERFLOWING_TABLES = """() => {
  const col = document.querySelector('article.bd-article') || document.querySelector('main');
  if (!col) return ['no content column'];
  const right = col.getBoundingClientRect().right + 1;
  const bad = [];
  for (const t of col.querySelectorAll('table')) {
    const r = t.getBoundingClientRect();
    if (r.width === 0 || r.right <= right) continue;
    let el = t.parentElement, scrolls = false;
    while (el && el !== col.parentElement) {
      const ox = getComputedStyle(el).overflowX;
      if ((ox === 'auto' || ox === 'scroll') && el.getBoundingClientRect().right <= right) {
        scrolls = true; break;
      }
      el = el.parentElement;
    }
    if (!scrolls) bad.push((t.id || t.className || 'table') + ' right edge ' + r.right);
  }
  return bad;
}"""


def _file(url: str) -> Path:
    from urllib.parse import unquote, urlsplit

    return Path(unquote(urlsplit(url).path))


def _check_page(page, url: str) -> dict:
    """Open a page; assert what every page must satisfy; return what it links."""
    urls: list[str] = []
    page.on("request", lambda r: urls.append(r.url))
    page.goto(url, wait_until="networkidle")
    remote = [u for u in urls if not u.startswith(("file://", "data:", "blob:"))]
    assert remote == [], (url, remote)
    broken = page.evaluate("Array.from(document.images).filter(i => i.getAttribute('src') "
                           "&& (!i.complete || i.naturalWidth === 0)).map(i => i.src)")
    assert broken == [], (url, broken)
    assert page.evaluate(_OVERFLOWING_TABLES) == [], url
    links = page.evaluate("Array.from(document.querySelectorAll('a[href]')).filter(a => "
                          "a.href.startsWith('file:')).map(a => a.href.split('#')[0])")
    missing = sorted({u for u in links if not _file(u).exists()})
    assert missing == [], (url, missing)
    return {
        "cards": page.evaluate("Array.from(document.querySelectorAll("
                               "'.sd-card a.sd-stretched-link')).map(a => a.href)"),
        "downloads": page.evaluate("Array.from(document.querySelectorAll('a.download'))"
                                   ".map(a => a.href)"),
        "text": page.inner_text("article") if page.locator("article").count() else "",
    }


@pytest.mark.skipif(CHROMIUM is None and not os.environ.get("CI"), reason="no chromium here")
def test_site_in_headless_chromium(tiny_run, tmp_path):
    """The published site, opened from another folder (file://) at 1280 px, as a reader would.

    Every page: nothing requested from outside the machine, every image loads, every internal
    link resolves, no table overflows the content column. The landing page shows the counts and
    the gallery; every gallery card links to an existing neuron page; the session and neuron
    pages link their downloads, which resolve to files.
    """
    from playwright.sync_api import sync_playwright

    from meireport.report.publish import check_site, publish_site

    assert CHROMIUM, "chromium is not installed (.ci/run installs it with apt-get)"
    out, res, index = tiny_run
    (tmp_path / "elsewhere").mkdir()
    site = publish_site(out, tmp_path / "elsewhere" / "site")
    check_site(site)
    assert not site.is_relative_to(out)
    sid = _session_dir(out).name
    summary = _summary(out)
    pages = sorted(p for p in site.rglob("*.html")
                   if p.name not in ("genindex.html", "search.html", "index.html")
                   and not p.relative_to(site).parts[0].startswith("_"))
    args = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--no-first-run"]
    seen: dict[str, dict] = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=args)
        for page_path in [site / "index.html", *pages]:
            page = browser.new_page(viewport={"width": 1280, "height": 1600})
            rel = page_path.relative_to(site).as_posix()
            seen[rel] = _check_page(page, page_path.as_uri())
            if rel in ("intro.html", f"sessions/{sid}/06_summary.html") or "neuron" in rel:
                page.screenshot(path=str(tmp_path / (rel.replace("/", "_") + ".png")))
            page.close()
        browser.close()
    landing = seen["intro.html"]
    assert re.search(rf"\b{len(summary)} neurons? reported", landing["text"]), landing["text"][:500]
    assert "MEI gallery" in landing["text"]
    cards = landing["cards"] + seen[f"sessions/{sid}/06_summary.html"]["cards"]
    assert len(landing["cards"]) == min(len(summary), 4), landing["cards"]
    # the summary page's gallery: one card per neuron in each of its three orderings
    n = len(summary)
    assert len(seen[f"sessions/{sid}/06_summary.html"]["cards"]) == (3 * n if n > 1 else n)
    for url in cards:
        assert _file(url).name == "neuron.html" and _file(url).is_file(), url
    downloads = seen[f"sessions/{sid}/06_summary.html"]["downloads"]
    assert {_file(u).name for u in downloads} == {"summary.csv", "selection.csv",
                                                   "meis_gabors.zip"}, downloads
    assert pd.read_csv(next(_file(u) for u in downloads if u.endswith("summary.csv"))).equals(
        summary)
    for uid in summary["unit_id"]:
        neuron = seen[f"sessions/{sid}/units/{uid}/neuron.html"]
        names = {_file(u).name for u in neuron["downloads"]}
        assert {"mei.npy", "gabor.npy", "best_image.npy"} <= names, names
        for u in neuron["downloads"]:
            assert _file(u).is_file(), u
        assert np.array_equal(
            np.load(next(_file(u) for u in neuron["downloads"] if u.endswith("/mei.npy"))),
            np.load(_session_dir(out) / str(uid) / "mei.npy"))


def test_crop_falls_back_to_the_full_field_without_a_mapped_rf(tiny_run, tmp_path):
    from meireport.report import stages

    out, _, _ = tiny_run
    sdir = _session_dir(out)
    sel = pd.read_csv(sdir / "selection.csv")
    has_rf = sel["has_rf"].astype(bool)
    assert has_rf.any() and (~has_rf).any()
    p = load_params(TINY).to_json_dict()
    model = dict(p["model"], crop_size=16)
    for uid, expected in ((sel.loc[~has_rf, "unit_id"].iloc[0], None),
                          (sel.loc[has_rf, "unit_id"].iloc[0], 16)):
        st = stages.train_stage(sdir, tmp_path / str(uid), int(uid), model, p["train"])
        assert st.values["crop_px"] == expected
        assert (st.values["rf_centre_px"] is None) == (expected is None)
        assert (tmp_path / str(uid) / "model.pt").is_file()
