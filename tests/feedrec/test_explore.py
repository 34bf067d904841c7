"""Notebook helpers (feedrec.explore) and their figures (feedrec.plots)."""

import logging
import math

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from feedrec import explore
from feedrec.config import Config, ModelConfig, TrainConfig
from feedrec.data import Batch, batch_from_table
from pipelines.schema import EXAMPLES, FEATURE_VOCAB, ITEMS

L = 4


@pytest.fixture(scope="module")
def model():
    from feedrec.models.recommender import build_model

    config = ModelConfig(
        history_length=L,
        embedding_dim=8,
        num_heads=2,
        num_layers=1,
        feed_forward_dim=8,
        dropout=0.0,
        item_features=(),
    )
    return build_model(config, num_items=12)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """A small synthetic log, prepared with L = 10: ``(work_dir, data_dir)``."""
    from pipelines.prepare import PrepareOptions, prepare

    work_dir = tmp_path_factory.mktemp("explore")
    format, inputs = explore.log_inputs("synthetic", work_dir=work_dir, scale="small")
    prepare(format, inputs, work_dir / "data", options=PrepareOptions(history_length=10))
    return work_dir, work_dir / "data"


def write_items(data_dir, counts, categories=None, features=None):
    """``items.parquet`` (and ``features/``) for item indices ``0..len(counts)-1``."""
    n = len(counts)
    categories = categories or [0] * n
    items = pa.table(
        {
            "item_index": pa.array(range(n), pa.int32()),
            "item_id": ["", "<oov>"] + [f"i{k}" for k in range(2, n)],
            "count": pa.array(counts, pa.int64()),
            "first_seen": pa.nulls(n, pa.int64()),
            "category": pa.array(categories, pa.int32()),
            "subcategory": pa.array([0] * n, pa.int32()),
        },
        schema=ITEMS,
    )
    data_dir.mkdir(parents=True, exist_ok=True)
    pq.write_table(items, data_dir / "items.parquet")
    for name, values in (features or {}).items():
        (data_dir / "features").mkdir(exist_ok=True)
        vocab = pa.table(
            {"index": pa.array(range(len(values)), pa.int32()), "value": values},
            schema=FEATURE_VOCAB,
        )
        pq.write_table(vocab, data_dir / "features" / f"{name}.parquet")


def examples_table(histories, candidates, labels, users=None):
    n = len(histories)
    return pa.table(
        {
            "example_key": [f"k{i}" for i in range(n)],
            "user_id": users or [f"u{i}" for i in range(n)],
            "time": list(range(n)),
            "impression_id": [None] * n,
            "session_id": [None] * n,
            "history": histories,
            "history_length": [len(h) for h in histories],
            "candidates": candidates,
            "labels": labels,
        },
        schema=EXAMPLES,
    )


# --------------------------------------------------------------------------- data


def test_log_inputs_generates_the_synthetic_log(synthetic):
    work_dir, data_dir = synthetic
    assert (work_dir / "log" / "behaviors.tsv").stat().st_size > 0
    assert (work_dir / "log" / "news.tsv").stat().st_size > 0
    assert (data_dir / "manifest.json").exists()


def test_log_inputs_passes_reader_paths_through(tmp_path):
    (tmp_path / "clicks.zip").write_bytes(b"")
    assert explore.log_inputs("globo", tmp_path / "clicks.zip", work_dir=tmp_path) == (
        "globo",
        [tmp_path / "clicks.zip"],
    )
    assert explore.log_inputs("mind", [str(tmp_path)], work_dir=tmp_path) == ("mind", [tmp_path])


def test_log_inputs_checks_arguments(tmp_path):
    with pytest.raises(ValueError, match="Received: source='criteo'"):
        explore.log_inputs("criteo", tmp_path, work_dir=tmp_path)
    with pytest.raises(ValueError, match="Received: path=None"):
        explore.log_inputs("mind", None, work_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="missing.zip"):
        explore.log_inputs("globo", tmp_path / "missing.zip", work_dir=tmp_path)


def test_item_labels_names_features(tmp_path):
    write_items(
        tmp_path,
        counts=[0, 0, 7, 3],
        categories=[0, 0, 1, 2],
        features={"category": ["", "news", "sports"], "subcategory": [""]},
    )
    labels = explore.item_labels(tmp_path)
    assert labels.index.tolist() == [0, 1, 2, 3]
    assert labels["category"].tolist() == ["", "", "news", "sports"]
    # No subcategory set: the label falls back to the category.
    assert labels["label"].tolist() == ["<pad>", "<oov>", "i2 (news)", "i3 (sports)"]
    assert labels["count"].tolist() == [0, 0, 7, 3]


