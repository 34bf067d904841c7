"""Causal next-item training: data, the objective, and a run evaluated by the next-item protocol."""

import collections
import json

import keras
import numpy as np
import pyarrow as pa
import pytest

from feedrec.config import Config, ModelConfig, TrainConfig
from feedrec.data import Batch, load_split
from feedrec.evaluation import (
    click_log,
    earlier_items,
    evaluate_run,
    format_table,
    resolve_protocol,
)
from feedrec.layers import FreshnessBias
from feedrec.models.recommender import build_model
from feedrec.next_item import FULL
from feedrec.sequential import (
    NextItemTrainer,
    SequentialConfig,
    batch_indices,
    click_order,
    compile_trainer,
    count_batches,
    history_columns,
    load_training_sequences,
    sampled_softmax_logits,
    sequence_batches,
    sequence_dataset,
    sequences_from_examples,
    train_sequential,
)
from pipelines.dataset import load_manifest
from pipelines.dataset import load_split as load_examples

TINY = ModelConfig(
    history_length=6,
    embedding_dim=8,
    num_heads=2,
    num_layers=1,
    feed_forward_dim=16,
    dropout=0.0,
    pooling="last",
    item_features=(),
)


def examples(rows):
    """A click-log examples table from ``(user, n, time, history, clicked)`` tuples."""
    return pa.table(
        {
            "example_key": [f"{user}/{n}" for user, n, *_ in rows],
            "user_id": [user for user, *_ in rows],
            "time": pa.array([time for _, _, time, _, _ in rows], pa.int64()),
            "history": pa.array([history for *_, history, _ in rows], pa.list_(pa.int32())),
            "candidates": pa.array([[clicked, 9] for *_, clicked in rows], pa.list_(pa.int32())),
            "labels": pa.array([[1, 0] for _ in rows], pa.list_(pa.int8())),
        }
    )


# ---------------------------------------------------------------- sequences


def test_sequence_is_the_last_history_plus_its_click_shifted_by_one():
    table = examples(
        [
            ("b", 0, 5, [], 7),
            ("a", 1, 10, [2], 3),
            ("a", 2, 20, [2, 3], 4),
            ("a", 0, 1, [], 2),
            ("b", 1, 6, [7], 8),
        ]
    )
    seqs = sequences_from_examples(table, max_length=4)
    assert seqs.users.tolist() == ["b", "a"] or seqs.users.tolist() == ["a", "b"]
    by_user = {user: row for row, user in enumerate(seqs.users)}
    a, b = by_user["a"], by_user["b"]
    assert seqs.items[a].tolist() == [2, 3, 0, 0] and seqs.lengths[a] == 2
    assert seqs.targets[a].tolist() == [3, 4, 0, 0]
    assert seqs.items[b].tolist() == [7, 0, 0, 0]
    assert seqs.targets[b].tolist() == [8, 0, 0, 0]
    assert seqs.num_targets == 3


def test_long_sequences_keep_the_most_recent_clicks():
    table = examples([("u", 9, 90, [2, 3, 4, 5, 6, 7], 8)])
    seqs = sequences_from_examples(table, max_length=3)
    assert seqs.items[0].tolist() == [5, 6, 7]
    assert seqs.targets[0].tolist() == [6, 7, 8]


def test_since_trains_only_the_targets_clicked_in_the_window():
    table = examples(
        [
            ("u", 0, 1, [], 2),
            ("u", 1, 2, [2], 3),
            ("u", 2, 30, [2, 3], 4),
            ("u", 3, 40, [2, 3, 4], 5),
        ]
    )
    seqs = sequences_from_examples(table, max_length=5, since=30)
    assert seqs.items[0].tolist() == [2, 3, 4, 0, 0]
    assert seqs.targets[0].tolist() == [0, 4, 5, 0, 0]  # targets 4 and 5 were clicked at >= 30


def user_log(user, items, start_time=0, first_history=()):
    """One user's click-log rows: click ``k`` at ``start_time + k`` after the earlier ones."""
    before = list(first_history)
    rows = []
    for k, item in enumerate(items):
        rows.append((user, k, start_time + k, list(before), item))
        before.append(item)
    return rows


def test_all_windows_cut_the_whole_sequence_from_its_end():
    table = examples(user_log("u", [2, 3, 4, 5, 6, 7, 8]) + user_log("v", [10, 11]))
    seqs = sequences_from_examples(table, max_length=3, windows="all")
    rows = {
        (u, tuple(i[:n])): tuple(t[:n])
        for u, i, t, n in zip(seqs.users, seqs.items, seqs.targets, seqs.lengths, strict=True)
    }
    assert rows == {
        ("u", (5, 6, 7)): (6, 7, 8),
        ("u", (2, 3, 4)): (3, 4, 5),
        ("v", (10,)): (11,),
    }
    assert (seqs.items[seqs.lengths < 3][:, 1:] == 0).all()  # right-padded


def test_all_windows_train_every_click_once_and_end_with_the_last_window():
    rng = np.random.default_rng(3)
    rows, tokens = [], []
    for user in range(12):
        clicks = rng.integers(2, 40, size=int(rng.integers(1, 30))).tolist()
        before = rng.integers(2, 40, size=user % 3).tolist()
        rows += user_log(f"u{user}", clicks, first_history=before)
        tokens.append(before + clicks)
    table = examples(rows)
    for length in (1, 4, 7, 50):
        every = sequences_from_examples(table, max_length=length, windows="all")
        # every click but a user's first is a target exactly once
        expected = sorted(sum((t[1:] for t in tokens), []))
        assert sorted(every.targets[every.targets > 0].tolist()) == expected, length
        assert (
            every.items[:, 1:][every.targets[:, 1:] > 0]
            == every.targets[:, :-1][every.targets[:, 1:] > 0]
        ).all()
        # the most recent window of each user is the "last" sequence
        last = sequences_from_examples(table, max_length=length, windows="last")
        for row, user in enumerate(last.users):
            newest = np.flatnonzero(every.users == user)[0]
            assert every.items[newest].tolist() == last.items[row].tolist(), (user, length)
            assert every.targets[newest].tolist() == last.targets[row].tolist(), (user, length)


