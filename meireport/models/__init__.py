"""Response models: stacked conv core, pyramid/factorised readouts, LN baseline, ensembles.

A core maps images to feature maps and knows nothing of neurons; a readout maps feature maps to
one response per neuron and knows nothing of convolutions. :class:`CNNModel` joins them (one unit:
the per-neuron CNN; several: the shared-core population model).

Fitting is split by concern: ``data`` (responses, splits), ``fit`` (config, training loop),
``evaluate`` (test correlation, CI, frac_oracle), ``checkpoint`` (save / load), ``device``
(``run.device`` -> the torch device training and prediction run on).
"""

from meireport.models.checkpoint import (
    CHECKPOINT_FORMAT,
    load_model,
    save_checkpoint,
)
from meireport.models.core import CoreConfig, Stacked2dCore, laplace_l2
from meireport.models.crop import InputCrop, crop_box
from meireport.models.data import (
    GaborSet,
    ResponseData,
    Split,
    gabor_set,
    load_responses,
    make_split,
    new_images,
    pool_responses,
)
from meireport.models.device import DEVICES, model_device, resolve_device
from meireport.models.evaluate import (
    bootstrap_corr_ci,
    evaluate,
    pearson,
    poisson_loglik,
    single_trial_corr,
    true_rate_corr,
)
from meireport.models.fit import (
    TrainConfig,
    TrainedModel,
    fit_model,
)
from meireport.models.ln import LNConfig, LNModel
from meireport.models.network import CNNConfig, CNNModel, Ensemble, build_model
from meireport.models.readout import (
    FactorizedReadout,
    PointPyramidReadout,
    Pyramid,
    ReadoutConfig,
    make_readout,
)

__all__ = [
    "CHECKPOINT_FORMAT",
    "CNNConfig",
    "CNNModel",
    "CoreConfig",
    "DEVICES",
    "Ensemble",
    "FactorizedReadout",
    "GaborSet",
    "InputCrop",
    "LNConfig",
    "LNModel",
    "PointPyramidReadout",
    "Pyramid",
    "ReadoutConfig",
    "ResponseData",
    "Split",
    "Stacked2dCore",
    "TrainConfig",
    "TrainedModel",
    "bootstrap_corr_ci",
    "build_model",
    "crop_box",
    "evaluate",
    "fit_model",
    "gabor_set",
    "laplace_l2",
    "load_model",
    "load_responses",
    "make_readout",
    "make_split",
    "model_device",
    "new_images",
    "pool_responses",
    "pearson",
    "poisson_loglik",
    "resolve_device",
    "save_checkpoint",
    "single_trial_corr",
    "true_rate_corr",
]
