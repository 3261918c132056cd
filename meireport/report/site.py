"""The site's generated pages: what this run found, an MEI gallery, neuron pages, downloads.

:func:`meireport.report.book.build_book` calls :func:`write_site_pages` after it has copied the
executed notebooks. Everything here is generated from the run's artifacts (``run.json``, each
session's ``selection.csv`` / ``summary.csv`` and each neuron's ``mei.npy``, ``gabor.npy``,
``mei_starts.npz``, the data-limit chapter's tables), never hand-written:

- the landing page (``intro.md``): sessions, areas, units analysed / selected / reported, how
  many MEIs at each trust level, the gallery's top row, the data-limit chapter's verdict, when
  and with which version and params the run was made;
- the MEI gallery (on the landing page and each session's summary page): one card per reported
  neuron with its MEI, best natural image and best Gabor at the same footing (the MEI's mean and
  contrast, one grey scale), its trust badge, test correlation and a link to its pages; three
  tabs order it by trust, oracle correlation and predicted MEI response;
- one overview page per neuron (``sessions/<sid>/units/<uid>/neuron.md``) heading its three
  pages, with previous / next neuron links on all four;
- downloads copied into the site: each session's ``summary.csv``, ``selection.csv`` and a zip of
  its MEIs, best images and Gabors (``.npy`` + PNG); each neuron's own files.

Pages use MyST with ``sphinx-design`` (cards, grids, tabs, badges), which Jupyter Book 1.x
ships and which loads nothing from the internet.
"""

from __future__ import annotations

import html
import math
import shutil
import zipfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from meireport.artifacts import load_csv, load_npz
from meireport.report.summary import TRUST_ORDER, trust_counts

__all__ = [
    "NEURON_PAGE",
    "RUN_SUMMARY_PAGE",
    "run_summary_markdown",
    "GALLERY_SORTS",
    "Card",
    "neuron_doc",
    "neuron_href",
    "collect_cards",
    "gallery_markdown",
    "landing_markdown",
    "neuron_markdown",
    "nav_markdown",
    "session_counts",
    "write_neuron_files",
    "write_session_downloads",
]

#: Stem of each neuron's overview page (``sessions/<sid>/units/<uid>/neuron``).
NEURON_PAGE = "neuron"
#: Gallery orderings: tab label -> (column, descending).
GALLERY_SORTS = {
    "by trust": ("trust", False),
    "by oracle correlation": ("oracle_corr", True),
    "by predicted MEI response": ("mei_pred", True),
}
_BADGES = {"high": "bdg-success", "medium": "bdg-warning", "low": "bdg-danger"}
_STIMULI = (("mei", "MEI"), ("best_image", "best natural image"), ("gabor", "best Gabor"))
_TOP_ROW = 4  # two rows of two cards


def neuron_doc(session_id: int, unit_id: int) -> str:
    """Document name (site-absolute, no suffix) of a neuron's overview page.

    Examples
    --------
    >>> neuron_doc(7, 12)
    '/sessions/7/units/12/neuron'
    """
    return f"/sessions/{int(session_id)}/units/{int(unit_id)}/{NEURON_PAGE}"


def neuron_href(unit_id: int) -> str:
    """Relative link from a session's pages (``sessions/<sid>/*.html``) to a neuron's page.

    The session summary's table links its unit ids with it.

    Examples
    --------
    >>> neuron_href(12)
    'units/12/neuron.html'
    """
    return f"units/{int(unit_id)}/{NEURON_PAGE}.html"


@dataclass(frozen=True)
class Card:
    """One reported neuron as the gallery and the landing page show it."""

    session_id: int
    unit_id: int
    area: str = ""
    trust: str = ""
    oracle_corr: float = math.nan
    test_corr: float = math.nan
    mei_pred: float = math.nan
    #: (label, site-absolute path) of the MEI, best natural image and best Gabor PNGs.
    images: tuple[tuple[str, str], ...] = ()
    values: dict = field(default_factory=dict, compare=False)

    @property
    def doc(self) -> str:
        """The neuron's overview page (see :func:`neuron_doc`)."""
        return neuron_doc(self.session_id, self.unit_id)


