"""Helpers shared by the layer, model and task tests, exposed as fixtures.

``run_layer_test`` checks config and ``.keras`` round trips, ``grads_of`` takes
gradients with ``tf.GradientTape``, ``lengths_mask`` builds a mask by hand;
``python_process`` runs a script in a fresh process (the crash-safety tests),
``ordered_sequences`` is a small prepared sequences directory.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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


# --------------------------------------------------------------- training runs

REPO = Path(__file__).resolve().parents[2]


class _Python:
    """Runs ``python -c SCRIPT ARGS...`` in a fresh CPU-only process on this checkout."""

    @staticmethod
    def start(script: str, *args: str) -> subprocess.Popen:
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        command = [sys.executable, "-c", script, *map(str, args)]
        return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    @staticmethod
    def finish(process: subprocess.Popen, timeout: float = 600) -> tuple[int, str]:
        """The exit status and the end of stderr."""
        _, stderr = process.communicate(timeout=timeout)
        return process.returncode, stderr.decode(errors="replace")[-3000:]


@pytest.fixture
def python_process():
    return _Python


@pytest.fixture(scope="module")
def ordered_sequences(tmp_path_factory):
    """A prepared ``sequences`` DATA_DIR (L=6): 60 users who each read 10 of 30
    items in order, after item i item i + 1."""
    from pipelines.prepare import PrepareOptions, prepare

    root = tmp_path_factory.mktemp("sequences")
    rng = np.random.default_rng(0)
    lines = []
    for user in range(60):
        start = int(rng.integers(0, 30))
        lines += [f"u{user} i{(start + step) % 30}" for step in range(10)]
    (root / "log.txt").write_text("\n".join(lines) + "\n")
    options = PrepareOptions(history_length=6, negatives=0)
    prepare("sequences", [root / "log.txt"], root / "data", options=options)
    return root / "data"
