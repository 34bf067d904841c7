"""The last pass of the Spark engine: finish each example in Python and write it with pyarrow.

After the window stages, the example rows are spread over tasks by (split,
time bucket) and sorted by (split, bucket, time, example_key). One
``mapInArrow`` pass, :class:`ExampleWriter`, then

* finishes each row with the local engine's functions: click negatives
  (``NegativeSampler.sample``), impression negatives (``choose_from_pools``),
  vocabulary lookups (``Vocabulary.lookup``), labels ``[1, 0, ...]``;
* drops the rows below ``min_history`` (counted);
* writes each (split, bucket) run as one Parquet file with the declared
  ``EXAMPLES`` schema (pyarrow writes list columns far faster than Spark's
  row-based writer; the files go to a local folder or, through
  ``pyarrow.fs``, to object storage);
* returns one small row per run (path and counts) and one per (split, user)
  it wrote, which Spark aggregates into the manifest's per-split counts.

The runs of a split, read bucket after bucket, are in (time, example_key)
order: the local engine's order.

Input columns: ``example_key``, ``user_id``, ``time``, ``impression_id``,
``session_id``, ``split``, ``_bucket`` (-1: below ``min_history``),
``_kind`` (:data:`CLICK`, :data:`TRAIN_IMPRESSION`, :data:`EVAL_IMPRESSION`),
``history`` (item indices) or ``history_ids`` (raw ids, to look up), and by
kind: ``item_code`` and ``item_index`` (the clicked item); ``positive`` and
``pool`` (raw ids: the clicked candidate, the impression's non-clicked ones);
``candidate_ids`` and ``labels`` (the whole impression).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipelines.negatives import choose_from_pools, hash_strings, matrix_to_lists, stream_keys
from pipelines.schema import EXAMPLES, OOV_INDEX

CLICK, TRAIN_IMPRESSION, EVAL_IMPRESSION = 0, 1, 2
RUN, USER, DROPPED = "run", "user", "dropped"
#: Snappy, and dictionaries only for the string columns (as the local engine writes).
PARQUET_OPTIONS = {
    "compression": "snappy",
    "use_dictionary": ["user_id", "impression_id", "session_id"],
}
#: One output row of the writer: a run written, a (split, user) seen, or dropped rows.
RESULT_DDL = (
    "kind string, split tinyint, bucket int, path string, rows bigint, "
    "history_oov bigint, candidate_oov bigint, dropped bigint, user_id string"
)
_RESULT_SCHEMA = pa.schema(
    [
        ("kind", pa.string()),
        ("split", pa.int8()),
        ("bucket", pa.int32()),
        ("path", pa.string()),
        ("rows", pa.int64()),
        ("history_oov", pa.int64()),
        ("candidate_oov", pa.int64()),
        ("dropped", pa.int64()),
        ("user_id", pa.string()),
    ]
)
_INT_LIST = pa.list_(pa.int32())
#: Rows per row group of a run (Spark hands a task batches of 10,000 rows).
ROW_GROUP = 65_536


def filesystem(location: str) -> tuple[pafs.FileSystem, str]:
    """``(filesystem, path)`` for a local path or a URI (``s3a://`` is read as ``s3://``)."""
    if "://" not in location:
        return pafs.LocalFileSystem(), location
    scheme, rest = location.split("://", 1)
    if scheme in ("s3a", "s3n"):
        scheme = "s3"
    return pafs.FileSystem.from_uri(f"{scheme}://{rest}")


@dataclasses.dataclass(frozen=True)
class ExampleWriter:
    """The ``mapInArrow`` function writing the examples (see the module doc).

    Attributes:
        runs: where the runs go (a local folder or a URI).
        vocabulary: a Spark broadcast of the ``Vocabulary``.
        code_to_index: a broadcast of item code -> index (click logs), or None.
        sampler: a broadcast of the ``NegativeSampler`` (click logs), or None.
        num_negatives, seed: K and the seed.
        num_id_items: indices from here have no ID embedding (counted as OOV).
    """

    runs: str
    vocabulary: Any
    code_to_index: Any
    sampler: Any
    num_negatives: int
    seed: int
    num_id_items: int

    def __call__(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from pyspark import TaskContext

        context = TaskContext.get()
        task = f"p{context.partitionId():05d}-a{context.attemptNumber()}" if context else "local"
        fs, root = filesystem(self.runs)
        writer, current, path = None, None, None
        pending: list[pa.Table] = []  # rows of the current run not written yet
        counts: dict[str, int] = {}
        users: dict[int, list[pa.Array]] = {}
        dropped: dict[int, int] = {}
        try:
            for batch in batches:
                for key, rows in _runs(batch):
                    split, bucket = key
                    if bucket < 0:
                        dropped[split] = dropped.get(split, 0) + rows.num_rows
                        continue
                    table, unseen = self.finish(rows)
                    if key != current:
                        if writer is not None:
                            _flush(writer, pending)
                            writer.close()
                            yield _result(RUN, *current, path=path, **counts)
                        current = key
                        path = f"{root}/split={split}/bucket={bucket:05d}-{task}.parquet"
                        fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
                        writer = pq.ParquetWriter(path, EXAMPLES, filesystem=fs, **PARQUET_OPTIONS)
                        counts = {"rows": 0, "history_oov": 0, "candidate_oov": 0}
                        pending = []
                    pending.append(table)
                    if sum(t.num_rows for t in pending) >= ROW_GROUP:
                        writer.write_table(pa.concat_tables(pending))
                        pending = []
                    counts["rows"] += table.num_rows
                    counts["history_oov"] += unseen[0]
                    counts["candidate_oov"] += unseen[1]
                    users.setdefault(split, []).append(pc.unique(table.column("user_id")))
            if writer is not None:
                _flush(writer, pending)
                writer.close()
                writer = None
                yield _result(RUN, *current, path=path, **counts)
        finally:
            if writer is not None:
                writer.close()
        for split, count in dropped.items():
            yield _result(DROPPED, split, -1, dropped=count)
        for split, seen in users.items():
            distinct = pc.unique(pa.chunked_array(seen).combine_chunks())
            yield pa.RecordBatch.from_pydict(
                {
                    "kind": pa.array([USER] * len(distinct), pa.string()),
                    "split": pa.array(np.full(len(distinct), split, np.int8)),
                    **{
                        f.name: pa.nulls(len(distinct), f.type)
                        for f in _RESULT_SCHEMA
                        if f.name not in ("kind", "split", "user_id")
                    },
                    "user_id": distinct,
                },
                schema=_RESULT_SCHEMA,
            )

    def finish(self, batch: pa.RecordBatch) -> tuple[pa.Table, tuple[int, int]]:
        """The ``EXAMPLES`` table of a batch of one run, and its (history, candidates)
        counts of entries without an ID embedding."""
        vocabulary = self.vocabulary.value
        if "history_ids" in batch.schema.names:
            history = _lookup_lists(vocabulary, batch.column("history_ids"))
        else:
            history = pc.cast(batch.column("history"), _INT_LIST)
        kinds = batch.column("_kind").to_numpy(zero_copy_only=False)
        pieces, order = [], []
        for kind in (CLICK, TRAIN_IMPRESSION, EVAL_IMPRESSION):
            rows = np.flatnonzero(kinds == kind)
            if len(rows):
                pieces.append(self._candidates(kind, batch.take(pa.array(rows))))
                order.append(rows)
        candidates, labels = (pa.concat_arrays([p[i] for p in pieces]) for i in (0, 1))
        back = np.empty(batch.num_rows, np.int64)
        back[np.concatenate(order)] = np.arange(batch.num_rows)
        candidates, labels = candidates.take(pa.array(back)), labels.take(pa.array(back))
        table = pa.table(
            {
                "example_key": batch.column("example_key"),
                "user_id": batch.column("user_id"),
                "time": batch.column("time"),
                "impression_id": batch.column("impression_id"),
                "session_id": batch.column("session_id"),
                "history": history,
                "history_length": pc.list_value_length(history).cast(pa.int32()),
                "candidates": candidates,
                "labels": labels,
            }
        ).cast(EXAMPLES)
        return table, (self._unseen(history), self._unseen(candidates))

    def _candidates(self, kind: int, rows: pa.RecordBatch) -> tuple[pa.Array, pa.Array]:
        """Candidates and labels of rows of one kind."""
        if kind == EVAL_IMPRESSION:
            candidates = _lookup_lists(self.vocabulary.value, rows.column("candidate_ids"))
            return candidates, pc.cast(rows.column("labels"), pa.list_(pa.int8()))
        if kind == CLICK:
            codes = rows.column("item_code").to_numpy(zero_copy_only=False).astype(np.int64)
            negatives = self.sampler.value.sample(
                hash_strings(rows.column("example_key")),
                rows.column("time").to_numpy(zero_copy_only=False),
                codes,
                self.num_negatives,
                self.seed,
            )
            index = self.code_to_index.value
            matrix = np.concatenate([codes[:, None], negatives], axis=1)
            return _first_positive(np.where(matrix >= 0, index[np.maximum(matrix, 0)], -1))
        offsets, pool = _lists(rows.column("pool"))
        chosen_offsets, chosen = choose_from_pools(
            stream_keys(self.seed, hash_strings(rows.column("example_key"))),
            offsets[:-1],
            offsets[1:],
            hash_strings(pool),
            self.num_negatives,
        )
        vocabulary = self.vocabulary.value
        matrix = np.full((rows.num_rows, self.num_negatives + 1), -1, np.int64)
        matrix[:, 0] = vocabulary.lookup(rows.column("positive"))
        counts = np.diff(chosen_offsets)
        row_of = np.repeat(np.arange(rows.num_rows), counts)
        slot = np.arange(len(chosen)) - np.repeat(chosen_offsets[:-1], counts) + 1
        matrix[row_of, slot] = vocabulary.lookup(pool.take(pa.array(chosen)))
        return _first_positive(matrix)

    def _unseen(self, lists: pa.Array) -> int:
        values = pc.list_flatten(lists).to_numpy(zero_copy_only=False)
        return int(((values == OOV_INDEX) | (values >= self.num_id_items)).sum())


def _flush(writer: pq.ParquetWriter, pending: list[pa.Table]) -> None:
    if pending:
        writer.write_table(pa.concat_tables(pending))
    pending.clear()


def _runs(batch: pa.RecordBatch) -> Iterator[tuple[tuple[int, int], pa.RecordBatch]]:
    """The contiguous (split, bucket) groups of a sorted batch."""
    split = batch.column("split").to_numpy(zero_copy_only=False).astype(np.int64)
    bucket = batch.column("_bucket").to_numpy(zero_copy_only=False).astype(np.int64)
    if not len(split):
        return
    change = np.flatnonzero((np.diff(split) != 0) | (np.diff(bucket) != 0)) + 1
    starts = np.concatenate([[0], change])
    ends = np.concatenate([change, [len(split)]])
    for start, end in zip(starts, ends, strict=True):
        yield (int(split[start]), int(bucket[start])), batch.slice(start, end - start)


def _first_positive(matrix: np.ndarray) -> tuple[pa.Array, pa.Array]:
    """Candidates (each row's prefix of entries >= 0) and labels ``[1, 0, ...]``."""
    columns = np.arange(matrix.shape[1])
    labels = np.where(matrix >= 0, (columns == 0).astype(np.int64), -1)
    return (
        matrix_to_lists(matrix).cast(_INT_LIST),
        matrix_to_lists(labels).cast(pa.list_(pa.int8())),
    )


def _lists(values: pa.Array) -> tuple[np.ndarray, pa.Array]:
    """Offsets from 0 (int64) and flat values of a list array; nulls are empty lists."""
    lengths = pc.fill_null(pc.list_value_length(values), 0).to_numpy(zero_copy_only=False)
    offsets = np.zeros(len(values) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return offsets, pc.list_flatten(values)


def _lookup_lists(vocabulary, values: pa.Array) -> pa.Array:
    """Lists of raw ids -> lists of vocabulary indices (unknown ids: OOV)."""
    offsets, flat = _lists(values)
    indices = pa.array(vocabulary.lookup(flat), pa.int32())
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), indices)


def _result(kind: str, split: int, bucket: int, **values) -> pa.RecordBatch:
    row = {"kind": kind, "split": split, "bucket": bucket, **values}
    return pa.RecordBatch.from_pylist([row], schema=_RESULT_SCHEMA)
