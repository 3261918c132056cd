"""Build the Jupyter Book site of a run: generated ``_toc.yml``, never re-executes, atomic swap.

The site is built in a temporary folder inside the run folder and swapped in only when the build
succeeded, so a failed build never leaves half a site. It loads nothing from the internet
(MathJax is served from the site itself by ``sphinx-mathjax-offline``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from meireport.errors import MeireportError
from meireport.report.run import RUN_LEVEL_ID, STAGES, load_run

__all__ = ["build_book", "book_index", "BOOK_TEMPLATE_DIR"]

#: Site pages shipped with the package (package data, present in a wheel install too).
BOOK_TEMPLATE_DIR = Path(__file__).resolve().parent / "pages"
#: `nox -s bench` writes it into a source checkout: the book shows it as a "Performance" page
#: when it exists (an installed package has none, and the page is left out).
BENCH_RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results.md"
_HIDDEN_TAGS = {"injected-parameters", "parameters"}
_STAGE_TITLES = {
    "extract": "Extraction", "select": "Neuron selection", "train": "Model training",
    "mei": "Most exciting input", "gabor": "MEI vs Gabor", "summary": "Session summary",
    "limits": "What 118 images can tell",
}


def _config(title: str) -> dict:
    return {
        "title": title,
        "author": "meireport",
        "copyright": "",
        "only_build_toc_files": True,
        "execute": {"execute_notebooks": "off"},
        "html": {
            "use_repository_button": False, "use_issues_button": False,
            "use_edit_page_button": False, "use_download_button": False,
            "home_page_in_navbar": True, "extra_footer": "Built by meireport.",
        },
        "launch_buttons": {"notebook_interface": "classic", "binderhub_url": "",
                           "jupyterhub_url": "", "thebe": False, "colab_url": ""},
        "repository": {"url": ""},
        "sphinx": {
            "extra_extensions": ["meireport.report.sphinx_offline"],
            "config": {"html_show_copyright": False, "html_show_sphinx": False,
                       "suppress_warnings": ["myst.header", "mystnb.unknown_mime_type"],
                       "html_theme_options": {"use_download_button": False,
                                              "search_bar_text": "Search this report..."}},
        },
    }


def _clean_notebook(src: Path, dst: Path, title: str | None = None) -> None:
    """Copy an executed notebook, removing the parameter cells; optionally retitle the page."""
    import nbformat

    nb = nbformat.read(src, as_version=4)
    if title:
        first = next((c for c in nb.cells if c.cell_type == "markdown"), None)
        if first is not None and first.source.startswith("# "):
            rest = first.source.partition("\n")[2]
            first.source = f"# {title}\n{rest}"
    for cell in nb.cells:
        tags = set(cell.get("metadata", {}).get("tags", []))
        if tags & _HIDDEN_TAGS:
            cell.setdefault("metadata", {})["tags"] = sorted(tags | {"remove-cell"})
    dst.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, dst)


def _failure_page(dst: Path, title: str, rows: list[dict]) -> None:
    lines = [f"# {title}", "", "This part of the report could not be produced.", ""]
    for r in rows:
        lines += [f"- **{r['stage']}** ({r['status']}): `{r.get('error') or 'no error recorded'}`"]
    lines += ["", "The other neurons and pages are unaffected. Fix the cause and rerun "
              "`meireport run`: finished notebooks are reused from the cache."]
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_text("\n".join(lines) + "\n")


def _session_entries(src: Path, run_dir: Path, sid: int, results: list[dict]) -> dict:
    """Copy one session's notebooks into the book source; return its toc part."""
    sres = [r for r in results if r["session_id"] == sid]
    chapters = []
    stage_order = [s.name for s in STAGES]
    for st in ("extract", "select", "summary"):
        r = next((x for x in sres if x["stage"] == st and x["unit_id"] is None), None)
        if r is None:
            continue
        rel = f"sessions/{sid}/{Path(r['notebook']).stem}" if r.get("notebook") else None
        if rel and Path(r["notebook"]).is_file():
            _clean_notebook(Path(r["notebook"]), src / f"{rel}.ipynb")
            chapters.append({"file": rel, "title": _STAGE_TITLES[st]})
        else:
            rel = f"sessions/{sid}/{st}_failed"
            _failure_page(src / f"{rel}.md", f"{_STAGE_TITLES[st]} failed", [r])
            chapters.append({"file": rel})
    units = sorted({r["unit_id"] for r in sres if r["unit_id"] is not None})
    for uid in units:
        ures = sorted([r for r in sres if r["unit_id"] == uid],
                      key=lambda r: stage_order.index(r["stage"]))
        pages = []
        for r in ures:
            nb = Path(r["notebook"]) if r.get("notebook") else None
            if r["status"] in ("ok", "cached") and nb is not None and nb.is_file():
                rel = f"sessions/{sid}/units/{uid}/{nb.stem}"
                title = f"Neuron {uid}: {_STAGE_TITLES[r['stage']]}"
                _clean_notebook(nb, src / f"{rel}.ipynb", title)
                pages.append({"file": rel, "title": title})
        bad = [r for r in ures if r["status"] in ("failed", "skipped")]
        if bad:
            rel = f"sessions/{sid}/units/{uid}/failed"
            _failure_page(src / f"{rel}.md", f"Neuron {uid}: what failed", bad)
            pages.append({"file": rel, "title": f"Neuron {uid}: failed"})
        if pages:
            chapter = dict(pages[0])
            if len(pages) > 1:
                chapter["sections"] = pages[1:]
            chapters.append(chapter)
    return {"caption": f"Session {sid}", "chapters": chapters}


