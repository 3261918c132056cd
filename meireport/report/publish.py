"""Publish a run's built site: a self-contained copy (a folder or a zip) for any static host.

``meireport publish RUN_DIR --to DIR|ZIP`` copies ``RUN_DIR/book/_build/html`` (built by
:func:`meireport.report.book.build_book`) while holding the run folder's lock, checks that the
copy is self-contained (:func:`check_site`: every link relative and inside the copy, nothing
loaded from the internet), then moves it into place. It never overwrites or deletes anything of
the user's: the target must be a new path (a folder may also be an existing empty one), the copy
is built in a hidden temporary sibling of the target and renamed into place only when complete,
and a failure leaves nothing behind.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import zipfile
from html.parser import HTMLParser
from pathlib import Path
from typing import NamedTuple
from urllib.parse import unquote, urlsplit

from meireport.errors import MeireportError
from meireport.report.book import book_index
from meireport.report.run import load_run, run_folder_lock

__all__ = ["publish_site", "site_links", "check_site", "site_problems", "Link"]

_WHAT = "publish --to"
#: Schemes that load nothing from elsewhere (a page may use them in any attribute).
_INLINE_SCHEMES = {"data", "javascript", "about", "blob"}
#: Tags whose ``href`` is a link the reader follows, not a resource the page loads.
_ANCHORS = {"a", "area"}
_SHOWN = 5  # missing targets named in one line


class Link(NamedTuple):
    """One ``href`` or ``src`` attribute of a page of a site."""

    #: The page (absolute path).
    file: Path
    #: ``"<tag> <attribute>"``, e.g. ``"img src"``, ``"link href"``, ``"a href"``; the URL of
    #: a ``<meta http-equiv="refresh">`` redirect (the site's ``index.html``): ``"meta refresh"``.
    attr: str
    #: The attribute's value, as written.
    value: str

    @property
    def tag(self) -> str:
        """The element's tag (``img``, ``a``...)."""
        return self.attr.split(" ", 1)[0]


class _LinkParser(HTMLParser):
    """Collect the ``href`` and ``src`` attributes of every start tag."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.found: list[tuple[str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("href", "src") and value is not None:
                self.found.append((f"{tag} {name}", value))
        values = {k: v or "" for k, v in attrs}
        if tag == "meta" and values.get("http-equiv", "").lower() == "refresh":
            # the site's index.html: <meta http-equiv="Refresh" content="0; url=intro.html" />
            _, _, url = values.get("content", "").partition("=")
            if url.strip().strip("'\""):
                self.found.append(("meta refresh", url.strip().strip("'\"")))


#: Sphinx's asset folder: its ``.html`` files are the theme's Jinja macros, never pages.
_ASSETS = "_static"


def _pages(site_dir: Path) -> list[Path]:
    """The site's pages: its ``.html`` files, those of :data:`_ASSETS` left out."""
    return sorted(p for p in site_dir.rglob("*") if p.suffix.lower() in (".html", ".htm")
                  and p.relative_to(site_dir).parts[0] != _ASSETS and p.is_file())


def site_links(site_dir) -> list[Link]:
    """Every ``href`` and ``src`` attribute (and redirect) of every page under ``site_dir``.

    The ``.html`` files of ``_static/`` are left out: Sphinx themes put their Jinja macros
    there (``webpack-macros.html``), templates that are never served as pages.

    Parameters
    ----------
    site_dir : path
        A built site (``RUN_DIR/book/_build/html``) or a published copy of one.

    Returns
    -------
    list of Link
        ``(file, attr, value)`` per attribute, pages in path order, attributes in page order.

    Examples
    --------
    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> _ = (d / "index.html").write_text('<a href="b.html#x">b</a><img src="i.png"/>')
    >>> [(link.file.name, link.attr, link.value) for link in site_links(d)]
    [('index.html', 'a href', 'b.html#x'), ('index.html', 'img src', 'i.png')]
    """
    site_dir = Path(site_dir)
    links = []
    for page in _pages(site_dir):
        parser = _LinkParser()
        parser.feed(page.read_text(encoding="utf-8", errors="replace"))
        parser.close()
        links += [Link(page, attr, value) for attr, value in parser.found]
    return links