# -------------------------------------------------------------------------------------------
# artifacts -> numbers
# -------------------------------------------------------------------------------------------


def _num(v) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def _fmt(v, digits: int = 2) -> str:
    x = _num(v)
    return "–" if math.isnan(x) else f"{x:.{digits}f}"


def _summary(sdir: Path) -> pd.DataFrame:
    f = sdir / "summary.csv"
    return load_csv(f) if f.is_file() else pd.DataFrame()


def session_counts(sdir) -> dict:
    r"""Units analysed, selected and reported, and MEIs per trust label, of one session folder.

    Examples
    --------
    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> _ = (d / "selection.csv").write_text("unit_id,selected\n1,True\n2,False\n")
    >>> _ = (d / "summary.csv").write_text("unit_id,area,trust\n1,VISp,high\n")
    >>> session_counts(d)["selected"], session_counts(d)["trust"]
    (1, {'high': 1, 'medium': 0, 'low': 0, 'unassessed': 0})
    """
    sdir = Path(sdir)
    sel = load_csv(sdir / "selection.csv") if (sdir / "selection.csv").is_file() else None
    summ = _summary(sdir)
    trust = trust_counts(summ["trust"] if "trust" in summ else [])
    areas: list[str] = []
    for table in (summ, sel):
        if table is not None and "area" in table:
            areas += [str(a) for a in table["area"].dropna().unique() if str(a) not in areas]
    return {
        "analysed": 0 if sel is None else len(sel),
        "selected": 0 if sel is None or "selected" not in sel
        else int(sel["selected"].astype(bool).sum()),
        "reported": len(summ),
        "areas": areas,
        "trust": trust,
    }


def _write_stimuli(ndir: Path, dst: Path) -> tuple[tuple[str, str], ...]:
    """The neuron's compared stimuli into ``dst`` as ``.npy`` and grey-level ``.png``, read once.

    One grey scale for all PNGs (0 black, 1 white: the screen's range), one image pixel per PNG
    pixel (the site shows them enlarged, pixelated). Returns (label, PNG file name) each; the
    neuron's downloads and the session's zip take the files from ``dst``.
    """
    from matplotlib.image import imsave

    dst.mkdir(parents=True, exist_ok=True)
    out = []
    names = dict(_STIMULI)
    for key, img in _stimuli(ndir).items():
        np.save(dst / f"{key}.npy", img, allow_pickle=False)
        imsave(dst / f"{key}.png", np.clip(img, 0.0, 1.0), cmap="gray", vmin=0.0, vmax=1.0)
        out.append((names[key], f"{key}.png"))
    return tuple(out)


def _stimuli(ndir: Path) -> dict[str, np.ndarray]:
    """The neuron's compared stimuli that exist: ``mei``, ``best_image``, ``gabor``."""
    out: dict[str, np.ndarray] = {}
    if (ndir / "mei.npy").is_file():
        out["mei"] = np.load(ndir / "mei.npy", allow_pickle=False)
    if (ndir / "mei_starts.npz").is_file():
        d = load_npz(ndir / "mei_starts.npz")
        if "best_image" in d:
            out["best_image"] = np.asarray(d["best_image"])
    if (ndir / "gabor.npy").is_file():
        out["gabor"] = np.load(ndir / "gabor.npy", allow_pickle=False)
    return out


