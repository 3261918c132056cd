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
    "group_thresholds",
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
    list overrides everything. With ``group_by`` (e.g. ``"area"``) the quantiles and
    ``max_units`` are taken within each group: a unit is compared with the units of its own
    area, and each area keeps at most ``max_units``.

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
    group_by : str, optional
        Column whose values form the groups in which quantiles and ``max_units`` apply
        (default: one group of all units).

    Examples
    --------
    >>> SelectionRule().above_quantile
    {'oracle_corr': 0.6, 'variance': 0.5}
    >>> SelectionRule(group_by="area").group_by
    'area'
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
    group_by: str | None = None

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
        if self.group_by is not None and not isinstance(self.group_by, str):
            raise MeireportError(f"rule.group_by: expected a column name, got {self.group_by!r}")
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
    if rule.group_by is not None:
        wanted.append(("group_by", rule.group_by))
    for part, column in wanted:
        if column not in metrics.columns:
            known = sorted(map(str, metrics.columns))
            raise MeireportError(f"rule.{part}: unknown metric {column!r}; metrics has {known}")


def _groups(metrics: pd.DataFrame, rule: SelectionRule) -> list[tuple[str | None, pd.Series]]:
    """``(label, row mask)`` of each group of ``rule.group_by`` (sorted).

    Without ``group_by``: one unlabelled group of every unit.
    """
    if rule.group_by is None:
        return [(None, pd.Series(True, index=metrics.index))]
    column = metrics[rule.group_by].astype(str)
    return [(g, column == g) for g in sorted(column.unique())]


def _limits(metrics: pd.DataFrame, rule: SelectionRule, mask: pd.Series) -> dict[str, float]:
    """Thresholds of the rule's quantile and absolute items over some rows.

    The rows of ``mask`` that pass the area filter.
    """
    pool = _area_mask(metrics, rule) & mask
    out: dict[str, float] = {}
    for metric, q in rule.above_quantile.items():
        out[metric] = float(pd.to_numeric(metrics.loc[pool, metric]).quantile(q))
    for metric, value in rule.above.items():
        out[metric] = max(value, out.get(metric, -np.inf))
    return out


def group_thresholds(metrics: pd.DataFrame,
                     rule: SelectionRule | None = None) -> dict[str, dict[str, float]]:
    """Numeric thresholds of ``rule`` in each of its groups (``rule.group_by``'s values).

    Parameters
    ----------
    metrics : pandas.DataFrame
        One row per unit with the metric columns and the ``group_by`` column.
    rule : SelectionRule, optional
        The rule; default the seed's (one group, labelled ``""``).

    Returns
    -------
    dict
        Group -> (metric -> threshold a unit of that group must exceed); groups sorted.

    Examples
    --------
    >>> import pandas as pd
    >>> table = pd.DataFrame({"area": ["A", "A", "B", "B"], "oracle_corr": [0.1, 0.3, 0.5, 0.9]})
    >>> rule = SelectionRule(above_quantile={"oracle_corr": 0.5}, group_by="area")
    >>> {g: round(t["oracle_corr"], 6) for g, t in group_thresholds(table, rule).items()}
    {'A': 0.2, 'B': 0.7}
    """
    rule = SelectionRule() if rule is None else rule
    _check_metrics(metrics)
    _check_rule_columns(metrics, rule)
    return {label or "": _limits(metrics, rule, mask) for label, mask in _groups(metrics, rule)}


def rule_thresholds(metrics: pd.DataFrame, rule: SelectionRule | None = None) -> dict[str, float]:
    """Numeric threshold of each ``above_quantile`` and ``above`` criterion of ``rule``.

    Quantiles are taken over the units that pass the rule's area filter, NaN skipped
    (pandas' linear interpolation, as the seed). When a metric appears in both, the larger
    threshold is returned. A rule with ``group_by`` has one set of thresholds per group
    (:func:`group_thresholds`); this returns it when there is one group only.

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

    Raises
    ------
    MeireportError
        The rule's ``group_by`` splits the units into several groups.

    Examples
    --------
    >>> import pandas as pd
    >>> table = pd.DataFrame({"oracle_corr": [0.1, 0.2, 0.3, 0.4, 0.5], "variance": [1.0] * 5})
    >>> {k: round(v, 6) for k, v in rule_thresholds(table).items()}
    {'oracle_corr': 0.34, 'variance': 1.0}
    """
    groups = group_thresholds(metrics, rule)
    if len(groups) > 1:
        raise MeireportError(
            f"rule.group_by: the units form {len(groups)} groups ({', '.join(groups)}), each "
            "with its own thresholds; use group_thresholds")
    return next(iter(groups.values()))


