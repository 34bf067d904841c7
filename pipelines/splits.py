"""Train / valid / test splits: by global time cutoffs, or per-user leave-last-out.

Splits are assigned to *units*: a click for click logs, an impression for
impression logs. Codes index ``pipelines.schema.SPLITS``: 0 = train,
1 = valid, 2 = test.

* ``time``: a unit at time ``t`` is train if ``t < valid_start``, valid if
  ``valid_start <= t < test_start``, test otherwise. By default the cutoffs
  leave the first 80% of the events (by time) to train, the next 10% to
  valid and the last 10% to test, see :func:`time_cutoffs`.
* ``leave-last-out`` (the SASRec protocol): per user, ordered by time, the
  last unit is test, the second-last valid, the rest train; users with fewer
  than ``min_units`` (3) units keep all of them in train, as in SASRec.

Example:

>>> import numpy as np
>>> assign_time_splits(np.array([0, 5, 10]), valid_start=5, test_start=10).tolist()
[0, 1, 2]
>>> assign_leave_last_out(np.array([7, 7, 7, 9]), np.array([1, 2, 3, 1])).tolist()
[0, 1, 2, 0]
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable

import numpy as np
import pyarrow as pa

from pipelines.schema import SPLITS

TRAIN, VALID, TEST = 0, 1, 2
SPLIT_MODES = ("time", "leave-last-out")


def parse_time(value: int | str | dt.datetime | None, name: str = "time") -> int | None:
    """A time given as ms since the epoch, an ISO 8601 string or a datetime -> int ms (UTC).

    Naive datetimes and date-only strings (``"2019-11-13"``) are read as UTC.
    """
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError(f"`{name}` should be a time. Received: {name}={value!r}")
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, str):
        text = value.strip()
        if text.lstrip("-").isdigit():
            return int(text)
        try:
            value = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(
                f"`{name}` should be milliseconds since the epoch or an ISO 8601 time "
                f"such as 2019-11-13T12:00:00. Received: {name}={value!r}"
            ) from None
    if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
        value = dt.datetime(value.year, value.month, value.day)
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        return int(round(value.timestamp() * 1000))
    raise ValueError(f"`{name}` should be a time. Received: {name}={value!r}")


def check_fractions(valid_fraction: float, test_fraction: float) -> None:
    for name, value in (("valid_fraction", valid_fraction), ("test_fraction", test_fraction)):
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value < 1.0:
            raise ValueError(f"`{name}` should be in [0, 1). Received: {name}={value!r}")
    if valid_fraction + test_fraction >= 1.0:
        raise ValueError(
            "`valid_fraction + test_fraction` should be below 1. Received: "
            f"valid_fraction={valid_fraction}, test_fraction={test_fraction}"
        )


def time_cutoffs(
    read_times: Callable[[], Iterable[np.ndarray]],
    *,
    valid_fraction: float = 0.1,
    test_fraction: float = 0.1,
) -> tuple[int, int]:
    """``(valid_start, test_start)`` leaving the last fractions of the events to valid/test.

    With ``n`` event times, ``test_start`` is the ``(n - round(n * test_fraction))``-th
    smallest time (0-based) and ``valid_start`` the
    ``(n - round(n * (test_fraction + valid_fraction)))``-th: the last 10% of
    the events (by time) are test and the 10% before them valid by default.
    Events at a cutoff's time all go to the later split. A fraction that
    rounds to no event leaves its split empty. Quantiles of events, not of the
    time range, so a few far-off timestamps do not empty a split.

    Args:
        read_times: callable returning an iterable of int64 arrays, all the
            event times (called a few times: the times may live on disk).
        valid_fraction: float in [0, 1). Defaults to 0.1.
        test_fraction: float in [0, 1). Defaults to 0.1.
    """
    check_fractions(valid_fraction, test_fraction)
    n, low, high = 0, None, None
    for times in read_times():
        if len(times):
            n += len(times)
            low = int(times.min()) if low is None else min(low, int(times.min()))
            high = int(times.max()) if high is None else max(high, int(times.max()))
    if n == 0:
        return 0, 0
    test_rank = n - int(round(n * test_fraction))
    valid_rank = n - int(round(n * (test_fraction + valid_fraction)))
    test_start = high + 1 if test_rank >= n else kth_smallest(read_times, test_rank, low, high)
    valid_start = (
        test_start if valid_rank >= test_rank else kth_smallest(read_times, valid_rank, low, high)
    )
    return valid_start, test_start


def kth_smallest(
    read_times: Callable[[], Iterable[np.ndarray]], k: int, low: int, high: int, bins: int = 1 << 16
) -> int:
    """The ``k``-th smallest (0-based) of the times in ``[low, high]``, exactly.

    Streams over ``read_times()`` a few times, narrowing the range with a
    ``bins``-bucket histogram each pass (bounded memory).
    """
    below = 0  # values < low
    while low < high:
        width = -(-(high - low + 1) // bins)
        histogram = np.zeros(bins, np.int64)
        for times in read_times():
            inside = times[(times >= low) & (times <= high)]
            histogram += np.bincount((inside - low) // width, minlength=bins)[:bins]
        cumulative = np.cumsum(histogram)
        bucket = int(np.searchsorted(cumulative, k - below, side="right"))
        below += int(cumulative[bucket - 1]) if bucket else 0
        low, high = low + bucket * width, min(high, low + (bucket + 1) * width - 1)
    return int(low)


def assign_time_splits(times: np.ndarray, *, valid_start: int, test_start: int) -> np.ndarray:
    """Split codes (int8) of units at ``times`` for the cutoffs ``valid_start <= test_start``."""
    if valid_start > test_start:
        raise ValueError(
            "`valid_start` should not be after `test_start`. Received: "
            f"valid_start={valid_start}, test_start={test_start}"
        )
    times = np.asarray(times)
    codes = np.zeros(len(times), dtype=np.int8)
    codes[times >= valid_start] = VALID
    codes[times >= test_start] = TEST
    return codes


def assign_leave_last_out(
    users: np.ndarray, times: np.ndarray, tiebreak: np.ndarray | None = None, *, min_units: int = 3
) -> np.ndarray:
    """Per-user leave-last-out split codes (int8).

    Args:
        users: array (n,), any sortable dtype; the unit's user.
        times: array (n,), the unit's time.
        tiebreak: optional array (n,) ordering units of a user at equal times
            (defaults to the input order).
        min_units: int. Users with fewer units keep them all in train. Defaults to 3.
    """
    if min_units < 2:
        raise ValueError(f"`min_units` should be at least 2. Received: min_units={min_units}")
    users, times = np.asarray(users), np.asarray(times)
    n = len(users)
    if tiebreak is None:
        tiebreak = np.arange(n)
    order = np.lexsort((tiebreak, times, users))
    sorted_users = users[order]
    new_user = np.ones(n, dtype=bool)
    new_user[1:] = sorted_users[1:] != sorted_users[:-1]
    starts = np.flatnonzero(new_user)
    ends = np.append(starts[1:], n)
    group = np.cumsum(new_user) - 1
    from_end = ends[group] - np.arange(n) - 1  # 0 for a user's last unit
    eligible = (ends - starts)[group] >= min_units
    sorted_codes = np.zeros(n, dtype=np.int8)
    sorted_codes[eligible & (from_end == 1)] = VALID
    sorted_codes[eligible & (from_end == 0)] = TEST
    codes = np.empty(n, dtype=np.int8)
    codes[order] = sorted_codes
    return codes


def split_by_time(
    table: pa.Table, *, valid_start: int | str, test_start: int | str, time_column: str = "time"
) -> pa.Table:
    """``table`` with a ``split`` column (``train``/``valid``/``test``) from time cutoffs."""
    codes = assign_time_splits(
        table.column(time_column).to_numpy(),
        valid_start=parse_time(valid_start, "valid_start"),
        test_start=parse_time(test_start, "test_start"),
    )
    return table.append_column("split", split_names(codes))


def split_leave_last_out(
    table: pa.Table, *, user_column: str = "user_id", time_column: str = "time", min_units: int = 3
) -> pa.Table:
    """``table`` with a ``split`` column from per-user leave-last-out (ties: row order)."""
    users = table.column(user_column).combine_chunks().dictionary_encode().indices.to_numpy()
    codes = assign_leave_last_out(users, table.column(time_column).to_numpy(), min_units=min_units)
    return table.append_column("split", split_names(codes))


def split_names(codes: np.ndarray) -> pa.Array:
    """Split codes -> a string array of split names."""
    return pa.array(
        np.asarray(SPLITS, dtype=object)[np.asarray(codes, dtype=np.int64)], pa.string()
    )
