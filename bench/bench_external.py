"""Training, MEI and Gabor-search timings, with the models/MEI issues' own pieces.

``bench/bench_train.py`` and ``bench/bench_mei.py`` belong to the issues that build those stages;
this module only calls them (or the library they time), each in a child process:

- training, with ``meireport.models``'s public API on the default session (118 images x 50
  repeats): one neuron's CNN and LN fit and the population CNN of all VISam units (default
  configs), i.e. the models issue's figures; ``--full-models`` runs ``bench_train.py timing``
  as it is instead (4 CNN + 4 LN fits, population, throughput: over 10 minutes on this machine).
- MEI, with ``bench_mei.py``'s loader and models (``load``, ``tuned``, ``TrueNeuron``, the
  CNN-sized ``CNNStandIn``, ``UnitModel``) and ``meireport.mei.generate_mei`` /
  ``meireport.mei.gabor.gabor_search``: one MEI of 1000 steps on a true neuron; on the CNN stand-in
  short runs (cost is linear in steps) extrapolated to 1000 steps, one start and the default
  starts; the in-silico Gabor search on each (the CNN's on the quick grid, scaled by Gabors
  evaluated); a cProfile of a short CNN MEI.
  ``--full-models`` also runs its ``part_time`` as it is (about 10 minutes here).

The issues' targets are absolute (one neuron <= 60 s, one MEI <= 20 s on 2 CPU cores): on a
shared machine they are context; the ratios (LN vs CNN, population per neuron vs one neuron,
default starts vs one) are measured side by side.
"""

from __future__ import annotations

import sys

from bench.common import BENCH_DIR, JSON_MARK, ROOT, WORK_DIR, Figure, Results, log, run_monitored

SECTION = "models"

_MEI_CHILD = """
import json, sys, time
from pathlib import Path
sys.path.insert(0, {root!r})
from bench import bench_mei as m
from meireport.report.params import GaborParams

def timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out

def say(msg):
    print(msg, file=sys.stderr, flush=True)

sess = m.load(Path({cache!r}), 118, 700000001)
truth, images, geom = sess["truth"], sess["images"], sess["geometry"]
u = m.tuned(sess)[0][0]
mean, c_star = m.footing(images)
starts = m.MEIConfig().starts
out = {{"threads": m.torch.get_num_threads(), "unit_id": int(u), "default_starts": list(starts),
       "steps": {steps}, "short_steps": {short}}}
true = m.TrueNeuron(truth, u)
cnn = m.UnitModel(m.CNNStandIn(), 0)
# true neuron: the full 1000 steps, one start and the default starts; the full search
out["true_1starts_s"], _ = timed(
    lambda: m.generate_mei(true, images, m.MEIConfig(steps={steps}, starts=("noise",))))
say(f"MEI true neuron, 1 start: {{out['true_1starts_s']:.1f}} s")
out["true_search_s"], g = timed(lambda: m.gabor_search(true, geom, mean=mean, std=c_star))
out["true_search_images"] = int(g.n_evaluated)
say(f"Gabor search true neuron: {{out['true_search_s']:.1f}} s, {{g.n_evaluated}} Gabors")
# CNN stand-in: best of 2 short runs (cost is linear in steps), default starts once
out["cnn_1start_short_s"] = [timed(lambda: m.generate_mei(
    cnn, images, m.MEIConfig(steps={short}, starts=("noise",))))[0] for _ in range(2)]
out["cnn_default_short_s"], _ = timed(
    lambda: m.generate_mei(cnn, images, m.MEIConfig(steps={short}, starts=starts)))
say(f"MEI CNN stand-in, {short} steps: {{min(out['cnn_1start_short_s']):.1f}} s (best of 2)")
quick = GaborParams(quick=True).search_config()
out["cnn_quick_search_s"], g = timed(
    lambda: m.gabor_search(cnn, geom, mean=mean, std=c_star, config=quick))
out["cnn_quick_search_images"] = int(g.n_evaluated)
say(f"Gabor search CNN stand-in (quick grid): {{out['cnn_quick_search_s']:.1f}} s")
import cProfile, pstats
prof = cProfile.Profile()
prof.enable()
m.generate_mei(cnn, images, m.MEIConfig(steps=20, starts=("noise",)))
prof.disable()
rows = [{{"function": f"{{Path(f).name}}:{{ln}}({{fn}})", "calls": v[1],
         "tottime_s": round(v[2], 4)}} for (f, ln, fn), v in pstats.Stats(prof).stats.items()]
out["profile_mei_cnn_standin"] = sorted(rows, key=lambda r: -r["tottime_s"])[:8]
print({mark!r} + json.dumps(out), flush=True)
"""

