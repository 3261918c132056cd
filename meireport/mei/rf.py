"""A unit's receptive-field mask from its model: where the response depends on the image.

The mask every compared stimulus (MEI, natural image, session and searched Gabor) is measured
in: one per unit, from the model, not from each stimulus, so that the MEI and its rivals are
described over the same pixels.
"""

from __future__ import annotations

import numpy as np
import torch

from meireport.mei._checks import as_stack, check
from meireport.mei.compare import Mask, circular_mask, energy_centre, energy_radius
from meireport.mei.targets import as_model, model_dtype, responses
from meireport.models.device import model_device

__all__ = ["rf_map", "rf_mask"]


def rf_map(model, images, batch_size: int = 64) -> np.ndarray:
    """The unit's sensitivity map: mean squared gradient of its response over ``images``.

    ``E_x[(dr / dx)^2]`` per pixel: large where changing the pixel changes the response. It is
    defined for phase-invariant units too (whose gradient at a flat image vanishes).

    Examples
    --------
    >>> from meireport.mei.targets import LinearModel
    >>> w = np.zeros((6, 8)); w[2, 5] = 2.0
    >>> m = rf_map(LinearModel(w), np.random.default_rng(0).random((3, 6, 8)))
    >>> m.shape, float(m[2, 5]), float(m.sum())
    ((6, 8), 4.0, 4.0)
    """
    model = as_model(model)
    a = as_stack(images, "images")
    total = np.zeros(a.shape[1:])
    for i in range(0, len(a), batch_size):
        x = torch.as_tensor(a[i : i + batch_size, None], dtype=model_dtype(model),
                            device=model_device(model)).requires_grad_(True)
        (g,) = torch.autograd.grad(responses(model, x).sum(), x)
        total += (g.detach()[:, 0].double().cpu().numpy() ** 2).sum(axis=0)
    return total / len(a)


def rf_mask(model, images, fraction: float = 0.9, radius: float | None = None) -> Mask:
    """Circular mask around the unit's RF: centre and radius from :func:`rf_map`.

    Parameters
    ----------
    model : callable
        ``B x 1 x H x W`` -> ``B`` responses of one unit.
    images : array_like
        ``n x H x W`` images the map is averaged over (e.g. the natural images in the MEI's set).
    fraction : float
        Share of the map's total inside the mask (when ``radius`` is not given).
    radius : float, optional
        Fixed radius in pixels (e.g. the seed's 12).

    Examples
    --------
    >>> from meireport.mei.targets import LinearModel
    >>> w = np.zeros((21, 31)); w[10, 20] = 1.0; w[10, 22] = -1.0
    >>> m = rf_mask(LinearModel(w), np.random.default_rng(0).random((2, 21, 31)))
    >>> m.centre, m.radius
    ((10.0, 21.0), 2.0)
    """
    check(0 < fraction <= 1, "fraction", "in (0, 1]", fraction)
    amp = np.sqrt(rf_map(model, images))
    centre = energy_centre(amp, background=0.0)
    if radius is None:
        radius = max(energy_radius(amp, centre, fraction, background=0.0), 2.0)
    check(radius > 0, "radius", "> 0 pixels", radius)
    return Mask(circular_mask(amp.shape, centre, float(radius)), centre, float(radius))
