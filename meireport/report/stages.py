"""What the per-neuron notebooks call: training, MEI and Gabor stages on a run folder's artifacts.

Each stage reads the artifacts written by the stages before it (``results/<session>/...`` and
``results/<session>/<unit>/...``), writes its own atomically, and returns what its page shows.
The params sections arrive as plain dicts (a notebook's ``p["model"]``); each is read through its
section of :mod:`meireport.report.params`, which builds the library's configuration
(``ModelParams.configs``, ``MEIParams.config``, ``GaborParams.search_config``, ...); the ``train``
section is :class:`meireport.models.TrainConfig` itself.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from meireport.artifacts import (
    file_sha256,
    load_csv,
    load_json,
    load_npz,
    save_csv,
    save_json,
    save_npy,
    save_npz,
)
from meireport.errors import MeireportError
from meireport.report.params import GaborParams, MEIParams, ModelParams, SelectionParams
from meireport.stimuli import ScreenGeometry
from meireport.store import code_hash, content_key

__all__ = [
    "extract_stage",
    "select_stage",
    "selection_groups",
    "rule_sentence",
    "summary_stage",
    "across_stage",
    "response_data",
    "session_gabors",
    "unit_row",
    "train_stage",
    "shared_stage",
    "fit_pooled",
    "shared_dir",
    "pooled_units",
    "mei_stage",
    "UnitMEI",
    "unit_mei",
    "mei_truth_values",
    "rf_centre",
    "single_thread_torch",
    "unit_measures",
    "trust_stage",
    "gabor_stage",
    "TrainStage",
    "MEIStage",
    "GaborStage",
]


def single_thread_torch() -> None:
    """One torch thread per stage: results then do not depend on the worker's core count.

    Parallelism comes from running neurons in separate workers; the float reductions of a
    multi-threaded torch differ (at ~1e-9) with the thread count.
    """
    import torch

    torch.set_num_threads(1)


# -------------------------------------------------------------------------------------------
# compute cache: a stage's artifacts are recomputed only when what they are computed from changes
# -------------------------------------------------------------------------------------------
#: The package parts each stage's computation runs (a change elsewhere, e.g. in plots/ or a
#: notebook, re-renders its page from the cached artifacts and recomputes nothing).
COMPUTE_CODE: dict[str, tuple[str, ...]] = {
    "select": ("select", "extract", "stimuli", "artifacts", "report/stages", "report/params"),
    "train": ("models", "stimuli", "artifacts", "sources/simulate", "report/stages",
              "report/params"),
    "shared": ("models", "stimuli", "artifacts", "sources/simulate", "report/stages",
               "report/params"),
    "mei": ("mei", "models", "stimuli", "artifacts", "sources/simulate", "report/stages",
            "report/params"),
    "shared_mei": ("mei", "models", "stimuli", "artifacts", "report/stages", "report/params"),
    "gabor": ("mei", "models", "extract", "stimuli", "artifacts", "sources/simulate",
              "report/stages", "report/params"),
}


def compute_key(stage: str, inputs, settings) -> str:
    """Key of a stage's computation: its input files' contents, its settings, its code.

    Parameters
    ----------
    stage : str
        A key of :data:`COMPUTE_CODE`.
    inputs : iterable of path
        The files the computation reads.
    settings : JSON-able
        Everything else it depends on (its params section, the unit id, the device).
    """
    digests = {Path(p).name: file_sha256(p) for p in inputs}
    return content_key(stage, digests, settings, code_hash(*COMPUTE_CODE[stage]))


def _record_file(out_dir, stage: str) -> Path:
    return Path(out_dir) / f".{stage}.compute.json"


def cached_values(out_dir, stage: str, key: str, outputs) -> dict | None:
    """The values recorded with a stage's last computation in ``out_dir``, if still valid.

    Valid: recorded under ``key`` and every output file has the content it had then.
    """
    f = _record_file(out_dir, stage)
    try:
        rec = load_json(f)
        ok = rec["key"] == key and all(
            file_sha256(Path(out_dir) / name) == rec["outputs"][name] for name in outputs)
    except (MeireportError, OSError, KeyError, TypeError):
        return None
    return rec.get("values", {}) if ok else None


def record_compute(out_dir, stage: str, key: str, outputs, values: dict | None = None) -> None:
    """Record a stage's computation: its key, its outputs' digests and the values it found."""
    digests = {name: file_sha256(Path(out_dir) / name) for name in outputs}
    save_json(_record_file(out_dir, stage), {"key": key, "outputs": digests,
                                             "values": values or {}})


# -------------------------------------------------------------------------------------------
# artifacts -> data
# -------------------------------------------------------------------------------------------
def _session(session_dir) -> tuple[Path, dict, ScreenGeometry]:
    sdir = Path(session_dir)
    info = load_json(sdir / "session.json")
    return sdir, info, ScreenGeometry.from_dict(info["geometry"])


#: Gabor parameters saved in ``gabors.npz`` beside the counts (see :func:`extract_stage`).
_GABOR_COLUMNS = ("orientation", "x_position", "y_position", "size", "spatial_frequency",
                  "contrast")


def session_gabors(session_dir):
    """The gabor presentations of ``gabors.npz``: :class:`meireport.extract.GaborResponses`."""
    from meireport.extract import GaborResponses

    g = load_npz(Path(session_dir) / "gabors.npz")
    ids = g["presentation_ids"]
    return GaborResponses(table=pd.DataFrame({k: g[k] for k in _GABOR_COLUMNS}, index=ids),
                          counts=pd.DataFrame(g["counts"], index=ids, columns=g["unit_ids"]))


def response_data(session_dir, gabors: bool = False):
    """:class:`meireport.models.ResponseData` rebuilt from the extraction artifacts."""
    from meireport.models import ResponseData, gabor_set

    sdir, _, geometry = _session(session_dir)
    tr = load_npz(sdir / "trials.npz")
    im = load_npz(sdir / "images.npz")
    if not np.array_equal(im["frames"], tr["image_ids"]):
        raise MeireportError(f"{sdir}: images.npz and trials.npz disagree on frame ids")
    gs = None
    if gabors:
        g = session_gabors(sdir)
        gs = gabor_set(g.table, g.counts, geometry)
    return ResponseData(images=im["images"], trials=tr["data"], unit_ids=tr["unit_ids"],
                        image_ids=tr["image_ids"], gabors=gs)


def unit_row(session_dir, unit_id: int) -> pd.Series:
    """The unit's row of ``selection.csv`` (metrics, RF centre), or a clear error."""
    sel = load_csv(Path(session_dir) / "selection.csv").set_index("unit_id")
    if int(unit_id) not in sel.index:
        raise MeireportError(
            f"unit_id: {unit_id} is not a unit of this session's area "
            f"(known: {', '.join(map(str, sel.index[:8]))}, ...)"
        )
    return sel.loc[int(unit_id)]


def _truth(info: dict, session_dir):
    """The simulator's ground truth (path in ``session.json`` is relative to the session folder)."""
    if not info.get("ground_truth"):
        return None
    from meireport.sources.simulate import load_ground_truth

    return load_ground_truth(Path(session_dir) / info["ground_truth"])


def rf_centre(row: pd.Series) -> tuple[float, float] | None:
    """The unit's mapped RF centre ``(col, row)`` in model pixels, or None without a mapped RF.

    Examples
    --------
    >>> rf_centre(pd.Series({"has_rf": True, "rf_col_px": 40.0, "rf_row_px": 30.0}))
    (40.0, 30.0)
    >>> rf_centre(pd.Series({"has_rf": False, "rf_col_px": 40.0, "rf_row_px": 30.0})) is None
    True
    """
    ok = bool(row.get("has_rf", False)) and np.isfinite(row.get("rf_col_px", np.nan))
    return (float(row["rf_col_px"]), float(row["rf_row_px"])) if ok else None


