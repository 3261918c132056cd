"""Extraction: spike counts per presentation x unit, trial tensors, gabor responses, PSTHs.

Also which areas are analysed: :func:`resolve_areas` (the ``extract.area`` field; defined in
:mod:`meireport.areas`, below the sources, whose preflight checks the field too).
"""

from meireport.areas import (
    VISUAL,
    area_unit_ids,
    check_area_field,
    is_visual_area,
    resolve_areas,
)
from meireport.extract.counts import (
    BLANK_FRAME,
    binned_activity,
    check_window,
    count_in_windows,
    counts_per_area,
    psth,
    spike_counts,
)
from meireport.extract.trials import (
    GaborResponses,
    Trials,
    gabor_responses,
    image_means,
    trial_tensor,
)

__all__ = [
    "BLANK_FRAME",
    "VISUAL",
    "area_unit_ids",
    "check_area_field",
    "is_visual_area",
    "resolve_areas",
    "GaborResponses",
    "Trials",
    "binned_activity",
    "check_window",
    "count_in_windows",
    "counts_per_area",
    "gabor_responses",
    "image_means",
    "psth",
    "spike_counts",
    "trial_tensor",
]
