"""Keep the most recent ``L`` clicks of a right-padded history.

This is where truncation happens: the input pipeline may call
:func:`truncate_history` in its ``tf.data`` map, and
:class:`feedrec.models.FeedRecModel` calls it on every history it receives
(``call``, ``user_embedding``, ``explain``), so an exported model accepts a
history of any width and sees exactly the ``L`` most recent clicks.
"""

from __future__ import annotations

import tensorflow as tf

from feedrec.layers.arguments import check_positive_int


def truncate_history(history, history_length, max_length: int):
    """Left-align the most recent ``max_length`` clicks of each history.

    Histories are oldest first, most recent last, right-padded. The result
    keeps the last ``min(history_length, max_length)`` real clicks of each
    row, at slots ``0 ..``, and pads with 0 to exactly ``max_length`` columns;
    whatever the padded slots of the input held is dropped.
    ``history_length`` is clipped to ``[0, width]`` first.

    Args:
        history: int tensor ``(batch, width)``, any width.
        history_length: int tensor ``(batch,)``.
        max_length: int. ``L``, the number of clicks the model sees.

    Returns:
        A tuple ``(history, history_length)``: int32 ``(batch, max_length)``
        and int32 ``(batch,)`` with values in ``[0, max_length]``.

    Example:

    >>> history, length = truncate_history([[5, 6, 7, 8, 0]], [4], 2)
    >>> history.numpy().tolist(), length.numpy().tolist()
    ([[7, 8]], [2])
    """
    check_positive_int("max_length", max_length)
    history = tf.cast(tf.convert_to_tensor(history), tf.int32)
    history_length = tf.cast(tf.convert_to_tensor(history_length), tf.int32)
    width = tf.shape(history)[1]
    history_length = tf.clip_by_value(history_length, 0, width)
    kept = tf.minimum(history_length, max_length)
    start = history_length - kept
    slots = tf.range(max_length, dtype=tf.int32)[None, :]
    indices = tf.clip_by_value(start[:, None] + slots, 0, tf.maximum(width - 1, 0))
    # A zero-width history has nothing to gather from: pad it with one column.
    padded = tf.pad(history, [[0, 0], [0, 1]])
    gathered = tf.gather(padded, indices, batch_dims=1)
    valid = tf.sequence_mask(kept, max_length)
    return tf.where(valid, gathered, tf.zeros_like(gathered)), kept
