"""Distributed training: strategy choice, TF_CONFIG, and 2 local workers vs 1."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from feedrec.config import Config, ModelConfig, TrainConfig
from feedrec.distribute import (
    WorkerInfo,
    make_strategy,
    parse_tf_config,
    replica_slices,
    worker_info,
)
from feedrec.runs import load_run, partial_dir
from pipelines.prepare import PrepareOptions, prepare
from pipelines.synthetic import generate_mind_log

REPO = Path(__file__).resolve().parents[2]

# Dropout draws its masks per replica, so a 2-worker run equals a 1-worker run
# only without dropout; everything else (data order, batch split, all-reduced
# sparse gradients, LazyAdam) must agree up to float summation order.
TINY = Config(
    model=ModelConfig(
        history_length=20, embedding_dim=16, num_heads=2, feed_forward_dim=32, dropout=0.0
    ),
    train=TrainConfig(epochs=1, batch_size=256, learning_rate=3e-3, seed=1),
)
#: Stated tolerance on every weight after one epoch (14 steps) of 2 workers vs 1.
WEIGHT_TOLERANCE = 1e-4

SCRIPT = """
import json, sys
import tensorflow as tf
tf.config.threading.set_intra_op_parallelism_threads(1)
tf.config.threading.set_inter_op_parallelism_threads(1)
from feedrec.config import Config
from feedrec.training import train
data_dir, out_dir, config = sys.argv[1:4]
history = train(data_dir, out_dir, Config.from_dict(json.loads(config)), verbose=0)
print("HISTORY " + json.dumps(history))
"""


def cluster_json(ports, index):
    cluster = {"worker": [f"localhost:{port}" for port in ports]}
    return json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (None, "TF_CONFIG unset"),
        ("{not json", "should be JSON"),
        ('{"task": {"type": "worker", "index": 0}}', "should have a `cluster`"),
        ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "ps"}}', "should have a `task`"),
        ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 1}}', "index=1"),
    ],
    ids=["unset", "not-json", "no-cluster", "unknown-task", "index-out-of-range"],
)
def test_parse_tf_config_names_the_problem(text, message):
    with pytest.raises(ValueError, match=message):
        parse_tf_config(text)


def test_parse_tf_config_accepts_a_cluster():
    config = parse_tf_config(cluster_json([1, 2], 1))
    assert config["task"] == {"type": "worker", "index": 1}
    assert len(config["cluster"]["worker"]) == 2


def test_multi_worker_needs_tf_config(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ValueError, match="TF_CONFIG unset"):
        make_strategy("multi-worker")
    with pytest.raises(ValueError, match="'ring'"):
        make_strategy("ring")


def test_single_device_strategy_and_worker_info():
    strategy = make_strategy("none")
    assert strategy.num_replicas_in_sync == 1
    assert worker_info(strategy) == WorkerInfo(index=0, count=1, is_chief=True)


@pytest.mark.parametrize(
    ("pipelines", "pipeline", "replicas", "expected"),
    [(1, 0, 1, (0, 1, 1)), (1, 0, 4, (0, 4, 4)), (2, 1, 2, (1, 1, 2)), (2, 1, 4, (2, 2, 4))],
)
def test_replica_slices(pipelines, pipeline, replicas, expected):
    context = tf.distribute.InputContext(pipelines, pipeline, replicas)
    assert replica_slices(context) == expected
    assert replica_slices(None) == (0, 1, 1)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("distributed")
    generate_mind_log(root / "log", seed=3, scale="small")
    prepare("mind", [root / "log"], root / "data", options=PrepareOptions(history_length=20))
    return root / "data"


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("localhost", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


def start(data_dir, out_dir, config, tf_config=None):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.pop("TF_CONFIG", None)
    if tf_config:
        env["TF_CONFIG"] = tf_config
    command = [sys.executable, "-c", SCRIPT, str(data_dir), str(out_dir)]
    command.append(json.dumps(config.to_dict()))
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def history_of(process, timeout=600):
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        raise
    assert process.returncode == 0, stderr.decode(errors="replace")[-3000:]
    (line,) = [x for x in stdout.decode().splitlines() if x.startswith("HISTORY ")]
    return json.loads(line[len("HISTORY ") :])


@pytest.mark.slow
def test_two_local_workers_match_single_worker_training(data_dir, tmp_path):
    ports = free_ports(2)
    multi = TINY.replace(
        train=TrainConfig(**{**TINY.to_dict()["train"], "distribute": "multi-worker"})
    )
    workers = [
        start(data_dir, tmp_path / "multi", multi, cluster_json(ports, index)) for index in (0, 1)
    ]
    single = start(data_dir, tmp_path / "single", TINY)
    histories = [history_of(process) for process in workers]
    reference = history_of(single)

    # Worker 0 is the chief: it alone writes the run directory.
    assert (tmp_path / "multi" / "model.keras").exists()
    assert not partial_dir(tmp_path / "multi").exists()
    assert not partial_dir(tmp_path / "multi", worker=1, is_chief=False).exists()
    for history in histories:
        assert history["loss"] == pytest.approx(reference["loss"], rel=1e-5)
        assert history["val_auc"] == pytest.approx(reference["val_auc"], abs=1e-3)
    multi_model, _, _ = load_run(tmp_path / "multi")
    single_model, _, _ = load_run(tmp_path / "single")
    for a, b in zip(multi_model.get_weights(), single_model.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=WEIGHT_TOLERANCE)
