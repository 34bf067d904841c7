"""MaskedMultiHeadAttention and TransformerBlock: exact masking, by hand."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from feedrec.layers import MaskedMultiHeadAttention, TransformerBlock

BATCH, LENGTH, DIM, HEADS = 3, 6, 8, 2
LENGTHS = np.array([4, 6, 0])


@pytest.fixture
def inputs():
    return np.random.default_rng(0).normal(size=(BATCH, LENGTH, DIM)).astype("float32")


def _garbage(inputs, mask, seed=1):
    """``inputs`` with the padded slots replaced by large random values."""
    noise = np.random.default_rng(seed).normal(scale=100.0, size=inputs.shape)
    return np.where(mask[..., None], inputs, noise).astype("float32")


def _reference_attention(layer, x, mask, relative_bias=None):
    """Multi-head attention written out in numpy from the layer's weights.

    ``relative_bias``: ``(heads, 2D + 1)``, column ``D + d`` added to the score
    of every query/key pair ``d = i - j`` slots apart (clipped to ``[-D, D]``).
    """
    projections = [w.numpy() for w in layer.weights if "relative_bias" not in w.path]
    wq, bq, wk, bk, wv, bv, wo, bo = projections
    q = np.einsum("btd,dnh->btnh", x, wq) + bq
    k = np.einsum("btd,dnh->btnh", x, wk) + bk
    v = np.einsum("btd,dnh->btnh", x, wv) + bv
    scores = np.einsum("btnh,bsnh->bnts", q, k) / np.sqrt(q.shape[-1])
    if relative_bias is not None:
        limit = (relative_bias.shape[1] - 1) // 2
        for i in range(x.shape[1]):
            for j in range(x.shape[1]):
                scores[:, :, i, j] += relative_bias[:, np.clip(i - j, -limit, limit) + limit]
    weights = np.zeros_like(scores)
    out = np.zeros(x.shape, dtype="float64")
    for b in range(x.shape[0]):
        n = mask[b].sum()
        if n == 0:
            continue
        s = scores[b, :, :n, :n]
        e = np.exp(s - s.max(-1, keepdims=True))
        weights[b, :, :n, :n] = e / e.sum(-1, keepdims=True)
        context = np.einsum("nts,snh->tnh", weights[b, :, :n, :n], v[b, :n])
        out[b, :n] = np.einsum("tnh,nhd->td", context, wo) + bo
    return out, weights


def test_attention_matches_hand_computation(inputs, lengths_mask):
    mask = lengths_mask(LENGTHS, LENGTH)
    layer = MaskedMultiHeadAttention(num_heads=HEADS, kernel_initializer="random_normal")
    out, weights = layer(
        inputs, inputs, query_mask=mask, value_mask=mask, return_attention_scores=True
    )
    layer.weights[1].assign(np.full((HEADS, DIM // HEADS), 0.3))  # non-zero biases
    layer.weights[-1].assign(np.full((DIM,), -0.2))
    out, weights = layer(
        inputs, inputs, query_mask=mask, value_mask=mask, return_attention_scores=True
    )
    expected_out, expected_weights = _reference_attention(layer, inputs, mask)
    np.testing.assert_allclose(weights.numpy(), expected_weights, atol=1e-5)
    np.testing.assert_allclose(out.numpy(), expected_out, atol=1e-5)


def _with_random_relative_bias(layer, seed=5):
    """Give ``layer``'s relative bias table non-zero values; returns them."""
    values = np.random.default_rng(seed).normal(size=layer.relative_bias.shape)
    layer.relative_bias.assign(values)
    return values


