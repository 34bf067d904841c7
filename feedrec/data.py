"""From prepared examples (Parquet, see ``pipelines.schema.EXAMPLES``) to model inputs.

Histories are stored unpadded on disk; here they are right-padded with ``0``
to the model's ``L`` (keeping the most recent ``L`` clicks when a stored
history is longer) and candidate lists are right-padded with index ``0`` and
label ``-1``. The model derives ``history_mask = tf.sequence_mask(history_length, L)``.

Two ways in:

* :func:`load_split` reads a whole split into padded arrays (validation,
  evaluation, notebooks);
* :func:`train_batches` / :func:`make_train_dataset` *stream* a split for
  training: Parquet row groups in a seeded order, a bounded shuffle buffer,
  fixed-size batches. Memory is bounded by the shuffle buffer, whatever the
  size of the split, and the order of an epoch is a pure function of
  ``(seed, epoch)``, so a resumed run sees exactly the batches an
  uninterrupted one would.

This module imports TensorFlow only inside :func:`make_dataset` and
:func:`make_train_dataset`.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa

from feedrec import allocator
from pipelines.dataset import ExamplesFile
from pipelines.schema import PADDING_INDEX, PADDING_LABEL


@dataclasses.dataclass(frozen=True)
class Batch:
    """Padded arrays for a set of examples.

    Attributes:
        history: int32 `(N, L)`, right-padded with 0, oldest click first.
        history_length: int32 `(N,)`, the number of real clicks (<= L).
        candidates: int32 `(N, C)`, right-padded with 0.
        labels: float32 `(N, C)`; 1 clicked, 0 not, -1 padding.
        table: the examples table the arrays came from (keys, users, times).
    """

    history: np.ndarray
    history_length: np.ndarray
    candidates: np.ndarray
    labels: np.ndarray
    table: pa.Table | None = None

    def __len__(self) -> int:
        return len(self.history_length)

    def features(self) -> dict[str, np.ndarray]:
        return {
            "history": self.history,
            "history_length": self.history_length,
            "candidates": self.candidates,
        }


def split_path(data_dir: str | Path, split: str) -> Path:
    path = Path(data_dir) / f"{split}.parquet"
    if not path.exists():
        available = sorted(p.stem for p in Path(data_dir).glob("*.parquet"))
        raise FileNotFoundError(
            f"{path}: no such split in {data_dir}; available: {available}. "
            "Is this a directory written by `feedrec prepare`?"
        )
    return path


def load_split(
    data_dir: str | Path,
    split: str,
    history_length: int,
    num_candidates: int | None = None,
) -> Batch:
    """Read ``{data_dir}/{split}.parquet`` into padded arrays.

    Args:
        data_dir: a directory written by ``feedrec prepare``.
        split: ``train``, ``valid`` or ``test``.
        history_length: L; longer stored histories keep their most recent L.
        num_candidates: C; defaults to the longest candidate list in the split.
    """
    table = ExamplesFile(split_path(data_dir, split)).read()
    return batch_from_table(table, history_length, num_candidates)


def batch_from_table(
    table: pa.Table, history_length: int, num_candidates: int | None = None
) -> Batch:
    history, lengths = pad_lists(table.column("history"), history_length, keep="last")
    candidate_lists = table.column("candidates")
    if num_candidates is None:
        num_candidates = max(1, int(_list_lengths(candidate_lists).max(initial=0)))
    candidates, n_candidates = pad_lists(candidate_lists, num_candidates, keep="first")
    if (_list_lengths(candidate_lists) > num_candidates).any():
        raise ValueError(
            f"`num_candidates`={num_candidates} is shorter than the longest candidate list "
            f"({int(_list_lengths(candidate_lists).max())}); candidates are never truncated"
        )
    labels, _ = pad_lists(table.column("labels"), num_candidates, keep="first", pad=PADDING_LABEL)
    return Batch(
        history=history.astype(np.int32),
        history_length=lengths.astype(np.int32),
        candidates=candidates.astype(np.int32),
        labels=labels.astype(np.float32),
        table=table,
    )


def pad_lists(
    column: pa.ChunkedArray | pa.Array, width: int, *, keep: str = "last", pad: int = PADDING_INDEX
) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad a list column to `(N, width)`; returns the matrix and kept lengths.

    ``keep="last"`` keeps the last ``width`` elements of longer lists (the most
    recent clicks), ``keep="first"`` the first ``width``.
    """
    if keep not in ("first", "last"):
        raise ValueError(f"`keep` should be 'first' or 'last'. Received: keep={keep!r}")
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if array.null_count:
        raise ValueError("list column contains nulls; expected empty lists instead")
    offsets = array.offsets.to_numpy().astype(np.int64)
    values = array.values.to_numpy(zero_copy_only=False)
    starts, ends = offsets[:-1], offsets[1:]
    lengths = ends - starts
    kept = np.minimum(lengths, width)
    first = ends - kept if keep == "last" else starts
    columns = np.arange(width)
    index = first[:, None] + columns
    real = columns < kept[:, None]
    out = np.full((len(lengths), width), pad, dtype=values.dtype if values.size else np.int64)
    if values.size:
        out[real] = values[index[real]]
    return out, kept


