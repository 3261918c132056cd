"""Model input: images in [0, 1] -> centred on grey, optionally cropped around an RF centre.

Every model takes full model images (``N x rows x cols`` or ``N x 1 x rows x cols``, values in
[0, 1]) so that MEI synthesis and gabor searches work on the same pixel space whatever the model
looks at. The crop is part of the model: it subtracts mean grey (0.5) and keeps a fixed window
around the unit's mapped RF centre; the window's parts beyond the image are grey (0 after
centring), the image outside the window has no influence on the prediction.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from meireport.errors import MeireportError

__all__ = ["GREY", "InputCrop", "crop_box", "as_image_batch"]

GREY = 0.5


def _shape(name: str, value) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in value)
    except (TypeError, ValueError):
        raise MeireportError(f"{name}: expected (rows, cols), got {value!r}") from None
    if h < 1 or w < 1:
        raise MeireportError(f"{name}: expected (rows, cols) >= 1, got {value!r}")
    return h, w


def crop_box(centre, size, input_shape) -> tuple[int, int, int, int]:
    """Integer window ``(top, left, rows, cols)`` of ``size`` centred on ``centre = (col, row)``.

    Examples
    --------
    >>> crop_box((47.5, 29.5), (32, 32), (60, 96))
    (14, 32, 32, 32)
    >>> crop_box((0, 0), (10, 10), (60, 96))
    (-4, -4, 10, 10)
    """
    h, w = _shape("crop_size", size)
    _shape("input_shape", input_shape)
    try:
        col, row = (float(v) for v in centre)
    except (TypeError, ValueError):
        raise MeireportError(f"rf_centre: expected (col, row) in pixels, got {centre!r}") from None
    if not (np.isfinite(col) and np.isfinite(row)):
        raise MeireportError(f"rf_centre: expected finite (col, row) in pixels, got {centre!r}")
    top = int(np.floor(row - (h - 1) / 2 + 0.5))
    left = int(np.floor(col - (w - 1) / 2 + 0.5))
    return top, left, h, w


def as_image_batch(x, input_shape) -> torch.Tensor:
    """``N x 1 x rows x cols`` float tensor from an image stack (tensor or array, 2-4 dims)."""
    t = torch.as_tensor(x)
    if not t.is_floating_point():
        t = t.float()
    if t.dim() == 2:
        t = t[None, None]
    elif t.dim() == 3:
        t = t[:, None]
    if t.dim() != 4 or t.shape[1] != 1 or tuple(t.shape[-2:]) != tuple(input_shape):
        raise MeireportError(
            f"images: expected N x {input_shape[0]} x {input_shape[1]} (values in [0, 1]), "
            f"got shape {tuple(t.shape)}"
        )
    return t


class InputCrop(nn.Module):
    """Centre images on grey and (optionally) cut the window :func:`crop_box` gives.

    Parameters
    ----------
    input_shape : tuple of int
        Full image ``(rows, cols)`` the model accepts.
    crop_size : tuple of int, optional
        Window ``(rows, cols)``; None keeps the full field.
    centre : tuple of float, optional
        Window centre ``(col, row)`` in image pixels (needed with ``crop_size``).

    Examples
    --------
    >>> c = InputCrop((60, 96), (20, 20), (5.0, 5.0))
    >>> out = c(torch.ones(2, 60, 96))
    >>> tuple(out.shape), float(out[0, 0, 0, 0]), float(out[0, 0, -1, -1])
    ((2, 1, 20, 20), 0.0, 0.5)
    """

    def __init__(self, input_shape=(60, 96), crop_size=None, centre=None):
        super().__init__()
        self.input_shape = _shape("input_shape", input_shape)
        if crop_size is None:
            self.box = None
        else:
            if centre is None:
                raise MeireportError(
                    "rf_centre: a crop needs the unit's RF centre (col, row) in pixels, got None"
                )
            self.box = crop_box(centre, crop_size, self.input_shape)

    @property
    def output_shape(self) -> tuple[int, int]:
        """``(rows, cols)`` the model behind the crop sees."""
        return self.input_shape if self.box is None else (self.box[2], self.box[3])

    @property
    def offset(self) -> tuple[int, int]:
        """``(left, top)`` of the window in image pixels (``(0, 0)`` without a crop)."""
        return (0, 0) if self.box is None else (self.box[1], self.box[0])

    def forward(self, x) -> torch.Tensor:
        """Centred (and cropped) ``N x 1 x rows x cols`` batch."""
        x = as_image_batch(x, self.input_shape) - GREY
        if self.box is None:
            return x
        top, left, h, w = self.box
        rows, cols = self.input_shape
        pad = (max(-left, 0), max(left + w - cols, 0), max(-top, 0), max(top + h - rows, 0))
        if any(pad):
            x = F.pad(x, pad, value=0.0)
        t, lft = top + pad[2], left + pad[0]
        return x[:, :, t : t + h, lft : lft + w]