def _outside(link: Link, run_dir: Path | None) -> tuple[str | None, bool]:
    """Why the link is refused (absolute, remote) or None; and whether it names a site file."""
    value = link.value.strip()
    if run_dir is not None and str(run_dir) in value:
        return "points into the run folder", False
    parts = urlsplit(value)
    scheme = parts.scheme.lower()
    if scheme == "file" or len(scheme) == 1:  # file:// or a Windows drive letter
        return "is an absolute local path", False
    if link.tag in _ANCHORS and link.attr.endswith(" href") and (scheme or parts.netloc):
        return None, False  # a link to an external page (https:, //host, mailto:) loads nothing
    if scheme in _INLINE_SCHEMES:
        return None, False
    if scheme or parts.netloc:
        return "loads from the internet", False
    if parts.path.startswith(("/", "\\")):
        return "is an absolute local path", False
    return None, True


def _target(link: Link) -> Path | None:
    """The file a relative link points at (fragment and query stripped), or None for none."""
    path = unquote(urlsplit(link.value.strip()).path)
    if not path:
        return None  # "#anchor", "?query": this page
    return Path(os.path.normpath(link.file.parent / path))


def site_problems(site_dir, run_dir=None) -> str | None:
    """What keeps a built site from being self-contained, in one line; None when it is.

    A link is refused when it is an absolute local path (``/...``, ``file:``), points into the
    run folder, or makes the page load something from the internet (``src`` of a script, image
    or frame, ``<link href>``; a plain ``<a href="https://...">`` to an external page is fine);
    a relative link (its ``#fragment`` and ``?query`` stripped) must name a file or folder
    inside ``site_dir``. Files are named relative to ``site_dir``.

    Parameters
    ----------
    site_dir : path
        The site.
    run_dir : path, optional
        The run folder it was built in (links into it are refused).

    Examples
    --------
    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> _ = (d / "index.html").write_text('<img src="/abs/path.png"><a href="#top">top</a>')
    >>> print(site_problems(d))
    index.html: img src="/abs/path.png" is an absolute local path
    """
    site_dir = Path(site_dir).resolve()
    run_dir = Path(run_dir).resolve() if run_dir is not None else None
    links = site_links(site_dir)
    missing = []
    for link in links:
        rel = link.file.relative_to(site_dir)
        why, local = _outside(link, run_dir)
        target = _target(link) if local else None
        if target is not None and not target.is_relative_to(site_dir):
            why = "leaves the site"
        elif target is not None and not target.exists():
            missing.append(f'{rel}: {link.attr}="{link.value}"')
        if why:
            return f'{rel}: {link.attr}="{link.value}" {why}'
    if missing:
        more = f" (+{len(missing) - _SHOWN} more)" if len(missing) > _SHOWN else ""
        return f"{len(missing)} link(s) to missing files: {'; '.join(missing[:_SHOWN])}{more}"
    return None


def check_site(site_dir, run_dir=None) -> None:
    """Raise unless the site at ``site_dir`` is self-contained (see :func:`site_problems`).

    Raises
    ------
    MeireportError
        One line naming the site, the page and the first bad link (or up to 5 missing
        targets).

    Examples
    --------
    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> _ = (d / "index.html").write_text('<a href="https://example.org">out</a>')
    >>> check_site(d)  # an anchor to an external page is fine
    """
    problem = site_problems(site_dir, run_dir)
    if problem:
        raise MeireportError(f"site {Path(site_dir).resolve()} is not self-contained: "
                             f"{problem}; expected relative links to files inside the site")


def _target_path(to) -> tuple[Path, bool]:
    """The absolute target and whether it is a zip, after checking it may be written."""
    to = Path(os.path.abspath(Path(to).expanduser()))
    is_zip = to.suffix.lower() == ".zip"
    if is_zip:
        expected = "expected a new .zip path"
    else:
        expected = "expected a new or empty folder, or a new .zip path"
    if os.path.lexists(to):
        link, folder = to.is_symlink(), to.is_dir()
        empty_dir = folder and not link and not any(to.iterdir())
        if is_zip or not empty_dir:
            kind = ("a symbolic link" if link else "an empty folder" if empty_dir
                    else "a non-empty folder" if folder else "a file")
            raise MeireportError(f"{_WHAT}: {to} exists ({kind}); {expected} "
                                 "(nothing was overwritten)")
    parent = to.parent
    if not parent.is_dir():
        raise MeireportError(f"{_WHAT}: the parent folder {parent} does not exist; expected "
                             f"an existing folder to hold {to.name}")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise MeireportError(f"{_WHAT}: {parent} is not writable (permission denied); expected "
                             f"a folder this user can write to hold {to.name}")
    return to, is_zip


