"""Child process of the full-scale reader benchmark: one cold measurement in a fresh interpreter.

Run as ``python bench/reader_child.py MODE NWB UNITS_JSON OUT.npz [CHANNELS_CSV]``:

``ours``   our h5py reader: ``open_session`` + ``meireport.extract.spike_counts`` (either env);
``allen``  AllenSDK's ``EcephysSession.from_nwb_path(...).presentationwise_spike_counts``
           (AllenSDK env only);
``raw``    the floor: h5py reads exactly what the counts need (the natural scenes' start times,
           the units' spike-time index and the spike times of the units counted; the units' rows
           come from the parent) and counts them with ``np.searchsorted``.

``UNITS_JSON`` holds ``areas`` (the structures counted) and, for ``raw``, ``rows`` (the units'
rows in the file's units table). Prints ``BENCH_JSON {...}`` with the phase times and the peak
RSS (``resource.getrusage``) after the imports, after the cold count and after the warm ones;
writes the counts (presentations x units, units sorted by id) to ``OUT.npz``. The clock starts
before any import.
"""

import time

T_START = time.perf_counter()

import json  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402
import warnings  # noqa: E402

WINDOW = (0.0, 0.25)
STIMULUS = "natural_scenes"
N_WARM = 3


def _rss_mb() -> float:
    """Peak resident memory of this process so far (MiB; ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _emit(payload: dict) -> None:
    print("BENCH_JSON " + json.dumps(payload), flush=True)


def _save(out: str, index, columns, values) -> None:
    import numpy as np

    order = np.argsort(np.asarray(columns))
    np.savez(out, index=np.asarray(index), columns=np.asarray(columns)[order],
             values=np.asarray(values)[:, order])


def _result(t0, t_import, t_open, t_count, warm, rss_import, rss_cold, shape, **extra) -> dict:
    return {"interpreter_to_main_s": t0 - T_START, "import_s": t_import - t0,
            "open_s": t_open - t_import, "count_s": t_count - t_open,
            "open_to_counts_s": t_count - t_import, "start_to_counts_s": t_count - T_START,
            "warm_s": warm, "rss_after_import_mb": rss_import, "rss_after_cold_mb": rss_cold,
            "rss_peak_mb": _rss_mb(), "shape": list(shape), **extra}


def ours(nwb: str, spec: dict, out: str) -> dict:
    """Cold open-to-counts with our reader, then warm repeats on the open session."""
    t0 = time.perf_counter()
    import numpy as np

    from meireport.extract import spike_counts
    from meireport.sources import open_session

    t_import = time.perf_counter()
    rss_import = _rss_mb()
    with open_session(nwb) as s:
        t_open = time.perf_counter()
        ids = np.concatenate([s.unit_ids(a) for a in spec["areas"]])
        counts = spike_counts(s, STIMULUS, window=WINDOW, unit_ids=ids)
        t_count = time.perf_counter()
        rss_cold = _rss_mb()
        warm = []
        for _ in range(N_WARM):
            t = time.perf_counter()
            spike_counts(s, STIMULUS, window=WINDOW, unit_ids=ids)
            warm.append(time.perf_counter() - t)
    _save(out, counts.index, counts.columns, counts.to_numpy())
    return _result(t0, t_import, t_open, t_count, warm, rss_import, rss_cold, counts.shape)


def allen(nwb: str, spec: dict, out: str, channels_csv: str) -> dict:
    """Cold open-to-counts with AllenSDK, then warm repeats."""
    t0 = time.perf_counter()
    import numpy as np
    import pandas as pd
    from allensdk.brain_observatory.ecephys.ecephys_session import EcephysSession

    t_import = time.perf_counter()
    rss_import = _rss_mb()
    channels = pd.read_csv(channels_csv, index_col="id")
    session = EcephysSession.from_nwb_path(
        nwb, api_kwargs={"external_channel_columns": lambda: channels})
    t_session = time.perf_counter()
    table = session.get_stimulus_table([STIMULUS])
    units = session.units
    ids = units.index[units["ecephys_structure_acronym"].isin(spec["areas"])].to_numpy()
    t_open = time.perf_counter()

    def count():
        return session.presentationwise_spike_counts(
            bin_edges=np.array(WINDOW, dtype=float),
            stimulus_presentation_ids=table.index.to_numpy(), unit_ids=ids, dtype=np.int64)

    da = count()
    t_count = time.perf_counter()
    rss_cold = _rss_mb()
    warm = []
    for _ in range(N_WARM):
        t = time.perf_counter()
        count()
        warm.append(time.perf_counter() - t)
    _save(out, da["stimulus_presentation_id"].values, da["unit_id"].values, da.values[:, 0, :])
    return _result(t0, t_import, t_open, t_count, warm, rss_import, rss_cold, da.shape[::2],
                   from_nwb_path_s=t_session - t_import, tables_units_s=t_open - t_session)


def raw(nwb: str, spec: dict, out: str) -> dict:
    """The floor: h5py reads of exactly the spike times the counts need, searchsorted counts."""
    t0 = time.perf_counter()
    import h5py
    import numpy as np

    t_import = time.perf_counter()
    rss_import = _rss_mb()
    rows = np.asarray(spec["rows"], dtype=np.int64)
    with h5py.File(nwb, "r") as f:
        starts = f[f"intervals/{STIMULUS}_presentations/start_time"][()]
        end = f["units/spike_times_index"][()].astype(np.int64)
        ids = f["units/id"][()][rows]
        data = f["units/spike_times"]
        t_open = time.perf_counter()
        starts = np.sort(starts)
        lo_edge, hi_edge = starts + WINDOW[0], starts + WINDOW[1]
        counts = np.empty((len(starts), len(rows)), dtype=np.int64)
        times = []
        for j, r in enumerate(rows):
            t = data[int(end[r - 1]) if r > 0 else 0 : int(end[r])]
            times.append(t)
            counts[:, j] = (np.searchsorted(t, hi_edge, side="left")
                            - np.searchsorted(t, lo_edge, side="left"))
    t_count = time.perf_counter()
    rss_cold = _rss_mb()
    warm = []
    for _ in range(N_WARM):
        t = time.perf_counter()
        for j, st in enumerate(times):
            counts[:, j] = (np.searchsorted(st, hi_edge, side="left")
                            - np.searchsorted(st, lo_edge, side="left"))
        warm.append(time.perf_counter() - t)
    _save(out, spec["presentation_ids"], ids, counts)
    return _result(t0, t_import, t_open, t_count, warm, rss_import, rss_cold, counts.shape,
                   spike_bytes=int(sum(t.nbytes for t in times)))


def main(argv: list[str]) -> None:
    """Dispatch on MODE (see the module docstring)."""
    mode, nwb, spec_path, out = argv[:4]
    channels_csv = argv[4] if len(argv) > 4 else ""
    warnings.filterwarnings("ignore")
    with open(spec_path) as fh:
        spec = json.load(fh)
    if mode == "ours":
        _emit(ours(nwb, spec, out))
    elif mode == "allen":
        _emit(allen(nwb, spec, out, channels_csv))
    elif mode == "raw":
        _emit(raw(nwb, spec, out))
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
