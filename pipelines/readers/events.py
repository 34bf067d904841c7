"""Reader for generic click logs: CSV/TSV, Parquet or JSON Lines, gzipped or not.

One row of the log is one event: a user, an item, a time and optionally an
event type (click or impression), an impression/request id and a session id.
Column names are options, so most logs need no code::

    result = events.read(
        ["logs/2024-05-*.csv.gz"],
        user_col="uid", item_col="doc", time_col="ts", event_col="action",
    )

Inputs may be files, directories (their ``.csv``, ``.tsv``, ``.parquet``,
``.jsonl`` files, optionally ``.gz``), glob patterns or zip archives. The
format comes from the suffix (``file_format`` overrides it); a file without a
known suffix is sniffed (Parquet magic, a leading ``{`` for JSON Lines, a tab
in the first line for TSV, else CSV). Pickles are refused, never loaded.

Timestamps are epoch seconds or milliseconds (``time_unit="s"``/``"ms"``, or
``"auto"``: values above ``1e11`` are milliseconds), or ISO-8601 strings
(``time_unit="iso"`` or ``"auto"``; no zone means UTC), or Parquet timestamps.
Without an event column every row is a click (label 1). Empty impression or
session ids are null. Line numbers in messages and ``source_line`` are
1-based lines of the text file (the header is line 1), or row numbers for
Parquet.

:func:`read_batches` gives the same rows a batch at a time (bounded memory:
consecutive small files parsed together, a large text or JSON Lines file --
plain, gzipped or in a zip -- in blocks of lines, a large Parquet file in
batches of rows).

Rows are rejected (``BadRowError``, or counted with ``on_bad_rows="skip"``) as
``wrong_field_count``, ``not_utf8``, ``repeated_header`` (a copy of the header
inside the file), ``empty_user``, ``empty_item``, ``bad_timestamp``,
``unknown_event_type``, ``bad_value`` (an extra column that does not convert,
a JSON value of the wrong type) or ``bad_json`` (a line that is not one JSON
object). A missing file or column, or inputs without a single row, raise
``FileNotFoundError`` / ``ValueError`` naming the path and what was expected.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import dataclasses
import functools
import types
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.readers import _files, _table
from pipelines.readers._values import TIME_UNITS, empty_mask, null_mask, parse_time
from pipelines.readers.base import OnBadRows, ReadResult, Rejections, combine
from pipelines.schema import EVENTS

#: Text files are parsed together up to about this many bytes.
BATCH_BYTES = 128 << 20
FILE_FORMATS = ("auto", "csv", "tsv", "jsonl", "parquet")
DEFAULT_EVENT_LABELS = types.MappingProxyType({"click": 1, "impression": 0, "view": 0, "show": 0})

_SUFFIXES = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
}
_PICKLE_SUFFIXES = (".pkl", ".pickle", ".joblib", ".npy", ".npz")
_TIME_EXPECTED = {
    "auto": "expected epoch seconds, epoch milliseconds or an ISO-8601 date-time",
    "s": "expected epoch seconds",
    "ms": "expected epoch milliseconds",
    "iso": "expected an ISO-8601 date-time",
}


@dataclasses.dataclass(frozen=True)
class EventColumns:
    """Where a log keeps each canonical field, and how to read it.

    Attributes:
        user: column of user ids.
        item: column of item ids.
        time: column of timestamps.
        event: column of event types, or ``None`` (every row is a click).
        impression: column of impression / request ids, or ``None``.
        session: column of session ids, or ``None``.
        time_unit: ``"auto"``, ``"s"``, ``"ms"`` or ``"iso"``.
        event_labels: event type -> label (1 = click, 0 = shown).
        extra: further columns to keep, name -> Arrow type (``pa.string()``
            keeps the text); a value that does not convert rejects its row
            as ``bad_value``.
    """

    user: str = "user_id"
    item: str = "item_id"
    time: str = "timestamp"
    event: str | None = None
    impression: str | None = None
    session: str | None = None
    time_unit: str = "auto"
    event_labels: Mapping[str, int] = dataclasses.field(
        default_factory=lambda: dict(DEFAULT_EVENT_LABELS)
    )
    extra: Mapping[str, pa.DataType] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        for option, value in (
            ("user_col", self.user),
            ("item_col", self.item),
            ("time_col", self.time),
        ):
            if not isinstance(value, str) or not value:
                raise ValueError(
                    f"`{option}` should be a non-empty column name. Received: {option}={value!r}"
                )
        for option, value in (
            ("event_col", self.event),
            ("impression_col", self.impression),
            ("session_col", self.session),
        ):
            if value is not None and (not isinstance(value, str) or not value):
                raise ValueError(
                    f"`{option}` should be a column name or None. Received: {option}={value!r}"
                )
        if self.time_unit not in TIME_UNITS:
            raise ValueError(
                f"`time_unit` should be one of {TIME_UNITS}. Received: time_unit={self.time_unit!r}"
            )
        labels = dict(self.event_labels)
        if not labels or any(
            not isinstance(key, str) or value not in (0, 1) or isinstance(value, bool)
            for key, value in labels.items()
        ):
            raise ValueError(
                "`event_labels` should map event type strings to 0 or 1. "
                f"Received: event_labels={labels!r}"
            )
        object.__setattr__(self, "event_labels", types.MappingProxyType(labels))
        extra = dict(self.extra)
        for name, kind in extra.items():
            if name in EVENTS.names or not isinstance(kind, pa.DataType):
                raise ValueError(
                    "`extra_cols` should map column names other than the canonical ones "
                    f"{EVENTS.names} to Arrow types. Received: extra_cols={extra!r}"
                )
        object.__setattr__(self, "extra", types.MappingProxyType(extra))
        mapped = [column for column in self.columns if column]
        if len(set(mapped)) != len(mapped):
            raise ValueError(f"Each source column may be used once. Received columns: {mapped}")

    @property
    def columns(self) -> tuple[str, ...]:
        """Every source column read, canonical ones first."""
        optional = (self.event, self.impression, self.session)
        return (
            self.user,
            self.item,
            self.time,
            *(column for column in optional if column),
            *self.extra,
        )

    @property
    def native(self) -> tuple[str, ...]:
        """Columns whose numbers stay numbers (the rest are read as text)."""
        return (self.time, *(name for name, kind in self.extra.items() if kind != pa.string()))

    @property
    def fast_types(self) -> dict[str, pa.DataType]:
        """Column types to try first when parsing text."""
        typed = {name: kind for name, kind in self.extra.items()}
        if self.time_unit in ("s", "ms"):
            typed[self.time] = pa.int64()
        return typed


def read(
    inputs: str | Path | Sequence[str | Path],
    *,
    on_bad_rows: OnBadRows = "error",
    **options,
) -> ReadResult:
    """Read a generic click log into canonical events.

    Args:
        inputs: files, directories, globs or zip archives (see module docs).
        on_bad_rows: ``"error"`` raises ``BadRowError`` at the first bad row;
            ``"skip"`` drops bad rows and counts them by reason.
        **options: the column mapping and format (keyword only):

            * ``user_col``, ``item_col``, ``time_col``: columns of user ids,
              item ids and times (defaults ``user_id``, ``item_id``, ``timestamp``).
            * ``event_col``: column of event types, mapped by ``event_labels``;
              an unmapped value is rejected as ``unknown_event_type``. ``None``
              (the default): every row is a click.
            * ``impression_col``, ``session_col``: optional id columns.
            * ``time_unit``: ``"auto"`` (the default), ``"s"``, ``"ms"`` or ``"iso"``.
            * ``event_labels``: event type -> label. Defaults to ``click`` -> 1,
              ``impression``/``view``/``show`` -> 0.
            * ``extra_cols``: more columns to keep in the events table, as a
              list of names (kept as strings) or a name -> Arrow type mapping.
            * ``file_format``: ``"auto"`` (by suffix, the default) or one of
              ``"csv"``, ``"tsv"``, ``"jsonl"``, ``"parquet"``.
            * ``delimiter``: field separator of text files; defaults to ``,``
              for CSV and tab for TSV.

    Returns:
        A ``ReadResult`` whose ``rows_read`` counts log rows:
        ``combine(read_batches(...))`` with the same arguments.
    """
    return combine(read_batches(inputs, on_bad_rows=on_bad_rows, **options))


def read_batches(
    inputs: str | Path | Sequence[str | Path],
    *,
    on_bad_rows: OnBadRows = "error",
    batch_bytes: int = BATCH_BYTES,
    workers: int = 2,
    **options,
) -> Iterator[ReadResult]:
    """``read`` one batch at a time, in bounded memory.

    Args:
        inputs, on_bad_rows, **options: as for :func:`read` (an unknown option
            is a ``TypeError``).
        batch_bytes: int. Text is parsed in batches of about this many bytes:
            consecutive small files together, a larger file in blocks of whole
            lines read from disk (or from its zip member, gzipped or not) as
            they are needed; a larger Parquet file in batches of rows of about
            this many decoded bytes (a gzipped one or a zip member is first
            copied to a temporary file). A JSON Lines file read in several
            blocks has its columns checked once its last block is read.
            Defaults to ``BATCH_BYTES``.
        workers: int. Batches parsed at once, in threads. Defaults to 2.

    Returns:
        An iterator of ``ReadResult``, one per batch, in input order: each
        with its events, its ``rows_read`` and ``rejections`` (summed over the
        batches they give the whole read's), its ``progress``; the last one
        also carries ``inputs``. Arguments are checked at the call; a bad row
        (``on_bad_rows="error"``) raises when its batch is reached.
    """
    spec, sources, file_format, delimiter = _setup(inputs, **options)
    batches = read_source_batches(
        sources,
        spec,
        on_bad_rows=on_bad_rows,
        file_format=file_format,
        delimiter=delimiter,
        batch_bytes=batch_bytes,
        workers=workers,
    )
    return _with_mapping_hint(batches, spec)


def _setup(
    inputs,
    *,
    user_col: str = "user_id",
    item_col: str = "item_id",
    time_col: str = "timestamp",
    event_col: str | None = None,
    impression_col: str | None = None,
    session_col: str | None = None,
    time_unit: str = "auto",
    event_labels: Mapping[str, int] | None = None,
    extra_cols: Mapping[str, pa.DataType] | Sequence[str] | None = None,
    file_format: str = "auto",
    delimiter: str | None = None,
) -> tuple[EventColumns, list[_files.Source], str, str | None]:
    """Check the options and resolve the inputs."""
    if extra_cols is None:
        extra_cols = {}
    elif not isinstance(extra_cols, Mapping):
        extra_cols = dict.fromkeys(extra_cols, pa.string())
    spec = EventColumns(
        user=user_col,
        item=item_col,
        time=time_col,
        event=event_col,
        impression=impression_col,
        session=session_col,
        time_unit=time_unit,
        event_labels=DEFAULT_EVENT_LABELS if event_labels is None else event_labels,
        extra=extra_cols,
    )
    if file_format not in FILE_FORMATS:
        raise ValueError(
            f"`file_format` should be one of {FILE_FORMATS}. Received: file_format={file_format!r}"
        )
    if delimiter is not None and (not isinstance(delimiter, str) or len(delimiter) != 1):
        raise ValueError(
            f"`delimiter` should be a single character. Received: delimiter={delimiter!r}"
        )
    sources = _files.resolve(
        inputs,
        accept=_is_log_file,
        expected="event log files (.csv, .tsv, .parquet, .jsonl, optionally .gz)",
    )
    return spec, sources, file_format, delimiter


def _is_log_file(name: str) -> bool:
    return Path(name).suffix.lower() in _SUFFIXES


def read_sources(sources: Sequence[_files.Source], spec: EventColumns, **options) -> ReadResult:
    """Read resolved sources with a column mapping, whole (see :func:`read_source_batches`)."""
    return combine(read_source_batches(sources, spec, **options))


def read_source_batches(
    sources: Sequence[_files.Source],
    spec: EventColumns,
    *,
    on_bad_rows: OnBadRows = "error",
    file_format: str = "auto",
    delimiter: str | None = None,
    batch_bytes: int = BATCH_BYTES,
    workers: int = 2,
) -> Iterator[ReadResult]:
    """``read_batches`` over resolved sources with a column mapping (shared with Globo)."""
    for name, value in (("batch_bytes", batch_bytes), ("workers", workers)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"`{name}` should be a positive integer. Received: {name}={value!r}")
    Rejections(on_bad_rows)  # checks the value now
    sources = list(sources)
    return _batches(sources, spec, on_bad_rows, file_format, delimiter, batch_bytes, workers)


@dataclasses.dataclass
class _Task:
    """A batch to parse: consecutive blocks of text, a block of JSON Lines, or Parquet rows.

    Attributes:
        kind: ``"csv"``, ``"tsv"``, ``"jsonl"`` or ``"parquet"``.
        blocks: the text pieces; one piece for JSON Lines and Parquet (for
            streamed Parquet rows, its ``data`` is empty and ``first_line``
            is the first row's number).
        bytes: the text bytes in ``blocks``.
        progress: fraction of the inputs' stored bytes consumed once it is read.
        rows: streamed Parquet rows, or ``None``.
        part: for JSON Lines, whether the piece is one of several blocks of
            its source (its required columns are then checked over the whole
            source, see :func:`_batches`); ``last`` marks the source's last one.
    """

    kind: str
    blocks: list[_table.Piece]
    bytes: int = 0
    progress: float = 1.0
    rows: pa.Table | None = None
    part: bool = False
    last: bool = True


def _with_mapping_hint(batches: Iterator[ReadResult], spec: EventColumns):
    """``batches``, a missing column's error extended with the option that maps it (for
    the events reader, whose columns the user names; not for Globo's fixed ones)."""
    try:
        yield from batches
    except _table.MissingColumnsError as err:
        raise _table.MissingColumnsError(
            f"{err}. {_mapping_hint(spec, err.missing)}", err.missing
        ) from None


def _mapping_hint(spec: EventColumns, missing: Sequence[str]) -> str:
    """How to name the columns the log calls otherwise: the option of each missing one."""
    options = {
        spec.user: "user_col",
        spec.item: "item_col",
        spec.time: "time_col",
        spec.event: "event_col",
        spec.impression: "impression_col",
        spec.session: "session_col",
    }
    named = [
        f"--{options[column].replace('_', '-')} NAME (now {column!r})"
        for column in missing
        if column in options
    ]
    if not named:
        return "Check the names of the extra columns asked for"
    return (
        f"Name the log's own columns with {', '.join(named)}; in Python and in the "
        "[prepare] table of --config the same options are spelled "
        f"{', '.join(options[column] for column in missing if column in options)}"
    )


def _batches(sources, spec, on_bad_rows, file_format, delimiter, batch_bytes, workers):
    sizes = _files.sizes(sources)
    tasks = _tasks(
        sources, file_format, delimiter, batch_bytes, workers, sizes, columns=spec.columns
    )
    parse = functools.partial(_parse_task, spec=spec, delimiter=delimiter, on_bad_rows=on_bad_rows)
    rows_read, held = 0, None
    found: set[str] | None = None  # the keys seen so far in a JSON Lines source read in blocks
    for result, task, seen in _ordered_map(parse, tasks, workers):
        rows_read += result.rows_read
        if task.part:
            found = (found or set()) | set(seen) if seen is not None else found
            if task.last:
                if found is not None:
                    _table._missing_columns(task.blocks[0].name, spec.columns, sorted(found))
                found = None
        if held is not None:
            yield held
        held = result
    _table.check_not_empty(rows_read, sources, "at least one event")
    held.inputs = _files.fingerprint(sources)
    yield held


def _ordered_map(function, items: Iterator, workers: int) -> Iterator:
    """``function`` over ``items`` in ``workers`` threads, results in order, few pending.

    An error raised while producing the items surfaces only after the
    results of the items before it (as if all ran in order).
    """
    pending: collections.deque = collections.deque()
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=workers)
    try:
        failure = None
        while True:
            try:
                item = next(items)
            except StopIteration:
                break
            except Exception as error:  # surfaces after the results before it
                failure = error
                break
            pending.append(pool.submit(function, item))
            if len(pending) > workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
        if failure is not None:
            raise failure
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        if hasattr(items, "close"):
            items.close()


def _tasks(
    sources, file_format, delimiter, batch_bytes, workers, sizes=None, columns=None
) -> Iterator[_Task]:
    """Group the blocks of the sources into parse tasks, in order.

    With ``sizes`` (one ``_files.Size`` per source), each task has its
    ``progress``, and a large source is streamed: text in blocks of lines,
    Parquet in batches of rows; without, every source is read whole. An error
    reading or sniffing a source surfaces after the tasks of the sources
    before it. ``columns`` are the columns of streamed Parquet to read (and
    require); ``None`` reads them all.
    """
    unsplittable, row_streamed = set(), set()
    for index, source in enumerate(sources):
        hint = _kind_hint(source, file_format)
        content = sizes[index].content if sizes else None
        large = bool(sizes) and (content is None or content > batch_bytes)
        if hint is None and large:
            try:
                hint = detect_format(source, _files.head(source, 1 << 16), file_format)
            except (ValueError, OSError):  # read whole: the error comes in its turn
                hint = None
        if sizes is None or hint not in ("csv", "tsv", "jsonl"):
            unsplittable.add(index)
        if hint == "parquet" and large and source.streamable:
            row_streamed.add(index)
    stored = np.array([size.stored for size in sizes] if sizes else [0] * len(sources), float)
    before = np.concatenate([[0.0], np.cumsum(stored)])
    total = max(before[-1], 1.0)
    position = {id(source): index for index, source in enumerate(sources)}
    task = None
    kind, line, header = None, 1, None
    parts = _parts(
        sources,
        row_streamed,
        batch_bytes=batch_bytes,
        whole=lambda source: position[id(source)] in unsplittable,
        workers=workers,
        sizes=sizes,
        columns=columns,
    )
    while True:
        try:
            block = next(parts)
            if block.index == 0:
                data = block.data if block.rows is None else _files.head(block.source, 4)
                kind = detect_format(block.source, data, file_format)
                line, header = 1, None
        except StopIteration:
            break
        except Exception:
            if task is not None:  # the earlier blocks first
                yield task
            raise
        source = block.source
        index = position[id(source)]
        progress = float((before[index] + block.done * stored[index]) / total)
        piece = _table.Piece(source.name, block.data, line, header)
        if task is not None and (kind != task.kind or task.bytes + len(block.data) > batch_bytes):
            yield task
            task = None
        if kind in ("parquet", "jsonl"):
            part = not (block.index == 0 and block.last)
            yield _Task(
                kind,
                [piece],
                len(block.data),
                progress if sizes else 1.0,
                rows=block.rows,
                part=part,
                last=block.last,
            )
            line += block.data.count(b"\n") if block.rows is None else block.rows.num_rows
            continue
        if task is None:
            task = _Task(kind, [])
        task.blocks.append(piece)
        task.bytes += len(block.data)
        task.progress = progress if sizes else 1.0
        if not block.last:
            if block.index == 0:
                header = tuple(
                    _table.header_of(block.data, _delimiter(kind, delimiter), kind == "csv")
                )
            line += block.data.count(b"\n")
    if task is not None:
        yield task


@dataclasses.dataclass(frozen=True)
class _Part:
    """A ``_files.Block`` of text, or (``rows`` set, ``data`` empty) a batch of Parquet rows."""

    source: _files.Source
    data: bytes
    index: int
    last: bool
    done: float
    rows: pa.Table | None = None


def _parts(
    sources, row_streamed, *, batch_bytes, whole, workers, sizes, columns
) -> Iterator[_Part]:
    """The blocks of the sources in order; those in ``row_streamed`` (Parquet) as rows."""
    run: list[int] = []

    def blocks() -> Iterator[_Part]:
        found = _files.read_blocks(
            [sources[i] for i in run],
            block_bytes=batch_bytes,
            whole=whole,
            workers=workers,
            known_sizes=[sizes[i] for i in run] if sizes else None,
        )
        for block in found:
            yield _Part(block.source, block.data, block.index, block.last, block.done)

    for index, source in enumerate(sources):
        if index not in row_streamed:
            run.append(index)
            continue
        if run:
            yield from blocks()
            run = []
        yield from _parquet_parts(source, batch_bytes, columns)
    if run:
        yield from blocks()


def _parquet_parts(source: _files.Source, batch_bytes: int, columns) -> Iterator[_Part]:
    """A Parquet source as batches of about ``batch_bytes`` of its ``columns`` (all if None)."""
    with contextlib.ExitStack() as stack:
        file = _files.seekable(source, stack)
        batches = _table.parquet_batches(
            source.name, file, required=columns or (), include=columns, batch_bytes=batch_bytes
        )
        previous, index = None, 0
        for table, _, done in batches:
            if previous is not None:
                yield _Part(source, b"", index, False, min(previous[1], 0.999), previous[0])
                index += 1
            previous = table, done
        yield _Part(source, b"", index, True, 1.0, previous[0])


def _kind_hint(source: _files.Source, file_format: str) -> str | None:
    """The format of a source known without reading it: by ``file_format`` or suffix."""
    if file_format != "auto":
        return file_format
    return _SUFFIXES.get(Path(source.stem).suffix.lower())


def _delimiter(kind: str, delimiter: str | None) -> str:
    return delimiter or ("\t" if kind == "tsv" else ",")


def _parse_task(task: _Task, *, spec, delimiter, on_bad_rows) -> tuple[ReadResult, _Task, list]:
    """Parse one task into canonical events, with its accounting.

    Returns the result, the task, and for a JSON Lines block with rows or
    keys the keys it gives values (else ``None``).
    """
    rejections = Rejections(on_bad_rows)
    chunks = _task_chunks(task, spec, delimiter)
    seen = chunks[0].columns_found
    if seen is not None and not (seen or chunks[0].table.num_rows):
        seen = None
    events = _to_events_many(chunks, spec, rejections)
    result = ReadResult(
        events=events,
        rows_read=sum(chunk.rows_read for chunk in chunks),
        rejections=rejections,
        progress=task.progress,
    )
    return result, task, seen


def _task_chunks(task: _Task, spec: EventColumns, delimiter) -> list[_table.Chunk]:
    if task.kind == "jsonl":
        (piece,) = task.blocks
        chunk = _table.read_jsonl(
            piece.name,
            piece.data,
            required=() if task.part else spec.columns,
            include=spec.columns,
            native=spec.native,
            first_line=piece.first_line,
        )
        return [chunk]
    if task.kind == "parquet":
        (piece,) = task.blocks
        if task.rows is not None:
            chunk = _table.parquet_chunk(
                piece.name,
                task.rows,
                include=spec.columns,
                native=spec.native,
                first_row=piece.first_line,
            )
        else:
            chunk = _table.read_parquet(
                piece.name,
                piece.data,
                required=spec.columns,
                include=spec.columns,
                native=spec.native,
            )
        return [chunk]
    return _table.read_delimited_pieces(
        task.blocks,
        delimiter=_delimiter(task.kind, delimiter),
        required=spec.columns,
        include=spec.columns,
        quoted=task.kind == "csv",
        types=spec.fast_types,
    )


def detect_format(source: _files.Source, data: bytes, file_format: str = "auto") -> str:
    """The format of one source: by ``file_format``, suffix, or content."""
    suffix = Path(source.stem).suffix.lower()
    if suffix in _PICKLE_SUFFIXES or data[:1] == b"\x80":
        raise ValueError(f"{source.name}: looks like a pickle; feedrec never loads pickles")
    if file_format != "auto":
        return file_format
    if suffix in _SUFFIXES:
        return _SUFFIXES[suffix]
    if data[:4] == b"PAR1":
        return "parquet"
    if _files.strip_bom(data).lstrip()[:1] == b"{":
        return "jsonl"
    return "tsv" if b"\t" in data[: data.find(b"\n")] else "csv"


def _chunks(sources, spec, file_format, delimiter) -> Iterator[_table.Chunk]:
    """The chunks of whole sources, in order (each source read whole)."""
    for task in _tasks(list(sources), file_format, delimiter, BATCH_BYTES, workers=2):
        yield from _task_chunks(task, spec, delimiter)


def _to_events(chunk: _table.Chunk, spec: EventColumns, rejections: Rejections) -> pa.Table:
    """Check values, report bad rows and build the canonical events of one chunk."""
    return _to_events_many([chunk], spec, rejections)


def _to_events_many(
    chunks: list[_table.Chunk], spec: EventColumns, rejections: Rejections
) -> pa.Table:
    """The canonical events of chunks sharing one ``names`` list, rows in (source, line) order.

    Problems are reported in that order too, so ``on_bad_rows="error"``
    raises at the first bad row of the first source that has one.
    """
    for chunk in chunks:
        _canonical(chunk, spec)
    _table.report(rejections, chunks)
    kept = [chunk.kept() for chunk in chunks]
    table = kept[0][0] if len(kept) == 1 else pa.concat_tables([k[0] for k in kept])
    lines = np.concatenate([k[1] for k in kept])
    sources = np.concatenate([k[2] for k in kept])
    if len(sources) > 1 and (np.diff(sources) < 0).any():
        order = np.argsort(sources, kind="stable")
        table, lines, sources = table.take(pa.array(order)), lines[order], sources[order]
    table = _table.add_sources(table, chunks[0].names, sources, lines, position=6)
    schema = pa.schema([*EVENTS, *(pa.field(name, kind) for name, kind in spec.extra.items())])
    return table.cast(schema)


def _canonical(chunk: _table.Chunk, spec: EventColumns) -> None:
    """Check the values of a chunk and replace its table by the canonical columns."""
    rows = chunk.table.num_rows
    user = _text(chunk.values(spec.user))
    chunk.reject(empty_mask(user), "empty_user", spec.user, "user id is empty", user)
    item = _text(chunk.values(spec.item))
    chunk.reject(empty_mask(item), "empty_item", spec.item, "item id is empty", item)
    times = chunk.values(spec.time)
    milliseconds, failed = parse_time(times, spec.time_unit)
    chunk.reject(failed, "bad_timestamp", spec.time, _TIME_EXPECTED[spec.time_unit], times)
    if spec.event:
        labels = _labels(chunk, spec)
    else:
        labels = np.ones(rows, dtype=np.int8)
    for name, kind in spec.extra.items():
        chunk.convert(name, kind)
    columns = {
        "user_id": user,
        "item_id": item,
        "time": pa.array(milliseconds, pa.int64()),
        "label": pa.array(labels, pa.int8()),
        "impression_id": _optional_id(chunk, spec.impression, rows),
        "session_id": _optional_id(chunk, spec.session, rows),
    }
    columns.update({name: chunk.values(name) for name in spec.extra})
    chunk.table = pa.table(columns)


def _labels(chunk: _table.Chunk, spec: EventColumns) -> np.ndarray:
    values = _text(chunk.values(spec.event))
    known = pa.array(list(spec.event_labels), pa.string())
    index = pc.index_in(values, value_set=known)
    unknown = null_mask(index)
    reason = f"expected one of {sorted(spec.event_labels)}"
    chunk.reject(unknown, "unknown_event_type", spec.event, reason, values)
    label_of = np.asarray(list(spec.event_labels.values()), dtype=np.int8)
    return label_of[np.asarray(pc.fill_null(index, 0).to_numpy(), dtype=np.int64)]


def _text(values: pa.Array) -> pa.Array:
    return values if values.type == pa.string() else pc.cast(values, pa.string())


def _optional_id(chunk: _table.Chunk, column: str | None, rows: int) -> pa.Array:
    if column is None:
        return pa.nulls(rows, pa.string())
    values = _text(chunk.values(column))
    empty = empty_mask(values)
    return (
        pc.if_else(pa.array(empty), pa.nulls(rows, pa.string()), values) if empty.any() else values
    )