def _run_level_entries(src: Path, results: list[dict]) -> list[dict]:
    """Chapters of the run-level stages (the data-limit chapter), or their failure pages."""
    chapters = []
    for r in results:
        if r["stage"] not in _STAGE_TITLES or r["session_id"] != RUN_LEVEL_ID:
            continue
        nb = Path(r["notebook"]) if r.get("notebook") else None
        if r["status"] in ("ok", "cached") and nb is not None and nb.is_file():
            _clean_notebook(nb, src / "limits" / nb.name)
            chapters.append({"file": f"limits/{nb.stem}", "title": _STAGE_TITLES[r["stage"]]})
        else:
            rel = f"limits/{r['stage']}_failed"
            _failure_page(src / f"{rel}.md", f"{_STAGE_TITLES[r['stage']]} failed", [r])
            chapters.append({"file": rel})
    return chapters


def _performance_page(src: Path, run_dir: Path) -> list[str]:
    """Copy the Performance page (the run's own, else the repo's bench results) + its PNGs."""
    page = run_dir / "performance.md"
    if not page.is_file():
        page = BENCH_RESULTS
    if not page.is_file():
        return []
    shutil.copy(page, src / "performance.md")
    for img in page.parent.glob("*.png"):
        shutil.copy(img, src / img.name)
    return ["performance.md"]


def _write_source(src: Path, run_dir: Path) -> None:
    run = load_run(run_dir)
    title = run["params"].get("title") or "meireport"
    for name in ("intro.md", "methods.md"):
        f = BOOK_TEMPLATE_DIR / name
        if not f.is_file():
            raise MeireportError(f"book page {f} is missing from the installed package "
                                 "(reinstall meireport)")
        shutil.copy(f, src / name)
    extra = _performance_page(src, run_dir)
    parts = [{"caption": "Method", "chapters": [{"file": "methods"}]}]
    limits = _run_level_entries(src, run["results"])
    if limits:
        parts.append({"caption": "How far to trust it", "chapters": limits})
    for sid in run["session_ids"]:
        parts.append(_session_entries(src, run_dir, int(sid), run["results"]))
    if extra:
        parts.append({"caption": "About", "chapters": [{"file": Path(p).stem} for p in extra]})
    toc = {"format": "jb-book", "root": "intro", "parts": parts}
    (src / "_toc.yml").write_text(yaml.safe_dump(toc, sort_keys=False))
    (src / "_config.yml").write_text(yaml.safe_dump(_config(title), sort_keys=False))


def book_index(run_dir) -> Path:
    """Path of the built site's ``index.html``."""
    return Path(run_dir).resolve() / "book" / "_build" / "html" / "index.html"


def build_book(run_dir, quiet: bool = True) -> Path:
    """Build ``RUN_DIR/book/_build/html`` from a finished run; returns ``index.html``.

    Raises
    ------
    MeireportError
        The run folder has no run, or Jupyter Book failed (its last lines are quoted).
    """
    run_dir = Path(run_dir).expanduser().resolve()
    tmp = Path(tempfile.mkdtemp(prefix=".book-build-", dir=run_dir))
    try:
        src = tmp / "book"
        src.mkdir()
        _write_source(src, run_dir)
        cmd = [sys.executable, "-c", "from jupyter_book.cli.main import main; main()",
               "build", str(src), "--builder", "html"]
        if quiet:
            cmd.append("--quiet")
        env = dict(os.environ, PYDEVD_DISABLE_FILE_VALIDATION="1")
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        index = src / "_build" / "html" / "index.html"
        if proc.returncode != 0 or not index.is_file():
            tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
            raise MeireportError(f"jupyter-book build failed: {tail}")
        final = run_dir / "book"
        old = run_dir / ".book-old"
        shutil.rmtree(old, ignore_errors=True)
        if final.exists():
            os.replace(final, old)
        os.replace(src, final)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return book_index(run_dir)
