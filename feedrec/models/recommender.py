"""The recommender: user vector . candidate item vectors -> click logits."""

from __future__ import annotations

import logging

import keras
import numpy as np
from keras import ops

from feedrec.layers.truncation import truncate_history
from feedrec.models.item_encoder import ItemEncoder
from feedrec.models.user_encoder import UserEncoder

logger = logging.getLogger(__name__)

INPUT_NAMES = ("history", "history_length", "candidates")


@keras.saving.register_keras_serializable(package="feedrec")
class FeedRecModel(keras.Model):
    """Scores candidate items for a user given the user's click history.

    ``logits[b, c] = user_vector[b] . item_vector(candidates[b, c])`` where
    the user vector comes from ``user_encoder`` over the item vectors of the
    history (both towers share ``item_encoder``).

    Truncation: every history the model receives (``call``,
    :meth:`user_embedding`, :meth:`explain`) first goes through
    :func:`feedrec.layers.truncate_history`, which keeps the most recent
    ``user_encoder.history_length`` real clicks, left-aligned and padded to
    exactly ``L``. A history of any width is therefore accepted, and garbage in
    padded slots is dropped before the lookup.

    Build it from a config with :func:`build_model`. Loss and metrics belong
    to the task (``feedrec.tasks``), passed to ``compile``.

    Args:
        item_encoder: :class:`ItemEncoder`. Item indices -> ``(..., dim)``.
        user_encoder: :class:`UserEncoder`. History vectors -> ``(batch, dim)``.
        **kwargs: base model arguments (``name``, ...).

    Call arguments:
        inputs: dict with ``"history"`` int32 ``(batch, history_len)``
            (right-padded with 0, oldest first), ``"history_length"`` int32
            ``(batch,)`` and ``"candidates"`` int32 ``(batch, num_candidates)``.
        training: bool.

    Returns:
        Float32 logits ``(batch, num_candidates)``.

    Example:

    >>> import numpy as np
    >>> model = FeedRecModel(
    ...     ItemEncoder(num_items=10, embedding_dim=8),
    ...     UserEncoder(history_length=4, num_heads=2, feed_forward_dim=16),
    ... )
    >>> logits = model({
    ...     "history": np.array([[2, 3, 0, 0]], dtype="int32"),
    ...     "history_length": np.array([2], dtype="int32"),
    ...     "candidates": np.array([[4, 5, 6]], dtype="int32"),
    ... })
    >>> tuple(logits.shape)
    (1, 3)
    """

    def __init__(self, item_encoder: ItemEncoder, user_encoder: UserEncoder, **kwargs) -> None:
        super().__init__(**kwargs)
        if not isinstance(item_encoder, keras.layers.Layer):
            raise ValueError(
                f"`item_encoder` should be a Keras layer. Received: item_encoder={item_encoder!r}"
            )
        if not isinstance(user_encoder, UserEncoder):
            raise ValueError(
                f"`user_encoder` should be a UserEncoder. Received: user_encoder={user_encoder!r}"
            )
        self.item_encoder = item_encoder
        self.user_encoder = user_encoder

    @property
    def history_length(self) -> int:
        """``L``: the number of most recent clicks the model sees."""
        return self.user_encoder.history_length

    def build(self, input_shape=None) -> None:
        if not self.item_encoder.built:
            self.item_encoder.build((None,))
        dim = self.item_encoder.embedding_dim
        if not self.user_encoder.built:
            self.user_encoder.build((None, self.history_length, dim), (None,))
        self.built = True

    def _history_vectors(self, history):
        """The item vectors of a history, without the item encoder's dropout:
        the user encoder drops its inputs (item + position vectors) itself,
        and a second dropout would drop ``1 - (1 - p)**2`` of them. So the
        history's dropout is the user encoder's (``build_model`` gives both
        encoders the same rate), the candidates' the item encoder's."""
        return self.item_encoder(history, training=False)

    def _encode_history(self, history, history_length, training=None, return_attention=False):
        history, history_length = truncate_history(history, history_length, self.history_length)
        vectors = self._history_vectors(history)
        return self.user_encoder(
            vectors, history_length, training=training, return_attention=return_attention
        )

    def call(self, inputs, training=None):
        missing = [name for name in INPUT_NAMES if name not in inputs]
        if missing:
            raise ValueError(
                f"`inputs` should be a dict with keys {INPUT_NAMES}. "
                f"Received keys: {sorted(inputs)}"
            )
        user_vector = self._encode_history(
            inputs["history"], inputs["history_length"], training=training
        )
        candidates = self.item_encoder(inputs["candidates"], training=training)
        logits = ops.einsum("bd,bcd->bc", user_vector, candidates)
        return ops.cast(logits, "float32")

    def user_embedding(self, history, history_length, training=False):
        """The user vectors ``(batch, dim)`` of histories ``(batch, width)``."""
        return self._encode_history(history, history_length, training=training)

    def item_embedding(self, items):
        """The item vectors ``(..., dim)`` of item indices ``(...)``."""
        return self.item_encoder(items, training=False)

    def sequence_embedding(self, history, history_length, training=False):
        """The user state after every click: ``(batch, width, dim)``, 0 at padding.

        No truncation: ``width`` (the history's width) must be at most ``L``.
        With a causal user encoder, position ``i`` of the result equals the
        user vector (``pooling="last"``) of the history cut after click ``i``;
        the next-item objective (``feedrec.sequential``) trains every position.

        Args:
            history: int ``(batch, width)``, right-padded, oldest first.
            history_length: int ``(batch,)``.
            training: bool. Enables dropout.
        """
        vectors = self._history_vectors(history)
        encoded = self.user_encoder.encode_sequence(vectors, history_length, training=training)
        return encoded["sequence"]

    def explain(self, history, history_length) -> dict:
        """Attention and pooling weights, for heat maps.

        Args:
            history: int ``(batch, width)``, right-padded.
            history_length: int ``(batch,)``.

        Returns:
            A dict: ``"attention"``, a list with one
            ``(batch, num_heads, L, L)`` array per Transformer block (empty
            when there is none); ``"pooling"`` ``(batch, L)`` (for mean
            pooling, uniform over the real clicks); ``"history"`` and
            ``"history_length"``, the truncated inputs the weights refer to;
            ``"user_vector"`` ``(batch, dim)``.
        """
        truncated, lengths = truncate_history(history, history_length, self.history_length)
        result = self.user_encoder(
            self._history_vectors(truncated),
            lengths,
            training=False,
            return_attention=True,
        )
        return {
            "attention": [ops.convert_to_numpy(w) for w in result["attention"]],
            "pooling": ops.convert_to_numpy(result["pooling"]),
            "history": ops.convert_to_numpy(truncated),
            "history_length": ops.convert_to_numpy(lengths),
            "user_vector": ops.convert_to_numpy(result["user_vector"]),
        }

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            {
                "item_encoder": keras.saving.serialize_keras_object(self.item_encoder),
                "user_encoder": keras.saving.serialize_keras_object(self.user_encoder),
            }
        )
        return config

    @classmethod
    def from_config(cls, config: dict) -> FeedRecModel:
        config = dict(config)
        config["item_encoder"] = keras.saving.deserialize_keras_object(config["item_encoder"])
        config["user_encoder"] = keras.saving.deserialize_keras_object(config["user_encoder"])
        return cls(**config)