def _zip(site: Path, out: Path) -> None:
    """Write the site's files into ``out``, ``index.html`` at the zip's root."""
    with zipfile.ZipFile(out, "x", compression=zipfile.ZIP_DEFLATED,
                         strict_timestamps=False) as z:  # theme files may date from 1970
        for f in sorted(site.rglob("*")):
            if f.is_file():
                z.write(f, f.relative_to(site).as_posix())


def _place_file(tmp: Path, to: Path) -> None:
    """Move ``tmp`` to ``to`` unless ``to`` appeared meanwhile (never replaces a file)."""
    try:
        os.link(tmp, to)  # fails if ``to`` exists: no window in which a file is replaced
    except FileExistsError:
        raise MeireportError(f"{_WHAT}: {to} was created while publishing; expected a new "
                             ".zip path (nothing was overwritten)") from None
    except OSError:  # no hard links on this file system
        if os.path.lexists(to):
            raise MeireportError(f"{_WHAT}: {to} was created while publishing; expected a new "
                                 ".zip path (nothing was overwritten)") from None
        os.replace(tmp, to)


def _place_dir(tmp: Path, to: Path) -> None:
    """Rename ``tmp`` to ``to`` (a missing or empty folder: rename never replaces content)."""
    try:
        os.replace(tmp, to)
    except OSError:
        raise MeireportError(f"{_WHAT}: {to} was created or filled while publishing; expected "
                             "a new or empty folder (nothing was overwritten)") from None


def publish_site(run_dir, to) -> Path:
    """Copy a run's built site to ``to``: a folder, or a zip when ``to`` ends with ``.zip``.

    The copy is self-contained (:func:`check_site`): serve it from any static host, or open
    its ``index.html`` from disk. A zip holds the site's files at its root (``index.html``,
    ``_static/``...): unzip it into the folder to serve.

    Parameters
    ----------
    run_dir : path
        A run folder whose site was built (``meireport build RUN_DIR``).
    to : path
        A new folder (or an existing empty one), or a new ``.zip`` path; its parent folder
        must exist.

    Returns
    -------
    Path
        The published folder or zip (absolute).

    Raises
    ------
    MeireportError
        One line, nothing written: the run folder is not a finished run or has no built site,
        ``to`` exists (a file, or a non-empty folder) or its parent does not, or the site is
        not self-contained (the page and the link are named).
    RunFolderBusy
        Another process is writing into the run folder.

    Examples
    --------
    ``publish_site("runs/default", "site")`` writes ``site/index.html`` and the rest;
    ``publish_site("runs/default", "site.zip")`` writes ``site.zip`` with ``index.html`` at its
    root.
    """
    run_dir = Path(run_dir).expanduser().resolve()
    load_run(run_dir)  # a finished run, or one line saying what it is not
    to, is_zip = _target_path(to)
    index = book_index(run_dir)
    site = index.parent
    if (to.parent.resolve() / to.name).is_relative_to(run_dir / "book"):
        raise MeireportError(f"{_WHAT}: {to} is inside the run's book/ folder, which "
                             "`meireport build` replaces; expected a path outside it")
    holder = Path(tempfile.mkdtemp(prefix=f".{to.name}.publish-", dir=to.parent))
    try:
        copy = holder / "site"
        with run_folder_lock(run_dir, "run_dir"):  # no build swaps the site while it is copied
            if not index.is_file():
                raise MeireportError(f"run_dir: {run_dir} has no built site ({index} is "
                                     f"missing); run `meireport build {run_dir}` first")
            try:
                shutil.copytree(site, copy)
            except (OSError, shutil.Error) as e:
                text = (str(e).strip().splitlines() or [""])[0][:300]
                raise MeireportError(f"{_WHAT}: cannot copy the site {site} ({text}); nothing "
                                     "was published") from None
        problem = site_problems(copy, run_dir)
        if problem:
            raise MeireportError(f"publish: the site {site} is not self-contained: {problem}; "
                                 "expected relative links to files inside the site (nothing "
                                 "was published; fix the page and rerun `meireport build`)")
        if is_zip:
            out = holder / "site.zip"
            _zip(copy, out)
            _place_file(out, to)
        else:
            _place_dir(copy, to)
    finally:
        shutil.rmtree(holder, ignore_errors=True)
    return to
