"""The run engine: the task graph's order, its failure handling, local pool and Dask alike.

Notebook executions are replaced by a stand-in that sleeps and writes the task's declared
outputs, so that the order the graph gives is measured without the cost of real notebooks (the
real notebooks run in tests/test_report.py).
"""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from meireport.report import run as run_mod
from meireport.report.engine import CallTask, GraphError, run_graph
from meireport.report.params import load_params
from meireport.report.run import TaskResult

ROOT = Path(__file__).resolve().parent.parent
UNITS = [11, 12, 13]
#: Seconds each stand-in stage takes; unit 13 trains slowly.
COST = {"extract": 0.2, "select": 0.2, "train": 0.6, "mei": 0.3, "gabor": 0.3, "summary": 0.1,
        "limits": 0.1, "across": 0.1}


def _fake_execute(task, kernel=None):
    """Stand-in for a notebook execution: sleep, write every declared output."""
    t0 = time.perf_counter()
    slow = 3.0 if task.stage == "train" and task.unit_id == UNITS[-1] else 1.0
    time.sleep(COST[task.stage] * slow)
    for name, path in task.outputs.items():
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        if name == "selection.csv":
            Path(path).write_text("unit_id,oracle_corr,selected\n"
                                  + "".join(f"{u},0.5,True\n" for u in UNITS))
        else:
            Path(path).write_text(f"{task.task_id} {name}\n")
    Path(task.output).write_text("{}")
    return TaskResult(task.task_id, task.stage, task.session_id, task.unit_id, "ok",
                      time.perf_counter() - t0, None, task.output)


def slow_piece(seconds: float) -> None:
    """A study piece that takes ``seconds`` (called by the engine as a CallTask)."""
    time.sleep(seconds)


def failing_piece() -> None:
    """A study piece that fails."""
    raise ValueError("piece broke")


@pytest.fixture
def fake_run(monkeypatch, tmp_path):
    """Run the tiny params' graph with stand-in notebooks and study pieces."""
    p = load_params(ROOT / "params" / "tiny.yaml")
    monkeypatch.setattr(run_mod, "execute_task", _fake_execute)
    monkeypatch.setattr(run_mod, "available_stages", lambda: run_mod.STAGES)

    def pieces(*a, **k):
        return [CallTask(f"limits/piece/{i}", f"{__name__}:slow_piece", {"seconds": 0.8})
                for i in range(2)]

    from meireport.report import limits

    monkeypatch.setattr(limits, "plan_tasks", pieces, raising=False)

    def go(workers=2, strict=False, **kw):
        params = p.model_copy(update={"run": p.run.model_copy(update={"workers": workers})})
        folder = run_mod.RunFolder(tmp_path / f"run{workers}{strict}", [700000001])
        folder.path.mkdir(exist_ok=True)
        return run_mod.execute_run(folder, params, neurons=UNITS, progress=False,
                                   strict=strict, **kw)

    return go


def _by_id(res):
    return {r.task_id: r for r in res.results}


def test_graph_starts_each_task_when_its_inputs_are_done(fake_run):
    res = fake_run(workers=2)
    r = _by_id(res)
    sid = 700000001
    assert all(x.status == "ok" for x in res.results), [(x.task_id, x.error) for x in res.failed]
    # session, neurons, summary, study (2 pieces + chapter), the run-level summary
    assert len(res.results) == 2 + 3 * len(UNITS) + 1 + 2 + 1 + 1
    for u in UNITS:  # each neuron's own chain in order
        t, m, g = (r[f"{sid}/{u}/{s}"] for s in ("train", "mei", "gabor"))
        assert r[f"{sid}/-/select"].ended <= t.started and t.ended <= m.started <= g.started
    # no barrier between stages: a neuron's MEI starts before another neuron's training ends
    slow_train = r[f"{sid}/{UNITS[-1]}/train"]
    assert any(r[f"{sid}/{u}/mei"].started < slow_train.ended for u in UNITS[:-1])
    # the study's pieces run beside the session and neuron tasks, the chapter after them
    pieces = [r[f"limits/piece/{i}"] for i in range(2)]
    assert min(x.started for x in pieces) < r[f"{sid}/-/select"].ended + 1.0
    assert r["-1/-/limits"].started >= max(x.ended for x in pieces)
    # the summary waits for every task of its session
    summary = r[f"{sid}/-/summary"]
    assert summary.started >= max(x.ended for x in res.results if x.session_id == sid
                                  and x.stage != "summary")
    # the run-level summary across sessions waits for every session's summary
    assert r["-1/-/across"].started >= summary.ended
    # both workers were busy most of the time
    span = max(x.ended for x in res.results) - min(x.started for x in res.results)
    busy = sum(x.ended - x.started for x in res.results)
    assert busy / (2 * span) > 0.7, busy / (2 * span)


