"""Input checks shared by the selection modules (trials, image means, integers)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from meireport.errors import MeireportError

__all__ = [
]


# --------------------------------------------------------------------------------------------
# input checks
# --------------------------------------------------------------------------------------------


def as_trials(trials: np.ndarray) -> np.ndarray:
    """Return ``trials`` as a float 3-D array, or raise one clear error."""
    try:
        arr = np.asarray(trials, dtype=float)
    except (TypeError, ValueError) as exc:
        raise MeireportError(
            f"trials: expected a numeric units x images x repeats array ({exc})"
        ) from None
    if arr.ndim != 3:
        raise MeireportError(
            f"trials: expected a 3-D units x images x repeats array, got shape {arr.shape}"
        )
    if arr.size == 0:
        raise MeireportError(
            f"trials: expected a non-empty units x images x repeats array, got shape {arr.shape}"
        )
    if np.isinf(arr).any():
        raise MeireportError("trials: expected finite spike counts (NaN = missing repeat), got inf")
    return arr


def as_image_means(image_means: pd.DataFrame | np.ndarray) -> pd.DataFrame:
    """Return ``image_means`` as a float DataFrame ``images x units``, or raise one clear error."""
    frame = image_means if isinstance(image_means, pd.DataFrame) else pd.DataFrame(image_means)
    if frame.ndim != 2 or frame.shape[0] == 0 or frame.shape[1] == 0:
        raise MeireportError(
            f"image_means: expected a non-empty images x units table, got shape {frame.shape}"
        )
    try:
        frame = frame.astype(float)
    except (TypeError, ValueError) as exc:
        raise MeireportError(f"image_means: expected numeric mean responses ({exc})") from None
    if np.isinf(frame.to_numpy()).any():
        raise MeireportError("image_means: expected finite mean responses (NaN allowed), found inf")
    return frame


def check_int(name: str, value: int, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise MeireportError(f"{name}: expected an integer >= {minimum}, got {value!r}")
    return int(value)
