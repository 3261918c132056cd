"""Fit response models: data, split, training with early stopping, metrics, checkpoints.

The images of a session are split once, seeded, into train / validation / test. Training
minimises the Poisson loss (or MSE) of the image-mean spike counts plus the model's regulariser
with Adam; the learning rate drops when the validation correlation stalls, training stops after
``patience`` epochs without improvement and the best weights are restored. The test images are
used only for the metrics: correlation with the image means (with a bootstrap confidence
interval over test images), ``frac_oracle``, single-trial correlation and Poisson
log-likelihood; on simulated sessions also the correlation with the true rate on new images.

Data-efficiency options: an RF-centred crop (``crop_size`` of the model config and the unit's RF
centre), the session's gabor presentations as extra training stimuli (``TrainConfig.gabors``),
a shared core over several units (pass several ``unit_ids`` to a CNN) and ensembles over seeds
(``TrainConfig.ensemble``). Predictions are spike counts per presentation in the count window.
"""

from __future__ import annotations

import copy
import platform
import time
from dataclasses import asdict, dataclass, field, fields, replace
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from meireport.errors import MeireportError
from meireport.models import CNNConfig, CNNModel, Ensemble, LNConfig, LNModel, build_model
from meireport.stimuli import MODEL_SHAPE

__all__ = [
    "CHECKPOINT_FORMAT",
    "GaborSet",
    "ResponseData",
    "Split",
    "TrainConfig",
    "TrainedModel",
    "bootstrap_corr_ci",
    "evaluate",
    "fit_model",
    "gabor_set",
    "load_model",
    "load_responses",
    "make_split",
    "new_images",
    "pearson",
    "poisson_loglik",
    "save_checkpoint",
    "single_trial_corr",
    "true_rate_corr",
]

CHECKPOINT_FORMAT = "meireport-model"
CHECKPOINT_VERSION = 1
MODEL_KINDS = ("cnn", "ln")


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


