"""``run.device``: resolving it, and training / checkpoints / prediction on the device asked for.

This machine has no GPU: CUDA itself is not exercised, only that ``"auto"`` would pick it, that
``"cuda"`` without one fails in one line, and that asking for the CPU changes nothing.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from meireport.errors import MeireportError
from meireport.models import (
    CNNConfig,
    CoreConfig,
    GaborSet,
    LNConfig,
    ReadoutConfig,
    ResponseData,
    TrainConfig,
    fit_model,
    load_model,
    model_device,
    resolve_device,
)
from meireport.models.evaluate import predict_counts

pytestmark = pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad")

NO_GPU = (
    "run.device: cuda was asked for but torch sees no GPU (torch.cuda.is_available() is False); "
    "use 'auto' or 'cpu'"
)
SHAPE = (20, 30)
CORE = CoreConfig(hidden_channels=4, layers=2, input_kern=5, hidden_kern=3)


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_torch_thread):
    """Every test of this module with torch on one thread (conftest)."""


@pytest.fixture()
def no_gpu(monkeypatch):
    """Torch sees no GPU, whatever the machine has."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture(scope="module")
def data():
    """Two tuned units on 60 small noise images, with a few gabor conditions."""
    rng = np.random.default_rng(0)
    imgs = rng.random((60, *SHAPE)).astype(np.float32)
    d1 = (imgs[:, 6:12, 10:18] - 0.5).sum(axis=(1, 2))
    d2 = (imgs[:, 4:10, 14:22] - 0.5).sum(axis=(1, 2))
    trials = rng.poisson(np.exp(0.3 * np.stack([d1, -d2]))[:, :, None] * np.ones((1, 1, 6)))
    g = GaborSet(
        rng.random((5, 4, *SHAPE)).astype(np.float32),
        rng.random((2, 5)),
        np.full(5, 10),
        pd.DataFrame({"condition": range(5)}),
    )
    return ResponseData(imgs, trials.astype(float), [3, 9], np.arange(60), gabors=g)


FITS = {
    "ln": dict(
        kind="ln",
        model_config=LNConfig(input_shape=SHAPE),
        train_config=TrainConfig(max_epochs=8, n_boot=100),
    ),
    "cnn-ensemble-gabors": dict(
        kind="cnn",
        model_config=CNNConfig(core=CORE, input_shape=SHAPE),
        train_config=TrainConfig(max_epochs=4, n_boot=100, gabors=True, ensemble=2),
    ),
    "cnn-factorized-crop": dict(
        kind="cnn",
        unit_ids=[3],
        rf_centres=[(14.0, 9.0)],
        model_config=CNNConfig(
            core=CORE,
            input_shape=SHAPE,
            readout=ReadoutConfig(kind="factorized"),
            crop_size=(12, 12),
        ),
        train_config=TrainConfig(max_epochs=4, n_boot=100, loss="mse"),
    ),
}


def _same_fit(a, b) -> None:
    """Bit-identical fits (training time aside)."""
    pd.testing.assert_frame_equal(
        a.metrics.drop(columns="seconds"), b.metrics.drop(columns="seconds"), check_exact=True
    )
    strip = [[{k: v for k, v in r.items() if k != "seconds"} for r in f.history] for f in (a, b)]
    assert strip[0] == strip[1]
    assert a.test == b.test
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


# --------------------------------------------------------------------------------------------
# resolve_device
# --------------------------------------------------------------------------------------------
def test_resolve_device_on_a_cpu_machine(no_gpu):
    assert resolve_device() == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")


def test_resolve_device_follows_torch():
    want = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == want


def test_cuda_without_gpu_is_one_line(no_gpu):
    for value in ("cuda", torch.device("cuda")):
        with pytest.raises(MeireportError) as e:
            resolve_device(value)
        assert str(e.value) == NO_GPU


@pytest.mark.parametrize("value", ["tpu", "CPU", "cuda:0", "", None, 1])
def test_unknown_device_names_the_value_and_the_choices(value):
    with pytest.raises(MeireportError) as e:
        resolve_device(value)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith("run.device: ")
    assert repr(value) in msg
    assert "'auto', 'cpu', 'cuda'" in msg


def test_auto_picks_cuda_when_torch_sees_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    d = resolve_device("auto")
    assert isinstance(d, torch.device) and d.type == "cuda"
    assert resolve_device("cuda").type == "cuda"


# --------------------------------------------------------------------------------------------
# training, prediction, checkpoints
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(FITS))
def test_cpu_fit_is_bit_identical_to_the_default(data, name, no_gpu):
    default = fit_model(data, **FITS[name])
    for device in ("cpu", torch.device("cpu"), "auto"):
        fit = fit_model(data, **FITS[name], device=device)
        _same_fit(default, fit)
        assert model_device(fit.model) == torch.device("cpu")
        np.testing.assert_array_equal(default.predict(data.images), fit.predict(data.images))


def test_fit_rejects_an_unusable_device_before_training(data, no_gpu):
    with pytest.raises(MeireportError, match="run.device: expected one of"):
        fit_model(data, **FITS["ln"], device="tpu")
    with pytest.raises(MeireportError) as e:
        fit_model(data, **FITS["ln"], device="cuda")
    assert str(e.value) == NO_GPU


def test_checkpoint_holds_cpu_tensors_and_loads_on_the_cpu(data, tmp_path, no_gpu):
    fit = fit_model(data, **FITS["cnn-ensemble-gabors"], device="cpu")
    path = fit.save(tmp_path / "model.pt")
    raw = torch.load(path, weights_only=True)  # no map_location: tensors as written
    assert raw["state_dict"] and all(v.device.type == "cpu" for v in raw["state_dict"].values())
    for device in (None, "cpu", "auto"):
        back = load_model(path, device=device)
        assert model_device(back.model) == torch.device("cpu")
        assert not back.model.training
        np.testing.assert_array_equal(back.predict(data.images), fit.predict(data.images))
        for a, b in zip(back.predict_with_spread(data.images), fit.predict_with_spread(data.images),
                        strict=True):
            np.testing.assert_array_equal(a, b)
    with pytest.raises(MeireportError) as e:
        load_model(path, device="cuda")
    assert str(e.value) == NO_GPU
    with pytest.raises(MeireportError, match="run.device: expected one of"):
        load_model(path, device="gpu")


def test_predict_counts_takes_arrays_and_tensors(data):
    fit = fit_model(data, **FITS["ln"])
    x = data.images[:9]
    want = predict_counts(fit.model, x, batch_size=4)
    assert want.dtype == np.float64 and want.shape == (9, 2)
    for same in (torch.as_tensor(x), x.astype(np.float64)):
        np.testing.assert_array_equal(predict_counts(fit.model, same, batch_size=4), want)


@pytest.mark.gpu
@pytest.mark.parametrize("name", sorted(FITS))
def test_cuda_fit_matches_the_cpu_fit(data, name):
    """On a GPU: the same seeds give the same model within float tolerance (``nox -s gpu``)."""
    assert torch.cuda.is_available(), "the gpu tests need a GPU (nox -s gpu on a GPU machine)"
    cpu = fit_model(data, **FITS[name], device="cpu")
    gpu = fit_model(data, **FITS[name], device="cuda")
    assert model_device(gpu.model).type == "cuda"
    a, b = cpu.predict(data.images), gpu.predict(data.images)
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] >= 0.999
    np.testing.assert_allclose(cpu.metrics["test_corr"], gpu.metrics["test_corr"], atol=0.02)
