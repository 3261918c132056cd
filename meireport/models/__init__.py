"""Response models: stacked conv core, pyramid/factorised readouts, LN baseline, ensembles.

A core maps images to feature maps and knows nothing of neurons; a readout maps feature maps to
one response per neuron and knows nothing of convolutions. :class:`CNNModel` joins them (one unit:
the per-neuron CNN; several: the shared-core population model).
"""

from meireport.models.core import CoreConfig, Stacked2dCore, laplace_l2
from meireport.models.crop import InputCrop, crop_box
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
    "CNNConfig",
    "CNNModel",
    "CoreConfig",
    "Ensemble",
    "FactorizedReadout",
    "InputCrop",
    "LNConfig",
    "LNModel",
    "PointPyramidReadout",
    "Pyramid",
    "ReadoutConfig",
    "Stacked2dCore",
    "build_model",
    "crop_box",
    "laplace_l2",
    "make_readout",
]
