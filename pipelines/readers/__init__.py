"""Readers: the only code that opens raw log files.

Each reader turns one log format into the canonical events table
(``pipelines.schema.EVENTS``) and accounts for every raw row
(``rows_read == rows_used + rows_rejected``)::

    from pipelines import readers

    result = readers.read("globo", ["clicks_hour_000-309.zip"], on_bad_rows="skip")
    result.events            # pyarrow.Table, EVENTS columns (+ context columns)
    result.rejections.by_reason

    for batch in readers.read_batches("globo", ["clicks_hour_000-309.zip"]):
        batch.events             # a bounded part of the log, with its own accounting

Formats: ``mind`` (:mod:`.mind`), ``events`` (generic CSV/TSV/Parquet/JSON
Lines, :mod:`.events`), ``globo`` (:mod:`.globo`) and ``sequences``
(SASRec-style ``user item`` lines, :mod:`.sequences`). No reader imports
TensorFlow.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

from pipelines.readers import events, globo, mind, sequences
from pipelines.readers.base import BadRowError, OnBadRows, ReadResult, Rejections, combine

READERS = {
    "mind": mind.read,
    "events": events.read,
    "globo": globo.read,
    "sequences": sequences.read,
}

#: ``read_batches`` of the formats that stream (one ``ReadResult`` per batch);
#: the others are read whole (see :func:`read_batches`).
BATCH_READERS = {
    "events": events.read_batches,
    "globo": globo.read_batches,
}

__all__ = [
    "BATCH_READERS",
    "READERS",
    "BadRowError",
    "OnBadRows",
    "ReadResult",
    "Rejections",
    "combine",
    "read",
    "read_batches",
]


def read(format: str, inputs: str | Path | Sequence[str | Path], **options) -> ReadResult:
    """Read ``inputs`` with the reader registered for ``format``.

    Args:
        format: one of ``READERS`` (``"mind"``, ``"events"``, ``"globo"``,
            ``"sequences"``).
        inputs: files, directories, globs or archives, as the reader expects.
        **options: the reader's keyword options, e.g. ``on_bad_rows="skip"``
            or, for ``events``, ``user_col="uid"``.
    """
    if format not in READERS:
        raise ValueError(
            f"`format` should be one of {sorted(READERS)}. Received: format={format!r}"
        )
    return READERS[format](inputs, **options)


def read_batches(
    format: str,
    inputs: str | Path | Sequence[str | Path],
    *,
    batch_bytes: int | None = None,
    **options,
) -> Iterator[ReadResult]:
    """Read ``inputs`` one batch at a time, in bounded memory where the format allows.

    ``events`` and ``globo`` stream (``BATCH_READERS``: batches of about
    ``batch_bytes`` of text, a zip member or a block of a large file at a
    time, a large Parquet file in batches of rows); ``mind`` and
    ``sequences`` need the whole log (given histories, positions across
    files) and give one batch. In every case
    ``combine(read_batches(...))`` equals ``read(...)``.

    Args:
        format: one of ``READERS``.
        inputs: as for :func:`read`.
        batch_bytes: int or None. Bytes of raw text per batch; None uses the
            reader's default.
        **options: the reader's keyword options.
    """
    if format not in READERS:
        raise ValueError(
            f"`format` should be one of {sorted(READERS)}. Received: format={format!r}"
        )
    if format not in BATCH_READERS:
        return iter([READERS[format](inputs, **options)])
    if batch_bytes is not None:
        options["batch_bytes"] = batch_bytes
    return BATCH_READERS[format](inputs, **options)
