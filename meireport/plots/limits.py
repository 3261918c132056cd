"""Figures of the data-limit chapter: quality against session size, options, trust vs truth."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from meireport.plots._style import TRUST_COLOURS
from meireport.report.limits import CURVE_VARIANTS, MATCH, OPTION_VARIANTS, TUNED, options_table
from meireport.trust import LABELS

__all__ = ["plot_limit_curves", "plot_limit_options", "plot_limit_trust"]

_KIND_STYLE = {"simple": "-", "complex": "--"}


def _median_by_n(df: pd.DataFrame, value: str) -> pd.Series:
    return df.groupby("n_images")[value].median()


def plot_limit_curves(tables: dict[str, pd.DataFrame]) -> Figure:
    """Four panels against the number of images: models, MEIs, inception loop, selection.

    Parameters
    ----------
    tables : dict of str to pandas.DataFrame
        ``models``, ``units`` and ``session`` tables of
        :func:`meireport.report.limits.limits_stage`.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> m = pd.DataFrame({"n_images": [30, 60], "variant": ["CNN"] * 2, "unit_id": [1, 1],
    ...                   "true_kind": ["simple"] * 2, "true_corr": [0.2, 0.5]})
    >>> u = pd.DataFrame({"n_images": [30, 60], "unit_id": [1, 1], "true_kind": ["simple"] * 2,
    ...                   "mei_rf_corr": [0.1, 0.4], "mei_true_resp": [5, 9],
    ...                   "best_image_true_resp": [6, 4]})
    >>> s = pd.DataFrame({"n_images": [30, 60], "precision": [1, 1], "recall": [0.4, 0.6]})
    >>> fig = plot_limit_curves({"models": m, "units": u, "session": s})
    >>> [ax.get_xlabel() for ax in fig.axes] == ["natural images in the session"] * 4
    True
    """
    models, units, session = tables["models"], tables["units"], tables["session"]
    fig = Figure(figsize=(10, 7.5), layout="constrained")
    ax = fig.subplots(2, 2, squeeze=False)
    a = ax[0, 0]
    for i, v in enumerate(CURVE_VARIANTS):
        for kind in TUNED:
            d = models[(models["variant"] == v.name) & (models["true_kind"] == kind)]
            if len(d):
                med = _median_by_n(d, "true_corr")
                a.plot(med.index, med.values, _KIND_STYLE[kind], marker="o", color=f"C{i}",
                       label=f"{v.name}, {kind}")
    a.set(xlabel="natural images in the session", ylabel="correlation with the true rate\n"
          "(new images, median of units)", title="What the models learn", ylim=(-0.1, 1.0))
    a.legend(fontsize=7)
    a = ax[0, 1]
    tu = units[units["true_kind"].isin(TUNED)]
    for kind in TUNED:
        d = tu[tu["true_kind"] == kind]
        if len(d):
            a.scatter(d["n_images"] * (1.03 if kind == "complex" else 0.97), d["mei_rf_corr"],
                      s=14, alpha=0.5, color="C0" if kind == "simple" else "C1")
            med = _median_by_n(d, "mei_rf_corr")
            a.plot(med.index, med.values, _KIND_STYLE[kind], marker="o",
                   color="C0" if kind == "simple" else "C1", label=f"{kind} (median)")
    a.axhline(MATCH, color="grey", lw=0.8, ls=":")
    a.set(xlabel="natural images in the session", ylabel="MEI vs true optimal stimulus (r)",
          title="Does the MEI match the truth?", ylim=(-1, 1))
    a.legend(fontsize=7)
    a = ax[1, 0]
    w = tu.assign(img=tu["mei_true_resp"] > tu["best_image_true_resp"])
    a.plot(*_xy(w.groupby("n_images")["img"].mean()), marker="o",
           label="MEI > best natural image")
    if "session_gabor_true_resp" in tu:
        g = tu.assign(gab=tu["mei_true_resp"] > tu["session_gabor_true_resp"])
        a.plot(*_xy(g.groupby("n_images")["gab"].mean()), marker="s", ls="--", ms=9,
               mfc="none", label="MEI > best session Gabor")
    a.set(xlabel="natural images in the session", ylabel="fraction of tuned units",
          title="True neuron, equal mean and contrast", ylim=(-0.05, 1.05))
    a.legend(fontsize=7)
    a = ax[1, 1]
    s = session.sort_values("n_images")
    a.plot(s["n_images"], s["precision"], marker="o", label="precision")
    a.plot(s["n_images"], s["recall"], marker="s", label="recall")
    a.set(xlabel="natural images in the session", ylabel="fraction",
          title="Selection rule vs true tuning", ylim=(-0.05, 1.05))
    a.legend(fontsize=7)
    sizes = sorted(session["n_images"].unique())
    for a in ax.ravel():
        a.set_xscale("log")
        a.set_xticks(sizes, [str(int(n)) for n in sizes])
        a.minorticks_off()
        a.grid(alpha=0.3)
    return fig


def _xy(series: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    return series.index.to_numpy(), series.to_numpy(dtype=float)


def plot_limit_options(models: pd.DataFrame) -> Figure:
    """Median true-rate correlation of each data-efficiency option, simple vs complex cells.

    Only units every option was fitted for count (paired, as in
    :func:`meireport.report.limits.options_table`).

    Parameters
    ----------
    models : pandas.DataFrame
        The ``models`` table of :func:`meireport.report.limits.limits_stage`.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> from meireport.report.limits import OPTION_VARIANTS
    >>> m = pd.DataFrame([{"n_images": 60, "unit_id": 1, "true_kind": "simple",
    ...                    "variant": v.name, "test_corr": 0.3, "frac_oracle": 0.5,
    ...                    "true_corr": 0.1 * i, "seconds": 1.0}
    ...                   for i, v in enumerate(OPTION_VARIANTS)])
    >>> plot_limit_options(m).axes[0].get_xlabel()
    'correlation with the true rate on new images (median of units)'
    """
    names = [v.name for v in OPTION_VARIANTS]
    table = options_table(models)  # paired: units every option was fitted for
    fig = Figure(figsize=(8, 0.45 * len(names) + 1.2), layout="constrained")
    a = fig.add_subplot()
    y = np.arange(len(names))
    for j, kind in enumerate(TUNED):
        med = {v: table.loc[(v, kind), "true_corr"] for v in names if (v, kind) in table.index}
        a.barh(y + (j - 0.5) * 0.38, [med.get(n, np.nan) for n in names], height=0.38,
               label=kind)
    a.set_yticks(y, names)
    a.invert_yaxis()
    sizes = models.loc[models["variant"].isin(names), "n_images"].unique()
    n = ", ".join(str(int(v)) for v in sorted(sizes))
    a.set(xlabel="correlation with the true rate on new images (median of units)",
          ylabel="option",
          title=f"Data-efficiency options ({n} images; units every option could fit)")
    a.axvline(0, color="k", lw=0.8)
    a.legend()
    a.grid(axis="x", alpha=0.3)
    return fig


def plot_limit_trust(units: pd.DataFrame) -> Figure:
    """MEI vs truth for each unit, grouped by trust label, one panel per session size.

    Parameters
    ----------
    units : pandas.DataFrame
        The ``units`` table of :func:`meireport.report.limits.limits_stage` (``n_images``,
        ``true_kind``, ``trust``, ``mei_rf_corr``).

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> u = pd.DataFrame({"n_images": [30, 30, 60], "true_kind": ["simple"] * 3,
    ...                   "trust": ["high", "low", "medium"], "mei_rf_corr": [0.8, 0.1, 0.5]})
    >>> [ax.get_title() for ax in plot_limit_trust(u).axes]
    ['30 images', '60 images']
    """
    tu = units[units["true_kind"].isin(TUNED)]
    sizes = sorted(tu["n_images"].unique())
    fig = Figure(figsize=(3.2 * max(len(sizes), 1), 3.4), layout="constrained")
    ax = fig.subplots(1, max(len(sizes), 1), sharey=True, squeeze=False)
    for a, n in zip(ax[0], sizes, strict=False):
        d = tu[tu["n_images"] == n]
        for i, label in enumerate(LABELS):
            v = d.loc[d["trust"] == label, "mei_rf_corr"].to_numpy(float)
            a.scatter(np.full(len(v), i) + np.linspace(-0.15, 0.15, len(v)), v, s=18,
                      color=TRUST_COLOURS[label])
            if len(v):
                a.hlines(np.median(v), i - 0.3, i + 0.3, color=TRUST_COLOURS[label])
        a.axhline(MATCH, color="grey", lw=0.8, ls=":")
        a.set_xticks(range(len(LABELS)), list(LABELS))
        a.set(title=f"{int(n)} images", xlabel="trust label", ylim=(-1, 1))
    ax[0, 0].set_ylabel("MEI vs true optimal stimulus (r)")
    return fig