# --------------------------------------------------------------------------------------------
# configuration
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrainConfig:
    """How a model is fitted.

    Parameters
    ----------
    loss : {"poisson", "mse"}
        Loss on the image-mean spike counts.
    lr : float
        Initial Adam learning rate.
    batch_size : int
        Images per step (gabor batches hold ``batch_size`` conditions).
    max_epochs : int
        Upper bound on epochs.
    patience : int
        Stop after this many epochs without a validation correlation ``min_delta`` above the
        best so far (the best weights are restored).
    min_delta : float
        Smallest gain in validation correlation that counts as an improvement.
    lr_patience, lr_factor, min_lr
        Multiply the learning rate by ``lr_factor`` after ``lr_patience`` epochs without
        improvement, down to ``min_lr``.
    seed : int
        Seed of the initialisation and batch order (ensemble member ``k`` uses ``seed + k``).
    split_seed, val_frac, test_frac
        The image split (see :func:`make_split`).
    gabors : bool
        Add the session's gabor presentations to the training set.
    gabor_weight : float, optional
        Weight of a gabor batch's loss relative to a natural-image batch; default: mean repeats
        per gabor condition / mean repeats per image (the weight of a trial is the same).
    ensemble : int
        Train this many models (seeds ``seed .. seed + ensemble - 1``) and average them.
    n_boot : int
        Bootstrap resamples of the test images for the correlation's confidence interval.
    ci_level : float
        Confidence level of that interval.
    n_new_images : int
        New images for the true-rate correlation on simulated sessions.
    progress : bool
        Show a tqdm progress bar.

    Examples
    --------
    >>> TrainConfig(gabors=True, ensemble=3).ensemble
    3
    """

    loss: str = "poisson"
    lr: float = 5e-3
    batch_size: int = 16
    max_epochs: int = 150
    patience: int = 12
    min_delta: float = 1e-3
    lr_patience: int = 5
    lr_factor: float = 0.3
    min_lr: float = 1e-5
    seed: int = 0
    split_seed: int = 0
    val_frac: float = 0.12
    test_frac: float = 0.12
    gabors: bool = False
    gabor_weight: float | None = None
    ensemble: int = 1
    n_boot: int = 1000
    ci_level: float = 0.95
    n_new_images: int = 300
    progress: bool = False

    def __post_init__(self) -> None:
        if self.loss not in ("poisson", "mse"):
            raise MeireportError(f"loss: expected 'poisson' or 'mse', got {self.loss!r}")
        for name in ("batch_size", "max_epochs", "patience", "lr_patience", "ensemble", "n_boot"):
            v = getattr(self, name)
            if isinstance(v, bool) or int(v) != v or int(v) < 1:
                raise MeireportError(f"{name}: expected an integer >= 1, got {v!r}")
        if not float(self.min_delta) >= 0:
            raise MeireportError(f"min_delta: expected a number >= 0, got {self.min_delta!r}")
        if not self.n_new_images >= 0:
            raise MeireportError(f"n_new_images: expected >= 0, got {self.n_new_images!r}")
        if not float(self.lr) > 0 or not float(self.min_lr) >= 0:
            raise MeireportError(f"lr, min_lr: expected lr > 0 and min_lr >= 0, got "
                                 f"({self.lr}, {self.min_lr})")
        if not 0 < float(self.lr_factor) < 1:
            raise MeireportError(f"lr_factor: expected a number in (0, 1), got {self.lr_factor}")
        if not 0 < float(self.ci_level) < 1:
            raise MeireportError(f"ci_level: expected a number in (0, 1), got {self.ci_level}")
        if self.gabor_weight is not None and not float(self.gabor_weight) >= 0:
            raise MeireportError(f"gabor_weight: expected >= 0 or None, got {self.gabor_weight}")

    def to_dict(self) -> dict:
        """Plain-dict form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        """Inverse of :meth:`to_dict` (unknown keys are an error)."""
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise MeireportError(f"train config: unknown field(s) {sorted(unknown)}")
        return cls(**d)


# --------------------------------------------------------------------------------------------
# measures (numpy, no torch)
# --------------------------------------------------------------------------------------------
def pearson(x, y, axis: int = -1) -> np.ndarray:
    """Pearson correlation along ``axis`` (NaN where either side is constant).

    Examples
    --------
    >>> float(pearson([1, 2, 3], [2, 4, 7]).round(4))
    0.9934
    """
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    xc = x - x.mean(axis=axis, keepdims=True)
    yc = y - y.mean(axis=axis, keepdims=True)
    den = np.sqrt((xc**2).sum(axis=axis) * (yc**2).sum(axis=axis))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (xc * yc).sum(axis=axis) / den
    return np.where(den > 1e-12 * max(np.abs(den).max(initial=0), 1), r, np.nan)


def bootstrap_corr_ci(
    pred, obs, n_boot: int = 1000, level: float = 0.95, seed: int = 0, expanded: bool = True
) -> tuple[float, float]:
    """Bootstrap confidence interval of ``pearson(pred, obs)`` over paired samples.

    With 14 test images and skewed responses the plain percentile interval is too narrow: on
    simulated units its 90 % interval covered the true-rate correlation 79-84 % of the time.
    The *expanded* percentile interval (Hesterberg 2015, "What teachers should know about the
    bootstrap") takes the quantiles at ``Phi(-sqrt(n / (n - 1)) t_{n-1, 1 - alpha/2})`` instead
    of ``alpha / 2``, which brought the coverage to 82-88 % (``tests/test_limits.py``).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=14)
    >>> y = x + rng.normal(size=14)
    >>> lo, hi = bootstrap_corr_ci(x, y, n_boot=500)
    >>> bool(lo < float(pearson(x, y)) < hi), bool(hi - lo > 0.1)
    (True, True)
    """
    pred, obs = np.asarray(pred, dtype=np.float64), np.asarray(obs, dtype=np.float64)
    if pred.shape != obs.shape or pred.ndim != 1 or len(pred) < 3:
        raise MeireportError(
            f"pred, obs: expected two 1-D arrays of the same length >= 3, got {pred.shape}, "
            f"{obs.shape}"
        )
    idx = np.random.default_rng(seed).integers(0, len(pred), size=(int(n_boot), len(pred)))
    r = pearson(pred[idx], obs[idx], axis=1)
    r = r[np.isfinite(r)]
    if not len(r):
        return (np.nan, np.nan)
    a = (1 - level) / 2
    if expanded:
        from scipy import stats

        n = len(pred)
        a = float(stats.norm.cdf(-np.sqrt(n / (n - 1)) * stats.t.ppf(1 - a, n - 1)))
    lo, hi = np.quantile(r, [a, 1 - a])
    return float(lo), float(hi)


def single_trial_corr(pred, trials) -> float:
    """Correlation of the prediction with every single trial.

    ``pred`` has one value per image, ``trials`` is images x repeats (NaN skipped).

    Examples
    --------
    >>> round(single_trial_corr([1.0, 2.0], [[1.0, 1.2], [2.0, np.nan]]), 3)
    0.982
    """
    t = np.asarray(trials, dtype=np.float64)
    p = np.broadcast_to(np.asarray(pred, dtype=np.float64)[:, None], t.shape)
    ok = np.isfinite(t)
    return float(pearson(p[ok], t[ok]))


def poisson_loglik(pred, trials) -> float:
    """Mean Poisson log-likelihood per trial (nats).

    ``trials`` (images x repeats, NaN skipped) are counts, ``pred`` their predicted means.

    Examples
    --------
    >>> round(poisson_loglik([2.0], [[2.0, 2.0]]), 4)
    -1.3069
    """
    from scipy.special import gammaln

    t = np.asarray(trials, dtype=np.float64)
    lam = np.clip(np.broadcast_to(np.asarray(pred, dtype=np.float64)[:, None], t.shape), 1e-8, None)
    ok = np.isfinite(t)
    ll = t[ok] * np.log(lam[ok]) - lam[ok] - gammaln(t[ok] + 1)
    return float(ll.mean())


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


# --------------------------------------------------------------------------------------------
# prediction
# --------------------------------------------------------------------------------------------
def _predict(model: nn.Module, images, batch_size: int = 256, members: bool = False) -> np.ndarray:
    model.eval()
    x = torch.as_tensor(np.asarray(images, dtype=np.float32))
    out = []
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            xb = x[i : i + batch_size]
            if members:
                out.append(model.members_forward(xb).numpy())
            else:
                out.append(model(xb).numpy())
    axis = 1 if members else 0
    return np.concatenate(out, axis=axis).astype(np.float64)


def true_rate_corr(model: nn.Module, truth, unit_ids, n_new: int = 300) -> np.ndarray:
    """Correlation of each unit's prediction with its true rate on ``n_new`` new images.

    The images are the simulator's templates ``n_images .. n_images + n_new - 1`` of the
    session (``truth.meta["n_images"]``): none was shown in the session. Untuned units (constant
    true rate) give NaN.

    Parameters
    ----------
    model : Module
        Trained model whose outputs are ``unit_ids`` in order.
    truth : GroundTruth
        The simulated session's ground truth.
    unit_ids : sequence of int
        The model's output units, in order.
    n_new : int
        Number of new images.

    Returns
    -------
    ndarray
        One correlation per unit.
    """
    from meireport.sources import true_rate

    first = int(truth.meta.get("n_images", 0))
    if first < 1:
        raise MeireportError("truth: ground truth lacks meta['n_images'] (not from the simulator?)")
    imgs = new_images(first, n_new, truth.geometry.shape)
    pred = _predict(model, imgs)
    rate = true_rate(truth, imgs, unit_ids)
    return pearson(pred.T, rate, axis=1)


# --------------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------------
def _loss(pred: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "poisson":
        return (pred - target * torch.log(pred + 1e-8)).mean()
    return (pred - target).pow(2).mean()


def _corr_t(pred: np.ndarray, obs: np.ndarray) -> float:
    r = pearson(pred.T, obs.T, axis=1)
    return float(np.nanmean(r)) if np.isfinite(r).any() else -1.0


@dataclass
class _Tensors:
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: np.ndarray
    y_val: np.ndarray
    g_images: torch.Tensor | None = None
    g_targets: torch.Tensor | None = None
    g_weight: float = 1.0


def _tensors(data: ResponseData, rows: np.ndarray, split: Split, cfg: TrainConfig) -> _Tensors:
    means = data.means()[rows]
    tr, va = data.image_rows(split.train), data.image_rows(split.val)
    t = _Tensors(
        x_train=torch.as_tensor(data.images[tr]),
        y_train=torch.as_tensor(means[:, tr].T, dtype=torch.float32),
        x_val=data.images[va],
        y_val=means[:, va].T,
    )
    if np.isnan(means[:, tr]).any() or np.isnan(means[:, va]).any():
        raise MeireportError("trials: a unit has an image without any valid trial")
    if cfg.gabors:
        if data.gabors is None:
            raise MeireportError(
                "gabors: TrainConfig(gabors=True) needs ResponseData with gabors "
                "(load_responses(..., gabors=True))"
            )
        g = data.gabors
        t.g_images = torch.as_tensor(g.images)
        t.g_targets = torch.as_tensor(g.responses[rows].T, dtype=torch.float32)
        if cfg.gabor_weight is None:
            n_nat = np.isfinite(data.trials[rows[0]]).sum(axis=1).mean()
            t.g_weight = float(np.mean(g.n_repeats) / max(n_nat, 1))
        else:
            t.g_weight = float(cfg.gabor_weight)
    return t


def _batches(t: _Tensors, cfg: TrainConfig, gen: torch.Generator) -> list[tuple[str, torch.Tensor]]:
    bs = int(cfg.batch_size)
    out = [("nat", b) for b in torch.randperm(len(t.x_train), generator=gen).split(bs)]
    if t.g_images is not None:
        out += [("gab", b) for b in torch.randperm(len(t.g_images), generator=gen).split(bs)]
    order = torch.randperm(len(out), generator=gen).tolist()
    return [out[i] for i in order]


def _step_loss(model: nn.Module, t: _Tensors, kind: str, idx: torch.Tensor, loss: str):
    if kind == "nat":
        return _loss(model(t.x_train[idx]), t.y_train[idx], loss)
    imgs = t.g_images[idx]  # b x phases x rows x cols
    b, ph = imgs.shape[:2]
    pred = model(imgs.reshape(b * ph, *imgs.shape[2:])).reshape(b, ph, -1).mean(dim=1)
    return t.g_weight * _loss(pred, t.g_targets[idx], loss)


def _train_one(model: nn.Module, t: _Tensors, cfg: TrainConfig, seed: int, desc: str):
    """Adam + plateau LR schedule + early stopping on validation correlation; best restored."""
    from tqdm.auto import tqdm

    gen = torch.Generator().manual_seed(int(seed))
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
        opt, mode="max", factor=cfg.lr_factor, patience=cfg.lr_patience, min_lr=cfg.min_lr
    )
    best, best_state, since, history = -np.inf, copy.deepcopy(model.state_dict()), 0, []
    best_epoch = 0
    bar = tqdm(range(1, cfg.max_epochs + 1), desc=desc, disable=not cfg.progress, leave=False)
    for epoch in bar:
        t0 = time.perf_counter()
        model.train()
        losses, regs = [], []
        for kind, idx in _batches(t, cfg, gen):
            opt.zero_grad()
            data_loss = _step_loss(model, t, kind, idx, cfg.loss)
            reg = model.regularizer()
            (data_loss + reg).backward()
            opt.step()
            model.constrain()
            losses.append(float(data_loss.detach()))
            regs.append(float(reg.detach()) if torch.is_tensor(reg) else float(reg))
        val_pred = _predict(model, t.x_val)
        val_corr = _corr_t(val_pred, t.y_val)
        val_loss = float(_loss(torch.as_tensor(val_pred), torch.as_tensor(t.y_val), cfg.loss))
        lr = opt.param_groups[0]["lr"]
        sched.step(val_corr)
        history.append(
            {
                "epoch": epoch,
                "train_loss": float(np.mean(losses)),
                "regularizer": float(np.mean(regs)),
                "val_loss": val_loss,
                "val_corr": val_corr,
                "lr": float(lr),
                "seconds": time.perf_counter() - t0,
            }
        )
        bar.set_postfix(val_corr=f"{val_corr:.3f}")
        if val_corr > best + cfg.min_delta:
            best, best_state, since = val_corr, copy.deepcopy(model.state_dict()), 0
            best_epoch = epoch
        else:
            since += 1
            if since >= cfg.patience:
                break
    model.load_state_dict(best_state)
    model.eval()
    for row in history:
        row["best"] = row["epoch"] == best_epoch
    return history


def _check_centres(rf_centres, n_units: int):
    """``n_units x 2`` float array (NaN rows for None entries: no RF centre known) or None."""
    if rf_centres is None:
        return None
    items = list(rf_centres) if isinstance(rf_centres, list | tuple) else None
    if items is not None and n_units == 1 and len(items) == 2 and all(
        v is not None and np.ndim(v) == 0 for v in items
    ):
        items = [items]  # one (col, row) pair for one unit
    if items is not None:
        rows = [(np.nan, np.nan) if c is None else c for c in items]
        c = np.asarray(rows, dtype=np.float64)
    else:
        c = np.asarray(rf_centres, dtype=np.float64)
        if c.shape == (2,) and n_units == 1:
            c = c[None]
    if c.shape != (n_units, 2):
        raise MeireportError(
            f"rf_centres: expected {n_units} (col, row) pixel pairs (or one pair for one unit), "
            f"got shape {c.shape}"
        )
    return None if np.isnan(c).all() else c


def _build(kind: str, config, n_units: int, centres, input_shape) -> nn.Module:
    crop_centre = None
    if config.crop_size is not None:
        if n_units != 1:
            raise MeireportError("crop_size: an RF-centred crop needs exactly one unit")
        if centres is None or not np.isfinite(centres).all():
            raise MeireportError("rf_centres: crop_size needs the unit's RF centre (col, row)")
        crop_centre = tuple(centres[0])
    if tuple(config.input_shape) != tuple(input_shape):
        config = replace(config, input_shape=tuple(input_shape))
    if kind == "ln":
        return LNModel(config, n_units, crop_centre=crop_centre)
    return CNNModel(config, n_units, rf_centres=centres, crop_centre=crop_centre)


def fit_model(
    data: ResponseData,
    unit_ids=None,
    kind: str = "cnn",
    model_config: CNNConfig | LNConfig | None = None,
    train_config: TrainConfig | None = None,
    rf_centres=None,
    oracle=None,
    truth=None,
    split: Split | None = None,
) -> TrainedModel:
    """Fit an LN or CNN model to some units' natural-scene responses and evaluate it.

    Parameters
    ----------
    data : ResponseData
        From :func:`load_responses`.
    unit_ids : sequence of int, optional
        Units to model (default: all of ``data``). Several units with ``kind="cnn"`` give the
        population model (one shared core); with ``kind="ln"`` independent filters.
    kind : {"cnn", "ln"}
        Model family.
    model_config : CNNConfig or LNConfig, optional
        Architecture, regularisation and ``crop_size`` (the RF-centred crop).
    train_config : TrainConfig, optional
        Loss, optimiser, early stopping, split, gabor augmentation, ensemble size, metrics.
    rf_centres : array_like, optional
        Mapped RF centres ``(col, row)`` in model pixels, one per unit (or one pair): readout
        initialisation and crop centre. ``None`` entries or NaN rows: unknown (the readout
        starts near the image centre; a crop is then impossible).
    oracle : float, sequence or mapping, optional
        Jackknife oracle correlation per unit (:func:`meireport.select.oracle_correlation`),
        for ``frac_oracle = single_trial_corr / oracle``.
    truth : GroundTruth, optional
        Simulated sessions: adds the correlation with the true rate on new images.
    split : Split, optional
        Image split (default: :func:`make_split` with the config's fractions and seed).

    Returns
    -------
    TrainedModel

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> imgs = rng.random((40, 12, 12))
    >>> drive = (imgs[:, 4:8, 4:8] - 0.5).sum(axis=(1, 2))
    >>> trials = rng.poisson(np.exp(0.5 * drive)[None, :, None] * np.ones((1, 1, 8)))
    >>> d = ResponseData(imgs, trials, [7], np.arange(40))
    >>> fit = fit_model(d, kind="ln", model_config=LNConfig(input_shape=(12, 12)),
    ...                 train_config=TrainConfig(max_epochs=30, val_frac=0.2, test_frac=0.2))
    >>> bool(fit.metrics.loc[7, "test_corr"] > 0.5)
    True
    """
    if kind not in MODEL_KINDS:
        raise MeireportError(f"kind: expected one of {MODEL_KINDS}, got {kind!r}")
    cfg = TrainConfig() if train_config is None else train_config
    if model_config is None:
        model_config = CNNConfig() if kind == "cnn" else LNConfig()
    expected = CNNConfig if kind == "cnn" else LNConfig
    if not isinstance(model_config, expected):
        raise MeireportError(
            f"model_config: expected a {expected.__name__} for kind={kind!r}, "
            f"got {type(model_config).__name__}"
        )
    if not isinstance(data, ResponseData):
        raise MeireportError(f"data: expected ResponseData, got {type(data).__name__}")
    ids = data.unit_ids if unit_ids is None else np.atleast_1d(np.asarray(unit_ids, np.int64))
    rows = data.rows(ids)
    centres = _check_centres(rf_centres, len(ids))
    split = make_split(data.image_ids, cfg.val_frac, cfg.test_frac, cfg.split_seed) if (
        split is None
    ) else split
    t = _tensors(data, rows, split, cfg)
    start = time.perf_counter()
    members, history = [], []
    for k in range(cfg.ensemble):
        seed = cfg.seed + k
        torch.manual_seed(seed)
        model = _build(kind, model_config, len(ids), centres, data.images.shape[1:])
        model.init_bias(t.y_train.mean(dim=0).numpy())
        desc = f"{kind} {ids[0]}" + (f" +{len(ids) - 1}" if len(ids) > 1 else "")
        rows_k = _train_one(model, t, cfg, seed, desc + (f" [{k}]" if cfg.ensemble > 1 else ""))
        history += [{"member": k} | r for r in rows_k]
        members.append(model)
    model = members[0] if cfg.ensemble == 1 else Ensemble(members).eval()
    seconds = time.perf_counter() - start
    metrics, test = evaluate(model, data, ids, split, cfg, oracle=oracle, truth=truth)
    metrics["seconds"] = seconds / len(ids)
    metrics["epochs"] = len(history) / cfg.ensemble
    return TrainedModel(
        model=model,
        unit_ids=ids,
        kind=kind,
        split=split,
        train_config=cfg,
        history=history,
        metrics=metrics,
        test=test,
        seconds=seconds,
    )


# --------------------------------------------------------------------------------------------
# evaluation
# --------------------------------------------------------------------------------------------
def _oracle_values(oracle, ids: np.ndarray) -> np.ndarray:
    if oracle is None:
        return np.full(len(ids), np.nan)
    if isinstance(oracle, dict | pd.Series):
        try:
            return np.array([float(oracle[int(u)]) for u in ids])
        except KeyError as e:
            raise MeireportError(f"oracle: no value for unit {e.args[0]}") from None
    o = np.atleast_1d(np.asarray(oracle, dtype=np.float64))
    if o.shape != (len(ids),):
        raise MeireportError(f"oracle: expected {len(ids)} values (one per unit), got {o.shape}")
    return o


def evaluate(
    model: nn.Module,
    data: ResponseData,
    unit_ids,
    split: Split,
    config: TrainConfig | None = None,
    oracle=None,
    truth=None,
) -> tuple[pd.DataFrame, dict]:
    """Test-set (and, given ``truth``, true-rate) metrics of a trained model, per unit.

    Returns
    -------
    metrics : DataFrame
        Indexed by ``unit_id``: ``test_corr`` (vs image means), ``test_corr_ci_low/high``
        (bootstrap over test images), ``single_trial_corr`` (prediction vs every test trial),
        ``oracle``, ``frac_oracle`` (``single_trial_corr / oracle``: both compare a predictor
        with single trials, as in Walker et al. 2019; ``test_corr / oracle`` would mix an
        image-mean with a single-trial scale and exceed 1 with many repeats), ``test_ll``
        (Poisson log-likelihood, nats per trial),
        ``test_ll_gain`` (minus a constant prediction at the training mean), ``val_corr``,
        ``true_corr`` (simulated sessions) and, for ensembles, ``spread`` (mean std of the
        members' test predictions over their mean).
    test : dict
        ``image_ids``, ``pred``, ``obs`` and ``sem`` (units x test images, counts) for plots.
    """
    cfg = TrainConfig() if config is None else config
    ids = np.atleast_1d(np.asarray(unit_ids, dtype=np.int64))
    rows = data.rows(ids)
    te, tr, va = (data.image_rows(s) for s in (split.test, split.train, split.val))
    means = data.means()[rows]
    pred = _predict(model, data.images[te]).T  # units x test
    val_pred = _predict(model, data.images[va]).T
    trials = data.trials[rows][:, te]
    n_ok = np.isfinite(trials).sum(axis=2)
    with np.errstate(invalid="ignore", divide="ignore"):
        sem = np.nanstd(trials, axis=2, ddof=1) / np.sqrt(n_ok)
    orc = _oracle_values(oracle, ids)
    out = []
    for i, u in enumerate(ids):
        r = float(pearson(pred[i], means[i, te]))
        lo, hi = bootstrap_corr_ci(pred[i], means[i, te], cfg.n_boot, cfg.ci_level, cfg.seed)
        null = np.full(len(te), np.nanmean(means[i, tr]))
        ll = poisson_loglik(pred[i], trials[i])
        st = single_trial_corr(pred[i], trials[i])
        out.append(
            {
                "unit_id": int(u),
                "test_corr": r,
                "test_corr_ci_low": lo,
                "test_corr_ci_high": hi,
                "oracle": orc[i],
                "frac_oracle": st / orc[i] if orc[i] > 0 else np.nan,
                "single_trial_corr": st,
                "test_ll": ll,
                "test_ll_gain": ll - poisson_loglik(null, trials[i]),
                "val_corr": float(pearson(val_pred[i], means[i, va])),
                "n_test": len(te),
            }
        )
    metrics = pd.DataFrame(out).set_index("unit_id")
    if isinstance(model, Ensemble):
        mem = _predict(model, data.images[te], members=True)  # members x test x units
        with np.errstate(invalid="ignore", divide="ignore"):
            metrics["spread"] = (mem.std(axis=0) / mem.mean(axis=0)).mean(axis=0)
    if truth is not None:
        metrics["true_corr"] = true_rate_corr(model, truth, ids, cfg.n_new_images)
        kinds = dict(zip(truth.unit_id.tolist(), truth.kind.tolist(), strict=True))
        metrics["true_kind"] = [kinds.get(int(u), "") for u in ids]
    test = {
        "image_ids": [int(k) for k in split.test],
        "pred": pred.tolist(),
        "obs": means[:, te].tolist(),
        "sem": sem.tolist(),
    }
    return metrics, test


# --------------------------------------------------------------------------------------------
# trained model and checkpoints
# --------------------------------------------------------------------------------------------
@dataclass
class TrainedModel:
    """A fitted model with everything needed to trust, reuse or reproduce it.

    Attributes
    ----------
    model : Module
        ``CNNModel``, ``LNModel`` or ``Ensemble`` (eval mode); input ``N x rows x cols`` images in
        [0, 1], output ``N x units`` spike counts per presentation.
    unit_ids : ndarray
        The model's output units, in order.
    kind : str
        ``"cnn"`` or ``"ln"``.
    split : Split
    train_config : TrainConfig
    history : list of dict
        One row per epoch (and ensemble member).
    metrics : DataFrame
        :func:`evaluate`'s metrics plus ``seconds`` (training time per unit) and ``epochs``.
    test : dict
        Test predictions and observations (see :func:`evaluate`).
    seconds : float
        Total training time.
    extra : dict
        Free-form plain values saved with the checkpoint (e.g. session id, window).
    """

    model: nn.Module
    unit_ids: np.ndarray
    kind: str
    split: Split
    train_config: TrainConfig
    history: list[dict]
    metrics: pd.DataFrame
    test: dict
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)

    def predict(self, images, batch_size: int = 256) -> np.ndarray:
        """Predicted spike counts, ``images x units``."""
        return _predict(self.model, images, batch_size)

    def predict_with_spread(self, images) -> tuple[np.ndarray, np.ndarray]:
        """Mean prediction and the members' standard deviation (0 for a single model)."""
        if isinstance(self.model, Ensemble):
            mem = _predict(self.model, images, members=True)
            return mem.mean(axis=0), mem.std(axis=0)
        p = self.predict(images)
        return p, np.zeros_like(p)

    def save(self, path) -> Path:
        """Write one checkpoint file (weights, spec, config, metrics, split, versions)."""
        return save_checkpoint(self, path)


def _versions() -> dict:
    import meireport

    return {
        "meireport": str(meireport.__version__),
        "torch": str(torch.__version__),
        "numpy": str(np.__version__),
        "python": platform.python_version(),
    }


def _plain(v):
    """Numpy scalars -> Python scalars (checkpoints load with ``weights_only=True``)."""
    if isinstance(v, np.generic):
        return v.item()
    return v


def save_checkpoint(trained: TrainedModel, path) -> Path:
    """Save a :class:`TrainedModel` with ``torch.save`` (plain values and tensors only)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    metrics = trained.metrics.reset_index()
    payload = {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_VERSION,
        "spec": trained.model.spec(),
        "state_dict": trained.model.state_dict(),
        "unit_ids": [int(u) for u in trained.unit_ids],
        "kind": trained.kind,
        "train_config": trained.train_config.to_dict(),
        "split": trained.split.to_dict(),
        "history": [{k: _plain(v) for k, v in r.items()} for r in trained.history],
        "metrics": {c: [_plain(v) for v in metrics[c].tolist()] for c in metrics.columns},
        "test": trained.test,
        "seconds": float(trained.seconds),
        "extra": trained.extra,
        "versions": _versions(),
    }
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
    return path


def load_model(path) -> TrainedModel:
    """Load a checkpoint written by :meth:`TrainedModel.save` (``weights_only=True``).

    Raises
    ------
    MeireportError
        One line when the file is missing, corrupt or truncated, not a meireport model, of
        another format version, or when its weights do not match its model spec.
    """
    path = Path(path)
    if not path.is_file():
        raise MeireportError(f"checkpoint: {path} does not exist")
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # any failure to unpickle means a bad file
        raise MeireportError(
            f"checkpoint: {path} is corrupt or truncated, or not a torch file "
            f"({type(e).__name__})"
        ) from None
    if not isinstance(ck, dict) or ck.get("format") != CHECKPOINT_FORMAT:
        raise MeireportError(f"checkpoint: {path} is not a meireport model checkpoint")
    if ck.get("format_version") != CHECKPOINT_VERSION:
        raise MeireportError(
            f"checkpoint: {path} has format version {ck.get('format_version')!r}, "
            f"expected {CHECKPOINT_VERSION}"
        )
    try:
        model = build_model(ck["spec"])
        model.load_state_dict(ck["state_dict"], strict=True)
        cfg = TrainConfig.from_dict(ck["train_config"])
        metrics = pd.DataFrame(ck["metrics"]).set_index("unit_id")
        split = Split(**{k: tuple(v) for k, v in ck["split"].items()})
        unit_ids = np.asarray(ck["unit_ids"], dtype=np.int64)
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise MeireportError(
            f"checkpoint: {path} does not match its model spec or lacks fields ({msg[:120]})"
        ) from None
    if int(model.n_units) != len(unit_ids):
        raise MeireportError(
            f"checkpoint: {path} has {len(unit_ids)} unit ids for a model of {model.n_units} units"
        )
    model.eval()
    return TrainedModel(
        model=model,
        unit_ids=unit_ids,
        kind=str(ck.get("kind", "cnn")),
        split=split,
        train_config=cfg,
        history=list(ck.get("history", [])),
        metrics=metrics,
        test=dict(ck.get("test", {})),
        seconds=float(ck.get("seconds", 0.0)),
        extra=dict(ck.get("extra", {})) | {"versions": ck.get("versions", {})},
    )
