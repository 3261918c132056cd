"""Extraction: spike counts per presentation x unit, trial tensors, gabor responses, PSTHs."""

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
