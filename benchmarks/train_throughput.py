"""Benchmark training throughput: feedrec's training step against a plain Keras 3 yardstick.

The standard configuration: history L=50, d=128, 2 heads, 1 Transformer block
(feed-forward 256), dropout 0.1, attention pooling, 1 positive + 4 negatives,
batch 256, 100,000 items, no item features, Adam at 1e-3.

Configurations (each runs in a fresh process, so memory peaks and XLA or
threading state do not leak between them):

* ``keras-xla``: the yardstick, a plain Keras 3 model of the same architecture
  (``Embedding`` + ``MultiHeadAttention`` with an attention mask + additive
  pooling + dot product; ``keras.optimizers.Adam``; ``model.fit`` with
  ``jit_compile=True``), as the issue asks;
* ``keras``: the same yardstick without XLA (on CPU, XLA makes it slower);
* ``feedrec``: ``feedrec.training.make_train_function`` with the device's
  defaults (``feedrec.training.resolve_settings``: on CPU no XLA, float32,
  LazyAdam);
* ``feedrec-dense-adam``: the same with ``keras.optimizers.Adam`` (dense update
  of the whole item table every step);
* ``feedrec-default-malloc``: the defaults with glibc's malloc as it comes
  (``feedrec train`` and the other feedrec configurations tune it:
  ``feedrec.allocator.tune_malloc``; ``malloc_tuned`` in the output says which);
* ``feedrec-other-xla``: the defaults but the other XLA setting (on CPU: XLA on);
* ``feedrec-large-batch``: the defaults with a larger batch (``--large-batch``);
* ``input``: the streaming input pipeline alone
  (``feedrec.data.make_train_dataset`` over a generated Parquet file with the
  standard shapes), consumed inside a ``tf.function`` as training does.

Each prints one JSON line: ``examples_per_s`` (batch / median step time over
all repetitions of all ``--rounds``; rounds run the configurations in turn, so
that a change of load on a shared machine spreads over all of them),
``step_ms`` (median and all repetitions), ``cpu_s_per_step`` (process CPU
time, less sensitive than wall time to other work on a shared machine),
``peak_memory_mb`` (process peak RSS on CPU; TensorFlow's peak GPU memory on
GPU), ``flops_per_step`` (matmul FLOPs of forward + backward, counted
analytically as 3x the forward's), ``achieved_tflops`` and ``peak_fraction``
against ``matmul_peak_tflops`` (the best of several large matmuls measured on
the same device, float32 on CPU, bfloat16 on GPU), and the lowest and highest
1-minute load average seen around the measurements. A
last ``summary`` line gives the speed-ups and the input/training ratio.

Usage::

    python benchmarks/train_throughput.py --device cpu
    python benchmarks/train_throughput.py --device gpu --batch-size 8192 --steps 100
    python benchmarks/train_throughput.py --device cpu --configs feedrec keras --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIGS = (
    "keras-xla",
    "keras",
    "feedrec",
    "feedrec-dense-adam",
    "feedrec-default-malloc",
    "feedrec-other-xla",
    "feedrec-large-batch",
    "input",
)
STANDARD = {
    "history_length": 50,
    "embedding_dim": 128,
    "num_heads": 2,
    "num_layers": 1,
    "feed_forward_dim": 256,
    "dropout": 0.1,
    "num_candidates": 5,
    "num_items": 100_000,
}


# --------------------------------------------------------------------------- shared


def train_flops_per_example(
    history_length: int, embedding_dim: int, feed_forward_dim: int, num_candidates: int
) -> int:
    """Matmul FLOPs of one training example: 3x the forward pass's.

    Forward, per example: Q/K/V and output projections ``4 * 2 L d^2``,
    scores and context ``2 * 2 L^2 d``, feed-forward ``2 * 2 L d f``,
    attention pooling ``2 L d^2 + 2 L d``, candidate scores ``2 C d``.
    Element-wise work (softmax, norms, dropout) is not counted.
    """
    L, d, f, c = history_length, embedding_dim, feed_forward_dim, num_candidates
    forward = 8 * L * d * d + 4 * L * L * d + 4 * L * d * f + 2 * L * d * d + 2 * L * d + 2 * c * d
    return 3 * forward


def synthetic_batches(rng, count: int, batch_size: int, shape: dict):
    """``count`` random batches ``(features, labels, weights)`` with the standard shapes."""
    import numpy as np

    L, C, V = shape["history_length"], shape["num_candidates"], shape["num_items"]
    lengths = rng.integers(0, L + 1, (count, batch_size)).astype("int32")
    history = rng.integers(2, V, (count, batch_size, L)).astype("int32")
    history *= np.arange(L)[None, None, :] < lengths[..., None]
    candidates = rng.integers(2, V, (count, batch_size, C)).astype("int32")
    labels = np.zeros((count, batch_size, C), "float32")
    labels[..., 0] = 1.0
    weights = np.full((count, batch_size), 1.0 / batch_size, "float32")
    features = {"history": history, "history_length": lengths, "candidates": candidates}
    return features, labels, weights


def device_name(device: str) -> str:
    if device == "gpu":
        import tensorflow as tf

        gpu = tf.config.list_physical_devices("GPU")[0]
        return tf.config.experimental.get_device_details(gpu).get("device_name", gpu.name)
    model = platform.processor() or "CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {len(os.sched_getaffinity(0))} cores"


def peak_memory_mb(device: str) -> float:
    if device == "gpu":
        import tensorflow as tf

        return tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def time_repeats(step, repeats: int, steps: int) -> tuple[list[float], list[float]]:
    """Wall and CPU seconds per step of ``repeats`` runs of ``steps`` steps each."""
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        step(steps)
        walls.append((time.perf_counter() - wall) / steps)
        cpus.append((time.process_time() - cpu) / steps)
    return walls, cpus


# --------------------------------------------------------------------------- children


def yardstick_model(shape: dict):
    """The plain Keras 3 model: same architecture as feedrec's standard config."""
    import keras
    from keras import ops

    L, D = shape["history_length"], shape["embedding_dim"]
    heads, rate = shape["num_heads"], shape["dropout"]

    class Yardstick(keras.Model):
        def __init__(self):
            super().__init__()
            self.items = keras.layers.Embedding(shape["num_items"], D)
            self.positions = keras.layers.Embedding(L, D)
            self.dropout = keras.layers.Dropout(rate)
            self.attention = keras.layers.MultiHeadAttention(heads, D // heads, dropout=rate)
            self.attention_norm = keras.layers.LayerNormalization(epsilon=1e-6)
            self.hidden = keras.layers.Dense(shape["feed_forward_dim"], activation="gelu")
            self.output_dense = keras.layers.Dense(D)
            self.output_norm = keras.layers.LayerNormalization(epsilon=1e-6)
            self.pool_hidden = keras.layers.Dense(D, activation="tanh")
            self.pool_score = keras.layers.Dense(1, use_bias=False)
            self.softmax = keras.layers.Softmax()

        def call(self, inputs, training=False):
            mask = ops.arange(L)[None, :] < ops.expand_dims(inputs["history_length"], -1)
            x = self.dropout(self.items(inputs["history"]), training=training)
            x = self.dropout(x + self.positions(ops.arange(L))[None], training=training)
            x = ops.where(mask[..., None], x, 0.0)
            attention_mask = ops.logical_and(mask[:, :, None], mask[:, None, :])
            attended = self.attention(x, x, attention_mask=attention_mask, training=training)
            x = self.attention_norm(x + self.dropout(attended, training=training))
            feed_forward = self.output_dense(self.hidden(x))
            x = self.output_norm(x + self.dropout(feed_forward, training=training))
            scores = ops.squeeze(self.pool_score(self.pool_hidden(x)), -1)
            weights = self.softmax(scores, mask=mask) * ops.cast(mask, "float32")
            user = ops.sum(weights[..., None] * x, axis=1)
            candidates = self.dropout(self.items(inputs["candidates"]), training=training)
            return ops.einsum("bd,bcd->bc", user, candidates)

    return Yardstick()


def child_keras(options: dict) -> dict:
    import keras
    import numpy as np
    import tensorflow as tf

    shape, batch_size = options["shape"], options["batch_size"]
    keras.utils.set_random_seed(0)
    features, labels, _ = synthetic_batches(np.random.default_rng(0), 8, batch_size, shape)
    dataset = tf.data.Dataset.from_tensor_slices((features, labels)).repeat().prefetch(2)
    model = yardstick_model(shape)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.CategoricalCrossentropy(from_logits=True),
        jit_compile=options["jit_compile"],
    )

    def step(steps):
        model.fit(dataset, steps_per_epoch=steps, epochs=1, verbose=0)

    step(2)  # compile
    walls, cpus = time_repeats(step, options["repeats"], options["steps"])
    return {"model": "keras", "optimizer": "Adam", "walls": walls, "cpus": cpus}


