"""Papermill orchestration: plan a task graph -> execute it (local pool or Dask) -> results.

The plan is data: :data:`STAGES` lists each notebook, the params sections it sees, the artifacts it
reads and writes; a task depends on the tasks that write its inputs. The graph
(:func:`meireport.report.engine.run_graph`) starts each task as soon as those are done: a
session's neurons once its selection is done, each neuron's MEI once its model is trained,
the data-limit study's pieces beside them from the start, a session's summary last. Each
notebook execution is cached by a hash of (the params sections it sees, the template notebook,
the package source, its input artifacts): a rerun with nothing changed executes nothing, a change
re-executes only what depends on it; the stages a notebook calls keep their own compute cache
(:mod:`meireport.report.stages`), so a change of plotting code re-renders pages without
refitting. A failing notebook (an exception, a dead kernel, a timeout) is recorded with its error
and does not stop the others (unless ``strict``).

A run folder is marked when first used (``.meireport/folder.json``, :func:`check_run_folder`):
a run never writes into a non-empty folder without that mark. One process at a time writes into
a run folder: :func:`run_folder_lock` holds an OS lock (``fcntl.flock`` on
``.meireport/lock``, which holds the owner's pid) for the whole run or site build; the kernel
releases it when its process dies, so a killed run never blocks the next one, which removes the
temporary files the killed one left behind.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from contextlib import chdir, contextmanager, suppress
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path

import pandas as pd

import meireport
from meireport.artifacts import (
    atomic_path,
    file_sha256,
    load_csv,
    remove_leftover_temps,
    save_json,
)
from meireport.errors import MeireportError
from meireport.report.engine import CallTask, execute_call, run_graph
from meireport.report.params import Params, load_params, section_hash
from meireport.store import cache_root

__all__ = [
    "Stage",
    "STAGES",
    "Task",
    "TaskResult",
    "RunResult",
    "plan_session_tasks",
    "plan_neuron_tasks",
    "plan_run_tasks",
    "plan_summary_task",
    "choose_neurons",
    "execute_task",
    "run_task",
    "TaskChain",
    "ChainResult",
    "SharedKernel",
    "NotebookKernel",
    "RunFolder",
    "RunFolderBusy",
    "check_run_folder",
    "run_folder_lock",
    "open_run",
    "execute_run",
    "run",
    "load_run",
    "NOTEBOOK_DIR",
    "MARK_FILE",
    "LOCK_FILE",
]

_log = logging.getLogger(__name__)

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
        ``session``, ``neuron``, ``summary`` (one per session, after its other tasks),
        ``run`` (once per run: the data-limit chapter) or ``across`` (once per run, after every
        session's summary: the run-level summary across sessions and areas).
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
          (), ("limits_session.csv", "limits_units.csv", "limits_models.csv",
               "limits_pooled.csv")),
    Stage("across", "08_across.ipynb", "across", ("selection",), (), ("run_summary.csv",)),
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
    #: Task ids this one waits for (derived from inputs and outputs, or given).
    deps: tuple[str, ...] = ()
    #: Inputs read when they exist (a summary reads the outputs of its session's neurons).
    optional_inputs: dict[str, str] = field(default_factory=dict)

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
    #: When the task started and ended (seconds since the epoch; 0 for a task not run).
    started: float = 0.0
    ended: float = 0.0
    #: Lines worth knowing found while running it (a corrupt cache record...), not in run.json.
    notes: list[str] = field(default_factory=list)


@dataclass
class RunResult:
    """A whole run: every task's result, and where things are."""

    run_dir: Path
    results: list[TaskResult] = field(default_factory=list)
    #: One line per thing worth knowing that is not a task's outcome (a corrupt cache record...).
    notes: list[str] = field(default_factory=list)
    #: True when ``strict`` stopped the run at its first failed task.
    stopped: bool = False

    @property
    def executed(self) -> list[TaskResult]:
        """Tasks that ran a notebook this time (ok or failed)."""
        return [r for r in self.results if r.status in ("ok", "failed")]

    @property
    def failed(self) -> list[TaskResult]:
        """Tasks that failed or were skipped because an input was missing."""
        return [r for r in self.results if r.status in ("failed", "skipped")]


@dataclass
class TaskChain:
    """Notebook tasks run one after the other in one kernel: one node of the graph.

    A neuron's training, MEI and Gabor pages form one chain: they depend on each other anyway,
    and one kernel start and one import of torch, matplotlib and meireport serve all three
    (:class:`SharedKernel`). Each task keeps its own cache record and result.
    """

    tasks: list[Task]
    deps: tuple[str, ...] = ()

    @property
    def task_id(self) -> str:
        """``<session>/<unit>/chain``."""
        t = self.tasks[0]
        return f"{t.session_id}/{t.unit_id if t.unit_id is not None else '-'}/chain"

    @property
    def stage(self) -> str:
        """``chain``."""
        return "chain"


@dataclass
class ChainResult:
    """The results of a :class:`TaskChain`'s tasks."""

    task_id: str
    results: list[TaskResult]
    stage: str = "chain"

    @property
    def status(self) -> str:
        """``failed`` when a task of the chain failed or was skipped, else ``ok``."""
        bad = any(r.status in ("failed", "skipped") for r in self.results)
        return "failed" if bad else "ok"


