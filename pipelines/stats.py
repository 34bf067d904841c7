"""Descriptive statistics of a click log: what ``notebooks/01_click_logs.ipynb`` plots.

Pure functions over the canonical events table (``pipelines.schema.EVENTS``,
what every reader returns) that answer the questions to ask of a log before
training on it:

* :func:`log_summary` — events, clicks, users, items, impressions, time span;
* :func:`history_lengths` — how long each example's history is before any
  truncation, and :func:`truncation_curve` — the share of examples (or users)
  truncated or padded at a chosen ``L``;
* :func:`item_popularity` and :func:`popularity_concentration` — the long tail;
* :func:`clicks_over_time` — clicks, events and active users per period;
* :func:`item_age_at_click` — how old an item is when it is clicked.

Results are pandas data frames, ready to print or plot (``feedrec.plots``).
The functions never modify their input. An *example unit* is what
``pipelines.prepare`` makes an example of: an impression in an impression log
(events with impression ids: MIND), a click otherwise (Globo, events,
sequences).

Example:

>>> import pyarrow as pa
>>> events = pa.table({
...     "user_id": ["u", "u", "u"], "item_id": ["a", "b", "a"],
...     "time": pa.array([1, 2, 3], pa.int64()), "label": pa.array([1, 1, 1], pa.int8()),
... })
>>> history_lengths(events)["history_length"].tolist()
[0, 1, 2]
>>> item_popularity(events)[["item_id", "clicks"]].values.tolist()
[['a', 2], ['b', 1]]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.schema import EVENTS, validate
from pipelines.sequences import history_bounds, sort_by_user_time

#: The events columns the statistics read (``impression_id`` is optional).
REQUIRED_COLUMNS = pa.schema(
    [EVENTS.field(name) for name in ("user_id", "item_id", "time", "label")]
)
UNITS = ("example", "user")
MS_PER_HOUR = 3_600_000


def _check_events(events: pa.Table) -> pa.Table:
    if not isinstance(events, pa.Table):
        raise ValueError(
            "`events` should be a pyarrow Table of canonical events. "
            f"Received: events of type {type(events).__name__}"
        )
    return validate(events, REQUIRED_COLUMNS, "events")


def _has_impressions(events: pa.Table) -> bool:
    return (
        "impression_id" in events.column_names
        and events.column("impression_id").null_count < events.num_rows
    )


def _user_codes(*columns: pa.ChunkedArray | pa.Array) -> list[np.ndarray]:
    """Integer codes of user ids, shared across ``columns``."""
    chunks = []
    for column in columns:
        chunks.extend(column.chunks if isinstance(column, pa.ChunkedArray) else [column])
    codes = (
        pa.chunked_array(chunks, pa.string()).combine_chunks().dictionary_encode().indices
    ).to_numpy()
    out, start = [], 0
    for column in columns:
        out.append(codes[start : start + len(column)].astype(np.int64))
        start += len(column)
    return out


def _impressions(events: pa.Table) -> pd.DataFrame:
    """One row per impression: ``impression_id``, its first row's user, its earliest time."""
    frame = events.select(["impression_id", "user_id", "time"]).to_pandas()
    frame = frame[frame["impression_id"].notna()]
    grouped = frame.groupby("impression_id", sort=False)
    return pd.DataFrame(
        {"user_id": grouped["user_id"].first(), "time": grouped["time"].min()}
    ).reset_index()


def log_summary(events: pa.Table) -> dict:
    """Headline counts of a log.

    Returns:
        ``events`` (rows), ``clicks``, ``users``, ``items``, ``impressions``
        (distinct non-null impression ids, 0 for click logs), ``start`` and
        ``end`` (first and last event time, UTC timestamps; None when empty).
    """
    events = _check_events(events)
    times = events.column("time")
    impressions = 0
    if "impression_id" in events.column_names:
        impressions = pc.count_distinct(events.column("impression_id"), mode="only_valid").as_py()
    empty = events.num_rows == 0
    return {
        "events": events.num_rows,
        "clicks": int(pc.sum(pc.equal(events.column("label"), 1)).as_py() or 0),
        "users": pc.count_distinct(events.column("user_id")).as_py(),
        "items": pc.count_distinct(events.column("item_id")).as_py(),
        "impressions": impressions,
        "start": None if empty else pd.Timestamp(pc.min(times).as_py(), unit="ms", tz="UTC"),
        "end": None if empty else pd.Timestamp(pc.max(times).as_py(), unit="ms", tz="UTC"),
    }


