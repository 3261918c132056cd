"""Which units are reliable: oracle, FEV, SNR, entropy, anomalies, rastermap order, selection rule.

Every measure is a pure function of arrays (no data loading), in the style of neuralpredictors'
``measures/np_functions.py``. Trial tensors are ``units x images x repeats`` with NaN for a missing
repeat; image means are DataFrames ``images x units`` whose columns are unit ids.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import pandas as pd
from scipy.stats import entropy as _entropy

from meireport.errors import MeireportError

__all__ = [
    "RandomOracle",
    "RasterOrder",
    "SelectionRule",
    "anomaly_scores",
    "fev",
    "oracle_correlation",
    "oracle_correlation_random",
    "pairwise_correlation",
    "rastermap_order",
    "response_entropy",
    "response_variance",
    "rule_from_params",
    "rule_thresholds",
    "select_to_dir",
    "select_units",
    "snr",
    "unit_metrics",
]


# --------------------------------------------------------------------------------------------
# input checks
# --------------------------------------------------------------------------------------------


def _as_trials(trials: np.ndarray) -> np.ndarray:
    """Return ``trials`` as a float 3-D array, or raise one clear error."""
    try:
        arr = np.asarray(trials, dtype=float)
    except (TypeError, ValueError) as exc:
        raise MeireportError(
            f"trials: expected a numeric units x images x repeats array ({exc})"
        ) from None
    if arr.ndim != 3:
        raise MeireportError(
            f"trials: expected a 3-D units x images x repeats array, got shape {arr.shape}"
        )
    if arr.size == 0:
        raise MeireportError(
            f"trials: expected a non-empty units x images x repeats array, got shape {arr.shape}"
        )
    if np.isinf(arr).any():
        raise MeireportError("trials: expected finite spike counts (NaN = missing repeat), got inf")
    return arr


def _as_image_means(image_means: pd.DataFrame | np.ndarray) -> pd.DataFrame:
    """Return ``image_means`` as a float DataFrame ``images x units``, or raise one clear error."""
    frame = image_means if isinstance(image_means, pd.DataFrame) else pd.DataFrame(image_means)
    if frame.ndim != 2 or frame.shape[0] == 0 or frame.shape[1] == 0:
        raise MeireportError(
            f"image_means: expected a non-empty images x units table, got shape {frame.shape}"
        )
    try:
        frame = frame.astype(float)
    except (TypeError, ValueError) as exc:
        raise MeireportError(f"image_means: expected numeric mean responses ({exc})") from None
    if np.isinf(frame.to_numpy()).any():
        raise MeireportError("image_means: expected finite mean responses (NaN allowed), found inf")
    return frame


def _check_int(name: str, value: int, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise MeireportError(f"{name}: expected an integer >= {minimum}, got {value!r}")
    return int(value)


def _masked_pearson(
    a: np.ndarray, b: np.ndarray, mask: np.ndarray, axis: int | tuple
) -> np.ndarray:
    """Pearson correlation of ``a`` and ``b`` over ``axis``, using only entries where ``mask``.

    NaN where fewer than two entries are used or either side has zero variance.
    """
    count = mask.sum(axis=axis, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean_a = np.where(mask, a, 0.0).sum(axis=axis, keepdims=True) / count
        mean_b = np.where(mask, b, 0.0).sum(axis=axis, keepdims=True) / count
        da = np.where(mask, a - mean_a, 0.0)
        db = np.where(mask, b - mean_b, 0.0)
        cov = (da * db).sum(axis=axis)
        var = (da * da).sum(axis=axis) * (db * db).sum(axis=axis)
        r = cov / np.sqrt(var)
    return np.where(var > 0, r, np.nan)


# --------------------------------------------------------------------------------------------
# reliability of repeated responses
# --------------------------------------------------------------------------------------------


def oracle_correlation(trials: np.ndarray) -> np.ndarray:
    """Jackknife oracle correlation per unit.

    Each single trial is paired with the mean of the *other* trials of the same image; the
    oracle is the Pearson correlation of these pairs over all of the unit's trials. Images with
    fewer than two valid (non-NaN) trials for a unit are left out for that unit. Exact,
    vectorised and deterministic; it underestimates the true (noise-free) correlation.

    Parameters
    ----------
    trials : numpy.ndarray
        Spike counts, ``units x images x repeats``; NaN marks a missing repeat.

    Returns
    -------
    numpy.ndarray
        Oracle correlation per unit, shape ``(units,)``; NaN for a unit whose responses do not
        vary (e.g. no spikes at all) or that has no image with two valid trials.

    Examples
    --------
    >>> import numpy as np
    >>> signal = np.arange(5.0)[None, :, None]          # 1 unit, 5 images
    >>> trials = np.repeat(signal, 4, axis=2)           # 4 identical repeats
    >>> np.round(oracle_correlation(trials), 6)
    array([1.])
    """
    x = _as_trials(trials)
    valid = ~np.isnan(x)
    n = valid.sum(axis=2, keepdims=True)
    use = valid & (n >= 2)
    xz = np.where(use, x, 0.0)
    total = xz.sum(axis=2, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        loo = np.where(use, (total - xz) / (n - 1), 0.0)
    return _masked_pearson(xz, loo, use, axis=(1, 2))


class RandomOracle(NamedTuple):
    """Result of :func:`oracle_correlation_random`.

    Attributes
    ----------
    corr : numpy.ndarray
        Mean scaled oracle correlation per unit over iterations, ``(units,)``.
    rank : numpy.ndarray
        Mean rank per unit over iterations, ``(units,)``; 0 = highest, as the seed's
        ``average_super_oracle``.
    per_iteration : numpy.ndarray
        Scaled correlation of each iteration, ``(n_iter, units)``.
    """

    corr: np.ndarray
    rank: np.ndarray
    per_iteration: np.ndarray


def oracle_correlation_random(trials: np.ndarray, n_iter: int = 50, seed: int = 0) -> RandomOracle:
    """Randomised oracle correlation of the seed notebook (``super_oracle``), vectorised.

    In each iteration, for every unit and every image with more than one valid trial, one valid
    trial is drawn at random and paired with the mean of the remaining trials; the Pearson
    correlation over images is multiplied by the fraction of images (of those with any valid
    trial in the tensor) that had more than one trial. Correlations and per-iteration ranks are
    averaged over ``n_iter`` iterations. Prefer :func:`oracle_correlation` (exact); this variant
    exists to reproduce the seed's numbers.

    Parameters
    ----------
    trials : numpy.ndarray
        Spike counts, ``units x images x repeats``; NaN marks a missing repeat.
    n_iter : int, default 50
        Number of random draws (the seed used 50).
    seed : int, default 0
        Seed of the random generator; the same seed gives the same result.

    Returns
    -------
    RandomOracle
        ``corr`` (mean scaled correlation, NaN iterations ignored), ``rank`` (mean rank,
        0 = best, NaN ranked last) and ``per_iteration``.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> rate = np.stack([np.linspace(1, 20, 30), np.full(30, 5.0)])[:, :, None]
    >>> trials = rng.poisson(rate, size=(2, 30, 20)).astype(float)  # tuned, untuned
    >>> result = oracle_correlation_random(trials, n_iter=20, seed=1)
    >>> bool(result.corr[0] > result.corr[1]), result.rank.tolist()
    (True, [0.0, 1.0])
    """
    x = _as_trials(trials)
    n_iter = _check_int("n_iter", n_iter, 1)
    rng = np.random.default_rng(seed)
    n_units, n_images, _ = x.shape
    valid = ~np.isnan(x)
    n = valid.sum(axis=2)
    use = n >= 2
    # valid repeat indices first, then draw the k-th valid one uniformly
    order = np.argsort(~valid, axis=2, kind="stable")
    k = np.minimum((rng.random((n_iter, n_units, n_images)) * n).astype(int), np.maximum(n - 1, 0))
    units = np.arange(n_units)[None, :, None]
    images = np.arange(n_images)[None, None, :]
    pick = np.nan_to_num(x[units, images, order[units, images, k]])
    total = np.nansum(x, axis=2)
    with np.errstate(divide="ignore", invalid="ignore"):
        loo = np.where(use, (total - pick) / (n - 1), 0.0)
    mask = np.broadcast_to(use, pick.shape)
    r = _masked_pearson(pick, loo, mask, axis=2)
    n_shown = max(int(valid.any(axis=(0, 2)).sum()), 1)
    scaled = r * (use.sum(axis=1) / n_shown)
    key = np.where(np.isnan(scaled), -np.inf, scaled)
    ranks = np.empty_like(scaled)
    np.put_along_axis(
        ranks, np.argsort(-key, axis=1, kind="stable"), np.arange(n_units, dtype=float)[None], 1
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        corr = np.nanmean(scaled, axis=0)
    return RandomOracle(corr=corr, rank=ranks.mean(axis=0), per_iteration=scaled)


def _image_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per unit x image: valid count, mean, unbiased noise variance, and the ``n >= 2`` mask."""
    valid = ~np.isnan(x)
    n = valid.sum(axis=2)
    use = n >= 2
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = np.where(use, np.nansum(x, axis=2) / n, np.nan)
        dev = np.where(valid, x - mean[..., None], 0.0)
        noise = np.where(use, (dev**2).sum(axis=2) / (n - 1), np.nan)
    return n, mean, noise, use


