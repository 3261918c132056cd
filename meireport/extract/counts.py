"""Spike counts per stimulus presentation and unit, binned activity and PSTHs."""

from __future__ import annotations

import numpy as np
import pandas as pd

from meireport.errors import MeireportError

__all__ = [
    "BLANK_FRAME",
    "check_window",
    "count_in_windows",
    "spike_counts",
    "binned_activity",
    "counts_per_area",
    "psth",
]

BLANK_FRAME = -1


def check_window(window) -> tuple[float, float]:
    """Validate a count window ``(t0, t1)`` in seconds relative to stimulus onset.

    Examples
    --------
    >>> check_window((0, 0.25))
    (0.0, 0.25)
    """
    try:
        t0, t1 = (float(v) for v in window)
    except (TypeError, ValueError):
        raise MeireportError(
            f"window: expected two numbers (t0, t1) in s, got {window!r}"
        ) from None
    if not (np.isfinite(t0) and np.isfinite(t1)) or t1 <= t0:
        raise MeireportError(f"window: expected t1 > t0 (seconds), got ({t0}, {t1})")
    return t0, t1


def count_in_windows(spike_times: np.ndarray, starts: np.ndarray, window=(0.0, 0.25)) -> np.ndarray:
    """Number of spikes in ``[start + t0, start + t1)`` for each start.

    Parameters
    ----------
    spike_times : ndarray
        Sorted spike times of one unit (s).
    starts : ndarray
        Presentation onsets (s).
    window : tuple of float
        ``(t0, t1)`` relative to onset.

    Returns
    -------
    ndarray of int64

    Examples
    --------
    >>> count_in_windows(np.array([0.1, 0.2, 0.3, 1.05]), np.array([0.0, 1.0]), (0.0, 0.25))
    array([2, 1])
    """
    t0, t1 = check_window(window)
    starts = np.asarray(starts, dtype=np.float64)
    lo = np.searchsorted(spike_times, starts + t0, side="left")
    hi = np.searchsorted(spike_times, starts + t1, side="left")
    return (hi - lo).astype(np.int64)


def _resolve_units(session, unit_ids=None, area: str | None = None) -> np.ndarray:
    if unit_ids is None:
        return session.unit_ids(area)
    ids = np.atleast_1d(np.asarray(unit_ids, dtype=np.int64))
    known = set(session.units.index.tolist())
    missing = [int(u) for u in ids if int(u) not in known]
    if missing:
        raise MeireportError(
            f"unit_ids: {', '.join(map(str, missing[:5]))} not in session {session.session_id} "
            "(after the unit filter)"
        )
    if area is not None:
        in_area = set(session.unit_ids(area).tolist())
        ids = np.array([u for u in ids if int(u) in in_area], dtype=np.int64)
    return ids


def spike_counts(
    session, stimulus: str, window=(0.0, 0.25), unit_ids=None, area: str | None = None
) -> pd.DataFrame:
    """Spike counts of every presentation of ``stimulus`` x unit.

    Parameters
    ----------
    session : Session
        From :func:`meireport.sources.open_session`.
    stimulus : str
        Stimulus name, e.g. ``"natural_scenes"`` or ``"gabors"``.
    window : tuple of float
        ``(t0, t1)`` in seconds relative to onset; spikes in ``[onset + t0, onset + t1)``.
    unit_ids : sequence of int, optional
        Units to count (default: all units passing the filter, or all in ``area``).
    area : str, optional
        Only units whose peak channel lies in this structure.

    Returns
    -------
    DataFrame
        Index ``stimulus_presentation_id``, one ``int64`` column per ``unit_id``.

    Examples
    --------
    >>> import tempfile
    >>> from meireport.sources import simulate_session, open_session
    >>> out = simulate_session(tempfile.mkdtemp(), n_images=8, n_repeats=2, seed=1)
    >>> with open_session(out.cache_dir) as s:
    ...     c = spike_counts(s, "natural_scenes", area="VISam")
    >>> c.shape[0]
    18
    """
    win = check_window(window)
    table = session.stimulus_table(stimulus)
    ids = _resolve_units(session, unit_ids, area)
    starts = table["start_time"].to_numpy(dtype=np.float64)
    data = np.empty((len(starts), len(ids)), dtype=np.int64)
    for j, u in enumerate(ids):
        data[:, j] = count_in_windows(session.spike_times[int(u)], starts, win)
    cols = pd.Index(ids, name="unit_id", dtype=np.int64)
    return pd.DataFrame(data, index=table.index.copy(), columns=cols)


