"""Helpers of the exploration notebooks (``notebooks/``): data, comparisons, model inspection.

* :func:`log_inputs` — the raw log a notebook reads: the embedded synthetic
  generator by default, or a MIND folder / Globo zip / other reader input.
* :func:`item_labels` — readable names of item indices (raw id, category).
* :func:`baseline_metrics` and :func:`compare_settings` — popularity and
  random on a split; one model trained per value of a model setting
  (``history_length``, ``pooling``, ...), compared on validation metrics.
* :func:`item_vectors` and :func:`nearest_items` — neighbours in embedding space.
* :func:`scores_as_history_grows` — a candidate's score as clicks are added.
* :func:`pick_examples` and :func:`explain_examples` — a few users' attention
  and pooling weights (:meth:`feedrec.models.FeedRecModel.explain`).

Importing this module does not import TensorFlow; the functions that take a
model use it through the model.

Example::

    format, inputs = log_inputs("synthetic", work_dir="nb", scale="small")
    prepare(format, inputs, "nb/data", options=PrepareOptions(overwrite=True))
    labels = item_labels("nb/data")
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from feedrec.config import Config, ModelConfig
from feedrec.data import Batch, load_split
from pipelines.schema import FIRST_ITEM_INDEX, ITEMS, OOV_INDEX, PADDING_INDEX

logger = logging.getLogger(__name__)

#: ``source`` values of :func:`log_inputs`: the generator, then reader formats.
SOURCES = ("synthetic", "mind", "globo", "events", "sequences")
METRICS = ("auc", "mrr", "ndcg@5", "ndcg@10")
#: Columns of ``items.parquet`` that are not categorical features.
_ITEM_COLUMNS = ("item_index", "item_id", "count", "first_seen")


def _check_positive_int(name: str, value) -> None:
    if not isinstance(value, int | np.integer) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"`{name}` should be a positive integer. Received: {name}={value!r}")


# --------------------------------------------------------------------------- data


def log_inputs(
    source: str = "synthetic",
    path: str | Path | Sequence[str | Path] | None = None,
    *,
    work_dir: str | Path,
    seed: int = 0,
    scale: str = "default",
) -> tuple[str, list[Path]]:
    """The reader format and inputs of a raw log, generating the synthetic one if asked.

    Args:
        source: str. ``"synthetic"`` writes the embedded generator's
            MIND-format log (``pipelines.synthetic``) to ``work_dir/log``;
            ``"mind"`` (a MIND folder or zip), ``"globo"`` (the Globo clicks
            zip or folder), ``"events"`` or ``"sequences"`` read ``path``.
            Defaults to ``"synthetic"``.
        path: str, Path or a list of them. The log's files; required unless
            ``source="synthetic"``, which ignores it. Defaults to None.
        work_dir: str or Path. Where a generated log goes.
        seed: int. Seed of the generator. Defaults to 0.
        scale: str. The generator's size preset (``"default"`` or
            ``"small"``). Defaults to ``"default"``.

    Returns:
        ``(format, inputs)`` for ``pipelines.readers.read`` and
        ``pipelines.prepare.prepare``.
    """
    if source not in SOURCES:
        raise ValueError(f"`source` should be one of {SOURCES}. Received: source={source!r}")
    if source == "synthetic":
        from pipelines.synthetic import generate_mind_log

        log_dir = Path(work_dir) / "log"
        summary = generate_mind_log(log_dir, seed=seed, scale=scale)
        logger.info("generated %d impressions in %s", summary["impressions"], log_dir)
        return "mind", [log_dir]
    if path is None or (not isinstance(path, str | Path) and not list(path)):
        raise ValueError(
            f"`path` is required when `source` is {source!r} (the log's folder or archive). "
            f"Received: path={path!r}"
        )
    paths = [path] if isinstance(path, str | Path) else list(path)
    inputs = [Path(p).expanduser() for p in paths]
    for item in inputs:
        if not item.exists():
            raise FileNotFoundError(f"{source} log not found: {item}")
    return source, inputs


def item_labels(data_dir: str | Path) -> pd.DataFrame:
    """Readable descriptions of the item indices of a prepared data directory.

    Args:
        data_dir: str or Path. A directory written by ``feedrec prepare`` (or a
            run directory, whose ``items.parquet`` is a copy; feature names
            are then left as their indices unless ``features/`` is there).

    Returns:
        A data frame indexed by ``item_index`` with ``item_id``, ``count``
        (training clicks), one column per categorical feature holding its
        value's name (``""`` when missing) and ``label``, the id and its last
        set feature, e.g. ``"N123 (soccer)"``; padding and OOV read ``"<pad>"`` and
        ``"<oov>"``.
    """
    data_dir = Path(data_dir)
    items = pq.read_table(data_dir / "items.parquet").to_pandas().set_index("item_index")
    # Categorical features: those of the ITEMS schema and any with a vocabulary file.
    declared = [field.name for field in ITEMS if field.name not in _ITEM_COLUMNS]
    feature_names = [
        name
        for name in items.columns
        if name in declared or (data_dir / "features" / f"{name}.parquet").exists()
    ]
    for name in feature_names:
        path = data_dir / "features" / f"{name}.parquet"
        if path.exists():
            vocab = pq.read_table(path).to_pandas().set_index("index")["value"]
            items[name] = items[name].map(vocab).fillna("")
        else:  # no vocabulary: the index itself (0 = missing)
            items[name] = items[name].astype(str).where(items[name] != 0, "")
    items["label"] = items["item_id"].astype(str)
    # The most specific feature that is set (MIND: the subcategory).
    detail = pd.Series("", index=items.index)
    for name in feature_names:
        detail = detail.where(items[name] == "", items[name])
    items.loc[detail != "", "label"] += " (" + detail[detail != ""] + ")"
    items.loc[items.index == PADDING_INDEX, "label"] = "<pad>"
    items.loc[items.index == OOV_INDEX, "label"] = "<oov>"
    return items


# --------------------------------------------------------------------------- comparisons


def baseline_metrics(data_dir: str | Path, split: str = "valid", seed: int = 0) -> dict:
    """Impression metrics of the popularity and random scorers on ``split``.

    The same scorers and metrics as :func:`feedrec.evaluation.evaluate_batch`
    (popularity counts from ``items.parquet``), without a model.

    Returns:
        ``{"popularity": {...}, "random": {...}}``, each with ``auc``,
        ``mrr``, ``ndcg@5``, ``ndcg@10``, ``impressions`` and ``skipped_impressions``.
    """
    from feedrec.evaluation import item_counts, popularity_scores, random_scores
    from feedrec.metrics import impression_metrics

    batch = load_split(data_dir, split, history_length=1)
    labels = batch.labels.astype(np.int64)
    counts = item_counts(Path(data_dir) / "items.parquet")
    return {
        "popularity": impression_metrics(popularity_scores(batch, counts, seed), labels),
        "random": impression_metrics(random_scores(batch, seed), labels),
    }


def compare_settings(
    data_dir: str | Path,
    work_dir: str | Path,
    config: Config,
    setting: str,
    values: Sequence,
    *,
    epochs: int | None = None,
) -> pd.DataFrame:
    """Train one model per value of a model setting; compare their validation metrics.

    Every run starts from ``config`` with ``config.model.<setting>`` replaced
    (and the number of epochs, when given); the best epoch by validation AUC
    is kept, as ``feedrec train`` does. The test split is not touched: choose
    settings on validation, report test once.

    Args:
        data_dir: str or Path. A prepared directory with a ``valid`` split;
            it must hold histories of at least the largest ``history_length``
            compared (``prepare``'s ``history_length``).
        work_dir: str or Path. Runs go to ``work_dir/<setting>=<value>``
            (replaced when they exist).
        config: Config. The base configuration.
        setting: str. A ``ModelConfig`` field, e.g. ``"history_length"`` or
            ``"pooling"``.
        values: sequence. The values to try.
        epochs: int or None. Epochs per run; None keeps ``config.train.epochs``.

    Returns:
        One row per value: ``<setting>`` (the value), ``val_auc``,
        ``val_mrr``, ``val_ndcg@5``, ``val_ndcg@10`` (at the best epoch;
        NaN without validation), ``best_epoch``, ``train_seconds`` and ``run_dir``.
    """
    fields = [field.name for field in dataclasses.fields(ModelConfig)]
    if setting not in fields:
        raise ValueError(f"`setting` should be one of {fields}. Received: setting={setting!r}")
    values = list(values)
    if not values:
        raise ValueError(f"`values` should not be empty. Received: values={values!r}")
    train_config = config.train
    if epochs is not None:
        _check_positive_int("epochs", epochs)
        train_config = dataclasses.replace(train_config, epochs=epochs)
    rows = []
    # Every run builds a new model, so TensorFlow warns that its predict step is
    # traced again: expected here, and quieted for the comparison only.
    tf_logger = logging.getLogger("tensorflow")
    level = tf_logger.level
    tf_logger.setLevel(logging.ERROR)
    try:
        for value in values:
            rows.append(_train_one(data_dir, work_dir, config, train_config, setting, value))
    finally:
        tf_logger.setLevel(level)
    return pd.DataFrame(rows)


def _train_one(data_dir, work_dir, config, train_config, setting, value) -> dict:
    from feedrec import training

    run_config = config.replace(
        model=dataclasses.replace(config.model, **{setting: value}), train=train_config
    )
    run_dir = Path(work_dir) / f"{setting}={value}"
    logger.info("training with %s=%r", setting, value)
    history = training.train(data_dir, run_dir, run_config, overwrite=True, verbose=0)
    best = history.get("best_epoch")
    row = {setting: value}
    for name in METRICS:
        per_epoch = history.get(f"val_{name}")
        row[f"val_{name}"] = float(per_epoch[best - 1]) if best and per_epoch else math.nan
    row["best_epoch"] = best if best is not None else math.nan
    row["train_seconds"] = float(history.get("train_seconds", math.nan))
    row["run_dir"] = str(run_dir)
    return row


# --------------------------------------------------------------------------- embeddings


def item_vectors(model) -> np.ndarray:
    """The item vectors of every item index, ``(num_items, dim)`` (row = item index)."""
    num_items = int(model.item_encoder.num_items)
    vectors = model.item_embedding(np.arange(num_items, dtype="int32")[None, :])
    return np.asarray(vectors, dtype=np.float64)[0]


def nearest_items(
    vectors: np.ndarray,
    queries: Sequence[int],
    k: int = 5,
    names: pd.Series | None = None,
    among: Sequence[int] | None = None,
) -> pd.DataFrame:
    """The ``k`` items closest to each query by cosine similarity.

    Padding (index 0), OOV (1) and the query itself are never neighbours;
    ties keep the lower index first.

    Args:
        vectors: float array ``(num_items, dim)``, row ``i`` = item index ``i``
            (see :func:`item_vectors`).
        queries: item indices, each a real item (``>= 2``).
        k: int. Neighbours per query. Defaults to 5.
        names: pd.Series or None. Item index -> name (e.g. ``item_labels(...)["label"]``);
            adds ``query_name`` and ``item_name`` columns. Defaults to None.
        among: item indices or None. The only items that may be neighbours,
            e.g. those seen in training (``count > 0``): items known only
            from metadata share one ID vector, so same-category ones tie.
            Defaults to None (every real item).

    Returns:
        One row per (query, neighbour): ``query``, ``rank`` (1 = closest),
        ``item`` and ``similarity`` (and the names).
    """
    vectors = np.asarray(vectors, dtype=np.float64)
    if vectors.ndim != 2:
        raise ValueError(
            f"`vectors` should be a 2-D array (num_items, dim). Received: shape {vectors.shape}"
        )
    _check_positive_int("k", k)
    queries = [int(q) for q in queries]
    num_items = len(vectors)
    bad = [q for q in queries if not FIRST_ITEM_INDEX <= q < num_items]
    if bad:
        raise ValueError(
            f"`queries` should be item indices in [{FIRST_ITEM_INDEX}, {num_items}). "
            f"Received: queries={queries!r}"
        )
    allowed = np.ones(num_items, dtype=bool)
    if among is not None:
        among = np.asarray(among, dtype=np.int64).reshape(-1)
        if ((among < 0) | (among >= num_items)).any():
            raise ValueError(
                f"`among` should hold item indices in [0, {num_items}). "
                f"Received: among={among.tolist()!r}"
            )
        allowed[:] = False
        allowed[among] = True
    allowed[[PADDING_INDEX, OOV_INDEX]] = False
    norms = np.linalg.norm(vectors, axis=1)
    unit = vectors / np.where(norms > 0, norms, 1.0)[:, None]
    rows = []
    for query in queries:
        similarity = unit @ unit[query]
        candidates = allowed.copy()
        candidates[query] = False
        similarity[~candidates] = -np.inf
        order = np.argsort(-similarity, kind="stable")[: min(k, int(candidates.sum()))]
        for rank, item in enumerate(order, start=1):
            rows.append(
                {
                    "query": query,
                    "rank": rank,
                    "item": int(item),
                    "similarity": float(similarity[item]),
                }
            )
    table = pd.DataFrame(rows, columns=["query", "rank", "item", "similarity"])
    if names is not None:
        table["query_name"] = table["query"].map(names)
        table["item_name"] = table["item"].map(names)
    return table


# --------------------------------------------------------------------------- scores


def scores_as_history_grows(model, history: Sequence[int], candidates: Sequence[int]) -> np.ndarray:
    """Candidate scores after each click of a history, from none to all.

    Args:
        model: a :class:`feedrec.models.FeedRecModel`.
        history: item indices, oldest first (no padding).
        candidates: item indices to score.

    Returns:
        Float array ``(len(history) + 1, len(candidates))``: row ``n`` holds
        the logits with the first ``n`` clicks as history (row 0: an empty
        history). Beyond ``L`` clicks the model sees the most recent ``L``.
    """
    history = np.asarray(history, dtype=np.int32).reshape(-1)
    candidates = np.asarray(candidates, dtype=np.int32).reshape(-1)
    if not len(candidates):
        raise ValueError("`candidates` should hold at least one item index. Received: []")
    steps = len(history) + 1
    lengths = np.arange(steps, dtype=np.int32)
    if len(history):
        real = np.arange(len(history))[None, :] < lengths[:, None]
        prefixes = np.where(real, history[None, :], 0)
    else:
        prefixes = np.zeros((1, 1), dtype=np.int32)  # one all-padding slot
    logits = model(
        {
            "history": prefixes.astype(np.int32),
            "history_length": lengths,
            "candidates": np.tile(candidates, (steps, 1)),
        },
        training=False,
    )
    return np.asarray(logits, dtype=np.float64)


def candidate_sample(batch: Batch, row: int, count: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Up to ``count`` candidates of example ``row``: its clicked ones first, then shown ones.

    Returns:
        ``(candidates, labels)``: int arrays, padding excluded.
    """
    _check_positive_int("count", count)
    if not 0 <= row < len(batch):
        raise ValueError(f"`row` should be in [0, {len(batch)}). Received: row={row!r}")
    labels = batch.labels[row]
    real = np.flatnonzero(labels >= 0)
    order = real[np.argsort(-labels[real], kind="stable")][:count]
    return batch.candidates[row, order].astype(np.int64), labels[order].astype(np.int64)


# --------------------------------------------------------------------------- attention


@dataclasses.dataclass(frozen=True)
class UserAttention:
    """One example's attention and pooling weights over its (truncated) history.

    Attributes:
        row: the example's row in its batch.
        user_id: the user, or None when the batch has no table.
        history: int ``(L,)``, the item indices the model saw, right-padded with 0.
        history_length: the number of real clicks (``<= L``).
        attention: float ``(num_layers, num_heads, L, L)``: per block and head,
            row ``i`` = query position, column ``j`` = key position. Padded
            rows and columns are zero.
        pooling: float ``(L,)``, the pooling weight of each position (zero on padding).
    """

    row: int
    user_id: str | None
    history: np.ndarray
    history_length: int
    attention: np.ndarray
    pooling: np.ndarray


def pick_examples(batch: Batch, count: int = 3, min_length: int = 1) -> list[int]:
    """Rows of ``count`` different users whose history lengths spread from short to long.

    The target lengths are evenly spaced from the shortest to the longest
    history (of at least ``min_length`` clicks); for each, the row whose
    length is closest (ties: the earlier row) and whose user is not yet
    picked is taken. With ``count >= 2`` the shortest and a longest history
    are always included, so heat maps show both padding and a full window.

    Returns:
        Row indices, shortest history first (fewer than ``count`` when there
        are not enough users).
    """
    _check_positive_int("count", count)
    lengths = np.asarray(batch.history_length)
    eligible = np.flatnonzero(lengths >= min_length)
    if batch.table is not None and "user_id" in batch.table.column_names:
        users = batch.table.column("user_id").to_pylist()
    else:
        users = list(range(len(lengths)))
    picked: list[int] = []
    if not len(eligible):
        return picked
    targets = np.linspace(lengths[eligible].min(), lengths[eligible].max(), num=count)
    for target in targets:
        distance = np.abs(lengths[eligible] - target)
        for row in eligible[np.argsort(distance, kind="stable")]:
            if users[row] not in {users[p] for p in picked}:
                picked.append(int(row))
                break
    return sorted(picked, key=lambda r: (lengths[r], r))


def explain_examples(model, batch: Batch, rows: Sequence[int]) -> list[UserAttention]:
    """The attention and pooling weights of the model for ``rows`` of ``batch``."""
    rows = [int(r) for r in rows]
    bad = [r for r in rows if not 0 <= r < len(batch)]
    if bad or not rows:
        raise ValueError(
            f"`rows` should be a non-empty list of rows in [0, {len(batch)}). "
            f"Received: rows={rows!r}"
        )
    explained = model.explain(batch.history[rows], batch.history_length[rows])
    attention = explained["attention"]
    if attention:
        stacked = np.stack([np.asarray(a) for a in attention], axis=1)  # (B, layers, H, L, L)
    else:
        length = explained["pooling"].shape[1]
        stacked = np.zeros((len(rows), 0, 0, length, length))
    users = (
        batch.table.column("user_id").take(rows).to_pylist()
        if batch.table is not None and "user_id" in batch.table.column_names
        else [None] * len(rows)
    )
    return [
        UserAttention(
            row=row,
            user_id=users[i],
            history=np.asarray(explained["history"][i]),
            history_length=int(explained["history_length"][i]),
            attention=stacked[i],
            pooling=np.asarray(explained["pooling"][i]),
        )
        for i, row in enumerate(rows)
    ]
