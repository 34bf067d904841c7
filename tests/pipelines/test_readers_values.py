"""Vectorised value parsing: timestamps and casts that locate their failures."""

from __future__ import annotations

import calendar

import numpy as np
import pyarrow as pa
import pytest

from pipelines.readers import _values

# 2019-11-12 14:14:46 UTC, computed by the standard library, in milliseconds.
NOV_12 = calendar.timegm((2019, 11, 12, 14, 14, 46)) * 1000


@pytest.mark.parametrize(
    "value, unit, expected",
    [
        (1573568086, "s", NOV_12),
        (1573568086, "auto", NOV_12),  # below 1e11: seconds
        (1573568086000, "ms", NOV_12),
        (1573568086000, "auto", NOV_12),  # above 1e11: milliseconds
        (1573568086.5, "auto", NOV_12 + 500),
        (-1573568086000, "auto", -NOV_12),  # before 1970, in milliseconds
        (-1573568086, "auto", -NOV_12),  # and in seconds
        (-1573568086000.0, "auto", -NOV_12),
        ("1573568086", "auto", NOV_12),
        ("1573568086000", "ms", NOV_12),
        ("2019-11-12T14:14:46", "auto", NOV_12),  # no zone: UTC
        ("2019-11-12 14:14:46", "iso", NOV_12),
        ("2019-11-12T14:14:46Z", "auto", NOV_12),
        ("2019-11-12T16:14:46+02:00", "iso", NOV_12),
        ("2019-11-12T09:14:46-0500", "iso", NOV_12),
        ("2019-11-12T14:14:46.250", "iso", NOV_12 + 250),
        ("2019-11-12T14:14:46.250999", "iso", NOV_12 + 250),  # microseconds truncated
        ("2019-11-12T14:14:46.250999999Z", "auto", NOV_12 + 250),  # nanoseconds (Java, Go)
        ("2019-11-12T16:14:46.2509999999+02:00", "iso", NOV_12 + 250),
        ("2019-11-12t14:14:46.25z", "auto", NOV_12 + 250),  # RFC 3339 allows lower case
        ("2019-11-12", "iso", NOV_12 - (14 * 3600 + 14 * 60 + 46) * 1000),
    ],
)
def test_parse_time_accepts(value, unit, expected):
    milliseconds, failed = _values.parse_time(pa.array([value]), unit)
    assert failed.tolist() == [False]
    assert milliseconds.tolist() == [expected]


@pytest.mark.parametrize(
    "value, unit",
    [
        ("", "auto"),
        (None, "auto"),
        ("yesterday", "auto"),
        ("2019-13-12T00:00:00", "auto"),  # month 13
        ("2019-02-30", "iso"),  # no such day
        ("2019-11-12T14:14:46.", "iso"),  # a point without digits
        ("2019-11-12x14:14:46", "auto"),
        ("12/11/2019 14:14", "auto"),
        ("2019-11-12T14:14:46", "s"),  # ISO where epoch seconds are expected
        ("1573568086", "iso"),  # a number where ISO is expected
        (1573568086, "iso"),
        (float("nan"), "auto"),
        (10**17, "s"),  # overflows int64 milliseconds
    ],
)
def test_parse_time_rejects(value, unit):
    valid = "1573568086" if value is None or isinstance(value, str) else 1573568086
    milliseconds, failed = _values.parse_time(pa.array([value, valid]), unit)
    assert failed.tolist() == [True, unit == "iso"]
    assert milliseconds[0] == 0


def test_parse_time_timestamp_columns_are_taken_as_utc():
    naive = pa.array([NOV_12 * 1000], pa.timestamp("us"))
    zoned = pa.array([NOV_12], pa.timestamp("ms", "Europe/Paris"))
    for values in (naive, zoned):
        milliseconds, failed = _values.parse_time(values, "auto")
        assert milliseconds.tolist() == [NOV_12] and not failed.any()


def test_parse_time_rejects_unknown_unit():
    with pytest.raises(ValueError, match="Received: time_unit='hours'"):
        _values.parse_time(pa.array([1]), "hours")


def test_safe_cast_locates_each_failure():
    values = pa.array(["1", "x", "3", None, "99999999999999999999", "-4", "", "+5"])
    cast, failed = _values.safe_cast(values, pa.int64())
    assert failed.tolist() == [False, True, False, False, True, False, True, True]
    assert cast.to_pylist() == [1, None, 3, None, None, -4, None, None]


def test_safe_cast_bisection_matches_one_cast_per_value():
    # Dates that match the ISO pattern but do not exist are found by bisection.
    days = [f"2019-02-{day:02d}" for day in range(1, 32)] * 3
    cast, failed = _values.safe_cast(pa.array(days), pa.timestamp("us"))
    one_by_one = []
    for day in days:
        try:
            pa.array([day]).cast(pa.timestamp("us"))
            one_by_one.append(False)
        except pa.ArrowInvalid:
            one_by_one.append(True)
    assert failed.tolist() == one_by_one
    assert int(failed.sum()) == 3 * 3  # Feb 29, 30, 31 in 2019
    assert cast.null_count == int(failed.sum())


def test_masks():
    values = pa.array(["a", "", None])
    assert _values.empty_mask(values).tolist() == [False, True, True]
    assert _values.null_mask(values).tolist() == [False, False, True]
    assert _values.matches(values, "^a$").tolist() == [True, False, False]
    assert np.array_equal(_values.to_numpy_mask(pa.array([True, None])), [True, False])
