"""Training and evaluation end to end on a small generated log."""

import json

import pytest

from feedrec.cli import main
from feedrec.config import Config, ModelConfig, TrainConfig
from feedrec.evaluation import evaluate_run
from feedrec.training import train
from pipelines.prepare import PrepareOptions, prepare
from pipelines.synthetic import generate_mind_log

SMALL = Config(
    model=ModelConfig(history_length=20, embedding_dim=32, num_heads=2, feed_forward_dim=64),
    train=TrainConfig(epochs=2, batch_size=128, learning_rate=3e-3, seed=1),
)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("small")
    generate_mind_log(root / "log", seed=3, scale="small")
    prepare("mind", [root / "log"], root / "data", options=PrepareOptions(history_length=20))
    return root / "data"


@pytest.fixture(scope="module")
def run_dir(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "run"
    train(data_dir, out, SMALL)
    return out


def test_model_beats_popularity_and_random(run_dir, data_dir):
    results = evaluate_run(run_dir, data_dir, "test")
    model, popularity, rand = results["model"], results["popularity"], results["random"]
    assert model["auc"] >= popularity["auc"] + 0.05, results
    assert model["ndcg@10"] > popularity["ndcg@10"], results
    assert abs(rand["auc"] - 0.5) < 0.05, results


def test_run_directory_is_complete(run_dir):
    names = {p.name for p in run_dir.iterdir()}
    assert {"config.json", "model.keras", "data.json", "items.parquet", "history.json"} <= names
    history = json.loads((run_dir / "history.json").read_text())
    assert len(history["loss"]) == SMALL.train.epochs
    assert history["loss"][-1] < history["loss"][0]
    assert 1 <= history["best_epoch"] <= SMALL.train.epochs


def test_evaluate_cli_writes_json(run_dir, data_dir, tmp_path, capsys):
    out = tmp_path / "metrics.json"
    argv = ["evaluate", str(run_dir), str(data_dir), "--split", "valid", "--json", str(out)]
    assert main(argv) == 0
    written = json.loads(out.read_text())
    assert written["split"] == "valid"
    assert set(written["model"]) >= {"auc", "mrr", "ndcg@5", "ndcg@10"}
    assert "popularity" in capsys.readouterr().out


def test_evaluate_cli_writes_undefined_metrics_as_null(tmp_path, monkeypatch, capsys):
    import feedrec.evaluation

    undefined = {"auc": float("nan"), "mrr": float("nan"), "ndcg@5": 0.5, "ndcg@10": 0.5}
    results = {"split": "test", "examples": 3, "model": undefined, "values": [float("inf"), 1.0]}
    monkeypatch.setattr(feedrec.evaluation, "evaluate_run", lambda *args, **kwargs: results)
    monkeypatch.setattr(feedrec.evaluation, "format_table", lambda results: "table")
    out = tmp_path / "metrics.json"
    assert main(["evaluate", "RUN", "DATA", "--json", str(out)]) == 0

    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")

    written = json.loads(out.read_text(), parse_constant=refuse)  # no bare NaN or Infinity
    assert written["model"] == {"auc": None, "mrr": None, "ndcg@5": 0.5, "ndcg@10": 0.5}
    assert written["values"] == [None, 1.0]
    assert "table" in capsys.readouterr().out


def test_existing_run_dir_is_not_overwritten(data_dir, run_dir):
    with pytest.raises(FileExistsError, match="--overwrite"):
        train(data_dir, run_dir, SMALL)


def test_failed_training_leaves_no_run_directory(data_dir, tmp_path, monkeypatch):
    import keras

    def boom(self, *args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(keras.Model, "save", boom)
    out = tmp_path / "run"
    one_epoch = SMALL.replace(train=TrainConfig(epochs=1, batch_size=512))
    with pytest.raises(RuntimeError, match="disk full"):
        train(data_dir, out, one_epoch)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".run")]


def test_examples_without_negatives_are_refused_before_training(tmp_path):
    # One candidate per row: the impression losses are 0 with zero gradients
    # (nothing to rank the click against), so training would silently learn
    # nothing. It is refused, and the message says what to do instead.
    generate_mind_log(tmp_path / "log", seed=3, scale="small")
    options = PrepareOptions(history_length=20, negatives=0)
    prepare("mind", [tmp_path / "log"], tmp_path / "data", options=options)
    with pytest.raises(ValueError, match=r"1 candidate.*--negatives K.*\[sequential\]"):
        train(tmp_path / "data", tmp_path / "run", SMALL)
    assert not (tmp_path / "run").exists()
