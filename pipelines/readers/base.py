"""What every reader returns, and how readers report bad rows.

A reader is the only code that opens raw files. It turns one log format into
the canonical ``EVENTS`` table (``pipelines.schema.EVENTS``) and accounts for
every raw row it read: ``rows_read == rows_used + rows_rejected``, where a
"raw row" is an impression for MIND, a click for Globo/events and an
interaction for SASRec-style sequences.
"""

from __future__ import annotations

import collections
import dataclasses
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
    """

    events: pa.Table
    rows_read: int
    rejections: Rejections
    items: pa.Table | None = None
    given_history: pa.Table | None = None
    inputs: list[dict] = dataclasses.field(default_factory=list)
    item_rejections: Rejections | None = None
    items_read: int | None = None

    @property
    def rows_rejected(self) -> int:
        return self.rejections.total

    @property
    def rows_used(self) -> int:
        return self.rows_read - self.rows_rejected