_TRAIN_CHILD = """
import json, sys, time
import torch
from meireport.select import oracle_correlation
from meireport.sources import open_session, simulate_session
from meireport.models import TrainConfig, fit_model, load_responses

sim = simulate_session({cache!r}, seed=0)  # the default session: 118 images x 50 repeats
with open_session(sim.cache_dir) as s:
    data = load_responses(s, area="VISam")
truth = sim.truth
oracle = oracle_correlation(data.trials)
kinds = dict(zip(truth.unit_id.tolist(), truth.kind.tolist()))
tuned = [i for i, u in enumerate(data.unit_ids) if kinds[int(u)] in ("simple", "complex")]
u = int(data.unit_ids[max(tuned, key=lambda i: oracle[i])])
epochs = {epochs}
capped = None if epochs is None else TrainConfig(max_epochs=epochs)
out = {{"threads": torch.get_num_threads(), "unit_id": u, "kind": kinds[u],
       "n_units": int(len(data.unit_ids)), "n_images": int(len(data.image_ids)),
       "max_epochs": epochs, "default_patience": TrainConfig().patience,
       "default_max_epochs": TrainConfig().max_epochs}}
for name, ids, kind, cfg in (("cnn_one", [u], "cnn", None), ("ln_one", [u], "ln", None),
                             ("cnn_population", list(data.unit_ids), "cnn", capped)):
    t = time.perf_counter()
    fit = fit_model(data, ids, kind, train_config=cfg, truth=truth)
    out[name + "_s"] = time.perf_counter() - t
    out[name + "_epochs"] = int(fit.metrics["epochs"].iloc[0])
    out[name + "_units"] = len(ids)
    print(f"{{name}}: {{out[name + '_s']:.1f}} s, {{out[name + '_epochs']}} epochs",
          file=sys.stderr, flush=True)
print({mark!r} + json.dumps(out), flush=True)
"""

_MEI_FULL_CHILD = """
import json, sys
from pathlib import Path
sys.path.insert(0, {root!r})
from bench import bench_mei as m
sess = m.load(Path({cache!r}), 118, 700000001)
out = m.part_time(sess, {steps}, repeats=1)
print({mark!r} + json.dumps(out), flush=True)
"""

def _mei(res: Results, sec: dict, steps: int, quick: bool, timeout: float) -> None:
    script = BENCH_DIR / "bench_mei.py"
    src = script.read_text()
    needed = ("def load", "def tuned", "class CNNStandIn", "TrueNeuron", "UnitModel")
    if not all(n in src for n in needed):
        sec["bench_mei"] = {"status": "bench_mei.py lacks load/tuned/CNNStandIn; not called"}
        return
    short = 20 if quick else 50
    log(f"models: MEI ({steps} steps; CNN stand-in {short}-step runs) and Gabor search")
    code = _MEI_CHILD.format(root=str(ROOT), cache=str(WORK_DIR / "mei_cache"), steps=steps,
                             short=short, mark=JSON_MARK)
    proc = run_monitored([sys.executable, "-c", code], env={"MPLBACKEND": "Agg"},
                         timeout=timeout)
    try:
        out = proc.payload()
    except RuntimeError as exc:
        sec["bench_mei"] = {"status": f"failed: {exc}", "wall_s": proc.wall_s}
        res.add(Figure(SECTION, "one MEI", None, "", note=str(exc)))
        return
    sec["bench_mei"] = {"status": "measured", "wall_s": proc.wall_s,
                        "peak_rss_mb": proc.peak_rss_mb, "figures": out}
    n_st = len(out["default_starts"])
    note = f"unit {out['unit_id']}, torch threads {out['threads']}"
    target = "<= 20 s (issue 5, absolute)"
    t1 = out["true_1starts_s"]
    res.add(Figure(SECTION, f"one MEI, {steps} steps, 1 start (true neuron)", t1, "s",
                   target=target, met=t1 <= 20, note=note))
    per_step = min(out["cnn_1start_short_s"]) / short
    est = per_step * steps
    ratio = out["cnn_default_short_s"] / min(out["cnn_1start_short_s"])
    res.add(Figure(SECTION, f"one MEI, {steps} steps, 1 start (CNN-sized stand-in)", est, "s",
                   target=target, met=est <= 20,
                   note=f"{steps} x {1e3 * per_step:.0f} ms/step (best of 2 runs of {short} "
                        f"steps; cost is linear in steps); {note}"))
    res.add(Figure(SECTION, f"one MEI, {steps} steps, {n_st} starts (CNN-sized stand-in)",
                   est * ratio, "s", baseline="1 start", baseline_value=est, ratio=ratio,
                   ratio_kind="x the 1-start cost", target=target, met=est * ratio <= 20,
                   note=f"{n_st} starts cost {ratio:.2f}x one at {short} steps"))
    n_true = out["true_search_images"]
    res.add(Figure(SECTION, "in-silico Gabor search (true neuron)", out["true_search_s"], "s",
                   note=f"{n_true} Gabors, {1e3 * out['true_search_s'] / n_true:.2f} ms each"))
    ms = out["cnn_quick_search_s"] / out["cnn_quick_search_images"]
    res.add(Figure(SECTION, "in-silico Gabor search (CNN-sized stand-in)", ms * n_true, "s",
                   note=f"{1e3 * ms:.1f} ms per Gabor on the quick grid "
                        f"({out['cnn_quick_search_images']} Gabors, "
                        f"{out['cnn_quick_search_s']:.1f} s) x the {n_true} Gabors of the "
                        "default search"))