def history_lengths(events: pa.Table, given_history: pa.Table | None = None) -> pd.DataFrame:
    """The full (untruncated) history length of every example unit.

    A history is the user's clicks strictly before the unit's time, as
    ``pipelines.sequences`` builds it, before keeping the most recent ``L``.
    When the log supplies its own histories (``given_history``, MIND's history
    column), an impression's history is that list, as in ``pipelines.prepare``.

    Args:
        events: pa.Table. Canonical events (``user_id``, ``item_id``,
            ``time``, ``label``, optionally ``impression_id``).
        given_history: pa.Table or None. ``impression_id`` and ``history``
            (list of raw item ids), e.g. ``ReadResult.given_history``.
            Defaults to None (histories rebuilt from the clicks).

    Returns:
        A data frame with one row per unit (impressions in order of first
        appearance, or clicks in row order): ``user_id``, ``time`` (int64 ms)
        and ``history_length`` (int64).
    """
    events = _check_events(events)
    if given_history is not None:
        given_history = validate(
            given_history,
            pa.schema(
                [pa.field("impression_id", pa.string()), pa.field("history", pa.list_(pa.string()))]
            ),
            "given_history",
        )
    clicks = events.select(["user_id", "time", "label"])
    clicks = clicks.filter(pc.equal(clicks.column("label"), 1))
    if _has_impressions(events):
        units = _impressions(events)
        if given_history is not None:
            lengths = pd.Series(
                pc.list_value_length(given_history.column("history")).to_numpy(
                    zero_copy_only=False
                ),
                index=given_history.column("impression_id").to_pandas(),
            )
            lengths = lengths[~lengths.index.duplicated(keep="first")]
            units["history_length"] = (
                units["impression_id"].map(lengths).fillna(0).astype(np.int64).to_numpy()
            )
            return units[["user_id", "time", "history_length"]]
        query_users_column = pa.array(units["user_id"].to_numpy(dtype=object), pa.string())
        query_times = units["time"].to_numpy(np.int64)
    else:
        query_users_column = clicks.column("user_id")
        query_times = clicks.column("time").to_numpy()
        units = pd.DataFrame(
            {"user_id": query_users_column.to_pandas(), "time": query_times.astype(np.int64)}
        )
    click_users, query_users = _user_codes(clicks.column("user_id"), query_users_column)
    click_times = clicks.column("time").to_numpy().astype(np.int64)
    order = sort_by_user_time(click_users, click_times)
    # Queries in (user, time) order make the binary searches cache-friendly.
    query_order = sort_by_user_time(query_users, query_times)
    start, end = history_bounds(
        click_users[order],
        click_times[order],
        query_users[query_order],
        query_times[query_order],
        len(click_users),
    )
    counts = np.empty(len(query_order), dtype=np.int64)
    counts[query_order] = end - start
    units["history_length"] = counts
    return units[["user_id", "time", "history_length"]].reset_index(drop=True)


