"""FreshnessBias: an item's offset from its bucketed recent clicks and age."""

import keras
import numpy as np
import pytest

from feedrec.layers import FreshnessBias
from feedrec.layers.freshness_bias import log2_buckets


def test_log2_buckets():
    values = [0, 0.5, 1, 2, 3, 4, 7, 8, 1e9, np.nan]
    assert log2_buckets(values, 16).tolist() == [0, 0, 1, 2, 2, 3, 3, 4, 15, 0]
    assert log2_buckets(values, 3).tolist() == [0, 0, 1, 2, 2, 2, 2, 2, 2, 0]
    # exact at and just below each power of two (no log2 rounding), inf in the last bucket
    powers = 2.0 ** np.arange(1, 14)
    np.testing.assert_array_equal(log2_buckets(powers, 16), np.arange(2, 15))
    np.testing.assert_array_equal(log2_buckets(np.nextafter(powers, 0), 16), np.arange(1, 14))
    assert log2_buckets([np.inf, 2.0**40], 16).tolist() == [15, 15]
    rng = np.random.default_rng(1)
    many = rng.random(1000) * 10.0 ** rng.integers(-2, 7, 1000)
    reference = [0 if v < 1 else min(1 + int(np.floor(np.log2(v))), 15) for v in many]
    assert log2_buckets(many, 16).tolist() == reference


def numpy_bias(clicks, ages, click_weights, age_weights, items):
    buckets = np.minimum([0 if c < 1 else 1 + int(np.log2(c)) for c in clicks], 15)
    age_buckets = [0 if a is None else min(1 + int(np.log2(a + 1)), 15) for a in ages]
    return click_weights[buckets[items]] + age_weights[np.asarray(age_buckets)[items]]


def test_bias_is_the_sum_of_the_buckets_weights():
    rng = np.random.default_rng(0)
    clicks = [0, 0, 1, 5, 40, 3, 0, 1000]
    ages = [None, None, 0, 3, 1, None, 20, 2]
    layer = FreshnessBias(num_items=8)
    layer.update(recent_clicks=clicks, age=ages)
    weights = rng.normal(size=(2, 16)).astype("float32")
    layer.set_weights([weights[0], weights[1], *layer.get_weights()[2:]])
    items = rng.integers(0, 8, size=(3, 5))
    got = keras.ops.convert_to_numpy(layer(items))
    np.testing.assert_allclose(got, numpy_bias(clicks, ages, *weights, items), rtol=1e-6)
    # new state, same weights
    layer.update(recent_clicks=np.zeros(8), age=[None] * 8)
    got = keras.ops.convert_to_numpy(layer(items))
    np.testing.assert_allclose(got, weights[0][0] + weights[1][0] + 0 * items, rtol=1e-6)


def test_fresh_layer_changes_no_score():
    layer = FreshnessBias(num_items=4, num_buckets=5)
    layer.update([3, 0, 1, 9], [1, None, 0, 4])
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer(np.arange(4))), 0.0)
    assert [w.shape for w in layer.weights] == [(5,), (5,), (4,), (4,)]
    assert len(layer.trainable_weights) == 2


def test_config_and_saved_model_keep_weights_and_state(run_layer_test, tmp_path):
    layer = FreshnessBias(num_items=6, num_buckets=5, name="fresh")
    layer.update([0, 0, 3, 1, 9, 2], [None, None, 0, 2, 5, 1])
    clicks, ages = np.arange(5, dtype="float32"), -np.arange(5, dtype="float32") / 4
    layer.set_weights([clicks, ages, *layer.get_weights()[2:]])
    items = np.array([[2, 3, 4], [5, 0, 1]], "int32")
    eager, loaded = run_layer_test(layer, [items], tmp_path=tmp_path)
    # clicks 3 -> bucket 2, age 0 -> bucket 1: 2 - 0.25; item 0: never clicked -> 0 + 0
    assert eager[0, 0] == pytest.approx(1.75) and eager[1, 1] == 0.0
    state = [w.numpy().tolist() for w in loaded.get_layer("fresh").non_trainable_weights]
    assert state == [[0, 0, 2, 1, 4, 2], [0, 0, 1, 2, 3, 2]]


