"""Rastermap ordering of the units' activity (falls back to PC1 when rastermap cannot fit)."""

from __future__ import annotations

import logging
import warnings
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from meireport.errors import MeireportError

__all__ = [
    "RasterOrder",
    "rastermap_order",
]


# --------------------------------------------------------------------------------------------
# rastermap ordering
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RasterOrder:
    """Result of :func:`rastermap_order`.

    Attributes
    ----------
    isort : numpy.ndarray
        Unit indices from top to bottom of the raster; silent units come last.
    embedding : numpy.ndarray
        One-dimensional position of each unit (rastermap embedding or PC1 loading; NaN for
        silent units), in the input order.
    zscored : numpy.ndarray
        The z-scored activity, ``units x time bins``, in the input order.
    method : str
        ``"rastermap"`` or ``"pc1"`` (the fallback).
    message : str
        Why the fallback was used; empty when rastermap ran.
    """

    isort: np.ndarray
    embedding: np.ndarray
    zscored: np.ndarray
    method: str
    message: str = ""


def _zscore_rows(x: np.ndarray) -> np.ndarray:
    mean = x.mean(axis=1, keepdims=True)
    std = x.std(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(std > 0, (x - mean) / std, 0.0)


def _pc1_embedding(z: np.ndarray) -> np.ndarray:
    """Return each row's loading on the first principal component (largest |loading| > 0)."""
    if z.shape[0] == 1:
        return np.zeros(1)
    u, s, _ = np.linalg.svd(z - z.mean(axis=0, keepdims=True), full_matrices=False)
    load = u[:, 0] * s[0]
    return load if load[np.argmax(np.abs(load))] >= 0 else -load


@contextmanager
def _quiet_rastermap():
    """Keep rastermap from configuring the root logger and from printing its own warnings."""
    root = logging.getLogger()
    guard = None if root.handlers else logging.NullHandler()
    if guard is not None:
        root.addHandler(guard)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        if guard is not None:
            root.removeHandler(guard)


def _fit_rastermap(z: np.ndarray, settings: dict) -> tuple[np.ndarray, np.ndarray]:
    from rastermap import Rastermap

    with _quiet_rastermap():
        model = Rastermap(verbose=False, **settings).fit(z)
    embedding = np.asarray(model.embedding, dtype=float).reshape(z.shape[0], -1)[:, 0]
    if not np.all(np.isfinite(embedding)) or len(model.isort) != z.shape[0]:
        raise RuntimeError("rastermap returned a non-finite embedding")
    return embedding, np.asarray(model.isort)


def rastermap_order(
    binned: np.ndarray,
    n_PCs: int = 64,  # noqa: N803 - rastermap's own name
    locality: float = 0.15,
    time_lag_window: int = 15,
    n_clusters: int | None = None,
    grid_upsample: int = 0,
    min_units: int = 10,
    min_bins: int = 100,
    seed: int = 0,
) -> RasterOrder:
    """Order units by rastermap (>= 1.0) on z-scored binned activity, with a safe fallback.

    Each unit's binned counts are z-scored over time (a silent unit becomes all zeros). Units
    with activity are sorted by rastermap with the seed's settings (single-neuron sorting,
    ``n_clusters=None``); silent units are put last. When rastermap is not installed, fails,
    or the data are too small (fewer than ``min_units`` active units or ``min_bins`` bins), a
    ``UserWarning`` says so and units are ordered by their loading on the first principal
    component instead. Never raises for lack of data beyond an empty input.

    Parameters
    ----------
    binned : numpy.ndarray
        Spike counts, ``units x time bins``.
    n_PCs : int, default 64
        Principal components rastermap uses; capped at the number of active units and bins.
    locality : float, default 0.15
        Rastermap's locality of the sorting (0-1).
    time_lag_window : int, default 15
        Rastermap's window of future bins used in the correlation.
    n_clusters : int, optional
        ``None`` sorts single neurons (the seed; takes about 2 min for 135 units on 2 CPU
        cores); an integer clusters first and is much faster.
    grid_upsample : int, default 0
        Rastermap's upsampling (0 = off, right for single neurons).
    min_units, min_bins : int
        Below these sizes the first-PC fallback is used.
    seed : int, default 0
        Rastermap's ``random_state``.

    Returns
    -------
    RasterOrder
        ``isort`` (top to bottom), ``embedding``, ``zscored``, ``method``, ``message``.

    Examples
    --------
    >>> import warnings
    >>> import numpy as np
    >>> binned = np.random.default_rng(0).poisson(2.0, size=(4, 50))
    >>> with warnings.catch_warnings():
    ...     warnings.simplefilter("ignore")
    ...     order = rastermap_order(binned)
    >>> order.method, sorted(order.isort.tolist())
    ('pc1', [0, 1, 2, 3])
    """
    try:
        x = np.asarray(binned, dtype=float)
    except (TypeError, ValueError) as exc:
        raise MeireportError(
            f"binned: expected a numeric units x time bins array ({exc})"
        ) from None
    if x.ndim != 2 or x.size == 0:
        raise MeireportError(
            f"binned: expected a non-empty units x time bins array, got shape {x.shape}"
        )
    if not np.all(np.isfinite(x)):
        raise MeireportError("binned: expected finite spike counts, found NaN or inf")
    z = _zscore_rows(x)
    active = np.flatnonzero(x.std(axis=1) > 0)
    silent = np.flatnonzero(x.std(axis=1) == 0)
    settings = {
        "n_PCs": int(max(1, min(n_PCs, len(active), x.shape[1]))),
        "locality": locality,
        "time_lag_window": time_lag_window,
        "n_clusters": n_clusters,
        "grid_upsample": grid_upsample,
        "random_state": seed,
    }
    reason = ""
    if len(active) < min_units:
        reason = f"only {len(active)} active units (< min_units={min_units})"
    elif x.shape[1] < min_bins:
        reason = f"only {x.shape[1]} time bins (< min_bins={min_bins})"
    sub_embedding = np.zeros(len(active))
    sub_isort = np.arange(len(active))
    if not reason:
        try:
            sub_embedding, sub_isort = _fit_rastermap(z[active], settings)
        except ImportError:
            reason = "rastermap is not installed"
        except Exception as exc:  # noqa: BLE001 - any rastermap failure falls back
            reason = f"rastermap failed ({type(exc).__name__}: {exc})"
    method = "rastermap"
    if reason:
        method = "pc1"
        reason = f"rastermap_order: {reason}; ordering units by the first principal component"
        warnings.warn(reason, UserWarning, stacklevel=2)
        if len(active):
            sub_embedding = _pc1_embedding(z[active])
            sub_isort = np.argsort(-sub_embedding, kind="stable")
    embedding = np.full(x.shape[0], np.nan)
    embedding[active] = sub_embedding
    isort = np.concatenate([active[sub_isort], silent]).astype(int)
    return RasterOrder(isort=isort, embedding=embedding, zscored=z, method=method, message=reason)
