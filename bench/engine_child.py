"""Child process of the engine benchmark: one report run (or a params check) with whichever
``meireport`` the environment's ``PYTHONPATH`` puts first (the baseline's git worktree or the
current tree).

``python bench/engine_child.py run PARAMS OUT [--render-only]`` runs
``meireport.report.run.run(PARAMS, out=OUT)``; ``--render-only`` first replaces
``package_hash`` (what every notebook's cache key holds of the package source) by a constant, as
a change of rendering code would: every notebook re-executes, and only what a computation
reads decides whether it is recomputed. ``python bench/engine_child.py check PARAMS`` validates
the params with this ``meireport`` (the baseline rejects fields it does not know). Both print
``BENCH_JSON {...}`` with where ``meireport`` was imported from.

Standalone on purpose (no ``bench`` imports): the script's folder is ``sys.path[0]``, so nothing
but ``PYTHONPATH`` and the installed package decides which ``meireport`` is imported.
"""

import json
import os
import sys
import time


def _where() -> dict:
    import meireport

    return {"meireport_file": os.path.realpath(meireport.__file__),
            "meireport_version": getattr(meireport, "__version__", None),
            "pythonpath": os.environ.get("PYTHONPATH"),
            "cache_env": os.environ.get("MEIREPORT_CACHE")}


def run(params: str, out: str, render_only: bool) -> dict:
    """One run; its wall time measured around ``run()`` (imports excluded)."""
    t = time.perf_counter()
    import meireport.report.run as r

    import_s = time.perf_counter() - t
    if render_only:
        r.package_hash = lambda: "changed"
    t = time.perf_counter()
    res = r.run(params, out=out, progress=False)
    run_s = time.perf_counter() - t
    return {**_where(), "import_s": import_s, "run_s": run_s, "render_only": render_only,
            "n_results": len(res.results),
            "failed": [[x.task_id, x.status, x.error] for x in res.failed]}


def check(params: str) -> dict:
    """Whether this ``meireport`` accepts the params file (its one-line errors when not)."""
    from meireport.errors import MeireportError
    from meireport.report.params import load_params

    try:
        load_params(params)
    except MeireportError as e:
        return {**_where(), "ok": False, "error": str(e)}
    return {**_where(), "ok": True, "error": None}


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "run":
        out = run(args[0], args[1], "--render-only" in args[2:])
    elif cmd == "check":
        out = check(args[0])
    else:
        raise SystemExit(f"unknown command {cmd!r}")
    print("BENCH_JSON " + json.dumps(out), flush=True)
