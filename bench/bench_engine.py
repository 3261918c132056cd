"""The run engine (issue #14): each of the issue's targets beside the previous engine, measured
in the same bench run on the same params.

The baseline is commit ``8ae6a11`` (stage "waves", before the task graph), run from a git
worktree (:data:`BASELINE_TREE`, added when missing, reused when present) with the same Python:
the child process gets ``PYTHONPATH=<worktree>`` and checks that ``meireport.__file__`` is under
it (the current code likewise gets ``PYTHONPATH=<this tree>``). Every measured run is its own
child process (``bench/engine_child.py``), ``MPLBACKEND=Agg``, with ``MEIREPORT_CACHE`` pointed
at a fresh folder per measurement unless the measurement is about reuse.

1. **Cold report, 2 workers**: ``params/tiny.yaml`` with the data-limit study and 3 selected
   units (``--quick``: 2 units, one study size): wall time, baseline vs current; the current
   run's busy fraction, sum of task seconds / (workers x wall) (the baseline's ``run.json`` has
   no per-task start/end).
2. **Second report on another source, same study params**: current code, a new run folder, the
   source's seed changed, the same ``MEIREPORT_CACHE`` as (1): the study's pieces fitted
   (``limits/...`` call tasks ``ok``; ``cached`` = reused) and its wall time.
3. **Render-only change**: (1)'s run folders rerun with ``package_hash`` replaced (every
   notebook's key changes, no computation's code does), baseline and current: wall time, and
   what was recomputed: ``model.pt`` / ``mei.npy`` / ``gabor.npy`` under ``results/`` whose mtime
   changed, store entries (``entry.json``) added or changed.
4. **One neuron at default settings on one core**: ``params/default.yaml``, the top unit by
   oracle (``neurons: top, top_n: 1``), the study off, 1 worker: that neuron's train + MEI + Gabor
   task seconds (notebook executions), baseline vs current; the MEI's seconds and steps from
   ``mei.json``. Fields the baseline does not know (e.g. ``mei.stop``) are dropped from its
   params (listed in the results): it runs its own defaults there. Each engine's own top unit is
   timed: the baseline's simulator draws another default session, so the ids differ (noted).
5. **A 40-neuron session on 2 cores, extrapolated** from (4)'s per-neuron cost at default
   settings and (1)'s busy fraction; when the ``scaling`` section ran in the same bench run, its
   linear fit (tiny params) is extrapolated too and its R^2 noted.

A failed measurement raises (the section is recorded as failed); a measurement that does not fit
the time budget (``--budget-min``) is skipped and says so. No timing is asserted.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

from bench.common import BENCH_DIR, ROOT, WORK_DIR, Figure, Results, log, run_monitored, speedup

SECTION = "engine"
BASELINE_COMMIT = "8ae6a11"
BASELINE_TREE = Path("/tmp/meireport-baseline")
BASELINE = f"{BASELINE_COMMIT} (stage waves)"
CHILD = BENCH_DIR / "engine_child.py"
WORK = WORK_DIR / "engine"
TIMEOUT_S = 1500
NEURON_STAGES = ("train", "mei", "gabor")
RECOMPUTED = ("model.pt", "mei.npy", "gabor.npy")
TARGET_BUSY = 0.85
TARGET_RENDER_S = 90.0
TARGET_NEURON_S = 30.0
TARGET_40_S = 25 * 60.0


# --------------------------------------------------------------------------------------------
# the two engines
# --------------------------------------------------------------------------------------------
def _git(*args: str, cwd: Path = ROOT) -> str:
    proc = subprocess.run(["git", "-C", str(cwd), *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} (in {cwd}) exited {proc.returncode}: "
                           f"{proc.stderr.strip()}")
    return proc.stdout.strip()


def baseline_tree(tree: Path = BASELINE_TREE, commit: str = BASELINE_COMMIT) -> dict:
    """The baseline's worktree at ``commit`` (added when missing; one at another commit raises)."""
    want = _git("rev-parse", "--verify", f"{commit}^{{commit}}")
    if tree.exists():
        head = _git("rev-parse", "HEAD", cwd=tree)
        if head != want:
            raise RuntimeError(f"{tree} is at {head[:10]}, not the baseline {want[:10]}; remove it "
                               f"(git -C {ROOT} worktree remove --force {tree}) and rerun")
        how = "reused"
    else:
        _git("worktree", "add", "--detach", str(tree), want)
        how = "added"
    if not (tree / "meireport" / "__init__.py").is_file():
        raise RuntimeError(f"{tree} has no meireport package")
    return {"path": str(tree), "commit": want, "worktree": how}


