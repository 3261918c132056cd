"""A fitted model, saved and loaded (``torch.load(..., weights_only=True)``: nothing runs)."""

from __future__ import annotations

import platform
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from meireport.errors import MeireportError
from meireport.models.config import TrainConfig
from meireport.models.data import Split
from meireport.models.device import resolve_device
from meireport.models.evaluate import predict_counts
from meireport.models.network import Ensemble, build_model

__all__ = [
    "TrainedModel",
    "CHECKPOINT_FORMAT",
    "save_checkpoint",
    "load_model",
]

CHECKPOINT_FORMAT = "meireport-model"
CHECKPOINT_VERSION = 1


def _versions() -> dict:
    import meireport

    return {
        "meireport": str(meireport.__version__),
        "torch": str(torch.__version__),
        "numpy": str(np.__version__),
        "python": platform.python_version(),
    }


def _plain(v):
    """Numpy scalars -> Python scalars (checkpoints load with ``weights_only=True``)."""
    if isinstance(v, np.generic):
        return v.item()
    return v


def save_checkpoint(trained: TrainedModel, path) -> Path:
    """Save a :class:`TrainedModel` with ``torch.save`` (plain values and CPU tensors only).

    The weights are written as CPU tensors whatever device the model trained on, so the file
    loads on a machine without a GPU (:func:`load_model` moves them where asked).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    metrics = trained.metrics.reset_index()
    payload = {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_VERSION,
        "spec": trained.model.spec(),
        "state_dict": {k: v.detach().cpu() for k, v in trained.model.state_dict().items()},
        "unit_ids": [int(u) for u in trained.unit_ids],
        "kind": trained.kind,
        "train_config": trained.train_config.to_dict(),
        "split": trained.split.to_dict(),
        "history": [{k: _plain(v) for k, v in r.items()} for r in trained.history],
        "metrics": {c: [_plain(v) for v in metrics[c].tolist()] for c in metrics.columns},
        "test": trained.test,
        "seconds": float(trained.seconds),
        "extra": trained.extra,
        "versions": _versions(),
    }
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
    return path


def load_model(path, device=None) -> TrainedModel:
    """Load a checkpoint written by :meth:`TrainedModel.save` (``weights_only=True``).

    Parameters
    ----------
    path : str or Path
        The checkpoint file.
    device : str or torch.device, optional
        Where the model goes (:func:`resolve_device`: ``"auto"``, ``"cpu"``, ``"cuda"``);
        None: the CPU. The file is read onto the CPU first, so any checkpoint loads anywhere.

    Returns
    -------
    TrainedModel
        In eval mode, on ``device``.

    Raises
    ------
    MeireportError
        One line when the file is missing, corrupt or truncated, not a meireport model, of
        another format version, or when its weights do not match its model spec; or when
        ``device`` is unknown or a GPU that torch does not see (:func:`resolve_device`).
    """
    path = Path(path)
    dev = torch.device("cpu") if device is None else resolve_device(device)
    if not path.is_file():
        raise MeireportError(f"checkpoint: {path} does not exist")
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # any failure to unpickle means a bad file
        raise MeireportError(
            f"checkpoint: {path} is corrupt or truncated, or not a torch file "
            f"({type(e).__name__})"
        ) from None
    if not isinstance(ck, dict) or ck.get("format") != CHECKPOINT_FORMAT:
        raise MeireportError(f"checkpoint: {path} is not a meireport model checkpoint")
    if ck.get("format_version") != CHECKPOINT_VERSION:
        raise MeireportError(
            f"checkpoint: {path} has format version {ck.get('format_version')!r}, "
            f"expected {CHECKPOINT_VERSION}"
        )
    try:
        model = build_model(ck["spec"])
        model.load_state_dict(ck["state_dict"], strict=True)
        cfg = TrainConfig.from_dict(ck["train_config"])
        metrics = pd.DataFrame(ck["metrics"]).set_index("unit_id")
        split = Split(**{k: tuple(v) for k, v in ck["split"].items()})
        unit_ids = np.asarray(ck["unit_ids"], dtype=np.int64)
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise MeireportError(
            f"checkpoint: {path} does not match its model spec or lacks fields ({msg[:120]})"
        ) from None
    if int(model.n_units) != len(unit_ids):
        raise MeireportError(
            f"checkpoint: {path} has {len(unit_ids)} unit ids for a model of {model.n_units} units"
        )
    model = model.to(dev).eval()
    return TrainedModel(
        model=model,
        unit_ids=unit_ids,
        kind=str(ck.get("kind", "cnn")),
        split=split,
        train_config=cfg,
        history=list(ck.get("history", [])),
        metrics=metrics,
        test=dict(ck.get("test", {})),
        seconds=float(ck.get("seconds", 0.0)),
        extra=dict(ck.get("extra", {})) | {"versions": ck.get("versions", {})},
    )


@dataclass
class TrainedModel:
    """A fitted model with everything needed to trust, reuse or reproduce it.

    Attributes
    ----------
    model : Module
        ``CNNModel``, ``LNModel`` or ``Ensemble`` (eval mode); input ``N x rows x cols`` images in
        [0, 1], output ``N x units`` spike counts per presentation.
    unit_ids : ndarray
        The model's output units, in order.
    kind : str
        ``"cnn"`` or ``"ln"``.
    split : Split
    train_config : TrainConfig
    history : list of dict
        One row per epoch (and ensemble member).
    metrics : DataFrame
        :func:`evaluate`'s metrics plus ``seconds`` (training time per unit) and ``epochs``.
    test : dict
        Test predictions and observations (see :func:`evaluate`).
    seconds : float
        Total training time.
    extra : dict
        Free-form plain values saved with the checkpoint (e.g. session id, window).
    """

    model: nn.Module
    unit_ids: np.ndarray
    kind: str
    split: Split
    train_config: TrainConfig
    history: list[dict]
    metrics: pd.DataFrame
    test: dict
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)

    def predict(self, images, batch_size: int = 256) -> np.ndarray:
        """Predicted spike counts, ``images x units`` (run on the model's device, numpy out)."""
        return predict_counts(self.model, images, batch_size)

    def subset(self, unit_ids) -> TrainedModel:
        """The model of some of its units: the shared core with only their readouts.

        Metrics, test predictions and history are those of the whole fit (its training time
        per unit stays in ``metrics["seconds"]``); ``extra["shared_units"]`` records how many
        units the core was fitted on.

        Examples
        --------
        >>> from meireport.models import CNNConfig, CNNModel, CoreConfig, TrainConfig, make_split
        >>> m = CNNModel(CNNConfig(core=CoreConfig(hidden_channels=4, layers=1)), n_units=2)
        >>> t = TrainedModel(m.eval(), np.array([7, 9]), "cnn", make_split(range(20)),
        ...                  TrainConfig(), [], pd.DataFrame({"test_corr": [0.1, 0.2]},
        ...                  index=pd.Index([7, 9], name="unit_id")), {})
        >>> s = t.subset([9])
        >>> s.unit_ids.tolist(), s.model.n_units, s.metrics["test_corr"].tolist()
        ([9], 1, [0.2])
        """
        ids = np.atleast_1d(np.asarray(unit_ids, dtype=np.int64))
        pos = {int(u): i for i, u in enumerate(self.unit_ids)}
        missing = [int(u) for u in ids if int(u) not in pos]
        if missing:
            raise MeireportError(f"unit_ids: {missing[:5]} are not units of this model")
        if not hasattr(self.model, "unit_subset"):
            raise MeireportError(f"model: a {type(self.model).__name__} has no per-unit readout")
        rows = [pos[int(u)] for u in ids]
        test = dict(self.test)
        for k in ("pred", "obs", "sem"):  # units x test images
            if k in test:
                test[k] = [test[k][i] for i in rows]
        return replace(self, model=self.model.unit_subset(rows).eval(), unit_ids=ids,
                       metrics=self.metrics.loc[ids], test=test,
                       extra=dict(self.extra) | {"shared_units": int(len(self.unit_ids))})

    def predict_with_spread(self, images) -> tuple[np.ndarray, np.ndarray]:
        """Mean prediction and the members' standard deviation (0 for a single model)."""
        if isinstance(self.model, Ensemble):
            mem = predict_counts(self.model, images, members=True)
            return mem.mean(axis=0), mem.std(axis=0)
        p = self.predict(images)
        return p, np.zeros_like(p)

    def save(self, path) -> Path:
        """Write one checkpoint file (weights, spec, config, metrics, split, versions)."""
        return save_checkpoint(self, path)
