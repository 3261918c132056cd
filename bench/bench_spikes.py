"""Spike counting side by side on the seed-sized file: ours vs AllenSDK vs the seed's pandas.

Cold = a fresh interpreter that imports, opens the file and counts (the file itself is in the OS
page cache after the first run, for both readers alike); warm = the same call again on the open
session. Cold runs of ours and AllenSDK are interleaved so that the load of the shared machine
hits both alike. Counts must be identical (no spike lies exactly on a window's right edge, where
AllenSDK's closed window and our half-open one differ; checked).
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from bench.common import (
    ALLEN_PYTHON,
    BENCH_DIR,
    WORK_DIR,
    Figure,
    Results,
    log,
    profile_top,
    run_monitored,
    seconds,
    speedup,
)

CHILD = BENCH_DIR / "spikes_child.py"
SECTION = "spikes"


def _child(python: str, mode: str, data: dict, out: Path) -> tuple[dict, float]:
    cmd = [python, str(CHILD), mode, data["cache_dir"], str(data["session_id"]), str(out),
           data["channels_csv"]]
    proc = run_monitored(cmd, timeout=600)
    res = proc.payload()
    res["process_wall_s"] = proc.wall_s
    return res, proc.wall_s


def _load(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    z = np.load(path)
    return z["index"], z["columns"], z["values"]


def _same(a: Path, b: Path) -> dict:
    ia, ca, va = _load(a)
    ib, cb, vb = _load(b)
    same_ids = bool(np.array_equal(ia, ib) and np.array_equal(ca, cb))
    equal = same_ids and bool(np.array_equal(va, vb))
    diff = int(np.abs(va.astype(np.int64) - vb.astype(np.int64)).sum()) if same_ids else None
    return {"same_ids": same_ids, "identical": equal, "abs_diff_spikes": diff,
            "cells": int(va.size)}


def seed_long_table(session, ids, window=(0.0, 0.25)):
    """What AllenSDK's ``presentationwise_spike_times`` gives the seed, for our window.

    One row per spike in ``[onset + t0, onset + t1)`` (a spike in two overlapping windows is
    listed twice), columns ``stimulus_presentation_id``, ``unit_id``,
    ``time_since_stimulus_presentation_onset``.
    """
    import pandas as pd

    table = session.stimulus_table("natural_scenes")
    starts = table["start_time"].to_numpy(float)
    pres_ids = table.index.to_numpy()
    frames = []
    for u in ids:
        st = session.spike_times[int(u)]
        lo = np.searchsorted(st, starts + window[0], side="left")
        hi = np.searchsorted(st, starts + window[1], side="left")
        n = hi - lo
        which = np.repeat(np.arange(len(starts)), n)
        pos = np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n) + np.repeat(lo, n)
        frames.append(pd.DataFrame({
            "stimulus_presentation_id": pres_ids[which], "unit_id": int(u),
            "time_since_stimulus_presentation_onset": st[pos] - starts[which]},
            index=pd.Index(st[pos], name="spike_time")))
    return pd.concat(frames)


def seed_groupby_pivot(spikes, aggfunc="sum"):
    """The seed notebook's count: groupby(presentation, unit).count() then pivot_table.

    The seed passed ``aggfunc=np.sum``, which pandas 1.x ran as its cythonised ``"sum"``;
    pandas 3 calls ``np.sum`` once per group in Python (~50x slower here), so ``"sum"`` is the
    faithful default in this env.
    """
    import pandas as pd

    spikes = spikes.copy()
    spikes["count"] = np.zeros(len(spikes))
    spikes = spikes.groupby(["stimulus_presentation_id", "unit_id"]).count()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pd.pivot_table(spikes, values="time_since_stimulus_presentation_onset",
                              index="stimulus_presentation_id", columns="unit_id",
                              fill_value=0.0, aggfunc=aggfunc)


def _import_profile(n: int = 8) -> list[dict]:
    """``python -X importtime`` of our cold path: the heaviest imports (cumulative)."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-c",
         "import meireport.sources, meireport.extract"], capture_output=True, text=True)
    rows = []
    for line in proc.stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        parts = line[len("import time:"):].split("|")
        try:
            self_us, cum_us = int(parts[0]), int(parts[1])
        except ValueError:
            continue
        name = parts[2]
        depth = (len(name) - len(name.lstrip())) // 2
        if depth <= 2:
            rows.append({"module": name.strip(), "depth": depth,
                         "cumulative_s": round(cum_us / 1e6, 3), "self_s": round(self_us / 1e6, 3)})
    rows.sort(key=lambda r: r["cumulative_s"], reverse=True)
    return rows[:n]


