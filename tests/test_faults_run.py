"""Faults of a run and of its folder: refused before anything is written, exit statuses that
tell scripts what happened, one writer per run folder, a cache that heals, a killed run that
resumes.

One tiny report (``params/tiny.yaml`` without the data-limit chapter) is run once, as a user runs
it (``meireport report`` in a subprocess); each test that changes a run works on a copy of it.
An error is one line on stderr (``meireport: error: ...``), never a traceback, and every file
the command had no business touching is byte-identical afterwards.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import yaml

from meireport.artifacts import is_leftover_temp
from meireport.report.book import BOOK_MARK
from meireport.report.cli import EXIT_BUSY, EXIT_FAILED, EXIT_INPUT, EXIT_OK, main
from meireport.report.run import LOCK_FILE, MARK_FILE

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "params" / "tiny.yaml"
N_TASKS = 7  # extract, select, one neuron's train, mei, gabor, the summary, the run-level summary

pytestmark = pytest.mark.slow


def _cli(*args) -> list[str]:
    return [sys.executable, "-m", "meireport.report.cli", *map(str, args)]


def _env() -> dict[str, str]:
    return dict(os.environ, MPLBACKEND="Agg")


def _hashes(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder``."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _error_line(err: str) -> str:
    """The one error line of stderr (no traceback, nothing else)."""
    assert "Traceback" not in err, err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("meireport: error: "), err
    return lines[0].removeprefix("meireport: error: ")


def _sid_dir(run_dir: Path) -> Path:
    (sdir,) = [p for p in (run_dir / "results").iterdir() if (p / "session.json").is_file()]
    return sdir


def _summary(run_dir: Path) -> pd.DataFrame:
    df = pd.read_csv(_sid_dir(run_dir) / "summary.csv")
    return df.drop(columns=[c for c in df.columns if "seconds" in c])  # wall-clock differs


@dataclass
class Done:
    """The shared completed run: its folder, what its command printed, its exit status."""

    out: Path
    params: Path
    proc: subprocess.CompletedProcess

    def copy(self, tmp_path: Path, name: str = "run") -> Path:
        dst = tmp_path / name
        shutil.copytree(self.out, dst, symlinks=True)
        return dst

    @property
    def unit(self) -> int:
        return int(pd.read_csv(_sid_dir(self.out) / "summary.csv")["unit_id"].iloc[0])


@pytest.fixture(scope="module")
def params_file(tmp_path_factory) -> Path:
    d = yaml.safe_load(TINY.read_text())
    d["limits"] = {"enabled": False}
    f = tmp_path_factory.mktemp("params") / "tiny.yaml"
    f.write_text(yaml.safe_dump(d, sort_keys=False))
    return f


@pytest.fixture(scope="module")
def done(tmp_path_factory, params_file) -> Done:
    out = tmp_path_factory.mktemp("done") / "run"
    proc = subprocess.run(_cli("report", params_file, "--out", out, "--quiet"),
                          capture_output=True, text=True, env=_env(), timeout=600)
    assert proc.returncode == EXIT_OK, proc.stdout + proc.stderr
    return Done(out, params_file, proc)


@pytest.fixture()
def bad_source_params(tmp_path) -> Path:
    f = tmp_path / "bad_source.yaml"
    f.write_text(yaml.safe_dump({"name": "bad", "limits": {"enabled": False},
                                 "source": {"kind": "nwb", "path": str(tmp_path / "no.nwb")}}))
    return f


# -- a healthy run --------------------------------------------------------------------------
def test_healthy_report_prints_only_progress_and_the_result(done):
    assert done.proc.stderr == "", done.proc.stderr  # no kernel TCP warning, no interrupt noise
    lines = done.proc.stdout.splitlines()
    assert lines[0].startswith(f"run {done.out}: {N_TASKS} tasks executed, 0 cached, "
                               "0 failed or skipped")
    assert lines[-1].startswith("book built in ") and lines[-1].endswith("index.html")
    mark = json.loads((done.out / MARK_FILE).read_text())
    assert (mark["format"], mark["version"]) == ("meireport run folder", 1)
    assert json.loads((done.out / "book" / BOOK_MARK).read_text())["format"] == "meireport book"
    assert json.loads((done.out / LOCK_FILE).read_text())["pid"] > 0
    records = sorted((done.out / ".meireport" / "cache").glob("*.json"))
    assert len(records) == N_TASKS
    assert all(len(json.loads(f.read_text())["notebook"]) == 64 for f in records)


# -- the output location --------------------------------------------------------------------
@pytest.mark.parametrize("command", ["run", "report"])
def test_a_folder_that_is_not_a_run_is_refused_untouched(done, tmp_path, capsys, command):
    cache = shutil.copytree(done.out / "cache", tmp_path / "cache")  # a source cache bystander
    params = tmp_path / "p.yaml"
    params.write_text(yaml.safe_dump({"name": "x", "limits": {"enabled": False},
                                      "source": {"kind": "allen_cache", "path": str(cache)}}))
    mine = tmp_path / "mine"
    (mine / "book").mkdir(parents=True)
    (mine / "book" / "mine.md").write_text("my notes\n")
    (mine / "precious.txt").write_text("keep me\n")
    before, cache_before = _hashes(mine), _hashes(cache)
    assert main([command, str(params), "--out", str(mine)]) == EXIT_INPUT
    line = _error_line(capsys.readouterr().err)
    assert line == (f"--out: {mine} is not empty and is not a meireport run folder (no "
                    f"{MARK_FILE}); expected a new or empty folder, or a run folder made by "
                    "`meireport run`")
    assert _hashes(mine) == before and sorted(p.name for p in mine.iterdir()) == [
        "book", "precious.txt"]
    assert _hashes(cache) == cache_before


def test_out_root_is_refused_before_the_source_check(bad_source_params, capsys):
    if Path("/params.json").exists():
        pytest.skip("/params.json exists already")
    assert main(["run", str(bad_source_params), "--out", "/"]) == EXIT_INPUT
    assert _error_line(capsys.readouterr().err).startswith(
        "--out: / is not empty and is not a meireport run folder")
    assert not Path("/params.json").exists()


@pytest.mark.parametrize("exists", [False, True])
def test_a_bad_source_writes_nothing(bad_source_params, tmp_path, capsys, exists):
    out = tmp_path / "runs" / "r"
    if exists:
        out.mkdir(parents=True)
    assert main(["run", str(bad_source_params), "--out", str(out)]) == EXIT_INPUT
    assert _error_line(capsys.readouterr().err) == (
        f"source.path: {tmp_path / 'no.nwb'} does not exist")
    assert out.is_dir() == exists and (not exists or list(out.iterdir()) == [])


def test_out_is_a_file(params_file, tmp_path, capsys):
    f = tmp_path / "notes.txt"
    f.write_text("mine\n")
    assert main(["run", str(params_file), "--out", str(f)]) == EXIT_INPUT
    assert _error_line(capsys.readouterr().err) == f"--out: {f} is a file; expected a run folder"
    assert main(["run", str(params_file), "--out", str(f / "sub")]) == EXIT_INPUT
    assert _error_line(capsys.readouterr().err) == (
        f"--out: {f} is a file; cannot make the run folder {f / 'sub'} inside it")
    assert f.read_text() == "mine\n"


def test_a_broken_run_folder_mark_is_named(params_file, tmp_path, capsys):
    out = tmp_path / "r"
    (out / ".meireport").mkdir(parents=True)
    (out / MARK_FILE).write_text('{"format": "meireport run folder", "version": 99}')
    (out / "precious.txt").write_text("keep\n")
    before = _hashes(out)
    assert main(["report", str(params_file), "--out", str(out)]) == EXIT_INPUT
    line = _error_line(capsys.readouterr().err)
    assert line.startswith(f"--out: {out / MARK_FILE} has format version 99; this meireport "
                           "reads version 1")
    assert _hashes(out) == before


def _deny_writes(monkeypatch, *denied: Path) -> None:
    """Root writes whatever the mode: let access() say what it says for another user."""
    if os.geteuid() != 0:
        return
    real = os.access
    denied_set = {p.resolve() for p in denied}
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: (
        not (mode & os.W_OK and Path(p).resolve() in denied_set)) and real(p, mode, **kw))


def test_a_read_only_location_is_one_line(done, params_file, tmp_path, capsys, monkeypatch):
    ro = tmp_path / "ro"
    ro.mkdir()
    run_copy = done.copy(tmp_path)
    before = _hashes(run_copy)
    _deny_writes(monkeypatch, ro, run_copy)
    ro.chmod(0o555)
    run_copy.chmod(0o555)
    try:
        assert main(["run", str(params_file), "--out", str(ro / "new")]) == EXIT_INPUT
        assert _error_line(capsys.readouterr().err) == (
            f"--out: {ro} is not writable (permission denied); expected a folder this user can "
            f"write to hold {ro / 'new'}")
        assert main(["report", str(params_file), "--out", str(ro)]) == EXIT_INPUT
        assert _error_line(capsys.readouterr().err).startswith(f"--out: {ro} is not writable")
        assert main(["build", str(run_copy)]) == EXIT_INPUT
        assert _error_line(capsys.readouterr().err).startswith(
            f"run_dir: {run_copy} is not writable (permission denied)")
    finally:
        ro.chmod(0o755)
        run_copy.chmod(0o755)
    assert list(ro.iterdir()) == [] and _hashes(run_copy) == before


# -- build ----------------------------------------------------------------------------------
@pytest.mark.parametrize("case,expected", [
    ("missing", "{d} does not exist; expected a run folder made by `meireport run`"),
    ("file", "{d} is a file; expected a run folder made by `meireport run`"),
    ("empty", "{d} has no run.json; run `meireport run` first"),
    ("garbage", "{d}/run.json is not valid JSON (Expecting ',' delimiter: line 1 column 15 "
                "(char 14)); rerun `meireport run` to write it again"),
    ("list", "{d}/run.json is not a run record (expected an object, got list); rerun "
             "`meireport run` to write it again"),
    ("stage", "{d}/run.json is not a run record (results[0]: unknown stage 'x' or bad unit_id "
              "/ notebook); rerun `meireport run` to write it again"),
])
def test_build_of_a_bad_run_folder_is_one_line(tmp_path, capsys, case, expected):
    d = tmp_path / "r"
    if case == "file":
        d.write_text("not a folder\n")
    elif case != "missing":
        d.mkdir()
    text = {"garbage": '{"params": {} "results": []}', "list": "[]",
            "stage": json.dumps({"params": {}, "session_ids": [1], "results": [
                {"stage": "x", "session_id": 1, "unit_id": None, "status": "ok",
                 "notebook": None}]})}.get(case)
    if text is not None:
        (d / "run.json").write_text(text)
    before = _hashes(tmp_path)
    assert main(["build", str(d)]) == EXIT_INPUT
    assert _error_line(capsys.readouterr().err) == "run_dir: " + expected.format(d=d)
    assert _hashes(tmp_path) == before and not (tmp_path / "r" / ".meireport").exists()


def test_build_replaces_only_a_book_it_built(done, tmp_path, capsys):
    out = done.copy(tmp_path)
    assert main(["build", str(out)]) == EXIT_OK  # its own book: replaced
    capsys.readouterr()
    shutil.rmtree(out / "book")
    (out / "book").mkdir()
    (out / "book" / "mine.md").write_text("my own book\n")
    before = _hashes(out)
    assert main(["build", str(out)]) == EXIT_INPUT
    assert _error_line(capsys.readouterr().err) == (
        f"book: {out / 'book'} exists and was not built by meireport (no {BOOK_MARK}); expected "
        "no book/ there or one made by `meireport build`; move it away to build the site")
    assert _hashes(out) == before


def test_debug_shows_the_traceback(tmp_path, capsys):
    for argv in (["build", str(tmp_path / "none"), "--debug"],
                 ["--debug", "build", str(tmp_path / "none")]):
        assert main(argv) == EXIT_INPUT
        err = capsys.readouterr().err
        assert "Traceback" in err
        assert err.splitlines()[-1].startswith("meireport: error: run_dir: ")


# -- the cache ------------------------------------------------------------------------------
def _run(params: Path, out: Path, *extra: str) -> list[str]:
    return ["run", str(params), "--out", str(out), "--quiet", *extra]


def test_a_corrupt_cache_record_is_a_miss_said_in_one_line(done, tmp_path, capsys):
    out = done.copy(tmp_path)
    (record,) = (out / ".meireport" / "cache").glob("*__-__summary.json")
    record.write_text('{"key": "trunc')
    assert main(_run(done.params, out)) == EXIT_OK
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [
        f"meireport: note: cache record {record} is not valid JSON (Unterminated string "
        "starting at: line 1 column 9 (char 8)); re-executing "
        f"{_sid_dir(out).name}/-/summary"]
    assert f"1 tasks executed, {N_TASKS - 1} cached" in captured.out
    assert json.loads(record.read_text())["status"] == "ok"
    assert main(_run(done.params, out)) == EXIT_OK  # healed: it blocks nothing
    captured = capsys.readouterr()
    assert captured.err == "" and f"0 tasks executed, {N_TASKS} cached" in captured.out


def test_a_changed_notebook_is_reexecuted_and_build_names_it(done, tmp_path, capsys):
    out = done.copy(tmp_path)
    nb = _sid_dir(out) / "06_summary.ipynb"
    nb.write_bytes(b"\x00 not a notebook")
    assert main(["build", str(out)]) == EXIT_INPUT
    assert _error_line(capsys.readouterr().err) == (
        f"book: {nb} is not a readable notebook (NotJSONError); rerun `meireport run` to "
        "execute it again")
    assert main(_run(done.params, out)) == EXIT_OK
    assert f"1 tasks executed, {N_TASKS - 1} cached" in capsys.readouterr().out
    assert main(["build", str(out)]) == EXIT_OK


# -- exit statuses --------------------------------------------------------------------------
def test_failed_tasks_exit_3_and_the_last_line_says_where(done, tmp_path, capsys):
    out = done.copy(tmp_path)
    neurons = f"{done.unit},1"  # unit 1 does not exist: its train fails, mei and gabor skip
    assert main(["report", str(done.params), "--out", str(out), "--quiet",
                 "--neurons", neurons]) == EXIT_FAILED
    captured = capsys.readouterr()
    assert "book built in" in captured.out and "Traceback" not in captured.err
    (line,) = captured.err.splitlines()
    html = out / "book" / "_build" / "html"
    page = html / "sessions" / _sid_dir(out).name / "units" / "1" / "failed.html"
    notebook = _sid_dir(out) / "1" / "03_train.ipynb"
    assert line == (f"meireport: 3 of {N_TASKS + 3} tasks failed or were skipped; site built; "
                    f"their pages: {page}; notebooks: {notebook}")
    assert page.is_file() and notebook.is_file()
    assert main(["build", str(out)]) == EXIT_FAILED  # the site shows the same failures
    assert capsys.readouterr().err.splitlines() == [line]
    # --strict: stops at the first failure, builds no site
    book = _hashes(out / "book")
    assert main(["report", str(done.params), "--out", str(out), "--quiet", "--strict",
                 "--neurons", f"1,{done.unit}"]) == EXIT_FAILED
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [
        f"meireport: stopped at the first failed task (--strict): {_sid_dir(out).name}/1/train; "
        f"notebooks: {notebook}; no site built"]
    assert "book built" not in captured.out and _hashes(out / "book") == book
    ran = json.loads((out / "run.json").read_text())
    assert ran["strict_stopped"] and "summary" not in {r["stage"] for r in ran["results"]}


# -- one writer per run folder; a killed run ------------------------------------------------
_HOLD = ("import sys, time\nfrom meireport.report.run import run_folder_lock\n"
         "with run_folder_lock(sys.argv[1]):\n    print('locked', flush=True)\n"
         "    time.sleep(600)\n")


def test_a_second_writer_stops_at_once_and_a_killed_holder_never_blocks(done, tmp_path,
                                                                       capsys):
    out = done.copy(tmp_path)
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(out)], stdout=subprocess.PIPE,
                              text=True, env=_env())
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = _hashes(out)
        for argv in (["report", str(done.params), "--out", str(out)], ["build", str(out)]):
            t0 = time.perf_counter()
            assert main(argv) == EXIT_BUSY
            assert time.perf_counter() - t0 < 10  # at once, not after waiting
            what = "--out" if argv[0] == "report" else "run_dir"
            assert _error_line(capsys.readouterr().err) == (
                f"{what}: {out} is in use by another meireport process (pid {holder.pid}, lock "
                f"{out / LOCK_FILE}); wait for it to finish, or use another folder")
        assert _hashes(out) == before
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert main(_run(done.params, out)) == EXIT_OK  # the kernel released the dead one's lock
    assert f"0 tasks executed, {N_TASKS} cached" in capsys.readouterr().out


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (kernels run in sessions of their own)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


def _default_sigint() -> None:
    """In a child before it runs: SIGINT's default action (Python then raises KeyboardInterrupt)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _kernels(pid: int) -> list[int]:
    """The notebook kernels below ``pid``."""
    found = []
    for child in _descendants(pid):
        try:
            if b"ipykernel" in Path(f"/proc/{child}/cmdline").read_bytes():
                found.append(child)
        except OSError:
            continue
    return found


