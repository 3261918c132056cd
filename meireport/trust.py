"""How far each neuron's MEI can be trusted: one label from the evidence the report computes.

A neuron's MEI is only as good as the data and the model behind it. :func:`assess` checks five
criteria against thresholds (:class:`TrustThresholds`, the ``trust`` params section):

- ``test_corr_ci_low``: the lower end of the bootstrap CI of the model's test correlation must
  exceed ``min_ci_low`` (the model predicts held-out images better than chance);
- ``frac_oracle``: single-trial correlation / oracle, at least ``min_frac_oracle``;
- MEI agreement (:func:`mei_agreement`): median correlation between the MEIs of different
  starts or ensemble members, at least ``min_mei_agreement``; taken up to the carrier's phase
  where the model is complex-like (F1/F0 < 1 at its MEI), pixel by pixel otherwise;
- ``selection_stability``: fraction of trial resamples in which the unit is still selected
  (:func:`selection_stability`), at least ``min_selection_stability``;
- ``rf_p_value``: permutation p-value of the RF map from the gabors stimulus, at most
  ``max_rf_p``.

The label is ``low`` when a model- or MEI-critical criterion fails (the CI or the MEI
agreement), ``high`` when every criterion is known and passes, ``medium`` otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields

import numpy as np
import pandas as pd

from meireport.errors import MeireportError

__all__ = [
    "LABELS",
    "LABEL_COLOURS",
    "TrustThresholds",
    "Trust",
    "mei_agreement",
    "complex_like",
    "COMPLEX_F1_F0",
    "assess",
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
    meireport.errors.MeireportError: max_rf_p: expected a value in [0, 1], got 2.0

    The ``trust`` params section is this class (:mod:`meireport.report.params` checks types and
    unknown fields, then these ranges, naming each bad field ``trust.<name>``).
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
            value = _finite_number(name, getattr(self, name))
            if not lo <= value <= hi:
                where = f">= {lo:g}" if hi == math.inf else f"in [{lo:g}, {hi:g}]"
                raise MeireportError(f"{name}: expected a value {where}, got {value!r}")
            object.__setattr__(self, name, value)

    @classmethod
    def from_params(cls, d: Mapping | None) -> TrustThresholds:
        """Thresholds from the ``trust`` params section (``None`` gives the defaults).

        Parameters
        ----------
        d : Mapping or None
            Field name -> value; missing fields keep their defaults, unknown fields are errors.
            Errors name the field as ``trust.<name>``.

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
        try:
            return cls(**{k: v for k, v in d.items() if v is not None})
        except MeireportError as e:
            raise MeireportError(f"trust.{e}") from None


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
               lambda v, t, values: f"MEIs of different starts agree only {v:.2f}"
               f"{' up to phase' if complex_like(values) else ''} (needs >= {t:g})"),
    _Criterion("selection_stability", "min_selection_stability", ">=", False,
               "selection stability",
               lambda v, t, _: f"selected in {v:.0%} of trial resamples (needs >= {t:.0%})"),
    _Criterion("rf_p_value", "max_rf_p", "<=", False, "RF-mapping p-value",
               lambda v, t, _: f"no significant receptive field (p = {v:.3g}, needs <= {t:g})"),
)
_OPS = {">": np.greater, ">=": np.greater_equal, "<=": np.less_equal}


#: F1/F0 below which a model is complex-like at its MEI (Skottun et al. 1991's criterion).
COMPLEX_F1_F0 = 1.0


def complex_like(values: Mapping) -> bool | None:
    """Whether the neuron's model is complex-like: F1/F0 at its MEI (``mei_f1_f0``) below 1.

    ``None`` when ``mei_f1_f0`` is unknown. See :func:`meireport.mei.phase_modulation`.

    Examples
    --------
    >>> complex_like({"mei_f1_f0": 0.2}), complex_like({"mei_f1_f0": 1.6}), complex_like({})
    (True, False, None)
    """
    f = _value(values, "mei_f1_f0")
    return None if np.isnan(f) else bool(f < COMPLEX_F1_F0)


def mei_agreement(values: Mapping) -> float:
    """Agreement of a neuron's MEIs across starts: the one definition the report uses.

    ``mei_phase_reliability`` (the phase-invariant correlation,
    :func:`meireport.mei.phase_invariant_correlation`) where the model is complex-like
    (:func:`complex_like`): its response does not depend on the carrier's phase, so MEIs that
    differ in phase only agree about what excites it. Otherwise ``mei_reliability`` (pixel
    correlation): for a simple-like model the phase is part of the finding. The MEI page, the
    trust label and the data-limit chapter all call this.

    Examples
    --------
    >>> v = {"mei_reliability": -0.5, "mei_phase_reliability": 0.9}
    >>> mei_agreement(v | {"mei_f1_f0": 0.3})  # complex-like: up to phase
    0.9
    >>> mei_agreement(v | {"mei_f1_f0": 1.5})  # simple-like: the phase must agree too
    -0.5
    >>> mei_agreement({"mei_reliability": 0.7})  # phase dependence unknown: pixel agreement
    0.7
    """
    key = "mei_phase_reliability" if complex_like(values) else "mei_reliability"
    return _value(values, key)


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
        ``test_corr_ci_low``, ``test_corr_ci_high``, ``frac_oracle``, ``mei_reliability``,
        ``mei_phase_reliability`` and ``mei_f1_f0`` (the MEI agreement, :func:`mei_agreement`),
        ``selection_stability``, ``rf_p_value``. Other keys are ignored.
    thresholds : TrustThresholds, optional
        Default :class:`TrustThresholds()`.

    Returns
    -------
    Trust
        ``low`` when the test-correlation CI reaches ``min_ci_low`` or the MEI agreement is below
        ``min_mei_agreement``; ``high`` when every criterion is known and met; else ``medium``.

    Examples
    --------
    >>> from meireport.select.stability import selection_stability
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
