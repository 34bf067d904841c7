"""UserEncoder: mask invariance, width invariance, empty histories."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from feedrec.models import POOLING_LAYERS, UserEncoder

DIM, LENGTH = 8, 6
LENGTHS = np.array([3, 6, 0, 1], dtype=np.int32)


def _vectors(width=LENGTH, seed=0):
    return np.random.default_rng(seed).normal(size=(len(LENGTHS), width, DIM)).astype("float32")


def _with_garbage(vectors, mask):
    noise = np.random.default_rng(7).normal(scale=50.0, size=vectors.shape)
    return np.where(mask[..., None], vectors, noise).astype("float32")


@pytest.mark.parametrize("pooling", list(POOLING_LAYERS))
@pytest.mark.parametrize("num_layers", [0, 1, 2], ids=lambda n: f"{n}_layers")
@pytest.mark.parametrize("training", [False, True], ids=["inference", "training"])
@pytest.mark.parametrize("norm_first", [False, True], ids=["post_norm", "pre_norm"])
def test_padded_slots_change_nothing(lengths_mask, pooling, num_layers, training, norm_first):
    encoder = UserEncoder(
        LENGTH,
        num_heads=2,
        num_layers=num_layers,
        feed_forward_dim=16,
        pooling=pooling,
        norm_first=norm_first,
    )
    vectors = _vectors()
    mask = lengths_mask(LENGTHS, LENGTH)
    clean = encoder(vectors, LENGTHS, training=training).numpy()
    noisy = encoder(_with_garbage(vectors, mask), LENGTHS, training=training).numpy()
    np.testing.assert_allclose(noisy, clean, atol=1e-6)
    assert np.all(np.isfinite(clean))


def _relative_encoder(**kwargs):
    """A 2-block causal encoder with relative position bias, last-click pooling."""
    settings = {"pooling": "last", "causal": True, **kwargs}
    return UserEncoder(
        LENGTH,
        num_heads=2,
        num_layers=2,
        feed_forward_dim=16,
        relative_position_bias=True,
        **settings,
    )


def _randomise_relative_bias(encoder, seed=11):
    tables = [w for w in encoder.weights if "relative_bias" in w.path]
    rng = np.random.default_rng(seed)
    for table in tables:
        table.assign(rng.normal(size=table.shape))
    return tables


@pytest.mark.parametrize("pooling", ["last", "attention"])
@pytest.mark.parametrize("causal", [False, True], ids=["bidirectional", "causal"])
@pytest.mark.parametrize("training", [False, True], ids=["inference", "training"])
def test_relative_position_bias_keeps_padding_exact(lengths_mask, pooling, causal, training):
    encoder = _relative_encoder(pooling=pooling, causal=causal, norm_first=True)
    vectors = _vectors()
    mask = lengths_mask(LENGTHS, LENGTH)
    before = encoder(vectors, LENGTHS).numpy()
    assert len(_randomise_relative_bias(encoder)) == 2  # one table per block
    clean = encoder(vectors, LENGTHS, training=training).numpy()
    noisy = encoder(_with_garbage(vectors, mask), LENGTHS, training=training).numpy()
    np.testing.assert_allclose(noisy, clean, atol=1e-6)
    if not training:
        assert not np.allclose(encoder(vectors, LENGTHS).numpy(), before, atol=1e-4)


def test_relative_position_bias_gives_the_same_vector_at_any_padded_width():
    # A relative distance counts clicks, so a history of <= 4 clicks padded to
    # width 4 or 6 gets the same vector (whatever the bias tables hold).
    encoder = _relative_encoder()
    lengths = np.array([3, 4, 0, 1], dtype=np.int32)
    vectors = _vectors()
    encoder(vectors, lengths)
    _randomise_relative_bias(encoder)
    np.testing.assert_allclose(
        encoder(vectors[:, :4], lengths).numpy(), encoder(vectors, lengths).numpy(), atol=1e-6
    )


@pytest.mark.parametrize("num_layers", [1, 2], ids=lambda n: f"{n}_layers")
@pytest.mark.parametrize("causal", [False, True], ids=["bidirectional", "causal"])
@pytest.mark.parametrize("norm_first", [False, True], ids=["post_norm", "pre_norm"])
@pytest.mark.parametrize(
    "options",
    [
        {},
        {"relative_position_bias": True},
        {"gated_residual": True, "feed_forward_activation": "swiglu"},
    ],
    ids=["plain", "relative_bias", "ligr"],
)
def test_last_pooling_computes_only_the_last_slot_in_the_last_block(
    monkeypatch, num_layers, causal, norm_first, options
):
    # With last-click pooling the last block is asked for the last click's
    # slot alone (slot 0 for an empty history), and the user vector is the
    # one the full sequence pools to (return_attention=True runs every slot).
    encoder = UserEncoder(
        LENGTH,
        num_heads=2,
        num_layers=num_layers,
        feed_forward_dim=16,
        pooling="last",
        causal=causal,
        norm_first=norm_first,
        **options,
    )
    vectors = _vectors()
    full = encoder(vectors, LENGTHS, return_attention=True)["user_vector"].numpy()
    if options.get("relative_position_bias"):
        _randomise_relative_bias(encoder)
        full = encoder(vectors, LENGTHS, return_attention=True)["user_vector"].numpy()
    asked = []
    block_call = type(encoder.blocks[0]).call

    def spy(block, *args, query_positions=None, **kwargs):
        asked.append(None if query_positions is None else np.asarray(query_positions).tolist())
        return block_call(block, *args, query_positions=query_positions, **kwargs)

    monkeypatch.setattr(type(encoder.blocks[0]), "call", spy)
    fast = encoder(vectors, LENGTHS).numpy()
    assert asked == [None] * (num_layers - 1) + [[[2], [5], [0], [0]]]
    np.testing.assert_allclose(fast, full, atol=1e-5)
    np.testing.assert_array_equal(fast[2], np.zeros(DIM))
    assert np.all(np.isfinite(fast)) and np.any(fast[0] != 0.0)


@pytest.mark.parametrize("pooling", ["last", "attention"])
def test_a_length_above_the_width_counts_as_the_width(pooling):
    # The mask saturates (every slot real), and the last click is the last slot.
    encoder = UserEncoder(LENGTH, num_heads=2, num_layers=2, feed_forward_dim=16, pooling=pooling)
    vectors = _vectors(width=4)
    over = encoder(vectors, np.array([6, 5, 4, 0], dtype=np.int32)).numpy()
    exact = encoder(vectors, np.array([4, 4, 4, 0], dtype=np.int32)).numpy()
    np.testing.assert_allclose(over, exact, atol=1e-6)


@pytest.mark.parametrize("pooling", list(POOLING_LAYERS))
def test_same_history_padded_to_8_or_12_gives_the_same_vector(pooling):
    # Two encoders with L=8 and L=12 whose shared weights (positions 0..7 included) match.
    narrow = UserEncoder(8, num_heads=2, num_layers=2, feed_forward_dim=16, pooling=pooling)
    wide = UserEncoder(12, num_heads=2, num_layers=2, feed_forward_dim=16, pooling=pooling)
    lengths = np.array([5, 8, 0, 2], dtype=np.int32)
    vectors = np.random.default_rng(3).normal(size=(4, 12, DIM)).astype("float32")
    wide(vectors, lengths)
    narrow(vectors[:, :8], lengths)
    for target, source in zip(narrow.weights, wide.weights, strict=True):
        target.assign(source.numpy()[: target.shape[0]])
    np.testing.assert_allclose(
        narrow(vectors[:, :8], lengths).numpy(), wide(vectors, lengths).numpy(), atol=1e-6
    )
    # and one encoder accepts any width <= L
    np.testing.assert_allclose(
        wide(vectors[:, :8], lengths).numpy(), wide(vectors, lengths).numpy(), atol=1e-6
    )


@pytest.mark.parametrize("pooling", list(POOLING_LAYERS))
def test_empty_history_is_finite_with_finite_gradients(grads_of, pooling):
    encoder = UserEncoder(LENGTH, num_heads=2, num_layers=2, feed_forward_dim=16, pooling=pooling)
    vectors = tf.constant(_vectors())
    user = encoder(vectors, LENGTHS).numpy()
    np.testing.assert_array_equal(user[2], np.zeros(DIM))
    grads = grads_of(lambda: encoder(vectors, LENGTHS), vectors, *encoder.trainable_variables)
    assert all(g is None or np.all(np.isfinite(g.numpy())) for g in grads)


def test_return_attention(lengths_mask):
    encoder = UserEncoder(LENGTH, num_heads=2, num_layers=2, feed_forward_dim=16)
    result = encoder(_vectors(), LENGTHS, return_attention=True)
    assert sorted(result) == ["attention", "mask", "pooling", "user_vector"]
    assert [tuple(w.shape) for w in result["attention"]] == [(4, 2, LENGTH, LENGTH)] * 2
    np.testing.assert_array_equal(result["mask"].numpy(), lengths_mask(LENGTHS, LENGTH))
    pooling = result["pooling"].numpy()
    assert pooling.shape == (4, LENGTH)
    assert np.all(pooling[~lengths_mask(LENGTHS, LENGTH)] == 0.0)
    np.testing.assert_allclose(
        result["user_vector"].numpy(), encoder(_vectors(), LENGTHS).numpy(), atol=1e-6
    )


def test_mask_comes_from_lengths_not_values():
    # All-zero vectors in the real part still count as clicks.
    encoder = UserEncoder(LENGTH, num_layers=0, pooling="mean", use_position_embedding=False)
    vectors = _vectors()
    vectors[0, 1] = 0.0
    expected = vectors[0, :3].mean(0)
    np.testing.assert_allclose(encoder(vectors, LENGTHS).numpy()[0], expected, atol=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"history_length": 0}, "history_length=0"),
        ({"num_layers": -1}, "num_layers=-1"),
        ({"pooling": "max"}, "pooling='max'"),
        ({"dropout": 2.0}, "dropout=2.0"),
        ({"norm_first": 1}, "norm_first=1"),
        ({"relative_position_bias": "yes"}, "relative_position_bias='yes'"),
        ({"gated_residual": "yes"}, "gated_residual='yes'"),
        ({"feed_forward_activation": "swigl"}, "feed_forward_activation='swigl'"),
        ({"feed_forward_activation": "swigl", "num_layers": 0}, "feed_forward_activation="),
        ({"gated_residual": 1, "num_layers": 0}, "gated_residual=1"),
    ],
)
def test_argument_checks(kwargs, match):
    with pytest.raises(ValueError, match=match):
        UserEncoder(**{"history_length": LENGTH, **kwargs})


@pytest.mark.parametrize("pooling", list(POOLING_LAYERS))
def test_round_trip(run_layer_test, tmp_path, pooling):
    encoder = UserEncoder(
        LENGTH, num_heads=2, num_layers=1, feed_forward_dim=16, pooling=pooling, name="users"
    )
    run_layer_test(encoder, (_vectors(), LENGTHS), {}, tmp_path)


def test_relative_position_bias_round_trip(run_layer_test, tmp_path):
    encoder = _relative_encoder()
    encoder(_vectors(), LENGTHS)
    _randomise_relative_bias(encoder)
    run_layer_test(encoder, (_vectors(), LENGTHS), {}, tmp_path)
    assert encoder.get_config()["relative_position_bias"] is True


@pytest.mark.parametrize("training", [False, True], ids=["inference", "training"])
def test_ligr_blocks_ignore_padded_slots_and_round_trip(
    lengths_mask, run_layer_test, tmp_path, training
):
    encoder = UserEncoder(
        LENGTH,
        num_heads=2,
        num_layers=2,
        feed_forward_dim=16,
        pooling="last",
        causal=True,
        norm_first=True,
        gated_residual=True,
        feed_forward_activation="swiglu",
        dropout=0.0,
    )
    vectors = _vectors()
    mask = lengths_mask(LENGTHS, LENGTH)
    clean = encoder(vectors, LENGTHS, training=training).numpy()
    noisy = encoder(_with_garbage(vectors, mask), LENGTHS, training=training).numpy()
    np.testing.assert_allclose(noisy, clean, atol=1e-6)
    assert sum("_gate/kernel" in w.path for w in encoder.weights) == 4  # 2 gates x 2 blocks
    config = encoder.get_config()
    assert (config["gated_residual"], config["feed_forward_activation"]) == (True, "swiglu")
    run_layer_test(encoder, (vectors, LENGTHS), {}, tmp_path)


def test_pre_norm_round_trip_keeps_the_output_norm(run_layer_test, tmp_path):
    encoder = UserEncoder(
        LENGTH, num_heads=2, num_layers=2, feed_forward_dim=16, pooling="last", norm_first=True
    )
    run_layer_test(encoder, (_vectors(), LENGTHS), {}, tmp_path)
    assert any("output_norm" in weight.path for weight in encoder.weights)


def test_pre_norm_sequence_is_normalised_at_real_positions(lengths_mask):
    # The final LayerNorm (unit gain, zero bias at init) gives each real position
    # zero mean and unit variance; padded positions stay exactly 0.
    encoder = UserEncoder(LENGTH, num_heads=2, num_layers=1, feed_forward_dim=16, norm_first=True)
    sequence = encoder.encode_sequence(_vectors(), LENGTHS)["sequence"].numpy()
    mask = lengths_mask(LENGTHS, LENGTH)
    real = sequence[mask]
    np.testing.assert_allclose(real.mean(axis=-1), 0.0, atol=1e-5)
    np.testing.assert_allclose(real.std(axis=-1), 1.0, atol=1e-3)
    assert np.all(sequence[~mask] == 0.0)