def test_overlapping_windows_train_each_click_once_with_at_least_l_minus_s_before_it():
    table = examples(user_log("u", [2, 3, 4, 5, 6, 7, 8, 9]) + user_log("v", [10, 11]))
    seqs = sequences_from_examples(table, max_length=4, windows="all", stride=2)
    rows = [
        (u, tuple(i[:n]), tuple(t[:n]))
        for u, i, t, n in zip(seqs.users, seqs.items, seqs.targets, seqs.lengths, strict=True)
    ]
    # u's 7 inputs: windows end at inputs 7, 5, 3; each trains its newest 2 targets,
    # the oldest (from the first input) all of its own
    assert rows == [
        ("u", (5, 6, 7, 8), (0, 0, 8, 9)),
        ("u", (3, 4, 5, 6), (0, 0, 6, 7)),
        ("u", (2, 3, 4), (3, 4, 5)),
        ("v", (10,), (11,)),
    ]


def trained_positions(seqs):
    """A count of ``(user, inputs up to and including a trained position, its target)``."""
    found = collections.Counter()
    for user, items, targets in zip(seqs.users, seqs.items, seqs.targets, strict=True):
        for position in np.flatnonzero(targets):
            found[user, tuple(items[: position + 1].tolist()), int(targets[position])] += 1
    return found


def random_log(seed, users, items, max_clicks, max_before):
    """Random users' click-log examples and each user's whole sequence (history + clicks)."""
    rng = np.random.default_rng(seed)
    rows, tokens = [], {}
    for user in range(users):
        clicks = rng.integers(2, items, size=int(rng.integers(1, max_clicks))).tolist()
        before = rng.integers(2, items, size=user % max_before).tolist()
        rows += user_log(f"u{user}", clicks, first_history=before)
        tokens[f"u{user}"] = before + clicks
    return examples(rows), tokens


def test_overlapping_windows_see_the_most_recent_context_the_window_allows():
    table, tokens = random_log(5, users=10, items=40, max_clicks=40, max_before=4)
    for length, stride in ((5, 1), (5, 2), (5, 3), (8, 5), (3, 3), (1, 1)):
        seqs = sequences_from_examples(table, max_length=length, windows="all", stride=stride)
        found = trained_positions(seqs)
        # the windows, one at a time: end at the last input, then every
        # `stride` inputs back, until one starts at the first input
        expected = collections.Counter()
        for user, sequence in tokens.items():
            end = len(sequence) - 1  # inputs; the target of input p is sequence[p + 1]
            while end > 0:
                start = max(0, end - length)
                for p in range(start if start == 0 else end - stride, end):
                    expected[user, tuple(sequence[start : p + 1]), sequence[p + 1]] += 1
                    assert p + 1 - start >= min(p + 1, length - stride + 1)
                if start == 0:
                    break
                end -= stride
        assert found == expected, (length, stride)


def test_earlier_clicks_and_the_window_are_the_users_sequence_up_to_its_last_input():
    table, tokens = random_log(8, users=12, items=500, max_clicks=30, max_before=5)
    for length, stride in ((4, 1), (4, 3), (6, 6), (1, 1)):
        seqs = sequences_from_examples(
            table, max_length=length, windows="all", stride=stride, earlier=True
        )
        ends = collections.defaultdict(list)
        for row, user in enumerate(seqs.users):
            window = seqs.items[row, : seqs.lengths[row]].tolist()
            earlier = seqs.earlier_clicks(row).tolist()
            ends[user].append(len(earlier) + len(window))
            assert earlier + window == tokens[user][: len(earlier) + len(window)], (length, row)
            assert len(window) == length or not earlier  # only a full window has clicks before
        for user, sequence in tokens.items():  # the windows end every `stride` inputs
            last = len(sequence) - 1
            assert ends.get(user, []) == list(range(last, 0, -stride))[: len(ends.get(user, []))]
            assert ends.get(user, [0])[-1] <= length  # the oldest window starts at the first


def test_earlier_clicks_with_since_start_at_the_whole_first_history():
    table, tokens = random_log(9, users=12, items=500, max_clicks=30, max_before=9)
    for length, stride in ((3, 1), (4, 4)):
        seqs = sequences_from_examples(
            table, length, since=10, windows="all", stride=stride, earlier=True
        )
        assert seqs.num_targets > 0
        for row, user in enumerate(seqs.users):  # with since, the window keeps L items of
            window = seqs.items[row, : seqs.lengths[row]].tolist()  # first history; the
            earlier = seqs.earlier_clicks(row).tolist()  # earlier clicks keep it whole
            assert earlier + window == tokens[user][: len(earlier) + len(window)], (length, row)


