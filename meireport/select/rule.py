"""The selection rule: which units are reliable enough to model, and why each other unit is not."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from meireport.errors import MeireportError
from meireport.select._checks import check_int

__all__ = [
    "SelectionRule",
    "rule_thresholds",
    "select_units",
]


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
            check_int("rule.max_units", self.max_units, 1)
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