def chain(tasks: list[Task]) -> TaskChain:
    """The tasks as one chain, depending on what its tasks depend on outside it."""
    own = {t.task_id for t in tasks}
    deps = dict.fromkeys(d for t in tasks for d in t.deps if d not in own)
    return TaskChain(list(tasks), tuple(deps))


# -------------------------------------------------------------------------------------------
# planning
# -------------------------------------------------------------------------------------------
def _section_params(params: Params, stage: Stage) -> dict:
    d = params.to_json_dict()
    return {k: d[k] for k in stage.sections} | {"name": params.name, "title": params.title}


def _make_task(params: Params, run_dir: Path, stage: Stage, sid: int, uid: int | None) -> Task:
    sdir = run_dir / "results" / (stage.name if stage.level in ("run", "across") else str(sid))
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
    if stage.level == "neuron":  # where models are trained and MEIs synthesised
        parameters["device"] = params.run.device
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


def plan_run_tasks(params: Params, run_dir: Path) -> list:
    """Run-level tasks, once per run; none when the study is disabled.

    The data-limit study's pieces (:func:`meireport.report.limits.plan_tasks`: call tasks whose
    results go to the shared cache, :func:`meireport.store.cache_root`), then its chapter's
    notebook, which depends on all of them and renders from the cache.
    """
    if not params.limits.enabled:
        return []
    from meireport.report import limits

    d = params.to_json_dict()
    cache = str(cache_root(params.run.cache))
    pieces = limits.plan_tasks(d["limits"], d["model"], d["train"], d["selection"], cache=cache)
    stages = [s for s in available_stages() if s.level == "run"]
    tasks = [_make_task(params, run_dir, st, RUN_LEVEL_ID, None) for st in stages]
    for t in tasks:
        t.deps = tuple(p.task_id for p in pieces)
        t.parameters["cache_dir"] = cache
    return [*pieces, *tasks]


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


#: Notebook parameters that are locations, not content (not part of a cache key).
_LOCATIONS = ("run_dir", "session_dir", "out_dir", "cache_dir")


def _task_key(task: Task) -> str | None:
    """Cache key; None when an input is missing (the task cannot run)."""
    hashes = {}
    for name, path in sorted(task.inputs.items()):
        if not Path(path).is_file():
            return None
        hashes[name] = file_sha256(path)
    for name, path in sorted(task.optional_inputs.items()):
        if Path(path).is_file():
            hashes[name] = file_sha256(path)
    # locations are not content: a run folder can be moved or copied and stay cached
    params = {k: v for k, v in task.parameters.items() if k not in _LOCATIONS}
    return section_hash(task.stage, file_sha256(task.template), package_hash(), params, hashes)


def _note(notes: list[str], text: str) -> None:
    """Record one line worth knowing and log it (the CLI prints it on stderr)."""
    notes.append(text)
    _log.warning(text)


def _read_record(f: Path, task: Task, notes: list[str]) -> dict | None:
    """A task's cache record; None when there is none or it is corrupt (a miss, noted)."""
    if not f.is_file():
        return None
    try:
        rec = json.loads(f.read_text())
    except OSError as e:
        rec, problem = None, f"cannot be read ({e.strerror})"
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        rec, problem = None, f"is not valid JSON ({e})"
    else:
        problem = "is not a cache record (expected an object with key, status, outputs)"
    if not (isinstance(rec, dict) and isinstance(rec.get("outputs", {}), dict)):
        # said (logged) once, where the run collects its results (_note in execute_run)
        notes.append(f"cache record {f} {problem}; re-executing {task.task_id}")
        return None
    return rec


def _is_cached(run_dir: Path, task: Task, notes: list[str]) -> bool:
    """Whether the task's record matches its key and its outputs and notebook are unchanged."""
    rec = _read_record(_cache_file(run_dir, task), task, notes)
    if rec is None or rec.get("key") != task.key or rec.get("status") != "ok":
        return False
    for name, digest in rec.get("outputs", {}).items():
        p = Path(task.outputs.get(name, ""))
        if not p.is_file() or file_sha256(p) != digest:
            return False
    nb = Path(task.output)
    return nb.is_file() and rec.get("notebook") == file_sha256(nb)


def _record(run_dir: Path, task: Task, res: TaskResult) -> None:
    outs = {n: file_sha256(p) for n, p in task.outputs.items() if Path(p).is_file()}
    nb = Path(task.output)
    save_json(_cache_file(run_dir, task), {
        "key": task.key, "status": res.status, "outputs": outs,
        "notebook": file_sha256(nb) if res.status != "skipped" and nb.is_file() else None,
        "error": res.error, "seconds": res.seconds})


# -------------------------------------------------------------------------------------------
# execution
# -------------------------------------------------------------------------------------------
def _short_error(exc: BaseException) -> str:
    name = type(exc).__name__
    if name == "PapermillExecutionError":
        return f"{exc.ename}: {exc.evalue}"
    text = str(exc).strip().splitlines()
    return f"{name}: {text[-1] if text else ''}"


#: A Unix socket path is at most 107 bytes; the kernel's IPC sockets are named after its
#: connection file, a temporary file (``tmpXXXXXXXX-ipc-<n>``).
_IPC_PATH_MAX = 100


