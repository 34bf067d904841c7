"""The next-item protocols: rank the item a user clicks next.

Each evaluation example has a **target** (the next item) and the items the
user already clicked before it (its **history**, all of it, not only the
``L`` most recent). Every scorer gives a score to every item of the
catalogue ``(num_examples, num_items)``; the target's rank is then computed
under one of two protocols, labelled in every result:

* ``"full"`` -- the target against the whole catalogue (item indices
  ``2 .. num_items - 1``; padding and OOV are never ranked), **the items of
  the user's history excluded** (the target itself is always ranked, even if
  the user clicked it before).
* ``"sampled_<sampling>_<K>"``, e.g. ``"sampled_uniform_100"`` -- the target
  against ``K`` negatives sampled per example, never the target nor an item
  of the history, without replacement: ``uniform`` over the catalogue
  (SASRec) or ``popularity``-weighted by training counts (BERT4Rec). The
  negatives depend only on the seed and the examples (not on the scorer or the
  chunk size), so every scorer meets the same negatives.

Ranks are **pessimistic**: ``rank = 1 + #{ranked items j != target with
score_j >= score_target}``, so a scorer that gives every item the same score
gets the worst rank, not the best. Scorers with many ties (popularity) break
them with seeded noise first (:func:`feedrec.metrics.break_ties`). An
example whose target is padding or OOV (an item the vocabulary does not
know) cannot be ranked and counts as a miss (rank ``inf``).

From ranks: ``HR@K = [rank <= K]``, ``NDCG@K = [rank <= K] / log2(rank + 1)``
(one relevant item, so the ideal DCG is 1), ``MRR@K = [rank <= K] / rank``,
each averaged over the examples.

Everything here is NumPy; nothing imports TensorFlow.

Example:

>>> import numpy as np
>>> scores = np.array([[0.0, 0.0, 0.9, 0.5, 0.7]])  # items 0..4; 0, 1 reserved
>>> ranks = full_ranks(scores, np.array([3]), exclusion_mask([[2]], 5))
>>> ranks.tolist()  # item 2 is in the history: only item 4 beats the target
[2.0]
>>> round(ranking_metrics(ranks, cutoffs=(1, 5))["ndcg@5"], 4)
0.6309
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np

FULL = "full"
SAMPLING_MODES = ("uniform", "popularity")
DEFAULT_CUTOFFS = (5, 10, 20)
DEFAULT_NUM_NEGATIVES = 100
#: Item indices below this are padding (0) and OOV (1): never ranked, never sampled.
FIRST_ITEM_INDEX = 2
METRIC_NAMES = ("hr", "ndcg", "mrr")

#: A scorer maps the indices of a chunk of examples ``(n,)`` to scores ``(n, num_items)``.
Scorer = Callable[[np.ndarray], np.ndarray]


def sampled_protocol(sampling: str, num_negatives: int) -> str:
    """The label of a sampled protocol, e.g. ``"sampled_uniform_100"``."""
    if sampling not in SAMPLING_MODES:
        raise ValueError(
            f"`sampling` should be one of {SAMPLING_MODES}. Received: sampling={sampling!r}"
        )
    _check_positive("num_negatives", num_negatives)
    return f"sampled_{sampling}_{num_negatives}"


def metric_keys(cutoffs: Sequence[int] = DEFAULT_CUTOFFS) -> list[str]:
    """``["hr@5", "ndcg@5", "mrr@5", "hr@10", ...]``: the keys of :func:`ranking_metrics`."""
    return [f"{name}@{k}" for k in cutoffs for name in METRIC_NAMES]


def exclusion_mask(
    exclude: Sequence[Sequence[int]] | None,
    num_items: int,
    rows: np.ndarray | None = None,
) -> np.ndarray:
    """A boolean ``(n, num_items)`` mask, True where an item is excluded for a row.

    Args:
        exclude: per example, the item indices to exclude (its history); a
            list of arrays, a list of lists, or a pyarrow list array. ``None``
            excludes nothing. Indices outside ``[0, num_items)`` are ignored.
        num_items: int. Catalogue size, padding and OOV included.
        rows: int array or None. The examples to build rows for, in order.
            Defaults to all of them.

    Returns:
        Boolean ``(n, num_items)``. Padding and OOV are not marked here: the
        ranking functions leave them out anyway.
    """
    _check_num_items(num_items)
    if exclude is None:
        count = 0 if rows is None else len(rows)
        return np.zeros((count, num_items), dtype=bool)
    rows = np.arange(len(exclude)) if rows is None else np.asarray(rows)
    mask = np.zeros((len(rows), num_items), dtype=bool)
    for position, row in enumerate(rows):
        items = np.asarray(_as_list(exclude[int(row)]), dtype=np.int64)
        items = items[(items >= 0) & (items < num_items)]
        mask[position, items] = True
    return mask


def exclusion_lists(
    exclude: Sequence[Sequence[int]] | None,
    num_items: int,
    rows: np.ndarray | None = None,
) -> np.ndarray:
    """The excluded items of each row as a ``-1``-padded int matrix.

    The compact form of :func:`exclusion_mask` (same arguments, same items):
    each row lists its distinct excluded item indices in ``[FIRST_ITEM_INDEX,
    num_items)``, sorted, then ``-1``. :func:`full_ranks` accepts either form
    and gives the same ranks; this one costs ``O(history)`` per row instead of
    ``O(num_items)``, which matters for catalogues of tens of thousands.

    Returns:
        Int64 ``(n, m)``, ``m`` the longest row's count (at least 1).
    """
    _check_num_items(num_items)
    if exclude is None:
        count = 0 if rows is None else len(rows)
        return np.full((count, 1), -1, dtype=np.int64)
    rows = np.arange(len(exclude)) if rows is None else np.asarray(rows)
    lists = []
    for row in rows:
        items = np.unique(np.asarray(_as_list(exclude[int(row)]), dtype=np.int64))
        lists.append(items[(items >= FIRST_ITEM_INDEX) & (items < num_items)])
    width = max([1, *(len(items) for items in lists)])
    out = np.full((len(rows), width), -1, dtype=np.int64)
    for position, items in enumerate(lists):
        out[position, : len(items)] = items
    return out


def full_ranks(
    scores: np.ndarray, targets: np.ndarray, excluded: np.ndarray | None = None
) -> np.ndarray:
    """Rank of each target among the whole catalogue, excluded items left out.

    Args:
        scores: float ``(n, num_items)``; column ``i`` scores item index ``i``.
        targets: int ``(n,)``, the next item of each example.
        excluded: the user's history, not ranked; the target is ranked even
            where it is excluded. Either a boolean ``(n, num_items)`` mask
            (:func:`exclusion_mask`, True = excluded) or an int ``(n, m)``
            matrix of distinct item indices padded with ``-1``
            (:func:`exclusion_lists`, faster); or None.

    Returns:
        Float ``(n,)`` pessimistic ranks, 1 = best; ``inf`` where the target
        is padding, OOV or outside the catalogue.
    """
    scores, targets = _check_scores(scores, targets)
    n, num_items = scores.shape
    if excluded is not None and np.issubdtype(np.asarray(excluded).dtype, np.integer):
        return _full_ranks_from_lists(scores, targets, np.asarray(excluded, dtype=np.int64))
    ranked = np.zeros((n, num_items), dtype=bool)
    ranked[:, FIRST_ITEM_INDEX:] = True
    if excluded is not None:
        excluded = np.asarray(excluded, dtype=bool)
        if excluded.shape != scores.shape:
            raise ValueError(
                "`excluded` should have the shape of `scores`. Received: "
                f"excluded.shape={excluded.shape}, scores.shape={scores.shape}"
            )
        ranked &= ~excluded
    valid = (targets >= FIRST_ITEM_INDEX) & (targets < num_items)
    rows = np.arange(n)
    safe_targets = np.where(valid, targets, FIRST_ITEM_INDEX)
    target_scores = scores[rows, safe_targets]
    ranked[rows, safe_targets] = False  # the target is not its own competitor
    beaten = (scores >= target_scores[:, None]) & ranked
    ranks = 1.0 + beaten.sum(axis=1)
    return np.where(valid, ranks, np.inf)


def _full_ranks_from_lists(
    scores: np.ndarray, targets: np.ndarray, excluded: np.ndarray
) -> np.ndarray:
    """:func:`full_ranks` with an :func:`exclusion_lists` matrix.

    ``#{j >= FIRST_ITEM_INDEX: s_j >= s_t}`` over the whole row (the target
    counts itself once), less the excluded items that reach the target's
    score (each listed once; the target itself is never subtracted).
    """
    n, num_items = scores.shape
    if excluded.ndim != 2 or len(excluded) != n:
        raise ValueError(
            "`excluded` lists should be an (n, m) matrix with one row per score row. "
            f"Received: excluded.shape={excluded.shape}, scores.shape={scores.shape}"
        )
    valid = (targets >= FIRST_ITEM_INDEX) & (targets < num_items)
    rows = np.arange(n)
    safe_targets = np.where(valid, targets, FIRST_ITEM_INDEX)
    target_scores = scores[rows, safe_targets][:, None]
    reach = np.count_nonzero(scores[:, FIRST_ITEM_INDEX:] >= target_scores, axis=1)
    listed = (excluded >= FIRST_ITEM_INDEX) & (excluded < num_items)
    listed &= excluded != safe_targets[:, None]
    listed_scores = np.take_along_axis(scores, np.where(listed, excluded, 0), axis=1)
    reach -= np.count_nonzero(listed & (listed_scores >= target_scores), axis=1)
    reach -= 1  # the target reaches its own score: it is not its own competitor
    return np.where(valid, 1.0 + reach, np.inf)


def sampled_ranks(scores: np.ndarray, targets: np.ndarray, negatives: np.ndarray) -> np.ndarray:
    """Rank of each target among itself and its sampled negatives.

    Args:
        scores: float ``(n, num_items)``.
        targets: int ``(n,)``.
        negatives: int ``(n, K)`` item indices (from :func:`sample_negatives`).

    Returns:
        Float ``(n,)`` pessimistic ranks in ``[1, K + 1]``; ``inf`` where the
        target is padding, OOV or outside the catalogue.
    """
    scores, targets = _check_scores(scores, targets)
    negatives = np.asarray(negatives)
    if negatives.ndim != 2 or len(negatives) != len(targets):
        raise ValueError(
            "`negatives` should be a 2-D array with one row per target. Received: "
            f"negatives.shape={negatives.shape}, targets.shape={targets.shape}"
        )
    num_items = scores.shape[1]
    valid = (targets >= FIRST_ITEM_INDEX) & (targets < num_items)
    rows = np.arange(len(targets))
    target_scores = scores[rows, np.where(valid, targets, FIRST_ITEM_INDEX)]
    negative_scores = np.take_along_axis(scores, negatives, axis=1)
    ranks = 1.0 + (negative_scores >= target_scores[:, None]).sum(axis=1)
    return np.where(valid, ranks, np.inf)


def sample_negatives(
    targets: np.ndarray,
    excluded: np.ndarray | None,
    num_negatives: int,
    rng: np.random.Generator,
    weights: np.ndarray | None = None,
) -> np.ndarray:
    """``num_negatives`` distinct items per example, never the target or an excluded item.

    Sampling without replacement proportional to ``weights`` (uniform when
    None) by the Gumbel-top-k trick: every allowed item ``j`` gets the key
    ``log(w_j) - log(-log(u_j))`` with ``u_j`` uniform, and the ``K`` largest
    keys win. Items with weight 0, padding and OOV are never drawn. The draws
    consume ``rng`` row by row, one uniform per catalogue item, so splitting
    the examples into chunks and drawing chunk after chunk from the same
    generator gives the same negatives.

    Args:
        targets: int ``(n,)``.
        excluded: boolean ``(n, num_items)`` or None (the history).
        num_negatives: int. ``K``.
        rng: ``numpy.random.Generator``.
        weights: float ``(num_items,)`` or None; e.g. training click counts
            for popularity sampling.

    Returns:
        Int64 ``(n, K)`` item indices, in no particular order.

    Raises:
        ValueError: when a row has fewer than ``K`` items it may draw.
    """
    _check_positive("num_negatives", num_negatives)
    targets = np.asarray(targets, dtype=np.int64)
    if excluded is None:
        raise ValueError("`excluded` should be a boolean (n, num_items) array. Received: None")
    excluded = np.asarray(excluded, dtype=bool)
    n, num_items = excluded.shape
    allowed = ~excluded
    allowed[:, :FIRST_ITEM_INDEX] = False
    rows = np.arange(n)
    in_range = (targets >= 0) & (targets < num_items)
    allowed[rows[in_range], targets[in_range]] = False
    with np.errstate(divide="ignore"):
        if weights is None:
            log_weights = np.zeros(num_items)
        else:
            weights = np.asarray(weights, dtype=np.float64)
            if weights.shape != (num_items,) or (weights < 0).any():
                raise ValueError(
                    f"`weights` should be non-negative with shape ({num_items},). Received: "
                    f"shape={weights.shape}, min={weights.min() if weights.size else None}"
                )
            log_weights = np.log(weights)
        allowed &= np.isfinite(log_weights)[None, :]
        available = allowed.sum(axis=1)
        if (available < num_negatives).any():
            row = int(np.argmin(available))
            raise ValueError(
                f"`num_negatives` should be at most the number of items a row may draw. "
                f"Received: num_negatives={num_negatives}, but row {row} has only "
                f"{int(available[row])} item(s) outside its target and history"
            )
        uniform = rng.random((n, num_items))
        keys = log_weights[None, :] - np.log(-np.log(uniform))
    keys = np.where(allowed, keys, -np.inf)
    top = np.argpartition(-keys, num_negatives - 1, axis=1)[:, :num_negatives]
    return top.astype(np.int64)


def ranking_metrics(ranks: np.ndarray, cutoffs: Sequence[int] = DEFAULT_CUTOFFS) -> dict:
    """Mean HR@K, NDCG@K and MRR@K of ranks (``inf`` = a miss).

    Args:
        ranks: float ``(n,)``, 1 = best.
        cutoffs: the ``K``s. Defaults to ``(5, 10, 20)``.

    Returns:
        ``{"hr@5", "ndcg@5", "mrr@5", ..., "examples"}``; NaN means when n = 0.

    Example:

    >>> ranking_metrics(np.array([1.0, 3.0, np.inf]), cutoffs=(2,))["hr@2"]
    0.3333333333333333
    """
    ranks = np.asarray(ranks, dtype=np.float64)
    if ranks.ndim != 1 or (ranks < 1).any() or np.isnan(ranks).any():
        raise ValueError(
            f"`ranks` should be a 1-D array of ranks >= 1 (inf = miss). Received: {ranks[:5]!r}"
        )
    result: dict[str, float | int] = {}
    for k in cutoffs:
        _check_positive("cutoff", k)
        hit = ranks <= k
        with np.errstate(divide="ignore"):
            ndcg = np.where(hit, 1.0 / np.log2(ranks + 1.0), 0.0)
            mrr = np.where(hit, 1.0 / ranks, 0.0)
        for name, values in (("hr", hit.astype(np.float64)), ("ndcg", ndcg), ("mrr", mrr)):
            result[f"{name}@{k}"] = float(values.mean()) if len(ranks) else float("nan")
    result["examples"] = int(len(ranks))
    return result


def evaluate_next_item(
    scorers: Mapping[str, Scorer],
    targets: np.ndarray,
    exclude: Sequence[Sequence[int]] | None,
    num_items: int,
    *,
    sampled: Iterable[tuple[str, int]] = (("uniform", DEFAULT_NUM_NEGATIVES),),
    item_counts: np.ndarray | None = None,
    full: bool = True,
    cutoffs: Sequence[int] = DEFAULT_CUTOFFS,
    seed: int = 0,
    chunk_size: int = 1024,
) -> dict[str, dict[str, dict]]:
    """Every scorer under every protocol, on the same examples and negatives.

    Args:
        scorers: name -> scorer; a scorer maps example indices ``(n,)`` to
            scores ``(n, num_items)``.
        targets: int ``(N,)``, the next item of each example.
        exclude: per example, the items of its history (see
            :func:`exclusion_mask`), or None.
        num_items: int. Catalogue size, padding and OOV included.
        sampled: ``(sampling, K)`` pairs, e.g. ``[("uniform", 100),
            ("popularity", 100)]``. Defaults to ``[("uniform", 100)]``.
        item_counts: float ``(num_items,)`` training counts; needed for
            ``popularity`` sampling.
        full: bool. Also the full-catalogue protocol. Defaults to True.
        cutoffs: the ``K`` of the metrics. Defaults to ``(5, 10, 20)``.
        seed: int. Seeds the negatives (one generator per sampled protocol).
        chunk_size: int. Examples scored at a time (memory: ``chunk_size *
            num_items`` floats per scorer). Does not change the result.

    Returns:
        ``{protocol: {scorer: metrics}}`` with ``metrics`` from
        :func:`ranking_metrics` plus ``"unrankable_targets"`` (padding/OOV
        targets, counted as misses).
    """
    _check_num_items(num_items)
    _check_positive("chunk_size", chunk_size)
    targets = np.asarray(targets, dtype=np.int64)
    sampled = [(mode, int(k)) for mode, k in sampled]
    protocols: dict[str, tuple[str, int] | None] = {FULL: None} if full else {}
    for mode, k in sampled:
        protocols[sampled_protocol(mode, k)] = (mode, k)
        if mode == "popularity" and item_counts is None:
            raise ValueError("`item_counts` are needed for popularity-weighted negatives")
    if not protocols:
        raise ValueError("no protocol to compute: `full` is False and `sampled` is empty")
    generators = {
        name: np.random.default_rng([seed, index])
        for index, name in enumerate(protocols)
        if protocols[name] is not None
    }
    ranks = {name: {scorer: [] for scorer in scorers} for name in protocols}
    for start in range(0, len(targets), chunk_size):
        rows = np.arange(start, min(start + chunk_size, len(targets)))
        chunk_targets = targets[rows]
        excluded = exclusion_mask(exclude, num_items, rows)
        negatives = {}
        for name, spec in protocols.items():
            if spec is not None:
                mode, k = spec
                weights = None if mode == "uniform" else item_counts
                negatives[name] = sample_negatives(
                    chunk_targets, excluded, k, generators[name], weights
                )
        for scorer_name, scorer in scorers.items():
            scores = np.asarray(scorer(rows), dtype=np.float64)
            if scores.shape != (len(rows), num_items):
                raise ValueError(
                    f"scorer {scorer_name!r} should return ({len(rows)}, {num_items}) scores. "
                    f"Received: shape={scores.shape}"
                )
            for name in protocols:
                if name == FULL:
                    chunk_ranks = full_ranks(scores, chunk_targets, excluded)
                else:
                    chunk_ranks = sampled_ranks(scores, chunk_targets, negatives[name])
                ranks[name][scorer_name].append(chunk_ranks)
    unrankable = int(((targets < FIRST_ITEM_INDEX) | (targets >= num_items)).sum())
    results = {}
    for name in protocols:
        results[name] = {}
        for scorer_name in scorers:
            parts = ranks[name][scorer_name]
            values = np.concatenate(parts) if parts else np.zeros(0)
            metrics = ranking_metrics(values, cutoffs)
            metrics["unrankable_targets"] = unrankable
            results[name][scorer_name] = metrics
    return results


def popularity_scorer(item_counts: np.ndarray, seed: int = 0) -> Scorer:
    """Scores every example with the items' counts, ties broken once by seeded noise."""
    from feedrec.metrics import break_ties

    scores = break_ties(np.asarray(item_counts, dtype=np.float64), seed=seed)

    def score(rows: np.ndarray) -> np.ndarray:
        return np.broadcast_to(scores, (len(rows), len(scores)))

    return score


