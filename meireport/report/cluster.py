"""The report's tasks on a batch cluster: Dask workers started as batch jobs (dask-jobqueue).

:func:`cluster_client` starts a dask-jobqueue cluster of the kind ``run.cluster`` names
(SLURM, PBS, SGE, LSF, HTCondor, Moab, OAR), submits ``run.cluster.jobs`` jobs, waits for the
first Dask worker and yields a :class:`distributed.Client`; the run engine submits its tasks on
it. Leaving the ``with`` block closes the client and the cluster, which cancels the jobs.

Each job runs ``cores`` Dask worker processes of one thread each (``processes=cores``): a task
(a notebook, or a Python call such as one piece of the data-limit study) uses one core, so a job
of ``cores`` cores runs ``cores`` tasks at once. Processes rather than threads, because a Python
call runs inside the worker: torch's thread settings are per process and the GIL would serialise
threads, and a task that crashes its process (out of memory, a segfault) takes only itself down.
The local pool runs tasks the same way (one process each), so a cluster run computes the same
numbers as a local one.

Every failure to start is one line, a :class:`~meireport.errors.MeireportError`: the batch
system's submit command is missing, a job is refused (``sbatch: error: invalid partition``), or
no worker connects within ``run.cluster.timeout_s`` (the message names the jobs and where their
logs are).
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from meireport.errors import MeireportError
from meireport.report.params import ClusterParams

if TYPE_CHECKING:
    from distributed import Client

__all__ = ["cluster_client", "cluster_options", "CLUSTER_CLASSES"]

_log = logging.getLogger(__name__)

#: dask-jobqueue's cluster class for each ``run.cluster.kind``.
CLUSTER_CLASSES = {
    "slurm": "SLURMCluster",
    "pbs": "PBSCluster",
    "sge": "SGECluster",
    "lsf": "LSFCluster",
    "htcondor": "HTCondorCluster",
    "moab": "MoabCluster",
    "oar": "OARCluster",
}

#: The command that lists a kind's jobs (named in the error when no worker starts).
_STATUS_COMMANDS = {
    "slurm": "squeue", "pbs": "qstat", "sge": "qstat", "lsf": "bjobs", "htcondor": "condor_q",
    "moab": "showq", "oar": "oarstat",
}

#: Kinds whose jobs are charged to a ``project`` (dask-jobqueue's name) rather than an account.
_PROJECT_KINDS = {"sge", "lsf", "oar"}

#: SLURM job states after which the job no longer runs (squeue's long names).
_SLURM_ENDED = {
    "BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL", "OUT_OF_MEMORY",
    "PREEMPTED", "TIMEOUT", "SPECIAL_EXIT", "REVOKED",
}

_CLOSE_TIMEOUT_S = 30
_POLL_S = 5.0


def _where(cluster: ClusterParams, more: str = "") -> str:
    """``slurm (queue 'debug'; job 3 PENDING)``: the batch system, queue and ``more``."""
    inside = "; ".join(x for x in (f"queue {cluster.queue!r}" if cluster.queue else "", more)
                       if x)
    return f"{cluster.kind} ({inside})" if inside else cluster.kind


def _last_line(text: str) -> str:
    """The last non-empty line of ``text`` (a command's error), stripped."""
    lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def _submit_error(exc: BaseException) -> str:
    """What a failed job submission said: the submit command's last stderr line, if any."""
    text = str(exc)
    _, sep, stderr = text.partition("stderr:")
    return _last_line(stderr if sep and stderr.strip() else text) or type(exc).__name__


def _lsf_walltime(walltime: str) -> str:
    """LSF's ``-W [hours:]minutes`` from ``HH:MM:SS`` (seconds round up to a minute).

    Examples
    --------
    >>> _lsf_walltime("01:30:00"), _lsf_walltime("00:00:20"), _lsf_walltime("2:05")
    ('01:30', '00:01', '2:05')
    """
    parts = walltime.split(":")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        return walltime
    h, m, s = (int(p) for p in parts)
    minutes = h * 60 + m + math.ceil(s / 60)
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def cluster_options(cluster: ClusterParams, log_directory: str | os.PathLike | None = None
                    ) -> dict[str, Any]:
    """Keyword arguments of the dask-jobqueue cluster class for ``cluster``.

    Settings left unset (``queue``, ``account``) are not passed, so a site's dask-jobqueue
    configuration (``~/.config/dask/jobqueue.yaml``) still applies to them.

    Parameters
    ----------
    cluster : ClusterParams
        The ``run.cluster`` section.
    log_directory : path, optional
        Where the jobs write their logs (passed on as is).

    Returns
    -------
    dict
        ``cores``, ``processes``, ``memory``, ``python``, ... for the class of
        :data:`CLUSTER_CLASSES`.

    Raises
    ------
    MeireportError
        One line naming the field: the memory is not a size, or a field the batch system has no
        equivalent for (an HTCondor queue or account).

    Examples
    --------
    >>> o = cluster_options(ClusterParams(kind="slurm", cores=4, memory="8GB", queue="debug"))
    >>> o["cores"], o["processes"], o["memory"], o["queue"]
    (4, 4, '8GB', 'debug')
    >>> cluster_options(ClusterParams(kind="sge", account="lab"))["project"]
    'lab'
    """
    import dask
    from dask.utils import parse_bytes

    try:
        memory_bytes = parse_bytes(cluster.memory)
    except (ValueError, TypeError):
        memory_bytes = 0
    if memory_bytes <= 0:
        raise MeireportError(
            f"run.cluster.memory: expected a size such as '4GB', got {cluster.memory!r}")
    opts: dict[str, Any] = {
        "cores": cluster.cores,
        # one single-threaded worker process per core: each task uses one core (module docs)
        "processes": cluster.cores,
        "memory": cluster.memory,
        "python": sys.executable,
        "job_extra_directives": list(cluster.job_extra),
        # a random dashboard port (two runs on one login node do not collide), unless the
        # site's dask-jobqueue configuration says otherwise
        "scheduler_options": {"dashboard_address": ":0", **(dask.config.get(
            f"jobqueue.{cluster.kind}.scheduler-options", None) or {})},
    }
    if cluster.local_directory is not None:
        opts["local_directory"] = str(Path(cluster.local_directory).expanduser())
    if log_directory is not None:
        opts["log_directory"] = str(log_directory)
    if cluster.kind == "htcondor":
        for name in ("queue", "account"):
            if getattr(cluster, name) is not None:
                raise MeireportError(
                    f"run.cluster.{name}: htcondor has no {name}s; give the job's requirements "
                    f"in run.cluster.job_extra, got {getattr(cluster, name)!r}")
        # HTCondor jobs must ask for disk; the params have no field for it
        opts["disk"] = dask.config.get("jobqueue.htcondor.disk", None) or cluster.memory
        return opts  # HTCondor has no walltime directive in dask-jobqueue
    if cluster.queue is not None:
        opts["queue"] = cluster.queue
    if cluster.account is not None:
        opts["project" if cluster.kind in _PROJECT_KINDS else "account"] = cluster.account
    opts["walltime"] = _lsf_walltime(cluster.walltime) if cluster.kind == "lsf" \
        else cluster.walltime
    return opts


def _cluster_class(kind: str) -> type:
    """dask-jobqueue's class for ``kind``, after checking that its submit command is on PATH."""
    try:
        import dask_jobqueue
    except ImportError:
        raise MeireportError(
            "run.cluster: dask-jobqueue is not installed; install it with "
            "`pip install dask-jobqueue` (or `pip install meireport`)") from None
    cls = getattr(dask_jobqueue, CLUSTER_CLASSES[kind])
    for role in ("submit_command", "cancel_command"):
        command = (getattr(cls.job_cls, role, None) or "").split()
        if command and shutil.which(command[0]) is None:
            raise MeireportError(
                f"run.cluster.kind: {kind}: {command[0]} not found on PATH; run the report on "
                f"a {kind} login node (or choose the batch system it has)")
    return cls


def _job_ids(cluster: Any) -> list[str]:
    """The batch job ids of a dask-jobqueue cluster's submitted jobs."""
    return [str(j.job_id) for j in list(getattr(cluster, "workers", {}).values())
            if getattr(j, "job_id", None)]


def _slurm_states(job_ids: list[str]) -> dict[str, str] | None:
    """``{job id: 'PENDING (Resources)'}`` from squeue, or None when squeue cannot tell."""
    if not job_ids or shutil.which("squeue") is None:
        return None
    try:
        out = subprocess.run(
            ["squeue", "-h", "-t", "all", "-o", "%i|%T|%r", "-j", ",".join(job_ids)],
            capture_output=True, text=True, timeout=15, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    states = {}
    for line in out.stdout.splitlines():
        jid, _, rest = line.strip().partition("|")
        state, _, reason = rest.partition("|")
        if jid:
            states[jid] = state + (f" ({reason})" if reason and reason != "None" else "")
    return states


def _ended(states: dict[str, str] | None, job_ids: list[str]) -> bool:
    """Whether squeue says every job has ended (jobs it no longer lists have ended too)."""
    if not states or not job_ids:
        return False
    return all(states.get(j, "COMPLETED").split(" ")[0] in _SLURM_ENDED for j in job_ids)


def _no_worker_message(cluster: ClusterParams, job_ids: list[str], log_dir: Path,
                       states: dict[str, str] | None, ended: bool) -> str:
    """The one line for "no worker": the jobs (with their states, where known), the logs."""
    named = [f"{j} {states.get(j, 'ended')}" if states else j for j in job_ids]
    jobs = f"job{'s' if len(job_ids) != 1 else ''} {', '.join(named)}" if job_ids else "no job"
    if ended:
        return (f"run.cluster: no Dask worker started on {_where(cluster)}: {jobs} ended "
                f"before a worker connected; see the job logs in {log_dir}")
    return (f"run.cluster: no Dask worker started within {cluster.timeout_s} s on "
            f"{_where(cluster, jobs)}; check {_STATUS_COMMANDS[cluster.kind]} / the job logs "
            f"in {log_dir}")


def _wait_for_worker(client: Client, cluster: ClusterParams, jobqueue: Any, deadline: float,
                     log_dir: Path) -> None:
    """Wait until one worker is up, at most until ``deadline``; a SLURM job that ends stops it."""
    from distributed import TimeoutError as DaskTimeout

    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        try:
            client.wait_for_workers(1, timeout=min(_POLL_S, left))
            return
        except (DaskTimeout, TimeoutError):
            pass
        if cluster.kind == "slurm":
            ids = _job_ids(jobqueue)
            states = _slurm_states(ids)
            if _ended(states, ids):
                raise MeireportError(_no_worker_message(cluster, ids, log_dir, states, True))
    ids = _job_ids(jobqueue)
    states = _slurm_states(ids) if cluster.kind == "slurm" else None
    raise MeireportError(_no_worker_message(cluster, ids, log_dir, states, False))


def _mark_unsubmitted_failed(jobqueue: Any) -> None:
    """Mark the jobs whose submission failed as failed, so that the cluster can close.

    A job whose submit command failed stays ``created``; closing the cluster asserts that
    every job it made has started or failed (distributed's SpecCluster).
    """
    from distributed.core import Status

    jobs = {id(j): j for j in list(getattr(jobqueue, "_created", ()))}
    jobs.update({id(j): j for j in list(getattr(jobqueue, "workers", {}).values())})
    for job in jobs.values():
        if getattr(job, "status", None) == Status.created:
            job.status = Status.failed


def _close(client: Client | None, jobqueue: Any) -> None:
    """Close the client and the cluster (which cancels its jobs), bounded in time."""
    if client is not None:
        try:
            client.close(timeout=_CLOSE_TIMEOUT_S)
        except Exception as exc:  # closing must not hide what happened in the block
            _log.warning("run.cluster: closing the Dask client failed: %s", _last_line(exc))
    if jobqueue is not None:
        try:
            jobqueue.close(timeout=_CLOSE_TIMEOUT_S)
        except Exception as exc:
            ids = ", ".join(_job_ids(jobqueue)) or "none"
            _log.warning("run.cluster: closing the cluster failed (%s); cancel its jobs (%s) by "
                         "hand", _last_line(exc), ids)


@contextmanager
def cluster_client(cluster: ClusterParams, log_directory: str | os.PathLike | None = None
                   ) -> Iterator[Client]:
    """Start Dask workers as batch jobs and yield a client of their scheduler.

    The scheduler runs in this process; ``cluster.jobs`` jobs are submitted at once, each
    running ``cluster.cores`` single-threaded worker processes with the Python of this process
    (``sys.executable``), so the job's nodes must see the same environment (a shared
    filesystem). The block starts as soon as one worker is up; the others join as their jobs
    start.

    Parameters
    ----------
    cluster : ClusterParams
        The ``run.cluster`` section: batch system, queue, account, cores, memory and walltime
        per job, number of jobs, extra job directives, the workers' scratch folder and how long
        to wait for the first worker.
    log_directory : path, optional
        Where the jobs write their stdout / stderr (created; it must be on a filesystem the
        nodes share). Default: ``dask-jobs`` in the current folder.

    Yields
    ------
    distributed.Client
        Connected to the cluster's scheduler, with at least one worker.

    Raises
    ------
    MeireportError
        One line: dask-jobqueue is missing, the batch system's submit command is not on PATH,
        a field is bad, a job is refused (the submit command's error), or no worker started
        within ``cluster.timeout_s`` (naming the jobs, their state where the batch system
        tells it, and the log folder). Nothing is left running: the jobs submitted so far are
        cancelled.

    Examples
    --------
    >>> from meireport.report.params import ClusterParams
    >>> params = ClusterParams(kind="slurm", queue="debug", jobs=2, cores=4, memory="8GB")
    >>> with cluster_client(params) as client:  # doctest: +SKIP
    ...     client.submit(sum, [1, 2], pure=False).result()
    3
    """
    deadline = time.monotonic() + cluster.timeout_s
    cls = _cluster_class(cluster.kind)
    log_dir = Path(log_directory if log_directory is not None else Path.cwd() / "dask-jobs")
    log_dir = log_dir.expanduser().absolute()
    try:
        log_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise MeireportError(f"run.cluster: cannot create the job log folder {log_dir} "
                             f"({e.strerror or e})") from None
    opts = cluster_options(cluster, log_dir)

    from distributed import Client

    jobqueue = client = None
    try:
        try:
            jobqueue = cls(**opts)
        except MeireportError:
            raise
        except Exception as exc:
            raise MeireportError(f"run.cluster: could not set up the {cluster.kind} cluster: "
                                 f"{_last_line(exc)}") from None
        _log.info("run.cluster: %s scheduler at %s (dashboard %s); submitting %d job(s)",
                  cluster.kind, jobqueue.scheduler_address, jobqueue.dashboard_link,
                  cluster.jobs)
        _submit(jobqueue, cluster, deadline, log_dir)
        client = Client(jobqueue, timeout=max(5.0, deadline - time.monotonic()))
        _wait_for_worker(client, cluster, jobqueue, deadline, log_dir)
    except BaseException:
        _close(client, jobqueue)
        raise
    try:
        yield client
    finally:
        _close(client, jobqueue)


def _submit(jobqueue: Any, cluster: ClusterParams, deadline: float, log_dir: Path) -> None:
    """Submit ``cluster.jobs`` jobs and wait for the submit commands (not for the workers).

    ``scale`` only schedules the submission; awaiting the cluster's state correction here
    raises the submit command's error instead of leaving it in a background task.
    """
    while len(jobqueue.worker_spec) < cluster.jobs:
        jobqueue.worker_spec.update(jobqueue.new_worker_spec())
    left = max(1.0, deadline - time.monotonic())
    try:
        jobqueue.sync(jobqueue._correct_state, callback_timeout=left)
    except Exception as exc:
        from distributed import TimeoutError as DaskTimeout

        _mark_unsubmitted_failed(jobqueue)
        if isinstance(exc, DaskTimeout | TimeoutError):
            command = jobqueue.job_cls.submit_command.split()[0]
            raise MeireportError(
                f"run.cluster: {command} did not answer within {cluster.timeout_s} s on "
                f"{_where(cluster)}; is the batch system up?") from None
        submit = jobqueue.job_cls.submit_command.split()[0]
        raise MeireportError(f"run.cluster: {submit} refused the job on {_where(cluster)}: "
                             f"{_submit_error(exc)}") from None
    if not _job_ids(jobqueue):
        raise MeireportError(f"run.cluster: no {cluster.kind} job was submitted on "
                             f"{_where(cluster)}; see the job logs in {log_dir}")

