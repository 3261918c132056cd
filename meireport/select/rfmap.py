"""Receptive-field mapping from the ``gabors`` stimulus, as AllenSDK's ReceptiveFieldMapping.

Per unit: the mean spike count at each gabor position (averaged over orientations), the RF
centre (degrees and model-image pixels), its area, and a seeded permutation chi-square test of
spatial structure. Inputs are the gabor presentation ``table`` (``x_position``, ``y_position``,
``orientation``; degrees) and ``counts`` (presentations x unit_id), sharing one index.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import pandas as pd
from scipy import ndimage as ndi
from scipy.optimize import least_squares

from meireport.errors import MeireportError

__all__ = [
    "RFMaps",
    "receptive_fields",
    "rf_centres",
    "rf_maps",
    "rf_pvalues",
]

DegToPx = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


class RFMaps(NamedTuple):
    """Mean-response maps over gabor positions.

    Attributes
    ----------
    maps : numpy.ndarray
        ``units x n_y x n_x`` mean spike count per presentation; rows run from the highest
        ``y_position`` (top) to the lowest, columns from the lowest ``x_position`` (left).
        NaN where a position was never shown.
    x_deg : numpy.ndarray
        Azimuth of each column (degrees, ascending).
    y_deg : numpy.ndarray
        Elevation of each row (degrees, descending: up is up).
    unit_ids : numpy.ndarray
        Unit id of each map.
    """

    maps: np.ndarray
    x_deg: np.ndarray
    y_deg: np.ndarray
    unit_ids: np.ndarray


def _check_inputs(table: pd.DataFrame, counts: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Validate and align ``table`` and ``counts``; drop presentations without a position."""
    if not isinstance(table, pd.DataFrame) or not isinstance(counts, pd.DataFrame):
        raise MeireportError("table, counts: expected two DataFrames (gabor presentations)")
    missing = [c for c in ("x_position", "y_position") if c not in table.columns]
    if missing:
        raise MeireportError(f"table: expected columns x_position, y_position; missing {missing}")
    if len(counts) == 0 or counts.shape[1] == 0:
        raise MeireportError(f"counts: expected presentations x units, got shape {counts.shape}")
    if len(table) != len(counts) or not table.index.isin(counts.index).all():
        raise MeireportError("counts: expected the same index (stimulus_presentation_id) as table")
    counts = counts.loc[table.index]
    try:
        values = counts.to_numpy(dtype=float)
        xy = table[["x_position", "y_position"]].apply(pd.to_numeric, errors="coerce")
    except (TypeError, ValueError) as exc:
        raise MeireportError(f"counts: expected numeric spike counts ({exc})") from None
    if not np.all(np.isfinite(values)) or (values < 0).any():
        raise MeireportError("counts: expected finite, non-negative spike counts")
    keep = np.isfinite(xy.to_numpy()).all(axis=1)
    if not keep.any():
        raise MeireportError("table: expected finite x_position/y_position on some presentations")
    table = table.loc[keep].assign(x_position=xy.loc[keep, "x_position"],
                                   y_position=xy.loc[keep, "y_position"])
    return table, counts.loc[keep].astype(float)


