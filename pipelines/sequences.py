"""Histories: for each example, the user's clicks strictly before its time.

A history holds the user's clicks with ``time < example time`` (a click at
the same millisecond or later never leaks in), oldest first, the most recent
``history_length`` kept. Histories are stored unpadded (``list<int32>``); the
input pipeline pads them.

Everything is vectorised: clicks are sorted by (user, time) explicitly, each
example finds the end of its history in its user's clicks with one
``searchsorted`` on a packed (user, time) key, and the list column is built
with ``pa.ListArray.from_arrays`` over one gathered flat index.

Example:

>>> import numpy as np
>>> start, end = history_bounds(
...     click_users=np.array([0, 0, 0, 1]), click_times=np.array([1, 2, 3, 1]),
...     query_users=np.array([0, 0, 1]), query_times=np.array([3, 9, 1]), history_length=1)
>>> start.tolist(), end.tolist()
([1, 2, 3], [2, 3, 3])
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

_INT64_MAX = np.iinfo(np.int64).max


def sorted_unique(values: np.ndarray) -> np.ndarray:
    """``np.unique(values)`` by sorting (NumPy 2's hash-based ``np.unique`` is far slower
    on large integer arrays)."""
    ordered = np.sort(np.asarray(values), kind="stable")
    if len(ordered) < 2:
        return ordered
    keep = np.empty(len(ordered), dtype=bool)
    keep[0] = True
    np.not_equal(ordered[1:], ordered[:-1], out=keep[1:])
    return ordered[keep]


def sort_by_user_time(
    users: np.ndarray, times: np.ndarray, tiebreak: np.ndarray | None = None
) -> np.ndarray:
    """Indices sorting rows by (user, time, tiebreak); ties keep the input order."""
    keys = (times, users) if tiebreak is None else (tiebreak, times, users)
    return np.lexsort(keys)


def pack_user_time(
    users: np.ndarray, times: np.ndarray, *others: tuple[np.ndarray, np.ndarray]
) -> tuple[np.ndarray, ...]:
    """One int64 key per row, ordered like (user, time), for ``np.searchsorted``.

    ``others`` are further ``(users, times)`` pairs packed with the same
    scheme, so that keys are comparable across arrays. Users must be
    non-negative integers. Times are packed directly when ``user * span + time``
    fits in int64, otherwise replaced by their dense rank first.
    """
    pairs = [(np.asarray(users, np.int64), np.asarray(times, np.int64))]
    pairs += [(np.asarray(u, np.int64), np.asarray(t, np.int64)) for u, t in others]
    all_times = [t for _, t in pairs if len(t)]
    if not all_times:
        return tuple(np.zeros(0, np.int64) for _ in pairs)
    low = min(int(t.min()) for t in all_times)
    high = max(int(t.max()) for t in all_times)
    max_user = max(int(u.max()) if len(u) else 0 for u, _ in pairs)
    span = high - low + 1
    if (max_user + 1) * span < _INT64_MAX:
        return tuple(u * span + (t - low) for u, t in pairs)
    ranks = sorted_unique(np.concatenate(all_times))
    span = len(ranks)
    return tuple(u * span + np.searchsorted(ranks, t) for u, t in pairs)


def history_bounds(
    click_users: np.ndarray,
    click_times: np.ndarray,
    query_users: np.ndarray,
    query_times: np.ndarray,
    history_length: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Where each query's history lies in the (user, time)-sorted click arrays.

    Args:
        click_users: int array (n,), sorted together with ``click_times`` by
            (user, time); non-negative user codes.
        click_times: int64 array (n,).
        query_users: int array (m,), codes in the same space as ``click_users``.
        query_times: int64 array (m,).
        history_length: int. L, the most recent clicks kept.

    Returns:
        ``(start, end)`` int64 arrays (m,): the query's history is
        ``clicks[start:end]``; ``end`` is its first click at or after the query
        time, ``end - start <= history_length``.
    """
    if history_length < 0:
        raise ValueError(
            f"`history_length` should be non-negative. Received: history_length={history_length}"
        )
    click_keys, query_keys = pack_user_time(click_users, click_times, (query_users, query_times))
    end = np.searchsorted(click_keys, query_keys, side="left")
    user_start = np.searchsorted(np.asarray(click_users), np.asarray(query_users), side="left")
    start = np.maximum(user_start, end - history_length)
    return start.astype(np.int64), end.astype(np.int64)


