"""Histories: strictly-before clicks, most recent L, vectorised gathers."""

import numpy as np
import pyarrow as pa
import pytest

from pipelines.sequences import (
    build_histories,
    gather_lists,
    history_bounds,
    last_n,
    pack_user_time,
    sort_by_user_time,
    sorted_unique,
)


def events(rows):
    """Canonical events from (user, item, time, label) tuples."""
    users, items, times, labels = zip(*rows, strict=True)
    n = len(rows)
    return pa.table(
        {
            "user_id": pa.array(users, pa.string()),
            "item_id": pa.array(items, pa.string()),
            "time": pa.array(times, pa.int64()),
            "label": pa.array(labels, pa.int8()),
            "impression_id": pa.nulls(n, pa.string()),
            "session_id": pa.nulls(n, pa.string()),
            "source_file": pa.array(["f"] * n),
            "source_line": pa.array(range(1, n + 1), pa.int64()),
        }
    )


def queries(rows):
    users, times = zip(*rows, strict=True)
    return pa.table({"user_id": pa.array(users, pa.string()), "time": pa.array(times, pa.int64())})


LOG = events(
    [
        ("u", "a", 10, 1),
        ("v", "x", 11, 1),
        ("u", "b", 20, 1),
        ("u", "c", 20, 1),  # same time as b
        ("u", "shown", 25, 0),  # not a click: never in a history
        ("u", "d", 30, 1),
        ("v", "y", 40, 1),
    ]
)


def test_histories_by_hand():
    result = build_histories(
        LOG,
        queries([("u", 10), ("u", 20), ("u", 21), ("u", 31), ("v", 40), ("w", 50)]),
        history_length=10,
    )
    assert result.column("history").to_pylist() == [
        [],  # u's first click: nothing before it
        ["a"],
        ["a", "b", "c"],
        ["a", "b", "c", "d"],
        ["x"],
        [],  # unknown user
    ]
    assert result.column("history_length").to_pylist() == [0, 1, 3, 4, 1, 0]
    assert result.column("history_length").type == pa.int32()


def test_same_timestamp_clicks_never_leak():
    """Every history item is strictly older than its example; fails if `<=` were used."""
    clicks = LOG.filter(pa.compute.equal(LOG.column("label"), 1))
    asked = queries(
        list(
            zip(
                clicks.column("user_id").to_pylist(), clicks.column("time").to_pylist(), strict=True
            )
        )
    )
    result = build_histories(LOG, asked, history_length=10)
    time_of = dict(
        zip(clicks.column("item_id").to_pylist(), clicks.column("time").to_pylist(), strict=True)
    )
    for row in result.to_pylist():
        assert all(time_of[item] < row["time"] for item in row["history"]), row
    # b and c (both at t=20) do not see each other.
    assert result.column("history").to_pylist()[2:4] == [["a"], ["a"]]


def test_truncation_keeps_most_recent_clicks_oldest_first():
    result = build_histories(LOG, queries([("u", 31)]), history_length=2)
    assert result.column("history").to_pylist() == [["c", "d"]]
    assert result.column("history_length").to_pylist() == [2]


def test_history_length_zero_gives_empty_lists():
    result = build_histories(LOG, queries([("u", 31)]), history_length=0)
    assert result.column("history").to_pylist() == [[]]


def test_ties_keep_input_order():
    log = events([("u", "first", 5, 1), ("u", "second", 5, 1)])
    assert build_histories(log, queries([("u", 6)]), history_length=5).column(
        "history"
    ).to_pylist() == [["first", "second"]]
    flipped = events([("u", "second", 5, 1), ("u", "first", 5, 1)])
    assert build_histories(flipped, queries([("u", 6)]), history_length=5).column(
        "history"
    ).to_pylist() == [["second", "first"]]


def test_history_bounds_arrays():
    start, end = history_bounds(
        click_users=np.array([0, 0, 0, 1]),
        click_times=np.array([1, 2, 3, 1]),
        query_users=np.array([0, 0, 1, 1]),
        query_times=np.array([3, 9, 1, 2]),
        history_length=1,
    )
    assert start.tolist() == [1, 2, 3, 3]
    assert end.tolist() == [2, 3, 3, 4]


def test_history_bounds_rejects_negative_length():
    with pytest.raises(ValueError, match="history_length=-1"):
        history_bounds(np.array([0]), np.array([0]), np.array([0]), np.array([0]), -1)


def brute_force(click_users, click_times, query_users, query_times, length):
    """Per query, the indices of the user's clicks strictly before its time (last `length`)."""
    out = []
    for user, time in zip(query_users, query_times, strict=True):
        before = [
            i
            for i, (u, t) in enumerate(zip(click_users, click_times, strict=True))
            if u == user and t < time
        ]
        out.append(before[max(0, len(before) - length) :] if length else [])
    return out


@pytest.mark.parametrize("time_scale", [1, 10**17], ids=["packed", "ranked"])
def test_history_bounds_equal_brute_force(time_scale):
    """Packing (user, time) into one key, or ranking huge times first, gives the same answer."""
    rng = np.random.default_rng(7)
    users = rng.integers(0, 5, 60)
    times = rng.integers(-20, 20, 60) * time_scale
    order = sort_by_user_time(users, times)
    users, times = users[order], times[order]
    query_users = rng.integers(0, 6, 40)
    query_times = rng.integers(-25, 25, 40) * time_scale
    start, end = history_bounds(users, times, query_users, query_times, 3)
    got = [list(range(s, e)) for s, e in zip(start, end, strict=True)]
    assert got == brute_force(users, times, query_users, query_times, 3)


def test_pack_user_time_orders_like_pairs():
    users = np.array([0, 0, 1, 1, 2])
    times = np.array([5, -3, 2**62, -(2**62), 0])
    (keys,) = pack_user_time(users, times)
    assert np.argsort(keys).tolist() == np.lexsort((times, users)).tolist()


def test_gather_lists_numpy_and_arrow_values():
    starts, ends = np.array([0, 2, 1]), np.array([2, 2, 4])
    from_numpy = gather_lists(starts, ends, np.array([10, 11, 12, 13]), pa.int32())
    from_arrow = gather_lists(starts, ends, pa.array(["a", "b", "c", "d"]))
    assert from_numpy.to_pylist() == [[10, 11], [], [11, 12, 13]]
    assert from_numpy.type == pa.list_(pa.int32())
    assert from_arrow.to_pylist() == [["a", "b"], [], ["b", "c", "d"]]


def test_last_n_on_a_sliced_array_with_nulls():
    lists = pa.array([["a", "b", "c"], ["d", "e"], None, [], ["f"]]).slice(1)
    assert last_n(lists, 1).to_pylist() == [["e"], [], [], ["f"]]
    assert last_n(lists, 5).to_pylist() == [["d", "e"], [], [], ["f"]]


@pytest.mark.parametrize("size", [0, 1, 500])
def test_sorted_unique_equals_numpy_unique(size):
    values = np.random.default_rng(size).integers(-50, 50, size)
    np.testing.assert_array_equal(sorted_unique(values), np.unique(values))
