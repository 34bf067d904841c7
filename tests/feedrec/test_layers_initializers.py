"""Each sublayer starts from its own initial values, reproducibly."""

from __future__ import annotations

import itertools

import keras
import numpy as np
import pytest

from feedrec.layers import AttentionPooling, MaskedMultiHeadAttention, TransformerBlock
from feedrec.layers.initializers import derived_initializer
from feedrec.models import ItemEncoder

INPUTS = np.random.default_rng(0).normal(size=(2, 5, 8)).astype("float32")
SEEDED = keras.initializers.GlorotUniform(seed=3)


def _block(initializer="glorot_uniform"):
    block = TransformerBlock(
        2,
        feed_forward_dim=8,
        gated_residual=True,
        activation="swiglu",
        kernel_initializer=initializer,
    )
    block(INPUTS)
    return block


def _attention(initializer="glorot_uniform"):
    layer = MaskedMultiHeadAttention(num_heads=2, kernel_initializer=initializer)
    layer(INPUTS, INPUTS)
    return layer


def _pooling(initializer="glorot_uniform"):
    layer = AttentionPooling(hidden_dim=1, kernel_initializer=initializer)
    layer(INPUTS[:, :, :1])  # both kernels (1, 1)
    return layer


def _items(initializer="uniform"):
    encoder = ItemEncoder(
        num_items=6,
        embedding_dim=4,
        feature_vocab_sizes={"category": 6, "subcategory": 6},
        embeddings_initializer=initializer,
    )
    encoder.build()
    return encoder


def _equal_pairs(layer):
    constant = ("bias", "gamma", "beta")  # zeros and ones by design
    random = {
        w.path: w.numpy() for w in layer.weights if w.trainable and not w.path.endswith(constant)
    }
    return [
        (a, b)
        for a, b in itertools.combinations(random, 2)
        if random[a].shape == random[b].shape and np.array_equal(random[a], random[b])
    ]


@pytest.mark.parametrize("seeded", [False, True], ids=["unseeded", "seeded"])
@pytest.mark.parametrize("build", [_block, _attention, _pooling, _items])
def test_sublayers_start_from_their_own_values(build, seeded):
    # One shared initializer instance would give the query, key and value
    # projections (and the SwiGLU's two hidden projections, the two gates, the
    # item and feature tables) the same starting values.
    layer = build(SEEDED if seeded else keras.initializers.get(build.__defaults__[0]))
    assert len([w for w in layer.weights if w.trainable]) >= 2
    assert _equal_pairs(layer) == []


def test_the_query_key_and_value_projections_differ():
    layer = _attention()
    query, key, value = (
        getattr(layer, f"_{name}_dense").kernel.numpy() for name in ("query", "key", "value")
    )
    assert not np.allclose(query, key) and not np.allclose(key, value)


def test_a_seeded_layer_is_reproducible():
    first, second = _block(SEEDED), _block(SEEDED)
    for a, b in zip(first.weights, second.weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_unseeded_layers_follow_the_global_seed():
    keras.utils.set_random_seed(5)
    first = _block()
    keras.utils.set_random_seed(5)
    second = _block()
    keras.utils.set_random_seed(6)
    third = _block()
    for a, b in zip(first.weights, second.weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    kernel = first._hidden.kernel.numpy()
    assert not np.array_equal(kernel, third._hidden.kernel.numpy())


def test_derived_initializer_offsets_a_seed_and_keeps_the_rest():
    base = keras.initializers.RandomNormal(mean=1.0, stddev=0.5, seed=10)
    copy = derived_initializer(base, 4)
    assert copy.get_config() == {**base.get_config(), "seed": 14}
    assert derived_initializer(keras.initializers.Zeros(), 2).get_config() == {}

    def plain(shape, dtype=None):
        return np.ones(shape)

    assert derived_initializer(plain, 1) is plain
