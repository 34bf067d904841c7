"""Splits: global time cutoffs (event quantiles) and per-user leave-last-out."""

import datetime as dt

import numpy as np
import pyarrow as pa
import pytest

from pipelines.splits import (
    assign_leave_last_out,
    assign_time_splits,
    kth_smallest,
    parse_time,
    split_by_time,
    split_leave_last_out,
    time_cutoffs,
)


def test_time_splits_at_the_cutoffs():
    codes = assign_time_splits(np.array([0, 4, 5, 9, 10, 11]), valid_start=5, test_start=10)
    assert codes.tolist() == [0, 0, 1, 1, 2, 2]


def test_time_splits_reject_inverted_cutoffs():
    with pytest.raises(ValueError, match="valid_start=10, test_start=5"):
        assign_time_splits(np.array([1]), valid_start=10, test_start=5)


def test_split_by_time_accepts_iso_strings():
    table = pa.table(
        {"time": pa.array([parse_time("2019-11-12"), parse_time("2019-11-13T06:00:00")])}
    )
    result = split_by_time(table, valid_start="2019-11-13", test_start="2019-11-13T06:00:00Z")
    assert result.column("split").to_pylist() == ["train", "test"]


def test_time_cutoffs_are_event_quantiles():
    """100 events at 0..99: the last 10 are test, the 10 before valid."""
    times = np.arange(100, dtype=np.int64)
    assert time_cutoffs(lambda: [times]) == (80, 90)
    # One far-off timestamp does not empty the later splits.
    skewed = np.append(times[:-1], 10**12)
    valid_start, test_start = time_cutoffs(lambda: [skewed])
    codes = assign_time_splits(skewed, valid_start=valid_start, test_start=test_start)
    assert np.bincount(codes).tolist() == [80, 10, 10]


def test_time_cutoffs_with_empty_fractions():
    times = np.arange(100, dtype=np.int64)
    assert time_cutoffs(lambda: [times], test_fraction=0.0) == (90, 100)
    assert time_cutoffs(lambda: [times], valid_fraction=0.0) == (90, 90)


def test_time_cutoffs_do_not_depend_on_batching():
    times = np.random.default_rng(3).integers(0, 10**13, 1000)
    whole = time_cutoffs(lambda: [times], valid_fraction=0.15, test_fraction=0.05)
    parts = time_cutoffs(lambda: np.array_split(times, 7), valid_fraction=0.15, test_fraction=0.05)
    assert whole == parts
    ordered = np.sort(times)
    assert whole == (ordered[800], ordered[950])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"valid_fraction": 1.0}, "valid_fraction=1.0"),
        ({"test_fraction": -0.1}, "test_fraction=-0.1"),
        ({"valid_fraction": 0.5, "test_fraction": 0.5}, "valid_fraction=0.5, test_fraction=0.5"),
    ],
)
def test_time_cutoffs_reject_bad_fractions(kwargs, message):
    with pytest.raises(ValueError, match=message):
        time_cutoffs(lambda: [np.arange(3)], **kwargs)


@pytest.mark.parametrize("bins", [2, 3, 1 << 16])
def test_kth_smallest_is_exact(bins):
    rng = np.random.default_rng(bins)
    values = rng.integers(-(10**15), 10**15, 300)
    parts = np.array_split(values, 4)
    ordered = np.sort(values)
    for k in (0, 1, 150, 299):
        assert (
            kth_smallest(lambda: parts, k, int(values.min()), int(values.max()), bins) == ordered[k]
        )


def test_leave_last_out_by_hand():
    users = np.array(["a", "a", "a", "a", "b", "b", "c", "c", "c"])
    times = np.array([4, 1, 3, 2, 1, 2, 5, 5, 5])
    codes = assign_leave_last_out(users, times)
    # a: times 1,2 train, 3 valid, 4 test; b has 2 units (< 3): all train;
    # c: equal times, input order breaks the tie.
    assert codes.tolist() == [2, 0, 1, 0, 0, 0, 0, 1, 2]


def test_leave_last_out_tiebreak_and_min_units():
    users, times = np.array([1, 1]), np.array([0, 0])
    assert assign_leave_last_out(users, times, np.array([1, 0]), min_units=2).tolist() == [2, 1]
    with pytest.raises(ValueError, match="min_units=1"):
        assign_leave_last_out(users, times, min_units=1)


def test_split_leave_last_out_table():
    table = pa.table({"user_id": ["u", "u", "u", "v"], "time": pa.array([3, 1, 2, 9], pa.int64())})
    assert split_leave_last_out(table).column("split").to_pylist() == [
        "test",
        "train",
        "valid",
        "train",
    ]


@pytest.mark.parametrize(
    "value, expected",
    [
        (1573603200000, 1573603200000),
        ("1573603200000", 1573603200000),
        ("2019-11-13", 1573603200000),
        ("2019-11-13T00:00:00Z", 1573603200000),
        ("2019-11-13T01:00:00+01:00", 1573603200000),
        (dt.datetime(2019, 11, 13), 1573603200000),
        (dt.date(2019, 11, 13), 1573603200000),
        (None, None),
    ],
)
def test_parse_time(value, expected):
    assert parse_time(value) == expected


def test_parse_time_rejects_garbage():
    with pytest.raises(ValueError, match="valid_start='yesterday'"):
        parse_time("yesterday", "valid_start")
