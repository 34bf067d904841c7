"""Multi-head scaled dot-product attention with exact masking."""

from __future__ import annotations

import math

import keras
from keras import ops

from feedrec.layers.arguments import check_positive_int, check_rate
from feedrec.layers.initializers import derived_initializer
from feedrec.layers.masking import apply_mask, masked_softmax, slot_distance


@keras.saving.register_keras_serializable(package="feedrec")
class MaskedMultiHeadAttention(keras.layers.Layer):
    """Multi-head attention in which masked keys get exactly zero weight.

    Masking: every mask is boolean with ``True`` = attend. The query mask
    ``(batch, query_len)``, the key mask ``(batch, key_len)``, an explicit
    ``attention_mask`` ``(batch, query_len, key_len)`` and, with
    ``use_causal_mask=True``, the causal mask (query ``i`` sees keys ``j <= i``)
    are ANDed into one ``(batch, query_len, key_len)`` mask. Masked scores are
    replaced by a dtype-dependent large negative before the softmax
    (:func:`feedrec.layers.masking.large_negative`, safe in float16/bfloat16)
    and masked weights are zeroed after it, so:

    * a masked key has weight exactly 0 and its value (even garbage) cannot
      reach the output;
    * a query row with no key to attend to gets all-zero weights (not a
      uniform distribution) and finite gradients;
    * outputs at masked query positions are exactly 0 (the query mask is
      re-applied to the output, after the output projection's bias).

    Relative positions (``max_relative_distance=D``): a learned scalar per
    head and per distance ``i - j`` between query slot ``i`` and key slot
    ``j``, clipped to ``[-D, D]``, is added to the scaled scores before the
    mask (T5-style relative position bias, one bucket per distance). In
    self-attention over a right-padded history the distance between two
    real clicks is how many clicks apart they are, whatever the padding, so
    the bias can express recency directly (how far back a click is from the
    query click). Zero-initialised: a fresh layer computes what it would
    without it. Masked keys still get exactly zero weight. Meant for
    self-attention: with a different query sequence the distance is only the
    difference of slot indices, which may mean nothing.

    Args:
        num_heads: int. Number of attention heads.
        key_dim: int or None. Size of each head's query/key/value projection.
            Defaults to ``None``: the query's last dimension divided by
            ``num_heads`` (which must then divide it).
        dropout: float. Dropout rate on the attention weights. Defaults to 0.
        use_bias: bool. Whether the projections have biases. Defaults to True.
        max_relative_distance: int or None. Learn a relative position bias
            for distances up to this (larger ones share the last bucket).
            Defaults to ``None``: no relative position bias.
        kernel_initializer: str or initializer. Defaults to ``"glorot_uniform"``.
        **kwargs: base layer arguments (``name``, ``dtype``, ...).

    Call arguments:
        query: float tensor ``(batch, query_len, dim)``.
        value: float tensor ``(batch, key_len, value_dim)``.
        key: optional float tensor ``(batch, key_len, key_dim)``; defaults to
            ``value``.
        query_mask: optional boolean ``(batch, query_len)``.
        value_mask: optional boolean ``(batch, key_len)`` (the key mask).
        attention_mask: optional boolean ``(batch, query_len, key_len)``.
        use_causal_mask: bool. AND a causal mask. Defaults to False.
        return_attention_scores: bool. Also return the weights. Defaults to False.
        training: bool. Enables dropout.
        query_positions: optional int tensor ``(batch, query_len)``: the key
            slot each query row stands at, when the queries are a subset of
            the key sequence's positions (e.g. only the last click's). The
            causal mask and the relative position bias then measure
            distances from these slots. Defaults to ``None``: query row
            ``i`` is slot ``i``.

    Returns:
        ``(batch, query_len, dim)``, and with ``return_attention_scores=True``
        also the weights ``(batch, num_heads, query_len, key_len)``.

    Example:

    >>> import numpy as np
    >>> layer = MaskedMultiHeadAttention(num_heads=2)
    >>> x = np.random.rand(2, 5, 8).astype("float32")
    >>> mask = np.array([[1, 1, 1, 0, 0], [1, 0, 0, 0, 0]], dtype=bool)
    >>> out, weights = layer(
    ...     x, x, query_mask=mask, value_mask=mask, return_attention_scores=True
    ... )
    >>> tuple(out.shape), tuple(weights.shape)
    ((2, 5, 8), (2, 2, 5, 5))
    """

    def __init__(
        self,
        num_heads: int,
        key_dim: int | None = None,
        dropout: float = 0.0,
        use_bias: bool = True,
        kernel_initializer="glorot_uniform",
        max_relative_distance: int | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        check_positive_int("num_heads", num_heads)
        check_positive_int("key_dim", key_dim, allow_none=True)
        check_rate("dropout", dropout)
        check_positive_int("max_relative_distance", max_relative_distance, allow_none=True)
        self.num_heads = num_heads
        self.key_dim = key_dim
        self.dropout = dropout
        self.use_bias = use_bias
        self.max_relative_distance = max_relative_distance
        self.kernel_initializer = keras.initializers.get(kernel_initializer)

    def build(self, query_shape, value_shape, key_shape=None) -> None:
        key_shape = value_shape if key_shape is None else key_shape
        dim = query_shape[-1]
        head_dim = self.key_dim
        if head_dim is None:
            if dim % self.num_heads:
                raise ValueError(
                    "The query's last dimension should be divisible by `num_heads` when "
                    f"`key_dim` is None. Received: dim={dim}, num_heads={self.num_heads}"
                )
            head_dim = dim // self.num_heads
        self._head_dim = head_dim
        bias = "nh" if self.use_bias else None

        def projection(name, index):
            layer = keras.layers.EinsumDense(
                "btd,dnh->btnh",
                output_shape=(None, self.num_heads, head_dim),
                bias_axes=bias,
                name=name,
                kernel_initializer=derived_initializer(self.kernel_initializer, index),
                dtype=self.dtype_policy,
            )
            layer.supports_masking = True  # position-wise: masks pass through
            return layer

        self._query_dense = projection("query", 0)
        self._query_dense.build(query_shape)
        self._key_dense = projection("key", 1)
        self._key_dense.build(key_shape)
        self._value_dense = projection("value", 2)
        self._value_dense.build(value_shape)
        self._output_dense = keras.layers.EinsumDense(
            "btnh,nhd->btd",
            output_shape=(None, dim),
            bias_axes="d" if self.use_bias else None,
            name="attention_output",
            kernel_initializer=derived_initializer(self.kernel_initializer, 3),
            dtype=self.dtype_policy,
        )
        self._output_dense.build((None, None, self.num_heads, head_dim))
        self._dropout_layer = keras.layers.Dropout(self.dropout, dtype=self.dtype_policy)
        self.relative_bias = None
        if self.max_relative_distance is not None:
            # (heads, 2D + 1): column D + d holds the bias of distance d = i - j
            self.relative_bias = self.add_weight(
                shape=(self.num_heads, 2 * self.max_relative_distance + 1),
                initializer="zeros",
                name="relative_bias",
            )
        self.built = True

    def _relative_bias(self, distance, dtype):
        """The ``(batch or 1, heads, query_len, key_len)`` bias of ``distance``
        ``(batch or 1, query_len, key_len)``, query slot minus key slot."""
        limit = self.max_relative_distance
        buckets = ops.clip(distance, -limit, limit) + limit
        bias = ops.take(ops.cast(self.relative_bias, dtype), buckets, axis=1)
        return ops.transpose(bias, (1, 0, 2, 3))

    def _combined_mask(self, query_mask, value_mask, attention_mask, causal):
        mask = None
        if query_mask is not None:
            mask = ops.expand_dims(ops.cast(query_mask, "bool"), -1)
        if value_mask is not None:
            key_mask = ops.expand_dims(ops.cast(value_mask, "bool"), 1)
            mask = key_mask if mask is None else ops.logical_and(mask, key_mask)
        if attention_mask is not None:
            attention_mask = ops.cast(attention_mask, "bool")
            mask = attention_mask if mask is None else ops.logical_and(mask, attention_mask)
        if causal is not None:
            mask = causal if mask is None else ops.logical_and(mask, causal)
        return mask

    def call(
        self,
        query,
        value,
        key=None,
        query_mask=None,
        value_mask=None,
        attention_mask=None,
        use_causal_mask: bool = False,
        return_attention_scores: bool = False,
        training=None,
        query_positions=None,
    ):
        key = value if key is None else key
        distance = None
        if use_causal_mask or self.relative_bias is not None:
            distance = slot_distance(ops.shape(query)[1], ops.shape(key)[1], query_positions)
        # causal: query slot i sees key slots j <= i
        causal = ops.greater_equal(distance, 0) if use_causal_mask else None
        mask = self._combined_mask(query_mask, value_mask, attention_mask, causal)
        q = self._query_dense(query)
        k = self._key_dense(key)
        v = self._value_dense(value)
        scale = ops.cast(1.0 / math.sqrt(self._head_dim), q.dtype)
        scores = ops.einsum("btnh,bsnh->bnts", q * scale, k)
        if self.relative_bias is not None:
            scores = scores + self._relative_bias(distance, scores.dtype)
        if mask is not None:
            mask = ops.expand_dims(mask, 1)  # broadcast over heads
        weights = masked_softmax(scores, mask)
        dropped = self._dropout_layer(weights, training=training)
        context = ops.einsum("bnts,bsnh->btnh", dropped, v)
        output = apply_mask(self._output_dense(context), query_mask)
        if return_attention_scores:
            return output, weights
        return output

    def compute_mask(self, query, previous_mask=None):
        # The output keeps the query's time axis, hence the query's mask.
        return previous_mask

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            {
                "num_heads": self.num_heads,
                "key_dim": self.key_dim,
                "dropout": self.dropout,
                "use_bias": self.use_bias,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
                "max_relative_distance": self.max_relative_distance,
            }
        )
        return config