# -------------------------------------------------------------------------------------------
# stages
# -------------------------------------------------------------------------------------------
@dataclass
class TrainStage:
    """Result of :func:`train_stage`: the fitted CNN and LN, and the figures' inputs."""

    cnn: object
    ln: object
    values: dict
    truth: object = None


def _device(device) -> object:
    """The torch device of a ``run.device`` value (``None``: auto)."""
    from meireport.models import resolve_device

    return resolve_device(device or "auto")


def _session_inputs(sdir: Path, info: dict, *names: str) -> list[Path]:
    """Session artifacts a computation reads, with the simulator's ground truth when there is."""
    files = [sdir / n for n in names]
    if info.get("ground_truth"):
        files.append(sdir / info["ground_truth"])
    return files


#: Columns of a unit's ``selection.csv`` row that its model reads (its other columns, e.g.
#: ``selected``, change with the selection thresholds and do not change the model).
_ROW_READ = ("oracle_corr", "has_rf", "rf_col_px", "rf_row_px")


def train_stage(session_dir, out_dir, unit_id: int, model: dict, train: dict,
                device: str | None = None) -> TrainStage:
    """Fit the unit's CNN and LN baseline; write ``model.pt``, ``ln.pt`` and ``train.json``.

    With ``model.crop`` set, a unit without a mapped receptive field (no significant RF map) is
    fitted on the full field; ``train.json``'s ``crop_px`` says which. The fit is skipped when
    its inputs (session artifacts, the unit's row, ``model``, ``train``, the device kind and the
    training code) are those of the fit already in ``out_dir`` (:func:`compute_key`); the
    result is always read back from the files, so a cached and a fresh page show the same.
    """
    from meireport.models import TrainConfig, load_model

    sdir, info, _ = _session(session_dir)
    out = Path(out_dir)
    row = unit_row(sdir, unit_id)
    dev = _device(device)
    gabors = TrainConfig.from_dict(dict(train)).gabors
    names = ("trials.npz", "images.npz", "session.json") + (("gabors.npz",) if gabors else ())
    settings = {"unit_id": int(unit_id), "model": model, "train": train, "device": dev.type,
                "row": {k: row.get(k) for k in _ROW_READ}}
    inputs = _session_inputs(sdir, info, *names)
    shared = ModelParams.from_dict(model).kind == "shared"
    if shared:  # the unit's readout of the run's shared core
        inputs.append(shared_dir(sdir) / "model.pt")
    key = compute_key("train", inputs, settings)
    outputs = ("model.pt", "ln.pt", "train.json")
    if cached_values(out, "train", key, outputs) is None:
        _fit_unit(sdir, out, unit_id, model, train, dev, shared)
        record_compute(out, "train", key, outputs)
    return TrainStage(load_model(out / "model.pt"), load_model(out / "ln.pt"),
                      load_json(out / "train.json"), _truth(info, sdir))


def _fit_unit(sdir: Path, out: Path, unit_id: int, model: dict, train: dict, dev,
              shared: bool = False) -> None:
    from meireport.models import TrainConfig, fit_model, load_model, make_split, save_checkpoint

    single_thread_torch()
    _, info, geometry = _session(sdir)
    row = unit_row(sdir, unit_id)
    mp, tr_cfg = ModelParams.from_dict(model), TrainConfig.from_dict(dict(train))
    data = response_data(sdir, gabors=tr_cfg.gabors)
    centre = rf_centre(row)
    if (mp.crop_size and centre is None) or shared:  # nothing to crop around: the full field
        mp = mp.model_copy(update={"crop_size": None})
    cnn_cfg, ln_cfg = mp.configs(geometry.shape)
    split = make_split(data.image_ids, tr_cfg.val_frac, tr_cfg.test_frac, tr_cfg.split_seed)
    truth = _truth(info, sdir)
    oracle = {int(unit_id): float(row["oracle_corr"])}
    kw = dict(train_config=tr_cfg, rf_centres=[centre], oracle=oracle, truth=truth,
              split=split, device=dev)
    if shared:
        whole = load_model(shared_dir(sdir) / "model.pt", device=dev)
        if int(unit_id) not in set(whole.unit_ids.tolist()):
            raise MeireportError(f"unit_id: {unit_id} is not a unit of the shared model "
                                 f"{shared_dir(sdir) / 'model.pt'} (rerun the run: it plans "
                                 "every reported neuron into the shared fit)")
        cnn = whole.subset([int(unit_id)])
        cnn.seconds = float(whole.seconds) / len(whole.unit_ids)  # the fit's cost per unit
        if mp.finetune:  # then fitted further on the unit's own responses
            cnn = fine_tune(cnn, data, cnn_cfg, kw | {"split": whole.split}, mp.finetune_lr)
    else:
        cnn = fit_model(data, [int(unit_id)], "cnn", cnn_cfg, **kw)
    ln = fit_model(data, [int(unit_id)], "ln", ln_cfg, **kw)
    extra = {"session_id": int(info["session_id"]), "window": info["window"]}
    cnn.extra.update(extra)
    ln.extra.update(extra)
    save_checkpoint(cnn, out / "model.pt")
    save_checkpoint(ln, out / "ln.pt")
    m, mln = cnn.metrics.iloc[0], ln.metrics.iloc[0]
    values = {
        "test_corr": float(m["test_corr"]), "test_corr_ci_low": float(m["test_corr_ci_low"]),
        "test_corr_ci_high": float(m["test_corr_ci_high"]), "frac_oracle": float(m["frac_oracle"]),
        "single_trial_corr": float(m["single_trial_corr"]),
        "test_ll_gain": float(m["test_ll_gain"]),
        "test_corr_ln": float(mln["test_corr"]), "frac_oracle_ln": float(mln["frac_oracle"]),
        "train_seconds": float(cnn.seconds), "train_seconds_ln": float(ln.seconds),
        "rf_centre_px": list(centre) if centre else None,
        "crop_px": mp.crop_size,  # null when the unit has no mapped RF to crop around
        "model_kind": mp.kind, "finetuned": bool(shared and mp.finetune),
        "shared_units": int(cnn.extra.get("shared_units", 1)),
        "shared_sessions": int(len(cnn.extra.get("sessions", [info["session_id"]]))),
    }
    if "true_corr" in cnn.metrics:
        values |= {"true_corr": float(m["true_corr"]), "true_corr_ln": float(mln["true_corr"])}
    save_json(out / "train.json", values)


def fine_tune(sub, data, cnn_cfg, kw: dict, lr: float):
    """A unit's readout of a shared core (``sub``) fitted further on its own responses.

    The whole model (core and readout) is trained from those weights at learning rate ``lr``
    with the run's other training settings, on the shared fit's split; the shared model is kept
    where no epoch beats its validation correlation. ``seconds``: the shared fit's share plus
    this fit's own.
    """
    from dataclasses import replace

    from meireport.models import fit_model

    kw = kw | {"train_config": replace(kw["train_config"], lr=float(lr))}
    tuned = fit_model(data, list(sub.unit_ids), "cnn", cnn_cfg, start=sub.model, **kw)
    tuned.seconds = float(sub.seconds) + float(tuned.seconds)
    tuned.extra.update(sub.extra | {"finetuned": True})
    return tuned


def shared_dir(session_dir) -> Path:
    """Where a run's shared model lives: ``results/shared`` beside the session folders."""
    return Path(session_dir).resolve().parent / "shared"


