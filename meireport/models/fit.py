"""Fitting per-neuron and shared-core models: the training loop, early stopping, ensembles."""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import nn

from meireport.errors import MeireportError
from meireport.models.checkpoint import TrainedModel
from meireport.models.config import MODEL_KINDS, TrainConfig
from meireport.models.data import ResponseData, Split, make_split
from meireport.models.device import resolve_device
from meireport.models.evaluate import evaluate, pearson, predict_counts
from meireport.models.ln import LNConfig, LNModel
from meireport.models.network import CNNConfig, CNNModel, Ensemble

__all__ = [
    "fit_model",
]


# --------------------------------------------------------------------------------------------
# configuration
# --------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------------
def _loss(pred: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "poisson":
        return (pred - target * torch.log(pred + 1e-8)).mean()
    return (pred - target).pow(2).mean()


def _corr_t(pred: np.ndarray, obs: np.ndarray) -> float:
    r = pearson(pred.T, obs.T, axis=1)
    return float(np.nanmean(r)) if np.isfinite(r).any() else -1.0


@dataclass
class _Tensors:
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: np.ndarray
    g_images: torch.Tensor | None = None
    g_targets: torch.Tensor | None = None
    g_weight: float = 1.0


def _tensors(
    data: ResponseData, rows: np.ndarray, split: Split, cfg: TrainConfig, device: torch.device
) -> _Tensors:
    """Training and validation tensors on ``device`` (validation targets stay numpy)."""
    means = data.means()[rows]
    tr, va = data.image_rows(split.train), data.image_rows(split.val)
    t = _Tensors(
        x_train=torch.as_tensor(data.images[tr]).to(device),
        y_train=torch.as_tensor(means[:, tr].T, dtype=torch.float32).to(device),
        x_val=torch.as_tensor(data.images[va]).to(device),
        y_val=means[:, va].T,
    )
    if np.isnan(means[:, tr]).any() or np.isnan(means[:, va]).any():
        raise MeireportError("trials: a unit has an image without any valid trial")
    if cfg.gabors:
        if data.gabors is None:
            raise MeireportError(
                "gabors: TrainConfig(gabors=True) needs ResponseData with gabors "
                "(load_responses(..., gabors=True))"
            )
        g = data.gabors
        t.g_images = torch.as_tensor(g.images).to(device)
        t.g_targets = torch.as_tensor(g.responses[rows].T, dtype=torch.float32).to(device)
        if cfg.gabor_weight is None:
            n_nat = np.isfinite(data.trials[rows[0]]).sum(axis=1).mean()
            t.g_weight = float(np.mean(g.n_repeats) / max(n_nat, 1))
        else:
            t.g_weight = float(cfg.gabor_weight)
    return t


def _batches(t: _Tensors, cfg: TrainConfig, gen: torch.Generator) -> list[tuple[str, torch.Tensor]]:
    """Shuffled index batches (drawn on the CPU from ``gen``: the same on every device)."""
    bs = int(cfg.batch_size)
    out = [("nat", b) for b in torch.randperm(len(t.x_train), generator=gen).split(bs)]
    if t.g_images is not None:
        out += [("gab", b) for b in torch.randperm(len(t.g_images), generator=gen).split(bs)]
    order = torch.randperm(len(out), generator=gen).tolist()
    return [out[i] for i in order]


def _step_loss(model: nn.Module, t: _Tensors, kind: str, idx: torch.Tensor, loss: str):
    idx = idx.to(t.x_train.device)
    if kind == "nat":
        return _loss(model(t.x_train[idx]), t.y_train[idx], loss)
    imgs = t.g_images[idx]  # b x phases x rows x cols
    b, ph = imgs.shape[:2]
    pred = model(imgs.reshape(b * ph, *imgs.shape[2:])).reshape(b, ph, -1).mean(dim=1)
    return t.g_weight * _loss(pred, t.g_targets[idx], loss)


def _train_one(model: nn.Module, t: _Tensors, cfg: TrainConfig, seed: int, desc: str,
               keep_start: bool = False):
    """Adam + plateau LR schedule + early stopping on validation correlation; best restored.

    With ``keep_start`` (fine-tuning trained weights) the starting weights compete as epoch 0:
    they are kept when no epoch beats their validation correlation.
    """
    from tqdm.auto import tqdm

    gen = torch.Generator().manual_seed(int(seed))  # CPU generator: index shuffling only
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
        opt, mode="max", factor=cfg.lr_factor, patience=cfg.lr_patience, min_lr=cfg.min_lr
    )
    best, best_state, since, history = -np.inf, copy.deepcopy(model.state_dict()), 0, []
    best_epoch = 0
    if keep_start:
        best = _corr_t(predict_counts(model, t.x_val), t.y_val)
    bar = tqdm(range(1, cfg.max_epochs + 1), desc=desc, disable=not cfg.progress, leave=False)
    for epoch in bar:
        t0 = time.perf_counter()
        model.train()
        losses, regs = [], []
        for kind, idx in _batches(t, cfg, gen):
            opt.zero_grad()
            data_loss = _step_loss(model, t, kind, idx, cfg.loss)
            reg = model.regularizer()
            (data_loss + reg).backward()
            opt.step()
            model.constrain()
            losses.append(float(data_loss.detach()))
            regs.append(float(reg.detach()) if torch.is_tensor(reg) else float(reg))
        val_pred = predict_counts(model, t.x_val)
        val_corr = _corr_t(val_pred, t.y_val)
        val_loss = float(_loss(torch.as_tensor(val_pred), torch.as_tensor(t.y_val), cfg.loss))
        lr = opt.param_groups[0]["lr"]
        sched.step(val_corr)
        history.append(
            {
                "epoch": epoch,
                "train_loss": float(np.mean(losses)),
                "regularizer": float(np.mean(regs)),
                "val_loss": val_loss,
                "val_corr": val_corr,
                "lr": float(lr),
                "seconds": time.perf_counter() - t0,
            }
        )
        bar.set_postfix(val_corr=f"{val_corr:.3f}")
        if val_corr > best + cfg.min_delta:
            best, best_state, since = val_corr, copy.deepcopy(model.state_dict()), 0
            best_epoch = epoch
        else:
            since += 1
            if since >= cfg.patience:
                break
    model.load_state_dict(best_state)
    model.eval()
    for row in history:
        row["best"] = row["epoch"] == best_epoch
    return history


