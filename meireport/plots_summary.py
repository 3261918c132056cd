"""Figures of the session summary page: across-neuron comparisons."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

__all__ = ["summary_figure"]

_PANELS = (
    ("oracle_corr", "test_corr", "oracle correlation", "test correlation (CNN)"),
    ("test_corr_ln", "test_corr", "test correlation (LN)", "test correlation (CNN)"),
    ("best_image_pred", "mei_pred", "best natural image (predicted spikes)",
     "MEI (predicted spikes)"),
    ("best_image_true_resp", "mei_true_resp", "best natural image (true rate, spikes/s)",
     "MEI (true rate, spikes/s)"),
)


def summary_figure(summary: pd.DataFrame) -> Figure:
    """Scatter plots across neurons of the comparisons the summary holds (empty ones skipped).

    Examples
    --------
    >>> df = pd.DataFrame({"oracle_corr": [0.3, 0.5], "test_corr": [0.2, 0.4],
    ...                    "status": ["ok", "ok"]})
    >>> len(summary_figure(df).axes)
    2
    """
    panels = [p for p in _PANELS if p[0] in summary and p[1] in summary
              and summary[[p[0], p[1]]].notna().all(axis=1).any()]
    n = len(panels) + 1
    fig, axes = plt.subplots(1, n, figsize=(3.8 * n, 3.6), squeeze=False)
    for ax, (x, y, xl, yl) in zip(axes[0], panels, strict=False):
        d = summary[[x, y]].astype(float).dropna()
        ax.scatter(d[x], d[y], s=25)
        lo = float(np.nanmin(d.to_numpy())) if len(d) else 0.0
        hi = float(np.nanmax(d.to_numpy())) if len(d) else 1.0
        ax.plot([lo, hi], [lo, hi], color="gray", lw=0.8, ls="--", label="identity")
        ax.set_xlabel(xl)
        ax.set_ylabel(yl)
        ax.legend(fontsize=7)
    ax = axes[0][-1]
    ok = summary["status"].astype(str).eq("ok").sum() if "status" in summary else 0
    ax.bar(["ok", "failed"], [ok, len(summary) - ok], color=["tab:green", "tab:red"])
    ax.set_ylabel("neurons")
    ax.set_title("pipeline status")
    fig.tight_layout()
    return fig
