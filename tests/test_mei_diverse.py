"""Diverse Exciting Inputs: complex cells' DEIs span carrier phase, simple cells' stay at the MEI.

Models with a known answer on small images (24 x 32): an energy model (phase invariant) and a
linear / rectified-linear unit built from numpy Gabors; MEIs from the constrained MEI loop.
"""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from scipy import ndimage
from torch import nn

from meireport.errors import MeireportError
from meireport.mei.diverse import (
    DEIConfig,
    DEIResult,
    diverse_meis,
    diversity,
    phase_span,
    start_batch,
)
from meireport.mei.synthesis import MEIConfig, generate_mei
from meireport.mei.targets import EnergyModel, LinearModel, predict

SHAPE = (24, 32)
MEI_CFG = MEIConfig(steps=80, blur_start=1.0, starts=("noise", "grey"))


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_torch_thread):
    """Every test of this module with torch on one thread (conftest)."""


def gabor(phase: float, shape=SHAPE, sf: float = 0.12, ori: float = 0.4) -> np.ndarray:
    """Zero-mean, unit-norm Gabor filter centred in the image."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    yy, xx = yy - (h - 1) / 2, xx - (w - 1) / 2
    u = xx * np.cos(ori) + yy * np.sin(ori)
    g = np.exp(-(xx**2 + yy**2) / (2 * (min(h, w) / 6) ** 2)) * np.cos(2 * np.pi * sf * u + phase)
    g -= g.mean()
    return g / np.linalg.norm(g)


EVEN, ODD = gabor(0.0), gabor(np.pi / 2)


class Rectified(nn.Module):
    """A simple cell: softplus-rectified linear unit (smooth, so no start is dead)."""

    def __init__(self, weight):
        super().__init__()
        self.linear = LinearModel(weight)

    def forward(self, x):
        return 0.05 * nn.functional.softplus(self.linear(x) / 0.05)


@pytest.fixture(scope="module")
def train_images():
    return np.random.default_rng(0).uniform(0.2, 0.8, size=(8, *SHAPE))


@pytest.fixture(scope="module")
def energy(train_images):
    model = EnergyModel(EVEN, ODD)
    mei = generate_mei(model, train_images, MEI_CFG)
    return model, mei, diverse_meis(model, mei)


@pytest.fixture(scope="module", params=["linear", "rectified"])
def simple(request, train_images):
    model = LinearModel(EVEN) if request.param == "linear" else Rectified(EVEN)
    mei = generate_mei(model, train_images, MEI_CFG)
    return model, mei, diverse_meis(model, mei)


# ---------------------------------------------------------------------------- the answers
def test_complex_cell_deis_span_carrier_phase(energy):
    model, mei, res = energy
    cfg = res.config
    assert res.n_met == cfg.n_images == len(res.images) and not res.used_mei
    assert phase_span(res.images, EVEN, ODD) >= 90.0
    off = res.correlations[~np.eye(len(res.images), dtype=bool)]
    assert np.median(off) <= 0.3
    assert np.all(res.fractions >= cfg.fraction)
    assert np.allclose(res.responses, predict(model, res.images))
    assert np.allclose(res.fractions, res.responses / mei.response)


def test_simple_cell_deis_stay_at_the_mei(simple):
    _, mei, res = simple
    assert res.n_met == len(res.images) == res.config.n_images
    assert np.all(res.fractions >= res.config.fraction)
    assert np.all(res.mei_correlations >= 0.8)
    # a phase turned by t keeps cos(t) of the response: at most +-acos(fraction) (31.8 deg)
    bound = 2 * np.degrees(np.arccos(res.config.fraction))
    assert phase_span(res.images, EVEN, ODD) <= bound + 5.0


def test_every_dei_lies_in_the_meis_set(energy, simple):
    for _, mei, res in (energy, simple):
        a = res.images.reshape(len(res.images), -1)
        assert np.allclose(a.mean(axis=1), mei.mean, atol=1e-6)
        assert np.allclose(a.std(axis=1), mei.c_star, atol=1e-6)
        assert a.min() >= 0.0 and a.max() <= 1.0


def test_result_arrays_and_summary(energy):
    _, mei, res = energy
    k = len(res.images)
    assert isinstance(res, DEIResult) and res.images.shape == (k, *SHAPE)
    assert res.correlations.shape == (k, k) and np.allclose(np.diag(res.correlations), 1.0)
    assert res.responses.shape == res.fractions.shape == res.mei_correlations.shape == (k,)
    s = json.loads(json.dumps(res.summary()))
    assert s["n"] == k and s["n_met"] == res.n_met and s["used_mei"] is False
    assert s["median_fraction"] == pytest.approx(float(np.median(res.fractions)))
    assert s["median_corr"] <= 0.3 and s["seconds"] > 0
    assert res.mei_response == mei.response


def test_same_config_same_images_another_seed_other_images(train_images, energy):
    model, mei, res = energy
    again = diverse_meis(model, mei, DEIConfig())
    assert np.array_equal(again.images, res.images)
    assert np.array_equal(again.responses, res.responses)
    other = diverse_meis(model, mei, DEIConfig(seed=1))
    assert not np.array_equal(other.images, res.images)
    assert phase_span(other.images, EVEN, ODD) >= 90.0


@pytest.mark.parametrize("k", [2, 3, 6])
def test_other_batch_sizes(energy, k):
    model, mei, _ = energy
    res = diverse_meis(model, mei, DEIConfig(n_images=k))
    assert res.n_met == k and np.all(res.fractions >= 0.85)
    assert phase_span(res.images, EVEN, ODD) >= 90.0


def test_other_inits_and_fractions(energy):
    model, mei, _ = energy
    for cfg in (DEIConfig(init="noise", steps=150), DEIConfig(init="starts", steps=80),
                DEIConfig(fraction=0.95, steps=60)):
        res = diverse_meis(model, mei, cfg)
        assert res.n_met >= 1 and np.all(res.fractions >= cfg.fraction)
    assert phase_span(res.images, EVEN, ODD) >= 45.0  # fraction 0.95 still spans phase


def test_no_image_reaching_the_fraction_returns_the_mei(energy):
    model, mei, _ = energy
    out_of_reach = replace(mei, response=10 * mei.response)
    res = diverse_meis(model, out_of_reach, DEIConfig(steps=5))
    assert res.used_mei and res.n_met == 0 and len(res.images) == 1
    assert np.array_equal(res.images[0], mei.mei)
    assert res.mei_correlations[0] == pytest.approx(1.0)
    assert res.summary()["n"] == 1 and res.summary()["median_corr"] == 1.0


def test_shifted_starts_fall_back_where_a_simple_cell_would_not_answer(train_images):
    model = Rectified(gabor(0.0, sf=0.25))  # a 4 px period: a 3 px shift loses the response
    mei = generate_mei(model, train_images, MEI_CFG)
    moved = ndimage.shift(mei.mei, (0.0, 2.0), order=1, mode="nearest")
    assert predict(model, moved)[0] < 0.5 * mei.response
    cfg = DEIConfig(n_images=6)
    x = start_batch(model, mei, cfg)
    assert np.all(predict(model, x) >= cfg.fraction * mei.response)
    assert diverse_meis(model, mei, cfg).n_met == 6


# ---------------------------------------------------------------------------- pieces
def test_phase_span_of_gabors():
    g = {p: 0.5 + 0.1 * gabor(np.radians(p)) for p in (0, 90, 180, 270, 350, 10)}
    assert phase_span([g[0], g[90], g[180]], EVEN, ODD) == pytest.approx(180.0, abs=1.0)
    assert phase_span([g[0], g[90], g[180], g[270]], EVEN, ODD) == pytest.approx(270.0, abs=1.0)
    assert phase_span([g[350], g[10]], EVEN, ODD) == pytest.approx(20.0, abs=1.0)  # wraps
    assert phase_span([g[90]], EVEN, ODD) == 0.0
    with pytest.raises(MeireportError, match="even/odd"):
        phase_span([g[0]], EVEN[:4], ODD)


def test_diversity_is_the_mean_pairwise_distance_of_standardised_images():
    a, b = torch.as_tensor(EVEN), torch.as_tensor(ODD)
    x = torch.stack([a, 3 * a + 1, -a, b])
    d = [0.0, 2.0, np.sqrt(2), 2.0, np.sqrt(2), np.sqrt(2)]  # pairs (0,1) (0,2) (0,3) (1,2)...
    assert float(diversity(x)) == pytest.approx(np.mean(d), abs=1e-4)
    assert float(diversity(x[:1])) == 0.0


def test_step_sizes_decay_from_step_size():
    s = DEIConfig(steps=40, step_size=0.3, step_decay=0.05).step_sizes()
    assert len(s) == 40 and s[0] == pytest.approx(0.3) and s[-1] == pytest.approx(0.015)
    assert np.all(np.diff(s) < 0)


@pytest.mark.parametrize(
    "kw",
    [
        {"n_images": 0}, {"n_images": 2.5}, {"fraction": 0.0}, {"fraction": 1.2},
        {"steps": 0}, {"steps": True}, {"step_size": 0.0}, {"step_decay": 0.0},
        {"step_decay": 2.0}, {"diversity_weight": 0.0}, {"margin": -0.1}, {"init": "black"},
        {"init_noise": -1.0}, {"init_shift": -1.0}, {"noise_sigma": -1.0}, {"seed": -1},
        {"fourier_exponent": -0.5}, {"dtype": "float16"}, {"fraction": "0.9"},
        {"step_size": float("nan")}, {"margin": True},
    ],
)
def test_bad_config_names_the_field(kw):
    (field,) = kw
    with pytest.raises(MeireportError, match=f"^{field}: expected"):
        DEIConfig(**kw)


def test_bad_arguments(energy):
    model, mei, _ = energy
    with pytest.raises(MeireportError, match="^config: expected a DEIConfig"):
        diverse_meis(model, mei, {"n_images": 2})
    with pytest.raises(MeireportError, match="^mei_result: expected an MEIResult"):
        diverse_meis(model, mei.mei)
    with pytest.raises(MeireportError, match=r"^mei_result.response: expected a finite value > 0"):
        diverse_meis(model, replace(mei, response=0.0))


def test_float64_model_runs_in_float64(train_images):
    model = EnergyModel(EVEN, ODD).double()
    mei = generate_mei(model, train_images, MEI_CFG)
    res = diverse_meis(model, mei, DEIConfig(n_images=3))
    assert res.images.dtype == np.float64 and res.n_met == 3


@pytest.mark.gpu
def test_deis_on_the_gpu_match_the_cpu(train_images):
    assert torch.cuda.is_available(), "the gpu tests need a GPU (nox -s gpu on a GPU machine)"
    cpu_model = EnergyModel(EVEN, ODD).double()
    mei = generate_mei(cpu_model, train_images, MEI_CFG)
    cpu = diverse_meis(cpu_model, mei)
    gpu = diverse_meis(EnergyModel(EVEN, ODD).double().cuda(), mei)
    assert isinstance(gpu.images, np.ndarray) and gpu.n_met == cpu.n_met
    assert np.allclose(gpu.images, cpu.images, atol=1e-4)


def test_a_simple_cells_deis_differ_from_its_mei_outside_its_rf_not_inside(train_images):
    """A small RF in a larger image: the DEIs keep the MEI inside the RF mask (where every
    metric is measured) and differ where the unit does not look (what the gabor stage's
    ``dei_median_mei_corr_rf`` separates from the whole-image ``dei_median_mei_corr``)."""
    from meireport.mei.compare import pixel_correlation
    from meireport.mei.rf import rf_mask

    shape = (40, 64)
    small = np.zeros(shape)
    small[8:32, 8:40] = gabor(0.0)  # the 24 x 32 filter in the top-left part of the image
    model = LinearModel(small)
    images = np.random.default_rng(1).uniform(0.2, 0.8, size=(8, *shape))
    mei = generate_mei(model, images, MEI_CFG)
    res = diverse_meis(model, mei)
    mask = rf_mask(model, images)
    assert abs(mask.centre[0] - 19.5) <= 2 and abs(mask.centre[1] - 23.5) <= 2, mask.centre
    inside = [pixel_correlation(x, mei.mei, mask) for x in res.images]
    whole = [pixel_correlation(x, mei.mei) for x in res.images]
    assert np.all(res.fractions >= res.config.fraction)
    assert min(inside) >= res.config.fraction, inside  # a linear unit: cos of the angle
    assert np.median(inside) > np.median(whole), (inside, whole)