def test_item_labels_without_feature_vocabularies_shows_indices(tmp_path):
    write_items(tmp_path, counts=[0, 0, 1], categories=[0, 0, 4])
    assert explore.item_labels(tmp_path)["label"].tolist() == ["<pad>", "<oov>", "i2 (4)"]


def test_item_labels_match_the_raw_news_file(synthetic):
    from pipelines import readers

    work_dir, data_dir = synthetic
    labels = explore.item_labels(data_dir)
    raw = readers.read("mind", [work_dir / "log"]).items.to_pandas().set_index("item_id")
    real = labels.iloc[2:]
    assert len(real) > 100
    assert real["subcategory"].tolist() == raw.loc[real["item_id"], "subcategory"].tolist()
    expected = real["item_id"] + " (" + real["subcategory"] + ")"
    assert real["label"].tolist() == expected.tolist()


# --------------------------------------------------------------------------- comparisons


def test_baseline_metrics_by_hand(tmp_path):
    write_items(tmp_path, counts=[0, 0, 5, 1, 3])
    table = examples_table([[2], []], [[2, 3], [3, 4]], [[1, 0], [1, 0]])
    pq.write_table(table, tmp_path / "valid.parquet")
    result = explore.baseline_metrics(tmp_path, "valid")
    # Popularity ranks the click first in the first impression, last in the second.
    assert result["popularity"]["auc"] == pytest.approx(0.5)
    assert result["popularity"]["mrr"] == pytest.approx((1 + 1 / 2) / 2)
    assert result["popularity"]["impressions"] == 2
    assert 0.0 <= result["random"]["auc"] <= 1.0


def fake_train(calls, history):
    def train(data_dir, run_dir, config, *, overwrite=False, verbose=None):
        calls.append({"data_dir": data_dir, "run_dir": run_dir, "config": config})
        return history

    return train


def test_compare_settings_trains_one_run_per_value(tmp_path, monkeypatch):
    from feedrec import training

    calls = []
    history = {
        "loss": [1.0, 0.9, 0.8],
        "val_auc": [0.6, 0.7, 0.65],
        "val_mrr": [0.3, 0.4, 0.35],
        "val_ndcg@5": [0.1, 0.2, 0.15],
        "val_ndcg@10": [0.2, 0.3, 0.25],
        "best_epoch": 2,
        "train_seconds": 1.5,
    }
    monkeypatch.setattr(training, "train", fake_train(calls, history))
    config = Config(model=ModelConfig(history_length=50), train=TrainConfig(epochs=5))
    tf_logger = logging.getLogger("tensorflow")
    level = tf_logger.level
    table = explore.compare_settings("data", tmp_path, config, "history_length", [10, 20], epochs=3)
    assert [call["config"].model.history_length for call in calls] == [10, 20]
    assert all(call["config"].train.epochs == 3 for call in calls)
    assert all(call["config"].model.pooling == config.model.pooling for call in calls)
    assert [call["run_dir"] for call in calls] == [
        tmp_path / "history_length=10",
        tmp_path / "history_length=20",
    ]
    assert table["history_length"].tolist() == [10, 20]
    # Metrics at the best epoch (the second).
    assert table["val_auc"].tolist() == [0.7, 0.7]
    assert table["val_ndcg@10"].tolist() == [0.3, 0.3]
    assert table["best_epoch"].tolist() == [2, 2]
    assert table["run_dir"].tolist() == [str(call["run_dir"]) for call in calls]
    assert tf_logger.level == level  # quieted during the runs only


def test_compare_settings_without_validation_gives_nan(tmp_path, monkeypatch):
    from feedrec import training

    calls = []
    monkeypatch.setattr(training, "train", fake_train(calls, {"loss": [1.0]}))
    table = explore.compare_settings("data", tmp_path, Config(), "pooling", ["mean"])
    assert calls[0]["config"].model.pooling == "mean"
    assert calls[0]["config"].train.epochs == Config().train.epochs
    assert math.isnan(table["val_auc"].iloc[0])


@pytest.mark.parametrize(
    "setting, values, epochs, message",
    [
        ("heads", [1], None, "Received: setting='heads'"),
        ("pooling", [], None, r"Received: values=\[\]"),
        ("pooling", ["mean"], 0, "Received: epochs=0"),
    ],
    ids=["unknown-setting", "no-values", "zero-epochs"],
)
def test_compare_settings_checks_arguments(tmp_path, setting, values, epochs, message):
    with pytest.raises(ValueError, match=message):
        explore.compare_settings("data", tmp_path, Config(), setting, values, epochs=epochs)


