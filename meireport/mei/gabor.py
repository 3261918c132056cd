"""Best Gabors: from the session's gabor presentations, and by an in-silico search on a model.

*Session Gabor* (the seed's method, its flaw fixed): the ``k`` gabor conditions with the highest
trial-averaged spike count for the unit are rendered from *all* their recorded parameters --
orientation, position (mapped to model pixels by :class:`~meireport.stimuli.ScreenGeometry`),
size, spatial frequency and contrast -- and averaged. The seed rendered orientation only, always
at the image centre.

*In-silico search*: the model's response to Gabor patches over orientation, spatial frequency,
phase, size and position -- a coarse position grid, then a feature grid at the best positions,
then a local pattern search -- each candidate put at equal footing (same mean and std as every
other compared stimulus, :func:`meireport.mei.compare.equalize`) before the model sees it. The
model runs on the device of its parameters, without gradients; the position grid's patches
(the same for every unit of a geometry and footing) are rendered once per process.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
import torch

from meireport.errors import MeireportError
from meireport.mei.compare import equalize, pixel_correlation
from meireport.mei.synthesis import model_device
from meireport.mei.targets import LinearModel, as_model, model_dtype, responses
from meireport.stimuli import ScreenGeometry, gabor_stack, parse_pair

__all__ = [
    "PARAMS",
    "gabor_conditions",
    "SessionGabor",
    "session_gabor",
    "best_phase_image",
    "render_gabors",
    "GaborSearchConfig",
    "GaborSearchResult",
    "gabor_search",
    "fit_gabor",
]

PARAMS = ("x_deg", "y_deg", "orientation_deg", "sf_cpd", "size_deg", "phase")
_CONDITION = {
    "orientation": "orientation_deg",
    "x_position": "x_deg",
    "y_position": "y_deg",
    "size": "size_deg",
    "spatial_frequency": "sf_cpd",
    "contrast": "contrast",
}


# --------------------------------------------------------------------------------------------
# rendering
# --------------------------------------------------------------------------------------------
def render_gabors(geometry: ScreenGeometry, contrast: float = 1.0, **params) -> np.ndarray:
    """Render many Gabor patches at once (same formula as :func:`~meireport.stimuli.render_gabor`).

    Parameters
    ----------
    geometry : ScreenGeometry
        Degree -> pixel mapping.
    contrast : float
        Michelson contrast (scalar or one per patch).
    **params : array_like
        ``x_deg, y_deg, orientation_deg, sf_cpd, size_deg, phase`` (each broadcast to ``n``).

    Returns
    -------
    ndarray
        ``n x rows x cols`` in [0, 1], on mean grey (0.5).

    Examples
    --------
    >>> from meireport.stimuli import render_gabor
    >>> g = ScreenGeometry()
    >>> many = render_gabors(g, 0.8, x_deg=[0, 10], y_deg=5, orientation_deg=30, sf_cpd=0.08,
    ...                      size_deg=20, phase=0.0)
    >>> bool(np.allclose(many[1], render_gabor(g, 10, 5, 30, 0.08, 20, 0.0, 0.8)))
    True
    """
    missing = [p for p in PARAMS if p not in params]
    if missing:
        raise MeireportError(f"params: expected {', '.join(PARAMS)}; missing {missing}")
    arrs = np.broadcast_arrays(*[np.atleast_1d(np.asarray(params[p], float)) for p in PARAMS])
    x, y, ori, sf, size, phase = (a.reshape(-1, 1, 1) for a in arrs)
    c = np.broadcast_to(np.asarray(contrast, float).reshape(-1, 1, 1), x.shape)
    return gabor_stack(geometry, x, y, ori, sf, size, phase, c)


# --------------------------------------------------------------------------------------------
# the session's best gabor
# --------------------------------------------------------------------------------------------
def _conditions(table: pd.DataFrame) -> pd.DataFrame:
    need = ("orientation", "x_position", "y_position")
    missing = [c for c in need if c not in table]
    if missing:
        raise MeireportError(f"table: expected gabor columns {list(need)}; missing {missing}")
    out = pd.DataFrame(index=table.index)
    for col, name in _CONDITION.items():
        if col in table:
            values = table[col]
            numeric = pd.api.types.is_numeric_dtype(values)
            out[name] = values if numeric else [parse_pair(v) for v in values]
    return out.astype(float)


def gabor_conditions(responses, unit_id: int) -> pd.DataFrame:
    """Trial-averaged count of one unit per gabor condition, best first.

    Parameters
    ----------
    responses : GaborResponses
        From :func:`meireport.extract.gabor_responses` (``.table`` and ``.counts`` aligned on
        presentation id).
    unit_id : int
        A column of ``responses.counts``.

    Returns
    -------
    DataFrame
        One row per condition: its parameters (``orientation_deg``, ``x_deg``, ``y_deg``, and
        ``size_deg``, ``sf_cpd``, ``contrast`` where recorded), ``mean_count``, ``sem`` and
        ``n`` presentations, sorted by ``mean_count`` (ties keep the condition order).

    Examples
    --------
    >>> from types import SimpleNamespace
    >>> table = pd.DataFrame({"orientation": [0.0, 90.0, 0.0], "x_position": [0.0, 10.0, 0.0],
    ...                       "y_position": [0.0, 0.0, 0.0], "size": ["[20.0, 20.0]"] * 3})
    >>> counts = pd.DataFrame({7: [1, 5, 3]})
    >>> c = gabor_conditions(SimpleNamespace(table=table, counts=counts), 7)
    >>> c[["orientation_deg", "x_deg", "size_deg", "mean_count", "n"]].values.tolist()
    [[90.0, 10.0, 20.0, 5.0, 1.0], [0.0, 0.0, 20.0, 2.0, 2.0]]
    """
    counts = responses.counts
    if unit_id not in counts.columns:
        raise MeireportError(f"unit_id: {unit_id} is not a unit of these gabor responses")
    if len(responses.table) != len(counts):
        raise MeireportError(
            f"responses: table ({len(responses.table)} rows) and counts ({len(counts)} rows) "
            "must be aligned on presentation id"
        )
    cond = _conditions(responses.table.reset_index(drop=True))
    cond["count"] = counts[unit_id].to_numpy(dtype=float)
    keys = [c for c in cond.columns if c != "count"]
    g = cond.groupby(keys, sort=True)["count"]
    out = pd.DataFrame({"mean_count": g.mean(), "sem": g.sem(), "n": g.size().astype(float)})
    out = out.reset_index().sort_values("mean_count", ascending=False, kind="stable")
    return out.reset_index(drop=True)


@dataclass
class SessionGabor:
    """The session's best Gabor for one unit.

    Attributes
    ----------
    image : ndarray
        Mean of the ``k`` rendered conditions (``rows x cols``, on grey 0.5, not rescaled).
    conditions : DataFrame
        The ``k`` best conditions (see :func:`gabor_conditions`).
    x_deg, y_deg : float
        Mean position of the ``k`` conditions: the session's estimate of the RF centre.
    orientation_deg : float
        Axial mean of their orientations (``[0, 180)``).
    geometry : ScreenGeometry
        The mapping it was rendered with.

    Examples
    --------
    >>> from types import SimpleNamespace
    >>> table = pd.DataFrame({"orientation": [0.0], "x_position": [0.0], "y_position": [0.0]})
    >>> sg = session_gabor(SimpleNamespace(table=table, counts=pd.DataFrame({7: [2]})), 7)
    >>> sg.render([0.0, np.pi]).shape
    (2, 60, 96)
    """

    image: np.ndarray
    conditions: pd.DataFrame
    x_deg: float
    y_deg: float
    orientation_deg: float
    geometry: ScreenGeometry

    def render(self, phases) -> np.ndarray:
        """The same average at other carrier phases (radians): ``n_phases x rows x cols``.

        Allen's gabors drift through every phase, so the recorded counts do not say which
        phase a simple cell prefers; pick it on a model if the comparison needs it.
        """
        best = self.conditions
        get = {"size_deg": 20.0, "sf_cpd": 0.08, "contrast": 0.8}
        cols = {
            c: best[c].to_numpy() if c in best else np.full(len(best), v) for c, v in get.items()
        }
        out = []
        for phase in np.atleast_1d(np.asarray(phases, dtype=float)):
            imgs = render_gabors(
                self.geometry,
                cols["contrast"],
                x_deg=best["x_deg"].to_numpy(),
                y_deg=best["y_deg"].to_numpy(),
                orientation_deg=best["orientation_deg"].to_numpy(),
                sf_cpd=cols["sf_cpd"],
                size_deg=cols["size_deg"],
                phase=float(phase),
            )
            out.append(imgs.mean(axis=0))
        return np.stack(out)


def session_gabor(
    responses,
    unit_id: int,
    geometry: ScreenGeometry | None = None,
    k: int = 3,
    phase: float = 0.0,
) -> SessionGabor:
    """Average of the ``k`` gabor conditions with the highest trial-averaged count.

    Each condition is rendered with its recorded orientation, position, size, spatial
    frequency and contrast (defaults 20 deg, 0.08 cpd and 0.8, the Allen stimulus, where a
    column is missing). Allen's gabors drift, so no phase was recorded: ``phase`` is used
    (:meth:`SessionGabor.render` gives other phases).

    Parameters
    ----------
    responses : GaborResponses
        From :func:`meireport.extract.gabor_responses`.
    unit_id : int
        The unit.
    geometry : ScreenGeometry, optional
        Degree -> pixel mapping (default ``ScreenGeometry()``).
    k : int
        Conditions averaged (the seed's 3).
    phase : float
        Carrier phase (radians) of the rendering.

    Examples
    --------
    >>> from types import SimpleNamespace
    >>> table = pd.DataFrame({"orientation": [0.0, 90.0, 45.0], "x_position": [-20.0, 20.0, 0.0],
    ...                       "y_position": [0.0, 10.0, 0.0]})
    >>> counts = pd.DataFrame({7: [1, 5, 3]})
    >>> sg = session_gabor(SimpleNamespace(table=table, counts=counts), 7, k=2)
    >>> sg.x_deg, sg.y_deg, sg.image.shape
    (10.0, 5.0, (60, 96))
    """
    if int(k) != k or k < 1:
        raise MeireportError(f"k: expected an integer >= 1, got {k}")
    geometry = ScreenGeometry() if geometry is None else geometry
    best = gabor_conditions(responses, unit_id).head(int(k))
    axial = np.angle(np.exp(2j * np.deg2rad(best["orientation_deg"].to_numpy())).mean())
    sg = SessionGabor(
        image=np.empty(0),
        conditions=best,
        x_deg=float(best["x_deg"].mean()),
        y_deg=float(best["y_deg"].mean()),
        orientation_deg=float(np.mod(np.rad2deg(axial) / 2.0, 180.0)),
        geometry=geometry,
    )
    sg.image = sg.render([phase])[0]
    return sg


def best_phase_image(sg: SessionGabor, model, mean: float, std: float,
                     n_phases: int = 8) -> tuple[np.ndarray, float]:
    """The session Gabor at the carrier phase the model prefers, at equal footing.

    Allen's gabors drift, so the recording does not say which phase a simple cell prefers; a
    Gabor rendered at an arbitrary phase can miss a simple cell's receptive field entirely (at
    phase 0 a simulated simple cell fired 1-5 spikes/s for it against 220-280 at its best
    phase). The comparison with the MEI is only fair at the model's best phase.

    Parameters
    ----------
    sg : SessionGabor
        From :func:`session_gabor`.
    model : callable
        Unit model (see :func:`meireport.mei.predict`).
    mean, std : float
        Footing (:func:`meireport.mei.compare.footing`) every stimulus is rescaled to.
    n_phases : int
        Phases tried, evenly spaced over ``[0, 2 pi)``.

    Returns
    -------
    image : ndarray
        The rescaled Gabor at the best phase.
    phase : float
        That phase (radians).

    Examples
    --------
    >>> from types import SimpleNamespace
    >>> from meireport.mei.targets import LinearModel
    >>> table = pd.DataFrame({"orientation": [0.0], "x_position": [0.0], "y_position": [0.0]})
    >>> sg = session_gabor(SimpleNamespace(table=table, counts=pd.DataFrame({7: [2]})), 7)
    >>> w = sg.render([np.pi / 2])[0] - 0.5  # a filter that prefers phase pi/2
    >>> img, phase = best_phase_image(sg, LinearModel(w), 0.5, 0.1, n_phases=4)
    >>> round(phase, 3)
    1.571
    """
    phases = np.arange(int(n_phases)) * 2 * np.pi / int(n_phases)
    imgs = equalize(sg.render(phases), mean, std)
    model = as_model(model)
    best = int(np.argmax(_respond(model, _inputs(imgs, model), len(imgs))))
    return imgs[best], float(phases[best])


# --------------------------------------------------------------------------------------------
# in-silico search
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GaborSearchConfig:
    """Grids and refinement of :func:`gabor_search`.

    Parameters
    ----------
    n_orientations : int
        Orientations in ``[0, 180)`` of the feature grid (12 -> every 15 deg).
    sfs_cpd : tuple of float
        Spatial frequencies (cycles/deg) of the feature grid.
    n_phases : int
        Carrier phases in ``[0, 2 pi)``.
    sizes_deg : tuple of float
        Patch diameters (deg) of the feature grid.
    position_step_deg : float
        Spacing of the position grid over the image (deg).
    probe_sfs_cpd, probe_size_deg, n_probe_orientations, n_probe_phases :
        The patches tried at every grid position (stage 1).
    n_positions : int
        Best positions carried to the feature grid (stage 2).
    n_refine : int
        Best candidates refined by the local pattern search (stage 3).
    refine_iters : int
        Pattern-search iterations per refined candidate (each tries +-step on every parameter;
        the steps halve when nothing improves).
    contrast : float
        Michelson contrast of the rendered patches (before equal footing, if any).
    batch_size : int, optional
        Images per model call; default: 32 on the CPU (a CNN's cost per image is lowest in
        small batches, whose activations stay in the cache: half that of 512), 512 on an
        accelerator. It does not change the result.

    Examples
    --------
    >>> GaborSearchConfig().n_orientations
    12
    """

    n_orientations: int = 12
    sfs_cpd: tuple[float, ...] = (0.02, 0.03, 0.045, 0.065, 0.09, 0.13, 0.19)
    n_phases: int = 4
    sizes_deg: tuple[float, ...] = (10.0, 20.0, 35.0, 60.0)
    position_step_deg: float = 15.0
    probe_sfs_cpd: tuple[float, ...] = (0.04, 0.1)
    probe_size_deg: float = 30.0
    n_probe_orientations: int = 4
    n_probe_phases: int = 4
    n_positions: int = 3
    n_refine: int = 3
    refine_iters: int = 30
    contrast: float = 1.0
    batch_size: int | None = None

    def to_dict(self) -> dict:
        """JSON-serialisable copy (for the report)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    def __post_init__(self) -> None:
        ints = (
            "n_orientations",
            "n_phases",
            "n_probe_orientations",
            "n_probe_phases",
            "n_positions",
            "n_refine",
            "batch_size",
        )
        for name in ints:
            v = getattr(self, name)
            if name == "batch_size" and v is None:
                continue
            if int(v) != v or v < 1:
                raise MeireportError(f"{name}: expected an integer >= 1, got {v}")
        if int(self.refine_iters) != self.refine_iters or self.refine_iters < 0:
            raise MeireportError(f"refine_iters: expected an integer >= 0, got {self.refine_iters}")
        for name in ("sfs_cpd", "sizes_deg", "probe_sfs_cpd"):
            v = getattr(self, name)
            if len(v) == 0 or min(v) <= 0:
                raise MeireportError(f"{name}: expected positive values, got {v}")
        for name in ("position_step_deg", "probe_size_deg"):
            if not getattr(self, name) > 0:
                raise MeireportError(f"{name}: expected > 0, got {getattr(self, name)}")
        if not 0 < self.contrast <= 1:
            raise MeireportError(f"contrast: expected a value in (0, 1], got {self.contrast}")


