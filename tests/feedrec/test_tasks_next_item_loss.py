import keras
import numpy as np
import pytest

from feedrec.tasks.next_item_loss import NextItemSoftmaxLoss


def test_closed_form():
    loss = NextItemSoftmaxLoss(reduction=None)
    values = keras.ops.convert_to_numpy(
        loss(np.array([1, 0]), np.array([[0.0, 2.0, 0.0], [3.0, 1.0, 1.0]]))
    )
    expected = [-np.log(np.exp(2) / (np.exp(2) + 2)), -np.log(np.exp(3) / (np.exp(3) + 2 * np.e))]
    np.testing.assert_allclose(values, expected, rtol=1e-6)


def test_ignored_rows_add_nothing():
    loss = NextItemSoftmaxLoss(reduction=None)
    values = keras.ops.convert_to_numpy(loss(np.array([-1, 2]), np.array([[9.0, 0.0, 0.0]] * 2)))
    assert values[0] == 0.0
    assert values[1] == pytest.approx(9.0 + np.log(1 + np.exp(-9.0) * 2), rel=1e-6)


def test_matches_keras_sparse_categorical_crossentropy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(7, 11)).astype("float32") * 5
    targets = rng.integers(0, 11, size=7)
    ours = NextItemSoftmaxLoss()(targets, logits)
    reference = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(targets, logits)
    assert float(ours) == pytest.approx(float(reference), rel=1e-5)


def test_large_logits_stay_finite_and_half_precision_is_computed_in_float32():
    logits = np.array([[1e4, -1e4, 0.0]], dtype="float32")
    value = float(NextItemSoftmaxLoss()(np.array([1]), logits))
    assert value == pytest.approx(2e4, rel=1e-6)
    half = NextItemSoftmaxLoss()(np.array([0]), logits.astype("float16") / 1e3)
    assert np.isfinite(float(half))


def test_config_round_trip():
    loss = NextItemSoftmaxLoss(reduction="sum", name="custom")
    clone = NextItemSoftmaxLoss.from_config(loss.get_config())
    assert clone.get_config() == loss.get_config()
    assert clone.reduction == "sum"
