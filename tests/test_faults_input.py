"""Bad input fails before anything runs: exit 2, one line naming the field or the file, and
every bystander file (the source cache, a file beside the run folder) left byte-identical.

Each broken input is built from a copy of a small simulated cache (the copy is broken, never
the session fixture), and run through the command line as a user would:
``meireport run PARAMS --out RUN_DIR``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import h5py
import pytest
import yaml

from meireport.report.cli import main

SID_NWB = "session_{sid}/session_{sid}.nwb"


def _tree_hashes(folder: Path, skip: Path) -> dict[str, str]:
    """sha256 of every file under ``folder`` (the run folder ``skip`` left out)."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and skip not in p.parents
    }


class World:
    """A tmp folder: ``cache/`` (a copy of the small session), ``runs/precious.txt``, params."""

    def __init__(self, root: Path, session):
        self.root = root
        self.cache = root / "cache"
        shutil.copytree(session.cache_dir, self.cache)
        self.sid = session.session_id
        self.nwb = self.cache / SID_NWB.format(sid=self.sid)
        self.templates = self.cache / "natural_scene_templates"
        (root / "runs").mkdir()
        (root / "runs" / "precious.txt").write_text("a bystander: must survive every run\n")
        self.out = root / "runs" / "r"

    def params(self, source: dict | None = None, **sections) -> dict:
        src = source if source is not None else {"kind": "allen_cache", "path": str(self.cache)}
        return {"name": "faults", "source": src, "limits": {"enabled": False}, **sections}

    def fails(self, capsys, params: dict | str | bytes) -> str:
        """Run ``meireport run`` on ``params``; check the contract; return the error line."""
        f = self.root / "params.yaml"
        if isinstance(params, dict):
            params = yaml.safe_dump(params)
        f.write_bytes(params.encode() if isinstance(params, str) else params)
        capsys.readouterr()
        before = _tree_hashes(self.root, self.out)
        assert before["runs/precious.txt"]
        rc = main(["run", str(f), "--out", str(self.out)])
        captured = capsys.readouterr()
        assert rc == 2, captured
        assert "Traceback" not in captured.err
        lines = captured.err.splitlines()
        assert len(lines) == 1, captured.err
        assert lines[0].startswith("meireport: error: ")
        assert _tree_hashes(self.root, self.out) == before  # bystanders byte-identical
        executed = [p for p in self.out.rglob("*") if p.suffix == ".ipynb" or p.name == "results"]
        assert not executed, executed  # nothing ran
        return lines[0].removeprefix("meireport: error: ")


@pytest.fixture()
def world(tmp_path, small_session) -> World:
    return World(tmp_path, small_session)


# -- params fields --------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["..", ".", "a/b", "../up"])
def test_name_must_be_a_plain_folder_name(world, capsys, name):
    line = world.fails(capsys, world.params(name=name))
    assert line.startswith("name: expected a plain folder name (letters A-Z a-z, digits")
    assert line.endswith(f"got {name!r}")
    assert "[a-za-z" not in line  # the pattern is said readably, not lowercased


@pytest.mark.parametrize(("section", "text", "expected"), [
    ("mei", "{steps: true}", "mei.steps: expected an integer, got True"),
    ("mei", "{steps: 2.0}", "mei.steps: expected an integer, got 2.0"),
    ("mei", "{step_size: true}", "mei.step_size: expected a number, got True"),
    ("train", "{ensemble: true}", "train.ensemble: expected an integer, got True"),
    ("gabor", "{search: 1}", "gabor.search: expected true or false, got 1"),
])
def test_no_silent_type_coercion(world, capsys, section, text, expected):
    body = yaml.safe_dump(world.params())
    assert world.fails(capsys, f"{body}{section}: {text}\n") == expected


@pytest.mark.parametrize(("text", "expected"), [
    ("extract: {window: [0.0, .nan]}", "extract.window[1]: expected a finite number, got nan"),
    ("trust: {max_rf_p: .inf}", "trust.max_rf_p: expected a finite number, got inf"),
])
def test_numbers_must_be_finite(world, capsys, text, expected):
    body = yaml.safe_dump(world.params())
    assert world.fails(capsys, f"{body}{text}\n") == expected


