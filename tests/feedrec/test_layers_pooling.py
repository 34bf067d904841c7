"""Pooling layers: masked weights by hand, padding invariance, empty rows."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from feedrec.layers import AttentionPooling, LastClickPooling, MeanPooling, QueryPooling

LENGTHS = np.array([3, 5, 0, 1])
WIDTH, DIM = 5, 4
POOLINGS = {
    "attention": AttentionPooling,
    "mean": MeanPooling,
    "last": LastClickPooling,
    "query": QueryPooling,
}


@pytest.fixture
def inputs():
    return np.random.default_rng(0).normal(size=(len(LENGTHS), WIDTH, DIM)).astype("float32")


def _softmax_over_real(scores, mask):
    expected = np.zeros_like(scores)
    for row, kept in enumerate(mask):
        if kept.any():
            e = np.exp(scores[row, kept] - scores[row, kept].max())
            expected[row, kept] = e / e.sum()
    return expected


def test_mean_pooling_by_hand(inputs, lengths_mask):
    mask = lengths_mask(LENGTHS, WIDTH)
    pooled, weights = MeanPooling()(inputs, mask=mask, return_weights=True)
    expected = np.stack(
        [inputs[i, :n].mean(0) if n else np.zeros(DIM) for i, n in enumerate(LENGTHS)]
    )
    np.testing.assert_allclose(pooled.numpy(), expected, atol=1e-6)
    np.testing.assert_allclose(weights.numpy(), mask / np.maximum(LENGTHS, 1)[:, None])


def test_last_click_pooling_by_hand(inputs, lengths_mask):
    mask = lengths_mask(LENGTHS, WIDTH)
    pooled, weights = LastClickPooling()(inputs, mask=mask, return_weights=True)
    expected = np.stack([inputs[i, n - 1] if n else np.zeros(DIM) for i, n in enumerate(LENGTHS)])
    np.testing.assert_array_equal(pooled.numpy(), expected)
    expected_weights = np.zeros((len(LENGTHS), WIDTH))
    for i, n in enumerate(LENGTHS):
        if n:
            expected_weights[i, n - 1] = 1.0
    np.testing.assert_array_equal(weights.numpy(), expected_weights)


def test_attention_pooling_by_hand(inputs, lengths_mask):
    mask = lengths_mask(LENGTHS, WIDTH)
    layer = AttentionPooling(hidden_dim=3)
    pooled, weights = layer(inputs, mask=mask, return_weights=True)
    kernel, bias, vector = (w.numpy() for w in layer.weights)
    scores = (np.tanh(inputs @ kernel + bias) @ vector)[..., 0]
    expected_weights = _softmax_over_real(scores, mask)
    np.testing.assert_allclose(weights.numpy(), expected_weights, atol=1e-6)
    np.testing.assert_allclose(
        pooled.numpy(), np.einsum("bl,bld->bd", expected_weights, inputs), atol=1e-6
    )


def test_query_pooling_by_hand(inputs, lengths_mask):
    mask = lengths_mask(LENGTHS, WIDTH)
    layer = QueryPooling()
    pooled, weights = layer(inputs, mask=mask, return_weights=True)
    named = {w.name: w.numpy() for w in layer.weights}
    kernel, bias, query = named["kernel"], named["bias"], named["query"]
    scores = ((inputs @ kernel + bias) @ query) / np.sqrt(DIM)
    expected_weights = _softmax_over_real(scores, mask)
    np.testing.assert_allclose(weights.numpy(), expected_weights, atol=1e-6)
    np.testing.assert_allclose(
        pooled.numpy(), np.einsum("bl,bld->bd", expected_weights, inputs), atol=1e-6
    )


@pytest.mark.parametrize("name", list(POOLINGS))
def test_padded_slots_change_nothing(inputs, lengths_mask, name):
    mask = lengths_mask(LENGTHS, WIDTH)
    layer = POOLINGS[name]()
    clean, clean_weights = layer(inputs, mask=mask, return_weights=True)
    noisy_inputs = np.where(mask[..., None], inputs, 1e4).astype("float32")
    noisy_inputs[0, 4] = np.inf  # even a non-finite value in a padded slot
    noisy, noisy_weights = layer(noisy_inputs, mask=mask, return_weights=True)
    np.testing.assert_allclose(noisy.numpy(), clean.numpy(), atol=1e-6)
    np.testing.assert_allclose(noisy_weights.numpy(), clean_weights.numpy(), atol=1e-6)
    assert np.all(clean_weights.numpy()[~mask] == 0.0)


@pytest.mark.parametrize("name", list(POOLINGS))
def test_weights_sum_to_one_over_real_clicks(inputs, lengths_mask, name):
    mask = lengths_mask(LENGTHS, WIDTH)
    _, weights = POOLINGS[name]()(inputs, mask=mask, return_weights=True)
    sums = weights.numpy().sum(-1)
    np.testing.assert_allclose(sums[LENGTHS > 0], 1.0, atol=1e-6)
    np.testing.assert_array_equal(sums[LENGTHS == 0], 0.0)


@pytest.mark.parametrize("name", list(POOLINGS))
def test_empty_row_is_finite_with_finite_gradients(inputs, lengths_mask, grads_of, name):
    mask = lengths_mask(LENGTHS, WIDTH)
    layer = POOLINGS[name]()
    x = tf.constant(inputs)
    pooled = layer(x, mask=mask).numpy()
    np.testing.assert_array_equal(pooled[2], np.zeros(DIM))
    grads = grads_of(lambda: layer(x, mask=mask), x, *layer.trainable_variables)
    assert all(np.all(np.isfinite(g.numpy())) for g in grads)
    np.testing.assert_array_equal(grads[0].numpy()[2], np.zeros((WIDTH, DIM)))


@pytest.mark.parametrize("name", list(POOLINGS))
def test_no_mask_means_all_real(inputs, lengths_mask, name):
    layer = POOLINGS[name]()
    all_real = lengths_mask(np.full(len(LENGTHS), WIDTH), WIDTH)
    np.testing.assert_allclose(
        layer(inputs).numpy(), layer(inputs, mask=all_real).numpy(), atol=1e-6
    )


@pytest.mark.parametrize("name", list(POOLINGS))
def test_round_trip(inputs, lengths_mask, run_layer_test, tmp_path, name):
    mask = lengths_mask(LENGTHS, WIDTH)
    layer = POOLINGS[name](name=f"{name}_pooling")
    run_layer_test(layer, (inputs,), {"mask": mask, "return_weights": True}, tmp_path)


def test_attention_pooling_argument_check():
    with pytest.raises(ValueError, match="hidden_dim=0"):
        AttentionPooling(hidden_dim=0)
