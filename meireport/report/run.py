"""Papermill orchestration: plan -> execute (local pool or Dask) -> results, with caching.

The plan is data: :data:`STAGES` lists each notebook, the params sections it sees, the artifacts it
reads and writes. Session-level stages run first, then the per-neuron stages of every chosen
neuron, then the session summary. Each execution is cached by a hash of (the params sections it
sees, the template notebook, the package source, its input artifacts): a rerun with nothing
changed executes nothing, a change re-executes only what depends on it. A failing notebook (an
exception, a dead kernel, a timeout) is recorded with its error and does not stop the others.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import traceback
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path

import pandas as pd

import meireport
from meireport.artifacts import atomic_path, file_sha256, load_csv, load_json, save_json
from meireport.errors import MeireportError
from meireport.report.params import Params, load_params, section_hash

__all__ = [
    "Stage",
    "STAGES",
    "Task",
    "TaskResult",
    "RunResult",
    "plan_session_tasks",
    "plan_neuron_tasks",
    "plan_run_tasks",
    "choose_neurons",
    "execute_task",
    "run",
    "NOTEBOOK_DIR",
]

#: Template notebooks shipped with the package (package data).
NOTEBOOK_DIR = Path(__file__).resolve().parent / "notebooks"


@dataclass(frozen=True)
class Stage:
    """One notebook of the report.

    Attributes
    ----------
    name : str
        Stage name (``extract``, ``select``, ...).
    notebook : str
        Template file in :data:`NOTEBOOK_DIR`.
    level : str
        ``session``, ``neuron`` or ``summary``.
    sections : tuple of str
        Params sections the notebook sees (and whose change re-executes it).
    inputs : tuple of str
        Artifacts it reads: ``session:NAME`` in the session folder, ``neuron:NAME`` in the neuron
        folder.
    outputs : tuple of str
        Artifacts it writes (in its own folder).
    """

    name: str
    notebook: str
    level: str
    sections: tuple[str, ...]
    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()


_SESSION_ARTIFACTS = ("trials.npz", "images.npz", "gabors.npz", "units.csv", "session.json")

STAGES: tuple[Stage, ...] = (
    Stage("extract", "01_extract.ipynb", "session", ("source", "extract"), (), _SESSION_ARTIFACTS),
    Stage("select", "02_select.ipynb", "session", ("source", "extract", "selection"),
          tuple(f"session:{a}" for a in _SESSION_ARTIFACTS), ("selection.csv", "rfmap.npz")),
    Stage("train", "03_train.ipynb", "neuron", ("model", "train"),
          ("session:trials.npz", "session:images.npz", "session:gabors.npz",
           "session:session.json", "session:selection.csv"),
          ("model.pt", "train.json")),
    Stage("mei", "04_mei.ipynb", "neuron", ("mei", "trust"),
          ("session:images.npz", "session:session.json", "session:selection.csv",
           "neuron:model.pt", "neuron:train.json"),
          ("mei.npy", "mei.json", "trust.json")),
    Stage("gabor", "05_gabor.ipynb", "neuron", ("gabor",),
          ("session:images.npz", "session:gabors.npz", "session:session.json",
           "neuron:model.pt", "neuron:mei.npy", "neuron:mei.json"),
          ("gabor.npy", "comparison.json")),
    Stage("summary", "06_summary.ipynb", "summary", ("neurons",),
          ("session:selection.csv", "session:units.csv", "session:session.json",
           "session:status.json"),
          ("summary.csv",)),
    Stage("limits", "07_limits.ipynb", "run", ("limits", "selection", "model", "train", "trust"),
          (), ("limits_session.csv", "limits_units.csv", "limits_models.csv")),
)

#: Folder of the run-level stages' outputs (``results/limits``); their session id is -1.
RUN_LEVEL_ID = -1


def available_stages() -> tuple[Stage, ...]:
    """Every stage of :data:`STAGES`, after checking that its template notebook ships.

    Raises
    ------
    MeireportError
        Naming the first missing template (a broken install is an error, never a shorter run).

    Examples
    --------
    >>> [s.name for s in available_stages()][:3]
    ['extract', 'select', 'train']
    """
    for s in STAGES:
        f = NOTEBOOK_DIR / s.notebook
        if not f.is_file():
            raise MeireportError(f"stage {s.name}: template notebook {f} is missing from the "
                                 "installed package (reinstall meireport)")
    return STAGES


@lru_cache(maxsize=1)
def package_hash() -> str:
    """sha256 over the package's Python source (any code change re-executes everything)."""
    root = Path(meireport.__file__).resolve().parent
    parts = [(str(p.relative_to(root)), file_sha256(p)) for p in sorted(root.rglob("*.py"))]
    return section_hash(parts)


