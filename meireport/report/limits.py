"""What a number of images can tell: the pipeline on simulated sessions of growing size.

With 118 natural images a model of one neuron is badly under-determined. This stage runs the
report's own pipeline (extraction, selection, LN / CNN / population models, MEI) on simulated
sessions whose only difference is the number of images, and measures each step against the
simulator's ground truth:

- selection precision and recall (tuned = simple or complex units);
- each model's correlation with the true rate on new images (a far less noisy measure of what
  a model learned than 14 test images);
- the MEI's correlation with the true optimal stimulus (``mei_rf_corr``), and whether the true
  neuron fires more for the MEI than for the best natural image and the best session Gabor at
  equal footing;
- the per-neuron trust label (:mod:`meireport.trust`), so that the chapter shows how well the
  label separates MEIs that match the truth from those that do not.

At one session size (``options_at``, 118 by default) every data-efficiency option of the models
is compared: RF crop, gabor presentations added to training, ensembles, a shared-core population
model. Each session's results are cached in its folder under a key of every setting it
depends on, so a rerun (or a change of the trust thresholds only) recomputes nothing heavy.

Examples
--------
>>> cfg = LimitsParams.from_dict({"n_images": [60, 30], "n_units": 2})
>>> cfg.n_images, cfg.n_units
([30, 60], 2)
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from meireport.artifacts import load_csv, load_json, save_csv, save_json
from meireport.report.params import LimitsParams, MEIParams, ModelParams

__all__ = [
    "Variant",
    "CURVE_VARIANTS",
    "OPTION_VARIANTS",
    "session_limits",
    "run_limits",
    "limits_stage",
    "choose_spread",
    "curve_table",
    "options_table",
    "trust_separation",
    "criterion_auc",
    "headline",
]

TUNED = ("simple", "complex")
#: An MEI "matches the truth" when its correlation with the true optimal stimulus reaches this.
MATCH = 0.5


@dataclass(frozen=True)
class Variant:
    """One model variant: family, population or not, and its data-efficiency options.

    ``None`` for an option means "as in the report's params".
    """

    name: str
    kind: str  # "ln" | "cnn"
    population: bool = False
    crop: bool | None = None
    gabors: bool | None = None
    ensemble: bool | None = None


#: Models on every session size: as configured in the report's params.
CURVE_VARIANTS = (
    Variant("LN", "ln"),
    Variant("CNN", "cnn"),
    Variant("population CNN", "cnn", population=True),
)

#: Each option switched on alone against a full-field baseline (at ``options_at`` images).
#: Gabors join the CNN with the crop only: full-field, the 243 gabor conditions x 8 drift phases
#: make an epoch ~20x longer (a full-field CNN with gabors took 252 s for one unit here).
OPTION_VARIANTS = (
    Variant("LN full field", "ln", crop=False, gabors=False, ensemble=False),
    Variant("LN + crop", "ln", crop=True, gabors=False, ensemble=False),
    Variant("LN + crop + gabors", "ln", crop=True, gabors=True, ensemble=False),
    Variant("CNN full field", "cnn", crop=False, gabors=False, ensemble=False),
    Variant("CNN + crop", "cnn", crop=True, gabors=False, ensemble=False),
    Variant("CNN + crop + gabors", "cnn", crop=True, gabors=True, ensemble=False),
    Variant("CNN + ensemble", "cnn", crop=False, gabors=False, ensemble=True),
    Variant("population", "cnn", population=True, crop=False, gabors=False, ensemble=False),
)


# -------------------------------------------------------------------------------------------
# unit choice and configs
# -------------------------------------------------------------------------------------------
def choose_spread(selection: pd.DataFrame, n: int, by: str | None = None) -> list[int]:
    """``n`` units at evenly spaced oracle ranks among units with a positive oracle.

    With ``by`` (a column, e.g. the simulator's ``true_kind``), ``n`` units are taken from each
    of :data:`TUNED` kinds, so that per-kind figures rest on as many simple as complex cells.

    Examples
    --------
    >>> sel = pd.DataFrame({"unit_id": range(10), "oracle_corr": np.linspace(-0.1, 0.8, 10)})
    >>> choose_spread(sel, 3)
    [9, 5, 2]
    >>> sel["kind"] = ["simple", "complex"] * 5
    >>> choose_spread(sel, 2, by="kind")
    [8, 2, 9, 3]
    """
    if by is not None:
        return [u for kind in TUNED for u in choose_spread(selection[selection[by] == kind], n)]
    pos = selection[selection["oracle_corr"] > 0].sort_values("oracle_corr", ascending=False)
    ids = pos["unit_id"].astype(int).to_numpy()
    if len(ids) <= n:
        return ids.tolist()
    return ids[np.unique(np.linspace(0, len(ids) - 1, n).round().astype(int))].tolist()


def _variant_configs(v: Variant, model: dict, train: dict, cfg: LimitsParams, shape):
    from meireport.models import TrainConfig

    m, tr = ModelParams.from_dict(model), TrainConfig.from_dict(dict(train))
    crop = m.crop_size
    if v.crop is not None:
        crop = (crop or cfg.crop) if v.crop else None
    if v.population:
        crop = None  # one shared input for all units
    cnn, ln = m.model_copy(update={"crop_size": crop}).configs(shape)
    tr = replace(tr, n_boot=500, n_new_images=300,
                 gabors=tr.gabors if v.gabors is None else v.gabors,
                 ensemble=tr.ensemble if v.ensemble is None else cfg.ensemble if v.ensemble else 1)
    return (cnn if v.kind == "cnn" else ln), tr, tr.gabors


def _selection_dict(selection: dict | None) -> dict:
    """The rule without its caps: precision and recall are those of the rule itself."""
    s = dict(selection or {})
    s.update({"max_units": None, "units": None})
    return s


# -------------------------------------------------------------------------------------------
# one session
# -------------------------------------------------------------------------------------------
def _key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def _simulate(n: int, cfg: LimitsParams, where: Path):
    from meireport.sources import open_session, simulate_session

    sim = simulate_session(where / "cache", seed=cfg.seed, n_images=n, n_repeats=cfg.n_repeats,
                           population={"VISam": cfg.area_population})
    return sim, open_session(sim.cache_dir)


def _fit_variants(variants, data, units, centres, oracle, truth, model, train, cfg, shape):
    """Fit each variant for each unit (population variants: one joint fit).

    Variants that resolve to the same configuration (e.g. "CNN" when the params crop nothing and
    "CNN full field") are fitted once and reported under each name.
    """
    from meireport.models import fit_model, make_split

    rows, fits, done = [], {}, {}
    split = None
    for v in variants:
        mcfg, tr, gabors = _variant_configs(v, model, train, cfg, shape)
        if split is None:
            split = make_split(data.image_ids, tr.val_frac, tr.test_frac, tr.split_seed)
        d = data if gabors else replace(data, gabors=None)
        groups = [units] if v.population else [[u] for u in units]
        for us in groups:
            cfg_u = mcfg
            if getattr(mcfg, "crop_size", None) and any(centres[u] is None for u in us):
                if v.crop is not None:
                    continue  # a crop option without a mapped RF: left out
                # the report's own model: full field, as the train stage does
                cfg_u = _variant_configs(v, dict(model, crop_size=None), train, cfg, shape)[0]
            same = (v.kind, v.population, repr(cfg_u), repr(tr), gabors, tuple(us))
            if same not in done:
                done[same] = fit_model(d, us, v.kind, cfg_u, tr,
                                       rf_centres=[centres[u] for u in us], oracle=oracle,
                                       truth=truth, split=split)
            fit = done[same]
            for u in us:
                m = fit.metrics.loc[u]
                rows.append({"variant": v.name, "unit_id": int(u),
                             **{k: float(m[k]) for k in (
                                 "test_corr", "test_corr_ci_low", "test_corr_ci_high",
                                 "frac_oracle", "single_trial_corr", "true_corr") if k in m},
                             "seconds": float(fit.seconds) / len(us)})
                fits[(v.name, int(u))] = fit
    return pd.DataFrame(rows), fits


def _mei_values(fit, unit_id: int, data, truth, sg, cfg: LimitsParams) -> dict:
    """The MEI of one unit on its model and its in-silico inception loop (the MEI stage's code)."""
    from meireport.mei import UnitModel, best_phase_image, true_response
    from meireport.report.stages import mei_truth_values, unit_mei

    i = int(np.flatnonzero(fit.unit_ids == unit_id)[0])
    model = UnitModel(fit.model, i).eval()
    train_rows = np.isin(data.image_ids, np.asarray(fit.split.train))
    imgs = data.images.astype(np.float64)
    mei = MEIParams(steps=cfg.mei_steps, n_starts=cfg.mei_starts, seed=cfg.seed).config()
    u = unit_mei(model, imgs[train_rows], imgs, mei)
    out = u.values() | mei_truth_values(truth, unit_id, u, imgs)
    if sg is not None:  # at the carrier phase the model prefers (Allen's gabors drift)
        img = best_phase_image(sg, model, u.mean, u.c_star)[0]
        out["session_gabor_true_resp"] = float(
            true_response(truth, unit_id, img[None], mean=u.mean, std=u.c_star)[0])
    return out


def _session_gabors(sdir: Path, units, geometry) -> dict:
    from meireport.mei import session_gabor
    from meireport.report.stages import session_gabors

    resp = session_gabors(sdir)
    return {u: session_gabor(resp, int(u), geometry) for u in units}


def session_limits(n_images: int, cfg: LimitsParams, work_dir, model: dict, train: dict,
                   selection: dict | None = None, trust: dict | None = None,
                   options: bool = False, progress: bool = False) -> dict[str, pd.DataFrame]:
    """The pipeline and its ground-truth checks on one simulated session of ``n_images``.

    Parameters
    ----------
    n_images : int
        Natural images of the simulated session.
    cfg : LimitsParams
        Study settings.
    work_dir : path
        Folder of this session size (simulated cache, artifacts, cached results).
    model, train, selection, trust : dict
        The report's params sections (models are configured as in the report).
    options : bool
        Also compare every data-efficiency option (:data:`OPTION_VARIANTS`).
    progress : bool
        tqdm progress over units.

    Returns
    -------
    dict of DataFrame
        ``session`` (one row: selection precision/recall), ``units`` (one row per modelled unit:
        true kind, selection metrics, MEI checks, trust) and ``models`` (one row per unit and
        model variant: test and true-rate correlations, ``frac_oracle``, seconds).
    """
    from meireport.trust import TrustThresholds, assess

    work = Path(work_dir)
    key = _key(n_images, cfg.model_dump(mode="json", exclude={"enabled"}), model, train,
               _selection_dict(selection), options, _package_version())
    cached = _load_cached(work, key)
    if cached is None:
        cached = _compute(n_images, cfg, work, model, train, selection, options, progress)
        _save_cached(work, key, cached)
    units = cached["units"].copy()
    th = TrustThresholds.from_params(trust)
    labels = [assess(r, th) for r in units.to_dict("records")]
    units["trust"] = [t.label for t in labels]
    units["trust_reasons"] = ["; ".join(t.reasons) for t in labels]
    return {"session": cached["session"], "units": units, "models": cached["models"]}


#: Modules whose code the study's numbers depend on (a change there recomputes the study;
#: a change of plots, trust thresholds or the book does not).
_COMPUTE_MODULES = ("report/limits", "report/stages", "mei", "select", "extract", "stimuli",
                    "models", "sources", "trust")


def _package_version() -> str:
    from meireport.artifacts import file_sha256

    root = Path(__file__).resolve().parents[1]
    files = []
    for name in _COMPUTE_MODULES:
        p = root / name
        files += sorted(p.rglob("*.py")) if p.is_dir() else [root / f"{name}.py"]
    return _key([file_sha256(f) for f in files])


def _load_cached(work: Path, key: str) -> dict | None:
    f = work / "key.json"
    names = ("session", "units", "models")
    if not f.is_file() or load_json(f).get("key") != key:
        return None
    if not all((work / f"{n}.csv").is_file() for n in names):
        return None
    return {n: load_csv(work / f"{n}.csv") for n in names}


def _save_cached(work: Path, key: str, tables: dict) -> None:
    for name, df in tables.items():
        save_csv(work / f"{name}.csv", df, index=False)
    save_json(work / "key.json", {"key": key})


def _compute(n_images: int, cfg: LimitsParams, work: Path, model: dict, train: dict,
             selection: dict | None, options: bool, progress: bool) -> dict:
    from tqdm.auto import tqdm

    from meireport.report.stages import extract_stage, response_data, rf_centre, select_stage

    t0 = time.perf_counter()
    sdir = work / "session"
    sim, session = _simulate(n_images, cfg, work)
    with session:
        geometry = session.geometry
        extract_stage(session, sdir, area="VISam")
    sel = select_stage(sdir, _selection_dict(selection))
    kinds = dict(zip(sim.truth.unit_id.tolist(), sim.truth.kind.tolist(), strict=True))
    sel["true_kind"] = [kinds[int(u)] for u in sel["unit_id"]]
    tuned = sel["true_kind"].isin(TUNED)
    chosen = sel["selected"].astype(bool)
    session_row = pd.DataFrame([{
        "n_images": n_images, "n_units": len(sel), "n_tuned": int(tuned.sum()),
        "n_selected": int(chosen.sum()),
        "precision": float((chosen & tuned).sum() / max(chosen.sum(), 1)),
        "recall": float((chosen & tuned).sum() / max(tuned.sum(), 1)),
    }])
    units = choose_spread(sel, cfg.n_units, by="true_kind")
    rows = sel.set_index("unit_id").loc[units]
    centres = {u: rf_centre(rows.loc[u]) for u in units}
    oracle = rows["oracle_corr"].astype(float).to_dict()
    data = response_data(sdir, gabors=True)
    variants = [v for v in list(CURVE_VARIANTS) + (list(OPTION_VARIANTS) if options else [])
                if cfg.population or not v.population]
    models, fits = [], {}
    for u in tqdm(units, desc=f"models, {n_images} images", disable=not progress):
        m, f = _fit_variants([v for v in variants if not v.population], data, [u], centres,
                             oracle, sim.truth, model, train, cfg, geometry.shape)
        models.append(m)
        fits |= f
    m, _ = _fit_variants([v for v in variants if v.population], data, units, centres, oracle,
                         sim.truth, model, train, cfg, geometry.shape)
    models.append(m)
    models = pd.concat(models, ignore_index=True)
    models.insert(0, "n_images", n_images)
    models["true_kind"] = [kinds[int(u)] for u in models["unit_id"]]
    gabors = _session_gabors(sdir, units, geometry)
    out = []
    for u in tqdm(units, desc=f"MEIs, {n_images} images", disable=not progress):
        fit = fits[("CNN", u)]
        r = rows.loc[u]
        mm = fit.metrics.loc[u]
        out.append({
            "n_images": n_images, "unit_id": int(u), "true_kind": kinds[int(u)],
            "oracle_corr": float(r["oracle_corr"]), "selected": bool(r["selected"]),
            "selection_stability": float(r.get("selection_stability", np.nan)),
            "rf_p_value": float(r.get("rf_p_value", np.nan)),
            "test_corr": float(mm["test_corr"]), "test_corr_ci_low": float(mm["test_corr_ci_low"]),
            "test_corr_ci_high": float(mm["test_corr_ci_high"]),
            "frac_oracle": float(mm["frac_oracle"]), "true_corr": float(mm["true_corr"]),
            **_mei_values(fit, int(u), data, sim.truth, gabors.get(u), cfg),
        })
    session_row["seconds"] = time.perf_counter() - t0
    return {"session": session_row, "units": pd.DataFrame(out), "models": models}


# -------------------------------------------------------------------------------------------
# the whole study
# -------------------------------------------------------------------------------------------
def run_limits(cfg: LimitsParams, work_dir, model: dict, train: dict,
               selection: dict | None = None, trust: dict | None = None,
               progress: bool = False) -> dict[str, pd.DataFrame]:
    """:func:`session_limits` at every size of ``cfg.n_images``; tables concatenated."""
    parts = [session_limits(n, cfg, Path(work_dir) / f"n{n}", model, train, selection, trust,
                            options=(n == cfg.options_at), progress=progress)
             for n in cfg.n_images]
    return {k: pd.concat([p[k] for p in parts], ignore_index=True)
            for k in ("session", "units", "models")}


def limits_stage(out_dir, limits: dict | None, model: dict, train: dict,
                  selection: dict | None = None, trust: dict | None = None,
                  progress: bool = False) -> dict[str, pd.DataFrame]:
    """The limits stage: run the study and write ``limits_{session,units,models}.csv``."""
    from meireport.report.stages import single_thread_torch

    single_thread_torch()  # beside the neurons' workers: one core each, reproducible numbers
    out = Path(out_dir)
    tables = run_limits(LimitsParams.from_dict(limits), out / "work", model, train, selection,
                        trust, progress)
    for name, df in tables.items():
        save_csv(out / f"limits_{name}.csv", df, index=False)
    return tables


# -------------------------------------------------------------------------------------------
# what the chapter shows
# -------------------------------------------------------------------------------------------
def curve_table(tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Per session size: true-rate correlations, MEI checks, selection precision/recall.

    Medians over tuned units, per model and cell kind.

    Examples
    --------
    >>> models = pd.DataFrame({"n_images": [30, 30], "variant": ["CNN", "CNN"],
    ...                        "unit_id": [1, 2], "true_kind": ["simple", "complex"],
    ...                        "true_corr": [0.5, 0.3]})
    >>> units = pd.DataFrame({"n_images": [30, 30], "unit_id": [1, 2],
    ...                       "true_kind": ["simple", "complex"], "mei_rf_corr": [0.6, 0.2],
    ...                       "mei_true_resp": [9, 5], "best_image_true_resp": [4, 6],
    ...                       "trust": ["high", "low"]})
    >>> session = pd.DataFrame({"n_images": [30], "precision": [1.0], "recall": [0.5]})
    >>> t = curve_table({"models": models, "units": units, "session": session})
    >>> float(t.loc[30, "true_corr CNN simple"]), float(t.loc[30, "MEI > best image"])
    (0.5, 0.5)
    """
    models, units, session = tables["models"], tables["units"], tables["session"]
    tuned_m = models[models["true_kind"].isin(TUNED) & models["variant"].isin(
        [v.name for v in CURVE_VARIANTS])]
    med = tuned_m.pivot_table(index="n_images", columns=["variant", "true_kind"],
                              values="true_corr", aggfunc="median")
    med.columns = [f"true_corr {v} {k}" for v, k in med.columns]
    tu = units[units["true_kind"].isin(TUNED)]
    mei = tu.pivot_table(index="n_images", columns="true_kind", values="mei_rf_corr",
                         aggfunc="median")
    mei.columns = [f"mei_rf_corr {k}" for k in mei.columns]
    wins = tu.assign(w=tu["mei_true_resp"] > tu["best_image_true_resp"]).groupby("n_images")["w"]
    out = med.join(mei).join(wins.mean().rename("MEI > best image"))
    if "session_gabor_true_resp" in tu:
        g = tu.assign(w=tu["mei_true_resp"] > tu["session_gabor_true_resp"])
        out = out.join(g.groupby("n_images")["w"].mean().rename("MEI > session Gabor"))
    return out.join(session.set_index("n_images")[["precision", "recall"]])


def options_table(models: pd.DataFrame) -> pd.DataFrame:
    """Median test/true-rate correlation, ``frac_oracle`` and seconds per option and cell kind.

    Tuned units for which every option was fitted (paired), in the order of
    :data:`OPTION_VARIANTS`.
    """
    names = [v.name for v in OPTION_VARIANTS]
    m = models[models["variant"].isin(names) & models["true_kind"].isin(TUNED)]
    # paired: only units every option was fitted for (a unit without a mapped RF has no crop)
    n = m.groupby(["n_images", "unit_id"])["variant"].nunique()
    full = n[n == len(names)].index
    m = m[pd.MultiIndex.from_frame(m[["n_images", "unit_id"]]).isin(full)]
    if m.empty:
        return pd.DataFrame()
    t = m.groupby(["variant", "true_kind"])[["test_corr", "frac_oracle", "true_corr",
                                             "seconds"]].median()
    t["units"] = m.groupby(["variant", "true_kind"]).size()
    order = [(v, k) for v in names for k in TUNED if (v, k) in t.index]
    return t.loc[order]


def trust_separation(units: pd.DataFrame) -> pd.DataFrame:
    """Median ``mei_rf_corr`` and the share of MEIs matching the truth per size and trust label.

    A label is useful when ``high`` rows have clearly higher values than ``low`` rows.
    """
    tu = units[units["true_kind"].isin(TUNED)]
    g = tu.assign(match=tu["mei_rf_corr"] >= MATCH).groupby(["n_images", "trust"])
    return pd.DataFrame({"units": g.size(), "median mei_rf_corr": g["mei_rf_corr"].median(),
                         f"share mei_rf_corr >= {MATCH}": g["match"].mean()})


def criterion_auc(units: pd.DataFrame) -> pd.Series:
    """How well each trust criterion alone separates matching MEIs (``mei_rf_corr >= MATCH``).

    Area under the ROC curve of the criterion's value (the p-value is negated: small is good);
    0.5 is chance. Computed over every size and tuned unit together.

    Examples
    --------
    >>> u = pd.DataFrame({"true_kind": ["simple"] * 4, "mei_rf_corr": [0.9, 0.8, 0.1, 0.2],
    ...                   "frac_oracle": [0.9, 0.7, 0.2, 0.3]})
    >>> float(criterion_auc(u)["frac_oracle"])
    1.0
    """
    from scipy.stats import rankdata

    from meireport.trust import mei_agreement

    tu = units[units["true_kind"].isin(TUNED)].copy()
    if "mei_reliability" in tu:  # the trust criterion: agreement up to the carrier's phase
        tu["mei_reliability"] = [mei_agreement(r) for r in tu.to_dict("records")]
    y = (tu["mei_rf_corr"] >= MATCH).to_numpy()
    out = {}
    for c, sign in (("test_corr_ci_low", 1), ("frac_oracle", 1), ("mei_reliability", 1),
                    ("selection_stability", 1), ("rf_p_value", -1), ("oracle_corr", 1)):
        if c not in tu:
            continue
        x = sign * tu[c].to_numpy(float)
        ok = np.isfinite(x)
        pos, neg = int((y & ok).sum()), int((~y & ok).sum())
        if pos == 0 or neg == 0:
            out[c] = np.nan
            continue
        r = rankdata(x[ok])
        out[c] = float((r[y[ok]].sum() - pos * (pos + 1) / 2) / (pos * neg))
    return pd.Series(out, name="AUC")



def headline(tables: dict[str, pd.DataFrame], n_images: int | None = None) -> str:
    """One paragraph of what the study found at ``n_images`` (default: the smallest size).

    Examples
    --------
    >>> u = pd.DataFrame({"n_images": [118, 118], "unit_id": [1, 2],
    ...                   "true_kind": ["simple", "complex"], "mei_rf_corr": [0.7, 0.1],
    ...                   "mei_true_resp": [9, 5], "best_image_true_resp": [4, 6],
    ...                   "trust": ["high", "low"]})
    >>> m = pd.DataFrame({"n_images": [118], "variant": ["CNN"], "unit_id": [1],
    ...                   "true_kind": ["simple"], "true_corr": [0.8]})
    >>> print(headline({"units": u, "models": m}))
    With 118 images, 1 of 2 tuned units have an MEI that matches the true optimal stimulus (r >= 0.5); the CNN's median correlation with the true rate is 0.80; the true neuron fires more for the MEI than for the best natural image for 1 of 2. Median MEI-vs-truth: 0.70 for units labelled high (1), 0.10 for units labelled low (1).
    """  # noqa: E501
    units, models = tables["units"], tables["models"]
    tu = units[units["true_kind"].isin(TUNED)]
    if tu.empty:
        return "No tuned unit was modelled."
    n = int(min(tu["n_images"]) if n_images is None else n_images)
    d = tu[tu["n_images"] == n]
    cnn = models[(models["n_images"] == n) & (models["variant"] == "CNN")
                 & models["true_kind"].isin(TUNED)]["true_corr"]
    match = int((d["mei_rf_corr"] >= MATCH).sum())
    wins = int((d["mei_true_resp"] > d["best_image_true_resp"]).sum())
    text = (f"With {n} images, {match} of {len(d)} tuned units have an MEI that matches the true "
            f"optimal stimulus (r >= {MATCH}); the CNN's median correlation with the true rate "
            f"is {cnn.median():.2f}; the true neuron fires more for the MEI than for the best "
            f"natural image for {wins} of {len(d)}.")
    if "trust" in d:
        parts = [f"{d.loc[d['trust'] == lab, 'mei_rf_corr'].median():.2f} for units labelled "
                 f"{lab} ({int((d['trust'] == lab).sum())})"
                 for lab in ("high", "medium", "low") if (d["trust"] == lab).any()]
        text += " Median MEI-vs-truth: " + ", ".join(parts) + "."
    return text
