"""Softmax cross-entropy of each clicked candidate against the row's negatives."""

from __future__ import annotations

import keras
from keras import ops

from feedrec.layers.masking import large_negative


@keras.saving.register_keras_serializable(package="feedrec")
class SoftmaxCandidateLoss(keras.losses.Loss):
    """Each clicked candidate against the not-clicked candidates of its row.

    Labels are ``1`` = clicked, ``0`` = not clicked, ``-1`` = padding
    candidate. For each clicked candidate ``p`` of a row the loss is the
    softmax cross-entropy of ``p`` among ``{p} + negatives``::

        -log(exp(s_p) / (exp(s_p) + sum_{n: label_n = 0} exp(s_n)))

    and the row's loss is the mean over its clicked candidates. Padding
    candidates (label ``-1``) take no part, and other clicked candidates are
    not treated as negatives. A row without a clicked candidate contributes
    0 (and still counts in the batch mean of the default reduction). The
    computation is in float32 whatever the logits' dtype.

    Args:
        reduction: str. Keras reduction. Defaults to ``"sum_over_batch_size"``.
        name: str. Defaults to ``"softmax_candidate_loss"``.
        dtype: dtype of the loss computation. Defaults to ``"float32"``.

    Call arguments:
        y_true: float ``(batch, num_candidates)`` labels in ``{-1, 0, 1}``.
        y_pred: float ``(batch, num_candidates)`` logits.

    Returns:
        The reduced loss (a scalar with the default reduction).

    Example:

    >>> import numpy as np
    >>> loss = SoftmaxCandidateLoss()
    >>> value = loss(np.array([[1.0, 0.0, 0.0]]), np.array([[2.0, 0.0, 0.0]]))
    >>> round(float(value), 4)  # -log(e^2 / (e^2 + 2))
    0.2395
    """

    def __init__(
        self,
        reduction: str = "sum_over_batch_size",
        name: str = "softmax_candidate_loss",
        dtype="float32",
    ) -> None:
        super().__init__(name=name, reduction=reduction, dtype=dtype)

    def call(self, y_true, y_pred):
        logits = ops.cast(y_pred, "float32")
        labels = ops.cast(y_true, "float32")
        positive = labels > 0.5
        negative = ops.logical_and(labels > -0.5, labels < 0.5)
        filler = ops.cast(large_negative("float32"), "float32")
        # log-sum-exp over the negatives; a row without negatives gets ~-1e9.
        negatives_lse = ops.logsumexp(ops.where(negative, logits, filler), axis=-1, keepdims=True)
        # -log(e^s / (e^s + e^lse)) = softplus(lse - s), stable both ways.
        per_candidate = ops.softplus(negatives_lse - logits)
        positive = ops.cast(positive, "float32")
        count = ops.sum(positive, axis=-1)
        total = ops.sum(ops.where(positive > 0, per_candidate, 0.0), axis=-1)
        return total / ops.maximum(count, 1.0)

    def get_config(self) -> dict:
        config = super().get_config()
        config["dtype"] = self.dtype
        return config
