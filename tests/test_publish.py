"""`meireport publish`: a self-contained copy of a run's built site, never over a user's file."""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import pytest

from meireport.errors import MeireportError
from meireport.report.book import book_index
from meireport.report.cli import EXIT_BUSY, EXIT_INPUT, EXIT_OK, main
from meireport.report.publish import check_site, publish_site, site_links, site_problems
from meireport.report.run import MARK_FILE, run_folder_lock

INDEX = """<!DOCTYPE html>
<html><head>
<link rel="stylesheet" href="_static/style.css">
<script src="_static/app.js"></script>
</head><body>
<a href="#top">top</a>
<a href="sessions/7/extract.html#units">extraction</a>
<a href="https://example.org/paper">the paper</a>
<a href="mailto:someone@example.org">mail</a>
<a href="//example.org/other">another page</a>
<img src="_images/fig%201.png" alt="figure">
<img src="data:image/png;base64,iVBORw0KGgo=">
<a href="search.html?q=mei">search</a>
</body></html>
"""
PAGE = """<html><head><link rel="stylesheet" href="../../_static/style.css"></head>
<body><a href="../../index.html">home</a><img src="../../_images/fig%201.png"></body></html>
"""
FILES = {
    "index.html": INDEX,
    "search.html": '<html><body><a href="index.html">home</a></body></html>',
    "sessions/7/extract.html": PAGE,
    "_static/style.css": "body { color: black; }\n",
    "_static/app.js": "console.log('ok');\n",
    "_images/fig 1.png": "\x89PNG fake",
    "home.html": '<meta http-equiv="Refresh" content="0; url=index.html" />',
    # a theme's Jinja macros (not a page): its links are templates
    "_static/webpack-macros.html": "{% macro head() %}<link href=\"{{ pathto('x.css', 1) }}\">",
}


def _fake_run(run_dir: Path, files: dict[str, str] | None = FILES) -> Path:
    """A finished run (``run.json``, the folder's mark) with a built site of a few pages."""
    run_dir.mkdir(parents=True)
    (run_dir / "run.json").write_text(json.dumps({
        "params": {"title": "publish test"}, "session_ids": [], "results": [],
        "meireport_version": "0", "run_dir": str(run_dir)}))
    (run_dir / MARK_FILE).parent.mkdir(parents=True)
    (run_dir / MARK_FILE).write_text(json.dumps({"format": "meireport run folder",
                                                 "version": 1}))
    site = book_index(run_dir).parent
    for rel, text in (files or {}).items():
        (site / rel).parent.mkdir(parents=True, exist_ok=True)
        (site / rel).write_text(text)
    return run_dir


def _tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _no_temps(parent: Path) -> None:
    assert not [p.name for p in parent.iterdir() if ".publish-" in p.name]


@pytest.fixture
def run_dir(tmp_path):
    return _fake_run(tmp_path / "run")


def test_fake_site_is_self_contained(run_dir):
    site = book_index(run_dir).parent
    assert site_problems(site, run_dir) is None
    check_site(site)
    links = site_links(site)
    assert ("img src", "_images/fig%201.png") in {(k.attr, k.value) for k in links}
    assert {k.file.name for k in links} == {"index.html", "search.html", "extract.html",
                                            "home.html"}
    assert ("meta refresh", "index.html") in {(k.attr, k.value) for k in links}


def test_publish_to_a_folder_copies_every_file(run_dir, tmp_path):
    out = publish_site(run_dir, tmp_path / "site")
    assert out == tmp_path / "site"
    assert (out / "index.html").is_file()
    assert _tree(out) == _tree(book_index(run_dir).parent)
    check_site(out)
    _no_temps(tmp_path)


def test_publish_into_an_existing_empty_folder(run_dir, tmp_path):
    (tmp_path / "empty").mkdir()
    out = publish_site(run_dir, tmp_path / "empty")
    assert _tree(out) == _tree(book_index(run_dir).parent)


