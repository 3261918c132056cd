"""The embedded default session: a simulated Allen-format Neuropixels session with ground truth.

Units of six kinds live in several areas: ``simple`` cells (rectified linear Gabor receptive
field), ``complex`` cells (energy model: a quadrature pair of Gabors), ``untuned`` units (rate
independent of the image), ``poor`` units (tuned, but failing the quality filter), and two kinds
whose optimal stimulus is *not* a Gabor: ``corner`` cells (an AND of two Gabor subunits of
different orientation, ``sqrt(relu(a1) * relu(a2))``; their optimum is the sum of the subunits, a
corner / plaid) and ``surround`` cells (rectified linear centre-surround, difference-of-Gaussians
receptive field). Their rates are computed on the image *as the model sees it*
(:func:`meireport.stimuli.prepare_image`, 60 x 96, [0, 1]); spikes are Poisson with a per-unit
latency. Stimuli follow the Allen session the seed
study used: ``natural_scenes`` (118 images + blank frame -1, 50 repeats, 250 ms, several blocks)
and ``gabors`` (3 orientations x 9 x 9 positions x 15 repeats, drifting at 4 Hz, 250 ms).

:func:`true_rate` is the exact expected rate of every simulated unit for any image stack: show it
an MEI or a Gabor and the true neuron answers (the in-silico inception loop).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path

import numpy as np
from hdmf.data_utils import AbstractDataChunkIterator, DataChunk

from meireport.errors import MeireportError
from meireport.stimuli import ScreenGeometry, prepare_image, render_gabor

__all__ = [
    "simulate_session",
    "draw_units",
    "write_templates",
    "channel_pool",
    "SimulatedSession",
    "GroundTruth",
    "load_ground_truth",
    "combine_truths",
    "true_rate",
    "natural_images",
    "DEFAULT_SESSION_ID",
    "TEMPLATE_SHAPE",
    "KINDS",
    "NON_GABOR_KINDS",
]

DEFAULT_SESSION_ID = 700000001
TEMPLATE_SHAPE = (120, 192)  # stored templates; the model sees them at 60 x 96
IMAGE_SEED = 20191105  # natural images depend only on their index: caches share templates
SIM_VERSION = "1"

# Photographs that ship inside scikit-image's data folder (no download).
_PHOTOS = (
    "astronaut.png",
    "camera.png",
    "chelsea.png",
    "coffee.png",
    "coins.png",
    "grass.png",
    "gravel.png",
    "brick.png",
    "moon.png",
    "rocket.jpg",
    "motorcycle_left.png",
    "motorcycle_right.png",
    "hubble_deep_field.jpg",
    "retina.jpg",
    "clock_motion.png",
    "ihc.png",
    "cell.png",
    "page.png",
    "text.png",
    "microaneurysms.png",
)

#: Unit kinds, in the order of a population's counts (the last two may be left out: zero).
KINDS = ("simple", "complex", "untuned", "poor", "corner", "surround")
#: Kinds whose optimal stimulus is not a Gabor.
NON_GABOR_KINDS = ("corner", "surround")

# Default population: area -> (simple, complex, untuned, poor, corner, surround)
DEFAULT_POPULATION: dict[str, tuple[int, ...]] = {
    "VISam": (24, 16, 14, 8, 6, 6),
    "VISp": (14, 10, 8, 6, 3, 3),
    "CA1": (0, 0, 10, 2),
}
# corner cells: subunit 2 is turned by 60..120 deg (either way) and centred 0.5..1 sigma away
CORNER_ANGLE_DEG = (60.0, 120.0)
CORNER_OFFSET_SIGMA = (0.5, 1.0)
# surround cells: the DoG's centre sigma (deg), surround / centre sigma ratio and surround /
# centre weight (integrals). A balanced DoG (weight 1) is matched by a Gaussian blob (a Gabor of
# spatial frequency -> 0) to pixel correlation 0.92 (its Laplacian-of-Gaussian limit) .. 0.97:
# with a stronger surround no Gabor comes close (best correlation ~0.55 .. 0.9)
SURROUND_CENTRE_DEG = (2.5, 5.0)
SURROUND_RATIO = (2.0, 2.5)
SURROUND_WEIGHT = (1.5, 2.0)
_PROBE_OF_AREA = {"VISam": "probeA", "VISp": "probeB", "CA1": "probeB"}
_CHANNELS_PER_PROBE = 48

GABOR_ORIENTATIONS = (0.0, 45.0, 90.0)
GABOR_POSITIONS = tuple(float(v) for v in range(-40, 41, 10))
GABOR_SF = 0.08
GABOR_SIZE = 20.0
GABOR_CONTRAST = 0.8
GABOR_TF = 4.0
GABOR_REPEATS = 15
PRESENTATION_S = 0.25
N_DRIFT_PHASES = 8


# --------------------------------------------------------------------------------------------
# ground truth
# --------------------------------------------------------------------------------------------
@dataclass
class GroundTruth:
    """What the simulator knows about each unit (arrays aligned on ``unit_id``).

    Attributes
    ----------
    unit_id : ndarray of int64
    kind : ndarray of str
        One of :data:`KINDS`; with ``z = x - 0.5`` (``x`` the image in model space),
        ``a = <rf_even, z>`` and ``b = <rf_odd, z>``, the drive is

        - ``simple`` and ``poor`` (tuned simple cells that fail the quality filter):
          ``max(0, a)``;
        - ``complex``: ``sqrt(a^2 + b^2)`` (energy model of a Gabor quadrature pair);
        - ``untuned``: 0;
        - ``corner``: ``sqrt(max(0, a) * max(0, b))``, an AND of two Gabor subunits of equal
          spatial frequency and envelope, orientations 60..120 deg apart, centres 0.5..1 sigma
          apart; at fixed contrast its optimum is ``rf_even + rf_odd`` (a corner / plaid);
        - ``surround``: ``max(0, a)`` with a centre-surround ``rf_even`` (isotropic difference
          of Gaussians, surround 2..2.5 x wider than the centre and 1.5..2 x its weight, then
          zero mean), which is its optimum; no Gabor correlates with it better than ~0.9.
    area : ndarray of str
        Intended structure of the unit.
    rf_even, rf_odd : ndarray, units x rows x cols
        Receptive fields in model pixel space (zero mean, unit L2 norm): ``rf_odd`` is zero but
        for complex cells (quadrature Gabor) and corner cells (subunit 2; ``rf_even`` is subunit
        1); both are zero for untuned units.
    gain, baseline : ndarray
        ``rate = baseline + gain * drive`` in spikes/s.
    latency : ndarray
        Response latency in seconds.
    rf_params : dict of ndarray
        Gabor parameters of each RF: ``x_deg``, ``y_deg``, ``orientation_deg``, ``sf_cpd``,
        ``sigma_deg``, ``phase``. Corner cells: those of subunit 1. Surround cells: the DoG's
        centre (``x_deg``, ``y_deg``), centre sigma (``sigma_deg``) and the peak spatial
        frequency of its band-pass, centre-positive lobe (``sf_cpd``; the strong surround also
        gives it an inverted response at the lowest frequencies); ``orientation_deg`` and
        ``phase`` are NaN (isotropic).
    geometry : ScreenGeometry

    Examples
    --------
    >>> import tempfile
    >>> truth = simulate_session(tempfile.mkdtemp(), n_images=8, n_repeats=2, seed=1,
    ...                          population={"VISp": (1, 0, 0, 0, 1, 1)}).truth
    >>> sorted(truth.kind.tolist())
    ['corner', 'simple', 'surround']
    """

    unit_id: np.ndarray
    kind: np.ndarray
    area: np.ndarray
    rf_even: np.ndarray
    rf_odd: np.ndarray
    gain: np.ndarray
    baseline: np.ndarray
    latency: np.ndarray
    rf_params: dict[str, np.ndarray]
    geometry: ScreenGeometry
    meta: dict = field(default_factory=dict)

    def index_of(self, unit_ids) -> np.ndarray:
        """Row positions of ``unit_ids`` in the truth arrays."""
        pos = {int(u): i for i, u in enumerate(self.unit_id)}
        missing = [u for u in np.atleast_1d(unit_ids) if int(u) not in pos]
        if missing:
            raise MeireportError(f"unit_ids: {missing[:5]} not in the ground truth")
        return np.array([pos[int(u)] for u in np.atleast_1d(unit_ids)], dtype=np.int64)

    def save(self, folder: Path) -> None:
        """Write ``ground_truth.npz`` and ``ground_truth.json`` into ``folder``."""
        arrays = {
            "unit_id": self.unit_id,
            "kind": self.kind.astype("U16"),
            "area": self.area.astype("U16"),
            "rf_even": self.rf_even.astype(np.float32),
            "rf_odd": self.rf_odd.astype(np.float32),
            "gain": self.gain,
            "baseline": self.baseline,
            "latency": self.latency,
            "deg_per_px": np.float64(self.geometry.deg_per_px),
            "image_shape": np.asarray(self.geometry.shape, dtype=np.int64),
        } | {f"rf_{k}": v for k, v in self.rf_params.items()}
        np.savez_compressed(folder / "ground_truth.npz", **arrays)
        kinds, counts = np.unique(self.kind, return_counts=True)
        desc = {
            "description": "Ground truth of a meireport simulated session. rate(image) = "
            "baseline + gain * drive, with a = <rf_even, x - 0.5>, b = <rf_odd, x - 0.5>; "
            "simple/poor/surround: drive = max(0, a); complex: drive = sqrt(a^2 + b^2); corner: "
            "drive = sqrt(max(0, a) * max(0, b)) (optimum at fixed contrast: rf_even + rf_odd); "
            "untuned: drive = 0. x is the image in model space (rows x cols, [0, 1]). Use "
            "meireport.sources.true_rate.",
            "fields": {
                "unit_id": "unit ids as in the NWB units table",
                "kind": "simple | complex | untuned | poor (tuned simple cell failing QC) | "
                "corner (AND of two Gabor subunits, orientations 60-120 deg apart) | surround "
                "(rectified centre-surround, difference-of-Gaussians RF)",
                "area": "structure acronym the unit was placed in",
                "rf_even/rf_odd": "units x rows x cols receptive fields (zero mean, unit L2 "
                "norm); rf_odd: complex cells' quadrature Gabor, corner cells' subunit 2 "
                "(rf_even: subunit 1), else zero; surround cells' rf_even is the DoG",
                "gain": "spikes/s per unit drive",
                "baseline": "spikes/s",
                "latency": "s from stimulus onset",
                "rf_x_deg/rf_y_deg": "RF centre in visual degrees (+y up)",
                "rf_orientation_deg/rf_sf_cpd/rf_sigma_deg/rf_phase": "RF Gabor parameters "
                "(corner: subunit 1's; surround: centre sigma and the peak SF of the DoG's "
                "band-pass lobe, "
                "orientation and phase NaN)",
                "deg_per_px/image_shape": "degree -> model pixel mapping",
            },
            "kinds": {str(k): int(c) for k, c in zip(kinds, counts, strict=True)},
            "geometry": self.geometry.to_dict(),
        } | self.meta
        (folder / "ground_truth.json").write_text(json.dumps(desc, indent=2))


def combine_truths(truths) -> GroundTruth:
    """The ground truths of several simulated sessions of one image set, as one.

    For a model pooled over sessions (:func:`meireport.models.pool_responses`).

    Examples
    --------
    >>> import tempfile
    >>> a = simulate_session(tempfile.mkdtemp(), n_images=8, n_repeats=2, seed=1).truth
    >>> b = simulate_session(tempfile.mkdtemp(), n_images=8, n_repeats=2, seed=2,
    ...                      session_id=700000002).truth
    >>> len(combine_truths([a, b]).unit_id) == len(a.unit_id) + len(b.unit_id)
    True
    """
    truths = list(truths)
    if not truths:
        raise MeireportError("truths: expected at least one ground truth")
    t0 = truths[0]
    for i, t in enumerate(truths[1:], start=1):
        if t.geometry != t0.geometry or t.meta.get("n_images") != t0.meta.get("n_images"):
            raise MeireportError(f"truths[{i}]: another image set or screen geometry")
    arrays = ("unit_id", "kind", "area", "rf_even", "rf_odd", "gain", "baseline", "latency")
    return GroundTruth(**{k: np.concatenate([getattr(t, k) for t in truths]) for k in arrays},
                       rf_params={k: np.concatenate([t.rf_params[k] for t in truths])
                                  for k in t0.rf_params},
                       geometry=t0.geometry, meta=dict(t0.meta))


def load_ground_truth(path) -> GroundTruth:
    """Read a simulated session's ground truth (``ground_truth.npz`` or the folder holding it).

    Examples
    --------
    >>> import tempfile
    >>> out = simulate_session(tempfile.mkdtemp(), n_images=8, n_repeats=2, seed=1)
    >>> truth = load_ground_truth(out.truth_path)
    >>> sorted(set(truth.kind.tolist()))
    ['complex', 'corner', 'poor', 'simple', 'surround', 'untuned']
    """
    p = Path(path)
    p = p / "ground_truth.npz" if p.is_dir() else p
    if not p.is_file():
        raise MeireportError(f"ground truth: {p} does not exist (only simulated sessions have one)")
    with np.load(p, allow_pickle=False) as z:
        d = {k: z[k] for k in z.files}
    meta_file = p.with_suffix(".json")
    meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
    geom = ScreenGeometry(float(d["deg_per_px"]), tuple(int(s) for s in d["image_shape"]))
    rf_keys = ("x_deg", "y_deg", "orientation_deg", "sf_cpd", "sigma_deg", "phase")
    return GroundTruth(
        unit_id=d["unit_id"].astype(np.int64),
        kind=d["kind"].astype(str),
        area=d["area"].astype(str),
        rf_even=d["rf_even"].astype(np.float64),
        rf_odd=d["rf_odd"].astype(np.float64),
        gain=d["gain"],
        baseline=d["baseline"],
        latency=d["latency"],
        rf_params={k: d[f"rf_{k}"] for k in rf_keys},
        geometry=geom,
        meta={k: v for k, v in meta.items() if k in ("seed", "n_images", "n_repeats")},
    )


def _drive(truth: GroundTruth, images: np.ndarray) -> np.ndarray:
    """``images x units`` drive (see :class:`GroundTruth`'s ``kind`` for the formulas)."""
    x = images.reshape(images.shape[0], -1) - 0.5
    even = x @ truth.rf_even.reshape(len(truth.unit_id), -1).T
    odd = x @ truth.rf_odd.reshape(len(truth.unit_id), -1).T
    kind = truth.kind[None, :]
    drive = np.where(kind == "complex", np.sqrt(even**2 + odd**2), np.maximum(even, 0.0))
    corner = np.sqrt(np.maximum(even, 0.0) * np.maximum(odd, 0.0))
    drive = np.where(kind == "corner", corner, drive)
    return np.where(kind == "untuned", 0.0, drive)


def true_rate(truth: GroundTruth, images, unit_ids=None) -> np.ndarray:
    """Exact expected firing rate (spikes/s) of the simulated units for any image stack.

    Parameters
    ----------
    truth : GroundTruth
        From :func:`load_ground_truth` or :attr:`SimulatedSession.truth`.
    images : array_like
        ``n x rows x cols`` (or one ``rows x cols`` image) in model space, values in [0, 1].
    unit_ids : sequence of int, optional
        Units to return (default: all, in ``truth.unit_id`` order).

    Returns
    -------
    ndarray
        ``units x images`` rates in spikes/s.

    Examples
    --------
    >>> import tempfile
    >>> out = simulate_session(tempfile.mkdtemp(), n_images=8, n_repeats=2, seed=1)
    >>> grey = np.full((1, 60, 96), 0.5)
    >>> bool(np.allclose(true_rate(out.truth, grey)[:, 0], out.truth.baseline))
    True
    """
    imgs = np.asarray(images, dtype=np.float64)
    if imgs.ndim == 2:
        imgs = imgs[None]
    if imgs.ndim != 3 or imgs.shape[1:] != tuple(truth.geometry.shape):
        raise MeireportError(
            f"images: expected n x {truth.geometry.shape[0]} x {truth.geometry.shape[1]}, "
            f"got shape {imgs.shape}"
        )
    rate = truth.baseline[None, :] + truth.gain[None, :] * _drive(truth, imgs)
    rate = rate.T
    if unit_ids is not None:
        rate = rate[truth.index_of(unit_ids)]
    return rate


# --------------------------------------------------------------------------------------------
# images
# --------------------------------------------------------------------------------------------
@lru_cache(maxsize=1)
def _photos() -> tuple[np.ndarray, ...]:
    import skimage
    from skimage.io import imread

    folder = Path(skimage.__file__).parent / "data"
    out = []
    for name in _PHOTOS:
        f = folder / name
        if f.is_file():
            img = np.asarray(imread(f), dtype=np.float64)
            if img.ndim == 3:
                img = img[..., :3].mean(axis=-1)
            img = (img - img.min()) / max(np.ptp(img), 1e-9)
            if min(img.shape) >= 64:
                out.append(img)
    if len(out) < 5:
        raise MeireportError(
            f"scikit-image's data folder {folder} lacks its photographs; reinstall scikit-image"
        )
    return tuple(out)


def _one_image(k: int) -> np.ndarray:
    from skimage.transform import resize

    rng = np.random.default_rng([IMAGE_SEED, k])
    photos = _photos()
    src = photos[int(rng.integers(len(photos)))]
    h, w = src.shape
    aspect = TEMPLATE_SHAPE[1] / TEMPLATE_SHAPE[0]
    ch = int(min(h, w / aspect) * rng.uniform(0.35, 1.0))
    cw = int(ch * aspect)
    r0, c0 = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    crop = src[r0 : r0 + ch, c0 : c0 + cw]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    img = resize(crop, TEMPLATE_SHAPE, order=1, anti_aliasing=True)
    img = np.clip(img, 0, 1) ** rng.uniform(0.7, 1.4)  # vary the luminance distribution
    lo, hi = np.percentile(img, [1, 99])
    img = (img - lo) / max(hi - lo, 1e-6)
    img = 0.5 + (img - 0.5) * rng.uniform(0.6, 1.0)
    return np.round(np.clip(img, 0, 1) * 255).astype(np.uint8)


def natural_images(n: int) -> np.ndarray:
    """The simulator's natural-scene templates ``0..n-1`` (``n x 120 x 192`` uint8 grey).

    Image ``k`` depends only on ``k``: sessions with more images extend those with fewer.
    """
    return np.stack([_one_image(k) for k in range(n)])


# --------------------------------------------------------------------------------------------
# units
# --------------------------------------------------------------------------------------------
def _gabor_rf(geom: ScreenGeometry, x, y, ori, sf, sigma, phase) -> np.ndarray:
    rows, cols = geom.shape
    cx, cy = geom.deg_to_px(x, y)
    yy, xx = np.mgrid[0:rows, 0:cols].astype(np.float64)
    dx, dy = xx - cx, cy - yy
    t = np.deg2rad(ori)
    u = dx * np.cos(t) + dy * np.sin(t)
    s_px = sigma / geom.deg_per_px
    rf = np.exp(-(dx**2 + dy**2) / (2 * s_px**2)) * np.cos(
        2 * np.pi * geom.cycles_per_px(sf) * u + phase
    )
    rf -= rf.mean()
    return rf / np.linalg.norm(rf)


def _dog_rf(geom: ScreenGeometry, x, y, sigma, ratio, weight) -> np.ndarray:
    """Isotropic difference of Gaussians: centre ``sigma`` deg, surround ``ratio`` x wider.

    ``weight`` is the surround's integral over the centre's (1: balanced). Zero mean and unit
    L2 norm, as :func:`_gabor_rf`.
    """
    rows, cols = geom.shape
    cx, cy = geom.deg_to_px(x, y)
    yy, xx = np.mgrid[0:rows, 0:cols].astype(np.float64)
    r2 = (xx - cx) ** 2 + (cy - yy) ** 2
    s_px = sigma / geom.deg_per_px
    surround = np.exp(-r2 / (2 * (ratio * s_px) ** 2)) * weight / ratio**2
    rf = np.exp(-r2 / (2 * s_px**2)) - surround
    rf -= rf.mean()
    return rf / np.linalg.norm(rf)


def _dog_peak_sf(sigma_deg, ratio, weight):
    """Peak frequency (cycles/deg) of the band-pass lobe of :func:`_dog_rf`'s DoG.

    The DoG's spectrum, ``exp(-2 pi^2 s^2 f^2) - weight * exp(-2 pi^2 (ratio s)^2 f^2)`` up to
    a factor, has its positive (centre-phase) maximum at ``f = sqrt(ln(weight ratio^2) / (2
    (ratio^2 - 1))) / (pi s)`` (``weight * ratio^2 > 1``). With ``weight > 1`` it is negative
    below some frequency, and that inverted lobe can be the larger in magnitude.

    Examples
    --------
    >>> round(float(_dog_peak_sf(3.0, 2.5, 1.0)), 4)
    0.0443
    """
    r2 = np.asarray(ratio, dtype=np.float64) ** 2
    lift = np.log(np.asarray(weight, dtype=np.float64) * r2) / (2 * (r2 - 1))
    return np.sqrt(lift) / (np.pi * np.asarray(sigma_deg, dtype=np.float64))


def _population_counts(counts) -> tuple[int, ...]:
    """One area's unit counts as a full :data:`KINDS` tuple (4 counts: no corner / surround).

    Examples
    --------
    >>> _population_counts((3, 2, 1, 0))
    (3, 2, 1, 0, 0, 0)
    """
    c = tuple(int(v) for v in counts)
    if len(c) not in (4, len(KINDS)) or min(c) < 0:
        raise MeireportError(
            f"population: expected 4 or {len(KINDS)} counts >= 0 ({', '.join(KINDS)}), "
            f"got {tuple(counts)}"
        )
    return c + (0,) * (len(KINDS) - len(c))


def _make_truth(
    rng: np.random.Generator, geom: ScreenGeometry, population: dict, session_id: int
) -> GroundTruth:
    kinds, areas = [], []
    for area, counts in population.items():
        for kind, n in zip(KINDS, _population_counts(counts), strict=True):
            kinds += [kind] * n
            areas += [area] * n
    n = len(kinds)
    if n == 0:
        raise MeireportError("population: expected at least one unit")
    order = rng.permutation(n)
    kind, area = np.array(kinds)[order], np.array(areas)[order]
    unit_id = np.sort(rng.choice(np.arange(950_000_000, 951_000_000), n, replace=False))
    p = {
        "x_deg": rng.uniform(-35, 35, n),
        "y_deg": rng.uniform(-25, 25, n),
        "orientation_deg": rng.uniform(0, 180, n),
        "sf_cpd": np.exp(rng.uniform(*np.log([0.05, 0.14]), n)),
        "phase": rng.uniform(0, 2 * np.pi, n),
    }
    p["sigma_deg"] = rng.uniform(0.35, 0.55, n) / p["sf_cpd"]
    baseline = rng.uniform(1.0, 6.0, n)
    latency = rng.uniform(0.03, 0.07, n)
    if np.isin(kind, NON_GABOR_KINDS).any():  # drawn only then: older populations stay the same
        turn = rng.uniform(*CORNER_ANGLE_DEG, n) * rng.choice([-1.0, 1.0], n)
        phase2 = rng.uniform(0, 2 * np.pi, n)
        offset = rng.uniform(*CORNER_OFFSET_SIGMA, n) * p["sigma_deg"]
        direction = rng.uniform(0, 2 * np.pi, n)
        centre = rng.uniform(*SURROUND_CENTRE_DEG, n)
        ratio = rng.uniform(*SURROUND_RATIO, n)
        weight = rng.uniform(*SURROUND_WEIGHT, n)
    rf_even = np.zeros((n, *geom.shape))
    rf_odd = np.zeros((n, *geom.shape))
    for i in range(n):
        if kind[i] == "untuned":
            continue
        if kind[i] == "surround":
            dog = (centre[i], ratio[i], weight[i])
            rf_even[i] = _dog_rf(geom, p["x_deg"][i], p["y_deg"][i], *dog)
            p["sigma_deg"][i] = centre[i]
            p["sf_cpd"][i] = _dog_peak_sf(*dog)
            p["orientation_deg"][i] = p["phase"][i] = np.nan
            continue
        args = (
            p["x_deg"][i],
            p["y_deg"][i],
            p["orientation_deg"][i],
            p["sf_cpd"][i],
            p["sigma_deg"][i],
        )
        rf_even[i] = _gabor_rf(geom, *args, p["phase"][i])
        if kind[i] == "complex":
            rf_odd[i] = _gabor_rf(geom, *args, p["phase"][i] + np.pi / 2)
        elif kind[i] == "corner":
            rf_odd[i] = _gabor_rf(
                geom,
                p["x_deg"][i] + offset[i] * np.cos(direction[i]),
                p["y_deg"][i] + offset[i] * np.sin(direction[i]),
                p["orientation_deg"][i] + turn[i],
                p["sf_cpd"][i],
                p["sigma_deg"][i],
                phase2[i],
            )
    return GroundTruth(
        unit_id=unit_id.astype(np.int64),
        kind=kind,
        area=area,
        rf_even=rf_even,
        rf_odd=rf_odd,
        gain=np.zeros(n),
        baseline=baseline,
        latency=latency,
        rf_params=p,
        geometry=geom,
    )


def _calibrate_gain(truth: GroundTruth, images: np.ndarray, rng: np.random.Generator) -> None:
    """Set gains so that the 99th-percentile natural image drives a unit to its peak rate.

    Every kind but ``untuned`` is tuned (corner and surround cells too); a tuned unit that no
    image drives (99th percentile 0, only in very small sessions) gets gain 0.
    """
    drive = _drive(truth, images)
    q = np.percentile(drive, 99, axis=0)
    peak = rng.uniform(10.0, 60.0, len(truth.unit_id))
    tuned = (truth.kind != "untuned") & (q > 0)
    truth.gain[:] = np.where(tuned, (peak - truth.baseline) / np.where(q > 0, q, 1.0), 0.0)
    untuned = truth.kind == "untuned"
    truth.baseline[untuned] = rng.uniform(2.0, 15.0, int(untuned.sum()))


# --------------------------------------------------------------------------------------------
# stimulus schedule
# --------------------------------------------------------------------------------------------
@dataclass
class _Schedule:
    tables: dict[str, dict[str, np.ndarray]]
    starts: np.ndarray  # all stimulus presentations (natural scenes + gabors), time order
    stops: np.ndarray
    stim_rate_row: np.ndarray  # index into the rate matrix (units x conditions)
    t_end: float


def _contiguous(rng, n, t0):
    dur = PRESENTATION_S + rng.normal(0.0, 1e-4, n)
    edges = t0 + np.concatenate([[0.0], np.cumsum(dur)])
    return edges[:-1], edges[1:]


def _schedule(rng, n_images: int, n_repeats: int, n_blocks: int) -> _Schedule:
    spont = {"start_time": [], "stop_time": [], "stimulus_block": []}
    t, block = 30.0, 0
    spont_s = 30.0

    def add_spont(t):
        spont["start_time"].append(t)
        spont["stop_time"].append(t + spont_s)
        spont["stimulus_block"].append(np.nan)
        return t + spont_s

    # gabors: 243 conditions x 15 repeats in random order
    cond = np.array(
        [(o, x, y) for o in GABOR_ORIENTATIONS for x in GABOR_POSITIONS for y in GABOR_POSITIONS]
    )
    g_idx = rng.permutation(np.repeat(np.arange(len(cond)), GABOR_REPEATS))
    g_start, g_stop = _contiguous(rng, len(g_idx), t)
    t = float(g_stop[-1])
    gab = {
        "start_time": g_start,
        "stop_time": g_stop,
        "stimulus_block": np.full(len(g_idx), float(block)),
        "orientation": cond[g_idx, 0],
        "x_position": cond[g_idx, 1],
        "y_position": cond[g_idx, 2],
        "size": np.array([f"[{GABOR_SIZE}, {GABOR_SIZE}]"] * len(g_idx), dtype=object),
        "phase": np.array(["[3644.93333333, 3644.93333333]"] * len(g_idx), dtype=object),
        "spatial_frequency": np.full(len(g_idx), GABOR_SF),
        "temporal_frequency": np.full(len(g_idx), GABOR_TF),
        "contrast": np.full(len(g_idx), GABOR_CONTRAST),
    }
    block += 1
    # natural scenes: frames -1..n-1, n_repeats each, split over blocks, shuffled per block
    frames = np.arange(-1, n_images)
    reps = np.array_split(np.arange(n_repeats), n_blocks)
    ns = {"start_time": [], "stop_time": [], "stimulus_block": [], "frame": []}
    for r in reps:
        t = add_spont(t)
        f = rng.permutation(np.repeat(frames, len(r)))
        s0, s1 = _contiguous(rng, len(f), t)
        t = float(s1[-1])
        ns["start_time"].append(s0)
        ns["stop_time"].append(s1)
        ns["stimulus_block"].append(np.full(len(f), float(block)))
        ns["frame"].append(f.astype(np.float64))
        block += 1
    t = add_spont(t)
    ns = {k: np.concatenate(v) for k, v in ns.items()}
    spont = {k: np.asarray(v, dtype=np.float64) for k, v in spont.items()}
    # rows into the condition-rate matrix: natural frames first (-1 -> 0), then gabor conds
    starts = np.concatenate([gab["start_time"], ns["start_time"]])
    stops = np.concatenate([gab["stop_time"], ns["stop_time"]])
    rows = np.concatenate([n_images + 1 + g_idx, ns["frame"].astype(np.int64) + 1])
    order = np.argsort(starts, kind="stable")
    tables = {"gabors": gab, "natural_scenes": ns, "spontaneous": spont}
    return _Schedule(tables, starts[order], stops[order], rows[order], t + 10.0)


def _condition_images(geom: ScreenGeometry, images_model: np.ndarray) -> np.ndarray:
    """Model-space images of every condition: blank, natural frames, then gabor conditions.

    Gabor conditions are drifting gratings: their rate is averaged over the drift phases, so they
    are returned as ``conditions x phases x rows x cols`` separately by :func:`_condition_rates`.
    """
    blank = np.full((1, *geom.shape), 0.5)
    return np.concatenate([blank, images_model])


def _condition_rates(truth: GroundTruth, images_model: np.ndarray) -> np.ndarray:
    geom = truth.geometry
    nat = true_rate(truth, _condition_images(geom, images_model))
    phases = np.linspace(0, 2 * np.pi, N_DRIFT_PHASES, endpoint=False)
    stack = np.stack(
        [
            render_gabor(geom, x, y, o, GABOR_SF, GABOR_SIZE, ph, GABOR_CONTRAST)
            for o in GABOR_ORIENTATIONS
            for x in GABOR_POSITIONS
            for y in GABOR_POSITIONS
            for ph in phases
        ]
    )
    gab = true_rate(truth, stack).reshape(len(truth.unit_id), -1, N_DRIFT_PHASES).mean(axis=2)
    return np.concatenate([nat, gab], axis=1)  # units x conditions


def _spikes_for_unit(
    rng, sched: _Schedule, rates: np.ndarray, baseline: float, latency: float, noise_shape: float
):
    """Doubly stochastic Poisson spikes: stimulus rate in [start+lat, stop+lat), baseline elsewhere.

    Each presentation's rate is multiplied by a Gamma gain of mean 1 and shape ``noise_shape``
    (trial-to-trial variability beyond Poisson, as in cortex); ``inf`` gives plain Poisson.
    """
    s0, s1 = sched.starts + latency, sched.stops + latency
    stim = rates[sched.stim_rate_row]
    if np.isfinite(noise_shape):
        stim = stim * rng.gamma(noise_shape, 1.0 / noise_shape, len(stim))
    seg_start = np.concatenate([[0.0], s0, s1[:-1]])
    seg_stop = np.concatenate([[s0[0]], s1, s0[1:]])
    seg_rate = np.concatenate([[baseline], stim, np.full(len(s0) - 1, baseline)])
    # gaps between contiguous presentations have zero length; the tail runs to t_end
    seg_start = np.append(seg_start, s1[-1])
    seg_stop = np.append(seg_stop, sched.t_end)
    seg_rate = np.append(seg_rate, baseline)
    dur = np.clip(seg_stop - seg_start, 0.0, None)
    n = rng.poisson(seg_rate * dur)
    t = np.repeat(seg_start, n) + rng.random(int(n.sum())) * np.repeat(dur, n)
    return np.sort(t)


# --------------------------------------------------------------------------------------------
# NWB writing
# --------------------------------------------------------------------------------------------
def _quality_metrics(rng, kind: np.ndarray) -> dict[str, np.ndarray]:
    n = len(kind)
    m = {
        "quality": np.array(["good"] * n, dtype=object),
        "amplitude_cutoff": rng.uniform(0.0, 0.08, n),
        "presence_ratio": rng.uniform(0.96, 0.99, n),
        "isi_violations": rng.uniform(0.0, 0.3, n),
        "snr": rng.uniform(1.5, 5.0, n),
        "fail": np.array([""] * n, dtype=object),
    }
    failures = (
        "quality",
        "amplitude_cutoff",
        "presence_ratio",
        "isi_violations",
        "invalid_channel",
        "out_of_brain",
    )
    for j, i in enumerate(np.flatnonzero(kind == "poor")):
        f = failures[j % len(failures)]
        m["fail"][i] = f
        if f == "quality":
            m["quality"][i] = "noise"
        elif f == "amplitude_cutoff":
            m["amplitude_cutoff"][i] = rng.uniform(0.15, 0.5)
        elif f == "presence_ratio":
            m["presence_ratio"][i] = rng.uniform(0.5, 0.9)
        elif f == "isi_violations":
            m["isi_violations"][i] = rng.uniform(0.8, 3.0)
    return m


def _channels(rng, areas: list[str]) -> dict[str, dict]:
    """Probe -> channel ids, locations and validity (upper channels outside the brain)."""
    probes: dict[str, dict] = {}
    for k, probe in enumerate(sorted(set(_PROBE_OF_AREA.get(a, "probeC") for a in areas))):
        locs = []
        probe_areas = [a for a in areas if _PROBE_OF_AREA.get(a, "probeC") == probe]
        per = (_CHANNELS_PER_PROBE - 8) // max(len(probe_areas), 1)
        for a in probe_areas:
            locs += [a] * per
        locs += ["None"] * (_CHANNELS_PER_PROBE - len(locs))
        ids = 850_000_000 + 1000 * k + np.arange(_CHANNELS_PER_PROBE)
        valid = np.ones(_CHANNELS_PER_PROBE, dtype=bool)
        valid[3] = False  # one broken channel per probe (a reference, as on real probes)
        probes[probe] = {
            "probe_id": 760_000_000 + k,
            "ids": ids,
            "location": np.array(locs),
            "valid": valid,
        }
    return probes


def channel_pool(probe: dict, area: str, failure: str) -> np.ndarray:
    """Indices of the probe's channels a unit of ``area`` may peak on, given its QC failure.

    Out of the brain: a channel outside any structure; an invalid channel: an invalid one in
    the area (else any invalid one); otherwise a valid channel in the area.
    """
    if failure == "out_of_brain":
        return np.flatnonzero(probe["location"] == "None")
    if failure == "invalid_channel":
        pool = np.flatnonzero(~probe["valid"] & (probe["location"] == area))
        return pool if len(pool) else np.flatnonzero(~probe["valid"])
    return np.flatnonzero((probe["location"] == area) & probe["valid"])


def _peak_channels(rng, truth: GroundTruth, fail: np.ndarray, probes: dict) -> np.ndarray:
    out = np.zeros(len(truth.unit_id), dtype=np.int64)
    for i, a in enumerate(truth.area):
        pr = probes[_PROBE_OF_AREA.get(a, "probeC")]
        out[i] = pr["ids"][int(rng.choice(channel_pool(pr, a, fail[i])))]
    return out


def _write_nwb(
    path: Path,
    session_id: int,
    truth: GroundTruth,
    spikes: list[np.ndarray],
    sched: _Schedule,
    metrics: dict,
    peak: np.ndarray,
    probes: dict,
    extra_acquisition_mb: float,
    allensdk_format: bool = False,
) -> None:
    """Write the session as Allen-format NWB.

    With ``allensdk_format`` the file also carries what AllenSDK 2.16's ``EcephysSession``
    insists on (real Allen files have all of it): probes as ``ndx-aibs-ecephys``
    ``EcephysProbe`` devices and ``EcephysElectrodeGroup`` groups (``probe_id``,
    ``sampling_rate``, ``lfp_sampling_rate``, ``has_lfp_data``), units with ``cluster_id``,
    ``spike_amplitudes`` and ``waveform_mean`` (placeholders here), and a ``stimulus_index``
    column in every presentation table. Spikes, tables and ids are the same either way.
    """
    import pynwb
    from hdmf.common import VectorData
    from pynwb.epoch import TimeIntervals

    nwb = pynwb.NWBFile(
        session_description="meireport simulated Allen-format Neuropixels session",
        identifier=str(session_id),
        session_start_time=datetime(2019, 11, 5, 12, 0, tzinfo=UTC),
        session_id=str(session_id),
        institution="meireport (simulated)",
        notes=json.dumps({"meireport_geometry": truth.geometry.to_dict(), "simulated": True}),
        stimulus_notes="brain_observatory_1.1 (simulated subset)",
    )
    allen_types = _allensdk_probe_types() if allensdk_format else None
    device = (
        None
        if allen_types
        else nwb.create_device(name="neuropixels", description="simulated Neuropixels 1.0")
    )
    for col, desc in (
        ("probe_id", "probe id"),
        ("valid_data", "channel usable"),
        ("local_index", "index on the probe"),
        ("probe_vertical_position", "um"),
        ("probe_horizontal_position", "um"),
    ):
        nwb.add_electrode_column(name=col, description=desc)
    for name, pr in probes.items():
        location = ",".join(sorted(set(pr["location"])))
        if allen_types:
            probe_cls, group_cls = allen_types
            dev = probe_cls(
                name=name,
                description="Neuropixels 1.0 Probe (simulated)",
                manufacturer="imec",
                probe_id=int(pr["probe_id"]),
                sampling_rate=30000.0,
            )
            nwb.add_device(dev)
            grp = group_cls(
                name=name,
                description=f"{name} (simulated)",
                probe_id=int(pr["probe_id"]),
                location=location,
                device=dev,
                lfp_sampling_rate=2500.0,
                has_lfp_data=False,
            )
            nwb.add_electrode_group(grp)
        else:
            grp = nwb.create_electrode_group(
                name=name, description=f"{name} (simulated)", location=location, device=device
            )
        for j, cid in enumerate(pr["ids"]):
            nwb.add_electrode(
                id=int(cid),
                group=grp,
                location=str(pr["location"][j]),
                x=0.0,
                y=0.0,
                z=0.0,
                probe_id=int(pr["probe_id"]),
                valid_data=bool(pr["valid"][j]),
                local_index=j,
                probe_vertical_position=20 * (j // 2),
                probe_horizontal_position=16 + 32 * (j % 2),
            )
    cols = (
        "peak_channel_id",
        "quality",
        "amplitude_cutoff",
        "presence_ratio",
        "isi_violations",
        "firing_rate",
        "snr",
        "local_index",
    )
    for c in cols:
        nwb.add_unit_column(name=c, description=c)
    if allensdk_format:
        nwb.add_unit_column(name="cluster_id", description="cluster_id")
        nwb.add_unit_column(name="spike_amplitudes", description="placeholder (V)", index=True)
    duration = sched.t_end
    for i, uid in enumerate(truth.unit_id):
        allen_cols = (
            {
                "cluster_id": i,
                "spike_amplitudes": np.full(len(spikes[i]), 1e-4),
                "waveform_mean": np.zeros(82, dtype=np.float32),
            }
            if allensdk_format
            else {}
        )
        nwb.add_unit(
            id=int(uid),
            spike_times=spikes[i],
            peak_channel_id=int(peak[i]),
            quality=str(metrics["quality"][i]),
            amplitude_cutoff=float(metrics["amplitude_cutoff"][i]),
            presence_ratio=float(metrics["presence_ratio"][i]),
            isi_violations=float(metrics["isi_violations"][i]),
            firing_rate=float(len(spikes[i]) / duration),
            snr=float(metrics["snr"][i]),
            local_index=i,
            **allen_cols,
        )
    for k, (name, tab) in enumerate(sched.tables.items()):
        n = len(tab["start_time"])
        data = dict(tab) | {"stimulus_name": np.array([name] * n, dtype=object)}
        if allensdk_format:
            data["stimulus_index"] = np.full(n, float(k))
        columns = [VectorData(name=k, description=k, data=_nwb_column(v)) for k, v in data.items()]
        nwb.add_time_intervals(
            TimeIntervals(
                name=f"{name}_presentations",
                description=f"Presentation times and stimuli for {name}",
                columns=columns,
            )
        )
    if extra_acquisition_mb > 0:
        nwb.add_acquisition(_big_series(extra_acquisition_mb))
    with pynwb.NWBHDF5IO(str(path), "w") as io:
        io.write(nwb)


def _nwb_column(v: np.ndarray):
    v = np.asarray(v)
    return [str(x) for x in v] if v.dtype == object else v


def _allensdk_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("allensdk") is not None


def _allensdk_probe_types():
    """AllenSDK's ``ndx-aibs-ecephys`` probe types (``EcephysProbe``, ``EcephysElectrodeGroup``).

    Importing them registers the extension's namespace with pynwb; only called when allensdk is
    installed (``nox -s allen``'s env), never in the core env.
    """
    if not _allensdk_installed():
        raise MeireportError(
            "allensdk_format: needs allensdk's NWB extension (run in `nox -s allen`'s env)"
        )
    from allensdk.brain_observatory.ecephys.nwb import EcephysElectrodeGroup, EcephysProbe

    return EcephysProbe, EcephysElectrodeGroup


class _ZeroBlocks(AbstractDataChunkIterator):
    """Write an ``n_rows x n_ch`` float32 dataset of zeros block by block (small memory)."""

    def __init__(self, n_rows: int, n_ch: int, block: int):
        self.n_rows, self.n_ch, self.block, self.pos = n_rows, n_ch, block, 0

    def __iter__(self):
        return self

    def __next__(self) -> DataChunk:
        if self.pos >= self.n_rows:
            raise StopIteration
        stop = min(self.pos + self.block, self.n_rows)
        chunk = DataChunk(
            data=np.zeros((stop - self.pos, self.n_ch), dtype=np.float32),
            selection=np.s_[self.pos : stop, :],
        )
        self.pos = stop
        return chunk

    def recommended_chunk_shape(self):
        return (self.block, self.n_ch)

    def recommended_data_shape(self):
        return (self.n_rows, self.n_ch)

    @property
    def dtype(self):
        return np.dtype(np.float32)

    @property
    def maxshape(self):
        return (self.n_rows, self.n_ch)


def _big_series(mb: float):
    """A large, unused acquisition series (stands in for LFP/waveforms in real files)."""
    import pynwb
    from hdmf.backends.hdf5.h5_utils import H5DataIO

    n_ch, block = 64, 65536
    n_rows = max(int(mb * 2**20 / (4 * n_ch)), 1)
    data = H5DataIO(
        _ZeroBlocks(n_rows, n_ch, block), compression="gzip", chunks=(min(block, n_rows), n_ch)
    )
    return pynwb.TimeSeries(
        name="probe_lfp_placeholder",
        data=data,
        unit="V",
        rate=1250.0,
        description="unused large dataset (laziness check)",
    )


# --------------------------------------------------------------------------------------------
# public entry point
# --------------------------------------------------------------------------------------------
@dataclass
class SimulatedSession:
    """Where a simulated session was written, and its ground truth."""

    cache_dir: Path
    session_id: int
    nwb_path: Path
    truth_path: Path
    templates_dir: Path
    seconds: float
    reused: bool = False

    @property
    def truth(self) -> GroundTruth:
        """The session's ground truth (loaded from disk)."""
        return load_ground_truth(self.truth_path)


def _settings(
    seed, session_id, n_images, n_repeats, n_blocks, population, deg_per_px, extra_mb, noise_shape
):
    return {
        "sim_version": SIM_VERSION,
        "seed": int(seed),
        "session_id": int(session_id),
        "n_images": int(n_images),
        "n_repeats": int(n_repeats),
        "n_blocks": int(n_blocks),
        # 4 counts when there are no corner / surround cells: older folders still match
        "population": {k: _stored_counts(v) for k, v in population.items()},
        "deg_per_px": float(deg_per_px),
        "extra_acquisition_mb": float(extra_mb),
        "noise_shape": float(noise_shape),
    }


def _stored_counts(counts) -> list[int]:
    """An area's counts as stored in the settings: 4 when it has no corner or surround cells."""
    c = _population_counts(counts)
    return list(c if any(c[4:]) else c[:4])


def _check_args(n_images, n_repeats, n_blocks, session_id, deg_per_px):
    if int(n_images) < 2:
        raise MeireportError(f"n_images: must be >= 2, got {n_images}")
    if int(n_repeats) < 1:
        raise MeireportError(f"n_repeats: must be >= 1, got {n_repeats}")
    if not 1 <= int(n_blocks) <= int(n_repeats):
        raise MeireportError(f"n_blocks: must be in 1..n_repeats ({n_repeats}), got {n_blocks}")
    if int(session_id) <= 0:
        raise MeireportError(f"session_id: must be a positive integer, got {session_id}")
    if not deg_per_px > 0:
        raise MeireportError(f"deg_per_px: must be > 0, got {deg_per_px}")


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _write_templates(templates: np.ndarray, folder: Path) -> None:
    """Add missing templates; refuse (before writing any) if an existing one differs."""
    import tifffile

    folder.mkdir(parents=True, exist_ok=True)
    todo = []
    for k, img in enumerate(templates):
        f = folder / f"natural_scene_{k}.tiff"
        if f.exists():
            if not np.array_equal(np.asarray(tifffile.imread(f)), img):
                raise MeireportError(
                    f"{f} exists and differs from this simulation's image {k}; "
                    "use another --out folder (nothing was written)"
                )
        else:
            todo.append((f, img))
    for f, img in todo:
        tmp = f.with_name(f".{f.name}.tmp")
        tifffile.imwrite(tmp, img)
        os.replace(tmp, f)


def draw_units(
    rng: np.random.Generator,
    population: dict[str, tuple[int, ...]],
    session_id: int,
    geometry: ScreenGeometry,
    images_model: np.ndarray,
) -> tuple[GroundTruth, np.ndarray]:
    """Draw units as :func:`simulate_session` does, with their rates for its stimuli.

    For simulators built on this one's cell types (:mod:`meireport.sources.fullscale`): the units
    of ``population`` get receptive fields, baselines and latencies, and gains calibrated on
    ``images_model`` (the 99th-percentile image drives a tuned unit to its peak rate).

    Parameters
    ----------
    rng : numpy.random.Generator
        Source of every draw (units, then gains).
    population : dict
        ``area -> counts`` as :func:`simulate_session`'s ``population``.
    session_id : int
        The session the units belong to.
    geometry : ScreenGeometry
        Degree -> model pixel mapping of the receptive fields.
    images_model : ndarray
        ``n x rows x cols`` natural images in model space.

    Returns
    -------
    truth : GroundTruth
    rates : ndarray
        ``units x (1 + n + 243)`` expected rates (spikes/s): the blank (mean grey), each image,
        then each gabor condition (:data:`GABOR_ORIENTATIONS` x :data:`GABOR_POSITIONS` x
        :data:`GABOR_POSITIONS`, nested in that order) averaged over its drift phases.

    Examples
    --------
    >>> geom = ScreenGeometry()
    >>> imgs = np.stack([prepare_image(t, geom.shape) for t in natural_images(4)])
    >>> truth, rates = draw_units(np.random.default_rng(0), {"VISp": (1, 1, 1, 0)}, 1, geom, imgs)
    >>> rates.shape
    (3, 248)
    """
    truth = _make_truth(rng, geometry, population, session_id)
    _calibrate_gain(truth, images_model, rng)
    return truth, _condition_rates(truth, images_model)


def write_templates(templates: np.ndarray, folder) -> None:
    """Write ``natural_scene_<k>.tiff`` templates into ``folder`` as :func:`simulate_session` does.

    Missing ones are added; if an existing one differs, nothing is written (one error line).

    Examples
    --------
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> write_templates(natural_images(2), folder)
    >>> sorted(f.name for f in folder.iterdir())
    ['natural_scene_0.tiff', 'natural_scene_1.tiff']
    """
    _write_templates(np.asarray(templates), Path(folder))


def simulate_session(
    out,
    seed: int = 0,
    session_id: int = DEFAULT_SESSION_ID,
    n_images: int = 118,
    n_repeats: int = 50,
    n_blocks: int | None = None,
    population: dict[str, tuple[int, ...]] | None = None,
    deg_per_px: float = 1.5,
    extra_acquisition_mb: float = 0.0,
    noise_shape: float = 4.0,
    progress: bool = False,
    allensdk_format: bool | None = None,
) -> SimulatedSession:
    """Write a simulated Allen-format session into an AllenSDK-cache-shaped folder.

    Writes ``out/session_<id>/session_<id>.nwb``, ``out/session_<id>/ground_truth.npz`` (+
    ``.json``) and ``out/natural_scene_templates/natural_scene_<k>.tiff``. Outputs are written to
    a temporary folder and moved into place; an existing session folder made with the same
    settings is reused, one made with other settings is never overwritten (error).

    Parameters
    ----------
    out : str or Path
        Cache folder to write into (created if needed).
    seed : int
        Seed of units, schedule and spikes; the same seed gives the same session.
    session_id : int
        Session id (folder name and NWB identifier).
    n_images : int
        Natural images (118 as Allen; ~1000 for data-rich positive controls).
    n_repeats : int
        Presentations of each image (and of the blank frame).
    n_blocks : int, optional
        Natural-scene blocks the repeats are split over (default ``min(3, n_repeats)``).
    population : dict, optional
        ``area -> (n_simple, n_complex, n_untuned, n_poor[, n_corner, n_surround])`` (4 counts:
        no corner or surround cells); default :data:`DEFAULT_POPULATION`.
    deg_per_px : float
        Visual degrees per model pixel (stored in the file and the ground truth).
    extra_acquisition_mb : float
        Size of an unused acquisition dataset to add (for laziness checks); 0 for none.
    noise_shape : float
        Shape of the per-presentation Gamma gain (trial-to-trial variability; Fano factor
        ``1 + rate * 0.25 / noise_shape``); ``inf`` for plain Poisson.
    progress : bool
        Show a progress bar.
    allensdk_format : bool, optional
        Also write what AllenSDK 2.16's own reader needs (its ``ndx-aibs-ecephys`` probe types,
        ``cluster_id``, ``spike_amplitudes``, ``waveform_mean``, ``stimulus_index``); default:
        when allensdk is installed (``nox -s allen``'s env). Spikes and tables are unchanged.

    Returns
    -------
    SimulatedSession

    Examples
    --------
    >>> import tempfile
    >>> s = simulate_session(tempfile.mkdtemp(), n_images=8, n_repeats=2, seed=1)
    >>> s.nwb_path.name
    'session_700000001.nwb'
    """
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    population = dict(DEFAULT_POPULATION if population is None else population)
    n_blocks = min(3, int(n_repeats)) if n_blocks is None else n_blocks
    _check_args(n_images, n_repeats, n_blocks, session_id, deg_per_px)
    if not noise_shape > 0:
        raise MeireportError(f"noise_shape: must be > 0 (inf for Poisson), got {noise_shape}")
    settings = _settings(
        seed,
        session_id,
        n_images,
        n_repeats,
        n_blocks,
        population,
        deg_per_px,
        extra_acquisition_mb,
        noise_shape,
    )
    if allensdk_format is None:
        allensdk_format = _allensdk_installed()
    if allensdk_format:
        _allensdk_probe_types()  # fail early (one line) when allensdk is missing
        settings["allensdk_format"] = True  # absent otherwise: older folders still match
    out = Path(out).expanduser().resolve()
    if out.exists() and not out.is_dir():
        raise MeireportError(f"out: {out} exists and is not a folder")
    sess_dir = out / f"session_{int(session_id)}"
    templates_dir = out / "natural_scene_templates"
    result = SimulatedSession(
        out,
        int(session_id),
        sess_dir / f"session_{int(session_id)}.nwb",
        sess_dir / "ground_truth.npz",
        templates_dir,
        0.0,
    )
    if sess_dir.exists():
        meta = sess_dir / "ground_truth.json"
        old = json.loads(meta.read_text()).get("settings") if meta.is_file() else None
        if old == settings and result.nwb_path.is_file():
            result.reused = True
            result.seconds = time.perf_counter() - t0
            return result
        raise MeireportError(
            f"out: {sess_dir} already exists with other settings; choose another --out or "
            "--session-id (nothing was overwritten)"
        )

    steps = tqdm(total=5, desc="simulate", disable=not progress)
    rng = np.random.default_rng(seed)
    geom = ScreenGeometry(deg_per_px=deg_per_px)
    templates = natural_images(int(n_images))
    model_imgs = np.stack([prepare_image(t, geom.shape) for t in templates])
    steps.update()
    truth = _make_truth(rng, geom, population, session_id)
    _calibrate_gain(truth, model_imgs, rng)
    rates = _condition_rates(truth, model_imgs)
    steps.update()
    sched = _schedule(rng, int(n_images), int(n_repeats), int(n_blocks))
    spikes = [
        _spikes_for_unit(
            np.random.default_rng([seed, i]),
            sched,
            rates[i],
            truth.baseline[i],
            truth.latency[i],
            noise_shape,
        )
        for i in range(len(truth.unit_id))
    ]
    steps.update()
    metrics = _quality_metrics(rng, truth.kind)
    probes = _channels(rng, list(population))
    peak = _peak_channels(rng, truth, metrics["fail"], probes)
    truth.meta = {
        "settings": settings,
        "seed": int(seed),
        "n_images": int(n_images),
        "n_repeats": int(n_repeats),
        "session_id": int(session_id),
        "qc_failure": {str(u): f for u, f in zip(truth.unit_id, metrics["fail"], strict=True) if f},
    }
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".meireport-sim-", dir=out))
    try:
        tmp_sess = tmp / sess_dir.name
        tmp_sess.mkdir()
        _write_nwb(
            tmp_sess / result.nwb_path.name,
            int(session_id),
            truth,
            spikes,
            sched,
            metrics,
            peak,
            probes,
            extra_acquisition_mb,
            bool(allensdk_format),
        )
        truth.save(tmp_sess)
        steps.update()
        _write_templates(templates, templates_dir)
        os.replace(tmp_sess, sess_dir)
        steps.update()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        steps.close()
    result.seconds = time.perf_counter() - t0
    return result
