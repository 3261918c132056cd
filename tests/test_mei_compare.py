"""Comparison metrics against analytic cases, and their invariances (property tests)."""

from __future__ import annotations

import numpy as np
import pytest

from meireport.errors import MeireportError
from meireport.mei import (
    angular_power,
    apply_mask,
    circular_mask,
    contrast,
    describe,
    energy_centre,
    equalize,
    footing,
    luminance,
    peak_frequency,
    phase_invariant_correlation,
    pixel_correlation,
    power_spectrum,
    preferred_orientation,
    radial_power,
    stimulus_mask,
    symmetry_index,
    symmetry_indices,
)
from meireport.stimuli import ScreenGeometry, render_gabor

GEOM = ScreenGeometry()


def grating(ori_deg: float, cpp: float, shape=(60, 96), phase: float = 0.0) -> np.ndarray:
    """Full-field cosine grating, Allen orientation convention (0 = vertical bars, +y up)."""
    rows, cols = np.indices(shape, dtype=float)
    t = np.deg2rad(ori_deg)
    u = cols * np.cos(t) - rows * np.sin(t)
    return 0.5 + 0.4 * np.cos(2 * np.pi * cpp * u + phase)


def circ_diff(a: float, b: float, period: float = 180.0) -> float:
    d = abs(a - b) % period
    return min(d, period - d)


# ---------------------------------------------------------------------------- spectra
@pytest.mark.parametrize("ori", [0.0, 22.5, 45.0, 70.0, 90.0, 135.0, 160.0])
@pytest.mark.parametrize("cpp", [0.08, 0.125, 0.2])
def test_grating_gives_its_frequency_and_orientation(ori, cpp):
    img = grating(ori, cpp)
    pk = peak_frequency(img, GEOM)
    assert pk["cycles_per_px"] == pytest.approx(cpp, rel=0.03)
    assert pk["cycles_per_deg"] == pytest.approx(cpp / GEOM.deg_per_px, rel=0.03)
    assert circ_diff(preferred_orientation(img), ori) < 1.5


def test_gabor_orientation_matches_render_convention():
    for ori in (0.0, 30.0, 60.0, 100.0, 150.0):
        img = render_gabor(GEOM, 8, -5, ori, 0.1, 60, phase=0.7)
        assert circ_diff(preferred_orientation(img), ori) < 2.0


def test_orientation_metrics_invariant_to_half_turn():
    for ori in (10.0, 45.0, 80.0, 125.0):
        a = render_gabor(GEOM, 0, 0, ori, 0.1, 40)
        b = render_gabor(GEOM, 0, 0, ori + 180.0, 0.1, 40)
        assert circ_diff(preferred_orientation(a), preferred_orientation(b)) < 1e-6
        assert np.allclose(symmetry_indices(a), symmetry_indices(b))
    theta, p = angular_power(np.random.default_rng(1).random((60, 96)))
    for n in (1, 2, 3):
        assert symmetry_index(theta + np.pi, p, n) == pytest.approx(symmetry_index(theta, p, n))


def test_point_reflection_leaves_spectra_unchanged():
    img = render_gabor(GEOM, 12, 6, 35, 0.09, 30)
    flipped = img[::-1, ::-1]
    assert np.allclose(angular_power(img, window=None)[1], angular_power(flipped, window=None)[1])
    assert np.allclose(radial_power(img, window=None)[1], radial_power(flipped, window=None)[1])


@pytest.mark.parametrize("ori", [0.0, 30.0, 45.0, 100.0])
def test_si_of_grating_near_one(ori):
    si1, si2 = symmetry_indices(grating(ori, 0.15))
    assert si1 > 0.97
    assert si2 > 0.9


def test_si_of_isotropic_noise_near_zero():
    si = np.array([symmetry_indices(np.random.default_rng(s).random((60, 96))) for s in range(8)])
    assert si.mean(axis=0).max() < 0.08


def test_plaid_is_two_fold_not_one_fold():
    plaid = 0.5 * (grating(20.0, 0.15) + grating(110.0, 0.15))
    si1, si2 = symmetry_indices(plaid)
    assert si1 < 0.1
    assert si2 > 0.85


def test_dc_does_not_count():
    """The seed kept the DC term, which made every stimulus look symmetric (SI ~ 1)."""
    noise = np.random.default_rng(0).random((60, 96))
    assert symmetry_indices(noise)[0] == pytest.approx(symmetry_indices(noise + 0.3)[0])
    power, fy, fx = power_spectrum(noise + 0.3)
    assert power[np.argmin(np.abs(fy)), np.argmin(np.abs(fx))] < 1e-20


