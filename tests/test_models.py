"""Model modules: shapes, gradients, regularisers, readout geometry, crop, configs (no training)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from meireport.errors import MeireportError
from meireport.models import (
    CNNConfig,
    CNNModel,
    CoreConfig,
    Ensemble,
    FactorizedReadout,
    InputCrop,
    LNConfig,
    LNModel,
    PointPyramidReadout,
    Pyramid,
    ReadoutConfig,
    Stacked2dCore,
    build_model,
    laplace_l2,
)

pytestmark = pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad")

SMALL = CoreConfig(hidden_channels=4, layers=2, input_kern=7, hidden_kern=3)


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)


# --------------------------------------------------------------------------------------------
# core
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("cfg", "shape", "expected"),
    [
        (CoreConfig(), (60, 96), (48, 30, 48)),
        (SMALL, (60, 96), (8, 30, 48)),
        (CoreConfig(hidden_channels=3, layers=1, pooling=1), (32, 20), (3, 32, 20)),
        (CoreConfig(hidden_channels=2, layers=3, pooling=3), (33, 33), (6, 11, 11)),
    ],
)
def test_core_output_shape(cfg, shape, expected):
    core = Stacked2dCore(cfg)
    out = core(torch.rand(2, 1, *shape))
    assert tuple(out.shape) == (2, *expected)
    assert core.output_shape(shape) == expected[1:]
    assert core.outchannels == expected[0]


def test_core_pixel_mapping_roundtrip():
    core = Stacked2dCore(CoreConfig(pooling=2))
    col, row = core.to_output_px(np.array([0.5, 20.5]), np.array([1.5, 59.5]))
    np.testing.assert_allclose(col, [0.0, 10.0])
    np.testing.assert_allclose(core.to_input_px(col, row), ([0.5, 20.5], [1.5, 59.5]))


def test_core_gradients_reach_every_parameter_and_the_input():
    core = Stacked2dCore(SMALL)
    x = torch.rand(3, 1, 20, 24, requires_grad=True)
    (core(x).pow(2).sum() + core.regularizer()).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for name, p in core.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_core_regularizer_combines_laplace_and_group_sparsity():
    core = Stacked2dCore(CoreConfig(hidden_channels=3, layers=3, gamma_input=2.0, gamma_hidden=0.5))
    expected = 2.0 * core.laplace() + 0.5 * core.group_sparsity()
    assert float(core.regularizer().detach()) == pytest.approx(float(expected.detach()))
    off = Stacked2dCore(CoreConfig(hidden_channels=3, layers=3, gamma_input=0, gamma_hidden=0))
    assert float(off.regularizer().detach()) == 0.0


def test_group_sparsity_is_mean_kernel_norm():
    core = Stacked2dCore(CoreConfig(hidden_channels=2, layers=2, hidden_kern=3))
    with torch.no_grad():
        core.features[1].conv.weight.fill_(1.0)  # every 3 x 3 kernel has L2 norm 3
    assert core.group_sparsity().item() == pytest.approx(3.0, rel=1e-5)


@pytest.mark.parametrize(
    "kwargs",
    [{"input_kern": 4}, {"hidden_kern": 2}, {"layers": 0}, {"hidden_channels": 1.5},
     {"gamma_input": -1}, {"momentum": 0}],
)
def test_core_config_rejects_bad_values(kwargs):
    name = next(iter(kwargs))
    with pytest.raises(MeireportError, match=name):
        CoreConfig(**kwargs)


# --------------------------------------------------------------------------------------------
# Laplace regulariser
# --------------------------------------------------------------------------------------------
def test_laplace_is_zero_for_constant_and_linear_kernels():
    assert float(laplace_l2(torch.full((4, 2, 9, 9), 3.7))) == 0.0
    yy, xx = torch.meshgrid(torch.arange(9.0), torch.arange(9.0), indexing="ij")
    ramp = (2 * xx - 0.5 * yy)[None, None]
    assert float(laplace_l2(ramp)) == pytest.approx(0.0, abs=1e-10)


def test_laplace_grows_with_roughness():
    rng = np.random.default_rng(0)
    noise = torch.as_tensor(rng.normal(size=(1, 1, 15, 15)))
    penalties = [float(laplace_l2(a * noise)) for a in (0.5, 1.0, 2.0)]
    assert penalties[0] < penalties[1] < penalties[2]
    assert penalties[2] / penalties[1] == pytest.approx(4.0)  # quadratic in amplitude
    # same L2 norm, higher spatial frequency -> more penalty
    xx = torch.arange(15.0)[None, :].expand(15, 15)
    pens = []
    for cycles in (1, 2, 4):
        k = torch.cos(2 * np.pi * cycles * xx / 15)
        pens.append(float(laplace_l2((k / k.norm())[None, None])))
    assert pens[0] < pens[1] < pens[2]


def test_laplace_rejects_small_kernels():
    with pytest.raises(MeireportError, match="3 x 3"):
        laplace_l2(torch.zeros(1, 1, 2, 5))
    with pytest.raises(MeireportError, match="reduction"):
        laplace_l2(torch.zeros(1, 1, 5, 5), reduction="max")


# --------------------------------------------------------------------------------------------
# pyramid and readouts
# --------------------------------------------------------------------------------------------
def test_pyramid_band_pass_levels_ignore_a_constant_image():
    levels = Pyramid(scale_n=3)(torch.full((1, 2, 30, 48), 2.0))
    assert [tuple(v.shape[-2:]) for v in levels] == [(30, 48), (15, 24), (8, 12), (4, 6)]
    inner = levels[0][..., 6:-6, 6:-6]
    assert float(inner.abs().max()) < 1e-5  # band-pass: no response to a constant
    fine = torch.zeros(1, 1, 30, 48)
    fine[..., ::2] = 1.0  # a grating at the finest scale lives in level 0
    lv = Pyramid(scale_n=2)(fine)
    assert float(lv[0][..., 6:-6, 6:-6].std()) > 10 * float(lv[2][..., 2:-2, 2:-2].std())


def test_point_readout_samples_at_its_position():
    """With no pyramid, the readout returns the feature value at its (normalised) position."""
    h, w = 10, 21
    ramp = torch.arange(w, dtype=torch.float32).expand(1, 1, h, w)  # value = column index
    cols = np.array([0.0, 5.0, 20.0])
    pos = np.stack([2 * cols / (w - 1) - 1, np.zeros(3)], axis=1)
    r = PointPyramidReadout(1, 3, ReadoutConfig(scale_n=0), positions=pos)
    with torch.no_grad():
        r.features.fill_(1.0)
    np.testing.assert_allclose(r(ramp).detach().numpy()[0], cols, atol=1e-5)


def test_point_readout_gradients_and_positive_constraint():
    r = PointPyramidReadout(6, 4, ReadoutConfig(scale_n=2))
    x = torch.rand(5, 6, 30, 48, requires_grad=True)
    (r(x).sum() + r.regularizer()).backward()
    for name in ("grid", "features", "bias"):
        assert getattr(r, name).grad is not None, name
    assert r.grid.grad.abs().sum() > 0  # the position is learned
    with torch.no_grad():
        r.features.sub_(1.0)
        r.grid.mul_(50)
    r.constrain()
    assert float(r.features.min()) >= 0 and float(r.grid.abs().max()) <= 1


def _grads(r, x):
    out = r(x)
    return [out, *torch.autograd.grad((out**2).sum(), [x, r.grid, r.features, r.bias])]


@pytest.mark.parametrize("matrices", [True, False])
@pytest.mark.parametrize("n_units", [1, 3])
def test_point_readout_weight_maps_equal_sampling_the_pyramid(monkeypatch, n_units, matrices):
    """Few units: the readout weighs the maps (no pyramid); the same responses and gradients.

    One unit sits exactly on a corner and one on a whole pixel, where ``grid_sample``'s
    gradient is one-sided: the weight maps must give the same one. The sampling maps come from
    the levels' matrices or, for large maps, from autograd: both are checked.
    """
    from meireport.models import readout as readout_module

    if not matrices:
        monkeypatch.setattr(readout_module, "_MATRIX_PIXELS", 0)

    rng = np.random.default_rng(1)
    pos = rng.uniform(-1, 1, (n_units, 2))
    if n_units == 3:
        pos[0] = [1.0, -1.0]
        pos[1] = [2 * 7 / 47 - 1, 2 * 4 / 29 - 1]  # pixel (col 7, row 4) of a 30 x 48 map
    r = PointPyramidReadout(8, n_units, ReadoutConfig(scale_n=3), positions=pos)
    with torch.no_grad():
        r.features.uniform_(0, 1)
        r.bias.uniform_()
    x = torch.randn(5, 8, 30, 48, requires_grad=True)
    maps = _grads(r, x)
    monkeypatch.setattr(readout_module, "_MAPS_UP_TO", 0)  # build and sample the pyramid
    pyramid = _grads(r, x)
    for name, a, b in zip(("responses", "x", "grid", "features", "bias"), maps, pyramid,
                              strict=True):
        scale = float(b.abs().max())
        assert scale > 0, name
        np.testing.assert_allclose(a.detach().numpy(), b.detach().numpy(), atol=1e-5 * scale,
                                   err_msg=name)


def test_point_readout_sampling_maps_are_the_pyramids_adjoint():
    """``sum(K[u, k] * m) == sample(level_k(m), position_u)`` for a random map ``m``."""
    r = PointPyramidReadout(1, 2, ReadoutConfig(scale_n=2), positions=[[0.3, -0.2], [-1, 1]])
    m = torch.randn(1, 1, 15, 22)
    maps = r.sampling_maps((15, 22))
    assert tuple(maps.shape) == (2, 3, 15, 22)
    grid = r.positions()[None, :, None, :]
    for k, lvl in enumerate(Pyramid(2)(m)):
        sampled = torch.nn.functional.grid_sample(lvl, grid, align_corners=True)[0, 0, :, 0]
        np.testing.assert_allclose((maps[:, k] * m[0]).sum(dim=(1, 2)).detach().numpy(),
                                   sampled.numpy(), atol=1e-5)


@pytest.mark.parametrize("pooling", [2, 3])
def test_core_first_layer_equals_convolution_then_pooling(pooling):
    """Layer 0 as one strided convolution gives the seed's conv -> avgpool -> norm -> ELU."""
    core = Stacked2dCore(CoreConfig(hidden_channels=4, layers=2, input_kern=7, pooling=pooling))
    core.eval()
    x = torch.rand(3, 1, 33, 40)
    layer = core.features[0]
    ref = layer.nonlin(layer.norm(layer.pool(layer.conv(x))))
    np.testing.assert_allclose(core(x)[:, :4].detach().numpy(), ref.detach().numpy(),
                               atol=1e-5)
    grad = torch.autograd.grad(core(x)[:, :4].sum(), layer.conv.weight)[0]
    grad_ref = torch.autograd.grad(ref.sum(), layer.conv.weight)[0]
    np.testing.assert_allclose(grad.numpy(), grad_ref.numpy(), rtol=1e-4, atol=1e-5)