def test_only_all_windows_carry_earlier_clicks():
    table = examples([("u", 9, 90, [2, 3, 4, 5, 6, 7], 8), ("v", 1, 5, [10], 11)])
    last = sequences_from_examples(table, max_length=3)
    assert last.earlier is None and last.earlier_clicks(0).tolist() == []
    with pytest.raises(ValueError, match="windows='all'"):
        sequence_dataset(last, batch_size=2, seed=0, earlier=True)
    with pytest.raises(ValueError, match="windows='all'"):
        next(sequence_batches(last, 2, np.random.default_rng(0), earlier=True))
    every = sequences_from_examples(table, max_length=3, windows="all", earlier=True)
    assert every.earlier_clicks(0).tolist() == [2, 3, 4]  # u's window: 5 6 7 (target 8)
    assert sequences_from_examples(table, max_length=3, windows="all").earlier is None
    with pytest.raises(ValueError, match="need windows='all'"):
        sequences_from_examples(table, max_length=3, earlier=True)
    empty = sequences_from_examples(table.slice(0, 0), max_length=3, windows="all", earlier=True)
    assert empty.earlier_spans.shape == (0, 2)


def test_overlapping_windows_with_since_train_only_the_new_clicks_once():
    # the sequence 2, 3, ..., 9: clicks 5..9 at times 10..14 after a history 2, 3, 4;
    # the trained window is t >= 12 (targets 7, 8, 9)
    table = examples(user_log("u", [5, 6, 7, 8, 9], start_time=10, first_history=[2, 3, 4]))
    for stride in (1, 2, 3):
        seqs = sequences_from_examples(table, max_length=3, since=12, windows="all", stride=stride)
        assert sorted(seqs.targets[seqs.targets > 0].tolist()) == [7, 8, 9], stride
        for items, targets in zip(seqs.items, seqs.targets, strict=True):
            for position in np.flatnonzero(targets):
                target, seen = int(targets[position]), position + 1
                assert items[:seen].tolist() == list(range(target - seen, target))
                assert seen >= 3 - stride + 1, (stride, items, targets)


def test_a_stride_of_l_is_the_side_by_side_windows():
    rng = np.random.default_rng(7)
    rows = []
    for user in range(8):
        clicks = rng.integers(2, 30, size=int(rng.integers(1, 25))).tolist()
        rows += user_log(f"u{user}", clicks, first_history=rng.integers(2, 30, size=2).tolist())
    table = examples(rows)
    for length in (1, 3, 6):
        side_by_side = sequences_from_examples(table, max_length=length, windows="all")
        strided = sequences_from_examples(table, max_length=length, windows="all", stride=length)
        for name in ("items", "lengths", "targets", "users"):
            assert getattr(side_by_side, name).tolist() == getattr(strided, name).tolist()


def test_window_stride_is_checked():
    table = examples(user_log("u", [2, 3, 4]))
    with pytest.raises(ValueError, match=r"window_stride.*\[1, L=3\]"):
        sequences_from_examples(table, max_length=3, windows="all", stride=4)
    with pytest.raises(ValueError, match='needs windows="all"'):
        sequences_from_examples(table, max_length=3, stride=2)
    with pytest.raises(ValueError, match='needs windows="all"'):
        SequentialConfig(window_stride=2)
    with pytest.raises(ValueError, match="window_stride"):
        SequentialConfig(windows="all", window_stride=-1)
    assert SequentialConfig(windows="all", window_stride=2).window_stride == 2


def test_all_windows_skip_rows_without_a_click():
    table = examples(user_log("u", [2, 3, 4]))
    labels = pa.array([[1, 0], [0, 0], [1, 0]], pa.list_(pa.int8()))  # row 2: no click
    table = table.set_column(table.schema.get_field_index("labels"), "labels", labels)
    seqs = sequences_from_examples(table, max_length=5, windows="all")
    assert seqs.items[0].tolist() == [2, 0, 0, 0, 0] and seqs.lengths.tolist() == [1]
    assert seqs.targets[0].tolist() == [4, 0, 0, 0, 0]


def test_all_windows_with_since_train_only_the_new_clicks():
    # a window's table: clicks 5, 6, 7 at times 10..12 after earlier clicks 2, 3, 4
    table = examples(user_log("u", [5, 6, 7], start_time=10, first_history=[2, 3, 4]))
    seqs = sequences_from_examples(table, max_length=2, since=11, windows="all")
    assert sorted(seqs.targets[seqs.targets > 0].tolist()) == [6, 7]
    assert 4 in seqs.items  # the click before the window is context
    everything = sequences_from_examples(table, max_length=2, windows="all")
    assert sorted(everything.targets[everything.targets > 0].tolist()) == [3, 4, 5, 6, 7]


def test_click_order_breaks_time_ties_by_click_number():
    table = examples([("u", 10, 5, [], 3), ("u", 2, 5, [], 2), ("u", 1, 1, [], 4)])
    assert click_order(table).tolist() == [2, 1, 0]


def test_batches_cover_every_row_once_and_group_similar_lengths():
    lengths = np.array([1, 9, 2, 8, 3, 7, 1, 9])
    batches = batch_indices(lengths, batch_size=2, rng=np.random.default_rng(0), pool=4)
    assert sorted(np.concatenate(batches).tolist()) == list(range(8))
    spreads = [lengths[b].max() - lengths[b].min() for b in batches]
    assert max(spreads) <= 2
    again = batch_indices(lengths, batch_size=2, rng=np.random.default_rng(0), pool=4)
    assert [b.tolist() for b in batches] == [b.tolist() for b in again]


