"""The run engine: a graph of tasks, each started as soon as the tasks it depends on are done.

Two kinds of task: a notebook execution (:class:`meireport.report.run.Task`) and a Python call
(:class:`CallTask`: ``module:function`` with JSON-able keyword arguments, e.g. one piece of the
data-limit study). Both name the tasks they depend on (``deps``, task ids).
"""

from __future__ import annotations

import importlib
import time
import traceback
from dataclasses import dataclass, field

__all__ = ["CACHED", "CallTask", "CallResult", "execute_call", "run_graph", "GraphError"]


#: What a call task's function returns when it found its result already computed.
CACHED = "cached"


@dataclass
class CallTask:
    """A Python call of the run's graph.

    Attributes
    ----------
    task_id : str
        Unique within the run, e.g. ``limits/n118/unit/simple/0``.
    func : str
        ``"package.module:function"``; called as ``function(**kwargs)`` in a worker. It
        returns :data:`CACHED` when it found its result already computed (the task is then
        ``cached``, not ``ok``).
    kwargs : dict
        JSON-able keyword arguments.
    deps : tuple of str
        Task ids that must have finished ``ok`` (or ``cached``) before this one starts.
    stage, session_id, unit_id
        What the task belongs to (``run.json`` rows; the study: stage ``limits``, session -1).

    Examples
    --------
    >>> t = CallTask("demo", "json:dumps", {"obj": [1, 2]})
    >>> execute_call(t).status
    'ok'
    """

    task_id: str
    func: str
    kwargs: dict = field(default_factory=dict)
    deps: tuple[str, ...] = ()
    stage: str = "limits"
    session_id: int = -1
    unit_id: int | None = None


@dataclass
class CallResult:
    """What a :class:`CallTask` did (``status`` ok or failed)."""

    task_id: str
    status: str
    seconds: float
    error: str | None = None
    traceback: str | None = None


def execute_call(task: CallTask) -> CallResult:
    """Import and call ``task.func(**task.kwargs)``; an exception is recorded, not raised."""
    t0 = time.perf_counter()
    try:
        module, _, name = task.func.partition(":")
        out = getattr(importlib.import_module(module), name)(**task.kwargs)
    except Exception as exc:  # one failing piece must not stop the others
        text = str(exc).strip().splitlines()
        return CallResult(task.task_id, "failed", time.perf_counter() - t0,
                          f"{type(exc).__name__}: {text[-1] if text else ''}",
                          traceback.format_exc())
    status = "cached" if isinstance(out, str) and out == CACHED else "ok"
    return CallResult(task.task_id, status, time.perf_counter() - t0)


# -------------------------------------------------------------------------------------------
# the scheduler
# -------------------------------------------------------------------------------------------
class GraphError(ValueError):
    """A task names a dependency that is not in the graph, or the graph has a cycle."""


def run_graph(tasks, work, expand=None, workers: int = 1, client=None, priority=None,
              on_result=None, stop=None) -> dict:
    """Run a task graph: each task starts as soon as every task it depends on has finished.

    Parameters
    ----------
    tasks : iterable
        The tasks known at the start; each has ``task_id`` and ``deps`` (task ids).
    work : callable
        ``work(task, dep_results) -> result`` (picklable: it runs in worker processes); the
        result has ``task_id`` and ``status``. It runs whatever the deps' statuses are
        (``dep_results`` tells it), so that it can record a task skipped for a failed input.
    expand : callable, optional
        ``expand(result) -> list of new tasks``, called in this process as each result arrives
        (e.g. a session's selection done -> its neurons' tasks); new tasks may depend on any
        task of the graph.
    workers : int
        Local worker processes; 1 runs every task here, one after the other.
    client : distributed.Client, optional
        Run on Dask instead: every task is submitted as soon as it is known, with its
        dependencies' futures as arguments, so that the cluster's scheduler orders them.
    priority : callable, optional
        ``priority(task) -> number``: among ready tasks the lowest starts first (then the
        order they became ready).
    on_result : callable, optional
        Called here with each result as it arrives.
    stop : callable, optional
        ``stop() -> bool``, checked after each result: once true, no further task is started
        (those already running finish; on Dask, those not started are cancelled).

    Returns
    -------
    dict
        task id -> result, for every task that ran.

    Raises
    ------
    GraphError
        A dependency that no task provides (checked once nothing is left to expand), or a cycle.

    Examples
    --------
    >>> from types import SimpleNamespace as T
    >>> def work(t, deps):
    ...     return T(task_id=t.task_id, status="ok", after=[d.task_id for d in deps])
    >>> g = [T(task_id="b", deps=("a",)), T(task_id="a", deps=())]
    >>> out = run_graph(g, work)
    >>> list(out), out["b"].after
    (['a', 'b'], ['a'])
    """
    priority = priority or (lambda t: 0)
    on_result = on_result or (lambda r: None)
    expand = expand or (lambda r: [])
    stop = stop or (lambda: False)
    if client is not None:
        return _run_dask(list(tasks), work, expand, client, priority, on_result, stop)
    return _run_local(list(tasks), work, expand, workers, priority, on_result, stop)