@dataclass
class GaborSearchResult:
    """The best Gabor found on a model.

    Attributes
    ----------
    params : dict
        ``x_deg, y_deg, orientation_deg`` (``[0, 180)``), ``sf_cpd, size_deg, phase``
        (radians, ``[0, 2 pi)``).
    image : ndarray
        The Gabor as shown to the model (at equal footing when a mean and std were given).
    response : float
        The model's response to ``image``.
    grid_response : float
        Best response of the grids, before refinement.
    n_evaluated : int
        Images shown to the model.
    seconds : float
    """

    params: dict
    image: np.ndarray
    response: float
    grid_response: float
    n_evaluated: int
    seconds: float

    def summary(self) -> dict:
        """Flat, JSON-serialisable figures for the report."""
        return {f"gabor_{k}": float(v) for k, v in self.params.items()} | {
            "gabor_pred": float(self.response),
            "gabor_search_seconds": float(self.seconds),
        }


#: Patches put at equal footing at once (numpy; the model sees them in batches). The footing
#: solver's result for one patch moves (~1e-7) with the others in its call: keep this fixed.
_RENDER_CHUNK = 512
#: Patches rendered at once: a block's temporaries stay in the cache (2.5x faster than 512).
_RENDER_BLOCK = 64
#: The position grid's patches as model inputs, per geometry, grid, footing, dtype and device.
_PROBE_BANKS: OrderedDict = OrderedDict()
_PROBE_BANKS_KEPT = 2


