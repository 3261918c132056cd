"""Input checks shared by the MEI modules (one line naming the argument and what was expected)."""

from __future__ import annotations

import numpy as np

from meireport.errors import MeireportError


def check(ok: bool, name: str, expected: str, got) -> None:
    """Raise ``MeireportError("<name>: expected <expected>, got <got>")`` unless ``ok``."""
    if not ok:
        raise MeireportError(f"{name}: expected {expected}, got {got}")


def as_image(img, name: str = "image") -> np.ndarray:
    """``img`` as a finite float H x W array, or one clear error."""
    a = np.asarray(img, dtype=np.float64)
    if a.ndim != 2 or min(a.shape) < 2:
        raise MeireportError(f"{name}: expected an H x W image (H, W >= 2), got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise MeireportError(f"{name}: expected finite values, got NaN or inf")
    return a


def as_stack(imgs, name: str = "stimuli") -> np.ndarray:
    """``imgs`` as a float n x H x W stack (one image becomes a stack of one)."""
    a = np.asarray(imgs, dtype=np.float64)
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3 or len(a) == 0:
        raise MeireportError(f"{name}: expected H x W or n x H x W images, got shape {a.shape}")
    return a
