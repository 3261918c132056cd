"""Whole models: crop -> core -> readout -> ELU + 1, ensembles, and rebuilding from a spec.

:class:`CNNModel` with one unit is the per-neuron CNN; with several units it is the population
model (one shared core, one readout position and feature vector per unit, trained jointly).
:class:`Ensemble` averages the predictions of models trained with different seeds.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from meireport.errors import MeireportError
from meireport.models._checks import pair
from meireport.models.core import CoreConfig, Stacked2dCore
from meireport.models.crop import InputCrop
from meireport.models.ln import LNConfig, LNModel
from meireport.models.readout import ReadoutConfig, make_readout, unit_rows_state
from meireport.stimuli import MODEL_SHAPE

__all__ = ["CNNConfig", "CNNModel", "Ensemble", "build_model", "inverse_elu1"]


@dataclass(frozen=True)
class CNNConfig:
    """Core, readout, input shape and crop of a :class:`CNNModel`.

    Examples
    --------
    >>> CNNConfig(core=CoreConfig(hidden_channels=8), crop_size=(32, 32)).crop_size
    (32, 32)
    """

    core: CoreConfig = field(default_factory=CoreConfig)
    readout: ReadoutConfig = field(default_factory=ReadoutConfig)
    input_shape: tuple[int, int] = MODEL_SHAPE
    crop_size: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.core, CoreConfig):
            raise MeireportError(f"core: expected a CoreConfig, got {type(self.core).__name__}")
        if not isinstance(self.readout, ReadoutConfig):
            raise MeireportError(
                f"readout: expected a ReadoutConfig, got {type(self.readout).__name__}"
            )
        object.__setattr__(self, "input_shape", pair("input_shape", self.input_shape))
        if self.crop_size is not None:
            crop = pair("crop_size", self.crop_size)
            if min(crop) < 2 * self.core.pooling:
                raise MeireportError(f"crop_size: expected (rows, cols) >= 2 * pooling, got {crop}")
            object.__setattr__(self, "crop_size", crop)

    def to_dict(self) -> dict:
        """Plain nested dict (lists for tuples)."""
        return {
            "core": self.core.to_dict(),
            "readout": self.readout.to_dict(),
            "input_shape": list(self.input_shape),
            "crop_size": None if self.crop_size is None else list(self.crop_size),
        }

    @classmethod
    def from_dict(cls, d: dict) -> CNNConfig:
        """Inverse of :meth:`to_dict`."""
        return cls(
            core=CoreConfig(**d["core"]),
            readout=ReadoutConfig(**d["readout"]),
            input_shape=tuple(d["input_shape"]),
            crop_size=None if d.get("crop_size") is None else tuple(d["crop_size"]),
        )


def inverse_elu1(mean_response) -> torch.Tensor:
    """The pre-activation ``x`` at which ``ELU(x) + 1`` equals ``mean_response`` (> 0).

    Examples
    --------
    >>> [round(float(v), 4) for v in inverse_elu1([0.5, 3.0])]
    [-0.6931, 2.0]
    """
    m = torch.as_tensor(np.asarray(mean_response, dtype=np.float32)).clamp_min(1e-3)
    return torch.where(m >= 1, m - 1, torch.log(m))


class CNNModel(nn.Module):
    """Per-neuron CNN (``n_units=1``) or shared-core population model (``n_units > 1``).

    ``images -> InputCrop -> Stacked2dCore -> readout -> ELU + 1``.

    Parameters
    ----------
    config : CNNConfig
        Core, readout, input shape and optional crop size.
    n_units : int
        Number of neurons read from the core.
    rf_centres : array_like, optional
        ``n_units x 2`` mapped RF centres ``(col, row)`` in image pixels: readout positions start
        there (NaN rows: no centre known, a position near the middle).
    crop_centre : tuple of float, optional
        ``(col, row)`` of the input window (with ``config.crop_size``; one unit only).

    Examples
    --------
    >>> cfg = CNNConfig(core=CoreConfig(hidden_channels=4, layers=2))
    >>> m = CNNModel(cfg, n_units=2, rf_centres=[[20.0, 10.0], [70.0, 40.0]])
    >>> tuple(m(torch.rand(3, 60, 96)).shape)
    (3, 2)
    >>> np.round(m.readout_positions_px(), 1).tolist()
    [[20.0, 10.0], [70.0, 40.0]]
    """

    def __init__(
        self, config: CNNConfig | None = None, n_units: int = 1, rf_centres=None, crop_centre=None
    ):
        super().__init__()
        self.config = CNNConfig() if config is None else config
        if isinstance(n_units, bool) or int(n_units) != n_units or int(n_units) < 1:
            raise MeireportError(f"n_units: expected an integer >= 1, got {n_units!r}")
        self.n_units = int(n_units)
        if self.config.crop_size is not None and self.n_units > 1:
            raise MeireportError(
                "crop_size: an RF-centred crop serves one unit; the population model is full-field"
            )
        self.crop_centre = None if crop_centre is None else tuple(float(v) for v in crop_centre)
        self.crop = InputCrop(self.config.input_shape, self.config.crop_size, self.crop_centre)
        self.core = Stacked2dCore(self.config.core, input_channels=1)
        h, w = self.core.output_shape(self.crop.output_shape)
        if h < 1 or w < 1:
            raise MeireportError(f"input_shape: too small for pooling {self.config.core.pooling}")
        self.feature_shape = (self.core.outchannels, h, w)
        positions = None if rf_centres is None else self._to_grid(rf_centres)
        self.readout = make_readout(
            self.config.readout, self.feature_shape, self.n_units, positions
        )

    def _to_grid(self, centres_px) -> np.ndarray:
        c = np.asarray(centres_px, dtype=np.float64).reshape(-1, 2)
        if len(c) != self.n_units:
            raise MeireportError(
                f"rf_centres: expected {self.n_units} (col, row) pairs, got {len(c)}"
            )
        left, top = self.crop.offset
        col, row = self.core.to_output_px(c[:, 0] - left, c[:, 1] - top)
        _, h, w = self.feature_shape
        return np.stack([2 * col / max(w - 1, 1) - 1, 2 * row / max(h - 1, 1) - 1], axis=1)

    def readout_positions_px(self) -> np.ndarray:
        """Readout positions as image pixels ``(col, row)``, ``n_units x 2``."""
        g = self.readout.positions().cpu().numpy().astype(np.float64)
        _, h, w = self.feature_shape
        col, row = self.core.to_input_px((g[:, 0] + 1) / 2 * (w - 1), (g[:, 1] + 1) / 2 * (h - 1))
        left, top = self.crop.offset
        return np.stack([col + left, row + top], axis=1)

    def spec(self) -> dict:
        """Everything needed to rebuild the module (plain values)."""
        return {
            "class": "CNNModel",
            "config": self.config.to_dict(),
            "n_units": self.n_units,
            "crop_centre": None if self.crop_centre is None else list(self.crop_centre),
        }

    def forward(self, x) -> torch.Tensor:
        """Predicted responses ``N x n_units`` (> 0)."""
        return F.elu(self.readout(self.core(self.crop(x)))) + 1

    def forward_units(self, x, rows) -> torch.Tensor:
        """Predicted response of unit ``rows[b]`` to image ``b``, shape ``N`` (> 0).

        ``forward(x)[arange(N), rows]`` with the readout computed for those units only.

        Examples
        --------
        >>> m = CNNModel(CNNConfig(core=CoreConfig(hidden_channels=4, layers=1)), n_units=3).eval()
        >>> x = torch.rand(2, 60, 96)
        >>> bool(torch.allclose(m.forward_units(x, [2, 0]), m(x)[[0, 1], [2, 0]], atol=1e-5))
        True
        """
        idx = torch.as_tensor(np.asarray(rows, dtype=np.int64), device=self.readout.bias.device)
        return F.elu(self.readout.forward_units(self.core(self.crop(x)), idx)) + 1

    def init_bias(self, mean_response) -> None:
        """Start the output near ``mean_response`` (one value or one per unit)."""
        with torch.no_grad():
            self.readout.bias.copy_(inverse_elu1(mean_response).expand(self.n_units))

    def regularizer(self) -> torch.Tensor:
        """Core regulariser (Laplace L2 + group sparsity) plus readout regulariser."""
        return self.core.regularizer() + self.readout.regularizer()

    def constrain(self) -> None:
        """Project readout parameters onto their constraints (after each optimiser step)."""
        self.readout.constrain()

    def unit_subset(self, rows) -> CNNModel:
        """The same core read out for the units at positions ``rows`` only (a new model).

        The core and each kept unit's readout are copied, so the subset's responses equal the
        full model's columns ``rows``: a shared model's neuron, standalone.

        Examples
        --------
        >>> m = CNNModel(CNNConfig(core=CoreConfig(hidden_channels=4, layers=1)), n_units=3).eval()
        >>> x = torch.rand(2, 60, 96)
        >>> bool(torch.allclose(m.unit_subset([2])(x), m(x)[:, 2:], atol=1e-5))
        True
        """
        rows = np.atleast_1d(np.asarray(rows, dtype=np.int64))
        sub = CNNModel(self.config, len(rows), crop_centre=self.crop_centre)
        sub.core.load_state_dict(self.core.state_dict())
        sub.readout.load_state_dict(unit_rows_state(self.readout, rows))
        return sub.train(self.training)


class Ensemble(nn.Module):
    """Average of models with the same units (e.g. trained with different seeds).

    Examples
    --------
    >>> e = Ensemble([LNModel(), LNModel()])
    >>> x = torch.full((2, 60, 96), 0.5)
    >>> tuple(e(x).shape), tuple(e.members_forward(x).shape)
    ((2, 1), (2, 2, 1))
    """

    def __init__(self, members):
        super().__init__()
        members = list(members)
        if not members:
            raise MeireportError("members: expected at least one model")
        units = {int(m.n_units) for m in members}
        if len(units) != 1:
            raise MeireportError(f"members: expected models with the same units, got {units}")
        self.members = nn.ModuleList(members)
        self.n_units = units.pop()

    def spec(self) -> dict:
        """Specs of the members."""
        return {"class": "Ensemble", "members": [m.spec() for m in self.members]}

    def members_forward(self, x) -> torch.Tensor:
        """Each member's prediction, ``members x N x n_units``."""
        return torch.stack([m(x) for m in self.members])

    def forward(self, x) -> torch.Tensor:
        """Mean prediction of the members, ``N x n_units``."""
        return self.members_forward(x).mean(dim=0)

    def forward_units(self, x, rows) -> torch.Tensor:
        """Mean over the members of :meth:`CNNModel.forward_units`."""
        return torch.stack([m.forward_units(x, rows) for m in self.members]).mean(dim=0)

    def regularizer(self) -> torch.Tensor:
        """Sum of the members' regularisers."""
        return sum(m.regularizer() for m in self.members)

    def constrain(self) -> None:
        """Constrain every member."""
        for m in self.members:
            m.constrain()

    def unit_subset(self, rows) -> Ensemble:
        """Every member's :meth:`CNNModel.unit_subset`."""
        return Ensemble([m.unit_subset(rows) for m in self.members]).train(self.training)