def _inputs(images: np.ndarray, model) -> torch.Tensor:
    """``n x H x W`` images as the model's ``n x 1 x H x W`` inputs, on its device."""
    return torch.as_tensor(images[:, None], dtype=model_dtype(model), device=model_device(model))


def _respond(model, x: torch.Tensor, batch: int) -> np.ndarray:
    """Responses to model inputs, ``batch`` at a time without gradients (float64, CPU)."""
    with torch.no_grad():
        out = [responses(model, x[i : i + batch]) for i in range(0, len(x), batch)]
    return torch.cat(out).double().cpu().numpy() if out else np.zeros(0)


class _Scorer:
    """Render, put at equal footing and evaluate candidate parameter sets; count the images.

    Patches are rendered and put at equal footing in chunks of :data:`_RENDER_CHUNK` (float64
    numpy, as every compared stimulus), converted to the model's dtype on its device, and
    evaluated under ``torch.no_grad`` in batches of ``config.batch_size``.
    """

    def __init__(self, model, geometry, config, mean, std):
        self.model, self.geometry, self.config = as_model(model), geometry, config
        self.mean, self.std, self.n = mean, std, 0
        self.device, self.dtype = model_device(model), model_dtype(model)
        default = 32 if self.device.type == "cpu" else 512
        self.batch = int(config.batch_size) if config.batch_size is not None else default

    def images(self, p: dict) -> np.ndarray:
        arrs = dict(zip(PARAMS, np.broadcast_arrays(
            *[np.atleast_1d(np.asarray(p[k], float)) for k in PARAMS]), strict=True))
        n, block = len(arrs[PARAMS[0]]), _RENDER_BLOCK
        imgs = np.concatenate([
            render_gabors(self.geometry, self.config.contrast,
                          **{k: a[i : i + block] for k, a in arrs.items()})
            for i in range(0, n, block)
        ])
        if self.mean is not None:
            imgs = equalize(imgs, self.mean, self.std)
        return imgs

    def _chunks(self, p: dict):
        n = len(np.broadcast_arrays(*[np.atleast_1d(p[k]) for k in PARAMS])[0])
        for i in range(0, n, _RENDER_CHUNK):
            part = {k: np.broadcast_to(np.atleast_1d(p[k]), (n,))[i : i + _RENDER_CHUNK]
                    for k in PARAMS}
            yield _inputs(self.images(part), self.model)

    def evaluate(self, x: torch.Tensor) -> np.ndarray:
        """Responses to a ``B x 1 x H x W`` tensor of model inputs (float64 numpy)."""
        self.n += len(x)
        return _respond(self.model, x, self.batch)

    def __call__(self, p: dict) -> np.ndarray:
        parts = [self.evaluate(x) for x in self._chunks(p)]
        return np.concatenate(parts) if parts else np.zeros(0)

    def bank(self, p: dict, key: tuple) -> np.ndarray:
        """Like calling the scorer, with the rendered inputs kept under ``key`` for later calls."""
        key = (self.geometry, self.mean, self.std, self.config.contrast, self.dtype,
               str(self.device), *key)
        x = _PROBE_BANKS.get(key)
        if x is None:
            x = torch.cat(list(self._chunks(p)))
            _PROBE_BANKS[key] = x
            while len(_PROBE_BANKS) > _PROBE_BANKS_KEPT:
                _PROBE_BANKS.popitem(last=False)
        _PROBE_BANKS.move_to_end(key)
        return self.evaluate(x)


