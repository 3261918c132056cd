"""Build the Jupyter Book site of a run: generated ``_toc.yml``, never re-executes, atomic swap.

The site is built in a temporary folder inside the run folder and swapped in only when the build
succeeded, so a failed build never leaves half a site. It loads nothing from the internet
(MathJax is served from the site itself by ``sphinx-mathjax-offline``). The build holds the run
folder's lock (:func:`meireport.report.run.run_folder_lock`). The ``book/`` folder it makes is
marked (:data:`BOOK_MARK`); a ``book/`` without the mark is never replaced.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

import meireport
from meireport.artifacts import save_json
from meireport.errors import MeireportError
from meireport.report import site
from meireport.report.run import RUN_LEVEL_ID, STAGES, load_run, run_folder_lock

__all__ = ["build_book", "book_index", "task_page", "BOOK_TEMPLATE_DIR", "BOOK_MARK"]

#: Site pages shipped with the package (package data, present in a wheel install too).
BOOK_TEMPLATE_DIR = Path(__file__).resolve().parent / "pages"
#: The shipped pages every site has (the landing page is generated: :mod:`.site`); the style
#: sheet goes to the site's ``_static``.
PAGES = ("methods.md", "meireport.css")
#: `nox -s bench` writes it into a source checkout: the book shows it as a "Performance" page
#: when it exists (an installed package has none, and the page is left out).
BENCH_RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results.md"
#: Marks a ``book/`` folder built by :func:`build_book` (only such a folder is replaced).
BOOK_MARK = ".meireport-book.json"
_BOOK = {"format": "meireport book", "version": 1}
_HIDDEN_TAGS = {"injected-parameters", "parameters"}
_STAGE_TITLES = {
    "extract": "Extraction", "select": "Neuron selection", "train": "Model training",
    "mei": "Most exciting input", "gabor": "MEI vs Gabor", "summary": "Session summary",
    "limits": "What 118 images can tell", "across": "Across sessions and areas",
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
                       "html_css_files": ["meireport.css"],
                       "html_theme_options": {"use_download_button": False,
                                              "search_bar_text": "Search this report..."}},
        },
    }


def _clean_notebook(src: Path, dst: Path, title: str | None = None,
                    after_intro: str = "", at_end: str = "") -> None:
    """Copy an executed notebook, removing the parameter cells; optionally retitle the page.

    ``after_intro`` (MyST) becomes a markdown cell after the first one (the page's heading and
    introduction), ``at_end`` one at the end: the site's generated parts (gallery, downloads,
    neuron-to-neuron links).
    """
    import nbformat

    try:
        nb = nbformat.read(src, as_version=4)
    except Exception as e:  # any reader error: the file is not a notebook
        raise MeireportError(f"book: {src} is not a readable notebook ({type(e).__name__}); "
                             "rerun `meireport run` to execute it again") from None
    if title:
        first = next((c for c in nb.cells if c.cell_type == "markdown"), None)
        if first is not None and first.source.startswith("# "):
            rest = first.source.partition("\n")[2]
            first.source = f"# {title}\n{rest}"
    for cell in nb.cells:
        tags = set(cell.get("metadata", {}).get("tags", []))
        if tags & _HIDDEN_TAGS:
            cell.setdefault("metadata", {})["tags"] = sorted(tags | {"remove-cell"})
    if after_intro:
        first = next((i for i, c in enumerate(nb.cells) if c.cell_type == "markdown"), -1)
        nb.cells.insert(first + 1, nbformat.v4.new_markdown_cell(after_intro))
    if at_end:
        nb.cells.append(nbformat.v4.new_markdown_cell(at_end))
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


def _shows_notebook(r: dict) -> bool:
    """Whether the site shows the task's executed notebook, not a page saying what failed.

    A session's notebook is shown even when it failed (its error is in it); a neuron's or the
    run-level chapter's only when it succeeded.
    """
    nb = r.get("notebook")
    if not nb or not Path(nb).is_file():
        return False
    session_level = r["unit_id"] is None and r["session_id"] != RUN_LEVEL_ID
    return session_level or r["status"] in ("ok", "cached")


def task_page(r: dict) -> str:
    """The site page (relative to the site, no suffix) that shows a task of ``run.json``.

    Examples
    --------
    >>> task_page({"stage": "train", "session_id": 7, "unit_id": 3, "status": "failed",
    ...            "notebook": None})
    'sessions/7/units/3/failed'
    """
    sid, uid, st = r["session_id"], r["unit_id"], r["stage"]
    stem = Path(r["notebook"]).stem if _shows_notebook(r) else None
    if sid == RUN_LEVEL_ID:
        return f"{st}/{stem or st + '_failed'}"
    if uid is None:
        return f"sessions/{sid}/{stem or st + '_failed'}"
    return f"sessions/{sid}/units/{uid}/{stem or 'failed'}"


_NEURON_TITLES = {"train": "Model training", "mei": "Most exciting input",
                  "gabor": "MEI vs Gabor"}


def _neuron_order(sres: list[dict], cards: list[site.Card]) -> list[int]:
    """A session's neurons in the gallery's order (trust, then oracle), the rest by id."""
    units = sorted({r["unit_id"] for r in sres if r["unit_id"] is not None})
    first = [c.unit_id for c in site.sort_cards(cards) if c.unit_id in units]
    return first + [u for u in units if u not in first]


def _neuron_entry(src: Path, run_dir: Path, sid: int, uid: int, ures: list[dict],
                  card: site.Card, nav: str) -> dict:
    """Copy one neuron's notebooks, write its overview page; return its toc chapter."""
    pages = []
    for r in ures:
        if _shows_notebook(r):
            rel = task_page(r)
            title = _NEURON_TITLES.get(r["stage"], _STAGE_TITLES[r["stage"]])
            _clean_notebook(Path(r["notebook"]), src / f"{rel}.ipynb",
                            f"Neuron {uid}: {title}", at_end=nav)
            pages.append({"file": rel, "title": title})
    bad = [r for r in ures if r["status"] in ("failed", "skipped")]
    if bad:
        rel = task_page(bad[0])
        _failure_page(src / f"{rel}.md", f"Neuron {uid}: what failed", bad)
        pages.append({"file": rel, "title": "What failed"})
    page = f"sessions/{sid}/units/{uid}/{site.NEURON_PAGE}"
    files = site.write_neuron_files(run_dir / "results" / str(sid) / str(uid),
                                    src / page.rsplit("/", 1)[0] / "data")
    text = site.neuron_markdown(card, [(p["title"], f"/{p['file']}") for p in pages], files, nav)
    (src / f"{page}.md").write_text(text)
    chapter: dict = {"file": page, "title": f"Neuron {uid}"}
    if pages:
        chapter["sections"] = pages
    return chapter