def test_publish_to_a_zip_has_index_at_its_root(run_dir, tmp_path):
    out = publish_site(run_dir, tmp_path / "site.zip")
    assert out == tmp_path / "site.zip" and out.is_file()
    with zipfile.ZipFile(out) as z:
        names = set(z.namelist())
        assert names == set(FILES)
        assert z.read("index.html").decode() == INDEX
        z.extractall(tmp_path / "unzipped")
    check_site(tmp_path / "unzipped")
    _no_temps(tmp_path)


def test_relative_target_is_made_absolute(run_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = publish_site(run_dir, "site/")
    assert out == tmp_path / "site" and (out / "index.html").is_file()


@pytest.mark.parametrize("name", ["taken", "taken.zip"])
def test_existing_non_empty_folder_is_refused_and_untouched(run_dir, tmp_path, name):
    taken = tmp_path / name
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    with pytest.raises(MeireportError) as e:
        publish_site(run_dir, taken)
    text = str(e.value)
    assert "\n" not in text and str(taken) in text and "nothing was overwritten" in text
    assert _tree(taken) == {"notes.txt": b"mine"}
    _no_temps(tmp_path)


@pytest.mark.parametrize("name", ["site.zip", "site", "site.html"])
def test_existing_file_is_refused_and_untouched(run_dir, tmp_path, name):
    taken = tmp_path / name
    taken.write_text("mine")
    with pytest.raises(MeireportError, match="exists \\(a file\\)") as e:
        publish_site(run_dir, taken)
    assert str(taken) in str(e.value)
    assert taken.read_text() == "mine"
    _no_temps(tmp_path)


def test_existing_empty_folder_is_refused_for_a_zip(run_dir, tmp_path):
    (tmp_path / "x.zip").mkdir()
    with pytest.raises(MeireportError, match="expected a new .zip path"):
        publish_site(run_dir, tmp_path / "x.zip")
    assert (tmp_path / "x.zip").is_dir() and not any((tmp_path / "x.zip").iterdir())


def test_symlink_target_is_refused(run_dir, tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(MeireportError, match="symbolic link"):
        publish_site(run_dir, tmp_path / "link")
    assert not any((tmp_path / "real").iterdir())


def test_missing_parent_folder(run_dir, tmp_path):
    with pytest.raises(MeireportError, match="parent folder .* does not exist") as e:
        publish_site(run_dir, tmp_path / "no" / "site")
    assert "\n" not in str(e.value)
    assert not (tmp_path / "no").exists()


def test_missing_site_says_to_build_first(tmp_path):
    run_dir = _fake_run(tmp_path / "run", files=None)
    with pytest.raises(MeireportError, match="run `meireport build .*` first") as e:
        publish_site(run_dir, tmp_path / "site")
    assert "\n" not in str(e.value)
    assert not (tmp_path / "site").exists()
    _no_temps(tmp_path)


def test_not_a_run_folder(tmp_path):
    (tmp_path / "plain").mkdir()
    with pytest.raises(MeireportError, match="no run.json"):
        publish_site(tmp_path / "plain", tmp_path / "site")
    assert not (tmp_path / "site").exists()


def test_target_inside_the_book_is_refused(run_dir):
    with pytest.raises(MeireportError, match="inside the run's book/ folder"):
        publish_site(run_dir, run_dir / "book" / "copy")
    assert not (run_dir / "book" / "copy").exists()


@pytest.mark.parametrize(("html", "why"), [
    ('<img src="/abs/path.png">', 'img src="/abs/path.png" is an absolute local path'),
    ('<a href="file:///tmp/x.html">x</a>', "is an absolute local path"),
    ('<script src="https://cdn.example.org/lib.js"></script>', "loads from the internet"),
    ('<link rel="stylesheet" href="//cdn.example.org/a.css">', "loads from the internet"),
    ('<iframe src="http://example.org/"></iframe>', "loads from the internet"),
    ('<img src="../../../outside.png">', "leaves the site"),
])
def test_a_link_out_of_the_site_publishes_nothing(tmp_path, html, why):
    run_dir = _fake_run(tmp_path / "run", FILES | {"bad.html": f"<html><body>{html}</body></html>"})
    for to in (tmp_path / "site", tmp_path / "site.zip"):
        with pytest.raises(MeireportError) as e:
            publish_site(run_dir, to)
        text = str(e.value)
        assert "\n" not in text and "bad.html" in text and why in text
        assert "nothing was published" in text
        assert not os.path.lexists(to)
    _no_temps(tmp_path)


def test_a_redirect_to_a_missing_page_is_refused(tmp_path):
    page = '<meta http-equiv="refresh" content="0; URL=\'intro.html\'">'
    run_dir = _fake_run(tmp_path / "run", FILES | {"index.html": page})
    with pytest.raises(MeireportError, match='index.html: meta refresh="intro.html"'):
        publish_site(run_dir, tmp_path / "site.zip")
    assert not (tmp_path / "site.zip").exists()


def test_a_link_into_the_run_folder_is_refused(tmp_path):
    run_dir = tmp_path / "run"
    page = f'<html><body><a href="x/{run_dir.resolve()}/results/a.csv">a</a></body></html>'
    _fake_run(run_dir, FILES | {"bad.html": page})
    with pytest.raises(MeireportError, match="points into the run folder"):
        publish_site(run_dir, tmp_path / "site")
    assert not (tmp_path / "site").exists()


def test_missing_relative_targets_are_listed(tmp_path):
    links = "".join(f'<img src="_images/gone{i}.png#x">' for i in range(7))
    run_dir = _fake_run(tmp_path / "run", FILES | {
        "bad.html": f'<html><body>{links}<a href="nowhere.html?q=1">n</a></body></html>'})
    with pytest.raises(MeireportError) as e:
        publish_site(run_dir, tmp_path / "site")
    text = str(e.value)
    assert "\n" not in text and "8 link(s) to missing files" in text and "(+3 more)" in text
    assert 'bad.html: img src="_images/gone0.png#x"' in text
    assert not (tmp_path / "site").exists()
    _no_temps(tmp_path)


def test_check_site_raises_one_line(tmp_path):
    (tmp_path / "index.html").write_text('<img src="missing.png">')
    with pytest.raises(MeireportError, match="not self-contained: 1 link") as e:
        check_site(tmp_path)
    assert "\n" not in str(e.value)


def test_cli_publish(run_dir, tmp_path, capsys):
    dst = tmp_path / "site"
    assert main(["publish", str(run_dir), "--to", str(dst)]) == EXIT_OK
    out = capsys.readouterr().out
    assert str(dst) in out
    assert (dst / "index.html").is_file()


def test_cli_publish_bad_input(run_dir, tmp_path, capsys):
    dst = tmp_path / "site"
    dst.mkdir()
    (dst / "keep.txt").write_text("mine")
    assert main(["publish", str(run_dir), "--to", str(dst)]) == EXIT_INPUT
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("meireport: error: publish --to: ")
    assert (dst / "keep.txt").read_text() == "mine"


def test_cli_publish_missing_site(tmp_path, capsys):
    run_dir = _fake_run(tmp_path / "run", files=None)
    assert main(["publish", str(run_dir), "--to", str(tmp_path / "s.zip")]) == EXIT_INPUT
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "meireport build" in err[0]


def test_cli_publish_busy_run_folder(run_dir, tmp_path, capsys):
    """Another holder of the lock (a flock of its own): exit status 4, nothing published."""
    import fcntl

    from meireport.report.run import LOCK_FILE

    fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.pwrite(fd, json.dumps({"pid": 12345}).encode(), 0)
        assert main(["publish", str(run_dir), "--to", str(tmp_path / "site")]) == EXIT_BUSY
    finally:
        os.close(fd)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "in use by another meireport process (pid 12345" in err[0]
    assert not (tmp_path / "site").exists()
    _no_temps(tmp_path)
    with run_folder_lock(run_dir):  # free again
        pass


@pytest.mark.slow
def test_a_real_book_is_self_contained(tmp_path):
    """A site Jupyter Book built (a run with no sessions: intro, methods) publishes as is."""
    from meireport.report.book import build_book

    run_dir = _fake_run(tmp_path / "run", files=None)
    site = build_book(run_dir).parent
    assert site_problems(site, run_dir) is None
    out = publish_site(run_dir, tmp_path / "site.zip")
    with zipfile.ZipFile(out) as z:
        assert {"index.html", "intro.html", "methods.html"} <= set(z.namelist())