def test_serial_and_dask_give_the_same_graph_results(fake_run):
    from distributed import Client

    serial = fake_run(workers=1)
    with Client(processes=False, n_workers=2, threads_per_worker=1,
                dashboard_address=None) as client:
        from unittest import mock

        with mock.patch.object(run_mod, "_dask_client") as dc:
            dc.return_value.__enter__.return_value = client
            dask = fake_run(workers=2, scheduler="in-process")
    status = {x.task_id: x.status for x in serial.results}
    assert {x.task_id: x.status for x in dask.results} == status
    r = _by_id(dask)
    for u in UNITS:
        assert r[f"700000001/{u}/train"].ended <= r[f"700000001/{u}/mei"].started


def test_failed_piece_skips_what_depends_on_it_and_strict_stops(fake_run, monkeypatch):
    from meireport.report import limits

    monkeypatch.setattr(limits, "plan_tasks", raising=False, value=lambda *a, **k: [
        CallTask("limits/piece/bad", f"{__name__}:failing_piece")])
    res = fake_run(workers=2)
    r = _by_id(res)
    assert r["limits/piece/bad"].status == "failed"
    assert "ValueError: piece broke" in r["limits/piece/bad"].error
    assert r["-1/-/limits"].status == "skipped" and "limits/piece/bad" in r["-1/-/limits"].error
    assert all(x.status == "ok" for x in res.results if x.session_id != -1)
    stopped = fake_run(workers=1, strict=True)
    assert stopped.stopped and len(stopped.results) < len(res.results)


def test_graph_errors_are_named():
    def work(t, deps):
        return SimpleNamespace(task_id=t.task_id, status="ok")

    with pytest.raises(GraphError, match="a depends on nowhere, which no task provides"):
        run_graph([SimpleNamespace(task_id="a", deps=("nowhere",))], work)
    with pytest.raises(GraphError, match="cycle among: a, b"):
        run_graph([SimpleNamespace(task_id="a", deps=("b",)),
                   SimpleNamespace(task_id="b", deps=("a",))], work)


def _notebook(path: Path, *cells: str) -> str:
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(c) for c in cells]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nbformat.write(nb, path)
    return str(path)


def test_a_shared_kernel_serves_several_notebooks_with_a_fresh_namespace(tmp_path):
    """One kernel process for a neuron's notebooks; what one notebook defined is gone in the
    next, what it imported is still loaded; the kernel is shut down at the end."""
    import os

    from meireport.report.run import SharedKernel, Task, execute_task

    first = _notebook(tmp_path / "a.ipynb", "import os, sys, json\nleft_behind = 1",
                      "open('a.pid', 'w').write(str(os.getpid()))")
    second = _notebook(tmp_path / "b.ipynb",
                       "import os\nopen('b.pid', 'w').write(str(os.getpid()))",
                       "assert 'left_behind' not in dir(), 'namespace not reset'",
                       "import sys\nassert 'json' in sys.modules")

    def task(template, name):
        return Task(stage="train", session_id=1, unit_id=2, template=template,
                    output=str(tmp_path / f"out_{name}.ipynb"), workdir=str(tmp_path),
                    session_dir=str(tmp_path), parameters={}, inputs={}, outputs={})

    with SharedKernel() as kernel:
        a = execute_task(task(first, "a"), kernel=kernel)
        b = execute_task(task(second, "b"), kernel=kernel)
        assert kernel.used == 2
    assert (a.status, b.status) == ("ok", "ok"), (a.error, b.error)
    pids = {(tmp_path / f).read_text() for f in ("a.pid", "b.pid")}
    assert len(pids) == 1  # the same kernel process
    pid = int(pids.pop())
    with pytest.raises(ProcessLookupError):  # and it was shut down
        for _ in range(50):
            os.kill(pid, 0)
            time.sleep(0.1)


def test_study_pieces_start_costliest_first_after_the_users_neurons():
    """The default study's pieces by priority: sims first (they unlock the rest), then the
    1000-image population and complex units, the 300-image simple units last; every study
    piece after the user's neurons (the default book measured 120 s of one worker idle while
    the 1000-image population fit ran alone at the end, when pieces started in plan order)."""
    from meireport.report import limits

    params = load_params(Path(__file__).resolve().parent.parent / "params" / "default.yaml")
    d = params.model_dump(mode="json")
    pieces = limits.plan_tasks(d["limits"], d["model"], d["train"], d["selection"],
                               cache="/tmp/unused")
    order = [t.task_id for t in sorted(pieces, key=run_mod._priority)]
    sims = [t for t in order if t.endswith("/sim") or "/pool/sim/" in t]
    assert order[: len(sims)] == sims and len(sims) == 3 + 6  # 3 sizes, 6 pooled sessions
    after = order[len(sims):]
    assert after[0] == "limits/n1000/population"
    assert set(after[1:5]) == {f"limits/n1000/unit/complex/{i}" for i in range(4)}
    fits = [t for t in after if not t.endswith("/select")]  # selects are quick, last
    assert fits[-4:] == [f"limits/n300/unit/simple/{i}" for i in range(4)]
    neuron = SimpleNamespace(stage="mei")
    assert max(run_mod._priority(t) for t in [neuron]) < min(map(run_mod._priority, pieces))
