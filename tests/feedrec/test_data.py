import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from feedrec.data import (
    batch_from_table,
    candidate_width,
    load_split,
    make_train_dataset,
    pad_lists,
    rebatch,
    shuffle_chunks,
    split_size,
    train_batches,
)
from pipelines.dataset import ExamplesFile
from pipelines.schema import EXAMPLES


def examples(histories, candidates, labels):
    n = len(histories)
    return pa.table(
        {
            "example_key": [f"k{i}" for i in range(n)],
            "user_id": ["u"] * n,
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


def test_pad_lists_keeps_most_recent_and_pads_right():
    column = pa.array([[5, 6, 7, 8], [9], []], type=pa.list_(pa.int32()))
    padded, kept = pad_lists(column, 3, keep="last")
    np.testing.assert_array_equal(padded, [[6, 7, 8], [9, 0, 0], [0, 0, 0]])
    np.testing.assert_array_equal(kept, [3, 1, 0])
    padded, kept = pad_lists(column, 3, keep="first", pad=-1)
    np.testing.assert_array_equal(padded, [[5, 6, 7], [9, -1, -1], [-1, -1, -1]])


def test_short_history_is_unaffected_by_L():
    table = examples([[3, 4]], [[2, 5]], [[1, 0]])
    short = batch_from_table(table, history_length=4)
    long = batch_from_table(table, history_length=9)
    np.testing.assert_array_equal(long.history[:, :4], short.history)
    assert not long.history[:, 4:].any()
    assert short.history_length.tolist() == long.history_length.tolist() == [2]


def test_candidates_and_labels_are_padded_with_padding_label():
    table = examples([[2], [3, 4]], [[2, 5, 6], [7]], [[1, 0, 0], [1]])
    batch = batch_from_table(table, history_length=2)
    np.testing.assert_array_equal(batch.candidates, [[2, 5, 6], [7, 0, 0]])
    np.testing.assert_array_equal(batch.labels, [[1, 0, 0], [1, -1, -1]])
    assert batch.labels.dtype == np.float32 and batch.history.dtype == np.int32


def test_candidates_are_never_truncated():
    table = examples([[2]], [[2, 5, 6]], [[1, 0, 0]])
    with pytest.raises(ValueError, match="never truncated"):
        batch_from_table(table, history_length=2, num_candidates=2)


# --------------------------------------------------------------------------- streaming


def numbered_examples(n, history_length=3, num_candidates=3):
    """``n`` examples whose last history item is ``10 + i`` (identifies row ``i``)."""
    histories = [[2] * (i % history_length) + [10 + i] for i in range(n)]
    candidates = [[4 + i % 5] * (1 + i % num_candidates) for i in range(n)]
    labels = [[1] + [0] * (len(c) - 1) for c in candidates]
    return examples(histories, candidates, labels)


@pytest.fixture
def examples_file(tmp_path):
    """A 50-example file in 4 row groups (16, 16, 16, 2 rows)."""
    path = tmp_path / "train.parquet"
    pq.write_table(numbered_examples(50), path, row_group_size=16)
    return path


@pytest.fixture
def compact_file(tmp_path, write_compact):
    """``examples_file`` in the compact layout."""
    directory = tmp_path / "compact"
    directory.mkdir()
    return write_compact(numbered_examples(50), directory, row_group_size=16)


def row_ids(batch):
    """The example number of each real row of a streamed batch (padding: none)."""
    last = batch["history"][np.arange(len(batch["history"])), batch["history_length"] - 1]
    return (last[batch["weight"] > 0] - 10).tolist()


def stream(path, **options):
    defaults = {"history_length": 4, "num_candidates": 3, "batch_size": 8, "shuffle_buffer": 10}
    return list(train_batches(path, **{**defaults, **options}))


def test_shuffle_chunks_emits_every_row_once_in_a_seeded_order():
    chunks = [{"x": np.arange(start, start + 7)} for start in range(0, 35, 7)]
    first = np.concatenate([c["x"] for c in shuffle_chunks(chunks, 10, np.random.default_rng(1))])
    again = np.concatenate([c["x"] for c in shuffle_chunks(chunks, 10, np.random.default_rng(1))])
    other = np.concatenate([c["x"] for c in shuffle_chunks(chunks, 10, np.random.default_rng(2))])
    assert sorted(first.tolist()) == list(range(35))
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    assert not np.array_equal(first, np.arange(35))
    unchanged = np.concatenate([c["x"] for c in shuffle_chunks(chunks, 10, None)])
    np.testing.assert_array_equal(unchanged, np.arange(35))


def test_shuffle_buffer_bounds_how_far_a_row_moves_forward():
    # A row can only leave the buffer after entering it: output position i holds a
    # row read no later than i + buffer_size.
    chunks = [{"x": np.arange(start, start + 5)} for start in range(0, 100, 5)]
    out = np.concatenate([c["x"] for c in shuffle_chunks(chunks, 8, np.random.default_rng(0))])
    assert (out[: 100 - 8] <= np.arange(100 - 8) + 8).all()


def test_rebatch_fills_batches_and_pads_the_last_with_zero_weight():
    chunks = [
        {
            "history": np.full((n, 2), n, np.int32),
            "labels": np.ones((n, 3), np.float32),
            "weight": np.ones(n, np.float32),
        }
        for n in (3, 4, 2)
    ]
    batches = list(rebatch(chunks, 4))
    assert [len(b["history"]) for b in batches] == [4, 4, 4]
    np.testing.assert_array_equal(batches[0]["history"][:, 0], [3, 3, 3, 4])
    np.testing.assert_array_equal(batches[2]["weight"], [1, 0, 0, 0])
    np.testing.assert_array_equal(batches[2]["labels"][1:], -1)
    np.testing.assert_array_equal(batches[2]["history"][1:], 0)


def test_train_batches_stream_each_example_once_per_epoch(examples_file):
    batches = stream(examples_file, seed=3, epoch=0)
    ids = [i for batch in batches for i in row_ids(batch)]
    assert sorted(ids) == list(range(50))
    assert ids != list(range(50))
    assert len(batches) == 7 and all(len(b["weight"]) == 8 for b in batches)
    assert sum(b["weight"].sum() for b in batches) == 50


def test_train_batches_pad_like_load_split(examples_file):
    (batch,) = stream(examples_file, shuffle=False, batch_size=64)
    whole = batch_from_table(pq.read_table(examples_file), history_length=4, num_candidates=3)
    np.testing.assert_array_equal(batch["history"][:50], whole.history)
    np.testing.assert_array_equal(batch["history_length"][:50], whole.history_length)
    np.testing.assert_array_equal(batch["candidates"][:50], whole.candidates)
    np.testing.assert_array_equal(batch["labels"][:50], whole.labels)


@pytest.mark.parametrize("shuffle", [False, True])
def test_train_batches_are_the_same_from_either_layout(examples_file, compact_file, shuffle):
    assert ExamplesFile(compact_file).layout == "compact"
    expected = stream(examples_file, seed=5, shuffle=shuffle, shard=(1, 2))
    received = stream(compact_file, seed=5, shuffle=shuffle, shard=(1, 2))
    assert len(received) == len(expected) > 0
    for want, got in zip(expected, received, strict=True):
        assert want.keys() == got.keys()
        for key in want:
            np.testing.assert_array_equal(got[key], want[key], err_msg=key)
    whole = load_split(compact_file.parent, "train", history_length=4, num_candidates=3)
    assert whole.table.equals(pq.read_table(examples_file))
    (compact_file.parent / "clicks.parquet").unlink()  # refused up front, not mid-stream
    with pytest.raises(FileNotFoundError, match="clicks.parquet is missing"):
        split_size(compact_file.parent, "train")


def test_epoch_order_is_a_function_of_seed_and_epoch(examples_file):
    def order(seed, epoch):
        return [i for b in stream(examples_file, seed=seed, epoch=epoch) for i in row_ids(b)]

    assert order(1, 0) == order(1, 0)
    assert order(1, 0) != order(1, 1)
    assert order(1, 0) != order(2, 0)


def test_start_batch_skips_exactly_the_done_batches(examples_file):
    full = stream(examples_file, seed=5, epoch=2)
    resumed = stream(examples_file, seed=5, epoch=2, start_batch=3)
    assert len(resumed) == len(full) - 3
    for a, b in zip(resumed, full[3:], strict=True):
        np.testing.assert_array_equal(a["history"], b["history"])


def test_replica_slices_together_make_the_global_batch(examples_file):
    options = {"history_length": 4, "num_candidates": 3, "batch_size": 8, "seed": 1}
    whole = list(make_train_dataset(examples_file, **options).as_numpy_iterator())
    halves = [
        list(make_train_dataset(examples_file, replicas=(r, 1, 2), **options).as_numpy_iterator())
        for r in (0, 1)
    ]
    both = list(
        make_train_dataset(examples_file, replicas=(0, 2, 2), **options).as_numpy_iterator()
    )
    assert len(whole) == len(halves[0]) == len(halves[1]) == len(both) // 2 == 7
    for step, (features, labels, weights) in enumerate(whole):
        parts = [halves[0][step], halves[1][step]]
        np.testing.assert_array_equal(
            np.concatenate([p[0]["history"] for p in parts]), features["history"]
        )
        np.testing.assert_array_equal(np.concatenate([p[1] for p in parts]), labels)
        np.testing.assert_array_equal(np.concatenate([p[2] for p in parts]), weights)
        np.testing.assert_array_equal(both[2 * step + 1][2], halves[1][step][2])
        real = (weights > 0).sum()
        assert weights.sum() == pytest.approx(1.0)
        np.testing.assert_allclose(weights[weights > 0], 1.0 / real)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"batch_size": 0}, "batch_size=0"),
        ({"shuffle_buffer": -1}, "shuffle_buffer=-1"),
        ({"start_batch": -2}, "start_batch=-2"),
    ],
)
def test_train_batches_check_arguments(examples_file, options, message):
    with pytest.raises(ValueError, match=message):
        stream(examples_file, **options)


