"""Sphinx extension: serve MathJax from the built site itself (no request to a CDN).

The MathJax 3 files come from the ``sphinx-mathjax-offline`` distribution on PyPI (whose own
module cannot be imported: its folder name has hyphens), located through its installed-file list.
"""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

__all__ = ["mathjax_dir", "setup"]

_DIST = "sphinx-mathjax-offline"


def mathjax_dir() -> Path:
    """Folder holding ``tex-chtml.js`` and the rest of MathJax 3."""
    try:
        files = metadata.files(_DIST) or []
    except metadata.PackageNotFoundError:
        files = []
    for f in files:
        if f.name == "tex-chtml.js":
            return Path(f.locate()).parent
    raise RuntimeError(f"MathJax assets not found: install '{_DIST}' (pip install meireport)")


def _copy(app, exc) -> None:
    from sphinx.util.fileutil import copy_asset

    if exc is None and app.builder.format == "html":
        copy_asset(str(mathjax_dir()), str(Path(app.outdir) / "_static" / "mathjax"))


def setup(app) -> dict:
    """Point Sphinx's MathJax at the local copy and copy it into ``_static`` after the build."""
    mathjax_dir()  # fail early, with a clear message
    app.config.mathjax_path = "mathjax/tex-chtml.js"
    app.connect("build-finished", _copy)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