def collect_cards(run_dir, run: dict, src) -> list[Card]:
    """One :class:`Card` per reported neuron of every session; writes its stimuli's files.

    The ``.npy`` and PNG files go to ``src/sessions/<sid>/units/<uid>/data/`` (the book source).
    """
    run_dir, src = Path(run_dir), Path(src)
    cards = []
    for sid in run.get("session_ids", []):
        sdir = run_dir / "results" / str(sid)
        summ = _summary(sdir)
        for row in [] if summ.empty else summ.to_dict("records"):
            uid = int(row["unit_id"])
            rel = f"sessions/{sid}/units/{uid}/data"
            pngs = _write_stimuli(sdir / str(uid), src / rel)
            trust = row.get("trust")
            cards.append(Card(
                session_id=int(sid), unit_id=uid, area=str(row.get("area") or ""),
                trust=trust if isinstance(trust, str) else "",
                oracle_corr=_num(row.get("oracle_corr")), test_corr=_num(row.get("test_corr")),
                mei_pred=_num(row.get("mei_pred")),
                images=tuple((label, f"/{rel}/{name}") for label, name in pngs), values=row))
    return cards


def sort_cards(cards: list[Card], by: str = "trust", descending: bool = False) -> list[Card]:
    """Cards ordered by trust (high first) or by a numeric field (missing values last).

    Examples
    --------
    >>> cs = [Card(1, 1, trust="low", oracle_corr=0.9), Card(1, 2, trust="high"),
    ...       Card(1, 3, trust="medium", oracle_corr=0.5)]
    >>> [c.unit_id for c in sort_cards(cs)]
    [2, 3, 1]
    >>> [c.unit_id for c in sort_cards(cs, "oracle_corr", True)]
    [1, 3, 2]
    """
    if by == "trust":
        rank = {lab: i for i, lab in enumerate(TRUST_ORDER)}
        return sorted(cards, key=lambda c: (rank.get(c.trust, len(rank)), -_key(c.oracle_corr)))
    sign = -1.0 if descending else 1.0
    return sorted(cards, key=lambda c: (math.isnan(getattr(c, by)),
                                        sign * _key(getattr(c, by))))


def _key(x: float) -> float:
    return -math.inf if math.isnan(x) else x


# -------------------------------------------------------------------------------------------
# markdown
# -------------------------------------------------------------------------------------------


def _badge(trust: str) -> str:
    role = _BADGES.get(trust, "bdg-secondary")
    return f"{{{role}}}`trust: {trust or 'not assessed'}`"


def _stimuli_markdown(c: Card, fence: int = 3) -> str:
    """The MEI, best image and best Gabor side by side, each captioned (a sphinx-design grid)."""
    if not c.images:
        return "*No MEI: the neuron's pages say what failed.*"
    outer, inner = ":" * (fence + 1), ":" * fence
    items = [f"{inner}{{grid-item}}\n![{label} of neuron {c.unit_id}]({path})\n\n{label}\n{inner}"
             for label, path in c.images]
    return (f"{outer}{{grid}} {len(items)}\n:gutter: 1\n:class-container: meireport-stimuli\n\n"
            + "\n".join(items) + f"\n{outer}")


def _card_markdown(c: Card) -> str:
    return "\n".join([
        f":::::{{grid-item-card}} Neuron {c.unit_id} · {c.area or 'area ?'} · session "
        f"{c.session_id}",
        f":link: {c.doc}", ":link-type: doc", ":class-card: meireport-card", "",
        _stimuli_markdown(c), "",
        f"{_badge(c.trust)} test r {_fmt(c.test_corr)} · oracle r {_fmt(c.oracle_corr)} · "
        f"MEI {_fmt(c.mei_pred, 1)} spikes (predicted)",
        ":::::"])


def _grid(cards: list[Card]) -> str:
    items = "\n\n".join(_card_markdown(c) for c in cards)
    return f"::::::{{grid}} 1 1 2 2\n:gutter: 2\n\n{items}\n::::::"