def _masked_var(values: np.ndarray, mask: np.ndarray, axis: int, ddof: int) -> np.ndarray:
    count = mask.sum(axis=axis)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = np.where(mask, values, 0.0).sum(axis=axis, keepdims=True) / count[..., None]
        sq = np.where(mask, (values - mean) ** 2, 0.0).sum(axis=axis)
        return np.where(count > ddof, sq / (count - ddof), np.nan)


def fev(trials: np.ndarray) -> np.ndarray:
    """Fraction of explainable variance per unit.

    ``FEV = signal / (signal + noise)`` with ``noise = mean_images(sigma_i^2)``, the unbiased
    within-image variance, and ``signal = Var_images(m_i) - mean_images(sigma_i^2 / n_i)``, the
    variance of the image means minus the part that trial noise adds to them. The denominator
    is the total variance of a single trial estimated by the same terms (for equal repeats the
    ANOVA estimate; it differs from the pooled variance of all trials by O(1 / n_images)), so
    noise-free repeats give exactly 1 and an untuned unit about 0 (slightly negative by
    chance). Only images with at least two valid trials count.

    Parameters
    ----------
    trials : numpy.ndarray
        Spike counts, ``units x images x repeats``; NaN marks a missing repeat.

    Returns
    -------
    numpy.ndarray
        FEV per unit, ``(units,)``; NaN for a unit without any response variance.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> signal = rng.normal(0, 1, size=(1, 2000, 1))             # signal variance 1
    >>> trials = signal + rng.normal(0, 1, size=(1, 2000, 20))   # noise variance 1
    >>> round(float(fev(trials)[0]), 1)
    0.5
    """
    x = _as_trials(trials)
    n, mean, noise, use = _image_stats(x)
    var_means = _masked_var(mean, use, axis=1, ddof=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        n_used = use.sum(axis=1)
        noise_mean = np.where(use, noise, 0.0).sum(axis=1) / n_used
        signal = var_means - np.where(use, noise / n, 0.0).sum(axis=1) / n_used
        total = signal + noise_mean
        return np.where(total > 0, signal / total, np.nan)


def snr(trials: np.ndarray, anscombe: bool = True) -> np.ndarray:
    """Signal-to-noise ratio per unit, as neuralpredictors' ``snr``.

    ``SNR = mean_images((mu_i - mean(mu))^2) / mean_images(sigma_i^2)`` with ``mu_i`` the mean
    and ``sigma_i^2`` the unbiased variance of the (Anscombe-transformed) trials of image ``i``.
    Only images with at least two valid trials count.

    Parameters
    ----------
    trials : numpy.ndarray
        Spike counts, ``units x images x repeats``; NaN marks a missing repeat.
    anscombe : bool, default True
        Apply the variance-stabilising Anscombe transform ``2 sqrt(x + 3/8)`` first, as
        neuralpredictors does for Poisson-like counts.

    Returns
    -------
    numpy.ndarray
        SNR per unit, ``(units,)``; NaN where the noise variance is 0.

    Examples
    --------
    >>> import numpy as np
    >>> trials = np.array([[[0.0, 2.0], [4.0, 6.0]]])     # image means 1 and 5, noise var 2
    >>> snr(trials, anscombe=False)
    array([2.])
    """
    x = _as_trials(trials)
    if anscombe:
        if np.nanmin(x) < -3 / 8:
            raise MeireportError(
                "trials: the Anscombe transform needs counts >= 0; pass anscombe=False"
            )
        x = 2.0 * np.sqrt(x + 3.0 / 8.0)
    _, mean, noise, use = _image_stats(x)
    signal = _masked_var(mean, use, axis=1, ddof=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        noise_mean = np.where(use, noise, 0.0).sum(axis=1) / use.sum(axis=1)
        return np.where(noise_mean > 0, signal / noise_mean, np.nan)


# --------------------------------------------------------------------------------------------
# measures on image-mean responses (the seed's table of neurons x images)
# --------------------------------------------------------------------------------------------


def response_variance(image_means: pd.DataFrame | np.ndarray) -> pd.Series:
    """Variance over images of each unit's image-mean response (unbiased, NaN skipped).

    Parameters
    ----------
    image_means : pandas.DataFrame or numpy.ndarray
        Mean response, ``images x units``; columns are unit ids.

    Returns
    -------
    pandas.Series
        Variance per unit (spikes^2 for counts), indexed by unit id.

    Examples
    --------
    >>> import pandas as pd
    >>> response_variance(pd.DataFrame({7: [1.0, 2.0, 3.0]})).tolist()
    [1.0]
    """
    return _as_image_means(image_means).var(axis=0, ddof=1).rename("variance")


def response_entropy(
    image_means: pd.DataFrame | np.ndarray, n_bins: int | None = None
) -> pd.Series:
    """Shannon entropy (nats) of each unit's distribution of image-mean responses.

    With ``n_bins=None`` this is the seed's measure: the entropy of the counts of distinct
    values (``scipy.stats.entropy(x.value_counts())``). That depends on exact float equality,
    so two means that differ by rounding count as two values. With ``n_bins`` set, responses are
    put in ``n_bins`` equal-width bins spanning each unit's range, which does not depend on
    rounding (except for a value exactly on a bin edge); the result is at most ``log(n_bins)``.

    Parameters
    ----------
    image_means : pandas.DataFrame or numpy.ndarray
        Mean response, ``images x units``; columns are unit ids. NaN values are skipped.
    n_bins : int, optional
        Number of equal-width bins; ``None`` = the seed's distinct-value entropy.

    Returns
    -------
    pandas.Series
        Entropy per unit (nats), indexed by unit id; 0 for a constant response.

    Examples
    --------
    >>> import pandas as pd
    >>> means = pd.DataFrame({1: [0.0, 1.0, 2.0, 3.0], 2: [5.0, 5.0, 5.0, 5.0]})
    >>> response_entropy(means).round(4).tolist()
    [1.3863, 0.0]
    >>> response_entropy(means, n_bins=2).round(4).tolist()
    [0.6931, 0.0]
    """
    frame = _as_image_means(image_means)
    if n_bins is None:
        values = [_entropy(frame[c].value_counts().to_numpy()) for c in frame.columns]
        return pd.Series(np.asarray(values, dtype=float), index=frame.columns, name="entropy")
    n_bins = _check_int("n_bins", n_bins, 1)
    x = frame.to_numpy().T
    lo, hi = np.nanmin(x, axis=1, keepdims=True), np.nanmax(x, axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        scaled = np.where(hi > lo, (x - lo) / (hi - lo), 0.0)
    idx = np.clip(np.floor(scaled * n_bins), 0, n_bins - 1)
    counts = np.stack([(idx == b).sum(axis=1) for b in range(n_bins)], axis=1)
    counts = np.where(np.isnan(x).all(axis=1, keepdims=True), 0, counts)
    values = [_entropy(c) if c.sum() > 0 else np.nan for c in counts]
    return pd.Series(np.asarray(values, dtype=float), index=frame.columns, name="entropy_binned")


def anomaly_scores(
    image_means: pd.DataFrame | np.ndarray, seed: int = 0, n_estimators: int = 100
) -> pd.DataFrame:
    """IsolationForest anomaly flag and score per unit over its image-mean responses.

    Each unit is one sample whose features are its mean responses to the images (the seed's
    setting: ``contamination='auto'``, 100 trees). A NaN mean is replaced by that unit's mean
    over images (0 when the unit has none).

    Parameters
    ----------
    image_means : pandas.DataFrame or numpy.ndarray
        Mean response, ``images x units``; at least two units.
    seed : int, default 0
        ``random_state`` of the forest.
    n_estimators : int, default 100
        Number of trees.

    Returns
    -------
    pandas.DataFrame
        Indexed by unit id: ``is_anomaly`` (bool) and ``anomaly_score`` (``decision_function``;
        lower = more anomalous, negative = flagged).

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> means = rng.normal(1.0, 0.1, size=(30, 40))
    >>> means[:, 0] += 20.0                                 # one unit far from the rest
    >>> out = anomaly_scores(means, seed=0)
    >>> bool(out["is_anomaly"].iloc[0]), int(out["anomaly_score"].idxmin())
    (True, 0)
    """
    from sklearn.ensemble import IsolationForest

    frame = _as_image_means(image_means)
    if frame.shape[1] < 2:
        raise MeireportError(f"image_means: expected at least 2 units, got {frame.shape[1]}")
    n_estimators = _check_int("n_estimators", n_estimators, 1)
    x = frame.to_numpy().T
    fill = np.nan_to_num(np.nanmean(np.where(np.isnan(x).all(1, keepdims=True), 0.0, x), axis=1))
    x = np.where(np.isnan(x), fill[:, None], x)
    forest = IsolationForest(n_estimators=n_estimators, contamination="auto", random_state=seed)
    flags = forest.fit(x).predict(x)
    return pd.DataFrame(
        {"is_anomaly": flags == -1, "anomaly_score": forest.decision_function(x)},
        index=frame.columns,
    )


def _partner(corr: np.ndarray, ids: pd.Index, best: bool) -> tuple[np.ndarray, pd.Series]:
    """Extreme off-diagonal correlation per row and the id of that partner (NA if none)."""
    fill = -np.inf if best else np.inf
    work = np.where(np.isnan(corr), fill, corr)
    idx = work.argmax(axis=1) if best else work.argmin(axis=1)
    has = np.isfinite(work[np.arange(len(idx)), idx])
    value = np.where(has, corr[np.arange(len(idx)), idx], np.nan)
    partner = pd.Series(ids[idx], index=ids)
    if pd.api.types.is_integer_dtype(ids.dtype):
        partner = partner.astype("Int64")
    return value, partner.where(has)


def pairwise_correlation(
    image_means: pd.DataFrame | np.ndarray,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Pearson correlation between units over images, and each unit's extreme partners.

    Parameters
    ----------
    image_means : pandas.DataFrame or numpy.ndarray
        Mean response, ``images x units``; columns are unit ids. NaN pairs are skipped.

    Returns
    -------
    corr : pandas.DataFrame
        ``units x units`` correlation matrix (diagonal 1; NaN for a constant unit).
    partners : pandas.DataFrame
        Indexed by unit id: ``max_corr`` and ``most_correlated`` (the other unit with the
        highest correlation), ``min_corr`` and ``least_correlated`` (the lowest); NaN / NA when
        a unit has no defined correlation.

    Examples
    --------
    >>> import pandas as pd
    >>> means = pd.DataFrame({10: [1.0, 2, 3, 4], 11: [2.0, 4, 6, 9], 12: [4.0, 3, 2, 1]})
    >>> corr, partners = pairwise_correlation(means)
    >>> partners["most_correlated"].tolist(), partners["least_correlated"].tolist()
    ([11, 10, 11], [12, 12, 10])
    """
    frame = _as_image_means(image_means)
    corr = frame.corr()
    values = corr.to_numpy(copy=True)
    np.fill_diagonal(values, np.nan)
    ids = corr.index
    max_corr, most = _partner(values, ids, best=True)
    min_corr, least = _partner(values, ids, best=False)
    partners = pd.DataFrame(
        {"max_corr": max_corr, "most_correlated": most, "min_corr": min_corr,
         "least_correlated": least},
        index=ids,
    )
    return corr, partners


# --------------------------------------------------------------------------------------------
# rastermap ordering
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RasterOrder:
    """Result of :func:`rastermap_order`.

    Attributes
    ----------
    isort : numpy.ndarray
        Unit indices from top to bottom of the raster; silent units come last.
    embedding : numpy.ndarray
        One-dimensional position of each unit (rastermap embedding or PC1 loading; NaN for
        silent units), in the input order.
    zscored : numpy.ndarray
        The z-scored activity, ``units x time bins``, in the input order.
    method : str
        ``"rastermap"`` or ``"pc1"`` (the fallback).
    message : str
        Why the fallback was used; empty when rastermap ran.
    """

    isort: np.ndarray
    embedding: np.ndarray
    zscored: np.ndarray
    method: str
    message: str = ""


def _zscore_rows(x: np.ndarray) -> np.ndarray:
    mean = x.mean(axis=1, keepdims=True)
    std = x.std(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(std > 0, (x - mean) / std, 0.0)


def _pc1_embedding(z: np.ndarray) -> np.ndarray:
    """Return each row's loading on the first principal component (largest |loading| > 0)."""
    if z.shape[0] == 1:
        return np.zeros(1)
    u, s, _ = np.linalg.svd(z - z.mean(axis=0, keepdims=True), full_matrices=False)
    load = u[:, 0] * s[0]
    return load if load[np.argmax(np.abs(load))] >= 0 else -load


@contextmanager
def _quiet_rastermap():
    """Keep rastermap from configuring the root logger and from printing its own warnings."""
    root = logging.getLogger()
    guard = None if root.handlers else logging.NullHandler()
    if guard is not None:
        root.addHandler(guard)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        if guard is not None:
            root.removeHandler(guard)


def _fit_rastermap(z: np.ndarray, settings: dict) -> tuple[np.ndarray, np.ndarray]:
    from rastermap import Rastermap

    with _quiet_rastermap():
        model = Rastermap(verbose=False, **settings).fit(z)
    embedding = np.asarray(model.embedding, dtype=float).reshape(z.shape[0], -1)[:, 0]
    if not np.all(np.isfinite(embedding)) or len(model.isort) != z.shape[0]:
        raise RuntimeError("rastermap returned a non-finite embedding")
    return embedding, np.asarray(model.isort)


def rastermap_order(
    binned: np.ndarray,
    n_PCs: int = 64,  # noqa: N803 - rastermap's own name
    locality: float = 0.15,
    time_lag_window: int = 15,
    n_clusters: int | None = None,
    grid_upsample: int = 0,
    min_units: int = 10,
    min_bins: int = 100,
    seed: int = 0,
) -> RasterOrder:
    """Order units by rastermap (>= 1.0) on z-scored binned activity, with a safe fallback.

    Each unit's binned counts are z-scored over time (a silent unit becomes all zeros). Units
    with activity are sorted by rastermap with the seed's settings (single-neuron sorting,
    ``n_clusters=None``); silent units are put last. When rastermap is not installed, fails,
    or the data are too small (fewer than ``min_units`` active units or ``min_bins`` bins), a
    ``UserWarning`` says so and units are ordered by their loading on the first principal
    component instead. Never raises for lack of data beyond an empty input.

    Parameters
    ----------
    binned : numpy.ndarray
        Spike counts, ``units x time bins``.
    n_PCs : int, default 64
        Principal components rastermap uses; capped at the number of active units and bins.
    locality : float, default 0.15
        Rastermap's locality of the sorting (0-1).
    time_lag_window : int, default 15
        Rastermap's window of future bins used in the correlation.
    n_clusters : int, optional
        ``None`` sorts single neurons (the seed; takes about 2 min for 135 units on 2 CPU
        cores); an integer clusters first and is much faster.
    grid_upsample : int, default 0
        Rastermap's upsampling (0 = off, right for single neurons).
    min_units, min_bins : int
        Below these sizes the first-PC fallback is used.
    seed : int, default 0
        Rastermap's ``random_state``.

    Returns
    -------
    RasterOrder
        ``isort`` (top to bottom), ``embedding``, ``zscored``, ``method``, ``message``.

    Examples
    --------
    >>> import warnings
    >>> import numpy as np
    >>> binned = np.random.default_rng(0).poisson(2.0, size=(4, 50))
    >>> with warnings.catch_warnings():
    ...     warnings.simplefilter("ignore")
    ...     order = rastermap_order(binned)
    >>> order.method, sorted(order.isort.tolist())
    ('pc1', [0, 1, 2, 3])
    """
    try:
        x = np.asarray(binned, dtype=float)
    except (TypeError, ValueError) as exc:
        raise MeireportError(
            f"binned: expected a numeric units x time bins array ({exc})"
        ) from None
    if x.ndim != 2 or x.size == 0:
        raise MeireportError(
            f"binned: expected a non-empty units x time bins array, got shape {x.shape}"
        )
    if not np.all(np.isfinite(x)):
        raise MeireportError("binned: expected finite spike counts, found NaN or inf")
    z = _zscore_rows(x)
    active = np.flatnonzero(x.std(axis=1) > 0)
    silent = np.flatnonzero(x.std(axis=1) == 0)
    settings = {
        "n_PCs": int(max(1, min(n_PCs, len(active), x.shape[1]))),
        "locality": locality,
        "time_lag_window": time_lag_window,
        "n_clusters": n_clusters,
        "grid_upsample": grid_upsample,
        "random_state": seed,
    }
    reason = ""
    if len(active) < min_units:
        reason = f"only {len(active)} active units (< min_units={min_units})"
    elif x.shape[1] < min_bins:
        reason = f"only {x.shape[1]} time bins (< min_bins={min_bins})"
    sub_embedding = np.zeros(len(active))
    sub_isort = np.arange(len(active))
    if not reason:
        try:
            sub_embedding, sub_isort = _fit_rastermap(z[active], settings)
        except ImportError:
            reason = "rastermap is not installed"
        except Exception as exc:  # noqa: BLE001 - any rastermap failure falls back
            reason = f"rastermap failed ({type(exc).__name__}: {exc})"
    method = "rastermap"
    if reason:
        method = "pc1"
        reason = f"rastermap_order: {reason}; ordering units by the first principal component"
        warnings.warn(reason, UserWarning, stacklevel=2)
        if len(active):
            sub_embedding = _pc1_embedding(z[active])
            sub_isort = np.argsort(-sub_embedding, kind="stable")
    embedding = np.full(x.shape[0], np.nan)
    embedding[active] = sub_embedding
    isort = np.concatenate([active[sub_isort], silent]).astype(int)
    return RasterOrder(isort=isort, embedding=embedding, zscored=z, method=method, message=reason)


# --------------------------------------------------------------------------------------------
# the selection rule
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SelectionRule:
    """Which units to keep, as parameters.

    A unit is selected when it passes every criterion (strict ``>`` as the seed):
    ``metric > quantile(q)`` of the candidate units for each ``above_quantile`` item,
    ``metric > value`` for each ``above`` item, ``True`` for each ``require`` column, and its
    area in ``areas``. Then ``max_units`` keeps the best by ``rank_by``. An explicit ``units``
    list overrides everything.

    Parameters
    ----------
    above_quantile : Mapping[str, float]
        Metric -> quantile in [0, 1]; default the seed's rule
        ``{"oracle_corr": 0.6, "variance": 0.5}``. Quantiles are computed over the units that
        pass the area filter.
    above : Mapping[str, float]
        Metric -> absolute threshold, e.g. ``{"fev": 0.1}``.
    require : tuple of str
        Boolean metric columns that must be True, e.g. ``("has_rf",)``.
    areas : tuple of str, optional
        Keep only units whose ``area`` is one of these.
    max_units : int, optional
        Keep at most this many (the highest by ``rank_by``).
    rank_by : str, default "oracle_corr"
        Metric ranking units for ``max_units``.
    units : tuple, optional
        Explicit unit ids to select; overrides every other criterion.

    Examples
    --------
    >>> SelectionRule().above_quantile
    {'oracle_corr': 0.6, 'variance': 0.5}
    >>> SelectionRule(above_quantile={"oracle_corr": 1.5})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    meireport.errors.MeireportError: rule.above_quantile['oracle_corr']: expected a quantile...
    """

    above_quantile: Mapping[str, float] = field(
        default_factory=lambda: {"oracle_corr": 0.6, "variance": 0.5}
    )
    above: Mapping[str, float] = field(default_factory=dict)
    require: tuple[str, ...] = ()
    areas: tuple[str, ...] | None = None
    max_units: int | None = None
    rank_by: str = "oracle_corr"
    units: tuple | None = None

    def __post_init__(self) -> None:
        """Check every field; store plain dicts and tuples."""
        for name in ("above_quantile", "above"):
            value = getattr(self, name)
            if not isinstance(value, Mapping):
                raise MeireportError(
                    f"rule.{name}: expected a mapping metric -> number, got {value!r}"
                )
            checked = {str(k): _rule_number(name, k, v) for k, v in value.items()}
            object.__setattr__(self, name, checked)
        for metric, q in self.above_quantile.items():
            if not 0.0 <= q <= 1.0:
                raise MeireportError(
                    f"rule.above_quantile[{metric!r}]: expected a quantile in [0, 1], got {q}"
                )
        object.__setattr__(self, "require", _str_tuple("require", self.require))
        if self.areas is not None:
            object.__setattr__(self, "areas", _str_tuple("areas", self.areas))
        if self.max_units is not None:
            _check_int("rule.max_units", self.max_units, 1)
        if self.units is not None:
            if isinstance(self.units, str) or not isinstance(self.units, Sequence | np.ndarray):
                raise MeireportError(f"rule.units: expected a list of unit ids, got {self.units!r}")
            object.__setattr__(self, "units", tuple(self.units))


def _rule_number(name: str, key: object, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.number) or np.isnan(value):
        raise MeireportError(f"rule.{name}[{key!r}]: expected a number, got {value!r}")
    return float(value)


def _str_tuple(name: str, value: object) -> tuple[str, ...]:
    items = (value,) if isinstance(value, str) else value
    if not isinstance(items, Sequence) or not all(isinstance(v, str) for v in items):
        raise MeireportError(f"rule.{name}: expected a list of names, got {value!r}")
    return tuple(items)


def _unit_ids(metrics: pd.DataFrame) -> pd.Series:
    ids = metrics["unit_id"] if "unit_id" in metrics.columns else metrics.index.to_series()
    if ids.duplicated().any():
        repeated = ids[ids.duplicated()].tolist()[:5]
        raise MeireportError(f"metrics: expected unique unit ids, got duplicates {repeated}")
    return pd.Series(ids.to_numpy(), index=metrics.index)


def _check_rule_columns(metrics: pd.DataFrame, rule: SelectionRule) -> None:
    wanted = [("above_quantile", m) for m in rule.above_quantile]
    wanted += [("above", m) for m in rule.above]
    wanted += [("require", m) for m in rule.require]
    if rule.max_units is not None:
        wanted.append(("rank_by", rule.rank_by))
    if rule.areas is not None:
        wanted.append(("areas", "area"))
    for part, column in wanted:
        if column not in metrics.columns:
            known = sorted(map(str, metrics.columns))
            raise MeireportError(f"rule.{part}: unknown metric {column!r}; metrics has {known}")


def rule_thresholds(metrics: pd.DataFrame, rule: SelectionRule | None = None) -> dict[str, float]:
    """Numeric threshold of each ``above_quantile`` and ``above`` criterion of ``rule``.

    Quantiles are taken over the units that pass the rule's area filter, NaN skipped
    (pandas' linear interpolation, as the seed). When a metric appears in both, the larger
    threshold is returned.

    Parameters
    ----------
    metrics : pandas.DataFrame
        One row per unit with the metric columns (and ``area`` when the rule filters areas).
    rule : SelectionRule, optional
        The rule; default the seed's.

    Returns
    -------
    dict
        Metric -> threshold a unit must exceed.

    Examples
    --------
    >>> import pandas as pd
    >>> table = pd.DataFrame({"oracle_corr": [0.1, 0.2, 0.3, 0.4, 0.5], "variance": [1.0] * 5})
    >>> {k: round(v, 6) for k, v in rule_thresholds(table).items()}
    {'oracle_corr': 0.34, 'variance': 1.0}
    """
    rule = SelectionRule() if rule is None else rule
    _check_metrics(metrics)
    _check_rule_columns(metrics, rule)
    pool = _area_mask(metrics, rule)
    out: dict[str, float] = {}
    for metric, q in rule.above_quantile.items():
        out[metric] = float(pd.to_numeric(metrics.loc[pool, metric]).quantile(q))
    for metric, value in rule.above.items():
        out[metric] = max(value, out.get(metric, -np.inf))
    return out


def _check_metrics(metrics: pd.DataFrame) -> None:
    if not isinstance(metrics, pd.DataFrame) or len(metrics) == 0:
        raise MeireportError("metrics: expected a non-empty DataFrame with one row per unit")


def _area_mask(metrics: pd.DataFrame, rule: SelectionRule) -> pd.Series:
    if rule.areas is None:
        return pd.Series(True, index=metrics.index)
    return metrics["area"].isin(rule.areas)


def _fmt(value: float) -> str:
    return f"{value:.3g}"


def _criterion_reasons(metrics: pd.DataFrame, rule: SelectionRule) -> list[pd.Series]:
    """One Series of reason strings ('' = passed) per criterion of the rule."""
    reasons = []
    if rule.areas is not None:
        ok = _area_mask(metrics, rule)
        text = "area " + metrics["area"].astype(str) + f" not in {list(rule.areas)}"
        reasons.append(text.where(~ok, ""))
    pool = _area_mask(metrics, rule)
    limits = [
        (m, float(pd.to_numeric(metrics.loc[pool, m]).quantile(q)), f"q{q:.2f} ")
        for m, q in rule.above_quantile.items()
    ]
    limits += [(m, v, "") for m, v in rule.above.items()]
    for metric, limit, label in limits:
        values = pd.to_numeric(metrics[metric])
        text = values.map(lambda v, m=metric, lb=label, lim=limit: (
            f"{m} is NaN" if pd.isna(v) else f"{m} {_fmt(v)} <= {lb}{_fmt(lim)}"
        ))
        reasons.append(text.where(~(values > limit), ""))
    for metric in rule.require:
        ok = metrics[metric].fillna(False).astype(bool)
        reasons.append(pd.Series(f"{metric} is not True", index=metrics.index).where(~ok, ""))
    return reasons


def _join(reasons: list[pd.Series], index: pd.Index) -> pd.Series:
    out = pd.Series("", index=index, dtype=object)
    for part in reasons:
        out = out.where(part == "", out.where(out == "", out + "; ") + part)
    return out


def select_units(metrics: pd.DataFrame, rule: SelectionRule | None = None) -> pd.DataFrame:
    """Apply a :class:`SelectionRule` to a table of unit metrics.

    Parameters
    ----------
    metrics : pandas.DataFrame
        One row per unit: a ``unit_id`` column (else the index is the id), the metric columns
        the rule names, and ``area`` when the rule filters areas.
    rule : SelectionRule, optional
        Default the seed's rule: ``oracle_corr > q0.6`` and ``variance > q0.5``.

    Returns
    -------
    pandas.DataFrame
        The metrics (with ``unit_id``), plus ``selected`` (bool) and ``reason`` (why a unit was
        rejected, ``"; "``-joined; empty when selected). The thresholds used are in
        ``.attrs["thresholds"]``.

    Examples
    --------
    >>> import pandas as pd
    >>> table = pd.DataFrame({"unit_id": [1, 2, 3, 4], "oracle_corr": [0.1, 0.5, 0.6, 0.7],
    ...                       "variance": [1.0, 0.1, 2.0, 3.0]})
    >>> out = select_units(table)
    >>> out["selected"].tolist()
    [False, False, True, True]
    >>> out["reason"].iloc[0]
    'oracle_corr 0.1 <= q0.60 0.58; variance 1 <= q0.50 1.5'
    """
    rule = SelectionRule() if rule is None else rule
    if not isinstance(rule, SelectionRule):
        raise MeireportError(f"rule: expected a SelectionRule, got {type(rule).__name__}")
    _check_metrics(metrics)
    ids = _unit_ids(metrics)
    _check_rule_columns(metrics, rule)
    out = metrics.copy()
    if "unit_id" not in out.columns:
        out.insert(0, "unit_id", ids.to_numpy())
    if rule.units is not None:
        return _select_explicit(out, ids, rule)
    reason = _join(_criterion_reasons(metrics, rule), metrics.index)
    passed = reason == ""
    if rule.max_units is not None and passed.sum() > rule.max_units:
        score = pd.to_numeric(metrics.loc[passed, rule.rank_by]).fillna(-np.inf)
        ranked = score.sort_values(ascending=False, kind="stable").index
        dropped = ranked[rule.max_units:]
        position = pd.Series(np.arange(1, len(ranked) + 1), index=ranked)
        top = f"not in the top {rule.max_units} by {rule.rank_by}"
        reason.loc[dropped] = [f"{top} (rank {position[i]})" for i in dropped]
        passed = reason == ""
    out["selected"] = passed.to_numpy()
    out["reason"] = reason.to_numpy()
    out.attrs["thresholds"] = rule_thresholds(metrics, rule)
    return out


def _select_explicit(out: pd.DataFrame, ids: pd.Series, rule: SelectionRule) -> pd.DataFrame:
    missing = [u for u in rule.units if u not in set(ids.tolist())]
    if missing:
        raise MeireportError(f"rule.units: unit ids not in metrics: {missing[:10]}")
    chosen = ids.isin(rule.units).to_numpy()
    out["selected"] = chosen
    out["reason"] = np.where(chosen, "", "not in the explicit unit list")
    out.attrs["thresholds"] = {}
    return out


# --------------------------------------------------------------------------------------------
# the metrics table
# --------------------------------------------------------------------------------------------


def _align_means(image_means: pd.DataFrame | np.ndarray, unit_ids: list) -> pd.DataFrame:
    frame = _as_image_means(image_means)
    if frame.shape[1] != len(unit_ids):
        raise MeireportError(
            f"image_means: expected {len(unit_ids)} unit columns (one per id), got {frame.shape[1]}"
        )
    if not isinstance(image_means, pd.DataFrame):
        frame.columns = pd.Index(unit_ids)
        return frame
    if set(frame.columns) != set(unit_ids):
        raise MeireportError("image_means: expected its columns to be the ids in unit_ids")
    return frame[list(unit_ids)]


def unit_metrics(
    trials: np.ndarray,
    image_means: pd.DataFrame | np.ndarray,
    unit_ids: Sequence,
    areas: Sequence[str] | None = None,
    seed: int = 0,
    n_bins: int = 16,
) -> pd.DataFrame:
    """Table of every selection metric, one row per unit.

    Parameters
    ----------
    trials : numpy.ndarray
        Spike counts, ``units x images x repeats`` (NaN = missing repeat), rows in the order of
        ``unit_ids``.
    image_means : pandas.DataFrame or numpy.ndarray
        Mean response ``images x units``; DataFrame columns must be the unit ids.
    unit_ids : sequence
        Unit ids, one per row of ``trials`` (at least two units).
    areas : sequence of str, optional
        Brain area of each unit (adds an ``area`` column).
    seed : int, default 0
        Seed of the IsolationForest.
    n_bins : int, default 16
        Bins of the rounding-free entropy.

    Returns
    -------
    pandas.DataFrame
        Columns ``unit_id``, [``area``], ``n_spikes`` (total over trials), ``mean_response``,
        ``oracle_corr``, ``fev``, ``snr``, ``variance``, ``entropy``, ``entropy_binned``,
        ``is_anomaly``, ``anomaly_score``, ``max_corr``, ``most_correlated``, ``min_corr``,
        ``least_correlated``.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> trials = rng.poisson(3.0, size=(3, 10, 5)).astype(float)
    >>> table = unit_metrics(trials, np.nanmean(trials, axis=2).T, unit_ids=[7, 8, 9])
    >>> table["unit_id"].tolist(), "oracle_corr" in table
    ([7, 8, 9], True)
    """
    x = _as_trials(trials)
    ids = list(unit_ids)
    if len(ids) != x.shape[0] or len(set(ids)) != len(ids):
        raise MeireportError(
            f"unit_ids: expected {x.shape[0]} unique ids (one per unit of trials), got {len(ids)}"
        )
    if len(ids) < 2:
        raise MeireportError(f"unit_ids: expected at least 2 units, got {len(ids)}")
    means = _align_means(image_means, ids)
    table = pd.DataFrame({"unit_id": ids})
    if areas is not None:
        if len(areas) != len(ids):
            raise MeireportError(f"areas: expected {len(ids)} area names, got {len(areas)}")
        table["area"] = list(areas)
    table["n_spikes"] = np.nansum(x, axis=(1, 2))
    table["mean_response"] = np.nanmean(means.to_numpy(), axis=0)
    table["oracle_corr"] = oracle_correlation(x)
    table["fev"] = fev(x)
    table["snr"] = snr(x, anscombe=bool(np.nanmin(x) >= 0))
    table["variance"] = response_variance(means).to_numpy()
    table["entropy"] = response_entropy(means).to_numpy()
    table["entropy_binned"] = response_entropy(means, n_bins=n_bins).to_numpy()
    anomalies = anomaly_scores(means, seed=seed)
    table["is_anomaly"] = anomalies["is_anomaly"].to_numpy()
    table["anomaly_score"] = anomalies["anomaly_score"].to_numpy()
    _, partners = pairwise_correlation(means)
    for column in partners.columns:
        table[column] = partners[column].to_numpy()
    return table


def rule_from_params(selection: Mapping) -> SelectionRule:
    """Build a :class:`SelectionRule` from the ``selection`` section of a params file.

    Examples
    --------
    >>> rule_from_params({"oracle_quantile": 0.6, "variance_quantile": None, "min_oracle": 0.1})
    ... # doctest: +ELLIPSIS
    SelectionRule(above_quantile={'oracle_corr': 0.6}, above={'oracle_corr': 0.1}, ...)
    """
    q = {m: selection.get(k) for m, k in (("oracle_corr", "oracle_quantile"),
                                          ("variance", "variance_quantile"))}
    a = {m: selection.get(k) for m, k in (("oracle_corr", "min_oracle"),
                                          ("variance", "min_variance"))}
    units = selection.get("units")
    return SelectionRule(
        above_quantile={k: float(v) for k, v in q.items() if v is not None},
        above={k: float(v) for k, v in a.items() if v is not None},
        max_units=selection.get("max_units"),
        units=tuple(int(u) for u in units) if units else None,
    )


def select_to_dir(session_dir, selection: Mapping) -> pd.DataFrame:
    """The selection stage: metrics, receptive fields and the rule, written to ``session_dir``.

    Reads the extraction artifacts (``trials.npz``, ``units.csv``, ``gabors.npz``,
    ``session.json``) and writes ``selection.csv`` (one row per unit: every metric, RF columns,
    ``selected``, ``reason`` and ``selection_stability``: the fraction of
    ``selection["stability_resamples"]`` trial resamples (default 20) in which the same rule,
    without its ``max_units`` cap, selects the unit; see
    :func:`meireport.trust.selection_stability`) and ``rfmap.npz`` (the 9 x 9 gabor maps).
    """
    from pathlib import Path

    from meireport.artifacts import load_csv, load_json, load_npz, save_csv, save_npz
    from meireport.rfmap import receptive_fields, rf_maps
    from meireport.stimuli import ScreenGeometry
    from meireport.trust import selection_stability

    sdir = Path(session_dir)
    tr = load_npz(sdir / "trials.npz")
    units = load_csv(sdir / "units.csv").set_index("unit_id")
    info = load_json(sdir / "session.json")
    ids = tr["unit_ids"].astype(np.int64)
    means = pd.DataFrame(np.nanmean(tr["data"], axis=2).T, index=tr["image_ids"], columns=ids)
    areas = units.loc[ids, "ecephys_structure_acronym"].astype(str).tolist()
    metrics = unit_metrics(tr["data"], means, ids, areas=areas, seed=int(selection.get("seed", 0)))
    g = load_npz(sdir / "gabors.npz")
    table = pd.DataFrame({k: g[k] for k in ("orientation", "x_position", "y_position")},
                         index=g["presentation_ids"])
    counts = pd.DataFrame(g["counts"], index=g["presentation_ids"], columns=g["unit_ids"])
    geometry = ScreenGeometry.from_dict(info["geometry"])
    rf = receptive_fields(table, counts, geometry.deg_to_px, seed=int(selection.get("seed", 0)))
    metrics = metrics.merge(rf.rename(columns={"n_spikes": "rf_n_spikes"}), on="unit_id",
                            how="left")
    if "true_kind" in units.columns:
        metrics["true_kind"] = units.loc[metrics["unit_id"], "true_kind"].to_numpy()
    rule = rule_from_params(selection)
    out = select_units(metrics, rule)
    # stability of passing the rule itself: the max_units cap is a budget, not a reliability
    uncapped = rule_from_params({**selection, "max_units": None})
    stability = selection_stability(
        tr["data"], ids, uncapped, n_resamples=int(selection.get("stability_resamples", 20)),
        seed=int(selection.get("seed", 0)), metrics=metrics,
    )
    out["selection_stability"] = stability.loc[out["unit_id"]].to_numpy()
    save_csv(sdir / "selection.csv", out, index=False)
    maps = rf_maps(table, counts)
    save_npz(sdir / "rfmap.npz", maps=maps.maps, x_deg=maps.x_deg, y_deg=maps.y_deg,
             unit_ids=np.asarray(maps.unit_ids, dtype=np.int64))
    return out