# --------------------------------------------------------------------------- embeddings


def test_item_vectors_are_the_item_embeddings(model):
    vectors = explore.item_vectors(model)
    assert vectors.shape == (12, 8)
    for index in (0, 2, 11):
        expected = np.asarray(model.item_embedding(np.array([index], dtype="int32")))[0]
        np.testing.assert_allclose(vectors[index], expected, rtol=1e-6)


def test_nearest_items_by_hand():
    vectors = np.array(
        [
            [1.0, 0.0],  # padding: never a neighbour
            [1.0, 0.0],  # OOV: never a neighbour
            [1.0, 0.0],
            [0.9, 0.1],
            [0.0, 1.0],
            [-1.0, 0.0],
            [2.0, 0.0],  # same direction as item 2
        ]
    )
    table = explore.nearest_items(vectors, [2, 4], k=3)
    first = table[table["query"] == 2]
    assert first["item"].tolist() == [6, 3, 4]
    assert first["rank"].tolist() == [1, 2, 3]
    np.testing.assert_allclose(first["similarity"], [1.0, 0.9 / np.hypot(0.9, 0.1), 0.0])
    second = table[table["query"] == 4]
    # Items 2, 5 and 6 are orthogonal to 4 and tie at 0: lower indices come first.
    assert second["item"].tolist() == [3, 2, 5]
    among = explore.nearest_items(vectors, [2], k=5, among=[3, 5, 2])
    # Only the allowed items, the query itself excluded: fewer than k.
    assert among["item"].tolist() == [3, 5]
    names = pd.Series({index: f"item {index}" for index in range(7)})
    named = explore.nearest_items(vectors, [2], k=2, names=names)
    assert named["query_name"].tolist() == ["item 2", "item 2"]
    assert named["item_name"].tolist() == ["item 6", "item 3"]


@pytest.mark.parametrize(
    "vectors, queries, k, message",
    [
        (np.ones((5, 2)), [0], 2, r"Received: queries=\[0\]"),
        (np.ones((5, 2)), [5], 2, r"Received: queries=\[5\]"),
        (np.ones((5, 2)), [2], 0, "Received: k=0"),
        (np.ones(5), [2], 2, r"Received: shape \(5,\)"),
    ],
    ids=["padding-query", "out-of-range", "zero-k", "one-dimensional"],
)
def test_nearest_items_checks_arguments(vectors, queries, k, message):
    with pytest.raises(ValueError, match=message):
        explore.nearest_items(vectors, queries, k=k)
    with pytest.raises(ValueError, match=r"Received: among=\[2, 9\]"):
        explore.nearest_items(np.ones((5, 2)), [2], among=[2, 9])


# --------------------------------------------------------------------------- scores


def scores_of(model, history, candidates):
    """The model's scores for one history, padded to L by hand."""
    kept = list(history)[-L:]
    padded = np.array([kept + [0] * (L - len(kept))], dtype="int32")
    logits = model(
        {
            "history": padded,
            "history_length": np.array([len(kept)], dtype="int32"),
            "candidates": np.array([candidates], dtype="int32"),
        }
    )
    return np.asarray(logits)[0]


def test_scores_as_history_grows_equal_one_call_per_prefix(model):
    history, candidates = [3, 5, 7, 9, 11, 4], [2, 6, 10]
    scores = explore.scores_as_history_grows(model, history, candidates)
    assert scores.shape == (7, 3)
    for n in range(7):
        np.testing.assert_allclose(scores[n], scores_of(model, history[:n], candidates), atol=1e-5)
    # No click: attention pooling gives a zero user vector, hence zero logits.
    np.testing.assert_array_equal(scores[0], 0.0)


def test_scores_with_an_empty_history(model):
    scores = explore.scores_as_history_grows(model, [], [2, 3])
    assert scores.shape == (1, 2)
    np.testing.assert_array_equal(scores, 0.0)
    with pytest.raises(ValueError, match="`candidates`"):
        explore.scores_as_history_grows(model, [2], [])


