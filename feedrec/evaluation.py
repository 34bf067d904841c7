"""Evaluation: the model and its baselines, under the protocol the data calls for.

The protocol is picked from the data (``manifest.json``'s ``has_impressions``):

* **impression** (MIND and other impression logs): each impression's shown
  candidates are ranked; AUC, MRR, nDCG@5/10 per impression, averaged
  (:mod:`feedrec.metrics`).
* **next_item** (click logs and sequences): the item clicked next is ranked
  against the whole catalogue with the user's history excluded (``full``)
  and against 100 sampled negatives (``sampled_uniform_100``,
  ``sampled_popularity_100``); HR/NDCG/MRR@5/10/20 (:mod:`feedrec.next_item`).
  Every figure sits under its protocol's label; the two kinds are never mixed.

Every scorer is evaluated by the same code on the same candidates (or
negatives), so the numbers are comparable:

* ``model`` — the trained recommender's logits;
* ``popularity`` — each item's click count in the training split (from
  ``items.parquet``), ties broken by seeded noise;
* ``recent_popularity`` (next-item, logs with real timestamps) — clicks in
  the window before the example's time (all splits: what a live system knows);
* ``random`` — seeded uniform scores.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from feedrec.data import Batch, load_split, pad_lists
from feedrec.metrics import break_ties, impression_metrics
from pipelines.schema import SPLITS

logger = logging.getLogger(__name__)

#: The protocols, picked from the data by :func:`resolve_protocol`.
PROTOCOLS = ("impression", "next_item")
DEFAULT_SAMPLED = (("uniform", 100), ("popularity", 100))
DEFAULT_RECENT_WINDOW_MS = 86_400_000
#: Prepared formats whose ``time`` is a position, not a clock: no recent window.
POSITION_TIME_FORMATS = ("sequences",)


def predict_scores(model, batch: Batch, batch_size: int = 1024) -> np.ndarray:
    """The model's scores `(N, C)` for a padded batch (padding candidates included)."""
    if len(batch) == 0:
        return np.zeros(batch.candidates.shape, dtype=np.float32)
    scores = model.predict(batch.features(), batch_size=batch_size, verbose=0)
    return np.asarray(scores, dtype=np.float64)


def popularity_scores(batch: Batch, item_counts: np.ndarray, seed: int = 0) -> np.ndarray:
    """Training click counts of the candidates, ties broken at random (seeded)."""
    counts = np.asarray(item_counts, dtype=np.float64)
    index = np.clip(batch.candidates, 0, len(counts) - 1)
    return break_ties(counts[index], seed=seed)


