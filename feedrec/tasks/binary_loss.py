"""Sigmoid binary cross-entropy over the real candidates."""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="feedrec")
class BinaryCandidateLoss(keras.losses.Loss):
    """Sigmoid cross-entropy of every real candidate's click label.

    Labels are ``1`` = clicked, ``0`` = not clicked, ``-1`` = padding
    candidate. Each candidate with label ``>= 0`` contributes
    ``-[y log sigmoid(s) + (1 - y) log(1 - sigmoid(s))]``, computed stably
    from the logit; a row's loss is the mean over its real candidates (0 for
    a row with none). The computation is in float32 whatever the logits' dtype.

    Args:
        reduction: str. Keras reduction. Defaults to ``"sum_over_batch_size"``.
        name: str. Defaults to ``"binary_candidate_loss"``.
        dtype: dtype of the loss computation. Defaults to ``"float32"``.

    Call arguments:
        y_true: float ``(batch, num_candidates)`` labels in ``{-1, 0, 1}``.
        y_pred: float ``(batch, num_candidates)`` logits.

    Returns:
        The reduced loss (a scalar with the default reduction).

    Example:

    >>> import numpy as np
    >>> loss = BinaryCandidateLoss()
    >>> value = loss(np.array([[1.0, -1.0]]), np.array([[3.0, 50.0]]))
    >>> round(float(value), 4)  # -log(sigmoid(3)); the padding is ignored
    0.0486
    """

    def __init__(
        self,
        reduction: str = "sum_over_batch_size",
        name: str = "binary_candidate_loss",
        dtype="float32",
    ) -> None:
        super().__init__(name=name, reduction=reduction, dtype=dtype)

    def call(self, y_true, y_pred):
        logits = ops.cast(y_pred, "float32")
        labels = ops.cast(y_true, "float32")
        valid = labels > -0.5
        targets = ops.where(valid, labels, 0.0)
        # max(s, 0) - s y + log(1 + exp(-|s|))
        per_candidate = (
            ops.maximum(logits, 0.0) - logits * targets + ops.log1p(ops.exp(-ops.abs(logits)))
        )
        count = ops.sum(ops.cast(valid, "float32"), axis=-1)
        total = ops.sum(ops.where(valid, per_candidate, 0.0), axis=-1)
        return total / ops.maximum(count, 1.0)

    def get_config(self) -> dict:
        config = super().get_config()
        config["dtype"] = self.dtype
        return config