def test_params_file_not_utf8(world, capsys):
    body = yaml.safe_dump(world.params()).encode() + b"title: caf\xe9\n"  # latin-1
    line = world.fails(capsys, body)
    f = world.root / "params.yaml"
    assert line.startswith(f"params: {f} is not UTF-8 text (byte 0xe9 on line ")


# -- paths ------------------------------------------------------------------------------------
def test_source_path_missing(world, capsys):
    missing = world.root / "no_such_cache"
    line = world.fails(capsys, world.params({"kind": "allen_cache", "path": str(missing)}))
    assert line.startswith(f"source.path: {missing} does not exist")


def test_source_path_relative_is_resolved_against_the_params_file(world, capsys):
    line = world.fails(capsys, world.params({"kind": "allen_cache", "path": "sub/../nowhere"}))
    assert line.startswith(f"source.path: {world.root / 'nowhere'} does not exist")


@pytest.mark.parametrize(("kind", "which", "expected"), [
    ("nwb", "cache", "is a folder; kind nwb expects an .nwb file"),
    ("allen_cache", "nwb", "is a file; kind allen_cache expects a cache folder"),
])
def test_source_path_wrong_kind(world, capsys, kind, which, expected):
    path = getattr(world, which)
    line = world.fails(capsys, world.params({"kind": kind, "path": str(path)}))
    assert line.startswith(f"source.path: {path} {expected}")


def test_source_path_unreadable(world, capsys, monkeypatch):
    world.nwb.chmod(0)
    if os.geteuid() == 0:  # root reads whatever the mode: let access() say what it would say
        real = os.access
        monkeypatch.setattr(os, "access", lambda p, mode, **kw: (
            Path(p) != world.nwb and real(p, mode, **kw)))
    try:
        line = world.fails(capsys, world.params({"kind": "nwb", "path": str(world.nwb)}))
    finally:
        world.nwb.chmod(0o644)
    assert line == f"source.path: {world.nwb} is not readable (permission denied)"


# -- the session's content --------------------------------------------------------------------
def test_unknown_area(world, capsys):
    line = world.fails(capsys, world.params(extract={"area": "VISxx"}))
    assert line == (f"extract.area: 'VISxx' has no units in session {world.sid}; "
                    "available: CA1, VISam, VISp")


def test_nwb_without_natural_scenes(world, capsys):
    with h5py.File(world.nwb, "a") as f:
        del f["intervals/natural_scenes_presentations"]
    line = world.fails(capsys, world.params())
    assert line.startswith(f"source.path: session {world.sid} ({world.nwb}) has no "
                           "'natural_scenes' stimulus; the report needs natural_scenes and gabors")


@pytest.mark.parametrize("kind", ["allen_cache", "nwb"])
def test_truncated_nwb(world, capsys, kind):
    os.truncate(world.nwb, world.nwb.stat().st_size // 2)
    path = world.cache if kind == "allen_cache" else world.nwb
    line = world.fails(capsys, world.params({"kind": kind, "path": str(path)}))
    assert line.startswith(f"source.path: {world.nwb} cannot be opened as an NWB (HDF5) file "
                           "(truncated file")


def test_templates_folder_missing(world, capsys):
    shutil.rmtree(world.templates)
    line = world.fails(capsys, world.params())
    assert line.startswith(f"natural_scene_templates: no natural_scene_templates folder beside "
                           f"{world.nwb}")


def test_one_template_missing(world, capsys):
    f = world.templates / "natural_scene_3.tiff"
    f.unlink()
    line = world.fails(capsys, world.params())
    assert line.startswith(f"natural_scene_templates: {f} does not exist; session {world.sid} "
                           "shows natural scene 3")


@pytest.mark.parametrize(("damage", "expected"), [
    ("png", "is not a readable TIFF image (not a TIFF file"),
    ("cut", "is cut short or damaged"),
    ("empty", "is not a readable TIFF image"),
])
def test_template_not_a_tiff(world, capsys, damage, expected):
    f = world.templates / "natural_scene_5.tiff"
    if damage == "png":
        f.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))
    elif damage == "cut":
        os.truncate(f, f.stat().st_size // 3)
    else:
        f.write_bytes(b"")
    line = world.fails(capsys, world.params())
    assert line.startswith(f"natural_scene_templates: {f} {expected}")