def test_spectra_frequency_axes():
    power, fy, fx = power_spectrum(np.zeros((60, 96)))
    assert power.shape == (60, 96) and np.all(power == 0)
    assert fx.min() == -0.5 and fy.max() == 0.5
    f, p = radial_power(grating(0.0, 0.125, (64, 64)), window=None)
    assert f[np.argmax(p)] == pytest.approx(0.125)


# ---------------------------------------------------------------------------- masks
def disk(value=0.8, background=0.5, centre=(29.5, 47.5), radius=10.0, shape=(60, 96)):
    img = np.full(shape, background)
    m = circular_mask(shape, centre, radius)
    img[m] = value
    return img, m


def test_uniform_disk_luminance_and_zero_contrast():
    img, m = disk(value=0.8)
    assert luminance(img, m) == pytest.approx(0.8)  # the seed's pi r^2 would not give 0.8
    assert contrast(img, m) == pytest.approx(0.0, abs=1e-12)
    assert luminance(img) == pytest.approx(0.5 + 0.3 * m.mean())


def test_mask_centres_on_the_stimulus_not_the_image():
    img, _ = disk(value=0.1, centre=(20.0, 70.0), radius=6.0)
    mk = stimulus_mask(img)
    assert mk.centre == pytest.approx((20.0, 70.0), abs=1e-9)
    assert 4.0 <= mk.radius <= 6.0
    assert luminance(img, mk) == pytest.approx(0.1)
    assert stimulus_mask(img, radius=12).radius == 12.0


def test_energy_centre_of_an_offset_gabor():
    img = render_gabor(GEOM, 30.0, -15.0, 60, 0.1, 20)
    col, row = GEOM.deg_to_px(30.0, -15.0)
    assert energy_centre(img, background=0.5) == pytest.approx((row, col), abs=0.5)


def test_apply_mask_and_bad_masks():
    img, m = disk()
    out = apply_mask(np.random.default_rng(0).random(img.shape), m, background=0.3)
    assert np.all(out[~m] == 0.3)
    with pytest.raises(MeireportError, match="mask: expected shape"):
        luminance(img, np.ones((3, 3), bool))
    with pytest.raises(MeireportError, match="mask: expected at least one pixel"):
        contrast(img, np.zeros(img.shape, bool))


# ---------------------------------------------------------------------------- similarity
def test_pixel_correlation_properties():
    rng = np.random.default_rng(0)
    a = rng.random((60, 96))
    assert pixel_correlation(a, 3 * a + 2) == pytest.approx(1.0)
    assert pixel_correlation(a, 1 - a) == pytest.approx(-1.0)
    assert pixel_correlation(a, np.full_like(a, 0.5)) == 0.0
    with pytest.raises(MeireportError, match="b: expected the shape of a"):
        pixel_correlation(a, a[:10])


def test_phase_invariant_correlation():
    gs = [render_gabor(GEOM, 5, 5, 40, 0.1, 35, phase=p) for p in np.linspace(0, 2 * np.pi, 5)]
    assert all(phase_invariant_correlation(gs[0], g) > 0.95 for g in gs)
    other = render_gabor(GEOM, -30, -10, 130, 0.1, 35)
    assert phase_invariant_correlation(gs[0], other) < 0.2


# ---------------------------------------------------------------------------- equal footing
def test_equalize_hits_mean_and_std_within_screen_range():
    rng = np.random.default_rng(0)
    stims = np.stack(
        [rng.random((60, 96)), render_gabor(GEOM, 0, 0, 30, 0.1, 90), grating(45, 0.1)]
    )
    out = equalize(stims, 0.45, 0.2)
    assert out.min() >= 0 and out.max() <= 1
    assert np.allclose(out.mean(axis=(1, 2)), 0.45, atol=1e-6)
    assert np.allclose(out.std(axis=(1, 2)), 0.2, atol=1e-6)
    corr = [pixel_correlation(a, b) for a, b in zip(stims, out, strict=True)]
    assert corr[0] == pytest.approx(1.0) and corr[2] == pytest.approx(1.0)  # no clipping
    assert corr[1] > 0.8  # the Gabor's peaks clip at this contrast


