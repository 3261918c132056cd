"""Trial tensors (units x images x repeats) and gabor responses from per-presentation counts."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from meireport.errors import MeireportError
from meireport.extract.counts import BLANK_FRAME, spike_counts

__all__ = [
    "Trials",
    "trial_tensor",
    "image_means",
    "GaborResponses",
    "gabor_responses",
]


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