def _grid(**axes) -> dict:
    mesh = np.meshgrid(*[np.asarray(v, float) for v in axes.values()], indexing="ij")
    return {k: m.ravel() for k, m in zip(axes, mesh, strict=True)}


def _positions(geometry: ScreenGeometry, step: float) -> tuple[np.ndarray, np.ndarray]:
    half_w = (geometry.shape[1] - 1) / 2.0 * geometry.deg_per_px
    half_h = (geometry.shape[0] - 1) / 2.0 * geometry.deg_per_px
    xs = np.arange(-np.floor(half_w / step), np.floor(half_w / step) + 1) * step
    ys = np.arange(-np.floor(half_h / step), np.floor(half_h / step) + 1) * step
    return xs, ys


def _take(p: dict, idx) -> dict:
    return {k: np.atleast_1d(v)[idx] for k, v in p.items()}


def _stage_positions(score: _Scorer, geometry, cfg) -> np.ndarray:
    xs, ys = _positions(geometry, cfg.position_step_deg)
    p = _grid(
        x_deg=xs,
        y_deg=ys,
        orientation_deg=np.arange(cfg.n_probe_orientations) * 180.0 / cfg.n_probe_orientations,
        sf_cpd=cfg.probe_sfs_cpd,
        size_deg=[cfg.probe_size_deg],
        phase=np.arange(cfg.n_probe_phases) * 2 * np.pi / cfg.n_probe_phases,
    )
    key = (cfg.position_step_deg, cfg.n_probe_orientations, tuple(cfg.probe_sfs_cpd),
           cfg.probe_size_deg, cfg.n_probe_phases)
    r = score.bank(p, key)
    per_pos = pd.Series(r).groupby([p["x_deg"], p["y_deg"]]).max()
    best = per_pos.sort_values(ascending=False, kind="stable").index[: cfg.n_positions]
    return np.array(list(best), dtype=float).reshape(-1, 2)


