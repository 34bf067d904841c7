"""Property tests: random corruption of small valid logs, for every reader.

A valid log is generated, then some of its rows are corrupted in ways that
each certainly make the row invalid (a field deleted or duplicated, bytes that
are not UTF-8, a broken timestamp, token, id or context value), and copies of
the header may be inserted. Whatever the corruption:

* ``on_bad_rows="error"`` raises ``BadRowError`` at the first bad line, or
  nothing when no row was corrupted: never another exception;
* ``on_bad_rows="skip"`` never fails, ``rows_read == rows_used +
  rows_rejected``, ``rows_used`` is the number of rows left intact, and the
  events come from exactly the intact rows' lines.
"""

from __future__ import annotations

import collections
import dataclasses
import gzip
import json
from collections.abc import Callable
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipelines.readers import _table, events, globo, mind, sequences
from pipelines.readers.base import BadRowError

SETTINGS = settings(
    max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
LETTERS = st.text(alphabet="abcdefghijklmnopqrstuvwxyz", max_size=6)
# Junk with at least one byte that can never appear in UTF-8, and no line break.
JUNK = st.tuples(st.binary(max_size=6), st.binary(max_size=6)).map(
    lambda parts: (parts[0] + b"\xff" + parts[1]).replace(b"\n", b"").replace(b"\r", b"")
)


@dataclasses.dataclass(frozen=True)
class Format:
    """How to write, corrupt and read one log format."""

    name: str
    suffix: str
    header: str | None
    delimiter: str
    rows: st.SearchStrategy  # lists of valid rows, each a list of field strings
    read: Callable  # (path, on_bad_rows) -> ReadResult
    # "reason key[/variant]" -> (fields, draw) -> bytes of a line rejected for that reason
    corruptions: dict[str, Callable]
    events_of: Callable = lambda fields: 1  # events one valid row gives

    def join(self, fields: list[str]) -> bytes:
        return self.delimiter.join(fields).encode()


def _delete_field(fields, draw):
    index = draw(st.integers(0, len(fields) - 1))
    return fields[:index] + fields[index + 1 :]


def _duplicate_field(fields, draw):
    index = draw(st.integers(0, len(fields) - 1))
    return fields[: index + 1] + fields[index:]


def _set(position: int, strategy: st.SearchStrategy):
    def corrupt(fields, draw):
        return fields[:position] + [draw(strategy)] + fields[position + 1 :]

    return corrupt


def _garbage(fields, draw, delimiter: str) -> bytes:
    index = draw(st.integers(0, len(fields) - 1))
    field = fields[index].encode()
    cut = draw(st.integers(0, len(field)))
    damaged = field[:cut] + draw(JUNK) + field[cut:]
    parts = [part.encode() for part in fields]
    parts[index] = damaged
    return delimiter.encode().join(parts)


def _structural(delimiter: str) -> dict[str, Callable]:
    join = delimiter.join
    return {
        "wrong_field_count/delete": lambda f, draw: join(_delete_field(f, draw)).encode(),
        "wrong_field_count/duplicate": lambda f, draw: join(_duplicate_field(f, draw)).encode(),
        "not_utf8": lambda f, draw: _garbage(f, draw, delimiter),
    }


def _with(delimiter: str, **field_corruptions) -> dict[str, Callable]:
    corruptions = _structural(delimiter)
    for name, corrupt in field_corruptions.items():
        corruptions[name] = lambda f, draw, corrupt=corrupt: delimiter.join(
            corrupt(f, draw)
        ).encode()
    return corruptions


# ------------------------------------------------------------------------------------------
# The formats.

USERS = st.sampled_from(["u1", "u2", "u3"])
ITEMS = st.sampled_from(["i1", "i2", "i3", "i4"])
SECONDS = st.integers(1_500_000_000, 1_600_000_000)

EVENTS_HEADER = "user,item,ts,kind"
EVENTS_ROWS = st.lists(
    st.tuples(USERS, ITEMS, SECONDS, st.sampled_from(["click", "impression", "view"])).map(
        lambda row: [row[0], row[1], str(row[2]), row[3]]
    ),
    min_size=1,
    max_size=8,
)
EVENT_OPTIONS = {"user_col": "user", "item_col": "item", "time_col": "ts", "event_col": "kind"}

GLOBO_ROWS = st.lists(
    st.tuples(st.integers(0, 9), st.integers(1, 99), SECONDS, st.integers(1, 5)).map(
        lambda row: [
            str(row[0]),
            f"15068254{row[0]}",
            str(row[2] * 1000),
            "2",
            str(row[1]),
            str(row[2] * 1000 + 20),
            "4",
            str(row[3]),
            "20",
            "1",
            "20",
            "2",
        ]
    ),
    min_size=1,
    max_size=8,
)

MIND_TIMES = st.tuples(
    st.integers(1, 12), st.integers(1, 28), st.integers(1, 12), st.sampled_from(["AM", "PM"])
).map(lambda t: f"{t[0]}/{t[1]}/2019 {t[2]}:05:09 {t[3]}")
MIND_TOKENS = st.lists(
    st.tuples(ITEMS, st.sampled_from("01")).map(lambda t: f"N{t[0]}-{t[1]}"), min_size=1, max_size=4
)
MIND_ROWS = st.lists(
    st.tuples(USERS, MIND_TIMES, st.lists(ITEMS, max_size=3), MIND_TOKENS),
    min_size=1,
    max_size=8,
).map(
    lambda rows: [
        [str(100 + index), user, time, " ".join(history), " ".join(tokens)]
        for index, (user, time, history, tokens) in enumerate(rows)
    ]
)

FORMATS = [
    Format(
        name="events-csv",
        suffix=".csv",
        header=EVENTS_HEADER,
        delimiter=",",
        rows=EVENTS_ROWS,
        read=lambda path, mode: events.read([path], on_bad_rows=mode, **EVENT_OPTIONS),
        corruptions=_with(
            ",",
            empty_user=_set(0, st.just("")),
            empty_item=_set(1, st.just("")),
            bad_timestamp=_set(2, LETTERS),
            unknown_event_type=_set(3, st.sampled_from(["buy", "", "Click"])),
        ),
    ),
    Format(
        name="globo",
        suffix=".csv",
        header=(
            "user_id,session_id,session_start,session_size,click_article_id,click_timestamp,"
            "click_environment,click_deviceGroup,click_os,click_country,click_region,"
            "click_referrer_type"
        ),
        delimiter=",",
        rows=GLOBO_ROWS,
        read=lambda path, mode: globo.read([path], on_bad_rows=mode),
        corruptions=_with(
            ",",
            empty_user=_set(0, st.just("")),
            bad_timestamp=_set(5, LETTERS),
            bad_value=_set(8, LETTERS),
            empty_item=_set(4, st.just("")),
        ),
    ),
    Format(
        name="mind",
        suffix=".tsv",
        header=None,
        delimiter="\t",
        rows=MIND_ROWS,
        read=lambda path, mode: mind.read([path], on_bad_rows=mode),
        corruptions=_with(
            "\t",
            empty_user=_set(1, st.just("")),
            empty_impression_id=_set(0, st.just("")),
            bad_timestamp=_set(2, LETTERS | st.just("2/30/2019 1:05:09 PM")),
            bad_impression_token=_set(
                4, st.sampled_from(["N12-x", "N12", "N12-2", "-1", "", "N1-1 N2"])
            ),
        ),
        events_of=lambda fields: len(fields[4].split()),
    ),
    Format(
        name="sequences",
        suffix=".txt",
        header=None,
        delimiter=" ",
        rows=st.lists(st.lists(USERS | ITEMS, min_size=2, max_size=2), min_size=1, max_size=10),
        read=lambda path, mode: sequences.read([path], on_bad_rows=mode),
        corruptions=_structural(" "),
    ),
]


def _jsonl_line(fields: list[str]) -> bytes:
    keys = EVENTS_HEADER.split(",")
    record = dict(zip(keys, fields, strict=True))
    record["ts"] = int(record["ts"])
    return json.dumps(record).encode()


JSONL = Format(
    name="events-jsonl",
    suffix=".jsonl",
    header=None,
    delimiter=",",
    rows=EVENTS_ROWS,
    read=lambda path, mode: events.read([path], on_bad_rows=mode, **EVENT_OPTIONS),
    corruptions={
        "not_utf8": lambda f, draw: _jsonl_line(f)[:-1] + draw(JUNK) + b"}",
        "bad_json/truncated": lambda f, draw: _jsonl_line(f)[: draw(st.integers(1, 10))],
        "bad_timestamp": lambda f, draw: _jsonl_line(f).replace(
            f'"ts": {f[2]}'.encode(), json.dumps({"ts": draw(LETTERS)})[1:-1].encode()
        ),
        "empty_user": lambda f, draw: _jsonl_line(["", *f[1:]]),
        "bad_json/not_an_object": lambda f, draw: json.dumps(f).encode(),
    },
)


@st.composite
def corrupted_logs(draw, log_format: Format):
    """(file bytes, intact rows, {bad line: reason}, line numbers of intact rows)."""
    rows = draw(log_format.rows)
    corrupted = draw(st.sets(st.integers(0, len(rows) - 1), max_size=len(rows)))
    headers_after = (
        draw(st.lists(st.integers(0, len(rows)), max_size=2, unique=True))
        if log_format.header
        else []
    )
    lines: list[bytes] = [log_format.header.encode()] if log_format.header else []
    bad_lines: dict[int, str] = {}
    intact: list[list[str]] = []
    intact_lines: list[int] = []
    for index, fields in enumerate(rows):
        if index in headers_after:
            lines.append(log_format.header.encode())
            bad_lines[len(lines)] = "repeated_header"
        if index in corrupted:
            kind = draw(st.sampled_from(sorted(log_format.corruptions)))
            lines.append(log_format.corruptions[kind](fields, draw))
            bad_lines[len(lines)] = kind.split("/")[0]
        else:
            lines.append(_jsonl_line(fields) if log_format is JSONL else log_format.join(fields))
            intact.append(fields)
            intact_lines.append(len(lines))
    if len(rows) in headers_after:
        lines.append(log_format.header.encode())
        bad_lines[len(lines)] = "repeated_header"
    return b"\n".join(lines) + b"\n", intact, bad_lines, intact_lines


def _write(tmp_path, log_format: Format, data: bytes, compress: bool):
    name = {"mind": "behaviors.tsv", "globo": "clicks_hour_000.csv"}.get(
        log_format.name, "log" + log_format.suffix
    )
    folder = tmp_path / f"case-{len(list(tmp_path.iterdir()))}"
    folder.mkdir()
    path = folder / (name + ".gz" if compress else name)
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


def _check(tmp_path, log_format: Format, case, compress: bool) -> None:
    data, intact, bad_lines, intact_lines = case
    path = _write(tmp_path, log_format, data, compress)

    if bad_lines:
        with pytest.raises(BadRowError) as caught:
            log_format.read(path, "error")
        first = min(bad_lines)
        assert (caught.value.file, caught.value.line) == (str(path), first)
        assert caught.value.reason and caught.value.value is not None
    else:
        log_format.read(path, "error")

    result = log_format.read(path, "skip")
    assert result.rows_read == len(intact) + len(bad_lines)
    assert result.rows_used == len(intact)
    assert result.rows_read == result.rows_used + result.rows_rejected
    assert result.rejections.by_reason == collections.Counter(bad_lines.values())
    assert result.events.num_rows == sum(log_format.events_of(fields) for fields in intact)
    assert sorted(set(result.events.column("source_line").to_pylist())) == intact_lines


@pytest.mark.parametrize("log_format", [*FORMATS, JSONL], ids=lambda f: f.name)
def test_corruption_is_reported_and_counted(tmp_path, log_format):
    @SETTINGS
    @given(
        case=corrupted_logs(log_format),
        compress=st.booleans(),
        block_bytes=st.sampled_from([_table.BLOCK_BYTES, 1, 40]),
    )
    def run(case, compress, block_bytes):
        # Small blocks make a log with a bad line be re-parsed in many pieces.
        with mock.patch.object(_table, "BLOCK_BYTES", block_bytes):
            _check(tmp_path, log_format, case, compress)

    run()
