"""Diverse Exciting Inputs (DEIs): several images that each drive a unit nearly as well as its MEI.

Starting from a unit's MEI (:func:`meireport.mei.synthesis.generate_mei`), a small batch of
``k`` images is optimised together (after Cadena et al. 2018, "Diverse feature visualizations
reveal invariances"; Ding et al. 2023, diverse exciting images). Each step ascends

    J(x_1..x_k) = w * k * D(x) - sum_i max(0, f + m - r(x_i) / r_MEI)^2

where ``D`` (:func:`diversity`) is the mean pairwise Euclidean distance of the images once
standardised (zero mean, unit norm: ``sqrt(2 - 2 rho_ij)`` for a pixel correlation
``rho_ij``), so that ``k * D`` sums over the images each one's mean distance to the others;
``f`` is the fraction of the MEI's response each image must keep, ``m`` a small margin above it
(the squared hinge settles a little below its knee) and ``w`` the diversity weight. A distance
that is not squared is largest for images spread evenly (a regular polygon of carrier phases for
a complex cell), where a squared distance or a mean correlation would be as content with two
opposite pairs. The gradient is preconditioned in the Fourier domain as in the MEI loop
(``1 / |f|^a``), normalised per image, and every step is projected back onto the MEI's set
(:func:`meireport.mei.synthesis.project`: the MEI's mean, its contrast ``c*``, pixels in
[0, 1]), so each DEI is compared on the same footing as the MEI.

The images start from the MEI moved by a few seeded pixels (``init="shift"``) plus smoothed
seeded noise. A shift changes a complex cell's carrier phase at no cost, which the diversity
term then spreads in tens of steps; from the MEI plus noise alone (``init="noise"``) the phases
first have to grow out of the noise (about 150 steps). A simple cell's hinge pulls shifted
starts back to its MEI.

What the DEIs show is the unit's invariance: a phase-invariant (energy, complex) unit's DEIs
take different carrier phases (:func:`phase_span`), a rectified-linear (simple) unit's stay
close to its MEI.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
from scipy import ndimage

from meireport.errors import MeireportError
from meireport.mei._checks import as_stack, check
from meireport.mei.compare import equalize, pixel_correlation
from meireport.mei.ops import fourier_filter, gaussian_blur, precondition
from meireport.mei.synthesis import MEIResult, agreement, project
from meireport.mei.targets import Model, as_model, model_dtype, predict, responses
from meireport.models.device import model_device

__all__ = [
    "INITS",
    "DEIConfig",
    "DEIResult",
    "diversity",
    "start_batch",
    "diverse_meis",
    "phase_span",
]

INITS = ("noise", "shift", "starts")
_DTYPES = ("auto", "float32", "float64")
_FLOATS = ("fraction", "step_size", "step_decay", "diversity_weight", "margin", "init_noise",
           "init_shift", "noise_sigma", "fourier_exponent")


# --------------------------------------------------------------------------------------------
# configuration and result
# --------------------------------------------------------------------------------------------
def _is_int(v, low: int) -> bool:
    return isinstance(v, int | np.integer) and not isinstance(v, bool) and v >= low


@dataclass(frozen=True)
class DEIConfig:
    """Every constant of the DEI loop.

    Parameters
    ----------
    n_images : int
        Images optimised together (``k``).
    fraction : float
        Fraction of the MEI's predicted response each DEI must reach, in (0, 1].
    steps : int
        Gradient steps (the whole batch at once). At the default 40, 60 x 96 images take
        ~0.3 s for an energy model and ~2-5 s for the pipeline's CNN on one CPU core; starts
        without shifts (``init="noise"``) need ~150 to spread a complex cell's phases.
    step_size : float
        Root-mean-square pixel change of an image at the first step, in units of the set's
        contrast ``c*`` (the gradient is normalised per image).
    step_decay : float
        Step size at the last step relative to the first, in (0, 1]; it decays geometrically,
        so that the images settle where the hinge and the diversity term balance.
    diversity_weight : float
        ``w``: weight of the diversity term against the response hinge (> 0). Larger spreads
        the images further and lets them settle further below ``fraction + margin`` (about
        0.01 of the MEI's response at the default, whatever ``n_images``).
    margin : float
        The hinge acts below ``fraction + margin`` (relative response), so that the images
        settle just above ``fraction``.
    init : {"shift", "noise", "starts"}
        Where image ``i`` starts (:func:`start_batch`), before the noise is added:
        ``"shift"``, the MEI moved by a seeded shift of up to ``init_shift`` pixels along each
        axis; ``"noise"``, the MEI itself (slower to spread a complex cell's phases);
        ``"starts"``, the MEI's starts (:attr:`MEIResult.starts`, cycled).
    init_noise : float
        RMS of the start noise, in units of ``c*``.
    init_shift : float
        Largest start shift (pixels, each axis) of ``init="shift"``.
    noise_sigma : float
        Gaussian blur (pixels) of the start noise (0: white).
    seed : int
        Seed of the start shifts and noise (image ``i`` draws from ``default_rng([seed, i])``).
    fourier_exponent : float
        ``a`` of the ``1 / |f|^a`` gradient filter (as :class:`MEIConfig`); 0 switches it off.
    dtype : {"auto", "float32", "float64"}
        Tensor precision; ``"auto"``: the model's own.

    Examples
    --------
    >>> DEIConfig().n_images, DEIConfig().fraction
    (4, 0.85)
    >>> DEIConfig(fraction=1.5)
    Traceback (most recent call last):
    ...
    meireport.errors.MeireportError: fraction: expected in (0, 1], got 1.5
    """

    n_images: int = 4
    fraction: float = 0.85
    steps: int = 40
    step_size: float = 0.3
    step_decay: float = 0.05
    diversity_weight: float = 0.005
    margin: float = 0.02
    init: str = "shift"
    init_noise: float = 0.3
    init_shift: float = 3.0
    noise_sigma: float = 2.0
    seed: int = 0
    fourier_exponent: float = 0.25
    dtype: str = "auto"

    def __post_init__(self) -> None:
        for name in _FLOATS:
            v = getattr(self, name)
            ok = isinstance(v, int | float | np.integer | np.floating) and not isinstance(v, bool)
            check(ok and np.isfinite(v), name, "a finite number", repr(v))
        check(_is_int(self.n_images, 1), "n_images", "an integer >= 1", repr(self.n_images))
        check(_is_int(self.steps, 1), "steps", "an integer >= 1", repr(self.steps))
        check(_is_int(self.seed, 0), "seed", "an integer >= 0", repr(self.seed))
        check(0 < self.fraction <= 1, "fraction", "in (0, 1]", self.fraction)
        check(self.step_size > 0, "step_size", "> 0", self.step_size)
        check(0 < self.step_decay <= 1, "step_decay", "in (0, 1]", self.step_decay)
        check(self.diversity_weight > 0, "diversity_weight", "> 0", self.diversity_weight)
        check(0 <= self.margin < 1, "margin", "in [0, 1)", self.margin)
        check(self.init in INITS, "init", f"one of {INITS}", repr(self.init))
        check(self.init_noise >= 0, "init_noise", ">= 0", self.init_noise)
        check(self.init_shift >= 0, "init_shift", ">= 0", self.init_shift)
        check(self.noise_sigma >= 0, "noise_sigma", ">= 0", self.noise_sigma)
        check(self.fourier_exponent >= 0, "fourier_exponent", ">= 0", self.fourier_exponent)
        check(self.dtype in _DTYPES, "dtype", f"one of {_DTYPES}", repr(self.dtype))

    def step_sizes(self) -> np.ndarray:
        """Step size at each step: geometric decay from ``step_size`` by ``step_decay``.

        Examples
        --------
        >>> DEIConfig(steps=3, step_size=0.1, step_decay=0.25).step_sizes().round(3).tolist()
        [0.1, 0.05, 0.025]
        """
        t = np.arange(self.steps) / max(self.steps - 1, 1)
        return self.step_size * float(self.step_decay) ** t

    def to_dict(self) -> dict:
        """JSON-serialisable copy."""
        return asdict(self)


@dataclass
class DEIResult:
    """A unit's diverse exciting inputs and how they compare with its MEI.

    Attributes
    ----------
    images : ndarray
        ``k x H x W`` DEIs that reached ``config.fraction`` of the MEI's response (the MEI
        itself, alone, when none did: ``used_mei``).
    responses : ndarray
        Predicted response to each image (``k``).
    fractions : ndarray
        ``responses / mei_response``.
    correlations : ndarray
        ``k x k`` pixel correlations between the images.
    mei_correlations : ndarray
        Pixel correlation of each image with the MEI (``k``).
    n_met : int
        How many of the ``config.n_images`` optimised images reached the fraction.
    used_mei : bool
        No image reached it; ``images`` holds the MEI.
    mei_response : float
        The MEI's predicted response (:attr:`MEIResult.response`).
    seconds : float
        Wall time of :func:`diverse_meis`.
    config : DEIConfig
    """

    images: np.ndarray
    responses: np.ndarray
    fractions: np.ndarray
    correlations: np.ndarray
    mei_correlations: np.ndarray
    n_met: int
    used_mei: bool
    mei_response: float
    seconds: float
    config: DEIConfig

    def summary(self) -> dict:
        """Flat JSON-serialisable figures (medians over the kept images).

        ``median_corr`` is the median off-diagonal entry of ``correlations`` (1.0 with one
        image, as :func:`meireport.mei.synthesis.agreement`).

        Examples
        --------
        >>> r = DEIResult(np.zeros((1, 2, 2)), np.ones(1), np.ones(1), np.ones((1, 1)),
        ...               np.ones(1), 0, True, 1.0, 0.5, DEIConfig())
        >>> r.summary()["n"], r.summary()["used_mei"]
        (1, True)
        """
        k = len(self.images)
        off = self.correlations[~np.eye(k, dtype=bool)]
        return {
            "n": int(k),
            "n_met": int(self.n_met),
            "n_images": int(self.config.n_images),
            "used_mei": bool(self.used_mei),
            "median_fraction": float(np.median(self.fractions)),
            "min_fraction": float(np.min(self.fractions)),
            "median_corr": float(np.median(off)) if len(off) else 1.0,
            "median_mei_corr": float(np.median(self.mei_correlations)),
            "seconds": float(self.seconds),
        }


# --------------------------------------------------------------------------------------------
# the pieces
# --------------------------------------------------------------------------------------------
def diversity(x: torch.Tensor) -> torch.Tensor:
    """Mean pairwise distance of standardised images: ``mean_{i<j} sqrt(2 - 2 rho_ij)``.

    ``rho_ij`` is the pixel correlation of images ``i`` and ``j`` (``B x 1 x H x W`` or
    ``B x H x W``); 0 for a single image. It ranges from 0 (identical up to mean and gain) to
    2 (opposite), and is differentiable (a tiny floor keeps identical images' gradient finite).

    Examples
    --------
    >>> a = torch.arange(6.0).reshape(1, 2, 3)
    >>> round(float(diversity(torch.cat([a, -a]))), 4), round(float(diversity(a)), 4)
    (2.0, 0.0)
    """
    z = x.flatten(1)
    z = z - z.mean(dim=1, keepdim=True)
    z = z / torch.sqrt((z**2).sum(dim=1, keepdim=True) + 1e-12)
    k = len(z)
    if k < 2:
        return z.sum() * 0.0
    i, j = torch.triu_indices(k, k, offset=1, device=z.device)
    rho = (z[i] * z[j]).sum(dim=1)
    return torch.sqrt((2.0 - 2.0 * rho).clamp_min(0.0) + 1e-10).mean()


def start_batch(model: Model, mei_result: MEIResult, config: DEIConfig) -> np.ndarray:
    """The ``n_images x H x W`` starting images, on the MEI's set.

    Each is the MEI shifted by up to ``init_shift`` pixels per axis (``init="shift"``; linear
    interpolation, edges extended), the MEI itself (``"noise"``) or one of the MEI's starts,
    cycled (``"starts"``), plus Gaussian noise of RMS ``init_noise * c*`` blurred by
    ``noise_sigma`` pixels, projected onto the set (:func:`meireport.mei.compare.equalize`).
    Image ``i`` draws its shift and noise from ``default_rng([seed, i])``. A shifted start
    that ``model`` answers below ``fraction`` of the MEI's response has its shift halved, then
    quartered, then dropped: a simple cell's response to its MEI moved by half a carrier
    period is nil, and a rectified unit's gradient may vanish there.

    Examples
    --------
    >>> from meireport.mei.synthesis import MEIConfig, generate_mei
    >>> from meireport.mei.targets import LinearModel
    >>> imgs = np.random.default_rng(0).random((3, 8, 8))
    >>> model = LinearModel(np.eye(8))
    >>> mei = generate_mei(model, imgs, MEIConfig(steps=5, starts=("grey",)))
    >>> x = start_batch(model, mei, DEIConfig(n_images=3))
    >>> x.shape, bool(np.allclose(x, start_batch(model, mei, DEIConfig(n_images=3))))
    ((3, 8, 8), True)
    """
    mei = np.asarray(mei_result.mei, dtype=np.float64)
    k = config.n_images
    if config.init == "starts" and mei_result.starts:
        base = np.stack([mei_result.starts[i % len(mei_result.starts)].image for i in range(k)])
    else:
        base = np.repeat(mei[None], k, axis=0)
    rngs = [np.random.default_rng([config.seed, i]) for i in range(k)]
    shifts = np.stack([r.uniform(-config.init_shift, config.init_shift, size=2) for r in rngs])
    noise = np.stack([_noise(r, mei.shape, config) for r in rngs]) * mei_result.c_star

    def candidates(scale: float) -> np.ndarray:
        moved = [_shift(b, scale * d) for b, d in zip(base, shifts, strict=True)]
        return equalize(np.stack(moved) + noise, mei_result.mean, mei_result.c_star)

    if config.init != "shift" or config.init_shift == 0:
        return candidates(0.0)
    out = candidates(0.0)
    todo = np.ones(k, dtype=bool)
    for scale in _SHIFT_SCALES:
        cand = candidates(scale)
        ok = todo & _met(predict(model, cand), float(mei_result.response), config.fraction)
        out[ok], todo = cand[ok], todo & ~ok
    return out


_SHIFT_SCALES = (1.0, 0.5, 0.25)


def _noise(rng: np.random.Generator, shape: tuple[int, int], config: DEIConfig) -> np.ndarray:
    """Zero-mean Gaussian noise of RMS ``init_noise``, blurred by ``noise_sigma`` pixels."""
    n = rng.normal(size=shape)
    if config.noise_sigma > 0:
        n = gaussian_blur(torch.as_tensor(n[None, None]), config.noise_sigma)[0, 0].numpy()
    n = n - n.mean()
    rms = np.sqrt(np.mean(n**2))
    return config.init_noise * n / rms if rms > 0 else n


def _shift(img: np.ndarray, d: np.ndarray) -> np.ndarray:
    """``img`` moved by ``d = (rows, cols)`` pixels (linear interpolation, edges extended)."""
    if not np.any(d):
        return np.asarray(img, dtype=np.float64)
    return ndimage.shift(np.asarray(img, dtype=np.float64), d, order=1, mode="nearest")


def _objective(r: torch.Tensor, x: torch.Tensor, target: float, config: DEIConfig):
    """``w * k * D(x) - sum_i max(0, f + m - r_i / r_MEI)^2`` (to ascend)."""
    deficit = torch.relu(config.fraction + config.margin - r / target)
    return config.diversity_weight * len(x) * diversity(x) - (deficit**2).sum()


def _ascend(model: Model, x0: np.ndarray, mei_result: MEIResult, config: DEIConfig):
    """Run the loop on the batch ``x0`` on the model's device; the final images as numpy.

    The returned images are projected onto the set once more in float64 (the loop may run in
    float32), so that their mean and contrast are the set's to the projection's tolerance.
    """
    device = model_device(model)
    dtype = model_dtype(model) if config.dtype == "auto" else getattr(torch, config.dtype)
    mean, c_star = float(mei_result.mean), float(mei_result.c_star)
    target = float(mei_result.response)
    x = project(torch.as_tensor(x0[:, None], dtype=dtype, device=device), mean, c_star)
    filt = fourier_filter(tuple(x0.shape[1:]), config.fourier_exponent).to(device, dtype)
    for t, size in enumerate(config.step_sizes()):
        x.requires_grad_(True)
        r = responses(model, x)
        if not torch.all(torch.isfinite(r)):
            raise MeireportError(f"model: expected finite responses, got {r.tolist()} at step {t}")
        (g,) = torch.autograd.grad(_objective(r, x, target, config), x)
        g = precondition(g, filt)
        rms = torch.sqrt((g.flatten(1) ** 2).mean(dim=1)).view(-1, 1, 1, 1)
        with torch.no_grad():
            x = project(x.detach() + float(size) * c_star * g / rms.clamp_min(1e-20), mean,
                        c_star)
    # projected once more in float64: the loop's dtype may be float32
    return equalize(x.detach()[:, 0].double().cpu().numpy(), mean, c_star)


def _met(resp: np.ndarray, target: float, fraction: float) -> np.ndarray:
    """Which responses reach ``fraction`` of ``target`` (to rounding)."""
    return resp >= fraction * target - 1e-9 * abs(target)


# --------------------------------------------------------------------------------------------
# the loop
# --------------------------------------------------------------------------------------------
def diverse_meis(model: Model, mei_result: MEIResult, config: DEIConfig | None = None
                 ) -> DEIResult:
    """A unit's Diverse Exciting Inputs: ``n_images`` images, each >= ``fraction`` of the MEI.

    Parameters
    ----------
    model : callable
        The model the MEI was synthesised for (``B x 1 x H x W`` -> ``B``); put in evaluation
        mode here.
    mei_result : MEIResult
        The unit's MEI (:func:`meireport.mei.synthesis.generate_mei`); its ``mean`` and
        ``c_star`` define the set every DEI is projected onto, its ``response`` (> 0) the
        target.
    config : DEIConfig, optional
        The loop's constants (default :class:`DEIConfig`).

    Returns
    -------
    DEIResult
        The images that reached ``config.fraction`` of the MEI's response (all on the MEI's
        set: its mean, contrast and [0, 1] range), their responses and correlations; the MEI
        alone (``used_mei``) when none did. The loop runs on the model's device
        (:func:`meireport.models.device.model_device`); the arrays are numpy.

    Examples
    --------
    >>> from meireport.mei.synthesis import MEIConfig, generate_mei
    >>> from meireport.mei.targets import LinearModel
    >>> w = np.zeros((12, 12)); w[3:9, 5] = 1.0; w[3:9, 6] = -1.0
    >>> imgs = np.random.default_rng(0).random((4, 12, 12))
    >>> model = LinearModel(w)
    >>> mei = generate_mei(model, imgs, MEIConfig(steps=40, blur_start=1.0))
    >>> dei = diverse_meis(model, mei, DEIConfig(n_images=3, steps=60))
    >>> dei.images.shape, bool(dei.fractions.min() >= 0.85), bool(dei.mei_correlations.min() > 0.8)
    ((3, 12, 12), True, True)
    """
    config = DEIConfig() if config is None else config
    check(isinstance(config, DEIConfig), "config", "a DEIConfig", type(config).__name__)
    check(isinstance(mei_result, MEIResult), "mei_result", "an MEIResult",
          type(mei_result).__name__)
    target = float(mei_result.response)
    check(np.isfinite(target) and target > 0, "mei_result.response", "a finite value > 0 "
          "(the fraction is of a positive response)", target)
    model = as_model(model)
    t0 = time.perf_counter()
    final = _ascend(model, start_batch(model, mei_result, config), mei_result, config)
    resp = predict(model, final)
    met = _met(resp, target, config.fraction)
    used_mei = not met.any()
    images = np.asarray(mei_result.mei, dtype=np.float64)[None] if used_mei else final[met]
    kept = predict(model, images) if used_mei else resp[met]
    corr, _ = agreement(images)
    return DEIResult(
        images=images,
        responses=kept,
        fractions=kept / target,
        correlations=corr,
        mei_correlations=np.array([pixel_correlation(im, mei_result.mei) for im in images]),
        n_met=int(met.sum()),
        used_mei=bool(used_mei),
        mei_response=target,
        seconds=time.perf_counter() - t0,
        config=config,
    )


# --------------------------------------------------------------------------------------------
# carrier phase
# --------------------------------------------------------------------------------------------
def phase_span(images, even, odd) -> float:
    """Smallest arc (degrees, 0..360) holding every image's carrier phase.

    An image's phase is ``atan2(<odd, x - mean(x)>, <even, x - mean(x)>)`` for a quadrature
    filter pair (e.g. a simulated complex cell's true ``rf_even`` / ``rf_odd``); the span is
    360 minus the largest gap between the sorted phases on the circle (0 for one image).

    Examples
    --------
    >>> from meireport.stimuli import ScreenGeometry, render_gabor
    >>> g = [render_gabor(ScreenGeometry(), 0, 0, 0, 0.1, 30, phase=np.radians(p)) - 0.5
    ...      for p in (0, 90, 180, 270)]
    >>> round(phase_span(g[:3], g[0], g[1]), 1), round(phase_span(g, g[0], g[1]), 1)
    (180.0, 270.0)
    >>> round(phase_span([g[3], g[0]], g[0], g[1]), 1)  # 270 and 0 are 90 apart
    90.0
    """
    a = as_stack(images, "images")
    e, o = np.asarray(even, dtype=np.float64), np.asarray(odd, dtype=np.float64)
    check(e.shape == o.shape == a.shape[1:], "even/odd", f"two filters of shape {a.shape[1:]}",
          (e.shape, o.shape))
    z = a - a.mean(axis=(1, 2), keepdims=True)
    phases = np.sort(np.mod(np.degrees(np.arctan2((z * o).sum((1, 2)), (z * e).sum((1, 2)))),
                            360.0))
    if len(phases) < 2:
        return 0.0
    gaps = np.diff(np.r_[phases, phases[0] + 360.0])
    return float(360.0 - gaps.max())