def _check_metrics(metrics: pd.DataFrame) -> None:
    if not isinstance(metrics, pd.DataFrame) or len(metrics) == 0:
        raise MeireportError("metrics: expected a non-empty DataFrame with one row per unit")


def _area_mask(metrics: pd.DataFrame, rule: SelectionRule) -> pd.Series:
    if rule.areas is None:
        return pd.Series(True, index=metrics.index)
    return metrics["area"].isin(rule.areas)


def _fmt(value: float) -> str:
    return f"{value:.3g}"


def _quantile_limits(metrics: pd.DataFrame, rule: SelectionRule, metric: str,
                     q: float) -> tuple[pd.Series, pd.Series]:
    """Each unit's quantile threshold of ``metric`` (its group's) and its label (``q0.60 ``)."""
    limit = pd.Series(np.nan, index=metrics.index)
    label = pd.Series(f"q{q:.2f} ", index=metrics.index, dtype=object)
    pool = _area_mask(metrics, rule)
    for group, mask in _groups(metrics, rule):
        limit[mask] = float(pd.to_numeric(metrics.loc[pool & mask, metric]).quantile(q))
        if group is not None:
            label[mask] = f"{group} q{q:.2f} "
    return limit, label


def _criterion_reasons(metrics: pd.DataFrame, rule: SelectionRule) -> list[pd.Series]:
    """One Series of reason strings ('' = passed) per criterion of the rule."""
    reasons = []
    if rule.areas is not None:
        ok = _area_mask(metrics, rule)
        text = "area " + metrics["area"].astype(str) + f" not in {list(rule.areas)}"
        reasons.append(text.where(~ok, ""))
    limits = [(m, *_quantile_limits(metrics, rule, m, q)) for m, q in rule.above_quantile.items()]
    limits += [(m, pd.Series(v, index=metrics.index), pd.Series("", index=metrics.index))
               for m, v in rule.above.items()]
    for metric, limit, label in limits:
        values = pd.to_numeric(metrics[metric])
        text = pd.Series([f"{metric} is NaN" if pd.isna(v)
                          else f"{metric} {_fmt(v)} <= {lb}{_fmt(lim)}"
                          for v, lim, lb in zip(values, limit, label, strict=True)],
                         index=metrics.index, dtype=object)
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


def _cap(metrics: pd.DataFrame, rule: SelectionRule, reason: pd.Series) -> pd.Series:
    """``reason`` with the units beyond ``max_units`` (per group) of those passing marked."""
    for group, mask in _groups(metrics, rule):
        passed = (reason == "") & mask
        if passed.sum() <= rule.max_units:
            continue
        score = pd.to_numeric(metrics.loc[passed, rule.rank_by]).fillna(-np.inf)
        ranked = score.sort_values(ascending=False, kind="stable").index
        position = pd.Series(np.arange(1, len(ranked) + 1), index=ranked)
        of = "" if group is None else f" of {group}"
        top = f"not in the top {rule.max_units}{of} by {rule.rank_by}"
        dropped = ranked[rule.max_units:]
        reason.loc[dropped] = [f"{top} (rank {position[i]})" for i in dropped]
    return reason


def select_units(metrics: pd.DataFrame, rule: SelectionRule | None = None) -> pd.DataFrame:
    """Apply a :class:`SelectionRule` to a table of unit metrics.

    Parameters
    ----------
    metrics : pandas.DataFrame
        One row per unit: a ``unit_id`` column (else the index is the id), the metric columns
        the rule names, ``area`` when the rule filters areas and the ``group_by`` column when
        it has one.
    rule : SelectionRule, optional
        Default the seed's rule: ``oracle_corr > q0.6`` and ``variance > q0.5``.

    Returns
    -------
    pandas.DataFrame
        The metrics (with ``unit_id``), plus ``selected`` (bool) and ``reason`` (why a unit was
        rejected, ``"; "``-joined; empty when selected). The thresholds used are in
        ``.attrs["thresholds"]`` (empty when a ``group_by`` rule found several groups) and,
        with ``group_by``, per group in ``.attrs["group_thresholds"]``.

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

    Per area, each unit is compared with the units of its own area:

    >>> table["area"] = ["VISp", "VISp", "VISam", "VISam"]
    >>> by_area = SelectionRule(above_quantile={"oracle_corr": 0.5}, group_by="area")
    >>> select_units(table, by_area)["selected"].tolist()
    [False, True, False, True]
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
    if rule.max_units is not None:
        reason = _cap(metrics, rule, reason)
    out["selected"] = (reason == "").to_numpy()
    out["reason"] = reason.to_numpy()
    groups = group_thresholds(metrics, rule)
    out.attrs["thresholds"] = next(iter(groups.values())) if len(groups) == 1 else {}
    if rule.group_by is not None:
        out.attrs["group_thresholds"] = groups
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