def gallery_markdown(cards: list[Card], sortable: bool = True) -> str:
    """The MEI gallery as MyST (sphinx-design grid of cards; tabs for the orderings).

    Examples
    --------
    >>> cards = [Card(7, 3, "VISp", "high", 0.5, 0.4, 9.0, (("MEI", "/m.png"),)), Card(7, 4)]
    >>> text = gallery_markdown(cards)
    >>> "{grid-item-card} Neuron 3" in text and ":link: /sessions/7/units/3/neuron" in text
    True
    >>> text.count("{tab-item}")
    3
    """
    if not cards:
        return "*No neuron was reported.*"
    if not sortable or len(cards) == 1:
        return _grid(sort_cards(cards))
    tabs = [f":::::::{{tab-item}} {label}\n\n{_grid(sort_cards(cards, col, desc))}\n:::::::"
            for label, (col, desc) in GALLERY_SORTS.items()]
    return "::::::::{tab-set}\n\n" + "\n\n".join(tabs) + "\n::::::::"


def _run_time(run: dict) -> str:
    ends = [r.get("ended") or 0 for r in run.get("results", [])]
    t = max(ends, default=0)
    if not t:
        return "at an unrecorded time"
    return "on " + datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M UTC")


def _verdict(run_dir: Path) -> str | None:
    ldir = run_dir / "results" / "limits"
    files = {k: ldir / f"limits_{k}.csv" for k in ("units", "models")}
    if not all(f.is_file() for f in files.values()):
        return None
    from meireport.report.limits import headline

    return headline({k: load_csv(f) for k, f in files.items()})


def landing_markdown(run_dir, run: dict, cards: list[Card],
                     limits_doc: str | None = None, across_doc: str | None = None) -> str:
    """The landing page (``intro.md``): what this run found, from its artifacts.

    ``limits_doc`` and ``across_doc`` are the data-limit chapter's and the run-level summary's
    documents (linked when given).

    Examples
    --------
    >>> run = {"params": {"title": "t", "name": "demo"}, "session_ids": [], "results": [],
    ...        "meireport_version": "0.1"}
    >>> text = landing_markdown(Path("/nonexistent"), run, [])
    >>> text.startswith("# t") and "meireport 0.1" in text
    True
    """
    run_dir = Path(run_dir)
    p = run.get("params", {})
    title = p.get("title") or "meireport"
    lines = [f"# {title}", "",
             "What most excites these neurons? This report finds the units that respond "
             "reliably to natural images, fits a CNN to each, synthesises each one's **Most "
             "Exciting Input** (MEI) and compares it with the best Gabor patch, and says how "
             "far each result can be trusted.", ""]
    lines += ["## This run", "",
              "Units analysed (in the chosen areas), selected by the rule, reported, and the "
              "reported neurons' MEIs by trust label"
              + (f"; per area, with the models' and MEIs' numbers: {{doc}}`across sessions and "
                 f"areas <{across_doc}>`." if across_doc else "."), "",
              "| session | areas | units | selected | reported | high | medium | low | n/a |",
              "|---|---|---|---|---|---|---|---|---|"]
    totals = dict.fromkeys(("reported", *TRUST_ORDER), 0)
    for sid in run.get("session_ids", []):
        c = session_counts(run_dir / "results" / str(sid))
        t = c["trust"]
        totals["reported"] += c["reported"]
        for lab in TRUST_ORDER:
            totals[lab] += t[lab]
        lines.append(f"| {{doc}}`{sid} </sessions/{sid}/06_summary>` | "
                     f"{', '.join(c['areas']) or '–'} | {c['analysed']} | {c['selected']} | "
                     f"{c['reported']} | {t['high']} | {t['medium']} | {t['low']} | "
                     f"{t['unassessed']} |")
    n = totals["reported"]
    lines += ["", f"**{n} neuron{'' if n == 1 else 's'} reported; MEIs trusted high: "
              f"{totals['high']}, medium: {totals['medium']}, low: {totals['low']}.**", ""]
    if cards:
        lines += ["## MEI gallery", "",
                  "The most trusted neurons (each session's summary page has them all). Each "
                  "card shows the MEI, the best natural image and the best Gabor, all at the "
                  "MEI's mean and contrast.", "", _grid(sort_cards(cards)[:_TOP_ROW]), ""]
    verdict = _verdict(run_dir)
    if verdict:
        link = f" ({{doc}}`the chapter <{limits_doc}>`)" if limits_doc else ""
        lines += ["## What 118 images can tell", "", verdict + link, ""]
    src = p.get("source", {}) if isinstance(p.get("source"), dict) else {}
    lines += ["## How it was made", "",
              f"Run **{p.get('name') or run_dir.name}** made {_run_time(run)} with meireport "
              f"{run.get('meireport_version', '?')}; source: {src.get('kind', '?')}. "
              "Its parameters: {download}`params.yaml <params.yaml>`. How each number is "
              "computed: {doc}`methods </methods>`.", ""]
    return "\n".join(lines)