def test_batches_are_cut_to_a_multiple_of_the_width():
    table = examples([("a", 1, 2, [2, 3], 4), ("b", 1, 2, [5], 6), ("c", 0, 1, [], 7)])
    seqs = sequences_from_examples(table, max_length=40)
    batches = list(sequence_batches(seqs, 8, np.random.default_rng(0), width_multiple=16))
    assert len(batches) == 1 == count_batches(seqs, 8)  # user c has nothing to learn
    inputs, targets = batches[0]
    assert inputs["items"].shape == (2, 16) and targets.shape == (2, 16)
    assert sorted(inputs["lengths"].tolist()) == [1, 2]


def test_dataset_reshuffles_every_epoch_and_accepts_any_width():
    rows = [(f"u{i}", 1, 1, list(range(2, 3 + i)), 40) for i in range(12)]
    seqs = sequences_from_examples(examples(rows), max_length=20)
    dataset = sequence_dataset(seqs, batch_size=4, seed=0, width_multiple=4)
    first = [x["lengths"].numpy().tolist() for x, _ in dataset]
    second = [x["lengths"].numpy().tolist() for x, _ in dataset]
    assert len(first) == count_batches(seqs, 4) == 3
    assert sorted(sum(first, [])) == sorted(sum(second, [])) == list(range(1, 13))
    assert first != second
    widths = {x["items"].shape[1] for x, _ in dataset}
    assert len(widths) > 1 and all(w % 4 == 0 for w in widths)


def test_dataset_batches_are_the_generators_epoch_for_epoch():
    rows = [(f"u{i}", 1, 1, list(range(2, 3 + i % 9)), 40 + i) for i in range(30)]
    seqs = sequences_from_examples(examples(rows), max_length=6, windows="all")
    dataset = sequence_dataset(seqs, batch_size=4, seed=7, width_multiple=4, first_epoch=3)
    for epoch in (3, 4):
        expected = sequence_batches(seqs, 4, np.random.default_rng([7, epoch]), width_multiple=4)
        got = list(dataset)
        assert len(got) == count_batches(seqs, 4)
        for (inputs, targets), (want_inputs, want_targets) in zip(got, expected, strict=True):
            np.testing.assert_array_equal(inputs["items"].numpy(), want_inputs["items"])
            np.testing.assert_array_equal(inputs["lengths"].numpy(), want_inputs["lengths"])
            np.testing.assert_array_equal(targets.numpy(), want_targets)