@lru_cache(maxsize=1)
def _quiet_kernel_manager() -> type:
    """The kernel manager class behind :class:`NotebookKernel` (imports Jupyter on first use)."""
    import tempfile

    from jupyter_client.manager import AsyncKernelManager
    from traitlets import default

    socket = os.path.join(tempfile.gettempdir(), "tmpxxxxxxxx-ipc-99999")
    ipc = len(socket.encode()) < _IPC_PATH_MAX

    class QuietKernelManager(AsyncKernelManager):
        """:class:`AsyncKernelManager` on IPC transport, shut down without SIGINT."""

        #: Whether the kernel is known to be idle, between cells (set by NotebookKernel).
        kernel_idle: Callable[[], bool] = staticmethod(lambda: False)

        @default("transport")
        def _default_transport(self) -> str:
            return "ipc" if ipc else "tcp"

        async def shutdown_kernel(self, now: bool = False, restart: bool = False) -> None:
            # a kernel starting or in a cell (a timeout, a SIGINT of the run) is abandoned: killed
            await super().shutdown_kernel(now=now or not self.kernel_idle(), restart=restart)

        async def _async_interrupt_kernel(self) -> None:
            if self.shutting_down:  # idle: asked to shut down; busy: killed
                return
            await super()._async_interrupt_kernel()

    return QuietKernelManager


class NotebookKernel:
    """The kernel of one notebook execution: quiet on a healthy run, never left running.

    :meth:`options` are papermill's options for it. The kernel listens on IPC transport (local
    Unix sockets: it does not warn that it runs over TCP without encryption) when the
    temporary folder's path leaves room for the socket names. At shutdown, jupyter_client
    interrupts a kernel with SIGINT before it asks it to shut down; a signal that lands while
    the kernel finishes a message logs "KeyboardInterrupt caught in kernel", one that lands in a
    cell races the shutdown (the kernel logs a traceback). So a finished notebook's idle kernel
    is only asked to shut down, and a kernel still starting or in a cell (a timeout, a SIGINT of
    the run) is killed: that notebook is abandoned, and its task records the failure or the
    interruption as before. :meth:`kill` ends a kernel that papermill leaves running when the
    run is interrupted while the kernel starts.
    """

    def __init__(self) -> None:
        self.idle = False
        self.managers: list = []

    def options(self) -> dict:
        """``kernel_manager_class`` and the cell hooks that track whether the kernel is idle."""
        owner = self

        def init(km, **kw) -> None:
            super(manager, km).__init__(**kw)
            owner.managers.append(km)

        manager = type("NotebookKernelManager", (_quiet_kernel_manager(),),
                       {"__init__": init, "kernel_idle": staticmethod(lambda: owner.idle)})
        return {"kernel_manager_class": manager,
                "on_cell_execute": lambda **_: setattr(owner, "idle", False),
                "on_cell_executed": lambda **_: setattr(owner, "idle", True)}

    def kill(self) -> None:
        """SIGKILL every kernel of this execution that still runs."""
        for km in self.managers:
            proc = getattr(getattr(km, "provisioner", None), "process", None)
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()


class SharedKernel(NotebookKernel):
    """One kernel for several notebooks executed one after the other (a neuron's pages).

    The kernel starts with the first notebook and is kept between them: its start and its
    imports (torch, matplotlib, meireport) are paid once. Before each later notebook the
    kernel's namespace is emptied (``%reset -f``), so that a notebook never reads what an
    earlier one left; the modules stay imported. Leaving the ``with`` block shuts it down
    (kills it when it is busy: a timeout, an interrupted run).
    """

    def __init__(self) -> None:
        super().__init__()
        self.km = None
        self.used = 0
        #: The folder the notebooks run in (the kernel's IPC sockets may be named relative to it).
        self.cwd: str | None = None

    def options(self) -> dict:
        """As :meth:`NotebookKernel.options`, with the one kernel manager (``km``) passed on."""
        opts = super().options()
        if self.km is None:
            self.km = opts["kernel_manager_class"](kernel_name="python3")
        elif self.km.has_kernel:
            self._reset()
        self.used += 1
        return {"km": self.km, "on_cell_execute": opts["on_cell_execute"],
                "on_cell_executed": opts["on_cell_executed"]}

    def _reset(self) -> None:
        """Empty the kernel's namespace: a one-cell notebook run on the same kernel."""
        import nbformat
        import papermill as pm

        nb = nbformat.v4.new_notebook()
        nb.cells = [nbformat.v4.new_code_cell("%reset -f")]
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                     "language": "python"}
        pm.execute_notebook(nb, None, km=self.km, kernel_name="python3", progress_bar=False,
                            log_output=False, execution_timeout=60, cwd=self.cwd)

    def close(self) -> None:
        """Shut the kernel down (killed when it is busy or does not answer)."""
        from jupyter_core.utils import run_sync

        if self.km is not None and self.km.has_kernel:
            # the IPC socket files are named relative to the notebooks' folder
            with chdir(self.cwd or "."):
                try:
                    run_sync(self.km.shutdown_kernel)(now=not self.idle)
                except Exception:  # a dead kernel: nothing to shut down, its files to remove
                    self.kill()
                    with suppress(Exception):
                        run_sync(self.km._async_cleanup_resources)()
        self.km = None

    def __enter__(self) -> SharedKernel:
        return self

    def __exit__(self, *exc) -> None:
        if exc[0] is KeyboardInterrupt:
            self.kill()
        self.close()