# -------------------------------------------------------------------------------------------
# across sessions and areas
# -------------------------------------------------------------------------------------------
#: Page of the run-level summary (the ``across`` stage's notebook), relative to the site.
RUN_SUMMARY_PAGE = "across/08_across"
#: Header of each column of the page's table (:data:`RUN_SUMMARY_COLUMNS` order), and digits.
_RUN_HEADERS = {
    "session_id": ("session", None), "area": ("area", None), "analysed": ("units", None),
    "selected": ("selected", None), "reported": ("reported", None),
    "oracle_corr_all": ("oracle r (all units)", 2), "oracle_corr": ("oracle r", 2),
    "test_corr": ("test r (CNN)", 2), "frac_oracle": ("frac_oracle", 2),
    "high": ("high", None), "medium": ("medium", None), "low": ("low", None),
    "unassessed": ("n/a", None), "mei_peak_sf_cpd": ("MEI peak SF (cycles/deg)", 3),
    "mei_si2": ("MEI SI₂", 2), "mei_gabor_ratio": ("MEI / Gabor (model)", 2),
    "mei_gabor_true_ratio": ("MEI / Gabor (true)", 2),
}


def _run_cell(column: str, value) -> str:
    if column == "session_id":  # the page is across/08_across.html
        return f'<a href="../sessions/{int(value)}/06_summary.html">{int(value)}</a>'
    digits = _RUN_HEADERS[column][1]
    if digits is None:
        return html.escape(str(value)) if column == "area" else str(int(value))
    return _fmt(value, digits)


def _html_table(headers: list[str], rows: list[list[str]]) -> list[str]:
    """A table as the lines of one raw HTML block (no blank line inside, so it stays one).

    It scrolls inside the content column when wider (``meireport-scroll`` in the site's CSS).
    """
    def cells(tag: str, values: list[str]) -> str:
        return "<tr>" + "".join(f"<{tag}>{v}</{tag}>" for v in values) + "</tr>"
    return ['<div class="meireport-scroll">', '<table class="table">', "<thead>",
            cells("th", headers), "</thead>", "<tbody>", *(cells("td", r) for r in rows),
            "</tbody>", "</table>", "</div>", ""]


