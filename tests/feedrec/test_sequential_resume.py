"""Crash safety of next-item training: SIGKILL after an epoch and resume; NaN; TensorBoard."""

import json
import signal

import keras
import numpy as np
import pytest
import tensorflow as tf

from feedrec.config import Config, ModelConfig, TrainConfig
from feedrec.runs import load_run, partial_dir
from feedrec.sequential import ResumeError, SequentialConfig, load_weights, train_sequential
from feedrec.training import NonFiniteLossError

CONFIG = Config(
    model=ModelConfig(
        history_length=6,
        embedding_dim=8,
        num_heads=2,
        num_layers=1,
        feed_forward_dim=16,
        dropout=0.2,  # the dropout seeds must be part of the checkpoint
        pooling="last",
        item_features=(),
    ),
    train=TrainConfig(epochs=3, batch_size=20, learning_rate=0.03, seed=1),
)
# Sampled negatives (their generator must be checkpointed too) and a cosine
# schedule over the planned steps (the optimizer's step count must be restored).
SEQUENTIAL = SequentialConfig(
    loss="sampled_softmax", num_negatives=8, schedule="cosine", windows="all"
)

# Trains in a fresh process with single-threaded, deterministic kernels; with
# an epoch number N > 0, SIGKILLs itself after the first batch of epoch N + 1, so
# that epoch N's checkpoint is the last and a batch of training is lost.
SCRIPT = """
import json, logging, os, signal, sys
logging.basicConfig(level=logging.INFO)
import keras, tensorflow as tf
tf.config.threading.set_intra_op_parallelism_threads(1)
tf.config.threading.set_inter_op_parallelism_threads(1)
tf.config.experimental.enable_op_determinism()
from feedrec.config import Config
from feedrec.sequential import SequentialConfig, train_sequential

data_dir, out_dir, config, sequential, kill_after = sys.argv[1:6]

class Kill(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if int(kill_after) and self.epoch == int(kill_after) and batch == 0:
            os.kill(os.getpid(), signal.SIGKILL)

train_sequential(
    data_dir,
    out_dir,
    Config.from_dict(json.loads(config)),
    SequentialConfig.from_dict(json.loads(sequential)),
    verbose=0,
    callbacks=[Kill()],
)
"""


@pytest.fixture(scope="module")
def data_dir(ordered_sequences):
    return ordered_sequences


def start(python_process, data_dir, out_dir, kill_after=0):
    settings = [json.dumps(CONFIG.to_dict()), json.dumps(SEQUENTIAL.to_dict())]
    return python_process.start(SCRIPT, data_dir, out_dir, *settings, kill_after)


class CrashAtTheEnd(keras.callbacks.Callback):
    """Dies after training, before RUN_DIR is written: the last checkpoint stays."""

    def on_train_end(self, logs=None):
        raise KeyboardInterrupt


def crash_before_the_run_dir(data_dir, run, config, sequential):
    """Train until just before ``run`` would be written; returns its partial directory."""
    with pytest.raises(KeyboardInterrupt):
        train_sequential(data_dir, run, config, sequential, verbose=0, callbacks=[CrashAtTheEnd()])
    return partial_dir(run)


def checkpoint_state(partial) -> dict:
    """The JSON state saved with the latest checkpoint in ``partial``."""
    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(str(partial / "checkpoints")))
    return json.loads(reader.get_tensor("progress/.ATTRIBUTES/VARIABLE_VALUE").decode())


def without_seconds(history: dict) -> dict:
    history = {k: v for k, v in history.items() if k not in ("train_seconds", "setup_seconds")}
    history["validations"] = [
        {k: v for k, v in record.items() if k != "seconds"} for record in history["validations"]
    ]
    return history


