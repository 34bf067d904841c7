"""Negatives: live items only, never the positive, deterministic in (seed, example key)."""

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from pipelines.negatives import (
    ActivityAccumulator,
    NegativeSampler,
    choose_negatives,
    hash_append_int,
    hash_strings,
    matrix_to_lists,
    merge_intervals,
    parse_duration,
    sample_negatives,
    splitmix64,
    uniform_draws,
)


def events(rows):
    """Canonical events from (item, time, label) tuples (one user)."""
    items, times, labels = zip(*rows, strict=True)
    n = len(rows)
    return pa.table(
        {
            "user_id": pa.array(["u"] * n),
            "item_id": pa.array(items, pa.string()),
            "time": pa.array(times, pa.int64()),
            "label": pa.array(labels, pa.int8()),
            "impression_id": pa.nulls(n, pa.string()),
            "session_id": pa.nulls(n, pa.string()),
            "source_file": pa.array(["f"] * n),
            "source_line": pa.array(range(n), pa.int64()),
        }
    )


def examples(rows):
    keys, times, items = zip(*rows, strict=True)
    return pa.table(
        {
            "example_key": pa.array(keys, pa.string()),
            "time": pa.array(times, pa.int64()),
            "item_id": pa.array(items, pa.string()),
        }
    )


# Items first seen at their number: i0 at 0, i1 at 10, ..., i9 at 90.
CATALOG = events([(f"i{k}", 10 * k, 1) for k in range(10)] + [("i0", 95, 1), ("i5", 95, 0)])


def first_seen(table):
    return {
        row["item_id"]: row["time_min"]
        for row in table.group_by("item_id").aggregate([("time", "min")]).to_pylist()
    }


def test_fnv1a_known_vectors():
    # Published FNV-1a 64 test vectors.
    assert hash_strings(["", "a", "foobar"]).tolist() == [
        0xCBF29CE484222325,
        0xAF63DC4C8601EC8C,
        0x85944171F73967E8,
    ]


def test_hash_continuations_equal_whole_strings():
    prefixes = ["u1", "", "ü", "user-42"]
    numbers = np.array([0, 9, 10, 12345])
    whole = hash_strings([f"{p}/{n}" for p, n in zip(prefixes, numbers, strict=True)])
    assert hash_append_int(hash_strings(prefixes), numbers).tolist() == whole.tolist()
    assert (
        hash_strings(["cd"], initial=hash_strings(["ab"])).tolist()
        == hash_strings(["abcd"]).tolist()
    )


def test_splitmix64_reference_value():
    # The first output of the reference SplitMix64 generator seeded with 0.
    assert splitmix64(np.array([0], np.uint64)).tolist() == [0xE220A8397B1DCDAF]


def test_uniform_draws_are_in_unit_interval_and_differ_by_counter():
    streams = np.arange(1000, dtype=np.uint64)
    first, second = uniform_draws(streams, 0), uniform_draws(streams, 1)
    assert ((first >= 0) & (first < 1)).all()
    assert not np.array_equal(first, second)
    assert abs(first.mean() - 0.5) < 0.05


@pytest.mark.parametrize("sampling", ["uniform", "popularity"])
@pytest.mark.parametrize("window", [None, 25])
def test_negatives_are_live_and_never_the_positive(sampling, window):
    asked = examples([(f"k{j}", t, f"i{t // 10}") for j, t in enumerate(range(0, 100, 5))])
    result = sample_negatives(
        CATALOG, asked, num_negatives=3, seed=1, sampling=sampling, window=window
    )
    seen = first_seen(CATALOG)
    click_times = {}
    for row in CATALOG.to_pylist():
        click_times.setdefault(row["item_id"], []).append((row["time"], row["label"]))
    total = 0
    for row in result.to_pylist():
        negatives = row["negatives"]
        total += len(negatives)
        assert row["item_id"] not in negatives
        assert len(set(negatives)) == len(negatives)
        for item in negatives:
            assert seen[item] <= row["time"], (row, item)  # never first seen after the example
            if window is not None:
                low = row["time"] - window
                needed = 1 if sampling == "popularity" else None  # popularity: clicks only
                assert any(
                    low <= t <= row["time"] and (needed is None or label == needed)
                    for t, label in click_times[item]
                ), (row, item)
    assert total > 0


