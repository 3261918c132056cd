"""What a model is fitted on: image responses, gabor presentations, the train/val/test split."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import pandas as pd

from meireport.errors import MeireportError
from meireport.stimuli import MODEL_SHAPE

__all__ = [
    "GaborSet",
    "ResponseData",
    "gabor_set",
    "load_responses",
    "Split",
    "make_split",
    "new_images",
    "pool_responses",
]


# --------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------
@dataclass
class GaborSet:
    """Gabor conditions as training stimuli.

    Attributes
    ----------
    images : ndarray
        ``conditions x phases x rows x cols`` (``float32``, [0, 1]): each condition drifts
        through ``phases`` images; its predicted response is the mean over them.
    responses : ndarray
        ``units x conditions`` mean spike count per presentation.
    n_repeats : ndarray
        Presentations per condition.
    conditions : DataFrame
        Condition parameters (:func:`meireport.stimuli.gabor_conditions`).
    """

    images: np.ndarray
    responses: np.ndarray
    n_repeats: np.ndarray
    conditions: pd.DataFrame


@dataclass
class ResponseData:
    """Natural-scene responses of some units, paired with their images by frame id.

    Attributes
    ----------
    images : ndarray
        ``images x rows x cols`` model input in [0, 1] (``float32``).
    trials : ndarray
        ``units x images x repeats`` spike counts (NaN for a missing repeat).
    unit_ids, image_ids : ndarray
        Unit ids (rows of ``trials``) and frame ids (rows of ``images``).
    gabors : GaborSet, optional
        Gabor presentations of the same units (for ``TrainConfig(gabors=True)``).
    """

    images: np.ndarray
    trials: np.ndarray
    unit_ids: np.ndarray
    image_ids: np.ndarray
    gabors: GaborSet | None = None

    def __post_init__(self) -> None:
        self.images = np.asarray(self.images, dtype=np.float32)
        self.trials = np.asarray(self.trials, dtype=np.float64)
        self.unit_ids = np.asarray(self.unit_ids, dtype=np.int64)
        self.image_ids = np.asarray(self.image_ids, dtype=np.int64)
        if self.images.ndim != 3:
            raise MeireportError(
                f"images: expected images x rows x cols, got {self.images.shape}"
            )
        if self.trials.ndim != 3 or self.trials.shape[:2] != (
            len(self.unit_ids),
            len(self.images),
        ):
            raise MeireportError(
                f"trials: expected {len(self.unit_ids)} units x {len(self.images)} images x "
                f"repeats, got {self.trials.shape}"
            )
        if len(self.image_ids) != len(self.images):
            raise MeireportError("image_ids: expected one id per image")
        if self.gabors is not None and self.gabors.responses.shape[0] != len(self.unit_ids):
            raise MeireportError("gabors: responses must have one row per unit of trials")

    def means(self) -> np.ndarray:
        """Image-mean responses, ``units x images``."""
        with np.errstate(invalid="ignore"):
            return np.nanmean(self.trials, axis=2)

    def rows(self, unit_ids) -> np.ndarray:
        """Row positions of ``unit_ids`` in :attr:`trials`."""
        pos = {int(u): i for i, u in enumerate(self.unit_ids)}
        ids = np.atleast_1d(np.asarray(unit_ids, dtype=np.int64))
        missing = [int(u) for u in ids if int(u) not in pos]
        if missing:
            raise MeireportError(f"unit_ids: {missing[:5]} not in the response data")
        return np.array([pos[int(u)] for u in ids], dtype=np.int64)

    def image_rows(self, image_ids) -> np.ndarray:
        """Row positions of ``image_ids`` in :attr:`images`."""
        pos = {int(k): i for i, k in enumerate(self.image_ids)}
        missing = [int(k) for k in image_ids if int(k) not in pos]
        if missing:
            raise MeireportError(f"split: image ids {missing[:5]} not in the response data")
        return np.array([pos[int(k)] for k in image_ids], dtype=np.int64)


def gabor_set(table: pd.DataFrame, counts: pd.DataFrame, geometry=None, n_phases: int = 8):
    """Gabor presentations -> :class:`GaborSet` (mean count per condition, drift-phase images).

    Parameters
    ----------
    table : DataFrame
        ``Session.stimulus_table("gabors")`` rows of the counted presentations.
    counts : DataFrame
        Presentations x unit_id spike counts (same index as ``table``).
    geometry : ScreenGeometry, optional
        Degree -> pixel mapping.
    n_phases : int
        Drift phases rendered per condition (8 matches the simulator).

    Returns
    -------
    GaborSet

    Examples
    --------
    >>> t = pd.DataFrame({"orientation": [0.0, 90.0, 0.0], "x_position": [0.0] * 3,
    ...                   "y_position": [0.0] * 3})
    >>> c = pd.DataFrame({5: [1, 2, 3]})
    >>> g = gabor_set(t, c, n_phases=2)
    >>> g.images.shape, g.responses.tolist(), g.n_repeats.tolist()
    ((2, 2, 60, 96), [[2.0, 2.0]], [2, 1])
    """
    from meireport.stimuli import gabor_conditions, render_gabor_conditions

    if not isinstance(counts, pd.DataFrame) or not counts.index.isin(table.index).all():
        raise MeireportError("counts: expected a DataFrame indexed like the gabor table")
    table = table.loc[counts.index]
    conditions, index = gabor_conditions(table)
    n_cond = len(conditions)
    n_rep = np.bincount(index, minlength=n_cond)
    sums = np.zeros((counts.shape[1], n_cond))
    np.add.at(sums.T, index, counts.to_numpy(dtype=np.float64))
    return GaborSet(
        images=render_gabor_conditions(conditions, geometry, n_phases),
        responses=sums / np.maximum(n_rep, 1),
        n_repeats=n_rep,
        conditions=conditions,
    )


def load_responses(
    session,
    unit_ids=None,
    area: str | None = None,
    window=(0.0, 0.25),
    gabors: bool = False,
    gabor_phases: int = 8,
) -> ResponseData:
    """Natural-scene (and optionally gabor) responses of a session's units, ready for fitting.

    Parameters
    ----------
    session : Session
        From :func:`meireport.sources.open_session`.
    unit_ids : sequence of int, optional
        Units (default: all passing the unit filter, or all in ``area``).
    area : str, optional
        Only units in this structure.
    window : tuple of float
        Count window ``(t0, t1)`` in s after onset.
    gabors : bool
        Also count the ``gabors`` stimulus and render its conditions.
    gabor_phases : int
        Drift phases rendered per gabor condition.

    Returns
    -------
    ResponseData

    Examples
    --------
    >>> import tempfile
    >>> from meireport.sources import simulate_session, open_session
    >>> out = simulate_session(tempfile.mkdtemp(), n_images=8, n_repeats=2, seed=1)
    >>> with open_session(out.cache_dir) as s:
    ...     d = load_responses(s, area="VISam")
    >>> d.images.shape, d.trials.shape[1:]
    ((8, 60, 96), (8, 2))
    """
    from meireport.extract import gabor_responses, spike_counts, trial_tensor

    counts = spike_counts(session, "natural_scenes", window, unit_ids, area)
    trials = trial_tensor(counts, session.stimulus_table("natural_scenes"))
    g = None
    if gabors:
        gr = gabor_responses(session, window, trials.unit_ids)
        g = gabor_set(gr.table, gr.counts, session.geometry, gabor_phases)
    return ResponseData(
        images=session.model_images(trials.image_ids),
        trials=trials.data,
        unit_ids=trials.unit_ids,
        image_ids=trials.image_ids,
        gabors=g,
    )


def pool_responses(datas) -> ResponseData:
    """The units of several sessions that showed the same images, as one :class:`ResponseData`.

    Every Allen Visual Coding session shows the same 118 natural scenes, so the units of many
    sessions can be fitted together (one shared core). Sessions with fewer repeats are padded
    with NaN (missing repeats); gabors are pooled when every session has the same conditions.

    Raises
    ------
    MeireportError
        When the sessions' images differ, or a unit id is in two of them.

    Examples
    --------
    >>> imgs = np.random.default_rng(0).random((4, 6, 8))
    >>> a = ResponseData(imgs, np.ones((2, 4, 3)), [1, 2], np.arange(4))
    >>> b = ResponseData(imgs, np.ones((1, 4, 5)), [3], np.arange(4))
    >>> p = pool_responses([a, b])
    >>> p.unit_ids.tolist(), p.trials.shape, int(np.isnan(p.trials).sum())
    ([1, 2, 3], (3, 4, 5), 16)
    """
    datas = list(datas)
    if not datas:
        raise MeireportError("datas: expected at least one session's responses")
    first = datas[0]
    for i, d in enumerate(datas[1:], start=1):
        same = np.array_equal(d.image_ids, first.image_ids) and (
            d.images.shape == first.images.shape and np.allclose(d.images, first.images, atol=1e-6))
        if not same:
            raise MeireportError(f"datas[{i}]: its natural scenes are not those of datas[0] "
                                 "(a shared core pools sessions that showed the same images)")
    ids = np.concatenate([d.unit_ids for d in datas])
    uniq, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        raise MeireportError(f"unit_ids: {uniq[counts > 1][:5].tolist()} occur in two sessions")
    reps = max(d.trials.shape[2] for d in datas)
    trials = np.concatenate([np.pad(d.trials, ((0, 0), (0, 0), (0, reps - d.trials.shape[2])),
                                    constant_values=np.nan) for d in datas])
    return ResponseData(first.images, trials, ids, first.image_ids, _pool_gabors(datas))


def _pool_gabors(datas) -> GaborSet | None:
    sets = [d.gabors for d in datas]
    if any(g is None for g in sets):
        return None
    g0 = sets[0]
    for i, g in enumerate(sets[1:], start=1):
        if not g.conditions.reset_index(drop=True).equals(g0.conditions.reset_index(drop=True)):
            raise MeireportError(f"datas[{i}]: its gabor conditions are not those of datas[0]")
    return GaborSet(g0.images, np.concatenate([g.responses for g in sets]),
                    np.max([g.n_repeats for g in sets], axis=0), g0.conditions)


# --------------------------------------------------------------------------------------------
# split
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Split:
    """Image ids of the training, validation (early stopping) and test (metrics only) sets."""

    train: tuple[int, ...]
    val: tuple[int, ...]
    test: tuple[int, ...]

    def to_dict(self) -> dict:
        """Plain-dict form."""
        return {k: [int(v) for v in getattr(self, k)] for k in ("train", "val", "test")}


def make_split(image_ids, val_frac: float = 0.12, test_frac: float = 0.12, seed: int = 0) -> Split:
    """A fixed, seeded split of images into train / validation / test.

    The same ids, fractions and seed give the same split, whatever the ids' order.

    Examples
    --------
    >>> s = make_split(range(118))
    >>> len(s.train), len(s.val), len(s.test)
    (90, 14, 14)
    >>> s == make_split(list(range(118))[::-1])
    True
    """
    ids = np.unique(np.asarray(list(image_ids), dtype=np.int64))
    for name, v in (("val_frac", val_frac), ("test_frac", test_frac)):
        if not 0 < float(v) < 1:
            raise MeireportError(f"{name}: expected a fraction in (0, 1), got {v!r}")
    n_val, n_test = round(val_frac * len(ids)), round(test_frac * len(ids))
    if min(n_val, n_test) < 2 or len(ids) - n_val - n_test < 2:
        raise MeireportError(
            f"image_ids: {len(ids)} images are too few for val_frac={val_frac}, "
            f"test_frac={test_frac} (need >= 2 per set)"
        )
    perm = ids[np.random.default_rng(seed).permutation(len(ids))]
    test, val, train = perm[:n_test], perm[n_test : n_test + n_val], perm[n_test + n_val :]
    return Split(*(tuple(int(v) for v in np.sort(a)) for a in (train, val, test)))


@lru_cache(maxsize=4)
def _new_images_cached(first: int, n: int, shape: tuple[int, int]) -> np.ndarray:
    from meireport.sources import natural_images
    from meireport.stimuli import prepare_images

    return prepare_images(natural_images(first + n)[first:], shape).astype(np.float32)


def new_images(first: int, n: int, shape=MODEL_SHAPE) -> np.ndarray:
    """Simulator images ``first .. first + n - 1`` in model space (cached).

    None of them was shown in a simulated session with ``first`` images.

    Examples
    --------
    >>> new_images(118, 2).shape
    (2, 60, 96)
    """
    if int(first) < 0 or int(n) < 1:
        raise MeireportError(f"first, n: expected first >= 0 and n >= 1, got ({first}, {n})")
    return _new_images_cached(int(first), int(n), tuple(int(s) for s in shape)).copy()
