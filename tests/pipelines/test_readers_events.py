"""The generic click-log reader: formats, column mapping, timestamps and bad rows."""

from __future__ import annotations

import calendar
import gzip
import json
import pickle
import zipfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.readers import events
from pipelines.readers.base import BadRowError
from pipelines.schema import EVENTS, validate

NOV_12 = calendar.timegm((2019, 11, 12, 14, 14, 46)) * 1000

HEADER = "user_id,item_id,timestamp,event,request"
# The same three events, with the time written three ways.
ROWS = [
    ("u1", "i1", "1573568086", "click", "r1"),  # epoch seconds
    ("u1", "i2", "1573568086000", "impression", "r1"),  # epoch milliseconds
    ("u2", "i3", "2019-11-12T15:14:46+01:00", "view", ""),  # ISO with a zone
]
# What the reader must return for them: user, item, time, label, impression, session.
EXPECTED = [
    ("u1", "i1", NOV_12, 1, "r1", None),
    ("u1", "i2", NOV_12, 0, "r1", None),
    ("u2", "i3", NOV_12, 0, None, None),
]
OPTIONS = {"event_col": "event", "impression_col": "request"}


def _csv(rows, header=HEADER, delimiter=",") -> str:
    lines = [header.replace(",", delimiter)] + [delimiter.join(row) for row in rows]
    return "\n".join(lines) + "\n"


def _canonical(result) -> list[tuple]:
    names = ["user_id", "item_id", "time", "label", "impression_id", "session_id"]
    table = result.events.select(names)
    return list(zip(*(table.column(name).to_pylist() for name in names), strict=True))


