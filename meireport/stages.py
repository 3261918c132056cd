"""What the per-neuron notebooks call: training, MEI and Gabor stages on a run folder's artifacts.

Each stage reads the artifacts written by the stages before it (``results/<session>/...`` and
``results/<session>/<unit>/...``), writes its own atomically, and returns what its page shows.
The params sections (``model``, ``train``, ``mei``, ``gabor``) are mapped here onto the library's
configuration dataclasses.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from meireport.artifacts import load_csv, load_json, load_npz, save_json, save_npy
from meireport.errors import MeireportError
from meireport.stimuli import ScreenGeometry

__all__ = [
    "model_configs",
    "mei_config",
    "search_config",
    "response_data",
    "unit_row",
    "train_stage",
    "mei_stage",
    "trust_stage",
    "gabor_stage",
    "TrainStage",
    "MEIStage",
    "GaborStage",
]


def _single_thread_torch() -> None:
    """One torch thread per stage: results then do not depend on the worker's core count.

    Parallelism comes from running neurons in separate workers; the float reductions of a
    multi-threaded torch differ (at ~1e-9) with the thread count.
    """
    import torch

    torch.set_num_threads(1)


# -------------------------------------------------------------------------------------------
# params -> library configs
# -------------------------------------------------------------------------------------------
def model_configs(model: dict, train: dict, input_shape=(60, 96)):
    """``(CNNConfig, LNConfig, TrainConfig)`` from the ``model`` and ``train`` params sections."""
    from meireport.models import CNNConfig, CoreConfig, LNConfig, ReadoutConfig
    from meireport.train import TrainConfig

    crop = (int(model["crop"]),) * 2 if model.get("crop") else None
    core = CoreConfig(hidden_channels=model["core_channels"], layers=model["core_layers"],
                      input_kern=model["first_kernel"], hidden_kern=model["hidden_kernel"],
                      gamma_input=model["laplace_weight"],
                      gamma_hidden=model["group_sparsity_weight"])
    readout = ReadoutConfig(kind="point" if model["readout"] == "pyramid" else "factorised")
    cnn = CNNConfig(core=core, readout=readout, input_shape=tuple(input_shape), crop_size=crop)
    ln = LNConfig(input_shape=tuple(input_shape), crop_size=crop)
    tr = TrainConfig(loss=train["loss"], lr=train["lr"], batch_size=train["batch_size"],
                     max_epochs=train["epochs"], patience=train["patience"], seed=train["seed"],
                     split_seed=train["seed"], val_frac=train["val_fraction"],
                     test_frac=train["test_fraction"], gabors=bool(model["use_gabors"]),
                     ensemble=int(model["ensemble"]))
    return cnn, ln, tr


def mei_config(mei: dict):
    """:class:`meireport.mei.MEIConfig` from the ``mei`` params section."""
    from meireport.mei import MEIConfig

    starts = ("noise", "black", "grey") + ("noise",) * max(0, int(mei["n_starts"]) - 3)
    return MEIConfig(steps=mei["steps"], step_size=mei["lr"],
                     fourier_exponent=mei["precondition_exponent"],
                     blur_start=mei["blur_start"], blur_end=mei["blur_end"],
                     contrast_weight=mei["contrast_weight"],
                     starts=starts[: int(mei["n_starts"])], seed=mei["seed"])


def search_config(gabor: dict):
    """:class:`meireport.gabor.GaborSearchConfig` from the ``gabor`` params section."""
    from meireport.gabor import GaborSearchConfig

    if gabor.get("quick"):
        return GaborSearchConfig(n_orientations=6, sfs_cpd=(0.04, 0.08, 0.16), n_phases=2,
                                 sizes_deg=(15.0, 30.0), position_step_deg=20.0,
                                 n_positions=2, n_refine=1, refine_iters=5)
    return GaborSearchConfig()


# -------------------------------------------------------------------------------------------
# artifacts -> data
# -------------------------------------------------------------------------------------------
def _session(session_dir) -> tuple[Path, dict, ScreenGeometry]:
    sdir = Path(session_dir)
    info = load_json(sdir / "session.json")
    return sdir, info, ScreenGeometry.from_dict(info["geometry"])


def response_data(session_dir, gabors: bool = False):
    """:class:`meireport.train.ResponseData` rebuilt from the extraction artifacts."""
    from meireport.train import ResponseData, gabor_set

    sdir, _, geometry = _session(session_dir)
    tr = load_npz(sdir / "trials.npz")
    im = load_npz(sdir / "images.npz")
    if not np.array_equal(im["frames"], tr["image_ids"]):
        raise MeireportError(f"{sdir}: images.npz and trials.npz disagree on frame ids")
    gs = None
    if gabors:
        g = load_npz(sdir / "gabors.npz")
        table = pd.DataFrame({k: g[k] for k in ("orientation", "x_position", "y_position", "size",
                                                "spatial_frequency", "contrast")},
                             index=g["presentation_ids"])
        counts = pd.DataFrame(g["counts"], index=g["presentation_ids"], columns=g["unit_ids"])
        gs = gabor_set(table, counts, geometry)
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


def _centre(row: pd.Series):
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


def train_stage(session_dir, out_dir, unit_id: int, model: dict, train: dict) -> TrainStage:
    """Fit the unit's CNN and LN baseline; write ``model.pt``, ``ln.pt`` and ``train.json``.

    With ``model.crop`` set, a unit without a mapped receptive field (no significant RF map) is
    fitted on the full field; ``train.json``'s ``crop_px`` says which.
    """
    from meireport.train import fit_model, make_split, save_checkpoint

    _single_thread_torch()
    sdir, info, geometry = _session(session_dir)
    row = unit_row(sdir, unit_id)
    data = response_data(sdir, gabors=bool(model["use_gabors"]))
    centre = _centre(row)
    if model.get("crop") and centre is None:  # nothing to crop around: the full field
        model = dict(model, crop=None)
    cnn_cfg, ln_cfg, tr_cfg = model_configs(model, train, geometry.shape)
    split = make_split(data.image_ids, tr_cfg.val_frac, tr_cfg.test_frac, tr_cfg.split_seed)
    truth = _truth(info, sdir)
    oracle = {int(unit_id): float(row["oracle_corr"])}
    kw = dict(train_config=tr_cfg, rf_centres=[centre], oracle=oracle, truth=truth,
              split=split)
    cnn = fit_model(data, [int(unit_id)], "cnn", cnn_cfg, **kw)
    ln = fit_model(data, [int(unit_id)], "ln", ln_cfg, **kw)
    out = Path(out_dir)
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
        "crop_px": model.get("crop"),  # null when the unit has no mapped RF to crop around
    }
    if "true_corr" in cnn.metrics:
        values |= {"true_corr": float(m["true_corr"]), "true_corr_ln": float(mln["true_corr"])}
    save_json(out / "train.json", values)
    return TrainStage(cnn, ln, values, truth)


def _unit_model(out_dir):
    from meireport.mei import UnitModel
    from meireport.train import load_model

    trained = load_model(Path(out_dir) / "model.pt")
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


def mei_stage(session_dir, out_dir, unit_id: int, mei: dict, trust: dict | None = None) -> MEIStage:
    """Synthesise the unit's MEI on its CNN; write ``mei.npy``, ``mei.json`` and ``trust.json``.

    The best natural image is compared at equal footing: both rescaled to the training images'
    mean luminance and mean contrast ``c*``. The trust assessment (:func:`trust_stage`, with the
    ``trust`` params section's thresholds) is added to ``mei.json`` as ``trust`` (the label) and
    ``trust_reasons`` (``"; "``-joined), so that ``summary.csv`` carries them.
    """
    from meireport.compare import equalize, footing
    from meireport.mei import generate_mei, predict

    _single_thread_torch()
    sdir, info, _ = _session(session_dir)
    trained, model = _unit_model(out_dir)
    train_imgs, all_imgs = _train_images(sdir, trained)
    mean, c_star = footing(train_imgs)
    res = generate_mei(model, train_imgs, mei_config(mei))
    mei_img = np.clip(res.mei, 0.0, 1.0)
    eq = equalize(np.concatenate([mei_img[None], all_imgs]), mean, c_star)
    pred = predict(model, eq)
    best = int(np.argmax(pred[1:]))
    values = {"mei_pred": float(pred[0]), "best_image_pred": float(pred[1 + best]),
              "best_image_frame": int(load_npz(sdir / "images.npz")["frames"][best]),
              "mei_reliability": float(res.reliability), "mei_reliable": bool(res.reliable),
              "mei_phase_reliability": float(res.phase_reliability),
              "c_star": float(c_star), "mean_luminance": float(mean),
              "mei_seconds": float(res.seconds)}
    truth = _truth(info, sdir)
    if truth is not None:
        from meireport.compare import best_image_true_resp, mei_rf_corr, mei_true_resp

        values |= {
            "mei_true_resp": mei_true_resp(truth, unit_id, mei_img, mean=mean, std=c_star),
            "best_image_true_resp": best_image_true_resp(truth, unit_id, all_imgs, mean=mean,
                                                         std=c_star),
            "mei_rf_corr": mei_rf_corr(truth, unit_id, mei_img),
        }
    assessment = trust_stage(sdir, out_dir, unit_id, values, trust)
    values |= {"trust": assessment.label, "trust_reasons": "; ".join(assessment.reasons)}
    save_npy(Path(out_dir) / "mei.npy", mei_img)
    save_json(Path(out_dir) / "mei.json", values)
    return MEIStage(res, values, eq[1 + best], mean, c_star, assessment)


@dataclass
class GaborStage:
    """Result of :func:`gabor_stage`."""

    session_gabor: object
    search: object
    mei: np.ndarray
    values: dict
    gabor: np.ndarray | None = None  # the Gabor compared (searched, else the session's), equalised


def gabor_stage(session_dir, out_dir, unit_id: int, gabor: dict) -> GaborStage:
    """Best session Gabor, in-silico Gabor search and the MEI-vs-Gabor metrics.

    Writes ``gabor.npy`` (the searched Gabor at the MEI's mean and contrast) and
    ``comparison.json``.
    """
    from types import SimpleNamespace

    from meireport.compare import describe, equalize, pixel_correlation
    from meireport.gabor import best_phase_image, gabor_search, session_gabor
    from meireport.mei import predict

    _single_thread_torch()
    sdir, info, geometry = _session(session_dir)
    out = Path(out_dir)
    m = load_json(out / "mei.json")
    mean, c_star = m["mean_luminance"], m["c_star"]
    mei_img = np.load(out / "mei.npy", allow_pickle=False)
    _, model = _unit_model(out)
    g = load_npz(sdir / "gabors.npz")
    table = pd.DataFrame({k: g[k] for k in ("orientation", "x_position", "y_position")},
                         index=g["presentation_ids"])
    counts = pd.DataFrame(g["counts"], index=g["presentation_ids"], columns=g["unit_ids"])
    sg = session_gabor(SimpleNamespace(table=table, counts=counts), int(unit_id), geometry,
                       k=int(gabor["k"]))
    # Allen's gabors drift: the session Gabor is shown at the carrier phase the model prefers
    sg_image, sg_phase = best_phase_image(sg, model, mean, c_star)
    search = gabor_search(model, geometry, mean=mean, std=c_star, config=search_config(gabor)) \
        if gabor.get("search", True) else None
    best_gabor = search.image if search is not None else sg_image
    eq = equalize(np.stack([mei_img, sg_image, best_gabor]), mean, c_star)
    pred = predict(model, eq)
    radius = gabor.get("mask_radius")
    dm, dg = describe(eq[0], geometry, radius), describe(eq[2], geometry, radius)
    values = {
        "best_gabor_pred": float(pred[2]), "session_gabor_pred": float(pred[1]),
        "session_gabor_x_deg": sg.x_deg, "session_gabor_y_deg": sg.y_deg,
        "session_gabor_orientation_deg": sg.orientation_deg,
        "session_gabor_phase": sg_phase,
        "mei_luminance": dm["luminance"], "mei_contrast": dm["contrast"],
        "gabor_luminance": dg["luminance"], "gabor_contrast": dg["contrast"],
        "mei_si1": dm["si1"], "mei_si2": dm["si2"], "gabor_si1": dg["si1"], "gabor_si2": dg["si2"],
        "mei_orientation_deg": dm["orientation_deg"],
        "gabor_orientation_deg": dg["orientation_deg"],
        "mei_peak_sf_cpd": dm["peak_sf_cpd"], "gabor_peak_sf_cpd": dg["peak_sf_cpd"],
        "mei_gabor_corr": pixel_correlation(eq[0], eq[2]),
    }
    if search is not None:
        values |= search.summary()
    truth = _truth(info, sdir)
    if truth is not None:
        from meireport.compare import best_gabor_true_resp

        values["best_gabor_true_resp"] = best_gabor_true_resp(truth, unit_id, eq[2], mean=mean,
                                                              std=c_star)
        values["session_gabor_true_resp"] = best_gabor_true_resp(truth, unit_id, eq[1],
                                                                 mean=mean, std=c_star)
    save_npy(out / "gabor.npy", eq[2])
    save_json(out / "comparison.json", values)
    return GaborStage(sg, search, eq[0], values, eq[2])
