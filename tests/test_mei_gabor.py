"""Best session Gabor (on the simulator's gabor responses) and the in-silico Gabor search."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from meireport.errors import MeireportError
from meireport.mei import (
    PARAMS,
    EnergyModel,
    GaborSearchConfig,
    LinearModel,
    energy_centre,
    equalize,
    gabor_conditions,
    gabor_search,
    pixel_correlation,
    render_gabors,
    session_gabor,
)
from meireport.mei.gabor import _PROBE_BANKS, _canonical
from meireport.stimuli import ScreenGeometry, render_gabor

GEOM = ScreenGeometry()


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_torch_thread):
    """Every test of this module with torch on one thread (conftest)."""


def circ_diff(a, b, period=180.0):
    d = abs(a - b) % period
    return min(d, period - d)


# ---------------------------------------------------------------------------- rendering
def test_render_gabors_matches_render_gabor():
    rng = np.random.default_rng(0)
    p = {
        "x_deg": rng.uniform(-50, 50, 6),
        "y_deg": rng.uniform(-30, 30, 6),
        "orientation_deg": rng.uniform(0, 360, 6),
        "sf_cpd": rng.uniform(0.02, 0.2, 6),
        "size_deg": rng.uniform(5, 80, 6),
        "phase": rng.uniform(0, 2 * np.pi, 6),
    }
    many = render_gabors(GEOM, 0.7, **p)
    for i in range(6):
        one = render_gabor(GEOM, *(p[k][i] for k in PARAMS[:5]), phase=p["phase"][i], contrast=0.7)
        assert np.allclose(many[i], one)
    with pytest.raises(MeireportError, match="missing"):
        render_gabors(GEOM, x_deg=0.0)


def test_canonical_parameters_render_the_same_image():
    for ori in (-170.0, -30.0, 200.0, 350.0, 555.0):
        p = {
            "x_deg": 10.0,
            "y_deg": -5.0,
            "orientation_deg": ori,
            "sf_cpd": 0.09,
            "size_deg": 30.0,
            "phase": 1.1,
        }
        c = _canonical(p)
        assert 0 <= c["orientation_deg"] < 180 and 0 <= c["phase"] < 2 * np.pi
        assert np.allclose(render_gabors(GEOM, **p), render_gabors(GEOM, **c))


# ---------------------------------------------------------------------------- session gabor
def toy_responses():
    table = pd.DataFrame(
        {
            "orientation": [0.0, 45.0, 0.0, 90.0, 45.0, 90.0],
            "x_position": [-20.0, 10.0, -20.0, 30.0, 10.0, 30.0],
            "y_position": [0.0, 10.0, 0.0, -10.0, 10.0, -10.0],
            "size": ["[20.0, 20.0]"] * 6,
            "spatial_frequency": [0.08] * 6,
            "contrast": [0.8] * 6,
        },
        index=pd.Index([11, 12, 13, 14, 15, 16], name="stimulus_presentation_id"),
    )
    counts = pd.DataFrame({5: [4, 9, 6, 1, 7, 2]}, index=table.index)
    return SimpleNamespace(table=table, counts=counts)


def test_conditions_are_trial_averaged_and_sorted():
    c = gabor_conditions(toy_responses(), 5)
    assert c["mean_count"].tolist() == [8.0, 5.0, 1.5]
    assert c["n"].tolist() == [2.0, 2.0, 2.0]
    assert c.loc[0, ["orientation_deg", "x_deg", "y_deg", "size_deg"]].tolist() == [
        45.0,
        10.0,
        10.0,
        20.0,
    ]
    with pytest.raises(MeireportError, match="unit_id: 6"):
        gabor_conditions(toy_responses(), 6)


def test_session_gabor_renders_recorded_position_and_orientation():
    """The seed drew only the orientation, always at the image centre."""
    sg = session_gabor(toy_responses(), 5, GEOM, k=1)
    assert np.allclose(sg.image, render_gabor(GEOM, 10.0, 10.0, 45.0, 0.08, 20.0, 0.0, 0.8))
    col, row = GEOM.deg_to_px(10.0, 10.0)
    assert energy_centre(sg.image, background=0.5) == pytest.approx((row, col), abs=0.5)
    two = session_gabor(toy_responses(), 5, GEOM, k=2)
    assert (two.x_deg, two.y_deg) == (-5.0, 5.0)
    assert len(two.conditions) == 2
    with pytest.raises(MeireportError, match="k: expected an integer >= 1"):
        session_gabor(toy_responses(), 5, k=0)


def test_session_gabor_recovers_rf_position(default_session):
    from meireport.extract import gabor_responses
    from meireport.sources import open_session

    truth = default_session.truth
    with open_session(default_session.cache_dir) as s:
        gr = gabor_responses(s)
        geom = s.geometry
    errors = []
    for u in gr.counts.columns:
        i = int(truth.index_of([u])[0])
        if truth.kind[i] not in ("simple", "complex"):
            continue
        sg = session_gabor(gr, u, geom)
        errors.append(
            np.hypot(sg.x_deg - truth.rf_params["x_deg"][i], sg.y_deg - truth.rf_params["y_deg"][i])
        )
    errors = np.array(errors)
    assert len(errors) > 40
    assert np.median(errors) < 6.0  # the gabor grid is 10 deg
    assert np.mean(errors < 10.0) >= 0.7


# ---------------------------------------------------------------------------- search
def unit_rf(x, y, ori, sf, size, phase=0.0):
    w = render_gabor(GEOM, x, y, ori, sf, size, phase=phase, contrast=1.0) - 0.5
    w -= w.mean()
    return w / np.linalg.norm(w)


class SmallCNN(nn.Module):
    """A seeded, randomly initialised conv net with an ELU + 1 output."""

    def __init__(self, seed: int):
        super().__init__()
        torch.manual_seed(seed)
        self.core = nn.Sequential(nn.Conv2d(1, 4, 9, padding=4), nn.ELU(), nn.AvgPool2d(2),
                                  nn.Conv2d(4, 4, 5, padding=2), nn.ELU())
        self.readout = nn.Linear(4 * 30 * 48, 1)

    def forward(self, x):
        return nn.functional.elu(self.readout(self.core(x).flatten(1)))[:, 0] + 1


QUICK = GaborSearchConfig(n_orientations=6, sfs_cpd=(0.04, 0.08, 0.16), n_phases=2,
                          sizes_deg=(15.0, 30.0), position_step_deg=20.0, n_positions=2,
                          n_refine=1, refine_iters=5)

#: Results of the first implementation (one model call per 512 patches, one refinement at a
#: time; before the speed-up), for the searches below: the speed-up must not change them.
REFERENCE = {
    "linear": ({"x_deg": -21.97265625, "y_deg": 13.0078125, "orientation_deg": 124.98046875,
                "sf_cpd": 0.1098784251012662, "size_deg": 27.979980381416496,
                "phase": 0.9947041494578683}, 4.102590560913086, 6552),
    "energy": ({"x_deg": 15.0, "y_deg": -7.96875, "orientation_deg": 39.375,
                "sf_cpd": 0.07013430016099323, "size_deg": 35.03061492688635,
                "phase": 1.474754703205484}, 4.394869327545166, 3324),
    "cnn": ({"x_deg": 10.546875, "y_deg": -13.828125, "orientation_deg": 130.546875,
             "sf_cpd": 0.03840845746838795, "size_deg": 39.968126841025686,
             "phase": 1.3062008415814448}, 1.1448251008987427, 6552),
    "cnn_quick": ({"x_deg": -20.0, "y_deg": 20.0, "orientation_deg": 30.0,
                   "sf_cpd": 0.09797958971132711, "size_deg": 86.70000000000002,
                   "phase": 3.141592653589793}, 0.9863521456718445, 1324),
}


def assert_reference(res, name, mean=None, std=None):
    params, response, n = REFERENCE[name]
    assert res.params == pytest.approx(params, rel=1e-3, abs=1e-3)
    assert res.response == pytest.approx(response, rel=1e-5) and res.n_evaluated == n
    ref = render_gabors(GEOM, **params)
    ref = ref if mean is None else equalize(ref, mean, std)
    assert pixel_correlation(res.image, ref[0]) >= 0.999


def test_search_recovers_a_linear_gabor_unit():
    truth = (-22.0, 13.0, 125.0, 0.11, 28.0)
    res = gabor_search(LinearModel(unit_rf(*truth, phase=1.0)), GEOM, mean=0.5, std=0.06)
    p = res.params
    assert np.hypot(p["x_deg"] - truth[0], p["y_deg"] - truth[1]) < 3.0
    assert circ_diff(p["orientation_deg"], truth[2]) < 5.0
    assert p["sf_cpd"] == pytest.approx(truth[3], rel=0.15)
    assert p["size_deg"] == pytest.approx(truth[4], rel=0.35)
    assert res.response >= res.grid_response > 0
    assert res.image.mean() == pytest.approx(0.5, abs=1e-6)
    assert res.image.std() == pytest.approx(0.06, abs=1e-6)
    assert set(res.summary()) >= {"gabor_x_deg", "gabor_pred", "gabor_search_seconds"}
    assert_reference(res, "linear", 0.5, 0.06)


def test_search_on_an_energy_unit_finds_orientation_and_frequency():
    even = unit_rf(15.0, -8.0, 40.0, 0.07, 35.0)
    odd = unit_rf(15.0, -8.0, 40.0, 0.07, 35.0, phase=np.pi / 2)
    cfg = GaborSearchConfig(n_orientations=8, sizes_deg=(20.0, 40.0), refine_iters=15)
    res = gabor_search(EnergyModel(even, odd), GEOM, mean=0.5, std=0.06, config=cfg)
    assert circ_diff(res.params["orientation_deg"], 40.0) < 6.0
    assert res.params["sf_cpd"] == pytest.approx(0.07, rel=0.2)
    assert np.hypot(res.params["x_deg"] - 15.0, res.params["y_deg"] + 8.0) < 5.0
    assert_reference(res, "energy", 0.5, 0.06)


def test_search_on_a_cnn_matches_the_first_implementation():
    res = gabor_search(SmallCNN(0), GEOM, mean=0.45, std=0.15)
    assert_reference(res, "cnn", 0.45, 0.15)
    assert_reference(gabor_search(SmallCNN(1), GEOM, config=QUICK), "cnn_quick")


def test_batches_and_the_probe_bank_do_not_change_the_search():
    model = SmallCNN(1)
    _PROBE_BANKS.clear()
    first = gabor_search(model, GEOM, mean=0.45, std=0.15, config=QUICK)
    assert len(_PROBE_BANKS) == 1  # the position grid's patches, kept for the next unit
    again = gabor_search(model, GEOM, mean=0.45, std=0.15, config=QUICK)
    small = gabor_search(model, GEOM, mean=0.45, std=0.15,
                         config=GaborSearchConfig(**(QUICK.to_dict() | {"batch_size": 5})))
    for res in (again, small):
        assert res.params == first.params and res.response == first.response
        assert np.array_equal(res.image, first.image) and res.n_evaluated == first.n_evaluated
    assert len(_PROBE_BANKS) == 1
    gabor_search(model, GEOM, mean=0.5, std=0.1, config=QUICK)  # another footing: a new bank
    assert len(_PROBE_BANKS) == 2


@pytest.mark.gpu
def test_search_on_the_gpu_matches_the_cpu():
    assert torch.cuda.is_available(), "the gpu tests need a GPU (nox -s gpu on a GPU machine)"
    cpu = gabor_search(SmallCNN(0), GEOM, mean=0.45, std=0.15, config=QUICK)
    gpu = gabor_search(SmallCNN(0).cuda(), GEOM, mean=0.45, std=0.15, config=QUICK)
    assert isinstance(gpu.image, np.ndarray) and gpu.n_evaluated == cpu.n_evaluated
    assert gpu.params == pytest.approx(cpu.params, rel=1e-3, abs=1e-3)
    assert pixel_correlation(gpu.image, cpu.image) >= 0.999


def test_search_at_equal_footing_beats_every_grid_gabor_shown_the_same_way():
    w = unit_rf(5.0, 0.0, 80.0, 0.09, 30.0)
    model = LinearModel(w)
    cfg = GaborSearchConfig(
        n_orientations=6,
        sfs_cpd=(0.05, 0.09),
        sizes_deg=(30.0,),
        position_step_deg=20.0,
        refine_iters=8,
    )
    res = gabor_search(model, GEOM, mean=0.45, std=0.15, config=cfg)
    rivals = equalize(
        render_gabors(
            GEOM,
            x_deg=0.0,
            y_deg=0.0,
            orientation_deg=[0.0, 80.0],
            sf_cpd=0.09,
            size_deg=30.0,
            phase=0.0,
        ),
        0.45,
        0.15,
    )
    drive = ((rivals - 0.5) * w).sum(axis=(1, 2))
    assert res.response >= drive.max()


def test_search_without_footing_stays_within_bounds():
    w = unit_rf(0.0, 0.0, 0.0, 0.05, 60.0)
    cfg = GaborSearchConfig(
        n_orientations=4,
        sfs_cpd=(0.05,),
        sizes_deg=(60.0,),
        position_step_deg=30.0,
        refine_iters=20,
    )
    res = gabor_search(LinearModel(w), GEOM, config=cfg)
    assert res.params["size_deg"] <= 2 * 96 * 1.5 + 1e-9
    assert res.image.max() <= 1 and res.image.min() >= 0


def test_search_input_checks():
    with pytest.raises(MeireportError, match="model: expected a callable"):
        gabor_search("not a model")
    with pytest.raises(MeireportError, match="mean/std"):
        gabor_search(LinearModel(np.zeros((60, 96))), mean=0.5)
    with pytest.raises(MeireportError, match="sfs_cpd"):
        GaborSearchConfig(sfs_cpd=())
    with pytest.raises(MeireportError, match="n_phases"):
        GaborSearchConfig(n_phases=0)
    with pytest.raises(MeireportError, match="batch_size"):
        GaborSearchConfig(batch_size=0)
    assert GaborSearchConfig().batch_size is None  # 32 on the CPU, 512 on a GPU


@pytest.mark.parametrize("sf", [0.06, 0.12])
def test_fit_gabor_reads_a_gabors_frequency_where_the_spectrum_peak_is_pulled_down(sf):
    """A Gabor fit gives a Gabor's SF (10 %) and orientation (5 deg), also with a faint broad
    blob added (a tenth of the Gabor's amplitude), which pulls the power spectrum's peak far
    below it: the MEI-vs-Gabor page's fitted SF against its spectral peak."""
    from meireport.mei import fit_gabor, peak_frequency

    gabor = render_gabor(GEOM, 25.0, -8.0, 120.0, sf, 30.0, phase=0.5, contrast=0.6) - 0.5
    rows, cols = np.mgrid[: GEOM.shape[0], : GEOM.shape[1]]
    blob = 0.1 * np.abs(gabor).max() * np.exp(-((rows - 30) ** 2 + (cols - 60) ** 2) / 450)
    cfg = GaborSearchConfig(position_step_deg=20.0, refine_iters=20)
    for img, clean in ((0.5 + gabor, True), (0.5 + gabor + blob, False)):
        fit = fit_gabor(img, GEOM, mean=float(img.mean()), std=float(img.std()), config=cfg)
        assert fit.params["sf_cpd"] == pytest.approx(sf, rel=0.1)
        assert circ_diff(fit.params["orientation_deg"], 120.0) <= 5
        assert fit.response > (0.99 if clean else 0.85)  # its pixel correlation with the image
        peak = peak_frequency(img, GEOM)["cycles_per_deg"]
        assert abs(peak / sf - 1) <= 0.1 if clean else peak < 0.5 * sf
    with pytest.raises(MeireportError, match="image: expected"):
        fit_gabor(np.full(GEOM.shape, 0.5), GEOM, mean=0.5, std=0.1)