def _current_tree() -> dict:
    try:
        head = _git("rev-parse", "HEAD")
        dirty = [ln for ln in _git("status", "--porcelain", "--untracked-files=no").splitlines()
                 if ln.strip()]
    except (RuntimeError, OSError) as e:
        return {"path": str(ROOT), "commit": None, "note": str(e)}
    return {"path": str(ROOT), "commit": head, "modified_tracked_files": len(dirty)}


def _tree(engine: str) -> Path:
    return BASELINE_TREE if engine == "baseline" else ROOT


def _child(engine: str, args: list[str], cache: Path | None, timeout: float = TIMEOUT_S):
    """Run ``engine_child.py args`` with ``engine``'s meireport first on the path."""
    tree = _tree(engine)
    path = os.pathsep.join(p for p in (str(tree), os.environ.get("PYTHONPATH")) if p)
    env = {"MPLBACKEND": "Agg", "PYTHONPATH": path}
    if cache is not None:
        env["MEIREPORT_CACHE"] = str(cache)
    # cwd: the engine's tree (never the other one: `python -m` would put the cwd first)
    proc = run_monitored([sys.executable, str(CHILD), *args], env=env, cwd=tree,
                         timeout=timeout)
    if proc.rc != 0:
        tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-4:])
        raise RuntimeError(f"{engine} child `{' '.join(args[:1])}` exited {proc.rc}: {tail}")
    p = proc.payload()
    where = Path(p["meireport_file"]).resolve()
    if not where.is_relative_to(tree.resolve()):
        raise RuntimeError(f"{engine} child imported meireport from {where}, not from {tree}")
    return proc, p


# --------------------------------------------------------------------------------------------
# params
# --------------------------------------------------------------------------------------------
def _merge(d: dict, edits: dict) -> dict:
    out = copy.deepcopy(d)
    for k, v in edits.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _drop(d: dict, dotted: str) -> bool:
    keys = re.sub(r"\[\d+\]", "", dotted).split(".")
    for k in keys[:-1]:
        d = d.get(k) if isinstance(d, dict) else None
        if not isinstance(d, dict):
            return False
    return d.pop(keys[-1], None) is not None if isinstance(d, dict) else False


def write_params(name: str, base: Path, edits: dict) -> tuple[Path, dict]:
    """``base`` with ``edits`` (nested) as ``WORK/params/<name>.yaml``."""
    d = _merge(yaml.safe_load(base.read_text()), edits)
    d["name"] = name
    if isinstance(d.get("run"), dict):  # the store is MEIREPORT_CACHE, set per measurement
        d["run"].pop("cache", None)
    path = WORK / "params" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(d, sort_keys=False))
    return path, d


def for_baseline(path: Path, d: dict) -> tuple[Path, list[str]]:
    """The params of ``path`` as the baseline accepts them: fields it does not know dropped."""
    d = copy.deepcopy(d)
    out = path.with_name(path.stem + ".baseline.yaml")
    dropped: list[str] = []
    for _ in range(12):
        out.write_text(yaml.safe_dump(d, sort_keys=False))
        _, p = _child("baseline", ["check", str(out)], cache=None, timeout=120)
        if p["ok"]:
            return out, dropped
        unknown = re.findall(r"^([\w.\[\]-]+): unknown field", p["error"], re.M)
        if not unknown or not all(_drop(d, u) for u in unknown):
            raise RuntimeError(f"the baseline rejects {out.name}: {p['error']}")
        dropped += unknown
    raise RuntimeError(f"the baseline still rejects {out.name} after dropping {dropped}")


