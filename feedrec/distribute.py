"""Where training runs: one device, all local GPUs, or several machines.

``TrainConfig.distribute`` (``feedrec train --distribute``) picks the
``tf.distribute`` strategy:

* ``"none"``: one device (the first GPU if there is one, else the CPU);
* ``"mirrored"``: ``tf.distribute.MirroredStrategy`` over all local GPUs
  (the CPU when there is none): one replica per GPU, gradients all-reduced;
* ``"multi-worker"``: ``tf.distribute.MultiWorkerMirroredStrategy``, one
  process per machine, the cluster described by the ``TF_CONFIG``
  environment variable (see README "Training at scale").

``TrainConfig.batch_size`` is always the *global* batch: each of the ``R``
replicas gets ``batch_size / R`` rows of every global batch
(:func:`replica_slices`), so a distributed run computes the same updates as a
single-device run, up to floating-point summation order.

TensorFlow is imported inside the functions; ``MultiWorkerMirroredStrategy``
must be created before any other TensorFlow operation runs in the process.
"""

from __future__ import annotations

import dataclasses
import json
import os

STRATEGIES = ("none", "mirrored", "multi-worker")


@dataclasses.dataclass(frozen=True)
class WorkerInfo:
    """This process's place in the cluster.

    Attributes:
        index: the worker's index (0 without a cluster).
        count: the number of workers (1 without a cluster).
        is_chief: whether this worker writes the run directory and the
            TensorBoard logs (the ``chief`` task, else worker 0).
    """

    index: int = 0
    count: int = 1
    is_chief: bool = True


def parse_tf_config(text: str | None) -> dict:
    """Parse and check a ``TF_CONFIG`` value for multi-worker training.

    Args:
        text: the JSON text of ``TF_CONFIG`` (``None`` when unset).

    Returns:
        The parsed dict, with ``cluster`` (task type -> list of
        ``"host:port"``) and ``task`` (``type`` and ``index``).

    Raises:
        ValueError: naming what is missing or inconsistent.

    Example:

    >>> parse_tf_config(
    ...     '{"cluster": {"worker": ["localhost:12345", "localhost:12346"]},'
    ...     ' "task": {"type": "worker", "index": 1}}'
    ... )["task"]["index"]
    1
    """
    if not text:
        raise ValueError(
            "`distribute='multi-worker'` needs the TF_CONFIG environment variable, e.g. "
            '{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
            '"task": {"type": "worker", "index": 0}}. Received: TF_CONFIG unset'
        )
    try:
        config = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"TF_CONFIG should be JSON. Received: TF_CONFIG={text!r} ({err})") from err
    cluster = config.get("cluster") if isinstance(config, dict) else None
    task = config.get("task") if isinstance(config, dict) else None
    if not isinstance(cluster, dict) or not cluster.get("worker") and not cluster.get("chief"):
        raise ValueError(
            "TF_CONFIG should have a `cluster` with a `worker` (and optionally `chief`) list. "
            f"Received: TF_CONFIG={text!r}"
        )
    if not isinstance(task, dict) or task.get("type") not in cluster:
        raise ValueError(
            "TF_CONFIG should have a `task` whose `type` is a job of the cluster. "
            f"Received: TF_CONFIG={text!r}"
        )
    index = task.get("index", 0)
    if not isinstance(index, int) or not 0 <= index < len(cluster[task["type"]]):
        raise ValueError(
            f"TF_CONFIG's task index should be in [0, {len(cluster[task['type']])}). "
            f"Received: index={index!r}"
        )
    return config


def make_strategy(name: str = "none"):
    """The ``tf.distribute.Strategy`` called ``name`` (one of ``STRATEGIES``).

    Args:
        name: str. ``"none"``, ``"mirrored"`` or ``"multi-worker"``.

    Returns:
        A strategy; for ``"none"`` a ``OneDeviceStrategy`` on the first GPU,
        or the default strategy (CPU) when there is no GPU.
    """
    if name not in STRATEGIES:
        raise ValueError(f"`distribute` should be one of {STRATEGIES}. Received: {name!r}")
    import tensorflow as tf

    if name == "multi-worker":
        parse_tf_config(os.environ.get("TF_CONFIG"))
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    gpus = tf.config.list_logical_devices("GPU")
    return tf.distribute.OneDeviceStrategy(gpus[0].name) if gpus else tf.distribute.get_strategy()


def has_gpu() -> bool:
    """Whether TensorFlow sees a GPU (call after creating the strategy)."""
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


def worker_info(strategy) -> WorkerInfo:
    """This process's :class:`WorkerInfo` under ``strategy``."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return WorkerInfo()
    jobs = resolver.cluster_spec().as_dict()
    count = sum(len(jobs.get(job, [])) for job in ("chief", "worker"))
    task_type, task_id = resolver.task_type, int(resolver.task_id or 0)
    index = task_id + (len(jobs.get("chief", [])) if task_type == "worker" else 0)
    is_chief = task_type == "chief" or (
        task_type == "worker" and task_id == 0 and "chief" not in jobs
    )
    return WorkerInfo(index=index, count=count, is_chief=is_chief)


def replica_slices(input_context) -> tuple[int, int, int]:
    """``(first, count, total)``: the replicas fed by one input pipeline.

    Args:
        input_context: the ``tf.distribute.InputContext`` given to a
            dataset function (``None``: a single replica).

    Returns:
        The first replica index, how many replicas this pipeline feeds, and
        the number of replicas in sync, for
        ``feedrec.data.make_train_dataset(replicas=...)``.
    """
    if input_context is None:
        return 0, 1, 1
    total = input_context.num_replicas_in_sync
    pipelines = input_context.num_input_pipelines
    if total % pipelines:
        raise ValueError(
            f"{total} replicas cannot be split evenly over {pipelines} input pipelines"
        )
    per_pipeline = total // pipelines
    return input_context.input_pipeline_id * per_pipeline, per_pipeline, total
