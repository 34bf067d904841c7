"""Ranking metrics for the impression protocol (MIND): per impression, then averaged.

All functions take padded matrices ``scores (N, C)`` and ``labels (N, C)``
where label ``1`` = clicked, ``0`` = shown and not clicked and ``-1`` =
padding (ignored). Everything is vectorised over impressions.

* **AUC** is the Mann-Whitney statistic with tied scores counted as 1/2 (the
  same as ``sklearn.metrics.roc_auc_score``).
* **MRR** is ``sum over clicks of 1/rank / number of clicks`` and **nDCG@k**
  uses gains ``2**label - 1`` and discounts ``log2(rank + 1)``, exactly as the
  MIND evaluation script. Ranks sort by descending score; candidates with
  tied scores share their ranks: each gets the mean of the reciprocal ranks
  (or discounts) of the positions the tie spans, which is the expected value
  over the random orders of the tie (``sklearn.metrics.ndcg_score`` treats
  ties the same way). Candidate order never matters, so a click listed
  first gains nothing from a tie (click-log examples list the clicked item
  first, and unseen items share the OOV vector). Scorers with many ties
  (popularity) may still break them with seeded noise (:func:`break_ties`).
* Impressions without both a click and a non-click are **excluded** from every
  metric (AUC is undefined for them; MIND's own data has none) and counted in
  the result under ``"skipped_impressions"``.
"""

from __future__ import annotations

import numpy as np

DEFAULT_CUTOFFS = (5, 10)


def impression_metrics(
    scores: np.ndarray, labels: np.ndarray, cutoffs: tuple[int, ...] = DEFAULT_CUTOFFS
) -> dict[str, float]:
    """Mean AUC, MRR and nDCG@k over impressions.

    Args:
        scores: float array `(num_impressions, num_candidates)`.
        labels: int array of the same shape; 1 clicked, 0 not, -1 padding.
        cutoffs: the k of nDCG@k. Defaults to `(5, 10)`.

    Returns:
        `{"auc", "mrr", "ndcg@5", "ndcg@10", "impressions", "skipped_impressions"}`.

    Example:
    >>> impression_metrics(np.array([[0.9, 0.1, 0.5]]), np.array([[1, 0, 0]]))["auc"]
    1.0
    """
    per = per_impression_metrics(scores, labels, cutoffs)
    valid = per.pop("valid")
    result = {
        name: float(values[valid].mean()) if valid.any() else float("nan")
        for name, values in per.items()
    }
    result["impressions"] = int(valid.sum())
    result["skipped_impressions"] = int((~valid).sum())
    return result


def per_impression_metrics(
    scores: np.ndarray, labels: np.ndarray, cutoffs: tuple[int, ...] = DEFAULT_CUTOFFS
) -> dict[str, np.ndarray]:
    """Per-impression AUC, MRR, nDCG@k, and a boolean ``valid`` row mask."""
    scores, labels = _check(scores, labels)
    real = labels >= 0
    positive = labels == 1
    num_pos = positive.sum(axis=1)
    num_neg = (real & ~positive).sum(axis=1)
    valid = (num_pos > 0) & (num_neg > 0)

    # Descending score with the real candidates first (a real score of -inf
    # included), padding last; a run of equal scores shares its positions.
    masked = np.where(real, scores, -np.inf)
    order = np.lexsort((-masked, ~real), axis=1)
    sorted_real = np.take_along_axis(real, order, axis=1)
    sorted_scores = np.take_along_axis(masked, order, axis=1)
    sorted_labels = np.take_along_axis(np.where(real, labels, 0), order, axis=1)
    runs = _runs(sorted_scores, sorted_real)
    positions = np.arange(1, labels.shape[1] + 1)

    # AUC from average ascending ranks among the real candidates (1 = lowest).
    ranks = _tie_mean(runs, num_pos[:, None] + num_neg[:, None] + 1.0 - positions)
    pos_rank_sum = np.where(sorted_labels == 1, ranks, 0.0).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = (pos_rank_sum - num_pos * (num_pos + 1) / 2.0) / (num_pos * num_neg)
        reciprocal = _tie_mean(runs, np.broadcast_to(1.0 / positions, order.shape))
        mrr = (sorted_labels * reciprocal).sum(axis=1) / num_pos
    result = {"auc": auc, "mrr": mrr}
    discounts = 1.0 / np.log2(positions + 1.0)
    ideal_labels = -np.sort(-np.where(real, labels, 0), axis=1)
    ideal_gains = (2.0**ideal_labels - 1.0) * discounts
    for k in cutoffs:
        top = np.broadcast_to(np.where(positions <= k, discounts, 0.0), order.shape)
        gains = (2.0**sorted_labels - 1.0) * _tie_mean(runs, top)
        with np.errstate(invalid="ignore", divide="ignore"):
            result[f"ndcg@{k}"] = gains.sum(axis=1) / ideal_gains[:, :k].sum(axis=1)
    result["valid"] = valid
    return result


def _runs(sorted_scores: np.ndarray, sorted_real: np.ndarray) -> np.ndarray:
    """Run ids ``(N, C)``: adjacent slots of a row with equal scores and equal
    realness share one (ids are unique across rows)."""
    starts = np.ones(sorted_scores.shape, dtype=bool)
    starts[:, 1:] = (sorted_scores[:, 1:] != sorted_scores[:, :-1]) | (
        sorted_real[:, 1:] != sorted_real[:, :-1]
    )
    return (np.cumsum(starts.ravel()) - 1).reshape(sorted_scores.shape)


def _tie_mean(runs: np.ndarray, values: np.ndarray) -> np.ndarray:
    """``values`` averaged over each run of :func:`_runs`, in ``values``' shape."""
    flat = runs.ravel()
    sums = np.bincount(flat, weights=np.asarray(values, dtype=np.float64).ravel())
    return (sums / np.bincount(flat))[flat].reshape(runs.shape)


def break_ties(scores: np.ndarray, seed: int = 0, scale: float = 1e-6) -> np.ndarray:
    """Add seeded noise smaller than any gap between distinct scores.

    Used for baselines with many tied scores (popularity), so that ranks among
    ties are random rather than the candidate order.
    """
    scores = np.asarray(scores, dtype=np.float64)
    finite = scores[np.isfinite(scores)]
    distinct = np.unique(finite)
    gap = np.diff(distinct).min() if distinct.size > 1 else 1.0
    noise = np.random.default_rng(seed).uniform(0.0, scale * gap, size=scores.shape)
    return scores + noise


def _check(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels)
    if scores.ndim != 2 or scores.shape != labels.shape:
        raise ValueError(
            "`scores` and `labels` should be 2-D arrays of the same shape "
            f"(num_impressions, num_candidates). Received: scores.shape={scores.shape}, "
            f"labels.shape={labels.shape}"
        )
    bad = ~np.isin(labels, (-1, 0, 1))
    if bad.any():
        raise ValueError(
            f"`labels` should contain only 1, 0 and -1 (padding). Received: "
            f"{np.unique(labels[bad])[:5].tolist()}"
        )
    if np.isnan(scores[labels >= 0]).any():
        raise ValueError("`scores` contain NaN at real (non-padding) candidates")
    return scores, labels.astype(np.int64)