@pytest.mark.parametrize("limit", [2, LENGTH - 1, 10], ids=lambda d: f"D{d}")
def test_relative_bias_matches_hand_computation(inputs, lengths_mask, limit):
    # Distances beyond D share the last bucket: D=2 clips, D=5 and D=10 do not.
    mask = lengths_mask(LENGTHS, LENGTH)
    layer = MaskedMultiHeadAttention(
        num_heads=HEADS, kernel_initializer="random_normal", max_relative_distance=limit
    )
    layer(inputs, inputs, query_mask=mask, value_mask=mask)
    bias = _with_random_relative_bias(layer)
    out, weights = layer(
        inputs, inputs, query_mask=mask, value_mask=mask, return_attention_scores=True
    )
    expected_out, expected_weights = _reference_attention(layer, inputs, mask, bias)
    np.testing.assert_allclose(weights.numpy(), expected_weights, atol=1e-5)
    np.testing.assert_allclose(out.numpy(), expected_out, atol=1e-5)


def test_relative_bias_alone_sets_the_weights_by_distance(lengths_mask):
    # With zero projections every score is 0, so the weights are the softmax of
    # the bias of each key's distance over the query's unmasked keys.
    mask = lengths_mask(LENGTHS, LENGTH)
    layer = MaskedMultiHeadAttention(
        num_heads=1, kernel_initializer="zeros", max_relative_distance=LENGTH - 1
    )
    x = np.ones((BATCH, LENGTH, DIM), "float32")
    layer(x, x, query_mask=mask, value_mask=mask, use_causal_mask=True)
    # bias -d for a key d clicks back: recency decays by e per click
    layer.relative_bias.assign(-np.abs(np.arange(-(LENGTH - 1), LENGTH))[None, :].astype(float))
    _, weights = layer(
        x, x, query_mask=mask, value_mask=mask, use_causal_mask=True, return_attention_scores=True
    )
    query = 3  # row 0 has 4 clicks: keys 0..3 are 3, 2, 1, 0 clicks back
    expected = np.exp(-np.array([3.0, 2.0, 1.0, 0.0]))
    row = weights.numpy()[0, 0, query]
    np.testing.assert_allclose(row[:4], expected / expected.sum(), atol=1e-6)
    assert np.all(row[4:] == 0.0)
    # only "one click back" (i - j = +1, column D + 1) favoured: the sign convention
    table = np.zeros((1, 2 * LENGTH - 1))
    table[0, LENGTH] = 2.0
    layer.relative_bias.assign(table)
    _, weights = layer(x, x, query_mask=mask, value_mask=mask, return_attention_scores=True)
    expected = np.where(np.arange(4) == query - 1, np.exp(2.0), 1.0)
    np.testing.assert_allclose(
        weights.numpy()[0, 0, query, :4], expected / expected.sum(), atol=1e-6
    )


def test_zero_relative_bias_is_attention_without_it(inputs, lengths_mask):
    mask = lengths_mask(LENGTHS, LENGTH)
    plain = MaskedMultiHeadAttention(num_heads=HEADS, kernel_initializer="random_normal")
    biased = MaskedMultiHeadAttention(
        num_heads=HEADS, kernel_initializer="random_normal", max_relative_distance=3
    )
    expected = plain(inputs, inputs, query_mask=mask, value_mask=mask).numpy()
    biased(inputs, inputs, query_mask=mask, value_mask=mask)
    projections = [w for w in biased.weights if "relative_bias" not in w.path]
    for source, target in zip(plain.weights, projections, strict=True):
        target.assign(source.numpy())
    assert np.all(biased.relative_bias.numpy() == 0.0)  # zero-initialised
    got = biased(inputs, inputs, query_mask=mask, value_mask=mask).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-6)


@pytest.mark.parametrize("causal", [False, True], ids=["bidirectional", "causal"])
def test_relative_bias_keeps_padding_exact(inputs, lengths_mask, causal):
    mask = lengths_mask(LENGTHS, LENGTH)
    layer = MaskedMultiHeadAttention(num_heads=HEADS, max_relative_distance=LENGTH - 1)
    kwargs = {"query_mask": mask, "value_mask": mask, "use_causal_mask": causal}
    layer(inputs, inputs, **kwargs)
    _with_random_relative_bias(layer)
    clean, weights = layer(inputs, inputs, return_attention_scores=True, **kwargs)
    noisy = layer(_garbage(inputs, mask), _garbage(inputs, mask), **kwargs)
    np.testing.assert_allclose(noisy.numpy(), clean.numpy(), atol=1e-6)
    weights = weights.numpy()
    assert np.all(weights[np.broadcast_to(~mask[:, None, None, :], weights.shape)] == 0.0)
    assert np.all(clean.numpy()[~mask] == 0.0)
    assert np.all(weights[2] == 0.0)


