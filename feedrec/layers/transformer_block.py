"""A Transformer encoder block (post-norm or pre-norm) over a masked click history."""

from __future__ import annotations

import keras
from keras import ops

from feedrec.layers.arguments import (
    check_activation,
    check_bool,
    check_positive_int,
    check_rate,
)
from feedrec.layers.initializers import derived_initializer
from feedrec.layers.masked_attention import MaskedMultiHeadAttention
from feedrec.layers.masking import apply_mask

SWIGLU = "swiglu"


@keras.saving.register_keras_serializable(package="feedrec")
class TransformerBlock(keras.layers.Layer):
    """Masked multi-head self-attention, then a position-wise feed-forward net.

    Post-norm (the default, BERT's layout): ``x -> LayerNorm(x +
    Dropout(SelfAttention(x))) -> LayerNorm(. + Dropout(FeedForward(.)))``.
    Pre-norm (``norm_first=True``, SASRec's layout): ``x -> x +
    Dropout(SelfAttention(LayerNorm(x))) -> . + Dropout(FeedForward(
    LayerNorm(.)))``; the residual stream is not normalised, so a stack of
    pre-norm blocks should end with a LayerNorm (``UserEncoder`` adds it).
    Either way the outputs at padded positions are then set to exactly 0.

    Gated residuals (``gated_residual=True``, the LiGR layer of eSASRec,
    RecSys 2025): each residual branch is scaled, feature by feature, by a
    sigmoid gate computed from the residual stream it is added to, ``x -> x +
    sigmoid(Dense(x)) * Dropout(Branch(.))``, so that a block can learn how
    much of each branch to let through. ``activation="swiglu"`` makes the
    feed-forward net a gated linear unit, ``silu(x W) * (x V)`` projected
    back (two hidden projections instead of one).

    Masking: ``mask`` ``(batch, history_len)`` is boolean, ``True`` = a real
    click (``tf.sequence_mask(history_length, L)``). It is used as both query
    and key mask (ANDed into ``(batch, L, L)``, plus a causal mask when
    ``causal=True``), so padded keys get exactly zero attention weight, a row
    with no clicks gives zeros and finite gradients, and whatever the padded
    slots hold never reaches the real positions. The block keeps the time axis
    and passes the mask on (Keras mask propagation).

    Args:
        num_heads: int. Attention heads; must divide the input's last dimension.
        feed_forward_dim: int. Hidden width of the feed-forward network.
        dropout: float. Dropout on the attention weights and on both residual
            branches. Defaults to 0.
        causal: bool. Position ``i`` attends only to clicks ``j <= i`` (for
            training on every position). Defaults to False.
        activation: str. Feed-forward activation, a Keras activation name or
            ``"swiglu"``. Defaults to ``"gelu"``.
        norm_first: bool. Pre-norm instead of post-norm. Defaults to False.
        gated_residual: bool. Sigmoid gates on both residual branches.
            Defaults to False.
        layer_norm_epsilon: float. Defaults to ``1e-6``.
        max_relative_distance: int or None. A learned relative position bias
            in the self-attention (see :class:`MaskedMultiHeadAttention`).
            Defaults to ``None``.
        kernel_initializer: str or initializer. Defaults to ``"glorot_uniform"``.
        **kwargs: base layer arguments (``name``, ``dtype``, ...).

    Call arguments:
        inputs: float tensor ``(batch, history_len, dim)``.
        mask: optional boolean ``(batch, history_len)``; ``None`` = all real.
        training: bool. Enables dropout.
        return_attention_scores: bool. Also return the attention weights.
            Defaults to False.
        query_positions: optional int tensor ``(batch, num_queries)``: compute
            the block's output at these slots only (e.g. the last click's,
            when only it is pooled). Every slot still serves as a key, so
            each output row equals that slot's row of the full output; the
            other slots' attention and feed-forward work is skipped. The
            output's Keras mask (implicit propagation) is then still the
            input's ``(batch, history_len)``: give the next layer the rows'
            mask explicitly. Defaults to ``None``: every slot.

    Returns:
        ``(batch, history_len, dim)`` (``(batch, num_queries, dim)`` with
        ``query_positions``), and with ``return_attention_scores=True`` also
        the weights ``(batch, num_heads, history_len or num_queries,
        history_len)``.

    Example:

    >>> import numpy as np
    >>> block = TransformerBlock(num_heads=2, feed_forward_dim=16)
    >>> x = np.random.rand(2, 6, 8).astype("float32")
    >>> mask = np.arange(6)[None, :] < np.array([[4], [0]])
    >>> tuple(block(x, mask=mask).shape)
    (2, 6, 8)
    """

    def __init__(
        self,
        num_heads: int,
        feed_forward_dim: int,
        dropout: float = 0.0,
        causal: bool = False,
        activation: str = "gelu",
        layer_norm_epsilon: float = 1e-6,
        kernel_initializer="glorot_uniform",
        norm_first: bool = False,
        max_relative_distance: int | None = None,
        gated_residual: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        check_positive_int("num_heads", num_heads)
        check_positive_int("feed_forward_dim", feed_forward_dim)
        check_rate("dropout", dropout)
        check_positive_int("max_relative_distance", max_relative_distance, allow_none=True)
        self.max_relative_distance = max_relative_distance
        check_bool("norm_first", norm_first)
        self.norm_first = norm_first
        check_bool("gated_residual", gated_residual)
        self.gated_residual = gated_residual
        check_activation("activation", activation, extra=(SWIGLU,))
        self.num_heads = num_heads
        self.feed_forward_dim = feed_forward_dim
        self.dropout = dropout
        self.causal = causal
        self.activation = activation
        self.layer_norm_epsilon = layer_norm_epsilon
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.supports_masking = True

    def build(self, inputs_shape) -> None:
        dim = inputs_shape[-1]
        if dim % self.num_heads:
            raise ValueError(
                "The input's last dimension should be divisible by `num_heads`. "
                f"Received: dim={dim}, num_heads={self.num_heads}"
            )
        common = {"dtype": self.dtype_policy}
        self._attention = MaskedMultiHeadAttention(
            num_heads=self.num_heads,
            dropout=self.dropout,
            kernel_initializer=derived_initializer(self.kernel_initializer, 0),
            max_relative_distance=self.max_relative_distance,
            name="self_attention",
            **common,
        )
        self._attention.build(inputs_shape, inputs_shape)
        self._attention_norm = keras.layers.LayerNormalization(
            epsilon=self.layer_norm_epsilon, name="attention_norm", **common
        )
        self._attention_norm.build(inputs_shape)
        swiglu = self.activation == SWIGLU
        self._hidden = keras.layers.Dense(
            self.feed_forward_dim,
            activation="silu" if swiglu else self.activation,
            kernel_initializer=derived_initializer(self.kernel_initializer, 4),
            name="feed_forward_hidden",
            **common,
        )
        self._hidden.build(inputs_shape)
        self._linear_hidden = None
        if swiglu:
            self._linear_hidden = keras.layers.Dense(
                self.feed_forward_dim,
                kernel_initializer=derived_initializer(self.kernel_initializer, 5),
                name="feed_forward_linear",
                **common,
            )
            self._linear_hidden.build(inputs_shape)
        self._attention_gate = self._gate("attention_gate", 6, inputs_shape)
        self._feed_forward_gate = self._gate("feed_forward_gate", 7, inputs_shape)
        self._projection = keras.layers.Dense(
            dim,
            kernel_initializer=derived_initializer(self.kernel_initializer, 8),
            name="feed_forward_output",
            **common,
        )
        self._projection.build((*inputs_shape[:-1], self.feed_forward_dim))
        self._feed_forward_norm = keras.layers.LayerNormalization(
            epsilon=self.layer_norm_epsilon, name="feed_forward_norm", **common
        )
        self._feed_forward_norm.build(inputs_shape)
        self._dropout_layer = keras.layers.Dropout(self.dropout, **common)
        self.built = True

    def call(
        self,
        inputs,
        mask=None,
        training=None,
        return_attention_scores: bool = False,
        query_positions=None,
    ):
        attention_input = self._attention_norm(inputs) if self.norm_first else inputs
        stream, query, query_mask = inputs, attention_input, mask
        if query_positions is not None:
            stream, query = (
                ops.take_along_axis(tensor, ops.expand_dims(query_positions, -1), axis=1)
                for tensor in (inputs, attention_input)
            )
            if mask is not None:
                query_mask = ops.take_along_axis(mask, query_positions, axis=1)
        attended, weights = self._attention(
            query,
            attention_input,
            query_mask=query_mask,
            value_mask=mask,
            use_causal_mask=self.causal,
            return_attention_scores=True,
            training=training,
            query_positions=query_positions,
        )
        x = self._residual(stream, attended, self._attention_gate, training)
        if self.norm_first:
            feed_forward = self._feed_forward(self._feed_forward_norm(x))
            x = self._residual(x, feed_forward, self._feed_forward_gate, training)
        else:
            x = self._attention_norm(x)
            x = self._feed_forward_norm(
                self._residual(x, self._feed_forward(x), self._feed_forward_gate, training)
            )
        x = apply_mask(x, query_mask)
        if return_attention_scores:
            return x, weights
        return x

    def _gate(self, name, index, inputs_shape):
        """A sigmoid gate over the residual stream, or None without ``gated_residual``."""
        if not self.gated_residual:
            return None
        gate = keras.layers.Dense(
            inputs_shape[-1],
            activation="sigmoid",
            kernel_initializer=derived_initializer(self.kernel_initializer, index),
            name=name,
            dtype=self.dtype_policy,
        )
        gate.build(inputs_shape)
        return gate

    def _feed_forward(self, x):
        hidden = self._hidden(x)
        if self._linear_hidden is not None:
            hidden = hidden * self._linear_hidden(x)
        return self._projection(hidden)

    def _residual(self, stream, branch, gate, training):
        """``stream + branch`` after dropout, the branch gated by ``stream`` if ``gate``."""
        branch = self._dropout_layer(branch, training=training)
        if gate is not None:
            branch = gate(stream) * branch
        return stream + branch

    def compute_mask(self, inputs, mask=None):
        return mask

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            {
                "num_heads": self.num_heads,
                "feed_forward_dim": self.feed_forward_dim,
                "dropout": self.dropout,
                "causal": self.causal,
                "activation": self.activation,
                "layer_norm_epsilon": self.layer_norm_epsilon,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
                "norm_first": self.norm_first,
                "max_relative_distance": self.max_relative_distance,
                "gated_residual": self.gated_residual,
            }
        )
        return config