# --------------------------------------------------------------------------------------------
# one measured run
# --------------------------------------------------------------------------------------------
def _fresh(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    return path


def measure(engine: str, params: Path, out: Path, cache: Path, workers: int,
            render_only: bool = False) -> dict:
    """One report run (child process) -> wall time and every task of its ``run.json``."""
    args = ["run", str(params), str(out)] + (["--render-only"] if render_only else [])
    proc, p = _child(engine, args, cache)
    if p["failed"]:
        raise RuntimeError(f"{engine} run {out.name}: {len(p['failed'])} task(s) failed or "
                           f"skipped, e.g. {p['failed'][0]}")
    run = json.loads((out / "run.json").read_text())
    rows = run["results"]
    timed = bool(rows) and all("started" in r and "ended" in r for r in rows)
    if engine == "baseline" and timed:
        raise RuntimeError(f"{out}/run.json has per-task start/end times: not the baseline engine")
    if engine == "current" and not timed:
        raise RuntimeError(f"{out}/run.json has no per-task start/end times: not the current "
                           "engine")
    keep = ("task_id", "stage", "unit_id", "status", "seconds", "started", "ended")
    tasks = [{k: r[k] for k in keep if k in r} for r in rows]
    m = {"engine": engine, "run_dir": str(out.relative_to(ROOT)), "params": params.name,
         "cache": str(cache.relative_to(ROOT)), "workers": workers,
         "render_only": render_only, "wall_s": proc.wall_s, "run_s": p["run_s"],
         "import_s": p["import_s"], "peak_rss_mb": proc.peak_rss_mb,
         "meireport_file": p["meireport_file"], "n_tasks": len(rows),
         "n_executed": sum(r["status"] == "ok" for r in rows),
         "n_cached": sum(r["status"] == "cached" for r in rows),
         "task_s": sum(float(r["seconds"]) for r in rows), "tasks": tasks}
    if timed:
        starts = [r["started"] for r in rows if r["started"]]
        span = max(r["ended"] for r in rows) - min(starts) if starts else 0.0
        m["graph_span_s"] = span
        m["busy_fraction"] = m["task_s"] / (workers * proc.wall_s)
        m["busy_fraction_span"] = m["task_s"] / (workers * span) if span > 0 else None
    what = f"{out.name}{' (render-only rerun)' if render_only else ''}"
    log(f"engine: {engine} {what}: {proc.wall_s:.1f} s, {m['n_executed']} executed, "
        f"{m['n_cached']} cached" + (f", busy {100 * m['busy_fraction']:.0f}%" if timed else ""))
    return m


def _mtimes(root: Path, names) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns
            for n in names for p in root.rglob(n) if p.is_file()}


def _changed(before: dict, after: dict) -> list[str]:
    return sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))


def _study(m: dict) -> dict:
    """The data-limit study's tasks of a run: pieces (current engine) and its notebook."""
    pieces = [t for t in m["tasks"] if t["task_id"].startswith("limits/")]
    chapter = [t for t in m["tasks"] if t["stage"] == "limits" and t not in pieces]
    return {"pieces": len(pieces), "fitted": sum(t["status"] == "ok" for t in pieces),
            "reused": sum(t["status"] == "cached" for t in pieces),
            "pieces_s": sum(float(t["seconds"]) for t in pieces),
            "chapter_s": sum(float(t["seconds"]) for t in chapter),
            "seconds": sum(float(t["seconds"]) for t in pieces + chapter)}


def _neuron(m: dict) -> dict:
    rows = [t for t in m["tasks"] if t["unit_id"] is not None and t["stage"] in NEURON_STAGES]
    units = sorted({t["unit_id"] for t in rows})
    if len(units) != 1 or len(rows) != len(NEURON_STAGES):
        raise RuntimeError(f"{m['run_dir']}: expected one neuron's {'/'.join(NEURON_STAGES)} "
                           f"tasks, got {[t['task_id'] for t in rows]}")
    return {"unit_id": units[0], "by_stage": {t["stage"]: float(t["seconds"]) for t in rows},
            "seconds": sum(float(t["seconds"]) for t in rows),
            "session_s": sum(float(t["seconds"]) for t in m["tasks"] if t["unit_id"] is None)}


def _slim(m: dict) -> dict:
    return {k: v for k, v in m.items() if k != "tasks"}


