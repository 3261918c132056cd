"""``bench/results.json`` -> ``bench/results.md`` (the book's Performance page) + PNG plots.

Run alone with ``python -m bench.render`` to redraw the page from an existing results file.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from bench.common import BENCH_DIR, RESULTS_JSON, RESULTS_MD

PNG = {"spikes": "perf_spikes.png", "papermill": "perf_papermill.png",
       "scaling": "perf_scaling.png"}


def fmt(v, unit: str = "") -> str:
    """A number for a table cell, with a readable unit."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if unit == "bool":
        return "yes" if v else "no"
    if unit == "s":
        if v == 0:
            return "0 s"
        if v >= 3600:
            return f"{v / 3600:.2f} h"
        if v >= 100:
            return f"{v / 60:.1f} min"
        return f"{v:.3g} s" if v >= 0.001 else f"{v * 1e6:.0f} us"
    if unit == "fraction":
        return f"{100 * v:.0f}%"
    if unit == "MB":
        return f"{v:,.0f} MB"
    if isinstance(v, float) and (abs(v) >= 1e4 or (0 < abs(v) < 1e-3)):
        return f"{v:.2g} {unit}".strip()
    if isinstance(v, float):
        return f"{v:.3g} {unit}".strip()
    return f"{v} {unit}".strip()


def fmt_ratio(r, kind: str) -> str:
    """``20.7x faster``; large ratios in scientific notation."""
    if r is None:
        return "-"
    num = f"{r:.2g}" if r >= 1e4 else f"{r:.3g}"
    return f"{num}{'x' if kind.startswith('x') else ''} {kind.lstrip('x ').strip()}".strip()


def _met(m) -> str:
    return "-" if m is None else ("**met**" if m else "**missed**")


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    esc = [[str(c).replace("|", "\\|").replace("\n", " ") for c in r] for r in rows]
    return ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|",
            *("| " + " | ".join(r) + " |" for r in esc), ""]


def _fig_rows(figs: list[dict], with_target: bool = True, with_note: bool = True) -> list[str]:
    header = ["Figure", "Ours", "Baseline", "Ratio"]
    if with_target:
        header += ["Target", "Met"]
    if with_note:
        header.append("Note")
    rows = []
    for f in figs:
        base = (f"{f['baseline']}: {fmt(f['baseline_value'], f['unit'])}" if f.get("baseline")
                else "-")
        row = [f["name"], fmt(f["value"], f["unit"]), base,
               fmt_ratio(f.get("ratio"), f.get("ratio_kind", ""))]
        if with_target:
            row += [f.get("target") or "-", _met(f.get("met"))]
        if with_note:
            row.append(f.get("note") or "")
        rows.append(row)
    return _table(header, rows)


def _section_figs(data: dict, section: str) -> list[dict]:
    return [f for f in data["figures"] if f["section"] == section]


