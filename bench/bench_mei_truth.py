"""Issue #18's science targets on a data-rich simulated session, with a TRAINED model.

Not a test (minutes of CPU). A 1000-image session whose VISam holds simple, complex, corner and
surround cells (``--per-kind`` each); per unit the report's CNN (``--model unit``, default: one
per neuron, default model and training params) or one shared-core CNN for all (``--model
population``); then, per unit, what the report's MEI and Gabor
stages compute: the constrained MEI (default ``mei`` params), its DEIs, the in-silico Gabor
search inside the MEI's set, and the true neuron's verdicts.

Reports per kind: MEI vs truth (``mei_rf_corr``), the MEI's clip fraction, its measured SF (the
power spectrum's peak, and the best-fitting Gabor's) against the true RF's, the true rate for
MEI / searched Gabor / best natural image (all in the same set), the DEIs' phase span (complex)
and correlation with the MEI (simple), and the MEI's seconds and steps. Targets (issue #18):
non-Gabor kinds MEI > searched Gabor for >= 80 %; Gabor-optimal kinds MEI >= 90 % of the
searched Gabor; complex DEIs span >= 90 deg (median); simple DEIs correlate >= 0.8 with the MEI;
MEI clip <= 2 %; simple cells' SF within 20 %.

Run: ``python -m bench.bench_mei_truth [--per-kind 4] [--quick]``. Writes
``runs/bench_mei_truth/units.csv`` and ``summary.json``; prints both.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

KINDS = ("simple", "complex", "corner", "surround")
GABOR_OPTIMAL = ("simple", "complex")


def _args(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-kind", type=int, default=4, help="units of each kind")
    ap.add_argument("--n-images", type=int, default=1000)
    ap.add_argument("--n-repeats", type=int, default=8)
    ap.add_argument("--seed", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="coarse Gabor search grid")
    ap.add_argument("--model", choices=("population", "unit"), default="unit",
                    help="unit: one CNN per neuron, the report's default model and training "
                         "(default); population: one shared-core CNN for all")
    ap.add_argument("--out", default=str(ROOT / "runs" / "bench_mei_truth"))
    return ap.parse_args(argv)


def _unit(model, i, uid, data, fit, truth, geometry, gp, mp) -> dict:
    from meireport.mei import (
        UnitModel,
        describe,
        equalize,
        fit_gabor,
        gabor_search,
        pixel_correlation,
        rf_mask,
        true_response,
    )
    from meireport.report.stages import dei_truth_values, mei_truth_values, unit_deis, unit_mei

    unit = UnitModel(model, i).eval()
    imgs = data.images.astype(np.float64)
    train = imgs[np.isin(data.image_ids, np.asarray(fit.split.train))]
    u = unit_mei(unit, train, imgs, mp.config())
    row = {"unit_id": int(uid), "kind": str(truth.kind[truth.index_of([uid])[0]])}
    row |= {k: u.values()[k] for k in ("mei_seconds", "mei_steps", "mei_clip_fraction",
                                       "best_image_clip_fraction")}
    row |= mei_truth_values(truth, uid, u, imgs)
    d = unit_deis(unit, u, mp.dei_config())
    row |= d["values"] | dei_truth_values(truth, uid, d["arrays"]["images"], u.mei)
    t0 = time.perf_counter()
    search = gabor_search(unit, geometry, mean=u.mean, std=u.c_star, config=gp.search_config())
    row["gabor_seconds"] = time.perf_counter() - t0
    gabor = equalize(search.image, u.mean, u.c_star)
    row["gabor_true_resp"] = float(true_response(truth, uid, gabor[None], mean=u.mean,
                                                 std=u.c_star)[0])
    mask = rf_mask(unit, u.stimuli[1:])
    dm, dg = describe(u.mei, geometry, mask=mask), describe(gabor, geometry, mask=mask)
    fitted = fit_gabor(u.mei, geometry, mean=u.mean, std=u.c_star, config=gp.search_config())
    row |= {"mei_sf_cpd": dm["peak_sf_cpd"], "gabor_sf_cpd": dg["peak_sf_cpd"],
            "mei_fit_sf_cpd": fitted.params["sf_cpd"], "mei_fit_corr": fitted.response,
            "true_sf_cpd": float(truth.rf_params["sf_cpd"][truth.index_of([uid])[0]]),
            "gabor_clip_fraction": dg["clip_fraction"],
            "mei_gabor_corr": pixel_correlation(u.mei, gabor),
            "dei_median_mei_corr_rf": float(np.median(
                [pixel_correlation(x, u.mei, mask) for x in d["arrays"]["images"]])),
            "test_corr": float(fit.metrics.loc[uid, "test_corr"]),
            "true_corr": float(fit.metrics.loc[uid, "true_corr"])}
    row["mei_over_gabor"] = row["mei_true_resp"] / row["gabor_true_resp"]
    return row


def _summary(df: pd.DataFrame) -> dict:
    out: dict = {"units": {k: int((df["kind"] == k).sum()) for k in KINDS}}
    ng = df[~df["kind"].isin(GABOR_OPTIMAL)]
    go = df[df["kind"].isin(GABOR_OPTIMAL)]
    out["non_gabor_mei_beats_gabor"] = float((ng["mei_over_gabor"] > 1).mean())
    out["gabor_optimal_mei_over_gabor_min"] = float(go["mei_over_gabor"].min())
    out["gabor_optimal_mei_over_gabor_median"] = float(go["mei_over_gabor"].median())
    cx, sp = df[df["kind"] == "complex"], df[df["kind"] == "simple"]
    out["complex_dei_phase_span_median_deg"] = float(cx["dei_true_phase_span_deg"].median())
    out["simple_dei_mei_corr_median"] = float(sp["dei_median_mei_corr"].median())
    if "dei_median_mei_corr_rf" in sp:  # inside the RF mask (units.csv of older runs lack it)
        out["simple_dei_mei_corr_rf_median"] = float(sp["dei_median_mei_corr_rf"].median())
    sf_err = (sp["mei_sf_cpd"] / sp["true_sf_cpd"] - 1).abs()
    out["simple_sf_within_20pct"] = float((sf_err <= 0.2).mean())  # the spectrum's peak
    if "mei_fit_sf_cpd" in sp:  # the best-fitting Gabor's (units.csv of older runs lack it)
        fit_err = (sp["mei_fit_sf_cpd"] / sp["true_sf_cpd"] - 1).abs()
        out["simple_fit_sf_within_20pct"] = float((fit_err <= 0.2).mean())
    out["mei_clip_fraction_max"] = float(df["mei_clip_fraction"].max())
    out["mei_beats_best_image"] = float((df["mei_true_resp"] > df["best_image_true_resp"]).mean())
    out["mei_seconds_median"] = float(df["mei_seconds"].median())
    out["mei_rf_corr_median"] = {k: float(df.loc[df["kind"] == k, "mei_rf_corr"].median())
                                 for k in KINDS}
    return out


def main(argv=None) -> int:
    """Simulate, fit, synthesise, search; print and write the figures."""
    import torch

    from meireport.models import TrainConfig, fit_model, load_responses
    from meireport.report.params import GaborParams, MEIParams, ModelParams
    from meireport.select import oracle_correlation
    from meireport.sources import open_session, simulate_session

    args = _args(argv)
    torch.set_num_threads(1)
    n = args.per_kind
    t0 = time.perf_counter()
    sim = simulate_session(tempfile.mkdtemp(prefix="mei_truth_"), n_images=args.n_images,
                           n_repeats=args.n_repeats, seed=args.seed,
                           population={"VISam": (n, n, 0, 0, n, n)})
    with open_session(sim.cache_dir) as s:
        data = load_responses(s, area="VISam")
        geometry = s.geometry
    truth = sim.truth
    print(f"session: {time.perf_counter() - t0:.0f} s", flush=True)
    oracle = dict(zip(data.unit_ids.tolist(), oracle_correlation(data.trials), strict=True))
    gp, mp = GaborParams(quick=args.quick), MEIParams()
    rows = []
    t0 = time.perf_counter()
    if args.model == "population":
        fit = fit_model(data, kind="cnn", truth=truth, oracle=oracle)
        print(f"population CNN: {time.perf_counter() - t0:.0f} s", flush=True)
        fits = [(fit, i, int(uid)) for i, uid in enumerate(fit.unit_ids)]
    else:
        fits = None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ids = data.unit_ids.tolist()
    kinds = [str(truth.kind[truth.index_of([u])[0]]) for u in ids]
    # round robin over kinds: an interrupted run has measured every kind about equally
    rank = [kinds[:k].count(kinds[k]) for k in range(len(ids))]
    for j in sorted(range(len(ids)), key=lambda k: (rank[k], KINDS.index(kinds[k]))):
        uid = ids[j]
        if fits is not None:
            fit, i, uid = fits[j]
        else:  # the report's per-neuron CNN: its default model and training params
            cnn_cfg, _ = ModelParams().configs(geometry.shape)
            t1 = time.perf_counter()
            fit = fit_model(data, [int(uid)], "cnn", cnn_cfg, TrainConfig(), truth=truth,
                            oracle={int(uid): oracle[uid]})
            i, fit_s = 0, time.perf_counter() - t1
        rows.append(_unit(fit.model, i, int(uid), data, fit, truth, geometry, gp, mp))
        r = rows[-1]
        r["oracle_corr"] = float(oracle[uid])
        if fits is None:
            r["fit_seconds"] = fit_s
        print(f"{r['kind']:8s} {uid}: test r {r['test_corr']:.2f} rf {r['mei_rf_corr']:.2f} "
              f"MEI/Gabor {r['mei_over_gabor']:.2f} clip {100 * r['mei_clip_fraction']:.1f} % "
              f"MEI {r['mei_seconds']:.1f} s steps {r['mei_steps']} DEI span "
              f"{r.get('dei_true_phase_span_deg')} DEI-MEI {r.get('dei_median_mei_corr')}",
              flush=True)
        # written after every unit: an interrupted run keeps what it measured
        df = pd.DataFrame(rows)
        df.to_csv(out / "units.csv", index=False)
        summary = _summary(df)
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(df.round(3).to_string())
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
