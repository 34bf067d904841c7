"""User tower: masked self-attention over the click history, pooled to one vector."""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import ops

from feedrec.layers.arguments import (
    check_activation,
    check_bool,
    check_positive_int,
    check_rate,
)
from feedrec.layers.attention_pooling import AttentionPooling
from feedrec.layers.last_click_pooling import LastClickPooling
from feedrec.layers.masking import apply_mask
from feedrec.layers.mean_pooling import MeanPooling
from feedrec.layers.position_embedding import PositionEmbedding
from feedrec.layers.query_pooling import QueryPooling
from feedrec.layers.transformer_block import SWIGLU, TransformerBlock

#: Pooling mode -> layer class. A new pooling is one layer plus one line here.
POOLING_LAYERS = {
    "attention": AttentionPooling,
    "mean": MeanPooling,
    "last": LastClickPooling,
    "query": QueryPooling,
}


@keras.saving.register_keras_serializable(package="feedrec")
class UserEncoder(keras.layers.Layer):
    """Encodes a padded click history into one user vector.

    ``history vectors -> + position embeddings -> dropout -> N Transformer
    blocks -> pooling``. The history mask is
    ``tf.sequence_mask(history_length, history_len)`` (True = a real click;
    never derived from the ids), so padded slots are zeroed on entry, get no
    attention weight and no pooling weight: their content changes nothing.
    A history of length 0 gets all-zero pooling weights, hence a zero user
    vector, and finite gradients.

    Positions are counted from the oldest kept click (see
    :class:`feedrec.layers.PositionEmbedding`), so a history padded to any
    width ``<= history_length`` gives the same user vector.

    Args:
        history_length: int. ``L``, the maximum number of clicks (positions).
        num_heads: int. Attention heads per block. Defaults to 2.
        num_layers: int. Transformer blocks; 0 means pooling the (position
            embedded) item vectors directly. Defaults to 1.
        feed_forward_dim: int. Hidden width of each block's feed-forward
            network. Defaults to 128.
        dropout: float. Dropout on the embedded input and inside the blocks.
            Defaults to 0.
        pooling: str. One of ``"attention"``, ``"mean"``, ``"last"``,
            ``"query"``. Defaults to ``"attention"``.
        causal: bool. Causal self-attention (position ``i`` sees ``j <= i``).
            Defaults to False.
        use_position_embedding: bool. Defaults to True.
        norm_first: bool. Pre-norm blocks (SASRec's layout) followed by a
            final LayerNorm, instead of post-norm blocks. Pre-norm trains
            deeper stacks at higher learning rates without a warm-up.
            Defaults to False.
        relative_position_bias: bool. Each block's self-attention adds a
            learned bias per head for how many clicks apart the query and
            key clicks are (up to ``history_length - 1``; see
            :class:`feedrec.layers.MaskedMultiHeadAttention`), so recency
            relative to the query click is explicit, not only learnable from
            the absolute positions. Defaults to False.
        gated_residual: bool. Sigmoid gates on each block's residual
            branches (the LiGR layer; see
            :class:`feedrec.layers.TransformerBlock`). Defaults to False.
        feed_forward_activation: str. The blocks' feed-forward activation, a
            Keras activation name or ``"swiglu"`` (a gated linear unit).
            Defaults to ``"gelu"``.
        **kwargs: base layer arguments (``name``, ``dtype``, ...).

    Call arguments:
        history_embeddings: float tensor ``(batch, history_len, dim)`` with
            ``history_len <= history_length``.
        history_length: int tensor ``(batch,)``, the number of real clicks.
        training: bool. Enables dropout.
        return_attention: bool. Return a dict instead of the user vector.
            Defaults to False.

    With ``pooling="last"`` (and ``return_attention=False``) the last block
    computes only the last click's slot, the one pooled, so the other slots'
    attention and feed-forward work is skipped; the vector is the same.

    Returns:
        The user vector ``(batch, dim)``; with ``return_attention=True`` a
        dict with ``"user_vector"`` ``(batch, dim)``, ``"attention"`` (a list
        with one ``(batch, num_heads, history_len, history_len)`` tensor per
        block), ``"pooling"`` ``(batch, history_len)`` and ``"mask"``.

    Example:

    >>> import numpy as np
    >>> encoder = UserEncoder(history_length=6, num_heads=2, feed_forward_dim=16)
    >>> vectors = np.random.rand(2, 6, 8).astype("float32")
    >>> tuple(encoder(vectors, np.array([3, 0])).shape)
    (2, 8)
    """

    def __init__(
        self,
        history_length: int,
        num_heads: int = 2,
        num_layers: int = 1,
        feed_forward_dim: int = 128,
        dropout: float = 0.0,
        pooling: str = "attention",
        causal: bool = False,
        use_position_embedding: bool = True,
        norm_first: bool = False,
        relative_position_bias: bool = False,
        gated_residual: bool = False,
        feed_forward_activation: str = "gelu",
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        check_positive_int("history_length", history_length)
        if not isinstance(num_layers, int) or num_layers < 0:
            raise ValueError(
                f"`num_layers` should be a non-negative integer. Received: num_layers={num_layers}"
            )
        if pooling not in POOLING_LAYERS:
            raise ValueError(
                f"`pooling` should be one of {tuple(POOLING_LAYERS)}. Received: pooling={pooling!r}"
            )
        check_rate("dropout", dropout)
        self.history_length = history_length
        self.num_heads = num_heads
        self.num_layers = num_layers
        self.feed_forward_dim = feed_forward_dim
        self.dropout = dropout
        self.pooling = pooling
        self.causal = causal
        self.use_position_embedding = use_position_embedding
        check_bool("norm_first", norm_first)
        check_bool("relative_position_bias", relative_position_bias)
        self.norm_first = norm_first
        self.relative_position_bias = relative_position_bias
        check_bool("gated_residual", gated_residual)
        check_activation("feed_forward_activation", feed_forward_activation, extra=(SWIGLU,))
        self.gated_residual = gated_residual
        self.feed_forward_activation = feed_forward_activation
        common = {"dtype": self.dtype_policy}
        # Sublayers are created here so that argument errors surface at once.
        self.position_embedding = (
            PositionEmbedding(history_length, name="position_embedding", **common)
            if use_position_embedding
            else None
        )
        self.blocks = [
            TransformerBlock(
                num_heads=num_heads,
                feed_forward_dim=feed_forward_dim,
                dropout=dropout,
                causal=causal,
                norm_first=norm_first,
                gated_residual=gated_residual,
                activation=feed_forward_activation,
                max_relative_distance=(
                    max(history_length - 1, 1) if relative_position_bias else None
                ),
                name=f"transformer_block_{index}",
                **common,
            )
            for index in range(num_layers)
        ]
        self.output_norm = (
            keras.layers.LayerNormalization(epsilon=1e-6, name="output_norm", **common)
            if norm_first and num_layers
            else None
        )
        self.pooling_layer = POOLING_LAYERS[pooling](name=f"{pooling}_pooling", **common)
        self._dropout_layer = keras.layers.Dropout(dropout, **common)

    def build(self, history_embeddings_shape, history_length_shape=None) -> None:
        if self.position_embedding is not None:
            self.position_embedding.build(history_embeddings_shape)
        for block in self.blocks:
            block.build(history_embeddings_shape)
        if self.output_norm is not None:
            self.output_norm.build(history_embeddings_shape)
        self.pooling_layer.build(history_embeddings_shape)
        self.built = True

    def encode_sequence(self, history_embeddings, history_length, training=None):
        """The Transformer's output at every position, before pooling.

        With ``causal=True`` the output at position ``i`` depends only on the
        clicks ``0 .. i``, so it is the user state after click ``i``: training
        on every position (next-item objective) sees exactly what serving with
        ``pooling="last"`` sees for the prefix ending at ``i``.

        Args:
            history_embeddings: float ``(batch, history_len, dim)``.
            history_length: int ``(batch,)``.
            training: bool. Enables dropout.

        Returns:
            A dict: ``"sequence"`` ``(batch, history_len, dim)`` (exactly 0 at
            padded positions), ``"attention"`` (one ``(batch, num_heads,
            history_len, history_len)`` tensor per block) and ``"mask"``
            ``(batch, history_len)``.
        """
        return self._encode(history_embeddings, history_length, training)

    def _encode(self, history_embeddings, history_length, training=None, last_only=False):
        """``encode_sequence``; with ``last_only`` the last block computes only
        the last click's slot (slot 0 for an empty history), and the result is
        ``(batch, 1, dim)`` with its mask ``(batch, 1)``."""
        width = ops.shape(history_embeddings)[1]
        # sequence_mask saturates a length above the width; so must the last slot
        lengths = ops.minimum(ops.cast(history_length, "int32"), width)
        mask = tf.sequence_mask(lengths, width)
        x = history_embeddings
        if self.position_embedding is not None:
            x = x + self.position_embedding(x)
        x = apply_mask(self._dropout_layer(x, training=training), mask)
        attention = []
        for index, block in enumerate(self.blocks):
            last_block = index == len(self.blocks) - 1
            positions = None
            if last_only and last_block:
                positions = ops.expand_dims(ops.maximum(lengths - 1, 0), -1)
            x, weights = block(
                x,
                mask=mask,
                training=training,
                return_attention_scores=True,
                query_positions=positions,
            )
            attention.append(weights)
            if positions is not None:
                mask = ops.expand_dims(lengths > 0, -1)
        if self.output_norm is not None:
            x = apply_mask(self.output_norm(x), mask)
        return {"sequence": x, "attention": attention, "mask": mask}

    def call(self, history_embeddings, history_length, training=None, return_attention=False):
        if self.pooling == "last" and self.blocks and not return_attention:
            # Only the last click's output is pooled, so the last block
            # computes that slot alone (the same vector: tested).
            encoded = self._encode(history_embeddings, history_length, training, last_only=True)
            return encoded["sequence"][:, 0, :]
        encoded = self._encode(history_embeddings, history_length, training=training)
        x, attention, mask = encoded["sequence"], encoded["attention"], encoded["mask"]
        user_vector, pooling_weights = self.pooling_layer(
            x, mask=mask, training=training, return_weights=True
        )
        if return_attention:
            return {
                "user_vector": user_vector,
                "attention": attention,
                "pooling": pooling_weights,
                "mask": mask,
            }
        return user_vector

    def compute_output_shape(self, history_embeddings_shape, history_length_shape=None):
        return (history_embeddings_shape[0], history_embeddings_shape[-1])

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            {
                "history_length": self.history_length,
                "num_heads": self.num_heads,
                "num_layers": self.num_layers,
                "feed_forward_dim": self.feed_forward_dim,
                "dropout": self.dropout,
                "pooling": self.pooling,
                "causal": self.causal,
                "use_position_embedding": self.use_position_embedding,
                "norm_first": self.norm_first,
                "relative_position_bias": self.relative_position_bias,
                "gated_residual": self.gated_residual,
                "feed_forward_activation": self.feed_forward_activation,
            }
        )
        return config