def execute_task(task: Task, kernel: SharedKernel | None = None) -> TaskResult:
    """Execute one notebook with papermill (picklable: runs in pool or Dask workers).

    The executed notebook is written atomically beside the task's outputs, also when it fails
    (so the report can show the error). The kernel is quiet (:class:`NotebookKernel`): its own,
    or ``kernel``, shared with the notebooks executed before and after it.
    """
    import papermill as pm

    t0 = time.perf_counter()
    Path(task.workdir).mkdir(parents=True, exist_ok=True)
    error = None
    if kernel is None:
        kernel = NotebookKernel()
    else:
        kernel.cwd = task.workdir
    with atomic_path(task.output, ".ipynb") as tmp:
        try:
            pm.execute_notebook(
                task.template, str(tmp), parameters=task.parameters, cwd=task.workdir,
                progress_bar=False, log_output=False, execution_timeout=task.timeout_s,
                kernel_name="python3", **kernel.options(),
            )
        except KeyboardInterrupt:
            kernel.kill()  # interrupted while the kernel started: papermill leaves it running
            raise
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


def run_task(run_dir: str, task, deps: list[TaskResult]) -> TaskResult:
    """Run one task of the graph once its dependencies are done (in a worker; picklable).

    A notebook task whose inputs are missing (an upstream task failed) is ``skipped``; one whose
    cache record matches is ``cached``; else its notebook is executed and recorded. A call task
    (:class:`meireport.report.engine.CallTask`) is skipped when a dependency failed. A session
    summary first writes the session's ``status.json`` from its dependencies' results; it and
    the run-level summary across sessions run whatever failed before them.
    """
    run_dir = Path(run_dir)
    t0 = time.time()
    deps = _flatten(deps)
    bad = [d.task_id for d in deps if d.status in ("failed", "skipped")]
    if isinstance(task, TaskChain):
        return ChainResult(task.task_id, _run_chain(run_dir, task, bad))
    if isinstance(task, CallTask):
        res = _run_call(task, bad)
    elif task.stage == "summary":  # shows every outcome of its session, failures included
        _write_status(Path(task.session_dir), deps)
        res = _run_notebook(run_dir, task)
    elif task.stage == "across":  # every session that has tables, whatever failed elsewhere
        res = _run_notebook(run_dir, task)
    elif bad:  # not run on what an earlier, successful run left behind
        res = TaskResult(task.task_id, task.stage, task.session_id, task.unit_id, "skipped",
                         error=f"upstream failed: {', '.join(bad)}")
        task.key = ""
        _record(run_dir, task, res)
    else:
        res = _run_notebook(run_dir, task)
    res.started, res.ended = t0, time.time()
    return res


def _flatten(results: list) -> list[TaskResult]:
    return [r for x in results for r in (x.results if isinstance(x, ChainResult) else [x])]


def _run_chain(run_dir: Path, chain: TaskChain, bad: list[str]) -> list[TaskResult]:
    """A chain's notebooks in order, in one kernel; after a failure the rest are skipped."""
    out: list[TaskResult] = []
    with SharedKernel() as kernel:
        for task in chain.tasks:
            t0 = time.time()
            if bad:
                res = TaskResult(task.task_id, task.stage, task.session_id, task.unit_id,
                                 "skipped", error=f"upstream failed: {', '.join(bad)}")
                task.key = ""
                _record(run_dir, task, res)
            else:
                res = _run_notebook(run_dir, task, kernel)
            res.started, res.ended = t0, time.time()
            if res.status in ("failed", "skipped"):
                bad = [task.task_id]
            out.append(res)
    return out


def _run_call(task: CallTask, bad: list[str]) -> TaskResult:
    if bad:
        return TaskResult(task.task_id, task.stage, task.session_id, task.unit_id, "skipped",
                          error=f"upstream failed: {', '.join(bad)}")
    r = execute_call(task)
    if r.traceback:
        _log.debug("%s failed:\n%s", task.task_id, r.traceback)
    return TaskResult(task.task_id, task.stage, task.session_id, task.unit_id, r.status,
                      r.seconds, r.error)


def _run_notebook(run_dir: Path, task: Task, kernel: SharedKernel | None = None) -> TaskResult:
    notes: list[str] = []
    task.key = _task_key(task) or ""
    if not task.key:
        missing = [n for n, p in task.inputs.items() if not Path(p).is_file()]
        res = TaskResult(task.task_id, task.stage, task.session_id, task.unit_id, "skipped",
                         0.0, f"upstream failed: missing {', '.join(missing)}", None)
    elif _is_cached(run_dir, task, notes):
        return TaskResult(task.task_id, task.stage, task.session_id, task.unit_id, "cached",
                          notebook=task.output, notes=notes)
    else:
        res = execute_task(task) if kernel is None else execute_task(task, kernel=kernel)
    _record(run_dir, task, res)
    res.notes = notes
    return res


def _link(tasks: list[Task], known: Iterable[Task] = ()) -> None:
    """Each task depends on the tasks that write its inputs (among ``tasks`` and ``known``)."""
    writers = {p: t.task_id for t in [*known, *tasks] if isinstance(t, Task)
               for p in t.outputs.values()}
    for t in tasks:
        own = [writers[p] for p in t.inputs.values() if p in writers and writers[p] != t.task_id]
        t.deps = tuple(dict.fromkeys([*t.deps, *own]))


def _write_status(sdir: Path, results: list[TaskResult]) -> None:
    """Outcome of every task of a session (stable content: cached counts as ok, no timings).

    Written before the session's summary runs (its input ``status.json``).
    """
    rows = [{"task_id": r.task_id, "stage": r.stage, "unit_id": r.unit_id,
             "status": "ok" if r.status == "cached" else r.status, "error": r.error}
            for r in sorted(results, key=lambda r: r.task_id) if r.stage != "summary"]
    if sdir.is_dir():
        save_json(sdir / "status.json", rows)