# --------------------------------------------------------------------------------------------
# plots
# --------------------------------------------------------------------------------------------
def _plot_spikes(data: dict, out: Path) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figs = [f for f in _section_figs(data, "spikes") if f["unit"] == "s" and f.get("baseline")]
    if not figs:
        return False
    fig, ax = plt.subplots(figsize=(8, 0.6 + 0.7 * len(figs)))
    y = range(len(figs))
    ax.barh([i + 0.2 for i in y], [f["value"] for f in figs], height=0.4, label="ours")
    ax.barh([i - 0.2 for i in y], [f["baseline_value"] for f in figs], height=0.4,
            label="baseline")
    ax.set_yticks(list(y), [f["name"] for f in figs], fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("seconds (log)")
    ax.legend(fontsize=8)
    ax.set_title("Spike counting, seed-sized file")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return True


def _plot_papermill(data: dict, out: Path) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = data["sections"].get("papermill", {}).get("per_stage") or []
    if not stages:
        return False
    fig, ax = plt.subplots(figsize=(7, 3.2))
    names = [s["stage"] for s in stages]
    bottom = [0.0] * len(stages)
    for key, label in (("overhead_s", "kernel/papermill overhead"), ("imports_s", "imports"),
                       ("work_s", "work")):
        vals = [s[key] for s in stages]
        ax.bar(names, vals, bottom=bottom, label=label)
        bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
    empty = data["sections"]["papermill"].get("empty_notebook_s")
    if empty:
        ax.axhline(sorted(empty)[len(empty) // 2], color="k", ls="--", lw=1,
                   label="empty notebook")
    ax.set_ylabel("seconds per notebook (median)")
    ax.legend(fontsize=8)
    ax.set_title("Where a notebook's time goes (tiny report, cold)")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return True


def _plot_scaling(data: dict, out: Path) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    sec = data["sections"].get("scaling", {})
    pts = [p for p in sec.get("points", []) if "run_s" in p]
    if not pts:
        return False
    fig, ax = plt.subplots(figsize=(6, 3.6))
    styles = {(1, "local"): ("o-", "1 worker, local"), (2, "local"): ("s", "2 workers, local"),
              (2, "dask"): ("^", "2 workers, Dask LocalCluster")}
    for (w, sch), (style, label) in styles.items():
        ps = sorted((p for p in pts if p["workers"] == w and p["scheduler"] == sch),
                    key=lambda p: p["n"])
        if ps:
            ax.plot([p["n"] for p in ps], [p["run_s"] for p in ps], style, label=label)
    fit = sec.get("fit_workers1")
    if fit:
        x = np.linspace(0, max(p["n"] for p in pts), 20)
        ax.plot(x, fit["intercept_s"] + fit["slope_s_per_neuron"] * x, "k:", lw=1,
                label=f"fit: {fit['intercept_s']:.0f} s + {fit['slope_s_per_neuron']:.1f} s/neuron")
    ax.set_xlabel("neurons")
    ax.set_ylabel("run time (s)")
    ax.set_xlim(left=0)
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    ax.set_title("Run time vs neurons (tiny params, session stages cached)")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return True


# --------------------------------------------------------------------------------------------
# page
# --------------------------------------------------------------------------------------------
def _machine(m: dict, data: dict) -> list[str]:
    v = m.get("versions", {})
    allen = m.get("allen_env") or {}
    lines = [
        f"Measured **{m.get('date', '?')}** on **{m.get('cpu_model', '?')}**, "
        f"{m.get('usable_cores', '?')} usable cores ({m.get('logical_cores', '?')} logical), "
        f"{m.get('ram_gb', '?')} GB RAM, {m.get('platform', '')}. Load average at start "
        f"{m.get('load_average_at_start')}, at the end {data.get('load_average_at_end')}.",
        "",
        "The machine is shared with other work, so absolute seconds are context only: every "
        "figure below is a ratio against a baseline measured side by side in the same run, on "
        "the same data, or a curve of cost against size.",
        "",
        "Versions: " + ", ".join(f"{k} {val}" for k, val in v.items() if val) + ".",
    ]
    if allen:
        lines += ["", "AllenSDK env (`nox -s allen`): "
                  + ", ".join(f"{k} {val}" for k, val in allen.items()) + "."]
    total = data.get("total_s")
    if total:
        lines += ["", f"Benchmarks ran for {total / 60:.1f} min"
                  + (f" ({data['nox_total_s'] / 60:.1f} min for `nox -s bench` with its install)"
                     if data.get("nox_total_s") else "") + "."]
    return lines + [""]


def _profile_rows(rows: list[dict], key: str) -> list[str]:
    return _table(["Entry", key, "Calls" if "calls" in rows[0] else "Self"],
                  [[r.get("function") or r.get("module"),
                    fmt(r.get("tottime_s", r.get("cumulative_s")), "s"),
                    str(r.get("calls", fmt(r.get("self_s"), "s")))] for r in rows])


def _engine_cell(f: dict) -> str:
    """The baseline's cell of a target row: its value, else what it says instead."""
    label = f.get("baseline") or ""
    if f.get("baseline_value") is not None:
        value = fmt(f["baseline_value"], f["unit"])
        # the previous engine unless the label says otherwise
        return value if label.endswith("(stage waves)") else f"{label}: {value}"
    return label.split(": ", 1)[1] if ": " in label else "-"


def _engine(data: dict, sec: dict) -> list[str]:
    """The run engine's section: issue #14's targets beside the previous engine."""
    base = sec.get("baseline", {})
    cur = sec.get("current", {})
    imp = sec.get("imports", {})
    out = ["## Run engine (issue #14)", "",
           f"Baseline: the previous engine (stage waves), commit `{str(base.get('commit'))[:10]}`, "
           f"run from a git worktree (`{base.get('path')}`, {base.get('worktree')}) with the same "
           "Python; current: this tree"
           + (f" (`{str(cur.get('commit'))[:10]}` + {cur.get('modified_tracked_files')} modified "
              "files)" if cur.get("commit") else "") + ". Each run is its own process with a "
           "fresh `MEIREPORT_CACHE`, except where reuse is measured.", ""]
    if imp:
        out += ["`meireport` imported by the children (checked in each, under its tree): "
                + "; ".join(f"{k} `{v}`" for k, v in imp.items()) + ".", ""]
    for label, p in (sec.get("params") or {}).items():
        dropped = p.get("baseline_dropped") or []
        out += [f"Params `{label}`: `{p.get('from')}` with `{json.dumps(p.get('edits'))}`"
                + (f"; dropped for the baseline (unknown to it): `{', '.join(dropped)}`"
                   if dropped else "") + ".", ""]
    figs = _section_figs(data, "engine")
    rows = [[f["name"], f.get("target") or "-", _engine_cell(f), fmt(f["value"], f["unit"]),
             fmt_ratio(f.get("ratio"), f.get("ratio_kind", "")), _met(f.get("met")),
             f.get("note") or ""] for f in figs]
    if rows:
        out += ["Every figure marked EXTRAPOLATED is computed, not measured.", ""]
        out += _table(["Measurement", "Target", "Baseline", "Current", "Ratio", "Met?", "Note"],
                      rows)
    runs = sec.get("runs") or {}
    if runs:
        out += ["The runs:", ""]
        out += _table(["Run", "Engine", "Wall", "Tasks run", "Cached", "Busy (wall)",
                       "Busy (graph span)", "Peak RSS"],
                      [[k, r["engine"], fmt(r["wall_s"], "s"), str(r["n_executed"]),
                        str(r["n_cached"]), fmt(r.get("busy_fraction"), "fraction"),
                        fmt(r.get("busy_fraction_span"), "fraction"),
                        fmt(r.get("peak_rss_mb"), "MB")] for k, r in runs.items()])
    for name, why in (sec.get("skipped") or {}).items():
        out += [f"- skipped: {name}: {why}"]
    return out + [""]


def render(data: dict, md_path: Path = RESULTS_MD, png_dir: Path = BENCH_DIR) -> str:
    """Write the page and its plots; return the markdown."""
    secs = data.get("sections", {})
    out = ["# Performance", ""]
    out += _machine(data.get("machine", {}), data)
    targets = [f for f in data["figures"] if f.get("target")]
    if targets:
        out += ["## Targets", "", "Each figure again, with its notes, in its section below.",
                ""] + _fig_rows(targets, with_note=False)
    plots = {k: (png_dir / name) for k, name in PNG.items()}

    sp = secs.get("spikes")
    if sp:
        d = sp.get("data", {})
        out += ["## Spike counting", "",
                f"Seed-sized simulated file: {d.get('n_units_visam')} VISam units, "
                f"{d.get('n_presentations')} natural-scene presentations, "
                f"{d.get('n_spikes_in_windows', 0):,} spikes in the 0-250 ms windows, "
                f"{d.get('nwb_mb', 0):.0f} MB (the seed's session: 135 units, 5950 "
                "presentations, 1.2 M spikes). Cold = a fresh interpreter (the file in the OS "
                "page cache for both); the medians of interleaved runs.", ""]
        if sp.get("allensdk"):
            out += [f"AllenSDK: {sp['allensdk']}.", ""]
        out += _fig_rows(_section_figs(data, "spikes"), with_target=False)
        summ = sp.get("summary", {})
        if summ.get("allen_cold_phases_median_s"):
            o, a = summ["ours_cold_phases_median_s"], summ["allen_cold_phases_median_s"]
            out += ["Cold phases (median):", ""] + _table(
                ["Phase", "Ours", "AllenSDK"],
                [["imports", fmt(o["import_s"], "s"), fmt(a["import_s"], "s")],
                 ["open", fmt(o["open_s"], "s"), fmt(a["open_s"], "s")],
                 ["units + stimulus tables", "(in count)", fmt(a["tables_s"], "s")],
                 ["count", fmt(o["count_s"], "s"), fmt(a["count_s"], "s")]])
        if sp.get("stimulus_table_s") and sp.get("warm_count_s"):
            out += [f"Of our warm count ({fmt(sp['warm_count_s'], 's')} here), "
                    f"{fmt(sp['stimulus_table_s'], 's')} is `Session.stimulus_table()` rebuilding "
                    "the table on every call (AllenSDK keeps its table); the rest is mostly the "
                    "two `searchsorted` calls per unit, the same primitive AllenSDK uses.", ""]
        seed = sp.get("seed_allen")
        if seed:
            cmp = sp.get("seed_allen_vs_ours", {})
            out += [f"The seed's own path in the AllenSDK env: `presentationwise_spike_times` "
                    f"{fmt(seed['presentationwise_spike_times_s'], 's')} + groupby/pivot "
                    f"{fmt(seed['groupby_pivot_s'], 's')}. Its counts differ from ours by "
                    f"{cmp.get('abs_diff_spikes')} spikes in total: {cmp.get('why')}.", ""]
        if _plot_spikes(data, plots["spikes"]):
            out += [f"![Spike counting]({PNG['spikes']})", ""]

    orc = secs.get("oracle")
    if orc:
        ex = orc.get("seed_extrapolated_s", {})
        out += ["## Oracle correlation, all units", "",
                f"Trials {' x '.join(map(str, orc.get('shape', [])))} (units x images x "
                f"repeats). The seed's loop (`super_oracle`, re-implemented as written) ran on "
                f"{len(orc.get('seed_subset', {}).get('neurons', []))} neurons over the full "
                f"table, {fmt(ex.get('per_neuron_iteration'), 's')} per neuron and iteration, "
                "extrapolated to all units x 50 iterations: "
                f"{fmt(ex.get('fifty_iterations'), 's')}. Its random draws were replayed from "
                "ours to compare values.", ""]
        out += _fig_rows(_section_figs(data, "oracle"))
        npi = orc.get("neuralpredictors", {})
        if npi:
            would = npi.get("full_install_would_install")
            out += [f"neuralpredictors: {npi.get('status')}"
                    + (f" ({npi.get('method')})" if npi.get("method") else "")
                    + (f"; a full `pip install neuralpredictors` here would install {would}, "
                       f"changing torch: {npi.get('full_install_changes_torch')}" if would
                       else "") + ".", ""]

    mod = secs.get("models")
    if mod:
        tr = (mod.get("training") or {}).get("figures") or {}
        capped = ("single-neuron fits to convergence (early stopping), the population fit "
                  + (f"capped at {tr['max_epochs']} epochs (compared per neuron and epoch)"
                     if tr.get("max_epochs") else "too"))
        out += ["## Training, MEI and Gabor search", "",
                f"Training with `meireport.models`'s public API on the default session (118 "
                f"images x 50 repeats, default model and training config), {capped}. MEI and "
                "the in-silico Gabor search with `bench/bench_mei.py`'s models (a true "
                "simulated neuron, and a CNN-sized stand-in whose cost is a trained model's); "
                "`--full-models` runs `bench_train.py timing` and `bench_mei.part_time` as they "
                "are (over 20 minutes here). The issues' targets are absolute (train one neuron "
                "<= 60 s, one MEI <= 20 s on 2 CPU cores): on a shared machine, context.", ""]
        for key in ("bench_train", "bench_mei"):
            st = (mod.get(key) or {}).get("status")
            if st and st != "measured":
                out += [f"`bench/{key}.py`: {st}.", ""]
        out += _fig_rows(_section_figs(data, "models"))

    rep = secs.get("report")
    if rep:
        out += ["## The whole report", ""]
        for label, r in rep.items():
            if not isinstance(r, dict) or "cold" not in r:
                continue
            rows = [[name, fmt(r[name]["wall_s"], "s"), fmt(r[name].get("run_s"), "s"),
                     fmt(r[name].get("book_s"), "s"), str(r[name]["n_executed"]),
                     ", ".join(r[name]["executed"]) or "none", fmt(r[name]["peak_rss_mb"], "MB")]
                    for name in ("cold", "rebuild", "mei_changed") if name in r]
            out += [f"`meireport report params/{label}.yaml` ({r.get('mei_change')} for the "
                    "last row):", ""]
            out += _table(["Run", "Wall", "run", "book", "Notebooks executed", "Stages",
                           "Peak RSS"], rows)
        out += _fig_rows(_section_figs(data, "report"))

    pm = secs.get("papermill")
    if pm and pm.get("per_stage"):
        t = pm["totals"]
        share = (t["overhead_s"] + t["imports_s"]) / t["seconds"] if t["seconds"] else 0
        verdict = ("**Overhead dominates**" if pm.get("overhead_dominates")
                   else "Overhead does not dominate")
        out += ["## papermill overhead per notebook", "",
                f"{verdict}: of {fmt(t['seconds'], 's')} spent in the cold tiny report's "
                f"notebooks, {fmt(t['overhead_s'], 's')} is kernel start/shutdown and notebook "
                f"I/O, {fmt(t['imports_s'], 's')} the setup (imports) cell, "
                f"{fmt(t['work_s'], 's')} the work ({100 * share:.0f}% overhead + imports). "
                f"An empty parameterised notebook takes "
                f"{fmt(sorted(pm['empty_notebook_s'])[len(pm['empty_notebook_s']) // 2], 's')}.",
                ""]
        per_neuron = [x for x in pm["per_stage"] if x["stage"] in ("train", "mei", "gabor")]
        if per_neuron:
            tot = sum(x["seconds"] for x in per_neuron)
            ovi = sum(x["overhead_s"] + x["imports_s"] for x in per_neuron)
            out += [f"Per neuron (its train, MEI and Gabor notebooks, medians): {fmt(tot, 's')}, "
                    f"of which {fmt(ovi, 's')} ({100 * ovi / tot:.0f}%) is overhead + imports: "
                    "three kernel starts per neuron. "
                    + ("**Per neuron, overhead dominates.**" if ovi > tot / 2 else
                       "It does not dominate, but fewer, larger notebooks per neuron (or several "
                       "notebooks per kernel) would save most of it at these small settings; at "
                       "the default settings the work (training, 1000-step MEIs) dwarfs it."), ""]
        out += _table(["Stage", "Notebooks", "Median total", "Overhead", "Imports", "Work",
                       "Overhead + imports"],
                      [[s["stage"], str(s["n"]), fmt(s["seconds"], "s"), fmt(s["overhead_s"], "s"),
                       fmt(s["imports_s"], "s"), fmt(s["work_s"], "s"),
                       fmt(s["overhead_plus_imports_share"], "fraction")] for s in pm["per_stage"]])
        out += _fig_rows(_section_figs(data, "papermill"))
        if _plot_papermill(data, plots["papermill"]):
            out += [f"![papermill overhead]({PNG['papermill']})", ""]

    sc = secs.get("scaling")
    if sc:
        cold = sc.get("session_cold", {})
        where = (f"cached from the report section's cold run (`{cold['reused']}`)"
                 if cold.get("reused") else f"run cold once ({fmt(cold.get('run_s'), 's')})")
        out += ["## Scaling", "",
                f"Tiny params; the session stages (extract, select) {where}; each point "
                "re-executes its neurons' notebooks (train, MEI, Gabor) and the summary, in a "
                "fresh process. Neurons: the top units by oracle correlation. Peak RSS: the whole "
                "process tree (runner, pool or Dask workers, kernels), sampled every 0.1 s. "
                "Points are dropped, last first, when the time budget runs short.", ""]
        rows = []
        for p in sc.get("points", []):
            if "skipped" in p:
                rows.append([str(p["n"]), str(p["workers"]), p["scheduler"], "skipped", "-",
                             "-", p["skipped"]])
                continue
            rows.append([str(p["n"]), str(p["workers"]), p["scheduler"], fmt(p["run_s"], "s"),
                         fmt(p["neuron_task_s"] / max(p["n"], 1), "s"),
                         fmt(p["peak_rss_mb"], "MB"),
                         f"{len(p['failed'])} failed; stages: {', '.join(p['stages'])}"])
        out += _table(["Neurons", "Workers", "Scheduler", "Run time", "Notebook s per neuron",
                       "Peak RSS", "Note"], rows)
        out += _fig_rows(_section_figs(data, "scaling"))
        if _plot_scaling(data, plots["scaling"]):
            out += [f"![Scaling]({PNG['scaling']})", ""]

    en = secs.get("engine")
    if en:
        out += _engine(data, en)

    prof = []
    if sp and sp.get("profile_warm_count"):
        prof += ["Warm `spike_counts` (cProfile, top by own time):", ""]
        prof += _profile_rows(sp["profile_warm_count"], "Own time")
    mei = (secs.get("models", {}).get("bench_mei") or {}).get("figures") or {}
    if mei.get("profile_mei_cnn_standin"):
        prof += ["MEI on the CNN-sized stand-in, 20 steps (cProfile, top by own time):", ""]
        prof += _profile_rows(mei["profile_mei_cnn_standin"], "Own time")
    if sp and sp.get("profile_cold_imports"):
        prof += ["Cold path imports (`python -X importtime`, cumulative):", ""]
        prof += _profile_rows(sp["profile_cold_imports"], "Cumulative")
    if prof:
        out += ["## Profiles", ""] + prof
    errs = data.get("errors") or {}
    if errs:
        out += ["## Sections that failed or were skipped", ""]
        out += [f"- **{k}**: {v}" for k, v in errs.items()] + [""]
    out += ["## Reproduce", "", "```bash",
            "nox -s bench    # all of it: 17-25 min on 2 shared cores, installs included",
            "nox -s bench -- --only spikes,oracle    # some sections",
            "```", ""]
    text = "\n".join(out)
    md_path.write_text(text)
    return text


def main() -> None:
    """Redraw the page from ``bench/results.json``."""
    render(json.loads(RESULTS_JSON.read_text()))


if __name__ == "__main__":
    main()
