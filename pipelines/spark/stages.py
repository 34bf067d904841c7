"""The prepare stages on Spark DataFrames: splits, histories, negatives, id lookups.

These are the stages of the local engine (``pipelines.splits``,
``pipelines.sequences``, ``pipelines.negatives``, ``pipelines.vocab``)
written again for Spark, tested to give equal tables:

* **splits**: time cutoffs from exact event-time quantiles
  (:func:`time_cutoffs`, the histogram search of ``pipelines.splits``), or
  per-user leave-last-out with a window (:func:`leave_last_out`);
* **histories** with window functions, clicks *strictly before* the example
  time, most recent L, oldest first: :func:`click_histories` for click logs
  (every click is an example), :func:`query_histories` for other examples
  (impressions);
* **activity** for the negative sampler: each item's live intervals
  (:func:`live_intervals`); negatives themselves are drawn by the local
  samplers in :mod:`pipelines.spark.writer`, a function of (seed, example
  key) only, so Spark's partitioning and row order cannot change them.

Columns used throughout: ``user_id``, ``time`` (int64 ms) and ``(_src, _pos)``,
the raw row's place in the read order (ties at equal times follow it).
"""

from __future__ import annotations

import numpy as np
from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from pipelines.splits import TEST, TRAIN, VALID, check_fractions

ORDER = ("time", "_src", "_pos")


# --------------------------------------------------------------------------- splits


def time_histogram(times: DataFrame, low: int, high: int, bins: int = 1 << 16) -> np.ndarray:
    """Counts of ``time`` in ``bins`` equal-width buckets of ``[low, high]`` (one Spark job);
    bucket ``i`` covers ``low + i * width ..`` with ``width = ceil((high - low + 1) / bins)``."""
    return _histograms(times, [(low, high)], bins)[0]


def time_cutoffs(
    times: DataFrame,
    *,
    count: int,
    low: int | None,
    high: int | None,
    valid_fraction: float = 0.1,
    test_fraction: float = 0.1,
    histogram: np.ndarray | None = None,
) -> tuple[int, int]:
    """``(valid_start, test_start)`` as ``pipelines.splits.time_cutoffs`` computes them.

    Args:
        times: a DataFrame with an int64 ``time`` column (every event).
        count, low, high: its row count, minimum and maximum (one aggregation
            the caller already ran).
        valid_fraction, test_fraction: floats in [0, 1). Default 0.1 each.
        histogram: optional :func:`time_histogram` of ``times`` (saves a job).
    """
    check_fractions(valid_fraction, test_fraction)
    if count == 0:
        return 0, 0
    test_rank = count - int(round(count * test_fraction))
    valid_rank = count - int(round(count * (test_fraction + valid_fraction)))
    wanted = sorted({rank for rank in (test_rank, valid_rank) if rank < count})
    found = kth_smallest(times, wanted, low, high, histogram=histogram)
    test_start = high + 1 if test_rank >= count else found[test_rank]
    valid_start = test_start if valid_rank >= test_rank else found[valid_rank]
    return valid_start, test_start


