"""Child process of the scaling benchmark: one ``meireport.report.run.run`` call, timed from inside.

Run as ``python bench/scaling_child.py PARAMS RUN_DIR WORKERS SCHEDULER NEURONS`` where
SCHEDULER is ``local`` or ``dask`` (a loopback ``LocalCluster`` of WORKERS single-thread worker
processes, started here and timed apart) and NEURONS is a comma-separated list of unit ids or
``session`` (session stages only: the per-neuron plan is emptied). Prints ``BENCH_JSON``.
"""

import json
import sys
import time


def main(params: str, run_dir: str, workers: int, scheduler: str, neurons: str) -> dict:
    """Run once; return wall times and every task's result."""
    import meireport.report.run as mr

    if neurons == "session":
        mr.plan_neuron_tasks = lambda *a, **k: []
        ids = None
    else:
        ids = [int(u) for u in neurons.split(",") if u]
    cluster_s = 0.0
    cluster = None
    address = None
    if scheduler == "dask":
        from distributed import LocalCluster

        t = time.perf_counter()
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                               host="127.0.0.1", dashboard_address=None)
        address = cluster.scheduler_address
        cluster_s = time.perf_counter() - t
    try:
        t = time.perf_counter()
        res = mr.run(params, out=run_dir, workers=workers, scheduler=address, neurons=ids,
                     progress=False)
        run_s = time.perf_counter() - t
    finally:
        if cluster is not None:
            cluster.close()
    return {"run_s": run_s, "cluster_start_s": cluster_s,
            "results": [{"task_id": r.task_id, "stage": r.stage, "unit_id": r.unit_id,
                         "status": r.status, "seconds": r.seconds, "error": r.error,
                         "notebook": r.notebook} for r in res.results]}


if __name__ == "__main__":
    p, d, w, s, n = sys.argv[1:6]
    out = main(p, d, int(w), s, n)
    print("BENCH_JSON " + json.dumps(out), flush=True)