# --------------------------------------------------------------------------------------------
# the section
# --------------------------------------------------------------------------------------------
class _Budget:
    def __init__(self, res: Results, sec: dict, deadline: float | None) -> None:
        self.res, self.sec, self.deadline = res, sec, deadline

    def fits(self, name: str, need_s: float) -> bool:
        if self.deadline is None or time.time() + need_s <= self.deadline:
            return True
        left = max(self.deadline - time.time(), 0)
        why = f"time budget (needs ~{need_s:.0f} s, {left:.0f} s left)"
        self.sec.setdefault("skipped", {})[name] = why
        self.res.add(Figure(SECTION, f"{name}: skipped", None, "", note=why))
        log(f"engine: skip {name}: {why}")
        return False


def run_section(res: Results, quick: bool = False, deadline: float | None = None) -> None:
    """Measurements 1-5 (see the module docstring), in the order of what they tell."""
    sec = res.section(SECTION)
    if deadline is not None and deadline - time.time() < 240:
        sec["skipped"] = {"all": "time budget spent before the engine section"}
        res.add(Figure(SECTION, "engine", None, "", note=sec["skipped"]["all"]))
        return
    budget = _Budget(res, sec, deadline)
    sec["baseline"] = baseline_tree()
    sec["current"] = _current_tree()
    _fresh(WORK).mkdir(parents=True)
    sec["imports"] = {}
    runs: dict[str, dict] = {}
    sec["runs"] = runs

    def record(key: str, m: dict) -> dict:
        runs[key] = _slim(m)
        sec["imports"][m["engine"]] = m["meireport_file"]
        res.save()
        return m

    # 1. cold report, 2 workers --------------------------------------------------------------
    units = 2 if quick else 3
    edits = {"selection": {"max_units": units}, "run": {"workers": 2},
             "limits": {"enabled": True}}
    if quick:
        edits["limits"]["n_images"] = [30]
    cold_p, cold_d = write_params("engine_cold", ROOT / "params" / "tiny.yaml", edits)
    cold_pb, dropped = for_baseline(cold_p, cold_d)
    sec["params"] = {"cold": {"from": "params/tiny.yaml", "edits": edits,
                              "baseline_dropped": dropped}}
    cache1 = WORK / "cache_cold"
    base1 = cur1 = None
    if budget.fits("cold report", 2 * (90 if quick else 150)):
        log(f"engine: 1. cold tiny report + study, {units} units, 2 workers: baseline")
        base1 = record("baseline_cold", measure("baseline", cold_pb, WORK / "baseline_cold",
                                                _fresh(WORK / "cache_baseline_cold"), 2))
        log("engine: 1. current")
        cur1 = record("current_cold", measure("current", cold_p, WORK / "current_cold",
                                              _fresh(cache1), 2))
        study = _study(cur1)
        if not study["pieces"] or study["fitted"] != study["pieces"]:
            raise RuntimeError(f"cold run: expected every study piece fitted, got {study}")
        sec["cold_study"] = {"current": study, "baseline": _study(base1)}
        res.add(speedup(SECTION, f"1. cold report (tiny + study, {units} units, 2 workers): "
                        "wall", cur1["wall_s"], base1["wall_s"], BASELINE,
                        note=f"{cur1['n_executed']} tasks (study: {study['pieces']} pieces + "
                             f"its chapter) vs {base1['n_executed']} notebooks; fresh caches"))
        busy = cur1["busy_fraction"]
        res.add(Figure(SECTION, "1. cold report: busy fraction of the 2 workers (current)", busy,
                       "fraction", baseline=f"{BASELINE}: no per-task start/end",
                       target=f">= {100 * TARGET_BUSY:.0f}%", met=busy >= TARGET_BUSY,
                       note=f"sum of task seconds {cur1['task_s']:.1f} s / (2 x wall "
                            f"{cur1['wall_s']:.1f} s); over the graph's span "
                            f"({cur1['graph_span_s']:.1f} s, first start to last end): "
                            f"{100 * (cur1['busy_fraction_span'] or 0):.0f}%"))

    # 3. render-only change, on (1)'s run folders ----------------------------------------------
    if cur1 is not None and budget.fits("render-only change",
                                        0.8 * (base1["wall_s"] + cur1["wall_s"])):
        counts = {
            "baseline": _render_only("baseline", "baseline_render", base1, cold_pb,
                                     WORK / "cache_baseline_cold", record),
            "current": _render_only("current", "current_render", cur1, cold_p, cache1, record)}
        sec["render_only"] = counts
        b, c = counts["baseline"], counts["current"]
        fig = speedup(SECTION, "3. render-only change (package_hash replaced): rerun wall",
                      c["wall_s"], b["wall_s"], f"{BASELINE}, same change",
                      note=f"this config (tiny + study, run only, no book), not the default "
                           f"book the target is for; notebooks re-executed: "
                           f"{c['notebooks_executed']} vs {b['notebooks_executed']}")
        fig.target, fig.met = f"<= {TARGET_RENDER_S:.0f} s (default book)", \
            c["wall_s"] <= TARGET_RENDER_S
        res.add(fig)

        cold_chapter_s = sec["cold_study"]["baseline"]["chapter_s"]
        res.add(Figure(SECTION, "3. render-only change: models / MEIs / Gabors / study fits "
                       "recomputed", c["recomputed"], "files", baseline=BASELINE,
                       baseline_value=b["recomputed"], ratio=None, target="0",
                       met=c["recomputed"] == 0,
                       note=f"current: {_recomputed_note(c, cold_chapter_s)}. Baseline: "
                            f"{_recomputed_note(b, cold_chapter_s)} (mtimes before/after)"))

    # 2. second report on another source, same study params, same cache ------------------------
    if cur1 is not None and budget.fits("second report", 1.2 * cur1["wall_s"]):
        seed = int(cold_d["source"].get("seed", 0)) + 1
        second_p, _ = write_params("engine_second", cold_p, {"source": {"seed": seed}})
        log(f"engine: 2. second report, source seed {seed}, the cold run's cache")
        cur2 = record("current_second", measure("current", second_p, WORK / "current_second",
                                                cache1, 2))
        st = _study(cur2)
        sec["second_study"] = st
        if not st["pieces"]:
            raise RuntimeError("second report: no study pieces in run.json")
        res.add(Figure(SECTION, "2. second report, another source: study pieces fitted",
                       st["fitted"], "fits",
                       baseline=f"{BASELINE}: the whole study, in a new run folder",
                       target="0", met=st["fitted"] == 0,
                       note=f"{st['reused']}/{st['pieces']} pieces cached (reused from the "
                            f"cold run's MEIREPORT_CACHE); the study's chapter re-rendered in "
                            f"{st['chapter_s']:.1f} s"))
        base_study = sec["cold_study"]["baseline"]["seconds"]
        res.add(speedup(SECTION, "2. second report, another source: the study's seconds",
                        max(st["seconds"], 1e-3), base_study,
                        f"{BASELINE} study notebook, cold (recomputed in every new run folder)",
                        note=f"pieces {st['pieces_s']:.1f} s + chapter {st['chapter_s']:.1f} s"))
        res.add(speedup(SECTION, "2. second report, another source: wall", cur2["wall_s"],
                        cur1["wall_s"], "current cold report (1.), empty cache",
                        note=f"{BASELINE} keeps nothing across run folders: its second report "
                             f"is a cold one ({base1['wall_s']:.1f} s in 1.)"))

    # 4. one neuron, default settings, one core ------------------------------------------------
    one = None
    if budget.fits("one neuron at default settings", 300):
        edits4 = {"neurons": {"mode": "top", "top_n": 1}, "limits": {"enabled": False},
                  "run": {"workers": 1}}
        one_p, one_d = write_params("engine_one", ROOT / "params" / "default.yaml", edits4)
        one_pb, dropped4 = for_baseline(one_p, one_d)
        sec["params"]["one_neuron"] = {"from": "params/default.yaml", "edits": edits4,
                                       "baseline_dropped": dropped4}
        log("engine: 4. one neuron at default settings, 1 worker: baseline"
            + (f" (dropped {', '.join(dropped4)}: unknown to it)" if dropped4 else ""))
        b4 = record("baseline_one", measure("baseline", one_pb, WORK / "baseline_one",
                                            _fresh(WORK / "cache_baseline_one"), 1))
        log("engine: 4. current")
        c4 = record("current_one", measure("current", one_p, WORK / "current_one",
                                           _fresh(WORK / "cache_one"), 1))
        nb, nc = _neuron(b4), _neuron(c4)
        # each engine's own top unit by oracle: the baseline's simulator draws another default
        # session (the cell-type mix changed since, issue #18), so its top unit has another id
        same_unit = nb["unit_id"] == nc["unit_id"]
        units_note = (f"unit {nc['unit_id']}" if same_unit else
                      f"each engine's top unit by oracle: {nc['unit_id']} (current) vs "
                      f"{nb['unit_id']} ({BASELINE}: its simulator draws another session)")
        meis = {}
        for key, m, n in (("baseline", b4, nb), ("current", c4, nc)):
            f = ROOT / m["run_dir"] / "results"
            (mj,) = f.glob(f"*/{n['unit_id']}/mei.json")
            v = json.loads(mj.read_text())
            meis[key] = {k: v[k] for k in v if k.startswith("mei_steps") or k == "mei_seconds"}
        one = {"unit_id": nc["unit_id"], "baseline_unit_id": nb["unit_id"], "baseline": nb,
               "current": nc, "mei_json": meis,
               "mei_params": {"steps": one_d.get("mei", {}).get("steps"),
                              "n_starts": one_d.get("mei", {}).get("n_starts"),
                              "stop": one_d.get("mei", {}).get("stop")}}
        sec["one_neuron"] = one
        fig = speedup(SECTION, "4. one neuron, default settings, 1 core: train + MEI + Gabor",
                      nc["seconds"], nb["seconds"], BASELINE,
                      note="task seconds, current vs baseline (notebook executions): "
                           + "; ".join(f"{s} {nc['by_stage'][s]:.1f} vs {nb['by_stage'][s]:.1f} s"
                                       for s in NEURON_STAGES)
                           + f"; {units_note}"
                           + (f"; dropped for the baseline: {', '.join(dropped4)}"
                              if dropped4 else ""))
        fig.target, fig.met = f"<= {TARGET_NEURON_S:.0f} s", nc["seconds"] <= TARGET_NEURON_S
        res.add(fig)
        cm, bm = meis["current"], meis["baseline"]
        steps = (f"current: the kept start ran {cm.get('mei_steps')} steps, all starts "
                 f"{cm.get('mei_steps_total')}" if "mei_steps" in cm
                 else "current: no steps field in mei.json")
        steps += ("; baseline: no steps field (every start runs mei.steps = "
                  f"{one['mei_params']['steps']})" if "mei_steps" not in bm else
                  f"; baseline: {bm.get('mei_steps')} / {bm.get('mei_steps_total')}")
        if "mei_seconds" in cm and "mei_seconds" in bm:
            res.add(speedup(SECTION, "4. one neuron: MEI synthesis (mei.json mei_seconds)",
                            cm["mei_seconds"], bm["mei_seconds"], BASELINE,
                            note=steps + ". Pixel agreement with the baseline's MEI is not "
                                         "compared (different loops)"))
        else:
            res.add(Figure(SECTION, "4. one neuron: MEI synthesis (mei.json mei_seconds)",
                           cm.get("mei_seconds"), "s", note=steps))

    # 5. a 40-neuron session on 2 cores, extrapolated ------------------------------------------
    _extrapolate(res, sec, cur1, one)


