"""Most Exciting Inputs: gradient ascent on a model's input, preconditioned in the Fourier domain.

The loop follows the seed study (Walker et al. 2019 style): at each step the gradient of

    loss(x) = r(x) - lambda * |c* - std(x)|

with respect to the image ``x`` is filtered in the Fourier domain by ``1 / |f|^a`` (favouring
smooth, low-frequency changes), the image takes a step along it, is blurred by a Gaussian whose
sigma decays over the steps, and is rescaled to [0, 1]. ``c*`` is the mean standard deviation of
the training images. Every constant is a field of :class:`MEIConfig`. Several starts (seeded
white noise, black, mean grey) are run; the best is kept and the agreement between starts (and
between ensemble members, :func:`ensemble_meis`) is the MEI's reliability figure.

Any model works: a callable mapping ``B x 1 x H x W`` tensors to ``B`` responses of one unit.
:class:`UnitModel` picks one unit of a population model, :class:`EnsembleModel` averages models,
and :class:`LinearModel`, :class:`EnergyModel` and :class:`TrueNeuron` are models whose optimum is
known (the last one is a simulated session's true neuron, for the in-silico inception loop).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn

from meireport.compare import phase_invariant_correlation
from meireport.errors import MeireportError

__all__ = [
    "MEIConfig",
    "MEIResult",
    "StartResult",
    "UnitModel",
    "EnsembleModel",
    "LinearModel",
    "EnergyModel",
    "TrueNeuron",
    "target_contrast",
    "fourier_filter",
    "precondition",
    "gaussian_blur",
    "rescale_unit",
    "blur_sigmas",
    "start_images",
    "agreement",
    "phase_agreement",
    "generate_mei",
    "ensemble_meis",
    "predict",
]

Model = Callable[[torch.Tensor], torch.Tensor]
_RESCALE = ("minmax", "clip")
_START_KINDS = ("noise", "black", "grey")


# --------------------------------------------------------------------------------------------
# configuration and results
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MEIConfig:
    """Every constant of the MEI loop (defaults: the seed study's, where it had one).

    Parameters
    ----------
    steps : int
        Gradient-ascent steps per start (seed: 1000).
    step_size : float
        Step along the preconditioned gradient (seed ``alpha`` = 0.1). With ``normalize_grad``
        it is the root-mean-square pixel change per step, whatever the model's response scale.
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
        ``c*``; default: the mean standard deviation of the training images given to
        :func:`generate_mei`.
    rescale : {"minmax", "clip"}
        How each step is brought back to [0, 1]: stretch min..max to 0..1 (seed) or clip.
    starts : tuple of str
        Initial images: ``"noise"`` (seeded white noise; each occurrence a new draw), ``"black"``,
        ``"grey"`` (0.5).
    seed : int
        Seed of the noise starts.
    jitter : float
        Amplitude of seeded noise added to the black and grey starts: a flat image is a
        stationary point of any model symmetric in contrast (an energy model's gradient
        vanishes there), so an exactly flat start might never move.
    reliable_threshold : float
        The MEI is flagged reliable when the median pairwise pixel correlation between the
        starts' (or ensemble members') MEIs reaches this value.
    dtype : {"auto", "float32", "float64"}
        Tensor precision of the loop; ``"auto"``: the model's own (float32 for a model without
        parameters or buffers).

    Examples
    --------
    >>> MEIConfig(steps=50).steps
    50
    >>> MEIConfig(rescale="median")
    Traceback (most recent call last):
    ...
    meireport.errors.MeireportError: rescale: expected one of ('minmax', 'clip'), got 'median'
    """

    steps: int = 1000
    step_size: float = 0.1
    normalize_grad: bool = True
    fourier_exponent: float = 0.25
    blur_start: float = 7.0
    blur_end: float = 0.001
    blur_fraction: float = 0.1
    contrast_weight: float = 2.0
    target_std: float | None = None
    rescale: str = "minmax"
    starts: tuple[str, ...] = ("noise", "noise", "black", "grey")
    seed: int = 0
    jitter: float = 1e-3
    reliable_threshold: float = 0.8
    dtype: str = "auto"

    def __post_init__(self) -> None:
        _check(
            int(self.steps) == self.steps and self.steps >= 1,
            "steps",
            "an integer >= 1",
            self.steps,
        )
        _check(self.step_size > 0, "step_size", "> 0", self.step_size)
        _check(self.fourier_exponent >= 0, "fourier_exponent", ">= 0", self.fourier_exponent)
        _check(self.blur_start >= 0, "blur_start", ">= 0", self.blur_start)
        _check(self.blur_end >= 0, "blur_end", ">= 0", self.blur_end)
        _check(0 < self.blur_fraction <= 1, "blur_fraction", "in (0, 1]", self.blur_fraction)
        _check(self.contrast_weight >= 0, "contrast_weight", ">= 0", self.contrast_weight)
        if self.target_std is not None:
            _check(self.target_std > 0, "target_std", "> 0 or None", self.target_std)
        _check(self.rescale in _RESCALE, "rescale", f"one of {_RESCALE}", repr(self.rescale))
        _check(len(self.starts) >= 1, "starts", "at least one start", self.starts)
        bad = [s for s in self.starts if s not in _START_KINDS]
        _check(not bad, "starts", f"names from {_START_KINDS}", bad)
        _check(0 <= self.jitter < 0.5, "jitter", "in [0, 0.5)", self.jitter)
        _check(
            -1 <= self.reliable_threshold <= 1,
            "reliable_threshold",
            "in [-1, 1]",
            self.reliable_threshold,
        )
        _check(
            self.dtype in ("auto", "float32", "float64"),
            "dtype",
            "'auto', 'float32' or 'float64'",
            repr(self.dtype),
        )

    def to_dict(self) -> dict:
        """JSON-serialisable copy (for checkpoints and the report)."""
        return asdict(self) | {"starts": list(self.starts)}


@dataclass
class StartResult:
    """One start of the loop: its final image and its per-step trace.

    ``response`` and ``std`` have ``steps + 1`` entries: the model's response and the image's
    standard deviation before each step, and for the final image.
    """

    name: str
    image: np.ndarray
    response: np.ndarray
    std: np.ndarray

    @property
    def final_response(self) -> float:
        """Predicted response to the final image."""
        return float(self.response[-1])


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
    reliable : bool
        ``reliability >= config.reliable_threshold``.
    phase_reliability : float
        Median pairwise :func:`meireport.compare.phase_invariant_correlation`: agreement up to
        the carrier's phase, which a complex cell's MEI is free to take (see :attr:`status`).
    c_star : float
        Target contrast used by the penalty.
    config : MEIConfig
    seconds : float
        Wall time of the synthesis.
    members : list of MEIResult
        Per-member results (ensembles only, :func:`ensemble_meis`).
    """

    mei: np.ndarray
    response: float
    best: int
    starts: list[StartResult]
    agreement: np.ndarray
    reliability: float
    reliable: bool
    phase_reliability: float
    c_star: float
    config: MEIConfig
    seconds: float
    members: list[MEIResult] = field(default_factory=list)

    @property
    def status(self) -> str:
        """What the MEI can be trusted for.

        ``"reliable"``; ``"phase-invariant"`` (the starts agree only up to the carrier's
        phase: report orientation, frequency and position, not the phase); or
        ``"unreliable"`` (the MEI changes with the start: not a finding).
        """
        if self.reliable:
            return "reliable"
        if self.phase_reliability >= self.config.reliable_threshold:
            return "phase-invariant"
        return "unreliable"

    def summary(self) -> dict:
        """Flat, JSON-serialisable figures for the report."""
        return {
            "mei_pred": float(self.response),
            "best_start": self.starts[self.best].name if self.starts else "ensemble",
            "reliability": float(self.reliability),
            "reliable": bool(self.reliable),
            "phase_reliability": float(self.phase_reliability),
            "status": self.status,
            "c_star": float(self.c_star),
            "mei_std": float(self.mei.std()),
            "seconds": float(self.seconds),
        }


