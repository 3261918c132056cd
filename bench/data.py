"""The seed-sized simulated session the side-by-side benchmarks share.

The seed study's session 798911424 has 135 good VISam units and 5950 natural-scene presentations
(~1.2 M spikes in the count windows). The simulator writes the same shape: 135 good VISam units
(plus QC failures and a small VISp) x (118 images + blank) x 50 repeats. Written from the AllenSDK
env when it exists, so that AllenSDK's own reader can open the very same file.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from bench.common import ALLEN_PYTHON, WORK_DIR, log, run_monitored

# area -> (simple, complex, untuned, poor): 60 + 40 + 35 = 135 good VISam units, as the seed
SEED_POPULATION = {"VISam": (60, 40, 35, 10), "VISp": (6, 4, 4, 2)}
SEED = 0

_SIMULATE = """
import json, sys
from meireport.sources import simulate_session
s = simulate_session(sys.argv[1], seed={seed}, population={population!r}, allensdk_format={fmt})
print(json.dumps({{"nwb": str(s.nwb_path), "session_id": s.session_id, "seconds": s.seconds,
                  "reused": s.reused}}))
"""


def seed_session(work: Path = WORK_DIR) -> dict:
    """Write (or reuse) the seed-sized session; describe it.

    Returns
    -------
    dict
        ``cache_dir``, ``nwb``, ``session_id``, ``allensdk_format``, ``channels_csv``, sizes.
    """
    allen = ALLEN_PYTHON.is_file()
    cache = work / ("seed_cache_allen" if allen else "seed_cache_core")
    python = str(ALLEN_PYTHON) if allen else sys.executable
    code = _SIMULATE.format(seed=SEED, population=SEED_POPULATION, fmt=allen)
    log(f"data: simulating the seed-sized session in {'the allen' if allen else 'this'} env")
    t0 = time.perf_counter()
    proc = run_monitored([python, "-c", code, str(cache)])
    if proc.rc != 0:
        tail = " | ".join(proc.stderr.strip().splitlines()[-3:])
        raise RuntimeError(f"simulate failed: {tail}")
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    info.update(cache_dir=str(cache), allensdk_format=allen,
                wall_s=round(time.perf_counter() - t0, 2))
    info.update(_describe(cache, info["session_id"]))
    info["channels_csv"] = str(_channels_csv(cache, info["session_id"]))
    log(f"data: {info['n_units_visam']} VISam units, {info['n_presentations']} presentations, "
        f"{info['n_spikes_in_windows']:,} spikes in windows, {info['nwb_mb']:.0f} MB")
    return info


def _describe(cache: Path, session_id: int) -> dict:
    import numpy as np

    from meireport.extract import spike_counts
    from meireport.sources import open_session

    with open_session(cache, session_id) as s:
        counts = spike_counts(s, "natural_scenes", area="VISam")
        n_all = int(sum(s.spike_times.n_spikes(u) for u in s.unit_ids("VISam")))
        nwb = Path(s.path)
    return {
        "n_units_visam": int(counts.shape[1]),
        "n_presentations": int(counts.shape[0]),
        "n_spikes_in_windows": int(np.asarray(counts).sum()),
        "n_spikes_visam_total": n_all,
        "nwb_mb": nwb.stat().st_size / 1e6,
    }


def _channels_csv(cache: Path, session_id: int) -> Path:
    """What ``EcephysProjectCache`` would pass AllenSDK as channel columns (its channels.csv)."""
    import numpy as np

    from meireport.sources import open_session

    out = cache / f"session_{session_id}" / "channels.csv"
    with open_session(cache, session_id) as s:
        acr = s.channels["ecephys_structure_acronym"].astype(object)
    acr = acr.map(lambda v: np.nan if v in ("None", "", None) else v)
    acr.rename("ecephys_structure_acronym").to_frame().to_csv(out, index_label="id")
    return out
