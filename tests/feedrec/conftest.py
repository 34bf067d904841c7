"""Helpers shared by the layer, model and task tests, exposed as fixtures.

``run_layer_test`` checks config and ``.keras`` round trips, ``grads_of`` takes
gradients with ``tf.GradientTape``, ``lengths_mask`` builds a mask by hand.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest


def _as_input(value, name):
    value = np.asarray(value)
    return keras.Input(shape=value.shape[1:], dtype=str(value.dtype), name=name)


def _run_layer_test(layer, args, kwargs=None, tmp_path=None, atol=1e-6):
    """Check a layer's config and ``.keras`` round trips; returns its eager output.

    ``args`` (positional) and the array values of ``kwargs`` become ``keras.Input``s
    of a functional wrapper; other kwargs (flags) are passed through. Checks that

    * ``from_config(get_config())`` rebuilds a layer with the same config;
    * the wrapper gives the eager call's output;
    * saving the wrapper to ``tmp_path/model.keras`` and loading it gives the same
      output (weights, non-trainable tables included) and the same layer config.
    """
    kwargs = dict(kwargs or {})
    eager = keras.tree.map_structure(keras.ops.convert_to_numpy, layer(*args, **kwargs))

    config = layer.get_config()
    clone = type(layer).from_config(config)
    assert clone.get_config() == config

    inputs, feed = [], []
    symbolic_args = []
    for index, value in enumerate(args):
        symbolic_args.append(_as_input(value, f"arg_{index}"))
        inputs.append(symbolic_args[-1])
        feed.append(np.asarray(value))
    symbolic_kwargs = {}
    for key, value in kwargs.items():
        if isinstance(value, np.ndarray):
            symbolic_kwargs[key] = _as_input(value, key)
            inputs.append(symbolic_kwargs[key])
            feed.append(value)
        else:
            symbolic_kwargs[key] = value
    outputs = layer(*symbolic_args, **symbolic_kwargs)
    model = keras.Model(inputs, outputs)
    wrapped = keras.tree.map_structure(keras.ops.convert_to_numpy, model(feed))
    _assert_all_close(wrapped, eager, atol)

    if tmp_path is not None:
        path = tmp_path / f"{layer.name}.keras"
        model.save(path)
        loaded = keras.models.load_model(path)
        reloaded = keras.tree.map_structure(keras.ops.convert_to_numpy, loaded(feed))
        _assert_all_close(reloaded, eager, atol)
        assert loaded.get_layer(layer.name).get_config() == config
        return eager, loaded
    return eager, None


def _assert_all_close(actual, expected, atol):
    actual, expected = keras.tree.flatten(actual), keras.tree.flatten(expected)
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected, strict=True):
        np.testing.assert_allclose(a, e, atol=atol, rtol=0)


def _lengths_mask(lengths, width):
    """Boolean ``(batch, width)`` mask of right-padded histories, by hand."""
    return np.arange(width)[None, :] < np.asarray(lengths)[:, None]


def _grads_of(fn, *variables):
    """Gradients of ``sum(fn())`` with respect to tensors or Keras variables."""
    import tensorflow as tf

    variables = [v.value if isinstance(v, keras.Variable) else v for v in variables]
    with tf.GradientTape() as tape:
        for variable in variables:
            tape.watch(variable)
        total = tf.reduce_sum(fn())
    return tape.gradient(total, list(variables))


@pytest.fixture
def run_layer_test():
    return _run_layer_test


@pytest.fixture
def lengths_mask():
    return _lengths_mask


@pytest.fixture
def grads_of():
    return _grads_of
