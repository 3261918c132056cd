"""The wheel, built and installed (no ``-e``) in a fresh venv, runs the tiny report elsewhere.

Slow (a full install of the dependencies, then the tiny report): run by ``nox -s wheel``,
deselected in ``nox -s tests`` (marker ``wheel``). Only the standard library and pytest are used
here: ``nox -s wheel`` runs this file with ``--noconftest`` in an env that has no meireport, so
nothing from the repository can leak into what is checked.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CONSTRAINTS = ROOT / "constraints.txt"
TINY = ROOT / "params" / "tiny.yaml"
N_STAGES = 8  # 01_extract ... 07_limits, 08_across
PAGES = ("methods.md", "meireport.css")
# never copied into the build folder: VCS, caches, build outputs, run folders, data caches
_SKIP = {".git", ".nox", "__pycache__", "build", "dist", "runs", "_build", "allen_cache",
         ".venv", ".pytest_cache", ".ruff_cache", ".hypothesis", ".import_linter_cache"}

pytestmark = [pytest.mark.wheel, pytest.mark.slow]

TIMINGS: dict[str, float] = {}


def _inside(path: Path, folder: Path) -> bool:
    return Path(path).resolve().is_relative_to(Path(folder).resolve())


def _run(cmd, what: str, timeout: float, log: Path, **kw) -> subprocess.CompletedProcess:
    """Run ``cmd``, output into ``log``; print the time taken; fail with the log's tail."""
    cmd = [str(c) for c in cmd]
    print(f"\n[wheel] {what}: {' '.join(cmd)}", flush=True)
    t0 = time.perf_counter()
    with open(log, "w") as f:
        try:
            proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, text=True,
                                  timeout=timeout, **kw)
        except subprocess.TimeoutExpired:
            proc = None
    TIMINGS[what] = seconds = time.perf_counter() - t0
    tail = "\n".join(log.read_text(errors="replace").splitlines()[-60:])
    if proc is None:
        pytest.fail(f"{what}: no result after {timeout:.0f} s (log {log}):\n{tail}")
    print(f"[wheel] {what}: exit {proc.returncode} in {seconds:.1f} s (log {log})", flush=True)
    if proc.returncode != 0:
        pytest.fail(f"{what} failed with exit status {proc.returncode} (log {log}):\n{tail}")
    return proc


