"""Item tower: an item's ID embedding plus its categorical features."""

from __future__ import annotations

import logging

import keras
import numpy as np
from keras import ops

from feedrec.layers.arguments import check_positive_int, check_rate
from feedrec.layers.initializers import derived_initializer

logger = logging.getLogger(__name__)

#: Out-of-vocabulary item index (``pipelines.schema.OOV_INDEX``). Kept here rather
#: than imported from the top-level package, which test layouts may shadow.
OOV_INDEX = 1

COMBINERS = ("sum", "concat")


@keras.saving.register_keras_serializable(package="feedrec")
class ItemEncoder(keras.layers.Layer):
    """Maps item indices to vectors: ID embedding plus feature embeddings.

    Item features (e.g. category) are looked up *inside* the layer from an
    item -> feature-index table per feature, stored as a non-trainable int32
    weight of shape ``(num_items,)``: callers send item indices only, and a
    ``.keras`` save (or a SavedModel export) carries the tables. Fill them
    with :meth:`set_feature_tables`; until then every item has feature index
    0 (missing).

    Index conventions: 0 = padding, 1 = out-of-vocabulary, real items from 2.
    Items ``>= num_id_items`` (when given) are known only from metadata (e.g.
    news published after the training period, listed in ``news.tsv``): they
    share the OOV row of the ID embedding, whose vocabulary is built from
    training clicks only, but keep their own feature embeddings -- so a fresh
    article is scored by its category/subcategory rather than as "unknown".
    Indices outside ``[0, num_items)`` are mapped to the OOV index 1 (so a
    stale or foreign id never crashes a CPU lookup). Padding (0) has an
    ordinary embedding row; masking is the consumers' job.

    Args:
        num_items: int. Size of the item vocabulary, padding and OOV included
            (at least 2).
        embedding_dim: int. Width ``D`` of the item vectors.
        feature_vocab_sizes: dict or None. Feature name -> vocabulary size
            (index 0 = missing). Defaults to ``None``: ID embedding only.
        combiner: str. ``"sum"`` adds the ID and feature embeddings (all of
            width ``D``); ``"concat"`` concatenates them and projects back to
            ``D`` with a Dense layer. Defaults to ``"sum"``.
        dropout: float. Dropout on the output vectors. Defaults to 0.
        num_id_items: int or None. Rows of the ID embedding: items
            ``[0, num_id_items)`` have their own ID vector, the rest use the
            OOV row. Defaults to ``None`` (= ``num_items``).
        embeddings_initializer: str or initializer. Defaults to ``"uniform"``.
        **kwargs: base layer arguments (``name``, ``dtype``, ...).

    Call arguments:
        inputs: int tensor of item indices, any shape ``(...)``, e.g.
            ``(batch, history_len)`` or ``(batch, num_candidates)``.
        training: bool. Enables dropout.

    Returns:
        Float tensor ``(..., embedding_dim)``.

    Example:

    >>> import numpy as np
    >>> encoder = ItemEncoder(6, 8, feature_vocab_sizes={"category": 3})
    >>> encoder.set_feature_tables(
    ...     {"category": np.array([0, 0, 1, 1, 2, 2], dtype="int32")}
    ... )
    >>> tuple(encoder(np.array([[2, 3, 0]])).shape)
    (1, 3, 8)
    """

    def __init__(
        self,
        num_items: int,
        embedding_dim: int,
        feature_vocab_sizes: dict[str, int] | None = None,
        combiner: str = "sum",
        dropout: float = 0.0,
        embeddings_initializer="uniform",
        num_id_items: int | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if not isinstance(num_items, int) or num_items < 2:
            raise ValueError(
                "`num_items` should be an integer >= 2 (padding and OOV included). "
                f"Received: num_items={num_items}"
            )
        check_positive_int("embedding_dim", embedding_dim)
        feature_vocab_sizes = dict(feature_vocab_sizes or {})
        for name, size in feature_vocab_sizes.items():
            if not isinstance(size, int) or size <= 0:
                raise ValueError(
                    "`feature_vocab_sizes` values should be positive integers. "
                    f"Received: feature_vocab_sizes[{name!r}]={size!r}"
                )
        if combiner not in COMBINERS:
            raise ValueError(
                f"`combiner` should be one of {COMBINERS}. Received: combiner={combiner!r}"
            )
        check_rate("dropout", dropout)
        if num_id_items is not None and (
            not isinstance(num_id_items, int) or not 2 <= num_id_items <= num_items
        ):
            raise ValueError(
                "`num_id_items` should be an integer in [2, num_items]. "
                f"Received: num_id_items={num_id_items!r}, num_items={num_items}"
            )
        self.num_id_items = num_items if num_id_items is None else num_id_items
        self.num_items = num_items
        self.embedding_dim = embedding_dim
        self.feature_vocab_sizes = feature_vocab_sizes
        self.combiner = combiner
        self.dropout = dropout
        self.embeddings_initializer = keras.initializers.get(embeddings_initializer)

    @property
    def feature_names(self) -> list[str]:
        """The features, in a fixed (sorted) order."""
        return sorted(self.feature_vocab_sizes)

    def build(self, inputs_shape=None) -> None:
        common = {"dtype": self.dtype_policy}
        self.item_embedding = keras.layers.Embedding(
            self.num_id_items,
            self.embedding_dim,
            name="item_embedding",
            embeddings_initializer=derived_initializer(self.embeddings_initializer, 0),
            **common,
        )
        self.item_embedding.build(None)
        self.feature_tables = {}
        self.feature_embeddings = {}
        for index, name in enumerate(self.feature_names, start=1):
            self.feature_tables[name] = self.add_weight(
                name=f"{name}_table",
                shape=(self.num_items,),
                dtype="int32",
                initializer="zeros",
                trainable=False,
            )
            embedding = keras.layers.Embedding(
                self.feature_vocab_sizes[name],
                self.embedding_dim,
                name=f"{name}_embedding",
                embeddings_initializer=derived_initializer(self.embeddings_initializer, index),
                **common,
            )
            embedding.build(None)
            self.feature_embeddings[name] = embedding
        self._projection = None
        if self.combiner == "concat" and self.feature_names:
            self._projection = keras.layers.Dense(
                self.embedding_dim, name="concat_projection", dtype=self.dtype_policy
            )
            self._projection.build((None, self.embedding_dim * (1 + len(self.feature_names))))
        self._dropout_layer = keras.layers.Dropout(self.dropout, dtype=self.dtype_policy)
        self.built = True

    def set_feature_tables(self, tables: dict[str, np.ndarray]) -> None:
        """Fill the item -> feature-index tables.

        Args:
            tables: dict. Feature name -> int array of length ``num_items``
                whose entry ``i`` is item ``i``'s feature index (0 = missing),
                in ``[0, feature_vocab_sizes[name])``. Every feature of the
                layer must be given; unknown names are an error.
        """
        if not self.built:
            self.build()
        unknown = sorted(set(tables) - set(self.feature_names))
        missing = sorted(set(self.feature_names) - set(tables))
        if unknown or missing:
            raise ValueError(
                f"`tables` should have exactly the features {self.feature_names}. "
                f"Received: unknown={unknown}, missing={missing}"
            )
        for name, table in tables.items():
            table = np.asarray(table)
            if table.shape != (self.num_items,):
                raise ValueError(
                    f"The table of feature {name!r} should have shape ({self.num_items},). "
                    f"Received: shape={table.shape}"
                )
            if not np.issubdtype(table.dtype, np.integer):
                raise ValueError(
                    f"The table of feature {name!r} should hold integers. "
                    f"Received: dtype={table.dtype}"
                )
            size = self.feature_vocab_sizes[name]
            if table.size and (table.min() < 0 or table.max() >= size):
                raise ValueError(
                    f"The table of feature {name!r} should hold indices in [0, {size}). "
                    f"Received: min={table.min()}, max={table.max()}"
                )
            self.feature_tables[name].assign(table.astype("int32"))
        logger.debug("Set feature tables %s for %d items", self.feature_names, self.num_items)

    def call(self, inputs, training=None):
        ids = ops.cast(inputs, "int32")
        in_range = ops.logical_and(ids >= 0, ids < self.num_items)
        ids = ops.where(in_range, ids, ops.full_like(ids, OOV_INDEX))
        if self.num_id_items < self.num_items:
            id_rows = ops.where(ids < self.num_id_items, ids, ops.full_like(ids, OOV_INDEX))
        else:
            id_rows = ids
        parts = [self.item_embedding(id_rows)]
        for name in self.feature_names:
            feature_ids = ops.take(self.feature_tables[name], ids, axis=0)
            parts.append(self.feature_embeddings[name](feature_ids))
        if self._projection is not None:
            vectors = self._projection(ops.concatenate(parts, axis=-1))
        else:
            vectors = parts[0]
            for part in parts[1:]:
                vectors = vectors + part
        return self._dropout_layer(vectors, training=training)

    def compute_output_shape(self, inputs_shape):
        return (*inputs_shape, self.embedding_dim)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            {
                "num_items": self.num_items,
                "num_id_items": self.num_id_items,
                "embedding_dim": self.embedding_dim,
                "feature_vocab_sizes": dict(self.feature_vocab_sizes),
                "combiner": self.combiner,
                "dropout": self.dropout,
                "embeddings_initializer": keras.initializers.serialize(self.embeddings_initializer),
            }
        )
        return config
