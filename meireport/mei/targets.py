"""What an MEI is synthesised for: model wrappers (one unit, an ensemble) and analytic neurons."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from meireport.errors import MeireportError
from meireport.mei._checks import check
from meireport.models.device import model_device

__all__ = [
    "UnitModel",
    "UnitsModel",
    "EnsembleModel",
    "LinearModel",
    "EnergyModel",
    "TrueNeuron",
    "predict",
]

Model = Callable[[torch.Tensor], torch.Tensor]



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
        check(int(index) == index and index >= 0, "index", "an integer >= 0", index)
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


class UnitsModel(nn.Module):
    """Many units of one population model, one per image: image ``b`` -> unit ``rows[b]``.

    What synthesises the MEIs of many units in one batch (:func:`meireport.mei.generate_meis`):
    with a model that has ``forward_units`` (:meth:`meireport.models.CNNModel.forward_units`)
    only the asked units are read out; else the whole output is computed and gathered.
    :meth:`restrict` narrows the batch to some of its images (those still being optimised).

    Examples
    --------
    >>> pop = nn.Sequential(nn.Flatten(), nn.Linear(6, 3))
    >>> m = UnitsModel(pop, [2, 0])
    >>> x = torch.rand(2, 1, 2, 3)
    >>> bool(torch.allclose(m(x), pop(x)[[0, 1], [2, 0]]))
    True
    """

    def __init__(self, model: nn.Module, rows):
        super().__init__()
        rows = np.atleast_1d(np.asarray(rows))
        check(rows.ndim == 1 and len(rows) > 0 and np.issubdtype(rows.dtype, np.integer)
              and int(rows.min()) >= 0, "rows", "unit positions >= 0, one per image", rows)
        self.model, self.rows = model, rows.astype(np.int64)
        self.active = np.arange(len(rows))

    def restrict(self, images) -> None:
        """Only the images at positions ``images`` (of the full batch) come next."""
        self.active = np.asarray(images, dtype=np.int64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Response of each image's unit, shape ``B`` (``B`` = the active images)."""
        rows = self.rows[self.active]
        if x.shape[0] != len(rows):
            raise MeireportError(f"x: expected {len(rows)} images (one per active unit), got "
                                 f"{x.shape[0]}")
        if hasattr(self.model, "forward_units"):
            return self.model.forward_units(x, rows)
        out = self.model(x)
        return out[torch.arange(len(rows), device=out.device), torch.as_tensor(rows,
                                                                              device=out.device)]


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
        check(len(models) >= 1, "models", "at least one model", len(models))
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
        check(w.ndim == 2, "weight", "an H x W filter", tuple(w.shape))
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
        check(
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
    drive`` with ``a = <rf_even, x - 0.5>``, ``b = <rf_odd, x - 0.5>`` and ``drive = max(0, a)``
    (simple, poor and surround units), ``sqrt(a^2 + b^2)`` (complex), ``sqrt(max(0, a) *
    max(0, b))`` (corner: an AND of two Gabor subunits) or 0 (untuned). Until trained models are
    plugged in, it stands in for a perfect model in positive controls.

    Parameters
    ----------
    truth : GroundTruth
        A simulated session's ground truth.
    unit_id : int
        The unit (an id of ``truth.unit_id``).
    smooth : float
        Width (drive units) of a softplus used in place of the hard rectifier(s) (both
        subunits' of a corner cell), so that the gradient never vanishes on a start the unit
        does not respond to (a trained model's ELU + 1 output has the same property); 0 gives
        the exact rate. For scale: natural images drive simulated units by |drive| ~0.1
        (median) to ~1.2 (99th percentile).

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

    A corner cell answers the sum of its subunits, not either subunit alone:

    >>> truth = simulate_session(tempfile.mkdtemp(), n_images=20, n_repeats=1,
    ...                          population={"VISp": (0, 0, 0, 0, 1, 0)}).truth
    >>> m = TrueNeuron(truth, int(truth.unit_id[0]), smooth=0.0)
    >>> w1, w2 = (torch.as_tensor(w[0], dtype=torch.float32) for w in (truth.rf_even, truth.rf_odd))
    >>> d = m.drive(0.5 + 5 * torch.stack([w1, (w1 + w2) / (w1 + w2).norm()])[:, None])
    >>> bool(d[1] > d[0])
    True
    """

    def __init__(self, truth, unit_id: int, smooth: float = 0.05):
        super().__init__()
        check(smooth >= 0, "smooth", ">= 0", smooth)
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
        if self.kind == "corner":
            b = (z * self.odd.to(x.dtype)).sum(dim=(-2, -1))
            p = self._rectify(a) * self._rectify(b)
            on = p > 0  # exact sqrt with a finite gradient (0 where a subunit is silent)
            return torch.where(on, torch.sqrt(torch.where(on, p, torch.ones_like(p))), 0.0)
        return self._rectify(a)

    def _rectify(self, a: torch.Tensor) -> torch.Tensor:
        """``max(0, a)``, or its softplus of width ``smooth``."""
        if self.smooth > 0:
            return self.smooth * nn.functional.softplus(a / self.smooth)
        return torch.relu(a)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Rate in spikes/s, shape ``B``."""
        return self.baseline + self.gain * self.drive(x)


def as_model(model) -> Model:
    check(callable(model), "model", "a callable mapping B x 1 x H x W to B", type(model))
    if isinstance(model, nn.Module):
        model.eval()
    return model


def responses(model: Model, x: torch.Tensor) -> torch.Tensor:
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
    model = as_model(model)
    a = np.asarray(images, dtype=np.float64)
    if a.ndim == 2:
        a = a[None]
    check(a.ndim == 3, "images", "an n x H x W stack", a.shape)
    out = []
    with torch.no_grad():
        for i in range(0, len(a), batch_size):
            x = torch.as_tensor(a[i : i + batch_size, None], dtype=model_dtype(model),
                                device=model_device(model))
            out.append(responses(model, x).double().cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0)


def model_dtype(model) -> torch.dtype:
    """The floating dtype of a model's parameters (else buffers); float32 for a callable."""
    if isinstance(model, nn.Module):
        for p in list(model.parameters()) + list(model.buffers()):
            if p.is_floating_point():
                return p.dtype
    return torch.float32