def positions_within(sizes: np.ndarray) -> np.ndarray:
    """Each element's position within its group: ``[0..sizes[0]), [0..sizes[1]), ...``.

    For flattened ragged data: ``sizes`` are the group lengths, in order.
    """
    sizes = np.asarray(sizes, dtype=np.int64)
    return np.arange(int(sizes.sum())) - np.repeat(np.cumsum(sizes) - sizes, sizes)


def make_dataset(batch: Batch, batch_size: int, *, shuffle: bool = False, seed: int = 0):
    """A ``tf.data.Dataset`` of ``(features, labels)`` batches, prefetched."""
    import tensorflow as tf

    dataset = tf.data.Dataset.from_tensor_slices((batch.features(), batch.labels))
    if shuffle:
        dataset = dataset.shuffle(len(batch), seed=seed, reshuffle_each_iteration=True)
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def _list_lengths(column) -> np.ndarray:
    import pyarrow.compute as pc

    return pc.list_value_length(column).to_numpy(zero_copy_only=False)


#: The columns the training stream reads (``history_length`` is recomputed
#: from the kept history).
TRAIN_COLUMNS = ("history", "candidates", "labels")


def split_size(data_dir: str | Path, split: str) -> int:
    """Number of examples in ``{split}.parquet``, from the Parquet footer (no data read).

    Opening the split checks its schema (and, compact, that its clicks are there)."""
    return ExamplesFile(split_path(data_dir, split)).num_rows


def candidate_width(data_dir: str | Path, split: str = "train") -> int:
    """The candidate-list width ``C`` to pad a split to.

    ``manifest.json``'s ``num_negatives`` gives ``1 + K`` (one clicked item and
    up to K negatives) without reading the data; without it the split's
    ``candidates`` column is scanned, one row group at a time.
    """
    manifest_path = Path(data_dir) / "manifest.json"
    if manifest_path.exists():
        negatives = json.loads(manifest_path.read_text(encoding="utf-8")).get("num_negatives")
        if isinstance(negatives, int) and negatives >= 0:
            return 1 + negatives
    width = 1
    for chunk in ExamplesFile(split_path(data_dir, split)).iter_tables(
        65_536, columns=["candidates"]
    ):
        width = max(width, int(_list_lengths(chunk.column(0)).max(initial=0)))
    return width


def read_chunks(path: str | Path, *, chunk_rows: int = 8192, row_groups=None) -> Iterator[pa.Table]:
    """Stream the training columns of an examples file, ``chunk_rows`` rows at a time.

    Reads the row groups ``row_groups`` in that order (all, in file order, by
    default); within a row group, rows keep their order. Either layout
    (``pipelines.dataset.ExamplesFile``); the schema is checked before
    anything is read.
    """
    yield from ExamplesFile(path).iter_tables(chunk_rows, row_groups, list(TRAIN_COLUMNS))


def row_group_count(path: str | Path) -> int:
    return ExamplesFile(path).num_row_groups


def shuffle_chunks(
    chunks, buffer_size: int, rng: np.random.Generator | None
) -> Iterator[dict[str, np.ndarray]]:
    """A bounded shuffle buffer over chunks of rows (dicts of equal-length arrays).

    The batched analogue of ``tf.data.Dataset.shuffle``: the buffer holds
    ``buffer_size`` rows; each incoming row takes the place of a buffered row
    drawn at random, which is emitted. When the input ends the buffer is
    emitted in a random order. Every row is emitted exactly once and each row
    is copied O(1) times. ``rng=None`` passes the chunks through unchanged.
    """
    if rng is None:
        yield from chunks
        return
    if not isinstance(buffer_size, int) or buffer_size <= 0:
        raise ValueError(
            f"`buffer_size` should be a positive integer. Received: buffer_size={buffer_size!r}"
        )
    pool: dict[str, np.ndarray] | None = None
    filled = 0
    for chunk in chunks:
        size = len(next(iter(chunk.values())))
        if pool is None:
            pool = {k: np.empty((buffer_size, *v.shape[1:]), v.dtype) for k, v in chunk.items()}
        start = 0
        if filled < buffer_size:  # fill the buffer first
            take = min(buffer_size - filled, size)
            for key, values in chunk.items():
                pool[key][filled : filled + take] = values[:take]
            filled, start = filled + take, take
        while start < size:  # then swap incoming rows for random buffered ones
            take = min(size - start, buffer_size)
            slots = rng.choice(buffer_size, size=take, replace=False)
            yield {key: pool[key][slots] for key in pool}
            for key, values in chunk.items():
                pool[key][slots] = values[start : start + take]
            start += take
    if pool is not None and filled:
        order = rng.permutation(filled)
        yield {key: values[:filled][order] for key, values in pool.items()}


