"""The vector at the most recent real click."""

from __future__ import annotations

import keras
from keras import ops

from feedrec.layers.masked_pooling import MaskedPooling


@keras.saving.register_keras_serializable(package="feedrec")
class LastClickPooling(MaskedPooling):
    """The vector at the last real click (position ``history_length - 1``).

    The last click is the last slot whose mask is True, so for a right-padded
    history it is slot ``history_length - 1``. The weights are one-hot on that
    slot; a row with no click gets all-zero weights and a zero vector.

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
    >>> keras.ops.convert_to_numpy(LastClickPooling()(x, mask=mask)).tolist()
    [[3.0]]
    """

    def pooling_weights(self, inputs, mask, training=None):
        length = ops.shape(mask)[-1]
        positions = ops.where(mask, ops.arange(length)[None, :], -1)
        last = ops.max(positions, axis=-1)  # -1 when the row has no click
        one_hot = ops.one_hot(ops.maximum(last, 0), length, dtype=inputs.dtype)
        return one_hot * ops.cast(ops.expand_dims(last >= 0, -1), inputs.dtype)