def test_point_readout_without_position_starts_near_the_middle():
    nan = np.full((50, 2), np.nan)
    r = PointPyramidReadout(2, 50, ReadoutConfig(init_range=0.1), positions=nan)
    assert float(r.positions().abs().max()) <= 0.1


def test_factorized_readout_mask_starts_at_the_position():
    r = FactorizedReadout((3, 30, 48), 2, ReadoutConfig(kind="factorized"),
                          positions=[[0.5, -0.5], [np.nan, np.nan]])
    m = r.mask.detach()
    row, col = np.unravel_index(int(m[0].argmax()), (30, 48))
    assert abs(col - 0.75 * 47) <= 1 and abs(row - 0.25 * 29) <= 1
    assert float(m[1].std()) == 0.0  # no position: flat
    np.testing.assert_allclose(r.positions()[0].numpy(), [0.5, -0.5], atol=0.05)
    x = torch.rand(4, 3, 30, 48, requires_grad=True)
    (r(x).sum() + r.regularizer()).backward()
    assert r.mask.grad is not None and r.features.grad is not None
    with torch.no_grad():
        r.mask.sub_(1.0)
    r.constrain()
    assert float(r.mask.min()) >= 0


def test_readout_config_accepts_the_british_spelling():
    assert ReadoutConfig(kind="factorised").kind == "factorized"