@dataclass
class Task:
    """One notebook execution."""

    stage: str
    session_id: int
    unit_id: int | None
    template: str
    output: str  # executed notebook path
    workdir: str  # folder the notebook writes its outputs into
    session_dir: str
    parameters: dict
    inputs: dict[str, str]  # name -> path
    outputs: dict[str, str]  # name -> path
    key: str = ""
    timeout_s: int = 3600

    @property
    def task_id(self) -> str:
        """``<session>/<unit or ->/<stage>``."""
        return f"{self.session_id}/{self.unit_id if self.unit_id is not None else '-'}/{self.stage}"


@dataclass
class TaskResult:
    """What happened to one task."""

    task_id: str
    stage: str
    session_id: int
    unit_id: int | None
    status: str  # ok | cached | failed | skipped
    seconds: float = 0.0
    error: str | None = None
    notebook: str | None = None


@dataclass
class RunResult:
    """A whole run: every task's result, and where things are."""

    run_dir: Path
    results: list[TaskResult] = field(default_factory=list)

    @property
    def executed(self) -> list[TaskResult]:
        """Tasks that ran a notebook this time (ok or failed)."""
        return [r for r in self.results if r.status in ("ok", "failed")]

    @property
    def failed(self) -> list[TaskResult]:
        """Tasks that failed or were skipped because an input was missing."""
        return [r for r in self.results if r.status in ("failed", "skipped")]


# -------------------------------------------------------------------------------------------
# planning
# -------------------------------------------------------------------------------------------
def _stage(name: str) -> Stage:
    return next(s for s in STAGES if s.name == name)


def _section_params(params: Params, stage: Stage) -> dict:
    d = params.to_json_dict()
    return {k: d[k] for k in stage.sections} | {"name": params.name, "title": params.title}


def _make_task(params: Params, run_dir: Path, stage: Stage, sid: int, uid: int | None) -> Task:
    sdir = run_dir / "results" / (stage.name if stage.level == "run" else str(sid))
    wdir = sdir / str(uid) if uid is not None else sdir
    inputs = {}
    for spec in stage.inputs:
        where, name = spec.split(":", 1)
        inputs[spec] = str((sdir if where == "session" else wdir) / name)
    parameters = {
        "params_json": json.dumps(_section_params(params, stage)),
        "session_id": int(sid),
        "unit_id": int(uid) if uid is not None else -1,
        "run_dir": str(run_dir),
        "session_dir": str(sdir),
        "out_dir": str(wdir),
    }
    return Task(
        stage=stage.name, session_id=int(sid), unit_id=uid,
        template=str(NOTEBOOK_DIR / stage.notebook), output=str(wdir / stage.notebook),
        workdir=str(wdir), session_dir=str(sdir), parameters=parameters, inputs=inputs,
        outputs={o: str(wdir / o) for o in stage.outputs}, timeout_s=params.run.timeout_s,
    )


def plan_session_tasks(params: Params, run_dir: Path, session_ids: Iterable[int]) -> list[Task]:
    """Session-level tasks (extract, select) for every session, in stage order."""
    stages = [s for s in available_stages() if s.level == "session"]
    return [_make_task(params, run_dir, st, sid, None) for sid in session_ids for st in stages]


def plan_run_tasks(params: Params, run_dir: Path) -> list[Task]:
    """Run-level tasks (the data-limit chapter), once per run; none when disabled."""
    if not params.limits.enabled:
        return []
    stages = [s for s in available_stages() if s.level == "run"]
    return [_make_task(params, run_dir, st, RUN_LEVEL_ID, None) for st in stages]


def choose_neurons(params: Params, selection: pd.DataFrame, override=None) -> list[int]:
    """Neurons that get per-neuron pages, from the selection table and ``params.neurons``."""
    if override:
        return [int(u) for u in override]
    n = params.neurons
    if n.mode == "list":
        return [int(u) for u in n.ids]
    if n.mode == "top":
        col = "oracle_corr" if "oracle_corr" in selection else selection.columns[0]
        return [int(u) for u in selection.sort_values(col, ascending=False)["unit_id"][: n.top_n]]
    return [int(u) for u in selection.loc[selection["selected"].astype(bool), "unit_id"]]


def plan_neuron_tasks(params: Params, run_dir: Path, sid: int, units: list[int]) -> list[Task]:
    """Per-neuron tasks (train, MEI, Gabor) in dependency order for each unit."""
    stages = [s for s in available_stages() if s.level == "neuron"]
    return [_make_task(params, run_dir, st, sid, u) for u in units for st in stages]


# -------------------------------------------------------------------------------------------
# caching
# -------------------------------------------------------------------------------------------
def _cache_file(run_dir: Path, task: Task) -> Path:
    return run_dir / ".meireport" / "cache" / (task.task_id.replace("/", "__") + ".json")


