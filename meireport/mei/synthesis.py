"""Most Exciting Inputs: gradient ascent on a model's input, preconditioned in the Fourier domain.

Two loops (``MEIConfig.method``). The default, ``"constrained"``, optimises the image inside the
set it is compared in (Walker et al. 2019; the ``mei`` library's norm and clip
post-processing): fixed mean luminance, fixed RMS contrast (pixel standard deviation, i.e. a
fixed L2 norm of ``x - mean``) and pixels in [0, 1]. Every step the gradient of the predicted
response is filtered in the Fourier domain, the image takes a step along it, is blurred, and is
projected back into the set by :func:`meireport.mei.compare.equalize` (the same projection
every compared stimulus goes through), so the saved MEI is the stimulus the metrics describe
and the true neuron is shown. ``"seed"`` is the seed study's loop: at each step the gradient of

    loss(x) = r(x) - lambda * |c* - std(x)|

with respect to the image ``x`` is filtered in the Fourier domain by ``1 / |f|^a`` (favouring
smooth, low-frequency changes), the image takes a step along it, is blurred by a Gaussian whose
sigma decays over the steps, and is rescaled to [0, 1]. ``c*`` is the mean standard deviation of
the training images; the penalty barely holds it (the min-max rescale decides the range) and the
seed then rescaled every stimulus after the fact. Every constant is a field of
:class:`MEIConfig`. Several starts (seeded white noise, black, mean grey) are run; the best is
kept and the agreement between starts (and between ensemble members, :func:`ensemble_meis`) is
the MEI's reliability figure.

A start stops once it has converged (``MEIConfig.stop``, on by default; :func:`converged`):
after the blur decay, when its response, taken every other step, has stayed within a relative
band ``stop_rtol`` for ``stop_window`` steps. ``steps`` is then the most a start runs; a
stopped start is frozen (its image and numbers are those the full-length loop had at that
step) and its trace ends there. The loop runs on the device of the model's parameters; results
come back as numpy arrays.

Any model works: a callable mapping ``B x 1 x H x W`` tensors to ``B`` responses of one unit.
:class:`UnitModel` picks one unit of a population model, :class:`EnsembleModel` averages models,
and :class:`LinearModel`, :class:`EnergyModel` and :class:`TrueNeuron` are models whose optimum is
known (the last one is a simulated session's true neuron, for the in-silico inception loop).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from meireport.errors import MeireportError
from meireport.mei._checks import check
from meireport.mei.compare import clip_fraction, equalize, phase_invariant_correlation
from meireport.mei.ops import (
    fourier_filter,
    gaussian_blur,
    precondition,
    rescale_unit,
    target_contrast,
)
from meireport.mei.targets import EnsembleModel, Model, as_model, model_dtype, responses
from meireport.models.device import model_device

__all__ = [
    "blur_sigmas",
    "default_starts",
    "start_images",
    "MEIConfig",
    "StartResult",
    "MEIResult",
    "agreement",
    "phase_agreement",
    "generate_mei",
    "generate_meis",
    "ensemble_meis",
    "converged",
    "project",
    "METHODS",
    "DEFAULT_CONTRAST",
    "STEP_CONTRAST",
    "model_device",
]
_RESCALE = ("minmax", "clip")
METHODS = ("constrained", "seed")
# The MEI's default RMS contrast (pixel std of the whole 60 x 96 image). A localised MEI carries
# that contrast on the few hundred pixels of its RF: at 0.06 its contrast inside the RF mask was
# 0.24-0.34 on the data-limit chapter's CNNs, beyond the 90th percentile of the training images'
# own contrast there (0.19-0.22; median 0.12-0.14), i.e. where the model extrapolates; at 0.03 it
# is 0.12-0.17, inside that range, and the MEI matches the truth better (the chapter's 118-image
# CNNs: median 0.73 / 0.50 simple / complex, against 0.64 / 0.49 at 0.06). The simulated units'
# true optima keep their pattern at any contrast (each kind's drive is homogeneous of degree 1 in
# the image's deviation from grey) and clip at most 0.2 % of their pixels at 0.03 (1.3 % at 0.06,
# 6.7-10 % at the training images' c* 0.167, where a localised optimum is forced into a binary
# blotch).
DEFAULT_CONTRAST = 0.03
# The set contrast at which the constrained loop's ``step_size`` is the RMS pixel change of a step
# (where the loop was calibrated); at another contrast the step scales with it. Unscaled, a step
# at 0.03 moved an energy unit's MEI by twice the fraction of its contrast, and the carrier's
# phase drifted on after the stopping rule (stopped vs 1000-step MEI: pixel correlation 0.979).
STEP_CONTRAST = 0.06
_START_KINDS = ("noise", "black", "grey")


def default_starts(n_starts: int = 4) -> tuple[str, ...]:
    """The ``n_starts`` initial images of an MEI: white noise, black, grey, then more noise.

    The one definition of what a number of starts means (:class:`MEIConfig`'s default and the
    ``mei.n_starts`` params field); each further ``"noise"`` is a new seeded draw.

    Examples
    --------
    >>> default_starts(2)
    ('noise', 'black')
    >>> default_starts()
    ('noise', 'black', 'grey', 'noise')
    """
    ok = isinstance(n_starts, int | np.integer) and not isinstance(n_starts, bool)
    check(ok and n_starts >= 1, "n_starts", "an integer >= 1", repr(n_starts))
    return (_START_KINDS + ("noise",) * max(0, int(n_starts) - len(_START_KINDS)))[:n_starts]


# --------------------------------------------------------------------------------------------
# configuration and results
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MEIConfig:
    """Every constant of the MEI loop (defaults: the seed study's, where it had one).

    Parameters
    ----------
    method : {"constrained", "seed"}
        ``"constrained"``: every step is projected onto the comparison set (mean
        ``target_mean``, standard deviation ``target_std``, pixels in [0, 1]) by
        :func:`meireport.mei.compare.equalize`; ``contrast_weight`` and ``rescale`` are unused.
        ``"seed"``: the seed's loop (contrast penalty, then ``rescale`` to [0, 1]).
    steps : int
        Gradient-ascent steps per start (seed: 1000).
    step_size : float
        Step along the preconditioned gradient (seed ``alpha`` = 0.1). With ``normalize_grad``
        it is the root-mean-square pixel change per step, whatever the model's response scale;
        in the constrained loop at set contrast :data:`STEP_CONTRAST` (0.06), scaled with the
        contrast at others (the same fraction of the image's contrast per step).
    normalize_grad : bool
        Divide the preconditioned gradient by its RMS before the step (the seed did not, which
        ties the step to the model's output scale).
    fourier_exponent : float
        ``a`` of the ``1 / |f|^a`` gradient filter (seed: 1/4); 0 switches it off.
    blur_start, blur_end : float
        Gaussian-blur sigma in pixels at the first step and at the end of the decay (seed: 7
        and 0.001). Below 0.05 px no blur is applied.
    blur_fraction : float
        Fraction of the steps over which sigma decays linearly from ``blur_start`` to
        ``blur_end`` (then stays there). The seed's compounding schedule had decayed 100-fold
        after ~10 % of 1000 steps.
    contrast_weight : float
        ``lambda`` of the contrast penalty ``lambda * |c* - std(x)|`` (seed: 2), in response
        units per unit of standard deviation.
    target_std : float, optional
        The MEI's RMS contrast (``c*``: the penalty's target in the seed loop, the set's
        standard deviation in the constrained one); default :data:`DEFAULT_CONTRAST` (0.03,
        at which a localised MEI's contrast inside its RF lies within the training images'
        contrast there); ``None``: the training images' mean standard deviation (the seed's
        ``c*``).
    target_mean : float, optional
        Mean luminance of the constrained set; default: the training images' mean.
    rescale : {"minmax", "clip"}
        How each step is brought back to [0, 1]: stretch min..max to 0..1 (seed) or clip.
    starts : tuple of str
        Initial images: ``"noise"`` (seeded white noise; each occurrence a new draw), ``"black"``,
        ``"grey"`` (0.5); default :func:`default_starts` ``(4)``.
    seed : int
        Seed of the noise starts.
    jitter : float
        Amplitude of seeded noise added to the black and grey starts: a flat image is a
        stationary point of any model symmetric in contrast (an energy model's gradient
        vanishes there), so an exactly flat start might never move.
    dtype : {"auto", "float32", "float64"}
        Tensor precision of the loop; ``"auto"``: the model's own (float32 for a model without
        parameters or buffers).
    stop : bool
        Stop a start once it has converged (:func:`converged`): its predicted response (at
        every other step) has stayed within a relative band ``stop_rtol`` over the last
        ``stop_window`` steps. ``steps`` is then the most a start runs; ``False`` runs every
        start ``steps`` steps (the seed). A stopped start keeps the image it had (the loop up
        to there is the same as without the rule) and its trace ends there
        (:attr:`StartResult.steps_run`); it stays in the batch, frozen, until every start has
        stopped, so that no start's numbers depend on when another stopped. On trained CNNs
        the default stops after 120-190 of 1000 steps with the same MEI (pixel correlation
        > 0.9999); in the seed loop a phase-invariant (energy) unit's response keeps
        creeping with its contrast (~1e-5 per 20 steps) and its starts may run on.
    stop_window : int
        Steps over which the response must have stayed within the band.
    stop_rtol : float
        Width of the band, relative to the latest response: ``(max - min) / |r|``. 1e-4 would
        stop an energy unit's starts too early to keep which of them is best.
    min_steps : int
        No start stops before this step, nor before the blur decay has ended and a whole
        window has run since (``round(blur_fraction * steps) + stop_window``): while the blur
        decays the image is meant to change. With the default 1000 steps the blur decides.

    Examples
    --------
    >>> MEIConfig(steps=50).steps
    50
    >>> MEIConfig().earliest_stop  # blur decays over 100 steps, then one window of 20
    120
    >>> MEIConfig(rescale="median")
    Traceback (most recent call last):
    ...
    meireport.errors.MeireportError: rescale: expected one of ('minmax', 'clip'), got 'median'
    """

    method: str = "constrained"
    steps: int = 1000
    step_size: float = 0.1
    normalize_grad: bool = True
    fourier_exponent: float = 0.25
    blur_start: float = 7.0
    blur_end: float = 0.001
    blur_fraction: float = 0.1
    contrast_weight: float = 2.0
    target_std: float | None = DEFAULT_CONTRAST
    target_mean: float | None = None
    rescale: str = "minmax"
    starts: tuple[str, ...] = default_starts()
    seed: int = 0
    jitter: float = 1e-3
    dtype: str = "auto"
    stop: bool = True
    stop_window: int = 20
    stop_rtol: float = 1e-5
    min_steps: int = 100

    def __post_init__(self) -> None:
        check(self.method in METHODS, "method", f"one of {METHODS}", repr(self.method))
        if self.target_mean is not None:
            check(0 < self.target_mean < 1, "target_mean", "in (0, 1) or None", self.target_mean)
        check(
            int(self.steps) == self.steps and self.steps >= 1,
            "steps",
            "an integer >= 1",
            self.steps,
        )
        check(self.step_size > 0, "step_size", "> 0", self.step_size)
        check(self.fourier_exponent >= 0, "fourier_exponent", ">= 0", self.fourier_exponent)
        check(self.blur_start >= 0, "blur_start", ">= 0", self.blur_start)
        check(self.blur_end >= 0, "blur_end", ">= 0", self.blur_end)
        check(0 < self.blur_fraction <= 1, "blur_fraction", "in (0, 1]", self.blur_fraction)
        check(self.contrast_weight >= 0, "contrast_weight", ">= 0", self.contrast_weight)
        if self.target_std is not None:
            check(self.target_std > 0, "target_std", "> 0 or None", self.target_std)
        check(self.rescale in _RESCALE, "rescale", f"one of {_RESCALE}", repr(self.rescale))
        check(len(self.starts) >= 1, "starts", "at least one start", self.starts)
        bad = [s for s in self.starts if s not in _START_KINDS]
        check(not bad, "starts", f"names from {_START_KINDS}", bad)
        check(0 <= self.jitter < 0.5, "jitter", "in [0, 0.5)", self.jitter)
        check(
            self.dtype in ("auto", "float32", "float64"),
            "dtype",
            "'auto', 'float32' or 'float64'",
            repr(self.dtype),
        )
        check(isinstance(self.stop, bool | np.bool_), "stop", "True or False", repr(self.stop))
        for name, low in (("stop_window", 1), ("min_steps", 0)):
            v = getattr(self, name)
            ok = isinstance(v, int | np.integer) and not isinstance(v, bool) and v >= low
            check(ok, name, f"an integer >= {low}", repr(v))
        check(self.stop_rtol >= 0, "stop_rtol", ">= 0", self.stop_rtol)

    @property
    def earliest_stop(self) -> int:
        """First step at which the stopping rule may end a start (see ``min_steps``)."""
        return max(int(self.min_steps), _n_decay(self) + int(self.stop_window))

    def to_dict(self) -> dict:
        """JSON-serialisable copy (for checkpoints and the report)."""
        return asdict(self) | {"starts": list(self.starts)}


@dataclass
class StartResult:
    """One start of the loop: its final image and its per-step trace.

    ``response`` and ``std`` have ``steps_run + 1`` entries: the model's response and the
    image's standard deviation before each step, and for the final image. ``converged`` says
    that the stopping rule ended the start (at step ``steps_run``) before ``config.steps``.
    """

    name: str
    image: np.ndarray
    response: np.ndarray
    std: np.ndarray
    converged: bool = False

    @property
    def final_response(self) -> float:
        """Predicted response to the final image."""
        return float(self.response[-1])

    @property
    def steps_run(self) -> int:
        """Gradient steps this start took (where its trace ends)."""
        return len(self.response) - 1


@dataclass
class MEIResult:
    """An MEI, the starts it was chosen from and how well they agree.

    Attributes
    ----------
    mei : ndarray
        The best start's image (``H x W`` in [0, 1]).
    response : float
        Predicted response to ``mei``.
    best : int
        Index of the best start in ``starts``.
    starts : list of StartResult
    agreement : ndarray
        Pairwise pixel correlations between the starts' images (or the members' MEIs).
    reliability : float
        Median off-diagonal entry of ``agreement`` (1.0 with a single image).
    phase_reliability : float
        Median pairwise :func:`meireport.mei.compare.phase_invariant_correlation`: agreement up to
        the carrier's phase, which a complex cell's MEI is free to take. Whether the MEIs
        *agree* is decided in one place, :func:`meireport.trust.mei_agreement`.
    c_star : float
        The MEI's RMS contrast: the set's standard deviation (constrained loop) or the
        penalty's target (seed loop).
    mean : float
        The set's mean luminance (constrained loop; the seed loop does not hold it).
    config : MEIConfig
    seconds : float
        Wall time of the synthesis.
    steps_run : list of int
        Steps each start took (property; ``config.steps`` each without the stopping rule).
    members : list of MEIResult
        Per-member results (ensembles only, :func:`ensemble_meis`).
    """

    mei: np.ndarray
    response: float
    best: int
    starts: list[StartResult]
    agreement: np.ndarray
    reliability: float
    phase_reliability: float
    c_star: float
    config: MEIConfig
    seconds: float
    mean: float = 0.5
    members: list[MEIResult] = field(default_factory=list)

    @property
    def steps_run(self) -> list[int]:
        """Steps each start took, in the order of ``starts``."""
        return [st.steps_run for st in self.starts]

    def summary(self) -> dict:
        """Flat, JSON-serialisable figures for the report.

        ``steps`` is the steps the kept start took, ``steps_total`` those of every start.
        """
        steps = self.steps_run
        return {
            "mei_pred": float(self.response),
            "best_start": self.starts[self.best].name if self.starts else "ensemble",
            "reliability": float(self.reliability),
            "phase_reliability": float(self.phase_reliability),
            "c_star": float(self.c_star),
            "mei_std": float(self.mei.std()),
            "mei_mean": float(self.mei.mean()),
            "clip_fraction": clip_fraction(self.mei),
            "seconds": float(self.seconds),
            "steps": int(steps[self.best]) if steps else 0,
            "steps_total": int(sum(steps)),
        }


def agreement(images) -> tuple[np.ndarray, float]:
    """Pairwise pixel correlations of MEIs and their median off-diagonal value.

    Flat images correlate 0 with anything. A single image agrees with itself (1.0).

    Examples
    --------
    >>> a = np.arange(12.0).reshape(3, 4)
    >>> m, med = agreement([a, 2 * a + 1, -a])
    >>> m.round(2).tolist(), round(med, 2)
    ([[1.0, 1.0, -1.0], [1.0, 1.0, -1.0], [-1.0, -1.0, 1.0]], -1.0)
    """
    a = np.asarray(images, dtype=np.float64)
    check(a.ndim == 3 and len(a) >= 1, "images", "an n x H x W stack", a.shape)
    z = a.reshape(len(a), -1)
    z = z - z.mean(axis=1, keepdims=True)
    norm = np.linalg.norm(z, axis=1)
    z = np.divide(z, norm[:, None], out=np.zeros_like(z), where=norm[:, None] > 0)
    corr = z @ z.T
    np.fill_diagonal(corr, 1.0)
    if len(a) == 1:
        return corr, 1.0
    return corr, float(np.median(corr[~np.eye(len(a), dtype=bool)]))


def phase_agreement(images) -> float:
    """Median pairwise phase-invariant correlation of MEIs (1.0 for a single image).

    Examples
    --------
    >>> from meireport.stimuli import ScreenGeometry, render_gabor
    >>> g = [render_gabor(ScreenGeometry(), 0, 0, 45, 0.1, 30, phase=p) for p in (0, 1.5, 3)]
    >>> round(agreement(g)[1], 1), round(phase_agreement(g), 1)
    (0.1, 1.0)
    """
    a = np.asarray(images, dtype=np.float64)
    check(a.ndim == 3 and len(a) >= 1, "images", "an n x H x W stack", a.shape)
    pairs = [(i, j) for i in range(len(a)) for j in range(i + 1, len(a))]
    if not pairs:
        return 1.0
    return float(np.median([phase_invariant_correlation(a[i], a[j]) for i, j in pairs]))


# --------------------------------------------------------------------------------------------
# the loop
# --------------------------------------------------------------------------------------------
def _band_steps(t: int, config: MEIConfig) -> np.ndarray | None:
    """Steps whose responses the stopping rule compares at step ``t`` (None: no test at ``t``).

    Every other step of the last ``stop_window`` (``t, t - 2, ...``), from
    ``config.earliest_stop`` on, at steps of the parity of ``config.steps``.
    """
    if t < config.earliest_stop or (config.steps - t) % 2:
        return None
    return np.arange(t, t - int(config.stop_window) - 1, -2)


def _in_band(window: np.ndarray, rtol: float) -> np.ndarray:
    """Rows of ``window`` (``k x m`` responses, latest first) within ``rtol`` of the latest."""
    spread = window.max(axis=1) - window.min(axis=1)
    return spread <= rtol * np.maximum(np.abs(window[:, 0]), 1e-12)


def converged(response, config: MEIConfig) -> bool:
    """Whether a response trace ends where ``config``'s stopping rule stops a start.

    The test :func:`generate_mei` applies after each step ``t`` (the trace's last index): from
    ``config.earliest_stop`` on, at steps of the parity of ``config.steps``, the responses at
    every other step of the last ``stop_window`` (``t, t - 2, ...``) lie within ``stop_rtol``
    of each other, relative to the latest. Comparing every other step lets a start stop in a
    two-step cycle (with a fixed step size the image can settle into alternating between two
    states); the parity makes it stop in the state the full-length loop would end in.

    Examples
    --------
    >>> cfg = MEIConfig(steps=100, blur_fraction=0.1, stop_window=6, min_steps=0)
    >>> rising = np.linspace(0.0, 1.0, 41)  # steps 0..40
    >>> converged(rising, cfg), converged(np.r_[rising, np.ones(6)], cfg)
    (False, True)
    >>> cycle = np.r_[rising, np.tile([1.0, 1.1], 4)]  # a two-step cycle, to step 48
    >>> converged(cycle, cfg), converged(cycle[:-1], cfg)  # step 47: not the parity of 100
    (True, False)
    """
    r = np.asarray(response, dtype=np.float64).ravel()
    idx = _band_steps(len(r) - 1, config)
    if idx is None:
        return False
    return bool(_in_band(r[None, idx], float(config.stop_rtol))[0])


def project(x: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """Project ``B x 1 x H x W`` images onto the comparison set: mean, std, pixels in [0, 1].

    The set and its projection are :func:`meireport.mei.compare.equalize`'s (offset and gain
    solved so that the *clipped* image has ``mean`` and ``std``), computed in float64 on the
    CPU and returned on ``x``'s device and dtype.

    Examples
    --------
    >>> x = torch.rand(2, 1, 20, 30) * 3 - 1
    >>> y = project(x, 0.45, 0.12).double()
    >>> [round(float(v), 6) for v in y.mean(dim=(1, 2, 3))], float(y.min()) >= 0
    ([0.45, 0.45], True)
    """
    a = x.detach()[:, 0].double().cpu().numpy()
    y = equalize(a, float(mean), float(std))
    return torch.as_tensor(y[:, None], dtype=x.dtype, device=x.device)


def _step(x: torch.Tensor, g: torch.Tensor, sigma: float, config: MEIConfig, mean: float,
          c_star: float) -> torch.Tensor:
    """One update: step along ``g``, blur, back into the set (or [0, 1] in the seed loop)."""
    if config.method == "constrained":
        # a step changes the image by the same fraction of its contrast at any set contrast
        size = config.step_size * c_star / STEP_CONTRAST
        return project(gaussian_blur(x.detach() + size * g, sigma), mean, c_star)
    return rescale_unit(gaussian_blur(x.detach() + config.step_size * g, sigma), config.rescale)


def _ascend(model: Model, x0: np.ndarray, c_star: float, config: MEIConfig,
            mean: float = 0.5, compact: bool = False):
    """Run the loop on a batch of starts, on the model's device.

    Returns the final images, the response/std traces (``n x steps + 1``, NaN after a start's
    stop) and the steps each start ran. A start the stopping rule ends is frozen: it stays in
    the batch, unchanged (so that every other start computes exactly as without the rule),
    until every start has stopped. With ``compact`` (many units in one batch, a
    :class:`~meireport.mei.targets.UnitsModel`), only the starts still running are passed to
    the model: the batch shrinks as they stop (the same steps, up to float rounding).
    """
    device = model_device(model)
    dtype = model_dtype(model) if config.dtype == "auto" else getattr(torch, config.dtype)
    n, steps = len(x0), int(config.steps)
    x = torch.as_tensor(x0[:, None], dtype=dtype, device=device)
    if config.method == "constrained":
        x = project(x, mean, c_star)
    filt = fourier_filter(tuple(x0.shape[1:]), config.fourier_exponent).to(device, dtype)
    sigmas = blur_sigmas(config)
    resp = np.full((n, steps + 1), np.nan)
    stds = np.full_like(resp, np.nan)
    final = np.empty(x0.shape)
    ran = np.full(n, steps)
    stopped = np.zeros(n, dtype=bool)
    rtol = float(config.stop_rtol)
    lam = float(config.contrast_weight) if config.method == "seed" else 0.0
    for t in range(steps):
        x.requires_grad_(True)
        if compact:
            r = _live_responses(model, x, stopped)
        else:
            r = responses(model, x)
        s = torch.sqrt(x.flatten(1).var(dim=1, correction=0) + 1e-12)
        if not torch.all(torch.isfinite(r)):
            raise MeireportError(f"model: expected finite responses, got {r.tolist()} at step {t}")
        loss = r - lam * torch.abs(c_star - s)
        (g,) = torch.autograd.grad(loss.sum(), x)
        live = np.flatnonzero(~stopped)
        resp[live, t] = r.detach().double().cpu().numpy()[live]
        stds[live, t] = s.detach().double().cpu().numpy()[live]
        idx = _band_steps(t, config) if config.stop else None
        if idx is not None:
            done = live[_in_band(resp[np.ix_(live, idx)], rtol)]
            if len(done):
                final[done] = x.detach()[torch.as_tensor(done, device=device), 0] \
                    .double().cpu().numpy()
                ran[done], stopped[done] = t, True
                if stopped.all():
                    break
        g = precondition(g, filt)
        if config.normalize_grad:
            rms = torch.sqrt((g.flatten(1) ** 2).mean(dim=1)).view(-1, 1, 1, 1)
            g = g / rms.clamp_min(1e-20)
        with torch.no_grad():
            new = _step(x, g, float(sigmas[t]), config, mean, c_star)
            if stopped.any():  # frozen starts keep their image
                keep = torch.as_tensor(stopped, device=device).view(-1, 1, 1, 1)
                new = torch.where(keep, x.detach(), new)
            x = new
    live = np.flatnonzero(~stopped)
    if len(live):
        with torch.no_grad():
            last = _live_responses(model, x, stopped) if compact else responses(model, x)
            resp[live, -1] = last.double().cpu().numpy()[live]
            stds[live, -1] = x.flatten(1).std(dim=1, correction=0).double().cpu().numpy()[live]
        final[live] = x.detach()[:, 0].double().cpu().numpy()[live]
    return final, resp, stds, ran


def _live_responses(model, x: torch.Tensor, stopped: np.ndarray) -> torch.Tensor:
    """Responses of the starts still running, their images alone through the model.

    The stopped ones read 0 (their traces are not recorded) and get no gradient.
    """
    live = np.flatnonzero(~stopped)
    model.restrict(live)
    r_live = responses(model, x[torch.as_tensor(live, device=x.device)])
    out = torch.zeros(x.shape[0], dtype=r_live.dtype, device=r_live.device)
    return out.index_put((torch.as_tensor(live, device=r_live.device),), r_live)


def _result(config: MEIConfig, final, resp, stds, ran, c_star: float, mean: float,
            seconds: float) -> MEIResult:
    """The :class:`MEIResult` of one unit's starts (rows of the loop's outputs)."""
    starts = [
        StartResult(name, final[i], resp[i, : ran[i] + 1], stds[i, : ran[i] + 1],
                    converged=bool(ran[i] < config.steps))
        for i, name in enumerate(config.starts)
    ]
    last = np.array([st.final_response for st in starts])
    best = int(np.argmax(last))
    corr, rel = agreement(final)
    return MEIResult(mei=final[best], response=float(last[best]), best=best, starts=starts,
                     agreement=corr, reliability=rel, phase_reliability=phase_agreement(final),
                     c_star=float(c_star), config=config, seconds=float(seconds),
                     mean=float(mean))


def _footing(config: MEIConfig, images) -> tuple[np.ndarray, float, float]:
    imgs = np.asarray(images, dtype=np.float64)
    check(imgs.ndim == 3 and len(imgs) > 0, "images", "a non-empty n x H x W stack", imgs.shape)
    c_star = config.target_std if config.target_std is not None else target_contrast(imgs)
    mean = config.target_mean if config.target_mean is not None else float(imgs.mean())
    return imgs, float(c_star), float(mean)


def generate_meis(model, rows, images, config: MEIConfig | None = None) -> list[MEIResult]:
    """The MEIs of many units of one population model, synthesised in one batch.

    Every unit's starts (``config.starts``) go through the model together: one forward and
    backward pass per step serves all of them (:class:`~meireport.mei.targets.UnitsModel`: each
    image reads out its own unit only), and a start leaves the batch when the stopping rule
    ends it. Each unit's result is what :func:`generate_mei` gives for
    ``UnitModel(model, row)`` (the same loop, starts and set; equal up to float rounding);
    ``seconds`` is the batch's time divided by the units.

    Parameters
    ----------
    model : Module
        ``N x rows x cols`` (or ``N x 1 x rows x cols``) -> ``N x n_units`` (e.g. a shared
        :class:`meireport.models.CNNModel`); put in evaluation mode here.
    rows : sequence of int
        The units' positions in the model's output.
    images : array_like
        The training images (``c*`` unless ``config.target_std``, the mean, the shape).
    config : MEIConfig, optional
        The loop's constants (default :class:`MEIConfig`).

    Returns
    -------
    list of MEIResult
        One per unit of ``rows``, in that order.

    Examples
    --------
    >>> from torch import nn
    >>> from meireport.mei.targets import UnitModel
    >>> pop = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
    >>> imgs = np.random.default_rng(0).random((5, 8, 8))
    >>> cfg = MEIConfig(steps=30, blur_start=1.0, stop=False)
    >>> many = generate_meis(pop, [2, 0], imgs, cfg)
    >>> one = generate_mei(UnitModel(pop, 0), imgs, cfg)
    >>> bool(np.allclose(many[1].mei, one.mei, atol=1e-5)), len(many)
    (True, 2)
    """
    config = MEIConfig() if config is None else config
    check(isinstance(config, MEIConfig), "config", "an MEIConfig", type(config))
    from meireport.mei.targets import UnitsModel

    rows = np.atleast_1d(np.asarray(rows, dtype=np.int64))
    imgs, c_star, mean = _footing(config, images)
    k = len(config.starts)
    units = as_model(UnitsModel(model, np.repeat(rows, k)))
    t0 = time.perf_counter()
    x0 = np.concatenate([start_images(config, imgs.shape[1:])] * len(rows))
    final, resp, stds, ran = _ascend(units, x0, c_star, config, mean, compact=True)
    seconds = (time.perf_counter() - t0) / len(rows)
    return [_result(config, *(a[i * k:(i + 1) * k] for a in (final, resp, stds, ran)), c_star,
                    mean, seconds) for i in range(len(rows))]


def generate_mei(model: Model, images, config: MEIConfig | None = None) -> MEIResult:
    """Synthesise one unit's Most Exciting Input from several starts; keep the best.

    Parameters
    ----------
    model : callable
        ``B x 1 x H x W`` tensor -> ``B`` responses of one unit (see :class:`UnitModel` and
        :class:`EnsembleModel`). Put in evaluation mode here.
    images : array_like
        The training images (``n x H x W`` in [0, 1]); they set ``c*`` (unless
        ``config.target_std``) and the image shape.
    config : MEIConfig, optional
        The loop's constants (default :class:`MEIConfig`).

    Returns
    -------
    MEIResult
        The best start's image (highest predicted response), every start's image and trace
        (up to where it stopped, ``StartResult.steps_run``), and the agreement between starts.
        The loop runs on the device of the model's parameters (:func:`model_device`); every
        array of the result is a CPU numpy array.

    Examples
    --------
    >>> from meireport.mei.targets import LinearModel
    >>> w = np.zeros((8, 8)); w[2:6, 3] = 1.0; w[2:6, 4] = -1.0
    >>> imgs = np.random.default_rng(0).random((5, 8, 8))
    >>> res = generate_mei(LinearModel(w), imgs, MEIConfig(steps=30, blur_start=1.0))
    >>> res.mei.shape, bool(res.mei[4, 3] > res.mei[4, 4]), res.reliability > 0.9
    ((8, 8), True, True)
    """
    config = MEIConfig() if config is None else config
    check(isinstance(config, MEIConfig), "config", "an MEIConfig", type(config))
    model = as_model(model)
    imgs, c_star, mean = _footing(config, images)
    t0 = time.perf_counter()
    final, resp, stds, ran = _ascend(model, start_images(config, imgs.shape[1:]), c_star, config,
                                     mean)
    return _result(config, final, resp, stds, ran, c_star, mean, time.perf_counter() - t0)


def ensemble_meis(models: Sequence[Model], images, config: MEIConfig | None = None) -> MEIResult:
    """The MEI of an ensemble (members averaged) and the agreement of the members' own MEIs.

    The returned MEI, response and starts are those of :class:`EnsembleModel`; ``agreement``
    and ``reliability`` compare the members' MEIs (one per member, each from all starts), so an
    MEI that only one member supports shows a low reliability.

    Examples
    --------
    >>> from meireport.mei.targets import LinearModel
    >>> w = np.zeros((8, 8)); w[2:6, 3] = 1.0; w[2:6, 4] = -1.0
    >>> imgs = np.random.default_rng(0).random((5, 8, 8))
    >>> cfg = MEIConfig(steps=30, blur_start=1.0, starts=("noise", "grey"))
    >>> res = ensemble_meis([LinearModel(w), LinearModel(1.1 * w)], imgs, cfg)
    >>> len(res.members), res.reliability > 0.99
    (2, True)
    """
    check(len(models) >= 1, "models", "at least one model", len(models))
    config = MEIConfig() if config is None else config
    t0 = time.perf_counter()
    members = [generate_mei(m, images, config) for m in models]
    joint = generate_mei(EnsembleModel(models), images, config)
    meis = [m.mei for m in members]
    corr, rel = agreement(meis)
    joint.members, joint.agreement, joint.reliability = members, corr, rel
    joint.phase_reliability = min(phase_agreement(meis), joint.phase_reliability)
    joint.seconds = time.perf_counter() - t0
    return joint


def blur_sigmas(config: MEIConfig) -> np.ndarray:
    """Blur sigma (pixels) at each step: linear decay over ``blur_fraction`` of the steps.

    Examples
    --------
    >>> from meireport.mei.synthesis import MEIConfig
    >>> blur_sigmas(MEIConfig(steps=10, blur_start=4.0, blur_end=0.0, blur_fraction=0.5))
    array([4. , 3.2, 2.4, 1.6, 0.8, 0. , 0. , 0. , 0. , 0. ])
    """
    frac = np.clip(np.arange(config.steps) / _n_decay(config), 0.0, 1.0)
    return config.blur_start + (config.blur_end - config.blur_start) * frac


def _n_decay(config: MEIConfig) -> int:
    """Steps over which the blur sigma decays."""
    return max(int(round(config.blur_fraction * config.steps)), 1)


def start_images(config: MEIConfig, shape: tuple[int, int]) -> np.ndarray:
    """The initial images named by ``config.starts`` (``n_starts x H x W`` in [0, 1]).

    Noise starts are white Gaussian noise stretched to [0, 1], the k-th drawn from
    ``default_rng([seed, k])``; black (0) and grey (0.5) starts carry ``config.jitter`` of
    seeded uniform noise (drawn from ``default_rng([seed, k, 1])``).

    Examples
    --------
    >>> from meireport.mei.synthesis import MEIConfig
    >>> s = start_images(MEIConfig(starts=("noise", "black", "grey"), jitter=0.0), (4, 6))
    >>> s.shape, float(s[1].max()), float(s[2].min())
    ((3, 4, 6), 0.0, 0.5)
    """
    out = []
    for k, name in enumerate(config.starts):
        if name == "noise":
            z = np.random.default_rng([config.seed, k]).normal(size=shape)
            out.append((z - z.min()) / np.ptp(z))
            continue
        u = np.random.default_rng([config.seed, k, 1]).random(shape)
        base = 0.0 if name == "black" else 0.5 - config.jitter / 2
        out.append(base + config.jitter * u)
    return np.stack(out)