def test_make_train_dataset_checks_replicas(examples_file):
    options = {"history_length": 4, "num_candidates": 3}
    with pytest.raises(ValueError, match=r"replicas=\(2, 1, 2\)"):
        make_train_dataset(examples_file, batch_size=8, replicas=(2, 1, 2), **options)
    with pytest.raises(ValueError, match="batch_size=9"):
        make_train_dataset(examples_file, batch_size=9, replicas=(0, 1, 2), **options)


def test_stream_refuses_a_file_with_the_wrong_schema(tmp_path):
    path = tmp_path / "train.parquet"
    pq.write_table(pa.table({"history": pa.array([[1]], pa.list_(pa.int64()))}), path)
    with pytest.raises(ValueError, match="example_key"):
        stream(path)


def test_candidate_width_from_manifest_or_data(tmp_path):
    pq.write_table(numbered_examples(7, num_candidates=3), tmp_path / "train.parquet")
    assert candidate_width(tmp_path) == 3  # scanned: no manifest
    (tmp_path / "manifest.json").write_text('{"num_negatives": 4}')
    assert candidate_width(tmp_path) == 5
    assert split_size(tmp_path, "train") == 7


def test_parallel_reads_cover_the_epoch_in_a_fixed_order(examples_file):
    options = {"history_length": 4, "num_candidates": 3, "batch_size": 8, "seed": 2}

    def ids(**more):
        dataset = make_train_dataset(examples_file, parallel_reads=3, **options, **more)
        rows = []
        for features, _, weights in dataset.as_numpy_iterator():
            batch = {**features, "weight": weights}
            rows.append(row_ids(batch))
        return rows

    batches = ids()
    assert sorted(i for batch in batches for i in batch) == list(range(50))
    assert ids() == batches
    assert ids(start_batch=2) == batches[2:]
    with pytest.raises(ValueError, match="parallel_reads=0"):
        make_train_dataset(examples_file, parallel_reads=0, **options)
