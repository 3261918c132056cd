"""The whole report end to end: cold, rebuilt with nothing changed, one MEI parameter changed.

``meireport report PARAMS --out DIR`` runs in a child process (the command line a user types);
its wall time and the peak RSS of its whole process tree are recorded. The rebuild and the
changed-parameter run reuse the cold run's folder, so they show what the cache saves. The
executed notebooks of the cold run give papermill's overhead per notebook against the work inside
it, and an empty parameterised notebook gives papermill's floor (kernel start and shutdown).
"""

from __future__ import annotations

import json
import re
import shutil
import statistics
import sys
from pathlib import Path

import yaml

from bench.common import ROOT, WORK_DIR, Figure, Results, log, run_monitored, speedup
from bench.notebooks import by_stage, run_breakdown, time_empty

SECTION = "report"
SECTION_PM = "papermill"
CLI = "import sys; from meireport.report.cli import main; sys.exit(main())"


def source_hash() -> str:
    """The package-source hash the run cache keys on (recomputed, not the cached value)."""
    from meireport.report.run import package_hash

    return package_hash.__wrapped__()


def _report(params: Path, out: Path, timeout: float) -> dict:
    before = source_hash()
    proc = run_monitored([sys.executable, "-c", CLI, "report", str(params), "--out", str(out),
                          "--quiet"], env={"MPLBACKEND": "Agg"}, timeout=timeout)
    if proc.rc != 0:
        tail = " | ".join(proc.stderr.strip().splitlines()[-3:])
        raise RuntimeError(f"meireport report exited {proc.rc}: {tail}")
    run_s = re.search(r"notebooks executed.*?, ([\d.]+) s", proc.stdout)
    book_s = re.search(r"book built in ([\d.]+) s", proc.stdout)
    run = json.loads((out / "run.json").read_text())
    executed = [r for r in run["results"] if r["status"] in ("ok", "failed")]
    return {"wall_s": proc.wall_s, "peak_rss_mb": proc.peak_rss_mb,
            "run_s": float(run_s.group(1)) if run_s else None,
            "book_s": float(book_s.group(1)) if book_s else None,
            "executed": sorted({r["stage"] for r in executed}),
            "n_executed": len(executed), "n_tasks": len(run["results"]),
            "failed": [(r["task_id"], r["error"]) for r in run["results"]
                       if r["status"] in ("failed", "skipped")],
            "source_changed": before != source_hash(),
            "results": run["results"], "notebooks": run_breakdown(run["results"])}


def _changed_mei(params: Path, dest: Path) -> tuple[Path, str]:
    """A copy of ``params`` with one MEI parameter changed (steps + 1)."""
    d = yaml.safe_load(params.read_text())
    mei = d.setdefault("mei", {})
    old = int(mei.get("steps", 1000))
    mei["steps"] = old + 1
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(yaml.safe_dump(d, sort_keys=False))
    return dest, f"mei.steps {old} -> {old + 1}"


def report_figures(res: Results, params: Path, label: str, timeout: float) -> dict:
    """Cold / rebuild / MEI-changed runs of one params file."""
    sec = res.section(SECTION).setdefault(label, {})
    out = WORK_DIR / f"report_{label}"
    shutil.rmtree(out, ignore_errors=True)
    log(f"report[{label}]: cold `meireport report {params.relative_to(ROOT)}`")
    cold = _report(params, out, timeout)
    log(f"report[{label}]: cold {cold['wall_s']:.1f} s ({cold['n_executed']} notebooks); "
        "rebuild with nothing changed")
    again = _report(params, out, timeout)
    if again["n_executed"] and (again["source_changed"] or cold["source_changed"]):
        # someone edited the package in this working tree meanwhile: the cache rightly re-ran
        log(f"report[{label}]: package source changed during the rebuild; rebuilding again")
        again = _report(params, out, timeout)
        again["retried_after_source_change"] = True
    changed_params, what = _changed_mei(params, WORK_DIR / f"{label}_mei_changed.yaml")
    log(f"report[{label}]: rebuild {again['wall_s']:.1f} s; with {what}")
    changed = _report(changed_params, out, timeout)
    for name, r in (("cold", cold), ("rebuild", again), ("mei_changed", changed)):
        sec[name] = {k: v for k, v in r.items() if k not in ("results", "notebooks")}
    sec["mei_change"] = what
    sec["notebooks"] = cold["notebooks"]
    sec["stages_available"] = sorted({r["stage"] for r in cold["results"]})
    res.add(Figure(SECTION, f"{label} report cold (simulate + run + book)", cold["wall_s"], "s",
                   note=f"{cold['n_executed']} notebooks, peak RSS "
                        f"{cold['peak_rss_mb']:.0f} MB; failed: {len(cold['failed'])}"))
    res.add(speedup(SECTION, f"{label} report rebuild, nothing changed", again["wall_s"],
                    cold["wall_s"], f"{label} report cold",
                    note=f"executed {again['n_executed']} notebooks; book {again['book_s']} s; "
                         "issue target <= 30 s for the default report"))
    fig = res.data["figures"][-1]
    fig["target"], fig["met"] = "<= 30 s", again["wall_s"] <= 30
    res.add(speedup(SECTION, f"{label} report, {what}", changed["wall_s"], cold["wall_s"],
                    f"{label} report cold",
                    note="re-executed stages: " + (", ".join(changed["executed"]) or "none")))
    return cold


def overhead_figures(res: Results, cold: dict) -> None:
    """papermill's overhead per notebook vs the work inside it (from the cold run)."""
    sec = res.section("papermill")
    rows = cold["notebooks"]
    log("papermill: empty parameterised notebook x 3")
    empty = time_empty(WORK_DIR / "empty_notebook")
    sec["empty_notebook_s"] = empty
    sec["per_stage"] = by_stage(rows)
    total = sum(r["seconds"] for r in rows)
    over = sum(r["overhead_s"] for r in rows)
    imports = sum(r["imports_s"] for r in rows)
    work = sum(r["work_s"] for r in rows)
    sec["totals"] = {"seconds": total, "overhead_s": over, "imports_s": imports, "work_s": work}
    share = over / total if total else None
    share_imp = (over + imports) / total if total else None
    sec["overhead_dominates"] = bool(share_imp is not None and share_imp > 0.5)
    res.add(Figure(SECTION_PM, "empty parameterised notebook (papermill floor)",
                   statistics.median(empty), "s", note="kernel start + shutdown + nb I/O"))
    res.add(Figure(SECTION_PM, "overhead share of notebook time (kernel/papermill)",
                   share, "fraction", note=f"{over:.1f} s of {total:.1f} s over "
                                           f"{len(rows)} notebooks"))
    res.add(Figure(SECTION_PM, "overhead + imports share of notebook time", share_imp,
                   "fraction", target="< 0.5 (else: overhead dominates)",
                   met=None if share_imp is None else share_imp < 0.5,
                   note=f"imports {imports:.1f} s, work {work:.1f} s"))


def run_section(res: Results, default_report: bool = False, timeout: float = 1500) -> None:
    """Tiny report (and optionally the default one), then the overhead breakdown."""
    cold = report_figures(res, ROOT / "params" / "tiny.yaml", "tiny", timeout)
    overhead_figures(res, cold)
    if default_report:
        report_figures(res, ROOT / "params" / "default.yaml", "default", timeout)
