"""The small operations MEI synthesis composes: preconditioning, blur, rescaling, contrast."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from meireport.mei._checks import check

__all__ = [
    "target_contrast",
    "fourier_filter",
    "precondition",
    "gaussian_blur",
    "rescale_unit",
]


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
    check(a.ndim == 3 and len(a) > 0, "images", "a non-empty n x H x W stack", a.shape)
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


def _gauss_kernel(sigma: float, size: int, dtype, device=None) -> torch.Tensor:
    radius = max(1, min(int(np.ceil(4 * sigma)), size - 1))
    t = torch.arange(-radius, radius + 1, dtype=dtype, device=device)
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
    kr = _gauss_kernel(sigma, rows, x.dtype, x.device)
    kc = _gauss_kernel(sigma, cols, x.dtype, x.device)
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


