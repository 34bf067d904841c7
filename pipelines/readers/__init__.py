"""Readers: the only code that opens raw log files.

Each reader turns one log format into the canonical events table
(``pipelines.schema.EVENTS``) and accounts for every raw row
(``rows_read == rows_used + rows_rejected``)::

    from pipelines import readers

    result = readers.read("globo", ["clicks_hour_000-309.zip"], on_bad_rows="skip")
    result.events            # pyarrow.Table, EVENTS columns (+ context columns)
    result.rejections.by_reason

Formats: ``mind`` (:mod:`.mind`), ``events`` (generic CSV/TSV/Parquet/JSON
Lines, :mod:`.events`), ``globo`` (:mod:`.globo`) and ``sequences``
(SASRec-style ``user item`` lines, :mod:`.sequences`). No reader imports
TensorFlow.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pipelines.readers import events, globo, mind, sequences
from pipelines.readers.base import BadRowError, OnBadRows, ReadResult, Rejections

READERS = {
    "mind": mind.read,
    "events": events.read,
    "globo": globo.read,
    "sequences": sequences.read,
}

__all__ = ["READERS", "BadRowError", "OnBadRows", "ReadResult", "Rejections", "read"]


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
