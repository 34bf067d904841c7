"""Base class of the pooling layers: a masked weighted sum over the history."""

from __future__ import annotations

import keras
from keras import ops

from feedrec.layers.masking import apply_mask


class MaskedPooling(keras.layers.Layer):
    """Pools ``(batch, history_len, dim)`` to ``(batch, dim)`` as a weighted sum.

    Subclasses implement :meth:`pooling_weights`, which returns
    ``(batch, history_len)`` weights that are exactly 0 at padded slots; the
    output is ``sum_i weights[:, i] * inputs[:, i]`` with padded slots zeroed
    first, so their content (even inf or NaN) never reaches the output.

    Masking: ``mask`` is boolean ``(batch, history_len)``, ``True`` = a real
    click; ``None`` means every slot is real. The layer consumes the mask (its
    output has no time axis). A row with no real click gives a finite output
    and finite gradients.

    Call arguments:
        inputs: float tensor ``(batch, history_len, dim)``.
        mask: optional boolean ``(batch, history_len)``.
        training: bool.
        return_weights: bool. Also return the pooling weights
            ``(batch, history_len)``. Defaults to False.

    Returns:
        ``(batch, dim)``, and with ``return_weights=True`` also the weights.
    """

    def call(self, inputs, mask=None, training=None, return_weights: bool = False):
        if mask is None:
            mask = ops.ones(ops.shape(inputs)[:-1], dtype="bool")
        mask = ops.cast(mask, "bool")
        weights = self.pooling_weights(inputs, mask, training=training)
        pooled = ops.einsum("bl,bld->bd", weights, apply_mask(inputs, mask))
        if return_weights:
            return pooled, weights
        return pooled

    def pooling_weights(self, inputs, mask, training=None):
        """``(batch, history_len)`` weights, exactly 0 where ``mask`` is False."""
        raise NotImplementedError

    def compute_mask(self, inputs, mask=None):
        return None
