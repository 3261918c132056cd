"""A simulated session of a real one's shape and size: a Brain Observatory 1.1 session.

:func:`simulate_full_session` writes what a Visual Coding Neuropixels session file holds, at its
size: 800 units in 11 structures (VISp, VISl, VISal, VISrl, VISam, VISpm, LGd, LP, CA1, DG, APN)
on 6 probes of 384 channels, every ``brain_observatory_1.1`` stimulus table with its columns and
presentation counts (:data:`BO11_COUNTS`), a running-speed series, ~2.5 h of recording, tens of
millions of spikes, and a large acquisition dataset that no analysis reads (an LFP-sized
placeholder, :data:`UNUSED_MB`): a lazy reader must not pay for it.

The units are the embedded simulator's cell types (:mod:`meireport.sources.simulate`, drawn by
:func:`~meireport.sources.simulate.draw_units`): in the visual cortex simple, complex, corner and
surround cells, untuned units and QC failures; LGd mostly centre-surround cells, LP complex cells,
the hippocampus (CA1, DG) and APN untuned units. Natural scenes and gabors drive them exactly as
in the small simulator (so the report runs on any of its areas and :func:`true_rate` answers for
any image). Static and drifting gratings (full field), flashes (full-field black / white) and the
two natural movies (:func:`movie_frames`) drive them through the same :func:`true_rate`, capped at
:data:`RATE_CAP` spikes/s (a full-field grating can drive a linear RF far past what any natural
image does). Spikes are doubly stochastic Poisson (a Gamma gain per presentation, shape 4) with
the unit's latency; spontaneous periods and gaps run at the unit's baseline.

Generation takes about half a minute (two cores) and ~1.1 GB of memory; the file is ~1.1 GB
(~1.3 GB with AllenSDK's extras).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from hdmf.data_utils import AbstractDataChunkIterator, DataChunk

from meireport.errors import MeireportError
from meireport.sources.simulate import (
    GABOR_CONTRAST,
    GABOR_ORIENTATIONS,
    GABOR_POSITIONS,
    GABOR_REPEATS,
    GABOR_SF,
    GABOR_SIZE,
    GABOR_TF,
    IMAGE_SEED,
    PRESENTATION_S,
    GroundTruth,
    SimulatedSession,
    channel_pool,
    draw_units,
    natural_images,
    true_rate,
    write_templates,
)
from meireport.stimuli import ScreenGeometry, gabor_stack, prepare_image

__all__ = [
    "simulate_full_session",
    "movie_frames",
    "FULL_SESSION_ID",
    "FULL_POPULATION",
    "PROBE_LAYOUT",
    "VISUAL_AREAS",
    "BO11_COUNTS",
    "BO11_COLUMNS",
    "UNUSED_MB",
    "UNUSED_DATASET",
]

FULL_SESSION_ID = 700000800
FULLSCALE_VERSION = "1"
N_IMAGES = 118
NS_REPEATS = 50
NOISE_SHAPE = 4.0
UNTUNED_MEDIAN_HZ = 2.5  # untuned units: log-normal rates (sigma 0.8), as in real recordings
RATE_CAP = 60.0  # spikes/s: gratings, flashes and movies (natural scenes and gabors: exact)
#: Size of the unused acquisition dataset (MiB).
UNUSED_MB = 768
#: Its path in the file.
UNUSED_DATASET = "acquisition/lfp_placeholder/data"
CHANNELS_PER_PROBE = 384
# Neuropixels 1.0 reference channels (and a few broken ones): valid_data False
INVALID_CHANNELS = (36, 75, 112, 151, 191, 227, 264, 303, 340, 379)
_T0 = 20.0  # first spontaneous period starts here (s)
_TAIL_S = 10.0  # recording runs on after the last presentation

#: Visual cortical areas.
VISUAL_AREAS = ("VISp", "VISl", "VISal", "VISrl", "VISam", "VISpm")
#: area -> (simple, complex, untuned, poor, corner, surround); 800 units, 135 good in VISam (as
#: the seed study's session).
FULL_POPULATION: dict[str, tuple[int, ...]] = {
    "VISp": (30, 22, 18, 12, 6, 6),
    "VISl": (22, 16, 14, 9, 4, 4),
    "VISal": (24, 18, 16, 10, 5, 5),
    "VISrl": (18, 14, 14, 8, 3, 3),
    "VISam": (50, 34, 35, 12, 8, 8),
    "VISpm": (26, 18, 16, 10, 5, 5),
    "LGd": (8, 0, 10, 4, 0, 24),
    "LP": (0, 18, 22, 6, 0, 0),
    "CA1": (0, 0, 70, 10, 0, 0),
    "DG": (0, 0, 40, 6, 0, 0),
    "APN": (0, 0, 48, 6, 0, 0),
}
#: probe -> (structure, channels) from the tip up; the channels above are outside the brain.
PROBE_LAYOUT: dict[str, tuple[tuple[str, int], ...]] = {
    "probeA": (("APN", 70), ("DG", 40), ("CA1", 50), ("VISam", 80)),
    "probeB": (("DG", 40), ("CA1", 60), ("VISpm", 80)),
    "probeC": (("LGd", 50), ("LP", 40), ("DG", 30), ("CA1", 40), ("VISp", 90)),
    "probeD": (("LP", 40), ("DG", 30), ("CA1", 40), ("VISl", 80)),
    "probeE": (("DG", 30), ("CA1", 40), ("VISal", 80)),
    "probeF": (("CA1", 40), ("VISrl", 70)),
}

# -- the brain_observatory_1.1 stimuli ---------------------------------------------------------
SG_SF = (0.02, 0.04, 0.08, 0.16, 0.32)
SG_ORIENTATIONS = (0.0, 30.0, 60.0, 90.0, 120.0, 150.0)
SG_PHASES = (0.0, 0.25, 0.5, 0.75)  # fraction of a cycle, as Allen stores it
SG_REPEATS = 50
DG_ORIENTATIONS = tuple(float(v) for v in range(0, 360, 45))  # direction of drift
DG_TF = (1.0, 2.0, 4.0, 8.0, 15.0)
DG_SF = 0.04
DG_REPEATS = 15
DG_BLANKS = 30
DG_ON_S, DG_PERIOD_S = 2.0017, 3.0
FLASH_COLORS = (-1.0, 1.0)
FLASH_REPEATS = 75
FLASH_ON_S, FLASH_PERIOD_S = 0.2502, 2.0
MOVIE_FRAME_S = 2.0 / 59.95  # two monitor frames at ~60 Hz
#: movie -> (frames, repeats)
MOVIES = {"natural_movie_three": (3600, 10), "natural_movie_one": (900, 20)}
_MOVIE_SEED = {"natural_movie_three": IMAGE_SEED + 3, "natural_movie_one": IMAGE_SEED + 1}
_MOVIE_SCENE_FRAMES = 30  # one pan over one scene per second of movie
_FULL_FIELD_DEG = 1e5  # a gabor this wide is a full-field grating
_SPEED_HZ = 60.0  # running-speed samples per second

#: Presentations of each stimulus of a real ``brain_observatory_1.1`` session.
BO11_COUNTS = {
    "spontaneous": 15,
    "gabors": 3 * 81 * GABOR_REPEATS,
    "flashes": len(FLASH_COLORS) * FLASH_REPEATS,
    "drifting_gratings": len(DG_ORIENTATIONS) * len(DG_TF) * DG_REPEATS + DG_BLANKS,
    "natural_movie_three": 3600 * 10,
    "natural_movie_one": 900 * 20,
    "static_gratings": len(SG_SF) * len(SG_ORIENTATIONS) * len(SG_PHASES) * SG_REPEATS,
    "natural_scenes": (N_IMAGES + 1) * NS_REPEATS,
}
_COMMON = ("start_time", "stop_time", "stimulus_name", "stimulus_block")
#: Columns of each ``intervals/<stimulus>_presentations`` table (``stimulus_index`` is added in
#: AllenSDK format).
BO11_COLUMNS: dict[str, tuple[str, ...]] = {
    "spontaneous": _COMMON,
    "gabors": _COMMON + ("orientation", "x_position", "y_position", "size", "phase",
                         "spatial_frequency", "temporal_frequency", "contrast"),
    "flashes": _COMMON + ("color", "contrast", "orientation", "phase", "size",
                          "spatial_frequency"),
    "drifting_gratings": _COMMON + ("orientation", "temporal_frequency", "spatial_frequency",
                                    "contrast", "phase", "size"),
    "natural_movie_three": _COMMON + ("frame",),
    "natural_movie_one": _COMMON + ("frame",),
    "static_gratings": _COMMON + ("orientation", "spatial_frequency", "phase", "contrast",
                                  "size"),
    "natural_scenes": _COMMON + ("frame",),
}
# The session's epochs in order: (stimulus, part) or ("spontaneous", seconds). Blocks are
# numbered over the stimulus epochs; spontaneous periods have no block (NaN), as Allen's.
_EPOCHS: tuple[tuple[str, float], ...] = (
    ("spontaneous", 60.0), ("gabors", 0), ("spontaneous", 289.0), ("flashes", 0),
    ("spontaneous", 30.0), ("drifting_gratings", 0), ("spontaneous", 30.0),
    ("natural_movie_three", 0), ("spontaneous", 30.0), ("natural_movie_one", 0),
    ("spontaneous", 30.0), ("static_gratings", 0), ("spontaneous", 289.0),
    ("natural_scenes", 0), ("spontaneous", 30.0), ("static_gratings", 1), ("spontaneous", 30.0),
    ("natural_scenes", 1), ("spontaneous", 30.0), ("drifting_gratings", 1),
    ("spontaneous", 289.0), ("natural_movie_three", 1), ("spontaneous", 30.0),
    ("natural_movie_one", 1), ("spontaneous", 30.0), ("static_gratings", 2),
    ("spontaneous", 30.0), ("natural_scenes", 2), ("spontaneous", 30.0),
    ("drifting_gratings", 2),
)
_PARTS = {"gabors": 1, "flashes": 1, "drifting_gratings": 3, "natural_movie_three": 2,
          "natural_movie_one": 2, "static_gratings": 3, "natural_scenes": 3}


# --------------------------------------------------------------------------------------------
# conditions and their rates
# --------------------------------------------------------------------------------------------
def _condition_offsets() -> dict[str, int]:
    """First column of each stimulus in the ``units x conditions`` rate matrix."""
    sizes = {
        "blank": 1,
        "natural_scenes": N_IMAGES,
        "gabors": len(GABOR_ORIENTATIONS) * len(GABOR_POSITIONS) ** 2,
        "static_gratings": len(SG_SF) * len(SG_ORIENTATIONS) * len(SG_PHASES),
        "drifting_gratings": len(DG_ORIENTATIONS) * len(DG_TF),
        "flashes": len(FLASH_COLORS),
        **{m: n for m, (n, _) in MOVIES.items()},
    }
    out, k = {}, 0
    for name, n in sizes.items():
        out[name] = k
        k += n
    out["n"] = k
    return out


def movie_frames(name: str, geometry: ScreenGeometry | None = None) -> np.ndarray:
    """Frames of a simulated natural movie in model space (``frames x rows x cols``, [0, 1]).

    The movie pans across the simulator's natural images, one scene per second (30 frames),
    moving a few pixels per frame. It depends only on ``name`` and the geometry's shape, as the
    real movies are the same in every session.

    Examples
    --------
    >>> movie_frames("natural_movie_one").shape
    (900, 60, 96)
    """
    if name not in MOVIES:
        raise MeireportError(f"movie: expected one of {', '.join(MOVIES)}, got {name!r}")
    rows, cols = (geometry or ScreenGeometry()).shape
    n_frames = MOVIES[name][0]
    rng = np.random.default_rng(_MOVIE_SEED[name])
    margin_r, margin_c = max(rows // 10, 1), max(cols // 8, 1)
    n_scenes = -(-n_frames // _MOVIE_SCENE_FRAMES)
    scenes = rng.integers(0, N_IMAGES, n_scenes)
    templates = natural_images(N_IMAGES)
    big = {int(k): prepare_image(templates[k], (rows + margin_r, cols + margin_c))
           for k in np.unique(scenes)}
    out = np.empty((n_frames, rows, cols))
    steps = np.linspace(0.0, 1.0, _MOVIE_SCENE_FRAMES)
    for s, k in enumerate(scenes):
        r0, c0 = rng.integers(0, margin_r + 1), rng.integers(0, margin_c + 1)
        r1, c1 = rng.integers(0, margin_r + 1), rng.integers(0, margin_c + 1)
        for j, a in enumerate(steps):
            f = s * _MOVIE_SCENE_FRAMES + j
            if f >= n_frames:
                break
            r, c = int(round(r0 + a * (r1 - r0))), int(round(c0 + a * (c1 - c0)))
            out[f] = big[int(k)][r : r + rows, c : c + cols]
    return out


def _grating_images(geom: ScreenGeometry) -> tuple[np.ndarray, np.ndarray]:
    """Full-field static gratings (sf x orientation x phase) and drifting ones (8 phases each)."""
    sf, ori, ph = (np.array(v, dtype=np.float64).reshape(-1, 1, 1) for v in zip(
        *[(s, o, p) for s in SG_SF for o in SG_ORIENTATIONS for p in SG_PHASES], strict=True))
    static = gabor_stack(geom, 0.0, 0.0, ori, sf, _FULL_FIELD_DEG, 2 * np.pi * ph,
                         GABOR_CONTRAST)
    phases = np.linspace(0, 2 * np.pi, 8, endpoint=False)
    d_ori = np.repeat(np.array(DG_ORIENTATIONS), len(phases)).reshape(-1, 1, 1)
    d_ph = np.tile(phases, len(DG_ORIENTATIONS)).reshape(-1, 1, 1)
    drifting = gabor_stack(geom, 0.0, 0.0, d_ori, DG_SF, _FULL_FIELD_DEG, d_ph, GABOR_CONTRAST)
    return static, drifting


def _rate_matrix(truth: GroundTruth, base: np.ndarray) -> np.ndarray:
    """``units x conditions`` rates (spikes/s) in :func:`_condition_offsets`' layout."""
    geom = truth.geometry
    off = _condition_offsets()
    n = len(truth.unit_id)
    rates = np.empty((n, off["n"]))
    rates[:, : base.shape[1]] = base  # blank, natural scenes, gabors: as the small simulator

    def capped(images: np.ndarray) -> np.ndarray:
        return np.minimum(true_rate(truth, images), RATE_CAP)

    static, drifting = _grating_images(geom)
    k = off["static_gratings"]
    rates[:, k : k + len(static)] = capped(static)
    dg = capped(drifting).reshape(n, len(DG_ORIENTATIONS), -1).mean(axis=2)
    k = off["drifting_gratings"]
    rates[:, k : k + dg.shape[1] * len(DG_TF)] = np.repeat(dg, len(DG_TF), axis=1)
    k = off["flashes"]
    rates[:, k : k + 2] = capped(np.stack([np.zeros(geom.shape), np.ones(geom.shape)]))
    for m in MOVIES:
        frames = movie_frames(m, geom)
        k = off[m]
        for a in range(0, len(frames), 600):
            chunk = frames[a : a + 600]
            rates[:, k + a : k + a + len(chunk)] = capped(chunk)
    return rates


