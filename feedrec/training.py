"""Training from a prepared data directory to a run directory.

``train`` streams ``DATA_DIR/train.parquet`` (``feedrec.data.make_train_dataset``),
runs a custom training loop under a ``tf.distribute`` strategy
(``feedrec.distribute``), validates after every epoch and keeps the best
epoch, and writes ``RUN_DIR`` atomically at the end (``feedrec.runs``).

Speed (measured figures in README "Training at scale" and
``benchmarks/train_throughput.py``):

* :class:`LazyAdam` updates only the embedding rows a batch touches instead
  of the whole item table every step;
* XLA (``jit_compile``), bfloat16 mixed precision and several steps per call
  into the compiled function are chosen per device (:func:`resolve_settings`).

Crash safety: the training state (weights, optimizer, data position, history
so far) is checkpointed atomically in ``RUN_DIR.partial/`` every
``checkpoint_seconds`` and at every epoch end; re-running the same command
after a crash (even SIGKILL) resumes there and ends with the same weights as
an uninterrupted run, because the data order is a pure function of
``(seed, epoch)`` and the dropout seeds are part of the checkpoint. A
non-finite loss stops training with :class:`NonFiniteLossError`, leaving the
last good checkpoint in place.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import shutil
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pyarrow.parquet as pq
from keras import ops

from feedrec.config import Config, TrainConfig
from feedrec.data import candidate_width, load_split, split_path, split_size
from feedrec.runs import CHECKPOINTS, LOGS, atomic_directory, partial_dir, read_json, write_json

logger = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError, ValueError):
    """The training loss became NaN or infinite; training was stopped.

    Also a ``ValueError``, so the CLI reports it in one line (exit status 2).
    """


def feature_tables(data_dir: str | Path, names: tuple[str, ...]):
    """Item -> feature-index tables for ``names`` present in ``items.parquet``.

    Returns ``(tables, vocab_sizes)``; features the data does not have are skipped.
    """
    data_dir = Path(data_dir)
    items = pq.read_table(data_dir / "items.parquet")
    manifest = read_json(data_dir / "manifest.json")
    sizes = manifest.get("feature_vocab_sizes", {})
    tables, vocab_sizes = {}, {}
    for name in names:
        if name in items.column_names and sizes.get(name, 0) > 1:
            tables[name] = items.column(name).to_numpy().astype(np.int32)
            vocab_sizes[name] = int(sizes[name])
        else:
            logger.info("item feature %r not in %s; skipped", name, data_dir)
    return tables, vocab_sizes


# --------------------------------------------------------------------------- optimizer


@keras.saving.register_keras_serializable(package="feedrec")
class LazyAdam(keras.optimizers.Adam):
    """Adam that updates only the embedding rows present in a sparse gradient.

    Keras 3's ``Adam`` turns the ``tf.IndexedSlices`` gradient of an embedding
    lookup into a dense ``(rows, dim)`` tensor and updates the whole table
    and both of its moment tables every step: on CPU, for a 100k x 128 item
    table, that costs more than the forward and backward passes together.
    ``LazyAdam`` sums duplicate rows and applies the Adam rule to the touched
    rows only; untouched rows keep their weights *and moments* until they are
    next looked up (the "lazy Adam" of TF Addons / PyTorch ``SparseAdam``).
    Dense gradients get the ordinary Adam update.

    The row de-duplication uses static shapes (sort + segment sum) so the
    update also compiles with XLA; duplicate padding slots add exact zeros.

    Args:
        learning_rate: float or schedule. Defaults to 0.001.
        beta_1: float. Defaults to 0.9.
        beta_2: float. Defaults to 0.999.
        epsilon: float. Defaults to 1e-7.
        **kwargs: other ``keras.optimizers.Adam`` arguments (``amsgrad`` is
            not supported for sparse gradients).

    Example:

    >>> import tensorflow as tf
    >>> table = keras.Variable(np.ones((4, 2), "float32"))
    >>> optimizer = LazyAdam(learning_rate=0.1)
    >>> optimizer.apply([tf.IndexedSlices(tf.ones((1, 2)), tf.constant([2]))], [table])
    >>> np.round(keras.ops.convert_to_numpy(table), 3)[:, 0].tolist()
    [1.0, 1.0, 0.9, 1.0]
    """

    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7, **kwargs):
        if kwargs.get("amsgrad"):
            raise ValueError("`amsgrad` is not supported by LazyAdam. Received: amsgrad=True")
        kwargs.setdefault("name", "lazy_adam")
        super().__init__(
            learning_rate=learning_rate, beta_1=beta_1, beta_2=beta_2, epsilon=epsilon, **kwargs
        )

    def update_step(self, gradient, variable, learning_rate):
        import tensorflow as tf

        if not isinstance(gradient, tf.IndexedSlices):
            return super().update_step(gradient, variable, learning_rate)
        dtype = variable.dtype
        step = ops.cast(self.iterations + 1, dtype)
        alpha = (
            ops.cast(learning_rate, dtype)
            * ops.sqrt(1 - ops.power(ops.cast(self.beta_2, dtype), step))
            / (1 - ops.power(ops.cast(self.beta_1, dtype), step))
        )
        index = self._get_variable_index(variable)
        m, v = self._momentums[index], self._velocities[index]
        rows, grad, valid = sum_duplicate_rows(gradient.indices, tf.cast(gradient.values, dtype))
        keep = tf.cast(valid, dtype)[:, None]
        m_rows, v_rows = tf.gather(m.value, rows), tf.gather(v.value, rows)
        m_step = (grad - m_rows) * (1 - self.beta_1) * keep
        v_step = (tf.square(grad) - v_rows) * (1 - self.beta_2) * keep
        update = alpha * (m_rows + m_step) / (tf.sqrt(v_rows + v_step) + self.epsilon) * keep
        self.assign_add(m, tf.IndexedSlices(m_step, rows))
        self.assign_add(v, tf.IndexedSlices(v_step, rows))
        self.assign_sub(variable, tf.IndexedSlices(update, rows))


def sum_duplicate_rows(indices, values):
    """Sum the rows of a sparse gradient that share an index, with static shapes.

    Args:
        indices: int tensor ``(n,)``, row indices, possibly repeated.
        values: float tensor ``(n, dim)``.

    Returns:
        ``(rows, sums, valid)``, each with ``n`` entries: the distinct indices
        in increasing order then 0s, the summed rows then zero rows, and a
        boolean mask of the entries that are real.

    Example:

    >>> rows, sums, valid = sum_duplicate_rows([3, 1, 3], [[1.0], [2.0], [4.0]])
    >>> rows.numpy().tolist(), sums.numpy()[:, 0].tolist(), valid.numpy().tolist()
    ([1, 3, 0], [2.0, 5.0, 0.0], [True, True, False])
    """
    import tensorflow as tf

    indices = tf.convert_to_tensor(indices)
    values = tf.convert_to_tensor(values)
    size = tf.shape(indices)[0]
    order = tf.argsort(indices, stable=True)
    ordered = tf.gather(indices, order)
    previous = tf.concat([tf.fill([1], tf.constant(-1, ordered.dtype)), ordered[:-1]], axis=0)
    starts = tf.cast(ordered != previous[:size], tf.int32)  # indices are >= 0
    segments = tf.cumsum(starts) - 1
    sums = tf.math.unsorted_segment_sum(tf.gather(values, order), segments, size)
    valid = tf.range(size) < tf.reduce_sum(starts)
    rows = tf.math.unsorted_segment_max(ordered, segments, size)
    return tf.where(valid, rows, tf.zeros_like(rows)), sums, valid


def build_optimizer(train_config: TrainConfig) -> keras.optimizers.Optimizer:
    """:class:`LazyAdam` when ``sparse_updates`` is on, else ``keras.optimizers.Adam``."""
    if train_config.sparse_updates:
        return LazyAdam(train_config.learning_rate)
    return keras.optimizers.Adam(train_config.learning_rate)


# --------------------------------------------------------------------------- device settings


@dataclasses.dataclass(frozen=True)
class Settings:
    """The device-dependent choices of a run, with ``"auto"`` resolved.

    Attributes:
        jit_compile: compile the step with XLA.
        mixed_precision: ``"off"`` or ``"bfloat16"``.
        steps_per_execution: steps per call into the compiled function.
    """

    jit_compile: bool
    mixed_precision: str
    steps_per_execution: int


def resolve_settings(train_config: TrainConfig, gpu: bool) -> Settings:
    """Resolve the ``"auto"`` settings of ``train_config`` for a device.

    On CPU (measured, TF 2.21, 2 cores): no XLA (its dropout random numbers
    run single-threaded), float32 (no native bfloat16 matmul), one step per
    execution (Python's share of a step is below 1%). With a GPU: XLA,
    bfloat16, 32 steps per execution (a large-batch step lasts milliseconds).
    """

    def pick(value, cpu, gpu_value):
        return (gpu_value if gpu else cpu) if value == "auto" else value

    precision = pick(train_config.mixed_precision, "off", "bfloat16")
    return Settings(
        jit_compile=bool(pick(train_config.jit_compile, False, True)),
        mixed_precision=precision,
        steps_per_execution=int(pick(train_config.steps_per_execution, 1, 32)),
    )


@contextlib.contextmanager
def dtype_policy(mixed_precision: str):
    """Build layers under ``mixed_bfloat16`` when asked; restores the global policy."""
    previous = keras.config.dtype_policy()
    if mixed_precision == "bfloat16":
        keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


# --------------------------------------------------------------------------- the step


def make_train_function(model, optimizer, loss, strategy=None, *, jit_compile: bool = False):
    """A compiled function that runs training steps from a distributed iterator.

    Args:
        model: the Keras model (built under ``strategy.scope()``).
        optimizer: a Keras optimizer built on ``model.trainable_variables``.
        loss: a per-example loss (``reduction=None``): ``loss(labels, logits)``
            gives ``(batch,)``.
        strategy: a ``tf.distribute.Strategy``; defaults to the current one.
        jit_compile: compile with XLA the whole step on one replica, the
            forward and backward passes with several (the gradient all-reduce
            and the update stay outside XLA).

    Returns:
        ``run(iterator, steps)``: runs ``steps`` steps, each on the next
        element ``(features, labels, weights)`` of ``iterator`` (see
        ``feedrec.data.make_train_dataset``; ``weights`` make the summed loss
        the global batch mean), and returns two float32 vectors: the loss and
        the number of real examples of each step. It stops early after a
        step whose loss is not finite.
    """
    import tensorflow as tf

    strategy = strategy or tf.distribute.get_strategy()
    variables = model.trainable_variables
    several = strategy.num_replicas_in_sync > 1 or bool(getattr(strategy, "cluster_resolver", None))

    def loss_and_gradients(features, labels, weights):
        with tf.GradientTape() as tape:
            per_example = loss(labels, model(features, training=True))
            value = tf.reduce_sum(tf.cast(per_example, tf.float32) * weights)
        return value, tape.gradient(value, variables)

    if jit_compile and several:
        loss_and_gradients = tf.function(loss_and_gradients, jit_compile=True)

    def replica_step(features, labels, weights):
        value, gradients = loss_and_gradients(features, labels, weights)
        optimizer.apply(gradients, variables)
        return value, tf.reduce_sum(tf.cast(weights > 0, tf.float32))

    if jit_compile and not several:
        replica_step = tf.function(replica_step, jit_compile=True)

    @tf.function
    def run(iterator, steps):
        losses = tf.TensorArray(tf.float32, size=0, dynamic_size=True)
        counts = tf.TensorArray(tf.float32, size=0, dynamic_size=True)
        for index in tf.range(steps):
            value, count = strategy.run(replica_step, args=next(iterator))
            value = strategy.reduce(tf.distribute.ReduceOp.SUM, value, axis=None)
            count = strategy.reduce(tf.distribute.ReduceOp.SUM, count, axis=None)
            losses = losses.write(index, value)
            counts = counts.write(index, count)
            if not tf.math.is_finite(value):
                break
        return losses.stack(), counts.stack()

    return run


# --------------------------------------------------------------------------- checkpoints


class _Progress:
    """Checkpointed training state: variables, data position, history so far.

    One ``tf.train.Checkpoint`` holds the model's variables (dropout seed
    states included), the optimizer's, and a JSON string with the step, the
    running epoch loss, the history and the best epoch; the checkpoint
    manager replaces its pointer file atomically, so a crash at any moment
    leaves the previous checkpoint usable.
    """

    def __init__(self, directory: Path, model, optimizer, keep: int = 2, **extra):
        import tensorflow as tf

        self.directory = directory
        self._state = tf.Variable("{}", dtype=tf.string, trainable=False, name="progress")
        self._checkpoint = tf.train.Checkpoint(
            model=[v.value for v in model.variables],
            optimizer=[v.value for v in optimizer.variables],
            progress=self._state,
            **extra,  # other trackables, e.g. a tf.random.Generator
        )
        self._manager = tf.train.CheckpointManager(
            self._checkpoint, str(directory / CHECKPOINTS), max_to_keep=keep
        )

    def restore(self) -> dict | None:
        path = self._manager.latest_checkpoint
        if path is None:
            return None
        self._checkpoint.restore(path).assert_consumed()
        return json.loads(self._state.numpy().decode("utf-8"))

    def save(self, state: dict) -> str:
        self._state.assign(json.dumps(state, sort_keys=True))
        return self._manager.save(checkpoint_number=state["step"])

    @property
    def latest(self) -> str | None:
        return self._manager.latest_checkpoint


def _fingerprint(config: Config, data_dir: Path, **settings) -> dict:
    """What an interrupted training must share with the command that resumes it."""
    manifest = (data_dir / "manifest.json").read_bytes()
    return {
        "config": config.to_dict(),
        "data_dir": str(data_dir.resolve()),
        "manifest_sha256": hashlib.sha256(manifest).hexdigest(),
        **settings,
    }


def _at_current_defaults(fingerprint: dict | None) -> dict | None:
    """A stored fingerprint with the settings added since it was written at their defaults.

    A new setting's default keeps the old behaviour, so a training interrupted
    before the setting existed still resumes, and only while the new setting
    is at its default. Anything that does not parse is returned as it is.
    """
    if not isinstance(fingerprint, dict) or not isinstance(fingerprint.get("config"), dict):
        return fingerprint
    out = dict(fingerprint)
    try:
        out["config"] = Config.from_dict(fingerprint["config"]).to_dict()
        if isinstance(fingerprint.get("sequential"), dict):
            from feedrec.sequential import SequentialConfig  # imports this module

            out["sequential"] = SequentialConfig.from_dict(fingerprint["sequential"]).to_dict()
    except (TypeError, ValueError):
        return fingerprint
    return json.loads(json.dumps(out))


def _open_partial(partial: Path, fingerprint: dict, overwrite: bool) -> None:
    """Create ``partial`` or check that it belongs to this very training."""
    state_path = partial / "state.json"
    if partial.exists():
        previous = read_json(state_path) if state_path.exists() else None
        if _at_current_defaults(previous) != json.loads(json.dumps(fingerprint)):
            if not overwrite:
                raise FileExistsError(
                    f"{partial} holds an interrupted training with another config or data; "
                    "re-run the original command to resume it, delete it, or pass --overwrite"
                )
            logger.warning("discarding %s (another config or data)", partial)
            shutil.rmtree(partial)
    partial.mkdir(parents=True, exist_ok=True)
    write_json(state_path, fingerprint)


# --------------------------------------------------------------------------- train


def check_directories(data_dir: str | Path, out_dir: str | Path, overwrite: bool = False) -> dict:
    """Check a training's DATA_DIR and RUN_DIR before any work; returns the manifest.

    Raises:
        FileNotFoundError: ``data_dir`` has no ``manifest.json``.
        FileExistsError: ``out_dir`` exists, is not empty, and ``overwrite`` is False.
    """
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    manifest_path = data_dir / "manifest.json"
    if not manifest_path.exists():
        raise FileNotFoundError(
            f"{manifest_path} not found: DATA_DIR must be written by `feedrec prepare`"
        )
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise FileExistsError(f"{out_dir} already exists and is not empty; pass --overwrite")
    return read_json(manifest_path)


def train(
    data_dir: str | Path,
    out_dir: str | Path,
    config: Config | None = None,
    *,
    overwrite: bool = False,
    verbose: int | None = None,
    callbacks: list | None = None,
) -> dict:
    """Train a recommender on ``DATA_DIR/train.parquet`` and write ``RUN_DIR``.

    Validation (impression AUC etc. on ``valid.parquet``, when present and not
    empty) runs after every epoch; the weights of the best epoch by validation
    AUC are kept. An interrupted training resumes from ``RUN_DIR.partial/``
    when the same call is made again (see the module docstring).

    Args:
        data_dir: a directory written by ``feedrec prepare``.
        out_dir: the run directory to write.
        config: model and training settings; defaults to ``Config()``.
        overwrite: replace an existing ``out_dir`` (and discard a partial
            training of another config).
        verbose: 0 silent, 1 progress bar, 2 one line per epoch; defaults to
            1 on a terminal, 2 otherwise.
        callbacks: Keras callbacks; called with ``on_train_begin/end``,
            ``on_epoch_begin/end`` (logs: ``loss`` and ``val_*``) and
            ``on_train_batch_end`` after every execution (logs: ``loss``,
            ``step``). Setting ``model.stop_training`` stops after the
            current execution.

    Returns:
        The training history: per-epoch ``loss`` and validation metrics,
        ``best_epoch`` (1-based, with validation), ``train_seconds``.

    Raises:
        NonFiniteLossError: the loss became NaN or infinite (the last good
            checkpoint stays in ``RUN_DIR.partial/``).
    """
    import tensorflow as tf

    from feedrec.distribute import has_gpu, make_strategy, replica_slices, worker_info
    from feedrec.models.recommender import build_model
    from feedrec.tasks import build_loss

    config = config or Config()
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    manifest = check_directories(data_dir, out_dir, overwrite)
    model_config, train_config = config.model, config.train
    train_path = split_path(data_dir, "train")
    train_examples = split_size(data_dir, "train")
    if train_examples == 0:
        raise ValueError(f"{train_path} has no examples to train on")
    num_candidates = candidate_width(data_dir, "train")
    if num_candidates < 2:
        raise ValueError(
            f"{train_path}: every example has 1 candidate (prepared with 0 negatives), so "
            "the impression objective has nothing to score the click against and would "
            "learn nothing. Prepare with --negatives K (K >= 1), or train the next-item "
            "objective: a [sequential] table in the config (e.g. "
            "benchmarks/configs/ml-1m.toml)"
        )
    valid_batch = None
    if (data_dir / "valid.parquet").exists():
        valid_batch = load_split(data_dir, "valid", model_config.history_length)
        valid_batch = valid_batch if len(valid_batch) else None

    strategy = make_strategy(train_config.distribute)
    worker = worker_info(strategy)
    settings = resolve_settings(train_config, has_gpu())
    batch_size = train_config.batch_size
    if batch_size % strategy.num_replicas_in_sync:
        raise ValueError(
            f"`batch_size` should be divisible by the {strategy.num_replicas_in_sync} replicas. "
            f"Received: batch_size={batch_size}"
        )
    steps_per_epoch = math.ceil(train_examples / batch_size)
    total_steps = steps_per_epoch * train_config.epochs
    logger.info(
        "training on %d examples (%d candidates each) in %d steps of %d, validating on %d; "
        "%d replica(s), XLA %s, precision %s, %d step(s) per execution",
        train_examples,
        num_candidates,
        total_steps,
        batch_size,
        len(valid_batch or []),
        strategy.num_replicas_in_sync,
        "on" if settings.jit_compile else "off",
        settings.mixed_precision,
        settings.steps_per_execution,
    )

    keras.utils.set_random_seed(train_config.seed)
    tables, vocab_sizes = feature_tables(data_dir, model_config.item_features)

    def new_model():
        return build_model(
            model_config,
            int(manifest["num_items"]),
            tables,
            vocab_sizes,
            num_id_items=manifest.get("num_id_items"),  # absent: every item has an ID row
        )

    with dtype_policy(settings.mixed_precision), strategy.scope():
        model = new_model()
        optimizer = build_optimizer(train_config)
        optimizer.build(model.trainable_variables)
    # A float32 copy outside the strategy: validation, best weights, the saved model.
    keeper = new_model()
    loss = build_loss(model_config.loss, reduction=None)
    run_steps = make_train_function(
        model, optimizer, loss, strategy, jit_compile=settings.jit_compile
    )

    partial = partial_dir(out_dir, worker.index, worker.is_chief)
    _open_partial(partial, _fingerprint(config, data_dir), overwrite)
    progress = _Progress(partial, model, optimizer)
    state = progress.restore()
    if state is None:
        state = {
            "step": 0,
            "history": {},
            "epoch_loss_sum": 0.0,
            "epoch_examples": 0.0,
            "best_epoch": None,
            "best_auc": None,
            "train_seconds": 0.0,
        }
    else:
        logger.info(
            "resuming from %s at step %d of %d", progress.latest, state["step"], total_steps
        )

    writers = _summary_writers(partial / LOGS, worker.is_chief)
    if verbose is None:  # a live progress bar on a terminal, one line per epoch otherwise
        verbose = 1 if sys.stdout.isatty() else 2
    callback_list = keras.callbacks.CallbackList(
        callbacks,
        add_progbar=verbose != 0,
        model=model,
        verbose=verbose,
        epochs=train_config.epochs,
        steps=steps_per_epoch,
    )
    model.stop_training = False
    callback_list.on_train_begin()
    last_save = time.perf_counter()  # training time is counted up to each checkpoint

    def checkpoint():
        nonlocal last_save
        now = time.perf_counter()
        state["train_seconds"] += now - last_save
        progress.save(state)
        last_save = now

    while state["step"] < total_steps and not model.stop_training:
        epoch, start = divmod(state["step"], steps_per_epoch)

        def dataset_fn(input_context, epoch=epoch, start=start):
            from feedrec.data import make_train_dataset

            return make_train_dataset(
                train_path,
                history_length=model_config.history_length,
                num_candidates=num_candidates,
                batch_size=batch_size,
                replicas=replica_slices(input_context),
                parallel_reads=train_config.parallel_reads,
                shuffle=True,
                seed=train_config.seed,
                epoch=epoch,
                shuffle_buffer=train_config.shuffle_buffer,
                start_batch=start,
            )

        iterator = iter(strategy.distribute_datasets_from_function(dataset_fn))
        callback_list.on_epoch_begin(epoch)
        while start < steps_per_epoch and not model.stop_training:
            steps = min(settings.steps_per_execution, steps_per_epoch - start)
            tick = time.perf_counter()
            losses, counts = (
                t.numpy().astype(np.float64) for t in run_steps(iterator, tf.constant(steps))
            )
            seconds = time.perf_counter() - tick
            if not np.isfinite(losses).all():
                bad = state["step"] + int(np.argmin(np.isfinite(losses)))
                raise NonFiniteLossError(
                    f"the training loss is {losses[~np.isfinite(losses)][0]} at step {bad + 1} "
                    f"(epoch {epoch + 1}); training stopped. The last good checkpoint is "
                    f"{progress.latest or 'none (no checkpoint written yet)'}; lower the "
                    "learning rate or check the data, then train again with --overwrite"
                )
            state["epoch_loss_sum"] += float((losses * counts).sum())
            state["epoch_examples"] += float(counts.sum())
            state["step"] += len(losses)
            start += len(losses)
            running = state["epoch_loss_sum"] / max(state["epoch_examples"], 1.0)
            rate = float(ops.convert_to_numpy(optimizer.learning_rate))
            write_scalars(
                writers["train"],
                state["step"],
                {
                    "loss": losses.mean(),
                    "examples_per_second": counts.sum() / seconds,
                    "learning_rate": rate,
                },
            )
            if start < steps_per_epoch and (
                time.perf_counter() - last_save >= train_config.checkpoint_seconds
            ):
                checkpoint()
            callback_list.on_train_batch_end(start - 1, {"loss": running, "step": state["step"]})

        if start < steps_per_epoch:  # stopped by a callback
            break
        logs = {"loss": state["epoch_loss_sum"] / max(state["epoch_examples"], 1.0)}
        history = state["history"]
        history.setdefault("loss", []).append(logs["loss"])
        state["epoch_loss_sum"] = state["epoch_examples"] = 0.0
        if valid_batch is not None:
            keeper.set_weights(model.get_weights())
            metrics = _validate(keeper, valid_batch)
            for name, value in metrics.items():
                logs[f"val_{name}"] = value
                history.setdefault(f"val_{name}", []).append(value)
            if state["best_auc"] is None or metrics["auc"] > state["best_auc"]:
                keeper.save_weights(partial / f"best-epoch{epoch + 1}.weights.h5")
                state["best_epoch"], state["best_auc"] = epoch + 1, metrics["auc"]
            write_scalars(writers["validation"], state["step"], metrics)
        write_scalars(writers["train"], state["step"], {"epoch_loss": logs["loss"]})
        checkpoint()
        for old in partial.glob("best-epoch*.weights.h5"):
            if old.name != f"best-epoch{state['best_epoch']}.weights.h5":
                old.unlink()
        callback_list.on_epoch_end(epoch, logs)

    for writer in writers.values():
        writer.close()
    history = dict(state["history"])
    history["train_seconds"] = state["train_seconds"] + time.perf_counter() - last_save
    if state["best_epoch"] is not None:
        history["best_epoch"] = state["best_epoch"]
        keeper.load_weights(partial / f"best-epoch{state['best_epoch']}.weights.h5")
    else:
        keeper.set_weights(model.get_weights())
    callback_list.on_train_end()

    if not worker.is_chief:  # the chief writes the run directory
        shutil.rmtree(partial, ignore_errors=True)
        return history
    with atomic_directory(out_dir, overwrite=overwrite) as tmp:
        keeper.save(tmp / "model.keras")
        write_json(tmp / "config.json", config.to_dict())
        write_json(
            tmp / "data.json",
            {
                "data_dir": str(data_dir.resolve()),
                "num_items": int(manifest["num_items"]),
                "feature_vocab_sizes": vocab_sizes,
                "format": manifest.get("format"),
                "train_examples": train_examples,
            },
        )
        (tmp / "items.parquet").write_bytes((data_dir / "items.parquet").read_bytes())
        write_json(tmp / "history.json", history)
        for name in (CHECKPOINTS, LOGS):
            if (partial / name).exists():
                shutil.copytree(partial / name, tmp / name)
    shutil.rmtree(partial, ignore_errors=True)
    logger.info("wrote run directory %s", out_dir)
    return history


def _validate(model, valid_batch) -> dict[str, float]:
    from feedrec.evaluation import predict_scores
    from feedrec.metrics import impression_metrics

    metrics = impression_metrics(
        predict_scores(model, valid_batch), valid_batch.labels.astype(np.int64)
    )
    return {name: float(metrics[name]) for name in ("auc", "mrr", "ndcg@5", "ndcg@10")}


def _summary_writers(logs: Path, is_chief: bool) -> dict:
    import tensorflow as tf

    if not is_chief:
        return {
            "train": tf.summary.create_noop_writer(),
            "validation": tf.summary.create_noop_writer(),
        }
    return {
        name: tf.summary.create_file_writer(str(logs / name)) for name in ("train", "validation")
    }


def write_scalars(writer, step: int, values: dict[str, float]) -> None:
    """Write TensorBoard scalars with TensorFlow alone (no ``tensorboard`` package).

    ``tf.summary.scalar`` needs the ``tensorboard`` package; this writes the
    same records (a float32 tensor tagged with the ``scalars`` plugin) with
    ``tf.summary.write``, which TensorBoard reads as ordinary scalars.
    """
    import tensorflow as tf
    from tensorflow.core.framework import summary_pb2

    metadata = summary_pb2.SummaryMetadata(
        plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars")
    ).SerializeToString()
    with writer.as_default(step=step):
        for name, value in values.items():
            tf.summary.write(name, tf.constant(float(value), tf.float32), metadata=metadata)
    writer.flush()
