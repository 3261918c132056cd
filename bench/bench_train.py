"""Benchmark of meireport.models (not a test): training time per neuron and throughput.

    python bench/bench_train.py timing  [--threads 2]   # s per neuron, images/s (target <= 60 s)

The data-efficiency options are compared by the report itself (the data-limit chapter,
:mod:`meireport.report.limits`), against the simulator's truth.

Sessions are simulated into ``--cache`` (reused when they exist). Results go to
``--out/train_<mode>.csv`` (one row per unit and condition) and ``train_<mode>.md`` (summary).
Timings on a shared machine are noisy; with other jobs on the same cores use ``--threads 1``
(two OpenMP threads on two busy cores can be 10x slower than one).
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from meireport.models import CNNConfig, CNNModel, fit_model, load_responses
from meireport.sources import open_session, simulate_session

CROP = (32, 32)
LN_CROP = (24, 24)


# ------------------------------------------------------------------------------------------
# data
# ------------------------------------------------------------------------------------------
def _session(cache: Path, rich: bool):
    if rich:
        return simulate_session(
            cache / "rich", n_images=1000, n_repeats=8, population={"VISam": (3, 3, 1, 0)}, seed=1
        )
    return simulate_session(cache / "default", seed=0)


def _prepare(sim, gabor_phases: int = 8):
    """Responses (with gabors), ground truth, oracle, mapped and true RF centres (pixels)."""
    from meireport.extract import gabor_responses
    from meireport.select import oracle_correlation, receptive_fields

    with open_session(sim.cache_dir) as s:
        data = load_responses(s, area="VISam", gabors=True, gabor_phases=gabor_phases)
        gr = gabor_responses(s, unit_ids=data.unit_ids)
        rf = receptive_fields(gr.table, gr.counts, s.geometry.deg_to_px, n_shuffles=200)
        geom = s.geometry
    truth = sim.truth
    oracle = dict(zip(data.unit_ids.tolist(), oracle_correlation(data.trials), strict=True))
    rf = rf.set_index("unit_id")
    mapped = {int(u): (float(rf.loc[u, "rf_col_px"]), float(rf.loc[u, "rf_row_px"]))
              for u in data.unit_ids}
    idx = truth.index_of(data.unit_ids)
    col, row = geom.deg_to_px(truth.rf_params["x_deg"][idx], truth.rf_params["y_deg"][idx])
    true_c = {int(u): (float(c), float(r)) for u, c, r in zip(data.unit_ids, col, row, strict=True)}
    kinds = dict(zip(truth.unit_id.tolist(), truth.kind.tolist(), strict=True))
    return data, truth, oracle, mapped, true_c, kinds, rf


def _units(data, kinds, per_kind: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = []
    for k in ("simple", "complex"):
        pool = np.array([u for u in data.unit_ids if kinds[int(u)] == k])
        out.append(np.sort(rng.choice(pool, min(per_kind, len(pool)), replace=False)))
    return np.concatenate(out)


# ------------------------------------------------------------------------------------------
# timing
# ------------------------------------------------------------------------------------------
def _throughput(config: CNNConfig, batch: int, n_units: int = 1, seconds: float = 3.0) -> float:
    torch.manual_seed(0)
    centre = None if config.crop_size is None else (47.5, 29.5)
    m = CNNModel(config, n_units, crop_centre=centre)
    opt = torch.optim.Adam(m.parameters())
    x = torch.rand(batch, *config.input_shape)
    for _ in range(2):
        opt.zero_grad()
        (m(x).sum() + m.regularizer()).backward()
        opt.step()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        opt.zero_grad()
        (m(x).sum() + m.regularizer()).backward()
        opt.step()
        n += batch
    return n / (time.perf_counter() - t0)


def timing(cache: Path, out: Path) -> pd.DataFrame:
    sim = _session(cache, rich=False)
    data, truth, oracle, mapped, true_c, kinds, _ = _prepare(sim)
    units = _units(data, kinds, 2)
    rows = []
    for name, cfg in (("cnn", CNNConfig()), ("cnn crop 32", CNNConfig(crop_size=CROP))):
        for batch in (16, 64):
            rows.append({"what": f"forward+backward {name}, batch {batch}",
                         "value": _throughput(cfg, batch), "unit": "images/s"})
    for u in units:
        fit = fit_model(data, [u], "cnn", truth=truth, oracle=oracle, rf_centres=mapped[int(u)])
        rows.append({"what": f"per-neuron CNN (default config), unit {u}",
                     "value": fit.seconds, "unit": "s",
                     "epochs": fit.metrics["epochs"].iloc[0]})
        fit = fit_model(data, [u], "ln", truth=truth, rf_centres=mapped[int(u)])
        rows.append({"what": f"LN (default config), unit {u}", "value": fit.seconds, "unit": "s",
                     "epochs": fit.metrics["epochs"].iloc[0]})
    ids = data.unit_ids
    fit = fit_model(data, ids, "cnn", rf_centres=[mapped[int(u)] for u in ids])
    rows.append({"what": f"population CNN, {len(ids)} units, per unit",
                 "value": fit.seconds / len(ids), "unit": "s",
                 "epochs": fit.metrics["epochs"].iloc[0]})
    table = pd.DataFrame(rows)
    table["threads"] = torch.get_num_threads()
    table["machine"] = f"{platform.machine()} {platform.processor() or ''}".strip()
    return table


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("mode", choices=("timing",))
    p.add_argument("--cache", type=Path, default=Path("runs/bench-sim"))
    p.add_argument("--out", type=Path, default=Path("bench/results"))
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    a.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    table = timing(a.cache, a.out)
    summary = table
    table.to_csv(a.out / f"train_{a.mode}.csv", index=False)
    (a.out / f"train_{a.mode}.md").write_text(
        f"# bench_train {a.mode}\n\n{torch.get_num_threads()} torch thread(s), "
        f"{time.perf_counter() - t0:.0f} s in all\n\n{summary.to_markdown()}\n"
    )
    print(summary.to_string())


if __name__ == "__main__":
    main()
