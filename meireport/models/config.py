"""How a model is fitted: the training configuration and the model kinds."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from meireport.errors import MeireportError

__all__ = ["MODEL_KINDS", "TrainConfig"]

MODEL_KINDS = ("cnn", "ln")


@dataclass(frozen=True)
class TrainConfig:
    """How a model is fitted.

    Parameters
    ----------
    loss : {"poisson", "mse"}
        Loss on the image-mean spike counts.
    lr : float
        Initial Adam learning rate.
    batch_size : int
        Images per step (gabor batches hold ``batch_size`` conditions).
    max_epochs : int
        Upper bound on epochs.
    patience : int
        Stop after this many epochs without a validation correlation ``min_delta`` above the
        best so far (the best weights are restored).
    min_delta : float
        Smallest gain in validation correlation that counts as an improvement.
    lr_patience, lr_factor, min_lr
        Multiply the learning rate by ``lr_factor`` after ``lr_patience`` epochs without
        improvement, down to ``min_lr``.
    seed : int
        Seed of the initialisation and batch order (ensemble member ``k`` uses ``seed + k``).
    split_seed, val_frac, test_frac
        The image split (see :func:`make_split`): its seed (independent of ``seed``) and the
        validation and test fractions of the images (each in (0, 1), summing to < 1).
    gabors : bool
        Add the session's gabor presentations to the training set.
    gabor_weight : float, optional
        Weight of a gabor batch's loss relative to a natural-image batch; default: mean repeats
        per gabor condition / mean repeats per image (the weight of a trial is the same).
    ensemble : int
        Train this many models (seeds ``seed .. seed + ensemble - 1``) and average them.
    n_boot : int
        Bootstrap resamples of the test images for the correlation's confidence interval.
    ci_level : float
        Confidence level of that interval.
    n_new_images : int
        New images for the true-rate correlation on simulated sessions.
    progress : bool
        Show a tqdm progress bar.

    Examples
    --------
    >>> TrainConfig(gabors=True, ensemble=3).ensemble
    3
    """

    loss: str = "poisson"
    lr: float = 5e-3
    batch_size: int = 16
    max_epochs: int = 150
    patience: int = 12
    min_delta: float = 1e-3
    lr_patience: int = 5
    lr_factor: float = 0.3
    min_lr: float = 1e-5
    seed: int = 0
    split_seed: int = 0
    val_frac: float = 0.12
    test_frac: float = 0.12
    gabors: bool = False
    gabor_weight: float | None = None
    ensemble: int = 1
    n_boot: int = 1000
    ci_level: float = 0.95
    n_new_images: int = 300
    progress: bool = False

    def __post_init__(self) -> None:
        if self.loss not in ("poisson", "mse"):
            raise MeireportError(f"loss: expected 'poisson' or 'mse', got {self.loss!r}")
        for name in ("batch_size", "max_epochs", "patience", "lr_patience", "ensemble", "n_boot"):
            v = getattr(self, name)
            if isinstance(v, bool) or int(v) != v or int(v) < 1:
                raise MeireportError(f"{name}: expected an integer >= 1, got {v!r}")
        if not float(self.min_delta) >= 0:
            raise MeireportError(f"min_delta: expected a number >= 0, got {self.min_delta!r}")
        if not self.n_new_images >= 0:
            raise MeireportError(f"n_new_images: expected >= 0, got {self.n_new_images!r}")
        if not float(self.lr) > 0 or not float(self.min_lr) >= 0:
            raise MeireportError(f"lr, min_lr: expected lr > 0 and min_lr >= 0, got "
                                 f"({self.lr}, {self.min_lr})")
        if not 0 < float(self.lr_factor) < 1:
            raise MeireportError(f"lr_factor: expected a number in (0, 1), got {self.lr_factor}")
        if not 0 < float(self.ci_level) < 1:
            raise MeireportError(f"ci_level: expected a number in (0, 1), got {self.ci_level}")
        if self.gabor_weight is not None and not float(self.gabor_weight) >= 0:
            raise MeireportError(f"gabor_weight: expected >= 0 or None, got {self.gabor_weight}")
        for name in ("val_frac", "test_frac"):
            if not 0 < float(getattr(self, name)) < 1:
                raise MeireportError(f"{name}: expected a fraction in (0, 1), got "
                                     f"{getattr(self, name)!r}")
        if not float(self.val_frac) + float(self.test_frac) < 1:
            raise MeireportError(f"test_frac: expected val_frac + test_frac < 1, got "
                                 f"{self.val_frac} + {self.test_frac}")

    def to_dict(self) -> dict:
        """Plain-dict form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        """Inverse of :meth:`to_dict` (unknown keys are an error)."""
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise MeireportError(f"train config: unknown field(s) {sorted(unknown)}")
        return cls(**d)