def build_model(
    model_config,
    num_items: int,
    feature_tables: dict[str, np.ndarray] | None = None,
    feature_vocab_sizes: dict[str, int] | None = None,
    num_id_items: int | None = None,
    *,
    causal: bool = False,
) -> FeedRecModel:
    """Build a :class:`FeedRecModel` from a ``feedrec.config.ModelConfig``.

    The one place where the config becomes explicit layer arguments.

    Args:
        model_config: ``feedrec.config.ModelConfig``.
        num_items: int. Item vocabulary size, padding and OOV included.
        feature_tables: dict or None. Feature name -> int array of length
            ``num_items`` (item index -> feature index, 0 = missing), e.g. the
            columns of ``items.parquet`` sorted by ``item_index``. Features in
            ``model_config.item_features`` but absent here are skipped (with a
            log message); tables of features not in the config are ignored.
        feature_vocab_sizes: dict or None. Feature name -> vocabulary size.
            A feature missing here gets ``max(table) + 1``.
        num_id_items: int or None. Items with an ID embedding (the training
            vocabulary, padding and OOV included); items from ``num_id_items``
            to ``num_items`` are known from metadata only and use the OOV ID
            row with their own features. Defaults to ``None`` (all items).
        causal: bool. Causal self-attention in the user encoder (position
            ``i`` sees clicks ``j <= i``), for the next-item objective of
            ``feedrec.sequential`` with ``pooling="last"``. Defaults to False.

    Returns:
        A built :class:`FeedRecModel` whose feature tables are set.

    Example:

    >>> from feedrec.config import ModelConfig
    >>> config = ModelConfig(history_length=6, embedding_dim=8, feed_forward_dim=16)
    >>> model = build_model(config, num_items=20)
    >>> model.history_length
    6
    """
    feature_tables = dict(feature_tables or {})
    feature_vocab_sizes = dict(feature_vocab_sizes or {})
    used = [name for name in model_config.item_features if name in feature_tables]
    skipped = [name for name in model_config.item_features if name not in feature_tables]
    if skipped:
        logger.info("Item features %s have no table in the data: skipped", skipped)
    tables = {name: np.asarray(feature_tables[name]) for name in used}
    sizes = {}
    for name in used:
        if name in feature_vocab_sizes:
            sizes[name] = int(feature_vocab_sizes[name])
        else:
            sizes[name] = int(tables[name].max()) + 1 if tables[name].size else 1
    item_encoder = ItemEncoder(
        num_items=num_items,
        embedding_dim=model_config.embedding_dim,
        feature_vocab_sizes=sizes,
        combiner=model_config.feature_combiner,
        dropout=model_config.dropout,
        num_id_items=num_id_items,
        name="item_encoder",
    )
    user_encoder = UserEncoder(
        history_length=model_config.history_length,
        num_heads=model_config.num_heads,
        num_layers=model_config.num_layers,
        feed_forward_dim=model_config.feed_forward_dim,
        dropout=model_config.dropout,
        pooling=model_config.pooling,
        causal=causal,
        norm_first=model_config.norm_first,
        relative_position_bias=model_config.relative_position_bias,
        gated_residual=model_config.gated_residual,
        feed_forward_activation=model_config.feed_forward_activation,
        name="user_encoder",
    )
    model = FeedRecModel(item_encoder, user_encoder, name="feedrec")
    model.build()
    if tables:
        item_encoder.set_feature_tables(tables)
    logger.info(
        "Built FeedRecModel: %d items, dim %d, L=%d, %d block(s), %s pooling, features %s",
        num_items,
        model_config.embedding_dim,
        model_config.history_length,
        model_config.num_layers,
        model_config.pooling,
        used,
    )
    return model
