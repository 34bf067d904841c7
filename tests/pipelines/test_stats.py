"""Log statistics: history lengths, truncation at L, popularity, clicks over time, item age."""

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines import stats
from pipelines.schema import SchemaError
from pipelines.sequences import build_histories

HOUR = 3_600_000
DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"


def events(rows):
    """Canonical events from (user, item, time, label, impression_id) tuples."""
    users, items, times, labels, impressions = zip(*rows, strict=True)
    n = len(rows)
    return pa.table(
        {
            "user_id": pa.array(users, pa.string()),
            "item_id": pa.array(items, pa.string()),
            "time": pa.array(times, pa.int64()),
            "label": pa.array(labels, pa.int8()),
            "impression_id": pa.array(impressions, pa.string()),
            "session_id": pa.nulls(n, pa.string()),
            "source_file": pa.array(["f"] * n),
            "source_line": pa.array(range(n), pa.int64()),
        }
    )


def clicks(rows):
    """A click log (no impressions) from (user, item, time) tuples."""
    return events([(user, item, time, 1, None) for user, item, time in rows])


def lengths_frame(lengths, users=None):
    users = users if users is not None else [f"u{i}" for i in range(len(lengths))]
    return pd.DataFrame({"user_id": users, "history_length": lengths})


# --------------------------------------------------------------------------- summary


def test_log_summary_by_hand():
    log = events(
        [
            ("u", "a", 2 * HOUR, 1, "i1"),
            ("u", "b", 2 * HOUR, 0, "i1"),
            ("v", "a", HOUR, 1, "i2"),
            ("v", "c", 3 * HOUR, 1, None),
        ]
    )
    summary = stats.log_summary(log)
    assert summary["events"] == 4 and summary["clicks"] == 3
    assert summary["users"] == 2 and summary["items"] == 3 and summary["impressions"] == 2
    assert summary["start"] == pd.Timestamp("1970-01-01 01:00", tz="UTC")
    assert summary["end"] == pd.Timestamp("1970-01-01 03:00", tz="UTC")
    assert stats.log_summary(clicks([("u", "a", 1)]))["impressions"] == 0
    empty = stats.log_summary(clicks([("u", "a", 1)]).slice(0, 0))
    assert empty["events"] == 0 and empty["clicks"] == 0 and empty["start"] is None


# --------------------------------------------------------------------------- history lengths


def test_history_lengths_click_log_counts_clicks_strictly_before():
    # Rows out of time order; u's two clicks at time 2 do not count each other.
    log = clicks([("u", "c", 5), ("v", "a", 3), ("u", "a", 1), ("u", "b", 2), ("u", "d", 2)])
    result = stats.history_lengths(log)
    assert result["user_id"].tolist() == ["u", "v", "u", "u", "u"]
    assert result["time"].tolist() == [5, 3, 1, 2, 2]
    assert result["history_length"].tolist() == [3, 0, 0, 1, 1]


def test_history_lengths_impression_log_rebuilds_from_clicks():
    log = events(
        [
            ("u", "a", 10, 1, "i1"),
            ("u", "b", 10, 0, "i1"),
            ("v", "a", 15, 1, "i3"),
            ("u", "c", 20, 0, "i2"),
            ("u", "d", 21, 1, "i2"),  # an impression's time is its earliest row's
            ("u", "e", 30, 0, "i4"),  # no click: still an impression
        ]
    )
    result = stats.history_lengths(log)
    assert result["time"].tolist() == [10, 15, 20, 30]
    assert result["user_id"].tolist() == ["u", "v", "u", "u"]
    # i2 at 20 sees u's click at 10; i4 at 30 also sees the click at 21.
    assert result["history_length"].tolist() == [0, 0, 1, 2]


def test_history_lengths_uses_given_histories():
    log = events([("u", "a", 10, 1, "i1"), ("v", "b", 5, 1, "i2"), ("w", "c", 7, 0, "i3")])
    given = pa.table(
        {
            "impression_id": pa.array(["i2", "i1"]),
            "history": pa.array([["x", "y", "z"], []], pa.list_(pa.string())),
        }
    )
    result = stats.history_lengths(log, given)
    # i3 has no given history: length 0.
    assert result["history_length"].tolist() == [0, 3, 0]
    assert result["user_id"].tolist() == ["u", "v", "w"]