def pooled_units(session_dir, floor: float, include=()) -> pd.DataFrame:
    """The units of one session a shared core is fitted on.

    Every analysed unit (those of ``selection.csv``: the area's units passing the unit filter)
    whose oracle correlation reaches ``floor``, plus the ``include`` ids (the reported neurons,
    whatever their oracle), with what the fit reads of them: ``unit_id``, ``oracle_corr``, the
    mapped RF centre (``rf_col_px``, ``rf_row_px``: NaN without a mapped RF).
    """
    sel = load_csv(Path(session_dir) / "selection.csv")
    keep = (sel["oracle_corr"].astype(float) >= float(floor)) | sel["unit_id"].isin(
        [int(u) for u in include])
    rows = []
    for _, r in sel[keep].iterrows():
        c = rf_centre(r)
        rows.append({"unit_id": int(r["unit_id"]), "oracle_corr": float(r["oracle_corr"]),
                     "rf_col_px": np.nan if c is None else c[0],
                     "rf_row_px": np.nan if c is None else c[1]})
    return pd.DataFrame(rows, columns=["unit_id", "oracle_corr", "rf_col_px", "rf_row_px"])


def shared_stage(run_dir, session_ids, model: dict, train: dict, include: Mapping | None = None,
                 device: str | None = None) -> dict:
    """Fit the run's shared core on the pooled units of every session; ``results/shared``.

    The units of every session (:func:`pooled_units` with ``model.shared_floor`` and the
    session's reported neurons in ``include``: ``session id -> unit ids``) are fitted together:
    one core, one readout per unit, early stopping on the pooled validation correlation
    (:func:`meireport.models.fit_model`). Writes ``model.pt`` (every unit; a neuron's train
    stage takes its readout: :meth:`meireport.models.TrainedModel.subset`), ``shared.json``
    (units, sessions, seconds) and ``shared_units.csv`` (each unit's metrics). Skipped when its
    inputs are those of the fit already there.

    Returns
    -------
    dict
        The contents of ``shared.json``.
    """
    return _shared_fit(run_dir, session_ids, model, train, include, device)[0]


def shared_task(run_dir, session_ids, model: dict, train: dict, include: Mapping | None = None,
                device: str | None = None) -> str:
    """:func:`shared_stage` as a task of the run's graph: ``"cached"`` when nothing was fitted."""
    from meireport.report.engine import CACHED

    return CACHED if _shared_fit(run_dir, session_ids, model, train, include, device)[1] else "ok"


#: ``model`` fields the shared fit does not read (each neuron's fine-tune does).
_PER_NEURON_ONLY = ("finetune", "finetune_lr")


def _shared_fit(run_dir, session_ids, model, train, include, device) -> tuple[dict, bool]:
    """The shared fit (see :func:`shared_stage`) and whether it was already there."""
    from meireport.models import TrainConfig, save_checkpoint

    run_dir = Path(run_dir)
    out = run_dir / "results" / "shared"
    mp, tr_cfg = ModelParams.from_dict(model), TrainConfig.from_dict(dict(train))
    include = {int(k): [int(u) for u in v] for k, v in dict(include or {}).items()}
    sdirs = [run_dir / "results" / str(int(s)) for s in session_ids]
    pools = [pooled_units(d, mp.shared_floor, include.get(int(s), ()))
             for s, d in zip(session_ids, sdirs, strict=True)]
    names = ("trials.npz", "images.npz", "session.json") + (
        ("gabors.npz",) if tr_cfg.gabors else ())
    digests = {str(s): {p.name: file_sha256(p) for p in _session_inputs(d, _session(d)[1], *names)}
               for s, d in zip(session_ids, sdirs, strict=True)}
    dev = _device(device)
    core = {k: v for k, v in dict(model).items() if k not in _PER_NEURON_ONLY}
    settings = {"model": core, "train": train, "device": dev.type, "inputs": digests,
                "units": [p.to_dict(orient="list") for p in pools]}
    key = compute_key("shared", [], settings)
    outputs = ("model.pt", "shared.json", "shared_units.csv")
    cached = cached_values(out, "shared", key, outputs) is not None
    if not cached:
        single_thread_torch()
        pool = pd.concat(pools, ignore_index=True)
        if pool.empty:
            raise MeireportError(f"model.shared_floor: no unit of sessions "
                                 f"{list(session_ids)} reaches {mp.shared_floor}")
        cnn_cfg, _ = mp.model_copy(update={"crop_size": None}).configs(
            _session(sdirs[0])[2].shape)
        ids = pool["unit_id"].astype(int).tolist()
        centres = [None if np.isnan(c) else (float(c), float(r))
                   for c, r in zip(pool["rf_col_px"], pool["rf_row_px"], strict=True)]
        fit, _ = fit_pooled(sdirs, ids, cnn_cfg, tr_cfg, centres,
                            dict(zip(ids, pool["oracle_corr"].astype(float), strict=True)), dev)
        session_of = {int(u): int(s) for s, p in zip(session_ids, pools, strict=True)
                      for u in p["unit_id"]}
        fit.extra.update({"sessions": [int(s) for s in session_ids], "model_kind": "shared"})
        save_checkpoint(fit, out / "model.pt")
        units = fit.metrics.reset_index()
        units.insert(1, "session_id", [session_of[int(u)] for u in units["unit_id"]])
        save_csv(out / "shared_units.csv", units, index=False)
        save_json(out / "shared.json", {
            "n_units": len(ids), "sessions": [int(s) for s in session_ids],
            "units_per_session": {str(s): int(len(p)) for s, p in
                                  zip(session_ids, pools, strict=True)},
            "floor": float(mp.shared_floor), "seconds": float(fit.seconds),
            "seconds_per_unit": float(fit.seconds) / len(ids),
            "epochs": int(len(fit.history)), "val_corr": float(max(
                (h["val_corr"] for h in fit.history), default=float("nan")))})
        record_compute(out, "shared", key, outputs)
    return load_json(out / "shared.json"), cached


def fit_pooled(session_dirs, unit_ids, cnn_config, train_config, centres, oracle,
               device=None):
    """One shared core fitted on ``unit_ids`` of several sessions' extraction artifacts.

    The sessions' responses are pooled (:func:`meireport.models.pool_responses`: the same
    images), their ground truths combined when every session has one, and the units fitted
    together (:func:`meireport.models.fit_model`, the split of ``train_config``). The run's
    shared stage and the data-limit chapter's pooled pieces both call this.

    Returns
    -------
    tuple
        The :class:`meireport.models.TrainedModel` and the pooled
        :class:`meireport.models.ResponseData`.
    """
    from meireport.models import fit_model, make_split, pool_responses
    from meireport.sources.simulate import combine_truths

    dirs = [Path(d) for d in session_dirs]
    data = pool_responses([response_data(d, gabors=train_config.gabors) for d in dirs])
    truths = [_truth(_session(d)[1], d) for d in dirs]
    truth = combine_truths(truths) if all(t is not None for t in truths) else None
    tr = train_config
    fit = fit_model(data, list(unit_ids), "cnn", cnn_config, tr, rf_centres=centres,
                    oracle=oracle, truth=truth,
                    split=make_split(data.image_ids, tr.val_frac, tr.test_frac, tr.split_seed),
                    device=device)
    return fit, data


def _unit_model(out_dir, dev=None):
    from meireport.mei import UnitModel
    from meireport.models import load_model

    trained = load_model(Path(out_dir) / "model.pt", device=dev)
    return trained, UnitModel(trained.model, 0).eval()


def _train_images(session_dir, trained) -> tuple[np.ndarray, np.ndarray]:
    im = load_npz(Path(session_dir) / "images.npz")
    rows = np.isin(im["frames"], np.asarray(trained.split.train))
    return im["images"][rows].astype(np.float64), im["images"].astype(np.float64)


@dataclass
class MEIStage:
    """Result of :func:`mei_stage`."""

    result: object
    values: dict
    best_image: np.ndarray
    mean: float
    c_star: float
    trust: object = None  # meireport.trust.Trust
    deis: dict | None = None  # images, responses, fractions (deis.npz); None: not synthesised


_TRUST_FROM_SELECTION = ("selection_stability", "rf_p_value")


