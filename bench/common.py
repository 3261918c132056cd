"""Shared helpers of the benchmarks: machine info, timing, monitored subprocesses, results file.

Every figure is a ratio against a baseline measured in the same run (or a curve of cost against
size): the machines are shared, so absolute seconds are only context.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / "bench"
WORK_DIR = ROOT / "runs" / "bench"
ALLEN_PYTHON = ROOT / ".nox" / "allen" / "bin" / "python"
RESULTS_JSON = BENCH_DIR / "results.json"
RESULTS_MD = BENCH_DIR / "results.md"
JSON_MARK = "BENCH_JSON "

_T0 = time.perf_counter()


def log(msg: str) -> None:
    """One progress line on stderr, with the time since the benchmarks started."""
    m, s = divmod(int(time.perf_counter() - _T0), 60)
    print(f"[bench {m:02d}:{s:02d}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# machine
# --------------------------------------------------------------------------------------------
def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ram_gb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def allen_versions() -> dict[str, str] | None:
    """Versions of the AllenSDK env (``nox -s allen``), or None when it is not built."""
    if not ALLEN_PYTHON.is_file():
        return None
    code = ("import json, platform; from importlib import metadata as m; "
            "print(json.dumps({'python': platform.python_version(), **{d: m.version(d) for d in "
            "('allensdk', 'numpy', 'pandas', 'pynwb', 'h5py')}}))")
    proc = subprocess.run([str(ALLEN_PYTHON), "-c", code], capture_output=True, text=True)
    return json.loads(proc.stdout) if proc.returncode == 0 else None


def machine_info() -> dict:
    """CPU, cores, RAM, load, date and the versions that matter for the figures."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu_model": _cpu_model(),
        "logical_cores": os.cpu_count(),
        "usable_cores": usable,
        "ram_gb": _ram_gb(),
        "platform": platform.platform(),
        "load_average_at_start": [round(v, 2) for v in os.getloadavg()],
        "versions": {
            "python": platform.python_version(),
            **{d: _version(d) for d in ("numpy", "torch", "pandas", "scipy", "h5py", "papermill",
                                        "distributed", "jupyter-book", "meireport")},
        },
        "allen_env": allen_versions(),
    }


# --------------------------------------------------------------------------------------------
# figures
# --------------------------------------------------------------------------------------------
@dataclass
class Figure:
    """One measured figure, with the baseline it is compared against (same data, same run).

    ``ratio`` is ``baseline_value / value`` (how many times faster ours is) unless
    ``ratio_kind`` says otherwise.
    """

    section: str
    name: str
    value: float | None
    unit: str = "s"
    baseline: str | None = None
    baseline_value: float | None = None
    ratio: float | None = None
    ratio_kind: str = "x faster"
    target: str | None = None
    met: bool | None = None
    note: str = ""
    samples: list[float] = field(default_factory=list)
    baseline_samples: list[float] = field(default_factory=list)


def speedup(
    section: str,
    name: str,
    ours: Sequence[float] | float,
    base: Sequence[float] | float,
    baseline: str,
    target_ratio: float | None = None,
    note: str = "",
    stat: Callable[[Sequence[float]], float] = statistics.median,
) -> Figure:
    """A figure ``ours`` vs ``baseline`` (samples in seconds); ratio = baseline / ours."""
    o = [float(v) for v in (ours if isinstance(ours, Sequence) else [ours])]
    b = [float(v) for v in (base if isinstance(base, Sequence) else [base])]
    ov, bv = stat(o), stat(b)
    ratio = bv / ov if ov > 0 else None
    target = None if target_ratio is None else f">= {target_ratio:g}x"
    met = None if target_ratio is None or ratio is None else ratio >= target_ratio
    return Figure(section, name, ov, "s", baseline, bv, ratio, "x faster", target, met, note,
                  o, b)