def _render_only(engine: str, key: str, m0: dict, params: Path, cache: Path, record) -> dict:
    """Rerun ``m0``'s folder with ``package_hash`` replaced; what was recomputed (mtimes)."""
    run_dir = ROOT / m0["run_dir"]
    files0, store0 = _mtimes(run_dir / "results", RECOMPUTED), _mtimes(cache, ["entry.json"])
    log(f"engine: 3. render-only change (package_hash replaced): {engine}")
    m = record(key, measure(engine, params, run_dir, cache, 2, render_only=True))
    files1, store1 = _mtimes(run_dir / "results", RECOMPUTED), _mtimes(cache, ["entry.json"])
    changed = _changed(files0, files1)
    c = {name: sum(Path(f).name == name for f in changed) for name in RECOMPUTED}
    c |= {"of": {name: sum(Path(f).name == name for f in files0) for name in RECOMPUTED},
          "store_entries_added": len(set(store1) - set(store0)),
          "store_entries_changed": sum(store0[k] != store1.get(k) for k in store0),
          "store_entries": len(store0), "study": _study(m), "wall_s": m["wall_s"],
          "notebooks_executed": sum(t["status"] == "ok" and not t["task_id"].startswith("limits/")
                                    for t in m["tasks"])}
    # fits: models retrained, store entries written, study pieces refitted
    c["fits"] = (c["model.pt"] + c["store_entries_added"] + c["store_entries_changed"]
                 + c["study"]["fitted"])
    c["meis"], c["gabors"] = c["mei.npy"], c["gabor.npy"]
    c["recomputed"] = c["fits"] + c["meis"] + c["gabors"]
    return c