def run_section(res: Results, data: dict, n_cold: int = 3) -> None:
    """Measure and record the spike-counting figures."""
    from meireport.extract import spike_counts
    from meireport.sources import open_session

    sec = res.section(SECTION)
    work = WORK_DIR / "spikes"
    work.mkdir(parents=True, exist_ok=True)
    allen = ALLEN_PYTHON.is_file() and data.get("allensdk_format")
    sec["data"] = {k: data[k] for k in ("n_units_visam", "n_presentations",
                                        "n_spikes_in_windows", "nwb_mb")}
    if not allen:
        sec["allensdk"] = ("not measured: the AllenSDK env (.nox/allen) is missing or the file "
                           "was not written in AllenSDK format; build it with `nox -s allen`")
    ours_runs, allen_runs = [], []
    for i in range(n_cold):
        log(f"spikes: cold run {i + 1}/{n_cold} (ours{' + AllenSDK' if allen else ''})")
        ours_runs.append(_child(sys.executable, "ours", data, work / "ours.npz")[0])
        if allen:
            allen_runs.append(_child(str(ALLEN_PYTHON), "allen", data, work / "allen.npz")[0])
    sec["ours_cold_runs"] = ours_runs
    sec["allen_cold_runs"] = allen_runs

    def col(runs: list[dict], key: str) -> list[float]:
        return [r[key] for r in runs]

    ours_warm = [min(r["warm_s"]) for r in ours_runs]
    if allen:
        base = "AllenSDK EcephysSession (fresh process)"
        res.add(speedup(SECTION, "cold open-to-counts (imports excluded)",
                        col(ours_runs, "open_to_counts_s"), col(allen_runs, "open_to_counts_s"),
                        base, 15.0, "from_nwb_path/open_session to the first counts; "
                        "target also <= 0.5 s"))
        fig = res.data["figures"][-1]
        fig["met"] = bool(fig["met"] and fig["value"] <= 0.5)
        res.add(speedup(SECTION, "cold process start to counts (imports included)",
                        col(ours_runs, "start_to_counts_s"), col(allen_runs, "start_to_counts_s"),
                        base, note="interpreter up, imports, open, count"))
        res.add(speedup(SECTION, "cold whole process (wall, parent-side)",
                        col(ours_runs, "process_wall_s"), col(allen_runs, "process_wall_s"), base,
                        note="includes interpreter start and exit"))
        allen_warm = [min(r["warm_s"]) for r in allen_runs]
        res.add(speedup(SECTION, "warm count (best of 5, open session)", ours_warm, allen_warm,
                        "AllenSDK presentationwise_spike_counts (warm)", 1.0,
                        "limits: see Profiles (searchsorted, the stimulus table rebuilt per call)"))
        eq = _same(work / "ours.npz", work / "allen.npz")
        sec["equal_ours_allen"] = eq
        ties = ours_runs[0]["edge_ties"]
        res.add(Figure(SECTION, "identical counts ours vs AllenSDK", float(eq["identical"]),
                       "bool", target="identical", met=eq["identical"],
                       note=f"{eq['cells']} cells; spikes exactly on onset + t1: {ties}"))
        log("spikes: the seed's path in the AllenSDK env (presentationwise_spike_times + pivot)")
        seed_run, _ = _child(str(ALLEN_PYTHON), "seed", data, work / "seed.npz")
        sec["seed_allen"] = seed_run
        sec["seed_allen_vs_ours"] = _same(work / "ours.npz", work / "seed.npz")
        sec["seed_allen_vs_ours"]["why"] = (
            "presentationwise_spike_times windows are (start_time, stop_time], not "
            "[onset, onset + 0.25); the durations are 0.25 s +- 0.4 ms")
        res.add(speedup(SECTION, "seed's full path (AllenSDK spike times + groupby/pivot)",
                        ours_warm, [seed_run["total_s"]], "seed notebook (AllenSDK env)",
                        note="ours: warm spike_counts on the open session"))
    # the seed's pandas groupby/pivot in this env, on the same spikes and window as ours
    log("spikes: the seed's pandas groupby/pivot on the same spikes (this env)")
    with open_session(data["cache_dir"], data["session_id"]) as s:
        counts = spike_counts(s, "natural_scenes", area="VISam")
        ids = counts.columns.to_numpy()
        t = time.perf_counter()
        spikes = seed_long_table(s, ids)
        sec["pandas_long_table_build_s"] = time.perf_counter() - t
        pivots = []
        pivot_s = seconds(lambda: pivots.append(seed_groupby_pivot(spikes)), repeat=2)
        pivot = pivots[-1].reindex(index=counts.index, columns=ids, fill_value=0)
        identical = bool(np.array_equal(pivot.to_numpy().astype(np.int64), counts.to_numpy()))
        warm_here = seconds(lambda: spike_counts(s, "natural_scenes", area="VISam"), repeat=5)
        res.add(speedup(SECTION, "warm count vs the seed's groupby/pivot", min(warm_here),
                        min(pivot_s), "pandas groupby().count() + pivot_table (seed, this env)",
                        note=f"{len(spikes):,} spike rows; counts identical: {identical}"))
        res.add(Figure(SECTION, "identical counts ours vs pandas groupby/pivot",
                       float(identical), "bool", target="identical", met=identical))
        table_s = min(seconds(lambda: s.stimulus_table("natural_scenes"), repeat=5))
        sec["stimulus_table_s"] = table_s
        sec["warm_count_s"] = min(warm_here)
        sec["profile_warm_count"] = profile_top(
            lambda: spike_counts(s, "natural_scenes", area="VISam"), sort="tottime")
    sec["profile_cold_imports"] = _import_profile()
    sec["summary"] = {
        "ours_cold_phases_median_s": {k: statistics.median(col(ours_runs, k)) for k in
                                      ("import_s", "open_s", "count_s")},
        "allen_cold_phases_median_s": ({k: statistics.median(col(allen_runs, k)) for k in
                                        ("import_s", "open_s", "tables_s", "count_s")}
                                       if allen_runs else None),
    }