def _session_entries(src: Path, sid: int, results: list[dict], run_dir: Path,
                     cards: list[site.Card]) -> dict:
    """Copy one session's notebooks and its downloads into the book source; its toc part."""
    sres = [r for r in results if r["session_id"] == sid]
    scards = [c for c in cards if c.session_id == sid]
    downloads = site.downloads_markdown(site.write_session_downloads(run_dir, sid, src))
    extra = {"select": downloads,
             "summary": f"## MEI gallery\n\n{site.gallery_markdown(scards)}\n\n{downloads}"}
    chapters = []
    stage_order = [s.name for s in STAGES]
    for st in ("extract", "select", "summary"):
        r = next((x for x in sres if x["stage"] == st and x["unit_id"] is None), None)
        if r is None:
            continue
        rel = task_page(r)
        if _shows_notebook(r):
            _clean_notebook(Path(r["notebook"]), src / f"{rel}.ipynb",
                            after_intro=extra.get(st, ""))
            chapters.append({"file": rel, "title": _STAGE_TITLES[st]})
        else:
            _failure_page(src / f"{rel}.md", f"{_STAGE_TITLES[st]} failed", [r])
            chapters.append({"file": rel})
    units = _neuron_order(sres, scards)
    by_uid = {c.unit_id: c for c in scards}
    neighbours = [by_uid.get(u) or site.Card(sid, u) for u in units]
    for i, uid in enumerate(units):
        ures = sorted([r for r in sres if r["unit_id"] == uid],
                      key=lambda r: stage_order.index(r["stage"]))
        nav = site.nav_markdown(neighbours[i - 1] if i else None,
                                neighbours[i + 1] if i + 1 < len(units) else None)
        chapters.append(_neuron_entry(src, run_dir, sid, uid, ures, neighbours[i], nav))
    return {"caption": f"Session {sid}", "chapters": chapters}


def _run_level_entries(src: Path, results: list[dict], stages: tuple[str, ...]) -> list[dict]:
    """Chapters of the run-level ``stages``, or their failure pages.

    The data-limit chapter (``limits``), the run-level summary (``across``).
    """
    chapters = []
    for r in results:
        # the chapter's notebook task; its pieces (call tasks: ``limits/n118/sim``...) have none
        own = f"{RUN_LEVEL_ID}/-/{r['stage']}"
        if r["stage"] not in stages or r["stage"] not in _STAGE_TITLES \
                or r["session_id"] != RUN_LEVEL_ID or r.get("task_id", own) != own:
            continue
        rel = task_page(r)
        if _shows_notebook(r):
            _clean_notebook(Path(r["notebook"]), src / f"{rel}.ipynb")
            chapters.append({"file": rel, "title": _STAGE_TITLES[r["stage"]]})
        else:
            pieces = [x for x in results if x["stage"] == r["stage"] and x is not r
                      and x["session_id"] == RUN_LEVEL_ID and x["status"] == "failed"]
            _failure_page(src / f"{rel}.md", f"{_STAGE_TITLES[r['stage']]} failed",
                          [r, *pieces])
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


