"""Where training and prediction run: ``run.device`` (``auto``, ``cpu`` or ``cuda``) -> device."""

from __future__ import annotations

import torch
from torch import nn

from meireport.errors import MeireportError

__all__ = ["DEVICES", "resolve_device", "model_device"]

DEVICES = ("auto", "cpu", "cuda")


def resolve_device(name: str = "auto") -> torch.device:
    """The torch device for ``run.device``: ``"auto"``, ``"cpu"`` or ``"cuda"``.

    ``"auto"`` is the GPU when torch sees one (``torch.cuda.is_available()``), else the CPU. A
    :class:`torch.device` is accepted as it is (a CUDA one only when torch sees a GPU).

    Parameters
    ----------
    name : str or torch.device
        ``"auto"`` (default), ``"cpu"`` or ``"cuda"``.

    Returns
    -------
    torch.device

    Raises
    ------
    MeireportError
        One line for ``"cuda"`` without a GPU, or for any other value.

    Examples
    --------
    >>> resolve_device("cpu")
    device(type='cpu')
    >>> resolve_device("auto").type in ("cpu", "cuda")
    True
    >>> resolve_device("tpu")
    Traceback (most recent call last):
    ...
    meireport.errors.MeireportError: run.device: expected one of 'auto', 'cpu', 'cuda', got 'tpu'
    """
    if isinstance(name, torch.device):
        if name.type == "cuda":
            _need_cuda()
        return name
    if not isinstance(name, str) or name not in DEVICES:
        allowed = ", ".join(repr(d) for d in DEVICES)
        raise MeireportError(f"run.device: expected one of {allowed}, got {name!r}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda":
        _need_cuda()
    return torch.device(name)


def _need_cuda() -> None:
    if not torch.cuda.is_available():
        raise MeireportError(
            "run.device: cuda was asked for but torch sees no GPU "
            "(torch.cuda.is_available() is False); use 'auto' or 'cpu'"
        )


def model_device(model) -> torch.device:
    """The device of a model's first parameter (or buffer), else the CPU.

    The CPU also for a plain callable (an MEI target such as ``lambda x: x.sum(dim=(1, 2, 3))``).

    Examples
    --------
    >>> model_device(nn.Linear(2, 1)), model_device(lambda x: x)
    (device(type='cpu'), device(type='cpu'))
    """
    if not isinstance(model, nn.Module):
        return torch.device("cpu")
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")