@pytest.mark.slow
def test_sigkill_after_an_epoch_then_resume_ends_with_the_same_weights(
    data_dir, tmp_path, python_process
):
    finish = python_process.finish
    reference = start(python_process, data_dir, tmp_path / "reference")
    killed = start(python_process, data_dir, tmp_path / "run", kill_after=1)
    code, log = finish(killed)
    assert code == -signal.SIGKILL, log
    assert not (tmp_path / "run").exists()  # never looks like a complete run
    partial = partial_dir(tmp_path / "run")
    assert tf.train.latest_checkpoint(str(partial / "checkpoints")).endswith("ckpt-1")
    assert [p.name for p in partial.glob("best-epoch*.npz")] == ["best-epoch1.npz"]
    saved = checkpoint_state(partial)
    assert saved["epoch"] == 1 and not saved["stopped"]

    code, log = finish(start(python_process, data_dir, tmp_path / "run"))  # the same again
    assert code == 0, log
    assert "resuming from" in log and "after epoch 1 of 3" in log
    assert not partial.exists()
    code, log = finish(reference)
    assert code == 0, log

    resumed, _, _ = load_run(tmp_path / "run")
    uninterrupted, _, _ = load_run(tmp_path / "reference")
    for a, b in zip(resumed.get_weights(), uninterrupted.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    expected = json.loads((tmp_path / "reference" / "history.json").read_text())
    assert without_seconds(history) == without_seconds(expected)
    assert [record["epoch"] for record in history["validations"]] == [1, 2, 3]
    # the first validation is the saved one; the clock goes on from the saved training time
    assert history["validations"][0] == saved["validation"]["validations"][0]
    assert history["validations"][1]["seconds"] > saved["train_seconds"]
    assert {"checkpoints", "logs"} <= {p.name for p in (tmp_path / "run").iterdir()}


def test_partial_of_another_training_is_refused_or_discarded(data_dir, tmp_path):
    partial = partial_dir(tmp_path / "run")
    partial.mkdir()
    (partial / "state.json").write_text('{"config": "something else"}')
    one_epoch = CONFIG.replace(train=TrainConfig(epochs=1, batch_size=20))
    with pytest.raises(FileExistsError, match="another config or data"):
        train_sequential(data_dir, tmp_path / "run", one_epoch, SEQUENTIAL, verbose=0)
    history = train_sequential(
        data_dir, tmp_path / "run", one_epoch, SEQUENTIAL, overwrite=True, verbose=0
    )
    assert len(history["loss"]) == 1 and not partial.exists()


def test_a_crash_after_the_last_checkpoint_resumes_to_the_best_weights(data_dir, tmp_path):
    """Every epoch checkpointed, RUN_DIR not written yet: the rerun only writes it."""
    two_epochs = CONFIG.replace(train=TrainConfig(epochs=2, batch_size=20, seed=1))
    sequential = SequentialConfig(windows="all")
    partial = crash_before_the_run_dir(data_dir, tmp_path / "run", two_epochs, sequential)
    (best_file,) = partial.glob("best-epoch*.npz")
    best = load_weights(best_file)

    history = train_sequential(data_dir, tmp_path / "run", two_epochs, sequential, verbose=0)
    assert history["epochs_run"] == 2 and len(history["validations"]) == 2
    assert best_file.name == f"best-epoch{history['best_epoch']}.npz"
    model, _, _ = load_run(tmp_path / "run")
    for a, b in zip(model.get_weights(), best, strict=True):
        np.testing.assert_array_equal(a, b)


def test_an_early_stop_then_a_crash_resumes_without_training_more(data_dir, tmp_path):
    """The time budget ran out in epoch 1; the process died before writing RUN_DIR."""
    sequential = SequentialConfig(windows="all", max_train_seconds=1e-6)  # one batch
    saved = checkpoint_state(
        crash_before_the_run_dir(data_dir, tmp_path / "run", CONFIG, sequential)
    )
    assert saved["stopped"] and saved["epoch"] == 1

    history = train_sequential(data_dir, tmp_path / "run", CONFIG, sequential, verbose=0)
    assert history["epochs_run"] == 1 and history["stopped_for_time"]
    assert [record["epoch"] for record in history["validations"]] == [1]


def test_an_unreadable_partial_names_itself(data_dir, tmp_path):
    one_epoch = CONFIG.replace(train=TrainConfig(epochs=1, batch_size=20))
    sequential = SequentialConfig(windows="all")
    partial = crash_before_the_run_dir(data_dir, tmp_path / "run", one_epoch, sequential)
    for best in partial.glob("best-epoch*.npz"):
        best.unlink()
    with pytest.raises(ResumeError, match=r"run\.partial holds a training this code cannot"):
        train_sequential(data_dir, tmp_path / "run", one_epoch, sequential, verbose=0)


def test_nan_loss_stops_training_and_keeps_the_last_epoch_checkpoint(
    data_dir, tmp_path, monkeypatch
):

    from feedrec.tasks.next_item_loss import NextItemSoftmaxLoss

    poison = {"on": False}
    original = NextItemSoftmaxLoss.call

    def poisoned(self, y_true, y_pred):  # read while tracing
        value = original(self, y_true, y_pred)
        return value * float("nan") if poison["on"] else value

    monkeypatch.setattr(NextItemSoftmaxLoss, "call", poisoned)

    class PoisonAfterFirstEpoch(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            poison["on"] = True
            self.model.make_train_function(force=True)  # retraced with the NaN

    config = CONFIG.replace(train=TrainConfig(epochs=3, batch_size=20, seed=1))
    with pytest.raises(NonFiniteLossError, match=r"nan at batch 1 of epoch 2.*ckpt-1"):
        train_sequential(
            data_dir,
            tmp_path / "run",
            config,
            SequentialConfig(windows="all"),
            verbose=0,
            callbacks=[PoisonAfterFirstEpoch()],
        )
    assert not (tmp_path / "run").exists()
    checkpoint = tf.train.latest_checkpoint(str(partial_dir(tmp_path / "run") / "checkpoints"))
    assert checkpoint.endswith("ckpt-1")


def test_tensorboard_scalars_are_written(data_dir, tmp_path):
    from tensorflow.core.util import event_pb2

    two_epochs = CONFIG.replace(train=TrainConfig(epochs=2, batch_size=20))
    train_sequential(
        data_dir, tmp_path / "run", two_epochs, SequentialConfig(windows="all"), verbose=0
    )
    steps = {}
    for kind in ("train", "validation"):
        (events,) = (tmp_path / "run" / "logs" / kind).glob("events.out.tfevents.*")
        for record in tf.data.TFRecordDataset(str(events)):
            event = event_pb2.Event.FromString(record.numpy())
            for value in event.summary.value:
                steps.setdefault(kind, {}).setdefault(value.tag, []).append(event.step)
    assert set(steps["train"]) == {"epoch_loss", "learning_rate"}
    assert {"ndcg@10", "hr@10", "mrr@10"} <= set(steps["validation"])
    per_epoch = steps["train"]["epoch_loss"]
    assert len(per_epoch) == 2 and per_epoch[1] == 2 * per_epoch[0]  # the global step