def _write_source(src: Path, run_dir: Path, run: dict | None = None) -> None:
    """Write the book source of a run (its ``run.json``, read here unless given) into ``src``."""
    run = run if run is not None else load_run(run_dir)
    title = run["params"].get("title") or "meireport"
    for name in PAGES:
        f = BOOK_TEMPLATE_DIR / name
        if not f.is_file():
            raise MeireportError(f"book page {f} is missing from the installed package "
                                 "(reinstall meireport)")
        dst = src / "_static" / name if name.endswith(".css") else src / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(f, dst)
    extra = _performance_page(src, run_dir)
    across = _run_level_entries(src, run["results"], ("across",))
    parts = [{"caption": "This run", "chapters": across}] if across else []
    parts.append({"caption": "Method", "chapters": [{"file": "methods"}]})
    limits = _run_level_entries(src, run["results"], ("limits",))
    if limits:
        parts.append({"caption": "How far to trust it", "chapters": limits})
    cards = site.collect_cards(run_dir, run, src)
    for sid in run["session_ids"]:
        parts.append(_session_entries(src, int(sid), run["results"], run_dir, cards))
    if extra:
        parts.append({"caption": "About", "chapters": [{"file": Path(p).stem} for p in extra]})
    site.write_params(src, run)
    limits_doc = f"/{limits[0]['file']}" if limits else None
    across_doc = f"/{across[0]['file']}" if across else None
    (src / "intro.md").write_text(site.landing_markdown(run_dir, run, cards, limits_doc,
                                                        across_doc))
    toc = {"format": "jb-book", "root": "intro", "parts": parts}
    (src / "_toc.yml").write_text(yaml.safe_dump(toc, sort_keys=False))
    (src / "_config.yml").write_text(yaml.safe_dump(_config(title), sort_keys=False))


def book_index(run_dir) -> Path:
    """Path of the built site's ``index.html``."""
    return Path(run_dir).resolve() / "book" / "_build" / "html" / "index.html"


def _is_own_book(book: Path) -> bool:
    """Whether ``book`` was built by :func:`build_book` (marked; or built before the mark was)."""
    if (book / BOOK_MARK).is_file():
        return True
    config = book / "_config.yml"
    return config.is_file() and "Built by meireport." in config.read_text(errors="replace")


def _check_replaceable(book: Path) -> None:
    if book.is_symlink() or (book.exists() and not (book.is_dir() and _is_own_book(book))):
        raise MeireportError(
            f"book: {book} exists and was not built by meireport (no {BOOK_MARK}); expected "
            "no book/ there or one made by `meireport build`; move it away to build the site")


def _jupyter_book(src: Path, quiet: bool) -> None:
    """Run ``jupyter-book build`` on ``src``; one line quoting its last lines if it fails."""
    cmd = [sys.executable, "-c", "from jupyter_book.cli.main import main; main()",
           "build", str(src), "--builder", "html"]
    if quiet:
        cmd.append("--quiet")
    env = dict(os.environ, PYDEVD_DISABLE_FILE_VALIDATION="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0 or not (src / "_build" / "html" / "index.html").is_file():
        tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
        raise MeireportError(f"jupyter-book build failed: {tail}")


def _swap(src: Path, final: Path, run_dir: Path) -> None:
    """Put the built ``src`` in place of ``final`` (the old book is removed after the rename)."""
    old = run_dir / ".book-old"
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(src, final)
    shutil.rmtree(old, ignore_errors=True)


def build_book(run_dir, quiet: bool = True) -> Path:
    """Build ``RUN_DIR/book/_build/html`` from a finished run; returns ``index.html``.

    Holds the run folder's lock while it builds; replaces only a ``book/`` it built itself.

    Raises
    ------
    MeireportError
        One line: the run folder or its ``run.json`` is missing or broken, the folder is not
        writable, its ``book/`` was not built by meireport, an executed notebook is not
        readable, or Jupyter Book failed (its last lines are quoted).
    RunFolderBusy
        Another process is writing into the run folder.
    """
    run_dir = Path(run_dir).expanduser().resolve()
    run = load_run(run_dir)
    if not os.access(run_dir, os.W_OK | os.X_OK):
        raise MeireportError(f"run_dir: {run_dir} is not writable (permission denied); "
                             "expected a run folder this user can write (the site is built "
                             "inside it)")
    with run_folder_lock(run_dir, "run_dir"):
        final = run_dir / "book"
        _check_replaceable(final)
        tmp = Path(tempfile.mkdtemp(prefix=".book-build-", dir=run_dir))
        try:
            src = tmp / "book"
            src.mkdir()
            _write_source(src, run_dir, run)
            _jupyter_book(src, quiet)
            save_json(src / BOOK_MARK, _BOOK | {"built_by": meireport.__version__})
            _swap(src, final, run_dir)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return book_index(run_dir)