def test_padded_keys_get_exactly_zero_weight_and_padded_queries_zero_output(inputs, lengths_mask):
    mask = lengths_mask(LENGTHS, LENGTH)
    layer = MaskedMultiHeadAttention(num_heads=HEADS)
    out, weights = layer(
        inputs, inputs, query_mask=mask, value_mask=mask, return_attention_scores=True
    )
    weights, out = weights.numpy(), out.numpy()
    key_padded = np.broadcast_to(~mask[:, None, None, :], weights.shape)
    assert np.all(weights[key_padded] == 0.0)
    assert np.all(out[~mask] == 0.0)
    assert np.all(weights[2] == 0.0)  # length 0: no uniform distribution
    np.testing.assert_allclose(weights[0, :, :4].sum(-1), 1.0, atol=1e-6)


def test_mask_shapes_and_sources_are_equivalent(inputs, lengths_mask):
    # Query/key masks, an explicit (B, T, S) mask, and Keras-propagated masks agree.
    mask = lengths_mask(LENGTHS, LENGTH)
    layer = MaskedMultiHeadAttention(num_heads=HEADS)
    from_masks = layer(inputs, inputs, query_mask=mask, value_mask=mask).numpy()
    pair = mask[:, :, None] & mask[:, None, :]
    explicit = layer(inputs, inputs, attention_mask=pair).numpy() * mask[..., None]
    np.testing.assert_allclose(explicit, from_masks, atol=1e-6)
    embedded = keras.layers.Masking(mask_value=0.0)(inputs * mask[..., None])
    propagated = layer(embedded, embedded).numpy()
    np.testing.assert_allclose(propagated, from_masks, atol=1e-6)


def test_causal_mask_hides_later_positions(inputs):
    layer = MaskedMultiHeadAttention(num_heads=HEADS)
    _, weights = layer(inputs, inputs, use_causal_mask=True, return_attention_scores=True)
    upper = np.triu(np.ones((LENGTH, LENGTH), dtype=bool), k=1)
    assert np.all(weights.numpy()[..., upper] == 0.0)
    changed = inputs.copy()
    changed[:, 3:] += 5.0
    before = layer(inputs, inputs, use_causal_mask=True).numpy()
    after = layer(changed, changed, use_causal_mask=True).numpy()
    np.testing.assert_allclose(after[:, :3], before[:, :3], atol=1e-6)
    assert not np.allclose(after[:, 3:], before[:, 3:])


LIGR_OPTIONS = [
    {},
    {"gated_residual": True},
    {"activation": "swiglu"},
    {"gated_residual": True, "activation": "swiglu"},
]
LIGR_IDS = ["plain", "gated", "swiglu", "ligr"]


@pytest.mark.parametrize("options", LIGR_OPTIONS, ids=LIGR_IDS)
@pytest.mark.parametrize("norm_first", [False, True], ids=["post_norm", "pre_norm"])
@pytest.mark.parametrize("causal", [False, True], ids=["bidirectional", "causal"])
@pytest.mark.parametrize("training", [False, True], ids=["inference", "training"])
def test_block_ignores_padded_slots(inputs, lengths_mask, causal, training, norm_first, options):
    mask = lengths_mask(LENGTHS, LENGTH)
    block = TransformerBlock(
        HEADS, feed_forward_dim=16, dropout=0.0, causal=causal, norm_first=norm_first, **options
    )
    clean = block(inputs, mask=mask, training=training).numpy()
    noisy = block(_garbage(inputs, mask), mask=mask, training=training).numpy()
    np.testing.assert_allclose(noisy, clean, atol=1e-6)
    assert np.all(clean[~mask] == 0.0)
    assert np.any(clean[mask] != 0.0)


