"""How far each neuron's MEI can be trusted: one label from the evidence the report computes.

A neuron's MEI is only as good as the data and the model behind it. :func:`assess` checks five
criteria against thresholds (:class:`TrustThresholds`, the ``trust`` params section):

- ``test_corr_ci_low``: the lower end of the bootstrap CI of the model's test correlation must
  exceed ``min_ci_low`` (the model predicts held-out images better than chance);
- ``frac_oracle``: single-trial correlation / oracle, at least ``min_frac_oracle``;
- ``mei_reliability``: median pixel correlation between the MEIs of different starts or
  ensemble members, at least ``min_mei_agreement``;
- ``selection_stability``: fraction of trial resamples in which the unit is still selected
  (:func:`selection_stability`), at least ``min_selection_stability``;
- ``rf_p_value``: permutation p-value of the RF map from the gabors stimulus, at most
  ``max_rf_p``.

The label is ``low`` when a model- or MEI-critical criterion fails (the CI or the MEI
agreement), ``high`` when every criterion is known and passes, ``medium`` otherwise.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields

import numpy as np
import pandas as pd

from meireport.errors import MeireportError

__all__ = [
    "mei_agreement",
    "LABELS",
    "LABEL_COLOURS",
    "Trust",
    "TrustThresholds",
    "assess",
    "selection_stability",
]

LABELS = ("high", "medium", "low")
"""Trust labels, best first."""

LABEL_COLOURS = {"high": "#2e7d32", "medium": "#ef6c00", "low": "#c62828"}
"""Colour of each label on the report's pages (green, orange, red)."""


def _finite_number(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.number):
        raise MeireportError(f"{name}: expected a number, got {value!r}")
    out = float(value)
    if not math.isfinite(out):
        raise MeireportError(f"{name}: expected a finite number, got {value!r}")
    return out


@dataclass(frozen=True)
class TrustThresholds:
    """Thresholds of the trust criteria (the ``trust`` params section).

    Parameters
    ----------
    min_ci_low : float, default 0.0
        The lower bound of the bootstrap CI of ``test_corr`` must exceed this.
    min_frac_oracle : float, default 0.5
        Minimum ``frac_oracle`` (single-trial correlation / oracle).
    min_mei_agreement : float, default 0.5
        Minimum ``mei_reliability`` (median pixel correlation between the MEIs of different
        starts or ensemble members).
    min_selection_stability : float, default 0.8
        Minimum fraction of trial resamples in which the unit is selected.
    max_rf_p : float, default 0.01
        Maximum RF-mapping permutation p-value (``rf_p_value`` in ``selection.csv``).

    Examples
    --------
    >>> TrustThresholds().min_frac_oracle
    0.5
    >>> TrustThresholds(max_rf_p=2.0)
    Traceback (most recent call last):
    ...
    meireport.errors.MeireportError: trust.max_rf_p: expected a value in [0, 1], got 2.0
    """

    min_ci_low: float = 0.0
    min_frac_oracle: float = 0.5
    min_mei_agreement: float = 0.5
    min_selection_stability: float = 0.8
    max_rf_p: float = 0.01

    def __post_init__(self) -> None:
        """Check every threshold (finite, in its range); store floats."""
        ranges = {"min_ci_low": (-1.0, 1.0), "min_frac_oracle": (0.0, math.inf),
                  "min_mei_agreement": (-1.0, 1.0), "min_selection_stability": (0.0, 1.0),
                  "max_rf_p": (0.0, 1.0)}
        for name, (lo, hi) in ranges.items():
            value = _finite_number(f"trust.{name}", getattr(self, name))
            if not lo <= value <= hi:
                where = f">= {lo:g}" if hi == math.inf else f"in [{lo:g}, {hi:g}]"
                raise MeireportError(f"trust.{name}: expected a value {where}, got {value!r}")
            object.__setattr__(self, name, value)

    @classmethod
    def from_params(cls, d: Mapping | None) -> TrustThresholds:
        """Thresholds from the ``trust`` params section (``None`` gives the defaults).

        Parameters
        ----------
        d : Mapping or None
            Field name -> value; missing fields keep their defaults, unknown fields are errors.

        Returns
        -------
        TrustThresholds

        Examples
        --------
        >>> TrustThresholds.from_params({"min_frac_oracle": 0.3}).min_frac_oracle
        0.3
        >>> TrustThresholds.from_params({"min_frac": 0.3})  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        meireport.errors.MeireportError: trust.min_frac: unknown field (known: min_ci_low, ...)
        """
        if d is None:
            return cls()
        if not isinstance(d, Mapping):
            raise MeireportError(f"trust: expected a mapping of thresholds, got {d!r}")
        known = [f.name for f in fields(cls)]
        for key in d:
            if key not in known:
                raise MeireportError(f"trust.{key}: unknown field (known: {', '.join(known)})")
        return cls(**{k: v for k, v in d.items() if v is not None})