def trust_stage(session_dir, out_dir, unit_id: int, mei_values: dict, trust: dict | None = None):
    """Assess how far the unit's MEI can be trusted; write ``trust.json``.

    Merges the unit's ``selection.csv`` row (``selection_stability``, ``rf_p_value``), its
    ``train.json`` (test-correlation CI, ``frac_oracle``) and ``mei_values``
    (``mei_reliability``), and applies :func:`meireport.trust.assess` with the thresholds of the
    ``trust`` params section (``None``: the defaults). A missing ``train.json`` leaves its
    criteria unknown.

    Returns
    -------
    meireport.trust.Trust
    """
    from meireport.trust import TrustThresholds, assess

    thresholds = TrustThresholds.from_params(trust)
    row = unit_row(session_dir, unit_id)
    values: dict = {k: row.get(k) for k in _TRUST_FROM_SELECTION}
    train_file = Path(out_dir) / "train.json"
    if train_file.is_file():
        values |= {k: v for k, v in load_json(train_file).items() if np.isscalar(v) or v is None}
    values |= mei_values
    result = assess(values, thresholds)
    save_json(Path(out_dir) / "trust.json", result.to_dict())
    return result


@dataclass
class UnitMEI:
    """One unit's MEI as the report computes it, beside the natural images at equal footing.

    Attributes
    ----------
    result : meireport.mei.MEIResult
        The synthesis (every start, their agreement).
    mei : ndarray
        The MEI clipped to [0, 1].
    mean, c_star : float
        Footing: the training images' mean luminance and mean contrast.
    stimuli : ndarray
        The MEI followed by every natural image, all rescaled to the footing.
    pred : ndarray
        The model's response to each of ``stimuli``.
    f1_f0 : float
        The model's phase modulation at its MEI (:func:`meireport.mei.phase_modulation`): below
        1 complex-like, above simple-like; ``inf`` when its mean response over phase is 0.
    """

    result: object
    mei: np.ndarray
    mean: float
    c_star: float
    stimuli: np.ndarray
    pred: np.ndarray
    f1_f0: float

    @property
    def best(self) -> int:
        """Index (into the natural images) of the image the model responds to most."""
        return int(np.argmax(self.pred[1:]))

    def values(self) -> dict:
        """What ``mei.json`` records of the synthesis and of the model's verdicts."""
        from meireport.mei import clip_fraction

        res = self.result
        return {"mei_pred": float(self.pred[0]), "best_image_pred": float(self.pred[1 + self.best]),
                "mei_reliability": float(res.reliability),
                "mei_phase_reliability": float(res.phase_reliability),
                # JSON has no inf: an unmodulated-mean (silent on average) model is simple-like
                "mei_f1_f0": float(self.f1_f0) if np.isfinite(self.f1_f0) else None,
                "c_star": float(self.c_star), "mean_luminance": float(self.mean),
                "mei_method": str(res.config.method),
                # saturated pixels (0 or 1) of the stimuli as the model and the neuron see them
                "mei_clip_fraction": clip_fraction(self.stimuli[0]),
                "best_image_clip_fraction": clip_fraction(self.stimuli[1 + self.best]),
                "mei_seconds": float(res.seconds),
                # steps the kept start ran (the stopping rule's verdict), and all starts
                "mei_steps": int(res.summary()["steps"]),
                "mei_steps_total": int(res.summary()["steps_total"])}


def unit_mei(model, train_images, images, config, result=None) -> UnitMEI:
    """Synthesise a unit's MEI and set it beside the natural images, all in the same set.

    The set is the MEI's: the training images' mean luminance and the configured RMS contrast
    (``config.target_std``; :data:`meireport.mei.DEFAULT_CONTRAST`, or the training images'
    ``c*``). The constrained loop synthesises the MEI inside it; every natural image (and, in
    the seed loop, the MEI) is put there by :func:`meireport.mei.equalize`, the loop's own
    projection, before the model sees it. The report's MEI stage and the data-limit study both
    call this (one definition of "the MEI and its best rival image").

    Examples
    --------
    >>> from meireport.mei import LinearModel, MEIConfig
    >>> rng = np.random.default_rng(0)
    >>> imgs = rng.random((6, 12, 16))
    >>> w = np.zeros((12, 16)); w[4:8, 6:10] = 1.0
    >>> u = unit_mei(LinearModel(w), imgs, imgs, MEIConfig(steps=20, starts=("grey",)))
    >>> u.stimuli.shape, bool(u.pred[0] > u.pred[1 + u.best])
    ((7, 12, 16), True)
    """
    from meireport.mei import equalize, generate_mei, phase_modulation, predict

    train_images = np.asarray(train_images, dtype=np.float64)
    images = np.asarray(images, dtype=np.float64)
    # ``result``: the unit's MEI synthesised already (e.g. in a batch, meireport.mei.generate_meis)
    res = generate_mei(model, train_images, config) if result is None else result
    mean, c_star = res.mean, res.c_star
    mei_img = np.clip(res.mei, 0.0, 1.0)
    stimuli = equalize(np.concatenate([mei_img[None], images]), mean, c_star)
    if config.method == "constrained":  # the MEI is the image the loop ended with, in the set
        mei_img = stimuli[0]
    f1_f0 = phase_modulation(model, mei_img, mean, c_star)
    return UnitMEI(res, mei_img, float(mean), float(c_star), stimuli, predict(model, stimuli),
                   f1_f0)


def mei_truth_values(truth, unit_id: int, u: UnitMEI, images) -> dict:
    """The true neuron's verdicts on a simulated session (the in-silico inception loop).

    ``mei_true_resp`` (its response to the MEI), ``best_image_true_resp`` (to the natural image it
    itself prefers: the strongest rival), ``model_best_image_true_resp`` (to the model's pick) and
    ``mei_rf_corr`` (MEI vs the true optimal stimulus), all at the MEI's footing.
    """
    from meireport.mei import best_image_true_resp, mei_rf_corr, mei_true_resp, true_response

    kw = dict(mean=u.mean, std=u.c_star)
    pick = u.stimuli[1 + u.best][None]
    return {
        "mei_true_resp": mei_true_resp(truth, unit_id, u.mei, **kw),
        "best_image_true_resp": best_image_true_resp(truth, unit_id, images, **kw),
        "model_best_image_true_resp": float(true_response(truth, unit_id, pick, **kw)[0]),
        "mei_rf_corr": mei_rf_corr(truth, unit_id, u.mei),
    }


def unit_deis(model, u: UnitMEI, config) -> dict:
    """The unit's diverse exciting inputs (:func:`meireport.mei.diverse_meis`) in the MEI's set.

    Returns the arrays ``deis.npz`` holds (``images``, ``responses``, ``fractions``) and the
    figures ``mei.json`` records (``dei_*``, from :meth:`meireport.mei.DEIResult.summary`).
    """
    from meireport.mei import diverse_meis

    d = diverse_meis(model, u.result, config)
    arrays = {"images": d.images, "responses": d.responses, "fractions": d.fractions}
    return {"arrays": arrays, "values": {f"dei_{k}": v for k, v in d.summary().items()}}


def dei_truth_values(truth, unit_id: int, images, mei: np.ndarray) -> dict:
    """The true neuron's verdicts on the DEIs: the share of its MEI rate they keep, their phase.

    ``dei_true_fraction``: the median over DEIs of the true rate over the true rate for the MEI;
    ``dei_true_phase_span_deg``: for complex cells the carrier phase the DEIs span
    (:func:`meireport.mei.phase_span` on the true quadrature pair; None for other kinds).
    """
    from meireport.mei import phase_span
    from meireport.sources.simulate import true_rate

    i = int(truth.index_of([unit_id])[0])
    r = true_rate(truth, np.concatenate([mei[None], images]), [unit_id])[0]
    span = phase_span(images, truth.rf_even[i], truth.rf_odd[i]) \
        if str(truth.kind[i]) == "complex" else None  # JSON has no NaN
    return {"dei_true_fraction": float(np.median(r[1:] / r[0])) if r[0] > 0 else float("nan"),
            "dei_true_phase_span_deg": span}


