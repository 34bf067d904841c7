"""From prepared examples (Parquet, see ``pipelines.schema.EXAMPLES``) to model inputs.

Histories are stored unpadded on disk; here they are right-padded with ``0``
to the model's ``L`` (keeping the most recent ``L`` clicks when a stored
history is longer) and candidate lists are right-padded with index ``0`` and
label ``-1``. The model derives ``history_mask = tf.sequence_mask(history_length, L)``.

This module imports TensorFlow only inside :func:`make_dataset`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.schema import EXAMPLES, PADDING_INDEX, PADDING_LABEL, validate


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
    path = split_path(data_dir, split)
    table = validate(pq.read_table(path), EXAMPLES, str(path))
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