def rf_maps(table: pd.DataFrame, counts: pd.DataFrame) -> RFMaps:
    """Mean spike count of each unit at each gabor position, averaged over orientations.

    The mean is first taken per (position, orientation) and then averaged over orientations,
    so an unbalanced design does not weight one orientation more. Presentations without a
    finite position (blanks) are ignored.

    Parameters
    ----------
    table : pandas.DataFrame
        One row per gabor presentation: ``x_position``, ``y_position`` (degrees) and, if
        present, ``orientation``.
    counts : pandas.DataFrame
        Spike counts, presentations x unit_id, same index as ``table``.

    Returns
    -------
    RFMaps
        ``maps`` (units x n_y x n_x, top row = highest elevation), ``x_deg``, ``y_deg``,
        ``unit_ids``.

    Examples
    --------
    >>> import pandas as pd
    >>> table = pd.DataFrame({"x_position": [-10.0, 10.0, -10.0, 10.0],
    ...                       "y_position": [10.0, 10.0, -10.0, -10.0]})
    >>> counts = pd.DataFrame({5: [4, 0, 0, 0]})
    >>> out = rf_maps(table, counts)
    >>> out.maps[0].tolist(), out.y_deg.tolist()
    ([[4.0, 0.0], [0.0, 0.0]], [10.0, -10.0])
    """
    table, counts = _check_inputs(table, counts)
    keys = [table["y_position"], table["x_position"]]
    if "orientation" in table.columns:
        per_ori = counts.groupby([*keys, table["orientation"]]).mean()
        means = per_ori.groupby(level=[0, 1]).mean()
    else:
        means = counts.groupby(keys).mean()
    x_deg = np.sort(table["x_position"].unique())
    y_deg = np.sort(table["y_position"].unique())[::-1]
    grid = pd.MultiIndex.from_product([y_deg, x_deg])
    values = means.reindex(grid).to_numpy()  # (n_y * n_x) x units
    maps = values.T.reshape(counts.shape[1], len(y_deg), len(x_deg))
    return RFMaps(maps=maps, x_deg=x_deg.astype(float), y_deg=y_deg.astype(float),
                  unit_ids=counts.columns.to_numpy())


def _chi(observed: np.ndarray, expected: np.ndarray) -> np.ndarray:
    """Chi-square statistic over conditions (axis -2), zero where nothing is expected."""
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(expected > 0, (observed - expected) ** 2 / expected, 0.0)
    return terms.sum(axis=-2)