def _check_centres(rf_centres, n_units: int):
    """``n_units x 2`` float array (NaN rows for None entries: no RF centre known) or None."""
    if rf_centres is None:
        return None
    items = list(rf_centres) if isinstance(rf_centres, list | tuple) else None
    if items is not None and n_units == 1 and len(items) == 2 and all(
        v is not None and np.ndim(v) == 0 for v in items
    ):
        items = [items]  # one (col, row) pair for one unit
    if items is not None:
        rows = [(np.nan, np.nan) if c is None else c for c in items]
        c = np.asarray(rows, dtype=np.float64)
    else:
        c = np.asarray(rf_centres, dtype=np.float64)
        if c.shape == (2,) and n_units == 1:
            c = c[None]
    if c.shape != (n_units, 2):
        raise MeireportError(
            f"rf_centres: expected {n_units} (col, row) pixel pairs (or one pair for one unit), "
            f"got shape {c.shape}"
        )
    return None if np.isnan(c).all() else c


def _build(kind: str, config, n_units: int, centres, input_shape) -> nn.Module:
    crop_centre = None
    if config.crop_size is not None:
        if n_units != 1:
            raise MeireportError("crop_size: an RF-centred crop needs exactly one unit")
        if centres is None or not np.isfinite(centres).all():
            raise MeireportError("rf_centres: crop_size needs the unit's RF centre (col, row)")
        crop_centre = tuple(centres[0])
    if tuple(config.input_shape) != tuple(input_shape):
        config = replace(config, input_shape=tuple(input_shape))
    if kind == "ln":
        return LNModel(config, n_units, crop_centre=crop_centre)
    return CNNModel(config, n_units, rf_centres=centres, crop_centre=crop_centre)