def random_scores(batch: Batch, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(size=batch.candidates.shape)


def item_counts(items_path: str | Path) -> np.ndarray:
    """Training click counts indexed by item index (row i of ``items.parquet``).

    Uses the ``clicks`` column when the vocabulary has one (impression logs,
    where ``count`` also counts exposures), else ``count``.
    """
    names = pq.read_schema(items_path).names
    column = "clicks" if "clicks" in names else "count"
    table = pq.read_table(items_path, columns=["item_index", column])
    index = table.column("item_index").to_numpy()
    counts = np.zeros(int(index.max()) + 1 if len(index) else 0, dtype=np.int64)
    counts[index] = table.column(column).to_numpy()
    return counts


def evaluate_batch(model, batch: Batch, counts: np.ndarray, seed: int = 0) -> dict[str, dict]:
    """Impression metrics of the model, popularity and random on one split."""
    labels = batch.labels.astype(np.int64)
    results = {
        "model": impression_metrics(predict_scores(model, batch), labels),
        "popularity": impression_metrics(popularity_scores(batch, counts, seed), labels),
        "random": impression_metrics(random_scores(batch, seed), labels),
    }
    return results


def evaluate_run(
    run_dir: str | Path,
    data_dir: str | Path,
    split: str = "test",
    seed: int = 0,
    *,
    protocol: str = "auto",
    sampled: tuple[tuple[str, int], ...] = DEFAULT_SAMPLED,
    recent_window_ms: int = DEFAULT_RECENT_WINDOW_MS,
):
    """Load a run and evaluate it on ``split`` of ``data_dir``.

    Args:
        run_dir: a directory written by ``feedrec train``.
        data_dir: a directory written by ``feedrec prepare``.
        split: ``train``, ``valid`` or ``test``. Defaults to ``"test"``.
        seed: seeds the baselines' tie-breaking and the sampled negatives.
        protocol: ``"auto"`` (from the data: impression logs -> ``impression``,
            click logs and sequences -> ``next_item``), ``"impression"`` or
            ``"next_item"``. Defaults to ``"auto"``.
        sampled: next-item sampled protocols, ``(sampling, K)`` pairs.
        recent_window_ms: the recent-popularity window (next-item protocol,
            logs with real timestamps). Defaults to one day.

    Returns:
        Impression protocol: ``{"split", "examples", "protocol": "impression",
        "model", "popularity", "random"}``. Next-item protocol: ``{"split",
        "examples", "protocol": "next_item", "protocols": {label: {scorer:
        metrics}}}``.
    """
    from feedrec.runs import load_run

    protocol = resolve_protocol(data_dir, protocol)
    model, config, _ = load_run(run_dir)
    batch = load_split(data_dir, split, config.model.history_length)
    logger.info("evaluating %d %s examples (%s protocol)", len(batch), split, protocol)
    counts = item_counts(Path(run_dir) / "items.parquet")
    if protocol == "impression":
        results = evaluate_batch(model, batch, counts, seed)
        return {"split": split, "examples": len(batch), "protocol": protocol, **results}
    results = evaluate_next_item_batch(
        model,
        batch,
        data_dir,
        counts,
        seed=seed,
        sampled=sampled,
        recent_window_ms=recent_window_ms,
    )
    return {"split": split, "examples": len(batch), "protocol": protocol, "protocols": results}


def resolve_protocol(data_dir: str | Path, protocol: str = "auto") -> str:
    """The protocol for ``data_dir``: ``impression`` for impression logs, else ``next_item``."""
    if protocol not in ("auto", *PROTOCOLS):
        raise ValueError(
            f"`protocol` should be one of {('auto', *PROTOCOLS)}. Received: protocol={protocol!r}"
        )
    if protocol != "auto":
        return protocol
    from feedrec.runs import read_json

    manifest_path = Path(data_dir) / "manifest.json"
    if not manifest_path.exists():
        raise FileNotFoundError(
            f"{manifest_path} not found: DATA_DIR must be written by `feedrec prepare`"
        )
    return "impression" if read_json(manifest_path).get("has_impressions") else "next_item"


def next_item_targets(batch: Batch) -> np.ndarray:
    """The clicked candidate of each example (its first label-1 candidate; 0 if none)."""
    clicked = batch.labels == 1
    first = np.argmax(clicked, axis=1)
    targets = batch.candidates[np.arange(len(batch)), first]
    return np.where(clicked.any(axis=1), targets, 0).astype(np.int64)


def model_scorer(model, batch: Batch, batch_size: int = 1024):
    """A next-item scorer: the user vector of each example's history . every item vector.

    The item vectors are computed once; user vectors per call, ``batch_size``
    histories at a time.
    """
    import keras

    num_items = int(model.item_encoder.num_items)
    items = keras.ops.convert_to_numpy(model.item_embedding(np.arange(num_items, dtype="int32")))
    items = items.astype(np.float32)

    def score(rows: np.ndarray) -> np.ndarray:
        parts = []
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            users = model.user_embedding(batch.history[chunk], batch.history_length[chunk])
            parts.append(keras.ops.convert_to_numpy(users).astype(np.float32) @ items.T)
        return np.concatenate(parts) if parts else np.zeros((0, num_items), np.float32)

    return score


def click_log(data_dir: str | Path) -> pa.Table:
    """Every example's ``user_id``, ``time`` and clicked ``item`` over all splits.

    Reads only small columns (never the histories). For click logs every
    click is an example, so this is the whole log.
    """
    tables = []
    for split in SPLITS:
        path = Path(data_dir) / f"{split}.parquet"
        if not path.exists():
            continue
        table = pq.read_table(path, columns=["user_id", "time", "candidates", "labels"])
        if table.num_rows == 0:
            continue
        candidates, _ = pad_lists(table.column("candidates"), 1, keep="first")
        labels, _ = pad_lists(table.column("labels"), 1, keep="first", pad=-1)
        clicked = labels[:, 0] == 1
        tables.append(
            pa.table(
                {
                    "user_id": table.column("user_id").filter(pa.array(clicked)),
                    "time": table.column("time").filter(pa.array(clicked)),
                    "item": pa.array(candidates[clicked, 0].astype(np.int64)),
                }
            )
        )
    if not tables:
        return pa.table({"user_id": pa.array([], pa.string()), "time": [], "item": []})
    return pa.concat_tables(tables).combine_chunks()


def earlier_items(log: pa.Table, batch: Batch) -> list[np.ndarray]:
    """Per example: every item its user clicked strictly before its time, plus its history.

    The stored history holds only the ``L`` most recent clicks; the log
    (:func:`click_log`) gives the rest, so the full-catalogue protocol
    excludes everything the user has seen.
    """
    table = batch.table
    users = pa.concat_arrays(
        [log.column("user_id").combine_chunks(), table.column("user_id").combine_chunks()]
    )
    codes = pc.dictionary_encode(users).indices.to_numpy()
    log_users, query_users = codes[: log.num_rows], codes[log.num_rows :]
    log_times = log.column("time").to_numpy()
    log_items = log.column("item").to_numpy()
    order = np.lexsort((log_times, log_users))
    log_users, log_times, log_items = log_users[order], log_times[order], log_items[order]
    starts = np.searchsorted(log_users, query_users, side="left")
    ends = np.searchsorted(log_users, query_users, side="right")
    query_times = table.column("time").to_numpy()
    result = []
    for row in range(len(query_users)):
        start, end = starts[row], ends[row]
        stop = start + np.searchsorted(log_times[start:end], query_times[row], side="left")
        own = batch.history[row, : batch.history_length[row]]
        result.append(np.union1d(log_items[start:stop], own))
    return result


def evaluate_next_item_batch(
    model,
    batch: Batch,
    data_dir: str | Path,
    counts: np.ndarray,
    *,
    seed: int = 0,
    sampled: tuple[tuple[str, int], ...] = DEFAULT_SAMPLED,
    recent_window_ms: int | None = DEFAULT_RECENT_WINDOW_MS,
    chunk_size: int = 1024,
) -> dict[str, dict[str, dict]]:
    """Next-item metrics of the model and the baselines on one split, per protocol."""
    from feedrec.next_item import (
        FIRST_ITEM_INDEX,
        evaluate_next_item,
        popularity_scorer,
        random_scorer,
        recent_popularity_scorer,
    )
    from feedrec.runs import read_json

    num_items = int(model.item_encoder.num_items)
    counts = np.asarray(counts, np.float64)[:num_items]
    counts = np.pad(counts, (0, num_items - len(counts)))
    log = click_log(data_dir)
    scorers = {
        "model": model_scorer(model, batch),
        "popularity": popularity_scorer(counts, seed),
    }
    time_format = read_json(Path(data_dir) / "manifest.json").get("format")
    if recent_window_ms and time_format not in POSITION_TIME_FORMATS:
        scorers["recent_popularity"] = recent_popularity_scorer(
            log.column("time").to_numpy(),
            log.column("item").to_numpy(),
            batch.table.column("time").to_numpy(),
            num_items,
            window=int(recent_window_ms),
            seed=seed,
        )
    scorers["random"] = random_scorer(num_items, seed)
    targets = next_item_targets(batch)
    exclude = earlier_items(log, batch)
    # a sampled protocol needs K items outside every row's target and history
    seen = [
        np.count_nonzero(np.union1d(items, [target]) >= FIRST_ITEM_INDEX)
        for items, target in zip(exclude, targets, strict=True)
    ]
    drawable = num_items - FIRST_ITEM_INDEX - max(seen, default=0)
    kept = []
    for mode, k in sampled:
        if k > drawable:
            logger.warning(
                "protocol sampled_%s_%d skipped: a user has only %d items to draw from",
                mode,
                k,
                drawable,
            )
        else:
            kept.append((mode, k))
    return evaluate_next_item(
        scorers,
        targets,
        exclude,
        num_items,
        sampled=kept,
        item_counts=counts,
        seed=seed,
        chunk_size=chunk_size,
    )


METRIC_ORDER = ("auc", "mrr", "ndcg@5", "ndcg@10")


NEXT_ITEM_METRIC_ORDER = ("hr@10", "ndcg@10", "mrr@10", "hr@20", "ndcg@20")


def format_table(results: dict[str, dict]) -> str:
    """A plain-text metrics table, one row per scorer (one table per next-item protocol)."""
    if "protocols" in results:
        blocks = [
            f"protocol {name}\n" + _table(scorers, NEXT_ITEM_METRIC_ORDER)
            for name, scorers in results["protocols"].items()
        ]
        return "\n\n".join(blocks)
    return _table(results, METRIC_ORDER)


def _table(results: dict[str, dict], metrics: tuple[str, ...]) -> str:
    known = ("model", "popularity", "recent_popularity", "random")
    scorers = [name for name in known if name in results]
    header = f"{'scorer':<18}" + "".join(f"{m:>10}" for m in metrics)
    lines = [header, "-" * len(header)]
    for name in scorers:
        row = results[name]
        lines.append(f"{name:<18}" + "".join(f"{row[m]:>10.4f}" for m in metrics))
    return "\n".join(lines)