def _env(venv_dir: Path) -> dict[str, str]:
    """The environment of a user who activated the venv: nothing of the repo or of nox's env."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV",
                        "CONDA_PREFIX", "PIP_REQUIRE_VIRTUALENV")}
    path = [p for p in env.get("PATH", "").split(os.pathsep)
            if p and not (Path(p).is_absolute() and _inside(Path(p), ROOT))]
    env["PATH"] = os.pathsep.join([str(venv_dir / "bin"), *path])
    env["VIRTUAL_ENV"] = str(venv_dir)
    env["PYTHONNOUSERSITE"] = "1"
    env["MPLBACKEND"] = "Agg"
    # the study's shared cache beside the venv (never the user's ~/.cache)
    env["MEIREPORT_CACHE"] = str(venv_dir.parent / "meireport-cache")
    return env


def _copy_source(dst: Path) -> Path:
    """Copy the working tree (no VCS, caches or stale build/egg-info) to build from."""

    def ignore(_folder, names):
        return [n for n in names
                if n in _SKIP or n.endswith((".egg-info", ".pyc")) or n == ".ipynb_checkpoints"]

    shutil.copytree(ROOT, dst, ignore=ignore)
    return dst


@pytest.fixture(scope="module")
def outside(tmp_path_factory) -> Path:
    """A work folder outside the repository (venv, logs, run folder)."""
    base = tmp_path_factory.mktemp("wheel")
    assert not _inside(base, ROOT), f"pytest's temporary folder {base} lies inside the repo"
    return base


@pytest.fixture(scope="module")
def wheel(outside) -> tuple[Path, Path]:
    """(the built wheel, the source copy it was built from)."""
    src = _copy_source(outside / "src")
    out = outside / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-cache-dir", "-w", out, src],
         "build wheel", 900, outside / "build.log", cwd=outside)
    (whl,) = out.glob("meireport-*.whl")
    print(f"[wheel] built {whl.name} ({whl.stat().st_size / 1e6:.2f} MB)", flush=True)
    return whl, src


@pytest.fixture(scope="module")
def venv(outside, wheel) -> Path:
    """A fresh venv with the wheel installed (no -e), dependencies under the constraints."""
    whl, _ = wheel
    vdir = outside / "venv"
    _run([sys.executable, "-m", "venv", vdir], "create venv", 300, outside / "venv.log",
         cwd=outside)
    _run([vdir / "bin" / "python", "-m", "pip", "install", "--progress-bar", "off",
          "-c", CONSTRAINTS, whl], "install wheel", 2400, outside / "install.log",
         cwd=outside, env=_env(vdir))
    return vdir


def _site_packages(venv_dir: Path) -> Path:
    out = subprocess.run(
        [str(venv_dir / "bin" / "python"), "-c",
         "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True, env=_env(venv_dir), cwd=venv_dir)
    return Path(out.stdout.strip()).resolve()


def test_wheel_ships_notebooks_pages_and_every_module(wheel):
    whl, src = wheel
    with zipfile.ZipFile(whl) as zf:
        names = set(zf.namelist())
        entry_points = next((zf.read(n).decode() for n in names
                             if n.endswith(".dist-info/entry_points.txt")), "")
    notebooks = {n for n in names if re.fullmatch(r"meireport/report/notebooks/0\d_\w+\.ipynb", n)}
    in_source = {f"meireport/report/notebooks/{p.name}"
                 for p in (src / "meireport" / "report" / "notebooks").glob("0*.ipynb")}
    assert len(in_source) == N_STAGES, sorted(in_source)
    assert notebooks == in_source, sorted(in_source - notebooks)
    for page in PAGES:
        assert f"meireport/report/pages/{page}" in names, page
    modules = {p.relative_to(src).as_posix() for p in (src / "meireport").rglob("*.py")}
    assert modules <= names, sorted(modules - names)
    # nothing but the package and its metadata (no tests/, bench/, params/ at the top level)
    assert {n.split("/", 1)[0] for n in names if not n.startswith("meireport/")} == {
        n.split("/", 1)[0] for n in names if ".dist-info/" in n}, sorted(names)
    assert re.search(r"^meireport\s*=\s*meireport\.report\.cli:main$", entry_points, re.M), (
        entry_points)


def test_installed_package_is_the_wheel_not_the_repo(venv, outside):
    site = _site_packages(venv)
    assert _inside(site, venv)
    proc = subprocess.run(
        [str(venv / "bin" / "python"), "-c",
         "import meireport, pathlib; print(meireport.__file__)\n"
         "import importlib.metadata as m; print(m.version('torch'))"],
        capture_output=True, text=True, env=_env(venv), cwd=outside, timeout=300)
    assert proc.returncode == 0, proc.stderr
    where, torch_version = proc.stdout.split()
    print(f"[wheel] meireport imported from {where}; torch {torch_version}", flush=True)
    assert _inside(Path(where), site) and not _inside(Path(where), ROOT), where
    assert torch_version.startswith("2.13.0"), f"constraints.txt ignored: torch {torch_version}"
    # no editable hook or path file pointing back into the repository
    assert not list(site.glob("__editable__*")), sorted(site.glob("__editable__*"))
    for pth in site.glob("*.pth"):
        assert str(ROOT) not in pth.read_text(errors="replace"), pth
    assert (venv / "bin" / "meireport").is_file()


def test_tiny_report_from_outside_the_repo(venv, wheel, outside):
    _, src = wheel
    site = _site_packages(venv)
    work = outside / "work"
    work.mkdir()
    shutil.copy(TINY, work / "tiny.yaml")
    run_dir = outside / "run"
    _run([venv / "bin" / "meireport", "report", "tiny.yaml", "--out", run_dir],
         "tiny report", 3600, outside / "report.log", cwd=work, env=_env(venv))
    print("\n".join(f"[wheel]   {line}" for line in
                    (outside / "report.log").read_text().splitlines()[-8:]), flush=True)

    stages = {p.stem.split("_", 1)[1]
              for p in (src / "meireport" / "report" / "notebooks").glob("0*.ipynb")}
    results = json.loads((run_dir / "run.json").read_text())["results"]
    assert {r["stage"] for r in results} == stages, sorted({r["stage"] for r in results})
    bad = [(r["task_id"], r["status"], r.get("error")) for r in results if r["status"] != "ok"]
    assert not bad, bad
    html = {p.stem for p in (run_dir / "book" / "_build" / "html").rglob("*.html")}
    pieces = [r for r in results if r["notebook"] is None]  # the study's call tasks
    assert pieces and all(r["task_id"].startswith("limits/") for r in pieces), pieces
    for r in results:  # every notebook executed from the installed template, no error output
        if r["notebook"] is None:
            continue
        nb_path = Path(r["notebook"])
        assert nb_path.is_file() and _inside(nb_path, run_dir), r
        text = nb_path.read_text()
        nb = json.loads(text)
        errors = [o for c in nb["cells"] for o in c.get("outputs", [])
                  if o.get("output_type") == "error"]
        assert not errors, (r["task_id"], errors[0].get("ename"), errors[0].get("evalue"))
        template = Path(nb["metadata"]["papermill"]["input_path"])
        assert _inside(template, site), (r["task_id"], str(template))
        assert str(ROOT) not in text, f"{nb_path} mentions the repository {ROOT}"
        assert nb_path.stem in html, f"no page for {nb_path.name}"
    assert (run_dir / "book" / "_build" / "html" / "index.html").is_file()
    print(f"[wheel] timings: {json.dumps({k: round(v, 1) for k, v in TIMINGS.items()})}",
          flush=True)
