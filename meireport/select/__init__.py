"""Selection: reliability measures, rastermap order, receptive-field maps, the rule, its stability.

Data flows ``measures -> rule``; ``stability`` resamples trials and re-applies the rule.
"""

from meireport.select.measures import (
    RandomOracle,
    anomaly_scores,
    fev,
    oracle_correlation,
    oracle_correlation_random,
    pairwise_correlation,
    response_entropy,
    response_variance,
    snr,
    unit_metrics,
)
from meireport.select.raster import (
    RasterOrder,
    rastermap_order,
)
from meireport.select.rfmap import (
    RFMaps,
    receptive_fields,
    rf_centres,
    rf_maps,
    rf_pvalues,
)
from meireport.select.rule import (
    SelectionRule,
    group_thresholds,
    rule_thresholds,
    select_units,
)
from meireport.select.stability import (
    selection_stability,
)

__all__ = [
    "RFMaps",
    "RandomOracle",
    "RasterOrder",
    "SelectionRule",
    "anomaly_scores",
    "fev",
    "group_thresholds",
    "oracle_correlation",
    "oracle_correlation_random",
    "pairwise_correlation",
    "rastermap_order",
    "receptive_fields",
    "response_entropy",
    "response_variance",
    "rf_centres",
    "rf_maps",
    "rf_pvalues",
    "rule_thresholds",
    "select_units",
    "selection_stability",
    "snr",
    "unit_metrics",
]
