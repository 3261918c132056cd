"""The seed notebook's ``super_oracle``, re-implemented faithfully as the baseline.

The algorithm is the seed's, line for line: for each neuron, for each image shown to it, filter
the long ``(trial_id, neuron_id, spike_count, image_id)`` table with boolean masks, draw one
trial at random, pair its count with the mean of the other trials, correlate over images
(``scipy.stats.pearsonr``) and scale by the fraction of images with more than one trial. Two
changes, both needed to compare values and neither changing its cost: the random draw is
injectable (``choose``) so that the draws of :func:`meireport.select.oracle_correlation_random`
can be replayed, and ``neuron_ids`` restricts the loop to a subset (the table stays complete,
so the per-neuron cost is the full-session one) for extrapolation.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd


def long_table(trials: np.ndarray, unit_ids: np.ndarray, image_ids: np.ndarray,
               trial_ids: np.ndarray) -> pd.DataFrame:
    """The seed's ``oracle_df``: one row per (trial, neuron), sorted by trial then neuron.

    ``trial_ids`` is ``images x repeats`` (presentation ids, in presentation order).
    """
    n_units, n_images, n_rep = trials.shape
    valid = ~np.isnan(trials[0])
    img = np.broadcast_to(np.asarray(image_ids)[:, None], (n_images, n_rep))[valid]
    tid = np.asarray(trial_ids)[valid]
    order = np.argsort(tid, kind="stable")
    counts = trials[:, valid][:, order]  # units x trials
    n_trials = counts.shape[1]
    return pd.DataFrame({
        "trial_id": np.repeat(tid[order], n_units),
        "neuron_id": np.tile(np.asarray(unit_ids), n_trials),
        "spike_count": counts.T.reshape(-1),
        "image_id": np.repeat(img[order], n_units),
    })


def super_oracle(
    df: pd.DataFrame,
    neuron_ids: Sequence[int] | None = None,
    choose: Callable[[int, int, np.ndarray], int] | None = None,
) -> pd.DataFrame:
    """The seed's per-neuron loop; ``choose(neuron_id, image_id, trial_ids)`` draws a trial."""
    from scipy.stats import pearsonr

    corr = dict()
    total_images = len(df["image_id"].unique())
    for neuron_id in (df["neuron_id"].unique() if neuron_ids is None else neuron_ids):
        responses_list = []
        loom_list = []
        image_counter = 0
        for image_id in df[(df["neuron_id"] == neuron_id)]["image_id"].unique():
            if len(df[(df["neuron_id"] == neuron_id) & (df["image_id"] == image_id)]
                   ["trial_id"].unique()) == 1:
                continue
            trials = df[(df["neuron_id"] == neuron_id) & (df["image_id"] == image_id)][
                "trial_id"].unique()
            random_trial = (random.choice(trials) if choose is None
                            else choose(neuron_id, image_id, trials))
            response = df[(df["neuron_id"] == neuron_id) & (df["image_id"] == image_id)
                          & (df["trial_id"] == random_trial)]["spike_count"].values[0]
            loom_image = df[(df["neuron_id"] == neuron_id) & (df["image_id"] == image_id)
                            & (df["trial_id"] != random_trial)]["spike_count"].values.mean()
            image_counter += 1
            responses_list.append(response)
            loom_list.append(loom_image)
        correlation = pearsonr(responses_list, loom_list)[0]
        image_fraction = image_counter / total_images
        corr[neuron_id] = correlation * image_fraction
    return pd.DataFrame.from_dict(corr, orient="index", columns=["super_oracle_correlation"])


def replay_draws(trials: np.ndarray, n_iter: int, seed: int) -> np.ndarray:
    """The repeat index :func:`oracle_correlation_random` draws, ``n_iter x units x images``.

    Mirrors its generator calls exactly (same seed, same shape, same arithmetic).
    """
    rng = np.random.default_rng(seed)
    n = (~np.isnan(trials)).sum(axis=2)
    k = (rng.random((n_iter, *n.shape)) * n).astype(int)
    return np.minimum(k, np.maximum(n - 1, 0))
