"""From one raw stream to a table of rows with line numbers and rejected rows.

Each parser returns a :class:`Chunk`: the rows that have the right shape (as
columns, by name), the 1-based line number of each, and the problems found so
far. Readers then run vectorised value checks on the chunk (``Chunk.reject``)
and call ``Chunk.finish`` to report the rejected rows, in line order, and keep
the rest.

Fast path and slow path
-----------------------
Text is parsed by ``pyarrow.csv`` / ``pyarrow.json`` in one call per stream
(pieces of one layout -- small files, blocks of a large one -- are even
parsed together into one chunk that knows each row's source).
The result is trusted only when the stream is valid UTF-8 and the parser
returned exactly one row per line: then row ``i`` is line ``i + 1`` (``i + 2``
under a header). Parsers skip blank lines, so a stream with one fails that
test. This assumes that no quoted field holds a line break, which is true of
every log we read; a stream with one also fails the row-count test. Anything
else (a parse error, a wrong field count, invalid UTF-8, a blank line) sends
the stream to the slow path, which walks it line by line, splits each line
itself and records exact problems. Both paths produce the same columns, so the
value checks that follow (vectorised masks over whole columns) are shared, and
messages are built only for the rows they reject.

Blank lines are not rows: they are neither read nor rejected.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import re
from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.json as pa_json
import pyarrow.parquet as pq

from pipelines.readers._files import count_lines, split_lines, strip_bom, utf8_ok
from pipelines.readers._values import safe_cast, to_numpy_mask
from pipelines.readers.base import BadRowError, Rejections

#: Splits whitespace-separated text: runs of spaces and tabs.
WHITESPACE = None
_WHITESPACE_RUN = re.compile(r"[ \t]+")
_MAX_SHOWN = 120
#: A large stream with a bad line is re-parsed in blocks of about this size.
BLOCK_BYTES = 4 << 20


@dataclasses.dataclass(frozen=True)
class Problem:
    """One rejected raw row: where (``source``, ``line``), why (``key``, ``reason``), what.

    ``source`` indexes the chunk's ``names`` (0 for a single-source chunk).
    """

    line: int
    key: str
    field: str | None
    reason: str
    value: object = None
    source: int = 0


class Chunk:
    """The rows of one source (or of several, parsed together), with line numbers and problems.

    Args:
        name: the source's display name (``source_file``).
        table: one row per well-shaped raw row, columns by name.
        lines: the 1-based line (or row) number of each table row.
        rows_read: raw rows seen, well-shaped or not.
        problems: the rows already rejected (they are not in ``table``).
        names: the display names of several sources, when the chunk holds
            their rows; ``name`` is then ``names[0]``. Defaults to ``[name]``.
        sources: int array, the index in ``names`` of each table row's source
            (sources appear in ``names`` order). Defaults to all 0.
    """

    def __init__(
        self,
        name: str,
        table: pa.Table,
        lines: np.ndarray,
        rows_read: int,
        problems: list[Problem] | None = None,
        *,
        names: Sequence[str] | None = None,
        sources: np.ndarray | None = None,
    ):
        self.name = name
        self.names = [name] if names is None else list(names)
        self.table = table
        self.lines = np.asarray(lines, dtype=np.int64)
        self.sources = (
            np.zeros(table.num_rows, dtype=np.int32)
            if sources is None
            else np.asarray(sources, dtype=np.int32)
        )
        self.rows_read = rows_read
        self.problems = list(problems or [])
        self.bad = np.zeros(table.num_rows, dtype=bool)
        #: JSON Lines only: the keys some line gives a non-null value (else None).
        self.columns_found: list[str] | None = None

    def column(self, name: str) -> pa.Array:
        """A column as one contiguous array."""
        return contiguous(self.table.column(name))

    def values(self, name: str) -> pa.ChunkedArray:
        """A column as it is (chunked: no copy)."""
        return self.table.column(name)

    def reject(
        self,
        mask: np.ndarray,
        key: str,
        field: str | None,
        reason: str,
        values: pa.Array | Sequence | Mapping | None = None,
    ) -> None:
        """Reject the rows in ``mask`` not rejected yet (one reason per row).

        ``values`` (the column, or anything indexed by row number) gives the
        received value of each row for its message.
        """
        mask = np.asarray(mask, dtype=bool) & ~self.bad
        rows = np.flatnonzero(mask)
        if not len(rows):
            return
        if values is None:
            shown = [None] * len(rows)
        elif isinstance(values, pa.Array | pa.ChunkedArray):
            shown = values.take(pa.array(rows)).to_pylist()
        else:
            shown = [values[row] for row in rows]
        for row, value in zip(rows, shown, strict=True):
            self.problems.append(
                Problem(
                    int(self.lines[row]),
                    key,
                    field,
                    reason,
                    _short(value),
                    int(self.sources[row]),
                )
            )
        self.bad |= mask

    def convert(self, name: str, target: pa.DataType, key: str = "bad_value") -> None:
        """Cast column ``name`` to ``target``, rejecting the rows that fail."""
        if self.table.schema.field(name).type == target:
            return
        values = self.column(name)
        cast, failed = safe_cast(values, target)
        self.reject(failed, key, name, f"expected a value of type {target}", values)
        index = self.table.column_names.index(name)
        self.table = self.table.set_column(index, name, cast)

    def finish(self, rejections: Rejections, prefix: str = "") -> tuple[pa.Table, np.ndarray]:
        """Report the problems in line order, then return the good rows and their lines.

        In ``"error"`` mode the first problem (the earliest line) raises
        ``BadRowError``.
        """
        report(rejections, [self], prefix)
        return self.kept()[:2]

    def kept(self) -> tuple[pa.Table, np.ndarray, np.ndarray]:
        """The rows not rejected: table, lines and source indices."""
        if not self.bad.any():
            return self.table, self.lines, self.sources
        keep = ~self.bad
        return self.table.filter(pa.array(keep)), self.lines[keep], self.sources[keep]


def report(rejections: Rejections, chunks: Sequence[Chunk], prefix: str = "") -> None:
    """Report the problems of ``chunks`` (sharing one ``names`` list) in (source, line) order."""
    problems = [(problem, chunk) for chunk in chunks for problem in chunk.problems]
    problems.sort(key=lambda pair: (pair[0].source, pair[0].line))
    for problem, chunk in problems:
        error = BadRowError(
            chunk.names[problem.source], problem.line, problem.field, problem.reason, problem.value
        )
        rejections.reject(prefix + problem.key, error)


def add_source(table: pa.Table, name: str, lines: np.ndarray, position: int) -> pa.Table:
    """Insert the ``source_file`` and ``source_line`` columns at ``position``."""
    table = table.add_column(position, "source_file", repeat_string(name, table.num_rows))
    return table.add_column(position + 1, "source_line", pa.array(lines, pa.int64()))


def add_sources(
    table: pa.Table, names: Sequence[str], sources: np.ndarray, lines: np.ndarray, position: int
) -> pa.Table:
    """``add_source`` for rows of several sources: ``names[sources[i]]`` for row ``i``.

    ``sources`` must be non-decreasing (rows grouped by source, in order).
    """
    counts = np.bincount(np.asarray(sources, np.int64), minlength=len(names))
    pieces = [
        chunk
        for name, count in zip(names, counts, strict=True)
        if count
        for chunk in repeat_string(name, int(count)).chunks
    ]
    column = pa.chunked_array(pieces, pa.string())
    table = table.add_column(position, "source_file", column)
    return table.add_column(position + 1, "source_line", pa.array(lines, pa.int64()))


def repeat_string(value: str, count: int) -> pa.ChunkedArray:
    """``count`` copies of ``value`` as a string column, built from raw buffers."""
    encoded = value.encode("utf-8")
    per_chunk = max(1, (2**31 - 1) // max(1, len(encoded)))
    chunks = []
    for start in range(0, count, per_chunk):
        rows = min(per_chunk, count - start)
        offsets = np.arange(rows + 1, dtype=np.int64) * len(encoded)
        chunks.append(
            pa.StringArray.from_buffers(
                rows, pa.py_buffer(offsets.astype(np.int32)), pa.py_buffer(encoded * rows)
            )
        )
    return pa.chunked_array(chunks, pa.string())


def check_not_empty(rows_read: int, sources: Sequence, expected: str) -> None:
    """Raise ``ValueError`` when the inputs held no row at all."""
    if not rows_read:
        names = [source.name for source in sources]
        raise ValueError(f"No rows in the inputs {names}: expected {expected}")


def no_format_options(reader: str, options: Mapping) -> None:
    """Raise ``ValueError`` for options given to a reader that takes none."""
    if options:
        raise ValueError(
            f"The `{reader}` reader takes no format options (its columns are fixed). "
            f"Received: {', '.join(f'{key}={value!r}' for key, value in options.items())}"
        )


def contiguous(values: pa.ChunkedArray | pa.Array) -> pa.Array:
    """One array from a chunked one, without a copy when there is one chunk."""
    if isinstance(values, pa.Array):
        return values
    if values.num_chunks == 1:
        return values.chunk(0)
    return values.combine_chunks()


def _short(value: object) -> object:
    if isinstance(value, str | bytes) and len(value) > _MAX_SHOWN:
        return value[:_MAX_SHOWN] + ("..." if isinstance(value, str) else b"...")
    return value


class MissingColumnsError(ValueError):
    """A source lacks columns the reader needs; ``missing`` names them."""

    def __init__(self, message: str, missing: Sequence[str]):
        super().__init__(message)
        self.missing = list(missing)


def _missing_columns(name: str, required: Sequence[str], found: Sequence[str]) -> None:
    missing = [column for column in required if column not in found]
    if missing:
        raise MissingColumnsError(
            f"{name}: missing required column(s) {missing}; found columns {list(found)}", missing
        )


# --------------------------------------------------------------------------------------
# Delimited text (CSV, TSV, whitespace-separated).


@dataclasses.dataclass(frozen=True)
class Piece:
    """Delimited text to parse: a whole stream, or one block of its lines.

    Attributes:
        name: the stream's display name.
        data: the bytes (gunzipped), whole lines.
        first_line: the line number of ``data``'s first line in the stream.
        header: for a later block of a stream whose first line is a header,
            that header's column names; ``None`` when ``data`` starts the stream.
    """

    name: str
    data: bytes
    first_line: int = 1
    header: tuple[str, ...] | None = None


def read_delimited(
    name: str,
    data: bytes,
    *,
    delimiter: str | None,
    columns: Sequence[str] | None = None,
    required: Sequence[str] = (),
    include: Sequence[str] | None = None,
    quoted: bool = False,
    types: Mapping[str, pa.DataType] | None = None,
) -> Chunk:
    """Parse delimited text into a chunk of string (or ``types``) columns.

    Args:
        name: display name, for messages.
        data: the stream's bytes (already gunzipped).
        delimiter: one character, or ``WHITESPACE`` (``None``) for runs of
            spaces and tabs with leading and trailing ones ignored.
        columns: the column names of a headerless format; ``None`` means the
            first line is a header that names them.
        required: columns that must be present (else ``ValueError``).
        include: columns to keep (all when ``None``).
        quoted: whether ``"`` quotes fields (CSV); TSV and MIND are unquoted.
        types: column types to try on the fast path; a column that does not
            parse stays a string for the reader to check (``Chunk.convert``).

    A line that repeats the header is rejected as ``repeated_header``.
    """
    return read_delimited_pieces(
        [Piece(name, data)],
        delimiter=delimiter,
        columns=columns,
        required=required,
        include=include,
        quoted=quoted,
        types=types,
    )[0]


def read_delimited_pieces(
    pieces: Sequence[Piece],
    *,
    delimiter: str | None,
    columns: Sequence[str] | None = None,
    required: Sequence[str] = (),
    include: Sequence[str] | None = None,
    quoted: bool = False,
    types: Mapping[str, pa.DataType] | None = None,
) -> list[Chunk]:
    """``read_delimited`` for several pieces of one layout, as few chunks as possible.

    Runs of consecutive pieces that qualify for the fast path and share a
    header are parsed together in one ``pyarrow.csv`` call (many small files
    parse much faster that way) into one chunk; the other pieces (or those of
    a run whose joint parse fails) get a chunk each. Chunks come in piece
    order, each with ``names`` = the pieces' names and ``sources`` = piece
    positions, so rows and problems keep their (piece, line) order.
    """
    names = [piece.name for piece in pieces]
    texts = [
        _Text.of(piece, index, delimiter, columns, required, include, quoted)
        for index, piece in enumerate(pieces)
    ]
    chunks: list[Chunk] = []
    run: list[_Text] = []
    for text in [*texts, None]:
        if (
            text is not None
            and text.rows is not None
            and (not run or text.columns == run[0].columns)
        ):
            run.append(text)
            continue
        together = _parse_together(run, names, types) if len(run) > 1 else None
        chunks.extend([together] if together else [_parse_one(t, names, types) for t in run])
        run = [] if text is None or text.rows is None else [text]
        if text is not None and text.rows is None:
            chunks.append(_parse_one(text, names, types))
    return chunks


def _parse_together(run: list[_Text], names: list[str], types) -> Chunk | None:
    """One chunk of several fast-path pieces parsed in one call, or None if that fails."""
    body = b"".join(text.terminated_body for text in run)
    table = _parse_fast(body, run[0], types, sum(text.rows for text in run))
    if table is None:
        return None
    rows = np.array([text.rows for text in run], np.int64)
    first = np.array([text.first_line for text in run], np.int64)
    lines = np.arange(table.num_rows, dtype=np.int64) + np.repeat(
        first - np.cumsum(rows) + rows, rows
    )
    sources = np.repeat([text.ordinal for text in run], rows)
    chunk = Chunk(names[0], table, lines, table.num_rows, names=names, sources=sources)
    return _check_header(chunk, run[0])


def _parse_one(text: _Text, names: list[str], types) -> Chunk:
    """The chunk of one piece: the fast path if it can be trusted, else line by line."""
    table = None if text.rows is None else _parse_fast(text.body, text, types, text.rows)
    if table is None:
        chunk = _parse_blocks(text) if len(text.body) > BLOCK_BYTES else _parse_slow(text)
    else:
        lines = np.arange(table.num_rows, dtype=np.int64) + text.first_line
        chunk = Chunk(text.name, table, lines, table.num_rows)
    chunk.names = names
    chunk.sources = np.full(chunk.table.num_rows, text.ordinal, np.int32)
    chunk.problems = [
        dataclasses.replace(problem, source=text.ordinal) for problem in chunk.problems
    ]
    return _check_header(chunk, text)


def header_of(data: bytes, delimiter: str | None, quoted: bool) -> list[str]:
    """The column names in the first line of delimited text (as ``read_delimited`` reads them)."""
    first, _ = _header_line(data)
    return _split(first.decode("utf-8", errors="replace"), delimiter, quoted)


def _header_line(data: bytes) -> tuple[bytes, bytes]:
    """The first line (without BOM and line break) and the rest."""
    data = strip_bom(data)
    end = data.find(b"\n")
    first, body = (data, b"") if end < 0 else (data[:end], data[end + 1 :])
    return (first[:-1] if first.endswith(b"\r") else first), body


def _check_header(chunk: Chunk, text: _Text) -> Chunk:
    if text.header:
        shown = (" " if text.delimiter is WHITESPACE else text.delimiter).join(text.columns)
        _reject_repeated_header(chunk, shown)
    return chunk


@dataclasses.dataclass(frozen=True)
class _Text:
    """One delimited piece, its header split off and its layout checked."""

    name: str
    ordinal: int  # the piece's position in its batch
    body: bytes  # the lines after the header
    first_line: int  # the line number of the body's first line
    header: bool
    columns: list[str]
    include: list[str]
    delimiter: str | None
    quoted: bool
    rows: int | None  # lines in the body, or None if the fast path cannot be trusted

    @classmethod
    def of(cls, piece, ordinal, delimiter, columns, required, include, quoted) -> _Text:
        name, data, first_line = piece.name, piece.data, piece.first_line
        header = columns is None
        if header and piece.header is not None:  # a later block: no header line in it
            columns, body = piece.header, data
        elif header:
            first, body = _header_line(data)
            if not first.strip():
                raise ValueError(f"{name}: no header line; expected the column names on line 1")
            columns = _split(first.decode("utf-8", errors="replace"), delimiter, quoted)
            first_line += 1
        else:
            body = strip_bom(data) if first_line == 1 else data
        columns = list(columns)
        _missing_columns(name, required, columns)
        include = list(include) if include is not None else columns
        _missing_columns(name, include, columns)
        duplicated = sorted({column for column in include if columns.count(column) > 1})
        if duplicated:
            raise ValueError(f"{name}: column(s) {duplicated} appear more than once in the header")
        rows = _trusted_lines(body, delimiter)
        return cls(
            name, ordinal, body, first_line, header, columns, include, delimiter, quoted, rows
        )

    @property
    def terminated_body(self) -> bytes:
        return self.body if not self.body or self.body.endswith(b"\n") else self.body + b"\n"


def _trusted_lines(body: bytes, delimiter: str | None) -> int | None:
    """The line count the fast path must match, or ``None`` if it cannot be used."""
    if not utf8_ok(body) or (delimiter is WHITESPACE and _irregular_spacing(body)):
        return None
    return count_lines(body)


def _irregular_spacing(body: bytes) -> bool:
    """Whether whitespace-separated text has anything but single inner spaces."""
    return (
        b"\t" in body
        or b"  " in body
        or b" \n" in body
        or b"\n " in body
        or b" \r" in body
        or body.startswith(b" ")
        or body.endswith(b" ")
    )


def _parse_fast(
    body: bytes, text: _Text, types: Mapping[str, pa.DataType] | None, rows: int
) -> pa.Table | None:
    """``pyarrow.csv`` over ``body``; ``None`` unless it gives exactly ``rows`` rows."""
    if rows == 0:
        return pa.table({column: pa.array([], pa.string()) for column in text.include})
    quoted = text.quoted and b'"' in body  # no quote at all: the faster unquoted parser
    for attempt in [types, None] if types else [None]:
        column_types = {column: pa.string() for column in text.include}
        column_types.update(attempt or {})
        try:
            table = pa_csv.read_csv(
                pa.py_buffer(body),
                read_options=pa_csv.ReadOptions(column_names=text.columns, block_size=1 << 24),
                parse_options=pa_csv.ParseOptions(
                    delimiter=" " if text.delimiter is WHITESPACE else text.delimiter,
                    quote_char='"' if quoted else False,
                ),
                convert_options=pa_csv.ConvertOptions(
                    column_types=column_types,
                    include_columns=text.include,
                    null_values=[],
                    strings_can_be_null=False,
                    quoted_strings_can_be_null=False,
                ),
            )
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            continue
        return table if table.num_rows == rows else None
    return None


def _parse_blocks(text: _Text) -> Chunk:
    """Parse a large stream that failed the fast path in blocks of whole lines.

    Each block of about ``BLOCK_BYTES`` gets its own fast-path attempt, so only
    the blocks holding bad lines are walked line by line.
    """
    body = text.body
    tables, lines, problems = [], [], []
    rows_read, start, first_line = 0, 0, text.first_line
    while start < len(body):
        end = body.find(b"\n", start + BLOCK_BYTES)
        end = len(body) if end < 0 else end + 1
        block = body[start:end]
        part = dataclasses.replace(
            text, body=block, first_line=first_line, rows=_trusted_lines(block, text.delimiter)
        )
        table = None if part.rows is None else _parse_fast(block, part, None, part.rows)
        if table is None:
            chunk = _parse_slow(part)
        else:
            chunk = Chunk(text.name, table, np.arange(table.num_rows) + first_line, table.num_rows)
        tables.append(chunk.table)
        lines.append(chunk.lines)
        problems.extend(chunk.problems)
        rows_read += chunk.rows_read
        first_line += block.count(b"\n")
        start = end
    return Chunk(text.name, pa.concat_tables(tables), np.concatenate(lines), rows_read, problems)


_OPEN_QUOTE = "a quoted field is not closed on this line (a record must not hold a line break)"


def _split(text: str, delimiter: str | None, quoted: bool) -> list[str]:
    if delimiter is WHITESPACE:
        return _WHITESPACE_RUN.split(text.strip(" \t"))
    if quoted and '"' in text:
        return next(csv.reader([text], delimiter=delimiter, quotechar='"'))
    return text.split(delimiter)


def _describe(delimiter: str | None) -> str:
    return {None: "whitespace", "\t": "tab", ",": "comma", ";": "semicolon"}.get(
        delimiter, repr(delimiter)
    )


def _parse_slow(text: _Text) -> Chunk:
    """Walk the body line by line, recording exact problems."""
    columns, delimiter = text.columns, text.delimiter
    positions = [columns.index(column) for column in text.include]
    values: list[list[str]] = [[] for _ in text.include]
    lines: list[int] = []
    problems: list[Problem] = []
    rows_read = 0
    separated = f"{len(columns)} {_describe(delimiter)}-separated fields ({', '.join(columns)})"
    for number, raw in enumerate(split_lines(text.body), start=text.first_line):
        if not raw:
            continue
        rows_read += 1
        try:
            decoded = raw.decode("utf-8")
        except UnicodeDecodeError:
            problems.append(_not_utf8(number, raw, columns, delimiter))
            continue
        fields = _split(decoded, delimiter, text.quoted)
        if len(fields) != len(columns):
            reason = f"expected {separated}, found {len(fields)}"
            if text.quoted and decoded.count('"') % 2:
                reason += f"; {_OPEN_QUOTE}"
            problems.append(Problem(number, "wrong_field_count", None, reason, _short(decoded)))
            continue
        lines.append(number)
        for slot, position in zip(values, positions, strict=True):
            slot.append(fields[position])
    table = pa.table(
        {
            column: pa.array(slot, pa.string())
            for column, slot in zip(text.include, values, strict=True)
        }
    )
    return Chunk(text.name, table, np.asarray(lines, dtype=np.int64), rows_read, problems)


def _not_utf8(number: int, raw: bytes, columns: Sequence[str], delimiter: str | None) -> Problem:
    """Name the first field holding bytes that are not UTF-8, when the shape allows."""
    if delimiter is WHITESPACE:
        fields = re.split(rb"[ \t]+", raw.strip(b" \t"))
    else:
        fields = raw.split(delimiter.encode())
    reason = "bytes are not valid UTF-8"
    if len(fields) == len(columns):
        for column, field in zip(columns, fields, strict=True):
            try:
                field.decode("utf-8")
            except UnicodeDecodeError:
                return Problem(number, "not_utf8", column, reason, _short(field))
    return Problem(number, "not_utf8", None, reason, _short(raw))


def _reject_repeated_header(chunk: Chunk, header: str) -> None:
    """Reject lines whose every column holds its own name (``header`` is the line)."""
    if not chunk.table.num_rows or any(kind != pa.string() for kind in chunk.table.schema.types):
        return  # a typed column parsed, so no line can hold the column names
    mask = np.ones(chunk.table.num_rows, dtype=bool)
    for name in chunk.table.column_names:
        mask &= to_numpy_mask(pc.equal(chunk.column(name), name))
        if not mask.any():
            return
    reason = "header line repeated inside the file"
    chunk.reject(mask, "repeated_header", None, reason, [header] * chunk.table.num_rows)


# --------------------------------------------------------------------------------------
# JSON Lines.


def read_jsonl(
    name: str,
    data: bytes,
    *,
    required: Sequence[str],
    include: Sequence[str],
    native: Sequence[str] = (),
    first_line: int = 1,
) -> Chunk:
    """Parse JSON Lines (one object per line) into a chunk.

    Columns in ``native`` keep JSON numbers as numbers (timestamps, typed
    extra columns); the others become strings (a JSON integer ``7`` reads as
    ``"7"``). A key missing from a line, or given as ``null``, is null there; a
    ``required`` key that no line gives at all is a ``ValueError``. A line that is not a JSON
    object is rejected as ``bad_json``; a value of the wrong JSON type
    (``true``, an object, a list, a fraction where an id is expected) as
    ``bad_value``.

    ``data`` may be one block of whole lines of a larger stream, whose first
    line is line ``first_line`` of the stream: line numbers then continue
    from it, and the chunk's ``columns_found`` (the keys some line gives)
    lets the caller check ``required`` over the whole stream
    (pass ``required=()`` here).
    """
    if first_line == 1:
        data = strip_bom(data)
    parsed = _jsonl_fast(data, include, native)
    if parsed is None:
        parsed = _jsonl_slow(data, include, native)
    table, lines, found, problems = parsed
    if table.num_rows or found:
        _missing_columns(name, required, found)
    if first_line != 1:
        lines = lines + (first_line - 1)
        problems = [
            dataclasses.replace(problem, line=problem.line + first_line - 1) for problem in problems
        ]
    chunk = Chunk(name, table, lines, len(lines) + len(problems), problems)
    chunk.columns_found = list(found)
    return chunk


def _jsonl_fast(data, include, native):
    line_count = count_lines(data)
    if line_count is None or not utf8_ok(data):
        return None
    # First as strings (ids and ISO times stay text, never inferred as
    # timestamps), then with inferred types (JSON numbers).
    as_text = pa.schema([(column, pa.string()) for column in include])
    for schema in (as_text, None):
        try:
            table = pa_json.read_json(
                pa.py_buffer(data),
                parse_options=pa_json.ParseOptions(
                    explicit_schema=schema, newlines_in_values=False
                ),
            )
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            continue
        if table.num_rows != line_count:
            return None
        arrays = {}
        for column in include:
            values = contiguous(table.column(column)) if column in table.column_names else None
            if values is None or values.null_count == len(values):
                arrays[column] = pa.nulls(table.num_rows, pa.string())
                continue
            kind = values.type
            allowed = pa.types.is_integer(kind) or pa.types.is_string(kind)
            if column in native:
                arrays[column] = values
                allowed = allowed or pa.types.is_floating(kind)
            else:
                arrays[column] = pc.cast(values, pa.string()) if allowed else None
            if not allowed:
                return None
        found = [name for name in table.column_names if table.column(name).null_count < len(table)]
        unseen = [column for column in include if column not in found]
        if unseen:
            # absent, or null on every line? An explicit schema adds absent keys as
            # nulls; inferred types list only the keys the lines give (null ones too)
            keys = table.column_names if schema is None else _json_keys(data)
            if keys is None:
                return None
            found += [column for column in unseen if column in keys]
        lines = np.arange(1, table.num_rows + 1, dtype=np.int64)
        return pa.table(arrays), lines, found, []
    return None


def _json_keys(data) -> list[str] | None:
    """The keys JSON Lines ``data`` gives on some line (null values too), or None."""
    try:
        return pa_json.read_json(
            pa.py_buffer(data), parse_options=pa_json.ParseOptions(newlines_in_values=False)
        ).column_names
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None


def _jsonl_slow(data, include, native):
    rows: list[dict] = []
    lines: list[int] = []
    problems: list[Problem] = []
    found: set[str] = set()
    for number, raw in enumerate(split_lines(data), start=1):
        if not raw:
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            problems.append(
                Problem(number, "not_utf8", None, "bytes are not valid UTF-8", _short(raw))
            )
            continue
        try:
            record = json.loads(text)
        except ValueError:
            record = None
        if not isinstance(record, dict):
            reason = "expected one JSON object per line"
            problems.append(Problem(number, "bad_json", None, reason, _short(text)))
            continue
        found.update(record)  # a key given as null is there (its rows hold nulls)
        problem = _json_value_problem(number, record, include, native)
        if problem is not None:
            problems.append(problem)
            continue
        rows.append(record)
        lines.append(number)
    arrays = {}
    for column in include:
        values = [row.get(column) for row in rows]
        if column not in native or any(isinstance(value, str) for value in values):
            values = [None if value is None else _json_text(value) for value in values]
            arrays[column] = pa.array(values, pa.string())
        else:
            arrays[column] = (
                pa.array(values)
                if any(v is not None for v in values)
                else pa.nulls(len(values), pa.string())
            )
    table = pa.table(arrays) if include else pa.table({})
    return table, np.asarray(lines, dtype=np.int64), sorted(found), problems


def _json_text(value) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _json_value_problem(number, record, include, native) -> Problem | None:
    for column in include:
        value = record.get(column)
        if value is None or isinstance(value, str):
            continue
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        if column not in native:
            ok = ok and isinstance(value, int)
        if not ok:
            reason = (
                "expected a string or an integer"
                if column not in native
                else ("expected a string or a number")
            )
            return Problem(number, "bad_value", column, reason, _short(json.dumps(value)))
    return None


# --------------------------------------------------------------------------------------
# Parquet.


def read_parquet(
    name: str,
    data: bytes,
    *,
    required: Sequence[str],
    include: Sequence[str],
    native: Sequence[str] = (),
) -> Chunk:
    """Read Parquet into a chunk; "lines" are 1-based row numbers.

    Columns not in ``native`` must be strings or integers and become strings.
    """
    file = _parquet_file(name, pa.BufferReader(data))
    present = _parquet_columns(name, file, required, include)
    table = file.read(columns=present)
    return parquet_chunk(name, table, include=include, native=native)


def parquet_batches(
    name: str,
    source,
    *,
    required: Sequence[str],
    include: Sequence[str] | None,
    batch_bytes: int,
) -> Iterator[tuple[pa.Table, int, float]]:
    """Stream a Parquet file in batches of about ``batch_bytes`` (uncompressed).

    Args:
        name: display name, for messages.
        source: a seekable binary file (or a path) holding the Parquet file.
        required: columns that must be present (else ``ValueError``, before
            the first batch).
        include: columns to read (those absent are left out: see
            :func:`parquet_chunk`); ``None`` reads them all.
        batch_bytes: about how many bytes of decoded columns a batch holds
            (at least one row).

    Returns:
        An iterator of ``(table, first_row, done)``: the rows, the 1-based
        row number of the first one, and the fraction of the file's rows read
        once they are. A file without rows gives one empty table.
    """
    file = _parquet_file(name, source)
    present = _parquet_columns(name, file, required, include)
    metadata = file.metadata
    rows = metadata.num_rows
    if rows == 0:
        yield file.schema_arrow.empty_table().select(present), 1, 1.0
        return
    stored = sum(metadata.row_group(g).total_byte_size for g in range(metadata.num_row_groups))
    share = len(present) / max(1, metadata.num_columns)
    per_row = max(1.0, stored * share / rows)
    batch_rows = max(1, int(batch_bytes / per_row))
    first = 1
    for batch in file.iter_batches(batch_size=batch_rows, columns=present):
        table = pa.Table.from_batches([batch])
        yield table, first, min(1.0, (first - 1 + table.num_rows) / rows)
        first += table.num_rows


def _parquet_file(name: str, source) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(source)
    except (pa.ArrowInvalid, OSError) as err:
        raise ValueError(f"{name}: not a readable Parquet file ({err})") from err


def _parquet_columns(
    name: str, file: pq.ParquetFile, required: Sequence[str], include: Sequence[str] | None
) -> list[str]:
    """The ``include`` columns (all if None) the file has, after checking the ``required`` ones."""
    names = file.schema_arrow.names
    _missing_columns(name, required, names)
    return list(names) if include is None else [c for c in include if c in names]


def parquet_chunk(
    name: str,
    table: pa.Table,
    *,
    include: Sequence[str],
    native: Sequence[str] = (),
    first_row: int = 1,
) -> Chunk:
    """The chunk of Parquet rows ``first_row, first_row + 1, ...`` (their "lines").

    ``include`` columns absent from ``table`` are null strings; columns not in
    ``native`` must be strings or integers and become strings.
    """
    arrays = {}
    for column in include:
        if column not in table.column_names:
            arrays[column] = pa.nulls(table.num_rows, pa.string())
            continue
        values = contiguous(table.column(column))
        if pa.types.is_dictionary(values.type):
            values = values.dictionary_decode()
        if column not in native:
            kind = values.type
            if not (
                pa.types.is_integer(kind)
                or pa.types.is_string(kind)
                or pa.types.is_large_string(kind)
                or pa.types.is_null(kind)
            ):
                raise ValueError(
                    f"{name}: column `{column}` should hold strings or integers. Received: {kind}"
                )
            values = pc.cast(values, pa.string())
        arrays[column] = values
    lines = np.arange(first_row, first_row + table.num_rows, dtype=np.int64)
    return Chunk(name, pa.table(arrays), lines, table.num_rows)