def test_uniform_pool_by_hand():
    """At t=15 only i0 and i1 exist; i1 is the positive, so the only negative is i0."""
    result = sample_negatives(CATALOG, examples([("k", 15, "i1")]), num_negatives=4)
    assert result.column("negatives").to_pylist() == [["i0"]]


def test_window_by_hand():
    """At t=95 with a 10 ms window, items seen in [85, 95]: i9 (90), i0 and i5 (95)."""
    result = sample_negatives(CATALOG, examples([("k", 95, "i9")]), num_negatives=4, window="10ms")
    assert sorted(result.column("negatives").to_pylist()[0]) == ["i0", "i5"]
    popular = sample_negatives(
        CATALOG, examples([("k", 95, "i9")]), num_negatives=4, window=10, sampling="popularity"
    )
    assert popular.column("negatives").to_pylist() == [["i0"]]  # i5 was shown, not clicked


def test_empty_pool_gives_no_negatives():
    result = sample_negatives(CATALOG, examples([("k", 0, "i0")]), num_negatives=3)
    assert result.column("negatives").to_pylist() == [[]]


def test_deterministic_in_seed_and_key_and_independent_of_row_order():
    asked = examples([(f"user/{j}", 50 + j, f"i{j % 5}") for j in range(30)])
    first = sample_negatives(CATALOG, asked, num_negatives=3, seed=7)
    rng = np.random.default_rng(0)
    shuffled_events = CATALOG.take(pa.array(rng.permutation(CATALOG.num_rows)))
    shuffled_examples = asked.take(pa.array(rng.permutation(asked.num_rows)))
    second = sample_negatives(shuffled_events, shuffled_examples, num_negatives=3, seed=7)
    by_key = dict(
        zip(
            second.column("example_key").to_pylist(),
            second.column("negatives").to_pylist(),
            strict=True,
        )
    )
    for key, negatives in zip(
        first.column("example_key").to_pylist(), first.column("negatives").to_pylist(), strict=True
    ):
        assert by_key[key] == negatives
    # One example alone gets what it got among the others.
    alone = sample_negatives(CATALOG, asked.slice(4, 1), num_negatives=3, seed=7)
    assert alone.column("negatives").to_pylist() == first.column("negatives").to_pylist()[4:5]
    other_seed = sample_negatives(CATALOG, asked, num_negatives=3, seed=8)
    assert other_seed.column("negatives").to_pylist() != first.column("negatives").to_pylist()


def test_uniform_sampling_is_roughly_uniform():
    log = events([(f"i{k}", 0, 1) for k in range(5)])
    asked = examples([(f"k{j}", 1, "i0") for j in range(4000)])
    result = sample_negatives(log, asked, num_negatives=1, seed=3)
    counts = pc.value_counts(pc.list_flatten(result.column("negatives"))).to_pylist()
    frequencies = {row["values"]: row["counts"] / 4000 for row in counts}
    assert set(frequencies) == {"i1", "i2", "i3", "i4"}
    assert all(abs(f - 0.25) < 0.03 for f in frequencies.values())


def test_popularity_sampling_follows_clicks_up_to_the_example_time():
    # i1 clicked 3x before t=10, i2 once; i3 clicked 100x after t=10 (must not count).
    rows = [("i1", 1, 1)] * 3 + [("i2", 2, 1)] + [("i3", 20, 1)] * 100 + [("i0", 0, 1)]
    asked = examples([(f"k{j}", 10, "i0") for j in range(4000)])
    result = sample_negatives(events(rows), asked, num_negatives=1, sampling="popularity")
    counts = {
        row["values"]: row["counts"]
        for row in pc.value_counts(pc.list_flatten(result.column("negatives"))).to_pylist()
    }
    assert set(counts) == {"i1", "i2"}
    assert abs(counts["i1"] / 4000 - 0.75) < 0.03