def test_history_lengths_rejects_given_history_without_lists():
    log = events([("u", "a", 10, 1, "i1")])
    given = pa.table({"impression_id": ["i1"], "history": ["a b"]})
    with pytest.raises(SchemaError, match="given_history: column `history`"):
        stats.history_lengths(log, given)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from("uvw"), st.integers(0, 6), st.sampled_from([0, 1])),
        min_size=1,
        max_size=25,
    )
)
def test_history_lengths_match_built_histories(rows):
    """Same lengths as the histories ``build_histories`` builds with an unbounded L."""
    log = events([(user, f"i{n}", time, label, None) for n, (user, time, label) in enumerate(rows)])
    result = stats.history_lengths(log)
    units = log.filter(pa.compute.equal(log.column("label"), 1)).select(["user_id", "time"])
    built = build_histories(log, units, history_length=len(rows))
    assert result["history_length"].tolist() == built.column("history_length").to_pylist()
    brute = [
        sum(1 for u, t, lab in rows if lab == 1 and u == user and t < time)
        for user, time, label in rows
        if label == 1
    ]
    assert result["history_length"].tolist() == brute


def test_checks_the_events_table():
    with pytest.raises(ValueError, match="Received: events of type DataFrame"):
        stats.history_lengths(pd.DataFrame({"user_id": ["u"]}))
    table = clicks([("u", "a", 1)]).drop(["time"])
    with pytest.raises(SchemaError, match="missing column `time`"):
        stats.item_popularity(table)


# --------------------------------------------------------------------------- truncation at L


def test_truncation_curve_by_hand():
    curve = stats.truncation_curve(lengths_frame([0, 2, 5, 7]), [5])
    row = curve.iloc[0]
    assert row["history_length"] == 5 and row["count"] == 4
    assert row["empty"] == pytest.approx(0.25)
    assert row["padded"] == pytest.approx(0.5)  # 0 and 2
    assert row["exact"] == pytest.approx(0.25)
    assert row["truncated"] == pytest.approx(0.25)
    # Padding slots: 5, 3, 0, 0 of 5 each.
    assert row["padding_fraction"] == pytest.approx((1 + 0.6) / 4)
    # 2 of the 14 history clicks lie beyond the most recent 5.
    assert row["clicks_dropped"] == pytest.approx(2 / 14)


def test_truncation_curve_per_user_takes_each_users_longest_history():
    frame = lengths_frame([0, 1, 4, 0, 2], users=["a", "a", "a", "b", "b"])
    curve = stats.truncation_curve(frame, [1, 3], per="user")
    assert curve["count"].tolist() == [2, 2]
    # Longest histories: a 4, b 2.
    assert curve["truncated"].tolist() == [1.0, 0.5]
    assert curve["padded"].tolist() == [0.0, 0.5]
    assert curve["empty"].tolist() == [0.0, 0.0]


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(0, 30), min_size=1, max_size=40), st.integers(1, 35))
def test_truncation_shares_partition_the_examples(lengths, window):
    row = stats.truncation_curve(lengths_frame(lengths), [window]).iloc[0]
    assert row["padded"] + row["exact"] + row["truncated"] == pytest.approx(1.0)
    assert 0.0 <= row["padding_fraction"] <= 1.0
    dropped = sum(max(length - window, 0) for length in lengths)
    assert row["clicks_dropped"] == pytest.approx(dropped / max(sum(lengths), 1))


def test_truncation_curve_of_no_examples_is_nan():
    curve = stats.truncation_curve(lengths_frame([]), [3])
    assert curve["count"].tolist() == [0]
    assert math.isnan(curve["padded"].iloc[0])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"history_lengths": [0]}, r"Received: history_lengths=\[0\]"),
        ({"history_lengths": [True]}, r"Received: history_lengths=\[True\]"),
        ({"history_lengths": [2.5]}, r"Received: history_lengths=\[2.5\]"),
        ({"history_lengths": [5], "per": "session"}, "Received: per='session'"),
    ],
    ids=["zero", "bool", "float", "bad-per"],
)
def test_truncation_curve_checks_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        stats.truncation_curve(lengths_frame([1]), **kwargs)


# --------------------------------------------------------------------------- popularity


def test_item_popularity_by_hand():
    log = events(
        [
            ("u", "b", 1, 1, "i1"),
            ("u", "a", 1, 0, "i1"),
            ("v", "a", 2, 1, "i2"),
            ("v", "b", 2, 1, "i2"),
            ("w", "b", 3, 1, "i3"),
            ("w", "c", 3, 0, "i3"),
        ]
    )
    table = stats.item_popularity(log)
    assert table["item_id"].tolist() == ["b", "a", "c"]
    assert table["clicks"].tolist() == [3, 1, 0]
    assert table["events"].tolist() == [3, 2, 1]
    assert table["rank"].tolist() == [1, 2, 3]
    np.testing.assert_allclose(table["click_share"], [0.75, 0.25, 0.0])
    np.testing.assert_allclose(table["cumulative_share"], [0.75, 1.0, 1.0])
    np.testing.assert_allclose(table["item_fraction"], [1 / 3, 2 / 3, 1.0])


def test_item_popularity_breaks_ties_by_item_id():
    table = stats.item_popularity(clicks([("u", "z", 1), ("u", "m", 2), ("u", "a", 3)]))
    assert table["item_id"].tolist() == ["a", "m", "z"]