def _task_key(task: Task) -> str | None:
    """Cache key; None when an input is missing (the task cannot run)."""
    hashes = {}
    for name, path in sorted(task.inputs.items()):
        if not Path(path).is_file():
            return None
        hashes[name] = file_sha256(path)
    # locations are not content: a run folder can be moved or copied and stay cached
    params = {k: v for k, v in task.parameters.items()
              if k not in ("run_dir", "session_dir", "out_dir")}
    return section_hash(task.stage, file_sha256(task.template), package_hash(), params, hashes)


def _is_cached(run_dir: Path, task: Task) -> bool:
    f = _cache_file(run_dir, task)
    if not f.is_file():
        return False
    rec = json.loads(f.read_text())
    if rec.get("key") != task.key or rec.get("status") != "ok":
        return False
    for name, digest in rec.get("outputs", {}).items():
        p = Path(task.outputs.get(name, ""))
        if not p.is_file() or file_sha256(p) != digest:
            return False
    return Path(task.output).is_file()


def _record(run_dir: Path, task: Task, res: TaskResult) -> None:
    outs = {n: file_sha256(p) for n, p in task.outputs.items() if Path(p).is_file()}
    save_json(_cache_file(run_dir, task), {"key": task.key, "status": res.status,
                                           "outputs": outs, "error": res.error,
                                           "seconds": res.seconds})


# -------------------------------------------------------------------------------------------
# execution
# -------------------------------------------------------------------------------------------
def _short_error(exc: BaseException) -> str:
    name = type(exc).__name__
    if name == "PapermillExecutionError":
        return f"{exc.ename}: {exc.evalue}"
    text = str(exc).strip().splitlines()
    return f"{name}: {text[-1] if text else ''}"


def execute_task(task: Task) -> TaskResult:
    """Execute one notebook with papermill (picklable: runs in pool or Dask workers).

    The executed notebook is written atomically beside the task's outputs, also when it fails
    (so the report can show the error).
    """
    import papermill as pm

    t0 = time.perf_counter()
    Path(task.workdir).mkdir(parents=True, exist_ok=True)
    error = None
    with atomic_path(task.output, ".ipynb") as tmp:
        try:
            pm.execute_notebook(
                task.template, str(tmp), parameters=task.parameters, cwd=task.workdir,
                progress_bar=False, log_output=False, execution_timeout=task.timeout_s,
                kernel_name="python3",
            )
        except Exception as exc:  # a failing notebook must not stop the others
            error = _short_error(exc)
            if not tmp.exists() or tmp.stat().st_size == 0:
                tmp.write_text(_error_notebook(task, error, traceback.format_exc()))
    missing = [n for n, p in task.outputs.items() if not Path(p).is_file()]
    if error is None and missing:
        error = f"notebook finished without writing {', '.join(missing)}"
    return TaskResult(task.task_id, task.stage, task.session_id, task.unit_id,
                      "failed" if error else "ok", time.perf_counter() - t0, error, task.output)


def _error_notebook(task: Task, error: str, tb: str) -> str:
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.cells.append(nbformat.v4.new_markdown_cell(
        f"# {task.stage} failed\n\nThe notebook could not run: `{error}`\n\n```\n{tb}\n```"))
    return nbformat.writes(nb)


def _runner(workers: int, scheduler: str | None):
    """Return ``submit_all(tasks) -> iterator of TaskResult``."""
    if scheduler:
        from distributed import Client
        from distributed import as_completed as dask_completed

        client = Client(scheduler, timeout="30s")

        def submit_all(tasks):
            futures = [client.submit(execute_task, t, pure=False) for t in tasks]
            for fut in dask_completed(futures):
                yield fut.result()

        return submit_all, client.close
    if workers <= 1:
        return (lambda tasks: (execute_task(t) for t in tasks)), (lambda: None)
    pool = ProcessPoolExecutor(max_workers=workers)

    def submit_all(tasks):
        futures = [pool.submit(execute_task, t) for t in tasks]
        for fut in as_completed(futures):
            yield fut.result()

    return submit_all, pool.shutdown


def _run_wave(run_dir: Path, tasks: list[Task], submit_all: Callable, bar) -> list[TaskResult]:
    """Run tasks that do not depend on each other; cached ones are skipped."""
    results, todo = [], []
    for t in tasks:
        t.key = _task_key(t) or ""
        if not t.key:
            missing = [n for n, p in t.inputs.items() if not Path(p).is_file()]
            res = TaskResult(t.task_id, t.stage, t.session_id, t.unit_id, "skipped", 0.0,
                             f"upstream failed: missing {', '.join(missing)}", None)
            _record(run_dir, t, res)
            results.append(res)
            bar.update()
        elif _is_cached(run_dir, t):
            results.append(TaskResult(t.task_id, t.stage, t.session_id, t.unit_id, "cached",
                                      notebook=t.output))
            bar.update()
        else:
            todo.append(t)
    by_id = {t.task_id: t for t in todo}
    for res in submit_all(todo):
        _record(run_dir, by_id[res.task_id], res)
        results.append(res)
        bar.set_postfix_str(f"{res.task_id} {res.status}")
        bar.update()
    return results