def mei_stage(session_dir, out_dir, unit_id: int, mei: dict, trust: dict | None = None,
              device: str | None = None) -> MEIStage:
    """Synthesise the unit's MEI on its CNN; write ``mei.npy``, ``mei.json`` and ``trust.json``.

    The best natural image is compared at equal footing (:func:`unit_mei`): both rescaled to the
    training images' mean luminance and mean contrast ``c*``. A neuron of a shared run takes
    the MEI its batch synthesised (:func:`shared_meis_stage`, :func:`batched_mei_file`) and
    sets it beside the images here, as any other; without that batch it synthesises its own on
    its readout (the same loop: equal up to float rounding). The trust assessment
    (:func:`trust_stage`, with the ``trust`` params section's thresholds) is added to
    ``mei.json`` as ``trust`` (the label) and ``trust_reasons`` (``"; "``-joined), so that
    ``summary.csv`` carries them. The synthesis is skipped when its inputs (the model, the
    images, ``mei``, the device kind, the MEI code) are those of the one already in ``out_dir``;
    the trust label is always assessed anew (its thresholds are not part of the synthesis).
    """
    sdir, info, _ = _session(session_dir)
    out = Path(out_dir)
    dev = _device(device)
    batch = batched_mei_file(sdir, out, unit_id, mei)
    inputs = [out / "model.pt", *_session_inputs(sdir, info, "images.npz")]
    inputs += [] if batch is None else [batch]
    key = compute_key("mei", inputs, {"unit_id": int(unit_id), "mei": mei, "device": dev.type})
    mp = MEIParams.from_dict(mei)
    outputs = ("mei.npy", "mei_starts.npz") + (("deis.npz",) if mp.deis else ())
    values = cached_values(out, "mei", key, outputs)
    if values is None:
        values = _synthesise(sdir, out, unit_id, mei, dev, batch)
        record_compute(out, "mei", key, outputs, values)
    result, best_image = load_mei_result(out / "mei_starts.npz", mp.config())
    assessment = trust_stage(sdir, out_dir, unit_id, values, trust)
    values = values | {"trust": assessment.label, "trust_reasons": "; ".join(assessment.reasons)}
    save_json(out / "mei.json", values)
    deis = load_npz(out / "deis.npz") if mp.deis else None
    return MEIStage(result, values, best_image, values["mean_luminance"], values["c_star"],
                    assessment, deis)


def _synthesise(sdir: Path, out: Path, unit_id: int, mei: dict, dev,
                batch: Path | None = None) -> dict:
    single_thread_torch()
    _, info, _ = _session(sdir)
    trained, model = _unit_model(out, dev)
    train_imgs, all_imgs = _train_images(sdir, trained)
    mp = MEIParams.from_dict(mei)
    # a shared run's MEIs are synthesised in one batch for every reported neuron (shared_meis)
    done = None if batch is None else load_mei_result(batch, mp.config())[0]
    u = unit_mei(model, train_imgs, all_imgs, mp.config(), result=done)
    values = u.values()
    values["best_image_frame"] = int(load_npz(sdir / "images.npz")["frames"][u.best])
    truth = _truth(info, sdir)
    if truth is not None:
        values |= mei_truth_values(truth, unit_id, u, all_imgs)
    if mp.deis:
        d = unit_deis(model, u, mp.dei_config())
        values |= d["values"]
        if truth is not None:
            values |= dei_truth_values(truth, unit_id, d["arrays"]["images"], u.mei)
        save_npz(out / "deis.npz", **d["arrays"])
    save_npy(out / "mei.npy", u.mei)
    save_mei_result(out / "mei_starts.npz", u.result, u.stimuli[1 + u.best])
    return values


# -------------------------------------------------------------------------------------------
# a shared run's MEIs: every reported neuron's in one batch per session
# -------------------------------------------------------------------------------------------
def shared_mei_dir(shared_model, mei: dict) -> Path:
    """Where the batch of a shared model's MEIs lives: ``meis/<key>`` beside ``model.pt``.

    The key is that of the model file's contents and the ``mei`` section, so no neuron reads a
    batch synthesised on another model or with other settings.
    """
    f = Path(shared_model)
    return f.parent / "meis" / content_key("shared_mei", file_sha256(f), dict(mei))[:16]


def batched_mei_file(session_dir, out_dir, unit_id: int, mei: dict) -> Path | None:
    """The unit's MEI as its shared run's batch wrote it (:func:`shared_meis_stage`), or None.

    None for a per-neuron or fine-tuned model (``train.json``'s ``model_kind``, ``finetuned``)
    and where no batch of the run's shared model with these ``mei`` settings holds the unit.
    """
    train = Path(out_dir) / "train.json"
    tj = load_json(train) if train.is_file() else {}
    if tj.get("model_kind") != "shared" or tj.get("finetuned"):  # a model of its own
        return None
    model = shared_dir(session_dir) / "model.pt"
    if not model.is_file():
        return None
    f = shared_mei_dir(model, mei) / f"{int(unit_id)}.npz"
    return f if f.is_file() else None


def shared_meis_stage(run_dir, include: Mapping, mei: dict, device: str | None = None) -> dict:
    """Synthesise the MEIs of a shared run's reported neurons, one batch per session.

    Every neuron's starts go through the shared model together
    (:func:`meireport.mei.generate_meis`: one forward and backward pass per step serves all of
    them), on the training images of its session (the split of the shared fit). Each
    ``<unit>.npz`` (:func:`save_mei_result`) and ``batch.json`` (units, seconds) is written to
    :func:`shared_mei_dir`; each neuron's MEI stage then reads its own
    (:func:`batched_mei_file`) instead of synthesising it alone. Skipped when its inputs (the
    model, the images, ``mei``, the units, the device kind) are those of the batch already there.

    Parameters
    ----------
    run_dir : path
        The run folder (``results/shared/model.pt`` written by :func:`shared_stage`).
    include : mapping
        Session id -> its reported neurons.
    mei : dict
        The ``mei`` params section.
    device : str, optional
        The ``run.device`` setting (None: the best available).

    Returns
    -------
    dict
        The contents of ``batch.json``.
    """
    return _shared_meis(run_dir, include, mei, device)[0]


def shared_meis_task(run_dir, include: Mapping, mei: dict, device: str | None = None) -> str:
    """:func:`shared_meis_stage` as a task of the run's graph: ``"cached"`` when nothing ran."""
    from meireport.report.engine import CACHED

    return CACHED if _shared_meis(run_dir, include, mei, device)[1] else "ok"


def _shared_meis(run_dir, include, mei, device) -> tuple[dict, bool]:
    """The batch (see :func:`shared_meis_stage`) and whether it was already there."""
    import time

    from meireport.mei import generate_meis
    from meireport.models import load_model

    run_dir = Path(run_dir)
    model_file = run_dir / "results" / "shared" / "model.pt"
    out = shared_mei_dir(model_file, mei)
    units = {int(s): [int(u) for u in v] for s, v in dict(include).items() if v}
    sdirs = {s: run_dir / "results" / str(s) for s in units}
    dev = _device(device)
    key = compute_key("shared_mei", [model_file], {
        "mei": mei, "units": {str(s): u for s, u in units.items()}, "device": dev.type,
        "images": {str(s): file_sha256(d / "images.npz") for s, d in sdirs.items()}})
    outputs = ("batch.json", *(f"{u}.npz" for v in units.values() for u in v))
    cached = cached_values(out, "shared_mei", key, outputs) is not None
    if not cached:
        single_thread_torch()
        whole = load_model(model_file, device=dev)
        config = MEIParams.from_dict(mei).config()
        t0 = time.perf_counter()
        for s, ids in units.items():
            missing = sorted(set(ids) - set(whole.unit_ids.tolist()))
            if missing:
                raise MeireportError(f"include: units {missing} of session {s} are not units "
                                     f"of the shared model {model_file}")
            rows = [int(np.flatnonzero(whole.unit_ids == u)[0]) for u in ids]
            train_imgs, _ = _train_images(sdirs[s], whole)
            for u, res in zip(ids, generate_meis(whole.model, rows, train_imgs, config),
                              strict=True):
                save_mei_result(out / f"{u}.npz", res)
        seconds = time.perf_counter() - t0
        n = sum(len(v) for v in units.values())
        save_json(out / "batch.json", {"n_units": n, "sessions": sorted(units),
                                       "seconds": seconds, "seconds_per_unit": seconds / max(n, 1),
                                       "device": dev.type})
        record_compute(out, "shared_mei", key, outputs)
    return load_json(out / "batch.json"), cached


