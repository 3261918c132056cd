"""Selection stability: how often the rule keeps a unit when its trials are resampled."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd

from meireport.errors import MeireportError

__all__ = [
    "selection_stability",
]


# --------------------------------------------------------------------------------------------
# selection stability
# --------------------------------------------------------------------------------------------


def _needed_columns(rule) -> list[str]:
    cols = list(rule.above_quantile) + list(rule.above) + list(rule.require)
    if rule.max_units is not None:
        cols.append(rule.rank_by)
    if rule.areas is not None:
        cols.append("area")
    if rule.group_by is not None:
        cols.append(rule.group_by)
    return list(dict.fromkeys(cols))


def _weighted_oracle(x: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Jackknife oracle of a resample given as draw counts of the original repeats.

    ``counts[u, i, r]`` is how often repeat ``r`` of image ``i`` was drawn for unit ``u``. Each
    draw is paired with the mean of the draws of *other* original repeats of the same image, so a
    trial drawn twice is never correlated with its own copy (drawing with replacement and then
    applying :func:`meireport.select.oracle_correlation` to the resampled tensor would: an untuned
    unit with n repeats would get an oracle of about ``1 / sqrt(n)``). With every valid repeat
    drawn once this is exactly :func:`meireport.select.oracle_correlation`.
    """
    xz = np.where(counts > 0, np.nan_to_num(x), 0.0)
    n = counts.sum(axis=2, keepdims=True)
    total = (counts * xz).sum(axis=2, keepdims=True)
    use = (counts > 0) & (n - counts > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        loo = np.where(use, (total - counts * xz) / (n - counts), 0.0)
        w = np.where(use, counts, 0).astype(float)
        wsum = w.sum(axis=(1, 2), keepdims=True)
        ma = (w * xz).sum(axis=(1, 2), keepdims=True) / wsum
        mb = (w * loo).sum(axis=(1, 2), keepdims=True) / wsum
        da, db = np.where(use, xz - ma, 0.0), np.where(use, loo - mb, 0.0)
        cov = (w * da * db).sum(axis=(1, 2))
        var = (w * da * da).sum(axis=(1, 2)) * (w * db * db).sum(axis=(1, 2))
        r = cov / np.sqrt(var)
    return np.where(var > 0, r, np.nan)


class _Resampler:
    """Draws trial resamples and computes the rule's metrics on them."""

    METRICS = ("oracle_corr", "variance", "fev", "snr", "mean_response", "n_spikes")

    def __init__(self, x: np.ndarray, seed: int) -> None:
        self.x, self.rng = x, np.random.default_rng(seed)
        valid = ~np.isnan(x)
        self.n = valid.sum(axis=2)
        self.order = np.argsort(~valid, axis=2, kind="stable")  # valid repeats first
        self.filled = np.arange(x.shape[2])[None, None, :] < self.n[..., None]
        n_units, n_images, n_rep = x.shape
        self.base = (np.arange(n_units)[:, None, None] * n_images
                     + np.arange(n_images)[None, :, None]) * n_rep
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # images without trials
            plug_in = np.nanvar(x, axis=2) / np.where(self.n > 0, self.n, np.nan)
            # a resampled image mean varies by var/n about the observed one: that much is
            # added to the variance of image means, and is taken off again
            self.variance_bias = np.nanmean(plug_in, axis=1)

    def draw(self) -> tuple[np.ndarray, np.ndarray]:
        """One resample: ``(counts, sample)``; the same draw for all units of equal coverage."""
        n_units, n_images, n_rep = self.x.shape
        u = self.rng.random((n_images, n_rep))[None]
        last = np.maximum(self.n - 1, 0)[..., None]
        k = np.minimum((u * self.n[..., None]).astype(np.intp), last)
        idx = np.take_along_axis(self.order, k, axis=2)  # original repeat of each draw
        counts = np.bincount((self.base + idx)[self.filled], minlength=self.x.size)
        sample = np.where(self.filled, np.take_along_axis(self.x, idx, axis=2), np.nan)
        return counts.reshape(self.x.shape), sample

    def metric(self, name: str, counts: np.ndarray, sample: np.ndarray) -> np.ndarray:
        """Metric ``name`` of every unit on one resample."""
        from meireport.select.measures import fev, snr

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN images / units
            if name == "oracle_corr":
                return _weighted_oracle(self.x, counts)
            if name == "variance":
                return np.nanvar(np.nanmean(sample, axis=2), axis=1, ddof=1) - self.variance_bias
            if name == "mean_response":
                return np.nanmean(np.nanmean(sample, axis=2), axis=1)
        if name == "fev":
            return fev(sample)
        if name == "snr":
            return snr(sample, anscombe=bool(np.nanmin(sample) >= 0))
        return np.nansum(sample, axis=(1, 2))  # n_spikes


def selection_stability(
    trials: np.ndarray,
    unit_ids: Sequence,
    rule,
    n_resamples: int = 20,
    seed: int = 0,
    metrics: pd.DataFrame | None = None,
) -> pd.Series:
    """Fraction of trial resamples in which each unit is selected by ``rule``.

    In each resample the repeats of every image are drawn with replacement (the same draw for
    all units, as they were recorded together; a unit's missing repeats are never drawn), the
    metrics the rule uses are recomputed for *all* units (quantile rules are relative to the
    population) and the rule is applied again with :func:`meireport.select.select_units`.

    Two metrics are computed so that a resample is centred on the observed value: the oracle
    pairs each draw with the mean of the draws of *other* original trials (a trial is never
    correlated with its own copy, which would give an untuned unit with ``n`` repeats an oracle
    of about ``1 / sqrt(n)``), and the variance of image means has the variance that resampling
    itself adds (``mean_images(var_i / n_i)``) taken off. The resampled oracle is still slightly
    low (about -0.02 to -0.05 at 10 repeats: fewer distinct trials per image), so stability is
    a little conservative. ``fev`` and ``snr`` are recomputed on the resampled trials as they
    are.

    Parameters
    ----------
    trials : numpy.ndarray
        Spike counts, ``units x images x repeats``; NaN marks a missing repeat.
    unit_ids : sequence
        One id per unit of ``trials``.
    rule : meireport.select.SelectionRule
        The selection rule. Metrics recomputed from the resampled trials: ``oracle_corr``,
        ``variance`` (of image means), ``fev``, ``snr``, ``mean_response``, ``n_spikes``.
    n_resamples : int, default 20
        Number of resamples.
    seed : int, default 0
        Seed of the numpy Generator; the same seed gives the same result.
    metrics : pandas.DataFrame, optional
        Per-unit columns the trials cannot give (e.g. ``area``, ``has_rf``), held fixed; a
        ``unit_id`` column (else the index) names the units.

    Returns
    -------
    pandas.Series
        Named ``selection_stability``, indexed by unit id, values in [0, 1].

    Examples
    --------
    >>> import numpy as np
    >>> from meireport.select.rule import SelectionRule
    >>> rng = np.random.default_rng(0)
    >>> rate = np.vstack([np.linspace(1, 30, 40), np.full((3, 40), 5.0)])  # 1 tuned, 3 flat
    >>> trials = rng.poisson(rate[:, :, None], size=(4, 40, 10)).astype(float)
    >>> rule = SelectionRule(above_quantile={"oracle_corr": 0.5})  # 2 of 4 pass each time
    >>> selection_stability(trials, [10, 11, 12, 13], rule, n_resamples=10).tolist()
    [1.0, 0.3, 0.6, 0.1]
    """
    from meireport.select._checks import as_trials, check_int
    from meireport.select.rule import SelectionRule, select_units

    x = as_trials(trials)
    ids = list(unit_ids)
    if len(ids) != x.shape[0] or len(set(ids)) != len(ids):
        raise MeireportError(
            f"unit_ids: expected {x.shape[0]} unique ids (one per unit of trials), got {len(ids)}"
        )
    if not isinstance(rule, SelectionRule):
        raise MeireportError(f"rule: expected a SelectionRule, got {type(rule).__name__}")
    n_resamples = check_int("n_resamples", n_resamples, 1)
    index = pd.Index(ids, name="unit_id")
    if rule.units is not None:  # an explicit list does not depend on the trials
        missing = [u for u in rule.units if u not in set(ids)]
        if missing:
            raise MeireportError(f"rule.units: unit ids not in unit_ids: {missing[:10]}")
        return pd.Series(index.isin(rule.units).astype(float), index=index,
                         name="selection_stability")
    base = pd.DataFrame({"unit_id": ids})
    needed = _needed_columns(rule)
    fixed = [c for c in needed if c not in _Resampler.METRICS]
    if fixed:
        if metrics is None:
            raise MeireportError(
                f"metrics: the rule uses {fixed}, which trials cannot give; pass them in metrics"
            )
        table = metrics.set_index("unit_id") if "unit_id" in metrics.columns else metrics
        missing = [c for c in fixed if c not in table.columns]
        absent = [u for u in ids if u not in table.index]
        if missing or absent:
            what = f"columns {missing}" if missing else f"unit ids {absent[:5]}"
            raise MeireportError(f"metrics: expected {what} needed by the rule")
        for c in fixed:
            base[c] = table.loc[ids, c].to_numpy()
    recompute = [c for c in needed if c in _Resampler.METRICS]
    resampler = _Resampler(x, seed)
    hits = np.zeros(len(ids))
    for _ in range(n_resamples):
        counts, sample = resampler.draw()
        table = base.copy()
        for c in recompute:
            table[c] = resampler.metric(c, counts, sample)
        hits += select_units(table, rule)["selected"].to_numpy(dtype=float)
    return pd.Series(hits / n_resamples, index=index, name="selection_stability")
