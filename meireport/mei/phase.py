"""How much a model's response depends on the carrier phase of an image: simple- or complex-like.

A simple cell's response follows the phase of a grating or Gabor; a complex cell's does not. The
classic measure is the modulation ratio F1/F0 of the response over phase, the spontaneous (blank
screen) rate subtracted (Skottun et al. 1991): above 1, simple-like; below 1, complex-like.
Here it is measured on a model, at its MEI: the MEI's carrier is moved through every phase
(the MEI and its quadrature twin span them) at equal footing, and the model's responses give
F1/F0. Where a model is complex-like, MEIs from
different starts may rightly differ in phase only (:func:`meireport.trust.mei_agreement`).
"""

from __future__ import annotations

import numpy as np

from meireport.mei._checks import as_image, check
from meireport.mei.compare import equalize, quadrature
from meireport.mei.targets import predict

__all__ = ["phase_series", "modulation_ratio", "phase_modulation"]


def phase_series(image, n_phases: int = 8) -> np.ndarray:
    """``image`` with its carrier at ``n_phases`` evenly spaced phases (the first is ``image``).

    Examples
    --------
    >>> from meireport.stimuli import ScreenGeometry, render_gabor
    >>> g = render_gabor(ScreenGeometry(), 0, 0, 0, 0.1, 30)
    >>> s = phase_series(g, 4)
    >>> s.shape, bool(np.allclose(s[0], g))
    ((4, 60, 96), True)
    >>> round(float(np.corrcoef(s[0].ravel(), s[2].ravel())[0, 1]), 2)  # half a cycle on
    -1.0
    """
    a = as_image(image)
    check(int(n_phases) == n_phases and n_phases >= 3, "n_phases", "an integer >= 3", n_phases)
    z, h = a - a.mean(), quadrature(a)
    phi = 2 * np.pi * np.arange(int(n_phases)) / int(n_phases)
    return a.mean() + np.cos(phi)[:, None, None] * z + np.sin(phi)[:, None, None] * h


def modulation_ratio(responses) -> float:
    """F1/F0 of responses to evenly spaced phases: first-harmonic amplitude over the mean.

    ``inf`` when the mean response is not positive (a rectified simple cell silent on average).

    Examples
    --------
    >>> phi = 2 * np.pi * np.arange(8) / 8
    >>> round(modulation_ratio(1 + 0.5 * np.cos(phi)), 2)  # modulated by half its mean
    0.5
    >>> modulation_ratio(np.full(8, 3.0))  # phase-invariant: a complex cell
    0.0
    >>> phi = 2 * np.pi * np.arange(360) / 360
    >>> round(modulation_ratio(np.maximum(np.cos(phi), 0)), 2)  # half-wave rectified: pi / 2
    1.57
    """
    r = np.asarray(responses, dtype=np.float64)
    check(r.ndim == 1 and len(r) >= 3 and np.all(np.isfinite(r)), "responses",
          "finite responses to >= 3 phases", r.shape)
    f0 = r.mean()
    if f0 <= 0:
        return float("inf")
    phi = 2 * np.pi * np.arange(len(r)) / len(r)
    f1 = 2 * abs(np.mean(r * np.exp(-1j * phi)))
    return float(round(f1 / f0, 12))


def phase_modulation(model, image, mean: float, std: float, n_phases: int = 8) -> float:
    """F1/F0 of a model's responses to ``image`` moved through every carrier phase.

    Each phase is rescaled to the footing ``(mean, std)`` before the model sees it. As in
    Skottun et al. (1991), the spontaneous rate is subtracted first: here the model's response
    to a blank (uniform ``mean``) screen, the Allen sessions' blank frame. Without it a
    half-wave rectified simple cell with a high baseline reads F1/F0 < 1 (complex-like).

    Examples
    --------
    >>> import torch
    >>> from meireport.mei.targets import EnergyModel, LinearModel
    >>> from meireport.stimuli import ScreenGeometry, render_gabor
    >>> geo = ScreenGeometry()
    >>> even = render_gabor(geo, 0, 0, 0, 0.08, 30) - 0.5
    >>> odd = render_gabor(geo, 0, 0, 0, 0.08, 30, phase=np.pi / 2) - 0.5
    >>> img = 0.5 + even
    >>> phase_modulation(EnergyModel(even, odd), img, 0.5, 0.1) < 0.1  # complex-like
    True
    >>> phase_modulation(LinearModel(even, offset=1.0), img, 0.5, 0.1) > 1  # simple-like
    True
    """
    stimuli = equalize(phase_series(image, n_phases), mean, std)
    r = predict(model, np.concatenate([np.full((1, *stimuli.shape[1:]), float(mean)), stimuli]))
    return modulation_ratio(r[1:] - r[0])
