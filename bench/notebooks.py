"""Where a notebook's time goes: papermill/kernel overhead vs imports vs the work inside it.

papermill records each cell's duration in the executed notebook (``metadata.papermill``). For a
task the runner timed at ``seconds``: overhead = ``seconds`` - sum of cell durations (kernel
start and shutdown, reading and writing the notebook); imports = the first code cell after the
parameters (the template's setup cell); work = the remaining cells.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

_PARAM_TAGS = {"parameters", "injected-parameters"}


def breakdown(notebook: str | Path, seconds: float) -> dict:
    """Overhead / imports / work seconds of one executed notebook."""
    import nbformat

    nb = nbformat.read(str(notebook), as_version=4)
    cells = [c for c in nb.cells if c.cell_type == "code"]
    durations = []
    for c in cells:
        tags = set(c.get("metadata", {}).get("tags", []))
        d = c.get("metadata", {}).get("papermill", {}).get("duration") or 0.0
        durations.append(("params" if tags & _PARAM_TAGS else "cell", float(d)))
    body = [d for kind, d in durations if kind == "cell"]
    params = sum(d for kind, d in durations if kind == "params")
    imports = body[0] if body else 0.0
    work = sum(body[1:])
    return {"seconds": seconds, "overhead_s": max(seconds - params - imports - work, 0.0),
            "params_s": params, "imports_s": imports, "work_s": work,
            "papermill_duration_s": float(nb.metadata.get("papermill", {}).get("duration") or 0)}


def run_breakdown(results: list[dict]) -> list[dict]:
    """Breakdown of every executed task of a run (``run.json``'s ``results``)."""
    rows = []
    for r in results:
        if r.get("status") not in ("ok", "failed") or not r.get("notebook"):
            continue
        if not Path(r["notebook"]).is_file():
            continue
        rows.append({"task_id": r["task_id"], "stage": r["stage"],
                     **breakdown(r["notebook"], float(r["seconds"]))})
    return rows


def by_stage(rows: list[dict]) -> list[dict]:
    """Median per stage of the breakdown rows, with the overhead's share."""
    out = []
    for stage in dict.fromkeys(r["stage"] for r in rows):
        rs = [r for r in rows if r["stage"] == stage]
        med = {k: statistics.median(r[k] for r in rs)
               for k in ("seconds", "overhead_s", "imports_s", "work_s")}
        med["overhead_share"] = med["overhead_s"] / med["seconds"] if med["seconds"] else None
        med["overhead_plus_imports_share"] = ((med["overhead_s"] + med["imports_s"])
                                              / med["seconds"] if med["seconds"] else None)
        out.append({"stage": stage, "n": len(rs), **med})
    return out


def empty_notebook(folder: Path) -> Path:
    """A parameterised notebook that does nothing: its execution time is papermill's floor."""
    import nbformat

    nb = nbformat.v4.new_notebook()
    p = nbformat.v4.new_code_cell("x = 0")
    p.metadata["tags"] = ["parameters"]
    nb.cells = [p, nbformat.v4.new_code_cell("x")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "empty.ipynb"
    nbformat.write(nb, str(path))
    return path


def time_empty(folder: Path, repeat: int = 3) -> list[float]:
    """Seconds to execute the empty notebook, the way ``run.execute_task`` calls papermill."""
    import papermill as pm

    src = empty_notebook(folder)
    out = []
    for i in range(repeat):
        t = time.perf_counter()
        pm.execute_notebook(str(src), str(folder / f"empty_out{i}.ipynb"), parameters={"x": i},
                            cwd=str(folder), progress_bar=False, log_output=False,
                            kernel_name="python3")
        out.append(time.perf_counter() - t)
    return out