@dataclass
class Trust:
    """The trust assessment of one neuron (:func:`assess`).

    Attributes
    ----------
    label : str
        ``"high"``, ``"medium"`` or ``"low"``.
    reasons : list of str
        Short sentences: every failing or unknown criterion with its value and threshold, or
        ``["all criteria met"]``.
    criteria : pandas.DataFrame
        Index = criterion name; columns ``value``, ``threshold``, ``ok`` (True, False, or None
        when the value is unknown).
    """

    label: str
    reasons: list[str]
    criteria: pd.DataFrame

    def to_dict(self) -> dict:
        """JSON-serialisable form: ``label``, ``reasons``, ``criteria`` as name -> fields.

        Unknown values are ``None`` (never NaN).

        Examples
        --------
        >>> t = assess({"frac_oracle": 0.7})
        >>> d = t.to_dict()
        >>> d["label"], d["criteria"]["frac_oracle"]
        ('medium', {'value': 0.7, 'threshold': 0.5, 'ok': True})
        >>> d["criteria"]["rf_p_value"]["ok"] is None
        True
        """
        crit = {}
        for name, row in self.criteria.iterrows():
            value = row["value"]
            crit[str(name)] = {
                "value": None if value is None or pd.isna(value) else float(value),
                "threshold": float(row["threshold"]),
                "ok": None if row["ok"] is None or pd.isna(row["ok"]) else bool(row["ok"]),
            }
        return {"label": self.label, "reasons": list(self.reasons), "criteria": crit}


@dataclass(frozen=True)
class _Criterion:
    key: str  # value key and criterion name
    threshold: str  # TrustThresholds field
    op: str  # ">", ">=" or "<="
    critical: bool  # failing it makes the label "low"
    label: str  # what it is, for "unknown" sentences
    fail: Callable[[float, float, Mapping], str]  # sentence for a failing value


def _ci_fail(v: float, t: float, values: Mapping) -> str:
    hi = _value(values, "test_corr_ci_high")
    return f"test correlation CI reaches {t:g} ({v:.2f} .. {'?' if np.isnan(hi) else f'{hi:.2f}'})"


_CRITERIA = (
    _Criterion("test_corr_ci_low", "min_ci_low", ">", True, "test correlation CI", _ci_fail),
    _Criterion("frac_oracle", "min_frac_oracle", ">=", False, "fraction of the oracle",
               lambda v, t, _: f"model reaches {v:.2f} of the oracle (needs >= {t:g})"),
    _Criterion("mei_reliability", "min_mei_agreement", ">=", True, "MEI agreement between starts",
               lambda v, t, _: f"MEIs of different starts agree only {v:.2f}, even up to phase "
               f"(needs >= {t:g})"),
    _Criterion("selection_stability", "min_selection_stability", ">=", False,
               "selection stability",
               lambda v, t, _: f"selected in {v:.0%} of trial resamples (needs >= {t:.0%})"),
    _Criterion("rf_p_value", "max_rf_p", "<=", False, "RF-mapping p-value",
               lambda v, t, _: f"no significant receptive field (p = {v:.3g}, needs <= {t:g})"),
)
_OPS = {">": np.greater, ">=": np.greater_equal, "<=": np.less_equal}


def mei_agreement(values: Mapping) -> float:
    """Agreement of a neuron's MEIs across starts, up to the carrier's phase.

    The larger of ``mei_reliability`` (pixel correlation) and ``mei_phase_reliability`` (the
    phase-invariant one, :func:`meireport.compare.phase_invariant_correlation`): a complex
    cell's MEIs may legitimately differ in phase only; that is not a disagreement about what
    excites the neuron (the MEI page says its phase is arbitrary).

    Examples
    --------
    >>> mei_agreement({"mei_reliability": -0.5, "mei_phase_reliability": 0.9})
    0.9
    >>> mei_agreement({"mei_reliability": 0.7})
    0.7
    """
    a, b = _value(values, "mei_reliability"), _value(values, "mei_phase_reliability")
    return float(np.fmax(a, b))


def _value(values: Mapping, key: str) -> float:
    """``values[key]`` as a float; NaN when missing or None; an error when not a number."""
    v = values.get(key)
    if v is None:
        return np.nan
    if isinstance(v, bool) or not isinstance(v, int | float | np.number):
        raise MeireportError(f"values.{key}: expected a number or None, got {v!r}")
    return float(v)


