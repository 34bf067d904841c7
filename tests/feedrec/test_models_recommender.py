"""FeedRecModel and build_model: scores, truncation, masks, save/load, one fit step."""

from __future__ import annotations

import dataclasses
import logging

import keras
import numpy as np
import pytest
import tensorflow as tf

from feedrec.config import ModelConfig
from feedrec.models import FeedRecModel, ItemEncoder, UserEncoder, build_model
from feedrec.tasks import build_loss

NUM_ITEMS, LENGTH = 12, 6
CONFIG = ModelConfig(
    history_length=LENGTH, embedding_dim=8, num_heads=2, num_layers=1, feed_forward_dim=16
)
LABELS = np.array([[1, 0, 0], [1, 0, -1], [0, 1, 0]], dtype=np.float32)
TABLES = {
    "category": np.arange(NUM_ITEMS, dtype=np.int32) % 3,
    "subcategory": np.arange(NUM_ITEMS, dtype=np.int32) % 4,
}


def _inputs(history_width=LENGTH):
    history = np.zeros((3, history_width), dtype=np.int32)
    history[0, :4] = [2, 3, 4, 5]
    history[1, :1] = [7]
    lengths = np.array([4, 1, 0], dtype=np.int32)
    candidates = np.array([[2, 8, 9], [3, 1, 0], [10, 11, 4]], dtype=np.int32)
    return {"history": history, "history_length": lengths, "candidates": candidates}


def _with_garbage(inputs):
    noisy = dict(inputs)
    history = inputs["history"].copy()
    slots = np.arange(history.shape[1])[None, :] >= inputs["history_length"][:, None]
    history[slots] = np.random.default_rng(5).integers(0, NUM_ITEMS, size=slots.sum())
    noisy["history"] = history
    return noisy


def test_logits_are_user_dot_item():
    model = build_model(CONFIG, NUM_ITEMS, TABLES)
    inputs = _inputs()
    logits = model(inputs).numpy()
    user = model.user_embedding(inputs["history"], inputs["history_length"]).numpy()
    items = model.item_embedding(inputs["candidates"]).numpy()
    np.testing.assert_allclose(logits, np.einsum("bd,bcd->bc", user, items), atol=1e-5)
    assert logits.dtype == np.float32 and logits.shape == (3, 3)


@pytest.mark.parametrize("sequence", [False, True], ids=["user_vector", "every_position"])
def test_history_vectors_are_dropped_once_candidates_once(monkeypatch, sequence):
    # In training, the user encoder drops its inputs (item + position vectors)
    # itself, so the history reaches it without the item encoder's dropout;
    # candidates keep the item encoder's.
    config = dataclasses.replace(CONFIG, dropout=0.5)
    model = build_model(config, NUM_ITEMS, TABLES)
    inputs = _inputs()
    seen = []
    encode = UserEncoder.encode_sequence if sequence else UserEncoder.call

    def spy(encoder, vectors, *args, **kwargs):
        seen.append(keras.ops.convert_to_numpy(vectors))
        return encode(encoder, vectors, *args, **kwargs)

    monkeypatch.setattr(UserEncoder, "encode_sequence" if sequence else "call", spy)
    if sequence:
        model.sequence_embedding(inputs["history"], inputs["history_length"], training=True)
    else:
        model(inputs, training=True)
    clean = model.item_embedding(inputs["history"]).numpy()
    np.testing.assert_array_equal(seen[0], clean)
    candidates = model.item_encoder(inputs["candidates"], training=True).numpy()
    assert (candidates == 0).mean() > 0.3  # the item encoder's dropout is on


@pytest.mark.parametrize("pooling", ["attention", "mean", "last", "query"])
@pytest.mark.parametrize("num_layers", [1, 2], ids=lambda n: f"{n}_layers")
@pytest.mark.parametrize("training", [False, True], ids=["inference", "training"])
def test_garbage_in_padded_history_changes_nothing(pooling, num_layers, training):
    config = dataclasses.replace(CONFIG, pooling=pooling, num_layers=num_layers, dropout=0.0)
    model = build_model(config, NUM_ITEMS, TABLES)
    inputs = _inputs()
    clean = model(inputs, training=training).numpy()
    noisy = model(_with_garbage(inputs), training=training).numpy()
    np.testing.assert_allclose(noisy, clean, atol=1e-6)
    user = model.user_embedding(inputs["history"], inputs["history_length"]).numpy()
    noisy_inputs = _with_garbage(inputs)
    noisy_user = model.user_embedding(
        noisy_inputs["history"], noisy_inputs["history_length"]
    ).numpy()
    np.testing.assert_allclose(noisy_user, user, atol=1e-6)