def _train_timing_cli(res: Results, sec: dict, src: str, timeout: float) -> bool:
    """``bench_train.py timing``: per-neuron CNN and LN fits, population model, throughput."""
    import pandas as pd

    if '"timing"' not in src or "def timing" not in src:
        return False
    out_dir = WORK_DIR / "bench_train"
    cmd = [sys.executable, str(BENCH_DIR / "bench_train.py"), "timing", "--cache",
           str(WORK_DIR / "train_cache"), "--out", str(out_dir)]
    log("models: bench_train.py timing (per-neuron CNN + LN fits, population model)")
    proc = run_monitored(cmd, env={"MPLBACKEND": "Agg"}, timeout=timeout)
    csv = out_dir / "train_timing.csv"
    info = {"command": " ".join(["bench/bench_train.py", *cmd[2:]]), "wall_s": proc.wall_s,
            "peak_rss_mb": proc.peak_rss_mb}
    if proc.rc != 0 or not csv.is_file():
        info["status"] = f"exit {proc.rc}: " + " | ".join(proc.stderr.strip().splitlines()[-3:])
        sec["bench_train"] = info
        return True
    table = pd.read_csv(csv)
    info.update(status="measured", rows=table.to_dict("records"))
    sec["bench_train"] = info
    threads = int(table["threads"].iloc[0]) if "threads" in table else None
    what = table["what"].astype(str)
    cnn = table[what.str.startswith("per-neuron CNN")]["value"]
    ln = table[what.str.startswith("LN")]["value"]
    pop = table[what.str.startswith("population")]
    if len(cnn):
        med = float(cnn.median())
        res.add(Figure(SECTION, "one neuron's CNN training (median)", med, "s",
                       target="<= 60 s (issue 4, absolute)", met=med <= 60,
                       note=f"{len(cnn)} units, {float(cnn.min()):.0f}-{float(cnn.max()):.0f} s; "
                            f"torch threads {threads}"))
        if len(ln):
            res.add(Figure(SECTION, "one neuron's LN baseline (median)", float(ln.median()), "s",
                           baseline="per-neuron CNN", baseline_value=med,
                           ratio=med / float(ln.median()), ratio_kind="x faster"))
        if len(pop):
            per_unit = float(pop["value"].iloc[0])
            res.add(Figure(SECTION, "population CNN, per neuron", per_unit, "s",
                           baseline="per-neuron CNN", baseline_value=med, ratio=med / per_unit,
                           ratio_kind="x cheaper per neuron", note=str(pop["what"].iloc[0])))
    for _, row in table[table["unit"].astype(str) == "images/s"].iterrows():
        res.add(Figure(SECTION, str(row["what"]), float(row["value"]), "images/s"))
    return True


