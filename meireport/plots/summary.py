"""The session summary page's comparison figure and styled table, and the trust panel."""

from __future__ import annotations

import html
from collections.abc import Callable, Mapping

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from meireport.errors import MeireportError
from meireport.plots._style import (
    MET_COLOUR,
    TRUST_COLOURS,
    UNKNOWN_COLOUR,
    UNMET_COLOUR,
    trust_colour,
)
from meireport.trust import Trust

__all__ = ["KEY_COLUMNS", "key_columns_first", "plot_summary", "style_summary", "trust_panel"]

_TINTS = {"high": "#e8f5e9", "medium": "#fff3e0", "low": "#ffebee"}
_CRITERION_NAMES = {
    "test_corr_ci_low": "test correlation, low end of its 95% CI",
    "frac_oracle": "fraction of the oracle (single-trial corr / oracle)",
    "mei_reliability": "agreement of MEIs from different starts (up to phase if complex-like)",
    "selection_stability": "selected in this fraction of trial resamples",
    "rf_p_value": "RF-mapping p-value (gabors)",
}
_OPS = {"test_corr_ci_low": ">", "rf_p_value": "<="}

_PANELS = (
    ("oracle_corr", "test_corr", "oracle correlation", "test correlation (CNN)"),
    ("test_corr_ln", "test_corr", "test correlation (LN)", "test correlation (CNN)"),
    ("best_image_pred", "mei_pred", "best natural image (predicted spikes)",
     "MEI (predicted spikes)"),
    ("best_image_true_resp", "mei_true_resp", "best natural image (true rate, spikes/s)",
     "MEI (true rate, spikes/s)"),
)