def child_feedrec(options: dict) -> dict:
    from feedrec.allocator import tune_malloc

    # as `feedrec train` does; the -default-malloc configuration measures without
    malloc_tuned = tune_malloc() if options.get("tune_malloc", True) else False
    import keras
    import numpy as np
    import tensorflow as tf

    from feedrec.config import ModelConfig, TrainConfig
    from feedrec.distribute import has_gpu, make_strategy
    from feedrec.models import build_model
    from feedrec.tasks import build_loss
    from feedrec.training import (
        build_optimizer,
        dtype_policy,
        make_train_function,
        resolve_settings,
    )

    shape, batch_size = options["shape"], options["batch_size"]
    train_config = TrainConfig(
        batch_size=batch_size,
        sparse_updates=options["sparse_updates"],
        jit_compile=options["jit_compile"],
    )
    strategy = make_strategy("none")
    settings = resolve_settings(train_config, has_gpu())
    model_config = ModelConfig(
        history_length=shape["history_length"],
        embedding_dim=shape["embedding_dim"],
        num_heads=shape["num_heads"],
        num_layers=shape["num_layers"],
        feed_forward_dim=shape["feed_forward_dim"],
        dropout=shape["dropout"],
        item_features=(),
    )
    keras.utils.set_random_seed(0)
    with dtype_policy(settings.mixed_precision), strategy.scope():
        model = build_model(model_config, shape["num_items"])
        optimizer = build_optimizer(train_config)
        optimizer.build(model.trainable_variables)
    run = make_train_function(
        model,
        optimizer,
        build_loss("softmax", reduction=None),
        strategy,
        jit_compile=settings.jit_compile,
    )
    features, labels, weights = synthetic_batches(np.random.default_rng(0), 8, batch_size, shape)
    dataset = tf.data.Dataset.from_tensor_slices((features, labels, weights)).repeat().prefetch(2)
    iterator = iter(strategy.experimental_distribute_dataset(dataset))
    per_call = settings.steps_per_execution

    def step(steps):
        done = 0
        while done < steps:
            count = min(per_call, steps - done)
            losses, _ = run(iterator, tf.constant(count))
            done += count
        losses.numpy()

    step(2)  # trace and compile
    walls, cpus = time_repeats(step, options["repeats"], options["steps"])
    return {
        "model": "feedrec",
        "optimizer": type(optimizer).__name__,
        "jit_compile": settings.jit_compile,
        "mixed_precision": settings.mixed_precision,
        "steps_per_execution": per_call,
        "malloc_tuned": malloc_tuned,
        "walls": walls,
        "cpus": cpus,
    }