def kth_smallest(
    times: DataFrame,
    ranks: list[int],
    low: int,
    high: int,
    bins: int = 1 << 16,
    histogram: np.ndarray | None = None,
) -> dict[int, int]:
    """The ``k``-th smallest (0-based) ``time`` for each ``k`` in ``ranks``, exactly.

    As ``pipelines.splits.kth_smallest``: histograms of ``bins`` buckets narrow
    each rank's range until one value is left; all ranks share each pass (one
    Spark job per pass; two passes for millisecond times over weeks).
    """
    state = {k: (low, high, 0) for k in ranks}  # rank -> (low, high, values below low)
    first = histogram
    while any(lo < hi for lo, hi, _ in state.values()):
        pending = sorted({(lo, hi) for lo, hi, _ in state.values() if lo < hi})
        if first is not None and pending == [(low, high)]:
            histograms, first = [first], None
        else:
            histograms = _histograms(times, pending, bins)
        by_range = dict(zip(pending, histograms, strict=True))
        for k, (lo, hi, below) in list(state.items()):
            if lo >= hi:
                continue
            width = -(-(hi - lo + 1) // bins)
            cumulative = np.cumsum(by_range[lo, hi])
            bucket = int(np.searchsorted(cumulative, k - below, side="right"))
            below += int(cumulative[bucket - 1]) if bucket else 0
            state[k] = (lo + bucket * width, min(hi, lo + (bucket + 1) * width - 1), below)
    return {k: int(lo) for k, (lo, _, _) in state.items()}


def _histograms(times: DataFrame, ranges: list[tuple[int, int]], bins: int) -> list[np.ndarray]:
    """One histogram of ``bins`` buckets per ``(low, high)`` range, in one Spark job."""
    time = F.col("time")
    keys = []
    for number, (low, high) in enumerate(ranges):
        width = -(-(high - low + 1) // bins)
        bucket = F.floor((time - F.lit(low)) / F.lit(width)).cast("long")
        keys.append(F.when(time.between(low, high), F.lit(number * bins) + bucket))
    rows = (
        times.select(F.explode(F.array(*keys)).alias("key"))
        .where(F.col("key").isNotNull())
        .groupBy("key")
        .count()
        .collect()
    )
    flat = np.zeros(len(ranges) * bins, np.int64)
    for row in rows:
        flat[int(row["key"])] = int(row["count"])
    return list(flat.reshape(len(ranges), bins))


def time_boundaries(histogram: np.ndarray, low: int, high: int, parts: int) -> list[int]:
    """Up to ``parts - 1`` increasing times that cut the histogram's events into ``parts``
    groups of about equal size (for output files that follow each other in time)."""
    bins = len(histogram)
    width = -(-(high - low + 1) // bins)
    cumulative = np.cumsum(histogram)
    if not len(cumulative) or cumulative[-1] == 0 or parts < 2:
        return []
    targets = cumulative[-1] * np.arange(1, parts) / parts
    buckets = np.searchsorted(cumulative, targets, side="right")
    return sorted({int(low + b * width) for b in buckets if 0 < b < bins})


def bucket_of(time: Column, boundaries: list[int]) -> Column:
    """The number of ``boundaries`` at or before ``time`` (int): its output bucket."""
    bucket = F.lit(0)
    for boundary in boundaries:
        bucket = bucket + (time >= F.lit(boundary)).cast("int")
    return bucket


def time_split(time: Column, valid_start: int, test_start: int) -> Column:
    """Split code (tinyint) of a unit at ``time``: 0 train, 1 valid, 2 test."""
    return (
        F.when(time >= F.lit(test_start), TEST)
        .when(time >= F.lit(valid_start), VALID)
        .otherwise(TRAIN)
        .cast("tinyint")
    )


def leave_last_out(units: DataFrame, order: tuple[str, ...], min_units: int = 3) -> DataFrame:
    """``units`` plus ``split``: per user, by ``order``, the last is test, the second-last
    valid, the rest train; users with fewer than ``min_units`` units keep all in train."""
    by_user = Window.partitionBy("user_id")
    from_end = F.row_number().over(by_user.orderBy(*[F.col(c).desc() for c in order])) - 1
    eligible = F.count(F.lit(1)).over(by_user) >= min_units
    split = (
        F.when(eligible & (from_end == 0), TEST)
        .when(eligible & (from_end == 1), VALID)
        .otherwise(TRAIN)
    )
    return units.withColumn("split", split.cast("tinyint"))


# --------------------------------------------------------------------------- histories


def click_histories(clicks: DataFrame, history_length: int) -> DataFrame:
    """Each click's number and history (for click logs, where each click is an example).

    Adds ``n`` (the user's n-th click, 0-based, by (time, read order)),
    ``history_full`` (the number of the user's clicks strictly before its
    time) and ``history`` (the ``item_index`` of the most recent
    ``history_length`` of them, oldest first).

    Clicks at the same (user, time) share one history. It is collected on the
    first click of each such run -- whose ``history_length`` preceding rows
    are exactly the clicks before its time -- and carried to the rest of the run.
    """
    ordered = Window.partitionBy("user_id").orderBy(*ORDER)
    by_time = Window.partitionBy("user_id").orderBy("time")
    previous = ordered.rowsBetween(-history_length, -1)
    so_far = ordered.rowsBetween(Window.unboundedPreceding, Window.currentRow)
    runs = clicks.select(
        "*",
        (F.row_number().over(ordered) - 1).alias("n"),
        (F.rank().over(by_time) - 1).alias("history_full"),
        F.collect_list("item_index").over(previous).alias("_previous"),
    )
    history = F.last(
        F.when(F.col("n") == F.col("history_full"), F.col("_previous")), ignorenulls=True
    ).over(so_far)
    return runs.withColumn("history", history).drop("_previous")


def query_histories(queries: DataFrame, clicks: DataFrame, history_length: int) -> DataFrame:
    """``queries`` (``user_id``, ``time``, ...) plus ``history_full`` and ``history``.

    ``history`` holds the ``item_index`` of the user's most recent
    ``history_length`` clicks strictly before the query time, oldest first;
    ``history_full`` counts all of them.

    Queries and clicks are put in one window per user, ordered by time with
    queries before clicks at the same time. A running count of clicks gives
    each query ``c`` = clicks strictly before it; the click numbered ``k``
    (0-based) gets the rank ``2k + 1`` and a query ``2c``, so the clicks
    ``c - L .. c - 1`` are exactly the rows ranked in ``[2c - 2L, 2c - 1]``:
    a range frame.
    """
    values = clicks.select(
        "user_id",
        "time",
        "_src",
        "_pos",
        F.col("item_index").alias("_item"),
        F.lit(1).alias("_is_click"),
    )
    rows = queries.withColumn("_is_click", F.lit(0)).unionByName(values, allowMissingColumns=True)
    ordered = Window.partitionBy("user_id").orderBy("time", "_is_click", "_src", "_pos")
    before = F.sum("_is_click").over(
        ordered.rowsBetween(Window.unboundedPreceding, Window.currentRow)
    )
    rows = rows.withColumn("_before", before.cast("long"))
    rank = F.when(F.col("_is_click") == 1, 2 * F.col("_before") - 1).otherwise(2 * F.col("_before"))
    frame = Window.partitionBy("user_id").orderBy("_rank").rangeBetween(-2 * history_length, -1)
    history = F.collect_list(F.when(F.col("_is_click") == 1, F.col("_item"))).over(frame)
    return (
        rows.withColumn("_rank", rank)
        .withColumn("history", history)
        .where(F.col("_is_click") == 0)
        .withColumn("history_full", F.col("_before"))
        .drop(
            "_is_click",
            "_before",
            "_rank",
            "_item",
            *[c for c in ("_src", "_pos") if c not in queries.columns],
        )
    )


# --------------------------------------------------------------------------- activity


def live_intervals(events: DataFrame, window: int) -> DataFrame:
    """Each item's merged live intervals ``[t, t + window]`` (``merge_intervals`` on Spark):
    ``item_id``, ``start``, ``end``. Sorted by time, an event opens a new interval when it
    comes after the previous event's end."""
    by_item = Window.partitionBy("item_id").orderBy("time")
    previous = F.lag("time").over(by_item)
    opens = (previous.isNull() | (F.col("time") > previous + F.lit(window))).cast("int")
    number = F.sum("_opens").over(by_item.rowsBetween(Window.unboundedPreceding, 0))
    return (
        events.select("item_id", "time")
        .withColumn("_opens", opens)
        .withColumn("_interval", number)
        .groupBy("item_id", "_interval")
        .agg(F.min("time").alias("start"), (F.max("time") + F.lit(window)).alias("end"))
        .drop("_interval")
    )