# --------------------------------------------------------------------------------------------
# the schedule
# --------------------------------------------------------------------------------------------
def _contiguous(rng: np.random.Generator, n: int, t0: float, dur: float) -> np.ndarray:
    """``n + 1`` edges of back-to-back presentations of ``dur`` s (+- 0.1 ms jitter)."""
    return t0 + np.concatenate([[0.0], np.cumsum(dur + rng.normal(0.0, 1e-4, n))])


def _split(rng: np.random.Generator, cond: np.ndarray, repeats: int, parts: int) -> list:
    """Each condition ``repeats`` times, shuffled, split over ``parts`` blocks."""
    return np.array_split(rng.permutation(np.repeat(cond, repeats)), parts)


def _schedule(rng: np.random.Generator):
    """Every presentation table and the rate-matrix column of each presentation.

    Returns ``tables`` (stimulus -> column -> array, in the file's column order), and for the
    stimulus presentations in time order ``starts``, ``stops``, ``rows``; and ``t_end``.
    """
    off = _condition_offsets()
    gab_cond = np.array([(o, x, y) for o in GABOR_ORIENTATIONS for x in GABOR_POSITIONS
                         for y in GABOR_POSITIONS])
    sg_cond = np.array([(s, o, p) for s in SG_SF for o in SG_ORIENTATIONS for p in SG_PHASES])
    dg_cond = np.array([(o, tf) for o in DG_ORIENTATIONS for tf in DG_TF])
    n_dg = len(dg_cond)
    plan = {
        "gabors": _split(rng, np.arange(len(gab_cond)), GABOR_REPEATS, 1),
        "flashes": _split(rng, np.arange(2), FLASH_REPEATS, 1),
        # -1: a blank sweep
        "drifting_gratings": _split(
            rng, np.concatenate([np.repeat(np.arange(n_dg), DG_REPEATS), np.full(DG_BLANKS, -1)]),
            1, 3),
        "static_gratings": _split(rng, np.arange(len(sg_cond)), SG_REPEATS, 3),
        "natural_scenes": [rng.permutation(np.repeat(np.arange(-1, N_IMAGES), len(r)))
                           for r in np.array_split(np.arange(NS_REPEATS), 3)],
    }
    cols: dict[str, dict[str, list]] = {name: {} for name in BO11_COLUMNS}
    rows_all, starts_all, stops_all = [], [], []

    def add(name: str, start, stop, block, rows=None, **params) -> None:
        n = len(start)
        c = cols[name]
        for key, val in (("start_time", start), ("stop_time", stop),
                         ("stimulus_block", np.full(n, float(block)))):
            c.setdefault(key, []).append(np.asarray(val, dtype=np.float64))
        for key, val in params.items():
            v = np.asarray(val)
            c.setdefault(key, []).append(np.broadcast_to(v, (n,)) if v.ndim == 0 else v)
        if rows is not None:
            rows_all.append(np.asarray(rows, dtype=np.int64))
            starts_all.append(np.asarray(start, dtype=np.float64))
            stops_all.append(np.asarray(stop, dtype=np.float64))

    t, block = _T0, 0
    for name, part in _EPOCHS:
        if name == "spontaneous":
            add(name, [t], [t + part], np.nan)
            t += part
            continue
        if name in ("natural_movie_three", "natural_movie_one"):
            n_frames, reps = MOVIES[name]
            frames = np.tile(np.arange(n_frames), reps // _PARTS[name])
            e = _contiguous(rng, len(frames), t, MOVIE_FRAME_S)
            add(name, e[:-1], e[1:], block, off[name] + frames, frame=frames.astype(np.float64))
            t = float(e[-1])
        elif name in ("gabors", "static_gratings", "natural_scenes"):
            idx = plan[name][int(part)]
            e = _contiguous(rng, len(idx), t, PRESENTATION_S)
            if name == "gabors":
                g = gab_cond[idx]
                add(name, e[:-1], e[1:], block, off[name] + idx, orientation=g[:, 0],
                    x_position=g[:, 1], y_position=g[:, 2], size=f"[{GABOR_SIZE}, {GABOR_SIZE}]",
                    phase="[3644.93333333, 3644.93333333]", spatial_frequency=GABOR_SF,
                    temporal_frequency=GABOR_TF, contrast=GABOR_CONTRAST)
            elif name == "static_gratings":
                s = sg_cond[idx]
                add(name, e[:-1], e[1:], block, off[name] + idx, orientation=s[:, 1],
                    spatial_frequency=s[:, 0], phase=s[:, 2], contrast=GABOR_CONTRAST,
                    size="[250.0, 250.0]")
            else:
                add(name, e[:-1], e[1:], block, np.where(idx < 0, 0, off[name] + idx),
                    frame=idx.astype(np.float64))
            t = float(e[-1])
        else:  # flashes and drifting gratings: on for a while, then grey until the next
            idx = plan[name][int(part)]
            on, period = (FLASH_ON_S, FLASH_PERIOD_S) if name == "flashes" else (DG_ON_S,
                                                                                 DG_PERIOD_S)
            start = t + period * np.arange(len(idx)) + rng.normal(0.0, 1e-4, len(idx))
            stop = start + on + rng.normal(0.0, 1e-4, len(idx))
            if name == "flashes":
                color = np.array(FLASH_COLORS)[idx]
                add(name, start, stop, block, off[name] + idx,
                    color=np.array([str(c) for c in color], dtype=object), contrast=0.8,
                    orientation=45.0, phase="[0.0, 0.0]", size="[300.0, 300.0]",
                    spatial_frequency="[0.0, 0.0]")
            else:
                blank = idx < 0
                d = dg_cond[np.where(blank, 0, idx)]
                add(name, start, stop, block, np.where(blank, 0, off[name] + idx),
                    orientation=np.where(blank, np.nan, d[:, 0]),
                    temporal_frequency=np.where(blank, np.nan, d[:, 1]),
                    spatial_frequency=DG_SF, contrast=GABOR_CONTRAST,
                    phase="[42471.86666667, 42471.86666667]", size="[250.0, 250.0]")
            t = float(start[-1] + period)
        block += 1
    tables = {}
    for name in BO11_COLUMNS:
        c = {k: np.concatenate(v) for k, v in cols[name].items()}
        tables[name] = {k: c[k] for k in BO11_COLUMNS[name] if k in c}
    starts, stops = np.concatenate(starts_all), np.concatenate(stops_all)
    order = np.argsort(starts, kind="stable")
    return tables, starts[order], stops[order], np.concatenate(rows_all)[order], t + _TAIL_S


# --------------------------------------------------------------------------------------------
# spikes, units and channels
# --------------------------------------------------------------------------------------------
def _unit_spikes(rng, on, off, stim_rate, baseline, t_end, noise_shape=NOISE_SHAPE) -> np.ndarray:
    """Doubly stochastic Poisson spike times: ``stim_rate`` in ``[on, off)``, baseline elsewhere.

    All presentations at once: the ``2n + 1`` segments (gap, presentation, gap, ...) get a
    Poisson count each, then uniform times inside them.
    """
    n = len(on)
    rate = stim_rate * rng.gamma(noise_shape, 1.0 / noise_shape, n)
    edges = np.empty(2 * n + 2)
    edges[0], edges[1:-1:2], edges[2:-1:2], edges[-1] = 0.0, on, off, t_end
    seg_rate = np.full(2 * n + 1, float(baseline))
    seg_rate[1::2] = rate
    dur = np.clip(np.diff(edges), 0.0, None)
    counts = rng.poisson(seg_rate * dur)
    t = np.repeat(edges[:-1], counts) + rng.random(int(counts.sum())) * np.repeat(dur, counts)
    t.sort()
    return t


def _channels() -> dict[str, dict]:
    """Each probe's id, channel ids, channel locations (from the tip) and validity."""
    probes = {}
    for k, (name, layout) in enumerate(PROBE_LAYOUT.items()):
        loc = [a for a, n in layout for _ in range(n)]
        loc += ["None"] * (CHANNELS_PER_PROBE - len(loc))
        valid = np.ones(CHANNELS_PER_PROBE, dtype=bool)
        valid[list(INVALID_CHANNELS)] = False
        probes[name] = {
            "probe_id": 760_000_100 + k,
            "ids": 850_100_000 + 1000 * k + np.arange(CHANNELS_PER_PROBE),
            "location": np.array(loc),
            "valid": valid,
        }
    return probes


_FAILURES = ("quality", "amplitude_cutoff", "presence_ratio", "isi_violations",
             "invalid_channel", "out_of_brain")


def _unit_metrics(rng: np.random.Generator, kind: np.ndarray) -> dict[str, np.ndarray]:
    """Quality metrics; each ``poor`` unit fails one criterion (in turn, as the small simulator)."""
    n = len(kind)
    m = {
        "quality": np.array(["good"] * n, dtype=object),
        "amplitude_cutoff": rng.uniform(0.0, 0.08, n),
        "presence_ratio": rng.uniform(0.96, 0.99, n),
        "isi_violations": rng.uniform(0.0, 0.3, n),
        "snr": rng.uniform(1.5, 5.0, n),
        "fail": np.array([""] * n, dtype=object),
    }
    bad = {"amplitude_cutoff": (0.15, 0.5), "presence_ratio": (0.5, 0.9),
           "isi_violations": (0.8, 3.0)}
    for j, i in enumerate(np.flatnonzero(kind == "poor")):
        f = _FAILURES[j % len(_FAILURES)]
        m["fail"][i] = f
        if f == "quality":
            m["quality"][i] = "noise"
        elif f in bad:
            m[f][i] = rng.uniform(*bad[f])
    return m


def _peak_channels(rng, area: np.ndarray, fail: np.ndarray, probes: dict) -> np.ndarray:
    """A peak channel per unit on a probe that crosses its area (failing units: see _FAILURES)."""
    out = np.zeros(len(area), dtype=np.int64)
    for i, a in enumerate(area):
        names = [p for p, pr in probes.items() if a in set(pr["location"])]
        pr = probes[names[int(rng.integers(len(names)))]]
        out[i] = pr["ids"][int(rng.choice(channel_pool(pr, a, fail[i])))]
    return out


def _running_speed(rng: np.random.Generator, t_end: float) -> tuple[np.ndarray, np.ndarray]:
    """Sample times and running speed (cm/s): bouts of running over a still baseline."""
    from scipy.signal import lfilter

    n = int(t_end * _SPEED_HZ)
    t = np.arange(n) / _SPEED_HZ
    a = np.exp(-1.0 / (20.0 * _SPEED_HZ))  # ~20 s bouts
    state = lfilter([1 - a], [1, -a], rng.normal(0.0, 1.0, n)) * np.sqrt((1 + a) / (1 - a))
    jitter = lfilter([0.1], [1, -0.9], rng.normal(0.0, 1.0, n))
    speed = np.where(state > 0.5, 25.0 * (state - 0.5), 0.0) + jitter
    return t, speed


# --------------------------------------------------------------------------------------------
# NWB writing
# --------------------------------------------------------------------------------------------
class _Blocks(AbstractDataChunkIterator):
    """Write a dataset of one constant value block by block along its first axis.

    Small memory, and hdmf writes it without scanning it element by element (hdmf 3 loops in
    Python over a numpy array of non-Python scalars, e.g. float32, to look for references).
    """

    def __init__(self, shape: tuple[int, ...], dtype, block: int, value: float = 0):
        self.shape, self.block, self.pos = tuple(shape), int(block), 0
        self._dtype = np.dtype(dtype)
        self._fill = np.full((min(self.block, self.shape[0]), *self.shape[1:]), value,
                             dtype=self._dtype)

    def __iter__(self) -> Iterator[DataChunk]:
        return self

    def __len__(self) -> int:
        return self.shape[0]

    def __next__(self) -> DataChunk:
        if self.pos >= self.shape[0]:
            raise StopIteration
        stop = min(self.pos + self.block, self.shape[0])
        sel = (np.s_[self.pos : stop], *(np.s_[0:n] for n in self.shape[1:]))
        chunk = DataChunk(data=self._fill[: stop - self.pos], selection=sel)
        self.pos = stop
        return chunk

    def recommended_chunk_shape(self) -> tuple[int, ...]:
        return (min(self.block, self.shape[0]), *self.shape[1:])

    def recommended_data_shape(self) -> tuple[int, ...]:
        return self.shape

    @property
    def dtype(self) -> np.dtype:
        return self._dtype

    @property
    def maxshape(self) -> tuple[int, ...]:
        return self.shape


def _unused_series(mb: float):
    """An LFP-sized int16 series (``rows x 384`` channels) that no analysis reads; uncompressed."""
    import pynwb
    from hdmf.backends.hdf5.h5_utils import H5DataIO

    n_ch, block = CHANNELS_PER_PROBE, 8192
    n_rows = max(int(mb * 2**20 / (2 * n_ch)), 1)
    data = H5DataIO(_Blocks((n_rows, n_ch), np.int16, block), chunks=(min(block, n_rows), n_ch))
    return pynwb.TimeSeries(name=UNUSED_DATASET.split("/")[1], data=data, unit="V",
                            conversion=1e-6, rate=1250.0,
                            description="unused LFP-sized dataset (a lazy reader never reads it)")


def _allensdk_installed() -> bool:
    return importlib.util.find_spec("allensdk") is not None


def _text(v: np.ndarray):
    v = np.asarray(v)
    return [str(x) for x in v] if v.dtype == object or v.dtype.kind == "U" else v


def _write_nwb(path: Path, session_id: int, truth: GroundTruth, spikes: list[np.ndarray],
               tables: dict, metrics: dict, peak: np.ndarray, probes: dict, t_end: float,
               speed: tuple[np.ndarray, np.ndarray], allensdk_format: bool) -> None:
    """Write the session as Allen-format NWB (see :func:`simulate_full_session`)."""
    import pynwb
    from hdmf.common import ElementIdentifiers, VectorData, VectorIndex
    from pynwb.epoch import TimeIntervals
    from pynwb.misc import Units

    nwb = pynwb.NWBFile(
        session_description="meireport simulated Allen-format Neuropixels session (full scale)",
        identifier=str(session_id),
        session_start_time=datetime(2019, 11, 5, 12, 0, tzinfo=UTC),
        session_id=str(session_id),
        institution="meireport (simulated)",
        notes=json.dumps({"meireport_geometry": truth.geometry.to_dict(), "simulated": True,
                          "scale": "full"}),
        stimulus_notes="brain_observatory_1.1",
    )
    if allensdk_format:
        from allensdk.brain_observatory.ecephys.nwb import EcephysElectrodeGroup, EcephysProbe
    else:
        device = nwb.create_device(name="neuropixels", description="simulated Neuropixels 1.0")
    for col, desc in (("probe_id", "probe id"), ("valid_data", "channel usable"),
                      ("local_index", "index on the probe"), ("probe_vertical_position", "um"),
                      ("probe_horizontal_position", "um")):
        nwb.add_electrode_column(name=col, description=desc)
    for name, pr in probes.items():
        location = ",".join(sorted(set(pr["location"])))
        if allensdk_format:
            dev = EcephysProbe(name=name, description="Neuropixels 1.0 Probe (simulated)",
                               manufacturer="imec", probe_id=int(pr["probe_id"]),
                               sampling_rate=30000.0)
            nwb.add_device(dev)
            grp = EcephysElectrodeGroup(name=name, description=f"{name} (simulated)",
                                        probe_id=int(pr["probe_id"]), location=location,
                                        device=dev, lfp_sampling_rate=2500.0, has_lfp_data=False)
            nwb.add_electrode_group(grp)
        else:
            grp = nwb.create_electrode_group(name=name, description=f"{name} (simulated)",
                                             location=location, device=device)
        for j, cid in enumerate(pr["ids"]):
            row = {"id": int(cid), "group": grp, "location": str(pr["location"][j]), "x": 0.0,
                   "y": 0.0, "z": 0.0, "probe_id": int(pr["probe_id"]),
                   "valid_data": bool(pr["valid"][j]), "local_index": j,
                   "probe_vertical_position": 20 * (j // 2),
                   "probe_horizontal_position": 16 + 32 * (j % 2)}
            if not len(nwb.electrodes):  # the first row adds the x, y, z columns
                nwb.add_electrode(**row)
            else:  # add_electrode rescans every column per row (quadratic in hdmf 3)
                row["group_name"] = name
                keep = set(nwb.electrodes.colnames) | {"id"}
                nwb.electrodes.add_row(**{k: v for k, v in row.items() if k in keep},
                                       check_ragged=False)
    # units: whole columns at once (numpy arrays go to h5py as they are)
    n = len(truth.unit_id)
    ends = np.cumsum([len(s) for s in spikes]).astype(np.uint64)
    times = VectorData(name="spike_times", description="spike times (s)",
                       data=np.concatenate(spikes))
    cols = [times, VectorIndex(name="spike_times_index", data=ends, target=times)]
    values = {
        "peak_channel_id": peak,
        "quality": _text(metrics["quality"]),
        "amplitude_cutoff": metrics["amplitude_cutoff"],
        "presence_ratio": metrics["presence_ratio"],
        "isi_violations": metrics["isi_violations"],
        "firing_rate": np.diff(np.concatenate([[0], ends])).astype(np.float64) / t_end,
        "snr": metrics["snr"],
        "local_index": np.arange(n, dtype=np.int64),
    }
    if allensdk_format:
        values["cluster_id"] = np.arange(n, dtype=np.int64)
    cols += [VectorData(name=k, description=k, data=v) for k, v in values.items()]
    if allensdk_format:
        amps = VectorData(name="spike_amplitudes", description="placeholder (V)",
                          data=_Blocks((int(ends[-1]),), np.float32, 2**20, 1e-4))
        # the index first: hdmf drops a column written from an iterator from its length
        # check, and then would not find the index's target
        cols += [VectorIndex(name="spike_amplitudes_index", data=ends, target=amps), amps,
                 VectorData(name="waveform_mean", description="placeholder",
                            data=np.zeros((n, 82), dtype=np.float32))]
    nwb.units = Units(name="units", id=ElementIdentifiers(name="id", data=truth.unit_id),
                      columns=cols, description="simulated units")
    for k, (name, tab) in enumerate(tables.items()):
        m = len(tab["start_time"])
        data = {c: (np.array([name] * m, dtype=object) if c == "stimulus_name" else tab[c])
                for c in BO11_COLUMNS[name]}
        if allensdk_format:
            data["stimulus_index"] = np.full(m, float(k))
        columns = [VectorData(name=c, description=c, data=_text(v)) for c, v in data.items()]
        nwb.add_time_intervals(TimeIntervals(
            name=f"{name}_presentations",
            description=f"Presentation times and stimuli details for '{name}' stimuli",
            columns=columns))
    t, v = speed
    running = nwb.create_processing_module("running", "running speed")
    running.add(pynwb.TimeSeries(name="running_speed", data=v, timestamps=t, unit="cm/s",
                                 description="running speed (simulated)"))
    running.add(pynwb.TimeSeries(name="running_speed_end_times", data=v,
                                 timestamps=t + 1.0 / _SPEED_HZ, unit="cm/s",
                                 description="running speed at the sample ends"))
    nwb.add_acquisition(_unused_series(UNUSED_MB))
    with pynwb.NWBHDF5IO(str(path), "w") as io:
        io.write(nwb)


# --------------------------------------------------------------------------------------------
# entry point
# --------------------------------------------------------------------------------------------
def _settings(seed: int, session_id: int, allensdk_format: bool) -> dict:
    s = {"fullscale_version": FULLSCALE_VERSION, "seed": int(seed), "session_id": int(session_id),
         "population": {k: list(v) for k, v in FULL_POPULATION.items()},
         "unused_mb": float(UNUSED_MB), "noise_shape": NOISE_SHAPE}
    if allensdk_format:
        s["allensdk_format"] = True
    return s


def _check_int(value, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise MeireportError(f"{name}: expected an integer >= {minimum}, got {value!r}")
    return int(value)


def simulate_full_session(
    out,
    seed: int = 0,
    session_id: int = FULL_SESSION_ID,
    progress: bool = False,
    allensdk_format: bool | None = None,
) -> SimulatedSession:
    """Write a simulated session of a real Brain Observatory 1.1 session's shape and size.

    Same folder layout and rules as :func:`meireport.sources.simulate_session`:
    ``out/session_<id>/session_<id>.nwb``, ``ground_truth.npz`` (+ ``.json``) beside it and
    ``out/natural_scene_templates/natural_scene_<k>.tiff``; written in a temporary folder and
    moved into place; a session folder made with the same settings is reused, one made with
    other settings is never overwritten (one error line).

    The file holds 800 units (:data:`FULL_POPULATION`) on 6 probes of 384 channels
    (:data:`PROBE_LAYOUT`), every ``brain_observatory_1.1`` stimulus table
    (``intervals/<name>_presentations``, columns :data:`BO11_COLUMNS`, counts
    :data:`BO11_COUNTS`: 5950 natural scenes = 118 images + the blank frame -1, x 50 over 3
    blocks; 3645 gabors; ...), a running-speed series (``processing/running``), ~2.55 h of
    recording with ~45 M spikes, and an unused ``UNUSED_MB`` MiB LFP-sized dataset
    (:data:`UNUSED_DATASET`). Generation takes about half a minute.

    Parameters
    ----------
    out : str or Path
        Cache folder to write into (created if needed).
    seed : int
        Seed of units, schedule and spikes; the same seed gives the same session.
    session_id : int
        Session id (folder name and NWB identifier); default :data:`FULL_SESSION_ID`.
    progress : bool
        Show a progress bar.
    allensdk_format : bool, optional
        Also write what AllenSDK 2.16's ``EcephysSession.from_nwb_path`` needs (its
        ``ndx-aibs-ecephys`` probe types, ``cluster_id``, ``spike_amplitudes``,
        ``waveform_mean``, ``stimulus_index``); default: when allensdk is installed.

    Returns
    -------
    SimulatedSession

    Examples
    --------
    The example is skipped when the docs are tested: it writes ~1.1 GB.

    >>> import tempfile
    >>> s = simulate_full_session(tempfile.mkdtemp())  # doctest: +SKIP
    >>> s.nwb_path.name  # doctest: +SKIP
    'session_700000800.nwb'
    >>> simulate_full_session(tempfile.mkdtemp(), seed=-1)
    Traceback (most recent call last):
    ...
    meireport.errors.MeireportError: seed: expected an integer >= 0, got -1
    """
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    seed = _check_int(seed, "seed", 0)
    session_id = _check_int(session_id, "session_id", 1)
    if allensdk_format is None:
        allensdk_format = _allensdk_installed()
    if allensdk_format and not _allensdk_installed():
        raise MeireportError(
            "allensdk_format: needs allensdk's NWB extension (run in `nox -s allen`'s env)")
    settings = _settings(seed, session_id, bool(allensdk_format))
    out = Path(out).expanduser().resolve()
    if out.exists() and not out.is_dir():
        raise MeireportError(f"out: {out} exists and is not a folder")
    sess_dir = out / f"session_{session_id}"
    result = SimulatedSession(out, session_id, sess_dir / f"session_{session_id}.nwb",
                              sess_dir / "ground_truth.npz", out / "natural_scene_templates", 0.0)
    if sess_dir.exists():
        meta = sess_dir / "ground_truth.json"
        old = json.loads(meta.read_text()).get("settings") if meta.is_file() else None
        if old == settings and result.nwb_path.is_file():
            result.reused = True
            result.seconds = time.perf_counter() - t0
            return result
        raise MeireportError(
            f"out: {sess_dir} already exists with other settings; choose another --out or "
            "--session-id (nothing was overwritten)")

    bar = tqdm(total=6, desc="simulate (full scale)", disable=not progress)

    def step(what: str) -> None:
        bar.set_postfix_str(what)
        bar.update()

    try:
        rng = np.random.default_rng(seed)
        geom = ScreenGeometry()
        templates = natural_images(N_IMAGES)
        model_imgs = np.stack([prepare_image(t, geom.shape) for t in templates])
        truth, base = draw_units(rng, FULL_POPULATION, session_id, geom, model_imgs)
        untuned = truth.kind == "untuned"
        rate = rng.lognormal(np.log(UNTUNED_MEDIAN_HZ), 0.8, int(untuned.sum()))
        truth.baseline[untuned] = np.clip(rate, 0.3, 40.0)
        base[untuned] = truth.baseline[untuned, None]
        rates = _rate_matrix(truth, base)
        step("units and rates")
        tables, starts, stops, rows, t_end = _schedule(rng)
        step("schedule")
        spikes = [
            _unit_spikes(np.random.default_rng([seed, i]), starts + truth.latency[i],
                         stops + truth.latency[i], rates[i, rows], truth.baseline[i], t_end)
            for i in range(len(truth.unit_id))
        ]
        step("spikes")
        metrics = _unit_metrics(rng, truth.kind)
        probes = _channels()
        peak = _peak_channels(rng, truth.area, metrics["fail"], probes)
        speed = _running_speed(rng, t_end)
        truth.meta = {
            "settings": settings,
            "seed": seed,
            "n_images": N_IMAGES,
            "n_repeats": NS_REPEATS,
            "session_id": session_id,
            "scale": "full",
            "duration_s": float(t_end),
            "n_spikes": int(sum(len(s) for s in spikes)),
            "other_stimuli": "static/drifting gratings (full field, drifting: mean over 8 "
            "phases), flashes (full-field black/white) and natural movies (meireport.sources."
            f"fullscale.movie_frames) drive units through true_rate, capped at {RATE_CAP} "
            "spikes/s; natural scenes and gabors: true_rate exactly",
            "qc_failure": {str(u): f for u, f in zip(truth.unit_id, metrics["fail"], strict=True)
                           if f},
        }
        out.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".meireport-sim-", dir=out))
        try:
            tmp_sess = tmp / sess_dir.name
            tmp_sess.mkdir()
            _write_nwb(tmp_sess / result.nwb_path.name, session_id, truth, spikes, tables,
                       metrics, peak, probes, t_end, speed, bool(allensdk_format))
            del spikes
            step("NWB")
            truth.save(tmp_sess)
            step("ground truth")
            write_templates(templates, result.templates_dir)
            os.replace(tmp_sess, sess_dir)
            step("templates")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    finally:
        bar.close()
    result.seconds = time.perf_counter() - t0
    return result