# -------------------------------------------------------------------------------------------
# an MEIResult as plain arrays (np.load(..., allow_pickle=False) reads it back)
# -------------------------------------------------------------------------------------------
def _flat(obj, prefix: str, arrays: dict, meta: dict) -> None:
    """Arrays of a result dataclass into ``arrays``, its plain values into ``meta``."""
    from dataclasses import fields, is_dataclass

    for f in fields(obj):
        v = getattr(obj, f.name)
        name = f"{prefix}{f.name}"
        if isinstance(v, np.ndarray):
            arrays[name] = v
        elif isinstance(v, list) and v and is_dataclass(v[0]):
            meta[f"{name}#n"] = len(v)
            for i, item in enumerate(v):
                _flat(item, f"{name}#{i}.", arrays, meta)
        elif not is_dataclass(v):  # the config is rebuilt from params
            meta[name] = v.item() if isinstance(v, np.generic) else v


def save_mei_result(path, result, best_image: np.ndarray | None = None) -> Path:
    """Write an :class:`meireport.mei.MEIResult` (every start, members) and the best image.

    Without ``best_image`` (a batch's MEI, before any image is set beside it), none is stored
    and :func:`load_mei_result` gives None for it.

    Examples
    --------
    >>> import tempfile
    >>> from meireport.mei import LinearModel, MEIConfig, generate_mei
    >>> w = np.zeros((12, 16)); w[4:8, 6:10] = 1.0
    >>> cfg = MEIConfig(steps=5, starts=("grey",))
    >>> res = generate_mei(LinearModel(w), np.random.default_rng(0).random((4, 12, 16)), cfg)
    >>> f = save_mei_result(Path(tempfile.mkdtemp()) / "m.npz", res, w)
    >>> back, img = load_mei_result(f, cfg)
    >>> bool(np.array_equal(back.mei, res.mei)), back.best == res.best
    (True, True)
    """
    import json

    arrays: dict = {}
    meta: dict = {}
    _flat(result, "", arrays, meta)
    if best_image is not None:
        arrays["best_image"] = np.asarray(best_image)
    return save_npz(path, meta=np.array(json.dumps(meta)), **arrays)


def _build(cls, prefix: str, arrays: dict, meta: dict, config, children: dict):
    from dataclasses import fields

    kw = {}
    for f in fields(cls):
        name = f"{prefix}{f.name}"
        if name in arrays:
            kw[f.name] = arrays[name]
        elif f"{name}#n" in meta:
            kw[f.name] = [_build(children[f.name], f"{name}#{i}.", arrays, meta, config,
                                 children) for i in range(meta[f"{name}#n"])]
        elif name in meta:
            kw[f.name] = meta[name]
        elif f.name == "config":
            kw[f.name] = config
        elif f.name in children:
            kw[f.name] = []
    return cls(**kw)


def load_mei_result(path, config):
    """Read back :func:`save_mei_result`: ``(MEIResult, best_image)``."""
    import json

    from meireport.mei import MEIResult, StartResult

    d = load_npz(path)
    meta = json.loads(str(d.pop("meta")))
    best = d.pop("best_image", None)
    children = {"starts": StartResult, "members": MEIResult}
    return _build(MEIResult, "", d, meta, config, children), best


@dataclass
class GaborStage:
    """Result of :func:`gabor_stage`."""

    session_gabor: object
    search: object  # None: the search's figures are in ``values`` (its result is not kept)
    mei: np.ndarray
    values: dict
    gabor: np.ndarray | None = None  # the Gabor compared (searched, else the session's), equalised

    @property
    def mask(self):
        """The unit's RF mask every stimulus was measured in (:func:`meireport.mei.rf_mask`)."""
        from meireport.mei import Mask, circular_mask

        v = self.values
        centre, radius = (v["rf_mask_row"], v["rf_mask_col"]), v["rf_mask_radius"]
        return Mask(circular_mask(self.mei.shape, centre, radius), centre, radius)


def gabor_stage(session_dir, out_dir, unit_id: int, gabor: dict,
                device: str | None = None) -> GaborStage:
    """Best session Gabor, in-silico Gabor search and the MEI-vs-Gabor metrics.

    Writes ``gabor.npy`` (the searched Gabor at the MEI's mean and contrast) and
    ``comparison.json``. Skipped when its inputs (the model, the MEI and its footing, the
    session's gabors, ``gabor``, the device kind, the code) are those of the last run in
    ``out_dir``.
    """
    from meireport.mei import equalize, session_gabor

    gp = GaborParams.from_dict(gabor)
    sdir, info, geometry = _session(session_dir)
    out = Path(out_dir)
    dev = _device(device)
    m = load_json(out / "mei.json")
    footing = {"mean": m["mean_luminance"], "c_star": m["c_star"]}
    inputs = [out / "model.pt", out / "mei.npy",
              *_session_inputs(sdir, info, "gabors.npz", "images.npz", "session.json")]
    if (out / "deis.npz").is_file():  # their similarity to the MEI is measured in the RF mask
        inputs.append(out / "deis.npz")
    key = compute_key("gabor", inputs, {"unit_id": int(unit_id), "gabor": gabor,
                                        "footing": footing, "device": dev.type})
    outputs = ("gabor.npy", "comparison.json")
    if cached_values(out, "gabor", key, outputs) is None:
        _compare_gabors(sdir, out, unit_id, gp, dev, footing["mean"], footing["c_star"])
        record_compute(out, "gabor", key, outputs)
    mei_img = np.load(out / "mei.npy", allow_pickle=False)
    sg = session_gabor(session_gabors(sdir), int(unit_id), geometry, k=gp.k)
    return GaborStage(sg, None, equalize(mei_img[None], footing["mean"], footing["c_star"])[0],
                      load_json(out / "comparison.json"),
                      np.load(out / "gabor.npy", allow_pickle=False))