def gather_lists(
    start: np.ndarray, end: np.ndarray, values: np.ndarray | pa.Array, value_type=None
) -> pa.ListArray:
    """``[values[start[i]:end[i]] for i]`` as an Arrow list array, without a Python loop.

    ``values`` is a NumPy array (converted to ``value_type``) or an Arrow array.
    """
    start = np.asarray(start, np.int64)
    lengths = np.asarray(end, np.int64) - start
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    total = int(offsets[-1])
    if total >= np.iinfo(np.int32).max:
        raise ValueError(f"too many list values ({total}) for one list array; use smaller chunks")
    flat = ranges_index(start, lengths, offsets)
    if isinstance(values, pa.Array | pa.ChunkedArray):
        taken = values.take(pa.array(flat))
        if isinstance(taken, pa.ChunkedArray):
            taken = taken.combine_chunks()
    else:
        taken = pa.array(np.asarray(values)[flat], type=value_type)
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), taken)


def ranges_index(start: np.ndarray, lengths: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """``np.concatenate([np.arange(s, s + n) for s, n in zip(start, lengths)])``, vectorised.

    ``offsets`` is ``[0, *np.cumsum(lengths)]``. One running sum of steps: 1
    inside a range, a jump at the first element of each non-empty range.
    """
    total = int(offsets[-1])
    if total == 0:
        return np.zeros(0, np.int64)
    nonempty = lengths > 0
    first, begin = start[nonempty], offsets[:-1][nonempty]
    small = int((first + lengths[nonempty]).max()) < np.iinfo(np.int32).max
    steps = np.ones(total, np.int32 if small else np.int64)  # half the memory when it fits
    steps[begin[1:]] = first[1:] - (first[:-1] + lengths[nonempty][:-1] - 1)
    steps[0] = first[0]
    return np.cumsum(steps, out=steps)


def last_n(lists: pa.ListArray | pa.ChunkedArray, n: int) -> pa.ListArray:
    """The last ``n`` elements of each list (the most recent ``n`` clicks); nulls become ``[]``."""
    if isinstance(lists, pa.ChunkedArray):
        lists = lists.combine_chunks()
    if lists.null_count:
        lists = pc.fill_null(lists, pa.scalar([], lists.type))
    offsets = lists.offsets.to_numpy().astype(np.int64)  # index into the unsliced `values`
    end = offsets[1:]
    start = np.maximum(offsets[:-1], end - n)
    return gather_lists(start, end, lists.values)


def build_histories(
    events: pa.Table,
    examples: pa.Table,
    *,
    history_length: int,
    item_column: str = "item_id",
) -> pa.Table:
    """Add ``history`` and ``history_length`` to ``examples`` from the clicks in ``events``.

    The table-level form of :func:`history_bounds` (the engine works on the
    arrays directly).

    Args:
        events: canonical events (``pipelines.schema.EVENTS``); rows with
            ``label == 1`` are clicks. Clicks of a user at equal times keep
            their row order.
        examples: a table with ``user_id`` and ``time`` (int64 ms).
        history_length: int. L, the most recent clicks kept.
        item_column: str. The events column whose values fill the histories.
            Defaults to ``"item_id"``.

    Returns:
        ``examples`` plus ``history`` (list of ``item_column``'s type, oldest
        first, at most L) and ``history_length`` (int32, the number of clicks kept).
    """
    clicks = events.filter(pc.equal(events.column("label"), 1))
    users = (
        pa.chunked_array(
            [clicks.column("user_id").combine_chunks(), examples.column("user_id").combine_chunks()]
        )
        .combine_chunks()
        .dictionary_encode()
        .indices.to_numpy()
    )
    click_users, query_users = users[: clicks.num_rows], users[clicks.num_rows :]
    click_times = clicks.column("time").to_numpy()
    order = sort_by_user_time(click_users, click_times)
    start, end = history_bounds(
        click_users[order],
        click_times[order],
        query_users,
        examples.column("time").to_numpy(),
        history_length,
    )
    items = clicks.column(item_column).combine_chunks().take(pa.array(order))
    histories = gather_lists(start, end, items)
    return examples.append_column("history", histories).append_column(
        "history_length", pa.array((end - start).astype(np.int32))
    )