def build_model(spec: dict) -> nn.Module:
    """Rebuild an untrained model from its :meth:`spec` (weights come from a state dict).

    Examples
    --------
    >>> m = CNNModel(CNNConfig(core=CoreConfig(hidden_channels=4, layers=1)))
    >>> type(build_model(m.spec())).__name__
    'CNNModel'
    """
    if not isinstance(spec, dict) or "class" not in spec:
        raise MeireportError(
            f"spec: expected a dict with a 'class' entry, got {type(spec).__name__}"
        )
    kind = spec["class"]
    if kind == "CNNModel":
        return CNNModel(CNNConfig.from_dict(spec["config"]), spec["n_units"],
                        crop_centre=spec.get("crop_centre"))
    if kind == "LNModel":
        cfg = dict(spec["config"])
        cfg["input_shape"] = tuple(cfg["input_shape"])
        cfg["crop_size"] = None if cfg.get("crop_size") is None else tuple(cfg["crop_size"])
        return LNModel(LNConfig(**cfg), spec["n_units"], crop_centre=spec.get("crop_centre"))
    if kind == "Ensemble":
        return Ensemble([build_model(s) for s in spec["members"]])
    raise MeireportError(f"spec: unknown model class {kind!r} (CNNModel, LNModel, Ensemble)")