def fit_model(
    data: ResponseData,
    unit_ids=None,
    kind: str = "cnn",
    model_config: CNNConfig | LNConfig | None = None,
    train_config: TrainConfig | None = None,
    rf_centres=None,
    oracle=None,
    truth=None,
    split: Split | None = None,
    device=None,
    start: nn.Module | None = None,
) -> TrainedModel:
    """Fit an LN or CNN model to some units' natural-scene responses and evaluate it.

    Parameters
    ----------
    data : ResponseData
        From :func:`load_responses`.
    unit_ids : sequence of int, optional
        Units to model (default: all of ``data``). Several units with ``kind="cnn"`` give the
        population model (one shared core); with ``kind="ln"`` independent filters.
    kind : {"cnn", "ln"}
        Model family.
    model_config : CNNConfig or LNConfig, optional
        Architecture, regularisation and ``crop_size`` (the RF-centred crop).
    train_config : TrainConfig, optional
        Loss, optimiser, early stopping, split, gabor augmentation, ensemble size, metrics.
    rf_centres : array_like, optional
        Mapped RF centres ``(col, row)`` in model pixels, one per unit (or one pair): readout
        initialisation and crop centre. ``None`` entries or NaN rows: unknown (the readout
        starts near the image centre; a crop is then impossible).
    oracle : float, sequence or mapping, optional
        Jackknife oracle correlation per unit (:func:`meireport.select.oracle_correlation`),
        for ``frac_oracle = single_trial_corr / oracle``.
    truth : GroundTruth, optional
        Simulated sessions: adds the correlation with the true rate on new images.
    split : Split, optional
        Image split (default: :func:`make_split` with the config's fractions and seed).
    device : str or torch.device, optional
        Where to train (:func:`resolve_device`: ``"auto"``, ``"cpu"``, ``"cuda"``); None: the
        CPU. Weights are initialised on the CPU from the seed, then moved; batches are shuffled
        on the CPU, so a CPU fit is bit-identical whatever is asked and a GPU fit differs only
        by floating-point rounding.
    start : Module, optional
        Trained weights to fit further instead of a new model (a copy is trained; it must
        model ``len(unit_ids)`` units): e.g. a unit's readout of a shared core
        (:meth:`TrainedModel.subset`), fine-tuned on that unit's own responses. The start
        competes in early stopping as epoch 0, so it is returned unchanged when no epoch beats
        its validation correlation.

    Returns
    -------
    TrainedModel
        Its model stays on ``device``; metrics and predictions are numpy on the CPU.

    Examples
    --------
    >>> from meireport.models.data import ResponseData
    >>> rng = np.random.default_rng(0)
    >>> imgs = rng.random((40, 12, 12))
    >>> drive = (imgs[:, 4:8, 4:8] - 0.5).sum(axis=(1, 2))
    >>> trials = rng.poisson(np.exp(0.5 * drive)[None, :, None] * np.ones((1, 1, 8)))
    >>> d = ResponseData(imgs, trials, [7], np.arange(40))
    >>> fit = fit_model(d, kind="ln", model_config=LNConfig(input_shape=(12, 12)),
    ...                 train_config=TrainConfig(max_epochs=30, val_frac=0.2, test_frac=0.2))
    >>> bool(fit.metrics.loc[7, "test_corr"] > 0.5)
    True
    >>> next(fit.model.parameters()).device
    device(type='cpu')
    """
    if kind not in MODEL_KINDS:
        raise MeireportError(f"kind: expected one of {MODEL_KINDS}, got {kind!r}")
    cfg = TrainConfig() if train_config is None else train_config
    if model_config is None:
        model_config = CNNConfig() if kind == "cnn" else LNConfig()
    expected = CNNConfig if kind == "cnn" else LNConfig
    if not isinstance(model_config, expected):
        raise MeireportError(
            f"model_config: expected a {expected.__name__} for kind={kind!r}, "
            f"got {type(model_config).__name__}"
        )
    if not isinstance(data, ResponseData):
        raise MeireportError(f"data: expected ResponseData, got {type(data).__name__}")
    dev = torch.device("cpu") if device is None else resolve_device(device)
    ids = data.unit_ids if unit_ids is None else np.atleast_1d(np.asarray(unit_ids, np.int64))
    if start is not None and getattr(start, "n_units", None) != len(ids):
        raise MeireportError(f"start: expected a model of {len(ids)} unit(s), got "
                             f"{getattr(start, 'n_units', type(start).__name__)}")
    rows = data.rows(ids)
    centres = _check_centres(rf_centres, len(ids))
    split = make_split(data.image_ids, cfg.val_frac, cfg.test_frac, cfg.split_seed) if (
        split is None
    ) else split
    t = _tensors(data, rows, split, cfg, dev)
    t_start = time.perf_counter()
    members, history = [], []
    for k in range(cfg.ensemble):
        seed = cfg.seed + k
        torch.manual_seed(seed)
        if start is None:
            model = _build(kind, model_config, len(ids), centres, data.images.shape[1:])
            model.init_bias(t.y_train.cpu().mean(dim=0).numpy())
        else:
            model = copy.deepcopy(start)
        model = model.to(dev)
        desc = f"{kind} {ids[0]}" + (f" +{len(ids) - 1}" if len(ids) > 1 else "")
        rows_k = _train_one(model, t, cfg, seed, desc + (f" [{k}]" if cfg.ensemble > 1 else ""),
                            keep_start=start is not None)
        history += [{"member": k} | r for r in rows_k]
        members.append(model)
    model = members[0] if cfg.ensemble == 1 else Ensemble(members).eval()
    seconds = time.perf_counter() - t_start
    metrics, test = evaluate(model, data, ids, split, cfg, oracle=oracle, truth=truth)
    metrics["seconds"] = seconds / len(ids)
    metrics["epochs"] = len(history) / cfg.ensemble
    return TrainedModel(
        model=model,
        unit_ids=ids,
        kind=kind,
        split=split,
        train_config=cfg,
        history=history,
        metrics=metrics,
        test=test,
        seconds=seconds,
    )


# --------------------------------------------------------------------------------------------
# trained model and checkpoints
# --------------------------------------------------------------------------------------------