def test_equalize_is_idempotent_and_monotone():
    x = render_gabor(GEOM, 10, 0, 30, 0.1, 30)
    once = equalize(x, 0.5, 0.15)
    assert np.allclose(equalize(once, 0.5, 0.15), once, atol=1e-6)
    order = np.argsort(x.ravel(), kind="stable")
    assert np.all(np.diff(once.ravel()[order]) >= -1e-12)


def test_equalize_without_clip_is_affine():
    x = render_gabor(GEOM, 10, 0, 30, 0.1, 20)
    y = equalize(x, 0.5, 0.3, clip=False)
    assert y.mean() == pytest.approx(0.5) and y.std() == pytest.approx(0.3)
    assert pixel_correlation(x, y) == pytest.approx(1.0)


def test_equalize_flat_and_unreachable():
    assert np.all(equalize(np.full((8, 8), 0.9), 0.4, 0.2) == 0.4)
    dot = np.full((60, 96), 0.5)
    dot[30, 40] = 1.0  # one pixel cannot carry a std of 0.25 over the image
    y = equalize(dot, 0.45, 0.25)
    assert y.mean() == pytest.approx(0.45, abs=1e-6)
    assert y.std() < 0.25


def test_footing_of_training_images():
    imgs = np.stack([np.full((4, 4), 0.2), np.tile([0.0, 1.0], (4, 2))])
    assert footing(imgs) == pytest.approx((0.35, 0.25))


def test_describe_reports_every_metric():
    d = describe(render_gabor(GEOM, 15, 10, 120, 0.1, 60), GEOM)
    assert set(d) == {
        "centre_row",
        "centre_col",
        "radius",
        "luminance",
        "contrast",
        "clip_fraction",
        "si1",
        "si2",
        "orientation_deg",
        "peak_sf_cpp",
        "peak_sf_cpd",
    }
    assert d["clip_fraction"] == 0.0
    assert circ_diff(d["orientation_deg"], 120) < 2
    assert d["peak_sf_cpd"] == pytest.approx(0.1, rel=0.1)
    col, row = GEOM.deg_to_px(15, 10)
    assert (d["centre_row"], d["centre_col"]) == pytest.approx((row, col), abs=0.5)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: luminance(np.zeros(5)), "image: expected an H x W image"),
        (lambda: angular_power(np.zeros((8, 8)), n_bins=1), "n_bins"),
        (lambda: symmetry_index([0, 1], [1, 1], 0), "n: expected an integer >= 1"),
        (lambda: equalize(np.zeros((4, 4)), 1.5, 0.1), "mean: expected a value in"),
        (lambda: circular_mask((4, 4), (1, 1), -1), "radius"),
        (lambda: power_spectrum(np.zeros((4, 4)), window="box"), "window"),
        (lambda: contrast(np.full((4, 4), np.nan)), "finite"),
    ],
)
def test_bad_input_names_the_argument(call, match):
    with pytest.raises(MeireportError, match=match):
        call()


def test_rf_mask_is_the_units_rf_for_every_stimulus():
    """The mask comes from the model (its sensitivity), the same for the MEI and its rivals."""
    from meireport.mei import EnergyModel, LinearModel, clip_fraction, rf_mask

    imgs = np.random.default_rng(0).random((6, 60, 96))
    col, row = GEOM.deg_to_px(-20, 8)
    even = render_gabor(GEOM, -20, 8, 30, 0.1, 25, contrast=1.0) - 0.5
    odd = render_gabor(GEOM, -20, 8, 30, 0.1, 25, phase=np.pi / 2, contrast=1.0) - 0.5
    for model in (LinearModel(even), EnergyModel(even, odd)):
        m = rf_mask(model, imgs)
        assert m.centre == pytest.approx((row, col), abs=1.0)
        assert 3 < m.radius < 20
        assert rf_mask(model, imgs, radius=12).radius == 12
    # measured through that mask, a stimulus elsewhere has no contrast there
    m = rf_mask(LinearModel(even), imgs)
    far = render_gabor(GEOM, 30, -10, 30, 0.1, 25)
    assert describe(far, GEOM, mask=m)["contrast"] < 0.01
    assert describe(0.5 + even / 2, GEOM, mask=m)["contrast"] > 0.1
    assert clip_fraction(np.clip(3 * imgs[0] - 1, 0, 1)) == pytest.approx(
        np.mean((3 * imgs[0] - 1 <= 0) | (3 * imgs[0] - 1 >= 1)))