def _check_graph(known: dict, done: dict) -> None:
    """Every dependency exists and nothing waits on itself (called when the graph is stuck)."""
    for t in known.values():
        for d in t.deps:
            if d not in known and d not in done:
                raise GraphError(f"task {t.task_id} depends on {d}, which no task provides")
    raise GraphError("the task graph has a cycle among: "
                     + ", ".join(sorted(t for t in known if t not in done)))


def _run_local(tasks, work, expand, workers, priority, on_result, stop) -> dict:
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    known = {t.task_id: t for t in tasks}
    waiting = dict(known)
    done: dict = {}
    seq = iter(range(10**12))
    ready: list = []  # (priority, order, task id)
    running: dict = {}  # future -> task id
    pool = ProcessPoolExecutor(max_workers=workers) if workers > 1 else None

    def release() -> None:
        for tid in [tid for tid, t in waiting.items() if all(d in done for d in t.deps)]:
            ready.append((priority(waiting[tid]), next(seq), tid))
            del waiting[tid]
        ready.sort()

    def finish(res) -> None:
        done[res.task_id] = res
        on_result(res)
        for t in expand(res):
            if t.task_id in known:
                raise GraphError(f"task {t.task_id} is in the graph twice")
            known[t.task_id] = waiting[t.task_id] = t

    try:
        release()
        while ready or running:
            while ready and not stop() and (pool is None or len(running) < workers):
                tid = ready.pop(0)[2]
                t, deps = known[tid], [done[d] for d in known[tid].deps]
                if pool is None:
                    finish(work(t, deps))
                    release()
                else:
                    running[pool.submit(work, t, deps)] = tid
            if stop():
                ready.clear()
            if running:
                finished, _ = wait(list(running), return_when=FIRST_COMPLETED)
                for fut in finished:
                    del running[fut]
                    finish(fut.result())
            release()
        if waiting and not stop():
            _check_graph(known, done)
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    return done


def _after(work, task, *deps):
    """What a Dask worker runs: ``work`` once the dependency futures' results are here."""
    return work(task, list(deps))


def _run_dask(tasks, work, expand, client, priority, on_result, stop) -> dict:
    from distributed import as_completed

    known: dict = {}
    futures: dict = {}
    pending = list(tasks)
    done: dict = {}
    queue = as_completed()

    def submit_ready() -> None:
        progress = True
        while progress:  # a task is submitted once its dependencies have futures
            progress = False
            for t in list(pending):
                if all(d in futures for d in t.deps):
                    fut = client.submit(_after, work, t, *[futures[d] for d in t.deps],
                                        pure=False, priority=-priority(t),
                                        key=f"meireport-{t.task_id}-{id(t)}")
                    futures[t.task_id] = fut
                    known[t.task_id] = t
                    queue.add(fut)
                    pending.remove(t)
                    progress = True

    submit_ready()
    for fut in queue:
        res = fut.result()
        done[res.task_id] = res
        on_result(res)
        if stop():
            for f in futures.values():
                if not f.done():
                    f.cancel()
            break
        for t in expand(res):
            if t.task_id in known or any(p.task_id == t.task_id for p in pending):
                raise GraphError(f"task {t.task_id} is in the graph twice")
            pending.append(t)
        submit_ready()
    if pending and not stop():
        _check_graph({t.task_id: t for t in pending} | known, done | futures)
    return done