def _compare_gabors(sdir: Path, out: Path, unit_id: int, gp: GaborParams, dev, mean: float,
                    c_star: float) -> None:
    from meireport.mei import (
        best_phase_image,
        contrast,
        describe,
        equalize,
        fit_gabor,
        gabor_search,
        pixel_correlation,
        predict,
        rf_mask,
        session_gabor,
    )

    single_thread_torch()
    _, info, geometry = _session(sdir)
    mei_img = np.load(out / "mei.npy", allow_pickle=False)
    _, model = _unit_model(out, dev)
    sg = session_gabor(session_gabors(sdir), int(unit_id), geometry, k=gp.k)
    # Allen's gabors drift: the session Gabor is shown at the carrier phase the model prefers
    sg_image, sg_phase = best_phase_image(sg, model, mean, c_star)
    search = gabor_search(model, geometry, mean=mean, std=c_star, config=gp.search_config()) \
        if gp.search else None
    best_gabor = search.image if search is not None else sg_image
    eq = equalize(np.stack([mei_img, sg_image, best_gabor]), mean, c_star)
    pred = predict(model, eq)
    # one mask for every stimulus: the unit's RF (its model's sensitivity over the images in the
    # set), with the fixed radius when gabor.mask_radius is given
    images = load_npz(sdir / "images.npz")["images"].astype(np.float64)
    mask = rf_mask(model, equalize(images, mean, c_star), radius=gp.mask_radius)
    dm, ds, dg = (describe(x, geometry, mask=mask) for x in eq)
    # the natural images' own contrast inside that mask, as the model was trained on them: an
    # MEI far above it is a stimulus the model extrapolates to
    raw = np.asarray([contrast(x, mask) for x in images])
    # the MEI's spatial frequency and orientation where its pattern is: its best-fitting Gabor
    fit = fit_gabor(eq[0], geometry, mean=mean, std=c_star, config=gp.search_config())
    values = {
        "rf_mask_row": mask.centre[0], "rf_mask_col": mask.centre[1],
        "rf_mask_radius": mask.radius,
        "mei_clip_fraction": dm["clip_fraction"], "session_gabor_clip_fraction":
        ds["clip_fraction"], "gabor_clip_fraction": dg["clip_fraction"],
        "best_gabor_pred": float(pred[2]), "session_gabor_pred": float(pred[1]),
        "session_gabor_x_deg": sg.x_deg, "session_gabor_y_deg": sg.y_deg,
        "session_gabor_orientation_deg": sg.orientation_deg,
        "session_gabor_phase": sg_phase,
        "mei_luminance": dm["luminance"], "mei_contrast": dm["contrast"],
        "natural_rf_contrast_median": float(np.median(raw)),
        "natural_rf_contrast_p90": float(np.percentile(raw, 90)),
        "gabor_luminance": dg["luminance"], "gabor_contrast": dg["contrast"],
        "mei_si1": dm["si1"], "mei_si2": dm["si2"], "gabor_si1": dg["si1"], "gabor_si2": dg["si2"],
        "mei_orientation_deg": dm["orientation_deg"],
        "gabor_orientation_deg": dg["orientation_deg"],
        "mei_peak_sf_cpd": dm["peak_sf_cpd"], "gabor_peak_sf_cpd": dg["peak_sf_cpd"],
        "mei_fit_sf_cpd": fit.params["sf_cpd"], "mei_fit_orientation_deg":
        fit.params["orientation_deg"], "mei_fit_corr": fit.response,
        "mei_gabor_corr": pixel_correlation(eq[0], eq[2]),
    }
    if (out / "deis.npz").is_file():
        # the DEIs' similarity to the MEI where the unit looks (whole-image: mei.json's
        # dei_median_mei_corr, lowered by pixels outside the RF that the unit ignores)
        deis = load_npz(out / "deis.npz")["images"]
        values["dei_median_mei_corr_rf"] = float(np.median(
            [pixel_correlation(x, mei_img, mask) for x in deis]))
    if search is not None:
        values |= search.summary()
    truth = _truth(info, sdir)
    if truth is not None:
        from meireport.mei import best_gabor_true_resp

        values["best_gabor_true_resp"] = best_gabor_true_resp(truth, unit_id, eq[2], mean=mean,
                                                              std=c_star)
        values["session_gabor_true_resp"] = best_gabor_true_resp(truth, unit_id, eq[1],
                                                                 mean=mean, std=c_star)
        # the true RF's spatial frequency (a DoG's band-pass peak), beside the measured ones
        values["true_sf_cpd"] = float(truth.rf_params["sf_cpd"][truth.index_of([unit_id])[0]])
    save_npy(out / "gabor.npy", eq[2])
    save_json(out / "comparison.json", values)


# -------------------------------------------------------------------------------------------
# session-level and run-level stages
# -------------------------------------------------------------------------------------------
def extract_stage(session, out_dir, area="VISam", window=(0.0, 0.25)) -> dict:
    """Extract everything later stages need from a session into ``out_dir`` (atomic writes).

    ``area`` is the ``extract.area`` field: one structure acronym, a list of them, ``"visual"``
    (every visual cortical area of the session) or ``None`` (every area), resolved on the
    session by :func:`meireport.extract.resolve_areas`; the units of all the chosen areas are
    analysed together, each keeping its own area (``ecephys_structure_acronym`` in
    ``units.csv``, ``area`` in ``selection.csv`` and ``summary.csv``).

    Writes ``trials.npz`` (natural-scene trial tensor, blank frame left out), ``images.npz``
    (the images as the model sees them), ``gabors.npz`` (gabor parameters and counts),
    ``units.csv`` (the chosen areas' units with their metrics, plus ``true_kind`` on simulated
    sessions) and ``session.json`` (``area``: the field as given; ``analysed_areas``: the
    acronyms it chose; ``areas``: every area of the session).

    Returns
    -------
    dict
        The contents of ``session.json``.
    """
    from meireport.artifacts import save_csv, save_json, save_npz
    from meireport.extract import (
        area_unit_ids,
        check_window,
        gabor_responses,
        resolve_areas,
        spike_counts,
        trial_tensor,
    )
    from meireport.stimuli import parse_pair

    out = Path(out_dir)
    win = check_window(window)
    analysed = resolve_areas(session, area)
    ids = area_unit_ids(session, area)
    table = session.stimulus_table("natural_scenes")
    counts = spike_counts(session, "natural_scenes", win, unit_ids=ids)
    trials = trial_tensor(counts, table)
    save_npz(out / "trials.npz", data=trials.data, unit_ids=trials.unit_ids,
             image_ids=trials.image_ids)
    save_npz(out / "images.npz", images=session.model_images(trials.image_ids).astype(np.float32),
             frames=trials.image_ids)
    g = gabor_responses(session, win, unit_ids=ids)
    save_npz(
        out / "gabors.npz", counts=g.counts.to_numpy(), unit_ids=ids,
        presentation_ids=g.table.index.to_numpy(),
        orientation=g.table["orientation"].to_numpy(dtype=float),
        x_position=g.table["x_position"].to_numpy(dtype=float),
        y_position=g.table["y_position"].to_numpy(dtype=float),
        size=np.array([parse_pair(v) for v in g.table["size"]]),
        spatial_frequency=g.table["spatial_frequency"].map(parse_pair).to_numpy(dtype=float),
        contrast=g.table["contrast"].map(parse_pair).to_numpy(dtype=float),
    )
    units = session.units.loc[ids].copy()
    truth_path = session.path.parent / "ground_truth.npz" if session.path else None
    if truth_path is not None and not truth_path.is_file():
        truth_path = None
    if truth_path is not None:
        from meireport.sources.simulate import load_ground_truth

        truth = load_ground_truth(truth_path)
        units["true_kind"] = truth.kind[truth.index_of(ids)]
    save_csv(out / "units.csv", units)
    info = {
        # paths relative to the session folder: a moved run folder keeps identical artifacts
        "session_id": int(session.session_id),
        "nwb": os.path.relpath(session.path, out) if session.path else session.where,
        "area": list(area) if isinstance(area, list | tuple) else area,
        "analysed_areas": analysed,
        "window": list(win), "n_units": int(len(ids)), "n_images": int(len(trials.image_ids)),
        "n_repeats": int(trials.data.shape[2]) if trials.data.size else 0,
        "geometry": session.geometry.to_dict(),
        "ground_truth": os.path.relpath(truth_path, out) if truth_path else None,
        "areas": session.areas,
    }
    save_json(out / "session.json", info)
    return info