def rebatch(chunks, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
    """Regroup chunks of rows into batches of exactly ``batch_size`` rows.

    The last batch is completed with padding rows (history length 0,
    candidates 0, labels -1) of ``weight`` 0; every real row has weight 1.
    """
    pending: list[dict[str, np.ndarray]] = []
    count = 0
    for chunk in chunks:
        pending.append(chunk)
        count += len(chunk["history"])
        if count < batch_size:
            continue
        merged = {key: np.concatenate([c[key] for c in pending]) for key in pending[0]}
        full = count - count % batch_size
        for start in range(0, full, batch_size):
            yield {key: values[start : start + batch_size] for key, values in merged.items()}
        pending = [{key: values[full:] for key, values in merged.items()}] if full < count else []
        count -= full
    if count:
        merged = {key: np.concatenate([c[key] for c in pending]) for key in pending[0]}
        padding = batch_size - count
        fill = {"labels": PADDING_LABEL, "weight": 0}
        yield {
            key: np.concatenate(
                [values, np.full((padding, *values.shape[1:]), fill.get(key, 0), values.dtype)]
            )
            for key, values in merged.items()
        }


def train_batches(
    path: str | Path,
    *,
    history_length: int,
    num_candidates: int,
    batch_size: int,
    shuffle: bool = True,
    seed: int = 0,
    epoch: int = 0,
    shuffle_buffer: int = 100_000,
    start_batch: int = 0,
    chunk_rows: int = 8192,
    shard: tuple[int, int] = (0, 1),
) -> Iterator[dict[str, np.ndarray]]:
    """One epoch of padded training batches, streamed from an examples file.

    The order is a pure function of ``(seed, epoch)``: row groups are read in
    an order drawn from ``numpy.random.default_rng([seed, epoch])`` and rows
    pass through a shuffle buffer of ``shuffle_buffer`` rows driven by the
    same generator (:func:`shuffle_chunks`). Every batch has exactly
    ``batch_size`` rows; the last one of the epoch is padded with rows of
    ``weight`` 0 (:func:`rebatch`), so all examples are used once per epoch.

    With ``shard=(index, count)`` only every ``count``-th row group of that
    order is read, starting at ``index``, through its own shuffle buffer
    (seeded by ``(seed, epoch, index)``): the shards of one epoch together
    hold every example once (for parallel readers).

    Args:
        path: an examples Parquet file (``pipelines.schema.EXAMPLES``).
        history_length: L; longer stored histories keep their most recent L.
        num_candidates: C; candidate lists are padded to it (never truncated).
        batch_size: rows per batch.
        shuffle: shuffle (True) or keep file order.
        seed: the run's seed.
        epoch: the epoch number (0-based); each epoch has its own order.
        shuffle_buffer: rows held by the shuffle buffer (bounds memory).
        start_batch: skip the first ``start_batch`` batches (resuming).
        chunk_rows: rows read and padded at a time.
        shard: ``(index, count)``, see above. Defaults to ``(0, 1)``: all.

    Yields:
        dicts with ``history`` int32 ``(batch, L)``, ``history_length`` int32
        ``(batch,)``, ``candidates`` int32 ``(batch, C)``, ``labels`` float32
        ``(batch, C)`` and ``weight`` float32 ``(batch,)`` (1 real, 0 padding).
    """
    for name, value in (("batch_size", batch_size), ("shuffle_buffer", shuffle_buffer)):
        if not isinstance(value, int) or value <= 0:
            raise ValueError(f"`{name}` should be a positive integer. Received: {name}={value!r}")
    if not isinstance(start_batch, int) or start_batch < 0:
        raise ValueError(
            f"`start_batch` should be a non-negative integer. Received: start_batch={start_batch!r}"
        )
    index, count = shard
    if not 0 <= index < count:
        raise ValueError(f"`shard` should be (index, count), 0 <= index < count. Received: {shard}")
    groups = np.arange(row_group_count(path))
    rng = None
    if shuffle:
        rng = np.random.default_rng([seed, epoch])
        groups = rng.permutation(groups)
        if count > 1:
            rng = np.random.default_rng([seed, epoch, index])
    groups = groups[index::count]

    def padded():
        for table in read_chunks(path, chunk_rows=chunk_rows, row_groups=groups):
            batch = batch_from_table(table, history_length, num_candidates)
            yield {
                "history": batch.history,
                "history_length": batch.history_length,
                "candidates": batch.candidates,
                "labels": batch.labels,
                "weight": np.ones(len(batch), np.float32),
            }

    batches = rebatch(shuffle_chunks(padded(), shuffle_buffer, rng), batch_size)
    for index, batch in enumerate(batches):
        if index >= start_batch:
            yield batch


def make_train_dataset(
    path: str | Path,
    *,
    history_length: int,
    num_candidates: int,
    batch_size: int,
    replicas: tuple[int, int, int] = (0, 1, 1),
    parallel_reads: int = 1,
    **stream_options,
):
    """A ``tf.data.Dataset`` over :func:`train_batches`, prefetched.

    Each global batch of ``batch_size`` rows is cut into ``total`` equal
    per-replica slices; this dataset yields, in order, the slices
    ``first, ..., first + count - 1`` of every global batch, where
    ``replicas = (first, count, total)`` (``(0, 1, 1)``: whole batches). So
    replicas together see exactly the global batches of single-replica
    training, which keeps distributed and single-device runs equivalent.

    Elements are ``(features, labels, weights)``: ``features`` the model's
    input dict, ``labels`` float32 ``(b, C)``, ``weights`` float32 ``(b,)``
    equal to ``1 / (real rows in the global batch)`` for real rows and 0 for
    padding, so ``sum(loss * weights)`` summed over replicas is the global
    batch's mean loss.

    Args:
        path: an examples Parquet file.
        history_length: L.
        num_candidates: C.
        batch_size: the global batch size; must be divisible by ``total``.
        replicas: ``(first, count, total)`` as above.
        parallel_reads: readers working in parallel, each on every
            ``parallel_reads``-th row group (``train_batches(shard=...)``) with
            ``shuffle_buffer / parallel_reads`` rows of buffer; their batches
            are interleaved in a fixed order, so the epoch is still a pure
            function of ``(seed, epoch, parallel_reads)``. Defaults to 1.
        **stream_options: ``shuffle``, ``seed``, ``epoch``, ``shuffle_buffer``,
            ``start_batch``, ``chunk_rows`` (see :func:`train_batches`).
    """
    import tensorflow as tf

    first, count, total = replicas
    if total <= 0 or count <= 0 or first < 0 or first + count > total:
        raise ValueError(
            "`replicas` should be (first, count, total) with 0 <= first < first + count <= total. "
            f"Received: replicas={replicas!r}"
        )
    if batch_size % total:
        raise ValueError(
            f"`batch_size` should be divisible by the number of replicas ({total}). "
            f"Received: batch_size={batch_size}"
        )
    if not isinstance(parallel_reads, int) or parallel_reads <= 0:
        raise ValueError(
            "`parallel_reads` should be a positive integer. "
            f"Received: parallel_reads={parallel_reads!r}"
        )
    size = batch_size // total
    start_batch = stream_options.pop("start_batch", 0)
    if parallel_reads > 1:
        buffer = stream_options.get("shuffle_buffer", 100_000)
        stream_options["shuffle_buffer"] = max(1, buffer // parallel_reads)

    def generate(shard=0, start=start_batch):
        # TensorFlow has just reset malloc's mmap threshold for generator
        # datasets; tune_malloc's settings, if any, apply again (allocator)
        allocator.reapply()
        for batch in train_batches(
            path,
            history_length=history_length,
            num_candidates=num_candidates,
            batch_size=batch_size,
            shard=(int(shard), parallel_reads),
            start_batch=int(start),
            **stream_options,
        ):
            real = batch["weight"].sum()
            weights = batch["weight"] / np.float32(max(real, 1.0))
            for replica in range(first, first + count):
                part = slice(replica * size, (replica + 1) * size)
                features = {
                    "history": batch["history"][part],
                    "history_length": batch["history_length"][part],
                    "candidates": batch["candidates"][part],
                }
                yield features, batch["labels"][part], weights[part]

    signature = (
        {
            "history": tf.TensorSpec((size, history_length), tf.int32),
            "history_length": tf.TensorSpec((size,), tf.int32),
            "candidates": tf.TensorSpec((size, num_candidates), tf.int32),
        },
        tf.TensorSpec((size, num_candidates), tf.float32),
        tf.TensorSpec((size,), tf.float32),
    )
    if parallel_reads == 1:
        dataset = tf.data.Dataset.from_generator(generate, output_signature=signature)
    else:  # shards interleaved a global batch (``count`` slices) at a time
        dataset = tf.data.Dataset.range(parallel_reads).interleave(
            lambda shard: tf.data.Dataset.from_generator(
                generate, output_signature=signature, args=(shard, 0)
            ),
            cycle_length=parallel_reads,
            block_length=count,
            num_parallel_calls=parallel_reads,
            deterministic=True,
        )
        dataset = dataset.skip(start_batch * count)
    return dataset.prefetch(tf.data.AUTOTUNE)