def plot_summary(summary: pd.DataFrame) -> Figure:
    """Scatter plots across neurons of the comparisons the summary holds (empty ones skipped).

    Points are coloured by trust (high green, medium orange, low red, unassessed grey); the
    last panel counts the neurons whose pipeline completed.

    Parameters
    ----------
    summary : pandas.DataFrame
        The summary table (:func:`meireport.report.stages.summary_stage`), one row per neuron.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> df = pd.DataFrame({"oracle_corr": [0.3, 0.5], "test_corr": [0.2, 0.4],
    ...                    "status": ["ok", "ok"], "trust": ["high", None]})
    >>> [ax.get_title() for ax in plot_summary(df).axes]
    ['test correlation (CNN) vs oracle correlation', 'pipeline status']
    """
    panels = [p for p in _PANELS if p[0] in summary and p[1] in summary
              and summary[[p[0], p[1]]].notna().all(axis=1).any()]
    n = len(panels) + 1
    ncols = min(n, 2)  # two panels a row: readable at the site's column width
    nrows = -(-n // ncols)
    fig = Figure(figsize=(5.0 * ncols, 4.0 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes[n:]:
        ax.remove()
    trust = summary["trust"] if "trust" in summary else pd.Series(None, index=summary.index)
    for ax, (x, y, xl, yl) in zip(axes, panels, strict=False):
        d = summary[[x, y]].astype(float).dropna()
        colours = [trust_colour(t) for t in trust.loc[d.index]]
        ax.scatter(d[x], d[y], s=25, c=colours)
        lo = float(np.nanmin(d.to_numpy())) if len(d) else 0.0
        hi = float(np.nanmax(d.to_numpy())) if len(d) else 1.0
        ax.plot([lo, hi], [lo, hi], color="gray", lw=0.8, ls="--", label="identity")
        ax.set_xlabel(xl)
        ax.set_ylabel(yl)
        ax.set_title(f"{yl} vs {xl}", fontsize="small")
        ax.legend(fontsize=7)
    ax = axes[n - 1]
    ok = summary["status"].astype(str).eq("ok").sum() if "status" in summary else 0
    ax.bar(["ok", "failed"], [ok, len(summary) - ok], color=["tab:green", "tab:red"])
    ax.set_ylabel("neurons (count)")
    ax.set_title("pipeline status")
    return fig


#: Columns the summary table shows first (the rest follow in their order; reasons last).
KEY_COLUMNS = (
    "unit_id", "trust", "area", "oracle_corr", "test_corr", "mei_pred", "best_image_pred",
    "best_gabor_pred", "true_type", "mei_true_resp", "best_image_true_resp",
    "best_gabor_true_resp", "mei_rf_corr",
)
_LAST_COLUMNS = ("status", "trust_reasons")


def key_columns_first(summary: pd.DataFrame) -> pd.DataFrame:
    """The table with :data:`KEY_COLUMNS` first and ``status``, ``trust_reasons`` last.

    Examples
    --------
    >>> df = pd.DataFrame({"fev": [0.1], "trust_reasons": ["x"], "trust": ["high"],
    ...                    "unit_id": [3]})
    >>> list(key_columns_first(df).columns)
    ['unit_id', 'trust', 'fev', 'trust_reasons']
    """
    first = [c for c in KEY_COLUMNS if c in summary]
    last = [c for c in _LAST_COLUMNS if c in summary]
    rest = [c for c in summary.columns if c not in first and c not in last]
    return summary[first + rest + last]


def style_summary(summary: pd.DataFrame, precision: int = 3,
                  unit_links: Callable[[int], str] | None = None):
    """The summary table as a pandas Styler, each row tinted by its trust label.

    Key columns come first (:func:`key_columns_first`); the trust reasons wrap, every other
    cell stays on one line (the site scrolls a wide table inside its column).

    Parameters
    ----------
    summary : pandas.DataFrame
        The summary table (a ``trust`` column; rows without a label stay white).
    precision : int, default 3
        Decimals shown.
    unit_links : callable, optional
        Unit id -> relative URL of the neuron's page; unit ids become links to it.

    Returns
    -------
    pandas.io.formats.style.Styler

    Examples
    --------
    >>> df = pd.DataFrame({"unit_id": [3, 4], "trust": ["high", "low"]})
    >>> "#ffebee" in style_summary(df).to_html()
    True
    >>> 'href="u/3.html"' in style_summary(df, unit_links=lambda u: f"u/{u}.html").to_html()
    True
    """
    if "trust" not in summary:
        raise MeireportError("summary: expected a trust column")
    summary = key_columns_first(summary)

    def tint(row: pd.Series) -> list[str]:
        label = row["trust"]
        bg = f"background-color: {_TINTS[label]}" if label in _TINTS else ""
        return [(f"{bg}; color: {TRUST_COLOURS[label]}; font-weight: bold" if c == "trust"
                 and label in TRUST_COLOURS else bg) for c in row.index]

    styler = summary.style.apply(tint, axis=1).format(precision=precision)
    if unit_links is not None and "unit_id" in summary:
        styler = styler.format(
            lambda u: f'<a href="{html.escape(unit_links(int(u)))}">{int(u)}</a>',
            subset=["unit_id"])
    if "trust_reasons" in summary:
        styler = styler.set_td_classes(pd.DataFrame(
            {c: "meireport-wrap" if c == "trust_reasons" else "" for c in summary.columns},
            index=summary.index))
    return styler.hide(axis="index")


def _cell(value: object, fmt: str = "{:.3g}") -> str:
    return "?" if value is None or pd.isna(value) else fmt.format(value)


def trust_panel(trust: Trust | Mapping) -> str:
    """HTML panel "How far to trust this MEI": label badge, criteria table and reasons.

    The label is a coloured badge (high green, medium orange, low red); each criterion shows
    its value, threshold and whether it is met (✓), not met (✗) or unknown (?).

    Parameters
    ----------
    trust : Trust or Mapping
        A :class:`meireport.trust.Trust` or its :meth:`~meireport.trust.Trust.to_dict` form
        (``trust.json``).

    Returns
    -------
    str
        Self-contained HTML (inline styles only).

    Examples
    --------
    >>> from meireport.trust import assess
    >>> text = trust_panel(assess({"frac_oracle": 0.2}))
    >>> "medium" in text and "frac_oracle" in text and "✗" in text
    True
    """
    d = trust.to_dict() if isinstance(trust, Trust) else trust
    if not isinstance(d, Mapping) or not {"label", "reasons", "criteria"} <= set(d):
        raise MeireportError("trust: expected a Trust or a dict with label, reasons, criteria")
    label = str(d["label"])
    colour = trust_colour(label)
    badge = (f'<span style="background:{colour};color:white;padding:2px 10px;'
             f'border-radius:10px;font-weight:bold">trust: {html.escape(label)}</span>')
    rows = []
    for name, c in d["criteria"].items():
        ok = c.get("ok")
        mark, mc = (("?", UNKNOWN_COLOUR) if ok is None else ("✓", MET_COLOUR) if ok
                    else ("✗", UNMET_COLOUR))
        op = _OPS.get(name, ">=")
        rows.append(
            f"<tr><td><code>{html.escape(str(name))}</code></td>"
            f"<td>{html.escape(_CRITERION_NAMES.get(name, ''))}</td>"
            f'<td style="text-align:right">{_cell(c.get("value"))}</td>'
            f'<td style="text-align:right">{html.escape(op)} {_cell(c.get("threshold"))}</td>'
            f'<td style="text-align:center;color:{mc};font-weight:bold">{mark}</td></tr>'
        )
    reasons = "".join(f"<li>{html.escape(str(r))}</li>" for r in d["reasons"])
    return (
        f'<div class="meireport-trust"><p>{badge}</p>'
        "<table><thead><tr><th>criterion</th><th>what</th><th>value</th><th>threshold</th>"
        f"<th>met</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
        f"<ul>{reasons}</ul></div>"
    )
