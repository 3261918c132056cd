"""The reader at real scale: cold and warm spike counts on a full-size simulated session.

The session is :func:`meireport.sources.fullscale.simulate_full_session`'s (800 units in 11
structures, every Brain Observatory 1.1 stimulus, ~2.5 h, ~45 M spikes, a 768 MiB unused
LFP-sized dataset; ~1.3 GB), written once into ``runs/bench/fullscale_<env>/`` (from the AllenSDK
env when it exists, so that AllenSDK's reader opens the very same file) and reused after.

Measured, each in a fresh child process (``bench/reader_child.py``; the file is in the OS page
cache after the first run, for every reader alike): natural-scenes spike counts (window 0-0.25 s)
for one area (VISam) and for all six visual areas, with

- ours: ``open_session`` + ``meireport.extract.spike_counts``;
- AllenSDK 2.16.2: ``EcephysSession.from_nwb_path`` + ``presentationwise_spike_counts`` (in
  ``.nox/allen``'s python);
- the floor: h5py reading exactly the spike times the counts need, ``np.searchsorted``.

Cold = from the open (imports excluded) to the counts; warm = the same count again in the same
process (best of 3). Peak RSS is the child's own ``resource.getrusage`` high-water mark. Ratios:
ours vs AllenSDK cold (target >= 20x), ours vs the floor cold (target: within 3x), warm ours vs
AllenSDK (target: no slower), and the memory ours holds beyond its imports against the spike
times it read (target: bounded by the area read -- at most twice its bytes + 100 MiB -- not by
the file). Counts must be identical across the three.

Run alone: ``python -m bench.bench_reader [--quick]`` (writes ``runs/bench/reader/results.json``);
in the suite: ``python -m bench.run_all --only reader``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # `python bench/bench_reader.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from bench.common import (  # noqa: E402
    ALLEN_PYTHON,
    BENCH_DIR,
    WORK_DIR,
    Figure,
    Results,
    log,
    profile_top,
    run_monitored,
    speedup,
)

CHILD = BENCH_DIR / "reader_child.py"
SECTION = "reader"
AREA = "VISam"
MIB = 2**20

_SIMULATE = """
import json, sys
from meireport.sources.fullscale import simulate_full_session
s = simulate_full_session(sys.argv[1], allensdk_format={fmt})
print(json.dumps({{"nwb": str(s.nwb_path), "session_id": s.session_id, "seconds": s.seconds,
                  "reused": s.reused}}))
