"""MEI and Gabor-search benchmark, and the in-silico inception loop on simulated sessions.

Not a test. Three parts:

1. Time: one MEI of ``--steps`` (1000) steps, one start and the default four, on a unit's true
   neuron and on a CNN-sized stand-in (a randomly initialised conv net of the size the models
   issue plans: the cost of a trained model, not its quality); one in-silico Gabor search on
   each. Target: MEI <= 20 s on 2 CPU cores.
2. Inception loop with the TRUE neurons as the model (the stand-in for trained models until
   the models issue lands), on the default 118-image session and a data-rich 1000-image one:
   per tuned unit that passes QC, ``mei_rf_corr`` and the true rate for the MEI, the best
   natural image (also through the MEI's mask), the session Gabor and (for a few units) the
   searched Gabor, all at equal footing (training images' mean, std c*).
3. What the data allow, with a model that must learn: a bootstrap ensemble of ridge-regression
   linear models per simple cell (GCV-chosen ridge), fitted on the trial-averaged counts; its
   MEI's ``mei_rf_corr`` and whether the reliability flag (agreement of members) is raised.

Run: ``python bench/bench_mei.py [--steps 1000] [--quick]``. Writes
``runs/bench_mei/summary.json`` and one CSV of units per session; prints a table.
Timings on a shared machine are noisy: they are context, not a gate.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from meireport.extract import gabor_responses, image_means, spike_counts  # noqa: E402
from meireport.mei import (  # noqa: E402
    LinearModel,
    MEIConfig,
    TrueNeuron,
    UnitModel,
    best_gabor_true_resp,
    best_image_true_resp,
    ensemble_meis,
    equalize,
    footing,
    gabor_search,
    generate_mei,
    mei_rf_corr,
    mei_true_resp,
    phase_modulation,
    session_gabor,
    stimulus_mask,
    true_response,
)
from meireport.sources import open_session, simulate_session  # noqa: E402
from meireport.trust import TrustThresholds, mei_agreement  # noqa: E402

MIN_AGREEMENT = TrustThresholds().min_mei_agreement

OUT = ROOT / "runs" / "bench_mei"


def log(msg: str) -> None:
    print(f"[bench_mei {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# sessions
# --------------------------------------------------------------------------------------------
def load(cache: Path, n_images: int, session_id: int, seed: int = 0) -> dict:
    """Simulate (or reuse) a session: 50 repeats for 118 images as Allen, 10 for richer ones."""
    n_repeats = 50 if n_images <= 118 else 10
    sim = simulate_session(
        cache, seed=seed, session_id=session_id, n_images=n_images, n_repeats=n_repeats
    )
    with open_session(sim.cache_dir, session_id=session_id) as s:
        images = s.model_images(range(n_images))
        table = s.stimulus_table("natural_scenes")
        counts = spike_counts(s, "natural_scenes")
        means = image_means(counts, table, drop_blank=True)
        gabors = gabor_responses(s)
        units = list(s.units.index)
        geometry = s.geometry
    return dict(
        truth=sim.truth,
        images=images,
        means=means,
        gabors=gabors,
        units=units,
        geometry=geometry,
        n_images=n_images,
    )


def tuned(sess: dict) -> list[tuple[int, str]]:
    truth = sess["truth"]
    out = []
    for u in sess["units"]:
        kind = str(truth.kind[truth.index_of([u])[0]])
        if kind in ("simple", "complex"):
            out.append((int(u), kind))
    return out


# --------------------------------------------------------------------------------------------
# part 1: time
# --------------------------------------------------------------------------------------------
class CNNStandIn(nn.Module):
    """Conv core of the planned size (16 ch 13x13, 2 x 32 ch 3x3, pooling) + linear readout."""

    def __init__(self, n_units: int = 50):
        super().__init__()
        torch.manual_seed(0)
        self.core = nn.Sequential(
            nn.Conv2d(1, 16, 13, padding=6),
            nn.BatchNorm2d(16),
            nn.ELU(),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.BatchNorm2d(32),
            nn.ELU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 32, 3, padding=1),
            nn.BatchNorm2d(32),
            nn.ELU(),
        )
        self.readout = nn.Linear(32 * 30 * 48, n_units)

    def forward(self, x):
        return nn.functional.elu(self.readout(self.core(x).flatten(1))) + 1


def timed(fn, repeats: int = 2) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), out


def part_time(sess: dict, steps: int, repeats: int) -> dict:
    truth, images = sess["truth"], sess["images"]
    u = tuned(sess)[0][0]
    mean, c_star = footing(images)
    models = {"true_neuron": TrueNeuron(truth, u), "cnn_standin": UnitModel(CNNStandIn(), 0)}
    out = {"threads": torch.get_num_threads(), "steps": steps}
    for name, model in models.items():
        for starts in (("noise",), MEIConfig().starts):
            cfg = MEIConfig(steps=steps, starts=starts)
            sec, _ = timed(lambda m=model, c=cfg: generate_mei(m, images, c), repeats)
            out[f"mei_{name}_{len(starts)}starts_s"] = sec
            log(f"MEI {name}, {len(starts)} start(s), {steps} steps: {sec:.1f} s")
        sec, res = timed(
            lambda m=model: gabor_search(m, sess["geometry"], mean=mean, std=c_star), 1
        )
        out[f"gabor_search_{name}_s"] = sec
        out[f"gabor_search_{name}_images"] = res.n_evaluated
        log(f"Gabor search {name}: {sec:.1f} s, {res.n_evaluated} images")
    return out


# --------------------------------------------------------------------------------------------
# part 2: inception loop with the true neurons
# --------------------------------------------------------------------------------------------
def part_inception(sess: dict, steps: int, n_search: int, max_units: int | None) -> pd.DataFrame:
    truth, images, geometry = sess["truth"], sess["images"], sess["geometry"]
    mean, c_star = footing(images)
    shown = equalize(images, mean, c_star)
    cfg = MEIConfig(steps=steps)
    rows = []
    units = tuned(sess)[:max_units]
    searched = {u for u, _ in units[:n_search]}
    for u, kind in units:
        res = generate_mei(TrueNeuron(truth, u), images, cfg)
        sg = session_gabor(sess["gabors"], u, geometry)
        row = {
            "unit_id": u,
            "true_type": kind,
            "mei_rf_corr": mei_rf_corr(truth, u, res.mei),
            "mei_true_resp": mei_true_resp(truth, u, res.mei, mean=mean, std=c_star),
            "best_image_true_resp": best_image_true_resp(truth, u, shown, mean=mean, std=c_star),
            "best_masked_image_true_resp": best_image_true_resp(
                truth, u, shown, mean=mean, std=c_star, mask=stimulus_mask(res.mei)
            ),
            "session_gabor_best_phase_true_resp": float(
                true_response(
                    truth, u, sg.render(np.arange(8) * np.pi / 4), mean=mean, std=c_star
                ).max()
            ),
            "best_gabor_true_resp": best_gabor_true_resp(truth, u, sg.image, mean=mean, std=c_star),
            "session_gabor_error_deg": float(
                np.hypot(
                    sg.x_deg - truth.rf_params["x_deg"][truth.index_of([u])[0]],
                    sg.y_deg - truth.rf_params["y_deg"][truth.index_of([u])[0]],
                )
            ),
            "reliability": res.reliability,
            "phase_reliability": res.phase_reliability,
            "f1_f0": phase_modulation(TrueNeuron(truth, u), res.mei, mean, c_star),
            "mei_seconds": res.seconds,
        }
        if u in searched:
            gs = gabor_search(TrueNeuron(truth, u), geometry, mean=mean, std=c_star)
            row["searched_gabor_true_resp"] = best_gabor_true_resp(
                truth, u, gs.image, mean=mean, std=c_star
            )
            row["gabor_search_seconds"] = gs.seconds
        rows.append(row)
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------
# part 3: a model that must learn (ridge, bootstrap ensemble)
# --------------------------------------------------------------------------------------------
def ridge_members(x: np.ndarray, y: np.ndarray, n_members: int, seed: int) -> list[np.ndarray]:
    """Bootstrap ridge fits ``y ~ <w, x>``; the ridge is chosen once by GCV on all images."""
    xc, yc = x - x.mean(0), y - y.mean()
    k = xc @ xc.T
    evals, evecs = np.linalg.eigh(k)
    uy = evecs.T @ yc
    best, lam_best = np.inf, None
    for lam in np.mean(np.diag(k)) * np.logspace(-3, 3, 25):
        h = evals / (evals + lam)
        resid = yc - evecs @ (h * uy)
        gcv = len(y) * resid @ resid / (len(y) - h.sum()) ** 2
        if gcv < best:
            best, lam_best = gcv, lam
    rng = np.random.default_rng(seed)
    ws = []
    for _ in range(n_members):
        idx = rng.integers(0, len(y), len(y))
        xb, yb = xc[idx], yc[idx] - yc[idx].mean()
        alpha = np.linalg.solve(xb @ xb.T + lam_best * np.eye(len(idx)), yb)
        ws.append(xb.T @ alpha)
    return ws


def part_ridge(sess: dict, steps: int, n_units: int, n_members: int) -> pd.DataFrame:
    truth, images = sess["truth"], sess["images"]
    x = images.reshape(len(images), -1)
    means = sess["means"]
    cfg = MEIConfig(steps=steps, starts=("noise", "grey"))
    rows = []
    for u, kind in [t for t in tuned(sess) if t[1] == "simple"][:n_units]:
        y = means[u].reindex(range(len(images))).to_numpy(dtype=float)
        ws = ridge_members(x, y, n_members, seed=u % 2**31)
        res = ensemble_meis([LinearModel(w.reshape(images.shape[1:])) for w in ws], images, cfg)
        rows.append(
            {
                "unit_id": u,
                "true_type": kind,
                "ridge_rf_corr": float(
                    np.mean(
                        [
                            np.corrcoef(w, truth.rf_even[truth.index_of([u])[0]].ravel())[0, 1]
                            for w in ws
                        ]
                    )
                ),
                "mei_rf_corr": mei_rf_corr(truth, u, res.mei),
                "member_agreement": res.reliability,
            }
        )
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------
def summarise(inc: pd.DataFrame, ridge: pd.DataFrame) -> dict:
    out = {"n_units": int(len(inc))}
    for kind, g in inc.groupby("true_type"):
        out[f"median_mei_rf_corr_{kind}"] = float(g["mei_rf_corr"].median())
        out[f"n_{kind}"] = int(len(g))
    out["frac_mei_gt_best_image"] = float((inc.mei_true_resp > inc.best_image_true_resp).mean())
    out["frac_mei_gt_best_masked_image"] = float(
        (inc.mei_true_resp > inc.best_masked_image_true_resp).mean()
    )
    out["frac_mei_gt_session_gabor"] = float((inc.mei_true_resp > inc.best_gabor_true_resp).mean())
    out["frac_mei_gt_session_gabor_best_phase"] = float(
        (inc.mei_true_resp > inc.session_gabor_best_phase_true_resp).mean()
    )
    if "searched_gabor_true_resp" in inc:
        s = inc.dropna(subset=["searched_gabor_true_resp"])
        out["frac_mei_gt_searched_gabor"] = float(
            (s.mei_true_resp > s.searched_gabor_true_resp).mean()
        )
        out["median_mei_over_searched_gabor"] = float(
            (s.mei_true_resp / s.searched_gabor_true_resp).median()
        )
        out["n_searched"] = int(len(s))
    out["median_session_gabor_error_deg"] = float(inc.session_gabor_error_deg.median())
    agree = [mei_agreement({"mei_reliability": r.reliability, "mei_f1_f0": r.f1_f0,
                            "mei_phase_reliability": r.phase_reliability})
             for r in inc.itertuples()]
    out["frac_mei_starts_agree"] = float(np.mean(np.asarray(agree) >= MIN_AGREEMENT))
    if len(ridge):
        out["ridge_median_mei_rf_corr_simple"] = float(ridge.mei_rf_corr.median())
        # ridge members are linear (simple-like): their agreement is the pixel one
        low = ridge.member_agreement < MIN_AGREEMENT
        out["ridge_frac_flagged_unreliable"] = float(low.mean())
        out["ridge_median_member_agreement"] = float(ridge.member_agreement.median())
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=1000, help="MEI steps (timing and inception)")
    ap.add_argument("--quick", action="store_true", help="300 steps, fewer units")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: on a shared 2-core machine more threads oversubscribe)",
    )
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    steps = 300 if args.quick else args.steps
    max_units = 12 if args.quick else None
    n_search = 2 if args.quick else 6
    n_ridge = 4 if args.quick else 12
    args.out.mkdir(parents=True, exist_ok=True)
    summary = {"steps": steps}
    sessions = {"default_118": (118, 700000001), "rich_1000": (1000, 700000002)}
    for name, (n_images, session_id) in sessions.items():
        log(f"session {name}: simulating / loading")
        sess = load(args.out / "cache", n_images, session_id)
        if name == "default_118":
            summary["time"] = part_time(sess, args.steps, repeats=1 if args.quick else 2)
        log(f"session {name}: inception loop on true neurons")
        inc = part_inception(sess, steps, n_search, max_units)
        log(f"session {name}: ridge ensembles")
        ridge = part_ridge(sess, steps, n_ridge, n_members=4)
        inc.to_csv(args.out / f"{name}_units.csv", index=False)
        ridge.to_csv(args.out / f"{name}_ridge.csv", index=False)
        summary[name] = summarise(inc, ridge)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
