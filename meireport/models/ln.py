"""LN baseline: one Laplace-smoothed linear filter per neuron and an output nonlinearity.

``rate = f(<w, x - 0.5> + b)`` with ``f`` softplus (default) or exp. With Poisson loss both give a
convex fit. The filter is regularised by a Laplace L2 smoothness penalty (natural images carry
little information about a filter's high spatial frequencies) plus a small L2 penalty.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from meireport.errors import MeireportError
from meireport.models._checks import pair
from meireport.models.core import laplace_l2
from meireport.models.crop import InputCrop
from meireport.stimuli import MODEL_SHAPE

__all__ = ["LNConfig", "LNModel", "LN_NONLINEARITIES"]

LN_NONLINEARITIES = ("softplus", "exp")


@dataclass(frozen=True)
class LNConfig:
    """The LN baseline's input and regularisation.

    Parameters
    ----------
    nonlinearity : {"softplus", "exp"}
        Output nonlinearity.
    gamma_laplace : float
        Weight of the Laplace L2 penalty (summed over filter pixels).
    gamma_l2 : float
        Weight of the plain L2 penalty (summed over filter pixels).
    input_shape : tuple of int
        Full model image ``(rows, cols)``.
    crop_size : tuple of int, optional
        Filter window ``(rows, cols)`` around the RF centre; None for a full-field filter.

    Examples
    --------
    >>> LNConfig(crop_size=(24, 24)).crop_size
    (24, 24)
    """

    nonlinearity: str = "softplus"
    gamma_laplace: float = 0.001
    gamma_l2: float = 0.001
    input_shape: tuple[int, int] = MODEL_SHAPE
    crop_size: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if self.nonlinearity not in LN_NONLINEARITIES:
            raise MeireportError(
                f"nonlinearity: expected one of {LN_NONLINEARITIES}, got {self.nonlinearity!r}"
            )
        for name in ("gamma_laplace", "gamma_l2"):
            if not float(getattr(self, name)) >= 0:
                raise MeireportError(f"{name}: expected a number >= 0, got {getattr(self, name)}")
        object.__setattr__(self, "input_shape", pair("input_shape", self.input_shape))
        if self.crop_size is not None:
            crop = pair("crop_size", self.crop_size)
            if min(crop) < 3:
                raise MeireportError(f"crop_size: expected (rows, cols) >= 3, got {crop}")
            object.__setattr__(self, "crop_size", crop)

    def to_dict(self) -> dict:
        """Plain-dict form (lists for tuples)."""
        d = asdict(self)
        d["input_shape"] = list(self.input_shape)
        d["crop_size"] = None if self.crop_size is None else list(self.crop_size)
        return d


class LNModel(nn.Module):
    """Linear filter per neuron + softplus/exp: ``N x rows x cols`` images -> ``N x n_units``.

    Parameters
    ----------
    config : LNConfig
        Nonlinearity, regularisation, input shape and crop size.
    n_units : int
        Number of neurons (independent filters).
    crop_centre : tuple of float, optional
        ``(col, row)`` of the filter window (the RF centre); needed with ``config.crop_size``.

    Examples
    --------
    >>> m = LNModel(LNConfig(crop_size=(20, 20)), crop_centre=(40.0, 30.0))
    >>> tuple(m(torch.full((3, 60, 96), 0.5)).shape), tuple(m.filter_image().shape)
    ((3, 1), (1, 60, 96))
    """

    def __init__(self, config: LNConfig | None = None, n_units: int = 1, crop_centre=None):
        super().__init__()
        self.config = LNConfig() if config is None else config
        if isinstance(n_units, bool) or int(n_units) != n_units or int(n_units) < 1:
            raise MeireportError(f"n_units: expected an integer >= 1, got {n_units!r}")
        self.n_units = int(n_units)
        self.crop_centre = None if crop_centre is None else tuple(float(v) for v in crop_centre)
        self.crop = InputCrop(self.config.input_shape, self.config.crop_size, self.crop_centre)
        h, w = self.crop.output_shape
        self.weight = nn.Parameter(torch.zeros(self.n_units, h, w))
        self.bias = nn.Parameter(torch.zeros(self.n_units))

    def spec(self) -> dict:
        """Everything needed to rebuild the module (plain values)."""
        return {
            "class": "LNModel",
            "config": self.config.to_dict(),
            "n_units": self.n_units,
            "crop_centre": None if self.crop_centre is None else list(self.crop_centre),
        }

    def linear(self, x) -> torch.Tensor:
        """Filter outputs before the nonlinearity, ``N x n_units``."""
        z = self.crop(x).flatten(1)
        return z @ self.weight.flatten(1).T + self.bias

    def forward(self, x) -> torch.Tensor:
        """Predicted responses ``N x n_units`` (>= 0)."""
        z = self.linear(x)
        return F.softplus(z) if self.config.nonlinearity == "softplus" else torch.exp(z)

    def init_bias(self, mean_response) -> None:
        """Start at the constant prediction ``mean_response`` (one value or one per unit)."""
        m = torch.as_tensor(np.asarray(mean_response, dtype=np.float32)).clamp_min(1e-3)
        with torch.no_grad():
            if self.config.nonlinearity == "softplus":
                self.bias.copy_(torch.log(torch.expm1(m)).expand(self.n_units))
            else:
                self.bias.copy_(torch.log(m).expand(self.n_units))

    def regularizer(self) -> torch.Tensor:
        """``gamma_laplace * sum (Laplacian w)^2 / 2 + gamma_l2 * sum w^2``."""
        c = self.config
        return c.gamma_laplace * laplace_l2(self.weight, "sum") + c.gamma_l2 * self.weight.pow(
            2
        ).sum()

    def constrain(self) -> None:
        """No constraint (kept for a uniform training loop)."""

    def filter_image(self) -> torch.Tensor:
        """The filters in full image pixels, ``n_units x rows x cols`` (0 outside the crop)."""
        rows, cols = self.config.input_shape
        out = self.weight.new_zeros(self.n_units, rows, cols)
        left, top = self.crop.offset
        h, w = self.crop.output_shape
        r0, c0 = max(top, 0), max(left, 0)
        r1, c1 = min(top + h, rows), min(left + w, cols)
        out[:, r0:r1, c0:c1] = self.weight.detach()[:, r0 - top : r1 - top, c0 - left : c1 - left]
        return out