def write_examples(path: Path, rows: int, shape: dict, seed: int = 0) -> None:
    """A generated ``EXAMPLES`` Parquet file with the standard shapes."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipelines.schema import EXAMPLES

    rng = np.random.default_rng(seed)
    L, C, V = shape["history_length"], shape["num_candidates"], shape["num_items"]
    lengths = rng.integers(0, L + 1, rows)

    def lists(sizes, values):
        offsets = np.concatenate([[0], np.cumsum(sizes)]).astype("int32")
        return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values))

    labels = np.zeros((rows, C), "int8")
    labels[:, 0] = 1
    table = pa.table(
        {
            "example_key": pa.array([f"e{i}" for i in range(rows)]),
            "user_id": pa.array([f"u{i % 1000}" for i in range(rows)]),
            "time": pa.array(np.arange(rows), pa.int64()),
            "impression_id": pa.nulls(rows, pa.string()),
            "session_id": pa.nulls(rows, pa.string()),
            "history": lists(lengths, rng.integers(2, V, lengths.sum()).astype("int32")),
            "history_length": pa.array(lengths.astype("int32")),
            "candidates": lists(np.full(rows, C), rng.integers(2, V, rows * C).astype("int32")),
            "labels": lists(np.full(rows, C), labels.ravel()),
        }
    ).cast(EXAMPLES)
    pq.write_table(table, path, row_group_size=max(1, rows // 8))


def child_input(options: dict) -> dict:
    import tensorflow as tf

    from feedrec.data import make_train_dataset

    shape, batch_size = options["shape"], options["batch_size"]
    with tempfile.TemporaryDirectory(prefix="feedrec-bench-") as tmp:
        path = Path(tmp) / "train.parquet"
        write_examples(path, options["input_rows"], shape)
        steps = options["input_rows"] // batch_size

        @tf.function
        def consume(iterator, steps):
            total = tf.constant(0, tf.int64)
            for _ in tf.range(steps):
                features, _, _ = next(iterator)
                total += tf.reduce_sum(tf.cast(features["history_length"], tf.int64))
            return total

        walls, cpus = [], []
        for repeat in range(options["repeats"] + 1):
            dataset = make_train_dataset(
                path,
                history_length=shape["history_length"],
                num_candidates=shape["num_candidates"],
                batch_size=batch_size,
                seed=0,
                epoch=repeat,
                parallel_reads=options["parallel_reads"],
            )
            wall, cpu = time.perf_counter(), time.process_time()
            consume(iter(dataset), tf.constant(steps)).numpy()
            if repeat:  # the first pass traces the function
                walls.append((time.perf_counter() - wall) / steps)
                cpus.append((time.process_time() - cpu) / steps)
    return {
        "model": "input",
        "parallel_reads": options["parallel_reads"],
        "walls": walls,
        "cpus": cpus,
    }


def child_peak(options: dict) -> dict:
    """The best matmul rate of the device, in TFLOP/s."""
    import tensorflow as tf

    size = 8192 if options["device"] == "gpu" else 2048
    dtype = tf.bfloat16 if options["device"] == "gpu" else tf.float32
    a = tf.random.normal((size, size), dtype=tf.float32)
    a = tf.cast(a, dtype)
    repeat = 50 if options["device"] == "gpu" else 3

    @tf.function
    def multiply(a):
        total = tf.zeros((), tf.float32)
        for _ in tf.range(repeat):
            total += tf.cast(tf.reduce_sum(tf.matmul(a, a)[:1, :1]), tf.float32)
        return total

    multiply(a).numpy()
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        multiply(a).numpy()
        best = min(best, time.perf_counter() - start)
    return {"tflops": 2 * size**3 * repeat / best / 1e12, "dtype": dtype.name}


CHILDREN = {
    "keras": child_keras,
    "feedrec": child_feedrec,
    "input": child_input,
    "peak": child_peak,
}


def run_child(options: dict) -> dict:
    """Run one measurement in a fresh Python process; returns its JSON result."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", KERAS_BACKEND="tensorflow")
    if options["device"] == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    command = [sys.executable, __file__, "--child", json.dumps(options)]
    process = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    lines = [line for line in process.stdout.splitlines() if line.startswith("{")]
    if process.returncode or not lines:
        raise RuntimeError(
            f"{options['kind']} failed ({process.returncode}): {process.stderr[-3000:]}"
        )
    result = json.loads(lines[-1])
    result["peak_memory_mb"] = result.get("peak_memory_mb")
    return result


