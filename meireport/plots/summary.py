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

__all__ = ["AREA_PANELS", "KEY_COLUMNS", "key_columns_first", "plot_area_comparison",
           "plot_summary", "style_summary", "trust_panel"]

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


#: Panels of :func:`plot_area_comparison`: (table, column, y label, title, reference line or
#: None); table ``units`` is every analysed unit (``selection.csv``), ``reported`` the
#: reported neurons (``summary.csv``).
AREA_PANELS = (
    ("units", "oracle_corr", "oracle correlation (r)", "reliability, every analysed unit", None),
    ("reported", "test_corr", "test correlation (r)", "CNN vs held-out image means", None),
    ("reported", "frac_oracle", "frac_oracle (ratio)", "CNN single-trial r / oracle r", 1.0),
    ("reported", "mei_gabor_ratio", "MEI / best Gabor (ratio)", "predicted response", 1.0),
    ("reported", "mei_gabor_true_ratio", "MEI / best Gabor (ratio)", "true rate (simulated)",
     1.0),
    ("reported", "mei_peak_sf_cpd", "peak spatial frequency (cycles/deg)", "MEI", None),
)
_SESSION_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">")


def _values(table: pd.DataFrame, column: str) -> pd.DataFrame:
    """Rows of ``table`` with a finite ``column``: session_id, area, value, trust."""
    if column not in table or not len(table):
        return pd.DataFrame(columns=["session_id", "area", "value", "trust"])
    v = pd.to_numeric(table[column], errors="coerce")
    d = pd.DataFrame({"session_id": table["session_id"], "area": table["area"].astype(str),
                      "value": v,
                      "trust": table["trust"] if "trust" in table else None})
    return d[np.isfinite(d["value"].astype(float))]


def _area_panel(ax, d: pd.DataFrame, areas: list[str], sessions: list, labels: tuple[str, str],
                ref: float | None, by_trust: bool) -> None:
    """Box and jittered points per area: marker by session, colour by trust (or grey)."""
    rng = np.random.default_rng(0)
    pos = {a: i for i, a in enumerate(areas)}
    groups = [d.loc[d["area"] == a, "value"].astype(float).to_numpy() for a in areas]
    filled = [i for i, g in enumerate(groups) if len(g)]
    ax.boxplot([groups[i] for i in filled], positions=filled, widths=0.5, showfliers=False,
               medianprops={"color": "k"}, boxprops={"color": "0.4"},
               whiskerprops={"color": "0.4"}, capprops={"color": "0.4"})
    for k, sid in enumerate(sessions):
        mine = d[d["session_id"] == sid]
        if not len(mine):
            continue
        x = mine["area"].map(pos).to_numpy(dtype=float) + rng.uniform(-0.15, 0.15, len(mine))
        colours = ([trust_colour(t) for t in mine["trust"]] if by_trust
                   else [UNKNOWN_COLOUR] * len(mine))
        ax.scatter(x, mine["value"].astype(float), s=22, c=colours, alpha=0.8, zorder=3,
                   marker=_SESSION_MARKERS[k % len(_SESSION_MARKERS)])
    if ref is not None:
        ax.axhline(ref, color="gray", lw=0.8, ls="--")
    counts = [len(g) for g in groups]
    ax.set_xticks(range(len(areas)), [f"{a or '?'}\n(n={n})" for a, n in zip(areas, counts,
                                                                              strict=True)])
    ax.set_xlim(-0.6, len(areas) - 0.4)
    ax.set_xlabel("area (n = neurons with a value)")
    ax.set_ylabel(labels[0])
    ax.set_title(labels[1], fontsize="small")


def plot_area_comparison(units: pd.DataFrame, reported: pd.DataFrame) -> Figure:
    """Per-area distributions across the run's sessions (:data:`AREA_PANELS`; empty ones skipped).

    One box per area (sessions pooled) with every neuron as a point: its marker is its
    session, its colour its trust label (high green, medium orange, low red, unassessed grey;
    grey for the all-units oracle panel). Dashed lines mark 1 where a ratio of 1 means "as
    good as the ceiling" or "MEI and Gabor drive the neuron equally".

    Parameters
    ----------
    units : pandas.DataFrame
        Every analysed unit: ``session_id``, ``area``, ``oracle_corr`` (the stacked
        ``selection.csv`` of :func:`meireport.report.summary.run_tables`).
    reported : pandas.DataFrame
        The reported neurons: ``session_id``, ``area``, ``trust`` and the panels' columns (the
        stacked ``summary.csv`` with its ratios).

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> units = pd.DataFrame({"session_id": [1, 1, 2], "area": ["VISp", "VISam", "VISp"],
    ...                       "oracle_corr": [0.3, 0.5, 0.4]})
    >>> rep = pd.DataFrame({"session_id": [1], "area": ["VISp"], "test_corr": [0.2],
    ...                     "trust": ["high"]})
    >>> fig = plot_area_comparison(units, rep)
    >>> [ax.get_ylabel() for ax in fig.axes]
    ['oracle correlation (r)', 'test correlation (r)']
    """
    tables = {"units": units, "reported": reported}
    areas = sorted({str(a) for t in tables.values() if "area" in t for a in t["area"]})
    sessions = sorted({int(x) for t in tables.values() if "session_id" in t
                       for x in t["session_id"]})
    panels = [(which, _values(tables[which], col), (label, title), ref)
              for which, col, label, title, ref in AREA_PANELS]
    panels = [p for p in panels if len(p[1])]
    if not panels:
        fig = Figure(figsize=(5.0, 2.0), layout="constrained")
        ax = fig.add_subplot()
        ax.text(0.5, 0.5, "no unit to compare", ha="center", va="center")
        ax.set_axis_off()
        return fig
    ncols = min(len(panels), 2)
    nrows = -(-len(panels) // ncols)
    width = max(5.0, 1.0 + 0.9 * len(areas))
    fig = Figure(figsize=(width * ncols, 3.8 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes[len(panels):]:
        ax.remove()
    for ax, (which, d, labels, ref) in zip(axes, panels, strict=False):
        _area_panel(ax, d, areas, sessions, labels, ref, by_trust=which == "reported")
    fig.legend(handles=_legend(sessions), loc="outside lower center", ncols=6, fontsize=7,
               frameon=False)
    return fig


def _legend(sessions: list) -> list:
    """Legend handles: one grey marker per session, one colour per trust label."""
    from matplotlib.lines import Line2D

    def handle(label: str, marker: str = "o", colour: str = "0.45") -> Line2D:
        return Line2D([], [], ls="", marker=marker, color=colour, label=label)

    out = [handle(f"session {sid}", _SESSION_MARKERS[k % len(_SESSION_MARKERS)])
           for k, sid in enumerate(sessions)]
    out += [handle(f"trust {t}", colour=c) for t, c in TRUST_COLOURS.items()]
    return out + [handle("not assessed / all units", colour=UNKNOWN_COLOUR)]


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