def select_stage(session_dir, selection: Mapping) -> pd.DataFrame:
    """The selection stage: metrics, receptive fields and the rule, written to ``session_dir``.

    Reads the extraction artifacts (``trials.npz``, ``units.csv``, ``gabors.npz``,
    ``session.json``) and writes ``selection.csv`` (one row per unit: every metric, RF columns,
    ``selected``, ``reason`` and ``selection_stability``: the fraction of
    ``selection["stability_resamples"]`` trial resamples (default 20) in which the same rule
    (:meth:`SelectionParams.rule`; missing fields take the params defaults),
    without its ``max_units`` cap, selects the unit; see
    :func:`meireport.select.selection_stability`) and ``rfmap.npz`` (the 9 x 9 gabor maps).
    Skipped when the artifacts, the selection params and the code are those of the last run
    (the table's ``attrs``, the rule's thresholds, are kept with it).
    """
    sp = SelectionParams.from_dict(selection)
    sdir = Path(session_dir)
    names = ("trials.npz", "units.csv", "gabors.npz", "session.json")
    key = compute_key("select", [sdir / n for n in names], sp.model_dump(mode="json"))
    outputs = ("selection.csv", "rfmap.npz")
    attrs = cached_values(sdir, "select", key, outputs)
    if attrs is None:
        attrs = _select(sdir, sp)
        record_compute(sdir, "select", key, outputs, attrs)
    out = load_csv(sdir / "selection.csv")
    out.attrs.update(attrs)
    return out


def selection_groups(selection: pd.DataFrame) -> list[tuple[str, pd.DataFrame, dict]]:
    """The selection table split as its rule was applied: ``(area, rows, thresholds)`` each.

    Per area when the rule was applied per area (``selection.per_area``: the table's
    ``attrs["group_thresholds"]``), else one group ``("", every row, attrs["thresholds"])``.

    Examples
    --------
    >>> sel = pd.DataFrame({"unit_id": [1, 2], "area": ["VISp", "VISam"]})
    >>> sel.attrs["group_thresholds"] = {"VISam": {"oracle_corr": 0.2},
    ...                                  "VISp": {"oracle_corr": 0.4}}
    >>> [(a, len(rows), t["oracle_corr"]) for a, rows, t in selection_groups(sel)]
    [('VISam', 1, 0.2), ('VISp', 1, 0.4)]
    """
    groups = selection.attrs.get("group_thresholds") or {}
    if not groups or "area" not in selection:
        return [("", selection, dict(selection.attrs.get("thresholds", {})))]
    area = selection["area"].astype(str)
    return [(a, selection[area == a], dict(t)) for a, t in groups.items()]


def rule_sentence(selection: pd.DataFrame, max_units: int | None = None) -> str:
    """How many units the rule kept and its thresholds, per area when applied per area.

    Examples
    --------
    >>> sel = pd.DataFrame({"unit_id": [1, 2], "area": ["VISp", "VISp"],
    ...                     "selected": [True, False]})
    >>> sel.attrs["thresholds"] = {"oracle_corr": 0.25}
    >>> rule_sentence(sel, max_units=3)
    '**1 of 2 units selected** by the rule: oracle_corr > 0.25, at most 3 units (best oracle).'
    """
    def rule(th: dict) -> str:
        return ", ".join(f"{k} > {v:.3g}" for k, v in th.items()) or "explicit list"

    groups = selection_groups(selection)
    if len(groups) == 1:
        text = rule(groups[0][2])
    else:
        text = "; ".join(f"{a} ({int(rows['selected'].sum())} of {len(rows)}): {rule(th)}"
                         for a, rows, th in groups)
    cap = ""
    if max_units:
        cap = f", at most {max_units} units{' per area' if len(groups) > 1 else ''} (best oracle)"
    n = int(selection["selected"].sum())
    return f"**{n} of {len(selection)} units selected** by the rule: {text}{cap}."


def unit_measures(session_dir, seed: int = 0) -> pd.DataFrame:
    """The selection stage's unit measures without its rule: what the modelled units rest on.

    The metrics (:func:`meireport.select.unit_metrics`: oracle correlation, variance, ...) and
    the receptive fields (:func:`meireport.select.receptive_fields`: RF centre in model pixels,
    ``has_rf``) from the extraction artifacts, plus ``true_kind`` on a simulated session; no
    ``selected`` column. :func:`select_stage` applies its rule to these; the data-limit study
    chooses its units from them.

    Parameters
    ----------
    session_dir : path
        A folder of extraction artifacts (:func:`meireport.report.stages.extract_stage`).
    seed : int, default 0
        Seed of the metrics' IsolationForest and of the RF permutation test.

    Returns
    -------
    DataFrame
        One row per unit of the area.
    """
    from meireport.select import receptive_fields, unit_metrics

    sdir = Path(session_dir)
    tr = load_npz(sdir / "trials.npz")
    units = load_csv(sdir / "units.csv").set_index("unit_id")
    info = load_json(sdir / "session.json")
    ids = tr["unit_ids"].astype(np.int64)
    means = pd.DataFrame(np.nanmean(tr["data"], axis=2).T, index=tr["image_ids"], columns=ids)
    areas = units.loc[ids, "ecephys_structure_acronym"].astype(str).tolist()
    metrics = unit_metrics(tr["data"], means, ids, areas=areas, seed=seed)
    g = session_gabors(sdir)
    deg_to_px = ScreenGeometry.from_dict(info["geometry"]).deg_to_px
    rf = receptive_fields(g.table, g.counts, deg_to_px, seed=seed)
    metrics = metrics.merge(rf.rename(columns={"n_spikes": "rf_n_spikes"}), on="unit_id",
                            how="left")
    if "true_kind" in units.columns:
        metrics["true_kind"] = units.loc[metrics["unit_id"], "true_kind"].to_numpy()
    return metrics


def _select(sdir: Path, sp: SelectionParams) -> dict:
    """Compute and write the selection; returns the table's ``attrs`` (the rule's thresholds)."""
    from meireport.select import rf_maps, select_units, selection_stability

    tr = load_npz(sdir / "trials.npz")
    ids = tr["unit_ids"].astype(np.int64)
    metrics = unit_measures(sdir, seed=sp.seed)
    g = session_gabors(sdir)
    out = select_units(metrics, sp.rule())
    # stability of passing the rule itself: the max_units cap is a budget, not a reliability
    uncapped = sp.model_copy(update={"max_units": None}).rule()
    stability = selection_stability(
        tr["data"], ids, uncapped, n_resamples=sp.stability_resamples, seed=sp.seed,
        metrics=metrics,
    )
    out["selection_stability"] = stability.loc[out["unit_id"]].to_numpy()
    save_csv(sdir / "selection.csv", out, index=False)
    maps = rf_maps(g.table, g.counts)
    save_npz(sdir / "rfmap.npz", maps=maps.maps, x_deg=maps.x_deg, y_deg=maps.y_deg,
             unit_ids=np.asarray(maps.unit_ids, dtype=np.int64))
    return _plain(out.attrs)


def _plain(value):
    """A table's ``attrs`` (nested dicts of numbers) with plain floats: JSON-able."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return float(value) if isinstance(value, int | float | np.number) else value


def summary_stage(session_dir) -> pd.DataFrame:
    """Write ``summary.csv`` into the session folder (atomically) and return it."""
    from meireport.report.summary import summary_table

    df = summary_table(session_dir)
    save_csv(Path(session_dir) / "summary.csv", df, index=False)
    return df


def across_stage(run_dir, session_ids, out_dir) -> tuple[pd.DataFrame, pd.DataFrame,
                                                         pd.DataFrame]:
    """The run-level summary: write ``run_summary.csv`` into ``out_dir`` (atomically).

    Reads every session's ``selection.csv`` and ``summary.csv``
    (:func:`meireport.report.summary.run_tables`) and summarises them per session x area
    (:func:`meireport.report.summary.run_summary_table`).

    Returns
    -------
    units, reported, table : DataFrame
        Every analysed unit, every reported neuron (stacked, with ``session_id`` and ``area``),
        and the run-level summary table.
    """
    from meireport.report.summary import run_summary_table, run_tables

    units, reported = run_tables(run_dir, session_ids)
    table = run_summary_table(units, reported)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_csv(out / "run_summary.csv", table, index=False)
    return units, reported, table