def run_summary_markdown(table: pd.DataFrame, per_area: bool = False) -> str:
    """The run-level summary's text: how the rule was applied and one row per session x area.

    ``table`` is :func:`meireport.report.summary.run_summary_table`'s; a column that is empty
    in every row (e.g. the true-rate ratio on real sessions) is left out. ``per_area`` says
    how the selection rule was applied (``selection.per_area``). Markdown with the table as
    one HTML block: the page is a notebook's output, which the book renders as CommonMark (no
    Markdown tables there). Session ids link to each session's summary page.

    Examples
    --------
    >>> from meireport.report.summary import RUN_SUMMARY_COLUMNS
    >>> row = dict.fromkeys(RUN_SUMMARY_COLUMNS, 1) | {"area": "VISp", "oracle_corr": 0.5,
    ...                                                "mei_gabor_true_ratio": math.nan}
    >>> text = run_summary_markdown(pd.DataFrame([row]))
    >>> '<td><a href="../sessions/1/06_summary.html">1</a></td><td>VISp</td><td>1</td>' in text
    True
    >>> "(true)" in text, "|---|" in text
    (False, False)
    """
    if per_area:
        lines = ["The selection rule is applied **within each area** (`selection.per_area`): "
                 "a unit is kept when its oracle correlation and response variance exceed "
                 "the quantiles of its own area's units, and `selection.max_units` caps each "
                 "area, so every area contributes its own most reliable units and the areas "
                 "can be compared (a quantile keeps an area's best units even where none is "
                 "reliable: `selection.min_oracle` sets a floor).", ""]
    else:
        lines = ["The selection rule's quantiles are taken over all the analysed units of a "
                 "session together (`selection.per_area: false`): an area with less "
                 "reliable units contributes fewer of them.", ""]
    if table.empty:
        return "\n".join(lines + ["*No session was analysed.*", ""])
    cols = [c for c in table.columns if c in _RUN_HEADERS
            and (_RUN_HEADERS[c][1] is None or table[c].notna().any())]
    lines += _html_table([_RUN_HEADERS[c][0] for c in cols],
                         [[_run_cell(c, r[c]) for c in cols] for r in table.to_dict("records")])
    lines += ["", "*oracle r*: jackknife oracle correlation; *test r*: the CNN's prediction vs "
              "held-out image means; *frac_oracle*: its single-trial correlation over the "
              "oracle; *high / medium / low / n/a*: MEIs per trust label; *MEI peak SF*: peak "
              "of the MEI's radial power spectrum; *MEI SI₂*: its 2-fold symmetry index (1: "
              "one orientation, 0: none); *MEI / Gabor*: the neuron's response to its MEI over "
              "that to the best searched Gabor, both at the same mean and contrast, as the "
              "model predicts it and (simulated sessions) as the true neuron fires; above 1 "
              "the MEI drives it more.", ""]
    return "\n".join(lines)


def write_params(src, run: dict) -> Path:
    """The run's params as ``src/params.yaml`` (the landing page links it)."""
    f = Path(src) / "params.yaml"
    f.write_text(yaml.safe_dump(run.get("params", {}), sort_keys=False))
    return f


def nav_markdown(prev: Card | None, nxt: Card | None) -> str:
    """Previous / next neuron links (empty when there is neither).

    Examples
    --------
    >>> nav_markdown(None, Card(7, 4))
    '{doc}`next: neuron 4 → </sessions/7/units/4/neuron>`'
    """
    parts = []
    if prev is not None:
        parts.append(f"{{doc}}`← previous: neuron {prev.unit_id} <{prev.doc}>`")
    if nxt is not None:
        parts.append(f"{{doc}}`next: neuron {nxt.unit_id} → <{nxt.doc}>`")
    return " · ".join(parts)


_NEURON_FILES = ("mei.json", "comparison.json", "train.json", "trust.json")
_KEY_VALUES = (
    ("oracle_corr", "oracle correlation"), ("fev", "fraction of explainable variance"),
    ("test_corr", "test correlation (CNN)"), ("test_corr_ln", "test correlation (LN)"),
    ("mei_pred", "MEI, predicted (spikes)"), ("best_image_pred",
                                              "best natural image, predicted (spikes)"),
    ("best_gabor_pred", "best Gabor, predicted (spikes)"),
    ("true_type", "true cell type (simulated)"),
    ("mei_true_resp", "MEI, true rate (spikes/s)"),
    ("best_image_true_resp", "best natural image, true rate (spikes/s)"),
    ("best_gabor_true_resp", "best Gabor, true rate (spikes/s)"),
    ("mei_rf_corr", "MEI vs true optimum (pixel correlation)"),
)


def write_neuron_files(ndir, dst) -> list[str]:
    """Copy a neuron's stage records into ``dst`` (the site's ``.../data``); its files' names.

    The names: the compared stimuli :func:`collect_cards` wrote there (``.npy`` and ``.png``;
    ``best_image`` from ``mei_starts.npz``) and the stage records (``mei.json``,
    ``comparison.json``, ``train.json``, ``trust.json``).
    """
    ndir, dst = Path(ndir), Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    names = [f"{key}.npy" for key, _ in _STIMULI if (dst / f"{key}.npy").is_file()]
    for name in _NEURON_FILES:
        if (ndir / name).is_file():
            shutil.copy(ndir / name, dst / name)
            names.append(name)
    names += [f"{key}.png" for key, _ in _STIMULI if (dst / f"{key}.png").is_file()]
    return names


