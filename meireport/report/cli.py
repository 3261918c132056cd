"""Command line: ``meireport simulate | extract | run | build | report | fetch``.

Bad input ends with one line on stderr (``meireport: error: ...``) and exit status 2.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from meireport.errors import MeireportError

__all__ = ["main", "build_parser"]


def _cmd_simulate(args: argparse.Namespace) -> int:
    from meireport.sources import simulate_session

    out = simulate_session(
        args.out,
        seed=args.seed,
        session_id=args.session_id,
        n_images=args.n_images,
        n_repeats=args.n_repeats,
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


def _do_run(args: argparse.Namespace):
    from meireport.report.params import load_params
    from meireport.report.run import run

    params = load_params(args.params)
    out = args.out or Path("runs") / params.name
    t0 = time.perf_counter()
    res = run(params, out=out, workers=args.workers, scheduler=args.scheduler,
              neurons=_neuron_list(args.neurons), progress=not args.quiet)
    n_exec = len(res.executed)
    n_cached = sum(r.status == "cached" for r in res.results)
    print(f"run {res.run_dir}: {n_exec} notebooks executed, {n_cached} cached, "
          f"{len(res.failed)} failed or skipped, {time.perf_counter() - t0:.1f} s")
    for r in res.failed:
        print(f"  {r.task_id}: {r.status}: {r.error}")
    for sid in sorted({r.session_id for r in res.results}):
        f = res.run_dir / "results" / str(sid) / "summary.csv"
        if f.is_file():
            print(f"  summary: {f}")
    return res


def _cmd_run(args: argparse.Namespace) -> int:
    _do_run(args)
    return 0


def _cmd_build(args: argparse.Namespace) -> int:
    from meireport.report.book import build_book

    t0 = time.perf_counter()
    index = build_book(args.run_dir)
    print(f"book built in {time.perf_counter() - t0:.1f} s: {index}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from meireport.report.book import build_book

    res = _do_run(args)
    t0 = time.perf_counter()
    index = build_book(res.run_dir)
    print(f"book built in {time.perf_counter() - t0:.1f} s: {index}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``meireport`` argument parser."""
    p = argparse.ArgumentParser(prog="meireport", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    sim = sub.add_parser("simulate", help="write the simulated Allen-format session")
    sim.add_argument("--out", required=True, help="cache folder to write into")
    sim.add_argument("--seed", type=int, default=0)
    sim.add_argument("--session-id", type=int, default=700000001)
    sim.add_argument("--n-images", type=int, default=118)
    sim.add_argument("--n-repeats", type=int, default=50)
    sim.add_argument("--quiet", action="store_true", help="no progress bar")
    sim.set_defaults(func=_cmd_simulate)

    ex = sub.add_parser("extract", help="count spikes per presentation; print a table per area")
    ex.add_argument("path", help="AllenSDK cache folder or Allen-format .nwb file")
    ex.add_argument("--session-id", type=int, default=None)
    ex.add_argument("--stimulus", default="natural_scenes")
    ex.add_argument("--window", type=float, nargs=2, default=(0.0, 0.25), metavar=("T0", "T1"))
    ex.add_argument("--area", default=None, help="only units in this area (with --out)")
    ex.add_argument("--out", default=None, help="write counts (presentations x units) to CSV")
    ex.set_defaults(func=_cmd_extract)

    for name, func, text in (("run", _cmd_run, "execute the report's notebooks"),
                             ("report", _cmd_report, "run, then build the book")):
        r = sub.add_parser(name, help=text)
        r.add_argument("params", help="params YAML file (see params/)")
        r.add_argument("--out", default=None, help="run folder (default runs/<name>)")
        r.add_argument("--workers", type=int, default=None, help="local worker processes")
        r.add_argument("--scheduler", default=None, help="address of a Dask scheduler")
        r.add_argument("--neurons", default=None, help="unit ids, comma separated")
        r.add_argument("--quiet", action="store_true", help="no progress bar")
        r.set_defaults(func=func)
    from meireport.sources.fetch import add_fetch_parser

    add_fetch_parser(sub)
    b = sub.add_parser("build", help="build the Jupyter Book site of a run folder")
    b.add_argument("run_dir")
    b.set_defaults(func=_cmd_build)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except MeireportError as e:
        print(f"meireport: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("meireport: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
