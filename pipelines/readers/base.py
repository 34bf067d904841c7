"""What every reader returns, and how readers report bad rows.

A reader is the only code that opens raw files. It turns one log format into
the canonical ``EVENTS`` table (``pipelines.schema.EVENTS``) and accounts for
every raw row it read: ``rows_read == rows_used + rows_rejected``, where a
"raw row" is an impression for MIND, a click for Globo/events and an
interaction for SASRec-style sequences.

Readers also stream: ``read_batches(inputs, ...)`` yields one
:class:`ReadResult` per batch of raw rows (a batch of small files, a block of
a large file), each with its own accounting, so that a log larger than
memory is read a bounded piece at a time; :func:`combine` puts the batches
back together, and ``read(...) == combine(read_batches(...))``.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Iterable
from typing import Literal

import pyarrow as pa

OnBadRows = Literal["error", "skip"]


class BadRowError(ValueError):
    """A malformed raw row, with where and why.

    ``str(err)`` reads like ``behaviors.tsv, line 17, field `time`: expected
    M/D/YYYY h:mm:ss AM/PM, received '13/45/2019'``; the CLI prints it and
    exits non-zero without a traceback.
    """

    def __init__(self, file: str, line: int | None, field: str | None, reason: str, value=None):
        self.file, self.line, self.field, self.reason, self.value = file, line, field, reason, value
        where = file if line is None else f"{file}, line {line}"
        what = f"field `{field}`: " if field else ""
        received = "" if value is None else f", received {value!r}"
        super().__init__(f"{where}: {what}{reason}{received}")


class Rejections:
    """Counts rejected raw rows by reason, or raises on the first one.

    ``reason`` is a short stable key such as ``bad_timestamp``,
    ``wrong_field_count``, ``empty_user``, ``empty_item``, ``bad_impression_token``,
    ``not_utf8``, ``repeated_header``; the manifest reports these counts. The
    readers also use ``unknown_event_type``, ``bad_value``, ``bad_json``,
    ``empty_impression_id`` and ``duplicate_impression_id``, and prefix the
    keys of item-metadata rows with ``news_`` (MIND ``news.tsv``).
    """

    def __init__(self, on_bad_rows: OnBadRows = "error", max_examples: int = 5):
        if on_bad_rows not in ("error", "skip"):
            raise ValueError(
                f"`on_bad_rows` should be 'error' or 'skip'. Received: on_bad_rows={on_bad_rows!r}"
            )
        self.on_bad_rows = on_bad_rows
        self.by_reason: collections.Counter[str] = collections.Counter()
        self.examples: dict[str, list[str]] = collections.defaultdict(list)
        self._max_examples = max_examples

    def reject(self, key: str, error: BadRowError, count: int = 1) -> None:
        """Record ``count`` raw rows rejected for ``key``; raise if not skipping."""
        if self.on_bad_rows == "error":
            raise error
        self.by_reason[key] += count
        if len(self.examples[key]) < self._max_examples:
            self.examples[key].append(str(error))

    @property
    def total(self) -> int:
        return sum(self.by_reason.values())

    def merge(self, other: Rejections) -> None:
        """Add ``other``'s counts and messages (those of a later batch) to these."""
        self.by_reason.update(other.by_reason)
        for key, shown in other.examples.items():
            room = self._max_examples - len(self.examples[key])
            self.examples[key].extend(shown[: max(room, 0)])


@dataclasses.dataclass
class ReadResult:
    """A reader's output.

    Attributes:
        events: canonical events (``pipelines.schema.EVENTS``).
        rows_read: raw rows seen (impressions / clicks / interactions).
        rejections: the rows rejected, by reason.
        items: optional item metadata, one row per raw item id, with string
            columns ``item_id`` and any categorical features (``category``,
            ``subcategory``, ...). MIND fills it from ``news.tsv``.
        given_history: optional table of histories supplied by the log itself
            (MIND's history column): ``impression_id`` (string) and ``history``
            (``list<string>`` of raw item ids, oldest first). When present,
            the history of an impression's examples is this list (plus nothing
            else), instead of being rebuilt from earlier clicks.
        inputs: the files read, as ``{"path", "bytes", "sha256"}`` dicts.
        item_rejections: the item-metadata rows rejected (MIND ``news.tsv``),
            with keys prefixed ``news_``; kept apart so that ``rows_read ==
            rows_used + rows_rejected`` stays about log rows. ``None`` when
            the format has no item file.
        items_read: item-metadata rows seen; ``items_read ==
            items.num_rows + item_rejections.total``. ``None`` when the format
            has no item file.
        progress: for a batch of ``read_batches``, the fraction of the
            inputs' stored bytes consumed once it is read (a zip member counts
            its compressed size), to estimate how many rows are still to come;
            1.0 for the last batch and for a whole ``read``. The last batch
            also carries ``inputs``.
    """

    events: pa.Table
    rows_read: int
    rejections: Rejections
    items: pa.Table | None = None
    given_history: pa.Table | None = None
    inputs: list[dict] = dataclasses.field(default_factory=list)
    item_rejections: Rejections | None = None
    items_read: int | None = None
    progress: float = 1.0

    @property
    def rows_rejected(self) -> int:
        return self.rejections.total

    @property
    def rows_used(self) -> int:
        return self.rows_read - self.rows_rejected


def combine(batches: Iterable[ReadResult]) -> ReadResult:
    """One ``ReadResult`` from the batches of a ``read_batches`` call, in order.

    Events (and given histories, items) are concatenated, counts summed and
    rejections merged, so the accounting of the whole equals the sum of the batches'.
    """
    batches = list(batches)
    if not batches:
        raise ValueError("`batches` should hold at least one ReadResult. Received: []")
    first = batches[0]
    rejections = Rejections(first.rejections.on_bad_rows, first.rejections._max_examples)
    item_rejections = None
    for batch in batches:
        rejections.merge(batch.rejections)
        if batch.item_rejections is not None:
            if item_rejections is None:
                item_rejections = Rejections(batch.item_rejections.on_bad_rows)
            item_rejections.merge(batch.item_rejections)
    items_read = [batch.items_read for batch in batches if batch.items_read is not None]
    return ReadResult(
        events=_concat([batch.events for batch in batches]),
        rows_read=sum(int(batch.rows_read) for batch in batches),
        rejections=rejections,
        items=_concat([batch.items for batch in batches if batch.items is not None]),
        given_history=_concat(
            [batch.given_history for batch in batches if batch.given_history is not None]
        ),
        inputs=[record for batch in batches for record in batch.inputs],
        item_rejections=item_rejections,
        items_read=sum(items_read) if items_read else None,
    )


def _concat(tables: list[pa.Table]) -> pa.Table | None:
    if not tables:
        return None
    return tables[0] if len(tables) == 1 else pa.concat_tables(tables)
