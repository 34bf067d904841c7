"""A learned query token attending over the real clicks."""

from __future__ import annotations

import math

import keras
from keras import ops

from feedrec.layers.masked_pooling import MaskedPooling
from feedrec.layers.masking import masked_softmax


@keras.saving.register_keras_serializable(package="feedrec")
class QueryPooling(MaskedPooling):
    """Scaled dot-product attention of one learned query over the clicks.

    ``score_i = q . (W h_i) / sqrt(dim)`` with a learned query vector ``q``
    and key projection ``W``; the weights are a softmax over the real clicks
    only, and the output is the weighted sum of the inputs. Padded slots get
    exactly zero weight; a row with no click gives a zero vector and finite
    gradients.

    Args:
        kernel_initializer: str or initializer, for ``W``. Defaults to
            ``"glorot_uniform"``.
        query_initializer: str or initializer, for ``q``. Defaults to
            ``"glorot_uniform"``.
        **kwargs: base layer arguments (``name``, ``dtype``, ...).

    Call arguments:
        inputs: float tensor ``(batch, history_len, dim)``.
        mask: optional boolean ``(batch, history_len)``, ``True`` = real click.
        return_weights: bool. Also return the ``(batch, history_len)`` weights.

    Returns:
        ``(batch, dim)`` (and the weights).

    Example:

    >>> import numpy as np
    >>> x = np.random.rand(2, 5, 8).astype("float32")
    >>> mask = np.arange(5)[None, :] < np.array([[3], [0]])
    >>> tuple(QueryPooling()(x, mask=mask).shape)
    (2, 8)
    """

    def __init__(
        self, kernel_initializer="glorot_uniform", query_initializer="glorot_uniform", **kwargs
    ) -> None:
        super().__init__(**kwargs)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.query_initializer = keras.initializers.get(query_initializer)

    def build(self, inputs_shape) -> None:
        dim = inputs_shape[-1]
        self._key = keras.layers.Dense(
            dim,
            kernel_initializer=self.kernel_initializer,
            dtype=self.dtype_policy,
            name="key",
        )
        self._key.build(inputs_shape)
        self.query = self.add_weight(name="query", shape=(dim,), initializer=self.query_initializer)
        self._scale = 1.0 / math.sqrt(dim)
        self.built = True

    def pooling_weights(self, inputs, mask, training=None):
        keys = self._key(inputs)
        query = ops.cast(self.query, keys.dtype) * ops.cast(self._scale, keys.dtype)
        scores = ops.einsum("bld,d->bl", keys, query)
        return masked_softmax(scores, mask)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            {
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
                "query_initializer": keras.initializers.serialize(self.query_initializer),
            }
        )
        return config