def test_sigkill_at_a_random_point_then_resume_gives_the_same_summary(done, tmp_path, capsys):
    rng = random.Random(20240517)
    k, delay = rng.randint(1, N_TASKS - 1), rng.uniform(0.0, 1.5)
    out = tmp_path / "killed"
    proc = subprocess.Popen(_cli(*_run(done.params, out)), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=_env(), start_new_session=True)
    records = out / ".meireport" / "cache"
    deadline = time.monotonic() + 300
    while proc.poll() is None and len(list(records.glob("*.json"))) < k:
        assert time.monotonic() < deadline, "the run made no progress"
        time.sleep(0.2)
    assert proc.poll() is None, "the run finished before it could be killed"
    assert main(_run(done.params, out)) == EXIT_BUSY  # a second writer meanwhile
    assert f"(pid {proc.pid}, lock" in _error_line(capsys.readouterr().err)
    time.sleep(delay)
    os.kill(proc.pid, signal.SIGSTOP)  # frozen: it starts no kernel while they are listed
    for pid in [proc.pid, *_descendants(proc.pid)]:  # the run and its kernels, as OOM would
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()
    # a write cut short leaves its temporary file (whether or not this kill hit one)
    stale = _sid_dir(out) / ".06_summary.ipynb.k9x2_a1b.tmp.ipynb"
    stale.write_text("half a notebook")
    assert main(_run(done.params, out)) == EXIT_OK
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("meireport: note: removed "), err
    assert [p for p in out.rglob("*") if is_leftover_temp(p)] == []
    pd.testing.assert_frame_equal(_summary(out), _summary(done.out), check_exact=False,
                                  rtol=1e-9)