def _stage_features(score: _Scorer, positions: np.ndarray, cfg) -> tuple[dict, np.ndarray]:
    feats = _grid(
        orientation_deg=np.arange(cfg.n_orientations) * 180.0 / cfg.n_orientations,
        sf_cpd=cfg.sfs_cpd,
        size_deg=cfg.sizes_deg,
        phase=np.arange(cfg.n_phases) * 2 * np.pi / cfg.n_phases,
    )
    n = len(feats["phase"])
    p = {k: np.tile(v, len(positions)) for k, v in feats.items()}
    p["x_deg"] = np.repeat(positions[:, 0], n)
    p["y_deg"] = np.repeat(positions[:, 1], n)
    return p, score(p)


def _phase_at(p: dict, ref: tuple[float, float]) -> np.ndarray:
    """Carrier phase referred to the point ``ref`` (deg) instead of the patch centre."""
    t = np.deg2rad(p["orientation_deg"])
    du = (p["x_deg"] - ref[0]) * np.cos(t) + (p["y_deg"] - ref[1]) * np.sin(t)
    return p["phase"] - 2 * np.pi * p["sf_cpd"] * du


def _from_search(v: np.ndarray, ref: tuple[float, float]) -> dict:
    """Search coordinates (log sf, log size, carrier phase at ``ref``) -> render parameters."""
    p = {k: v[:, i] for i, k in enumerate(PARAMS)}
    p["sf_cpd"], p["size_deg"] = np.exp(p["sf_cpd"]), np.exp(p["size_deg"])
    p["phase"] = p["phase"] - _phase_at(p | {"phase": 0.0}, ref)
    return p