def _write_csv(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text(_csv(ROWS))
    return path


def _write_tsv_gz(tmp_path):
    path = tmp_path / "log.tsv.gz"
    path.write_bytes(gzip.compress(_csv(ROWS, delimiter="\t").encode()))
    return path


def _write_jsonl(tmp_path):
    path = tmp_path / "log.jsonl"
    keys = HEADER.split(",")
    path.write_text("".join(json.dumps(dict(zip(keys, row, strict=True))) + "\n" for row in ROWS))
    return path


def _write_parquet(tmp_path):
    path = tmp_path / "log.parquet"
    keys = HEADER.split(",")
    pq.write_table(pa.table({key: [row[i] for row in ROWS] for i, key in enumerate(keys)}), path)
    return path


def _write_split_directory(tmp_path):
    folder = tmp_path / "logs"
    folder.mkdir()
    (folder / "part-0.csv").write_text(_csv(ROWS[:2]))
    (folder / "part-1.csv.gz").write_bytes(gzip.compress(_csv(ROWS[2:]).encode()))
    (folder / "README.md").write_text("not a log")
    return folder


def _write_glob(tmp_path):
    _write_split_directory(tmp_path)
    return str(tmp_path / "logs" / "part-*")


def _write_zip(tmp_path):
    path = tmp_path / "logs.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("logs/log.csv", _csv(ROWS))
    return path


@pytest.mark.parametrize(
    "write",
    [
        _write_csv,
        _write_tsv_gz,
        _write_jsonl,
        _write_parquet,
        _write_split_directory,
        _write_glob,
        _write_zip,
    ],
    ids=["csv", "tsv-gz", "jsonl", "parquet", "directory", "glob", "zip"],
)
def test_every_format_gives_the_same_events(tmp_path, write):
    result = events.read([write(tmp_path)], **OPTIONS)

    assert _canonical(result) == EXPECTED
    assert result.rows_read == result.rows_used == 3
    assert result.rows_rejected == 0
    validate(result.events, EVENTS, "events")


def test_source_file_and_line(tmp_path):
    folder = _write_split_directory(tmp_path)
    result = events.read([folder], **OPTIONS)
    assert result.events.column("source_file").to_pylist() == [
        str(folder / "part-0.csv"),
        str(folder / "part-0.csv"),
        str(folder / "part-1.csv.gz"),
    ]
    assert result.events.column("source_line").to_pylist() == [2, 3, 2]
    assert [record["path"] for record in result.inputs] == [
        str(folder / "part-0.csv"),
        str(folder / "part-1.csv.gz"),
    ]


def test_without_event_column_every_row_is_a_click(tmp_path):
    path = tmp_path / "clicks.csv"
    path.write_text("uid,doc,ts,sid\nu1,d1,1573568086000,s1\nu2,d2,1573568086000,\n")

    result = events.read([path], user_col="uid", item_col="doc", time_col="ts", session_col="sid")

    assert _canonical(result) == [
        ("u1", "d1", NOV_12, 1, None, "s1"),
        ("u2", "d2", NOV_12, 1, None, None),
    ]


def test_custom_event_labels_and_extra_columns(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text(
        "user_id,item_id,timestamp,action,device,position\n"
        "u1,i1,1573568086,buy,phone,3\n"
        "u1,i2,1573568086,skip,tablet,7\n"
    )

    result = events.read(
        [path],
        event_col="action",
        event_labels={"buy": 1, "skip": 0},
        extra_cols={"device": pa.string(), "position": pa.int64()},
    )

    assert result.events.column("label").to_pylist() == [1, 0]
    assert result.events.column("device").to_pylist() == ["phone", "tablet"]
    assert result.events.column("position").to_pylist() == [3, 7]
    assert result.events.schema.field("position").type == pa.int64()
    assert result.events.column_names[: len(EVENTS)] == EVENTS.names


def test_extra_columns_as_a_list_stay_strings(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("user_id,item_id,timestamp,device\nu1,i1,1573568086,7\n")
    result = events.read([path], extra_cols=["device"])
    assert result.events.column("device").to_pylist() == ["7"]


def test_explicit_time_units(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("user_id,item_id,timestamp\nu1,i1,1000\n")
    assert events.read([path], time_unit="s").events.column("time").to_pylist() == [1_000_000]
    assert events.read([path], time_unit="ms").events.column("time").to_pylist() == [1000]
    assert events.read([path], time_unit="auto").events.column("time").to_pylist() == [1_000_000]


def test_numeric_ids_in_json_and_parquet_become_strings(tmp_path):
    jsonl = tmp_path / "log.jsonl"
    jsonl.write_text('{"user_id": 7, "item_id": "i1", "timestamp": 1573568086000}\n')
    parquet = tmp_path / "log.parquet"
    stamps = pa.array([NOV_12], pa.timestamp("ms", "UTC"))
    pq.write_table(pa.table({"user_id": [7], "item_id": [42], "timestamp": stamps}), parquet)

    for path in (jsonl, parquet):
        result = events.read([path])
        assert _canonical(result)[0][:3] == ("7", "i1" if path == jsonl else "42", NOV_12)


@pytest.mark.parametrize(
    "name, lines, broken",
    [
        ("log.csv", ["user_id,item_id,timestamp", '"u,1",i1,1573568086', 'u2,"i""2",1'], "x"),
        (
            "log.jsonl",
            [
                '{"user_id": "u1", "item_id": "2019-11-12", "timestamp": "2019-11-12T14:14:46"}',
                '{"user_id": "u2", "item_id": "i2", "timestamp": "1573568086", "x": [1]}',
            ],
            "{",
        ),
        (
            "log.jsonl",
            [
                '{"user_id": 7, "item_id": 8, "timestamp": 1573568086.25}',
                '{"user_id": 9, "timestamp": 1573568086000}',
            ],
            "[]",
        ),
    ],
    ids=["quoted-csv", "jsonl-text", "jsonl-numbers"],
)
def test_fast_and_slow_paths_read_the_same(tmp_path, name, lines, broken):
    clean = tmp_path / "clean" / name
    dirty = tmp_path / "dirty" / name  # one bad line sends the file down the slow path
    for path, extra in ((clean, []), (dirty, [broken])):
        path.parent.mkdir()
        path.write_text("\n".join(lines + extra) + "\n")

    fast = events.read([clean], on_bad_rows="skip")
    slow = events.read([dirty], on_bad_rows="skip")

    assert slow.rows_rejected == 1 + fast.rows_rejected
    assert _canonical(fast) == _canonical(slow)
    assert fast.events.num_rows > 0


def test_crlf_bom_and_blank_lines(tmp_path):
    path = tmp_path / "log.csv"
    path.write_bytes(
        b"\xef\xbb\xbfuser_id,item_id,timestamp\r\nu1,i1,1573568086\r\n\r\nu2,i2,1\r\n"
    )
    result = events.read([path])
    assert result.rows_read == 2  # blank lines are not rows
    assert result.events.column("source_line").to_pylist() == [2, 4]
    assert result.events.column("user_id").to_pylist() == ["u1", "u2"]


BAD_ROWS = [
    # (line written at line 3, reason key, field, shown value)
    ("u9,i9", "wrong_field_count", None, "u9,i9"),
    ("u9,i9,1573568086,click,r9,extra", "wrong_field_count", None, "extra"),
    ("u9,i9,yesterday,click,r9", "bad_timestamp", "timestamp", "yesterday"),
    (",i9,1573568086,click,r9", "empty_user", "user_id", "''"),
    ("u9,,1573568086,click,r9", "empty_item", "item_id", "''"),
    ("u9,i9,1573568086,purchase,r9", "unknown_event_type", "event", "purchase"),
    (HEADER, "repeated_header", None, "user_id,item_id"),
    ("u\udcff9,i9,1573568086,click,r9", "not_utf8", "user_id", r"b'u\xff9'"),
]


def _bad_log(tmp_path, bad_line: str):
    path = tmp_path / "bad.csv"
    good = [",".join(ROWS[0]), ",".join(ROWS[1])]
    text = "\n".join([HEADER, good[0], bad_line, good[1]]) + "\n"
    path.write_bytes(text.encode("utf-8", errors="surrogateescape"))
    return path


@pytest.mark.parametrize("bad_line, key, field, shown", BAD_ROWS, ids=[row[1] for row in BAD_ROWS])
def test_bad_row_raises_with_file_line_field_and_value(tmp_path, bad_line, key, field, shown):
    path = _bad_log(tmp_path, bad_line)

    with pytest.raises(BadRowError) as caught:
        events.read([path], **OPTIONS)

    error = caught.value
    assert (error.file, error.line, error.field) == (str(path), 3, field)
    message = str(error)
    assert f"{path}, line 3" in message and shown in message
    if field:
        assert f"field `{field}`" in message


@pytest.mark.parametrize("bad_line, key, field, shown", BAD_ROWS, ids=[row[1] for row in BAD_ROWS])
def test_bad_row_is_skipped_and_counted(tmp_path, bad_line, key, field, shown):
    result = events.read([_bad_log(tmp_path, bad_line)], on_bad_rows="skip", **OPTIONS)

    assert dict(result.rejections.by_reason) == {key: 1}
    assert (result.rows_read, result.rows_used, result.rows_rejected) == (3, 2, 1)
    assert result.events.column("source_line").to_pylist() == [2, 4]
    assert _canonical(result) == EXPECTED[:2]
    assert "line 3" in result.rejections.examples[key][0]


def test_bad_typed_extra_value_is_rejected(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("user_id,item_id,timestamp,position\nu1,i1,1,3\nu1,i2,1,third\n")
    with pytest.raises(BadRowError, match=r"line 3: field `position`.*received 'third'"):
        events.read([path], extra_cols={"position": pa.int64()})
    result = events.read([path], extra_cols={"position": pa.int64()}, on_bad_rows="skip")
    assert dict(result.rejections.by_reason) == {"bad_value": 1}
    assert result.events.column("position").to_pylist() == [3]


@pytest.mark.parametrize(
    "line, key",
    [("{not json", "bad_json"), ("[1, 2]", "bad_json"), ('{"user_id": [1]}', "bad_value")],
)
def test_bad_json_lines(tmp_path, line, key):
    path = tmp_path / "log.jsonl"
    good = '{"user_id": "u1", "item_id": "i1", "timestamp": 1573568086}'
    path.write_text(f"{good}\n{line}\n{good}\n")
    with pytest.raises(BadRowError, match=f"{path.name}, line 2"):
        events.read([path])
    result = events.read([path], on_bad_rows="skip")
    assert dict(result.rejections.by_reason) == {key: 1}
    assert result.events.column("source_line").to_pylist() == [1, 3]


def test_first_bad_row_in_line_order_raises(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("user_id,item_id,timestamp\nu1,i1,later\nu2\n,i3,1\n")
    with pytest.raises(BadRowError) as caught:
        events.read([path])
    assert caught.value.line == 2  # the timestamp, found by the vectorised pass
    result = events.read([path], on_bad_rows="skip")
    assert dict(result.rejections.by_reason) == {
        "bad_timestamp": 1,
        "wrong_field_count": 1,
        "empty_user": 1,
    }
    assert result.events.num_rows == 0


def test_missing_column_names_path_and_column(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("user,item_id,timestamp\nu1,i1,1\n")
    with pytest.raises(ValueError, match=r"log.csv: missing required column\(s\) \['user_id'\]"):
        events.read([path])
    with pytest.raises(ValueError, match=r"missing required column\(s\) \['request_id'\]"):
        events.read([_write_csv(tmp_path)], impression_col="request_id")


def test_missing_columns_say_which_option_names_them(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("user,item,timestamp\nu1,i1,1\n")
    with pytest.raises(ValueError) as caught:
        events.read([path])
    message = str(caught.value)
    assert "--user-col NAME (now 'user_id')" in message
    assert "--item-col NAME (now 'item_id')" in message
    assert "--time-col" not in message  # present under its default name
    assert "user_col, item_col" in message
    # and the names it points to read the log
    assert events.read([path], user_col="user", item_col="item").events.num_rows == 1


def test_missing_parquet_and_json_columns(tmp_path):
    parquet = tmp_path / "log.parquet"
    pq.write_table(pa.table({"user_id": ["u"], "item_id": ["i"]}), parquet)
    jsonl = tmp_path / "log.jsonl"
    jsonl.write_text('{"user_id": "u", "item_id": "i"}\n')
    for path in (parquet, jsonl):
        with pytest.raises(ValueError, match=r"missing required column\(s\) \['timestamp'\]"):
            events.read([path])


def test_a_json_key_given_as_null_is_there(tmp_path):
    # null on every line is a null value (an empty session, an empty user), not a missing key
    path = tmp_path / "log.jsonl"
    path.write_text(
        '{"user_id": "u1", "item_id": "i1", "timestamp": 1700000000, "sess": null}\n'
        '{"user_id": null, "item_id": "i2", "timestamp": 1700000001, "sess": null}\n'
    )
    result = events.read([path], session_col="sess", on_bad_rows="skip")
    assert result.events.column("session_id").to_pylist() == [None]
    assert result.events.column("item_id").to_pylist() == ["i1"]
    assert dict(result.rejections.by_reason) == {"empty_user": 1}
    with pytest.raises(BadRowError, match="line 2: field `user_id`"):
        events.read([path], session_col="sess")
    path.write_text('{"user_id": "u1", "item_id": "i1", "timestamp": 1700000000}\n')
    with pytest.raises(ValueError, match=r"missing required column\(s\) \['sess'\]"):
        events.read([path], session_col="sess")


@pytest.mark.parametrize(
    "sess, found", [('"s1"', True), ("null", True), (None, False)], ids=["values", "null", "absent"]
)
def test_the_json_fast_path_tells_a_null_key_from_an_absent_one(sess, found):
    from pipelines.readers import _table

    extra = "" if sess is None else f', "sess": {sess}'
    data = "".join(
        f'{{"user_id": "u{i}", "item_id": "i1", "timestamp": 1700000000{extra}}}\n'
        for i in range(50)
    ).encode()
    parsed = _table._jsonl_fast(data, ["user_id", "item_id", "timestamp", "sess"], ("timestamp",))
    assert parsed is not None  # not sent line by line through the slow path
    table, _, keys, _ = parsed
    assert ("sess" in keys) == found and table.num_rows == 50


def test_a_quoted_line_break_is_named_in_the_error(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text('user_id,item_id,timestamp\nu1,"multi\nline",1700000000\nu1,i2,1700000001\n')
    with pytest.raises(BadRowError, match="line 2: .*a quoted field is not closed on this line"):
        events.read([path])
    result = events.read([path], on_bad_rows="skip")
    assert result.rows_read == 3 and dict(result.rejections.by_reason) == {"wrong_field_count": 2}


@pytest.mark.parametrize(
    "content, match",
    [("", "no header line"), ("user_id,item_id,timestamp\n", "No rows in the inputs")],
    ids=["empty-file", "header-only"],
)
def test_empty_input_is_a_clear_error(tmp_path, content, match):
    path = tmp_path / "log.csv"
    path.write_text(content)
    with pytest.raises(ValueError, match=match):
        events.read([path])


def test_pickles_are_refused_and_never_loaded(tmp_path):
    marker = tmp_path / "unpickled"

    class Payload:
        def __reduce__(self):
            return (marker.touch, ())

    for name in ("log.pkl", "log.csv"):  # by suffix, and by the pickle opcode
        path = tmp_path / name
        path.write_bytes(pickle.dumps(Payload(), protocol=2))
        with pytest.raises(ValueError, match="feedrec never loads pickles"):
            events.read([path])
    assert not marker.exists()


@pytest.mark.parametrize(
    "options, match",
    [
        ({"time_unit": "hours"}, "Received: time_unit='hours'"),
        ({"file_format": "xml"}, "Received: file_format='xml'"),
        ({"delimiter": "::"}, "Received: delimiter='::'"),
        ({"user_col": ""}, "Received: user_col=''"),
        ({"event_col": 3}, "Received: event_col=3"),
        ({"event_labels": {"click": 2}}, r"Received: event_labels=\{'click': 2\}"),
        ({"extra_cols": {"label": pa.int64()}}, "Received: extra_cols="),
        ({"item_col": "user_id"}, "Each source column may be used once"),
        ({"on_bad_rows": "ignore"}, "Received: on_bad_rows='ignore'"),
    ],
)
def test_option_checks_quote_the_received_value(tmp_path, options, match):
    with pytest.raises(ValueError, match=match):
        events.read([_write_csv(tmp_path)], **options)


def test_file_format_and_delimiter_override_the_suffix(tmp_path):
    path = tmp_path / "log.txt"
    path.write_text("user_id;item_id;timestamp\nu1;i1;1573568086\n")
    result = events.read([path], file_format="csv", delimiter=";")
    assert _canonical(result) == [("u1", "i1", NOV_12, 1, None, None)]


def test_detect_format_sniffs_unknown_suffixes(tmp_path):
    from pipelines.readers._files import Source

    source = Source(str(tmp_path / "log.dat"), tmp_path / "log.dat")
    assert events.detect_format(source, b'{"a": 1}\n') == "jsonl"
    assert events.detect_format(source, b"PAR1....") == "parquet"
    assert events.detect_format(source, b"a\tb\n1\t2\n") == "tsv"
    assert events.detect_format(source, b"a,b\n1,2\n") == "csv"


def test_large_file_with_bad_lines_is_reparsed_in_blocks(tmp_path, monkeypatch):
    from pipelines.readers import _table

    lines = ["user_id,item_id,timestamp"]
    lines += [f"u{row % 7},i{row},{1573568086 + row}" for row in range(60)]
    lines[10] = "u0,i9"  # wrong field count
    lines[45] = "u0,i9,\udcff"  # not UTF-8
    path = tmp_path / "big.csv"
    path.write_bytes(("\n".join(lines) + "\n").encode("utf-8", "surrogateescape"))

    whole = events.read([path], on_bad_rows="skip")
    calls = []
    monkeypatch.setattr(_table, "BLOCK_BYTES", 100)
    monkeypatch.setattr(_table, "_parse_slow", _spy(_table._parse_slow, calls))
    blocks = events.read([path], on_bad_rows="skip")

    assert blocks.events.equals(whole.events)
    assert blocks.rejections.by_reason == whole.rejections.by_reason
    assert dict(blocks.rejections.by_reason) == {"wrong_field_count": 1, "not_utf8": 1}
    assert blocks.events.column("source_line").to_pylist() == [
        line for line in range(2, 62) if line not in (11, 46)
    ]
    assert len(calls) == 2  # only the two blocks holding a bad line were walked


def _spy(function, calls):
    def spy(*args, **kwargs):
        calls.append(args)
        return function(*args, **kwargs)

    return spy