def test_dataset_and_generator_give_each_row_its_earlier_clicks():
    rows = []
    for user in range(20):
        rows += user_log(f"u{user}", [2 + 100 * user + k for k in range(3 + user)])
    seqs = sequences_from_examples(
        examples(rows), max_length=4, windows="all", stride=2, earlier=True
    )
    assert max(len(seqs.earlier_clicks(r)) for r in range(len(seqs))) > 10
    dataset = sequence_dataset(seqs, batch_size=4, seed=1, width_multiple=4, earlier=True)
    expected = sequence_batches(seqs, 4, np.random.default_rng([1, 0]), 4, earlier=True)
    widths = set()
    for (inputs, _), (want, _) in zip(dataset, expected, strict=True):
        np.testing.assert_array_equal(inputs["earlier"].numpy(), want["earlier"])
        width = want["earlier"].shape[1]  # the smallest power of two: XLA compiles few shapes
        widths.add(width)
        assert width & (width - 1) == 0
        assert width == 1 or (want["earlier"][:, width // 2 :] != 0).any()
        by_row = {tuple(r): e for r, e in zip(seqs.items.tolist(), range(len(seqs)), strict=True)}
        for items, padded in zip(want["items"].tolist(), want["earlier"], strict=True):
            row = by_row[tuple(items + [0] * (4 - len(items)))]
            clicks = seqs.earlier_clicks(row)
            assert padded[: len(clicks)].tolist() == clicks.tolist()
            assert not padded[len(clicks) :].any()
    assert len(widths) > 1
    assert "earlier" not in next(iter(sequence_dataset(seqs, 4, seed=1)))[0]


# ---------------------------------------------------------------- the model


def test_every_position_equals_serving_on_the_prefix():
    keras.utils.set_random_seed(0)
    model = build_model(TINY, num_items=20, causal=True)
    history = np.array([[5, 7, 9, 11, 0, 0]], "int32")
    states = keras.ops.convert_to_numpy(model.sequence_embedding(history, np.array([4])))
    for cut in range(1, 5):
        prefix = np.where(np.arange(6) < cut, history, 0).astype("int32")
        garbage = np.where(np.arange(6) < cut, history, 13).astype("int32")
        for served in (prefix, garbage):
            vector = keras.ops.convert_to_numpy(model.user_embedding(served, np.array([cut])))
            np.testing.assert_allclose(vector[0], states[0, cut - 1], atol=1e-5)
    np.testing.assert_array_equal(states[0, 4:], 0.0)


def test_sampled_logits_correct_by_log_probability_and_mask_accidental_hits():
    states = np.array([[1.0, 0.0], [0.0, 2.0]], "float32")
    vectors = {4: [1.0, 1.0], 5: [0.5, 0.0], 6: [0.0, 1.0]}
    positives = np.array([4, 6])
    negatives = np.array([5, 6])
    probabilities = np.array([0.0, 0.0, 0.1, 0.1, 0.2, 0.4, 0.2], "float32")
    logits = keras.ops.convert_to_numpy(
        sampled_softmax_logits(
            states,
            np.array([vectors[4], vectors[6]], "float32"),
            np.array([vectors[5], vectors[6]], "float32"),
            positives,
            negatives,
            np.log(np.maximum(probabilities, 1e-30)),
        )
    )
    assert logits.shape == (2, 3)
    np.testing.assert_allclose(logits[0], [1 - np.log(0.2), 0.5 - np.log(0.4), -np.log(0.2)])
    np.testing.assert_allclose(logits[1, :2], [2 - np.log(0.2), 0 - np.log(0.4)], rtol=1e-6)
    assert logits[1, 2] < -1e8  # item 6 is row 1's own target


def test_sampled_logits_correct_tail_items_below_one_in_a_million_exactly():
    # keras-rs clips probabilities at 1e-6 by default; a tail item of a large
    # log (q = 1e-8) must still get its full -log q.
    probabilities = np.array([0.0, 0.0, 1e-8, 0.5, 0.5 - 1e-8], "float32")
    logits = keras.ops.convert_to_numpy(
        sampled_softmax_logits(
            np.zeros((1, 2), "float32"),
            np.zeros((1, 2), "float32"),
            np.zeros((2, 2), "float32"),
            np.array([2]),
            np.array([2, 3]),
            np.log(np.maximum(probabilities, 1e-30)),
        )
    )
    np.testing.assert_allclose(logits[0, :1], [-np.log(1e-8)], rtol=1e-6)
    np.testing.assert_allclose(logits[0, 2], -np.log(0.5), rtol=1e-6)


def test_sampled_softmax_trains_and_refuses_too_many_negatives():
    keras.utils.set_random_seed(2)
    model = build_model(TINY, num_items=30, causal=True)
    trainer = NextItemTrainer(model, loss="sampled_softmax", num_negatives=8, seed=3)
    trainer.compile(optimizer=keras.optimizers.Adam(0.05))
    x = {"items": np.array([[2, 3, 4, 5]] * 4, "int32"), "lengths": np.array([4] * 4)}
    y = np.array([[3, 4, 5, 6]] * 4, "int32")
    first = float(trainer.train_on_batch(x, y))
    for _ in range(15):
        last = float(trainer.train_on_batch(x, y))
    assert np.isfinite(last) and last < first
    with pytest.raises(ValueError, match="num_negatives=28"):
        NextItemTrainer(model, loss="sampled_softmax", num_negatives=28)


def trainer_and_batch(loss, item_bias, **kwargs):
    keras.utils.set_random_seed(1)
    model = build_model(TINY, num_items=30, causal=True)
    trainer = NextItemTrainer(model, loss=loss, item_bias=item_bias, **kwargs)
    x = {
        "items": np.array([[2, 3, 4, 0], [5, 0, 0, 0]], "int32"),
        "lengths": np.array([3, 1]),
        "earlier": np.array([[7, 8, 4, 3], [6, 9, 0, 0]], "int32"),  # 6: row 1's target
    }
    y = np.array([[3, 4, 0, 0], [6, 0, 0, 0]], "int32")
    return model, trainer, x, y


def biased(offsets):
    """A FreshnessBias whose offset for item ``i`` is ``offsets[i]`` (one click bucket each)."""
    layer = FreshnessBias(num_items=len(offsets), num_buckets=len(offsets) + 2)
    layer.update(recent_clicks=2.0 ** np.arange(len(offsets)), age=[None] * len(offsets))
    click_weights = np.zeros(len(offsets) + 2, "float32")
    click_weights[1 : len(offsets) + 1] = offsets  # item i's count 2^i is in bucket i + 1
    layer.set_weights([click_weights, *layer.get_weights()[1:]])
    return layer


@pytest.mark.parametrize("exclude_history", [False, True, "window", "all"])
@pytest.mark.parametrize("with_bias", [False, True], ids=["plain", "item_bias"])
def test_full_softmax_loss_by_hand(with_bias, exclude_history):
    offsets = np.random.default_rng(3).normal(size=30).astype("float32") * with_bias
    model, trainer, x, y = trainer_and_batch(
        "full_softmax", biased(offsets) if with_bias else None, exclude_history=exclude_history
    )
    states = trainer(x)  # position (0, 2) has no target: nothing to learn
    loss = float(trainer.compute_loss(x, y, states))
    states = keras.ops.convert_to_numpy(states)
    items = keras.ops.convert_to_numpy(model.item_embedding(np.arange(30)))
    expected = []
    for row, col in [(0, 0), (0, 1), (1, 0)]:
        competing = np.arange(2, 30)  # padding and OOV never compete
        if exclude_history:  # nor, here, the clicks this position has seen
            seen = x["items"][row, : col + 1]
            if exclude_history == "all":  # and those before the window
                seen = np.concatenate([seen, x["earlier"][row]])
            competing = np.setdiff1d(competing, seen[seen != y[row, col]])
        logits = items[competing] @ states[row, col] + offsets[competing]
        target = logits[competing == y[row, col]][0]
        expected.append(np.log(np.exp(logits).sum()) - target)
    assert loss == pytest.approx(np.mean(expected), rel=1e-5)


def random_windows(seed, rows, width, num_items):
    """Random right-padded ``items`` and ``targets`` (some positions without a target)."""
    rng = np.random.default_rng(seed)
    real = np.arange(width) < rng.integers(1, width + 1, size=rows)[:, None]
    items = np.where(real, rng.integers(0, num_items, (rows, width)), 0)
    targets = np.where(real, rng.integers(0, num_items, (rows, width)), 0)
    targets[rng.random(targets.shape) < 0.2] = 0  # positions outside the trained window
    return rng, items, targets


def reference_columns(items, targets, num_items, earlier=None):
    """Position by position, row-major (as tf.boolean_mask orders them): the seen clicks."""
    expected = []
    for b, t in np.argwhere(targets >= 2):
        row = np.zeros(num_items, bool)
        seen = items[b, : t + 1] if earlier is None else [*earlier[b], *items[b, : t + 1]]
        for item in seen:
            row[item] |= item >= 2 and item != targets[b, t]
        expected.append(row)
    return np.array(expected)


def test_history_columns_match_a_position_by_position_reference():
    _, items, targets = random_windows(4, rows=9, width=7, num_items=12)
    items[0, :3], targets[0, :3] = [5, 6, 5], [6, 5, 6]  # re-clicks: the target is never masked
    columns = keras.ops.convert_to_numpy(history_columns(items, targets, 12))
    np.testing.assert_array_equal(columns, reference_columns(items, targets, 12))
    assert columns[:3].tolist() == [
        [i == 5 for i in range(12)],  # seen 5, target 6
        [i == 6 for i in range(12)],  # seen 5 and 6, target 5: 5 competes
        [i == 5 for i in range(12)],
    ]


def test_history_columns_with_earlier_clicks_mask_them_at_every_target_of_the_row():
    rng, items, targets = random_windows(6, rows=8, width=5, num_items=15)
    num_items = 15
    earlier = rng.integers(0, num_items, (8, 6)) * (rng.random((8, 6)) < 0.7)  # 0 = padding
    earlier[0, :2], targets[0, 0] = [9, 9], 9  # an earlier click of the target: it competes
    columns = keras.ops.convert_to_numpy(history_columns(items, targets, num_items, earlier))
    np.testing.assert_array_equal(columns, reference_columns(items, targets, num_items, earlier))
    assert not columns[0, 9] and targets[0, 0] == 9
    window_only = keras.ops.convert_to_numpy(history_columns(items, targets, num_items))
    assert (columns >= window_only).all() and (columns > window_only).any()
    nothing_earlier = history_columns(items, targets, num_items, np.zeros((8, 0), "int32"))
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(nothing_earlier), window_only)


def test_exclude_history_all_needs_the_earlier_clicks_in_the_inputs():
    _, trainer, x, y = trainer_and_batch("full_softmax", None, exclude_history="all")
    del x["earlier"]
    with pytest.raises(ValueError, match=r"earlier=True"):
        trainer.compute_loss(x, y, trainer(x))


@pytest.mark.parametrize("scope", [True, "all"])
def test_exclude_history_trains_the_same_with_xla(scope):
    # the mask is scattered with shapes taken from tensors: XLA compiles it
    losses = {}
    x = {
        "items": np.array([[2, 3, 4, 5], [6, 2, 0, 0]] * 2, "int32"),
        "lengths": np.array([4, 2] * 2),
        "earlier": np.array([[9, 10, 7], [11, 0, 0], [0, 0, 0], [12, 13, 14]], "int32"),
    }
    y = np.array([[3, 4, 5, 6], [2, 7, 0, 0]] * 2, "int32")
    for jit in (False, True):
        keras.utils.set_random_seed(1)
        model = build_model(TINY, num_items=30, causal=True)
        config = Config(model=TINY, train=TrainConfig(batch_size=2, jit_compile=jit))
        sequential = SequentialConfig(windows="all", exclude_history=scope)
        trainer = compile_trainer(model, config, sequential, total_steps=4)
        assert bool(trainer.jit_compile) == jit
        history = trainer.fit(x, y, batch_size=2, epochs=2, shuffle=False, verbose=0)
        losses[jit] = history.history["loss"]
    np.testing.assert_allclose(losses[True], losses[False], rtol=1e-4)


def test_compile_trainer_hands_exclude_history_to_the_loss():
    losses = {}
    for exclude in (False, True, "all"):
        keras.utils.set_random_seed(1)
        model = build_model(TINY, num_items=30, causal=True)
        trainer = compile_trainer(
            model,
            Config(model=TINY),
            SequentialConfig(windows="all", exclude_history=exclude),
            total_steps=1,
        )
        x = {
            "items": np.array([[2, 3, 4, 5]], "int32"),
            "lengths": np.array([4]),
            "earlier": np.array([[8, 9, 10]], "int32"),
        }
        y = np.array([[3, 4, 5, 6]], "int32")
        losses[exclude] = float(trainer.compute_loss(x, y, trainer(x)))
    # fewer competitors, lower cross-entropy
    assert losses["all"] < losses[True] < losses[False]


@pytest.mark.parametrize("loss", ["full_softmax", "sampled_softmax"])
def test_a_constant_bias_leaves_the_loss_alone_and_a_varying_one_does_not(loss):
    losses = {}
    for name, offsets in {
        "none": None,
        "constant": np.full(30, 2.5, "float32"),
        "varying": np.linspace(-3, 3, 30).astype("float32"),
    }.items():
        layer = None if offsets is None else biased(offsets)
        _, trainer, x, y = trainer_and_batch(loss, layer, num_negatives=8, seed=5)
        losses[name] = float(trainer.compute_loss(x, y, trainer(x)))
    assert losses["constant"] == pytest.approx(losses["none"], rel=1e-5)
    assert abs(losses["varying"] - losses["none"]) > 1e-3


def test_the_trainer_learns_the_bias_weights():
    layer = FreshnessBias(num_items=30)  # not built yet: the trainer builds it
    _, trainer, x, y = trainer_and_batch("sampled_softmax", layer, num_negatives=8, seed=3)
    assert layer.built
    layer.update(recent_clicks=np.arange(30), age=np.arange(30))
    trainer.compile(optimizer=keras.optimizers.Adam(0.05))
    for _ in range(3):
        trainer.train_on_batch(x, y)
    assert np.abs(keras.ops.convert_to_numpy(layer.click_weights)).max() > 0
    assert np.abs(keras.ops.convert_to_numpy(layer.age_weights)).max() > 0
    assert any(v is layer.click_weights for v in trainer.trainable_variables)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("objective", "mlm", "objective='mlm'"),
        ("loss", "bpr", "loss='bpr'"),
        ("num_negatives", 0, "num_negatives=0"),
        ("patience", -1, "patience=-1"),
        ("max_train_seconds", 0, "max_train_seconds=0"),
        ("item_embedding_stddev", -0.1, "item_embedding_stddev=-0.1"),
        ("exclude_history", "yes", "exclude_history='yes'"),
        ("exclude_history", 1, "exclude_history=1"),
    ],
)
def test_config_checks_quote_the_value(field, value, message):
    with pytest.raises(ValueError, match=message):
        SequentialConfig(**{field: value})
    with pytest.raises(ValueError, match="unknown setting"):
        SequentialConfig.from_dict({"epochs": 3})


