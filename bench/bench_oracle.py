"""Oracle correlation for all units: ours vs the seed's per-neuron loop vs neuralpredictors.

Same data: the seed-sized session's natural-scene trials (units x 118 images x 50 repeats). The
seed's loop is run on a subset of neurons over the complete table (its cost per neuron depends
on the table's size) and extrapolated to all units and to its 50 iterations; its random draws are
replayed from ours so that the values can be compared exactly. neuralpredictors is installed with
``--no-deps`` into a throwaway folder (its deps are already here) and run in a child process; the
environment itself is never changed.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np

from bench.common import BENCH_DIR, WORK_DIR, Figure, Results, log, run_monitored, seconds, speedup
from bench.seed_oracle import long_table, replay_draws, super_oracle

SECTION = "oracle"
SEED_ITERATIONS = 50  # the seed's average_super_oracle(df, iterations=50)
NP_PACKAGE = "neuralpredictors"


def _trials(data: dict):
    from meireport.extract import spike_counts, trial_tensor
    from meireport.sources import open_session

    with open_session(data["cache_dir"], data["session_id"]) as s:
        counts = spike_counts(s, "natural_scenes", area="VISam")
        table = s.stimulus_table("natural_scenes")
    trials = trial_tensor(counts, table)
    ids = counts.index.to_numpy()
    pres = counts.iloc[:, :1].copy()
    pres.iloc[:, 0] = ids
    trial_ids = trial_tensor(pres, table).data[0].astype(np.int64)  # images x repeats
    return trials, trial_ids


def _seed_subset(trials, trial_ids, budget_s: float, max_neurons: int) -> dict:
    """Run the seed loop (1 iteration, replayed draws) on neurons until ``budget_s`` is spent."""
    df = long_table(trials.data, trials.unit_ids, trials.image_ids, trial_ids)
    k = replay_draws(trials.data, 1, seed=0)[0]
    unit_pos = {int(u): i for i, u in enumerate(trials.unit_ids)}
    image_pos = {int(m): i for i, m in enumerate(trials.image_ids)}

    def choose(neuron_id, image_id, tids):
        return tids[k[unit_pos[int(neuron_id)], image_pos[int(image_id)]]]

    done, values, per = [], [], []
    for u in trials.unit_ids[:max_neurons]:
        t = time.perf_counter()
        out = super_oracle(df, neuron_ids=[int(u)], choose=choose)
        per.append(time.perf_counter() - t)
        done.append(int(u))
        values.append(float(out["super_oracle_correlation"].iloc[0]))
        log(f"oracle: seed loop neuron {len(done)}: {per[-1]:.1f} s")
        if sum(per) >= budget_s:
            break
    return {"neurons": done, "values": values, "seconds": per, "table_rows": len(df)}


def _pip(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True,
                          timeout=timeout)


def _neuralpredictors(trials: np.ndarray, ours: np.ndarray) -> dict:
    """Install neuralpredictors into a throwaway folder and run its jackknife oracle."""
    info: dict = {}
    try:
        dry = _pip("install", "--dry-run", "--quiet", "--report", "-", NP_PACKAGE)
        if dry.returncode == 0:
            report = json.loads(dry.stdout)
            would = {i["metadata"]["name"]: i["metadata"]["version"] for i in report["install"]}
            info["full_install_would_install"] = would
            info["full_install_changes_torch"] = "torch" in would
        else:
            info["dry_run_error"] = dry.stderr.strip().splitlines()[-1:]
    except (subprocess.TimeoutExpired, ValueError, KeyError) as exc:
        info["dry_run_error"] = repr(exc)
    site = WORK_DIR / "neuralpredictors_site"
    if not (site / NP_PACKAGE).is_dir():
        log("oracle: pip install --no-deps --target (throwaway) neuralpredictors")
        try:
            proc = _pip("install", "--quiet", "--no-deps", "--target", str(site), NP_PACKAGE)
        except subprocess.TimeoutExpired:
            info["status"] = "not measured: pip install timed out (registry unreachable?)"
            return info
        if proc.returncode != 0:
            tail = " | ".join(proc.stderr.strip().splitlines()[-2:])
            info["status"] = f"not measured: pip install failed: {tail}"
            return info
    tpath, opath = WORK_DIR / "oracle_trials.npy", WORK_DIR / "oracle_np.npy"
    np.save(tpath, trials)
    proc = run_monitored([sys.executable, str(BENCH_DIR / "np_oracle_child.py"), str(tpath),
                          str(opath)], env={"PYTHONPATH": str(site)}, timeout=300)
    try:
        payload = proc.payload()
    except RuntimeError as exc:
        info["status"] = f"not measured: {exc}"
        return info
    theirs = np.load(opath)
    info.update(payload, status="measured", method="pip install --no-deps --target <throwaway>",
                max_abs_diff=float(np.nanmax(np.abs(theirs - ours))))
    return info


def run_section(res: Results, data: dict, seed_budget_s: float = 20.0,
                max_neurons: int = 5) -> None:
    """Measure and record the oracle figures."""
    from meireport.select import oracle_correlation, oracle_correlation_random

    sec = res.section(SECTION)
    trials, trial_ids = _trials(data)
    x = trials.data
    n_units = x.shape[0]
    sec["shape"] = list(x.shape)
    log(f"oracle: ours on {x.shape[0]} units x {x.shape[1]} images x {x.shape[2]} repeats")
    jack = seconds(lambda: oracle_correlation(x), repeat=7, warmup=1)
    rand50 = seconds(lambda: oracle_correlation_random(x, SEED_ITERATIONS, 0), repeat=3,
                     warmup=1)
    rand1 = seconds(lambda: oracle_correlation_random(x, 1, 0), repeat=7, warmup=1)
    ours_jack = oracle_correlation(x)
    ours_rand1 = oracle_correlation_random(x, 1, 0).corr
    sec["ours_s"] = {"jackknife": jack, "random_50": rand50, "random_1": rand1}

    log(f"oracle: the seed's loop on a subset (budget {seed_budget_s:.0f} s)")
    sub = _seed_subset(trials, trial_ids, seed_budget_s, max_neurons)
    sec["seed_subset"] = sub
    per_neuron = float(np.median(sub["seconds"]))
    seed_1 = per_neuron * n_units
    seed_50 = seed_1 * SEED_ITERATIONS
    sec["seed_extrapolated_s"] = {"per_neuron_iteration": per_neuron, "one_iteration": seed_1,
                                  "fifty_iterations": seed_50, "hours_50": seed_50 / 3600}
    pos = [int(np.flatnonzero(trials.unit_ids == u)[0]) for u in sub["neurons"]]
    diff = float(np.max(np.abs(np.asarray(sub["values"]) - ours_rand1[pos])))
    note = (f"seed: {len(sub['neurons'])} neurons run ({per_neuron:.2f} s each over the "
            f"{sub['table_rows']:,}-row table), extrapolated x {n_units} units")
    res.add(speedup(SECTION, "oracle all units, 50 iterations: ours randomised vs seed loop",
                    min(rand50), seed_50, "seed average_super_oracle(iterations=50), extrapolated",
                    1e4, note, stat=min))
    res.add(speedup(SECTION, "oracle all units: ours jackknife (the report's) vs seed loop",
                    min(jack), seed_50, "seed average_super_oracle(iterations=50), extrapolated",
                    1e4, "the exact jackknife replaces the seed's 50 random draws", stat=min))
    res.add(speedup(SECTION, "oracle all units, 1 iteration: ours vs seed super_oracle",
                    min(rand1), seed_1, "seed super_oracle (1 iteration), extrapolated",
                    note=note, stat=min))
    res.add(Figure(SECTION, "equal values ours vs seed loop (same draws)", diff, "max |diff|",
                   target="<= 1e-9", met=diff <= 1e-9,
                   note=f"{len(sub['neurons'])} neurons, draws replayed"))

    log("oracle: neuralpredictors' jackknife (throwaway install)")
    npi = _neuralpredictors(x, ours_jack)
    sec["neuralpredictors"] = npi
    if npi.get("status") == "measured":
        res.add(speedup(SECTION, "oracle all units: ours jackknife vs neuralpredictors",
                        min(jack), min(npi["seconds"]),
                        f"neuralpredictors {npi.get('version') or ''} oracle_corr_jackknife",
                        stat=min))
        res.add(Figure(SECTION, "equal values ours vs neuralpredictors jackknife",
                       npi["max_abs_diff"], "max |diff|", target="<= 1e-6",
                       met=npi["max_abs_diff"] <= 1e-6,
                       note="neuralpredictors adds eps = 1e-8 to the standard deviations"))
    else:
        res.add(Figure(SECTION, "ours jackknife vs neuralpredictors", None, "",
                       note=npi.get("status", "not measured")))
