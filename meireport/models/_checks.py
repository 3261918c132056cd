"""Input checks shared by the model modules."""

from __future__ import annotations

from meireport.errors import MeireportError


def pair(name: str, value) -> tuple[int, int]:
    """``value`` as a ``(rows, cols)`` pair of positive ints, or one clear error naming ``name``."""
    try:
        a, b = (int(v) for v in value)
    except (TypeError, ValueError):
        raise MeireportError(f"{name}: expected (rows, cols), got {value!r}") from None
    if a < 1 or b < 1:
        raise MeireportError(f"{name}: expected (rows, cols) >= 1, got {value!r}")
    return a, b