def _bounds(geometry: ScreenGeometry) -> tuple[np.ndarray, np.ndarray]:
    """Search-coordinate bounds of the refinement.

    Centre on the image, 2 px <= size <= twice the image width, frequency between a quarter
    cycle per image width and the pixel Nyquist limit.
    """
    width = geometry.shape[1] * geometry.deg_per_px
    height = geometry.shape[0] * geometry.deg_per_px
    lo = np.array(
        [
            -width / 2,
            -height / 2,
            -np.inf,
            np.log(0.25 / width),
            np.log(2 * geometry.deg_per_px),
            -np.inf,
        ]
    )
    hi = np.array(
        [
            width / 2,
            height / 2,
            np.inf,
            np.log(0.5 / geometry.deg_per_px),
            np.log(2 * width),
            np.inf,
        ]
    )
    return lo, hi


def _refine(score: _Scorer, starts: list[dict], r0: np.ndarray, cfg) -> list[tuple[dict, float]]:
    """Pattern search: try +-step on each parameter; move to the best; halve steps when stuck.

    Spatial frequency and size move on a log scale, and the phase is the carrier's phase at
    the starting centre, so that moving the patch moves its envelope, not its carrier. The
    parameters stay within :func:`_bounds` (without equal footing, a bigger patch always
    carries more contrast energy). The searches from the ``starts`` run side by side (one
    model call per iteration for all of them), each on its own.
    """
    k = len(starts)
    ref = np.array([[float(st["x_deg"][0]), float(st["y_deg"][0])] for st in starts])
    x = np.array([[float(st[p][0]) for p in PARAMS] for st in starts])
    x[:, 3], x[:, 4] = np.log(x[:, 3]), np.log(x[:, 4])
    lo, hi = _bounds(score.geometry)
    step = np.tile(
        [
            cfg.position_step_deg / 2,
            cfg.position_step_deg / 2,
            90.0 / cfg.n_orientations,
            np.log(1.5) / 2,
            np.log(1.7) / 2,
            np.pi / cfg.n_phases,
        ],
        (k, 1),
    )
    n_par = len(PARAMS)
    eye = np.eye(n_par)
    refs = (np.repeat(ref[:, 0], 2 * n_par), np.repeat(ref[:, 1], 2 * n_par))
    best = np.asarray(r0, dtype=float).copy()
    rows = np.arange(k)
    for _ in range(int(cfg.refine_iters)):
        moves = step[:, None, :] * eye  # k x 6 x 6: +-step on one parameter per candidate
        cand = np.clip(np.concatenate([x[:, None] + moves, x[:, None] - moves], axis=1), lo, hi)
        r = score(_from_search(cand.reshape(-1, n_par), refs)).reshape(k, 2 * n_par)
        j = np.argmax(r, axis=1)
        better = r[rows, j] > best
        best = np.where(better, r[rows, j], best)
        x = np.where(better[:, None], cand[rows, j], x)
        step = np.where(better[:, None], step, step / 2)
    out = []
    for i in range(k):
        p = _from_search(x[i : i + 1], (ref[i, 0], ref[i, 1]))
        out.append(({name: float(v[0]) for name, v in p.items()}, float(best[i])))
    return out