def random_scorer(num_items: int, seed: int = 0) -> Scorer:
    """Seeded uniform scores; chunk after chunk from one generator."""
    _check_num_items(num_items)
    rng = np.random.default_rng(seed)

    def score(rows: np.ndarray) -> np.ndarray:
        return rng.random((len(rows), num_items))

    return score


def recent_popularity_scorer(
    click_times: np.ndarray,
    click_items: np.ndarray,
    query_times: np.ndarray,
    num_items: int,
    window: int,
    seed: int = 0,
) -> Scorer:
    """Most popular within a recent window: clicks in ``[t - window, t)`` per item.

    Args:
        click_times: int ``(M,)`` times of the clicks that count (any order).
        click_items: int ``(M,)`` their items.
        query_times: int ``(N,)`` the time of each example.
        num_items: int. Catalogue size.
        window: int. Window length, in the units of the times (ms for logs).
        seed: int. Seeds the tie-breaking noise (one value per item, so ties
            fall the same way for every example).

    Returns:
        A scorer. Each call counts the window of each of its rows; rows in
        time order make it fastest, any order is correct.
    """
    _check_num_items(num_items)
    _check_positive("window", int(window))
    order = np.argsort(np.asarray(click_times), kind="stable")
    times = np.asarray(click_times, dtype=np.int64)[order]
    items = np.asarray(click_items, dtype=np.int64)[order]
    query_times = np.asarray(query_times, dtype=np.int64)
    noise = np.random.default_rng(seed).uniform(0.0, 1e-3, size=num_items)

    def score(rows: np.ndarray) -> np.ndarray:
        out = np.empty((len(rows), num_items), dtype=np.float64)
        counts = np.zeros(num_items, dtype=np.int64)
        low = high = 0
        for position in np.argsort(query_times[rows], kind="stable"):
            t = query_times[rows[position]]
            new_low = int(np.searchsorted(times, t - window, side="left"))
            new_high = int(np.searchsorted(times, t, side="left"))
            if new_low >= high or new_high < low or new_high < high:
                counts[:] = np.bincount(items[new_low:new_high], minlength=num_items)[:num_items]
            else:
                np.add.at(counts, items[high:new_high], 1)
                np.subtract.at(counts, items[low:new_low], 1)
            low, high = new_low, new_high
            out[position] = counts + noise
        return out

    return score


