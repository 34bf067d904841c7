"""masked_softmax, large_negative and causal_mask."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from feedrec.layers import causal_mask, large_negative, masked_softmax


def _np(x):
    return keras.ops.convert_to_numpy(keras.ops.cast(x, "float32"))


def test_masked_softmax_matches_softmax_over_kept_entries():
    scores = np.array([[1.0, 2.0, 3.0, 4.0], [0.5, -1.0, 2.0, 0.0]], dtype="float32")
    mask = np.array([[True, False, True, False], [True, True, True, True]])
    expected = np.zeros_like(scores)
    for row in range(2):
        kept = mask[row]
        exp = np.exp(scores[row, kept] - scores[row, kept].max())
        expected[row, kept] = exp / exp.sum()
    np.testing.assert_allclose(_np(masked_softmax(scores, mask)), expected, atol=1e-6)


def test_masked_softmax_fully_masked_row_is_zero_with_finite_gradients(grads_of):
    scores = tf.constant([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    mask = np.array([[False, False, False], [True, False, True]])
    weights = _np(masked_softmax(scores, mask))
    np.testing.assert_array_equal(weights[0], np.zeros(3))
    np.testing.assert_allclose(weights[1].sum(), 1.0, atol=1e-6)
    (grad,) = grads_of(lambda: masked_softmax(scores, mask) * tf.constant([1.0, 2.0, 3.0]), scores)
    assert np.all(np.isfinite(grad.numpy()))
    np.testing.assert_array_equal(grad.numpy()[0], np.zeros(3))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_masked_softmax_is_safe_in_16_bit_floats(dtype):
    rng = np.random.default_rng(0)
    scores = keras.ops.cast(rng.normal(scale=30.0, size=(3, 2, 5, 5)), dtype)
    mask = rng.random((3, 1, 5, 5)) < 0.5
    mask[0] = False  # a fully masked example
    weights = masked_softmax(scores, mask)
    assert keras.backend.standardize_dtype(weights.dtype) == dtype
    weights = _np(weights)
    assert np.all(np.isfinite(weights))
    assert np.all(weights[~np.broadcast_to(mask, weights.shape)] == 0.0)
    sums = weights.sum(-1)
    has_key = np.broadcast_to(mask, weights.shape).any(-1)
    np.testing.assert_allclose(sums[has_key], 1.0, atol=2e-2)
    np.testing.assert_array_equal(sums[~has_key], 0.0)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
def test_large_negative_is_finite_in_its_dtype(dtype):
    value = keras.ops.cast(large_negative(dtype), dtype)
    assert np.isfinite(_np(value))
    assert _np(value) < -9000.0  # exp of it (after the max shift) is exactly 0


def test_minus_1e9_would_overflow_float16():
    # Why the large negative depends on the dtype.
    with np.errstate(over="ignore"):
        assert np.isinf(np.float16(-1e9))


def test_causal_mask_is_lower_triangular():
    expected = np.tril(np.ones((4, 4), dtype=bool))
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(causal_mask(4, 4)), expected)