def test_readout_config_rejects_bad_values():
    with pytest.raises(MeireportError, match="kind"):
        ReadoutConfig(kind="gaussian")
    with pytest.raises(MeireportError, match="init_range"):
        ReadoutConfig(init_range=2)


# --------------------------------------------------------------------------------------------
# crop
# --------------------------------------------------------------------------------------------
def test_crop_centres_on_grey_and_pads_with_grey():
    img = torch.rand(2, 60, 96)
    full = InputCrop((60, 96))(img)
    torch.testing.assert_close(full, img[:, None] - 0.5)
    c = InputCrop((60, 96), (16, 20), centre=(50.0, 30.0))
    left, top = c.offset
    torch.testing.assert_close(c(img), img[:, None, top : top + 16, left : left + 20] - 0.5)
    edge = InputCrop((60, 96), (16, 16), centre=(0.0, 0.0))(torch.ones(1, 60, 96))
    assert float(edge[0, 0, 0, 0]) == 0.0 and float(edge[0, 0, -1, -1]) == 0.5


def test_crop_needs_a_centre():
    with pytest.raises(MeireportError, match="rf_centre"):
        InputCrop((60, 96), (16, 16))
    with pytest.raises(MeireportError, match="rf_centre"):
        InputCrop((60, 96), (16, 16), centre=(np.nan, 3))


