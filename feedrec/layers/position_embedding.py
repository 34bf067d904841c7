"""Learned position embeddings for a left-aligned (right-padded) history."""

from __future__ import annotations

import keras
from keras import ops

from feedrec.layers.arguments import check_positive_int


@keras.saving.register_keras_serializable(package="feedrec")
class PositionEmbedding(keras.layers.Layer):
    """Learned embedding of each slot's position, counted from the oldest click.

    Position indexing: slot ``i`` of the input gets row ``i`` of the table,
    counted from the *start* of the sequence. Histories are right-padded
    (oldest click first, most recent last, padding after), so a history of
    ``n <= L`` clicks always occupies positions ``0 .. n-1`` whatever the
    padded width ``L``: padding the same history to 8 or to 12 gives the same
    embeddings for its real clicks (given the same weights for those rows),
    and a causal prefix sees the positions the same prefix would see alone.
    Inputs of any width ``<= sequence_length`` are accepted. The embeddings at
    padded slots are not zero; downstream layers mask them.

    The layer returns the position embeddings only (broadcast to the input's
    shape); add them to the item vectors yourself.

    Args:
        sequence_length: int. Maximum number of positions, i.e. ``L``.
        initializer: str or initializer. Defaults to ``"glorot_uniform"``.
        **kwargs: base layer arguments (``name``, ``dtype``, ...).

    Call arguments:
        inputs: float tensor ``(batch, history_len, dim)``, with
            ``history_len <= sequence_length``.

    Returns:
        Float tensor ``(batch, history_len, dim)``: row ``i`` of the table at
        slot ``i``.

    Example:

    >>> import numpy as np
    >>> layer = PositionEmbedding(sequence_length=6)
    >>> x = np.zeros((2, 4, 8), dtype="float32")
    >>> tuple(layer(x).shape)
    (2, 4, 8)
    """

    def __init__(self, sequence_length: int, initializer="glorot_uniform", **kwargs) -> None:
        super().__init__(**kwargs)
        check_positive_int("sequence_length", sequence_length)
        self.sequence_length = sequence_length
        self.initializer = keras.initializers.get(initializer)
        self.supports_masking = True

    def build(self, inputs_shape) -> None:
        length = inputs_shape[-2]
        if length is not None and length > self.sequence_length:
            raise ValueError(
                "The input's time dimension should be at most `sequence_length`. "
                f"Received: history_len={length}, sequence_length={self.sequence_length}"
            )
        self.position_embeddings = self.add_weight(
            name="embeddings",
            shape=(self.sequence_length, inputs_shape[-1]),
            initializer=self.initializer,
        )
        self.built = True

    def call(self, inputs):
        length = ops.shape(inputs)[-2]
        if isinstance(length, int) and length > self.sequence_length:
            raise ValueError(
                "The input's time dimension should be at most `sequence_length`. "
                f"Received: history_len={length}, sequence_length={self.sequence_length}"
            )
        positions = ops.cast(self.position_embeddings[:length], inputs.dtype)
        return ops.broadcast_to(positions, ops.shape(inputs))

    def compute_mask(self, inputs, mask=None):
        return mask

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            {
                "sequence_length": self.sequence_length,
                "initializer": keras.initializers.serialize(self.initializer),
            }
        )
        return config
