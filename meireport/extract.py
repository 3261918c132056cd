"""Spike counts per presentation x unit, trial tensors, image means, gabor and binned activity.

Counting is vectorised: for each unit two ``searchsorted`` calls on its sorted spike times give
the spikes in ``[onset + t0, onset + t1)`` of every presentation at once.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from meireport.errors import MeireportError

__all__ = [
    "BLANK_FRAME",
    "Trials",
    "GaborResponses",
    "check_window",
    "count_in_windows",
    "spike_counts",
    "trial_tensor",
    "image_means",
    "gabor_responses",
    "binned_activity",
    "counts_per_area",
    "extract_to_dir",
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


@dataclass
class Trials:
    """Responses arranged as ``units x images x repeats`` (NaN where a repeat is missing).

    Attributes
    ----------
    data : ndarray
        ``float64`` spike counts.
    unit_ids : ndarray
    image_ids : ndarray
        Frame numbers along the images axis (sorted).
    """

    data: np.ndarray
    unit_ids: np.ndarray
    image_ids: np.ndarray

    @property
    def n_repeats(self) -> np.ndarray:
        """Valid repeats per image (``images``)."""
        return np.sum(~np.isnan(self.data[0]), axis=-1) if len(self.unit_ids) else np.zeros(0)

    def means(self) -> pd.DataFrame:
        """Image-mean responses, images x units."""
        return pd.DataFrame(
            np.nanmean(self.data, axis=2).T,
            index=pd.Index(self.image_ids, name="frame"),
            columns=pd.Index(self.unit_ids, name="unit_id"),
        )


def _frames(table: pd.DataFrame, key: str) -> np.ndarray:
    if key not in table:
        raise MeireportError(
            f"key: stimulus table has no column '{key}'; has {list(table.columns)}"
        )
    return table[key].to_numpy(dtype=np.float64).astype(np.int64)


def trial_tensor(
    counts: pd.DataFrame, table: pd.DataFrame, key: str = "frame", drop_blank: bool = True
) -> Trials:
    """Arrange presentation x unit counts as a ``units x images x repeats`` tensor.

    Images are paired with responses by their frame number in the stimulus table (never by any
    listing order). Repeats are in presentation order; images with fewer repeats are NaN-padded.

    Parameters
    ----------
    counts : DataFrame
        From :func:`spike_counts` (index ``stimulus_presentation_id``).
    table : DataFrame
        The stimulus table the counts came from.
    key : str
        Column identifying the image (``"frame"`` for natural scenes).
    drop_blank : bool
        Leave out the blank frame (-1).

    Returns
    -------
    Trials

    Examples
    --------
    >>> tab = pd.DataFrame({"frame": [0, 1, 0, -1]}, index=[10, 11, 12, 13])
    >>> c = pd.DataFrame({7: [1, 2, 3, 4]}, index=[10, 11, 12, 13])
    >>> trial_tensor(c, tab).data[0].tolist()
    [[1.0, 3.0], [2.0, nan]]
    """
    if not counts.index.isin(table.index).all():
        raise MeireportError("counts: presentation ids not found in the stimulus table")
    frames = _frames(table.loc[counts.index], key)
    keep = frames != BLANK_FRAME if drop_blank else np.ones(len(frames), dtype=bool)
    frames, values = frames[keep], counts.to_numpy(dtype=np.float64)[keep]
    image_ids, inv = np.unique(frames, return_inverse=True)
    order = np.argsort(inv, kind="stable")
    rep = np.empty(len(inv), dtype=np.int64)
    per_image = np.bincount(inv, minlength=len(image_ids))
    starts = np.concatenate([[0], np.cumsum(per_image)[:-1]])
    rep[order] = np.arange(len(inv)) - np.repeat(starts, per_image)
    out = np.full((counts.shape[1], len(image_ids), int(per_image.max(initial=0))), np.nan)
    out[:, inv, rep] = values.T
    return Trials(out, counts.columns.to_numpy(dtype=np.int64), image_ids)


def image_means(
    counts: pd.DataFrame, table: pd.DataFrame, key: str = "frame", drop_blank: bool = False
) -> pd.DataFrame:
    """Mean count per image (rows: frame, blank -1 included unless dropped) x unit."""
    return trial_tensor(counts, table, key=key, drop_blank=drop_blank).means()


@dataclass
class GaborResponses:
    """Gabor presentations: parameters (``table``) and counts, aligned on presentation id."""

    table: pd.DataFrame
    counts: pd.DataFrame


def gabor_responses(
    session, window=(0.0, 0.25), unit_ids=None, area: str | None = None
) -> GaborResponses:
    """Counts of the ``gabors`` stimulus with each presentation's orientation and position."""
    counts = spike_counts(session, "gabors", window, unit_ids, area)
    table = session.stimulus_table("gabors")
    return GaborResponses(table.loc[counts.index], counts)


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


def extract_to_dir(session, out_dir, area: str | None = "VISam", window=(0.0, 0.25)) -> dict:
    """Extract everything later stages need from a session into ``out_dir`` (atomic writes).

    Writes ``trials.npz`` (natural-scene trial tensor, blank frame left out), ``images.npz``
    (the images as the model sees them), ``gabors.npz`` (gabor parameters and counts),
    ``units.csv`` (the area's units with their metrics, plus ``true_kind`` on simulated sessions)
    and ``session.json``.

    Returns
    -------
    dict
        The contents of ``session.json``.
    """
    from meireport.artifacts import save_csv, save_json, save_npz
    from meireport.stimuli import parse_pair

    out = Path(out_dir)
    win = check_window(window)
    ids = session.unit_ids(area)
    table = session.stimulus_table("natural_scenes")
    counts = spike_counts(session, "natural_scenes", win, unit_ids=ids)
    trials = trial_tensor(counts, table)
    save_npz(out / "trials.npz", data=trials.data, unit_ids=trials.unit_ids,
             image_ids=trials.image_ids)
    save_npz(out / "images.npz", images=session.model_images(trials.image_ids).astype(np.float32),
             frames=trials.image_ids)
    g = gabor_responses(session, win, unit_ids=ids)
    save_npz(
        out / "gabors.npz", counts=g.counts.to_numpy(), unit_ids=ids,
        presentation_ids=g.table.index.to_numpy(),
        orientation=g.table["orientation"].to_numpy(dtype=float),
        x_position=g.table["x_position"].to_numpy(dtype=float),
        y_position=g.table["y_position"].to_numpy(dtype=float),
        size=np.array([parse_pair(v) for v in g.table["size"]]),
        spatial_frequency=g.table["spatial_frequency"].map(parse_pair).to_numpy(dtype=float),
        contrast=g.table["contrast"].map(parse_pair).to_numpy(dtype=float),
    )
    units = session.units.loc[ids].copy()
    truth_path = session.path.parent / "ground_truth.npz"
    if truth_path.is_file():
        from meireport.sources.simulate import load_ground_truth

        truth = load_ground_truth(truth_path)
        units["true_kind"] = truth.kind[truth.index_of(ids)]
    save_csv(out / "units.csv", units)
    info = {
        # paths relative to the session folder: a moved run folder keeps identical artifacts
        "session_id": int(session.session_id), "nwb": os.path.relpath(session.path, out),
        "area": area,
        "window": list(win), "n_units": int(len(ids)), "n_images": int(len(trials.image_ids)),
        "n_repeats": int(trials.data.shape[2]) if trials.data.size else 0,
        "geometry": session.geometry.to_dict(),
        "ground_truth": os.path.relpath(truth_path, out) if truth_path.is_file() else None,
        "areas": session.areas,
    }
    save_json(out / "session.json", info)
    return info


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
