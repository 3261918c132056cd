"""The report's tasks on a real single-node SLURM cluster (`nox -s slurm`; tests/slurm.py).

The cluster (munged, slurmctld, slurmd) is started for the module in a temporary folder and
stopped afterwards. Missing SLURM binaries fail the tests (never skip): CI must notice.
"""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
import pytest
from slurm import SlurmStartError, install_hint, missing_binaries, slurm_cluster

from meireport.errors import MeireportError
from meireport.report.cluster import cluster_client
from meireport.report.params import ClusterParams, load_params

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "params" / "tiny.yaml"

pytestmark = pytest.mark.slurm


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """A running single-node SLURM cluster; ``SLURM_CONF`` points the clients at it."""
    if missing_binaries():
        pytest.fail(install_hint(), pytrace=False)
    root = tmp_path_factory.mktemp("slurm")
    try:
        with slurm_cluster(root, timeout=90) as cluster, pytest.MonkeyPatch.context() as mp:
            mp.setenv("SLURM_CONF", str(cluster.conf))
            print(f"SLURM test cluster up in {cluster.started_s:.1f} s ({cluster.conf})")
            yield cluster
    except SlurmStartError as e:
        pytest.fail(str(e), pytrace=False)


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """No shared cache in ~/.cache; job logs and worker files in the test's folder."""
    monkeypatch.setenv("MEIREPORT_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)


def test_cluster_runs_a_batch_job(slurm, tmp_path):
    out = slurm.run("sbatch", "--parsable", "-o", str(tmp_path / "job-%j.out"),
                    "--wrap", "hostname")
    job_id = out.stdout.strip().split(";")[0]
    assert slurm.wait_job(job_id, timeout=60) == "COMPLETED", slurm.log_tails()
    assert (tmp_path / f"job-{job_id}.out").read_text().strip()


def test_cluster_client_runs_tasks_inside_a_slurm_job(slurm, tmp_path):
    params = ClusterParams(kind="slurm", jobs=1, cores=1, memory="1GB", walltime="00:10:00",
                           timeout_s=120)
    def job_id():  # local: pickled by value (the worker cannot import this test module)
        import os

        return os.environ.get("SLURM_JOB_ID", "")

    with cluster_client(params, log_directory=tmp_path / "jobs") as client:
        assert client.submit(lambda x: x + 1, 1, pure=False).result(timeout=60) == 2
        job_id = client.submit(job_id, pure=False).result(timeout=60)
        assert job_id, "the worker did not run inside a SLURM job"
        assert job_id in slurm.jobs()
    # leaving the block cancels the job
    deadline = time.monotonic() + 30
    while job_id in slurm.jobs() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert job_id not in slurm.jobs()


def test_a_queue_that_does_not_exist_is_one_line(slurm, tmp_path):
    params = ClusterParams(kind="slurm", queue="nosuchqueue", jobs=1, cores=1, memory="1GB",
                           walltime="00:10:00", timeout_s=60)
    t0 = time.monotonic()
    with pytest.raises(MeireportError) as info:
        with cluster_client(params, log_directory=tmp_path / "jobs"):
            pytest.fail("a client on a queue that does not exist")
    message = str(info.value)
    assert time.monotonic() - t0 < params.timeout_s
    assert "\n" not in message, message
    assert message.startswith("run.cluster: sbatch refused the job on slurm (queue "
                              "'nosuchqueue')"), message
    assert "partition" in message.lower(), message
    assert not slurm.jobs()


def test_a_job_that_never_starts_gives_up_within_the_timeout(slurm, tmp_path):
    # a job held until an hour from now pends past the timeout
    params = ClusterParams(kind="slurm", jobs=1, cores=1, memory="1GB", walltime="00:10:00",
                           job_extra=["--begin=now+1hour"], timeout_s=8)
    t0 = time.monotonic()
    with pytest.raises(MeireportError) as info:
        with cluster_client(params, log_directory=tmp_path / "jobs"):
            pytest.fail("a client without a worker")
    elapsed = time.monotonic() - t0
    message = str(info.value)
    assert elapsed < params.timeout_s + 40, elapsed  # the wait, then cancelling the job
    assert "\n" not in message, message
    assert message.startswith("run.cluster: no Dask worker started within 8 s on slurm"), message
    assert "PENDING" in message and str(tmp_path / "jobs") in message, message
    deadline = time.monotonic() + 30
    while slurm.jobs() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not slurm.jobs(), "the pending job was not cancelled"


def test_a_job_that_dies_is_reported_before_the_timeout(slurm, tmp_path):
    # SLURM cannot open the job's output file: the job fails at launch, no worker ever starts
    params = ClusterParams(kind="slurm", jobs=1, cores=1, memory="1GB", walltime="00:10:00",
                           job_extra=["-o /nonexistent/job.out", "-e /nonexistent/job.err"],
                           timeout_s=60)
    t0 = time.monotonic()
    with pytest.raises(MeireportError) as info:
        with cluster_client(params, log_directory=tmp_path / "jobs"):
            pytest.fail("a client without a worker")
    message = str(info.value)
    assert time.monotonic() - t0 < 30, "waited for the timeout although the job had ended"
    assert "\n" not in message, message
    assert message.startswith("run.cluster: no Dask worker started on slurm: job "), message
    assert "FAILED" in message and "ended before a worker connected" in message, message


def _summaries(run_dir: Path) -> dict[str, pd.DataFrame]:
    return {p.parent.name: pd.read_csv(p) for p in sorted(run_dir.glob("results/*/summary.csv"))}


def test_tiny_report_through_the_cluster_matches_a_local_run(slurm, tmp_path, monkeypatch):
    from meireport.report.run import run

    p = load_params(TINY)
    cluster = ClusterParams(kind="slurm", jobs=2, cores=1, memory="4GB", walltime="00:30:00",
                            timeout_s=120)
    on_slurm = p.model_copy(update={"run": p.run.model_copy(update={"cluster": cluster})})
    before = set(slurm.all_jobs())
    # a shared cache of its own for each run: the local run computes everything again
    monkeypatch.setenv("MEIREPORT_CACHE", str(tmp_path / "cache-slurm"))
    remote = run(on_slurm, out=tmp_path / "slurm", progress=False)
    assert not remote.failed, [(r.task_id, r.error) for r in remote.failed]
    monkeypatch.setenv("MEIREPORT_CACHE", str(tmp_path / "cache-local"))
    local = run(p, out=tmp_path / "local", progress=False)
    assert not local.failed, [(r.task_id, r.error) for r in local.failed]
    for res in (remote, local):
        assert res.results and all(r.status == "ok" for r in res.results), \
            [(r.task_id, r.status, r.error) for r in res.results if r.status != "ok"]
    new_jobs = sorted(set(slurm.all_jobs()) - before, key=int)
    assert new_jobs, "no SLURM job ran: the engine ran the tasks locally (run.cluster ignored)"
    a, b = _summaries(tmp_path / "slurm"), _summaries(tmp_path / "local")
    assert a and a.keys() == b.keys()
    for name in a:
        timing = [c for c in a[name].columns if "seconds" in c]
        pd.testing.assert_frame_equal(a[name].drop(columns=timing),
                                      b[name].drop(columns=timing), check_exact=False,
                                      rtol=1e-9)