def binned_activity(
    session,
    unit_ids=None,
    bin_size: float = 0.1,
    t_start: float | None = None,
    t_stop: float | None = None,
    stimulus: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Spike counts in consecutive bins, ``units x bins``, and the bin edges (s).

    With ``stimulus`` given and no explicit times, spans that stimulus' presentations.
    """
    if not bin_size > 0:
        raise MeireportError(f"bin_size: must be > 0 s, got {bin_size}")
    ids = _resolve_units(session, unit_ids)
    if stimulus is not None and (t_start is None or t_stop is None):
        tab = session.stimulus_table(stimulus)
        t_start = float(tab["start_time"].min()) if t_start is None else t_start
        t_stop = float(tab["stop_time"].max()) if t_stop is None else t_stop
    if t_start is None or t_stop is None:
        raise MeireportError("binned_activity: give t_start and t_stop, or a stimulus")
    if t_stop <= t_start:
        raise MeireportError(f"t_stop: must be > t_start, got ({t_start}, {t_stop})")
    edges = np.arange(t_start, t_stop + bin_size / 2, bin_size)
    out = np.empty((len(ids), len(edges) - 1), dtype=np.int64)
    for j, u in enumerate(ids):
        idx = np.searchsorted(session.spike_times[int(u)], edges, side="left")
        out[j] = np.diff(idx)
    return out, edges


def counts_per_area(session, stimulus: str = "natural_scenes", window=(0.0, 0.25)) -> pd.DataFrame:
    """Summary per area: units, presentations, total spikes and mean count per presentation."""
    counts = spike_counts(session, stimulus, window)
    area = session.units.loc[counts.columns, "ecephys_structure_acronym"]
    rows = []
    for a in sorted(area.unique()):
        c = counts.loc[:, (area == a).to_numpy()]
        rows.append(
            {
                "area": a,
                "units": c.shape[1],
                "presentations": c.shape[0],
                "total_spikes": int(c.to_numpy().sum()),
                "mean_count": float(c.to_numpy().mean()),
            }
        )
    return pd.DataFrame(rows).set_index("area")


def psth(
    session, stimulus: str = "natural_scenes", unit_ids=None, t_before: float = 0.1,
    t_after: float = 0.35, bin_size: float = 0.01, max_presentations: int = 2000,
) -> tuple[np.ndarray, np.ndarray]:
    """Peri-stimulus time histogram: mean rate (spikes/s) of each unit around onset.

    Returns ``(bin_centres_s, rates units x bins)``; uses the first ``max_presentations``
    presentations.
    """
    if not (t_before >= 0 and t_after > 0 and bin_size > 0):
        raise MeireportError("psth: expected t_before >= 0, t_after > 0 and bin_size > 0")
    ids = _resolve_units(session, unit_ids)
    onsets = session.stimulus_table(stimulus)["start_time"].to_numpy()[:max_presentations]
    edges = np.arange(-t_before, t_after + bin_size / 2, bin_size)
    rates = np.zeros((len(ids), len(edges) - 1))
    for j, u in enumerate(ids):
        t = session.spike_times[int(u)]
        idx = np.searchsorted(t, onsets[:, None] + edges[None, :], side="left")
        rates[j] = np.diff(idx, axis=1).sum(axis=0) / (len(onsets) * bin_size)
    return (edges[:-1] + edges[1:]) / 2, rates
