"""Arrow schemas: the contracts between readers, stages and the model.

Data flows ``reader -> EVENTS -> stages -> EXAMPLES (+ ITEMS vocabulary)``.

Conventions (the one padding convention of the project):

* item index ``0`` is padding, ``1`` is out-of-vocabulary (OOV); real items
  start at ``2``. Vocabularies are built from the training split only.
* ``history`` holds the user's clicks *strictly before* ``time``, oldest
  first, the most recent ``history_length`` kept, **unpadded** on disk (in
  the row, or, in the compact layout, as ``history_start`` into
  ``clicks.parquet``); the input pipeline right-pads with ``0`` to ``L`` and
  derives the boolean ``history_mask = tf.sequence_mask(history_length, L)``.
* ``candidates``/``labels`` are parallel lists; label ``1`` = clicked,
  ``0`` = shown (or sampled) and not clicked. When batched, candidate lists
  are right-padded with index ``0`` and label ``-1``; losses and metrics
  ignore label ``-1``.
* times are ``int64`` milliseconds since the Unix epoch, UTC.
"""

from __future__ import annotations

import pyarrow as pa

PADDING_INDEX = 0
OOV_INDEX = 1
FIRST_ITEM_INDEX = 2
PADDING_LABEL = -1

#: Canonical events: one row per shown or clicked item. Every reader lands here.
EVENTS = pa.schema(
    [
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("time", pa.int64(), nullable=False),  # ms since epoch, UTC
        pa.field("label", pa.int8(), nullable=False),  # 1 = click, 0 = shown, not clicked
        pa.field("impression_id", pa.string()),  # null when the log has no impressions
        pa.field("session_id", pa.string()),
        # Position of the raw row in its source, for error messages and stable order.
        pa.field("source_file", pa.string(), nullable=False),
        pa.field("source_line", pa.int64(), nullable=False),
    ]
)

#: One training / evaluation example (a row of ``{split}.parquet``).
EXAMPLES = pa.schema(
    [
        pa.field("example_key", pa.string(), nullable=False),  # deterministic, unique per split
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("time", pa.int64(), nullable=False),
        pa.field("impression_id", pa.string()),
        pa.field("session_id", pa.string()),
        pa.field("history", pa.list_(pa.int32()), nullable=False),
        pa.field("history_length", pa.int32(), nullable=False),
        pa.field("candidates", pa.list_(pa.int32()), nullable=False),
        pa.field("labels", pa.list_(pa.int8()), nullable=False),
    ]
)

#: The ``compact`` layout of ``{split}.parquet``: no history lists on disk;
#: ``history_start`` points into ``clicks.parquet`` (``CLICKS``), and an
#: example's history is ``clicks[history_start : history_start + history_length]``.
#: ``pipelines.dataset.ExamplesFile`` reads either layout as ``EXAMPLES``.
COMPACT_EXAMPLES = pa.schema(
    [
        pa.field("history_start", pa.int64(), nullable=False) if f.name == "history" else f
        for f in EXAMPLES
    ]
)

#: ``clicks.parquet`` of the compact layout: every click of the log once, as an
#: item index; each user's clicks are contiguous and in time order (users
#: partition after partition, in no documented order).
CLICKS = pa.schema([pa.field("item_index", pa.int32(), nullable=False)])

#: On-disk layouts of the examples: history lists in every row, or compact.
LAYOUTS = ("lists", "compact")

#: Item vocabulary (``items.parquet``): index -> raw id, training count and
#: categorical features (as indices into their own vocabularies, 0 = missing).
ITEMS = pa.schema(
    [
        pa.field("item_index", pa.int32(), nullable=False),
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("count", pa.int64(), nullable=False),
        pa.field("first_seen", pa.int64()),  # ms; first time the item appears in the log
        pa.field("category", pa.int32(), nullable=False),
        pa.field("subcategory", pa.int32(), nullable=False),
    ]
)

#: A categorical feature vocabulary (``features/{name}.parquet``).
FEATURE_VOCAB = pa.schema(
    [
        pa.field("index", pa.int32(), nullable=False),
        pa.field("value", pa.string(), nullable=False),
    ]
)

SPLITS = ("train", "valid", "test")


class SchemaError(ValueError):
    """A table does not match its declared schema."""


def validate(table: pa.Table, schema: pa.Schema, what: str) -> pa.Table:
    """Check that ``table`` has every column of ``schema`` with the declared type.

    Extra columns are allowed and kept. Raises ``SchemaError`` naming the
    column, the expected type and the received one.
    """
    for field in schema:
        if field.name not in table.column_names:
            raise SchemaError(
                f"{what}: missing column `{field.name}` (expected type {field.type}); "
                f"received columns {table.column_names}"
            )
        received = table.schema.field(field.name).type
        if received != field.type:
            raise SchemaError(
                f"{what}: column `{field.name}` should have type {field.type}. Received: {received}"
            )
        if not field.nullable and table.column(field.name).null_count:
            raise SchemaError(
                f"{what}: column `{field.name}` may not contain nulls; "
                f"received {table.column(field.name).null_count} null(s)"
            )
    return table