def _recomputed_note(x: dict, cold_chapter_s: float) -> str:
    """What a render-only rerun recomputed, in words (:func:`_render_only`'s counts)."""
    st = x["study"]
    study = (f"study pieces fitted {st['fitted']}/{st['pieces']}" if st["pieces"] else
             f"its study notebook re-executed in {st['chapter_s']:.1f} s (cold "
             f"{cold_chapter_s:.1f} s)")
    return (f"fits {x['fits']}, MEIs {x['meis']}, Gabors {x['gabors']}: "
            + ", ".join(f"{x[n]}/{x['of'][n]} {n}" for n in RECOMPUTED)
            + f" rewritten; store entries {x['store_entries_added']} added, "
              f"{x['store_entries_changed']} changed of {x['store_entries']}; {study}")


def _extrapolate(res: Results, sec: dict, cur1: dict | None, one: dict | None,
                 n: int = 40, cores: int = 2) -> None:
    """Linear extrapolation of the per-neuron cost to ``n`` neurons on ``cores`` cores."""
    eff = cur1["busy_fraction"] if cur1 else None
    eff_note = (f"the cold report's busy fraction {100 * eff:.0f}% (1.)" if eff
                else "ideal split (1. did not run)")
    eff = eff or 1.0
    scaling = res.data["sections"].get("scaling") or {}
    fit = scaling.get("fit_workers1")
    out: dict = {"n": n, "cores": cores, "efficiency": eff}
    if one is not None:
        c, b = one["current"], one["baseline"]
        t = c["session_s"] + n * c["seconds"] / (cores * eff)
        tb = b["session_s"] + n * b["seconds"] / cores
        out["default"] = {"current_s": t, "baseline_s": tb, "per_neuron_s": c["seconds"],
                          "session_s": c["session_s"],
                          "baseline_per_neuron_s": b["seconds"],
                          "baseline_session_s": b["session_s"]}
        res.add(Figure(
            SECTION, f"5. {n}-neuron session on {cores} cores, default settings (EXTRAPOLATED)",
            t, "s", baseline=f"{BASELINE}, extrapolated likewise (ideal split)",
            baseline_value=tb, ratio=tb / t, ratio_kind="x faster",
            target=f"<= {TARGET_40_S / 60:.0f} min", met=t <= TARGET_40_S,
            note=f"not measured: session stages {c['session_s']:.0f} s (4.) + {n} x "
                 f"{c['seconds']:.1f} s per neuron (4.) / ({cores} cores x {eff_note}); the "
                 "data-limit study excluded"
                 + (f"; the scaling section's curve (tiny params) has R^2 {fit['r2']:.3f}"
                    if fit and fit.get("r2") is not None else "")))
    if fit:
        t = fit["intercept_s"] + n * fit["slope_s_per_neuron"] / (cores * eff)
        out["scaling_fit"] = {"current_s": t, **fit}
        res.add(Figure(
            SECTION, f"5. {n}-neuron session on {cores} cores, tiny params (EXTRAPOLATED from "
                     "the scaling fit)", t, "s",
            note=f"not measured: the scaling section's workers=1 fit, {fit['intercept_s']:.1f} s "
                 f"+ {n} x {fit['slope_s_per_neuron']:.1f} s / ({cores} cores x {eff_note}); "
                 "tiny params, so not comparable with the target (set at default settings)"))
    if one is None and not fit:
        out["skipped"] = "neither 4. nor the scaling section ran"
        res.add(Figure(SECTION, f"5. {n}-neuron session: not extrapolated", None, "",
                       note=out["skipped"]))
    sec["extrapolation"] = out