def rf_pvalues(
    table: pd.DataFrame, counts: pd.DataFrame, n_shuffles: int = 1000, seed: int = 0,
    min_spikes: int = 10,
) -> np.ndarray:
    """Permutation chi-square test of spatial structure, as AllenSDK's ``chisq_from_stim_table``.

    The statistic is ``sum_c (O_c - E_c)^2 / E_c`` over positions ``c``, with ``O_c`` the
    summed count at position ``c`` and ``E_c`` = presentations at ``c`` x the unit's mean count
    (a uniform expectation). Its null distribution comes from permuting presentation labels
    (AllenSDK resamples with replacement; a permutation is the exact null of "position does
    not matter"). ``p = (1 + #{null >= observed}) / (1 + n_shuffles)``, so it is never 0.

    Parameters
    ----------
    table : pandas.DataFrame
        Gabor presentations with ``x_position`` and ``y_position``.
    counts : pandas.DataFrame
        Spike counts, presentations x unit_id, same index as ``table``.
    n_shuffles : int, default 1000
        Number of permutations.
    seed : int, default 0
        Seed of the permutations; the same seed gives the same p-values.
    min_spikes : int, default 10
        Units with fewer spikes in total get NaN (AllenSDK's minimum spike count).

    Returns
    -------
    numpy.ndarray
        p-value per unit, in the column order of ``counts``.

    Examples
    --------
    >>> import numpy as np
    >>> import pandas as pd
    >>> x = np.tile(np.repeat([-10.0, 0.0, 10.0], 20), 3)
    >>> y = np.repeat([-10.0, 0.0, 10.0], 60)
    >>> table = pd.DataFrame({"x_position": x, "y_position": y})
    >>> rng = np.random.default_rng(0)
    >>> tuned = rng.poisson(np.where((x == 10) & (y == 10), 8.0, 1.0))
    >>> counts = pd.DataFrame({1: tuned, 2: rng.poisson(2.0, size=x.size)})
    >>> p = rf_pvalues(table, counts, n_shuffles=200, seed=0)
    >>> bool(p[0] < 0.01), bool(p[1] > 0.05)
    (True, True)
    """
    table, counts = _check_inputs(table, counts)
    is_int = isinstance(n_shuffles, int | np.integer) and not isinstance(n_shuffles, bool)
    if not is_int or n_shuffles < 1:
        raise MeireportError(f"n_shuffles: expected an integer >= 1, got {n_shuffles!r}")
    codes = pd.MultiIndex.from_frame(table[["y_position", "x_position"]]).factorize()[0]
    order = np.argsort(codes, kind="stable")
    sorted_codes = codes[order]
    starts = np.flatnonzero(np.r_[True, sorted_codes[1:] != sorted_codes[:-1]])
    values = counts.to_numpy()[order]  # presentations (sorted by position) x units
    n_per = np.diff(np.r_[starts, len(values)])[:, None]
    expected = n_per * values.mean(axis=0)[None, :]
    chi_obs = _chi(np.add.reduceat(values, starts, axis=0), expected)
    rng = np.random.default_rng(seed)
    n_pres, n_units = values.shape
    chunk = max(1, min(n_shuffles, 2**22 // max(n_pres * n_units, 1)))
    exceed = np.zeros(n_units)
    for first in range(0, n_shuffles, chunk):
        size = min(chunk, n_shuffles - first)
        perms = rng.permuted(np.tile(np.arange(n_pres), (size, 1)), axis=1)
        observed = np.add.reduceat(values[perms], starts, axis=1)
        exceed += (_chi(observed, expected[None]) >= chi_obs[None] - 1e-9).sum(axis=0)
    p = (1.0 + exceed) / (1.0 + n_shuffles)
    return np.where(values.sum(axis=0) >= min_spikes, p, np.nan)


def _grid_coord(index: float, axis_deg: np.ndarray) -> float:
    """Map a fractional grid index to degrees (linear in the index, as the grid is regular)."""
    if len(axis_deg) == 1:
        return float(axis_deg[0])
    step = (axis_deg[-1] - axis_deg[0]) / (len(axis_deg) - 1)
    return float(axis_deg[0] + index * step)


def _gaussian_fit(rf: np.ndarray, row0: float, col0: float) -> tuple[np.ndarray, bool]:
    """Fit offset + axis-aligned 2-D Gaussian in grid units: (row, col, sd_row, sd_col), ok."""
    rows, cols = np.indices(rf.shape)
    base = float(np.median(rf))

    def residual(p: np.ndarray) -> np.ndarray:
        offset, amp, r, c, sr, sc = p
        shape = np.exp(-(((rows - r) / sr) ** 2) / 2 - ((cols - c) / sc) ** 2 / 2)
        return (offset + amp * shape - rf).ravel()

    n_r, n_c = rf.shape
    start = [base, max(float(rf.max()) - base, 1e-6), row0, col0, 1.0, 1.0]
    lower = [-np.inf, 0.0, -0.5, -0.5, 0.25, 0.25]
    upper = [np.inf, np.inf, n_r - 0.5, n_c - 0.5, float(n_r), float(n_c)]
    start = np.clip(start, lower, upper)
    try:
        fit = least_squares(residual, start, bounds=(lower, upper))
    except (ValueError, np.linalg.LinAlgError):
        return np.full(4, np.nan), False
    return fit.x[2:], bool(fit.success and np.all(np.isfinite(fit.x)))


def _one_centre(rf: np.ndarray, threshold: float, method: str) -> dict:
    """Centre (grid units), widths, mask size, fit and on-screen flags of one map."""
    rf = np.where(np.isnan(rf), np.nanmean(rf) if np.isfinite(rf).any() else 0.0, rf)
    smooth = ndi.gaussian_filter(rf, 1.0)
    labels, _ = ndi.label(smooth > smooth.max() - threshold * smooth.std())
    peak = np.unravel_index(np.argmax(smooth), smooth.shape)
    if smooth.std() == 0 or labels[peak] == 0:
        return {"row": np.nan, "col": np.nan, "sd_row": np.nan, "sd_col": np.nan, "cells": 0,
                "fit_ok": False, "on_screen": False}
    mask = labels == labels[peak]
    weights = np.clip(rf - np.median(rf), 0.0, None) * mask
    weights = weights if weights.sum() > 0 else mask.astype(float)
    grid_r, grid_c = np.indices(rf.shape)
    row = float((grid_r * weights).sum() / weights.sum())
    col = float((grid_c * weights).sum() / weights.sum())
    (fit_r, fit_c, sd_r, sd_c), fit_ok = _gaussian_fit(rf, row, col)
    if method == "peak":
        row, col = float(peak[0]), float(peak[1])
    elif method == "gaussian" and fit_ok:
        row, col = float(fit_r), float(fit_c)
    on_screen = 0 < row < rf.shape[0] - 1 and 0 < col < rf.shape[1] - 1
    return {"row": row, "col": col, "sd_row": sd_r if fit_ok else np.nan,
            "sd_col": sd_c if fit_ok else np.nan, "cells": int(mask.sum()), "fit_ok": fit_ok,
            "on_screen": bool(on_screen)}


def _step(axis_deg: np.ndarray) -> float:
    return abs(float(np.diff(axis_deg).mean())) if len(axis_deg) > 1 else 1.0


def rf_centres(
    maps: RFMaps, threshold: float = 0.5, method: str = "gaussian"
) -> pd.DataFrame:
    """RF centre, size and on-screen flag of each map, following AllenSDK's RF statistics.

    As AllenSDK's ``threshold_rf``, the map is smoothed with a Gaussian of one grid step and
    the RF mask is the connected region containing the peak where the smoothed map exceeds
    ``max - threshold * std``; the area is the mask's number of positions times the grid cell
    area. As AllenSDK's ``fit_2d_gaussian_with_offset``, an offset plus axis-aligned 2-D
    Gaussian is fitted to the map, giving the width and height (Gaussian SDs). The centre is:

    - ``"gaussian"`` (default): the fitted Gaussian's centre (sub-grid accuracy; falls back to
      ``"com"`` when the fit fails, see ``rf_fit_ok``);
    - ``"com"``: the centre of mass of the above-baseline response (map minus its median,
      clipped at 0) inside the mask;
    - ``"peak"``: the peak position of the smoothed map.

    A centre on the outermost ring of positions is flagged off-screen (``rf_on_screen``
    False, as AllenSDK's ``rf_on_screen``): the RF may extend beyond the mapped grid.

    Parameters
    ----------
    maps : RFMaps
        Output of :func:`rf_maps`.
    threshold : float, default 0.5
        Mask threshold in standard deviations of the smoothed map below its maximum.
    method : {"gaussian", "com", "peak"}
        How the centre is located.

    Returns
    -------
    pandas.DataFrame
        Indexed by unit id: ``rf_x_deg``, ``rf_y_deg`` (NaN for a flat map),
        ``rf_width_deg``, ``rf_height_deg`` (Gaussian SD along azimuth / elevation),
        ``rf_area_deg2``, ``rf_fit_ok``, ``rf_on_screen``.

    Examples
    --------
    >>> import numpy as np
    >>> grid = np.arange(-40.0, 41.0, 10.0)
    >>> x, y = np.meshgrid(grid, grid[::-1])
    >>> rf = 1 + 5 * np.exp(-((x - 12) ** 2 + (y + 23) ** 2) / (2 * 10.0**2))
    >>> out = rf_centres(RFMaps(rf[None], grid, grid[::-1], np.array([3])))
    >>> out[["rf_x_deg", "rf_y_deg", "rf_width_deg"]].round(1).to_numpy().tolist()
    [[12.0, -23.0, 10.0]]
    """
    if method not in ("gaussian", "com", "peak"):
        raise MeireportError(f"method: expected 'gaussian', 'com' or 'peak', got {method!r}")
    if not np.isfinite(threshold) or threshold <= 0:
        raise MeireportError(f"threshold: expected a positive number, got {threshold!r}")
    dx, dy = _step(maps.x_deg), _step(maps.y_deg)
    rows = []
    for rf in maps.maps:
        c = _one_centre(rf, threshold, method)
        x = _grid_coord(c["col"], maps.x_deg) if np.isfinite(c["col"]) else np.nan
        y = _grid_coord(c["row"], maps.y_deg) if np.isfinite(c["row"]) else np.nan
        rows.append((x, y, c["sd_col"] * dx, c["sd_row"] * dy, c["cells"] * dx * dy,
                     c["fit_ok"], c["on_screen"]))
    columns = ["rf_x_deg", "rf_y_deg", "rf_width_deg", "rf_height_deg", "rf_area_deg2",
               "rf_fit_ok", "rf_on_screen"]
    return pd.DataFrame(rows, columns=columns, index=pd.Index(maps.unit_ids, name="unit_id"))


def receptive_fields(
    table: pd.DataFrame,
    counts: pd.DataFrame,
    deg_to_px: DegToPx,
    n_shuffles: int = 1000,
    seed: int = 0,
    alpha: float = 0.01,
    threshold: float = 0.5,
    method: str = "gaussian",
    min_spikes: int = 10,
) -> pd.DataFrame:
    """Tidy receptive-field table: centre (degrees and model pixels), area, significance.

    Parameters
    ----------
    table : pandas.DataFrame
        Gabor presentations: ``x_position``, ``y_position`` (degrees), ``orientation``.
    counts : pandas.DataFrame
        Spike counts, presentations x unit_id, same index as ``table``.
    deg_to_px : callable
        ``deg_to_px(x_deg, y_deg) -> (col, row)`` into the model image; called with float
        arrays (NaN for units without a centre).
    n_shuffles, seed, min_spikes
        Passed to :func:`rf_pvalues`.
    alpha : float, default 0.01
        Significance level of ``rf_significant``.
    threshold, method
        Passed to :func:`rf_centres`.

    Returns
    -------
    pandas.DataFrame
        One row per unit: ``unit_id``, ``rf_x_deg``, ``rf_y_deg``, ``rf_col_px``, ``rf_row_px``,
        ``rf_width_deg``, ``rf_height_deg``, ``rf_area_deg2``, ``rf_fit_ok``, ``rf_on_screen``,
        ``rf_peak`` and ``rf_baseline`` (max and median of
        the map, spikes per presentation), ``n_spikes``, ``rf_p_value``, ``rf_significant``
        (p < alpha) and ``has_rf`` (significant and on screen).

    Examples
    --------
    >>> import numpy as np
    >>> import pandas as pd
    >>> grid = np.arange(-40.0, 41.0, 10.0)
    >>> x, y = (a.ravel() for a in np.meshgrid(grid, grid))
    >>> x, y = np.tile(x, 10), np.tile(y, 10)
    >>> rate = 1 + 6 * np.exp(-((x - 20) ** 2 + (y - 10) ** 2) / (2 * 8.0**2))
    >>> counts = pd.DataFrame({42: np.random.default_rng(0).poisson(rate)})
    >>> table = pd.DataFrame({"x_position": x, "y_position": y})
    >>> px = lambda xd, yd: (47.5 + np.asarray(xd) / 1.5, 29.5 - np.asarray(yd) / 1.5)
    >>> out = receptive_fields(table, counts, px, n_shuffles=100)
    >>> out.loc[0, ["rf_x_deg", "rf_y_deg"]].astype(float).round(-1).tolist(), bool(out.has_rf[0])
    ([20.0, 10.0], True)
    """
    if not callable(deg_to_px):
        raise MeireportError("deg_to_px: expected a callable (x_deg, y_deg) -> (col, row)")
    if not 0 < alpha < 1:
        raise MeireportError(f"alpha: expected a significance level in (0, 1), got {alpha!r}")
    maps = rf_maps(table, counts)
    out = rf_centres(maps, threshold=threshold, method=method).reset_index()
    col, row = deg_to_px(out["rf_x_deg"].to_numpy(float), out["rf_y_deg"].to_numpy(float))
    out.insert(3, "rf_col_px", np.broadcast_to(np.asarray(col, dtype=float), len(out)))
    out.insert(4, "rf_row_px", np.broadcast_to(np.asarray(row, dtype=float), len(out)))
    flat = maps.maps.reshape(len(out), -1)
    out["rf_peak"] = np.nanmax(flat, axis=1)
    out["rf_baseline"] = np.nanmedian(flat, axis=1)
    out["n_spikes"] = counts.loc[table.index].to_numpy(float).sum(axis=0)
    out["rf_p_value"] = rf_pvalues(table, counts, n_shuffles=n_shuffles, seed=seed,
                                   min_spikes=min_spikes)
    out["rf_significant"] = out["rf_p_value"] < alpha
    out["has_rf"] = out["rf_significant"] & out["rf_on_screen"]
    return out
