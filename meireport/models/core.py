"""Stacked convolutional core: image -> feature maps, shared by any number of neurons.

The core follows the seed study (Walker et al. 2019 style): a first convolution with the larger
kernel, average pooling, batch norm and ELU, then ``layers - 1`` hidden convolutions with batch
norm and ELU; the output is all layers' feature maps stacked along the channel axis. Its
regulariser is a Laplace L2 smoothness penalty on the first-layer weights plus a group-sparsity
penalty on the hidden weights. A core knows nothing of neurons: readouts do.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from meireport.errors import MeireportError

__all__ = ["CoreConfig", "Stacked2dCore", "laplace_l2", "LAPLACE_KERNEL"]

LAPLACE_KERNEL = torch.tensor([[0.0, -1.0, 0.0], [-1.0, 4.0, -1.0], [0.0, -1.0, 0.0]])


def _positive_int(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or int(value) != value or int(value) < minimum:
        raise MeireportError(f"{name}: expected an integer >= {minimum}, got {value!r}")
    return int(value)


def _non_negative(name: str, value) -> float:
    if not float(value) >= 0:
        raise MeireportError(f"{name}: expected a number >= 0, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class CoreConfig:
    """Sizes and regularisation of :class:`Stacked2dCore`.

    Parameters
    ----------
    hidden_channels : int
        Feature channels of every layer (the seed used 64; 16 fits 118 images and 2 CPUs).
    input_kern : int
        Kernel size of the first layer (odd; 13 px = 19.5 deg covers a simulated RF's centre).
    hidden_kern : int
        Kernel size of the hidden layers (odd).
    layers : int
        Number of convolutional layers (seed: 3).
    pooling : int
        Average-pooling factor after the first layer (seed: 2).
    batch_norm : bool
        Batch norm after each convolution (seed: yes).
    momentum : float
        Batch-norm running-statistics momentum.
    gamma_input : float
        Weight of the Laplace L2 penalty on first-layer weights (seed: 0.1).
    gamma_hidden : float
        Weight of the group-sparsity penalty on hidden weights (seed: 0.1).

    Examples
    --------
    >>> CoreConfig(hidden_channels=8).outchannels
    24
    """

    hidden_channels: int = 16
    input_kern: int = 13
    hidden_kern: int = 5
    layers: int = 3
    pooling: int = 2
    batch_norm: bool = True
    momentum: float = 0.1
    gamma_input: float = 0.1
    gamma_hidden: float = 0.1

    def __post_init__(self) -> None:
        _positive_int("hidden_channels", self.hidden_channels)
        _positive_int("layers", self.layers)
        _positive_int("pooling", self.pooling)
        for name in ("input_kern", "hidden_kern"):
            k = _positive_int(name, getattr(self, name))
            if k % 2 == 0:
                raise MeireportError(f"{name}: expected an odd kernel size, got {k}")
        if not 0 < float(self.momentum) <= 1:
            raise MeireportError(f"momentum: expected a number in (0, 1], got {self.momentum!r}")
        _non_negative("gamma_input", self.gamma_input)
        _non_negative("gamma_hidden", self.gamma_hidden)

    @property
    def outchannels(self) -> int:
        """Channels of the core's output (all layers stacked)."""
        return self.layers * self.hidden_channels

    def to_dict(self) -> dict:
        """Plain-dict form (for checkpoints and the params layer)."""
        return asdict(self)


def laplace_l2(weight: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Laplace L2 roughness of 2-D kernels: ``0.5 * (Laplacian of each kernel)^2``.

    The 5-point Laplacian is applied without padding ('valid'), so constant (and linear-ramp)
    kernels cost exactly 0, and the penalty grows with the kernels' roughness.

    Parameters
    ----------
    weight : Tensor
        ``... x kh x kw`` kernels (e.g. a conv weight ``out x in x kh x kw``); kh, kw >= 3.
    reduction : {"mean", "sum"}
        Average or sum over kernels and valid positions.

    Returns
    -------
    Tensor
        Scalar penalty.

    Examples
    --------
    >>> float(laplace_l2(torch.ones(2, 1, 5, 5)))
    0.0
    >>> rough = torch.zeros(1, 1, 5, 5)
    >>> rough[..., 2, 2] = 1.0
    >>> float(laplace_l2(rough, reduction="sum"))
    10.0
    """
    if reduction not in ("mean", "sum"):
        raise MeireportError(f"reduction: expected 'mean' or 'sum', got {reduction!r}")
    if weight.dim() < 2 or min(weight.shape[-2:]) < 3:
        raise MeireportError(
            f"weight: expected kernels of at least 3 x 3 pixels, got shape {tuple(weight.shape)}"
        )
    k = weight.reshape(-1, 1, *weight.shape[-2:])
    lap = F.conv2d(k, LAPLACE_KERNEL.to(k)[None, None])
    sq = 0.5 * lap.pow(2)
    return sq.mean() if reduction == "mean" else sq.sum()


class Stacked2dCore(nn.Module):
    """Stacked 2-D convolutional core (image -> stacked feature maps).

    Layer 0: ``conv(input_kern) -> avgpool(pooling) -> batchnorm -> ELU``; layers 1..L-1:
    ``conv(hidden_kern) -> batchnorm -> ELU``; convolutions are 'same'-padded and bias-free
    (batch norm supplies the offset). The output stacks all layers' maps:
    ``N x (layers * hidden_channels) x rows/pooling x cols/pooling``.

    Parameters
    ----------
    config : CoreConfig
        Sizes and regularisation weights.
    input_channels : int
        Channels of the input image (1 for grey).

    Examples
    --------
    >>> core = Stacked2dCore(CoreConfig(hidden_channels=4, layers=2))
    >>> tuple(core(torch.zeros(2, 1, 60, 96)).shape)
    (2, 8, 30, 48)
    """

    def __init__(self, config: CoreConfig | None = None, input_channels: int = 1):
        super().__init__()
        self.config = CoreConfig() if config is None else config
        self.input_channels = _positive_int("input_channels", input_channels)
        c = self.config
        self.features = nn.Sequential()
        for i in range(c.layers):
            layer: OrderedDict[str, nn.Module] = OrderedDict()
            k = c.input_kern if i == 0 else c.hidden_kern
            cin = input_channels if i == 0 else c.hidden_channels
            layer["conv"] = nn.Conv2d(cin, c.hidden_channels, k, padding=k // 2, bias=False)
            if i == 0 and c.pooling > 1:
                layer["pool"] = nn.AvgPool2d(c.pooling)
            if c.batch_norm:
                layer["norm"] = nn.BatchNorm2d(c.hidden_channels, momentum=c.momentum)
            layer["nonlin"] = nn.ELU()
            self.features.add_module(f"layer{i}", nn.Sequential(layer))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_normal_(m.weight)

    @property
    def outchannels(self) -> int:
        """Channels of the output (all layers stacked)."""
        return self.config.outchannels

    def output_shape(self, input_shape: tuple[int, int]) -> tuple[int, int]:
        """Spatial ``(rows, cols)`` of the output for an input of ``input_shape``."""
        p = self.config.pooling
        return (int(input_shape[0]) // p, int(input_shape[1]) // p)

    def to_output_px(self, col, row):
        """Map input-pixel coordinates ``(col, row)`` to output-map pixel coordinates."""
        p = self.config.pooling
        return (col + 0.5) / p - 0.5, (row + 0.5) / p - 0.5

    def to_input_px(self, col, row):
        """Map output-map pixel coordinates back to input pixels (inverse of `to_output_px`)."""
        p = self.config.pooling
        return (col + 0.5) * p - 0.5, (row + 0.5) * p - 0.5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Feature maps of a batch of images ``N x input_channels x rows x cols``."""
        if x.dim() != 4 or x.shape[1] != self.input_channels:
            raise MeireportError(
                f"x: expected N x {self.input_channels} x rows x cols, got {tuple(x.shape)}"
            )
        out = []
        for i, layer in enumerate(self.features):
            x = self._first(layer, x) if i == 0 else layer(x)
            out.append(x)
        return torch.cat(out, dim=1)

    def _first(self, layer: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
        """Layer 0 with its convolution and average pooling done as one strided convolution.

        ``avgpool_p(conv_k(x, w)) == conv_{k+p-1}(x, box_p * w, stride=p)``: both are linear and
        the 'same' padding of ``k // 2`` puts the output on the same pixels, so the result is the
        same up to float rounding, at ``1 / p**2`` of the multiply-adds and without the pooled
        full-size map (the seed's conv-then-pool order costs ~20 % more per training step).
        """
        pool = getattr(layer, "pool", None)
        if pool is None:
            return layer(x)
        p, w = self.config.pooling, layer.conv.weight
        fused = F.avg_pool2d(F.pad(w, (p - 1, p - 1, p - 1, p - 1)), p, stride=1)
        x = F.conv2d(x, fused, stride=p, padding=self.config.input_kern // 2)
        if hasattr(layer, "norm"):
            x = layer.norm(x)
        return layer.nonlin(x)

    def laplace(self) -> torch.Tensor:
        """Laplace L2 roughness of the first-layer kernels (mean over kernels and positions)."""
        w = self.features[0].conv.weight
        if min(w.shape[-2:]) < 3:
            return w.new_zeros(())
        return laplace_l2(w)

    def group_sparsity(self) -> torch.Tensor:
        """Mean L2 norm of each hidden kernel (out x in channel pair), averaged over layers."""
        if self.config.layers < 2:
            return self.features[0].conv.weight.new_zeros(())
        total = 0.0
        for layer in list(self.features)[1:]:
            w = layer.conv.weight
            total = total + w.pow(2).sum(dim=(2, 3)).add(1e-12).sqrt().mean()
        return total / (self.config.layers - 1)

    def regularizer(self) -> torch.Tensor:
        """``gamma_input * laplace() + gamma_hidden * group_sparsity()``."""
        c = self.config
        return c.gamma_input * self.laplace() + c.gamma_hidden * self.group_sparsity()