@pytest.mark.parametrize("options", LIGR_OPTIONS, ids=LIGR_IDS)
@pytest.mark.parametrize("norm_first", [False, True], ids=["post_norm", "pre_norm"])
@pytest.mark.parametrize("causal", [False, True], ids=["bidirectional", "causal"])
@pytest.mark.parametrize("relative", [False, True], ids=["absolute", "relative_bias"])
def test_block_at_query_positions_gives_those_rows_of_the_full_output(
    inputs, lengths_mask, causal, norm_first, options, relative
):
    # Two queries per row, anywhere (a padded slot included: row 0's slot 5,
    # row 2's slots): each output row is that slot's row of the full output,
    # attention weights included, with a relative bias that is not zero.
    mask = lengths_mask(LENGTHS, LENGTH)
    block = TransformerBlock(
        HEADS,
        feed_forward_dim=16,
        causal=causal,
        norm_first=norm_first,
        max_relative_distance=3 if relative else None,
        **options,
    )
    block(inputs, mask=mask)
    if relative:
        table = block._attention.relative_bias
        table.assign(np.random.default_rng(5).normal(size=table.shape))
    full, full_weights = block(inputs, mask=mask, return_attention_scores=True)
    positions = np.array([[3, 5], [0, 4], [0, 2]], dtype="int32")
    rows, weights = block(
        inputs, mask=mask, return_attention_scores=True, query_positions=positions
    )
    assert rows.shape == (BATCH, 2, DIM)
    gather = np.take_along_axis
    np.testing.assert_allclose(rows, gather(full.numpy(), positions[..., None], 1), atol=1e-5)
    np.testing.assert_allclose(
        weights, gather(full_weights.numpy(), positions[:, None, :, None], 2), atol=1e-6
    )
    assert np.all(rows.numpy()[~gather(mask, positions, 1)] == 0.0)


def _dense(layer, x, activation=None):
    """A Dense layer written out in numpy from its weights."""
    kernel, bias = (w.numpy() for w in layer.weights)
    y = x @ kernel + bias
    if activation == "sigmoid":
        return 1.0 / (1.0 + np.exp(-y))
    if activation == "silu":
        return y / (1.0 + np.exp(-y))
    return y


@pytest.mark.parametrize("options", LIGR_OPTIONS, ids=LIGR_IDS)
@pytest.mark.parametrize("norm_first", [False, True], ids=["post_norm", "pre_norm"])
def test_block_matches_its_layers_composed_by_hand(inputs, lengths_mask, norm_first, options):
    # The block equals its own sublayers composed by the textbook formulas (the
    # gates and the gated linear unit written out in numpy).
    mask = lengths_mask(LENGTHS, LENGTH)
    block = TransformerBlock(HEADS, feed_forward_dim=16, norm_first=norm_first, **options)
    out = block(inputs, mask=mask).numpy()
    attention, norm1, norm2 = block._attention, block._attention_norm, block._feed_forward_norm
    gated = options.get("gated_residual", False)

    def attend(x):
        return np.asarray(attention(x, x, query_mask=mask, value_mask=mask))

    def feed_forward(x):
        x = np.asarray(x)
        if options.get("activation") == "swiglu":
            hidden = _dense(block._hidden, x, "silu") * _dense(block._linear_hidden, x)
        else:
            hidden = np.asarray(block._hidden(x))
        return _dense(block._projection, hidden)

    def add(stream, branch, gate):
        stream = np.asarray(stream)
        return stream + (_dense(gate, stream, "sigmoid") * branch if gated else branch)

    if norm_first:
        x = add(inputs, attend(norm1(inputs)), block._attention_gate)
        x = add(x, feed_forward(norm2(x)), block._feed_forward_gate)
    else:
        x = norm1(add(inputs, attend(inputs), block._attention_gate))
        x = norm2(add(x, feed_forward(x), block._feed_forward_gate))
    expected = np.where(mask[..., None], np.asarray(x), 0.0)
    np.testing.assert_allclose(out, expected, atol=1e-5)


