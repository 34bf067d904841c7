"""Mask helpers shared by the attention and pooling layers.

The one mask convention of feedrec: boolean masks, ``True`` = a real click /
attend. Attention masks are ``(batch, query_len, key_len)`` and are ANDed from
the query mask, the key mask and, optionally, a causal mask.
"""

from __future__ import annotations

import keras
from keras import ops

#: Large negative used in place of masked scores, per floating dtype. 16-bit
#: floats overflow at -1e9 (float16's lowest finite value is -65504), so they
#: get -1e4, which still underflows ``exp`` to exactly 0 after the max shift.
_LARGE_NEGATIVE = {"float16": -1e4, "bfloat16": -1e4}
_DEFAULT_LARGE_NEGATIVE = -1e9


def large_negative(dtype) -> float:
    """The value that stands in for a masked score in a softmax of ``dtype``.

    Args:
        dtype: str or dtype. A floating dtype, e.g. ``"float16"``.

    Returns:
        A Python float that is finite in ``dtype`` and whose ``exp`` (after the
        softmax's max shift) is 0: ``-1e4`` for 16-bit floats, ``-1e9`` otherwise.

    Example:

    >>> large_negative("float16")
    -10000.0
    """
    return _LARGE_NEGATIVE.get(keras.backend.standardize_dtype(dtype), _DEFAULT_LARGE_NEGATIVE)


def masked_softmax(scores, mask=None, axis: int = -1):
    """Softmax over ``axis`` in which masked entries get exactly zero weight.

    Masked scores are replaced (not shifted) by ``large_negative(scores.dtype)``
    before the softmax, and the weights are multiplied by the mask after it, so
    a row whose entries are all masked gives all-zero weights (not a uniform
    distribution) and neither the values nor the gradients are inf or NaN.

    Args:
        scores: float tensor, e.g. ``(batch, num_heads, query_len, key_len)``.
        mask: optional boolean tensor broadcastable to ``scores``; ``True`` =
            keep. ``None`` means a plain softmax.
        axis: int. The axis to normalise over. Defaults to ``-1``.

    Returns:
        A tensor of the shape and dtype of ``scores``; each row sums to 1 over
        its kept entries, or to 0 when it has none.

    Example:

    >>> weights = masked_softmax(
    ...     keras.ops.zeros((1, 3)), keras.ops.array([[True, True, False]])
    ... )
    >>> keras.ops.convert_to_numpy(weights).tolist()
    [[0.5, 0.5, 0.0]]
    """
    if mask is None:
        return ops.softmax(scores, axis=axis)
    mask = ops.cast(mask, "bool")
    filler = ops.cast(large_negative(scores.dtype), scores.dtype)
    weights = ops.softmax(ops.where(mask, scores, filler), axis=axis)
    return weights * ops.cast(mask, weights.dtype)


def slot_distance(query_length, key_length, query_positions=None):
    """Query slot minus key slot, ``(batch or 1, query_len, key_len)`` int.

    Args:
        query_length: int or scalar tensor.
        key_length: int or scalar tensor.
        query_positions: optional int tensor ``(batch, query_len)``: the key
            slot each query row stands at. ``None``: query row ``i`` is slot
            ``i`` (the result then has a batch axis of 1).

    Returns:
        Int tensor ``(batch or 1, query_len, key_len)``.
    """
    keys = ops.arange(key_length)
    if query_positions is None:
        slots = ops.expand_dims(ops.arange(query_length), 0)
    else:
        slots = ops.cast(query_positions, keys.dtype)
    return ops.expand_dims(slots, -1) - keys[None, None, :]


def causal_mask(query_length, key_length):
    """A ``(query_len, key_len)`` boolean mask: position ``i`` sees ``j <= i``.

    Args:
        query_length: int or scalar tensor.
        key_length: int or scalar tensor.

    Returns:
        Boolean tensor ``(query_len, key_len)``.
    """
    return ops.greater_equal(slot_distance(query_length, key_length)[0], 0)


def apply_mask(inputs, mask):
    """Zero ``inputs`` ``(batch, len, dim)`` where ``mask`` ``(batch, len)`` is False.

    Uses ``where`` rather than a product, so non-finite values in masked slots
    cannot leak through as NaN.
    """
    if mask is None:
        return inputs
    mask = ops.expand_dims(ops.cast(mask, "bool"), -1)
    return ops.where(mask, inputs, ops.zeros_like(inputs))
