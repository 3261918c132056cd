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
model.

The study is a graph of pieces (:func:`plan_tasks`), each a function of JSON-able settings that
computes one part of it and keeps the result in the machine's shared content-addressed store
(:class:`meireport.store.Store` in ``cache_root(cache) / "store"``), under a key of only what it
reads: its own settings, the keys of the pieces it reads and the source of the code it runs.
Per session size:

- ``sim`` (:func:`sim_piece`): the simulated session, extracted, and the rule-independent unit
  measures (:func:`meireport.report.stages.unit_measures`: oracle correlation, RF centres) the
  modelled units are chosen from;
- ``select`` (:func:`select_piece`): the report's selection rule on it: precision, recall and each
  unit's ``selected``, ``selection_stability``, ``rf_p_value``;
- ``unit`` (:func:`unit_piece`, ``n_units`` per tuned kind): one unit's every model variant and
  its CNN's MEI;
- ``population`` (:func:`population_piece`): the joint population fit(s) of the modelled units;
- ``pool/sim/<k>`` (:func:`pool_sim_piece`) and ``pool/u<N>`` (:func:`pooled_piece`): the
  pooled-units axis, a shared core fitted on ``N`` units of several sessions of ``pooled_at``
  images, judged on the same modelled units as the per-neuron CNNs.

The units chosen and every fit depend on neither the selection rule nor the trust thresholds: a
new rule recomputes the select pieces only, and the trust label is applied when the tables are
assembled (:func:`limits_stage`), so new thresholds recompute nothing. The run engine runs the
pieces in parallel workers; :func:`limits_stage` runs any that is missing inline (the chapter's
notebook also works alone), and any run of the machine with the same settings reads them back.

Examples
--------
>>> cfg = LimitsParams.from_dict({"n_images": [60, 30], "n_units": 2})
>>> cfg.n_images, cfg.n_units
([30, 60], 2)
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from meireport.artifacts import load_csv, load_json, save_csv, save_json
from meireport.errors import MeireportError
from meireport.report.engine import CACHED, CallTask
from meireport.report.params import LimitsParams, MEIParams, ModelParams, SelectionParams
from meireport.store import Store, cache_root, code_hash, content_key