def _as_list(value):
    return value.as_py() if hasattr(value, "as_py") else value


def _check_scores(scores, targets) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores)
    if not np.issubdtype(scores.dtype, np.floating):
        scores = scores.astype(np.float64)  # float32 scores are compared as they are
    targets = np.asarray(targets, dtype=np.int64)
    if scores.ndim != 2 or targets.shape != (len(scores),):
        raise ValueError(
            "`scores` should be (n, num_items) and `targets` (n,). Received: "
            f"scores.shape={scores.shape}, targets.shape={targets.shape}"
        )
    nan_rows = np.isnan(scores[:, FIRST_ITEM_INDEX:]).any(axis=1)
    if nan_rows.any():  # NaN compares False: it would rank its target first
        raise ValueError(
            f"`scores` contain NaN at real items in {int(nan_rows.sum())} of {len(scores)} "
            f"rows (first: row {int(np.argmax(nan_rows))}); a model with NaN weights?"
        )
    return scores, targets


def _check_positive(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value <= 0:
        raise ValueError(f"`{name}` should be a positive integer. Received: {name}={value!r}")


def _check_num_items(num_items) -> None:
    if (
        isinstance(num_items, bool)
        or not isinstance(num_items, int | np.integer)
        or num_items <= FIRST_ITEM_INDEX
    ):
        raise ValueError(
            "`num_items` should be an integer > 2 (padding and OOV included). "
            f"Received: num_items={num_items!r}"
        )
