"""Masked mean over the real clicks."""

from __future__ import annotations

import keras
from keras import ops

from feedrec.layers.masked_pooling import MaskedPooling


@keras.saving.register_keras_serializable(package="feedrec")
class MeanPooling(MaskedPooling):
    """The mean of the vectors at the real clicks.

    Weights are ``1 / n`` on each of the ``n`` real clicks and 0 elsewhere; a
    row with no click gives a zero vector (the count is clipped to 1, so there
    is no 0/0).

    Args:
        **kwargs: base layer arguments (``name``, ``dtype``, ...).

    Call arguments:
        inputs: float tensor ``(batch, history_len, dim)``.
        mask: optional boolean ``(batch, history_len)``, ``True`` = real click.
        return_weights: bool. Also return the ``(batch, history_len)`` weights.

    Returns:
        ``(batch, dim)`` (and the weights).

    Example:

    >>> import numpy as np
    >>> x = np.array([[[1.0], [3.0], [100.0]]], dtype="float32")
    >>> mask = np.array([[True, True, False]])
    >>> keras.ops.convert_to_numpy(MeanPooling()(x, mask=mask)).tolist()
    [[2.0]]
    """

    def pooling_weights(self, inputs, mask, training=None):
        mask = ops.cast(mask, inputs.dtype)
        count = ops.maximum(ops.sum(mask, axis=-1, keepdims=True), 1.0)
        return mask / count