def _canonical(p: dict) -> dict:
    """Orientation in [0, 180), phase in [0, 2 pi), describing the same image.

    A half-turn of the orientation reverses ``u``, and ``cos(2 pi f (-u) + phase) =
    cos(2 pi f u - phase)``: an odd number of half-turns negates the phase.
    """
    turns = int(np.floor(float(p["orientation_deg"]) / 180.0))
    phase = -float(p["phase"]) if turns % 2 else float(p["phase"])
    return {k: float(p[k]) for k in PARAMS} | {
        "orientation_deg": float(p["orientation_deg"]) - 180.0 * turns,
        "phase": float(np.mod(phase, 2 * np.pi)),
    }


def gabor_search(
    model,
    geometry: ScreenGeometry | None = None,
    *,
    mean: float | None = None,
    std: float | None = None,
    config: GaborSearchConfig | None = None,
) -> GaborSearchResult:
    """The Gabor patch a model responds to most: grids, then local refinement.

    Stage 1 tries a few probe patches (orientations x phases x two frequencies, one size) at
    every point of a position grid over the image; stage 2 runs the full orientation x
    frequency x size x phase grid at the best ``n_positions`` positions; stage 3 refines the
    best ``n_refine`` candidates with a pattern search over all six parameters.

    Parameters
    ----------
    model : callable
        ``B x 1 x H x W`` tensor -> ``B`` responses of one unit.
    geometry : ScreenGeometry, optional
        Degree -> pixel mapping (default ``ScreenGeometry()``); its shape is the image shape.
    mean, std : float, optional
        Equal footing: every candidate is put at this mean and std (clipped to [0, 1]) before
        the model sees it -- use the values every compared stimulus gets. Without them the
        patches are shown at ``config.contrast`` on grey 0.5.
    config : GaborSearchConfig, optional
        Grids and refinement (default :class:`GaborSearchConfig`).

    Returns
    -------
    GaborSearchResult
        Numpy arrays on the CPU; the model runs on the device of its parameters.

    Examples
    --------
    >>> from meireport.mei.targets import LinearModel
    >>> from meireport.stimuli import render_gabor
    >>> g = ScreenGeometry()
    >>> w = render_gabor(g, 20, -10, 60, 0.08, 30, contrast=1.0) - 0.5
    >>> cfg = GaborSearchConfig(n_orientations=6, sfs_cpd=(0.05, 0.08, 0.12), sizes_deg=(30.0,),
    ...                         position_step_deg=20.0, probe_sfs_cpd=(0.08,), refine_iters=8)
    >>> res = gabor_search(LinearModel(w), g, mean=0.5, std=0.1, config=cfg)
    >>> round(res.params["orientation_deg"]), round(res.params["x_deg"]) // 5
    (60, 4)
    """
    if not callable(model):
        raise MeireportError(
            f"model: expected a callable mapping B x 1 x H x W to B, got {type(model)}"
        )
    if (mean is None) != (std is None):
        raise MeireportError("mean/std: expected both (equal footing) or neither")
    geometry = ScreenGeometry() if geometry is None else geometry
    cfg = GaborSearchConfig() if config is None else config
    t0 = time.perf_counter()
    score = _Scorer(model, geometry, cfg, mean, std)
    positions = _stage_positions(score, geometry, cfg)
    grid, r = _stage_features(score, positions, cfg)
    order = np.argsort(-r, kind="stable")[: cfg.n_refine]
    refined = _refine(score, [_take(grid, [i]) for i in order], r[order], cfg)
    params, best = max(refined, key=lambda pr: pr[1])
    params = _canonical(params)
    image = score.images({k: [v] for k, v in params.items()})[0]
    return GaborSearchResult(
        params=params,
        image=image,
        response=float(best),
        grid_response=float(r[order[0]]),
        n_evaluated=int(score.n),
        seconds=time.perf_counter() - t0,
    )