"""


def full_session(work: Path = WORK_DIR) -> dict:
    """Write (or reuse) the full-scale session in a child process; describe it.

    Returns
    -------
    dict
        ``cache_dir``, ``nwb``, ``session_id``, ``allensdk_format``, ``channels_csv``,
        ``generation_s`` (0-ish when reused), ``nwb_mb``, ``unused_mb``, ``n_units``,
        ``n_spikes``.
    """
    import h5py

    from meireport.sources.fullscale import UNUSED_DATASET

    allen = ALLEN_PYTHON.is_file()
    cache = work / ("fullscale_allen" if allen else "fullscale_core")
    python = str(ALLEN_PYTHON) if allen else sys.executable
    log(f"reader: the full-scale session in {cache} ({'the allen' if allen else 'this'} env; "
        "about half a minute the first time)")
    proc = run_monitored([python, "-c", _SIMULATE.format(fmt=allen), str(cache)], timeout=1800)
    if proc.rc != 0:
        tail = " | ".join(proc.stderr.strip().splitlines()[-3:])
        raise RuntimeError(f"simulate_full_session failed: {tail}")
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    nwb = Path(info["nwb"])
    with h5py.File(nwb, "r") as f:
        n_spikes = int(f["units/spike_times"].shape[0])
        n_units = int(f["units/id"].shape[0])
        unused = f[UNUSED_DATASET].nbytes
    info.update(cache_dir=str(cache), allensdk_format=allen, generation_s=info.pop("seconds"),
                generation_peak_rss_mb=proc.peak_rss_mb, nwb_mb=nwb.stat().st_size / MIB,
                unused_mb=unused / MIB, n_units=n_units, n_spikes=n_spikes,
                channels_csv=str(_channels_csv(nwb)))
    log(f"reader: {n_units} units, {n_spikes:,} spikes, {info['nwb_mb']:.0f} MiB "
        f"({info['unused_mb']:.0f} MiB unused); {'reused' if info['reused'] else 'written in'}"
        f" {info['generation_s']:.0f} s")
    return info


def _channels_csv(nwb: Path) -> Path:
    """What ``EcephysProjectCache`` would pass AllenSDK as channel columns (its channels.csv)."""
    from meireport.sources import open_session

    out = nwb.parent / "channels.csv"
    with open_session(nwb) as s:
        acr = s.channels["ecephys_structure_acronym"].astype(object)
    acr.rename("ecephys_structure_acronym").to_frame().to_csv(out, index_label="id")
    return out


def _specs(data: dict, work: Path) -> dict[str, dict]:
    """Per case (VISam, all visual areas): the areas, unit rows, spike bytes; written as JSON."""
    import h5py

    from meireport.sources import open_session
    from meireport.sources.fullscale import VISUAL_AREAS

    with h5py.File(data["nwb"], "r") as f:
        row = {int(u): i for i, u in enumerate(f["units/id"][()])}
    out = {}
    with open_session(data["nwb"]) as s:
        pres = s.stimulus_table("natural_scenes").index.to_numpy()
        for case, areas in (("VISam", [AREA]), ("visual", list(VISUAL_AREAS))):
            ids = np.concatenate([s.unit_ids(a) for a in areas])
            spec = {"areas": areas, "unit_ids": ids.tolist(),
                    "rows": [row[int(u)] for u in ids], "presentation_ids": pres.tolist(),
                    "spike_bytes": 8 * int(sum(s.spike_times.n_spikes(u) for u in ids))}
            path = work / f"units_{case}.json"
            path.write_text(json.dumps(spec))
            out[case] = spec | {"path": str(path), "n_units": len(ids)}
    return out


def _child(python: str, mode: str, data: dict, spec: dict, out: Path) -> dict:
    """One cold measurement; the child is started by a shell that forks it.

    Linux carries a process's peak RSS over ``exec`` (``ru_maxrss`` of a child exec'd straight
    from this process starts at *this* process's peak); a child forked by a small shell starts
    from the shell's few MiB, so its ``getrusage`` peak is its own.
    """
    cmd = ["/bin/sh", "-c", '"$@"; exit $?', "sh", python, str(CHILD), mode, data["nwb"],
           spec["path"], str(out), data["channels_csv"]]
    proc = run_monitored(cmd, timeout=1800)
    res = proc.payload()
    res["process_wall_s"] = proc.wall_s
    res["tree_peak_rss_mb"] = proc.peak_rss_mb
    return res


def _same(a: Path, b: Path) -> dict:
    za, zb = np.load(a), np.load(b)
    same_ids = bool(np.array_equal(za["index"], zb["index"])
                    and np.array_equal(za["columns"], zb["columns"]))
    identical = same_ids and bool(np.array_equal(za["values"], zb["values"]))
    diff = (int(np.abs(za["values"].astype(np.int64) - zb["values"].astype(np.int64)).sum())
            if same_ids else None)
    return {"same_ids": same_ids, "identical": identical, "abs_diff_spikes": diff,
            "cells": int(za["values"].size)}


def _med(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def _cold_profile(nwb: str) -> list[dict]:
    """Where our cold open-to-counts time goes (cProfile in this process; imports done)."""
    from meireport.extract import spike_counts
    from meireport.sources import open_session

    def run() -> None:
        with open_session(nwb) as s:
            spike_counts(s, "natural_scenes", area=AREA)

    return profile_top(run, n=12, sort="tottime")


def run_section(res: Results, n_cold: int = 3, n_cold_allen: int = 2) -> None:
    """Measure and record the full-scale reader figures."""
    sec = res.section(SECTION)
    work = WORK_DIR / "reader"
    work.mkdir(parents=True, exist_ok=True)
    data = full_session()
    sec["data"] = data
    specs = _specs(data, work)
    sec["cases"] = {k: {"areas": v["areas"], "n_units": v["n_units"],
                        "spike_mib": v["spike_bytes"] / MIB} for k, v in specs.items()}
    allen = ALLEN_PYTHON.is_file() and data["allensdk_format"]
    if not allen:
        sec["allensdk"] = ("not measured: the AllenSDK env (.nox/allen) is missing; build it "
                           "with `nox -s allen --install-only`")
    runs: dict[str, dict[str, list[dict]]] = {c: {"ours": [], "raw": [], "allen": []}
                                              for c in specs}
    for i in range(max(n_cold, n_cold_allen if allen else 0)):
        for case, spec in specs.items():
            modes = ([("ours", sys.executable), ("raw", sys.executable)] if i < n_cold else [])
            if allen and i < n_cold_allen:
                modes.append(("allen", str(ALLEN_PYTHON)))
            for mode, python in modes:
                log(f"reader: cold run {i + 1}, {case}, {mode}")
                runs[case][mode].append(
                    _child(python, mode, data, spec, work / f"{mode}_{case}.npz"))
    sec["cold_runs"] = runs
    file_mib = data["nwb_mb"]
    for case, spec in specs.items():
        r = runs[case]
        label = "VISam" if case == "VISam" else "all 6 visual areas"
        n = f"{spec['n_units']} units, {spec['spike_bytes'] / MIB:.0f} MiB of spike times"
        ours_cold = [x["open_to_counts_s"] for x in r["ours"]]
        raw_cold = [x["open_to_counts_s"] for x in r["raw"]]
        ours_warm = [min(x["warm_s"]) for x in r["ours"]]
        eq_raw = _same(work / f"ours_{case}.npz", work / f"raw_{case}.npz")
        sec.setdefault("equal", {})[f"{case}_ours_raw"] = eq_raw
        if allen:
            allen_cold = [x["open_to_counts_s"] for x in r["allen"]]
            allen_warm = [min(x["warm_s"]) for x in r["allen"]]
            res.add(speedup(SECTION, f"cold open-to-counts, {label}", ours_cold, allen_cold,
                            "AllenSDK from_nwb_path + presentationwise_spike_counts", 20.0,
                            f"{n}; fresh processes, imports excluded"))
            res.add(speedup(SECTION, f"warm count, {label}", ours_warm, allen_warm,
                            "AllenSDK presentationwise_spike_counts (warm)", 1.0,
                            "the second count in the same process, best of 3"))
            eq = _same(work / f"ours_{case}.npz", work / f"allen_{case}.npz")
            sec["equal"][f"{case}_ours_allen"] = eq
            res.add(Figure(SECTION, f"identical counts ours vs AllenSDK, {label}",
                           float(eq["identical"]), "bool", target="identical",
                           met=eq["identical"], note=f"{eq['cells']} cells"))
        res.add(speedup(SECTION, f"cold open-to-counts vs the h5py floor, {label}", ours_cold,
                        raw_cold, "raw h5py read of the spike times the counts need", 1 / 3,
                        "ratio = floor / ours; within 3x means >= 0.33x"))
        res.add(Figure(SECTION, f"identical counts ours vs h5py floor, {label}",
                       float(eq_raw["identical"]), "bool", target="identical",
                       met=eq_raw["identical"], note=f"{eq_raw['cells']} cells"))
        held = _med(r["ours"], "rss_peak_mb") - _med(r["ours"], "rss_after_import_mb")
        bound = 2 * spec["spike_bytes"] / MIB + 100
        res.add(Figure(SECTION, f"memory held beyond imports (peak RSS), {label}", held, "MiB",
                       baseline="2 x the spike times read + 100 MiB", baseline_value=bound,
                       target="bounded by the area read", met=held <= bound,
                       note=f"peak RSS ours {_med(r['ours'], 'rss_peak_mb'):.0f} MiB, floor "
                       f"{_med(r['raw'], 'rss_peak_mb'):.0f} MiB"
                       + (f", AllenSDK {_med(r['allen'], 'rss_peak_mb'):.0f} MiB" if allen
                          else "") + f"; file {file_mib:.0f} MiB"))
        sec.setdefault("summary", {})[case] = {
            mode: {k: _med(r[mode], k) for k in ("import_s", "open_s", "count_s",
                                                  "open_to_counts_s", "start_to_counts_s",
                                                  "rss_after_import_mb", "rss_after_cold_mb",
                                                  "rss_peak_mb", "process_wall_s")}
            | {"warm_s": min(min(x["warm_s"]) for x in r[mode])}
            for mode in r if r[mode]
        }
    log("reader: profiling our cold open-to-counts (VISam, in this process)")
    sec["profile_cold_ours"] = _cold_profile(data["nwb"])


def _print(res: Results) -> None:
    for f in res.data["figures"]:
        ratio = f" -> {f['ratio']:.3g}x" if f.get("ratio") is not None else ""
        base = (f" vs {f['baseline_value']:.4g} ({f['baseline']})"
                if f.get("baseline_value") is not None else "")
        met = "" if f.get("met") is None else f"  [{'met' if f['met'] else 'MISSED'}]"
        print(f"{f['name']}: {f['value']:.4g} {f['unit']}{base}{ratio}{met}")
    for case, modes in res.data["sections"][SECTION].get("summary", {}).items():
        for mode, v in modes.items():
            print(f"  {case:7s} {mode:5s} cold {v['open_to_counts_s']:.3f} s (open "
                  f"{v['open_s']:.3f} + count {v['count_s']:.3f}; imports {v['import_s']:.2f}),"
                  f" warm {v['warm_s']:.4f} s, peak RSS {v['rss_peak_mb']:.0f} MiB")


def main(argv: list[str] | None = None) -> int:
    """Run the section alone; write ``runs/bench/reader/results.json``."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="one cold run of each")
    args = ap.parse_args(argv)
    out = WORK_DIR / "reader"
    out.mkdir(parents=True, exist_ok=True)
    res = Results(out / "results.json")
    t = time.time()
    run_section(res, n_cold=1 if args.quick else 3, n_cold_allen=1 if args.quick else 2)
    res.section(SECTION)["section_s"] = round(time.time() - t, 1)
    res.save()
    _print(res)
    log(f"reader: results in {res.path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