def truncation_curve(
    lengths: pd.DataFrame, history_lengths: Sequence[int], *, per: str = "example"
) -> pd.DataFrame:
    """How histories fit a window of ``L`` clicks, for each ``L`` in ``history_lengths``.

    Args:
        lengths: pd.DataFrame. The output of :func:`history_lengths`
            (``user_id`` and ``history_length``).
        history_lengths: sequence of int. The values of ``L`` to try, each >= 1.
        per: str. ``"example"`` counts example units; ``"user"`` counts users,
            each by their longest history (a user is truncated when some
            example of theirs is, padded when none fills ``L``). Defaults to
            ``"example"``.

    Returns:
        One row per ``L``: ``history_length`` (L), ``count`` (units or users),
        and the shares ``empty`` (no click), ``padded`` (fewer than L clicks,
        empty ones included), ``exact`` (L clicks), ``truncated`` (more than
        L: older clicks dropped), ``padding_fraction`` (mean share of the L
        slots that are padding) and ``clicks_dropped`` (share of all history
        clicks beyond the most recent L). Shares are NaN when ``count`` is 0.
    """
    if per not in UNITS:
        raise ValueError(f"`per` should be one of {UNITS}. Received: per={per!r}")
    values = list(history_lengths)
    for value in values:
        if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < 1:
            raise ValueError(
                "`history_lengths` should hold integers >= 1. "
                f"Received: history_lengths={list(history_lengths)!r}"
            )
    counts = lengths["history_length"]
    if per == "user":
        counts = lengths.groupby("user_id", sort=False)["history_length"].max()
    counts = counts.to_numpy(np.int64)
    total = max(int(counts.sum()), 1)
    rows = []
    for value in values:
        kept = np.minimum(counts, value)
        rows.append(
            {
                "history_length": int(value),
                "count": len(counts),
                "empty": _mean(counts == 0),
                "padded": _mean(counts < value),
                "exact": _mean(counts == value),
                "truncated": _mean(counts > value),
                "padding_fraction": _mean((value - kept) / value),
                "clicks_dropped": float((counts - kept).sum() / total),
            }
        )
    return pd.DataFrame(rows)


def _mean(values: np.ndarray) -> float:
    return float(np.mean(values)) if len(values) else float("nan")


def item_popularity(events: pa.Table) -> pd.DataFrame:
    """Clicks per item, most clicked first: the long tail.

    Args:
        events: pa.Table. Canonical events.

    Returns:
        One row per item seen in ``events`` (clicked or only shown), sorted by
        clicks (descending) then ``item_id``: ``item_id``, ``clicks``,
        ``events`` (rows, i.e. times shown or clicked), ``rank`` (1 = most
        clicked), ``click_share`` (of all clicks), ``cumulative_share`` (of
        the clicks going to items ranked at or above) and ``item_fraction``
        (``rank / items``).
    """
    events = _check_events(events)
    frame = pd.DataFrame(
        {
            "item_id": events.column("item_id").to_pandas(),
            "clicks": events.column("label").to_numpy() == 1,
        }
    )
    grouped = frame.groupby("item_id", sort=False)["clicks"]
    table = pd.DataFrame({"clicks": grouped.sum().astype(np.int64), "events": grouped.size()})
    table = table.reset_index().sort_values(
        ["clicks", "item_id"], ascending=[False, True], kind="stable"
    )
    table = table.reset_index(drop=True)
    total = max(int(table["clicks"].sum()), 1)
    table["rank"] = np.arange(1, len(table) + 1)
    table["click_share"] = table["clicks"] / total
    table["cumulative_share"] = table["clicks"].cumsum() / total
    table["item_fraction"] = table["rank"] / max(len(table), 1)
    return table


def popularity_concentration(
    popularity: pd.DataFrame, item_fractions: Sequence[float] = (0.01, 0.1, 0.2, 0.5)
) -> pd.DataFrame:
    """The share of all clicks that goes to the most clicked items.

    Args:
        popularity: pd.DataFrame. The output of :func:`item_popularity`.
        item_fractions: sequence of float in (0, 1]. Top fractions of the
            items. Defaults to ``(0.01, 0.1, 0.2, 0.5)``.

    Returns:
        One row per fraction: ``item_fraction``, ``items`` (the top
        ``ceil(fraction * items)``) and ``click_share`` (their share of the clicks).
    """
    fractions = list(item_fractions)
    for fraction in fractions:
        if not 0 < fraction <= 1:
            raise ValueError(
                "`item_fractions` should hold numbers in (0, 1]. "
                f"Received: item_fractions={list(item_fractions)!r}"
            )
    clicks = popularity["clicks"].to_numpy(np.int64)
    total = max(int(clicks.sum()), 1)
    rows = []
    for fraction in fractions:
        top = int(np.ceil(fraction * len(clicks) - 1e-9))
        rows.append(
            {
                "item_fraction": float(fraction),
                "items": top,
                "click_share": float(clicks[:top].sum() / total),
            }
        )
    return pd.DataFrame(rows)


