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
    "RUN_SUMMARY_COLUMNS",
    "RATIOS",
    "trust_counts",
    "mei_gabor_ratios",
    "run_tables",
    "run_summary_table",
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


# -------------------------------------------------------------------------------------------
# across sessions and areas (the run-level summary page)
# -------------------------------------------------------------------------------------------
#: Columns of :func:`run_summary_table`, one row per session x area.
RUN_SUMMARY_COLUMNS = (
    "session_id", "area", "analysed", "selected", "reported", "oracle_corr_all", "oracle_corr",
    "test_corr", "frac_oracle", *TRUST_ORDER, "unassessed", "mei_peak_sf_cpd", "mei_si2",
    "mei_gabor_ratio", "mei_gabor_true_ratio",
)
#: Medians of :func:`run_summary_table` over the reported neurons: column -> summary.csv column.
_REPORTED_MEDIANS = {
    "oracle_corr": "oracle_corr", "test_corr": "test_corr", "frac_oracle": "frac_oracle",
    "mei_peak_sf_cpd": "mei_peak_sf_cpd", "mei_si2": "mei_si2",
    "mei_gabor_ratio": "mei_gabor_ratio", "mei_gabor_true_ratio": "mei_gabor_true_ratio",
}
#: MEI / best Gabor response ratios: column -> (MEI column, Gabor column) of summary.csv.
RATIOS = {
    "mei_gabor_ratio": ("mei_pred", "best_gabor_pred"),
    "mei_gabor_true_ratio": ("mei_true_resp", "best_gabor_true_resp"),
}


def trust_counts(labels) -> dict[str, int]:
    """How many of ``labels`` are each trust label, and how many are none (``unassessed``).

    Examples
    --------
    >>> trust_counts(["high", "low", None, "high"])
    {'high': 2, 'medium': 0, 'low': 1, 'unassessed': 1}
    """
    labels = [str(x) for x in labels]
    out = {t: labels.count(t) for t in TRUST_ORDER}
    out["unassessed"] = len(labels) - sum(out.values())
    return out


def mei_gabor_ratios(summary: pd.DataFrame) -> pd.DataFrame:
    """``summary`` with :data:`RATIOS` added: MEI over best Gabor response.

    Both at the MEI's footing, as the model predicts it (``mei_gabor_ratio``) and, on simulated
    sessions, as the true neuron fires (``mei_gabor_true_ratio``); NaN where a value is missing
    or the Gabor's response is not positive.

    Examples
    --------
    >>> df = pd.DataFrame({"mei_pred": [6.0, 2.0], "best_gabor_pred": [3.0, 0.0]})
    >>> mei_gabor_ratios(df)["mei_gabor_ratio"].tolist()
    [2.0, nan]
    """
    out = summary.copy()
    for name, (mei, gabor) in RATIOS.items():
        if mei in out and gabor in out:
            num, den = pd.to_numeric(out[mei]), pd.to_numeric(out[gabor])
            out[name] = (num / den).where(den > 0)
        else:
            out[name] = np.nan
    return out


def _table(f: Path) -> pd.DataFrame:
    return load_csv(f) if f.is_file() else pd.DataFrame()


def run_tables(run_dir, session_ids) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every session's ``selection.csv`` and ``summary.csv`` (with :data:`RATIOS`), stacked.

    Each row gets its ``session_id``; a unit without an area gets ``""``. Missing files
    contribute no rows.

    Returns
    -------
    (DataFrame, DataFrame)
        The analysed units (``selection.csv`` rows) and the reported neurons (``summary.csv``
        rows), each with ``session_id`` and ``area`` first.
    """
    parts: dict[str, list[pd.DataFrame]] = {"selection": [], "summary": []}
    for sid in session_ids:
        sdir = Path(run_dir) / "results" / str(sid)
        for name in parts:
            t = _table(sdir / f"{name}.csv")
            if not t.empty:
                parts[name].append(t.assign(session_id=int(sid)))
    out = []
    for name, frames in parts.items():
        t = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
            columns=["session_id", "unit_id"])
        t["area"] = t["area"].fillna("").astype(str) if "area" in t else ""
        if name == "summary":
            t = mei_gabor_ratios(t)
        first = ["session_id", "area"]
        out.append(t[first + [c for c in t.columns if c not in first]])
    return out[0], out[1]


def _median(table: pd.DataFrame, column: str) -> float:
    if column not in table:
        return np.nan
    values = pd.to_numeric(table[column], errors="coerce").dropna()
    return float(values.median()) if len(values) else np.nan


def run_summary_table(selection: pd.DataFrame, summary: pd.DataFrame) -> pd.DataFrame:
    """The run-level summary: one row per session x area of the analysed units.

    Per session and area: units ``analysed`` (rows of ``selection.csv``), ``selected`` by the
    rule, ``reported`` (rows of ``summary.csv``), the median oracle correlation of every
    analysed unit (``oracle_corr_all``) and, over the reported neurons, the medians of the
    oracle correlation, the CNN's test correlation and ``frac_oracle``, the MEIs per trust label
    (:func:`trust_counts`), and the MEIs' median peak spatial frequency (cycles/deg),
    2-fold symmetry index ``mei_si2`` (orientedness) and MEI / best Gabor response ratios
    (:func:`mei_gabor_ratios`; model, and true rate on simulated sessions). Columns:
    :data:`RUN_SUMMARY_COLUMNS`; rows by session, then area.

    Parameters
    ----------
    selection, summary : DataFrame
        The stacked tables of :func:`run_tables`.

    Returns
    -------
    DataFrame

    Examples
    --------
    >>> sel = pd.DataFrame({"session_id": [1, 1, 1], "area": ["VISp", "VISp", "VISam"],
    ...                     "unit_id": [5, 6, 7], "selected": [True, False, True],
    ...                     "oracle_corr": [0.5, 0.25, 0.5]})
    >>> summ = pd.DataFrame({"session_id": [1], "area": ["VISp"], "unit_id": [5],
    ...                      "oracle_corr": [0.5], "test_corr": [0.3], "trust": ["high"]})
    >>> t = run_summary_table(sel, summ)
    >>> cols = ["area", "analysed", "selected", "reported", "oracle_corr_all", "high"]
    >>> t[cols].to_dict("records")
    [{'area': 'VISam', 'analysed': 1, 'selected': 1, 'reported': 0, 'oracle_corr_all': 0.5, \
'high': 0}, {'area': 'VISp', 'analysed': 2, 'selected': 1, 'reported': 1, \
'oracle_corr_all': 0.375, 'high': 1}]
    """
    keys = sorted({(int(s), str(a)) for t in (selection, summary)
                   for s, a in zip(t.get("session_id", []), t.get("area", []), strict=True)})
    rows = []
    for sid, area in keys:
        units = selection[(selection["session_id"] == sid) & (selection["area"] == area)]
        rep = summary[(summary["session_id"] == sid) & (summary["area"] == area)]
        row = {"session_id": int(sid), "area": area, "analysed": len(units),
               "selected": int(units["selected"].astype(bool).sum()) if "selected" in units
               else 0, "reported": len(rep),
               "oracle_corr_all": _median(units, "oracle_corr")}
        row |= {name: _median(rep, col) for name, col in _REPORTED_MEDIANS.items()}
        row |= trust_counts(rep["trust"] if "trust" in rep else [None] * len(rep))
        rows.append(row)
    return pd.DataFrame(rows, columns=list(RUN_SUMMARY_COLUMNS))