@pytest.mark.parametrize("norm_first", [False, True], ids=["post_norm", "pre_norm"])
def test_open_gates_give_the_ungated_block(inputs, lengths_mask, norm_first):
    # Gates held at 1 (zero kernel, large bias) let both branches through whole:
    # the gated block then computes what the plain block with its other weights does.
    mask = lengths_mask(LENGTHS, LENGTH)
    gated = TransformerBlock(HEADS, feed_forward_dim=16, norm_first=norm_first, gated_residual=True)
    plain = TransformerBlock(HEADS, feed_forward_dim=16, norm_first=norm_first)
    gated(inputs, mask=mask)
    plain(inputs, mask=mask)
    shared = [w for w in gated.weights if "_gate/" not in w.path]
    for target, source in zip(plain.weights, shared, strict=True):
        target.assign(source.numpy())
    before = gated(inputs, mask=mask).numpy()
    for gate in (gated._attention_gate, gated._feed_forward_gate):
        kernel, bias = gate.weights
        kernel.assign(np.zeros(kernel.shape))
        bias.assign(np.full(bias.shape, 40.0))
    np.testing.assert_allclose(
        gated(inputs, mask=mask).numpy(), plain(inputs, mask=mask), atol=1e-5
    )
    assert not np.allclose(before, plain(inputs, mask=mask).numpy(), atol=1e-3)


def test_block_with_dropout_keeps_padding_exact(inputs, lengths_mask):
    mask = lengths_mask(LENGTHS, LENGTH)
    block = TransformerBlock(HEADS, feed_forward_dim=16, dropout=0.5)
    out, weights = block(inputs, mask=mask, training=True, return_attention_scores=True)
    assert np.all(out.numpy()[~mask] == 0.0)
    weights = weights.numpy()
    assert np.all(weights[np.broadcast_to(~mask[:, None, None, :], weights.shape)] == 0.0)


def test_block_length_zero_row_has_finite_output_and_gradients(inputs, lengths_mask, grads_of):
    mask = lengths_mask(LENGTHS, LENGTH)
    block = TransformerBlock(HEADS, feed_forward_dim=16)
    x = tf.constant(inputs)
    out = block(x, mask=mask).numpy()
    assert np.all(out[2] == 0.0)
    grads = grads_of(lambda: block(x, mask=mask), x, *block.trainable_variables)
    assert all(np.all(np.isfinite(g.numpy())) for g in grads if g is not None)


def test_block_returns_attention_weights(inputs, lengths_mask):
    mask = lengths_mask(LENGTHS, LENGTH)
    block = TransformerBlock(HEADS, feed_forward_dim=16)
    out, weights = block(inputs, mask=mask, return_attention_scores=True)
    assert tuple(out.shape) == (BATCH, LENGTH, DIM)
    assert tuple(weights.shape) == (BATCH, HEADS, LENGTH, LENGTH)
    np.testing.assert_allclose(weights.numpy()[1].sum(-1), 1.0, atol=1e-6)


def test_block_passes_the_mask_on(inputs, lengths_mask):
    mask = lengths_mask(LENGTHS, LENGTH)
    block = TransformerBlock(HEADS, feed_forward_dim=16)
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(block.compute_mask(inputs, mask)), mask
    )


@pytest.mark.parametrize("options", [{}, LIGR_OPTIONS[-1]], ids=["plain", "ligr"])
@pytest.mark.parametrize("relative", [None, LENGTH - 1], ids=["absolute", "relative"])
@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_block_in_mixed_precision_is_finite_and_masked(
    inputs, lengths_mask, policy, relative, options
):
    mask = lengths_mask(LENGTHS, LENGTH)
    block = TransformerBlock(
        HEADS, feed_forward_dim=16, max_relative_distance=relative, dtype=policy, **options
    )
    block(inputs, mask=mask)
    if relative:
        table = block._attention.relative_bias
        assert keras.backend.standardize_dtype(table.dtype) == "float32"
        table.assign(np.random.default_rng(2).normal(scale=100.0, size=table.shape))
    out, weights = block(inputs * 50.0, mask=mask, return_attention_scores=True)
    assert keras.backend.standardize_dtype(out.dtype) == policy.split("_")[1]
    out = keras.ops.convert_to_numpy(keras.ops.cast(out, "float32"))
    weights = keras.ops.convert_to_numpy(keras.ops.cast(weights, "float32"))
    assert np.all(np.isfinite(out)) and np.all(np.isfinite(weights))
    assert np.all(weights[np.broadcast_to(~mask[:, None, None, :], weights.shape)] == 0.0)
    assert np.all(out[~mask] == 0.0)