def _train_public_api(res: Results, sec: dict, timeout: float, epochs: int | None) -> None:
    """One neuron's CNN and LN fit and the population model, with ``meireport.models``'s API.

    The single-neuron fits run to convergence (early stopping), as the report's; ``epochs``
    caps the population fit (None: to convergence too), compared per neuron and epoch.
    """
    log("models: training (one neuron CNN + LN to convergence, population CNN"
        f"{'' if epochs is None else f' capped at {epochs} epochs'})")
    code = _TRAIN_CHILD.format(cache=str(WORK_DIR / "mei_cache"), epochs=epochs, mark=JSON_MARK)
    proc = run_monitored([sys.executable, "-c", code], env={"MPLBACKEND": "Agg"},
                         timeout=timeout)
    try:
        out = proc.payload()
    except RuntimeError as exc:
        sec["training"] = {"status": f"failed: {exc}", "wall_s": proc.wall_s}
        res.add(Figure(SECTION, "one neuron's CNN training", None, "", note=str(exc)))
        return
    sec["training"] = {"status": "measured", "wall_s": proc.wall_s,
                       "peak_rss_mb": proc.peak_rss_mb, "figures": out}
    cnn, ln, pop = out["cnn_one_s"], out["ln_one_s"], out["cnn_population_s"]
    e1, ep, n = out["cnn_one_epochs"], out["cnn_population_epochs"], out["cnn_population_units"]
    res.add(Figure(SECTION, "one neuron's CNN training (to convergence)", cnn, "s",
                   target="<= 60 s (issue 4, absolute)", met=cnn <= 60,
                   note=f"{e1} epochs, {cnn / e1:.2f} s/epoch (60 s allow {60 * e1 / cnn:.0f}); "
                        f"unit {out['unit_id']} ({out['kind']}), default CNN and training "
                        f"config, {out['n_images']} images; torch threads {out['threads']}"))
    res.add(Figure(SECTION, "one neuron's LN baseline (to convergence)", ln, "s",
                   baseline="one neuron's CNN", baseline_value=cnn,
                   ratio=cnn / ln if ln else None, ratio_kind="x faster",
                   note=f"{out['ln_one_epochs']} epochs"))
    res.add(Figure(SECTION, f"population CNN ({n} units), per neuron and epoch", pop / n / ep,
                   "s", baseline="one neuron's CNN, per epoch", baseline_value=cnn / e1,
                   ratio=(cnn / e1) / (pop / n / ep), ratio_kind="x cheaper per neuron",
                   note=f"{pop:.0f} s for all {n} units, {ep} epochs"
                        + (f" (capped at {epochs})" if epochs else "")))


def _mei_full(res: Results, sec: dict, steps: int, timeout: float) -> None:
    """bench_mei.py's own ``part_time`` as it is (both models, every start set)."""
    log(f"models: bench_mei.part_time({steps} steps), child process")
    code = _MEI_FULL_CHILD.format(root=str(ROOT), cache=str(WORK_DIR / "mei_cache"),
                                  steps=steps, mark=JSON_MARK)
    proc = run_monitored([sys.executable, "-c", code], env={"MPLBACKEND": "Agg"},
                         timeout=timeout)
    try:
        out = proc.payload()
    except RuntimeError as exc:
        sec["bench_mei_part_time"] = {"status": f"failed: {exc}", "wall_s": proc.wall_s}
        return
    sec["bench_mei_part_time"] = {"status": "measured", "wall_s": proc.wall_s, "figures": out}
    for k, v in out.items():
        if k.endswith("_s"):
            res.add(Figure(SECTION, f"bench_mei.part_time: {k}", v, "s",
                           target="<= 20 s (issue 5, absolute)" if k.startswith("mei_") else None,
                           met=(v <= 20) if k.startswith("mei_") else None))


def run_section(res: Results, steps: int = 1000, quick: bool = False,
                timeout: float = 900, full: bool = False, epochs: int | None = 10) -> None:
    """Training (always: the public API; ``full``: bench_train.py's timing mode) and MEI/Gabor
    (with bench_mei.py's models when it exists; ``full``: also its ``part_time`` as it is)."""
    sec = res.section(SECTION)
    train_script = BENCH_DIR / "bench_train.py"
    if full and train_script.is_file() and _train_timing_cli(res, sec, train_script.read_text(),
                                                             timeout):
        pass
    else:
        if not train_script.is_file():
            sec["bench_train"] = {"status": "bench/bench_train.py is not there yet"}
        elif not full:
            sec["bench_train"] = {"status": "present; its `timing` mode (4 CNN + 4 LN fits, a "
                                            "population model, throughput: over 10 min here) "
                                            "runs with --full-models"}
        _train_public_api(res, sec, timeout, None if full else (5 if quick else epochs))
    if not (BENCH_DIR / "bench_mei.py").is_file():
        sec["bench_mei"] = {"status": "bench/bench_mei.py is not there yet (MEI not timed)"}
        res.add(Figure(SECTION, "one MEI", None, "", note=sec["bench_mei"]["status"]))
        return
    _mei(res, sec, steps, quick, timeout)
    if full:
        _mei_full(res, sec, steps, timeout)
