"""Figures of the fitted models: learning curves, test predictions, readout, LN filter."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure

from meireport.errors import MeireportError
from meireport.plots._style import AZIMUTH, ELEVATION, extent, grid_extent
from meireport.stimuli import ScreenGeometry

__all__ = [
    "plot_learning_curves",
    "plot_ln_filter",
    "plot_predicted_vs_observed",
    "plot_readout_position",
]


def plot_learning_curves(history: Sequence[dict]) -> Figure:
    """Training / validation loss and validation correlation per epoch (one line per member).

    Parameters
    ----------
    history : sequence of dict
        :attr:`meireport.models.TrainedModel.history` rows (``epoch``, ``train_loss``,
        ``val_loss``, ``val_corr``, ``best`` and, for ensembles, ``member``).

    Returns
    -------
    Figure

    Examples
    --------
    >>> h = [{"epoch": e, "train_loss": 1 / e, "val_loss": 1.2 / e, "val_corr": 0.1 * e,
    ...       "best": e == 3} for e in range(1, 4)]
    >>> len(plot_learning_curves(h).axes)
    2
    """
    rows = list(history)
    need = ("epoch", "train_loss", "val_loss", "val_corr")
    if not rows or any(k not in r for r in rows for k in need):
        raise MeireportError(f"history: expected a non-empty list of dicts with {need}")
    fig = Figure(figsize=(8, 3.2), layout="constrained")
    ax_loss, ax_corr = fig.subplots(1, 2)
    members = sorted({int(r.get("member", 0)) for r in rows})
    for m in members:
        rs = [r for r in rows if int(r.get("member", 0)) == m]
        ep = [r["epoch"] for r in rs]
        tag = f" (member {m})" if len(members) > 1 else ""
        ax_loss.plot(ep, [r["train_loss"] for r in rs], color="C0", alpha=0.8,
                     label="train" + tag if m == members[0] else None)
        ax_loss.plot(ep, [r["val_loss"] for r in rs], color="C1", alpha=0.8,
                     label="validation" if m == members[0] else None)
        ax_corr.plot(ep, [r["val_corr"] for r in rs], color="C2", alpha=0.8)
        best = [r for r in rs if r.get("best")]
        if best:
            ax_corr.axvline(best[0]["epoch"], color="0.5", ls=":", lw=1)
            ax_corr.plot(best[0]["epoch"], best[0]["val_corr"], "o", color="C3",
                         label="restored (best)" if m == members[0] else None)
    ax_loss.set(xlabel="Epoch (count)", ylabel="Loss (nats / image)", title="Loss")
    ax_corr.set(xlabel="Epoch (count)", ylabel="Validation correlation (Pearson r)",
                title="Early stopping")
    ax_loss.legend(frameon=False)
    if ax_corr.get_legend_handles_labels()[0]:
        ax_corr.legend(frameon=False)
    return fig


def plot_predicted_vs_observed(
    pred, obs, sem=None, ci: tuple[float, float] | None = None, title: str = ""
) -> Figure:
    """Predicted vs observed image-mean responses on the test images, with the r and its CI.

    Parameters
    ----------
    pred, obs : array_like
        Predicted and observed mean spike counts per test image.
    sem : array_like, optional
        Standard error of each observed mean (error bars).
    ci : tuple of float, optional
        Bootstrap confidence interval of the correlation (shown in the title).
    title : str
        Prefix of the title (e.g. the unit id).

    Returns
    -------
    Figure

    Examples
    --------
    >>> fig = plot_predicted_vs_observed([1, 2, 3.5], [1.2, 1.9, 3.0], [0.1, 0.2, 0.2], (0.2, 1))
    >>> fig.axes[0].get_xlabel()
    'Predicted response (spikes / presentation)'
    """
    p, o = np.asarray(pred, dtype=float).ravel(), np.asarray(obs, dtype=float).ravel()
    if p.shape != o.shape or len(p) < 2:
        raise MeireportError(
            f"pred, obs: expected two arrays of the same length >= 2, got {p.shape}, {o.shape}"
        )
    s = None if sem is None else np.asarray(sem, dtype=float).ravel()
    if s is not None and s.shape != o.shape:
        raise MeireportError(f"sem: expected {o.shape} values, got {s.shape}")
    fig = Figure(figsize=(4, 4), layout="constrained")
    ax = fig.subplots()
    ax.errorbar(p, o, yerr=s, fmt="o", color="C0", ecolor="0.6", capsize=2, ms=4)
    lo, hi = float(min(p.min(), o.min())), float(max(p.max(), o.max()))
    ax.plot([lo, hi], [lo, hi], color="0.6", ls="--", lw=1, label="identity")
    r = float(np.corrcoef(p, o)[0, 1]) if p.std() > 0 and o.std() > 0 else float("nan")
    text = f"r = {r:.2f}"
    if ci is not None:
        text += f" [{ci[0]:.2f}, {ci[1]:.2f}]"
    ax.set(
        xlabel="Predicted response (spikes / presentation)",
        ylabel="Observed mean response (spikes / presentation)",
        title=(f"{title}\n" if title else "") + f"{text} over {len(p)} test images",
    )
    ax.legend(frameon=False, loc="upper left")
    return fig


def plot_readout_position(
    rf_map,
    x_deg,
    y_deg,
    readout_px,
    geometry: ScreenGeometry | None = None,
    true_centre_px=None,
    title: str = "",
) -> Figure:
    """The unit's gabor RF map (degrees) with the model's readout position on it.

    Parameters
    ----------
    rf_map : array_like
        ``n_y x n_x`` mean spike count per gabor position (rows from the highest elevation,
        as :func:`meireport.select.rfmap.rf_maps` returns them).
    x_deg, y_deg : array_like
        Azimuth of each column and elevation of each row (degrees).
    readout_px : tuple of float
        Readout position ``(col, row)`` in model pixels
        (:meth:`meireport.models.CNNModel.readout_positions_px`).
    geometry : ScreenGeometry, optional
        Degree <-> pixel mapping (default ``ScreenGeometry()``).
    true_centre_px : tuple of float, optional
        The true RF centre in pixels (simulated sessions).
    title : str
        Title (e.g. the unit id).

    Returns
    -------
    Figure

    Examples
    --------
    >>> grid = np.arange(-40.0, 41.0, 10.0)
    >>> fig = plot_readout_position(np.eye(9), grid, grid[::-1], (50.0, 20.0))
    >>> fig.axes[0].get_xlabel()
    'Azimuth (deg)'
    """
    g = ScreenGeometry() if geometry is None else geometry
    m = np.asarray(rf_map, dtype=float)
    x, y = np.asarray(x_deg, dtype=float), np.asarray(y_deg, dtype=float)
    if m.ndim != 2 or m.shape != (len(y), len(x)):
        raise MeireportError(
            f"rf_map: expected len(y_deg) x len(x_deg) = {len(y)} x {len(x)}, got {m.shape}"
        )
    fig = Figure(figsize=(5.5, 3.8), layout="constrained")
    ax = fig.subplots()
    im = ax.imshow(m if y[0] >= y[-1] else m[::-1], extent=grid_extent(x, y, 10.0),
                   cmap="viridis", origin="upper", aspect="equal")
    fig.colorbar(im, ax=ax, label="Mean response (spikes / presentation)")
    screen = extent(g)
    ax.plot([screen[0], screen[1], screen[1], screen[0], screen[0]],
            [screen[2], screen[2], screen[3], screen[3], screen[2]],
            color="0.4", lw=1.0, ls="--", label="model image")
    rx, ry = g.px_to_deg(*readout_px)
    ax.plot(float(rx), float(ry), "r+", ms=14, mew=2, label="readout position")
    if true_centre_px is not None:
        tx, ty = g.px_to_deg(*true_centre_px)
        ax.plot(float(tx), float(ty), "wx", ms=9, mew=2, label="true RF centre")
    ax.set(xlabel=AZIMUTH, ylabel=ELEVATION, title=title or "Readout position")
    ax.legend(frameon=False, fontsize="small", loc="lower right")
    return fig


def _show_filter(fig, ax, img: np.ndarray, geometry: ScreenGeometry, title: str, label: str):
    v = float(np.abs(img).max()) or 1.0
    im = ax.imshow(img, cmap="RdBu_r", vmin=-v, vmax=v, extent=extent(geometry))
    ax.set(xlabel=AZIMUTH, ylabel=ELEVATION, title=title)
    fig.colorbar(im, ax=ax, label=label, shrink=0.8)


def plot_ln_filter(filter_img, true_rf=None, geometry: ScreenGeometry | None = None) -> Figure:
    """The LN model's filter, next to the true receptive field on simulated sessions.

    Parameters
    ----------
    filter_img : array_like
        ``rows x cols`` filter in model pixels (:meth:`meireport.models.LNModel.filter_image`).
    true_rf : array_like, optional
        ``rows x cols`` true RF (``GroundTruth.rf_even``); the title gives their correlation.
    geometry : ScreenGeometry, optional
        Degree <-> pixel mapping for the axes.

    Returns
    -------
    Figure

    Examples
    --------
    >>> f = np.zeros((60, 96))
    >>> len(plot_ln_filter(f, f + np.eye(60, 96)).axes)
    4
    """
    g = ScreenGeometry() if geometry is None else geometry
    w = np.asarray(filter_img, dtype=float)
    if w.shape != tuple(g.shape):
        raise MeireportError(f"filter_img: expected {tuple(g.shape)} pixels, got {w.shape}")
    n = 1 if true_rf is None else 2
    fig = Figure(figsize=(4.6 * n, 3.2), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, n))
    _show_filter(fig, axes[0], w, g, "LN filter", "Weight (a.u. per unit luminance)")
    if true_rf is not None:
        t = np.asarray(true_rf, dtype=float)
        if t.shape != w.shape:
            raise MeireportError(f"true_rf: expected {w.shape} pixels, got {t.shape}")
        _show_filter(fig, axes[1], t, g, "True RF", "Weight (a.u.)")
        if w.std() > 0 and t.std() > 0:
            r = float(np.corrcoef(w.ravel(), t.ravel())[0, 1])
            fig.suptitle(f"filter vs true RF: r = {r:.2f}")
    return fig