def seconds(fn: Callable[[], object], repeat: int = 5, warmup: int = 0) -> list[float]:
    """Wall-clock seconds of ``fn()`` over ``repeat`` calls (after ``warmup`` untimed calls)."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


# --------------------------------------------------------------------------------------------
# subprocesses
# --------------------------------------------------------------------------------------------
@dataclass
class ProcResult:
    """A finished child process: exit status, wall time, peak RSS of its whole process tree."""

    rc: int
    wall_s: float
    peak_rss_mb: float | None
    stdout: str
    stderr: str

    def payload(self) -> dict:
        """The JSON the child printed after :data:`JSON_MARK` (last one wins)."""
        for line in reversed(self.stdout.splitlines()):
            if line.startswith(JSON_MARK):
                return json.loads(line[len(JSON_MARK):])
        tail = " | ".join((self.stderr or self.stdout).strip().splitlines()[-5:])
        raise RuntimeError(f"child exited {self.rc} without a result: {tail}")


def _tree_rss(proc) -> int:
    import psutil

    total = 0
    try:
        procs = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def run_monitored(
    cmd: Sequence[str],
    env: dict | None = None,
    cwd: Path = ROOT,
    timeout: float | None = None,
    poll_s: float = 0.1,
) -> ProcResult:
    """Run ``cmd``; sample the summed RSS of it and all its descendants every ``poll_s``."""
    try:
        import psutil
    except ImportError:  # pragma: no cover - psutil comes with distributed
        psutil = None
    full_env = dict(os.environ, **(env or {}))
    t0 = time.perf_counter()
    popen = psutil.Popen if psutil else subprocess.Popen
    proc = popen(list(map(str, cmd)), cwd=str(cwd), env=full_env, stdout=subprocess.PIPE,
                 stderr=subprocess.PIPE, text=True)
    peak = [0]
    done = threading.Event()

    def poll() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _tree_rss(proc))
            done.wait(poll_s)

    thread = threading.Thread(target=poll, daemon=True) if psutil else None
    if thread:
        thread.start()
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        err += f"\n[bench] killed after {timeout} s"
    finally:
        done.set()
        if thread:
            thread.join()
    wall = time.perf_counter() - t0
    return ProcResult(proc.returncode, wall, peak[0] / 2**20 if psutil else None, out, err)


def emit(payload: dict) -> None:
    """Child side: print the result for :meth:`ProcResult.payload`."""
    print(JSON_MARK + json.dumps(payload, default=_jsonable), flush=True)


def _jsonable(v):
    if hasattr(v, "tolist"):
        return v.tolist()
    if isinstance(v, Path):
        return str(v)
    return str(v)


# --------------------------------------------------------------------------------------------
# results file
# --------------------------------------------------------------------------------------------
class Results:
    """``bench/results.json``: machine info, every figure, and per-section details."""

    def __init__(self, path: Path = RESULTS_JSON) -> None:
        self.path = path
        self.data: dict = {"machine": {}, "figures": [], "sections": {}, "started": time.time()}

    def add(self, fig: Figure) -> Figure:
        """Record a figure (and log it)."""
        self.data["figures"].append(asdict(fig))
        if fig.ratio is not None:
            log(f"  {fig.name}: {fig.value:.4g} {fig.unit} vs {fig.baseline} "
                f"{fig.baseline_value:.4g} -> {fig.ratio:.3g} {fig.ratio_kind}"
                + (f" (target {fig.target}: {'met' if fig.met else 'MISSED'})" if fig.target
                   else ""))
        elif fig.value is not None:
            log(f"  {fig.name}: {fig.value:.4g} {fig.unit}")
        return fig

    def section(self, name: str) -> dict:
        """Free-form details of one section (created on first use)."""
        return self.data["sections"].setdefault(name, {})

    def save(self) -> None:
        """Write the JSON atomically."""
        self.data["total_s"] = round(time.time() - self.data["started"], 1)
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.data, indent=1, default=_jsonable))
        os.replace(tmp, self.path)


def profile_top(fn: Callable[[], object], n: int = 8, sort: str = "cumtime") -> list[dict]:
    """cProfile ``fn()``; the ``n`` entries with the largest ``sort`` (cumtime or tottime)."""
    import cProfile
    import pstats

    prof = cProfile.Profile()
    prof.enable()
    fn()
    prof.disable()
    stats = pstats.Stats(prof)
    rows = []
    for (file, line, func), (_cc, nc, tt, ct, _callers) in stats.stats.items():
        rows.append({"function": f"{Path(file).name}:{line}({func})", "calls": nc,
                     "tottime_s": round(tt, 4), "cumtime_s": round(ct, 4)})
    rows.sort(key=lambda r: r[f"{sort}_s"], reverse=True)
    return rows[:n]
