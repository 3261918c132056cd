"""Figures of the extraction page: model-space images, PSTH, response distributions."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from meireport.stimuli import ScreenGeometry

__all__ = ["image_grid", "psth_figure", "mean_count_histogram"]


def _extent(geometry: ScreenGeometry) -> list[float]:
    rows, cols = geometry.shape
    x0, y0 = geometry.px_to_deg(-0.5, -0.5)
    x1, y1 = geometry.px_to_deg(cols - 0.5, rows - 0.5)
    return [float(x0), float(x1), float(y1), float(y0)]


def image_grid(images: np.ndarray, frames, geometry: ScreenGeometry, n: int = 8) -> Figure:
    """The first ``n`` images as the model sees them, axes in visual degrees.

    Examples
    --------
    >>> fig = image_grid(np.random.rand(2, 60, 96), [0, 1], ScreenGeometry())
    >>> len(fig.axes) >= 2
    True
    """
    n = min(n, len(images))
    cols = min(4, max(n, 1))
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.3 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.set_visible(False)
    for i in range(n):
        ax = axes.ravel()[i]
        ax.set_visible(True)
        ax.imshow(images[i], cmap="gray", vmin=0, vmax=1, extent=_extent(geometry))
        ax.set_title(f"frame {int(frames[i])}", fontsize=9)
        ax.set_xlabel("azimuth (deg)")
        ax.set_ylabel("elevation (deg)")
    fig.suptitle(f"Natural scenes in model space ({geometry.shape[0]} x {geometry.shape[1]} px, "
                 f"{geometry.deg_per_px} deg/px, grey level in [0, 1])")
    fig.tight_layout()
    return fig


def psth_figure(t: np.ndarray, rates: np.ndarray, window=(0.0, 0.25)) -> Figure:
    """Mean PSTH across units (with the 10-90 % band) and the count window shaded.

    Examples
    --------
    >>> fig = psth_figure(np.linspace(-0.1, 0.3, 40), np.random.rand(5, 40))
    >>> fig.axes[0].get_xlabel()
    'time from stimulus onset (s)'
    """
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.axvspan(window[0], window[1], color="tab:orange", alpha=0.15, label="count window")
    if len(rates):
        lo, hi = np.percentile(rates, [10, 90], axis=0)
        ax.fill_between(t, lo, hi, color="tab:blue", alpha=0.2, label="10-90 % of units")
        ax.plot(t, rates.mean(axis=0), color="tab:blue", label="mean over units")
    ax.axvline(0, color="k", lw=0.8)
    ax.set_xlabel("time from stimulus onset (s)")
    ax.set_ylabel("firing rate (spikes/s)")
    ax.set_title("Response to natural-scene onset")
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    return fig


def mean_count_histogram(trials: np.ndarray) -> Figure:
    """Histogram of each unit's mean count per presentation and of its across-image spread.

    Examples
    --------
    >>> fig = mean_count_histogram(np.random.poisson(2, (10, 5, 4)).astype(float))
    >>> len(fig.axes)
    2
    """
    means = np.nanmean(trials, axis=(1, 2))
    spread = np.nanstd(np.nanmean(trials, axis=2), axis=1)
    fig, (a, b) = plt.subplots(1, 2, figsize=(8, 3.2))
    a.hist(means, bins=20, color="tab:gray")
    a.set_xlabel("mean count per presentation (spikes)")
    a.set_ylabel("units")
    b.hist(spread, bins=20, color="tab:green")
    b.set_xlabel("s.d. of image-mean counts (spikes)")
    b.set_ylabel("units")
    fig.tight_layout()
    return fig
