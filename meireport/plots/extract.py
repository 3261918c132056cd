"""Figures of the extraction page: model-space images, the PSTH and count distributions."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from meireport.plots._style import show_stimulus
from meireport.stimuli import ScreenGeometry

__all__ = ["plot_image_grid", "plot_mean_count_histogram", "plot_psth"]


def plot_image_grid(images: np.ndarray, frames, geometry: ScreenGeometry, n: int = 8) -> Figure:
    """The first ``n`` images as the model sees them, axes in visual degrees.

    Parameters
    ----------
    images : numpy.ndarray
        ``images x H x W`` grey levels in [0, 1] (``images.npz``).
    frames : sequence of int
        Allen frame number of each image (panel titles).
    geometry : ScreenGeometry
        Degree <-> pixel mapping of the images.
    n : int, default 8
        Number of images shown, four per row.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> fig = plot_image_grid(np.random.rand(2, 60, 96), [0, 1], ScreenGeometry())
    >>> [ax.get_title() for ax in fig.axes]
    ['frame 0', 'frame 1']
    """
    n = min(n, len(images))
    cols = min(4, max(n, 1))
    rows = max(int(np.ceil(n / cols)), 1)
    fig = Figure(figsize=(3.2 * cols, 2.3 * rows + 0.4), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for i, ax in enumerate(axes):
        if i >= n:
            fig.delaxes(ax)
            continue
        show_stimulus(ax, images[i], geometry)
        ax.set_title(f"frame {int(frames[i])}", fontsize=9)
    fig.suptitle(f"Natural scenes in model space ({geometry.shape[0]} x {geometry.shape[1]} px, "
                 f"{geometry.deg_per_px} deg/px, grey level in [0, 1])")
    return fig


def plot_psth(t: np.ndarray, rates: np.ndarray, window=(0.0, 0.25)) -> Figure:
    """Mean PSTH across units (with the 10-90 % band) and the count window shaded.

    Parameters
    ----------
    t : numpy.ndarray
        Bin centres (s from stimulus onset).
    rates : numpy.ndarray
        ``units x bins`` firing rates (spikes/s), e.g. from :func:`meireport.extract.psth`.
    window : tuple of float, default (0, 0.25)
        Count window (s), shaded.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> fig = plot_psth(np.linspace(-0.1, 0.3, 40), np.random.rand(5, 40))
    >>> fig.axes[0].get_xlabel(), fig.axes[0].get_ylabel()
    ('time from stimulus onset (s)', 'firing rate (spikes/s)')
    """
    fig = Figure(figsize=(6, 3.5), layout="constrained")
    ax = fig.add_subplot()
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
    return fig


def plot_mean_count_histogram(trials: np.ndarray) -> Figure:
    """Histogram of each unit's mean count per presentation and of its across-image spread.

    Parameters
    ----------
    trials : numpy.ndarray
        ``units x images x repeats`` spike counts (``trials.npz``), NaN for missing repeats.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> fig = plot_mean_count_histogram(np.random.poisson(2, (10, 5, 4)).astype(float))
    >>> [ax.get_ylabel() for ax in fig.axes]
    ['units', 'units']
    """
    means = np.nanmean(trials, axis=(1, 2))
    spread = np.nanstd(np.nanmean(trials, axis=2), axis=1)
    fig = Figure(figsize=(8, 3.2), layout="constrained")
    a, b = fig.subplots(1, 2)
    a.hist(means, bins=20, color="tab:gray")
    a.set_xlabel("mean count per presentation (spikes)")
    a.set_ylabel("units")
    a.set_title("Mean response of each unit")
    b.hist(spread, bins=20, color="tab:green")
    b.set_xlabel("s.d. of image-mean counts (spikes)")
    b.set_ylabel("units")
    b.set_title("How much each unit varies across images")
    return fig