def test_sampler_is_independent_of_how_events_were_batched():
    rng = np.random.default_rng(5)
    items, times = rng.integers(0, 50, 400), rng.integers(0, 1000, 400)
    labels = rng.integers(0, 2, 400)
    keys = hash_strings([f"k{j}" for j in range(200)])
    query_times, positives = rng.integers(0, 1100, 200), rng.integers(0, 50, 200)
    for sampling, window in [("uniform", None), ("uniform", 40), ("popularity", 40)]:
        whole = NegativeSampler.from_events(
            items, times, labels, num_items=50, sampling=sampling, window=window
        )
        accumulator = ActivityAccumulator(50, sampling=sampling, window=window)
        for part in np.array_split(rng.permutation(400), 3):
            accumulator.add(items[part], times[part], labels[part])
        batched = accumulator.build()
        np.testing.assert_array_equal(
            whole.sample(keys, query_times, positives, 4, seed=2),
            batched.sample(keys, query_times, positives, 4, seed=2),
        )


def test_merge_intervals_by_hand():
    items, starts, ends = merge_intervals(
        np.array([1, 1, 1, 0, 1]), np.array([0, 5, 20, 3, 2]), np.array([4, 8, 25, 4, 6])
    )
    assert list(zip(items.tolist(), starts.tolist(), ends.tolist(), strict=True)) == [
        (0, 3, 4),
        (1, 0, 8),
        (1, 20, 25),
    ]


def test_choose_negatives_from_impression_pools():
    pools = pa.array([["a", "b", "c", "d"], ["x"], []])
    chosen = choose_negatives(["k1", "k2", "k3"], pools, num_negatives=2, seed=0).to_pylist()
    assert len(chosen[0]) == 2 and set(chosen[0]) <= {"a", "b", "c", "d"}
    assert len(set(chosen[0])) == 2
    assert chosen[1:] == [["x"], []]  # fewer than K: what exists
    # Deterministic per (seed, key), whatever the other rows are.
    alone = choose_negatives(["k1"], pools.slice(0, 1), num_negatives=2, seed=0).to_pylist()
    assert alone == chosen[:1]
    reordered = choose_negatives(["k1"], pa.array([["d", "c", "b", "a"]]), num_negatives=4)
    assert sorted(reordered.to_pylist()[0]) == ["a", "b", "c", "d"]
    assert choose_negatives(
        ["k1"], pa.array([["d", "c", "b", "a"]]), num_negatives=4
    ).to_pylist() == (
        choose_negatives(["k1"], pa.array([["a", "b", "c", "d"]]), num_negatives=4).to_pylist()
    )


@pytest.mark.parametrize(
    "value, expected",
    [
        (None, None),
        (500, 500),
        ("500ms", 500),
        ("90s", 90_000),
        ("6h", 21_600_000),
        ("1.5d", 129_600_000),
    ],
)
def test_parse_duration(value, expected):
    assert parse_duration(value) == expected


@pytest.mark.parametrize("value", ["soon", "-3h", 0, "0s"])
def test_parse_duration_rejects(value):
    with pytest.raises(ValueError, match="negative_window="):
        parse_duration(value)


def test_argument_checks_quote_the_value():
    with pytest.raises(ValueError, match="negative_sampling='often'"):
        sample_negatives(CATALOG, examples([("k", 1, "i0")]), num_negatives=1, sampling="often")
    with pytest.raises(ValueError, match="num_negatives=-1"):
        sample_negatives(CATALOG, examples([("k", 1, "i0")]), num_negatives=-1)


@pytest.mark.parametrize(
    "rows",
    [
        [[3, 1, 4], [1, 5, 9]],  # every row full
        [[3, 1, -1], [-1, -1, -1], [2, 6, 5]],  # some rows stop early
    ],
    ids=["full", "ragged"],
)
@pytest.mark.parametrize("order", ["C", "F"])
def test_matrix_to_lists_keeps_each_row_prefix(rows, order):
    matrix = np.array(rows, np.int32, order=order)

    lists = matrix_to_lists(matrix)

    assert lists.to_pylist() == [[v for v in row if v >= 0] for row in rows]
    assert lists.type.value_type == pa.int32()
    names = pa.array(["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"])
    assert matrix_to_lists(matrix, names).to_pylist() == [
        [names[v].as_py() for v in row if v >= 0] for row in rows
    ]
