"""Reader for the Globo.com G1 news-portal click log (a preset of ``events``).

The log comes as hourly CSV files ``clicks_hour_NNN.csv``, in a folder or in
the distributed zip (under ``clicks/``), each with the header::

    user_id,session_id,session_start,session_size,click_article_id,click_timestamp,
    click_environment,click_deviceGroup,click_os,click_country,click_region,
    click_referrer_type

One row is one click (label 1); ``click_timestamp`` is epoch milliseconds. The
context columns are kept under their own names as extra int64 columns of the
events table (``CONTEXT_COLUMNS``). A file holding only the header is valid
and has no rows. The reader is built for speed: each file is parsed by
``pyarrow.csv`` with typed columns in one call, and rows are only walked one
by one in a file that has a bad row.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterator, Sequence
from pathlib import Path

import pyarrow as pa

from pipelines.readers import _files, _table, events
from pipelines.readers.base import OnBadRows, ReadResult, combine

FILE_PATTERN = "clicks_hour_*.csv"
CONTEXT_COLUMNS = (
    "session_start",
    "session_size",
    "click_environment",
    "click_deviceGroup",
    "click_os",
    "click_country",
    "click_region",
    "click_referrer_type",
)
COLUMNS = events.EventColumns(
    user="user_id",
    item="click_article_id",
    time="click_timestamp",
    session="session_id",
    time_unit="ms",
    extra=dict.fromkeys(CONTEXT_COLUMNS, pa.int64()),
)


def read(
    inputs: str | Path | Sequence[str | Path],
    *,
    on_bad_rows: OnBadRows = "error",
    **format_options,
) -> ReadResult:
    """Read Globo click files into canonical events.

    Args:
        inputs: the zip archive, folders of ``clicks_hour_*.csv`` files (or
            ``.csv.gz``), globs, or the CSV files themselves.
        on_bad_rows: ``"error"`` raises ``BadRowError`` at the first bad row;
            ``"skip"`` drops bad rows and counts them by reason.
        **format_options: none are accepted (``ValueError``).

    Returns:
        A ``ReadResult`` whose ``rows_read`` counts clicks:
        ``combine(read_batches(...))``.
    """
    return combine(read_batches(inputs, on_bad_rows=on_bad_rows, **format_options))


def read_batches(
    inputs: str | Path | Sequence[str | Path],
    *,
    on_bad_rows: OnBadRows = "error",
    batch_bytes: int = events.BATCH_BYTES,
    workers: int = 2,
    **format_options,
) -> Iterator[ReadResult]:
    """``read`` one batch at a time (see :func:`pipelines.readers.events.read_batches`).

    A zip archive streams member by member (consecutive members parsed
    together up to ``batch_bytes``), a large file in blocks of whole lines.
    """
    _table.no_format_options("globo", format_options)
    sources = _files.resolve(
        inputs,
        accept=lambda name: fnmatch.fnmatch(name, FILE_PATTERN),
        expected=f"Globo click files ({FILE_PATTERN})",
    )
    return events.read_source_batches(
        sources,
        COLUMNS,
        on_bad_rows=on_bad_rows,
        file_format="csv",
        batch_bytes=batch_bytes,
        workers=workers,
    )
