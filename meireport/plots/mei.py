"""Figures of the MEI and Gabor chapters: stimuli in degrees, traces, spectra, starts."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Circle

from meireport.errors import MeireportError
from meireport.mei import (
    Mask,
    angular_power,
    pixel_correlation,
    power_spectrum,
    radial_power,
    symmetry_index,
)
from meireport.plots._style import grid_extent, show_stimulus
from meireport.stimuli import ScreenGeometry

__all__ = [
    "plot_stimuli",
    "plot_mei_gabor",
    "plot_trace",
    "plot_power_spectra",
    "plot_radial_power",
    "plot_angular_power",
    "plot_starts",
]


def _named(images, what: str = "images") -> dict[str, np.ndarray]:
    if not isinstance(images, Mapping) or not images:
        raise MeireportError(f"{what}: expected a non-empty dict name -> H x W image")
    out = {}
    for name, img in images.items():
        a = np.asarray(img, dtype=np.float64)
        if a.ndim != 2:
            raise MeireportError(f"{what}: '{name}' must be an H x W image, got shape {a.shape}")
        out[str(name)] = a
    return out


def _draw_mask(ax, mask: Mask, geometry: ScreenGeometry) -> None:
    x, y = geometry.px_to_deg(mask.centre[1], mask.centre[0])
    r = mask.radius * geometry.deg_per_px
    ax.add_patch(Circle((float(x), float(y)), r, fill=False, color="tab:red", lw=1.2, ls="--"))


def plot_stimuli(
    images,
    geometry: ScreenGeometry | None = None,
    masks: Mapping[str, Mask] | None = None,
    vrange: tuple[float, float] = (0.0, 1.0),
) -> Figure:
    """Stimuli side by side in screen coordinates (degrees), with their masks if given.

    Parameters
    ----------
    images : dict
        Panel title -> ``H x W`` image in [0, 1].
    geometry : ScreenGeometry, optional
        Degree mapping of the image (default ``ScreenGeometry()``).
    masks : dict, optional
        Panel title -> :class:`~meireport.mei.compare.Mask`, drawn as a dashed circle.
    vrange : tuple of float
        Grey-level range of the colour map.

    Examples
    --------
    >>> fig = plot_stimuli({"grey": np.full((60, 96), 0.5)})
    >>> fig.axes[0].get_xlabel()
    'Azimuth (deg)'
    """
    imgs = _named(images)
    geometry = ScreenGeometry() if geometry is None else geometry
    fig = Figure(figsize=(4.2 * len(imgs), 3.2), layout="constrained")
    axes = fig.subplots(1, len(imgs), squeeze=False)[0]
    for ax, (name, img) in zip(axes, imgs.items(), strict=True):
        show_stimulus(ax, img, geometry, vrange)
        if masks and name in masks:
            _draw_mask(ax, masks[name], geometry)
        ax.set_title(name)
    return fig


def plot_mei_gabor(
    mei,
    gabor,
    geometry: ScreenGeometry | None = None,
    mei_mask: Mask | None = None,
    gabor_mask: Mask | None = None,
    labels: tuple[str, str] = ("MEI", "Gabor"),
) -> Figure:
    """The MEI and the best Gabor side by side, each with its mask.

    Examples
    --------
    >>> from meireport.mei import stimulus_mask
    >>> from meireport.stimuli import render_gabor
    >>> g = render_gabor(ScreenGeometry(), 0, 0, 45, 0.08, 30)
    >>> fig = plot_mei_gabor(g, g, mei_mask=stimulus_mask(g))
    >>> [ax.get_title() for ax in fig.axes]
    ['MEI', 'Gabor']
    """
    masks = {}
    if mei_mask is not None:
        masks[labels[0]] = mei_mask
    if gabor_mask is not None:
        masks[labels[1]] = gabor_mask
    return plot_stimuli({labels[0]: mei, labels[1]: gabor}, geometry, masks)


def plot_trace(result, response_unit: str = "predicted response") -> Figure:
    """Predicted response and image std over the steps, one line per start.

    The best start is drawn thick; ``c*`` (the penalty's target std) is a dashed line.

    Parameters
    ----------
    result : MEIResult
        From :func:`meireport.mei.generate_mei`.
    response_unit : str
        Y label of the response panel (e.g. ``"predicted rate (spikes/s)"``).

    Examples
    --------
    >>> from meireport.mei import LinearModel, MEIConfig, generate_mei
    >>> res = generate_mei(LinearModel(np.eye(6)), np.random.default_rng(0).random((3, 6, 6)),
    ...                    MEIConfig(steps=5, blur_start=1.0))
    >>> [ax.get_xlabel() for ax in plot_trace(res).axes]
    ['step', 'step']
    """
    fig = Figure(figsize=(9, 3.2), layout="constrained")
    ax_r, ax_s = fig.subplots(1, 2)
    for i, st in enumerate(result.starts):
        lw, alpha = (2.0, 1.0) if i == result.best else (1.0, 0.6)
        stopped = getattr(st, "converged", False)
        label = f"{st.name} {i}" + (" (best)" if i == result.best else "") + (
            f", converged at step {st.steps_run}" if stopped else "")
        (line,) = ax_r.plot(st.response, lw=lw, alpha=alpha, label=label)
        ax_s.plot(st.std, lw=lw, alpha=alpha, label=label)
        if stopped:  # where the stopping rule ended this start
            ax_r.plot(st.steps_run, st.final_response, "o", color=line.get_color())
    ax_s.axhline(result.c_star, color="k", ls="--", lw=1, label="c* (target std)")
    ax_r.set_xlabel("step")
    ax_r.set_ylabel(response_unit)
    ax_r.set_title("response")
    ax_s.set_xlabel("step")
    ax_s.set_ylabel("image std (grey levels, 0-1)")
    ax_s.set_title("contrast")
    ax_s.legend(fontsize="small")
    ax_r.legend(fontsize="small")
    return fig


def plot_power_spectra(images, geometry: ScreenGeometry | None = None) -> Figure:
    """Log power spectra (zero frequency centred), frequency axes in cycles/degree.

    Examples
    --------
    >>> fig = plot_power_spectra({"noise": np.random.default_rng(0).random((60, 96))})
    >>> fig.axes[0].get_xlabel()
    'horizontal frequency (cycles/deg)'
    """
    imgs = _named(images)
    geometry = ScreenGeometry() if geometry is None else geometry
    fig = Figure(figsize=(4.4 * len(imgs), 3.4), layout="constrained")
    axes = fig.subplots(1, len(imgs), squeeze=False)[0]
    for ax, (name, img) in zip(axes, imgs.items(), strict=True):
        power, fy, fx = power_spectrum(img)
        fy, fx = fy / geometry.deg_per_px, fx / geometry.deg_per_px
        im = ax.imshow(np.log10(power + power.max() * 1e-8 + 1e-30), cmap="magma",
                       extent=grid_extent(fx, fy), aspect="auto")  # fy: row 0 highest
        fig.colorbar(im, ax=ax, label="log10 power (a.u.)")
        ax.set_title(name)
        ax.set_xlabel("horizontal frequency (cycles/deg)")
        ax.set_ylabel("vertical frequency (cycles/deg)")
    return fig


def plot_radial_power(images, geometry: ScreenGeometry | None = None) -> Figure:
    """Radially averaged power spectra (log scale) with each peak marked.

    Examples
    --------
    >>> fig = plot_radial_power({"noise": np.random.default_rng(0).random((60, 96))})
    >>> fig.axes[0].get_yscale()
    'log'
    """
    imgs = _named(images)
    geometry = ScreenGeometry() if geometry is None else geometry
    fig = Figure(figsize=(5, 3.4), layout="constrained")
    ax = fig.subplots()
    for name, img in imgs.items():
        f, p = radial_power(img)
        f_cpd = f / geometry.deg_per_px
        (line,) = ax.plot(f_cpd, p / max(p.max(), 1e-300), label=name)
        k = int(np.argmax(p))
        ax.axvline(f_cpd[k], color=line.get_color(), ls=":", lw=1)
    ax.set_yscale("log")
    ax.set_xlabel("spatial frequency (cycles/deg)")
    ax.set_ylabel("mean power (normalised)")
    ax.legend(fontsize="small")
    return fig


def plot_angular_power(images, n_bins: int = 16) -> Figure:
    """Angular power spectra over orientation, with each stimulus' SI_1 and SI_2.

    Examples
    --------
    >>> fig = plot_angular_power({"noise": np.random.default_rng(0).random((60, 96))})
    >>> fig.axes[0].get_xlabel()
    'orientation (deg)'
    """
    imgs = _named(images)
    fig = Figure(figsize=(5, 3.4), layout="constrained")
    ax = fig.subplots()
    for name, img in imgs.items():
        theta, p = angular_power(img, n_bins)
        si1, si2 = symmetry_index(theta, p, 1), symmetry_index(theta, p, 2)
        deg = np.degrees(np.append(theta, np.pi))
        ax.plot(
            deg,
            np.append(p, p[0]) / max(p.sum(), 1e-300),
            marker="o",
            ms=3,
            label=f"{name} (SI1 {si1:.2f}, SI2 {si2:.2f})",
        )
    ax.set_xlabel("orientation (deg)")
    ax.set_ylabel("fraction of power")
    ax.set_xticks(range(0, 181, 45))
    ax.legend(fontsize="small")
    return fig


def plot_starts(result, geometry: ScreenGeometry | None = None) -> Figure:
    """The MEI of every start (and of every ensemble member), with response and agreement.

    Each title gives the start, its final predicted response and its pixel correlation with
    the kept MEI; the figure title gives the reliability and status.

    Examples
    --------
    >>> from meireport.mei import LinearModel, MEIConfig, generate_mei
    >>> res = generate_mei(LinearModel(np.eye(6)), np.random.default_rng(0).random((3, 6, 6)),
    ...                    MEIConfig(steps=5, blur_start=1.0))
    >>> len(plot_starts(res, ScreenGeometry(shape=(6, 6))).axes)
    4
    """
    geometry = ScreenGeometry(shape=result.mei.shape) if geometry is None else geometry
    panels = [(f"{s.name} {i}", s.image, s.final_response) for i, s in enumerate(result.starts)]
    panels += [(f"member {i}", m.mei, m.response) for i, m in enumerate(result.members)]
    fig = Figure(figsize=(3.4 * len(panels), 3.0), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (name, img, resp) in zip(axes, panels, strict=True):
        show_stimulus(ax, img, geometry)
        corr = pixel_correlation(img, result.mei)
        ax.set_title(f"{name}\nresp {resp:.3g}, r = {corr:.2f}", fontsize="small")
    fig.suptitle(f"agreement between starts {result.reliability:.2f} "
                 f"(up to the carrier's phase {result.phase_reliability:.2f})")
    return fig