def test_candidate_sample_puts_clicks_first():
    batch = batch_from_table(
        examples_table([[2]], [[5, 6, 7, 8]], [[0, 1, 0, 1]]), history_length=2, num_candidates=5
    )
    candidates, labels = explore.candidate_sample(batch, 0, count=3)
    assert candidates.tolist() == [6, 8, 5]
    assert labels.tolist() == [1, 1, 0]
    # Padding (label -1) never comes back.
    assert explore.candidate_sample(batch, 0, count=9)[0].tolist() == [6, 8, 5, 7]
    with pytest.raises(ValueError, match="Received: row=1"):
        explore.candidate_sample(batch, 1)
    with pytest.raises(ValueError, match="Received: count=0"):
        explore.candidate_sample(batch, 0, count=0)


# --------------------------------------------------------------------------- attention


def test_pick_examples_spreads_history_lengths_over_distinct_users():
    histories = [[], [2], [2] * 5, [3] * 5, [2] * 9, [4] * 3]
    table = examples_table(histories, [[2]] * 6, [[1]] * 6, users=["a", "b", "c", "c", "d", "b"])
    batch = batch_from_table(table, history_length=10)
    # Target lengths 1, 5, 9.
    assert explore.pick_examples(batch, 3) == [1, 2, 4]
    # Targets 1, 3.7, 6.3, 9: the fourth finds no user left.
    assert explore.pick_examples(batch, 4) == [1, 2, 4]
    assert explore.pick_examples(batch, 1, min_length=9) == [4]
    assert explore.pick_examples(batch, 2, min_length=10) == []
    with pytest.raises(ValueError, match="Received: count=0"):
        explore.pick_examples(batch, 0)


def test_pick_examples_without_a_table_treats_rows_as_users():
    batch = Batch(
        history=np.zeros((3, 2), np.int32),
        history_length=np.array([2, 2, 1], np.int32),
        candidates=np.zeros((3, 1), np.int32),
        labels=np.zeros((3, 1), np.float32),
    )
    assert explore.pick_examples(batch, 3) == [2, 0, 1]


