"""The shared core (#16): training cost per unit, and many units' MEIs in one batch.

Section ``shared`` of ``python -m bench.run_all``; alone: ``python -m bench.bench_shared``.
On simulated sessions of 118 images x 50 repeats (the simulator's default population, every
visual area), pooled as ``model.kind: shared`` pools them (oracle >= ``model.shared_floor``):

- the shared fit's seconds per unit at growing pools (target: <= 1 s per unit on one core;
  baseline: one per-neuron CNN fit of the same data, the report's default model);
- the MEIs of 8 units of the largest pool in one batch (:func:`meireport.mei.generate_meis`)
  against 8 separate syntheses, each on the unit's readout of the core alone (the loop each
  neuron page runs without the batch), same config; target: well under 8 separate syntheses;
- fine-tuning a unit's readout with the core (``model.finetune``) against one per-neuron CNN
  fit.

One torch thread, as the report's stages run.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import Figure, Results, log  # noqa: E402

SECTION = "shared"


def _sessions(root: Path, n: int) -> list[Path]:
    """``n`` simulated sessions of one image set, extracted (all visual areas) and measured."""
    from meireport.artifacts import save_csv
    from meireport.report.stages import extract_stage, unit_measures
    from meireport.sources import open_session, simulate_session
    from meireport.sources.from_params import session_seed
    from meireport.sources.simulate import DEFAULT_SESSION_ID

    out = []
    for k in range(n):
        sid = DEFAULT_SESSION_ID + k
        sdir = root / str(sid)
        sim = simulate_session(root / "cache", seed=session_seed(0, sid), session_id=sid,
                               progress=False)
        with open_session(sim.cache_dir, sid) as s:
            extract_stage(s, sdir, area="visual")
        save_csv(sdir / "measures.csv", unit_measures(sdir), index=False)
        out.append(sdir)
    return out


def run_section(res: Results, n_sessions: int = 3, pools=(50, 100, 200)) -> None:
    """Measure and record the shared core's figures (section ``shared``)."""
    import torch

    from meireport.artifacts import load_csv
    from meireport.mei import UnitModel, generate_mei, generate_meis
    from meireport.models import TrainConfig, fit_model, make_split, pool_responses
    from meireport.report.params import MEIParams, ModelParams
    from meireport.report.stages import fine_tune, response_data, rf_centre

    torch.set_num_threads(1)
    mp = ModelParams()
    cnn_cfg, _ = mp.configs()
    tr = TrainConfig(n_boot=200)
    with tempfile.TemporaryDirectory(prefix="bench_shared_") as tmp:
        t0 = time.perf_counter()
        sdirs = _sessions(Path(tmp), n_sessions)
        log(f"shared: {n_sessions} sessions simulated in {time.perf_counter() - t0:.0f} s")
        meas = [load_csv(d / "measures.csv") for d in sdirs]
        datas = [response_data(d) for d in sdirs]
        pool = pool_responses(datas)
        rows = []
        for m in meas:
            m = m[m["oracle_corr"] >= mp.shared_floor]
            rows += [(int(r["unit_id"]), rf_centre(r)) for _, r in m.iterrows()]
        split = make_split(pool.image_ids, tr.val_frac, tr.test_frac, tr.split_seed)
        first = rows[0]
        t0 = time.perf_counter()
        fit_model(pool, [first[0]], "cnn", cnn_cfg, tr, rf_centres=[first[1]], split=split)
        one = time.perf_counter() - t0
        detail = res.section(SECTION)
        detail["pooled_units_available"] = len(rows)
        fit = None
        for n in [p for p in pools if p <= len(rows)]:
            ids = [u for u, _ in rows[:n]]
            t0 = time.perf_counter()
            fit = fit_model(pool, ids, "cnn", cnn_cfg, tr, rf_centres=[c for _, c in rows[:n]],
                            split=split)
            per_unit = (time.perf_counter() - t0) / n
            detail[f"fit_{n}"] = {"seconds": per_unit * n, "epochs": len(fit.history)}
            res.add(Figure(SECTION, f"shared core on {n} units: training s per unit", per_unit,
                           baseline="one per-neuron CNN fit", baseline_value=one,
                           ratio=one / per_unit, target="<= 1 s per unit", met=per_unit <= 1.0,
                           note=f"{len(fit.history)} epochs; 118 images, one core"))
        if fit is None:
            return
        train = pool.images[np.isin(pool.image_ids, np.asarray(fit.split.train))]
        train = train.astype(np.float64)
        cfg = MEIParams().config()
        picks = list(np.linspace(0, len(fit.unit_ids) - 1, 8).round().astype(int))
        t0 = time.perf_counter()
        batch = generate_meis(fit.model, picks, train, cfg)
        t_batch = time.perf_counter() - t0
        t0 = time.perf_counter()  # each neuron page's synthesis: its readout of the core alone
        alone = [generate_mei(UnitModel(fit.subset([int(fit.unit_ids[i])]).model, 0), train, cfg)
                 for i in picks]
        t_alone = time.perf_counter() - t0
        corr = [float(np.corrcoef(a.mei.ravel(), b.mei.ravel())[0, 1])
                for a, b in zip(batch, alone, strict=True)]
        res.add(Figure(SECTION, f"8 MEIs on a {len(fit.unit_ids)}-unit shared core, one batch",
                       t_batch, baseline="8 separate syntheses (each unit's readout alone)",
                       baseline_value=t_alone, ratio=t_alone / t_batch,
                       target="well under 8 separate syntheses", met=t_batch < 0.5 * t_alone,
                       note=f"default MEI settings; batched vs separate MEI pixel correlation "
                            f"min {min(corr):.4f}; steps "
                            f"{[r.steps_run[r.best] for r in batch]}"))
        centre = dict(rows)
        t0 = time.perf_counter()
        for i in picks[:4]:  # model.finetune: each reported neuron's readout fitted further
            u = int(fit.unit_ids[i])
            fine_tune(fit.subset([u]), pool, cnn_cfg, {"train_config": tr, "split": fit.split,
                                                       "rf_centres": [centre[u]]},
                      mp.finetune_lr)
        per = (time.perf_counter() - t0) / 4
        res.add(Figure(SECTION, "fine-tuning a unit's readout of the core (with the core): s "
                       "per neuron", per, baseline="one per-neuron CNN fit", baseline_value=one,
                       ratio=one / per, target="below one per-neuron CNN fit", met=per < one,
                       note="model.finetune; 4 units of the largest core; its share of the "
                            "shared fit not included"))


def main() -> int:
    """Run the section alone and print its figures."""
    res = Results(Path(tempfile.mkdtemp()) / "shared.json")
    run_section(res)
    res.save()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