def _waves(tasks: list[Task]) -> list[list[Task]]:
    """Group tasks by stage order: all tasks of one stage can run in parallel."""
    order = [s.name for s in STAGES]
    stages = sorted({t.stage for t in tasks}, key=order.index)
    return [[t for t in tasks if t.stage == s] for s in stages]


def _write_status(sdir: Path, results: list[TaskResult]) -> None:
    """Outcome of every task of a session (stable content: cached counts as ok, no timings)."""
    rows = [{"task_id": r.task_id, "stage": r.stage, "unit_id": r.unit_id,
             "status": "ok" if r.status == "cached" else r.status, "error": r.error}
            for r in sorted(results, key=lambda r: r.task_id) if r.stage != "summary"]
    save_json(sdir / "status.json", rows)


def run(
    params: Params | str | os.PathLike,
    out: str | os.PathLike | None = None,
    workers: int | None = None,
    scheduler: str | None = None,
    neurons: list[int] | None = None,
    progress: bool = True,
) -> RunResult:
    """Execute the report's notebooks for every session and chosen neuron.

    Parameters
    ----------
    params : Params or path
        Validated params or a params YAML path.
    out : path, optional
        Run folder (default ``runs/<params.name>``).
    workers : int, optional
        Local worker processes (default ``params.run.workers``).
    scheduler : str, optional
        Address of an existing Dask distributed scheduler (overrides ``workers``).
    neurons : list of int, optional
        Explicit unit ids for the per-neuron pages (overrides ``params.neurons``).
    progress : bool
        Show a tqdm progress bar.

    Returns
    -------
    RunResult
    """
    from tqdm.auto import tqdm

    from meireport.sources.from_params import ensure_source

    if not isinstance(params, Params):
        params = load_params(params)
    run_dir = Path(out if out is not None else Path("runs") / params.name).expanduser().resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    save_json(run_dir / "params.json", params.to_json_dict())
    session_ids = ensure_source(params.to_json_dict()["source"], run_dir, progress=progress)
    submit_all, close = _runner(workers or params.run.workers, scheduler)
    result = RunResult(run_dir)
    bar = tqdm(total=0, desc="notebooks", unit="nb", disable=not progress)
    try:
        session_tasks = plan_session_tasks(params, run_dir, session_ids)
        bar.total += len(session_tasks)
        for wave in _waves(session_tasks):
            result.results += _run_wave(run_dir, wave, submit_all, bar)
        neuron_tasks: list[Task] = []
        for sid in session_ids:
            sel = Path(run_dir / "results" / str(sid) / "selection.csv")
            if sel.is_file():
                units = choose_neurons(params, load_csv(sel), neurons)
                neuron_tasks += plan_neuron_tasks(params, run_dir, sid, units)
        run_tasks = plan_run_tasks(params, run_dir)  # independent: beside the first wave
        bar.total += len(neuron_tasks) + len(run_tasks)
        waves = _waves(neuron_tasks) or [[]]
        waves[0] = waves[0] + run_tasks
        for wave in waves:
            result.results += _run_wave(run_dir, wave, submit_all, bar)
        for sid in session_ids:
            sdir = run_dir / "results" / str(sid)
            if sdir.is_dir():
                _write_status(sdir, [r for r in result.results if r.session_id == sid])
        summary = [s for s in available_stages() if s.level == "summary"]
        summary_tasks = [_make_task(params, run_dir, st, sid, None)
                         for sid in session_ids for st in summary]
        for t in summary_tasks:  # the summary reads every neuron's outputs of its session
            t.inputs |= {f"{n.unit_id}:{name}": path for n in neuron_tasks
                         if n.session_id == t.session_id for name, path in n.outputs.items()
                         if Path(path).is_file()}
        bar.total += len(summary_tasks)
        result.results += _run_wave(run_dir, summary_tasks, submit_all, bar)
    finally:
        bar.close()
        close()
    save_json(run_dir / "run.json", {
        "params": params.to_json_dict(), "session_ids": session_ids,
        "meireport_version": meireport.__version__,
        "results": [asdict(r) for r in result.results],
    })
    return result


def clean_run(run_dir) -> None:
    """Delete a run folder's cache records (forces re-execution); artifacts are kept."""
    shutil.rmtree(Path(run_dir) / ".meireport" / "cache", ignore_errors=True)


def load_run(run_dir) -> dict:
    """The ``run.json`` of a finished run."""
    f = Path(run_dir) / "run.json"
    if not f.is_file():
        raise MeireportError(f"run_dir: {run_dir} has no run.json; run `meireport run` first")
    return load_json(f)