@pytest.mark.parametrize(
    ("clicks", "ages", "message"),
    [
        ([1, 2], [0, 0, 0], r"`recent_clicks` should have shape \(3,\)"),
        ([1, 2, 3], [0, 0], r"`age` should have shape \(3,\)"),
        ([1, -2, 3], [0, 0, 0], "`recent_clicks` should be non-negative"),
        ([1, 2, 3], [0, -1, 0], "`age` should be non-negative"),
    ],
)
def test_update_checks_shapes_and_signs(clicks, ages, message):
    with pytest.raises(ValueError, match=message):
        FreshnessBias(num_items=3).update(clicks, ages)


def test_log_clicks_adds_a_learned_slope_on_log_counts():
    rng = np.random.default_rng(1)
    clicks = [0, 0, 1, 5, 40, 3, 0, 1000]
    ages = [None, None, 0, 3, 1, None, 20, 2]
    items = rng.integers(0, 8, size=(3, 5))
    plain = FreshnessBias(num_items=8)
    sloped = FreshnessBias(num_items=8, log_clicks=True)
    weights = rng.normal(size=(2, 16)).astype("float32")
    for layer in (plain, sloped):
        layer.update(recent_clicks=clicks, age=ages)
    # a fresh layer changes no score, the slope included
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(sloped(items)), 0.0)
    plain.set_weights([weights[0], weights[1], *plain.get_weights()[2:]])
    sloped.click_weights.assign(weights[0])
    sloped.age_weights.assign(weights[1])
    sloped.log_click_weight.assign(0.75)
    expected = numpy_bias(clicks, ages, *weights, items) + 0.75 * np.log1p(clicks)[items]
    np.testing.assert_allclose(keras.ops.convert_to_numpy(sloped(items)), expected, rtol=1e-6)
    # within one bucket (32 and 63 clicks) the slope still orders the items
    sloped.update(recent_clicks=[32, 63, 0, 0, 0, 0, 0, 0], age=[1] * 8)
    first, second = keras.ops.convert_to_numpy(sloped(np.array([0, 1])))
    assert second - first == pytest.approx(0.75 * (np.log1p(63) - np.log1p(32)), rel=1e-5)
    assert len(sloped.trainable_weights) == 3 and len(plain.trainable_weights) == 2


def test_log_clicks_round_trip_keeps_the_slope_and_state(run_layer_test, tmp_path):
    layer = FreshnessBias(num_items=4, num_buckets=5, log_clicks=True, name="fresh")
    layer.update([0, 7, 2, 100], [None, 1, 0, 3])
    layer.log_click_weight.assign(-0.5)
    items = np.array([[0, 1, 2, 3]], "int32")
    eager, _ = run_layer_test(layer, [items], tmp_path=tmp_path)
    np.testing.assert_allclose(eager[0], -0.5 * np.log1p([0, 7, 2, 100]), rtol=1e-6)
    assert FreshnessBias.from_config(layer.get_config()).log_clicks is True
    with pytest.raises(ValueError, match="`log_clicks` should be a bool"):
        FreshnessBias(num_items=4, log_clicks=1)


@pytest.mark.parametrize("clicks_dtype", [float, np.int32], ids=["float", "int-table"])
@pytest.mark.parametrize("log_clicks", [False, True])
def test_offsets_of_many_states_equal_update_then_call_for_each(log_clicks, clicks_dtype):
    rng = np.random.default_rng(2)
    layer = FreshnessBias(num_items=7, num_buckets=6, log_clicks=log_clicks)
    layer.build()
    weights = rng.normal(size=(2, 6)).astype("float32")
    layer.click_weights.assign(weights[0])
    layer.age_weights.assign(weights[1])
    if log_clicks:
        layer.log_click_weight.assign(0.3)
    clicks = rng.integers(0, 200, size=(4, 7)).astype(clicks_dtype)
    ages = np.where(rng.random((4, 7)) < 0.3, np.nan, rng.random((4, 7)) * 50)
    got = layer.offsets(clicks, ages)
    assert got.shape == (4, 7) and got.dtype == np.float32
    for row in range(4):
        layer.update(clicks[row], ages[row])
        expected = keras.ops.convert_to_numpy(layer(np.arange(7)))
        np.testing.assert_allclose(got[row], expected, rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match=r"`age` should have shape \(\.\.\., 7\)"):
        layer.offsets(clicks, ages[:, :3])
    with pytest.raises(ValueError, match="`recent_clicks` should be non-negative"):
        layer.offsets(-clicks, ages)
