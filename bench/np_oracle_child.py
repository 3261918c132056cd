"""Child process: neuralpredictors' ``oracle_corr_jackknife`` on a saved trial tensor.

Run as ``PYTHONPATH=<throwaway site> python bench/np_oracle_child.py TRIALS.npy OUT.npy``;
``TRIALS.npy`` is ``units x images x repeats`` (no missing repeats). Prints ``BENCH_JSON``.
"""

import json
import sys
import time


def main(trials_path: str, out_path: str, repeat: int = 5) -> None:
    """Time the jackknife oracle (best of ``repeat``) and save its values."""
    import numpy as np

    t0 = time.perf_counter()
    import neuralpredictors
    from neuralpredictors.measures.np_functions import oracle_corr_jackknife

    import_s = time.perf_counter() - t0
    trials = np.load(trials_path)
    repeated = np.ascontiguousarray(trials.transpose(1, 2, 0))  # images x repeats x units
    times, values = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        values = oracle_corr_jackknife(repeated)
        times.append(time.perf_counter() - t)
    np.save(out_path, values)
    from importlib import metadata

    version = getattr(neuralpredictors, "__version__", None) or metadata.version(
        "neuralpredictors")
    print("BENCH_JSON " + json.dumps({"seconds": times, "import_s": import_s,
                                      "version": version}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
