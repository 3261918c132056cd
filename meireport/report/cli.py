"""Command line: ``meireport simulate | extract | run | build | publish | report | fetch``.

Exit status:

- 0: everything asked for succeeded.
- 1: an internal error (a bug): one line; ``--debug`` shows its traceback.
- 2: bad input, found before anything ran (params, ``--out``, the source, a run folder, a
  notebook the site cannot read; for ``publish``: no built site, a ``--to`` that exists, a site
  that is not self-contained): one line on stderr, ``meireport: error: ...``.
- 3: the run finished, and with ``report`` or ``build`` the site was built, but some tasks
  failed or were skipped; the last line says how many and where their pages and notebooks are.
  With ``--strict``, the run stopped at the first failed task and no site was built.
- 4: another meireport process is writing into the run folder (its pid is named); nothing ran.
- 130: interrupted (SIGINT); an interrupted run resumes where it stopped.

No error prints a traceback unless ``--debug`` is given.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

from meireport.errors import MeireportError

__all__ = ["main", "build_parser", "EXIT_OK", "EXIT_INTERNAL", "EXIT_INPUT", "EXIT_FAILED",
           "EXIT_BUSY", "EXIT_INTERRUPTED"]

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_INPUT = 2
EXIT_FAILED = 3
EXIT_BUSY = 4
EXIT_INTERRUPTED = 130
_SHOWN = 3  # failed tasks named in the last line (all are listed above it)
_EXIT_HELP = """exit status: 0 ok; 1 internal error; 2 bad input (nothing ran); 3 some tasks failed
(the site was built unless --strict); 4 the run folder is in use by another process;
130 interrupted"""


def _cmd_simulate(args: argparse.Namespace) -> int:
    from meireport.sources import DEFAULT_SESSION_ID, simulate_session

    if args.scale == "full":
        from meireport.sources.fullscale import FULL_SESSION_ID, simulate_full_session

        for flag, value in (("--n-images", args.n_images), ("--n-repeats", args.n_repeats)):
            if value is not None:
                raise MeireportError(f"{flag}: not used with --scale full (its natural scenes "
                                     "are a real session's: 118 images x 50 repeats)")
        out = simulate_full_session(
            args.out,
            seed=args.seed,
            session_id=FULL_SESSION_ID if args.session_id is None else args.session_id,
            progress=not args.quiet,
        )
    else:
        out = simulate_session(
            args.out,
            seed=args.seed,
            session_id=DEFAULT_SESSION_ID if args.session_id is None else args.session_id,
            n_images=118 if args.n_images is None else args.n_images,
            n_repeats=50 if args.n_repeats is None else args.n_repeats,
            progress=not args.quiet,
        )
    verb = "reused (same settings)" if out.reused else f"written in {out.seconds:.1f} s"
    print(f"simulated session {out.session_id} {verb}")
    print(f"  NWB:          {out.nwb_path}")
    print(f"  ground truth: {out.truth_path}")
    print(f"  templates:    {out.templates_dir}")
    return 0


def _atomic_write_csv(df, path: Path) -> None:
    path = Path(path).expanduser().resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        df.to_csv(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _cmd_extract(args: argparse.Namespace) -> int:
    from meireport.extract import counts_per_area, spike_counts
    from meireport.sources import open_session

    t0 = time.perf_counter()
    with open_session(args.path, args.session_id) as s:
        window = tuple(args.window)
        summary = counts_per_area(s, args.stimulus, window)
        elapsed = time.perf_counter() - t0
        print(
            f"session {s.session_id}: {len(s.units)} units pass the unit filter "
            f"({len(s.all_units)} in the file); stimulus '{args.stimulus}', "
            f"window [{window[0]}, {window[1]}) s"
        )
        print(summary.to_string(float_format=lambda v: f"{v:.3f}"))
        print(f"open + count: {elapsed:.2f} s")
        if args.out:
            counts = spike_counts(s, args.stimulus, window, area=args.area)
            _atomic_write_csv(counts, Path(args.out))
            print(
                f"counts ({counts.shape[0]} presentations x {counts.shape[1]} units) -> {args.out}"
            )
    return 0


def _neuron_list(text: str | None) -> list[int] | None:
    if not text:
        return None
    try:
        return [int(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise MeireportError(
            f"--neurons: expected unit ids separated by commas, got {text!r}"
        ) from None


def _print_run(res, seconds: float) -> None:
    n_cached = sum(r.status == "cached" for r in res.results)
    print(f"run {res.run_dir}: {len(res.executed)} tasks executed, {n_cached} cached, "
          f"{len(res.failed)} failed or skipped, {seconds:.1f} s")
    for r in res.failed:
        print(f"  {r.task_id}: {r.status}: {r.error}")
    for sid in sorted({r.session_id for r in res.results}):
        f = res.run_dir / "results" / str(sid) / "summary.csv"
        if f.is_file():
            print(f"  summary: {f}")


def _listing(paths: list[str]) -> str:
    paths = list(dict.fromkeys(paths))
    more = f" (+{len(paths) - _SHOWN} more)" if len(paths) > _SHOWN else ""
    return ", ".join(paths[:_SHOWN]) + more


def _failure_line(failed: list[dict], n_tasks: int, index: Path | None, run_dir: Path,
                  stopped: bool = False) -> str:
    """The last line of a run or build with failed tasks: how many, where to look."""
    from meireport.report.book import task_page

    notebooks = [r["notebook"] for r in failed if r.get("notebook")]
    where = f"notebooks: {_listing(notebooks)}" if notebooks else "no notebook (skipped)"
    if stopped:  # the failed task(s), not those of its neuron skipped after it
        first = [r for r in failed if r.get("status") == "failed"] or failed
        return (f"meireport: stopped at the first failed task (--strict): "
                f"{_listing([r['task_id'] for r in first])}; {where}; no site built")
    head = f"meireport: {len(failed)} of {n_tasks} tasks failed or were skipped"
    if index is None:
        return f"{head}; {where}; `meireport build {run_dir}` shows their pages"
    pages = [str(index.parent / f"{task_page(r)}.html") for r in failed]
    return f"{head}; site built; their pages: {_listing(pages)}; {where}"


def _outcome(failed: list[dict], n_tasks: int, index: Path | None, run_dir: Path,
             stopped: bool = False) -> int:
    if not failed:
        return EXIT_OK
    print(_failure_line(failed, n_tasks, index, run_dir, stopped), file=sys.stderr)
    return EXIT_FAILED


def _build(run_dir) -> Path:
    from meireport.report.book import build_book

    t0 = time.perf_counter()
    index = build_book(run_dir)
    print(f"book built in {time.perf_counter() - t0:.1f} s: {index}")
    return index


def _run_then(args: argparse.Namespace, build: bool) -> int:
    """``run`` (``build=False``) or ``report``: the run, the site, the exit status."""
    from dataclasses import asdict

    from meireport.report.params import load_params
    from meireport.report.run import execute_run, open_run

    params = load_params(args.params)
    neurons = _neuron_list(args.neurons)
    t0 = time.perf_counter()
    with open_run(params, out=args.out, progress=not args.quiet) as folder:
        res = execute_run(folder, params, workers=args.workers, scheduler=args.scheduler,
                          neurons=neurons, progress=not args.quiet, strict=args.strict)
        _print_run(res, time.perf_counter() - t0)
        index = _build(res.run_dir) if build and not res.stopped else None
    failed = [asdict(r) for r in res.failed]
    return _outcome(failed, len(res.results), index, res.run_dir, res.stopped)


def _cmd_run(args: argparse.Namespace) -> int:
    return _run_then(args, build=False)


def _cmd_report(args: argparse.Namespace) -> int:
    return _run_then(args, build=True)


def _cmd_build(args: argparse.Namespace) -> int:
    from meireport.report.run import load_run

    index = _build(args.run_dir)
    results = load_run(args.run_dir)["results"]
    failed = [r for r in results if r["status"] in ("failed", "skipped")]
    return _outcome(failed, len(results), index, Path(args.run_dir).resolve())


def _cmd_publish(args: argparse.Namespace) -> int:
    from meireport.report.publish import publish_site

    out = publish_site(args.run_dir, args.to)
    print(f"site published: {out}")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    """The ``meireport`` argument parser."""
    p = argparse.ArgumentParser(prog="meireport", description=__doc__.splitlines()[0],
                                epilog=_EXIT_HELP,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")
    common = argparse.ArgumentParser(add_help=False)  # --debug after the command, too
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show the traceback of an error")
    sub = p.add_subparsers(dest="command", required=True)

    sim = sub.add_parser("simulate", help="write the simulated Allen-format session",
                         parents=[common])
    sim.add_argument("--out", required=True, help="cache folder to write into")
    sim.add_argument("--seed", type=int, default=0)
    sim.add_argument("--scale", choices=("default", "full"), default="default",
                     help="default: 112 units, 3 stimuli (seconds); full: a real Brain "
                     "Observatory 1.1 session's shape and size (~800 units in 11 structures, "
                     "every stimulus, ~2.5 h, ~1.1 GB; about half a minute)")
    sim.add_argument("--session-id", type=int, default=None,
                     help="default 700000001 (--scale full: 700000800)")
    sim.add_argument("--n-images", type=int, default=None, help="default 118 (not with full)")
    sim.add_argument("--n-repeats", type=int, default=None, help="default 50 (not with full)")
    sim.add_argument("--quiet", action="store_true", help="no progress bar")
    sim.set_defaults(func=_cmd_simulate)

    ex = sub.add_parser("extract", help="count spikes per presentation; print a table per area",
                        parents=[common])
    ex.add_argument("path", help="AllenSDK cache folder or Allen-format .nwb file")
    ex.add_argument("--session-id", type=int, default=None)
    ex.add_argument("--stimulus", default="natural_scenes")
    ex.add_argument("--window", type=float, nargs=2, default=(0.0, 0.25), metavar=("T0", "T1"))
    ex.add_argument("--area", default=None, help="only units in this area (with --out)")
    ex.add_argument("--out", default=None, help="write counts (presentations x units) to CSV")
    ex.set_defaults(func=_cmd_extract)

    for name, func, text in (("run", _cmd_run, "execute the report's notebooks"),
                             ("report", _cmd_report, "run, then build the book")):
        r = sub.add_parser(name, help=text, parents=[common], epilog=_EXIT_HELP,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        r.add_argument("params", help="params YAML file (see params/)")
        r.add_argument("--out", default=None, help="run folder (default runs/<name>)")
        r.add_argument("--workers", type=int, default=None, help="local worker processes")
        r.add_argument("--scheduler", default=None, help="address of a Dask scheduler")
        r.add_argument("--neurons", default=None, help="unit ids, comma separated")
        r.add_argument("--quiet", action="store_true", help="no progress bar")
        r.add_argument("--strict", action="store_true",
                       help="stop at the first failed task, build no site (exit status 3); by "
                            "default a failed task is recorded, the others go on and the site "
                            "shows what failed (also exit status 3)")
        r.set_defaults(func=func)
    from meireport.sources.fetch import add_fetch_parser

    add_fetch_parser(sub)
    b = sub.add_parser("build", help="build the Jupyter Book site of a run folder",
                       parents=[common], epilog=_EXIT_HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    b.add_argument("run_dir")
    b.set_defaults(func=_cmd_build)
    pub = sub.add_parser("publish", help="copy a run's built site to a folder or a .zip, "
                         "self-contained, for any static host", parents=[common],
                         epilog=_EXIT_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    pub.add_argument("run_dir", help="run folder whose site was built (`meireport build`)")
    pub.add_argument("--to", required=True, metavar="DIR|ZIP",
                     help="a new (or empty) folder, or a new .zip path (index.html at its "
                          "root); nothing is ever overwritten")
    pub.set_defaults(func=_cmd_publish)
    return p


class _StderrHandler(logging.Handler):
    """Log lines as ``meireport: note: ...`` on the current ``sys.stderr``."""

    def emit(self, record: logging.LogRecord) -> None:
        print(f"meireport: note: {record.getMessage()}", file=sys.stderr, flush=True)


def _log_to_stderr() -> None:
    log = logging.getLogger("meireport")
    if not any(isinstance(h, _StderrHandler) for h in log.handlers):
        log.addHandler(_StderrHandler(logging.INFO))
        log.propagate = False


def _error(text: str, status: int, debug: bool) -> int:
    if debug:
        traceback.print_exc()
    print(f"meireport: {text}", file=sys.stderr)
    return status


def _interrupted() -> int:
    print("meireport: interrupted", file=sys.stderr)
    return EXIT_INTERRUPTED


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (see the module docstring)."""
    try:
        args = build_parser().parse_args(argv)  # imports: a Ctrl-C can land here too
    except KeyboardInterrupt:
        return _interrupted()
    debug = bool(getattr(args, "debug", False))
    _log_to_stderr()
    try:
        return int(args.func(args))
    except MeireportError as e:  # bad input, named in one line (RunFolderBusy: status 4)
        return _error(f"error: {e}", getattr(e, "exit_status", EXIT_INPUT), debug)
    except KeyboardInterrupt:
        return _interrupted()
    except Exception as e:  # a bug: one line, the traceback with --debug
        text = (str(e).strip().splitlines() or [""])[-1]
        hint = "" if debug else "; rerun with --debug for the traceback"
        return _error(f"internal error: {type(e).__name__}: {text}{hint}", EXIT_INTERNAL, debug)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
