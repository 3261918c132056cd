"""Run every benchmark; write ``bench/results.json`` and ``bench/results.md`` (+ PNG plots).

``nox -s bench`` runs this in its own env (and builds AllenSDK's env first when it is missing).
Directly: ``python -m bench.run_all [--only spikes,oracle] [--skip scaling] [--quick]``.

Sections, in order: ``data`` (the seed-sized session), ``spikes``, ``reader`` (the reader on a
full-scale session, ``bench_reader.py``), ``remote`` (bytes fetched over loopback HTTP from
that session, ``bench_remote.py``), ``oracle``, ``models``
(the training/MEI scripts of the other issues), ``shared`` (the shared core's training cost
per unit and batched MEIs, ``bench_shared.py``), ``report`` (tiny report cold / rebuild / MEI
changed, papermill overhead), ``scaling``, ``engine`` (issue #14's targets against the
previous engine, commit 8ae6a11, run from a git worktree). A failing section is recorded and the
others go on. The whole is sized to finish in 30 minutes from a fresh clone on a 2-core machine;
``--budget-min`` makes the scaling curve drop points, and the engine section skip measurements,
rather than overrun.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from pathlib import Path

if __package__ in (None, ""):  # `python bench/run_all.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import RESULTS_JSON, WORK_DIR, Results, log, machine_info  # noqa: E402

# scaling and engine adapt to the budget; engine comes last (it extrapolates scaling's fit)
SECTIONS = ("spikes", "reader", "remote", "oracle", "models", "shared", "report", "scaling",
            "engine")


def _args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="", help="comma-separated sections to run")
    ap.add_argument("--skip", default="", help="comma-separated sections to skip")
    ap.add_argument("--quick", action="store_true",
                    help="fewer repeats, neurons 1,2,4, 300 MEI steps (a smoke run)")
    ap.add_argument("--full-models", action="store_true",
                    help="also run bench_train.py timing and bench_mei.part_time as they are "
                         "(over 20 min here)")
    ap.add_argument("--default-report", action="store_true",
                    help="also time `meireport report params/default.yaml` (long)")
    ap.add_argument("--neurons", default="1,2,4,8", help="scaling curve points")
    ap.add_argument("--compare-n", type=int, default=2,
                    help="neurons at which 1 vs 2 workers and Dask are compared")
    ap.add_argument("--budget-min", type=float, default=28.0,
                    help="stop adding scaling points past this (from --started-at)")
    ap.add_argument("--started-at", type=float, default=None,
                    help="epoch seconds the whole job started (nox passes it: install included)")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the chosen sections; always write the results and the page."""
    args = _args(argv)
    os.environ.setdefault("MPLBACKEND", "Agg")
    # the reports the bench runs share a study cache of their own (never the user's ~/.cache)
    os.environ.setdefault("MEIREPORT_CACHE", str(WORK_DIR / "cache"))
    started = args.started_at or time.time()
    deadline = started + 60 * args.budget_min
    only = {s for s in args.only.split(",") if s}
    skip = {s for s in args.skip.split(",") if s}
    chosen = [s for s in SECTIONS if (not only or s in only) and s not in skip]
    WORK_DIR.mkdir(parents=True, exist_ok=True)
    res = Results(RESULTS_JSON)
    res.data["started"] = time.time()
    res.data["machine"] = machine_info()
    res.data["sections_run"] = chosen
    res.data["quick"] = args.quick
    res.data["errors"] = {}
    log(f"machine: {res.data['machine']['cpu_model']}, "
        f"{res.data['machine']['usable_cores']} cores; sections: {', '.join(chosen)}")
    res.save()

    data = None
    if {"spikes", "oracle"} & set(chosen):
        from bench.data import seed_session

        try:
            data = seed_session()
            res.data["sections"]["data"] = data
        except Exception as exc:  # a failed section is recorded, the others go on
            res.data["errors"]["data"] = f"{type(exc).__name__}: {exc}"
            log(f"data FAILED: {exc}")
    for name in chosen:
        t = time.time()
        res.section(name)["load_average_before"] = [round(v, 2) for v in os.getloadavg()]
        log(f"== {name} ==")
        try:
            _run(name, res, data, args, deadline)
        except Exception as exc:
            res.data["errors"][name] = f"{type(exc).__name__}: {exc}"
            res.section(name)["traceback"] = traceback.format_exc()
            log(f"{name} FAILED: {type(exc).__name__}: {exc}")
        res.section(name)["section_s"] = round(time.time() - t, 1)
        res.save()
    res.data["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]
    if args.started_at:
        res.data["nox_total_s"] = round(time.time() - args.started_at, 1)
    res.save()
    from bench.render import render

    render(res.data)
    log(f"done in {res.data['total_s'] / 60:.1f} min: {RESULTS_JSON} and "
        f"{RESULTS_JSON.with_suffix('.md')}")
    if res.data["errors"]:  # a failed section fails the bench (its figures are missing)
        log(f"FAILED sections: {', '.join(sorted(res.data['errors']))}")
        return 1
    return 0


def _run(name: str, res: Results, data: dict | None, args: argparse.Namespace,
         deadline: float) -> None:
    if name in ("spikes", "oracle") and data is None:
        raise RuntimeError("no seed-sized session (see the data error)")
    if name == "spikes":
        from bench import bench_spikes

        bench_spikes.run_section(res, data, n_cold=2 if args.quick else 3)
    elif name == "reader":
        from bench import bench_reader

        bench_reader.run_section(res, n_cold=1 if args.quick else 3,
                                 n_cold_allen=1 if args.quick else 2)
    elif name == "remote":
        from bench import bench_remote

        bench_remote.run_section(res)
    elif name == "oracle":
        from bench import bench_oracle

        bench_oracle.run_section(res, data, seed_budget_s=8 if args.quick else 20)
    elif name == "models":
        from bench import bench_external

        bench_external.run_section(res, steps=300 if args.quick else 1000, quick=args.quick,
                                   full=args.full_models)
    elif name == "shared":
        from bench import bench_shared

        bench_shared.run_section(res, pools=(50, 100) if args.quick else (50, 100, 200))
    elif name == "report":
        from bench import bench_report

        bench_report.run_section(res, default_report=args.default_report)
    elif name == "scaling":
        from bench import bench_scaling

        neurons = tuple(int(n) for n in args.neurons.split(",") if n)
        if args.quick:
            neurons = tuple(n for n in neurons if n <= 4)
        bench_scaling.run_section(res, neurons=neurons, compare_n=args.compare_n,
                                  deadline=deadline)
    elif name == "engine":
        from bench import bench_engine

        bench_engine.run_section(res, quick=args.quick, deadline=deadline)


if __name__ == "__main__":
    raise SystemExit(main())