__all__ = [
    "Variant",
    "CURVE_VARIANTS",
    "OPTION_VARIANTS",
    "sim_piece",
    "select_piece",
    "unit_piece",
    "population_piece",
    "pool_sim_piece",
    "pooled_piece",
    "pooled_table",
    "pooled_verdict",
    "pooled_trust",
    "plan_tasks",
    "piece_cost",
    "piece_order",
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
# fitting one unit or the population (the pieces' science)
# -------------------------------------------------------------------------------------------
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
    return rows, fits


def _mei_config(cfg: LimitsParams):
    return MEIParams(steps=cfg.mei_steps, n_starts=cfg.mei_starts, seed=cfg.seed).config()


def _mei_values(fit, unit_id: int, data, truth, sg, cfg: LimitsParams, result=None) -> dict:
    """The MEI of one unit on its model and its in-silico inception loop (the MEI stage's code).

    ``result``: its MEI synthesised already (a batch of units: :func:`meireport.mei.generate_meis`).
    """
    from meireport.mei import DEIConfig, UnitModel, best_phase_image, true_response
    from meireport.report.stages import dei_truth_values, mei_truth_values, unit_deis, unit_mei

    i = int(np.flatnonzero(fit.unit_ids == unit_id)[0])
    model = UnitModel(fit.model, i).eval()
    train_rows = np.isin(data.image_ids, np.asarray(fit.split.train))
    imgs = data.images.astype(np.float64)
    u = unit_mei(model, imgs[train_rows], imgs, _mei_config(cfg), result=result)
    out = u.values() | mei_truth_values(truth, unit_id, u, imgs)
    d = unit_deis(model, u, DEIConfig(seed=cfg.seed))  # the MEI stage's default DEIs
    out |= d["values"] | dei_truth_values(truth, unit_id, d["arrays"]["images"], u.mei)
    if sg is not None:  # at the carrier phase the model prefers (Allen's gabors drift)
        img = best_phase_image(sg, model, u.mean, u.c_star)[0]
        out["session_gabor_true_resp"] = float(
            true_response(truth, unit_id, img[None], mean=u.mean, std=u.c_star)[0])
    return out


# -------------------------------------------------------------------------------------------
# the pieces: one part of the study each, kept in the shared store under what it reads
# -------------------------------------------------------------------------------------------
#: Package parts whose code each piece runs (a change there recomputes that piece and, through
#: its key, every piece that reads it; a change of plots, trust or the book recomputes nothing).
_SIM_CODE = ("sources", "extract", "select", "stimuli", "report/limits", "report/stages")
_SELECT_CODE = ("select", "extract", "stimuli", "report/limits", "report/stages")
_UNIT_CODE = (*_SIM_CODE, "models", "mei")
_POPULATION_CODE = (*_SIM_CODE, "models")
_SESSION = "session"  # a sim entry's folder of extraction artifacts


def _store(cache) -> Store:
    return Store(cache_root(cache) / "store")


def _outcome(key: str, found: bool) -> str:
    """What a piece returns to the engine: ``CACHED`` when its entry was there, else the key."""
    return CACHED if found else key


def _entry(store: Store, key: str, piece: str) -> Path:
    d = store.get(key)
    if d is None:
        raise MeireportError(f"limits: the {piece} piece's entry {key[:12]} is not in "
                             f"{store.root} (was it removed while the study ran?)")
    return d


def _fit_settings(model: dict | None, train: dict | None) -> dict:
    """The model and train sections as a key sees them: defaults filled in, progress left out."""
    from meireport.models import TrainConfig

    tr = TrainConfig.from_dict(dict(train or {})).to_dict()
    tr.pop("progress", None)
    return {"model": ModelParams.from_dict(model).model_dump(mode="json"), "train": tr}


def _sim_key(n: int, cfg: LimitsParams) -> str:
    shape = cfg.model_dump(mode="json", include={"seed", "n_repeats", "area_population"})
    return content_key("limits/sim", int(n), shape, code_hash(*_SIM_CODE))


def _measures(entry: Path) -> pd.DataFrame:
    return load_csv(entry / "measures.csv")


def _fit_inputs(entry: Path, units):
    """What the fits of ``units`` read from a sim entry (data, truth, RF centres, oracle)."""
    from meireport.report.stages import response_data, rf_centre
    from meireport.sources.simulate import load_ground_truth
    from meireport.stimuli import ScreenGeometry

    sdir = entry / _SESSION
    info = load_json(sdir / "session.json")
    rows = _measures(entry).set_index("unit_id").loc[list(units)]
    return {"sdir": sdir, "data": response_data(sdir, gabors=True),
            "truth": load_ground_truth(sdir / info["ground_truth"]),
            "geometry": ScreenGeometry.from_dict(info["geometry"]),
            "centres": {u: rf_centre(rows.loc[u]) for u in units},
            "oracle": rows["oracle_corr"].astype(float).to_dict(), "rows": rows}


def sim_piece(n: int, limits: dict | None = None, cache: str | None = None) -> str:
    """The ``sim`` piece: the simulated session of ``n`` images, extracted and measured.

    Simulates the session, extracts it (:func:`meireport.report.stages.extract_stage`) and
    computes the rule-independent unit measures the modelled units are chosen from
    (:func:`meireport.report.stages.unit_measures`, ``measures.csv``). The entry keeps what
    later pieces read: the extraction artifacts (``session/``) and the ground truth; the NWB
    file and image templates are dropped once extracted.

    Key: ``n``, the study's ``seed``, ``n_repeats`` and ``area_population``, the code of
    ``sources``, ``extract``, ``select``, ``stimuli``, ``report/limits``, ``report/stages``.

    Parameters
    ----------
    n : int
        Natural images of the session.
    limits : dict, optional
        The ``limits`` params section (only the fields above are read).
    cache : str, optional
        The shared cache folder (:func:`meireport.store.cache_root`); entries go to its
        ``store`` folder.

    Returns
    -------
    str
        :data:`meireport.report.engine.CACHED` when the entry was already there (computing
        nothing: the engine then reports the task ``cached``), else the new entry's key.
    """
    return _outcome(*_sim(n, limits, cache))


def _sim(n: int, limits: dict | None = None, cache: str | None = None) -> tuple[str, bool]:
    """The sim piece: its entry's key, and whether the entry was already there."""
    from meireport.report.stages import extract_stage, single_thread_torch, unit_measures
    from meireport.sources import open_session, simulate_session

    single_thread_torch()
    cfg, store = LimitsParams.from_dict(limits), _store(cache)
    key = _sim_key(n, cfg)
    if store.get(key) is not None:
        return key, True
    meta = {"piece": "sim", "n_images": int(n)}

    def write(d: Path) -> None:
        t0 = time.perf_counter()
        sim = simulate_session(d / "cache", seed=cfg.seed, n_images=int(n),
                               n_repeats=cfg.n_repeats, population={"VISam": cfg.area_population})
        with open_session(sim.cache_dir) as session:
            extract_stage(session, d / _SESSION, area="VISam")
        save_csv(d / "measures.csv", unit_measures(d / _SESSION, seed=cfg.seed), index=False)
        sim.nwb_path.unlink()  # read by the extraction only
        shutil.rmtree(d / "cache" / "natural_scene_templates", ignore_errors=True)
        meta["seconds"] = time.perf_counter() - t0

    store.put(key, write, meta)
    return key, False


def select_piece(n: int, limits: dict | None = None, selection: dict | None = None,
                 cache: str | None = None) -> str:
    """The ``select`` piece: the report's selection rule on the session of ``n`` images.

    :func:`meireport.report.stages.select_stage` with the rule without its caps
    (``max_units``, ``units``) on the sim piece's artifacts: precision and recall against the
    truly tuned units, and each unit's ``selected``, ``selection_stability`` and ``rf_p_value``
    (``selection.json``). Nothing else of the study depends on the rule.

    Key: the sim piece's key, the ``selection`` section (defaults filled in), the code of
    ``select``, ``extract``, ``stimuli``, ``report/limits``, ``report/stages``.

    Parameters
    ----------
    n : int
        Natural images of the session.
    limits : dict, optional
        The ``limits`` params section (the sim piece's fields).
    selection : dict, optional
        The ``selection`` params section.
    cache : str, optional
        The shared cache folder.

    Returns
    -------
    str
        :data:`meireport.report.engine.CACHED` when the entry was already there (computing
        nothing: the engine then reports the task ``cached``), else the new entry's key.
    """
    return _outcome(*_select(n, limits, selection, cache))


def _select(n: int, limits: dict | None = None, selection: dict | None = None,
            cache: str | None = None) -> tuple[str, bool]:
    """The select piece: its entry's key, and whether the entry was already there."""
    from meireport.report.stages import select_stage, single_thread_torch

    single_thread_torch()
    store = _store(cache)
    sim, _ = _sim(n, limits, cache)
    rule = _selection_dict(selection)
    key = content_key("limits/select", sim,
                      SelectionParams.from_dict(rule).model_dump(mode="json"),
                      code_hash(*_SELECT_CODE))
    if store.get(key) is not None:
        return key, True
    src = _entry(store, sim, "sim") / _SESSION
    meta = {"piece": "select", "n_images": int(n)}

    def write(d: Path) -> None:
        t0 = time.perf_counter()
        # select_stage writes beside its inputs: linked into a scratch folder, never the entry
        with tempfile.TemporaryDirectory(prefix="meireport-select-") as tmp:
            for name in ("trials.npz", "units.csv", "gabors.npz", "session.json"):
                try:
                    (Path(tmp) / name).symlink_to(src / name)
                except OSError:  # a file system without symbolic links
                    shutil.copy2(src / name, Path(tmp) / name)
            sel = select_stage(tmp, rule)
        tuned = sel["true_kind"].isin(TUNED)
        chosen = sel["selected"].astype(bool)
        session = {
            "n_images": int(n), "n_units": len(sel), "n_tuned": int(tuned.sum()),
            "n_selected": int(chosen.sum()),
            "precision": float((chosen & tuned).sum() / max(chosen.sum(), 1)),
            "recall": float((chosen & tuned).sum() / max(tuned.sum(), 1)),
        }
        units = {str(int(r["unit_id"])): {
            "selected": bool(r["selected"]),
            "selection_stability": float(r.get("selection_stability", np.nan)),
            "rf_p_value": float(r.get("rf_p_value", np.nan))} for _, r in sel.iterrows()}
        save_json(d / "selection.json", {"session": session, "units": units})
        meta["seconds"] = time.perf_counter() - t0

    store.put(key, write, meta)
    return key, False


def _slot_unit(measures: pd.DataFrame, kind: str, slot: int, n_units: int) -> int | None:
    """Slot ``slot`` of :func:`choose_spread` among the units of ``kind`` (None: no such slot)."""
    ids = choose_spread(measures[measures["true_kind"] == kind], n_units)
    return int(ids[slot]) if 0 <= slot < len(ids) else None


def unit_piece(n: int, kind: str, slot: int, limits: dict | None = None,
               model: dict | None = None, train: dict | None = None,
               cache: str | None = None) -> str:
    """The ``unit`` piece: one modelled unit's every model variant and its CNN's MEI.

    The unit is slot ``slot`` of :func:`choose_spread` (``n_units`` of them) among the units of
    true kind ``kind``, from the sim piece's measures: it depends on neither the selection rule
    nor the trust thresholds. Fits every non-population variant of :data:`CURVE_VARIANTS` (and
    of :data:`OPTION_VARIANTS` when ``n`` is ``options_at``), then the CNN's MEI and its checks
    against the truth (``unit.json``). A slot the session has no unit for stores an empty result.

    Key: the sim piece's key, the unit's id, the ``model`` and ``train`` sections (defaults
    filled in), ``mei_steps``, ``mei_starts``, ``seed``, whether the options are compared (and
    then ``crop`` and ``ensemble``), the code of the sim piece plus ``models`` and ``mei``. A
    change of ``n_units`` reuses the units that keep their place in the spread.

    Parameters
    ----------
    n : int
        Natural images of the session.
    kind : {"simple", "complex"}
        True kind of the unit.
    slot : int
        Its place among the ``n_units`` units of that kind (0: the most reliable).
    limits, model, train : dict, optional
        The ``limits``, ``model`` and ``train`` params sections.
    cache : str, optional
        The shared cache folder.

    Returns
    -------
    str
        :data:`meireport.report.engine.CACHED` when the entry was already there (computing
        nothing: the engine then reports the task ``cached``), else the new entry's key.
    """
    return _outcome(*_unit(n, kind, slot, limits, model, train, cache))


def _unit(n: int, kind: str, slot: int, limits: dict | None = None,
          model: dict | None = None, train: dict | None = None,
          cache: str | None = None) -> tuple[str, bool]:
    """The unit piece: its entry's key, and whether the entry was already there."""
    from meireport.report.stages import single_thread_torch

    single_thread_torch()
    if kind not in TUNED:
        raise MeireportError(f"unit_piece: kind must be one of {TUNED}, got {kind!r}")
    cfg, store = LimitsParams.from_dict(limits), _store(cache)
    sim, _ = _sim(n, limits, cache)
    entry = _entry(store, sim, "sim")
    uid = _slot_unit(_measures(entry), kind, int(slot), cfg.n_units)
    options = n == cfg.options_at
    if uid is None:
        key = content_key("limits/unit", sim, kind, int(slot), cfg.n_units, None)
    else:
        fields = {"mei_steps", "mei_starts", "seed"} | ({"crop", "ensemble"} if options else set())
        key = content_key("limits/unit", sim, uid, options, _fit_settings(model, train),
                          cfg.model_dump(mode="json", include=fields), code_hash(*_UNIT_CODE))
    if store.get(key) is not None:
        return key, True
    meta = {"piece": "unit", "n_images": int(n), "unit_id": uid}

    def write(d: Path) -> None:
        t0 = time.perf_counter()
        out = {"unit": None, "models": []}
        if uid is not None:
            out = _fit_unit(entry, n, uid, options, cfg, dict(model or {}), dict(train or {}))
        save_json(d / "unit.json", out)
        meta["seconds"] = time.perf_counter() - t0

    store.put(key, write, meta)
    return key, False


def _fit_unit(entry: Path, n: int, uid: int, options: bool, cfg: LimitsParams, model: dict,
              train: dict) -> dict:
    from meireport.mei import session_gabor
    from meireport.report.stages import session_gabors

    x = _fit_inputs(entry, [uid])
    variants = [v for v in list(CURVE_VARIANTS) + (list(OPTION_VARIANTS) if options else [])
                if not v.population]
    rows, fits = _fit_variants(variants, x["data"], [uid], x["centres"], x["oracle"],
                               x["truth"], model, train, cfg, x["geometry"].shape)
    fit = fits[("CNN", uid)]
    r, mm = x["rows"].loc[uid], fit.metrics.loc[uid]
    sg = session_gabor(session_gabors(x["sdir"]), uid, x["geometry"])
    unit = {
        "n_images": int(n), "unit_id": uid,
        "true_kind": str(r["true_kind"]), "oracle_corr": float(r["oracle_corr"]),
        "test_corr": float(mm["test_corr"]), "test_corr_ci_low": float(mm["test_corr_ci_low"]),
        "test_corr_ci_high": float(mm["test_corr_ci_high"]),
        "frac_oracle": float(mm["frac_oracle"]), "true_corr": float(mm["true_corr"]),
        **_mei_values(fit, uid, x["data"], x["truth"], sg, cfg),
    }
    return {"unit": unit, "models": rows}


def _chosen_units(measures: pd.DataFrame, cfg: LimitsParams) -> list[int]:
    return [int(u) for u in choose_spread(measures, cfg.n_units, by="true_kind")]


def population_piece(n: int, limits: dict | None = None, model: dict | None = None,
                     train: dict | None = None, cache: str | None = None) -> str:
    """The ``population`` piece: the joint fit(s) of the shared-core population model.

    One fit of all modelled units (those of every :func:`unit_piece` of the size, in their
    order) per population variant: ``population CNN`` and, when ``n`` is ``options_at``, the
    ``population`` option (``population.json``).

    Key: the sim piece's key, the modelled units' ids, whether the options are compared, the
    ``model`` and ``train`` sections (defaults filled in), the code of the sim piece plus
    ``models``.

    Parameters
    ----------
    n : int
        Natural images of the session.
    limits, model, train : dict, optional
        The ``limits``, ``model`` and ``train`` params sections.
    cache : str, optional
        The shared cache folder.

    Returns
    -------
    str
        :data:`meireport.report.engine.CACHED` when the entry was already there (computing
        nothing: the engine then reports the task ``cached``), else the new entry's key.
    """
    return _outcome(*_population(n, limits, model, train, cache))


def _population(n: int, limits: dict | None = None, model: dict | None = None,
                train: dict | None = None, cache: str | None = None) -> tuple[str, bool]:
    """The population piece: its entry's key, and whether the entry was already there."""
    from meireport.report.stages import single_thread_torch

    single_thread_torch()
    cfg, store = LimitsParams.from_dict(limits), _store(cache)
    sim, _ = _sim(n, limits, cache)
    entry = _entry(store, sim, "sim")
    units = _chosen_units(_measures(entry), cfg)
    options = n == cfg.options_at
    key = content_key("limits/population", sim, units, options, _fit_settings(model, train),
                      code_hash(*_POPULATION_CODE))
    if store.get(key) is not None:
        return key, True
    meta = {"piece": "population", "n_images": int(n), "unit_ids": units}

    def write(d: Path) -> None:
        t0 = time.perf_counter()
        variants = [v for v in list(CURVE_VARIANTS) + (list(OPTION_VARIANTS) if options else [])
                    if v.population]
        rows = []
        if units:
            x = _fit_inputs(entry, units)
            rows, _ = _fit_variants(variants, x["data"], units, x["centres"], x["oracle"],
                                    x["truth"], dict(model or {}), dict(train or {}), cfg,
                                    x["geometry"].shape)
        save_json(d / "population.json", {"models": rows})
        meta["seconds"] = time.perf_counter() - t0

    store.put(key, write, meta)
    return key, False


# -------------------------------------------------------------------------------------------
# the pooled-units axis: a shared core over many units of several sessions (#16)
# -------------------------------------------------------------------------------------------
def pool_sim_piece(k: int, limits: dict | None = None, cache: str | None = None) -> str:
    """The ``pool/sim/<k>`` piece: extra session ``k`` (>= 1) of the pooled-units axis.

    A simulated session of ``pooled_at`` images that shows the same images as the ``pooled_at``
    sim piece (session 0) and holds other units: the simulator's default population (every
    visual area; session id ``700000001 + k``, its seed :func:`~meireport.sources.from_params.
    session_seed`), extracted and measured like a sim piece.

    Returns
    -------
    str
        :data:`meireport.report.engine.CACHED` when the entry was already there, else its key.
    """
    return _outcome(*_pool_sim(k, limits, cache))


def _pool_sim(k: int, limits: dict | None = None, cache: str | None = None) -> tuple[str, bool]:
    from meireport.report.stages import extract_stage, single_thread_torch, unit_measures
    from meireport.sources import open_session, simulate_session
    from meireport.sources.from_params import session_seed
    from meireport.sources.simulate import DEFAULT_SESSION_ID

    single_thread_torch()
    cfg, store = LimitsParams.from_dict(limits), _store(cache)
    if int(k) < 1:
        raise MeireportError(f"pool_sim_piece: k must be >= 1 (session 0 is the sim piece), "
                             f"got {k}")
    shape = cfg.model_dump(mode="json", include={"seed", "n_repeats", "pooled_at"})
    key = content_key("limits/pool_sim", int(k), shape, code_hash(*_SIM_CODE))
    if store.get(key) is not None:
        return key, True
    sid = DEFAULT_SESSION_ID + int(k)
    meta = {"piece": "pool_sim", "n_images": int(cfg.pooled_at), "session_id": sid}

    def write(d: Path) -> None:
        t0 = time.perf_counter()
        sim = simulate_session(d / "cache", seed=session_seed(cfg.seed, sid), session_id=sid,
                               n_images=int(cfg.pooled_at), n_repeats=cfg.n_repeats,
                               progress=False)
        with open_session(sim.cache_dir, sid) as session:
            extract_stage(session, d / _SESSION, area="visual")
        save_csv(d / "measures.csv", unit_measures(d / _SESSION, seed=cfg.seed), index=False)
        sim.nwb_path.unlink()
        shutil.rmtree(d / "cache" / "natural_scene_templates", ignore_errors=True)
        meta["seconds"] = time.perf_counter() - t0

    store.put(key, write, meta)
    return key, False


def pooled_piece(n_pool: int, limits: dict | None = None, model: dict | None = None,
                 train: dict | None = None, cache: str | None = None) -> str:
    """The ``pool/u<N>`` piece: a shared core fitted on ``n_pool`` pooled units, and its MEIs.

    The pool: the modelled units of the ``pooled_at`` session (those of its :func:`unit_piece`
    slots, always in), then its other units whose oracle correlation reaches
    ``model.shared_floor``, then those of the extra sessions (:func:`pool_sim_piece`) in order,
    up to ``n_pool`` units. One shared core (the report's ``model`` section, full field) is
    fitted on them (:func:`meireport.models.fit_model` on
    :func:`meireport.models.pool_responses`); the modelled units' MEIs are synthesised on it as
    in a unit piece (:func:`_mei_values`), so that each row compares with that unit's
    per-neuron CNN (``pooled.json``).

    Returns
    -------
    str
        :data:`meireport.report.engine.CACHED` when the entry was already there, else its key.
    """
    return _outcome(*_pooled(n_pool, limits, model, train, cache))


def _fit_values(m: pd.Series) -> dict:
    """What the pooled rows record of a unit's model metrics."""
    return {k: float(m[k]) for k in ("true_corr", "test_corr", "test_corr_ci_low",
                                     "test_corr_ci_high", "frac_oracle")}


def _finetuned(fit, unit_id: int, x0: dict, cnn, tr, sg, cfg: LimitsParams, lr: float) -> dict:
    """The unit's readout of the shared core fitted further on its own responses, and its MEI.

    The report's fine-tune (:func:`meireport.report.stages.fine_tune`, ``model.finetune``);
    ``seconds``: the shared fit's share per unit plus the unit's own fit.
    """
    from meireport.report.stages import fine_tune

    sub = fit.subset([unit_id])
    sub.seconds = float(fit.seconds) / len(fit.unit_ids)
    kw = {"train_config": tr, "rf_centres": [x0["centres"][unit_id]], "oracle": x0["oracle"],
          "truth": x0["truth"], "split": fit.split}
    tuned = fine_tune(sub, x0["data"], cnn, kw, lr)
    return {**_fit_values(tuned.metrics.loc[unit_id]), "seconds_per_unit": float(tuned.seconds),
            "epochs": len(tuned.history),
            **_mei_values(tuned, unit_id, x0["data"], x0["truth"], sg, cfg)}


def _pool_entries(cfg: LimitsParams, cache) -> list[Path]:
    store = _store(cache)
    keys = [_sim(cfg.pooled_at, cfg.model_dump(mode="json"), cache)[0]]
    keys += [_pool_sim(k, cfg.model_dump(mode="json"), cache)[0]
             for k in range(1, cfg.pool_sessions + 1)]
    return [_entry(store, k, "sim") for k in keys]


def _pool_ids(entries: list[Path], probes: list[int], floor: float, n_pool: int) -> list[list]:
    """Per session entry, the ids it gives to a pool of ``n_pool`` units (probes first)."""
    left, out = int(n_pool) - len(probes), []
    for i, e in enumerate(entries):
        m = _measures(e)
        m = m[(m["oracle_corr"].astype(float) >= floor) & ~m["unit_id"].isin(probes)]
        ids = m.sort_values("unit_id")["unit_id"].astype(int).tolist()[:max(left, 0)]
        left -= len(ids)
        out.append((list(probes) if i == 0 else []) + ids)
    return out


def _pooled(n_pool: int, limits: dict | None = None, model: dict | None = None,
            train: dict | None = None, cache: str | None = None) -> tuple[str, bool]:
    from meireport.report.stages import fit_pooled, rf_centre, single_thread_torch

    single_thread_torch()
    cfg, store = LimitsParams.from_dict(limits), _store(cache)
    entries = _pool_entries(cfg, cache)
    probes = _chosen_units(_measures(entries[0]), cfg)
    mp = ModelParams.from_dict(dict(model or {}))
    groups = _pool_ids(entries, probes, mp.shared_floor, n_pool)
    fields = {"mei_steps", "mei_starts", "seed"}
    key = content_key("limits/pooled", [e.name for e in entries], groups,
                      _fit_settings(model, train), cfg.model_dump(mode="json", include=fields),
                      code_hash(*_UNIT_CODE))
    if store.get(key) is not None:
        return key, True
    meta = {"piece": "pooled", "n_images": int(cfg.pooled_at), "n_pool": int(n_pool)}

    def write(d: Path) -> None:
        from meireport.mei import generate_meis, session_gabor
        from meireport.report.stages import session_gabors

        t0 = time.perf_counter()
        used = [(e, ids) for e, ids in zip(entries, groups, strict=True) if ids]
        meas = pd.concat([_measures(e).set_index("unit_id").loc[ids] for e, ids in used])
        ids = [u for _, group in used for u in group]
        x0 = _fit_inputs(entries[0], probes)
        cnn, tr, _ = _variant_configs(Variant("shared", "cnn", population=True),
                                      dict(model or {}), dict(train or {}), cfg,
                                      x0["geometry"].shape)
        fit, pool = fit_pooled([e / _SESSION for e, _ in used], ids, cnn, tr,
                               [rf_centre(meas.loc[u]) for u in ids],
                               meas["oracle_corr"].astype(float).to_dict())
        fit_s = time.perf_counter() - t0
        # the modelled units' MEIs in one batch (one pass per step serves every unit and start)
        rows = [int(np.flatnonzero(fit.unit_ids == u)[0]) for u in probes]
        train_imgs = pool.images[np.isin(pool.image_ids, np.asarray(fit.split.train))]
        meis = generate_meis(fit.model, rows, train_imgs.astype(np.float64), _mei_config(cfg))
        units = []
        for u, res in zip(probes, meis, strict=True):
            sg = session_gabor(session_gabors(x0["sdir"]), u, x0["geometry"])
            m = fit.metrics.loc[u]
            units.append({"unit_id": int(u), "true_kind": str(m["true_kind"]),
                          **_fit_values(m),
                          **_mei_values(fit, u, x0["data"], x0["truth"], sg, cfg, result=res),
                          "finetuned": _finetuned(fit, u, x0, cnn, tr, sg, cfg, mp.finetune_lr)})
        kinds = fit.metrics["true_kind"].astype(str)
        save_json(d / "pooled.json", {
            "n_pool": len(ids), "requested": int(n_pool), "sessions": len(used),
            "fit_seconds": float(fit.seconds), "seconds_per_unit": float(fit.seconds) / len(ids),
            "mei_batch_seconds": float(sum(r.seconds for r in meis)),
            "epochs": int(len(fit.history)),
            "pool_true_corr": {k: float(fit.metrics.loc[kinds == k, "true_corr"].median())
                               for k in sorted(set(kinds))},
            "pool_kinds": {k: int((kinds == k).sum()) for k in sorted(set(kinds))},
            "units": units})
        meta["seconds"] = time.perf_counter() - t0
        meta["fit_seconds"] = fit_s

    store.put(key, write, meta)
    return key, False


# -------------------------------------------------------------------------------------------
# the whole study: its graph, and its tables assembled from the store
# -------------------------------------------------------------------------------------------
def _json(d) -> dict:
    return json.loads(json.dumps(dict(d or {})))


def _plan(cfg: LimitsParams, model, train, selection, cache: str) -> list[CallTask]:
    study = cfg.model_dump(mode="json")
    fit = {"model": _json(model), "train": _json(train)}
    tasks = []

    def add(name: str, piece: str, deps=(), **kw) -> str:
        tasks.append(CallTask(name, f"{__name__}:{piece}", dict(kw, limits=study, cache=cache),
                              deps=tuple(deps), stage="limits", session_id=-1))
        return name

    for n in cfg.n_images:
        sim = add(f"limits/n{n}/sim", "sim_piece", n=n)
        add(f"limits/n{n}/select", "select_piece", [sim], n=n, selection=_json(selection))
        for kind in TUNED:
            for slot in range(cfg.n_units):
                add(f"limits/n{n}/unit/{kind}/{slot}", "unit_piece", [sim], n=n, kind=kind,
                    slot=slot, **fit)
        if cfg.population:
            add(f"limits/n{n}/population", "population_piece", [sim], n=n, **fit)
    if cfg.pooled_units:
        sims = [f"limits/n{cfg.pooled_at}/sim"]
        sims += [add(f"limits/pool/sim/{k}", "pool_sim_piece", k=k)
                 for k in range(1, cfg.pool_sessions + 1)]
        for n_pool in cfg.pooled_units:
            add(f"limits/pool/u{n_pool}", "pooled_piece", sims, n_pool=n_pool, **fit)
    return tasks


def plan_tasks(limits: dict | None, model: dict | None, train: dict | None,
               selection: dict | None, cache: str | None = None) -> list[CallTask]:
    """The study as a static graph of pieces, for the run engine's parallel workers.

    Per session size ``n``: ``limits/n<n>/sim`` (:func:`sim_piece`), then, each depending on it
    alone, ``limits/n<n>/select`` (:func:`select_piece`), ``limits/n<n>/unit/<kind>/<slot>``
    (:func:`unit_piece`, ``n_units`` slots of each tuned kind) and ``limits/n<n>/population``
    (:func:`population_piece`, when ``limits.population``). Every task's keyword arguments are
    JSON-able and name the cache folder resolved now (:func:`meireport.store.cache_root`), so
    that every worker writes to the same store.

    Parameters
    ----------
    limits, model, train, selection : dict
        The report's params sections.
    cache : str, optional
        The shared cache folder (default: ``$MEIREPORT_CACHE``, else the user's cache folder).

    Returns
    -------
    list of CallTask
        In an order that respects ``deps``; empty when the study is disabled.

    Examples
    --------
    >>> tasks = plan_tasks({"n_images": [30], "n_units": 1, "pooled_units": []}, {}, {}, {},
    ...                    cache="/tmp/c")
    >>> [t.task_id for t in tasks]  # doctest: +NORMALIZE_WHITESPACE
    ['limits/n30/sim', 'limits/n30/select', 'limits/n30/unit/simple/0',
     'limits/n30/unit/complex/0', 'limits/n30/population']
    >>> tasks[2].func, tasks[2].deps, tasks[2].kwargs["slot"]
    ('meireport.report.limits:unit_piece', ('limits/n30/sim',), 0)
    >>> pool = plan_tasks({"n_images": [30], "n_units": 1, "pooled_units": [20],
    ...                    "pool_sessions": 1}, {}, {}, {}, cache="/tmp/c")
    >>> [(t.task_id, t.deps) for t in pool[-2:]]  # doctest: +NORMALIZE_WHITESPACE
    [('limits/pool/sim/1', ()), ('limits/pool/u20', ('limits/n30/sim', 'limits/pool/sim/1'))]
    >>> plan_tasks({"enabled": False}, {}, {}, {})
    []
    """
    cfg = LimitsParams.from_dict(limits)
    if not cfg.enabled:
        return []
    return _plan(cfg, model, train, selection, str(cache_root(cache)))


#: Rough cost of a piece per image (relative; measured on the default book): a complex unit's
#: CNN fits about twice a simple one's epochs, the option comparison ~5x the models of a unit;
#: the joint population fit grows slowly with its units.
_COST_PER_IMAGE = {"sim": 0.03, "select": 0.05, "simple": 1.0, "complex": 2.0}
_OPTIONS_COST = 5.0
_POPULATION_COST = (1.0, 0.25)  # per image: a base and a share per modelled unit


def piece_cost(task: CallTask) -> float:
    """A study piece's expected cost (relative, roughly seconds on one core).

    Examples
    --------
    >>> tasks = plan_tasks({"n_images": [100, 1000], "n_units": 1}, {}, {}, {}, cache="/tmp/c")
    >>> [t.task_id for t in sorted(tasks, key=piece_cost, reverse=True)][:3]
    ['limits/n1000/unit/complex/0', 'limits/n1000/population', 'limits/n1000/unit/simple/0']
    """
    kw = task.kwargs
    piece = task.func.partition(":")[2].removesuffix("_piece")
    cfg = LimitsParams.from_dict(kw.get("limits"))
    n = float(kw.get("n", 0))
    if piece == "unit":
        options = _OPTIONS_COST if int(n) == cfg.options_at else 1.0
        return n * _COST_PER_IMAGE.get(kw.get("kind"), 1.0) * options
    if piece == "population":
        base, per_unit = _POPULATION_COST
        return n * (base + per_unit * len(TUNED) * cfg.n_units)
    if piece == "pooled":  # its fit grows with the pool, its MEIs with the modelled units
        base, per_unit = _POPULATION_COST
        return cfg.pooled_at * (base + 0.01 * kw["n_pool"] + per_unit * len(TUNED) * cfg.n_units)
    if piece == "pool_sim":
        return cfg.pooled_at * _COST_PER_IMAGE["sim"] * 2
    return n * _COST_PER_IMAGE.get(piece, 0.0)


def piece_order(task: CallTask) -> int:
    """Rank of a ready study piece for the scheduler: lower starts first.

    ``sim`` pieces first (they unlock the rest), then the costliest (:func:`piece_cost`): the
    1000-image population and complex units before the quick ones, so that the last pieces end
    together instead of one long fit running alone at the end.

    Examples
    --------
    >>> tasks = plan_tasks({"n_images": [100, 1000], "n_units": 1, "pooled_units": []}, {}, {},
    ...                    {}, cache="/tmp/c")
    >>> [t.task_id for t in sorted(tasks, key=piece_order)][:3]
    ['limits/n100/sim', 'limits/n1000/sim', 'limits/n1000/unit/complex/0']
    """
    if task.func.endswith((":sim_piece", ":pool_sim_piece")):
        return 0
    return 1 + int(1e6 // (1.0 + piece_cost(task)))


#: Each piece's implementation: its entry's key, computed first when it is missing.
_IMPLEMENTATIONS = {"sim_piece": _sim, "select_piece": _select, "unit_piece": _unit,
                    "population_piece": _population, "pool_sim_piece": _pool_sim,
                    "pooled_piece": _pooled}


def _ensure(task: CallTask) -> str:
    """The key of a task's entry, its piece run inline first when the entry is missing."""
    module, _, name = task.func.partition(":")
    if module != __name__ or name not in _IMPLEMENTATIONS:
        raise MeireportError(f"limits: {task.func} is not a piece of the study")
    return _IMPLEMENTATIONS[name](**task.kwargs)[0]


def _assemble(cfg: LimitsParams, keys: dict[str, str], store: Store,
              trust: dict | None) -> dict[str, pd.DataFrame]:
    """The tables from the pieces' entries; the trust label applied here (never stored)."""
    from meireport.trust import TrustThresholds

    sessions, units, models = [], [], []
    for n in cfg.n_images:
        p = f"limits/n{n}/"
        mine = {t[len(p):]: k for t, k in keys.items() if t.startswith(p)}
        kinds = _measures(_entry(store, mine["sim"], "sim")).set_index("unit_id")["true_kind"]
        sel = load_json(_entry(store, mine["select"], "select") / "selection.json")
        seconds = sum(float(store.meta(k).get("seconds", 0.0)) for k in mine.values())
        sessions.append(sel["session"] | {"seconds": seconds})
        rows = []
        for kind in TUNED:
            for slot in range(cfg.n_units):
                k = mine[f"unit/{kind}/{slot}"]
                u = load_json(_entry(store, k, "unit") / "unit.json")
                if u["unit"] is None:
                    continue
                first = dict(list(u["unit"].items())[:4])  # n_images .. oracle_corr
                rest = dict(list(u["unit"].items())[4:])
                units.append(first | sel["units"][str(u["unit"]["unit_id"])] | rest)
                rows += u["models"]
        if "population" in mine:
            rows += load_json(_entry(store, mine["population"], "population")
                              / "population.json")["models"]
        m = pd.DataFrame(rows)
        m.insert(0, "n_images", n)
        m["true_kind"] = [kinds[int(u)] for u in m["unit_id"]] if len(m) else []
        models.append(m)
    th = TrustThresholds.from_params(trust)
    units = _label(pd.DataFrame(units), th)
    pooled = _pooled_rows(cfg, keys, store)
    if len(pooled) and "test_corr_ci_low" in pooled:
        # the shared model's rows, labelled by the same rule: the unit's selection figures (its
        # session's, as in the unit pieces) beside the shared model's own fit and MEI
        sel = units[units["n_images"] == cfg.pooled_at].set_index("unit_id")[
            ["oracle_corr", "selection_stability", "rf_p_value"]]
        pooled = _label(pooled.join(sel, on="unit_id"), th)
    return {"session": pd.DataFrame(sessions), "units": units,
            "models": pd.concat(models, ignore_index=True), "pooled": pooled}


def _label(rows: pd.DataFrame, th) -> pd.DataFrame:
    """``rows`` with the trust label and its reasons (:func:`meireport.trust.assess`)."""
    from meireport.trust import assess

    labels = [assess(r, th) for r in rows.to_dict("records")]
    return rows.assign(trust=[t.label for t in labels],
                       trust_reasons=["; ".join(t.reasons) for t in labels])


def _pooled_rows(cfg: LimitsParams, keys: dict[str, str], store: Store) -> pd.DataFrame:
    """One row per pooled-units fit and modelled unit (empty without the axis)."""
    rows = []
    for n_pool in cfg.pooled_units:
        d = load_json(_entry(store, keys[f"limits/pool/u{n_pool}"], "pooled") / "pooled.json")
        head = {"n_images": int(cfg.pooled_at), "n_pool": d["n_pool"],
                "sessions": d["sessions"], "seconds_per_unit": d["seconds_per_unit"],
                "fit_seconds": d["fit_seconds"], "epochs": d["epochs"]}
        for u in d["units"]:
            plain = {k: v for k, v in u.items() if k != "finetuned"}
            rows.append(head | plain | {"finetuned": False})
            if u.get("finetuned"):  # the same unit's fine-tuned model: its own figures
                who = {k: u[k] for k in ("unit_id", "true_kind")}
                rows.append(head | who | u["finetuned"] | {"finetuned": True})
    return pd.DataFrame(rows, columns=None if rows else ["n_images", "n_pool", "unit_id",
                                                         "finetuned"])


def limits_stage(out_dir, limits: dict | None, model: dict, train: dict,
                 selection: dict | None = None, trust: dict | None = None,
                 progress: bool = False, cache: str | None = None) -> dict[str, pd.DataFrame]:
    """The limits stage: the study's tables from the shared store, as ``limits_*.csv``.

    Runs each piece of :func:`plan_tasks` (in dependency order; a piece whose entry is there,
    e.g. computed by the run engine's workers or by an earlier run with the same settings,
    returns at once), assembles the tables, applies the trust thresholds and writes
    ``limits_{session,units,models}.csv`` into ``out_dir`` (nothing else goes there).

    Parameters
    ----------
    out_dir : path
        Where the three CSV files go.
    limits, model, train, selection, trust : dict
        The report's params sections (models are configured as in the report).
    progress : bool
        tqdm progress over the pieces.
    cache : str, optional
        The shared cache folder (:func:`meireport.store.cache_root`).

    Returns
    -------
    dict of DataFrame
        ``session`` (one row per size: selection precision/recall, ``seconds``: the pieces'
        compute time), ``units`` (one row per modelled unit: true kind, selection metrics, MEI
        checks, trust) and ``models`` (one row per unit and model variant: test and true-rate
        correlations, ``frac_oracle``, seconds).
    """
    from tqdm.auto import tqdm

    from meireport.report.stages import single_thread_torch

    single_thread_torch()  # beside the neurons' workers: one core each, reproducible numbers
    cfg = LimitsParams.from_dict(limits)
    tasks = _plan(cfg, model, train, selection, str(cache_root(cache)))
    keys = {t.task_id: _ensure(t) for t in tqdm(tasks, desc="limits", disable=not progress)}
    tables = _assemble(cfg, keys, _store(cache), trust)
    out = Path(out_dir)
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
    if "dei_true_phase_span_deg" in tu:  # complex cells' DEIs span phase; simple cells' do not
        cx = tu[tu["true_kind"] == "complex"].groupby("n_images")["dei_true_phase_span_deg"]
        sp = tu[tu["true_kind"] == "simple"].groupby("n_images")["dei_median_mei_corr"]
        out = out.join(cx.median().rename("DEI phase span complex (deg)"))
        out = out.join(sp.median().rename("DEI-MEI corr simple"))
    return out.join(session.set_index("n_images")[["precision", "recall"]])


def pooled_table(tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """The pooled-units axis: per-neuron CNN against shared cores on more and more units.

    Medians over the modelled tuned units (the same units in every row), per cell kind: the
    model's correlation with the true rate, MEI vs truth; and the share of them for which the
    true neuron fires more for the MEI than for its best natural image / the session Gabor
    (all in the comparison set); ``s / unit``: training seconds per modelled unit. Pooled rows
    with ``finetuned`` (each unit's readout of the core fitted further on its own responses,
    ``model.finetune``) make a ``+ fine-tune`` row after their pool size's.

    Examples
    --------
    >>> units = pd.DataFrame({"n_images": [30, 30], "unit_id": [1, 2],
    ...                       "true_kind": ["simple", "complex"], "mei_rf_corr": [0.6, 0.2],
    ...                       "mei_true_resp": [9, 5], "best_image_true_resp": [4, 6],
    ...                       "session_gabor_true_resp": [1, 1]})
    >>> models = pd.DataFrame({"n_images": [30, 30], "variant": ["CNN", "CNN"],
    ...                        "unit_id": [1, 2], "true_kind": ["simple", "complex"],
    ...                        "true_corr": [0.5, 0.3], "seconds": [10.0, 20.0]})
    >>> pooled = units.assign(n_pool=40, true_corr=[0.7, 0.6], seconds_per_unit=0.5)
    >>> t = pooled_table({"units": units, "models": models, "pooled": pooled})
    >>> t.index.tolist()
    ['per-neuron CNN', 'shared core, 40 units']
    >>> float(t.loc["shared core, 40 units", "MEI vs truth complex"]), t["s / unit"].tolist()
    (0.2, [15.0, 0.5])
    """
    pooled = tables.get("pooled")
    if pooled is None or pooled.empty:
        return pd.DataFrame()
    n = int(pooled["n_images"].iloc[0])
    units = tables["units"]
    per = units[(units["n_images"] == n) & units["unit_id"].isin(pooled["unit_id"])].copy()
    m = tables["models"]
    cnn = m[(m["n_images"] == n) & (m["variant"] == "CNN")].set_index("unit_id")
    per["true_corr"] = cnn["true_corr"].reindex(per["unit_id"]).to_numpy()
    per["seconds_per_unit"] = cnn["seconds"].reindex(per["unit_id"]).to_numpy()
    tuned = pooled["finetuned"].astype(bool) if "finetuned" in pooled else False
    groups = [("per-neuron CNN", per)]
    for k, g in pooled.assign(finetuned=tuned).groupby("n_pool", sort=True):
        groups.append((f"shared core, {int(k)} units", g[~g["finetuned"]]))
        if g["finetuned"].any():
            groups.append((f"shared core, {int(k)} units + fine-tune", g[g["finetuned"]]))
    rows = {}
    for name, g in groups:
        g = g[g["true_kind"].isin(TUNED)]
        row = {}
        for kind in TUNED:
            gk = g[g["true_kind"] == kind]
            row[f"true_corr {kind}"] = float(gk["true_corr"].median())
            row[f"MEI vs truth {kind}"] = float(gk["mei_rf_corr"].median())
        row["MEI > best image"] = float((g["mei_true_resp"] > g["best_image_true_resp"]).mean())
        if "session_gabor_true_resp" in g:
            row["MEI > session Gabor"] = float(
                (g["mei_true_resp"] > g["session_gabor_true_resp"]).mean())
        row["units"] = len(g)
        row["s / unit"] = float(g["seconds_per_unit"].median())
        row["MEI s / unit"] = float(g["mei_seconds"].median()) if "mei_seconds" in g else np.nan
        rows[name] = row
    return pd.DataFrame(rows).T


def pooled_verdict(table: pd.DataFrame) -> str:
    """Which model the pooled-units axis favours, in a sentence per model.

    The largest pool (plain, and fine-tuned where computed) against the per-neuron CNN on the
    median MEI vs truth of both kinds; the default is the cheapest model that beats the
    per-neuron CNN on both (per-neuron, then the shared core, then the fine-tuned one).

    Examples
    --------
    >>> t = pd.DataFrame({"MEI vs truth simple": [0.8, 0.7, 0.85],
    ...                   "MEI vs truth complex": [0.6, 0.7, 0.75]},
    ...                  index=["per-neuron CNN", "shared core, 500 units",
    ...                         "shared core, 500 units + fine-tune"])
    >>> print(pooled_verdict(t))  # doctest: +NORMALIZE_WHITESPACE
    A shared core on 500 units neither beats nor loses to the per-neuron CNN on MEI vs truth:
    median 0.70 / 0.70 (simple / complex) against 0.80 / 0.60. Fine-tuned on each unit's own
    responses, it beats it: 0.85 / 0.75. This evidence favours `model.kind: shared` with
    `model.finetune: true` (the cheapest model that beats the per-neuron CNN on both kinds).
    """
    if table.empty:
        return "The pooled-units axis was not computed in this run (`limits.pooled_units`)."
    cols = [f"MEI vs truth {k}" for k in TUNED]
    per = table.loc["per-neuron CNN", cols]
    shared = [r for r in table.index if r.startswith("shared core, ")]
    size = shared[-1].removeprefix("shared core, ").removesuffix(" + fine-tune")
    plain = table.loc[f"shared core, {size}", cols]
    ft_name = f"shared core, {size} + fine-tune"
    ft = table.loc[ft_name, cols] if ft_name in table.index else None

    def what(row) -> str:
        return ("beats" if (row > per).all() else "loses to" if (row < per).all()
                else "neither beats nor loses to")

    text = (f"A shared core on {size} {what(plain)} the per-neuron CNN on MEI vs truth: median "
            f"{plain.iloc[0]:.2f} / {plain.iloc[1]:.2f} (simple / complex) against "
            f"{per.iloc[0]:.2f} / {per.iloc[1]:.2f}.")
    if ft is not None:
        text += (f" Fine-tuned on each unit's own responses, it {what(ft)} it: "
                 f"{ft.iloc[0]:.2f} / {ft.iloc[1]:.2f}.")
    if (plain > per).all():
        default = "`model.kind: shared`"
    elif ft is not None and (ft > per).all():
        default = "`model.kind: shared` with `model.finetune: true`"
    else:
        return text + (" This evidence favours `model.kind: per_neuron` (a shared model must "
                       "beat it on both kinds).")
    return text + (f" This evidence favours {default} (the cheapest model that beats the "
                   "per-neuron CNN on both kinds).")


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


def trust_separation(units: pd.DataFrame, by: str = "n_images") -> pd.DataFrame:
    """Median ``mei_rf_corr`` and the share of MEIs matching the truth per size and trust label.

    A label is useful when ``high`` rows have clearly higher values than ``low`` rows. ``by``:
    the column that says the size (the pooled-units rows: ``n_pool``).
    """
    tu = units[units["true_kind"].isin(TUNED)]
    g = tu.assign(match=tu["mei_rf_corr"] >= MATCH).groupby([by, "trust"])
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



def pooled_trust(pooled: pd.DataFrame) -> tuple[pd.DataFrame, pd.Series]:
    """The trust label on the shared models' MEIs: separation per pool size, and criteria AUC.

    The same rule and thresholds as the per-neuron rows (:func:`trust_separation`,
    :func:`criterion_auc`), over the pooled-units rows (every pool size together for the AUC):
    whether the label still tells MEIs that match the truth from those that do not when the
    model is a shared core.

    Examples
    --------
    >>> p = pd.DataFrame({"n_pool": [10, 10, 50, 50], "true_kind": ["simple"] * 4,
    ...                   "mei_rf_corr": [0.9, 0.1, 0.8, 0.2], "trust": ["high", "low"] * 2,
    ...                   "frac_oracle": [0.9, 0.2, 0.7, 0.3]})
    >>> sep, auc = pooled_trust(p)
    >>> sep["median mei_rf_corr"].tolist(), float(auc["frac_oracle"])
    ([0.9, 0.1, 0.8, 0.2], 1.0)
    """
    if "trust" not in pooled or not len(pooled):
        return pd.DataFrame(), pd.Series(dtype=float, name="AUC")
    if "finetuned" in pooled:  # the shared cores' own readouts (a fine-tuned model is a unit's)
        pooled = pooled[~pooled["finetuned"].astype(bool)]
    sep = trust_separation(pooled, by="n_pool")
    return sep.rename_axis(index={"n_pool": "pooled units"}), criterion_auc(pooled)


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
