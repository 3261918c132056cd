"""Where sessions come from: an AllenSDK cache, a bare Allen-format NWB file, or the simulator."""

from meireport.sources.cache import cached_session_ids, resolve_session
from meireport.sources.nwb import Session, SpikeTimes, UnitFilter, open_session
from meireport.sources.simulate import (
    DEFAULT_SESSION_ID,
    GroundTruth,
    SimulatedSession,
    combine_truths,
    load_ground_truth,
    natural_images,
    simulate_session,
    true_rate,
)

__all__ = [
    "DEFAULT_SESSION_ID",
    "GroundTruth",
    "Session",
    "SimulatedSession",
    "SpikeTimes",
    "UnitFilter",
    "cached_session_ids",
    "load_ground_truth",
    "combine_truths",
    "natural_images",
    "open_session",
    "resolve_session",
    "simulate_session",
    "true_rate",
]
