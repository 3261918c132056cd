"""Reliability measures of single units (pure numpy/pandas functions of trial arrays).

Oracle correlation (jackknife and random split), FEV, SNR, response variance and entropy,
anomaly scores, pairwise correlations, and :func:`unit_metrics`, which gathers them into the
table the selection rule reads.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import pandas as pd
from scipy.stats import entropy as _entropy

from meireport.errors import MeireportError
from meireport.select._checks import as_image_means, as_trials, check_int

__all__ = [
    "oracle_correlation",
    "RandomOracle",
    "oracle_correlation_random",
    "fev",
    "snr",
    "response_variance",
    "response_entropy",
    "anomaly_scores",
    "pairwise_correlation",
    "unit_metrics",
]


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
    x = as_trials(trials)
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
    x = as_trials(trials)
    n_iter = check_int("n_iter", n_iter, 1)
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
    x = as_trials(trials)
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
    x = as_trials(trials)
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
    return as_image_means(image_means).var(axis=0, ddof=1).rename("variance")


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
    frame = as_image_means(image_means)
    if n_bins is None:
        values = [_entropy(frame[c].value_counts().to_numpy()) for c in frame.columns]
        return pd.Series(np.asarray(values, dtype=float), index=frame.columns, name="entropy")
    n_bins = check_int("n_bins", n_bins, 1)
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

    frame = as_image_means(image_means)
    if frame.shape[1] < 2:
        raise MeireportError(f"image_means: expected at least 2 units, got {frame.shape[1]}")
    n_estimators = check_int("n_estimators", n_estimators, 1)
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
    frame = as_image_means(image_means)
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
# the metrics table
# --------------------------------------------------------------------------------------------


def _align_means(image_means: pd.DataFrame | np.ndarray, unit_ids: list) -> pd.DataFrame:
    frame = as_image_means(image_means)
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
    x = as_trials(trials)
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