def test_exclude_history_needs_the_full_softmax_and_all_needs_all_windows():
    for scope in (True, "window", "all"):
        with pytest.raises(ValueError, match="loss='sampled_softmax'"):
            SequentialConfig(windows="all", exclude_history=scope, loss="sampled_softmax")
    with pytest.raises(ValueError, match=r"needs windows=\"all\".*Received: windows='last'"):
        SequentialConfig(exclude_history="all")
    assert SequentialConfig(exclude_history=True).to_dict()["exclude_history"] == "window"
    assert SequentialConfig(exclude_history=True) == SequentialConfig(exclude_history="window")
    model = build_model(TINY, num_items=30, causal=True)
    with pytest.raises(ValueError, match="loss='sampled_softmax'"):
        NextItemTrainer(model, loss="sampled_softmax", num_negatives=8, exclude_history=True)


# ---------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def data_dir(ordered_sequences):
    """60 users who each read items in order: after item i comes item i + 1."""
    return ordered_sequences


@pytest.fixture(scope="module")
def run_dir(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "run"
    config = Config(model=TINY, train=TrainConfig(epochs=14, batch_size=20, learning_rate=0.03))
    train_sequential(data_dir, out, config, SequentialConfig(validate_every=5), verbose=0)
    return out


def assert_same_sequences(received, expected):
    assert (received.earlier is None) == (expected.earlier is None)
    for field in ("items", "lengths", "targets", "users"):
        np.testing.assert_array_equal(getattr(received, field), getattr(expected, field))
    for row in range(len(expected)):
        clicks = received.earlier_clicks(row)
        np.testing.assert_array_equal(clicks, expected.earlier_clicks(row))


def test_training_sequences_from_disk(data_dir):
    seqs = load_training_sequences(data_dir, 6)
    assert len(seqs) == 60
    assert (seqs.lengths == 6).all()  # 8 training clicks: 6 inputs kept, 6 targets
    assert seqs.num_targets == 60 * 6
    every = load_training_sequences(data_dir, 6, windows="all", earlier=True)
    assert every.num_targets == 60 * 7  # every training click but the first
    expected = sequences_from_examples(
        load_examples(data_dir, "train"), 6, windows="all", earlier=True
    )
    assert_same_sequences(every, expected)
    strided = load_training_sequences(data_dir, 6, windows="all", stride=2, earlier=True)
    expected = sequences_from_examples(
        load_examples(data_dir, "train"), 6, windows="all", stride=2, earlier=True
    )
    assert_same_sequences(strided, expected)
    assert strided.num_targets == every.num_targets
    assert sorted(strided.lengths.tolist()) != sorted(every.lengths.tolist())


def test_train_sequential_feeds_the_earlier_clicks_to_exclude_history_all(data_dir, tmp_path):
    config = Config(model=TINY, train=TrainConfig(epochs=1, batch_size=20))
    sequential = SequentialConfig(
        windows="all", window_stride=3, exclude_history="all", validate_every=0
    )
    train_sequential(data_dir, tmp_path / "run", config, sequential, verbose=0)
    recorded = json.loads((tmp_path / "run" / "sequential.json").read_text())
    assert recorded["exclude_history"] == "all"
    assert np.isfinite(json.loads((tmp_path / "run" / "history.json").read_text())["loss"]).all()


def test_train_sequential_hands_the_window_stride_to_the_windows(data_dir, tmp_path):
    config = Config(model=TINY, train=TrainConfig(epochs=1, batch_size=20))
    sequential = SequentialConfig(windows="all", window_stride=TINY.history_length + 1)
    with pytest.raises(ValueError, match=rf"\[1, L={TINY.history_length}\]"):
        train_sequential(data_dir, tmp_path / "run", config, sequential, verbose=0)
    assert not (tmp_path / "run").exists()


def test_training_sequences_are_the_same_from_either_layout(data_dir, tmp_path):
    """The compact layout (each click once + offsets) gives the sequences the lists give."""
    from pipelines.prepare import PrepareOptions, prepare

    assert load_manifest(data_dir)["layout"] == "compact"
    options = PrepareOptions(history_length=6, negatives=0, layout="lists")
    lists = tmp_path / "lists"
    prepare("sequences", [data_dir.parent / "log.txt"], lists, options=options)
    for windows in ("last", "all"):
        expected = load_training_sequences(lists, 6, windows=windows, earlier=windows == "all")
        received = load_training_sequences(data_dir, 6, windows=windows, earlier=windows == "all")
        assert_same_sequences(received, expected)


def test_evaluation_picks_the_next_item_protocol_and_beats_the_baselines(run_dir, data_dir):
    assert resolve_protocol(data_dir) == "next_item"
    results = evaluate_run(run_dir, data_dir, "test", sampled=(("uniform", 20),))
    assert results["protocol"] == "next_item"
    assert set(results["protocols"]) == {FULL, "sampled_uniform_20"}
    full = results["protocols"][FULL]
    assert "recent_popularity" not in full  # sequence files have no clock
    assert full["model"]["hr@5"] >= full["popularity"]["hr@5"] + 0.4, full
    assert full["model"]["ndcg@10"] > 0.5, full
    assert "protocol sampled_uniform_20" in format_table(results)


def test_run_directory_records_the_objective(run_dir):
    sequential = json.loads((run_dir / "sequential.json").read_text())
    assert sequential["objective"] == "next_item_causal"
    history = json.loads((run_dir / "history.json").read_text())
    # every 5 epochs, and the last one (the best weights may come from it)
    assert [v["epoch"] for v in history["validations"]] == [5, 10, 14]
    assert history["loss"][-1] < history["loss"][0]


def test_earlier_items_hold_the_whole_history_not_only_the_last_l(data_dir):
    batch = load_split(data_dir, "test", history_length=2)
    seen = earlier_items(click_log(data_dir), batch)
    assert all(len(items) == 9 for items in seen)  # 10 distinct clicks, the target excluded
    targets = batch.candidates[:, 0]
    assert not any(target in items for target, items in zip(targets, seen, strict=True))


def test_cli_trains_with_a_sequential_table_and_evaluates_next_item(data_dir, tmp_path, capsys):
    from feedrec.cli import main

    config = tmp_path / "seq.toml"
    config.write_text(
        "[benchmark]\nname = 'ignored'\n"
        "[model]\nhistory_length = 6\nembedding_dim = 8\nnum_heads = 2\nfeed_forward_dim = 16\n"
        "pooling = 'last'\nitem_features = []\n"
        "[train]\nbatch_size = 20\n"
        "[sequential]\nvalidate_every = 1\n"
    )
    run = tmp_path / "run"
    argv = ["train", str(data_dir), "--out", str(run), "--config", str(config), "--epochs", "1"]
    assert main(argv) == 0
    assert "best epoch 1: validation ndcg@10" in capsys.readouterr().out
    assert json.loads((run / "config.json").read_text())["train"]["epochs"] == 1
    out = tmp_path / "metrics.json"
    assert main(["evaluate", str(run), str(data_dir), "--json", str(out)]) == 0
    assert "protocol full" in capsys.readouterr().out
    written = json.loads(out.read_text())
    assert written["protocol"] == "next_item"
    # 30 items: too few for 100 negatives, so only the full protocol is computed
    assert set(written["protocols"]) == {FULL}


def test_train_sequential_checks_its_directories_before_any_work(data_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="manifest.json not found"):
        train_sequential(tmp_path / "no-data", tmp_path / "run")
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="pass --overwrite"):
        train_sequential(data_dir, taken)
    assert (taken / "keep.txt").read_text() == "x"


