"""Figures of the selection page: unit metrics, the rule, raster, correlations, RF maps."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from meireport.errors import MeireportError
from meireport.plots._style import AZIMUTH, ELEVATION, grid_extent
from meireport.select import RasterOrder, RFMaps

__all__ = [
    "METRIC_LABELS",
    "plot_correlation_heatmap",
    "plot_metric_scatter",
    "plot_oracle_distribution",
    "plot_raster",
    "plot_rf_maps",
    "plot_selection",
]

METRIC_LABELS: dict[str, str] = {
    "oracle_corr": "Oracle correlation (Pearson r)",
    "fev": "Fraction of explainable variance (FEV, fraction)",
    "snr": "Signal-to-noise ratio (ratio)",
    "variance": "Variance of image means (spikes$^2$)",
    "entropy": "Response entropy (nats)",
    "entropy_binned": "Response entropy, binned (nats)",
    "anomaly_score": "IsolationForest score (a.u.)",
    "mean_response": "Mean response (spikes / presentation)",
    "max_corr": "Highest correlation with another unit (Pearson r)",
    "rf_p_value": "RF chi-square p-value (probability)",
    "rf_area_deg2": "RF area (deg$^2$)",
}


def _label(metric: str) -> str:
    return METRIC_LABELS.get(metric, f"{metric} (a.u.)")


def _check_columns(table: pd.DataFrame, columns: Sequence[str]) -> None:
    if not isinstance(table, pd.DataFrame) or len(table) == 0:
        raise MeireportError("table: expected a non-empty DataFrame with one row per unit")
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise MeireportError(f"table: missing column(s) {missing}; it has {list(table.columns)}")


def plot_metric_scatter(
    table: pd.DataFrame,
    x: str,
    y: str,
    colour_by: str | None = None,
    thresholds: Mapping[str, float] | None = None,
    title: str | None = None,
) -> Figure:
    """Scatter of two unit metrics, optionally split by a boolean column, with threshold lines.

    Parameters
    ----------
    table : pandas.DataFrame
        One row per unit (e.g. from :func:`meireport.select.unit_metrics`).
    x, y : str
        Metric columns for the axes.
    colour_by : str, optional
        Boolean column (e.g. ``"is_anomaly"``, ``"selected"``) drawn as two groups.
    thresholds : Mapping[str, float], optional
        Metric -> threshold; a dashed line is drawn for ``x`` and ``y`` when present.
    title : str, optional
        Axes title.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> import pandas as pd
    >>> table = pd.DataFrame({"entropy": [1.0, 2.0, 3.0], "variance": [0.1, 0.5, 2.0],
    ...                       "is_anomaly": [False, False, True]})
    >>> fig = plot_metric_scatter(table, "entropy", "variance", colour_by="is_anomaly")
    >>> fig.axes[0].get_xlabel()
    'Response entropy (nats)'
    """
    _check_columns(table, [x, y] + ([colour_by] if colour_by else []))
    fig = Figure(figsize=(6, 4.5), layout="constrained")
    ax = fig.add_subplot()
    if colour_by is None:
        ax.scatter(table[x], table[y], s=18, alpha=0.7, color="0.3")
    else:
        flag = table[colour_by].fillna(False).astype(bool)
        ax.scatter(table.loc[~flag, x], table.loc[~flag, y], s=18, alpha=0.6, color="0.6",
                   label=f"{colour_by} = False (n={int((~flag).sum())})")
        ax.scatter(table.loc[flag, x], table.loc[flag, y], s=28, alpha=0.9, color="tab:red",
                   marker="D", label=f"{colour_by} = True (n={int(flag.sum())})")
        ax.legend(frameon=False, fontsize="small")
    for metric, line in ((x, ax.axvline), (y, ax.axhline)):
        if thresholds and metric in thresholds:
            line(thresholds[metric], color="k", ls="--", lw=1)
    ax.set_xlabel(_label(x))
    ax.set_ylabel(_label(y))
    ax.set_title(title or f"{y} vs {x}")
    return fig


def plot_selection(
    selection: pd.DataFrame,
    x: str = "variance",
    y: str = "oracle_corr",
    thresholds: Mapping[str, float] | None = None,
    area: str = "",
) -> Figure:
    """Oracle correlation vs response variance, selected units highlighted, thresholds drawn.

    Parameters
    ----------
    selection : pandas.DataFrame
        Output of :func:`meireport.select.select_units` (has ``selected``).
    x, y : str
        Metric columns; default the seed's variance (x) and oracle correlation (y).
    thresholds : Mapping[str, float], optional
        Default ``selection.attrs["thresholds"]`` as written by ``select_units``.
    area : str, optional
        The area these units are of (named in the title), when the rule was applied per area.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> import pandas as pd
    >>> from meireport.select import select_units
    >>> table = pd.DataFrame({"oracle_corr": [0.1, 0.4, 0.6, 0.8], "variance": [1, 2, 3, 4.0]})
    >>> fig = plot_selection(select_units(table))
    >>> len(fig.axes[0].lines)                             # the two quantile lines
    2
    """
    _check_columns(selection, [x, y, "selected"])
    if thresholds is None:
        thresholds = selection.attrs.get("thresholds", {})
    n_sel = int(selection["selected"].sum())
    title = f"{area + ' — ' if area else ''}Selection: {n_sel} of {len(selection)} units"
    return plot_metric_scatter(selection, x, y, colour_by="selected", thresholds=thresholds,
                               title=title)


def plot_oracle_distribution(
    table: pd.DataFrame, column: str = "oracle_corr", threshold: float | None = None,
    bins: int = 30, area: str = "",
) -> Figure:
    """Histogram of a metric over units (default the oracle) with its threshold drawn.

    Parameters
    ----------
    table : pandas.DataFrame
        One row per unit.
    column : str, default "oracle_corr"
        Metric to histogram.
    threshold : float, optional
        Vertical line; default ``table.attrs["thresholds"][column]`` when present.
    bins : int, default 30
        Number of histogram bins.
    area : str, optional
        The area these units are of (named in the title).

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> import pandas as pd
    >>> table = pd.DataFrame({"oracle_corr": [0.1, 0.2, 0.5]})
    >>> fig = plot_oracle_distribution(table, threshold=0.3)
    >>> fig.axes[0].get_ylabel()
    'Units (count)'
    """
    _check_columns(table, [column])
    if threshold is None:
        threshold = table.attrs.get("thresholds", {}).get(column)
    values = pd.to_numeric(table[column]).dropna()
    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.add_subplot()
    ax.hist(values, bins=bins, color="0.5", edgecolor="white")
    if threshold is not None:
        ax.axvline(threshold, color="tab:red", ls="--", lw=1.5, label=f"threshold {threshold:.3g}")
        ax.legend(frameon=False)
    ax.set_xlabel(_label(column))
    ax.set_ylabel("Units (count)")
    where = f"{area}: " if area else ""
    ax.set_title(f"{where}Distribution of {column} (n={len(values)}, "
                 f"{len(table) - len(values)} NaN)")
    return fig


def plot_raster(
    order: RasterOrder,
    bin_size_s: float | None = None,
    time_range: tuple[int, int] | None = None,
    vmin: float = 0.0,
    vmax: float = 1.2,
) -> Figure:
    """Raster of z-scored activity with units sorted by rastermap (or the PC1 fallback).

    Parameters
    ----------
    order : RasterOrder
        Output of :func:`meireport.select.rastermap_order`.
    bin_size_s : float, optional
        Bin width in seconds; the time axis is in seconds when given, in bins otherwise.
    time_range : tuple of int, optional
        ``(first_bin, last_bin)`` to show; default all bins.
    vmin, vmax : float
        Colour limits in standard deviations (the seed used 0 and 1.2).

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> import numpy as np
    >>> from meireport.select import RasterOrder
    >>> z = np.random.default_rng(0).normal(size=(5, 100))
    >>> order = RasterOrder(np.arange(5), np.zeros(5), z, "pc1", "tiny")
    >>> plot_raster(order, bin_size_s=0.1).axes[0].get_xlabel()
    'Time (s)'
    """
    if not isinstance(order, RasterOrder):
        raise MeireportError("order: expected the RasterOrder returned by rastermap_order")
    start, stop = time_range if time_range is not None else (0, order.zscored.shape[1])
    if not 0 <= start < stop <= order.zscored.shape[1]:
        raise MeireportError(
            f"time_range: expected 0 <= first < last <= {order.zscored.shape[1]}, got {time_range}"
        )
    data = order.zscored[order.isort, start:stop]
    scale = bin_size_s if bin_size_s is not None else 1.0
    extent = (start * scale, stop * scale, data.shape[0] - 0.5, -0.5)
    fig = Figure(figsize=(10, 5), layout="constrained")
    ax = fig.add_subplot()
    im = ax.imshow(data, cmap="gray_r", vmin=vmin, vmax=vmax, aspect="auto", extent=extent,
                   interpolation="nearest")
    ax.set_xlabel("Time (s)" if bin_size_s is not None else "Time (bins)")
    ax.set_ylabel(f"Units (sorted by {order.method}, index)")
    ax.set_title("Raster of z-scored activity")
    fig.colorbar(im, ax=ax, pad=0.01).set_label("Activity (z-score, SD)")
    return fig


def plot_correlation_heatmap(corr: pd.DataFrame, order: Sequence[int] | None = None) -> Figure:
    """Heatmap of the unit x unit correlation matrix of image-mean responses.

    Parameters
    ----------
    corr : pandas.DataFrame
        Square matrix from :func:`meireport.select.pairwise_correlation`.
    order : sequence of int, optional
        Row/column positions to show the units in (e.g. a rastermap ``isort``).

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> import pandas as pd
    >>> corr = pd.DataFrame([[1.0, 0.2], [0.2, 1.0]], index=[5, 6], columns=[5, 6])
    >>> plot_correlation_heatmap(corr).axes[0].get_xlabel()
    'Unit (index)'
    """
    if not isinstance(corr, pd.DataFrame) or corr.shape[0] != corr.shape[1] or corr.empty:
        raise MeireportError("corr: expected a non-empty square units x units DataFrame")
    idx = np.arange(len(corr)) if order is None else np.asarray(order, dtype=int)
    values = corr.to_numpy()[np.ix_(idx, idx)]
    fig = Figure(figsize=(6.5, 5.5), layout="constrained")
    ax = fig.add_subplot()
    im = ax.imshow(values, cmap="coolwarm", vmin=-1, vmax=1, interpolation="nearest")
    ax.set_xlabel("Unit (index)")
    ax.set_ylabel("Unit (index)")
    ax.set_title("Correlation of image-mean responses between units")
    fig.colorbar(im, ax=ax).set_label("Pearson r (unitless)")
    return fig


def plot_rf_maps(
    maps: RFMaps,
    centres: pd.DataFrame | None = None,
    units: Sequence | None = None,
    ncols: int = 6,
) -> Figure:
    """Grid of receptive-field maps (mean spike count per gabor position), centres marked.

    Parameters
    ----------
    maps : RFMaps
        Output of :func:`meireport.select.rfmap.rf_maps`.
    centres : pandas.DataFrame, optional
        Output of :func:`meireport.select.rfmap.receptive_fields` (``unit_id``, ``rf_x_deg``,
        ``rf_y_deg``, optional ``rf_p_value``); each centre is drawn as a cross.
    units : sequence, optional
        Unit ids to show, in order; default all.
    ncols : int, default 6
        Panels per row.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> import numpy as np
    >>> grid = np.arange(-40.0, 41.0, 10.0)
    >>> maps = RFMaps(np.ones((2, 9, 9)), grid, grid[::-1], np.array([1, 2]))
    >>> plot_rf_maps(maps).axes[0].get_xlabel()
    'Azimuth (deg)'
    """
    if not isinstance(maps, RFMaps):
        raise MeireportError("maps: expected the RFMaps returned by rf_maps")
    ids = list(maps.unit_ids) if units is None else list(units)
    where = {u: i for i, u in enumerate(maps.unit_ids)}
    unknown = [u for u in ids if u not in where]
    if unknown or not ids:
        raise MeireportError(f"units: expected ids present in maps, unknown {unknown[:5]}")
    info = None if centres is None else centres.set_index("unit_id")
    ncols = max(1, min(ncols, len(ids)))
    nrows = int(np.ceil(len(ids) / ncols))
    fig = Figure(figsize=(2.2 * ncols + 1, 2.1 * nrows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    extent = grid_extent(maps.x_deg, maps.y_deg, 10.0)  # rows from the highest elevation
    for ax, unit in zip(axes, ids, strict=False):
        im = ax.imshow(maps.maps[where[unit]], cmap="magma", extent=extent, origin="upper",
                       interpolation="nearest")
        title = f"unit {unit}"
        if info is not None and unit in info.index:
            row = info.loc[unit]
            ax.plot(row["rf_x_deg"], row["rf_y_deg"], "c+", ms=10, mew=2)
            if "rf_p_value" in row:
                title += f"\np={row['rf_p_value']:.3g}"
        ax.set_title(title, fontsize="small")
        ax.set_xlabel(AZIMUTH)
        ax.set_ylabel(ELEVATION)
        fig.colorbar(im, ax=ax, shrink=0.8).set_label("Spikes / presentation", fontsize="x-small")
    for ax in axes[len(ids):]:
        ax.set_axis_off()
    return fig