def test_attention_round_trip(inputs, lengths_mask, run_layer_test, tmp_path):
    mask = lengths_mask(LENGTHS, LENGTH)
    layer = MaskedMultiHeadAttention(num_heads=HEADS, dropout=0.1, name="attention")
    run_layer_test(
        layer,
        (inputs, inputs),
        {"query_mask": mask, "value_mask": mask, "return_attention_scores": True},
        tmp_path,
    )


def test_attention_with_relative_bias_round_trip(inputs, lengths_mask, run_layer_test, tmp_path):
    mask = lengths_mask(LENGTHS, LENGTH)
    layer = MaskedMultiHeadAttention(num_heads=HEADS, max_relative_distance=4, name="attention")
    layer(inputs, inputs, query_mask=mask, value_mask=mask)
    _with_random_relative_bias(layer)
    run_layer_test(layer, (inputs, inputs), {"query_mask": mask, "value_mask": mask}, tmp_path)
    assert layer.get_config()["max_relative_distance"] == 4


@pytest.mark.parametrize(
    ("causal", "norm_first", "relative", "options"),
    [
        (False, False, None, {}),
        (True, False, None, {}),
        (True, True, None, {}),
        (True, True, LENGTH - 1, {}),
        (True, True, None, {"gated_residual": True, "activation": "swiglu"}),
    ],
)
def test_block_round_trip(
    inputs, lengths_mask, run_layer_test, tmp_path, causal, norm_first, relative, options
):
    mask = lengths_mask(LENGTHS, LENGTH)
    block = TransformerBlock(
        HEADS,
        feed_forward_dim=16,
        dropout=0.1,
        causal=causal,
        norm_first=norm_first,
        max_relative_distance=relative,
        name="block",
        **options,
    )
    if relative:  # a table of non-zero values must survive saving
        block(inputs, mask=mask)
        _with_random_relative_bias(block._attention)
    run_layer_test(block, (inputs,), {"mask": mask}, tmp_path)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_heads": 0}, "num_heads=0"),
        ({"num_heads": 2, "key_dim": -1}, "key_dim=-1"),
        ({"num_heads": 2, "dropout": 1.5}, "dropout=1.5"),
        ({"num_heads": 2, "max_relative_distance": 0}, "max_relative_distance=0"),
    ],
)
def test_attention_argument_checks(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MaskedMultiHeadAttention(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_heads": -1, "feed_forward_dim": 4}, "num_heads=-1"),
        ({"num_heads": 2, "feed_forward_dim": 0}, "feed_forward_dim=0"),
        ({"num_heads": 2, "feed_forward_dim": 4, "dropout": -0.1}, "dropout=-0.1"),
        ({"num_heads": 2, "feed_forward_dim": 4, "norm_first": "yes"}, "norm_first='yes'"),
        (
            {"num_heads": 2, "feed_forward_dim": 4, "max_relative_distance": 1.5},
            "max_relative_distance=1.5",
        ),
        ({"num_heads": 2, "feed_forward_dim": 4, "gated_residual": 1}, "gated_residual=1"),
        ({"num_heads": 2, "feed_forward_dim": 4, "activation": "swiglu2"}, "activation='swiglu2'"),
        ({"num_heads": 2, "feed_forward_dim": 4, "activation": abs}, "activation=<built-in"),
    ],
)
def test_block_argument_checks(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TransformerBlock(**kwargs)


def test_block_rejects_heads_not_dividing_dim(inputs):
    with pytest.raises(ValueError, match="num_heads=3"):
        TransformerBlock(num_heads=3, feed_forward_dim=4)(inputs)