def test_sigint_exits_130_and_the_run_resumes(done, tmp_path, capsys):
    out = done.copy(tmp_path)
    (out / ".meireport" / "cache" / f"{_sid_dir(out).name}__-__summary.json").unlink()
    # as from a terminal: Ctrl-C reaches the run even where pytest itself was started in the
    # background by a non-interactive shell, which ignores SIGINT for what it starts (POSIX)
    proc = subprocess.Popen(_cli(*_run(done.params, out)), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_env(),
                            start_new_session=True, preexec_fn=_default_sigint)
    deadline = time.monotonic() + 120
    while proc.poll() is None and not _kernels(proc.pid):  # the summary's kernel
        assert time.monotonic() < deadline
        time.sleep(0.1)
    time.sleep(1.0)  # starting or in a cell
    assert proc.poll() is None, "the run finished before it could be interrupted"
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: the run's process group
    _, err = proc.communicate(timeout=120)
    assert (proc.returncode, err) == (130, "meireport: interrupted\n")
    assert main(_run(done.params, out)) == EXIT_OK  # the lock went with it
    assert f"1 tasks executed, {N_TASKS - 1} cached" in capsys.readouterr().out
    pd.testing.assert_frame_equal(_summary(out), _summary(done.out), check_exact=False,
                                  rtol=1e-9)
