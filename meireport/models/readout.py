"""Readouts: feature maps -> one response per neuron.

:class:`PointPyramidReadout` (the seed's readout, Walker et al. 2019): the feature maps are split
into a Laplace pyramid, each neuron reads all levels at one learned position with
``grid_sample`` and sums them with its (optionally positive) feature weights.
:class:`FactorizedReadout` (option): a learned spatial mask per neuron times its feature weights.
A readout knows nothing of convolutions: it sees ``N x channels x rows x cols`` maps and
positions in ``grid_sample``'s normalised coordinates (-1 = first pixel, +1 = last pixel).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from meireport.errors import MeireportError

__all__ = [
    "ReadoutConfig",
    "Pyramid",
    "PointPyramidReadout",
    "FactorizedReadout",
    "make_readout",
    "unit_rows_state",
    "READOUT_KINDS",
]

READOUT_KINDS = ("point", "factorized")

# Burt & Adelson's binomial kernel: its even and odd taps sum alike (1 + 6 + 1 = 4 + 4), so
# upsampling a constant gives a constant and the band-pass levels ignore uniform input (the
# seed's 'gauss5x5' kernel leaves a 4 % checkerboard).
_BINOMIAL5 = np.outer(np.float32([1, 4, 6, 4, 1]), np.float32([1, 4, 6, 4, 1])) / np.float32(256)


@dataclass(frozen=True)
class ReadoutConfig:
    """Kind and regularisation of the readout.

    Parameters
    ----------
    kind : {"point", "factorized"}
        Pyramid point readout (seed) or factorised spatial-mask x features readout
        (``"factorised"`` is accepted too).
    scale_n : int
        Laplace pyramid levels of the point readout (seed: 3; ``scale_n + 1`` maps are read).
    positive : bool
        Constrain feature weights (and the factorised mask) to be >= 0 (seed: yes).
    init_range : float
        Point readout without an RF centre: initial positions uniform in ``+-init_range``.
    gamma_features : float
        L1 penalty on the feature weights.
    gamma_mask : float
        L1 penalty on the factorised spatial mask.
    init_sigma : float
        Factorised readout: sigma (output-map pixels) of the initial Gaussian mask at the RF.

    Examples
    --------
    >>> ReadoutConfig(kind="factorized").kind
    'factorized'
    """

    kind: str = "point"
    scale_n: int = 3
    positive: bool = True
    init_range: float = 0.1
    gamma_features: float = 0.01
    gamma_mask: float = 0.01
    init_sigma: float = 2.0

    def __post_init__(self) -> None:
        if self.kind == "factorised":  # British spelling accepted
            object.__setattr__(self, "kind", "factorized")
        if self.kind not in READOUT_KINDS:
            raise MeireportError(f"kind: expected one of {READOUT_KINDS}, got {self.kind!r}")
        if int(self.scale_n) != self.scale_n or int(self.scale_n) < 0:
            raise MeireportError(f"scale_n: expected an integer >= 0, got {self.scale_n!r}")
        if not 0 <= float(self.init_range) <= 1:
            raise MeireportError(f"init_range: expected a number in [0, 1], got {self.init_range}")
        for name in ("gamma_features", "gamma_mask"):
            if not float(getattr(self, name)) >= 0:
                raise MeireportError(f"{name}: expected a number >= 0, got {getattr(self, name)}")
        if not float(self.init_sigma) > 0:
            raise MeireportError(f"init_sigma: expected a number > 0, got {self.init_sigma}")

    def to_dict(self) -> dict:
        """Plain-dict form (for checkpoints and the params layer)."""
        return asdict(self)


class Pyramid(nn.Module):
    """Laplace pyramid of a stack of maps: ``scale_n`` band-pass levels plus the low-pass rest.

    Each split smooths with a 5 x 5 binomial kernel, keeps every second pixel (``lo``) and
    subtracts the upsampled ``lo`` from the input (``hi``). Summing the upsampled levels gives
    the input back.

    Examples
    --------
    >>> levels = Pyramid(scale_n=2)(torch.zeros(1, 3, 30, 48))
    >>> [tuple(v.shape[-2:]) for v in levels]
    [(30, 48), (15, 24), (8, 12)]
    """

    def __init__(self, scale_n: int = 3):
        super().__init__()
        self.scale_n = int(scale_n)
        self.register_buffer("filter", torch.from_numpy(_BINOMIAL5.astype(np.float32)))

    def _split(self, img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _, c, h, w = img.shape
        k = self.filter.expand(c, 1, 5, 5)
        smooth = F.conv2d(img, k, padding=2, groups=c)
        lo = smooth[:, :, ::2, ::2]
        up = 4 * F.conv_transpose2d(
            lo, k, stride=2, padding=2, output_padding=((h + 1) % 2, (w + 1) % 2), groups=c
        )
        return lo, img - up

    def level_shapes(self, shape) -> list[tuple[int, int]]:
        """``(rows, cols)`` of each level for a map of ``shape``.

        Each split keeps every second pixel, the first included.

        Examples
        --------
        >>> Pyramid(scale_n=2).level_shapes((30, 47))
        [(30, 47), (15, 24), (8, 12)]
        """
        h, w = (int(v) for v in shape)
        out = []
        for _ in range(self.scale_n):
            out.append((h, w))
            h, w = (h + 1) // 2, (w + 1) // 2
        return [*out, (h, w)]

    def forward(self, img: torch.Tensor) -> list[torch.Tensor]:
        """Levels from fine (band-pass at full size) to coarse (low-pass rest)."""
        levels = []
        for _ in range(self.scale_n):
            img, hi = self._split(img)
            levels.append(hi)
        levels.append(img)
        return levels


#: Point readouts of at most this many units weigh the maps directly (no pyramid is built).
_MAPS_UP_TO = 16
#: Pyramid levels of maps of at most this many pixels are kept as matrices (1440 px: 8 MB).
_MATRIX_PIXELS = 2048


def _bilinear_splat(grid: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """``units x rows x cols`` bilinear weights of normalised positions (``align_corners=True``).

    ``sum(splat[u] * m) == grid_sample(m, grid[u])`` for a ``rows x cols`` map ``m``.
    """
    col = (grid[:, 0] + 1) / 2 * (cols - 1)
    row = (grid[:, 1] + 1) / 2 * (rows - 1)
    return _hat(row, rows)[:, :, None] * _hat(col, cols)[:, None, :]


def _hat(pos: torch.Tensor, size: int) -> torch.Tensor:
    """Linear-interpolation weights of positions on ``size`` pixels, ``len(pos) x size``.

    As ``grid_sample`` computes them (floor and fraction), so that the gradient in ``pos`` is
    the same too, at whole pixels and at the border (where the pixel beyond counts as zero).
    """
    lo = pos.detach().floor()
    frac = (pos - lo)[:, None]
    j = torch.arange(size, dtype=pos.dtype, device=pos.device)[None]
    return (j == lo[:, None]) * (1 - frac) + (j == lo[:, None] + 1) * frac


def _n_units(n_units) -> int:
    if isinstance(n_units, bool) or int(n_units) != n_units or int(n_units) < 1:
        raise MeireportError(f"n_units: expected an integer >= 1, got {n_units!r}")
    return int(n_units)


def _check_positions(positions, n_units: int) -> torch.Tensor | None:
    """``n_units x 2`` normalised (col, row) positions, NaN rows allowed (no centre known)."""
    if positions is None:
        return None
    p = torch.as_tensor(np.asarray(positions, dtype=np.float32))
    if p.shape != (n_units, 2):
        raise MeireportError(
            f"positions: expected {n_units} x 2 normalised (col, row), got {tuple(p.shape)}"
        )
    return p


class PointPyramidReadout(nn.Module):
    """One learned point per neuron, read from every level of a Laplace pyramid.

    ``y_u = sum_{level, c} w_{u, level, c} * sample(level_c, position_u) + b_u`` with bilinear
    ``grid_sample`` (``align_corners=True``); positions are clamped to [-1, 1].

    Parameters
    ----------
    in_channels : int
        Channels of the feature maps.
    n_units : int
        Number of neurons.
    config : ReadoutConfig
        ``scale_n``, ``positive``, ``init_range``, ``gamma_features``.
    positions : array_like, optional
        ``n_units x 2`` initial (col, row) in normalised coordinates (the mapped RF centres);
        rows with NaN (or no array) start at a random position within ``+-init_range``.

    Examples
    --------
    >>> r = PointPyramidReadout(8, n_units=3, positions=[[0, 0], [0.5, -0.5], [np.nan, np.nan]])
    >>> tuple(r(torch.zeros(2, 8, 30, 48)).shape)
    (2, 3)
    """

    def __init__(
        self, in_channels: int, n_units: int, config: ReadoutConfig | None = None, positions=None
    ):
        super().__init__()
        self.config = ReadoutConfig() if config is None else config
        self.n_units = _n_units(n_units)
        self.in_channels = int(in_channels)
        self.pyramid = Pyramid(self.config.scale_n)
        n_feat = self.in_channels * (self.config.scale_n + 1)
        self.grid = nn.Parameter(torch.empty(self.n_units, 2))
        self.features = nn.Parameter(torch.full((n_feat, self.n_units), 1.0 / self.in_channels))
        self.bias = nn.Parameter(torch.zeros(self.n_units))
        r = self.config.init_range
        with torch.no_grad():
            self.grid.uniform_(-r, r)
            p = _check_positions(positions, self.n_units)
            if p is not None:
                known = torch.isfinite(p).all(dim=1)
                self.grid[known] = p[known].clamp(-1, 1)

    def positions(self) -> torch.Tensor:
        """Current positions, ``n_units x 2`` normalised (col, row)."""
        return self.grid.detach().clamp(-1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Responses ``N x n_units`` (before the output nonlinearity).

        With few units, the pyramid is not built: each level sampled at a unit's position is a
        linear functional of the maps, so the readout is one weight map per unit and channel
        (:meth:`weight_maps`) applied to the maps; with many, the pyramid of the maps is built
        once and sampled. The two give the same responses (up to float rounding); the first
        costs ``n_units`` multiply-adds per map pixel against ~70 for the pyramid.
        """
        if self.n_units <= _MAPS_UP_TO:
            return torch.einsum("nchw,uchw->nu", x, self.weight_maps(x.shape[-2:])) + self.bias
        n = x.shape[0]
        grid = self.grid.clamp(-1, 1)[None, :, None, :].expand(n, -1, 1, 2)
        pools = [F.grid_sample(lvl, grid, align_corners=True) for lvl in self.pyramid(x)]
        sampled = torch.cat(pools, dim=1)[..., 0]  # N x (C * levels) x units
        return (sampled * self.features[None]).sum(dim=1) + self.bias

    def forward_units(self, x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Response of unit ``rows[b]`` to image ``b`` only, shape ``N`` (before the nonlinearity).

        The pyramid is sampled at one position per image, so many units' MEIs synthesised in
        one batch cost one readout per image, not ``n_units``.
        """
        if self.n_units <= _MAPS_UP_TO:  # the weight maps of the few units
            return torch.einsum("nchw,nchw->n", x, self.weight_maps(x.shape[-2:])[rows]) \
                + self.bias[rows]
        grid = self.grid.clamp(-1, 1)[rows][:, None, None, :]  # N x 1 x 1 x 2
        pools = [F.grid_sample(lvl, grid, align_corners=True) for lvl in self.pyramid(x)]
        sampled = torch.cat(pools, dim=1)[:, :, 0, 0]  # N x (C * levels)
        return (sampled * self.features[:, rows].T).sum(dim=1) + self.bias[rows]

    def sampling_maps(self, shape) -> torch.Tensor:
        """What each level sampled at each unit's position weighs in a map of ``shape``.

        ``units x levels x rows x cols``: ``sample(level_k(m), position_u) = sum(K[u, k] * m)``
        for any map ``m``. The pyramid is linear, so ``K[u, k]`` is its adjoint applied to the
        bilinear splat of the position on level ``k``: the splat times each level's matrix
        (:meth:`level_matrices`, maps of up to :data:`_MATRIX_PIXELS` pixels), else computed by
        autograd; differentiable in the positions either way.
        """
        levels_n = self.config.scale_n + 1
        grid = self.grid.clamp(-1, 1)
        mats = self.level_matrices(shape, grid.dtype, grid.device)
        if mats is not None:
            k_maps = [_bilinear_splat(grid, *size).flatten(1) @ m
                      for size, m in zip(self.pyramid.level_shapes(shape), mats, strict=True)]
            return torch.stack(k_maps, dim=1).reshape(self.n_units, levels_n, *shape)
        train = torch.is_grad_enabled() and self.grid.requires_grad
        with torch.enable_grad():
            probe = torch.zeros(1, self.n_units * levels_n, *shape, dtype=grid.dtype,
                                device=grid.device, requires_grad=True)
            total = probe.new_zeros(())
            for k, lvl in enumerate(self.pyramid(probe)):
                splat = _bilinear_splat(grid, *lvl.shape[-2:])  # units x rows_k x cols_k
                total = total + (lvl[0, k::levels_n] * splat).sum()
            (maps,) = torch.autograd.grad(total, probe, create_graph=train)
        return maps.reshape(self.n_units, levels_n, *shape)

    def level_matrices(self, shape, dtype=torch.float32, device=None) -> list[torch.Tensor] | None:
        """Each pyramid level as a matrix, ``(rows_k * cols_k) x (rows * cols)``, or None.

        ``level_k(m).flatten() == M_k @ m.flatten()``: the pyramid of the identity, computed once
        per map shape, dtype and device (None for maps of more than :data:`_MATRIX_PIXELS`).
        """
        h, w = (int(v) for v in shape)
        if h * w > _MATRIX_PIXELS:
            return None
        key = (h, w, dtype, torch.device("cpu") if device is None else torch.device(device))
        cache = self.__dict__.setdefault("_level_matrix_cache", {})
        if key not in cache:
            eye = torch.eye(h * w, dtype=dtype, device=key[3]).reshape(1, h * w, h, w)
            with torch.no_grad():
                cache[key] = [lvl[0].flatten(1).T.contiguous() for lvl in self.pyramid(eye)]
        return cache[key]

    def weight_maps(self, shape) -> torch.Tensor:
        """The readout as one weight map per unit and channel, ``units x channels x rows x cols``.

        ``response_u = sum(weight_maps[u] * feature_maps) + bias_u``.
        """
        levels_n, c = self.config.scale_n + 1, self.in_channels
        feats = self.features.reshape(levels_n, c, self.n_units)
        return torch.einsum("kcu,ukhw->uchw", feats, self.sampling_maps(shape))

    def constrain(self) -> None:
        """Project parameters onto their constraints (call after each optimiser step)."""
        with torch.no_grad():
            self.grid.clamp_(-1, 1)
            if self.config.positive:
                self.features.clamp_(min=0)

    def regularizer(self) -> torch.Tensor:
        """``gamma_features * mean |feature weights|``."""
        return self.config.gamma_features * self.features.abs().mean()

    #: The unit axis of each parameter (:func:`unit_rows_state`).
    unit_axes = {"grid": 0, "features": 1, "bias": 0}


class FactorizedReadout(nn.Module):
    """Spatial mask x feature weights per neuron: ``y_u = sum_c f_uc sum_xy m_uxy x_cxy + b_u``.

    Parameters
    ----------
    in_shape : tuple of int
        ``(channels, rows, cols)`` of the feature maps.
    n_units : int
        Number of neurons.
    config : ReadoutConfig
        ``positive``, ``gamma_features``, ``gamma_mask``, ``init_sigma``.
    positions : array_like, optional
        ``n_units x 2`` normalised (col, row): the mask starts as a Gaussian there (NaN rows or
        no array: a flat mask).

    Examples
    --------
    >>> r = FactorizedReadout((8, 30, 48), n_units=2, positions=[[0, 0], [np.nan, np.nan]])
    >>> tuple(r(torch.zeros(4, 8, 30, 48)).shape)
    (4, 2)
    """

    def __init__(self, in_shape, n_units: int, config: ReadoutConfig | None = None, positions=None):
        super().__init__()
        self.config = ReadoutConfig(kind="factorized") if config is None else config
        self.n_units = _n_units(n_units)
        c, h, w = (int(v) for v in in_shape)
        self.in_shape = (c, h, w)
        self.mask = nn.Parameter(torch.full((self.n_units, h, w), 1.0 / (h * w)))
        self.features = nn.Parameter(torch.full((self.n_units, c), 1.0 / c))
        self.bias = nn.Parameter(torch.zeros(self.n_units))
        p = _check_positions(positions, self.n_units)
        if p is not None:
            rows = torch.arange(h, dtype=torch.float32)[:, None]
            cols = torch.arange(w, dtype=torch.float32)[None, :]
            s = float(self.config.init_sigma)
            with torch.no_grad():
                for u in range(self.n_units):
                    if not bool(torch.isfinite(p[u]).all()):
                        continue
                    col = (p[u, 0].clamp(-1, 1) + 1) / 2 * (w - 1)
                    row = (p[u, 1].clamp(-1, 1) + 1) / 2 * (h - 1)
                    g = torch.exp(-((cols - col) ** 2 + (rows - row) ** 2) / (2 * s**2))
                    self.mask[u] = g / g.sum()

    def positions(self) -> torch.Tensor:
        """Centre of mass of each |mask|, ``n_units x 2`` normalised (col, row)."""
        _, h, w = self.in_shape
        m = self.mask.detach().abs()
        m = m / m.sum(dim=(1, 2), keepdim=True).clamp_min(1e-12)
        col = (m.sum(dim=1) * torch.arange(w, dtype=m.dtype, device=m.device)).sum(dim=1)
        row = (m.sum(dim=2) * torch.arange(h, dtype=m.dtype, device=m.device)).sum(dim=1)
        return torch.stack([2 * col / max(w - 1, 1) - 1, 2 * row / max(h - 1, 1) - 1], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Responses ``N x n_units`` (before the output nonlinearity)."""
        if tuple(x.shape[1:]) != self.in_shape:
            raise MeireportError(
                f"x: expected N x {self.in_shape[0]} x {self.in_shape[1]} x {self.in_shape[2]}, "
                f"got {tuple(x.shape)}"
            )
        pooled = torch.einsum("nchw,uhw->nuc", x, self.mask)
        return (pooled * self.features[None]).sum(dim=2) + self.bias

    def forward_units(self, x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Response of unit ``rows[b]`` to image ``b`` only, shape ``N``."""
        pooled = torch.einsum("nchw,nhw->nc", x, self.mask[rows])
        return (pooled * self.features[rows]).sum(dim=1) + self.bias[rows]

    def constrain(self) -> None:
        """Project parameters onto their constraints (call after each optimiser step)."""
        if self.config.positive:
            with torch.no_grad():
                self.features.clamp_(min=0)
                self.mask.clamp_(min=0)

    def regularizer(self) -> torch.Tensor:
        """``gamma_mask * mean_u sum |mask_u| + gamma_features * mean |features|``."""
        c = self.config
        mask_l1 = self.mask.abs().sum(dim=(1, 2)).mean()
        return c.gamma_mask * mask_l1 + c.gamma_features * self.features.abs().mean()

    #: The unit axis of each parameter (:func:`unit_rows_state`).
    unit_axes = {"mask": 0, "features": 0, "bias": 0}


def unit_rows_state(readout: nn.Module, rows) -> dict[str, torch.Tensor]:
    """The readout's state dict restricted to the units at positions ``rows`` (in that order).

    A readout is one independent set of parameters per unit on a shared input, so the state of
    some of its units is that of a readout of those units alone.

    Examples
    --------
    >>> r = PointPyramidReadout(8, n_units=3)
    >>> st = unit_rows_state(r, [2])
    >>> tuple(st["grid"].shape), tuple(st["features"].shape)
    ((1, 2), (32, 1))
    """
    idx = torch.as_tensor(np.asarray(rows, dtype=np.int64))
    if idx.numel() == 0 or int(idx.min()) < 0 or int(idx.max()) >= readout.n_units:
        raise MeireportError(f"rows: expected positions in 0..{readout.n_units - 1}, got "
                             f"{np.asarray(rows).tolist()[:5]}")
    return {k: (v.index_select(readout.unit_axes[k], idx) if k in readout.unit_axes
                else v).clone() for k, v in readout.state_dict().items()}


def make_readout(
    config: ReadoutConfig, in_shape, n_units: int, positions=None
) -> PointPyramidReadout | FactorizedReadout:
    """Build the readout ``config.kind`` for feature maps of ``in_shape = (channels, rows, cols)``.

    Examples
    --------
    >>> type(make_readout(ReadoutConfig(), (8, 30, 48), 2)).__name__
    'PointPyramidReadout'
    """
    if config.kind == "point":
        return PointPyramidReadout(int(in_shape[0]), n_units, config, positions)
    return FactorizedReadout(in_shape, n_units, config, positions)
