"""Child process of the spike-count benchmark: one cold measurement in a fresh interpreter.

Run as ``python bench/spikes_child.py MODE CACHE_DIR SESSION_ID OUT.npz [CHANNELS_CSV]``:

``ours``   our h5py reader (``open_session`` + ``spike_counts``), in either env;
``allen``  AllenSDK's ``EcephysSession.from_nwb_path(...).presentationwise_spike_counts``
           (AllenSDK env only);
``seed``   the seed notebook's path: AllenSDK ``presentationwise_spike_times`` then pandas
           groupby/count + ``pivot_table`` (AllenSDK env only).

Prints ``BENCH_JSON {...}`` with the phase times; writes the counts (presentations x units, units
sorted by id) to ``OUT.npz`` for the equality check. The clock starts before any import.
"""

import time

T_START = time.perf_counter()

import json  # noqa: E402
import sys  # noqa: E402
import warnings  # noqa: E402

WINDOW = (0.0, 0.25)
AREA = "VISam"
STIMULUS = "natural_scenes"
N_WARM = 5


def _emit(payload: dict) -> None:
    print("BENCH_JSON " + json.dumps(payload), flush=True)


def _save(out: str, index, columns, values) -> None:
    import numpy as np

    order = np.argsort(np.asarray(columns))
    np.savez(out, index=np.asarray(index), columns=np.asarray(columns)[order],
             values=np.asarray(values)[:, order])


def ours(cache: str, session_id: int, out: str) -> dict:
    """Cold open-to-counts with our reader, then warm repeats on the open session."""
    t0 = time.perf_counter()
    from meireport.extract import spike_counts
    from meireport.sources import open_session

    t_import = time.perf_counter()
    with open_session(cache, session_id) as s:
        t_open = time.perf_counter()
        counts = spike_counts(s, STIMULUS, window=WINDOW, area=AREA)
        t_count = time.perf_counter()
        warm = []
        for _ in range(N_WARM):
            t = time.perf_counter()
            spike_counts(s, STIMULUS, window=WINDOW, area=AREA)
            warm.append(time.perf_counter() - t)
        ties = _edge_ties(s, counts)
    _save(out, counts.index, counts.columns, counts.to_numpy())
    return {"interpreter_to_main_s": t0 - T_START, "import_s": t_import - t0,
            "open_s": t_open - t_import, "count_s": t_count - t_open,
            "open_to_counts_s": t_count - t_import, "start_to_counts_s": t_count - T_START,
            "warm_s": warm, "edge_ties": ties, "shape": list(counts.shape)}


def _edge_ties(session, counts) -> int:
    """Spikes exactly on ``onset + t1`` (the only place AllenSDK's closed window differs)."""
    import numpy as np

    starts = session.stimulus_table(STIMULUS)["start_time"].to_numpy(float)
    edges = starts + WINDOW[1]
    return int(sum(np.isin(session.spike_times[int(u)], edges).sum() for u in counts.columns))


def _allen_session(nwb: str, channels_csv: str):
    import pandas as pd
    from allensdk.brain_observatory.ecephys.ecephys_session import EcephysSession

    channels = pd.read_csv(channels_csv, index_col="id")
    return EcephysSession.from_nwb_path(
        nwb, api_kwargs={"external_channel_columns": lambda: channels})


def allen(nwb: str, out: str, channels_csv: str) -> dict:
    """Cold open-to-counts with AllenSDK, then warm repeats."""
    t0 = time.perf_counter()
    import numpy as np
    from allensdk.brain_observatory.ecephys.ecephys_session import EcephysSession  # noqa: F401

    t_import = time.perf_counter()
    session = _allen_session(nwb, channels_csv)
    t_open = time.perf_counter()
    table = session.get_stimulus_table([STIMULUS])
    units = session.units
    ids = units.index[units["ecephys_structure_acronym"] == AREA].to_numpy()
    t_tables = time.perf_counter()

    def count():
        return session.presentationwise_spike_counts(
            bin_edges=np.array(WINDOW, dtype=float),
            stimulus_presentation_ids=table.index.to_numpy(), unit_ids=ids, dtype=np.int64)

    da = count()
    t_count = time.perf_counter()
    warm = []
    for _ in range(N_WARM):
        t = time.perf_counter()
        count()
        warm.append(time.perf_counter() - t)
    _save(out, da["stimulus_presentation_id"].values, da["unit_id"].values, da.values[:, 0, :])
    return {"interpreter_to_main_s": t0 - T_START, "import_s": t_import - t0,
            "open_s": t_open - t_import, "tables_s": t_tables - t_open,
            "count_s": t_count - t_tables, "open_to_counts_s": t_count - t_import,
            "start_to_counts_s": t_count - T_START, "warm_s": warm, "shape": list(da.shape)}


def seed(nwb: str, out: str, channels_csv: str) -> dict:
    """The seed notebook's counting: presentationwise spike times -> groupby count -> pivot."""
    import numpy as np
    import pandas as pd

    session = _allen_session(nwb, channels_csv)
    table = session.get_stimulus_table([STIMULUS])
    units = session.units
    ids = units.index[units["ecephys_structure_acronym"] == AREA].to_numpy()
    t0 = time.perf_counter()
    spikes = session.presentationwise_spike_times(
        stimulus_presentation_ids=table.index.to_numpy(), unit_ids=ids)
    t_times = time.perf_counter()
    spikes["count"] = np.zeros(len(spikes))
    spikes = spikes.groupby(["stimulus_presentation_id", "unit_id"]).count()
    pivot = pd.pivot_table(spikes, values="time_since_stimulus_presentation_onset",
                           index="stimulus_presentation_id", columns="unit_id", fill_value=0.0,
                           aggfunc=np.sum)
    t_pivot = time.perf_counter()
    pivot = pivot.reindex(index=table.index, columns=sorted(ids), fill_value=0)
    _save(out, pivot.index, pivot.columns, pivot.to_numpy().astype(np.int64))
    return {"presentationwise_spike_times_s": t_times - t0, "groupby_pivot_s": t_pivot - t_times,
            "total_s": t_pivot - t0, "n_rows": int(len(spikes))}


def main(argv: list[str]) -> None:
    """Dispatch on MODE (see the module docstring)."""
    mode, cache, session_id, out = argv[:4]
    channels_csv = argv[4] if len(argv) > 4 else ""
    warnings.filterwarnings("ignore")
    nwb = f"{cache}/session_{session_id}/session_{session_id}.nwb"
    if mode == "ours":
        _emit(ours(cache, int(session_id), out))
    elif mode == "allen":
        _emit(allen(nwb, out, channels_csv))
    elif mode == "seed":
        _emit(seed(nwb, out, channels_csv))
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