def clicks_over_time(events: pa.Table, freq: str = "1h") -> pd.DataFrame:
    """Clicks, events and active users per period of ``freq``.

    Args:
        events: pa.Table. Canonical events (times in ms since the epoch, UTC).
        freq: str. A pandas frequency such as ``"1h"``, ``"15min"`` or
            ``"1D"``. Defaults to ``"1h"``.

    Returns:
        One row per period from the first event's to the last's, empty
        periods included: ``time`` (period start, UTC timestamps), ``clicks``,
        ``events`` (rows: clicks and shown items) and ``users`` (distinct
        users with an event).
    """
    events = _check_events(events)
    try:
        offset = pd.tseries.frequencies.to_offset(freq)
        pd.Timestamp(0, tz="UTC").floor(offset)
    except (ValueError, TypeError) as err:
        raise ValueError(
            f"`freq` should be a fixed pandas frequency such as '1h'. Received: freq={freq!r}"
        ) from err
    frame = pd.DataFrame(
        {
            "time": pd.to_datetime(events.column("time").to_numpy(), unit="ms", utc=True).floor(
                offset
            ),
            "click": events.column("label").to_numpy() == 1,
            "user_id": events.column("user_id").to_pandas(),
        }
    )
    grouped = frame.groupby("time")
    counts = pd.DataFrame(
        {
            "clicks": grouped["click"].sum().astype(np.int64),
            "events": grouped.size(),
            "users": grouped["user_id"].nunique(),
        }
    )
    if len(counts):
        periods = pd.date_range(counts.index.min(), counts.index.max(), freq=offset)
        counts = counts.reindex(periods, fill_value=0)
    counts.index.name = "time"
    return counts.reset_index()


def item_age_at_click(
    events: pa.Table, publish_times: Mapping[str, int] | pd.Series | None = None
) -> pd.DataFrame:
    """How old each clicked item is when it is clicked.

    News logs rarely carry publication times (MIND's ``news.tsv`` has none;
    Globo's is in a separate metadata file). Without ``publish_times`` an
    item's age is counted from its first appearance in ``events`` (shown or
    clicked; the ``first_seen`` of ``items.parquet``): a lower bound on its
    true age, exact for a portal that shows items as soon as they are published.

    Args:
        events: pa.Table. Canonical events.
        publish_times: mapping or pd.Series, raw item id -> publication time
            (int ms since the epoch, UTC). Defaults to None (first appearance).
            Clicks on items missing from it get a NaN age.

    Returns:
        One row per click: ``user_id``, ``item_id``, ``time`` (ms) and
        ``age_hours`` (float; negative when a click precedes the given
        publication time).
    """
    events = _check_events(events)
    frame = pd.DataFrame(
        {
            "user_id": events.column("user_id").to_pandas(),
            "item_id": events.column("item_id").to_pandas(),
            "time": events.column("time").to_numpy().astype(np.int64),
            "label": events.column("label").to_numpy(),
        }
    )
    if publish_times is None:
        published = frame.groupby("item_id", sort=False)["time"].min()
    elif isinstance(publish_times, Mapping | pd.Series):
        published = pd.Series(publish_times, dtype="float64")
    else:
        raise ValueError(
            "`publish_times` should be a mapping or pd.Series from item id to ms. "
            f"Received: publish_times of type {type(publish_times).__name__}"
        )
    clicks = frame[frame["label"] == 1].reset_index(drop=True)
    start = clicks["item_id"].map(published).astype("float64")
    clicks["age_hours"] = (clicks["time"] - start) / MS_PER_HOUR
    return clicks[["user_id", "item_id", "time", "age_hours"]]
