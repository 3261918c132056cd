"""The layout's rules that import-linter does not check: no module uses another's private names.

A name with a leading underscore is private to its module. Shared helpers live in a private
module of the subpackage that owns them (``select/_checks.py``), under public names.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "meireport"


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def private_uses(source: str) -> list[str]:
    """``from meireport.x import _name`` and ``module._name`` on an imported meireport module.

    Examples
    --------
    >>> private_uses("from meireport.select.rule import _fmt")
    ['from meireport.select.rule import _fmt']
    >>> private_uses("from meireport.report import stages\\nstages._session(1)")
    ['stages._session']
    >>> private_uses("from meireport.select._checks import as_trials")
    []
    """
    tree = ast.parse(source)
    found, modules = [], set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("meireport"):
            for a in node.names:
                if _private(a.name):
                    found.append(f"from {node.module} import {a.name}")
                else:
                    modules.add(a.asname or a.name)
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("meireport"):
                    modules.add(a.asname or a.name.split(".")[0])
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and _private(node.attr)
                and isinstance(node.value, ast.Name) and node.value.id in modules):
            found.append(f"{node.value.id}.{node.attr}")
    return found


def _sources():
    for f in sorted(PACKAGE.rglob("*.py")):
        yield f, f.read_text()
    for f in sorted(PACKAGE.rglob("*.ipynb")):
        cells = json.loads(f.read_text())["cells"]
        code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
        yield f, "\n".join(ln for ln in code.splitlines() if not ln.lstrip().startswith(("%", "!")))


def test_checker_finds_private_uses():
    # the control: the check can fail
    assert private_uses("from meireport.models.ln import _pair") != []
    assert private_uses("import meireport.report.run as r\nr._waves([])") == ["r._waves"]


@pytest.mark.parametrize("path,source", list(_sources()), ids=lambda v: str(v)[-40:])
def test_no_module_uses_another_modules_private_names(path, source):
    assert private_uses(source) == [], f"{path.relative_to(ROOT)} uses private names"


def test_every_stage_notebook_ships_inside_the_package():
    from meireport.report.run import NOTEBOOK_DIR, STAGES, available_stages

    assert NOTEBOOK_DIR.is_relative_to(PACKAGE)
    assert available_stages() == STAGES
    assert all((NOTEBOOK_DIR / s.notebook).is_file() for s in STAGES)


def test_a_missing_notebook_is_an_error_naming_it(monkeypatch, tmp_path):
    from meireport.errors import MeireportError
    from meireport.report import run

    monkeypatch.setattr(run, "NOTEBOOK_DIR", tmp_path)
    with pytest.raises(MeireportError, match="01_extract.ipynb"):
        run.available_stages()
