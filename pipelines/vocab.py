"""Item and feature vocabularies, built from the training split only.

Item indices follow the one padding convention (``pipelines.schema``):
``0`` = padding, ``1`` = out-of-vocabulary (OOV), real items from ``2``,
ordered by training count (descending), then raw id -- deterministic. Items
seen fewer than ``min_count`` times in training, and ids never seen in
training, map to OOV.

Items known from metadata (MIND's ``news.tsv``) but not in that training
vocabulary -- typically news published after the training period -- are
appended after it, sorted by raw id: indices ``num_id_items`` and up. They
have **no ID embedding** (the model uses the OOV row for them, so the ID
vocabulary stays train-only) but keep their category/subcategory, so a fresh
article is still scored by its features, in evaluation and in an export.
The manifest records ``num_id_items``; OOV counts include these items.

``items.parquet`` (``pipelines.schema.ITEMS``) has one row per index, so
``item_index == row number``: row 0 is padding (``""``), row 1 OOV
(``"<oov>"``). Categorical features (``category``, ``subcategory``, ...) are
stored as indices into ``features/{name}.parquet`` (``FEATURE_VOCAB``), where
``0`` = missing; values are ordered by how many vocabulary items carry them
(descending), then by value.

Example:

>>> import pyarrow as pa
>>> vocab = Vocabulary.from_ids(pa.array(["b", "a", "b", "c", "a", "b"]), min_count=2)
>>> vocab.item_ids.to_pylist(), vocab.lookup(pa.array(["a", "b", "c", "z"])).tolist()
(['b', 'a'], [3, 2, 1, 1])
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.schema import FEATURE_VOCAB, FIRST_ITEM_INDEX, ITEMS, OOV_INDEX

PADDING_ID = ""
OOV_ID = "<oov>"
MISSING_VALUE = ""
REQUIRED_FEATURES = ("category", "subcategory")


def check_min_count(min_count: int) -> None:
    if not isinstance(min_count, int | np.integer) or isinstance(min_count, bool) or min_count < 1:
        raise ValueError(
            f"`min_count` should be a positive integer. Received: min_count={min_count!r}"
        )


@dataclasses.dataclass(frozen=True)
class Vocabulary:
    """Raw item ids of the real items, in index order (index ``i + 2`` is ``item_ids[i]``).

    Attributes:
        item_ids: pa.StringArray of the vocabulary's raw ids (without padding/OOV).
        counts: int64 array, their training counts.
    """

    item_ids: pa.Array
    counts: np.ndarray

    @classmethod
    def from_counts(
        cls, item_ids: pa.Array, counts: np.ndarray, *, min_count: int = 1
    ) -> Vocabulary:
        """Keep ids with ``count >= min_count``; order by count desc, then raw id."""
        check_min_count(min_count)
        item_ids = _as_array(item_ids).cast(pa.string())
        counts = np.asarray(counts, np.int64)
        if len(item_ids) != len(counts):
            raise ValueError(
                f"`item_ids` and `counts` should have the same length. Received: "
                f"{len(item_ids)} and {len(counts)}"
            )
        kept = np.flatnonzero(counts >= min_count)
        id_rank = np.empty(len(item_ids), np.int64)
        id_rank[np.asarray(pc.array_sort_indices(item_ids))] = np.arange(len(item_ids))
        order = kept[np.lexsort((id_rank[kept], -counts[kept]))]
        return cls(item_ids.take(pa.array(order, pa.int64())), counts[order])

    @classmethod
    def from_ids(cls, ids: pa.Array | pa.ChunkedArray | list, *, min_count: int = 1) -> Vocabulary:
        """Count the occurrences of each id (training events), then :meth:`from_counts`."""
        ids = _as_array(ids)
        counted = pc.value_counts(ids)
        return cls.from_counts(
            counted.field("values"), counted.field("counts").to_numpy(), min_count=min_count
        )

    @property
    def size(self) -> int:
        """Number of indices, padding and OOV included."""
        return len(self.item_ids) + FIRST_ITEM_INDEX

    def lookup(self, ids: pa.Array | pa.ChunkedArray | list) -> np.ndarray:
        """Raw ids -> int32 indices; unknown ids -> ``OOV_INDEX``."""
        position = pc.index_in(_as_array(ids).cast(pa.string()), value_set=self.item_ids)
        position = pc.fill_null(position, OOV_INDEX - FIRST_ITEM_INDEX)
        return (position.to_numpy(zero_copy_only=False) + FIRST_ITEM_INDEX).astype(np.int32)

    def missing(self, ids: pa.Array | pa.ChunkedArray | list) -> pa.Array:
        """The distinct ``ids`` not in the vocabulary, sorted (deterministic)."""
        ids = pc.unique(_as_array(ids).cast(pa.string()).drop_null())
        absent = pc.invert(pc.is_in(ids, value_set=self.item_ids))
        absent_ids = ids.filter(absent)
        return absent_ids.take(pc.array_sort_indices(absent_ids))

    def extended(self, item_ids: pa.Array, counts: np.ndarray) -> Vocabulary:
        """This vocabulary with ``item_ids`` appended after its own ids (in the given order)."""
        item_ids = _as_array(item_ids).cast(pa.string())
        return Vocabulary(
            pa.concat_arrays([self.item_ids, item_ids]),
            np.concatenate([self.counts, np.asarray(counts, np.int64)]),
        )

    def ids_with_reserved(self) -> pa.Array:
        """All ids in index order: ``["", "<oov>", *item_ids]``."""
        return pa.concat_arrays([pa.array([PADDING_ID, OOV_ID], pa.string()), self.item_ids])


def build_feature_vocabulary(values: pa.Array | list) -> pa.Table:
    """A ``FEATURE_VOCAB`` table for the values carried by vocabulary items.

    Index 0 is the missing value ``""``; then values by frequency (desc), then value.
    Nulls and empty strings count as missing.
    """
    values = _as_array(values).cast(pa.string())
    values = values.filter(pc.and_(pc.is_valid(values), pc.not_equal(values, MISSING_VALUE)))
    vocab = (
        Vocabulary.from_ids(values)
        if len(values)
        else Vocabulary(pa.array([], pa.string()), np.zeros(0))
    )
    return pa.table(
        {
            "index": pa.array(np.arange(len(vocab.item_ids) + 1, dtype=np.int32)),
            "value": pa.concat_arrays([pa.array([MISSING_VALUE], pa.string()), vocab.item_ids]),
        },
        schema=FEATURE_VOCAB,
    )


def items_table(
    vocab: Vocabulary,
    *,
    first_seen: np.ndarray | None = None,
    clicks: np.ndarray | None = None,
    metadata: pa.Table | None = None,
    extra_features: tuple[str, ...] = (),
) -> tuple[pa.Table, dict[str, pa.Table]]:
    """The ``items.parquet`` table and the feature vocabularies.

    Args:
        vocab: the item vocabulary.
        first_seen: optional int64 array aligned with ``vocab.item_ids``, the
            first time each item appears in the log (``None`` entries allowed
            via a masked value of ``np.iinfo(np.int64).max``).
        clicks: optional int array aligned with ``vocab.item_ids``, the training
            clicks of each item, written as an extra ``clicks`` column (for
            impression logs ``count`` also counts exposures).
        metadata: optional table with a string ``item_id`` column and
            categorical feature columns. Items without metadata get feature index 0.
        extra_features: further metadata columns to index besides ``category``
            and ``subcategory``. Defaults to none.

    Returns:
        ``(items, features)``: the ``ITEMS`` table (plus one int32 column per
        extra feature) and ``{name: FEATURE_VOCAB table}`` (always
        ``category`` and ``subcategory``, all-missing when there is no metadata).
    """
    n = vocab.size
    columns: dict[str, pa.Array] = {
        "item_index": pa.array(np.arange(n, dtype=np.int32)),
        "item_id": vocab.ids_with_reserved(),
        "count": pa.array(np.concatenate([[0, 0], vocab.counts]).astype(np.int64)),
    }
    if first_seen is None:
        columns["first_seen"] = pa.nulls(n, pa.int64())
    else:
        first_seen = np.concatenate(
            [[np.iinfo(np.int64).max] * 2, np.asarray(first_seen, np.int64)]
        )
        columns["first_seen"] = pa.array(first_seen, mask=first_seen == np.iinfo(np.int64).max)
    if clicks is not None:
        columns["clicks"] = pa.array(np.concatenate([[0, 0], clicks]).astype(np.int64))
    names = list(REQUIRED_FEATURES) + [f for f in extra_features if f not in REQUIRED_FEATURES]
    if metadata is not None:
        metadata = _first_per_item(metadata)
    features: dict[str, pa.Table] = {}
    for name in names:
        if metadata is not None and name in metadata.column_names:
            row = pc.index_in(vocab.item_ids, metadata.column("item_id"))
            values = metadata.column(name).combine_chunks().take(row)
        else:
            values = pa.nulls(len(vocab.item_ids), pa.string())
        feature_vocab = build_feature_vocabulary(values)
        index = pc.index_in(values.cast(pa.string()), feature_vocab.column("value"))
        index = pc.fill_null(index, 0).cast(pa.int32())  # "" is row 0 itself
        columns[name] = pa.concat_arrays([pa.array([0, 0], pa.int32()), _as_array(index)])
        features[name] = feature_vocab
    table = pa.table(columns)
    ordered = [f.name for f in ITEMS] + [c for c in table.column_names if c not in ITEMS.names]
    return table.select(ordered).cast(
        pa.schema([ITEMS.field(c) if c in ITEMS.names else table.schema.field(c) for c in ordered])
    ), features


def _first_per_item(metadata: pa.Table) -> pa.Table:
    """Keep the first metadata row of each item id."""
    ids = metadata.column("item_id").combine_chunks().cast(pa.string())
    encoded = ids.dictionary_encode()
    codes = encoded.indices.to_numpy(zero_copy_only=False)
    first = np.full(len(encoded.dictionary), len(codes), np.int64)
    np.minimum.at(first, codes, np.arange(len(codes)))
    return metadata.take(pa.array(np.sort(first)))


def _as_array(values) -> pa.Array:
    if isinstance(values, pa.ChunkedArray):
        return values.combine_chunks()
    if isinstance(values, pa.Array):
        return values
    return pa.array(values)