def assess(values: Mapping, thresholds: TrustThresholds | None = None) -> Trust:
    """Label how far a neuron's MEI can be trusted, with the reasons.

    Parameters
    ----------
    values : Mapping
        The neuron's numbers (any may be missing, None or NaN: that criterion is unknown):
        ``test_corr_ci_low``, ``test_corr_ci_high``, ``frac_oracle``, ``mei_reliability`` and
        ``mei_phase_reliability`` (their larger, :func:`mei_agreement`), ``selection_stability``,
        ``rf_p_value``. Other keys are ignored.
    thresholds : TrustThresholds, optional
        Default :class:`TrustThresholds()`.

    Returns
    -------
    Trust
        ``low`` when the test-correlation CI reaches ``min_ci_low`` or the MEI agreement is below
        ``min_mei_agreement``; ``high`` when every criterion is known and met; else ``medium``.

    Examples
    --------
    >>> good = {"test_corr_ci_low": 0.3, "test_corr_ci_high": 0.7, "frac_oracle": 0.8,
    ...         "mei_reliability": 0.9, "selection_stability": 1.0, "rf_p_value": 0.001}
    >>> t = assess(good)
    >>> t.label, t.reasons
    ('high', ['all criteria met'])
    >>> assess(good | {"test_corr_ci_low": -0.12, "test_corr_ci_high": 0.61}).reasons
    ['test correlation CI reaches 0 (-0.12 .. 0.61)']
    """
    if not isinstance(values, Mapping):
        raise MeireportError(f"values: expected a mapping of the neuron's numbers, got {values!r}")
    th = TrustThresholds() if thresholds is None else thresholds
    if not isinstance(th, TrustThresholds):
        raise MeireportError(f"thresholds: expected TrustThresholds, got {type(th).__name__}")
    _value(values, "test_corr_ci_high")  # checked here: a bad one is named even when unused
    rows, reasons, critical_fail, all_ok = [], [], False, True
    for c in _CRITERIA:
        t = getattr(th, c.threshold)
        v = mei_agreement(values) if c.key == "mei_reliability" else _value(values, c.key)
        ok = None if np.isnan(v) else bool(_OPS[c.op](v, t))
        rows.append({"criterion": c.key, "value": v, "threshold": t, "ok": ok})
        if ok is None:
            reasons.append(f"{c.label} unknown (needs {c.op} {t:g})")
            all_ok = False
        elif not ok:
            reasons.append(c.fail(v, t, values))
            all_ok = False
            critical_fail |= c.critical
    label = "low" if critical_fail else "high" if all_ok else "medium"
    criteria = pd.DataFrame(rows).set_index("criterion")
    criteria["ok"] = criteria["ok"].astype(object).where(criteria["ok"].notna(), None)
    return Trust(label, reasons or ["all criteria met"], criteria)


# --------------------------------------------------------------------------------------------
# selection stability
# --------------------------------------------------------------------------------------------


def _needed_columns(rule) -> list[str]:
    cols = list(rule.above_quantile) + list(rule.above) + list(rule.require)
    if rule.max_units is not None:
        cols.append(rule.rank_by)
    if rule.areas is not None:
        cols.append("area")
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
        from meireport.select import fev, snr

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
    >>> from meireport.select import SelectionRule
    >>> rng = np.random.default_rng(0)
    >>> rate = np.vstack([np.linspace(1, 30, 40), np.full((3, 40), 5.0)])  # 1 tuned, 3 flat
    >>> trials = rng.poisson(rate[:, :, None], size=(4, 40, 10)).astype(float)
    >>> rule = SelectionRule(above_quantile={"oracle_corr": 0.5})  # 2 of 4 pass each time
    >>> selection_stability(trials, [10, 11, 12, 13], rule, n_resamples=10).tolist()
    [1.0, 0.3, 0.6, 0.1]
    """
    from meireport.select import SelectionRule, _as_trials, _check_int, select_units

    x = _as_trials(trials)
    ids = list(unit_ids)
    if len(ids) != x.shape[0] or len(set(ids)) != len(ids):
        raise MeireportError(
            f"unit_ids: expected {x.shape[0]} unique ids (one per unit of trials), got {len(ids)}"
        )
    if not isinstance(rule, SelectionRule):
        raise MeireportError(f"rule: expected a SelectionRule, got {type(rule).__name__}")
    n_resamples = _check_int("n_resamples", n_resamples, 1)
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