@pytest.mark.parametrize("kind", ["cnn", "ln"])
def test_cropped_model_ignores_pixels_outside_the_window(kind):
    if kind == "cnn":
        m = CNNModel(CNNConfig(core=SMALL, crop_size=(20, 20)), crop_centre=(30.0, 25.0))
    else:
        m = LNModel(LNConfig(crop_size=(20, 20)), crop_centre=(30.0, 25.0))
        with torch.no_grad():
            m.weight.normal_()
    m.eval()
    x = torch.rand(2, 60, 96, requires_grad=True)
    y = m(x)
    y.sum().backward()
    g = x.grad.abs().sum(dim=0)
    left, top = m.crop.offset
    assert abs(left + 9.5 - 30) <= 0.5 and abs(top + 9.5 - 25) <= 0.5  # centred window
    inside = torch.zeros_like(g, dtype=torch.bool)
    inside[top : top + 20, left : left + 20] = True
    assert float(g[~inside].max()) == 0.0 and float(g[inside].max()) > 0
    x2 = x.detach().clone()
    x2[:, :10, :] = torch.rand(2, 10, 96)  # rows 0-9 are outside the window
    torch.testing.assert_close(m(x2), y.detach())


# --------------------------------------------------------------------------------------------
# whole models
# --------------------------------------------------------------------------------------------
def test_cnn_shapes_gradients_and_positive_output():
    m = CNNModel(CNNConfig(core=SMALL), n_units=3)
    x = torch.rand(4, 60, 96, requires_grad=True)
    y = m(x)
    assert tuple(y.shape) == (4, 3) and float(y.min()) > 0  # ELU + 1
    (y.sum() + m.regularizer()).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    missing = [n for n, p in m.named_parameters() if p.grad is None]
    assert not missing
    assert tuple(m(torch.rand(60, 96)).shape) == (1, 3)  # one image
    with pytest.raises(MeireportError, match="images: expected"):
        m(torch.rand(2, 50, 50))


@pytest.mark.parametrize("readout", ["point", "factorized"])
@pytest.mark.parametrize("crop", [None, (24, 32)])
def test_readout_starts_at_the_rf_centre(readout, crop):
    centres = [[60.0, 21.0]] if crop else [[60.0, 21.0], [10.0, 50.0], [np.nan, np.nan]]
    cfg = CNNConfig(core=SMALL, readout=ReadoutConfig(kind=readout), crop_size=crop)
    m = CNNModel(cfg, n_units=len(centres), rf_centres=centres,
                 crop_centre=centres[0] if crop else None)
    pos = m.readout_positions_px()
    tol = 0.01 if readout == "point" else 1.5
    np.testing.assert_allclose(pos[0], centres[0], atol=tol)
    if not crop:
        np.testing.assert_allclose(pos[1], centres[1], atol=tol)


def test_cnn_bias_init_matches_the_mean_response():
    m = CNNModel(CNNConfig(core=SMALL), n_units=2).eval()
    with torch.no_grad():
        m.readout.features.zero_()
    m.init_bias([0.4, 7.0])
    np.testing.assert_allclose(m(torch.rand(3, 60, 96)).detach().numpy(), [[0.4, 7.0]] * 3,
                               rtol=1e-5)