def plan(args) -> list[tuple[str, dict]]:
    """(configuration name, child options) for the requested configurations."""
    gpu = args.device == "gpu"
    common = {
        "device": args.device,
        "shape": STANDARD,
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "steps": args.steps,
    }
    default_xla = gpu  # feedrec.training.resolve_settings
    table = {
        "keras-xla": {"kind": "keras", "jit_compile": True},
        "keras": {"kind": "keras", "jit_compile": False},
        "feedrec": {"kind": "feedrec", "jit_compile": "auto", "sparse_updates": True},
        "feedrec-dense-adam": {"kind": "feedrec", "jit_compile": "auto", "sparse_updates": False},
        "feedrec-default-malloc": {
            "kind": "feedrec",
            "jit_compile": "auto",
            "sparse_updates": True,
            "tune_malloc": False,
        },
        "feedrec-other-xla": {
            "kind": "feedrec",
            "jit_compile": not default_xla,
            "sparse_updates": True,
        },
        "feedrec-large-batch": {
            "kind": "feedrec",
            "jit_compile": "auto",
            "sparse_updates": True,
            "batch_size": args.large_batch,
        },
        "input": {
            "kind": "input",
            "input_rows": args.input_rows,
            "parallel_reads": args.parallel_reads,
        },
    }
    return [(name, {**common, **table[name]}) for name in args.configs]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument("--configs", nargs="+", choices=CONFIGS, default=list(CONFIGS))
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--large-batch", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=5, help="timed repetitions (median)")
    parser.add_argument("--steps", type=int, default=5, help="steps per repetition")
    parser.add_argument(
        "--rounds", type=int, default=1, help="passes over the configurations, interleaved"
    )
    parser.add_argument("--input-rows", type=int, default=50_000)
    parser.add_argument("--parallel-reads", type=int, default=1, help="readers for `input`")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:  # inside a measurement process
        options = json.loads(args.child)
        result = CHILDREN[options["kind"]](options)
        result["peak_memory_mb"] = round(peak_memory_mb(options["device"]), 1)
        result["device_name"] = device_name(options["device"])
        print(json.dumps(result), flush=True)
        return 0

    if args.device == "gpu" and "CUDA_VISIBLE_DEVICES" in os.environ:
        print("note: CUDA_VISIBLE_DEVICES is set", file=sys.stderr)
    peak = run_child({"kind": "peak", "device": args.device})
    configurations = plan(args)
    measured = {name: {"walls": [], "cpus": [], "loads": []} for name, _ in configurations}
    results = {}
    # Rounds interleave the configurations, so a change in the machine's load
    # (it is shared) does not fall on one configuration only.
    for _ in range(args.rounds):
        for name, options in configurations:
            load_before = os.getloadavg()[0]
            result = run_child(options)
            measured[name]["walls"] += result.pop("walls")
            measured[name]["cpus"] += result.pop("cpus")
            measured[name]["loads"] += [load_before, os.getloadavg()[0]]
            results[name] = result
    rates = {}
    for name, options in configurations:
        walls, cpus, loads = (measured[name][key] for key in ("walls", "cpus", "loads"))
        step = statistics.median(walls)
        batch = options["batch_size"]
        line = {
            "benchmark": "train_throughput",
            "config": name,
            "device": args.device,
            **results[name],
            "batch_size": batch,
            "examples_per_s": round(batch / step, 1),
            "step_ms": round(step * 1000, 2),
            "step_ms_all": [round(w * 1000, 2) for w in walls],
            "cpu_s_per_step": round(statistics.median(cpus), 4),
            "rounds": args.rounds,
            "repeats": options["repeats"],
            "steps_per_repeat": options.get("steps") if options["kind"] != "input" else None,
            "load_average": [round(min(loads), 2), round(max(loads), 2)],
        }
        if options["kind"] != "input":
            flops = batch * train_flops_per_example(
                STANDARD["history_length"],
                STANDARD["embedding_dim"],
                STANDARD["feed_forward_dim"],
                STANDARD["num_candidates"],
            )
            line["flops_per_step"] = flops
            line["achieved_tflops"] = round(flops / step / 1e12, 4)
            line["matmul_peak_tflops"] = round(peak["tflops"], 3)
            line["matmul_peak_dtype"] = peak["dtype"]
            line["peak_fraction"] = round(flops / step / 1e12 / peak["tflops"], 4)
        rates[name] = batch / step
        print(json.dumps(line), flush=True)
    summary = {"benchmark": "train_throughput", "summary": True, "device": args.device}
    if "feedrec" in rates:
        for name in ("keras-xla", "keras", "feedrec-dense-adam", "feedrec-other-xla"):
            if name in rates:
                summary[f"feedrec_over_{name}"] = round(rates["feedrec"] / rates[name], 2)
        if "input" in rates:
            summary["input_over_feedrec"] = round(rates["input"] / rates["feedrec"], 1)
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
