"""Evaluation: the impression protocol for the model and its baselines.

Every scorer is evaluated by the same code (:mod:`feedrec.metrics`) on the
same padded candidates, so the numbers are comparable:

* ``model`` — the trained recommender's logits;
* ``popularity`` — each candidate's click count in the training split (from
  ``items.parquet``), ties broken by seeded noise;
* ``random`` — seeded uniform scores.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from feedrec.data import Batch, load_split
from feedrec.metrics import break_ties, impression_metrics

logger = logging.getLogger(__name__)


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


def evaluate_run(run_dir: str | Path, data_dir: str | Path, split: str = "test", seed: int = 0):
    """Load a run and evaluate it on ``split`` of ``data_dir``."""
    from feedrec.runs import load_run

    model, config, _ = load_run(run_dir)
    batch = load_split(data_dir, split, config.model.history_length)
    logger.info("evaluating %d %s examples", len(batch), split)
    results = evaluate_batch(model, batch, item_counts(Path(run_dir) / "items.parquet"), seed)
    return {"split": split, "examples": len(batch), **results}


METRIC_ORDER = ("auc", "mrr", "ndcg@5", "ndcg@10")


def format_table(results: dict[str, dict]) -> str:
    """A plain-text metrics table, one row per scorer."""
    scorers = [name for name in ("model", "popularity", "random") if name in results]
    header = f"{'scorer':<12}" + "".join(f"{m:>10}" for m in METRIC_ORDER)
    lines = [header, "-" * len(header)]
    for name in scorers:
        row = results[name]
        lines.append(f"{name:<12}" + "".join(f"{row[m]:>10.4f}" for m in METRIC_ORDER))
    return "\n".join(lines)