def test_long_histories_keep_the_most_recent_clicks():
    model = build_model(CONFIG, NUM_ITEMS)
    long_history = np.array([[2, 3, 4, 5, 6, 7, 8, 9, 10, 0]], dtype=np.int32)
    recent = np.array([[5, 6, 7, 8, 9, 10]], dtype=np.int32)
    np.testing.assert_allclose(
        model.user_embedding(long_history, np.array([9])).numpy(),
        model.user_embedding(recent, np.array([6])).numpy(),
        atol=1e-6,
    )
    explained = model.explain(long_history, np.array([9]))
    np.testing.assert_array_equal(explained["history"], recent)


def test_history_padded_to_8_or_12_gives_the_same_scores():
    narrow = build_model(dataclasses.replace(CONFIG, history_length=8), NUM_ITEMS, TABLES)
    wide = build_model(dataclasses.replace(CONFIG, history_length=12), NUM_ITEMS, TABLES)
    for target, source in zip(narrow.weights, wide.weights, strict=True):
        target.assign(source.numpy()[: target.shape[0]] if target.shape else source.numpy())
    np.testing.assert_allclose(narrow(_inputs(8)).numpy(), wide(_inputs(12)).numpy(), atol=1e-6)


def test_empty_history_gives_finite_scores_and_gradients():
    model = build_model(CONFIG, NUM_ITEMS, TABLES)
    inputs = _inputs()
    loss = build_loss("softmax")
    with tf.GradientTape() as tape:
        logits = model(inputs, training=True)
        value = loss(LABELS, logits)
    grads = tape.gradient(value, model.trainable_variables)
    assert np.all(np.isfinite(logits.numpy()))
    np.testing.assert_array_equal(logits.numpy()[2], np.zeros(3))
    assert all(g is None or np.all(np.isfinite(tf.convert_to_tensor(g).numpy())) for g in grads)


def test_explain_shapes():
    model = build_model(dataclasses.replace(CONFIG, num_layers=2), NUM_ITEMS, TABLES)
    inputs = _inputs()
    explained = model.explain(inputs["history"], inputs["history_length"])
    assert [a.shape for a in explained["attention"]] == [(3, 2, LENGTH, LENGTH)] * 2
    assert explained["pooling"].shape == (3, LENGTH)
    assert np.all(explained["attention"][0][0][..., 4:] == 0.0)
    mean = build_model(dataclasses.replace(CONFIG, pooling="mean", num_layers=0), NUM_ITEMS)
    explained = mean.explain(inputs["history"], inputs["history_length"])
    assert explained["attention"] == []
    np.testing.assert_allclose(explained["pooling"][0], [0.25] * 4 + [0.0] * 2)


def test_build_model_skips_features_without_tables(caplog):
    with caplog.at_level(logging.INFO, logger="feedrec.models.recommender"):
        model = build_model(CONFIG, NUM_ITEMS, {"category": TABLES["category"], "color": [0] * 12})
    assert model.item_encoder.feature_vocab_sizes == {"category": 3}
    assert "subcategory" in caplog.text
    np.testing.assert_array_equal(
        model.item_encoder.feature_tables["category"].numpy(), TABLES["category"]
    )


def test_build_model_uses_given_vocab_sizes():
    model = build_model(CONFIG, NUM_ITEMS, TABLES, {"category": 7})
    assert model.item_encoder.feature_vocab_sizes == {"category": 7, "subcategory": 4}


