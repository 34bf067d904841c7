"""Reader for SASRec-style sequence files: one ``user item`` pair per line.

Each line holds a user id and an item id separated by spaces or tabs, and
each user's lines are in time order (the users themselves may come in any
order, even interleaved). Files may be gzipped. The format has **no
timestamps**: ``time`` is set to the line's position within its user's
sequence (``0, 1, 2, ...``, counted over the rows kept, across all inputs in
order), which preserves the order and nothing more. Stages should therefore
split such data per user, leaving the last items out, rather than by time.
Every row is a click (label 1); there are no impressions or sessions.

A directory input contributes its ``.txt`` files (optionally ``.gz``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.readers import _files, _table
from pipelines.readers.base import OnBadRows, ReadResult, Rejections
from pipelines.schema import EVENTS

COLUMNS = ("user_id", "item_id")


def read(
    inputs: str | Path | Sequence[str | Path],
    *,
    on_bad_rows: OnBadRows = "error",
    **format_options,
) -> ReadResult:
    """Read ``user item`` lines into canonical events.

    Args:
        inputs: files, directories (their ``.txt`` files), globs or zips.
        on_bad_rows: ``"error"`` raises ``BadRowError`` at the first bad row;
            ``"skip"`` drops bad rows (``wrong_field_count``, ``not_utf8``)
            and counts them.
        **format_options: none are accepted (``ValueError``).

    Returns:
        A ``ReadResult`` whose ``rows_read`` counts interactions.
    """
    _table.no_format_options("sequences", format_options)
    sources = _files.resolve(
        inputs,
        accept=lambda name: name.lower().endswith(".txt"),
        expected="user-item sequence files (.txt, optionally .gz)",
    )
    rejections = Rejections(on_bad_rows)
    tables = []
    rows_read = 0
    for source, data in _files.read_all(sources):
        chunk = _table.read_delimited(
            source.name, data, delimiter=_table.WHITESPACE, columns=COLUMNS
        )
        rows_read += chunk.rows_read
        table, lines = chunk.finish(rejections)
        tables.append(_table.add_source(table, source.name, lines, position=2))
    _table.check_not_empty(rows_read, sources, "`user item` lines")
    table = pa.concat_tables(tables)
    rows = table.num_rows
    events = pa.table(
        {
            "user_id": table.column("user_id"),
            "item_id": table.column("item_id"),
            "time": pa.array(positions(table.column("user_id")), pa.int64()),
            "label": pa.array(np.ones(rows, dtype=np.int8)),
            "impression_id": pa.nulls(rows, pa.string()),
            "session_id": pa.nulls(rows, pa.string()),
            "source_file": table.column("source_file"),
            "source_line": table.column("source_line"),
        },
        schema=EVENTS,
    )
    return ReadResult(
        events=events,
        rows_read=rows_read,
        rejections=rejections,
        inputs=_files.fingerprint(sources),
    )


def positions(users: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Position of each row within its user's rows, in order: ``0, 1, 2, ...``.

    Example: users ``[a, a, b, a, b]`` give ``[0, 1, 0, 2, 1]``.
    """
    if isinstance(users, pa.ChunkedArray):
        users = users.combine_chunks()
    codes = pc.dictionary_encode(users).indices
    codes = np.asarray(codes.to_numpy(zero_copy_only=False), dtype=np.int64)
    order = np.argsort(codes, kind="stable")
    ordered = codes[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    run_start = np.repeat(starts, np.diff(np.r_[starts, len(codes)]))
    result = np.empty(len(codes), dtype=np.int64)
    result[order] = np.arange(len(codes)) - run_start
    return result