def test_popularity_concentration_by_hand():
    popularity = pd.DataFrame({"clicks": [5, 3, 1, 1]})
    table = stats.popularity_concentration(popularity, [0.25, 0.3, 0.5, 1.0])
    # ceil(0.3 * 4) = 2 items.
    assert table["items"].tolist() == [1, 2, 2, 4]
    np.testing.assert_allclose(table["click_share"], [0.5, 0.8, 0.8, 1.0])


@pytest.mark.parametrize("fraction", [0.0, 1.5, -0.1])
def test_popularity_concentration_checks_fractions(fraction):
    with pytest.raises(ValueError, match=rf"Received: item_fractions=\[{fraction}\]"):
        stats.popularity_concentration(pd.DataFrame({"clicks": [1]}), [fraction])


# --------------------------------------------------------------------------- time


def test_clicks_over_time_counts_per_period_and_keeps_empty_ones():
    log = events(
        [
            ("u", "a", HOUR // 6, 1, "i1"),
            ("u", "b", HOUR // 6, 0, "i1"),
            ("v", "a", 5 * HOUR // 6, 1, "i2"),
            ("v", "c", 2 * HOUR + 1, 0, "i3"),
        ]
    )
    table = stats.clicks_over_time(log, "1h")
    assert table["time"].tolist() == [
        pd.Timestamp(0, tz="UTC") + pd.Timedelta(hours=h) for h in range(3)
    ]
    assert table["clicks"].tolist() == [2, 0, 0]
    assert table["events"].tolist() == [3, 0, 1]
    assert table["users"].tolist() == [2, 0, 1]


def test_clicks_over_time_sums_to_the_totals():
    rng = np.random.default_rng(0)
    times = rng.integers(0, 48 * HOUR, size=200)
    log = events([("u", "a", int(t), int(t % 2), "i") for t in times])
    for freq in ("15min", "1h", "1D"):
        table = stats.clicks_over_time(log, freq)
        assert table["events"].sum() == 200
        assert table["clicks"].sum() == int((times % 2).sum())


@pytest.mark.parametrize("freq", ["1M", "often", 3])
def test_clicks_over_time_checks_freq(freq):
    with pytest.raises(ValueError, match=f"Received: freq={freq!r}"):
        stats.clicks_over_time(clicks([("u", "a", 1)]), freq)


# --------------------------------------------------------------------------- item age


def test_item_age_counts_from_first_appearance():
    log = events(
        [
            ("u", "a", 0, 0, "i1"),  # a first shown at 0
            ("u", "a", 2 * HOUR, 1, "i2"),
            ("v", "b", 3 * HOUR, 1, "i3"),  # b first seen when clicked
            ("v", "a", 5 * HOUR, 1, "i4"),
        ]
    )
    ages = stats.item_age_at_click(log)
    assert ages["item_id"].tolist() == ["a", "b", "a"]
    assert ages["user_id"].tolist() == ["u", "v", "v"]
    np.testing.assert_allclose(ages["age_hours"], [2.0, 0.0, 5.0])


def test_item_age_with_publish_times():
    log = clicks([("u", "a", 3 * HOUR), ("u", "b", HOUR), ("u", "c", HOUR)])
    ages = stats.item_age_at_click(log, {"a": HOUR, "b": 2 * HOUR})
    assert ages["age_hours"].iloc[0] == pytest.approx(2.0)
    assert ages["age_hours"].iloc[1] == pytest.approx(-1.0)
    assert math.isnan(ages["age_hours"].iloc[2])  # c has no publication time
    series = stats.item_age_at_click(log, pd.Series({"a": 0, "b": 0, "c": 0}))
    np.testing.assert_allclose(series["age_hours"], [3.0, 1.0, 1.0])


def test_item_age_checks_publish_times():
    with pytest.raises(ValueError, match="Received: publish_times of type list"):
        stats.item_age_at_click(clicks([("u", "a", 1)]), [1, 2])


# --------------------------------------------------------------------------- real data


@pytest.mark.real_data
@pytest.mark.skipif(not DATA.is_dir(), reason=f"real data folder {DATA} is absent")
def test_mind_subset_history_lengths_match_its_readme():
    from pipelines import readers

    result = readers.read("mind", [DATA / "mind-small-subset"])
    lengths = stats.history_lengths(result.events, result.given_history)
    # ../shared/data/README.md: 4,032 rows, history length 0 to 425, mean about 32,
    # about 2% empty.
    assert len(lengths) == 4032
    assert lengths["history_length"].max() == 425
    assert lengths["history_length"].mean() == pytest.approx(32, abs=1)
    row = stats.truncation_curve(lengths, [50]).iloc[0]
    assert row["empty"] == pytest.approx(0.02, abs=0.005)