def test_build_model_passes_the_config_on():
    config = dataclasses.replace(CONFIG, num_layers=2, pooling="query", feature_combiner="concat")
    model = build_model(config, NUM_ITEMS, TABLES)
    user = model.user_encoder.get_config()
    assert (user["history_length"], user["num_layers"], user["pooling"]) == (LENGTH, 2, "query")
    assert model.item_encoder.combiner == "concat"
    assert model.item_encoder.num_items == NUM_ITEMS


@pytest.mark.filterwarnings("ignore:Skipping variable loading for optimizer")
def test_save_and_load_give_identical_outputs(tmp_path):
    config = dataclasses.replace(CONFIG, num_layers=2, feature_combiner="concat")
    model = build_model(config, NUM_ITEMS, TABLES)
    model.compile(optimizer="adam", loss=build_loss("softmax"))
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded, FeedRecModel)
    inputs = _inputs()
    np.testing.assert_array_equal(loaded(inputs).numpy(), model(inputs).numpy())
    for name, table in TABLES.items():
        np.testing.assert_array_equal(loaded.item_encoder.feature_tables[name].numpy(), table)
    assert loaded.item_encoder.get_config() == model.item_encoder.get_config()
    assert loaded.user_encoder.get_config() == model.user_encoder.get_config()
    assert type(loaded.loss).__name__ == "SoftmaxCandidateLoss"


def test_fit_changes_weights_and_lowers_the_loss():
    model = build_model(CONFIG, NUM_ITEMS, TABLES)
    model.compile(
        optimizer=keras.optimizers.Adam(0.01), loss=build_loss("softmax"), jit_compile=False
    )
    inputs = _inputs()
    before = [w.numpy().copy() for w in model.trainable_weights]
    history = model.fit(inputs, LABELS, epochs=2, batch_size=3, verbose=0)
    assert all(np.isfinite(v) for v in history.history["loss"])
    after = [w.numpy() for w in model.trainable_weights]
    assert any(not np.allclose(b, a) for b, a in zip(before, after, strict=True))
    assert history.history["loss"][1] < history.history["loss"][0]


@pytest.mark.parametrize("loss", ["softmax"])
def test_loss_and_gradients_compile_with_xla(loss):
    # `feedrec train` compiles with jit_compile=True by default.
    model = build_model(dataclasses.replace(CONFIG, dropout=0.0), NUM_ITEMS, TABLES)
    loss_fn = build_loss(loss)
    inputs = {k: tf.constant(v) for k, v in _inputs().items()}

    @tf.function(jit_compile=True)
    def step(inputs, labels):
        with tf.GradientTape() as tape:
            value = loss_fn(labels, model(inputs, training=True))
        return value, tape.gradient(value, model.trainable_variables)

    value, grads = step(inputs, tf.constant(LABELS))
    eager = loss_fn(LABELS, model(inputs, training=True))
    np.testing.assert_allclose(float(value), float(eager), rtol=1e-5)
    assert all(np.all(np.isfinite(tf.convert_to_tensor(g).numpy())) for g in grads if g is not None)


def test_call_rejects_missing_inputs():
    model = build_model(CONFIG, NUM_ITEMS)
    inputs = _inputs()
    del inputs["candidates"]
    with pytest.raises(ValueError, match="Received keys"):
        model(inputs)


def test_constructor_checks():
    with pytest.raises(ValueError, match="user_encoder"):
        FeedRecModel(ItemEncoder(NUM_ITEMS, 8), "not an encoder")
    with pytest.raises(ValueError, match="item_encoder"):
        FeedRecModel(None, UserEncoder(LENGTH))


@pytest.fixture
def mixed_precision():
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    yield
    keras.config.set_dtype_policy(previous)


def test_mixed_precision_model_is_finite_masked_and_returns_float32(mixed_precision):
    model = build_model(dataclasses.replace(CONFIG, num_layers=2), NUM_ITEMS, TABLES)
    assert model.user_encoder.blocks[0].compute_dtype == "float16"
    inputs = _inputs()
    logits = model(inputs)
    assert keras.backend.standardize_dtype(logits.dtype) == "float32"
    assert np.all(np.isfinite(logits.numpy()))
    np.testing.assert_array_equal(model(_with_garbage(inputs)).numpy(), logits.numpy())
    value = build_loss("softmax")(LABELS, logits)
    assert np.isfinite(float(value))
