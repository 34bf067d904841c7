"""Additive attention pooling over the real clicks."""

from __future__ import annotations

import keras
from keras import ops

from feedrec.layers.arguments import check_positive_int
from feedrec.layers.initializers import derived_initializer
from feedrec.layers.masked_pooling import MaskedPooling
from feedrec.layers.masking import masked_softmax


@keras.saving.register_keras_serializable(package="feedrec")
class AttentionPooling(MaskedPooling):
    """Additive attention pooling: ``score_i = v . tanh(W h_i + b)``.

    The weights are a softmax of the scores over the real clicks only
    (:func:`feedrec.layers.masking.masked_softmax`): padded slots get exactly
    zero weight, and a row with no click gets all-zero weights, a zero vector
    and finite gradients.

    Args:
        hidden_dim: int or None. Width of ``W``. Defaults to ``None``: the
            input's last dimension.
        kernel_initializer: str or initializer. Defaults to ``"glorot_uniform"``.
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
    >>> pooled, weights = AttentionPooling()(x, mask=mask, return_weights=True)
    >>> tuple(pooled.shape), tuple(weights.shape)
    ((2, 8), (2, 5))

    References:
        - Bahdanau et al., "Neural Machine Translation by Jointly Learning to
          Align and Translate", 2015; Wu et al., NRMS, 2019.
    """

    def __init__(
        self, hidden_dim: int | None = None, kernel_initializer="glorot_uniform", **kwargs
    ) -> None:
        super().__init__(**kwargs)
        check_positive_int("hidden_dim", hidden_dim, allow_none=True)
        self.hidden_dim = hidden_dim
        self.kernel_initializer = keras.initializers.get(kernel_initializer)

    def build(self, inputs_shape) -> None:
        hidden_dim = self.hidden_dim or inputs_shape[-1]
        self._projection = keras.layers.Dense(
            hidden_dim,
            activation="tanh",
            kernel_initializer=derived_initializer(self.kernel_initializer, 0),
            dtype=self.dtype_policy,
            name="projection",
        )
        self._projection.build(inputs_shape)
        self._score = keras.layers.Dense(
            1,
            use_bias=False,
            kernel_initializer=derived_initializer(self.kernel_initializer, 1),
            dtype=self.dtype_policy,
            name="score",
        )
        self._score.build((*inputs_shape[:-1], hidden_dim))
        self.built = True

    def pooling_weights(self, inputs, mask, training=None):
        scores = ops.squeeze(self._score(self._projection(inputs)), -1)
        return masked_softmax(scores, mask)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            {
                "hidden_dim": self.hidden_dim,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            }
        )
        return config
