"""Ground-truth checks on simulated sessions: the true neuron's response to an MEI, Gabor, image."""

from __future__ import annotations

import numpy as np

from meireport.errors import MeireportError
from meireport.mei._checks import as_image, as_stack
from meireport.mei.compare import apply_mask, equalize, pixel_correlation

__all__ = [
    "true_response",
    "mei_true_resp",
    "best_gabor_true_resp",
    "best_image_true_resp",
    "mei_rf_corr",
]


# --------------------------------------------------------------------------------------------
# the in-silico inception loop (simulated sessions)
# --------------------------------------------------------------------------------------------
def true_response(truth, unit_id: int, stimuli, *, mean: float, std: float) -> np.ndarray:
    """The true neuron's rate (spikes/s) for each stimulus at equal footing.

    Stimuli are first put at ``(mean, std)`` by :func:`equalize` (clipped to [0, 1]), then
    shown to the unit with :func:`meireport.sources.simulate.true_rate`.

    Examples
    --------
    >>> import tempfile
    >>> from meireport.sources import simulate_session
    >>> truth = simulate_session(tempfile.mkdtemp(), n_images=2, n_repeats=1,
    ...                          population={"VISp": (1, 1, 1, 0)}).truth
    >>> r = true_response(truth, int(truth.unit_id[0]), np.full((60, 96), 0.3), mean=0.5, std=0)
    >>> bool(np.isclose(r[0], truth.baseline[0]))
    True
    """
    from meireport.sources.simulate import true_rate

    x = equalize(as_stack(stimuli), mean, std)
    return true_rate(truth, x, [unit_id])[0]


def mei_true_resp(truth, unit_id: int, mei, *, mean: float, std: float) -> float:
    """True rate (spikes/s) for the MEI at equal footing (see :func:`true_response`)."""
    return float(true_response(truth, unit_id, as_image(mei, "mei"), mean=mean, std=std)[0])


def best_gabor_true_resp(truth, unit_id: int, gabor, *, mean: float, std: float) -> float:
    """True rate (spikes/s) for a Gabor (session or searched) at equal footing."""
    return float(true_response(truth, unit_id, as_image(gabor, "gabor"), mean=mean, std=std)[0])


def best_image_true_resp(
    truth, unit_id: int, images, *, mean: float, std: float, index=None, mask=None
) -> float:
    """True rate (spikes/s) for the best natural image at equal footing.

    Parameters
    ----------
    truth : GroundTruth
        The simulated session's ground truth.
    unit_id : int
        The unit.
    images : array_like
        ``n x H x W`` natural images in model space.
    mean, std : float
        Equal footing (:func:`equalize`).
    index : int, optional
        Which image is "best" (e.g. the highest observed or predicted response); default: the
        image the true neuron prefers once all are at equal footing (the strongest rival).
    mask : array_like or Mask, optional
        Show the images through this mask (``mean`` outside), e.g. the MEI's.

    Notes
    -----
    :func:`equalize` is idempotent and fast on stimuli already at the footing: for many units,
    equalize the images once and pass the result.
    """
    imgs = as_stack(images, "images")
    if index is not None:
        if not 0 <= int(index) < len(imgs):
            raise MeireportError(f"index: expected 0..{len(imgs) - 1}, got {index}")
        imgs = imgs[[int(index)]]
    if mask is not None:
        imgs = np.stack([apply_mask(x, mask, mean) for x in imgs])
    return float(true_response(truth, unit_id, imgs, mean=mean, std=std).max())


def mei_rf_corr(truth, unit_id: int, mei) -> float:
    """Correlation of the MEI with the unit's true optimal stimulus at the same contrast.

    Simple, poor and surround units: the receptive field ``rf_even`` itself (a Gabor; a
    difference of Gaussians for surround units). Complex units: the best phase of the
    quadrature pair, i.e. the correlation with the projection of the MEI on ``span(rf_even,
    rf_odd)``. Corner units (``sqrt(max(0, a1) * max(0, a2))`` of two subunits ``w1 = rf_even``
    and ``w2 = rf_odd`` of equal norm): the sum ``w1 + w2``. With ``z = a u + b v``, ``u, v``
    the unit vectors along ``w1 + w2`` and ``w1 - w2`` and ``rho = <w1, w2>``, the product of
    the subunits' inputs is ``a^2 (1 + rho) / 2 - b^2 (1 - rho) / 2``, largest at fixed ``|z|``
    for ``b = 0``: the optimum is exactly ``w1 + w2`` (a corner / plaid, not a Gabor).
    Untuned units have no optimum: NaN. Correlation ignores mean and contrast, so "at the same
    contrast" holds for any footing without clipping.

    Examples
    --------
    >>> import tempfile
    >>> from meireport.sources import simulate_session
    >>> truth = simulate_session(tempfile.mkdtemp(), n_images=2, n_repeats=1,
    ...                          population={"VISp": (1, 1, 1, 0)}).truth
    >>> i = int(np.flatnonzero(truth.kind == "simple")[0])
    >>> round(mei_rf_corr(truth, int(truth.unit_id[i]), 0.5 + truth.rf_even[i]), 6)
    1.0
    >>> truth = simulate_session(tempfile.mkdtemp(), n_images=2, n_repeats=1,
    ...                          population={"VISp": (0, 0, 0, 0, 1, 0)}).truth
    >>> u, w1, w2 = int(truth.unit_id[0]), truth.rf_even[0], truth.rf_odd[0]
    >>> round(mei_rf_corr(truth, u, 0.5 + w1 + w2), 6), mei_rf_corr(truth, u, 0.5 + w1) < 0.9
    (1.0, True)
    """
    x = as_image(mei, "mei")
    i = int(truth.index_of([unit_id])[0])
    kind = str(truth.kind[i])
    if kind == "untuned":
        return float("nan")
    if kind == "corner":
        return pixel_correlation(x, truth.rf_even[i] + truth.rf_odd[i])
    if kind != "complex":
        return pixel_correlation(x, truth.rf_even[i])
    z = (x - x.mean()).ravel()
    basis = np.stack([truth.rf_even[i].ravel(), truth.rf_odd[i].ravel()], axis=1)
    basis = basis - basis.mean(axis=0)
    coef, *_ = np.linalg.lstsq(basis, z, rcond=None)
    proj = basis @ coef
    den = np.linalg.norm(z) * np.linalg.norm(proj)
    return float(z @ proj / den) if den > 0 else 0.0