def _check(ok: bool, name: str, expected: str, got) -> None:
    if not ok:
        raise MeireportError(f"{name}: expected {expected}, got {got}")


# --------------------------------------------------------------------------------------------
# model adapters and models with a known optimum
# --------------------------------------------------------------------------------------------
class UnitModel(nn.Module):
    """One unit of a population model: ``model(x)[:, index]``.

    Examples
    --------
    >>> pop = nn.Sequential(nn.Flatten(), nn.Linear(6, 3))
    >>> UnitModel(pop, 2)(torch.zeros(4, 1, 2, 3)).shape
    torch.Size([4])
    """

    def __init__(self, model: nn.Module, index: int):
        super().__init__()
        _check(int(index) == index and index >= 0, "index", "an integer >= 0", index)
        self.model, self.index = model, int(index)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Response of the chosen unit, shape ``B``."""
        out = self.model(x)
        if out.ndim != 2 or out.shape[1] <= self.index:
            raise MeireportError(
                f"index: expected < n_units of a B x n_units output, got {self.index} for "
                f"output shape {tuple(out.shape)}"
            )
        return out[:, self.index]


class EnsembleModel(nn.Module):
    """Average of several single-unit models (e.g. seeds or folds of one neuron's CNN).

    Examples
    --------
    >>> w = torch.ones(2, 2)
    >>> m = EnsembleModel([LinearModel(w), LinearModel(-w)])
    >>> float(m(torch.ones(1, 1, 2, 2)).item())
    0.0
    """

    def __init__(self, models: Sequence[Model]):
        super().__init__()
        _check(len(models) >= 1, "models", "at least one model", len(models))
        self.members = list(models)
        self._modules_list = nn.ModuleList([m for m in models if isinstance(m, nn.Module)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Mean response of the members, shape ``B``."""
        return torch.stack([m(x) for m in self.members]).mean(dim=0)


class LinearModel(nn.Module):
    """``r(x) = offset + <w, x - 0.5>``: a linear unit whose optimum at fixed contrast is ``w``.

    Examples
    --------
    >>> m = LinearModel(torch.ones(2, 2))
    >>> float(m(torch.ones(1, 1, 2, 2)).item())
    2.0
    """

    def __init__(self, weight, offset: float = 0.0):
        super().__init__()
        w = torch.as_tensor(np.asarray(weight), dtype=torch.float32)
        _check(w.ndim == 2, "weight", "an H x W filter", tuple(w.shape))
        self.register_buffer("weight", w)
        self.offset = float(offset)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Response, shape ``B``."""
        return self.offset + ((x[:, 0] - 0.5) * self.weight.to(x.dtype)).sum(dim=(-2, -1))


class EnergyModel(nn.Module):
    """Energy model ``sqrt(<even, x - 0.5>^2 + <odd, x - 0.5>^2 + eps)`` (a complex cell).

    Its optimum at fixed contrast is any phase of the quadrature pair ``(even, odd)``.

    Examples
    --------
    >>> e, o = torch.zeros(2, 2), torch.zeros(2, 2)
    >>> e[0, 0], o[1, 1] = 1.0, 1.0
    >>> x = torch.full((1, 1, 2, 2), 0.5)
    >>> x[0, 0, 0, 0], x[0, 0, 1, 1] = 3.5, 4.5
    >>> round(float(EnergyModel(e, o, eps=0.0)(x).item()), 4)
    5.0
    """

    def __init__(self, even, odd, eps: float = 1e-6):
        super().__init__()
        e = torch.as_tensor(np.asarray(even), dtype=torch.float32)
        o = torch.as_tensor(np.asarray(odd), dtype=torch.float32)
        _check(
            e.ndim == 2 and e.shape == o.shape,
            "even/odd",
            "two H x W filters",
            (tuple(e.shape), tuple(o.shape)),
        )
        self.register_buffer("even", e)
        self.register_buffer("odd", o)
        self.eps = float(eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Response, shape ``B``."""
        z = x[:, 0] - 0.5
        a = (z * self.even.to(x.dtype)).sum(dim=(-2, -1))
        b = (z * self.odd.to(x.dtype)).sum(dim=(-2, -1))
        return torch.sqrt(a**2 + b**2 + self.eps)


class TrueNeuron(nn.Module):
    """A simulated unit's true rate as a torch model (the in-silico inception loop's oracle).

    Implements :func:`meireport.sources.simulate.true_rate` for one unit: ``baseline + gain *
    drive`` with ``drive = max(0, <rf_even, x - 0.5>)`` (simple and poor units),
    ``sqrt(<rf_even, x - 0.5>^2 + <rf_odd, x - 0.5>^2)`` (complex) or 0 (untuned). Until trained
    models are plugged in, it stands in for a perfect model in positive controls.

    Parameters
    ----------
    truth : GroundTruth
        A simulated session's ground truth.
    unit_id : int
        The unit (an id of ``truth.unit_id``).
    smooth : float
        Width (drive units) of a softplus used in place of the hard rectifier, so that the
        gradient never vanishes on a start the unit does not respond to (a trained model's
        ELU + 1 output has the same property); 0 gives the exact rate. For scale: natural
        images drive simulated units by |drive| ~0.1 (median) to ~1.2 (99th percentile).

    Examples
    --------
    >>> import tempfile
    >>> from meireport.sources import simulate_session
    >>> truth = simulate_session(tempfile.mkdtemp(), n_images=2, n_repeats=1,
    ...                          population={"VISp": (1, 1, 1, 0)}).truth
    >>> unit = int(truth.unit_id[0])
    >>> m = TrueNeuron(truth, unit, smooth=0.0)
    >>> grey = torch.full((1, 1, 60, 96), 0.5)
    >>> bool(np.isclose(float(m(grey)), truth.baseline[0]))
    True
    """

    def __init__(self, truth, unit_id: int, smooth: float = 0.05):
        super().__init__()
        _check(smooth >= 0, "smooth", ">= 0", smooth)
        i = int(truth.index_of([unit_id])[0])
        self.unit_id, self.kind, self.smooth = int(unit_id), str(truth.kind[i]), float(smooth)
        self.baseline, self.gain = float(truth.baseline[i]), float(truth.gain[i])
        self.register_buffer("even", torch.as_tensor(truth.rf_even[i], dtype=torch.float32))
        self.register_buffer("odd", torch.as_tensor(truth.rf_odd[i], dtype=torch.float32))

    def drive(self, x: torch.Tensor) -> torch.Tensor:
        """The unit's drive (before gain and baseline), shape ``B``."""
        z = x[:, 0] - 0.5
        a = (z * self.even.to(x.dtype)).sum(dim=(-2, -1))
        if self.kind == "untuned":
            return torch.zeros_like(a)
        if self.kind == "complex":
            b = (z * self.odd.to(x.dtype)).sum(dim=(-2, -1))
            return torch.sqrt(a**2 + b**2 + 1e-12)
        if self.smooth > 0:
            return self.smooth * nn.functional.softplus(a / self.smooth)
        return torch.relu(a)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Rate in spikes/s, shape ``B``."""
        return self.baseline + self.gain * self.drive(x)


# --------------------------------------------------------------------------------------------
# the pieces of the loop
# --------------------------------------------------------------------------------------------
def target_contrast(images) -> float:
    """``c*``: the mean over images of each image's pixel standard deviation.

    Examples
    --------
    >>> target_contrast(np.stack([np.zeros((4, 4)), np.eye(4)]))
    0.21650635094610965
    """
    a = np.asarray(images, dtype=np.float64)
    _check(a.ndim == 3 and len(a) > 0, "images", "a non-empty n x H x W stack", a.shape)
    return float(a.reshape(len(a), -1).std(axis=1).mean())


def fourier_filter(shape: tuple[int, int], exponent: float) -> torch.Tensor:
    """The ``1 / |f|^a`` gradient filter on the ``rfft2`` grid, normalised to mean 1.

    ``|f|`` is the true frequency magnitude in cycles/pixel (negative frequencies folded, which
    the seed's filter did not do); the DC term gets the weight of the lowest non-zero frequency.

    Examples
    --------
    >>> f = fourier_filter((60, 96), 0.25)
    >>> tuple(f.shape), round(float(f.mean()), 6), bool(f[0, 1] > f[0, 40])
    ((60, 49), 1.0, True)
    """
    rows, cols = shape
    fy = torch.fft.fftfreq(rows, dtype=torch.float64)
    fx = torch.fft.rfftfreq(cols, dtype=torch.float64)
    radius = torch.sqrt(fy[:, None] ** 2 + fx[None, :] ** 2)
    radius[0, 0] = radius[radius > 0].min()
    filt = radius ** (-float(exponent))
    return filt / filt.mean()


def precondition(grad: torch.Tensor, filt: torch.Tensor) -> torch.Tensor:
    """Filter ``... x H x W`` gradients in the Fourier domain (``torch.fft``).

    Examples
    --------
    >>> g = torch.randn(2, 1, 6, 8, dtype=torch.float64)
    >>> bool(torch.allclose(precondition(g, torch.ones(6, 5, dtype=torch.float64)), g))
    True
    """
    spec = torch.fft.rfft2(grad) * filt.to(grad.dtype)
    return torch.fft.irfft2(spec, s=grad.shape[-2:])


def _gauss_kernel(sigma: float, size: int, dtype) -> torch.Tensor:
    radius = max(1, min(int(np.ceil(4 * sigma)), size - 1))
    t = torch.arange(-radius, radius + 1, dtype=dtype)
    k = torch.exp(-(t**2) / (2 * sigma**2))
    return k / k.sum()


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``B x 1 x H x W`` images (reflecting edges).

    Examples
    --------
    >>> x = torch.zeros(1, 1, 21, 21)
    >>> x[0, 0, 10, 10] = 1.0
    >>> y = gaussian_blur(x, 1.0)
    >>> round(float(y.sum()), 4), bool(y[0, 0, 10, 10] < 0.2)
    (1.0, True)
    """
    if sigma < 0.05:
        return x
    rows, cols = x.shape[-2:]
    kr, kc = _gauss_kernel(sigma, rows, x.dtype), _gauss_kernel(sigma, cols, x.dtype)
    pr, pc = len(kr) // 2, len(kc) // 2
    y = nn.functional.pad(x, (0, 0, pr, pr), mode="reflect")
    y = nn.functional.conv2d(y, kr.view(1, 1, -1, 1))
    y = nn.functional.pad(y, (pc, pc, 0, 0), mode="reflect")
    return nn.functional.conv2d(y, kc.view(1, 1, 1, -1))


def rescale_unit(x: torch.Tensor, how: str = "minmax") -> torch.Tensor:
    """Bring each image of ``B x 1 x H x W`` back to [0, 1]: stretch min..max, or clip.

    A flat image becomes mean grey (0.5) under ``minmax``.

    Examples
    --------
    >>> rescale_unit(torch.tensor([[[[2.0, 4.0]]]])).tolist()
    [[[[0.0, 1.0]]]]
    >>> rescale_unit(torch.tensor([[[[-1.0, 0.3]]]]), "clip").tolist()
    [[[[0.0, 0.30000001192092896]]]]
    """
    if how == "clip":
        return x.clamp(0.0, 1.0)
    flat = x.flatten(1)
    lo, hi = flat.min(dim=1).values, flat.max(dim=1).values
    span = (hi - lo).view(-1, 1, 1, 1)
    scaled = (x - lo.view(-1, 1, 1, 1)) / span.clamp_min(1e-12)
    return torch.where(span > 1e-12, scaled, torch.full_like(x, 0.5))


def blur_sigmas(config: MEIConfig) -> np.ndarray:
    """Blur sigma (pixels) at each step: linear decay over ``blur_fraction`` of the steps.

    Examples
    --------
    >>> blur_sigmas(MEIConfig(steps=10, blur_start=4.0, blur_end=0.0, blur_fraction=0.5))
    array([4. , 3.2, 2.4, 1.6, 0.8, 0. , 0. , 0. , 0. , 0. ])
    """
    n_decay = max(int(round(config.blur_fraction * config.steps)), 1)
    frac = np.clip(np.arange(config.steps) / n_decay, 0.0, 1.0)
    return config.blur_start + (config.blur_end - config.blur_start) * frac


def start_images(config: MEIConfig, shape: tuple[int, int]) -> np.ndarray:
    """The initial images named by ``config.starts`` (``n_starts x H x W`` in [0, 1]).

    Noise starts are white Gaussian noise stretched to [0, 1], the k-th drawn from
    ``default_rng([seed, k])``; black (0) and grey (0.5) starts carry ``config.jitter`` of
    seeded uniform noise (drawn from ``default_rng([seed, k, 1])``).

    Examples
    --------
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
    _check(a.ndim == 3 and len(a) >= 1, "images", "an n x H x W stack", a.shape)
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
    _check(a.ndim == 3 and len(a) >= 1, "images", "an n x H x W stack", a.shape)
    pairs = [(i, j) for i in range(len(a)) for j in range(i + 1, len(a))]
    if not pairs:
        return 1.0
    return float(np.median([phase_invariant_correlation(a[i], a[j]) for i, j in pairs]))


def _as_model(model) -> Model:
    _check(callable(model), "model", "a callable mapping B x 1 x H x W to B", type(model))
    if isinstance(model, nn.Module):
        model.eval()
    return model


def _responses(model: Model, x: torch.Tensor) -> torch.Tensor:
    r = model(x)
    if r.ndim == 2 and r.shape[1] == 1:
        r = r[:, 0]
    if r.shape != (x.shape[0],):
        raise MeireportError(
            f"model: expected one response per image (shape ({x.shape[0]},)), got "
            f"{tuple(r.shape)}; wrap a population model in UnitModel(model, index)"
        )
    return r


def predict(model: Model, images, batch_size: int = 256) -> np.ndarray:
    """Model responses to an ``n x H x W`` image stack (no gradients), as float64.

    Examples
    --------
    >>> predict(LinearModel(np.ones((2, 2))), np.ones((3, 2, 2))).tolist()
    [2.0, 2.0, 2.0]
    """
    model = _as_model(model)
    a = np.asarray(images, dtype=np.float64)
    if a.ndim == 2:
        a = a[None]
    _check(a.ndim == 3, "images", "an n x H x W stack", a.shape)
    out = []
    with torch.no_grad():
        for i in range(0, len(a), batch_size):
            x = torch.as_tensor(a[i : i + batch_size, None], dtype=_model_dtype(model))
            out.append(_responses(model, x).double().numpy())
    return np.concatenate(out) if out else np.zeros(0)


def _model_dtype(model) -> torch.dtype:
    if isinstance(model, nn.Module):
        for p in list(model.parameters()) + list(model.buffers()):
            if p.is_floating_point():
                return p.dtype
    return torch.float32


# --------------------------------------------------------------------------------------------
# the loop
# --------------------------------------------------------------------------------------------
def _ascend(model: Model, x0: np.ndarray, c_star: float, config: MEIConfig):
    """Run the loop on a batch of starts; returns final images and response/std traces."""
    dtype = _model_dtype(model) if config.dtype == "auto" else getattr(torch, config.dtype)
    x = torch.as_tensor(x0[:, None], dtype=dtype)
    filt = fourier_filter(tuple(x0.shape[1:]), config.fourier_exponent).to(dtype)
    sigmas = blur_sigmas(config)
    resp = np.empty((len(x0), config.steps + 1))
    stds = np.empty_like(resp)
    lam = float(config.contrast_weight)
    for t in range(config.steps):
        x.requires_grad_(True)
        r = _responses(model, x)
        s = torch.sqrt(x.flatten(1).var(dim=1, correction=0) + 1e-12)
        if not torch.all(torch.isfinite(r)):
            raise MeireportError(f"model: expected finite responses, got {r.tolist()} at step {t}")
        loss = r - lam * torch.abs(c_star - s)
        (g,) = torch.autograd.grad(loss.sum(), x)
        resp[:, t], stds[:, t] = r.detach().double().numpy(), s.detach().double().numpy()
        g = precondition(g, filt)
        if config.normalize_grad:
            rms = torch.sqrt((g.flatten(1) ** 2).mean(dim=1)).view(-1, 1, 1, 1)
            g = g / rms.clamp_min(1e-20)
        with torch.no_grad():
            x = gaussian_blur(x.detach() + config.step_size * g, float(sigmas[t]))
            x = rescale_unit(x, config.rescale)
    with torch.no_grad():
        resp[:, -1] = _responses(model, x).double().numpy()
        stds[:, -1] = x.flatten(1).std(dim=1, correction=0).double().numpy()
    return x[:, 0].double().numpy(), resp, stds


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
        The best start's image (highest predicted response), every start's image and trace,
        and the agreement between starts.

    Examples
    --------
    >>> w = np.zeros((8, 8)); w[2:6, 3] = 1.0; w[2:6, 4] = -1.0
    >>> imgs = np.random.default_rng(0).random((5, 8, 8))
    >>> res = generate_mei(LinearModel(w), imgs, MEIConfig(steps=30, blur_start=1.0))
    >>> res.mei.shape, bool(res.mei[4, 3] > res.mei[4, 4]), res.reliable
    ((8, 8), True, True)
    """
    config = MEIConfig() if config is None else config
    _check(isinstance(config, MEIConfig), "config", "an MEIConfig", type(config))
    model = _as_model(model)
    imgs = np.asarray(images, dtype=np.float64)
    _check(imgs.ndim == 3 and len(imgs) > 0, "images", "a non-empty n x H x W stack", imgs.shape)
    c_star = config.target_std if config.target_std is not None else target_contrast(imgs)
    t0 = time.perf_counter()
    final, resp, stds = _ascend(model, start_images(config, imgs.shape[1:]), c_star, config)
    starts = [StartResult(name, final[i], resp[i], stds[i]) for i, name in enumerate(config.starts)]
    best = int(np.argmax(resp[:, -1]))
    corr, rel = agreement(final)
    return MEIResult(
        mei=final[best],
        response=float(resp[best, -1]),
        best=best,
        starts=starts,
        agreement=corr,
        reliability=rel,
        reliable=bool(rel >= config.reliable_threshold),
        phase_reliability=phase_agreement(final),
        c_star=float(c_star),
        config=config,
        seconds=time.perf_counter() - t0,
    )


def ensemble_meis(models: Sequence[Model], images, config: MEIConfig | None = None) -> MEIResult:
    """The MEI of an ensemble (members averaged) and the agreement of the members' own MEIs.

    The returned MEI, response and starts are those of :class:`EnsembleModel`; ``agreement``
    and ``reliability`` compare the members' MEIs (one per member, each from all starts), so an
    MEI that only one member supports is flagged; ``reliable`` also needs the ensemble's own
    starts to agree.

    Examples
    --------
    >>> w = np.zeros((8, 8)); w[2:6, 3] = 1.0; w[2:6, 4] = -1.0
    >>> imgs = np.random.default_rng(0).random((5, 8, 8))
    >>> cfg = MEIConfig(steps=30, blur_start=1.0, starts=("noise", "grey"))
    >>> res = ensemble_meis([LinearModel(w), LinearModel(1.1 * w)], imgs, cfg)
    >>> len(res.members), res.reliable
    (2, True)
    """
    _check(len(models) >= 1, "models", "at least one model", len(models))
    config = MEIConfig() if config is None else config
    t0 = time.perf_counter()
    members = [generate_mei(m, images, config) for m in models]
    joint = generate_mei(EnsembleModel(models), images, config)
    meis = [m.mei for m in members]
    corr, rel = agreement(meis)
    joint.members, joint.agreement, joint.reliability = members, corr, rel
    joint.reliable = bool(rel >= config.reliable_threshold and joint.reliable)
    joint.phase_reliability = min(phase_agreement(meis), joint.phase_reliability)
    joint.seconds = time.perf_counter() - t0
    return joint
