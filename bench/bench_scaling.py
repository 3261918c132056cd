"""Scaling: run time against the number of neurons (1, 2, 4, 8) and against workers (1, 2), on
the local pool and on a Dask LocalCluster (loopback); peak RSS of each run, children included.

Tiny params (seconds-scale models) so that the curve fits the time budget; the per-neuron
notebooks are the same as the default report's, only smaller. The session stages (extract,
select) run once, cold, and are cached for every point; before each point the per-neuron and
summary cache records and neuron folders are removed, so each point re-executes exactly its
neurons' notebooks and the summary. Neurons are the top units by oracle correlation.
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

import numpy as np

from bench.common import BENCH_DIR, ROOT, WORK_DIR, Figure, Results, log, run_monitored
from bench.notebooks import by_stage, run_breakdown

SECTION = "scaling"
CHILD = BENCH_DIR / "scaling_child.py"
PARAMS = ROOT / "params" / "tiny.yaml"


def _point(run_dir: Path, workers: int, scheduler: str, neurons: str, timeout: float) -> dict:
    proc = run_monitored([sys.executable, str(CHILD), str(PARAMS), str(run_dir), str(workers),
                          scheduler, neurons], env={"MPLBACKEND": "Agg"}, timeout=timeout)
    out = proc.payload()
    out.update(wall_s=proc.wall_s, peak_rss_mb=proc.peak_rss_mb)
    return out


def _reset_neurons(run_dir: Path) -> None:
    """Forget every per-neuron and summary execution (session stages stay cached)."""
    cache = run_dir / ".meireport" / "cache"
    for f in cache.glob("*.json"):
        if not f.name.endswith(("__-__extract.json", "__-__select.json")):
            f.unlink()
    for sdir in (run_dir / "results").iterdir():
        for d in sdir.iterdir():
            if d.is_dir() and d.name.isdigit():
                shutil.rmtree(d)


def _top_units(run_dir: Path, n: int) -> list[int]:
    import pandas as pd

    # the session's folder: run-level folders (the data-limit chapter) have no session.json
    (sdir,) = [d for d in (run_dir / "results").iterdir() if (d / "session.json").is_file()]
    sel = pd.read_csv(sdir / "selection.csv")
    col = "oracle_corr" if "oracle_corr" in sel else sel.columns[1]
    return [int(u) for u in sel.sort_values(col, ascending=False)["unit_id"][:n]]


def fit_line(n: list[float], t: list[float]) -> dict:
    """Least-squares ``t = a + b n``; R^2 and the largest relative residual."""
    x, y = np.asarray(n, float), np.asarray(t, float)
    b, a = np.polyfit(x, y, 1)
    pred = a + b * x
    ss = float(((y - y.mean()) ** 2).sum())
    r2 = 1 - float(((y - pred) ** 2).sum()) / ss if ss > 0 else None
    return {"intercept_s": float(a), "slope_s_per_neuron": float(b), "r2": r2,
            "max_rel_residual": float(np.max(np.abs(y - pred) / y))}


def _session_cached(run_dir: Path) -> bool:
    cache = run_dir / ".meireport" / "cache"
    return (any(cache.glob("*__-__extract.json")) and any(cache.glob("*__-__select.json"))
            and any((run_dir / "results").glob("*/selection.csv")))


def run_section(res: Results, neurons: tuple[int, ...] = (1, 2, 4, 8), compare_n: int = 2,
                deadline: float | None = None, timeout: float = 900,
                reuse: Path | None = WORK_DIR / "report_tiny") -> None:
    """Measure the curves; stops adding points when ``deadline`` (time.time()) is near.

    ``reuse``: a run folder of the same params whose session stages are cached (the report
    section's); its neuron folders are cleared. Else the session stages run here first.
    """
    sec = res.section(SECTION)
    if deadline is not None and deadline - time.time() < 180:
        sec["skipped"] = "time budget spent before the scaling section"
        res.add(Figure(SECTION, "scaling", None, "", note=sec["skipped"]))
        return
    if reuse is not None and _session_cached(reuse):
        run_dir = reuse
        sec["session_cold"] = {"reused": str(reuse.relative_to(ROOT))}
        log(f"scaling: session stages cached in {reuse.name} (the report section's run)")
    else:
        run_dir = WORK_DIR / "scaling"
        shutil.rmtree(run_dir, ignore_errors=True)
        log("scaling: session stages, cold (workers=1)")
        base = _point(run_dir, 1, "local", "session", timeout)
        sec["session_cold"] = {k: base[k] for k in ("run_s", "wall_s", "peak_rss_mb")}
        sec["session_cold"]["tasks"] = [{k: r[k] for k in ("task_id", "stage", "seconds")}
                                        for r in base["results"]]
    units = _top_units(run_dir, max(max(neurons), compare_n))
    sec["units"] = units
    # the most telling points first (when the time budget runs short, the last ones go):
    # the small-n curve, 2 workers, one more curve point, Dask, the largest n
    small = [n for n in neurons if n <= compare_n]
    large = [n for n in neurons if n > compare_n]
    plan = [(1, "local", n) for n in small] + [(2, "local", compare_n)]
    plan += [(1, "local", n) for n in large[:1]] + [(2, "dask", compare_n)]
    plan += [(1, "local", n) for n in large[1:]]
    points: list[dict] = []
    sec["points"] = points
    per_neuron_s = None
    for workers, scheduler, n in plan:
        if deadline is not None and per_neuron_s is not None:
            need = 15 + per_neuron_s * n / (1.5 if workers > 1 else 1)
            if time.time() + need > deadline:
                points.append({"workers": workers, "scheduler": scheduler, "n": n,
                               "skipped": f"time budget (needs ~{need:.0f} s)"})
                log(f"scaling: skip workers={workers} {scheduler} n={n}: time budget")
                continue
        _reset_neurons(run_dir)
        log(f"scaling: {n} neuron(s), workers={workers}, {scheduler}")
        p = _point(run_dir, workers, scheduler, ",".join(map(str, units[:n])), timeout)
        bad = [r for r in p["results"] if r["status"] in ("failed", "skipped")]
        rows = run_breakdown(p["results"])
        neuron_rows = [r for r in p["results"] if r["unit_id"] is not None]
        points.append({
            "workers": workers, "scheduler": scheduler, "n": n, "wall_s": p["wall_s"],
            "run_s": p["run_s"], "cluster_start_s": p["cluster_start_s"],
            "peak_rss_mb": p["peak_rss_mb"],
            "neuron_task_s": sum(r["seconds"] for r in neuron_rows),
            "n_neuron_tasks": len(neuron_rows),
            "stages": sorted({r["stage"] for r in p["results"]}),
            "failed": [(r["task_id"], r["error"]) for r in bad],
            "by_stage": by_stage(rows),
        })
        log(f"scaling: -> run {p['run_s']:.1f} s, peak RSS {p['peak_rss_mb']:.0f} MB"
            + (f", {len(bad)} failed" if bad else ""))
        if workers == 1 and scheduler == "local":  # cost per neuron, for the budget
            per_neuron_s = max(p["wall_s"] / max(n, 1), 1.0, per_neuron_s or 0.0)
    _figures(res, sec, points)


def _figures(res: Results, sec: dict, points: list[dict]) -> None:
    serial = [q for q in points if "run_s" in q and q["workers"] == 1
              and q["scheduler"] == "local"]
    if serial and not any(q["n_neuron_tasks"] for q in serial):
        stages = sorted({s for q in serial for s in q["stages"]})
        sec["no_neuron_stages"] = True
        res.add(Figure(SECTION, "per-neuron notebooks", None, "",
                       note="none in this checkout (stages: " + ", ".join(stages) + "): the "
                            "curve times only the runner and the summary; rerun when the "
                            "train/MEI/Gabor notebooks have landed"))
    if len(serial) >= 2 and not sec.get("no_neuron_stages"):
        fit = fit_line([q["n"] for q in serial], [q["run_s"] for q in serial])
        sec["fit_workers1"] = fit
        res.add(Figure(SECTION, "run time per added neuron (slope, workers=1)",
                       fit["slope_s_per_neuron"], "s/neuron",
                       note=f"t = {fit['intercept_s']:.1f} s + {fit['slope_s_per_neuron']:.1f} s "
                            f"x n; R^2 = {fit['r2']:.3f}" if fit["r2"] is not None else ""))
        if len(serial) >= 3:
            linear = fit["r2"] is not None and fit["r2"] >= 0.98
            res.add(Figure(SECTION, "linear in neurons (R^2 of the fit)", fit["r2"], "R^2",
                           target=">= 0.98", met=linear,
                           note=f"largest residual {100 * fit['max_rel_residual']:.0f}% "
                                f"over n = {[q['n'] for q in serial]}"))
        first, last = serial[0], serial[-1]
        res.add(Figure(SECTION, f"t({last['n']}) / t({first['n']}) neurons, workers=1",
                       last["run_s"] / first["run_s"], "ratio",
                       note=f"{last['n'] / first['n']:.0f}x the neurons"))
    by = {(q["workers"], q["scheduler"], q["n"]): q for q in points if "run_s" in q}
    n = next((k[2] for k in by if k[0] == 2), None)
    if n is not None and (1, "local", n) in by:
        one = by[(1, "local", n)]
        for key, label in (((2, "local", n), "local pool"), ((2, "dask", n), "Dask LocalCluster")):
            if key in by:
                q = by[key]
                res.add(Figure(SECTION, f"{n} neurons: 2 workers ({label}) vs 1 worker",
                               q["run_s"], "s", baseline="1 worker, local",
                               baseline_value=one["run_s"], ratio=one["run_s"] / q["run_s"],
                               ratio_kind="x speed-up",
                               note=f"peak RSS {q['peak_rss_mb']:.0f} MB"
                                    + (f"; cluster start {q['cluster_start_s']:.1f} s (apart)"
                                       if q["scheduler"] == "dask" else "")))
    peaks = [q["peak_rss_mb"] for q in points if q.get("peak_rss_mb")]
    if peaks:
        worst = max((q for q in points if q.get("peak_rss_mb")), key=lambda q: q["peak_rss_mb"])
        res.add(Figure(SECTION, "peak RSS of a run (whole process tree)", max(peaks), "MB",
                       note=f"at {worst['n']} neurons, workers={worst['workers']}, "
                            f"{worst['scheduler']}; kernels and workers included"))
