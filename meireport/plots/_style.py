"""What the figure modules share: image extents in degrees, axis labels and trust colours."""

from __future__ import annotations

import numpy as np

from meireport.stimuli import ScreenGeometry
from meireport.trust import LABEL_COLOURS

__all__ = [
    "AZIMUTH",
    "ELEVATION",
    "MET_COLOUR",
    "TRUST_COLOURS",
    "UNKNOWN_COLOUR",
    "UNMET_COLOUR",
    "extent",
    "grid_extent",
    "show_stimulus",
    "trust_colour",
]

AZIMUTH = "Azimuth (deg)"
"""X label of every image drawn in screen coordinates."""

ELEVATION = "Elevation (deg)"
"""Y label of every image drawn in screen coordinates."""

TRUST_COLOURS = LABEL_COLOURS
"""Colour of each trust label (:data:`meireport.trust.LABEL_COLOURS`, the one definition)."""

UNKNOWN_COLOUR = "#616161"
"""Grey of a neuron without a trust label, or of a criterion that could not be checked."""

MET_COLOUR = TRUST_COLOURS["high"]
"""Colour of a criterion that is met (the green of ``high``)."""

UNMET_COLOUR = TRUST_COLOURS["low"]
"""Colour of a criterion that is not met (the red of ``low``)."""


def trust_colour(label: object) -> str:
    """Colour of a trust label, grey for a missing or unknown one.

    Parameters
    ----------
    label : object
        ``"high"``, ``"medium"``, ``"low"``, or anything else (NaN, None) for not assessed.

    Returns
    -------
    str
        A hex colour.

    Examples
    --------
    >>> trust_colour("high"), trust_colour(None)
    ('#2e7d32', '#616161')
    """
    return TRUST_COLOURS.get(label, UNKNOWN_COLOUR) if isinstance(label, str) else UNKNOWN_COLOUR


def extent(geometry: ScreenGeometry) -> list[float]:
    """``imshow`` extent ``[left, right, bottom, top]`` in degrees of a model-space image.

    The outer pixel edges (not centres) are mapped, so the image covers exactly its pixels.

    Parameters
    ----------
    geometry : ScreenGeometry
        Degree <-> pixel mapping of the image.

    Returns
    -------
    list of float
        Azimuth of the left and right edges, elevation of the bottom and top edges (degrees).

    Examples
    --------
    >>> extent(ScreenGeometry(deg_per_px=1.0, shape=(2, 4)))
    [-2.0, 2.0, -1.0, 1.0]
    """
    rows, cols = geometry.shape
    left, top = geometry.px_to_deg(-0.5, -0.5)
    right, bottom = geometry.px_to_deg(cols - 0.5, rows - 0.5)
    return [float(left), float(right), float(bottom), float(top)]


def grid_extent(x, y, default_step: float = 1.0) -> list[float]:
    """``imshow`` extent ``[left, right, bottom, top]`` of a map sampled on a regular grid.

    For a map whose columns sit at ``x`` and rows at ``y``, drawn with ``origin="upper"`` and
    its first row at the largest ``y`` (as :class:`~meireport.select.RFMaps` stores them).

    Parameters
    ----------
    x, y : array_like
        Centre of each column and of each row (any unit, e.g. degrees or cycles/degree).
    default_step : float, default 1.0
        Grid step assumed along an axis with a single sample.

    Returns
    -------
    list of float
        Half a step beyond the outermost centres on each side.

    Examples
    --------
    >>> grid_extent([-10.0, 0.0, 10.0], [5.0, -5.0])
    [-15.0, 15.0, -10.0, 10.0]
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    dx = abs(float(np.diff(x).mean())) / 2 if len(x) > 1 else default_step / 2
    dy = abs(float(np.diff(y).mean())) / 2 if len(y) > 1 else default_step / 2
    return [float(x.min() - dx), float(x.max() + dx), float(y.min() - dy), float(y.max() + dy)]


def show_stimulus(ax, image, geometry: ScreenGeometry, vrange: tuple[float, float] = (0.0, 1.0)):
    """Draw a grey-level image on ``ax`` in screen coordinates, both axes labelled in degrees.

    Parameters
    ----------
    ax : matplotlib.axes.Axes
        Where to draw.
    image : array_like
        ``H x W`` image, the shape of ``geometry``.
    geometry : ScreenGeometry
        Degree <-> pixel mapping of the image.
    vrange : tuple of float, default (0, 1)
        Grey-level range of the colour map.

    Returns
    -------
    matplotlib.image.AxesImage

    Examples
    --------
    >>> from matplotlib.figure import Figure
    >>> ax = Figure().add_subplot()
    >>> _ = show_stimulus(ax, np.zeros((60, 96)), ScreenGeometry())
    >>> ax.get_xlabel(), ax.get_ylabel()
    ('Azimuth (deg)', 'Elevation (deg)')
    """
    im = ax.imshow(image, cmap="gray", vmin=vrange[0], vmax=vrange[1], extent=extent(geometry))
    ax.set_xlabel(AZIMUTH)
    ax.set_ylabel(ELEVATION)
    return im