def fit_gabor(
    image,
    geometry: ScreenGeometry | None = None,
    *,
    mean: float,
    std: float,
    config: GaborSearchConfig | None = None,
) -> GaborSearchResult:
    """The Gabor patch most correlated with ``image`` at the same footing (a Gabor fit).

    :func:`gabor_search` on the linear model whose filter is ``image - mean``: at a fixed mean
    and standard deviation its response is the Gabor's pixel correlation with the image (times
    a constant), so the searched Gabor is the best-fitting one, over position, orientation,
    spatial frequency, size and phase. Its ``sf_cpd`` measures the image's spatial frequency
    where its pattern is, unlike a power spectrum, which any broad low-frequency content of the
    image (a luminance gradient, pixels outside the receptive field) pulls down.
    ``response`` is the fit's pixel correlation with the image.

    Examples
    --------
    >>> from meireport.stimuli import render_gabor
    >>> g = ScreenGeometry()
    >>> img = render_gabor(g, -15, 5, 30, 0.09, 25, phase=1.0, contrast=0.3)
    >>> cfg = GaborSearchConfig(position_step_deg=20.0, refine_iters=20)
    >>> fit = fit_gabor(img, g, mean=0.5, std=float(img.std()), config=cfg)
    >>> round(fit.params["sf_cpd"], 2), round(fit.params["orientation_deg"]), fit.response > 0.99
    (0.09, 30, True)
    """
    a = np.asarray(image, dtype=np.float64)
    if a.ndim != 2 or not np.all(np.isfinite(a)) or a.std() == 0:
        raise MeireportError(f"image: expected a finite H x W image with contrast, got shape "
                             f"{a.shape}")
    res = gabor_search(LinearModel(a - a.mean()), geometry, mean=mean, std=std, config=config)
    res.response = pixel_correlation(res.image, a)
    return res
