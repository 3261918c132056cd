"""Session summary: one row per reported neuron, gathered from each stage's artifacts.

``summary.csv`` is a contract other tools rely on (see DESIGN.md): its columns are
:data:`SUMMARY_COLUMNS` (plus :data:`SIMULATED_COLUMNS` on simulated sessions). A value a stage
did not produce (the stage failed, or is not part of this run) is left empty, never invented.
``trust`` is the label of :func:`meireport.trust.assess` (from ``mei.json``) and the extra column
``trust_reasons`` its reasons, ``"; "``-joined.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from meireport.artifacts import load_csv, load_json

__all__ = [
    "SUMMARY_COLUMNS",
    "SIMULATED_COLUMNS",
    "TRUST_ORDER",
    "sort_by_trust",
    "summary_table",
    "trust_sentence",
    "gabor_truth_sentence",
]

SUMMARY_COLUMNS = (
    "unit_id", "area", "oracle_corr", "fev", "test_corr", "test_corr_ln", "frac_oracle",
    "mei_pred", "best_image_pred", "best_gabor_pred", "mei_luminance", "mei_contrast",
    "gabor_luminance", "gabor_contrast", "mei_si1", "mei_si2", "gabor_si1", "gabor_si2",
    "status", "trust",
)
SIMULATED_COLUMNS = (
    "true_type", "mei_true_resp", "best_image_true_resp", "best_gabor_true_resp", "mei_rf_corr",
)
_STAGE_FILES = ("train.json", "mei.json", "comparison.json")
TRUST_ORDER = ("high", "medium", "low")
"""Trust labels in the order the summary page lists them (missing ones last)."""


def _neuron_values(ndir: Path) -> dict:
    vals: dict = {}
    for name in _STAGE_FILES:
        f = ndir / name
        if f.is_file():
            d = load_json(f)
            vals.update({k: v for k, v in d.items() if np.isscalar(v) or v is None})
    return vals


def _status(rows: list[dict], uid: int) -> str:
    bad = [r for r in rows if r.get("unit_id") == uid and r["status"] in ("failed", "skipped")]
    if not bad:
        return "ok"
    r = next((b for b in bad if b["status"] == "failed"), bad[0])  # the cause, not its echoes
    return f"failed at {r['stage']}: {r.get('error') or ''}".strip()


def summary_table(session_dir) -> pd.DataFrame:
    r"""Gather the summary of one session's run folder (``results/<session_id>``).

    Examples
    --------
    >>> import tempfile, json
    >>> d = Path(tempfile.mkdtemp())
    >>> _ = (d / "status.json").write_text(json.dumps([]))
    >>> _ = (d / "selection.csv").write_text("unit_id,oracle_corr,selected\n5,0.4,True\n")
    >>> summary_table(d)[["unit_id", "oracle_corr", "status"]].to_dict("records")
    [{'unit_id': 5, 'oracle_corr': 0.4, 'status': 'ok'}]
    """
    sdir = Path(session_dir)
    status = load_json(sdir / "status.json")
    selection = load_csv(sdir / "selection.csv")
    units = sorted({int(r["unit_id"]) for r in status if r.get("unit_id") is not None})
    if not units:
        units = selection.loc[selection["selected"].astype(bool), "unit_id"].astype(int).tolist()
    sel = selection.set_index("unit_id")
    unit_table = load_csv(sdir / "units.csv").set_index("unit_id") if (
        sdir / "units.csv").is_file() else pd.DataFrame()
    rows = []
    for uid in units:
        row: dict = {"unit_id": uid}
        if uid in sel.index:
            for col in ("area", "oracle_corr", "fev"):
                if col in sel.columns:
                    row[col] = sel.at[uid, col]
        if "area" not in row and uid in unit_table.index:
            row["area"] = unit_table.at[uid, "ecephys_structure_acronym"]
        if "true_kind" in unit_table.columns and uid in unit_table.index:
            row["true_type"] = unit_table.at[uid, "true_kind"]
        row.update(_neuron_values(sdir / str(uid)))
        row["status"] = _status(status, uid)
        rows.append(row)
    cols = list(SUMMARY_COLUMNS)
    if "true_kind" in unit_table.columns:
        cols += list(SIMULATED_COLUMNS)
    df = pd.DataFrame(rows)
    cols.append("trust_reasons")
    for c in cols:
        if c not in df:
            df[c] = np.nan
    extra = [c for c in df.columns if c not in cols]
    return df[cols + extra]


def _trust_labels(df: pd.DataFrame) -> pd.Series:
    """The ``trust`` column as labels; anything else (missing, NaN) as ``""``."""
    if "trust" not in df:
        return pd.Series("", index=df.index, dtype=object)
    return df["trust"].where(df["trust"].isin(TRUST_ORDER), "").astype(object)


def sort_by_trust(df: pd.DataFrame) -> pd.DataFrame:
    """Rows ordered by trust: high, medium, low, then missing (stable within each label).

    Examples
    --------
    >>> df = pd.DataFrame({"unit_id": [1, 2, 3, 4], "trust": ["low", None, "high", "medium"]})
    >>> sort_by_trust(df)["unit_id"].tolist()
    [3, 4, 1, 2]
    """
    rank = _trust_labels(df).map({t: i for i, t in enumerate(TRUST_ORDER)}).fillna(len(TRUST_ORDER))
    return df.iloc[np.argsort(rank.to_numpy(), kind="stable")]


def trust_sentence(df: pd.DataFrame) -> str:
    """One sentence: how many neurons have an MEI the data support (trust ``high``).

    Examples
    --------
    >>> df = pd.DataFrame({"trust": ["high", "low", "high", "medium"]})
    >>> trust_sentence(df)
    '2 of 4 neurons have an MEI the data support (trust high); 1 medium, 1 low.'
    >>> trust_sentence(pd.DataFrame({"trust": ["medium", None]}))
    '0 of 2 neurons have an MEI the data support (trust high); 1 medium, 1 not assessed.'
    """
    n = len(df)
    if n == 0:
        return "No neuron was reported."
    labels = _trust_labels(df)
    counts = {t: int((labels == t).sum()) for t in TRUST_ORDER}
    rest = [f"{counts[t]} {t}" for t in TRUST_ORDER[1:] if counts[t]]
    if (labels == "").any():
        rest.append(f"{int((labels == '').sum())} not assessed")
    verb = "neuron has" if n == 1 else "neurons have"
    text = f"{counts['high']} of {n} {verb} an MEI the data support (trust high)"
    return text + ("; " + ", ".join(rest) if rest else "") + "."


#: The MEI "beats" or "loses to" the searched Gabor on the true neuron beyond this relative
#: difference of rates; within it the two tie.
TIE_BAND = 0.05


def gabor_truth_sentence(df: pd.DataFrame) -> str:
    """On a simulated session: per true cell type, whether the MEI beats the best Gabor.

    Compares ``mei_true_resp`` with ``best_gabor_true_resp`` (the true neuron's rates for the
    MEI and the searched Gabor, in the same set); a relative difference within
    :data:`TIE_BAND` is a tie. Empty on real sessions.

    Examples
    --------
    >>> df = pd.DataFrame({"true_type": ["corner", "simple", "simple"],
    ...                    "mei_true_resp": [30.0, 20.0, 15.0],
    ...                    "best_gabor_true_resp": [20.0, 20.5, 20.0]})
    >>> gabor_truth_sentence(df).split(": ")[1]
    'corner 1 of 1, simple 0 of 2 (1 tie, 1 below).'
    """
    cols = ("true_type", "mei_true_resp", "best_gabor_true_resp")
    if not all(c in df.columns for c in cols):
        return ""
    d = df.dropna(subset=list(cols))
    if d.empty:
        return ""
    ratio = d["mei_true_resp"] / d["best_gabor_true_resp"] - 1.0
    parts = []
    for kind, r in ratio.groupby(d["true_type"], sort=True):
        beat, tie = int((r > TIE_BAND).sum()), int((r.abs() <= TIE_BAND).sum())
        below = len(r) - beat - tie
        rest = [f"{tie} tie" + ("s" if tie > 1 else "")] if tie else []
        rest += [f"{below} below"] if below else []
        parts.append(f"{kind} {beat} of {len(r)}" + (f" ({', '.join(rest)})" if rest else ""))
    return ("The true neuron fires more for the MEI than for the best Gabor (by > "
            f"{100 * TIE_BAND:.0f} %): " + ", ".join(parts) + ".")