@pytest.mark.parametrize("readout", ["point", "factorized"])
def test_a_shared_models_unit_subset_is_its_columns_standalone(readout):
    """A neuron of a shared core, cut out (core + its readout): the same responses and input
    gradients as the full model's column. With 20 units the full point readout samples the
    built pyramid; one unit alone uses weight maps, so this also checks the two paths agree."""
    n = 20
    rng = np.random.default_rng(0)
    cfg = CNNConfig(core=SMALL, readout=ReadoutConfig(kind=readout))
    m = CNNModel(cfg, n_units=n, rf_centres=rng.uniform([5, 5], [90, 55], (n, 2)))
    with torch.no_grad():  # trained-looking, distinct readouts
        for prm in m.readout.parameters():
            prm.add_(0.3 * torch.randn_like(prm))
    m.eval()
    rows = [13, 2]
    sub = m.unit_subset(rows).eval()
    assert sub.n_units == 2 and not sub.training
    x = torch.rand(3, 60, 96, requires_grad=True)
    full = m(x)
    torch.testing.assert_close(sub(x), full[:, rows], atol=1e-5, rtol=1e-5)
    (g_full,) = torch.autograd.grad(full[:, 13].sum(), x)
    (g_sub,) = torch.autograd.grad(sub(x)[:, 0].sum(), x)
    torch.testing.assert_close(g_sub, g_full, atol=1e-5, rtol=1e-4)
    np.testing.assert_allclose(sub.readout_positions_px(), m.readout_positions_px()[rows],
                               atol=1e-4)
    ens = Ensemble([m, CNNModel(cfg, n_units=n).eval()]).eval()
    torch.testing.assert_close(ens.unit_subset([5])(x), ens(x)[:, 5:6], atol=1e-5, rtol=1e-5)
    with pytest.raises(MeireportError, match=r"rows: expected positions in 0\.\.19"):
        m.unit_subset([20])


def test_population_model_refuses_a_crop():
    with pytest.raises(MeireportError, match="crop_size"):
        CNNModel(CNNConfig(core=SMALL, crop_size=(20, 20)), n_units=2, crop_centre=(3, 3))


@pytest.mark.parametrize("nonlin", ["softplus", "exp"])
def test_ln_model(nonlin):
    m = LNModel(LNConfig(nonlinearity=nonlin), n_units=2)
    m.init_bias([0.5, 3.0])
    y = m(torch.full((4, 60, 96), 0.5))
    np.testing.assert_allclose(y.detach().numpy(), [[0.5, 3.0]] * 4, rtol=1e-5)
    x = torch.rand(4, 60, 96, requires_grad=True)
    (m(x).sum() + m.regularizer()).backward()
    assert m.weight.grad is not None and x.grad is not None
    with torch.no_grad():
        m.weight.fill_(1.0)
    assert float(m.regularizer()) == pytest.approx(m.config.gamma_l2 * 2 * 60 * 96)


def test_ln_filter_image_places_the_filter():
    m = LNModel(LNConfig(crop_size=(10, 12)), crop_centre=(2.0, 55.0))  # overhangs two edges
    with torch.no_grad():
        m.weight.fill_(1.0)
    f = m.filter_image()[0].numpy()
    left, top = m.crop.offset
    rows, cols = np.nonzero(f)
    assert rows.min() == max(top, 0) and rows.max() == min(top + 10, 60) - 1
    assert cols.min() == max(left, 0) and cols.max() == min(left + 12, 96) - 1


def test_ln_config_validation():
    with pytest.raises(MeireportError, match="nonlinearity"):
        LNConfig(nonlinearity="relu")
    with pytest.raises(MeireportError, match="crop_size"):
        LNConfig(crop_size=(2, 2))


def test_ensemble_averages_its_members():
    a, b = LNModel(), LNModel()
    a.init_bias(1.0)
    b.init_bias(3.0)
    e = Ensemble([a, b])
    np.testing.assert_allclose(e(torch.full((2, 60, 96), 0.5)).detach().numpy(), 2.0, rtol=1e-5)
    assert tuple(e.members_forward(torch.rand(5, 60, 96)).shape) == (2, 5, 1)
    with pytest.raises(MeireportError, match="same units"):
        Ensemble([LNModel(n_units=1), LNModel(n_units=2)])


@pytest.mark.parametrize(
    "model",
    [
        lambda: CNNModel(CNNConfig(core=SMALL), n_units=2),
        lambda: CNNModel(CNNConfig(core=SMALL, readout=ReadoutConfig(kind="factorized"),
                                   crop_size=(20, 24)), crop_centre=(40.0, 30.0)),
        lambda: LNModel(LNConfig(crop_size=(12, 12)), crop_centre=(5.0, 5.0)),
        lambda: Ensemble([LNModel(), LNModel()]),
    ],
)
def test_build_model_from_spec_reproduces_the_model(model):
    m = model().eval()
    again = build_model(m.spec())
    again.load_state_dict(m.state_dict())
    again.eval()
    x = torch.rand(3, 60, 96)
    torch.testing.assert_close(again(x), m(x))


def test_build_model_rejects_unknown_specs():
    with pytest.raises(MeireportError, match="unknown model class"):
        build_model({"class": "Transformer"})
    with pytest.raises(MeireportError, match="spec"):
        build_model([1, 2])
