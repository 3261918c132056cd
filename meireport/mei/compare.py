"""Comparison metrics of MEIs and Gabors, and equal footing of the stimuli compared.

Masks, luminance and contrast, power spectra, symmetry indices, pixel and phase-invariant
correlations, and the footing (same mean and contrast) every compared stimulus is rescaled to.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from meireport.errors import MeireportError
from meireport.mei._checks import as_image, as_stack

__all__ = [
    "Mask",
    "energy_centre",
    "energy_radius",
    "circular_mask",
    "stimulus_mask",
    "apply_mask",
    "luminance",
    "contrast",
    "power_spectrum",
    "angular_power",
    "symmetry_index",
    "symmetry_indices",
    "preferred_orientation",
    "radial_power",
    "peak_frequency",
    "pixel_correlation",
    "phase_invariant_correlation",
    "quadrature",
    "footing",
    "equalize",
    "clip_fraction",
    "describe",
]


# --------------------------------------------------------------------------------------------
# masks, luminance, contrast
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Mask:
    """A circular mask: its boolean image, centre ``(row, col)`` and radius in pixels."""

    mask: np.ndarray
    centre: tuple[float, float]
    radius: float


def _energy(a: np.ndarray, background: float | None) -> np.ndarray:
    bg = float(np.median(a)) if background is None else float(background)
    return (a - bg) ** 2


def energy_centre(image, background: float | None = None) -> tuple[float, float]:
    """Centre ``(row, col)`` of the stimulus' energy ``(x - background)^2``.

    ``background`` defaults to the image's median (the grey most of an MEI or Gabor sits on).
    A flat image's centre is the image centre.

    Examples
    --------
    >>> img = np.full((20, 30), 0.5); img[4:7, 20:23] = 1.0
    >>> energy_centre(img)
    (5.0, 21.0)
    """
    a = as_image(image)
    e = _energy(a, background)
    total = e.sum()
    if total <= 0:
        return ((a.shape[0] - 1) / 2.0, (a.shape[1] - 1) / 2.0)
    rows, cols = np.indices(a.shape)
    return (float((rows * e).sum() / total), float((cols * e).sum() / total))


def energy_radius(
    image, centre: tuple[float, float] | None = None, fraction: float = 0.9, background=None
) -> float:
    """Smallest radius (pixels) around ``centre`` holding ``fraction`` of the stimulus' energy.

    Examples
    --------
    >>> img = np.full((41, 41), 0.5); img[20, 17] = img[20, 23] = 1.0
    >>> energy_radius(img)
    3.0
    """
    a = as_image(image)
    if not 0 < fraction <= 1:
        raise MeireportError(f"fraction: expected a value in (0, 1], got {fraction}")
    centre = energy_centre(a, background) if centre is None else centre
    e = _energy(a, background).ravel()
    rows, cols = np.indices(a.shape)
    dist = np.hypot(rows - centre[0], cols - centre[1]).ravel()
    if e.sum() <= 0:
        return float(min(a.shape) / 2.0)
    order = np.argsort(dist, kind="stable")
    cum = np.cumsum(e[order]) / e.sum()
    return float(dist[order][np.searchsorted(cum, fraction - 1e-12)])


def circular_mask(shape: tuple[int, int], centre: tuple[float, float], radius: float) -> np.ndarray:
    """Boolean disk of ``radius`` pixels around ``centre = (row, col)``.

    Examples
    --------
    >>> int(circular_mask((11, 11), (5, 5), 2).sum())
    13
    """
    if not radius >= 0:
        raise MeireportError(f"radius: expected >= 0 pixels, got {radius}")
    rows, cols = np.indices(tuple(shape))
    return np.hypot(rows - centre[0], cols - centre[1]) <= radius


def stimulus_mask(
    image, radius: float | None = None, fraction: float = 0.9, background: float | None = None
) -> Mask:
    """Circular mask centred on the stimulus' energy centre.

    Parameters
    ----------
    image : array_like
        ``H x W`` stimulus.
    radius : float, optional
        Fixed radius in pixels (the seed used 12); default: :func:`energy_radius` at
        ``fraction`` (at least 2 pixels).
    fraction : float
        Energy fraction inside the mask when the radius comes from the stimulus.
    background : float, optional
        Grey level the energy is measured from (default: the image's median).

    Examples
    --------
    >>> img = np.full((30, 40), 0.5); img[10:13, 25:28] = 0.0
    >>> m = stimulus_mask(img, radius=5)
    >>> m.centre, int(m.mask.sum())
    ((11.0, 26.0), 81)
    """
    a = as_image(image)
    centre = energy_centre(a, background)
    if radius is None:
        radius = max(energy_radius(a, centre, fraction, background), 2.0)
    return Mask(circular_mask(a.shape, centre, float(radius)), centre, float(radius))


def _mask_of(mask, shape) -> np.ndarray:
    if mask is None:
        return np.ones(shape, dtype=bool)
    m = mask.mask if isinstance(mask, Mask) else np.asarray(mask, dtype=bool)
    if m.shape != tuple(shape):
        raise MeireportError(f"mask: expected shape {tuple(shape)}, got {m.shape}")
    if not m.any():
        raise MeireportError("mask: expected at least one pixel inside, got an empty mask")
    return m


def apply_mask(image, mask, background: float = 0.5) -> np.ndarray:
    """The image seen through ``mask``: ``background`` outside it.

    Examples
    --------
    >>> apply_mask(np.ones((2, 2)), np.eye(2, dtype=bool), 0.5).tolist()
    [[1.0, 0.5], [0.5, 1.0]]
    """
    a = as_image(image)
    return np.where(_mask_of(mask, a.shape), a, float(background))


def luminance(image, mask=None) -> float:
    """Mean pixel value inside the mask (divided by the mask's pixel count).

    Examples
    --------
    >>> img = np.full((21, 21), 0.2)
    >>> luminance(img, circular_mask(img.shape, (10, 10), 6))
    0.2
    """
    a = as_image(image)
    return float(a[_mask_of(mask, a.shape)].mean())


def contrast(image, mask=None) -> float:
    """Standard deviation of the pixels inside the mask (RMS contrast).

    Examples
    --------
    >>> contrast(np.array([[0.0, 1.0], [0.0, 1.0]]))
    0.5
    """
    a = as_image(image)
    return float(a[_mask_of(mask, a.shape)].std())


# --------------------------------------------------------------------------------------------
# spectra
# --------------------------------------------------------------------------------------------
def power_spectrum(image, window: str | None = "hann") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Power spectrum of the mean-subtracted (and tapered) image, zero frequency centred.

    With the Hann taper the subtracted mean is the taper-weighted one, so the zero-frequency
    term (the mean luminance, which says nothing about the pattern) is exactly 0.

    Parameters
    ----------
    image : array_like
        ``H x W`` image.
    window : {"hann", None}
        Taper applied before the FFT (limits the leakage of the image's edges).

    Returns
    -------
    power : ndarray
        ``H x W`` power, ``fftshift``-ed.
    fy, fx : ndarray
        Frequencies (cycles/pixel) of the rows and columns of ``power``; ``fy`` is positive
        *up* the screen (row 0 is the top), so the angle of ``(fx, fy)`` is the orientation.

    Examples
    --------
    >>> x = np.cos(2 * np.pi * 0.25 * np.arange(16))[None, :].repeat(8, 0)
    >>> p, fy, fx = power_spectrum(x, window=None)
    >>> r, c = np.unravel_index(np.argmax(p), p.shape)
    >>> float(abs(fx[c])), float(abs(fy[r]))
    (0.25, 0.0)
    """
    a = as_image(image)
    if window not in ("hann", None):
        raise MeireportError(f"window: expected 'hann' or None, got {window!r}")
    z = a - a.mean()
    if window == "hann":
        w = np.outer(np.hanning(a.shape[0]), np.hanning(a.shape[1]))
        z = (a - np.sum(w * a) / np.sum(w)) * w  # zero DC after tapering too
    power = np.abs(np.fft.fftshift(np.fft.fft2(z))) ** 2
    fy = -np.fft.fftshift(np.fft.fftfreq(a.shape[0]))
    fx = np.fft.fftshift(np.fft.fftfreq(a.shape[1]))
    return power, fy, fx


def _polar(shape, fy, fx):
    fyy, fxx = np.meshgrid(fy, fx, indexing="ij")
    return np.hypot(fyy, fxx), np.mod(np.arctan2(fyy, fxx), np.pi)


def _band(radius: np.ndarray, f_min: float, f_max: float) -> np.ndarray:
    return (radius > 0) & (radius >= f_min) & (radius <= f_max)


def angular_power(
    image,
    n_bins: int = 16,
    window: str | None = "hann",
    f_min: float = 0.0,
    f_max: float = 0.5,
) -> tuple[np.ndarray, np.ndarray]:
    """Mean power per orientation bin over ``[0, 180)`` deg (the spectrum is point-symmetric).

    Frequencies with ``f_min <= |f| <= f_max`` cycles/pixel take part (DC excluded; the
    default ``f_max`` keeps the disk every orientation reaches). Bins are ``pi / n_bins`` wide
    (the seed's pi / 16 for the default) and centred on multiples of ``pi / n_bins``, so that
    the cardinal and oblique axes fall in the middle of a bin (the first bin wraps around 0).

    Returns
    -------
    theta : ndarray
        Bin centres in radians, ``k * pi / n_bins``.
    power : ndarray
        Mean power of the bin (0 where a bin holds no frequency).

    Examples
    --------
    >>> theta, p = angular_power(np.random.default_rng(0).random((32, 32)), n_bins=4)
    >>> np.degrees(theta).tolist(), p.shape
    ([0.0, 45.0, 90.0, 135.0], (4,))
    """
    if int(n_bins) != n_bins or n_bins < 2:
        raise MeireportError(f"n_bins: expected an integer >= 2, got {n_bins}")
    power, fy, fx = power_spectrum(image, window)
    radius, theta = _polar(power.shape, fy, fx)
    keep = _band(radius, f_min, f_max)
    idx = np.mod(np.round(theta[keep] / np.pi * n_bins).astype(int), n_bins)
    total = np.bincount(idx, weights=power[keep], minlength=n_bins)
    count = np.bincount(idx, minlength=n_bins)
    mean = np.divide(total, count, out=np.zeros(n_bins), where=count > 0)
    return np.arange(n_bins) * np.pi / n_bins, mean


def symmetry_index(theta, power, n: int) -> float:
    """``SI_n = |sum P_theta exp(i 2 n theta)| / sum P_theta`` of an angular power spectrum.

    0 means no n-fold symmetry (isotropic), 1 a perfectly n-fold symmetric spectrum (a single
    grating is 1 for every n). Shifting every angle by pi changes nothing.

    Examples
    --------
    >>> theta = np.linspace(0, np.pi, 8, endpoint=False)
    >>> round(symmetry_index(theta, np.ones(8), 1), 12), symmetry_index(theta, theta == 0, 1)
    (0.0, 1.0)
    """
    p = np.asarray(power, dtype=np.float64)
    t = np.asarray(theta, dtype=np.float64)
    if p.shape != t.shape or p.ndim != 1:
        raise MeireportError(
            f"theta/power: expected two 1-D arrays of one length, got {t.shape} and {p.shape}"
        )
    if int(n) != n or n < 1:
        raise MeireportError(f"n: expected an integer >= 1, got {n}")
    total = p.sum()
    if total <= 0:
        return 0.0
    return float(np.abs(np.sum(p * np.exp(2j * n * t))) / total)


def symmetry_indices(image, n_bins: int = 16, window: str | None = "hann") -> tuple[float, float]:
    """``(SI_1, SI_2)`` of the image's angular power spectrum.

    Examples
    --------
    >>> yy, xx = np.mgrid[0:64, 0:64]
    >>> si1, si2 = symmetry_indices(np.cos(2 * np.pi * 0.125 * xx))
    >>> si1 > 0.95 and si2 > 0.85
    True
    """
    theta, p = angular_power(image, n_bins, window)
    return symmetry_index(theta, p, 1), symmetry_index(theta, p, 2)


def preferred_orientation(image, window: str | None = "hann", f_max: float = 0.5) -> float:
    """Dominant orientation in degrees, ``[0, 180)``, Allen convention (0 = vertical bars).

    The axial mean of the spectrum: ``arg(sum_f P_f exp(2 i theta_f)) / 2`` over every
    frequency with ``0 < |f| <= f_max`` -- invariant to ``theta + pi`` by construction.

    Examples
    --------
    >>> from meireport.stimuli import ScreenGeometry, render_gabor
    >>> g = render_gabor(ScreenGeometry(), 0, 0, 30, 0.08, 40)
    >>> round(preferred_orientation(g))
    30
    """
    power, fy, fx = power_spectrum(image, window)
    radius, theta = _polar(power.shape, fy, fx)
    keep = _band(radius, 0.0, f_max)
    z = np.sum(power[keep] * np.exp(2j * theta[keep]))
    angle = float(np.mod(np.degrees(np.angle(z)) / 2.0, 180.0))
    return 0.0 if angle > 180.0 - 1e-6 else angle


def radial_power(
    image, bin_width: float | None = None, window: str | None = "hann", f_max: float = 0.5
) -> tuple[np.ndarray, np.ndarray]:
    """Radially averaged power spectrum (DC excluded).

    Parameters
    ----------
    image : array_like
        ``H x W`` image.
    bin_width : float, optional
        Ring width in cycles/pixel (default ``1 / min(H, W)``, the coarser grid step, so that
        every ring holds frequencies of every orientation).
    window : {"hann", None}
        Taper (see :func:`power_spectrum`).
    f_max : float
        Highest frequency kept, cycles/pixel.

    Returns
    -------
    freq : ndarray
        Ring centres ``k * bin_width`` in cycles/pixel (rings holding no frequency are dropped).
    power : ndarray
        Mean power of each ring.

    Examples
    --------
    >>> f, p = radial_power(np.random.default_rng(0).random((32, 32)))
    >>> float(f[0]), bool(f.max() <= 0.5)
    (0.03125, True)
    """
    power, fy, fx = power_spectrum(image, window)
    radius, _ = _polar(power.shape, fy, fx)
    width = 1.0 / min(power.shape) if bin_width is None else float(bin_width)
    if not width > 0:
        raise MeireportError(f"bin_width: expected > 0 cycles/pixel, got {bin_width}")
    keep = _band(radius, 0.0, f_max)
    idx = np.round(radius[keep] / width).astype(int)
    total = np.bincount(idx, weights=power[keep])
    count = np.bincount(idx)
    used = count > 0
    return (np.arange(len(count)) * width)[used], total[used] / count[used]


def peak_frequency(image, geometry=None, bin_width: float | None = None) -> dict:
    """Peak of the radially averaged power spectrum, in cycles/pixel and cycles/degree.

    Rings are ``bin_width`` wide (default ``1 / min(H, W)``, the coarser grid step, so that
    every ring holds frequencies of every orientation); the peak ring's centre is refined by
    the power-weighted mean frequency within 1.5 rings of it (gratings: within 2 %).
    For a small patch the radial *average* peaks below the carrier frequency (a ring's mean
    power dilutes with its circumference); gratings and large Gabors peak at their carrier.

    Examples
    --------
    >>> from meireport.stimuli import ScreenGeometry
    >>> x = np.cos(2 * np.pi * 0.1 * np.arange(96))[None, :].repeat(60, 0)
    >>> pk = peak_frequency(x, ScreenGeometry(deg_per_px=1.5))
    >>> round(pk["cycles_per_px"], 2), round(pk["cycles_per_deg"], 2)
    (0.1, 0.07)
    """
    a = as_image(image)
    width = 1.0 / min(a.shape) if bin_width is None else float(bin_width)
    freq, p = radial_power(a, width)
    if len(p) == 0 or p.max() <= 0:
        return {"cycles_per_px": float("nan"), "cycles_per_deg": float("nan")}
    power, fy, fx = power_spectrum(a)
    radius, _ = _polar(power.shape, fy, fx)
    near = _band(radius, 0.0, 0.5) & (np.abs(radius - freq[int(np.argmax(p))]) <= 1.5 * width)
    cpp = float(np.sum(radius[near] * power[near]) / np.sum(power[near]))
    cpd = cpp / geometry.deg_per_px if geometry is not None else float("nan")
    return {"cycles_per_px": cpp, "cycles_per_deg": float(cpd)}


# --------------------------------------------------------------------------------------------
# similarity
# --------------------------------------------------------------------------------------------
def pixel_correlation(a, b, mask=None) -> float:
    """Pearson correlation of two images' pixels (inside ``mask`` if given); 0 if one is flat.

    Examples
    --------
    >>> x = np.arange(6.0).reshape(2, 3)
    >>> pixel_correlation(x, 2 * x + 1), pixel_correlation(x, -x)
    (1.0, -1.0)
    """
    x, y = as_image(a, "a"), as_image(b, "b")
    if x.shape != y.shape:
        raise MeireportError(f"b: expected the shape of a {x.shape}, got {y.shape}")
    m = _mask_of(mask, x.shape)
    u, v = x[m] - x[m].mean(), y[m] - y[m].mean()
    den = np.linalg.norm(u) * np.linalg.norm(v)
    return float(np.clip(u @ v / den, -1.0, 1.0)) if den > 0 else 0.0


def quadrature(a) -> np.ndarray:
    """Hilbert transform of ``a`` along its preferred orientation (shifts the carrier by 90 deg).

    Zero-mean; ``a - mean(a)`` and its quadrature span every carrier phase of ``a``.

    Examples
    --------
    >>> from meireport.stimuli import ScreenGeometry, render_gabor
    >>> g0 = render_gabor(ScreenGeometry(), 0, 0, 0, 0.1, 30, phase=0.0)
    >>> g1 = render_gabor(ScreenGeometry(), 0, 0, 0, 0.1, 30, phase=np.pi / 2)
    >>> round(abs(pixel_correlation(quadrature(g0), g1)), 2)
    1.0
    """
    a = as_image(a)
    z = a - a.mean()
    theta = np.radians(preferred_orientation(a, window=None))
    fy = -np.fft.fftfreq(a.shape[0])[:, None]  # up-positive, as in power_spectrum
    fx = np.fft.fftfreq(a.shape[1])[None, :]
    sign = np.sign(fx * np.cos(theta) + fy * np.sin(theta))
    return np.real(np.fft.ifft2(np.fft.fft2(z) * (-1j) * sign))


def phase_invariant_correlation(a, b) -> float:
    """Best correlation of ``a`` with any carrier phase of ``b`` (a complex cell's MEI).

    ``b`` and its quadrature twin (Hilbert transform along its preferred orientation) span
    every phase of ``b``'s carrier; the result is the norm of ``a``'s correlations with the two,
    averaged over both directions ``(a, b)``, ``(b, a)``. Equal to 1 for two Gabors that differ
    only by phase, near 0 for unrelated images.

    Examples
    --------
    >>> from meireport.stimuli import ScreenGeometry, render_gabor
    >>> g0 = render_gabor(ScreenGeometry(), 0, 0, 45, 0.1, 30, phase=0.0)
    >>> g1 = render_gabor(ScreenGeometry(), 0, 0, 45, 0.1, 30, phase=np.pi / 2)
    >>> round(pixel_correlation(g0, g1), 1), round(phase_invariant_correlation(g0, g1), 1)
    (0.0, 1.0)
    """
    x, y = as_image(a, "a"), as_image(b, "b")
    if x.shape != y.shape:
        raise MeireportError(f"b: expected the shape of a {x.shape}, got {y.shape}")

    def one_way(u, v):
        hv = quadrature(v)
        c1 = pixel_correlation(u, v)
        c2 = pixel_correlation(u, hv) if np.ptp(hv) > 0 else 0.0
        return min(float(np.hypot(c1, c2)), 1.0)

    return 0.5 * (one_way(x, y) + one_way(y, x))


# --------------------------------------------------------------------------------------------
# equal footing
# --------------------------------------------------------------------------------------------
def footing(images) -> tuple[float, float]:
    """``(mean, c*)`` of the training images: mean luminance and mean per-image std.

    Examples
    --------
    >>> footing(np.stack([np.zeros((2, 2)), np.array([[0.0, 1.0], [0.0, 1.0]])]))
    (0.25, 0.25)
    """
    a = as_stack(images, "images")
    flat = a.reshape(len(a), -1)
    return float(flat.mean()), float(flat.std(axis=1).mean())


def equalize(
    stimuli, mean: float, std: float, clip: bool = True, n_iter: int = 60, tol: float = 1e-8
) -> np.ndarray:
    """Put every stimulus at the same mean and standard deviation (equal footing).

    Each image ``x`` becomes ``o + g * (x - mean(x))``. Without clipping, ``o = mean`` and
    ``g = std / std(x)``. With ``clip`` (default), the result is clipped to the screen's
    [0, 1] and the offset and gain are solved for (safeguarded Newton and secant steps, at
    most ``n_iter`` each, to ``tol``) so that the *clipped* image has the target mean and
    std; a std no [0, 1] image of that
    shape can reach is approached as closely as a gain of 1e6 allows. A flat image stays flat
    at ``mean``.

    Parameters
    ----------
    stimuli : array_like
        ``H x W`` or ``n x H x W``.
    mean, std : float
        Target mean and standard deviation (e.g. :func:`footing` of the training images).
    clip : bool
        Keep values in [0, 1].
    n_iter : int
        Most solver steps for the offset and for the gain.
    tol : float
        Accepted error on the mean and the std.

    Returns
    -------
    ndarray
        Same shape as ``stimuli``.

    Examples
    --------
    >>> x = np.random.default_rng(0).random((3, 20, 20))
    >>> y = equalize(x, 0.45, 0.1)
    >>> np.round(y.mean(axis=(1, 2)), 6).tolist(), np.round(y.std(axis=(1, 2)), 6).tolist()
    ([0.45, 0.45, 0.45], [0.1, 0.1, 0.1])
    """
    a = np.asarray(stimuli, dtype=np.float64)
    single = a.ndim == 2
    a = as_stack(a)
    if not (0 <= mean <= 1 or not clip):
        raise MeireportError(f"mean: expected a value in [0, 1] (clip=True), got {mean}")
    if not std >= 0:
        raise MeireportError(f"std: expected >= 0, got {std}")
    out = _equalize_stack(a, float(mean), float(std), clip, int(n_iter), float(tol))
    return out[0] if single else out


def _equalize_stack(a, mean, std, clip, n_iter, tol) -> np.ndarray:
    n = len(a)
    z = (a - a.mean(axis=(1, 2), keepdims=True)).reshape(n, -1)
    s = z.std(axis=1)
    flat = (s == 0) | (std == 0)
    gain = np.where(flat, 0.0, std / np.where(flat, 1.0, s))
    y = mean + gain[:, None] * z
    y[flat] = mean
    if not clip:
        return y.reshape(a.shape)
    need = ~flat & ((y.min(axis=1) < 0) | (y.max(axis=1) > 1))  # the rest need no clipping
    if need.any():
        y[need] = _clipped_footing(z[need], gain[need], mean, std, n_iter, tol)
    return y.reshape(a.shape)


def _clipped_footing(z, gain, mean, std, n_iter, tol) -> np.ndarray:
    clipped = _ClippedMoments(z)
    offset = clipped.solve_offset(gain, mean, n_iter, tol)
    if np.any(clipped(offset, gain)[1] < std - tol):
        gain = clipped.solve_gain(gain, mean, std, n_iter, tol)
        offset = clipped.solve_offset(gain, mean, n_iter, tol)
    return np.clip(offset[:, None] + gain[:, None] * z, 0.0, 1.0)


class _ClippedMoments:
    """Mean and std of ``clip(o + g * z, 0, 1)`` for every row of ``z``, in O(log N) each.

    Rows are sorted once; prefix sums of ``z`` and ``z^2`` give the unclipped part's moments
    and binary search the clipped counts.
    """

    def __init__(self, z: np.ndarray):
        self.n, self.m = z.shape
        zs = np.sort(z, axis=1)
        self.lo, self.hi = zs[:, 0], zs[:, -1]
        zero = np.zeros((self.n, 1))
        self.c1 = np.concatenate([zero, np.cumsum(zs, axis=1)], axis=1)
        self.c2 = np.concatenate([zero, np.cumsum(zs**2, axis=1)], axis=1)
        self.band = 4.0 * (1.0 + np.abs(zs).max())
        self.rows = np.arange(self.n)
        self.flat = (zs + self.band * self.rows[:, None]).ravel()

    def _count_below(self, t: np.ndarray, side: str) -> np.ndarray:
        t = np.clip(t, -self.band / 4, self.band / 4) + self.band * self.rows
        return np.searchsorted(self.flat, t, side=side) - self.rows * self.m

    def __call__(self, o: np.ndarray, g: np.ndarray):
        """Mean, std and unclipped fraction of each clipped row."""
        g = np.maximum(g, 1e-300)
        k0 = self._count_below(-o / g, "right")  # o + g z <= 0
        k1 = self.m - self._count_below((1.0 - o) / g, "left")  # o + g z >= 1
        k1 = np.minimum(k1, self.m - k0)
        j = self.m - k1
        s1 = self.c1[self.rows, j] - self.c1[self.rows, k0]
        s2 = self.c2[self.rows, j] - self.c2[self.rows, k0]
        mid = j - k0
        m1 = (mid * o + g * s1 + k1) / self.m
        m2 = (mid * o**2 + 2 * o * g * s1 + g**2 * s2 + k1) / self.m
        return m1, np.sqrt(np.maximum(m2 - m1**2, 0.0)), mid / self.m

    def solve_offset(self, g: np.ndarray, mean: float, n_iter: int, tol: float) -> np.ndarray:
        """Offsets giving the clipped rows ``mean``, by safeguarded Newton steps.

        The mean is piecewise linear and non-decreasing in the offset, with slope the
        unclipped fraction.
        """
        lo, hi = -g * self.hi, 1.0 - g * self.lo
        o = np.clip(np.full_like(g, mean), lo, hi)
        for _ in range(n_iter):
            m1, _, slope = self(o, g)
            err = m1 - mean
            if np.all(np.abs(err) < tol):
                break
            lo, hi = np.where(err < 0, o, lo), np.where(err > 0, o, hi)
            step = o - err / np.where(slope > 0, slope, np.nan)
            inside = np.isfinite(step) & (step > lo) & (step < hi)
            o = np.where(np.abs(err) < tol, o, np.where(inside, step, (lo + hi) / 2))
        return o

    def solve_gain(self, g0, mean: float, std: float, n_iter: int, tol: float) -> np.ndarray:
        """Gains reaching ``std`` once the mean is matched (bracketed secant on log gain).

        Clipping never raises the std (clip is 1-Lipschitz), so the unclipped gain ``g0`` is
        a lower bound; targets out of reach end at the largest gain tried (1e6).
        """
        g0 = np.where(g0 > 0, g0, 1.0)
        lo, hi = np.log(g0), np.full_like(g0, np.log(1e6))
        f_lo = self(self.solve_offset(g0, mean, n_iter, tol), g0)[1] - std
        f_hi = self(self.solve_offset(np.exp(hi), mean, n_iter, tol), np.exp(hi))[1] - std
        reachable = f_hi >= 0
        x = lo
        for k in range(n_iter):
            secant = lo - f_lo * (hi - lo) / np.where(f_hi != f_lo, f_hi - f_lo, np.nan)
            bisect = (lo + hi) / 2
            x = np.where(
                np.isfinite(secant) & (secant > lo) & (secant < hi) & (k % 3 != 2), secant, bisect
            )
            f = self(self.solve_offset(np.exp(x), mean, n_iter, tol), np.exp(x))[1] - std
            if np.all(~reachable | (np.abs(f) < tol)):
                break
            low = f < 0
            lo, f_lo = np.where(low, x, lo), np.where(low, f, f_lo)
            hi, f_hi = np.where(low, hi, x), np.where(low, f_hi, f)
        return np.where(reachable, np.exp(x), 1e6)


def clip_fraction(image, tol: float = 1e-9) -> float:
    """Fraction of pixels at the screen's limits (0 or 1, within ``tol``): saturated pixels.

    Examples
    --------
    >>> clip_fraction(np.array([[0.0, 0.5], [1.0, 0.7]]))
    0.5
    """
    a = as_image(image)
    return float(np.mean((a <= tol) | (a >= 1.0 - tol)))


# --------------------------------------------------------------------------------------------
# one call for the report
# --------------------------------------------------------------------------------------------
def describe(image, geometry=None, radius: float | None = None, fraction: float = 0.9,
             mask: Mask | None = None) -> dict:
    """Every comparison metric of one stimulus, as a flat dict.

    Keys: ``centre_row``, ``centre_col``, ``radius`` (the mask, pixels), ``luminance``,
    ``contrast`` (inside the mask), ``clip_fraction`` (of the whole image), ``si1``, ``si2``,
    ``orientation_deg``, ``peak_sf_cpp``, ``peak_sf_cpd`` (NaN without ``geometry``). The mask
    is ``mask`` when given (e.g. the unit's RF mask, :func:`meireport.mei.rf.rf_mask`, the same
    for every stimulus compared), else one around the stimulus' own energy.

    Examples
    --------
    >>> from meireport.stimuli import ScreenGeometry, render_gabor
    >>> d = describe(render_gabor(ScreenGeometry(), 0, 0, 90, 0.1, 60), ScreenGeometry())
    >>> round(d["orientation_deg"]), round(d["peak_sf_cpd"], 1), round(d["luminance"], 1)
    (90, 0.1, 0.5)
    """
    a = as_image(image)
    m = stimulus_mask(a, radius, fraction) if mask is None else mask
    si1, si2 = symmetry_indices(a)
    pk = peak_frequency(a, geometry)
    return {
        "centre_row": m.centre[0],
        "centre_col": m.centre[1],
        "radius": m.radius,
        "luminance": luminance(a, m),
        "contrast": contrast(a, m),
        "clip_fraction": clip_fraction(a),
        "si1": si1,
        "si2": si2,
        "orientation_deg": preferred_orientation(a),
        "peak_sf_cpp": pk["cycles_per_px"],
        "peak_sf_cpd": pk["cycles_per_deg"],
    }
