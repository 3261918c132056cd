"""Stimuli in model space: natural scenes as model input, degree->pixel mapping, Gabors.

The model sees every stimulus as a grey image of ``shape`` pixels (60 x 96 by default) with
values in [0, 1], 0.5 being the mean grey of the screen. Gabor presentations of the session are
given in visual degrees; :class:`ScreenGeometry` maps them into the same pixel space, so the
simulator, the receptive-field mapping and the models all share one coordinate system.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from skimage.transform import resize

from meireport.errors import MeireportError

__all__ = [
    "MODEL_SHAPE",
    "ScreenGeometry",
    "prepare_image",
    "prepare_images",
    "render_gabor",
    "gabor_stack",
    "parse_pair",
]

MODEL_SHAPE: tuple[int, int] = (60, 96)


@dataclass(frozen=True)
class ScreenGeometry:
    """Mapping between visual degrees (Allen stimulus coordinates) and model-image pixels.

    The model image's centre is at (0, 0) degrees, the screen centre. Positive ``y_position`` is
    up on the screen, i.e. towards row 0 of the image.

    Parameters
    ----------
    deg_per_px : float
        Visual degrees covered by one model pixel (the same horizontally and vertically).
    shape : tuple of int
        Model image shape ``(rows, cols)``.

    Examples
    --------
    >>> g = ScreenGeometry(deg_per_px=1.5)
    >>> [float(v) for v in g.deg_to_px(0.0, 0.0)]
    [47.5, 29.5]
    >>> [float(v) for v in g.deg_to_px(15.0, 15.0)]
    [57.5, 19.5]
    """

    deg_per_px: float = 1.5
    shape: tuple[int, int] = MODEL_SHAPE

    def __post_init__(self) -> None:
        if not self.deg_per_px > 0:
            raise MeireportError(f"deg_per_px: must be > 0, got {self.deg_per_px}")
        if len(self.shape) != 2 or min(self.shape) < 1:
            raise MeireportError(f"shape: expected (rows, cols) >= 1, got {self.shape}")

    @property
    def centre_px(self) -> tuple[float, float]:
        """Pixel coordinates ``(col, row)`` of the screen centre (0, 0 degrees)."""
        return ((self.shape[1] - 1) / 2.0, (self.shape[0] - 1) / 2.0)

    def deg_to_px(self, x_deg, y_deg):
        """Map ``(x, y)`` in degrees to ``(col, row)`` in pixels (arrays broadcast)."""
        cx, cy = self.centre_px
        return cx + np.asarray(x_deg) / self.deg_per_px, cy - np.asarray(y_deg) / self.deg_per_px

    def px_to_deg(self, col, row):
        """Map ``(col, row)`` in pixels to ``(x, y)`` in degrees (inverse of :meth:`deg_to_px`)."""
        cx, cy = self.centre_px
        return (np.asarray(col) - cx) * self.deg_per_px, (cy - np.asarray(row)) * self.deg_per_px

    def cycles_per_px(self, cycles_per_deg):
        """Convert a spatial frequency from cycles/degree to cycles/pixel."""
        return np.asarray(cycles_per_deg) * self.deg_per_px

    def to_dict(self) -> dict:
        """Return a JSON-serialisable description."""
        return {"deg_per_px": float(self.deg_per_px), "shape": [int(s) for s in self.shape]}

    @classmethod
    def from_dict(cls, d: dict) -> ScreenGeometry:
        """Build from :meth:`to_dict` output."""
        return cls(deg_per_px=float(d["deg_per_px"]), shape=tuple(int(s) for s in d["shape"]))


def prepare_image(
    img: np.ndarray, shape: tuple[int, int] = MODEL_SHAPE, vmax: float | None = None
) -> np.ndarray:
    """Turn one natural-scene template into model input: grey, resized, scaled to [0, 1].

    Parameters
    ----------
    img : ndarray
        2-D grey (or 3-D RGB/RGBA) image.
    shape : tuple of int
        Output ``(rows, cols)``.
    vmax : float, optional
        The value that means white. Default: 255 for integer images and for float images whose
        maximum exceeds 1 (8-bit templates read as float), else 1.

    Returns
    -------
    ndarray
        ``float64`` array of ``shape`` with values in [0, 1].

    Examples
    --------
    >>> float(prepare_image(np.full((120, 192), 255, dtype=np.uint8)).max())
    1.0
    """
    a = np.asarray(img)
    if a.ndim not in (2, 3):
        raise MeireportError(f"image: expected a 2-D grey or 3-D colour array, got shape {a.shape}")
    if vmax is None:
        vmax = 255.0 if a.dtype.kind in "ui" or float(np.nanmax(a)) > 1.0 else 1.0
    if not vmax > 0:
        raise MeireportError(f"vmax: must be > 0, got {vmax}")
    a = a.astype(np.float64) / float(vmax)
    if a.ndim == 3:
        a = a[..., :3].mean(axis=-1)
    if a.shape != tuple(shape):
        a = resize(a, shape, order=1, anti_aliasing=True, mode="reflect", preserve_range=True)
    return np.clip(a, 0.0, 1.0)


def prepare_images(imgs, shape: tuple[int, int] = MODEL_SHAPE, vmax=None) -> np.ndarray:
    """Apply :func:`prepare_image` to a sequence of images; returns ``n x rows x cols``."""
    if not len(imgs):
        return np.zeros((0, *shape))
    return np.stack([prepare_image(i, shape, vmax) for i in imgs])


def parse_pair(value) -> float:
    """Read the first number of an Allen pair string such as ``"[20.0, 20.0]"``.

    Examples
    --------
    >>> parse_pair("[20.0, 20.0]")
    20.0
    >>> parse_pair(0.08)
    0.08
    """
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, str):
        text = value.strip().strip("[]()").split(",")[0]
        try:
            return float(text)
        except ValueError:
            raise MeireportError(f"expected a number or '[a, b]' pair, got {value!r}") from None
    return float(np.asarray(value).ravel()[0])


def render_gabor(
    geometry: ScreenGeometry,
    x_deg: float,
    y_deg: float,
    orientation_deg: float,
    sf_cpd: float,
    size_deg: float,
    phase: float = 0.0,
    contrast: float = 0.8,
) -> np.ndarray:
    """Render a Gabor patch in model pixel space, on mean grey (0.5).

    The envelope is Gaussian with sigma = ``size_deg / 6`` (the patch's visible diameter is about
    ``size_deg``), the carrier a cosine grating with the given spatial frequency. Orientation
    follows Allen's convention: 0 deg = vertical bars (the grating varies along x), angles grow
    counter-clockwise on the screen.

    Parameters
    ----------
    geometry : ScreenGeometry
        Degree -> pixel mapping.
    x_deg, y_deg : float
        Centre of the patch in degrees (positive y is up).
    orientation_deg : float
        Orientation of the bars in degrees.
    sf_cpd : float
        Spatial frequency in cycles per degree.
    size_deg : float
        Diameter of the patch in degrees.
    phase : float
        Carrier phase in radians.
    contrast : float
        Michelson contrast in [0, 1].

    Returns
    -------
    ndarray
        Image of ``geometry.shape`` in [0, 1].

    Examples
    --------
    >>> g = render_gabor(ScreenGeometry(), 0, 0, 0, 0.08, 20)
    >>> g.shape, round(float(g[29:31, 47:49].mean()), 2) > 0.5
    ((60, 96), True)
    """
    one = [np.reshape(np.asarray(v, dtype=np.float64), (1, 1, 1)) for v in (
        x_deg, y_deg, orientation_deg, sf_cpd, size_deg, phase, contrast)]
    return gabor_stack(geometry, *one)[0]


def gabor_stack(geometry: ScreenGeometry, x_deg, y_deg, orientation_deg, sf_cpd, size_deg,
                phase, contrast) -> np.ndarray:
    """Gabor patches for parameter arrays that broadcast to ``(n, 1, 1)``: ``n x rows x cols``.

    The one formula behind :func:`render_gabor` and :func:`meireport.mei.gabor.render_gabors`.

    Examples
    --------
    >>> p = [np.reshape(v, (-1, 1, 1)) for v in ([0.0, 10.0], 0.0, 0.0, 0.08, 20.0, 0.0, 0.8)]
    >>> gabor_stack(ScreenGeometry(), *p).shape
    (2, 60, 96)
    """
    rows, cols = geometry.shape
    cx, cy = geometry.deg_to_px(x_deg, y_deg)
    yy, xx = np.mgrid[0:rows, 0:cols].astype(np.float64)
    dx, dy = xx[None] - cx, cy - yy[None]  # dy positive up
    theta = np.deg2rad(orientation_deg)
    u = dx * np.cos(theta) + dy * np.sin(theta)
    sigma_px = size_deg / 6.0 / geometry.deg_per_px
    env = np.exp(-(dx**2 + dy**2) / (2 * sigma_px**2))
    carrier = np.cos(2 * np.pi * geometry.cycles_per_px(sf_cpd) * u + phase)
    return np.clip(0.5 + 0.5 * contrast * env * carrier, 0.0, 1.0)


# --------------------------------------------------------------------------------------------
# gabor presentations as model images (training stimuli)
# --------------------------------------------------------------------------------------------
GABOR_CONDITION_COLUMNS: tuple[str, ...] = (
    "orientation",
    "x_position",
    "y_position",
    "spatial_frequency",
    "size",
    "contrast",
    "temporal_frequency",
    "duration",
)


def drift_phases(temporal_frequency: float, duration: float, n_phases: int = 8) -> np.ndarray:
    """Carrier phases (radians) a drifting grating passes through during one presentation.

    The presentation is sampled at ``n_phases`` evenly spaced times in ``[0, duration)``; the
    phase advances by ``2 pi * temporal_frequency`` per second. At 4 Hz over 250 ms this is one
    full cycle: ``n_phases`` evenly spaced phases in ``[0, 2 pi)``.

    Examples
    --------
    >>> np.round(drift_phases(4.0, 0.25, 4) / np.pi, 3).tolist()
    [0.0, 0.5, 1.0, 1.5]
    """
    if int(n_phases) < 1:
        raise MeireportError(f"n_phases: must be >= 1, got {n_phases}")
    if not (np.isfinite(temporal_frequency) and np.isfinite(duration)) or duration < 0:
        raise MeireportError(
            f"temporal_frequency, duration: expected finite numbers and duration >= 0, "
            f"got ({temporal_frequency}, {duration})"
        )
    t = duration * np.arange(int(n_phases)) / int(n_phases)
    return 2 * np.pi * float(temporal_frequency) * t


def gabor_conditions(table) -> tuple:
    """Distinct gabor conditions of a ``gabors`` stimulus table and each presentation's condition.

    Parameters
    ----------
    table : pandas.DataFrame
        ``Session.stimulus_table("gabors")``: ``orientation``, ``x_position``, ``y_position``
        (degrees) and optionally ``spatial_frequency`` (cycles/degree), ``size`` (degrees, may be
        an Allen pair string), ``contrast``, ``temporal_frequency`` (Hz), ``duration`` (s).
        Missing optional columns take Allen's values (0.08 cpd, 20 deg, 0.8, 4 Hz, 0.25 s).

    Returns
    -------
    conditions : pandas.DataFrame
        One row per distinct condition, columns :data:`GABOR_CONDITION_COLUMNS` (numbers;
        duration rounded to 10 ms).
    index : ndarray of int64
        Condition row of each presentation (aligned with ``table``).

    Examples
    --------
    >>> import pandas as pd
    >>> t = pd.DataFrame({"orientation": [0, 90, 0], "x_position": [0, 0, 0],
    ...                   "y_position": [10, 10, 10], "size": ["[20.0, 20.0]"] * 3})
    >>> cond, idx = gabor_conditions(t)
    >>> len(cond), idx.tolist()
    (2, [0, 1, 0])
    """
    import pandas as pd

    if not isinstance(table, pd.DataFrame) or len(table) == 0:
        raise MeireportError("table: expected a non-empty DataFrame of gabor presentations")
    missing = [c for c in ("orientation", "x_position", "y_position") if c not in table]
    if missing:
        raise MeireportError(f"table: gabor table lacks column(s) {missing}")
    defaults = {
        "spatial_frequency": 0.08,
        "size": 20.0,
        "contrast": 0.8,
        "temporal_frequency": 4.0,
        "duration": 0.25,
    }
    cols = {}
    for c in GABOR_CONDITION_COLUMNS:
        if c in table:
            values = [parse_pair(v) for v in table[c]]
        else:
            values = [defaults[c]] * len(table)
        cols[c] = np.asarray(values, dtype=np.float64)
    cols["duration"] = np.round(cols["duration"], 2)
    frame = pd.DataFrame(cols)
    if frame.isna().any().any():
        raise MeireportError("table: gabor parameters contain NaN")
    cond, index = np.unique(frame.to_numpy(), axis=0, return_inverse=True)
    conditions = pd.DataFrame(cond, columns=list(GABOR_CONDITION_COLUMNS))
    return conditions, np.asarray(index, dtype=np.int64).ravel()


def render_gabor_conditions(
    conditions, geometry: ScreenGeometry | None = None, n_phases: int = 8
) -> np.ndarray:
    """Model images of drifting gabor conditions, sampled at ``n_phases`` drift phases.

    A drifting gabor is not one image: the simulator (and a neuron) averages its response over
    the phases the grating drifts through. The response to a condition is therefore modelled as
    the mean of the responses to these ``n_phases`` images — the phase-averaged *image* would be
    nearly uniform grey and is not a substitute.

    Parameters
    ----------
    conditions : pandas.DataFrame
        From :func:`gabor_conditions`.
    geometry : ScreenGeometry, optional
        Degree -> pixel mapping (default ``ScreenGeometry()``).
    n_phases : int
        Drift phases sampled per presentation (8 matches the simulator).

    Returns
    -------
    ndarray
        ``conditions x n_phases x rows x cols`` images in [0, 1] (``float32``).

    Examples
    --------
    >>> import pandas as pd
    >>> t = pd.DataFrame({"orientation": [0.0], "x_position": [0.0], "y_position": [0.0]})
    >>> render_gabor_conditions(gabor_conditions(t)[0], n_phases=4).shape
    (1, 4, 60, 96)
    """
    geometry = ScreenGeometry() if geometry is None else geometry
    out = np.empty((len(conditions), int(n_phases), *geometry.shape), dtype=np.float32)
    for i, c in enumerate(conditions.itertuples(index=False)):
        phases = drift_phases(c.temporal_frequency, c.duration, n_phases)
        for j, ph in enumerate(phases):
            out[i, j] = render_gabor(
                geometry,
                c.x_position,
                c.y_position,
                c.orientation,
                c.spatial_frequency,
                c.size,
                ph,
                c.contrast,
            )
    return out


__all__ += [
    "GABOR_CONDITION_COLUMNS",
    "drift_phases",
    "gabor_conditions",
    "render_gabor_conditions",
]
