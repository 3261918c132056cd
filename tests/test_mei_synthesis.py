"""MEI synthesis: the loop's pieces, models with a known optimum, and the in-silico inception loop.

Until trained models land (the models issue), the positive control uses the simulator's TRUE
neurons as the model (:class:`meireport.mei.TrueNeuron`): it checks the synthesis and the
comparison machinery, not how much a model can learn from 118 images.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

from meireport.errors import MeireportError
from meireport.mei import (
    DEFAULT_CONTRAST,
    STEP_CONTRAST,
    EnergyModel,
    EnsembleModel,
    LinearModel,
    MEIConfig,
    TrueNeuron,
    UnitModel,
    agreement,
    best_gabor_true_resp,
    best_image_true_resp,
    blur_sigmas,
    converged,
    default_starts,
    ensemble_meis,
    equalize,
    footing,
    fourier_filter,
    gaussian_blur,
    generate_mei,
    mei_rf_corr,
    mei_true_resp,
    phase_invariant_correlation,
    phase_modulation,
    pixel_correlation,
    precondition,
    predict,
    project,
    rescale_unit,
    start_images,
    stimulus_mask,
    target_contrast,
)
from meireport.report.params import MEIParams
from meireport.stimuli import ScreenGeometry, render_gabor
from meireport.trust import complex_like, mei_agreement

GEOM = ScreenGeometry()
FAST = MEIConfig(steps=120)


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_torch_thread):
    """Every test of this module with torch on one thread (conftest)."""


@pytest.fixture(scope="module")
def train_images():
    return np.random.default_rng(0).uniform(0.2, 0.8, size=(12, 60, 96))


def unit_rf(x, y, ori, sf, size, phase=0.0):
    w = render_gabor(GEOM, x, y, ori, sf, size, phase=phase, contrast=1.0) - 0.5
    w -= w.mean()
    return w / np.linalg.norm(w)


# ---------------------------------------------------------------------------- pieces
def test_config_checks_each_field():
    for kw, match in [
        ({"steps": 0}, "steps"),
        ({"step_size": 0}, "step_size"),
        ({"blur_fraction": 0}, "blur_fraction"),
        ({"starts": ("noise", "white")}, "starts"),
        ({"starts": ()}, "starts"),
        ({"target_std": -1.0}, "target_std"),
        ({"dtype": "float16"}, "dtype"),
        ({"stop": "yes"}, "stop"),
        ({"stop_window": 0}, "stop_window"),
        ({"stop_rtol": -1e-3}, "stop_rtol"),
        ({"min_steps": -1}, "min_steps"),
        ({"min_steps": 2.5}, "min_steps"),
    ]:
        with pytest.raises(MeireportError, match=match):
            MEIConfig(**kw)
    assert MEIConfig().to_dict()["starts"] == ["noise", "black", "grey", "noise"]
    assert MEIConfig().starts == default_starts(4)  # one definition of "n starts"
    assert default_starts(2) == ("noise", "black")
    assert default_starts(6)[3:] == ("noise",) * 3
    for bad in (0, 2.5, True):
        with pytest.raises(MeireportError, match=r"^n_starts: expected an integer >= 1"):
            default_starts(bad)


def test_fourier_filter_favours_low_frequencies():
    f = fourier_filter((60, 96), 0.25)
    assert f.mean().item() == pytest.approx(1.0)
    assert f[0, 1] > f[0, 10] > f[0, 48]
    assert f[1, 0] == pytest.approx(f[-1, 0].item())  # negative frequencies folded
    assert torch.allclose(fourier_filter((60, 96), 0.0), torch.ones(60, 49, dtype=torch.float64))
    g = torch.randn(3, 1, 60, 96, dtype=torch.float64)
    assert torch.allclose(precondition(g, fourier_filter((60, 96), 0.0)), g)


def test_blur_rescale_and_schedule():
    x = torch.rand(2, 1, 60, 96)
    assert torch.allclose(gaussian_blur(torch.full_like(x, 0.3), 3.0), torch.full_like(x, 0.3))
    assert torch.equal(gaussian_blur(x, 0.01), x)
    assert gaussian_blur(x, 2.0).std() < x.std()
    y = rescale_unit(3 * x - 1)
    assert torch.allclose(y.flatten(1).min(1).values, torch.zeros(2))
    assert torch.allclose(y.flatten(1).max(1).values, torch.ones(2))
    assert torch.all(rescale_unit(torch.zeros(1, 1, 4, 4)) == 0.5)
    s = blur_sigmas(MEIConfig(steps=100, blur_start=7.0, blur_end=0.0, blur_fraction=0.1))
    assert s[0] == 7.0 and np.all(np.diff(s) <= 0) and np.all(s[10:] == 0.0)


def test_starts_are_seeded():
    cfg = MEIConfig(starts=("noise", "noise", "black", "grey"), seed=3)
    a, b = start_images(cfg, (60, 96)), start_images(cfg, (60, 96))
    assert np.array_equal(a, b)
    assert not np.allclose(a[0], a[1])
    assert a.min() >= 0 and a.max() <= 1
    assert a[2].max() <= 1e-3 and abs(a[3].mean() - 0.5) < 1e-3
    assert not np.allclose(start_images(MEIConfig(seed=4), (60, 96))[0], a[0])


def test_target_contrast_is_mean_image_std():
    imgs = np.stack([np.full((4, 4), 0.3), np.tile([0.0, 1.0], (4, 2))])
    assert target_contrast(imgs) == pytest.approx(0.25)
    with pytest.raises(MeireportError, match="images"):
        target_contrast(np.zeros((4, 4)))


def test_adapters():
    pop = nn.Sequential(nn.Flatten(), nn.Linear(60 * 96, 3))
    x = torch.rand(5, 1, 60, 96)
    assert torch.allclose(UnitModel(pop, 1)(x), pop(x)[:, 1])
    with pytest.raises(MeireportError, match="index"):
        UnitModel(pop, 7)(x)
    w = unit_rf(0, 0, 30, 0.1, 30)
    ens = EnsembleModel([LinearModel(w), LinearModel(3 * w)])
    assert torch.allclose(ens(x), 2 * LinearModel(w)(x), atol=1e-5)
    with pytest.raises(MeireportError, match="one response per image"):
        generate_mei(pop, np.random.default_rng(0).random((2, 60, 96)), MEIConfig(steps=2))
    assert predict(UnitModel(pop, 2), x[:, 0].numpy()).shape == (5,)
    double = LinearModel(w).double()  # dtype "auto" follows the model
    res = generate_mei(double, np.random.default_rng(0).random((2, 60, 96)), MEIConfig(steps=3))
    assert res.mei.dtype == np.float64 and np.isfinite(res.response)
    with pytest.raises(MeireportError, match="model: expected finite responses"):
        generate_mei(lambda t: t.sum(dim=(1, 2, 3)) * np.nan, x[:2, 0].numpy(), MEIConfig(steps=2))


# ---------------------------------------------------------------------------- known optimum
def _agreement_values(model, res) -> dict:
    """What the report gives :func:`meireport.trust.mei_agreement` for this MEI."""
    f1_f0 = phase_modulation(model, res.mei, float(res.mei.mean()), res.c_star)
    return {"mei_reliability": res.reliability, "mei_phase_reliability": res.phase_reliability,
            "mei_f1_f0": f1_f0}


def test_mei_of_linear_gabor_unit_is_its_filter(train_images):
    w = unit_rf(12.0, -6.0, 35.0, 0.1, 30.0, phase=0.8)
    res = generate_mei(LinearModel(w), train_images, FAST)
    assert pixel_correlation(res.mei, w) >= 0.9
    assert res.mei.shape == (60, 96) and res.mei.min() >= 0 and res.mei.max() <= 1
    v = _agreement_values(LinearModel(w), res)
    assert complex_like(v) is False and mei_agreement(v) >= 0.8  # the phase agrees too
    assert res.c_star == DEFAULT_CONTRAST and res.mean == pytest.approx(train_images.mean())
    seed = generate_mei(LinearModel(w), train_images, replace(FAST, target_std=None))
    assert seed.c_star == pytest.approx(target_contrast(train_images))  # the seed's c*


def test_projection_keeps_mean_contrast_and_range_exactly():
    rng = np.random.default_rng(3)
    x = torch.as_tensor(rng.normal(0.5, 0.6, size=(5, 1, 60, 96)))  # far outside [0, 1]
    for mean, std in [(0.45, 0.06), (0.3, 0.2), (0.6, 0.169)]:
        y = project(x, mean, std).numpy()[:, 0]
        assert np.allclose(y.mean(axis=(1, 2)), mean, atol=1e-8)
        assert np.allclose(y.std(axis=(1, 2)), std, atol=1e-8)
        assert y.min() >= 0.0 and y.max() <= 1.0
        assert np.allclose(project(torch.as_tensor(y[:, None]), mean, std).numpy()[:, 0], y,
                           atol=1e-7)  # a projection: images in the set stay where they are


def test_constrained_mei_of_a_linear_unit_is_its_filter_at_the_set_contrast(train_images):
    """The optimum of <w, x> at fixed mean and std, no pixel clipped, is mean + std * w / std(w)."""
    w = unit_rf(12.0, -6.0, 35.0, 0.1, 30.0, phase=0.8)
    c = 0.025  # this filter peaks at ~18 std: at c = 0.025 its optimum stays inside (0, 1)
    res = generate_mei(LinearModel(w), train_images, replace(FAST, target_std=c))
    mean = float(train_images.mean())
    optimum = mean + c * w / w.std()
    assert optimum.min() > 0 and optimum.max() < 1  # the set's optimum clips nothing
    assert pixel_correlation(res.mei, optimum) >= 0.99
    assert res.mei.mean() == pytest.approx(mean, abs=1e-6)
    assert res.mei.std() == pytest.approx(c, abs=1e-6)
    assert np.abs(res.mei - optimum).max() < 0.05 * np.abs(optimum - mean).max()  # 120 steps
    assert res.summary()["clip_fraction"] == 0.0
    # the seed's loop does not hold the contrast it is given: its std drifts away from c*
    seed = generate_mei(LinearModel(w), train_images, replace(FAST, method="seed",
                                                               target_std=None))
    assert abs(seed.mei.std() - seed.c_star) > 0.05


def test_the_constrained_step_scales_with_the_set_contrast(train_images):
    """A step moves the image by the same fraction of its contrast at any set contrast: on a
    linear unit (constant gradient), with no pixel clipped, the loops at c and c / 2 are the
    same images up to the contrast, step by step."""
    w = unit_rf(12.0, -6.0, 35.0, 0.1, 30.0, phase=0.8)
    cfg = replace(FAST, starts=("noise",), stop=False, steps=30)
    mean = float(train_images.mean())
    a, b = (generate_mei(LinearModel(w), train_images, replace(cfg, target_std=c))
            for c in (0.02, 0.01))
    assert a.summary()["clip_fraction"] == b.summary()["clip_fraction"] == 0.0
    assert np.allclose((a.mei - mean) / 0.02, (b.mei - mean) / 0.01, atol=1e-4)
    r0 = predict(LinearModel(w), np.full((1, *w.shape), mean))[0]  # the flat image's response
    assert np.allclose(a.starts[0].response - r0, 2 * (b.starts[0].response - r0), atol=1e-4)
    # the same number with the step at 0.06's size: it moved a 0.03 image twice as far, and an
    # energy unit's carrier phase drifted on after the stopping rule (tested below)
    assert STEP_CONTRAST == 0.06 and DEFAULT_CONTRAST < STEP_CONTRAST


def test_the_compared_mei_is_the_synthesised_one(train_images):
    """What the MEI page shows, what the Gabor page and the true neuron see: one image."""
    from meireport.report.stages import unit_mei

    w = unit_rf(12.0, -6.0, 35.0, 0.1, 30.0, phase=0.8)
    u = unit_mei(LinearModel(w), train_images, train_images, FAST)
    assert np.abs(u.mei - u.result.mei).max() < 1e-7  # the loop's own image, in the set
    assert np.abs(u.stimuli[0] - u.mei).max() < 1e-12
    assert np.abs(equalize(u.mei, u.mean, u.c_star) - u.mei).max() < 1e-7  # the Gabor page's
    seed = unit_mei(LinearModel(w), train_images, train_images, replace(FAST, method="seed"))
    assert np.abs(seed.stimuli[0] - seed.mei).max() > 0.05  # the seed rescaled it afterwards


def test_mei_of_energy_unit_is_a_phase_of_its_pair(train_images):
    even = unit_rf(-20.0, 10.0, 120.0, 0.08, 35.0)
    odd = unit_rf(-20.0, 10.0, 120.0, 0.08, 35.0, phase=np.pi / 2)
    res = generate_mei(EnergyModel(even, odd), train_images, FAST)
    z = res.mei - res.mei.mean()
    basis = np.stack([even.ravel(), odd.ravel()], 1)
    coef, *_ = np.linalg.lstsq(basis, z.ravel(), rcond=None)
    assert pixel_correlation(res.mei, (basis @ coef).reshape(60, 96)) >= 0.9
    assert phase_invariant_correlation(res.mei, even) >= 0.9
    v = _agreement_values(EnergyModel(even, odd), res)
    assert complex_like(v) is True  # phase-invariant model: agreement is taken up to phase
    assert v["mei_f1_f0"] < 0.2 and mei_agreement(v) >= 0.8


@pytest.mark.parametrize("kind", ["linear", "energy"])
def test_predicted_response_increases_over_steps(kind, train_images):
    even = unit_rf(0.0, 0.0, 60.0, 0.1, 30.0)
    odd = unit_rf(0.0, 0.0, 60.0, 0.1, 30.0, phase=np.pi / 2)
    model = LinearModel(even) if kind == "linear" else EnergyModel(even, odd)
    res = generate_mei(model, train_images, FAST)
    for st in res.starts:  # each trace ends where its start stopped
        n = st.steps_run
        assert len(st.response) == len(st.std) == n + 1 and n <= FAST.steps
        assert st.converged == (n < FAST.steps)
        assert st.response[-1] > st.response[0] + 1.0
        assert st.response[-1] >= 0.9 * st.response.max()
        assert np.mean(st.response[n // 2 :]) > np.mean(st.response[: n // 2])
    assert res.response == max(st.final_response for st in res.starts)


def test_same_seed_same_mei_other_seed_same_optimum(train_images):
    w = unit_rf(5.0, 5.0, 10.0, 0.12, 25.0)
    cfg = MEIConfig(steps=60, starts=("noise", "noise"))
    a = generate_mei(LinearModel(w), train_images, cfg)
    b = generate_mei(LinearModel(w), train_images, cfg)
    assert np.array_equal(a.mei, b.mei)
    assert all(
        np.array_equal(x.response, y.response) for x, y in zip(a.starts, b.starts, strict=True)
    )
    c = generate_mei(LinearModel(w), train_images, MEIConfig(steps=60, starts=cfg.starts, seed=9))
    assert not np.array_equal(c.starts[0].response, a.starts[0].response)
    assert pixel_correlation(c.mei, a.mei) > 0.95


def test_flag_raised_when_starts_disagree(train_images):
    """Two equally good optima far apart: the MEI depends on the start -- not a finding."""
    w1 = unit_rf(-30.0, 0.0, 0.0, 0.1, 25.0)
    w2 = unit_rf(30.0, 0.0, 0.0, 0.1, 25.0)

    class TwoFeatures(nn.Module):
        def forward(self, x):
            a, b = LinearModel(w1)(x), LinearModel(w2)(x)
            return torch.logsumexp(torch.stack([4 * a, 4 * b]), dim=0) / 4

    res = generate_mei(TwoFeatures(), train_images, MEIConfig(steps=60, starts=("noise",) * 6))
    corr_with = [
        max(pixel_correlation(s.image, w1), pixel_correlation(s.image, w2)) for s in res.starts
    ]
    assert min(corr_with) > 0.8  # every start found one of the two optima ...
    v = _agreement_values(TwoFeatures(), res)
    assert complex_like(v) is False and mei_agreement(v) < 0.8  # ... not the same one


def test_ensemble_agreement(train_images):
    w = unit_rf(0.0, 0.0, 45.0, 0.1, 30.0)
    cfg = MEIConfig(steps=40, starts=("noise", "grey"))
    same = ensemble_meis([LinearModel(w), LinearModel(0.5 * w)], train_images, cfg)
    assert same.reliability >= 0.8 and len(same.members) == 2
    other = unit_rf(-30.0, 15.0, 135.0, 0.06, 30.0)
    split = ensemble_meis([LinearModel(w), LinearModel(other)], train_images, cfg)
    assert split.reliability < 0.5
    assert agreement([w])[1] == 1.0


# ---------------------------------------------------------------------------- stopping rule
class SmallCNN(nn.Module):
    """A seeded, randomly initialised conv net with an ELU + 1 output (a trained model's shape)."""

    def __init__(self, seed: int, shape=(60, 96)):
        super().__init__()
        torch.manual_seed(seed)
        self.core = nn.Sequential(nn.Conv2d(1, 4, 9, padding=4), nn.ELU(), nn.AvgPool2d(2),
                                  nn.Conv2d(4, 4, 5, padding=2), nn.ELU())
        self.readout = nn.Linear(4 * (shape[0] // 2) * (shape[1] // 2), 1)

    def forward(self, x):
        return nn.functional.elu(self.readout(self.core(x).flatten(1)))[:, 0] + 1


def stop_models():
    even = unit_rf(12.0, -6.0, 35.0, 0.1, 30.0, phase=0.8)
    odd = unit_rf(12.0, -6.0, 35.0, 0.1, 30.0, phase=0.8 + np.pi / 2)
    return {"linear": LinearModel(even), "energy": EnergyModel(even, odd),
            "cnn0": SmallCNN(0, (30, 48)), "cnn1": SmallCNN(1, (30, 48))}


@pytest.mark.parametrize("name", ["linear", "energy", "cnn0", "cnn1"])
def test_stopped_mei_is_the_full_length_mei(name, train_images):
    """The stopping rule (default on) keeps the 1000-step MEI at a fraction of the steps."""
    model = stop_models()[name]
    if name.startswith("cnn"):
        train_images = train_images[:, :30, :48]  # a quarter of the pixels: 4x faster
    full = generate_mei(model, train_images, MEIConfig(stop=False))
    stopped = generate_mei(model, train_images, MEIConfig())
    assert full.steps_run == [1000] * 4 and not any(st.converged for st in full.starts)
    assert min(stopped.steps_run) >= MEIConfig().earliest_stop == 120
    if name == "energy":  # phase-invariant: the response creeps on; some starts run to the end
        assert sum(stopped.steps_run) < 4000 and any(st.converged for st in stopped.starts)
    else:
        assert all(st.converged for st in stopped.starts)
        assert max(stopped.steps_run) <= 200  # a fifth of the steps at most
    assert pixel_correlation(stopped.mei, full.mei) >= 0.99
    assert stopped.response == pytest.approx(full.response, rel=1e-3)
    for st, ref in zip(stopped.starts, full.starts, strict=True):  # the same loop, cut short
        assert np.array_equal(st.response, ref.response[: st.steps_run + 1])
        assert np.array_equal(st.std, ref.std[: st.steps_run + 1])
    summary = stopped.summary()
    assert summary["steps"] == stopped.steps_run[stopped.best]
    assert summary["steps_total"] == sum(stopped.steps_run)


def test_stop_off_is_the_fixed_length_loop(train_images):
    w = unit_rf(0.0, 0.0, 60.0, 0.1, 30.0)
    cfg = MEIConfig(steps=150, stop=False)
    res = generate_mei(LinearModel(w), train_images, cfg)
    assert res.steps_run == [150] * 4 and [len(st.response) for st in res.starts] == [151] * 4
    assert MEIParams(stop=False, steps=150).config() == cfg
    short = generate_mei(LinearModel(w), train_images, MEIConfig(steps=150, min_steps=140))
    assert min(short.steps_run) >= 140  # min_steps holds back the rule


def test_a_start_stops_on_its_own(train_images):
    """A start frozen by the rule leaves the batch; the others go on; none depends on another."""
    even = unit_rf(0.0, 0.0, 60.0, 0.1, 30.0)
    odd = unit_rf(0.0, 0.0, 60.0, 0.1, 30.0, phase=np.pi / 2)
    model = EnergyModel(even, odd)
    # the seed loop: its contrast creeps, so some of an energy unit's starts run on
    res = generate_mei(model, train_images, MEIConfig(method="seed"))
    full = generate_mei(model, train_images, MEIConfig(method="seed", stop=False))
    assert min(res.steps_run) < 200 and max(res.steps_run) == 1000, res.steps_run
    for st, ref in zip(res.starts, full.starts, strict=True):
        assert np.array_equal(st.response, ref.response[: st.steps_run + 1])
        if not st.converged:  # ran on without the stopped ones: as in the full batch
            assert np.array_equal(st.image, ref.image)
    first = int(np.argmin(res.steps_run))  # without the starts after it: the same, up to
    alone = generate_mei(model, train_images, MEIConfig(method="seed",
                                                        starts=MEIConfig().starts[: first + 1]))
    assert abs(alone.steps_run[first] - res.steps_run[first]) <= 2  # float32 batch rounding
    assert np.allclose(alone.starts[first].image, res.starts[first].image, atol=1e-4)


def test_converged_rule():
    cfg = MEIConfig(steps=200, stop_window=10, stop_rtol=1e-3, min_steps=50)
    assert cfg.earliest_stop == 50  # min_steps; after the blur (20 steps) + window: 30
    assert MEIConfig(steps=200, stop_window=10, min_steps=0).earliest_stop == 30
    rise = np.linspace(0, 0.9, 45)  # steps 0..44
    flat = np.r_[rise, np.ones(25)]  # steps 45..69 at 1
    assert converged(flat[:69], cfg)  # step 68: even like 200, steps 58..68 in the band
    assert not converged(flat, cfg)  # step 69: odd
    assert not converged(flat[:55], cfg)  # step 54: step 44 was still rising
    assert converged(-flat[:69], cfg)  # relative to |r|
    early = np.r_[np.linspace(0, 1, 31), np.ones(12)]  # flat from 31, ends at step 42
    assert not converged(early, cfg) and converged(early, replace(cfg, min_steps=0))
    cycle = np.r_[rise, np.tile([1.0, 0.5], 12)]  # a two-step cycle, steps 45..68
    assert converged(cycle, cfg) and not converged(cycle[:-1], cfg)
    creeping = np.r_[rise, 1 + 2e-4 * np.arange(24)]  # 0.2 % over 10 steps
    assert not converged(creeping, cfg)


def test_results_are_cpu_numpy_on_the_model_device(train_images):
    from meireport.mei.synthesis import model_device

    model = SmallCNN(0, (30, 40))
    assert model_device(model) == next(model.parameters()).device
    res = generate_mei(model, train_images[:, :30, :40], MEIConfig(steps=20, starts=("grey",)))
    assert isinstance(res.mei, np.ndarray) and isinstance(res.starts[0].response, np.ndarray)


@pytest.mark.gpu
def test_mei_on_the_gpu_matches_the_cpu(train_images):
    assert torch.cuda.is_available(), "the gpu tests need a GPU (nox -s gpu on a GPU machine)"
    w = unit_rf(12.0, -6.0, 35.0, 0.1, 30.0, phase=0.8)
    cpu = generate_mei(LinearModel(w).double(), train_images, MEIConfig(steps=200))
    gpu = generate_mei(LinearModel(w).double().cuda(), train_images, MEIConfig(steps=200))
    assert isinstance(gpu.mei, np.ndarray)
    assert max(abs(i - j) for i, j in zip(cpu.steps_run, gpu.steps_run, strict=True)) <= 4
    assert pixel_correlation(gpu.mei, cpu.mei) >= 0.999
    cnn = SmallCNN(0).double()
    a = generate_mei(cnn, train_images, MEIConfig(steps=200))
    b = generate_mei(cnn.cuda(), train_images, MEIConfig(steps=200))
    assert isinstance(b.starts[0].response, np.ndarray)
    assert max(abs(i - j) for i, j in zip(a.steps_run, b.steps_run, strict=True)) <= 4
    assert pixel_correlation(a.mei, b.mei) >= 0.99


# ---------------------------------------------------------------------------- true neurons
def test_phase_modulation_tells_simple_from_complex_true_neurons(small_session):
    """F1/F0 at the true optimal stimulus: > 1 for every simple cell, < 1 for every complex one."""
    truth = small_session.truth
    ratios = {"simple": [], "complex": []}
    for u, kind in zip(truth.unit_id, truth.kind, strict=True):
        if kind not in ratios:
            continue
        rf = truth.rf_even[truth.index_of([u])[0]]
        img = 0.5 + 0.2 * rf / np.abs(rf).max()
        ratios[kind].append(phase_modulation(TrueNeuron(truth, int(u)), img, 0.5, 0.1))
    assert len(ratios["simple"]) >= 2 and len(ratios["complex"]) >= 2
    assert min(ratios["simple"]) > 1.0, ratios
    assert max(ratios["complex"]) < 1.0, ratios


def test_true_neuron_matches_true_rate(small_session):
    from meireport.sources import true_rate

    truth = small_session.truth
    imgs = np.random.default_rng(1).uniform(0, 1, size=(6, 60, 96))
    for kind in ("simple", "complex", "untuned"):
        u = int(truth.unit_id[np.flatnonzero(truth.kind == kind)[0]])
        got = predict(TrueNeuron(truth, u, smooth=0.0), imgs)
        assert np.allclose(got, true_rate(truth, imgs, [u])[0], rtol=1e-4, atol=1e-3)
    with pytest.raises(MeireportError, match="unit_ids"):
        TrueNeuron(truth, 12345)


@pytest.fixture(scope="module")
def rich_session(tmp_path_factory):
    """A data-rich session (1000 images) with a few tuned units."""
    from meireport.sources import open_session, simulate_session

    sim = simulate_session(
        tmp_path_factory.mktemp("rich"),
        seed=5,
        n_images=1000,
        n_repeats=2,
        population={"VISp": (6, 5, 1, 0)},
    )
    with open_session(sim.cache_dir) as s:
        images = s.model_images(range(1000))
        from meireport.extract import gabor_responses

        gabors = gabor_responses(s)
        units = list(s.units.index)
    return sim.truth, images, gabors, units


def test_inception_loop_on_true_neurons(rich_session):
    """Positive control: the true neurons stand in for a trained model."""
    from meireport.mei import session_gabor

    truth, images, gabors, units = rich_session
    mean, c_star = footing(images)[0], DEFAULT_CONTRAST  # the set every stimulus is put in
    images = equalize(images, mean, c_star)  # equal footing is idempotent: do it once
    corr, beats_image, beats_masked, beats_gabor = {}, [], [], []
    for u in units:
        kind = str(truth.kind[truth.index_of([u])[0]])
        if kind not in ("simple", "complex"):
            continue
        res = generate_mei(TrueNeuron(truth, u), images, FAST)
        corr.setdefault(kind, []).append(mei_rf_corr(truth, u, res.mei))
        mei_r = mei_true_resp(truth, u, res.mei, mean=mean, std=c_star)
        img_r = best_image_true_resp(truth, u, images, mean=mean, std=c_star)
        masked_r = best_image_true_resp(
            truth, u, images, mean=mean, std=c_star, mask=stimulus_mask(res.mei)
        )
        gab_r = best_gabor_true_resp(
            truth, u, session_gabor(gabors, u).image, mean=mean, std=c_star
        )
        beats_image.append(mei_r > img_r)
        beats_masked.append(mei_r > masked_r)
        beats_gabor.append(mei_r > gab_r)
    assert len(corr["simple"]) == 6 and len(corr["complex"]) == 5
    assert min(corr["simple"]) >= 0.7
    assert np.median(corr["complex"]) >= 0.7
    assert np.mean(beats_image) >= 0.8
    assert np.mean(beats_masked) >= 0.8
    assert np.mean(beats_gabor) >= 0.8


def test_mei_rf_corr_definition(small_session):
    truth = small_session.truth
    i = int(np.flatnonzero(truth.kind == "complex")[0])
    u = int(truth.unit_id[i])
    for phase in np.linspace(0, 2 * np.pi, 5):
        stim = 0.5 + np.cos(phase) * truth.rf_even[i] + np.sin(phase) * truth.rf_odd[i]
        assert mei_rf_corr(truth, u, stim) == pytest.approx(1.0, abs=1e-6)
    j = int(np.flatnonzero(truth.kind == "simple")[0])
    assert mei_rf_corr(truth, int(truth.unit_id[j]), 0.5 - truth.rf_even[j]) == pytest.approx(-1)
    k = int(np.flatnonzero(truth.kind == "untuned")[0])
    assert np.isnan(mei_rf_corr(truth, int(truth.unit_id[k]), np.full((60, 96), 0.5)))


def test_many_units_meis_in_one_batch_are_each_units_own(train_images):
    """generate_meis: the MEIs of several units of one shared CNN in one batch equal each unit's
    own synthesis (UnitModel, as the per-neuron pages do), start by start, up to float rounding;
    starts leave the batch as the stopping rule ends them."""
    from meireport.mei import generate_meis
    from meireport.models import CNNConfig, CNNModel, CoreConfig

    rng = np.random.default_rng(3)
    pop = CNNModel(CNNConfig(core=CoreConfig(hidden_channels=4, layers=2, input_kern=9),
                             input_shape=(30, 48)), n_units=20,
                   rf_centres=rng.uniform([5, 5], [43, 25], (20, 2)))
    with torch.no_grad():
        for p in pop.readout.parameters():
            p.add_(0.5 * torch.randn_like(p))
    imgs = train_images[:, :30, :48]
    cfg = MEIConfig(steps=300, starts=MEIConfig().starts[:2])
    rows = [4, 17, 9]
    seen = []
    real = pop.forward_units

    def counted(x, r):
        seen.append(len(r))
        return real(x, r)

    pop.forward_units = counted  # how many images each step reads out
    many = generate_meis(pop, rows, imgs, cfg)
    del pop.forward_units
    assert len(many) == 3
    for row, res in zip(rows, many, strict=True):
        one = generate_mei(UnitModel(pop, row), imgs, cfg)
        assert pixel_correlation(res.mei, one.mei) >= 0.999
        assert res.response == pytest.approx(one.response, rel=1e-4)
        assert res.c_star == one.c_star and res.mean == one.mean
        # the kept start is the same one, unless two starts ended at the same response (then
        # which of them is kept is float rounding; the MEIs agree either way, above)
        tied = abs(one.starts[0].final_response - one.starts[1].final_response) \
            <= 1e-4 * abs(one.response)
        assert res.best == one.best or tied
        for a, b in zip(res.steps_run, one.steps_run, strict=True):
            assert abs(a - b) <= 2  # a borderline stop may move by float rounding
    assert seen[0] == 6 and len(seen) == max(max(r.steps_run) for r in many) + 1
    assert max(max(r.steps_run) for r in many) < 300  # stopped, the batch read out: one pass
    with pytest.raises(MeireportError, match="rows: expected unit positions"):
        generate_meis(pop, [-1], imgs, cfg)