# -------------------------------------------------------------------------------------------
# the run folder: its mark, its lock, what a killed run left behind
# -------------------------------------------------------------------------------------------
#: Marks a run folder (written when ``run`` first uses the folder).
MARK_FILE = Path(".meireport") / "folder.json"
#: The run folder's lock (``fcntl.flock``); holds the owner's pid.
LOCK_FILE = Path(".meireport") / "lock"
_MARK = {"format": "meireport run folder", "version": 1}
_HELD: dict[Path, list[int]] = {}  # run folder -> [lock fd, depth] of the locks this process holds


class RunFolderBusy(MeireportError):
    """Another process holds the run folder's lock (``meireport`` exits with status 4)."""

    exit_status = 4


def _mark_problem(f: Path) -> str | None:
    """What is wrong with a run folder's mark, or None."""
    try:
        mark = json.loads(f.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        return f"is not a valid run-folder mark ({type(e).__name__}); expected {json.dumps(_MARK)}"
    if not isinstance(mark, dict) or mark.get("format") != _MARK["format"]:
        return f"is not a run-folder mark; expected {json.dumps(_MARK)}"
    version = mark.get("version")
    if not isinstance(version, int) or version > _MARK["version"]:
        return (f"has format version {version!r}; this meireport reads version "
                f"{_MARK['version']} (upgrade meireport)")
    return None


def _check_writable(folder: Path, what: str, target: Path) -> None:
    if not os.access(folder, os.W_OK | os.X_OK):
        raise MeireportError(f"{what}: {folder} is not writable (permission denied); "
                             f"expected a folder this user can write to hold {target}")


def check_run_folder(run_dir: Path, what: str = "--out") -> None:
    """Check, writing nothing, that ``run`` may use ``run_dir``.

    Accepted: a folder that does not exist yet (its nearest existing parent writable), an empty
    one, or a run folder: one marked by :data:`MARK_FILE`, or made by an earlier meireport (it
    has ``.meireport/cache``, marked on first use).

    Raises
    ------
    MeireportError
        One line naming the folder and what was expected.
    """
    if run_dir.exists() and not run_dir.is_dir():
        raise MeireportError(f"{what}: {run_dir} is a file; expected a run folder")
    if not run_dir.exists():
        parent = next(p for p in run_dir.parents if p.exists())
        if not parent.is_dir():
            raise MeireportError(f"{what}: {parent} is a file; cannot make the run folder "
                                 f"{run_dir} inside it")
        _check_writable(parent, what, run_dir)
        return
    _check_writable(run_dir, what, "the run")
    mark = run_dir / MARK_FILE
    if mark.exists():
        problem = _mark_problem(mark)
        if problem:
            raise MeireportError(f"{what}: {mark} {problem}")
        return
    try:
        names = sorted(p.name for p in run_dir.iterdir())
    except OSError as e:
        raise MeireportError(f"{what}: {run_dir} cannot be listed ({e.strerror})") from None
    if names in ([], [".meireport"]) or (run_dir / ".meireport" / "cache").is_dir():
        return
    raise MeireportError(
        f"{what}: {run_dir} is not empty and is not a meireport run folder (no {MARK_FILE}); "
        "expected a new or empty folder, or a run folder made by `meireport run`")


def _lock_holder(fd: int) -> str:
    try:
        return str(int(json.loads(os.pread(fd, 256, 0))["pid"]))
    except (OSError, ValueError, KeyError, TypeError):
        return "unknown"


def _acquire(run_dir: Path, what: str) -> int:
    """Take the run folder's lock (non-blocking); returns its file descriptor."""
    f = run_dir / LOCK_FILE
    try:
        f.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(f, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise MeireportError(f"{what}: cannot write the lock file {f} ({e.strerror}); expected "
                             "a run folder this user can write") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _lock_holder(fd)
        os.close(fd)
        raise RunFolderBusy(
            f"{what}: {run_dir} is in use by another meireport process (pid {holder}, lock "
            f"{f}); wait for it to finish, or use another folder") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps({"pid": os.getpid()}).encode(), 0)
    return fd


def _remove_leftovers(run_dir: Path) -> list[str]:
    """Remove the temporary files a killed run or build left; one note line if any."""
    gone = remove_leftover_temps(run_dir)
    if not gone:
        return []
    names = ", ".join(str(p.relative_to(run_dir)) for p in gone[:3])
    more = f" and {len(gone) - 3} more" if len(gone) > 3 else ""
    text = f"removed {len(gone)} temporary file(s) left by an interrupted run: {names}{more}"
    _log.warning(text)
    return [text]


@contextmanager
def run_folder_lock(run_dir, what: str = "--out") -> Iterator[list[str]]:
    """Hold the run folder's lock for the block (re-entrant within a process).

    The first hold of a process also removes what an interrupted run left behind (no other
    process writes into the folder while the lock is held).

    Yields
    ------
    list of str
        Note lines (temporary files removed).

    Raises
    ------
    RunFolderBusy
        Another process holds the lock: one line naming its pid.
    MeireportError
        The lock file cannot be written.
    """
    key = Path(run_dir).resolve()
    if key in _HELD:
        _HELD[key][1] += 1
        try:
            yield []
        finally:
            _HELD[key][1] -= 1
        return
    fd = _acquire(key, what)
    _HELD[key] = [fd, 1]
    try:
        yield _remove_leftovers(key)
    finally:
        del _HELD[key]
        os.close(fd)  # releases the lock


@dataclass
class RunFolder:
    """A run folder opened by :func:`open_run`: checked, marked, locked, its source ready."""

    path: Path
    session_ids: list[int]
    notes: list[str] = field(default_factory=list)


def _make_folder(run_dir: Path) -> None:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise MeireportError(f"--out: cannot make the run folder {run_dir} ({e.strerror}); "
                             "expected a folder this user can write") from None


@contextmanager
def open_run(params: Params, out=None, progress: bool = True) -> Iterator[RunFolder]:
    """Check the output location and the source, then open the run folder for writing.

    Nothing is written before the folder is known to be usable (:func:`check_run_folder`) and,
    for a cache or NWB source, the source has passed its checks; a simulated source is written
    (into the run folder by default) once the folder is marked and locked. ``params.json`` is
    written last. The lock is held until the block ends.

    Parameters
    ----------
    params : Params
        Validated params.
    out : path, optional
        Run folder (default ``runs/<params.name>``).
    progress : bool
        Progress bar while a simulated source is written.
    """
    from meireport.sources.from_params import ensure_source

    run_dir = Path(out if out is not None else Path("runs") / params.name).expanduser().resolve()
    check_run_folder(run_dir)
    d = params.to_json_dict()
    source_ids = None
    if d["source"]["kind"] != "simulated":  # reads only: checked before anything is written
        source_ids = ensure_source(d["source"], run_dir, progress=progress, extract=d["extract"])
    _make_folder(run_dir)
    with run_folder_lock(run_dir) as notes:
        if not (run_dir / MARK_FILE).exists():
            save_json(run_dir / MARK_FILE, _MARK | {"created_by": meireport.__version__})
        if source_ids is None:
            source_ids = ensure_source(d["source"], run_dir, progress=progress,
                                       extract=d["extract"])
        save_json(run_dir / "params.json", d)
        yield RunFolder(run_dir, list(source_ids), list(notes))


#: The shared core's task (``model.kind: shared``): once per run, after every selection.
SHARED_TASK_ID = f"{RUN_LEVEL_ID}/-/shared"


def plan_shared_task(params: Params, run_dir: Path, selected: dict) -> CallTask:
    """The shared core's fit (:func:`meireport.report.stages.shared_task`) as a call task.

    It pools the units of every session whose selection succeeded (``selected``: session id
    -> its reported neurons, None for a failed selection); each neuron's train task then takes
    its readout.
    """
    d = params.to_json_dict()
    ok = {int(s): [int(u) for u in units] for s, units in selected.items() if units is not None}
    return CallTask(SHARED_TASK_ID, "meireport.report.stages:shared_task",
                    {"run_dir": str(run_dir), "session_ids": sorted(ok), "model": d["model"],
                     "train": d["train"], "include": {str(s): u for s, u in ok.items()},
                     "device": params.run.device},
                    deps=tuple(f"{s}/-/select" for s in selected), stage="shared")


#: The batch of a shared run's MEIs: once per run, after the shared core's fit.
SHARED_MEI_TASK_ID = f"{RUN_LEVEL_ID}/-/shared_mei"


def plan_shared_mei_task(params: Params, run_dir: Path, selected: dict) -> CallTask:
    """Every reported neuron's MEI on the shared core, in one batch per session, as a call task.

    :func:`meireport.report.stages.shared_meis_task`; each neuron's MEI task then reads its own
    MEI from the batch (``selected``: session id -> its reported neurons, None for a failed
    selection).
    """
    d = params.to_json_dict()
    ok = {str(int(s)): [int(u) for u in units] for s, units in selected.items()
          if units is not None}
    return CallTask(SHARED_MEI_TASK_ID, "meireport.report.stages:shared_meis_task",
                    {"run_dir": str(run_dir), "include": ok, "mei": d["mei"],
                     "device": params.run.device},
                    deps=(SHARED_TASK_ID,), stage="shared_mei")


def plan_summary_task(params: Params, run_dir: Path, sid: int,
                      session_tasks: list[Task]) -> Task:
    """The session's summary: after every other task of the session, reading what they wrote.

    ``session_tasks`` are the session's extract, select and neuron tasks: the summary depends
    on all of them (it writes their outcomes into ``status.json`` first) and reads the neuron
    outputs that exist when it runs.
    """
    st = next(s for s in available_stages() if s.level == "summary")
    t = _make_task(params, run_dir, st, sid, None)
    t.deps = tuple(x.task_id for x in session_tasks)
    t.optional_inputs = {f"{n.unit_id}:{name}": path for n in session_tasks
                         if n.unit_id is not None for name, path in n.outputs.items()}
    return t


def plan_across_task(params: Params, run_dir: Path, session_ids: list[int],
                     summaries: list[Task]) -> Task:
    """The run-level summary across sessions and areas: after every session's summary.

    It reads each session's ``selection.csv`` and ``summary.csv`` (those that exist when it
    runs: a session whose selection failed contributes nothing).
    """
    st = next(s for s in available_stages() if s.level == "across")
    t = _make_task(params, run_dir, st, RUN_LEVEL_ID, None)
    t.parameters["session_ids_json"] = json.dumps([int(x) for x in session_ids])
    t.deps = tuple(x.task_id for x in summaries)
    t.optional_inputs = {f"{sid}:{name}": str(run_dir / "results" / str(sid) / name)
                         for sid in session_ids for name in ("selection.csv", "summary.csv")}
    return t


#: The run-level stages of a shared run (call tasks that unlock the neurons, like a select).
_RUN_STAGES = ("shared", "shared_mei")


def _priority(task) -> int:
    """Which ready task starts first: lower first, then in the order they became ready.

    Session stages and the shared core (they unlock the neurons), then the user's neurons and
    pages, then the data-limit study's pieces, which fill every worker the neurons leave free,
    in the order of
    :func:`meireport.report.limits.piece_order` (unlocking pieces, then the costliest).
    """
    if isinstance(task, CallTask) and task.stage not in _RUN_STAGES:  # the study's pieces
        from meireport.report.limits import piece_order

        return 2 + piece_order(task)
    return 0 if task.stage in ("extract", "select", *_RUN_STAGES) else 1


@contextmanager
def _dask_client(params: Params, scheduler: str | None, run_dir: Path):
    """A Dask client: of ``scheduler`` (an address), of ``run.cluster`` (started), or None."""
    if scheduler:
        from distributed import Client

        try:
            client = Client(scheduler, timeout="30s")
        except OSError as e:
            raise MeireportError(f"--scheduler: cannot reach the Dask scheduler at {scheduler} "
                                 f"({e})") from None
        try:
            yield client
        finally:
            client.close()
    elif params.run.cluster is not None:
        from meireport.report.cluster import cluster_client

        logs = run_dir / ".meireport" / "cluster-jobs"  # the batch jobs' logs
        with cluster_client(params.run.cluster, log_directory=logs) as client:
            yield client
    else:
        yield None


def execute_run(folder: RunFolder, params: Params, workers: int | None = None,
                scheduler: str | None = None, neurons: list[int] | None = None,
                progress: bool = True, strict: bool = False) -> RunResult:
    """Execute the task graph of an opened run folder (:func:`open_run`); writes ``run.json``.

    Every task starts as soon as the tasks that write its inputs are done
    (:func:`meireport.report.engine.run_graph`): a session's neuron tasks as soon as its
    selection is done, each neuron's MEI as soon as its model is trained, the data-limit study's
    pieces beside them, a session's summary once all its tasks are done, the run-level summary
    across sessions and areas once every session's summary is. With ``strict``, no task is
    started after the first failed one (the tasks run so far are recorded).
    """
    from functools import partial

    from tqdm.auto import tqdm

    run_dir, session_ids = folder.path, folder.session_ids
    result = RunResult(run_dir, notes=list(folder.notes))
    by_session: dict[int, list[Task]] = {}
    summaries: list[Task] = []
    initial = plan_session_tasks(params, run_dir, session_ids)
    _link(initial)
    for t in initial:
        by_session.setdefault(t.session_id, []).append(t)
    initial += plan_run_tasks(params, run_dir)
    bar = tqdm(total=len(initial), desc="tasks", unit="task", disable=not progress)

    shared = params.model.kind == "shared"
    selected: dict[int, list[int] | None] = {}  # session -> its neurons (None: select failed)

    def expand(res: TaskResult) -> list:
        if res.stage == "shared":
            # fine-tuned neurons each have a model of their own: no batch on the shared core
            batch = None if params.model.finetune else plan_shared_mei_task(
                params, run_dir, selected)
            bar.total += batch is not None
            ends = [t for sid in session_ids for t in plan_session_end(sid, res, batch)]
            return ([batch] if batch is not None else []) + ends
        if res.stage != "select":
            return []
        sid = res.session_id
        sel = run_dir / "results" / str(sid) / "selection.csv"
        ok = res.status in ("ok", "cached") and sel.is_file()
        selected[sid] = choose_neurons(params, load_csv(sel), neurons) if ok else None
        if not shared:
            return plan_session_end(sid)
        if len(selected) < len(session_ids):
            return []
        bar.total += 1  # every session selected: the shared core, then every session's neurons
        return [plan_shared_task(params, run_dir, selected)]

    def plan_session_end(sid: int, shared_res: TaskResult | None = None,
                         batch: CallTask | None = None) -> list:
        new: list[Task] = []
        if selected[sid] is not None:
            new = plan_neuron_tasks(params, run_dir, sid, selected[sid])
            _link(new, by_session[sid])
            for t in new:
                if shared_res is not None and t.stage == "train":  # reads the unit's readout
                    t.inputs["shared:model.pt"] = str(run_dir / "results" / "shared" / "model.pt")
                    t.deps = (*t.deps, shared_res.task_id)
                if batch is not None and t.stage == "mei":  # reads its MEI from the batch
                    t.deps = (*t.deps, batch.task_id)
        by_session[sid] += new
        summary = plan_summary_task(params, run_dir, sid, by_session[sid])
        chains = [chain([t for t in new if t.unit_id == u])
                  for u in dict.fromkeys(t.unit_id for t in new)]
        own = {t.task_id: c.task_id for c in chains for t in c.tasks}
        summary.deps = tuple(dict.fromkeys(own.get(d, d) for d in summary.deps))
        summaries.append(summary)
        across = []
        if len(summaries) == len(session_ids):  # every session's summary is planned
            across = [plan_across_task(params, run_dir, session_ids, summaries)]
        bar.total += len(new) + 1 + len(across)
        return [*chains, summary, *across]

    def on_result(res) -> None:
        for r in _flatten([res]):
            for line in r.notes:
                _note(result.notes, line)
            result.results.append(r)
            bar.set_postfix_str(f"{r.task_id} {r.status}")
            bar.update()

    def stop() -> bool:
        result.stopped = result.stopped or (strict and bool(result.failed))
        return result.stopped

    try:
        with _dask_client(params, scheduler, run_dir) as client:
            run_graph(initial, partial(run_task, str(run_dir)), expand=expand,
                      workers=workers or params.run.workers, client=client,
                      priority=_priority, on_result=on_result, stop=stop)
    finally:
        bar.close()
    save_json(run_dir / "run.json", {
        "params": params.to_json_dict(), "session_ids": session_ids,
        "meireport_version": meireport.__version__, "strict_stopped": result.stopped,
        "run_dir": str(run_dir),
        "results": [{k: v for k, v in asdict(r).items() if k != "notes"}
                    for r in result.results],
    })
    return result


def run(
    params: Params | str | os.PathLike,
    out: str | os.PathLike | None = None,
    workers: int | None = None,
    scheduler: str | None = None,
    neurons: list[int] | None = None,
    progress: bool = True,
    strict: bool = False,
) -> RunResult:
    """Execute the report's notebooks for every session and chosen neuron.

    Parameters
    ----------
    params : Params or path
        Validated params or a params YAML path.
    out : path, optional
        Run folder (default ``runs/<params.name>``): new, empty, or a run folder.
    workers : int, optional
        Local worker processes (default ``params.run.workers``).
    scheduler : str, optional
        Address of an existing Dask distributed scheduler (overrides ``workers``).
    neurons : list of int, optional
        Explicit unit ids for the per-neuron pages (overrides ``params.neurons``).
    progress : bool
        Show a tqdm progress bar.
    strict : bool
        Stop at the first failed task (default: record it and go on).

    Returns
    -------
    RunResult

    Raises
    ------
    MeireportError
        Bad input, before anything is written: the output location (not a run folder, not
        writable) or the source.
    RunFolderBusy
        Another process is writing into the run folder.
    """
    if not isinstance(params, Params):
        params = load_params(params)
    with open_run(params, out, progress=progress) as folder:
        return execute_run(folder, params, workers=workers, scheduler=scheduler,
                           neurons=neurons, progress=progress, strict=strict)


def clean_run(run_dir) -> None:
    """Delete a run folder's cache records (forces re-execution); artifacts are kept."""
    shutil.rmtree(Path(run_dir) / ".meireport" / "cache", ignore_errors=True)


_RESULT_KEYS = {"stage": str, "session_id": int, "status": str}


def _run_json_problem(data) -> str | None:
    """What is wrong with a ``run.json``'s structure, or None."""
    if not isinstance(data, dict):
        return f"expected an object, got {type(data).__name__}"
    for key, kind in (("params", dict), ("session_ids", list), ("results", list)):
        if not isinstance(data.get(key), kind):
            return f"expected {key!r} to be a{'n object' if kind is dict else ' list'}"
    stages = {s.name for s in STAGES} | set(_RUN_STAGES)
    for i, r in enumerate(data["results"]):
        if not isinstance(r, dict) or any(not isinstance(r.get(k), t)
                                          for k, t in _RESULT_KEYS.items()):
            return f"results[{i}]: expected an object with stage, session_id, status"
        if r["stage"] not in stages or not isinstance(r.get("unit_id"), int | None) \
                or not isinstance(r.get("notebook"), str | None):
            return f"results[{i}]: unknown stage {r['stage']!r} or bad unit_id / notebook"
    if not all(isinstance(s, int) for s in data["session_ids"]):
        return "expected 'session_ids' to be a list of integers"
    return None


def _rebase(path: str, recorded: str | None, run_dir: Path) -> str:
    """A notebook path of ``run.json`` in the run folder where it is now (it can be moved)."""
    p = Path(path)
    if not p.is_absolute():
        return str(run_dir / p)
    if recorded and p.is_relative_to(recorded):
        return str(run_dir / p.relative_to(recorded))
    return path


def load_run(run_dir) -> dict:
    """The ``run.json`` of a finished run, its notebook paths inside the folder where it is now.

    Raises
    ------
    MeireportError
        One line naming the folder or the file: it does not exist, is not a folder, has no
        ``run.json``, or its ``run.json`` is not valid JSON or not a run record.
    """
    d = Path(run_dir).expanduser().resolve()
    if not d.exists():
        raise MeireportError(f"run_dir: {d} does not exist; expected a run folder made by "
                             "`meireport run`")
    if not d.is_dir():
        raise MeireportError(f"run_dir: {d} is a file; expected a run folder made by "
                             "`meireport run`")
    f = d / "run.json"
    if not f.is_file():
        raise MeireportError(f"run_dir: {d} has no run.json; run `meireport run` first")
    try:
        data = json.loads(f.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise MeireportError(f"run_dir: {f} is not valid JSON ({e}); rerun `meireport run` "
                             "to write it again") from None
    problem = _run_json_problem(data)
    if problem:
        raise MeireportError(f"run_dir: {f} is not a run record ({problem}); rerun "
                             "`meireport run` to write it again")
    recorded = data.get("run_dir") if isinstance(data.get("run_dir"), str) else None
    for r in data["results"]:
        if r.get("notebook"):
            r["notebook"] = _rebase(r["notebook"], recorded, d)
    return data
