"""The training step: LazyAdam, the compiled step function, device settings."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from feedrec.config import ModelConfig, TrainConfig
from feedrec.models import build_model
from feedrec.tasks import build_loss
from feedrec.training import (
    LazyAdam,
    Settings,
    build_optimizer,
    dtype_policy,
    make_train_function,
    resolve_settings,
    sum_duplicate_rows,
)

BETA_1, BETA_2, EPSILON = 0.9, 0.999, 1e-7


def adam_rows(gradients, learning_rate):
    """Adam by hand for one row over steps ``t = 1..``; returns the total change."""
    m = v = np.zeros_like(gradients[0], dtype=np.float64)
    change = np.zeros_like(m)
    for t, g in enumerate(gradients, start=1):
        m = BETA_1 * m + (1 - BETA_1) * g
        v = BETA_2 * v + (1 - BETA_2) * g * g
        alpha = learning_rate * np.sqrt(1 - BETA_2**t) / (1 - BETA_1**t)
        change -= alpha * m / (np.sqrt(v) + EPSILON)
    return change


def sparse(indices, values):
    return tf.IndexedSlices(
        tf.constant(values, tf.float32), tf.constant(indices, tf.int32), tf.constant([5, 2])
    )


def test_sum_duplicate_rows_by_hand():
    rows, sums, valid = sum_duplicate_rows(
        tf.constant([4, 0, 4, 2]), tf.constant([[1.0], [2.0], [3.0], [5.0]])
    )
    assert rows.numpy().tolist() == [0, 2, 4, 0]
    assert sums.numpy()[:, 0].tolist() == [2.0, 5.0, 4.0, 0.0]
    assert valid.numpy().tolist() == [True, True, True, False]


def test_lazy_adam_updates_touched_rows_like_adam_on_summed_gradients():
    table = keras.Variable(np.ones((5, 2), "float32"))
    optimizer = LazyAdam(learning_rate=0.1)
    # Row 3 appears twice: its gradient is the sum [2, 4].
    optimizer.apply([sparse([3, 1, 3], [[1.0, 2.0], [-1.0, 0.5], [1.0, 2.0]])], [table])
    optimizer.apply([sparse([1], [[0.5, -2.0]])], [table])
    after = keras.ops.convert_to_numpy(table)
    expected = np.ones((5, 2))
    expected[3] += adam_rows([np.array([2.0, 4.0])], 0.1)  # untouched at step 2: frozen
    # Row 1's moments were last updated at step 1; lazily, step 2 applies one more
    # Adam step with bias correction t=2.
    expected[1] += adam_rows([np.array([-1.0, 0.5]), np.array([0.5, -2.0])], 0.1)
    np.testing.assert_allclose(after, expected, rtol=0, atol=1e-6)


def test_lazy_adam_differs_from_dense_adam_only_on_rows_left_untouched():
    gradients = [
        sparse([3, 1, 3], [[1.0, 2.0], [-1.0, 0.5], [1.0, 2.0]]),
        sparse([1], [[0.5, -2.0]]),
    ]
    results = []
    for optimizer in (LazyAdam(learning_rate=0.1), keras.optimizers.Adam(learning_rate=0.1)):
        table = keras.Variable(np.ones((5, 2), "float32"))
        for gradient in gradients:
            optimizer.apply([gradient], [table])
        results.append(keras.ops.convert_to_numpy(table))
    lazy, dense = results
    np.testing.assert_allclose(lazy[[0, 1, 2, 4]], dense[[0, 1, 2, 4]], atol=1e-6)
    assert np.abs(lazy[3] - dense[3]).min() > 1e-3  # dense Adam keeps moving row 3


def test_lazy_adam_dense_gradients_are_plain_adam():
    gradient = np.array([[0.5, -1.0], [2.0, 0.0]], "float32")
    results = []
    for optimizer in (LazyAdam(learning_rate=0.01), keras.optimizers.Adam(learning_rate=0.01)):
        weights = keras.Variable(np.zeros((2, 2), "float32"))
        optimizer.apply([tf.constant(gradient)], [weights])
        results.append(keras.ops.convert_to_numpy(weights))
    np.testing.assert_array_equal(results[0], results[1])


def test_lazy_adam_compiles_with_xla():
    values = [[1.0, 2.0], [-1.0, 0.5], [1.0, 2.0]]

    def updated_table(jit):
        table = keras.Variable(np.ones((5, 2), "float32"))
        optimizer = LazyAdam(learning_rate=0.1)
        optimizer.build([table])

        @tf.function(jit_compile=jit)
        def step(values):
            gradient = tf.IndexedSlices(values, tf.constant([3, 1, 3]), tf.constant([5, 2]))
            optimizer.apply([gradient], [table])

        step(tf.constant(values))
        return keras.ops.convert_to_numpy(table)

    results = [updated_table(False), updated_table(True)]
    np.testing.assert_allclose(results[0], results[1], atol=1e-6)


def test_lazy_adam_arguments_and_config():
    with pytest.raises(ValueError, match="amsgrad=True"):
        LazyAdam(amsgrad=True)
    optimizer = LazyAdam(learning_rate=0.25, beta_1=0.8)
    clone = LazyAdam.from_config(optimizer.get_config())
    assert clone.get_config() == optimizer.get_config()
    assert isinstance(build_optimizer(TrainConfig()), LazyAdam)
    assert type(build_optimizer(TrainConfig(sparse_updates=False))) is keras.optimizers.Adam


@pytest.mark.parametrize(
    ("train", "gpu", "expected"),
    [
        (TrainConfig(), False, Settings(False, "off", 1)),
        (TrainConfig(), True, Settings(True, "bfloat16", 32)),
        (
            TrainConfig(jit_compile=True, mixed_precision="bfloat16", steps_per_execution=4),
            False,
            Settings(True, "bfloat16", 4),
        ),
        (TrainConfig(jit_compile=False, mixed_precision="off"), True, Settings(False, "off", 32)),
    ],
    ids=["cpu-auto", "gpu-auto", "cpu-explicit", "gpu-explicit"],
)
def test_resolve_settings(train, gpu, expected):
    assert resolve_settings(train, gpu) == expected


def tiny_model(seed=0, policy="off"):
    keras.utils.set_random_seed(seed)
    config = ModelConfig(
        history_length=4, embedding_dim=8, num_heads=2, feed_forward_dim=8, dropout=0.0
    )
    with dtype_policy(policy):
        model = build_model(config, num_items=12)
    optimizer = LazyAdam(learning_rate=0.05)
    optimizer.build(model.trainable_variables)
    return model, optimizer


def one_batch(rows, pad_to=None):
    """A batch of ``rows`` fixed examples, optionally padded with zero-weight rows."""
    history = np.array([[2, 3, 0, 0], [4, 5, 6, 0], [7, 0, 0, 0]], "int32")[:rows]
    lengths = np.array([2, 3, 1], "int32")[:rows]
    candidates = np.array([[8, 9, 10], [11, 2, 3], [4, 5, 6]], "int32")[:rows]
    labels = np.array([[1, 0, 0], [1, 0, -1], [1, 0, 0]], "float32")[:rows]
    weights = np.full(rows, 1.0 / rows, "float32")
    if pad_to:
        extra = pad_to - rows
        history = np.concatenate([history, np.zeros((extra, 4), "int32")])
        lengths = np.concatenate([lengths, np.zeros(extra, "int32")])
        candidates = np.concatenate([candidates, np.zeros((extra, 3), "int32")])
        labels = np.concatenate([labels, np.full((extra, 3), -1, "float32")])
        weights = np.concatenate([weights, np.zeros(extra, "float32")])
    features = {"history": history, "history_length": lengths, "candidates": candidates}
    return features, labels, weights


def run_one_step(model, optimizer, batch, jit_compile=False):
    run = make_train_function(
        model, optimizer, build_loss("softmax", reduction=None), jit_compile=jit_compile
    )
    iterator = iter(tf.data.Dataset.from_tensors(batch).repeat())
    losses, counts = run(iterator, tf.constant(1))
    return losses.numpy(), counts.numpy()


def test_step_loss_is_the_weighted_mean_of_per_example_losses():
    model, optimizer = tiny_model()
    features, labels, weights = one_batch(3)
    per_example = build_loss("softmax", reduction=None)(labels, model(features))
    expected = float(np.mean(keras.ops.convert_to_numpy(per_example)))
    losses, counts = run_one_step(model, optimizer, (features, labels, weights))
    assert losses.tolist() == pytest.approx([expected], abs=1e-6)
    assert counts.tolist() == [3.0]


def test_padding_rows_change_nothing():
    padded, padded_optimizer = tiny_model()
    plain, plain_optimizer = tiny_model()
    padded_losses, padded_counts = run_one_step(padded, padded_optimizer, one_batch(3, pad_to=5))
    plain_losses, _ = run_one_step(plain, plain_optimizer, one_batch(3))
    np.testing.assert_allclose(padded_losses, plain_losses, atol=1e-6)
    assert padded_counts.tolist() == [3.0]
    # Equal up to float summation order (batches of 5 and 3 rows reduce differently).
    for a, b in zip(padded.get_weights(), plain.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.mark.slow  # compiling the model's step with XLA takes 15-35 s on 2 shared cores
def test_xla_step_matches_the_plain_step():
    plain, plain_optimizer = tiny_model()
    compiled, compiled_optimizer = tiny_model()
    run_one_step(plain, plain_optimizer, one_batch(3))
    run_one_step(compiled, compiled_optimizer, one_batch(3), jit_compile=True)
    # Adam's first step moves each weight by about the learning rate (0.05) in the
    # direction of its gradient; XLA's fused float32 arithmetic moves a weight whose
    # gradient is near 0 by up to ~1e-5 more or less (seen once), a wrong step by ~0.05.
    for a, b in zip(plain.get_weights(), compiled.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-4)


def test_run_stops_after_a_non_finite_loss():
    model, optimizer = tiny_model()
    features, labels, weights = one_batch(3)
    bad = (features, labels, np.full(3, np.nan, "float32"))
    run = make_train_function(model, optimizer, build_loss("softmax", reduction=None))
    dataset = tf.data.Dataset.from_tensors((features, labels, weights)).repeat(2)
    iterator = iter(dataset.concatenate(tf.data.Dataset.from_tensors(bad).repeat()))
    losses, _ = run(iterator, tf.constant(5))
    assert len(losses) == 3 and np.isfinite(losses[:2]).all() and np.isnan(losses[2])


def test_bfloat16_step_is_finite_and_keeps_float32_weights():
    before = keras.config.dtype_policy().name
    model, optimizer = tiny_model(policy="bfloat16")
    assert keras.config.dtype_policy().name == before  # the global policy is restored
    assert model.item_encoder.compute_dtype == "bfloat16"
    losses, _ = run_one_step(model, optimizer, one_batch(3))
    assert np.isfinite(losses).all()
    assert {w.dtype for w in model.trainable_weights} == {"float32"}
