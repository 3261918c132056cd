"""The book shows `bench/results.md` (with its plots) as a Performance page when it exists."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from meireport.report import book

PAGE = """# Performance

Measured **2026-01-02 03:04 UTC** on **Test CPU 9000**, 2 usable cores.

| Figure | Ours | Baseline | Ratio |
|---|---|---|---|
| cold open-to-counts | 0.1 s | AllenSDK: 2.5 s | 25x faster |

![Scaling](perf_scaling.png)
"""


def _fake_run(run_dir: Path) -> Path:
    """A run folder with no sessions: enough for the book (intro, methods, About)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "run.json").write_text(json.dumps({
        "params": {"title": "bench page test"}, "session_ids": [], "results": [],
        "meireport_version": "0"}))
    return run_dir


def _fake_bench(folder: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(1, 1))
    ax.plot([0, 1], [0, 1])
    fig.savefig(folder / "perf_scaling.png", dpi=20)
    plt.close(fig)
    (folder / "results.md").write_text(PAGE)
    return folder / "results.md"


def _toc_files(src: Path) -> list[str]:
    import yaml

    toc = yaml.safe_load((src / "_toc.yml").read_text())
    return [c["file"] for part in toc["parts"] for c in part["chapters"]]


def test_no_bench_results_no_page(tmp_path, monkeypatch):
    monkeypatch.setattr(book, "BENCH_RESULTS", tmp_path / "bench" / "results.md")
    run_dir = _fake_run(tmp_path / "run")
    src = tmp_path / "src"
    src.mkdir()
    book._write_source(src, run_dir)
    assert "performance" not in _toc_files(src)
    assert not (src / "performance.md").exists()


@pytest.mark.slow
def test_book_shows_performance_page(tmp_path, monkeypatch):
    monkeypatch.setattr(book, "BENCH_RESULTS", _fake_bench(tmp_path / "bench"))
    run_dir = _fake_run(tmp_path / "run")
    index = book.build_book(run_dir)
    html = index.parent / "performance.html"
    assert html.is_file()
    text = html.read_text()
    assert "Performance" in text and "Test CPU 9000" in text and "2026-01-02" in text
    assert "25x faster" in text
    assert list(index.parent.rglob("perf_scaling.png")), "the plot is not in the site"
    assert "performance.html" in (index.parent / "intro.html").read_text()  # in the navigation