def test_cli_refuses_what_the_next_item_objective_does_not_do(data_dir, tmp_path, capsys):
    from feedrec.cli import main

    config = tmp_path / "seq.yaml"
    pytest.importorskip("yaml", reason="PyYAML is optional: YAML configs need it")
    config.write_text("model:\n  history_length: 6\nsequential:\n  validate_every: 1\n")
    run = tmp_path / "run"
    argv = ["train", str(data_dir), "--out", str(run), "--config", str(config)]
    assert main([*argv, "--distribute", "mirrored"]) != 0
    err = capsys.readouterr().err
    assert "trains on one device in float32" in err and "distribute='mirrored'" in err
    assert main([*argv, "--mixed-precision", "bfloat16"]) != 0
    assert "mixed_precision='bfloat16'" in capsys.readouterr().err
    assert not run.exists()


def test_earlier_items_equal_a_per_row_union_on_random_logs():
    rng = np.random.default_rng(7)
    log = pa.table(
        {
            "user_id": rng.choice(["a", "b", "c", "d"], 300).tolist(),
            "time": pa.array(rng.integers(0, 50, 300) * 1_000_000_000_000, pa.int64()),
            "item": pa.array(rng.integers(2, 40, 300), pa.int64()),
        }
    )
    n, width = 25, 6
    lengths = rng.integers(0, width + 1, n).astype(np.int32)
    history = rng.integers(2, 60, (n, width)).astype(np.int32)
    history[np.arange(width) >= lengths[:, None]] = 0
    queries = pa.table(
        {
            "user_id": rng.choice(["a", "b", "c", "e"], n).tolist(),  # e: no earlier clicks
            "time": pa.array(rng.integers(0, 50, n) * 1_000_000_000_000, pa.int64()),
        }
    )
    batch = Batch(
        history, lengths, np.zeros((n, 1), np.int32), np.ones((n, 1), np.float32), queries
    )
    found = earlier_items(log, batch)
    users, times, items = (log.column(c).to_numpy(zero_copy_only=False) for c in log.column_names)
    for row in range(n):
        user, time = queries["user_id"][row].as_py(), queries["time"][row].as_py()
        before = items[(users == user) & (times < time)]  # strictly before: ties excluded
        expected = np.union1d(before, history[row, : lengths[row]])
        np.testing.assert_array_equal(found[row], expected)
    assert (
        earlier_items(
            log, Batch(history[:0], lengths[:0], history[:0], history[:0], queries.slice(0, 0))
        )
        == []
    )
