"""Candidate losses: closed forms, padding ignored, float32 under mixed precision."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from feedrec.tasks import BinaryCandidateLoss, SoftmaxCandidateLoss, build_loss


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def test_softmax_closed_form():
    value = SoftmaxCandidateLoss()(np.array([[1.0, 0.0, 0.0]]), np.array([[2.0, 0.0, 0.0]]))
    np.testing.assert_allclose(float(value), -np.log(np.e**2 / (np.e**2 + 2)), rtol=1e-6)


def test_softmax_each_positive_against_the_negatives_only():
    labels = np.array([[1.0, 1.0, 0.0]])
    logits = np.array([[1.0, 3.0, 0.5]])
    expected = np.mean(
        [-np.log(np.exp(s) / (np.exp(s) + np.exp(0.5))) for s in (1.0, 3.0)],
    )
    np.testing.assert_allclose(float(SoftmaxCandidateLoss()(labels, logits)), expected, rtol=1e-6)


@pytest.mark.parametrize("loss_class", [SoftmaxCandidateLoss, BinaryCandidateLoss])
def test_padding_candidates_change_nothing(loss_class):
    loss = loss_class()
    base = float(loss(np.array([[1.0, 0.0, 0.0]]), np.array([[2.0, 0.0, -1.0]])))
    padded = float(
        loss(np.array([[1.0, 0.0, 0.0, -1.0, -1.0]]), np.array([[2.0, 0.0, -1.0, 80.0, -80.0]]))
    )
    np.testing.assert_allclose(padded, base, rtol=1e-6)


def test_softmax_row_without_positive_contributes_zero():
    loss = SoftmaxCandidateLoss()
    only = float(loss(np.array([[1.0, 0.0, 0.0]]), np.array([[2.0, 0.0, 0.0]])))
    per_row = SoftmaxCandidateLoss(reduction=None)(
        np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [-1.0, -1.0, -1.0]]),
        np.array([[2.0, 0.0, 0.0], [5.0, 1.0, 0.0], [1.0, 2.0, 3.0]]),
    )
    np.testing.assert_allclose(keras.ops.convert_to_numpy(per_row), [only, 0.0, 0.0], rtol=1e-6)


def test_softmax_positive_without_negatives_is_zero_and_finite():
    per_row = SoftmaxCandidateLoss(reduction=None)(np.array([[1.0, -1.0]]), np.array([[0.3, 0.0]]))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(per_row), [0.0], atol=1e-6)


def test_binary_closed_form():
    labels = np.array([[1.0, 0.0, -1.0]])
    logits = np.array([[3.0, 1.0, 50.0]])
    expected = np.mean([-np.log(_sigmoid(3.0)), -np.log(1.0 - _sigmoid(1.0))])
    np.testing.assert_allclose(float(BinaryCandidateLoss()(labels, logits)), expected, rtol=1e-6)


def test_binary_is_stable_for_large_logits():
    value = BinaryCandidateLoss()(np.array([[1.0, 0.0]]), np.array([[-200.0, 200.0]]))
    np.testing.assert_allclose(float(value), 200.0, rtol=1e-6)


@pytest.mark.parametrize("name", ["softmax", "binary"])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_16_bit_logits_are_computed_in_float32(name, dtype):
    labels = np.array([[1.0, 0.0, 0.0, -1.0]])
    logits = np.array([[2.0, 0.5, -1.0, 3.0]])
    reference = float(build_loss(name)(labels, logits))
    value = build_loss(name)(labels, keras.ops.cast(logits, dtype))
    assert keras.backend.standardize_dtype(value.dtype) == "float32"
    np.testing.assert_allclose(float(value), reference, rtol=1e-6)


@pytest.mark.parametrize("name", ["softmax", "binary"])
def test_sample_weights_and_gradients(name, grads_of):
    import tensorflow as tf

    logits = tf.constant([[2.0, 0.0, 1.0], [0.5, 1.5, -3.0]])
    labels = np.array([[1.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
    loss = build_loss(name, reduction=None)
    per_row = keras.ops.convert_to_numpy(loss(labels, logits))
    weighted = float(build_loss(name)(labels, logits, sample_weight=np.array([1.0, 0.0])))
    np.testing.assert_allclose(weighted, per_row[0] / 2, rtol=1e-6)
    (grad,) = grads_of(lambda: loss(labels, logits), logits)
    assert grad.numpy()[0, 2] == 0.0  # the padding candidate gets no gradient
    assert np.all(np.isfinite(grad.numpy()))


@pytest.mark.parametrize("loss_class", [SoftmaxCandidateLoss, BinaryCandidateLoss])
def test_config_round_trip(loss_class):
    loss = loss_class(reduction="sum", name="custom")
    restored = keras.losses.deserialize(keras.losses.serialize(loss))
    assert type(restored) is loss_class
    assert restored.get_config() == loss.get_config()
    assert restored.get_config()["reduction"] == "sum"


def test_build_loss():
    assert isinstance(build_loss("softmax"), SoftmaxCandidateLoss)
    assert isinstance(build_loss("binary"), BinaryCandidateLoss)
    with pytest.raises(ValueError, match="name='hinge'"):
        build_loss("hinge")