def neuron_markdown(card: Card, pages: list[tuple[str, str]], files: list[str],
                    nav: str) -> str:
    """A neuron's overview page: badge, stimuli, key numbers, its pages, its files.

    ``pages`` are (title, site-absolute doc) of the neuron's notebook pages; ``files`` the
    names in its ``data/`` folder.

    Examples
    --------
    >>> text = neuron_markdown(Card(7, 3, "VISp", "high"), [("MEI", "/sessions/7/units/3/04_mei")],
    ...                        ["mei.npy"], "")
    >>> "# Neuron 3" in text and "{download}`mei.npy <data/mei.npy>`" in text
    True
    """
    lines = [f"# Neuron {card.unit_id}", "",
             f"{_badge(card.trust)} area {card.area or '?'}, session {card.session_id}", ""]
    if nav:
        lines += [nav, ""]
    if card.images:
        lines += [_stimuli_markdown(card), "",
                  "All three at the MEI's mean luminance and contrast; grey levels 0 (black) to "
                  "1 (white), one pixel per model-input pixel (60 x 96 covers the screen; the "
                  "MEI page shows them in degrees).", ""]
    rows = [(label, card.values.get(key)) for key, label in _KEY_VALUES
            if key in card.values and not (isinstance(card.values[key], float)
                                           and math.isnan(card.values[key]))]
    if rows:
        lines += ["| measure | value |", "|---|---|"]
        lines += [f"| {label} | {v if isinstance(v, str) else _fmt(v, 3)} |"
                  for label, v in rows]
        lines.append("")
    reasons = card.values.get("trust_reasons")
    if isinstance(reasons, str) and reasons:
        lines += [f"Trust reasons: {reasons}.", ""]
    if pages:
        lines += ["## Its pages", ""] + [f"- {{doc}}`{t} <{d}>`" for t, d in pages] + [""]
    if files:
        lines += ["## Its files", "",
                  " · ".join(f"{{download}}`{n} <data/{n}>`" for n in files), ""]
    return "\n".join(lines)


def write_session_downloads(run_dir, sid: int, src) -> list[str]:
    """Copy a session's tables and a zip of its stimuli into ``src/sessions/<sid>/data``.

    Returns the file names written (``summary.csv``, ``selection.csv``,
    ``meis_gabors.zip``: per neuron ``<uid>/{mei,best_image,gabor}.npy`` and ``.png``).
    """
    sdir = Path(run_dir) / "results" / str(sid)
    dst = Path(src) / "sessions" / str(sid) / "data"
    dst.mkdir(parents=True, exist_ok=True)
    names = []
    for name in ("summary.csv", "selection.csv"):
        if (sdir / name).is_file():
            shutil.copy(sdir / name, dst / name)
            names.append(name)
    summ = _summary(sdir)
    if summ.empty:
        return names
    with zipfile.ZipFile(dst / "meis_gabors.zip", "w", zipfile.ZIP_DEFLATED) as z:
        for uid in summ["unit_id"].astype(int):
            files = Path(src) / "sessions" / str(sid) / "units" / str(uid) / "data"
            for key, _ in _STIMULI:
                for suffix in (".npy", ".png"):
                    if (files / f"{key}{suffix}").is_file():
                        z.write(files / f"{key}{suffix}", f"{uid}/{key}{suffix}")
    names.append("meis_gabors.zip")
    return names


def downloads_markdown(names: list[str]) -> str:
    """A session's download links (relative to its pages).

    Examples
    --------
    >>> downloads_markdown(["summary.csv"])
    'Download: {download}`summary.csv <data/summary.csv>`'
    """
    if not names:
        return ""
    return "Download: " + " · ".join(f"{{download}}`{n} <data/{n}>`" for n in names)
