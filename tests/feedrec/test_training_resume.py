"""Crash safety: SIGKILL mid-epoch and resume; NaN stop; the partial directory."""

import json
import signal

import numpy as np
import pytest
import tensorflow as tf

from feedrec.config import Config, ModelConfig, TrainConfig
from feedrec.runs import load_run, partial_dir
from feedrec.training import NonFiniteLossError, train
from pipelines.prepare import PrepareOptions, prepare
from pipelines.synthetic import generate_mind_log

TINY = Config(
    model=ModelConfig(
        history_length=20, embedding_dim=16, num_heads=2, feed_forward_dim=32, dropout=0.1
    ),
    train=TrainConfig(epochs=2, batch_size=256, learning_rate=3e-3, seed=1, checkpoint_seconds=0),
)

# Trains TINY in a fresh process with single-threaded, deterministic kernels;
# with a step number, SIGKILLs itself right after that step (mid-epoch).
SCRIPT = """
import json, os, signal, sys
import keras, tensorflow as tf
tf.config.threading.set_intra_op_parallelism_threads(1)
tf.config.threading.set_inter_op_parallelism_threads(1)
tf.config.experimental.enable_op_determinism()
from feedrec.config import Config
from feedrec.training import train

data_dir, out_dir, config, kill_at = sys.argv[1:5]

class Kill(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        if logs["step"] == int(kill_at):
            os.kill(os.getpid(), signal.SIGKILL)

config = Config.from_dict(json.loads(config))
train(data_dir, out_dir, config, verbose=0, callbacks=[Kill()])
"""


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    generate_mind_log(root / "log", seed=3, scale="small")
    prepare("mind", [root / "log"], root / "data", options=PrepareOptions(history_length=20))
    return root / "data"


def start(python_process, data_dir, out_dir, kill_at=0):
    return python_process.start(SCRIPT, data_dir, out_dir, json.dumps(TINY.to_dict()), kill_at)


def run_weights(run_dir):
    model, _, _ = load_run(run_dir)
    return model.get_weights()


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_ends_with_the_same_weights(
    data_dir, tmp_path, python_process
):
    finish = python_process.finish
    # 3463 examples / 256 = 14 steps per epoch: step 20 is in the middle of epoch 2.
    reference = start(python_process, data_dir, tmp_path / "reference")
    killed = start(python_process, data_dir, tmp_path / "run", kill_at=20)
    code, log = finish(killed)
    assert code == -signal.SIGKILL, log
    assert not (tmp_path / "run").exists()  # never looks like a complete run
    partial = partial_dir(tmp_path / "run")
    assert tf.train.latest_checkpoint(str(partial / "checkpoints")).endswith("ckpt-20")
    assert not (partial / "model.keras").exists()

    code, log = finish(start(python_process, data_dir, tmp_path / "run"))  # the same command again
    assert code == 0, log
    assert not partial.exists()
    code, log = finish(reference)
    assert code == 0, log

    resumed, uninterrupted = run_weights(tmp_path / "run"), run_weights(tmp_path / "reference")
    for a, b in zip(resumed, uninterrupted, strict=True):
        np.testing.assert_array_equal(a, b)
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    expected = json.loads((tmp_path / "reference" / "history.json").read_text())
    history.pop("train_seconds"), expected.pop("train_seconds")
    assert history == expected
    assert {"checkpoints", "logs"} <= {p.name for p in (tmp_path / "run").iterdir()}


def nan_after(steps):
    """A softmax loss that turns NaN from call ``steps + 1`` of the compiled step on."""
    from feedrec.tasks import build_loss

    calls = tf.Variable(0, trainable=False)

    def factory(name, **kwargs):
        loss = build_loss(name, **kwargs)

        def poisoned(labels, logits):
            calls.assign_add(1)
            value = loss(labels, logits)
            return tf.where(calls > steps, tf.fill(tf.shape(value), np.nan), value)

        return poisoned

    return factory


def test_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(
    data_dir, tmp_path, monkeypatch
):
    import feedrec.tasks

    config = TINY.replace(train=TrainConfig(epochs=3, batch_size=1024, checkpoint_seconds=1e9))
    # 4 steps per epoch: epoch 1 ends with a checkpoint at step 4; step 6 is NaN.
    monkeypatch.setattr(feedrec.tasks, "build_loss", nan_after(5))
    with pytest.raises(NonFiniteLossError, match=r"nan at step 6 \(epoch 2\).*ckpt-4"):
        train(data_dir, tmp_path / "run", config, verbose=0)
    assert not (tmp_path / "run").exists()
    checkpoint = tf.train.latest_checkpoint(str(partial_dir(tmp_path / "run") / "checkpoints"))
    assert checkpoint.endswith("ckpt-4")
    reader = tf.train.load_checkpoint(checkpoint)
    names = [name for name in reader.get_variable_to_shape_map() if name.startswith("model/")]
    assert names and all(np.isfinite(reader.get_tensor(name)).all() for name in names)


def test_partial_of_another_training_is_refused_or_discarded(data_dir, tmp_path):
    partial = partial_dir(tmp_path / "run")
    partial.mkdir()
    (partial / "state.json").write_text('{"config": "something else"}')
    with pytest.raises(FileExistsError, match="another config or data"):
        train(data_dir, tmp_path / "run", TINY, verbose=0)
    one_epoch = TINY.replace(train=TrainConfig(epochs=1, batch_size=1024))
    history = train(data_dir, tmp_path / "run", one_epoch, overwrite=True, verbose=0)
    assert len(history["loss"]) == 1 and not partial.exists()


def test_tensorboard_scalars_are_written(data_dir, tmp_path):
    from tensorflow.core.util import event_pb2

    one_epoch = TINY.replace(train=TrainConfig(epochs=1, batch_size=1024))
    train(data_dir, tmp_path / "run", one_epoch, verbose=0)
    tags = {}
    for kind in ("train", "validation"):
        (events,) = (tmp_path / "run" / "logs" / kind).glob("events.out.tfevents.*")
        for record in tf.data.TFRecordDataset(str(events)):
            event = event_pb2.Event.FromString(record.numpy())
            for value in event.summary.value:
                tags.setdefault(kind, {})[value.tag] = event.step
    assert {"loss", "examples_per_second", "learning_rate", "epoch_loss"} <= set(tags["train"])
    assert tags["train"]["loss"] == 4  # one scalar per execution, at the global step
    assert {"auc", "mrr", "ndcg@5", "ndcg@10"} <= set(tags["validation"])


def test_a_partial_written_before_a_setting_existed_resumes_at_its_default(data_dir, tmp_path):
    # state.json of an older version has no `relative_position_bias`: it matches a
    # training at that setting's default, and not one that turns the setting on.
    import dataclasses
    import json

    from feedrec.training import _fingerprint, _open_partial

    partial = partial_dir(tmp_path / "run")
    stored = json.loads(json.dumps(_fingerprint(TINY, data_dir)))
    del stored["config"]["model"]["relative_position_bias"]
    partial.mkdir(parents=True)
    (partial / "state.json").write_text(json.dumps(stored))
    _open_partial(partial, _fingerprint(TINY, data_dir), overwrite=False)  # accepted
    (partial / "state.json").write_text(json.dumps(stored))
    turned_on = TINY.replace(model=dataclasses.replace(TINY.model, relative_position_bias=True))
    with pytest.raises(FileExistsError, match="another config or data"):
        _open_partial(partial, _fingerprint(turned_on, data_dir), overwrite=False)