def test_explain_examples_weights_are_zero_on_padding(model):
    table = examples_table([[2, 3], [4, 5, 6, 7, 8]], [[2], [3]], [[1], [1]], users=["a", "b"])
    batch = batch_from_table(table, history_length=6)
    explained = explore.explain_examples(model, batch, [1, 0])
    assert [e.row for e in explained] == [1, 0]
    assert [e.user_id for e in explained] == ["b", "a"]
    short, full = explained[1], explained[0]
    assert short.history.tolist() == [2, 3, 0, 0]
    assert full.history.tolist() == [5, 6, 7, 8]  # the most recent L = 4
    assert (short.history_length, full.history_length) == (2, 4)
    assert short.attention.shape == (1, 2, L, L)
    np.testing.assert_array_equal(short.attention[:, :, 2:, :], 0.0)
    np.testing.assert_array_equal(short.attention[:, :, :, 2:], 0.0)
    np.testing.assert_allclose(short.attention[:, :, :2, :].sum(axis=-1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(full.attention.sum(axis=-1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(short.pooling[2:], 0.0)
    assert short.pooling.sum() == pytest.approx(1.0, rel=1e-5)
    direct = model.explain(batch.history[[0]], batch.history_length[[0]])
    np.testing.assert_allclose(short.attention[0], direct["attention"][0][0], rtol=1e-6)
    np.testing.assert_allclose(short.pooling, direct["pooling"][0], rtol=1e-6)


def test_explain_examples_checks_rows(model):
    batch = batch_from_table(examples_table([[2]], [[2]], [[1]]), history_length=L)
    with pytest.raises(ValueError, match=r"Received: rows=\[3\]"):
        explore.explain_examples(model, batch, [3])


# --------------------------------------------------------------------------- plots


@pytest.fixture
def plt():
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as pyplot

    yield pyplot
    pyplot.close("all")


def assert_labelled(ax):
    assert ax.get_xlabel() and ax.get_ylabel() and ax.get_title()


def test_log_plots_are_labelled_and_show_the_data(plt):
    from feedrec import plots
    from pipelines import stats

    lengths = pd.DataFrame({"user_id": list("abcd"), "history_length": [0, 2, 5, 9]})
    ax = plots.plot_history_lengths(lengths, history_length=5)
    assert_labelled(ax)
    assert sum(patch.get_height() for patch in ax.patches) == 4  # every example counted
    assert list(ax.lines[0].get_xdata()) == [5, 5]

    curve = stats.truncation_curve(lengths, [1, 5, 10])
    ax = plots.plot_truncation_curve(curve, history_length=5)
    assert_labelled(ax)
    assert list(ax.lines[1].get_ydata()) == curve["truncated"].tolist()

    popularity = pd.DataFrame(
        {
            "clicks": [5, 2, 0],
            "rank": [1, 2, 3],
            "item_fraction": [1 / 3, 2 / 3, 1.0],
            "cumulative_share": [5 / 7, 1.0, 1.0],
        }
    )
    ax = plots.plot_popularity(popularity)
    assert_labelled(ax)
    assert list(ax.lines[0].get_ydata()) == [5, 2]  # zero clicks cannot sit on a log axis
    assert_labelled(plots.plot_click_concentration(popularity))

    counts = pd.DataFrame(
        {"time": pd.date_range("2019-11-09", periods=3, freq="h", tz="UTC"), "clicks": [1, 0, 4]}
    )
    ax = plots.plot_clicks_over_time(counts)
    assert_labelled(ax)
    assert list(ax.lines[0].get_ydata()) == [1, 0, 4]

    ages = pd.DataFrame({"age_hours": [1.0, 2.0, np.nan, 30.0]})
    ax = plots.plot_item_age(ages, max_hours=24)
    assert_labelled(ax)
    assert sum(patch.get_height() for patch in ax.patches) == 2


def test_training_plots_are_labelled_and_show_the_data(plt):
    from feedrec import plots

    history = {"loss": [1.0, 0.8], "val_auc": [0.6, 0.7], "val_mrr": [0.3, 0.4], "best_epoch": 2}
    fig = plots.plot_learning_curves(history)
    loss_ax, metric_ax = fig.axes
    assert_labelled(loss_ax)
    assert_labelled(metric_ax)
    assert list(loss_ax.lines[0].get_ydata()) == [1.0, 0.8]
    assert [line.get_label() for line in metric_ax.lines[:2]] == ["auc", "mrr"]

    metrics = {"auc": 0.7, "mrr": 0.4, "ndcg@5": 0.45, "ndcg@10": 0.5}
    results = {"model": metrics, "popularity": dict(metrics, auc=0.6), "random": metrics}
    ax = plots.plot_metrics(results)
    assert_labelled(ax)
    heights = [patch.get_height() for patch in ax.patches]
    assert heights[:4] == [0.7, 0.4, 0.45, 0.5] and heights[4] == 0.6

    table = pd.DataFrame({"pooling": ["mean", "attention"], "val_auc": [0.62, 0.66]})
    ax = plots.plot_setting_comparison(table, "pooling", baselines={"popularity": {"auc": 0.6}})
    assert_labelled(ax)
    assert list(ax.lines[0].get_ydata()) == [0.62, 0.66]
    assert list(ax.lines[1].get_ydata()) == [0.6, 0.6]
    low, high = ax.get_ylim()
    assert 0.55 < low < 0.6 and 0.66 < high < 0.75  # zoomed on the values


def test_attention_plot_shows_the_weights_with_padding_blank(plt, model):
    from feedrec import plots

    table = examples_table([[2, 3]], [[2]], [[1]], users=["a"])
    batch = batch_from_table(table, history_length=L)
    (user,) = explore.explain_examples(model, batch, [0])
    names = {2: "two", 3: "three"}
    fig = plots.plot_attention(user, names)
    heads = [ax for ax in fig.axes if ax.images]
    assert len(heads) == 2
    for head, ax in enumerate(heads):
        assert_labelled(ax)
        image = np.asarray(ax.images[0].get_array())
        np.testing.assert_array_equal(image, user.attention[0, head])
        assert image[2:, :].max() == 0.0 and image[:, 2:].max() == 0.0
        assert ax.images[0].norm.vmin == 0.0
        assert [t.get_text() for t in ax.get_xticklabels()] == ["two", "three", "pad", "pad"]
    pooling_ax = next(ax for ax in fig.axes if ax.get_title().startswith("Pooling"))
    assert_labelled(pooling_ax)
    np.testing.assert_allclose([p.get_height() for p in pooling_ax.patches], user.pooling)
    assert "2 click(s)" in fig.get_suptitle()


def test_score_trajectory_plot(plt):
    from feedrec import plots

    scores = np.array([[0.0, 0.0], [0.5, -0.2], [1.0, -0.4]])
    ax = plots.plot_score_trajectory(scores, ["x", "y"], labels=[1, 0])
    assert_labelled(ax)
    assert list(ax.lines[0].get_ydata()) == [0.0, 0.5, 1.0]
    assert ax.lines[0].get_linestyle() == "-" and ax.lines[1].get_linestyle() == "--"
    assert [line.get_label() for line in ax.lines] == ["x (clicked)", "y"]
