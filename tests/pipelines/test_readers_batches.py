"""Streaming readers: ``read_batches`` gives the whole read back, a bounded batch at a time."""

from __future__ import annotations

import gzip
import threading
import zipfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines import readers
from pipelines.readers import events, globo
from pipelines.readers.base import BadRowError, ReadResult, Rejections, combine

GLOBO_HEADER = (
    "user_id,session_id,session_start,session_size,click_article_id,click_timestamp,"
    "click_environment,click_deviceGroup,click_os,click_country,click_region,click_referrer_type"
)


def _log_lines(rows: int, seed: int = 0, bad_every: int = 0) -> list[str]:
    """``user_id,item_id,timestamp`` lines; every ``bad_every``-th one is broken in some way."""
    rng = np.random.default_rng(seed)
    lines = []
    for row in range(rows):
        line = f"u{rng.integers(50)},i{rng.integers(80)},{1_573_568_086 + int(rng.integers(10**6))}"
        if bad_every and row % bad_every == bad_every - 1:
            line = ["u1,i2", ",i2,1573568086", "u1,i2,soon", "user_id,item_id,timestamp"][
                row // bad_every % 4
            ]
        lines.append(line)
    return lines


def _write_log(path, lines, header="user_id,item_id,timestamp", compress=False):
    data = ("\n".join([header, *lines]) + "\n").encode()
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


def _zip(path, members: dict[str, bytes]):
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def _same_accounting(batches: list[ReadResult], whole: ReadResult) -> None:
    for batch in batches:
        assert batch.rows_read == batch.events.num_rows + batch.rejections.total
    assert sum(batch.rows_read for batch in batches) == whole.rows_read
    assert sum(batch.events.num_rows for batch in batches) == whole.events.num_rows
    total = Rejections("skip")
    for batch in batches:
        total.by_reason.update(batch.rejections.by_reason)
    assert total.by_reason == whole.rejections.by_reason


@pytest.fixture
def inputs(tmp_path, request):
    """Several input layouts of one log (with bad rows), by name."""
    lines = _log_lines(400, bad_every=37)
    kind = request.param
    if kind == "one-csv":
        return [_write_log(tmp_path / "log.csv", lines)]
    if kind == "one-csv-gz":
        return [_write_log(tmp_path / "log.csv.gz", lines, compress=True)]
    if kind == "one-unknown-suffix":  # sniffed as CSV from its first bytes
        return [_write_log(tmp_path / "log.dat", lines)]
    if kind == "zip-members":
        members = {
            f"logs/part-{n}.csv": ("\n".join(["user_id,item_id,timestamp", *part]) + "\n").encode()
            for n, part in enumerate([lines[:90], lines[90:95], [], lines[95:]])
        }
        members["logs/part-9.csv.gz"] = gzip.compress(b"user_id,item_id,timestamp\nu1,i1,1\n")
        return [_zip(tmp_path / "logs.zip", members)]
    if kind == "mixed-files":
        first = _write_log(tmp_path / "a.csv", lines[:200])
        parquet = tmp_path / "b.parquet"
        pq.write_table(
            pa.table({"user_id": ["u1", "u2"], "item_id": ["i1", "i2"], "timestamp": [7, 8]}),
            parquet,
        )
        jsonl = tmp_path / "c.jsonl"
        jsonl.write_text('{"user_id": "u3", "item_id": "i3", "timestamp": 9}\n')
        return [first, parquet, jsonl, _write_log(tmp_path / "d.csv", lines[200:])]
    raise AssertionError(kind)


LAYOUTS = ["one-csv", "one-csv-gz", "one-unknown-suffix", "zip-members", "mixed-files"]


@pytest.mark.parametrize("inputs", LAYOUTS, indirect=True)
@pytest.mark.parametrize("batch_bytes", [1, 200, 1 << 20])
def test_batches_combine_to_the_whole_read(inputs, batch_bytes):
    whole = events.read(inputs, on_bad_rows="skip", time_unit="s")

    batches = list(
        events.read_batches(inputs, on_bad_rows="skip", time_unit="s", batch_bytes=batch_bytes)
    )

    assert combine(batches).events.equals(whole.events)
    assert pa.concat_tables([b.events for b in batches]).equals(whole.events)
    _same_accounting(batches, whole)
    assert combine(batches).rejections.examples == whole.rejections.examples
    # Only the last batch carries the input records; progress only grows, to 1.
    assert [b.inputs for b in batches[:-1]] == [[]] * (len(batches) - 1)
    assert batches[-1].inputs == whole.inputs and whole.inputs
    progress = [b.progress for b in batches]
    assert progress == sorted(progress) and progress[-1] == 1.0


@pytest.mark.parametrize("inputs", ["one-csv", "one-csv-gz", "one-unknown-suffix"], indirect=True)
def test_a_single_file_is_read_in_bounded_blocks(inputs):
    data = gzip.decompress(inputs[0].read_bytes()) if inputs[0].suffix == ".gz" else None
    data = data or inputs[0].read_bytes()
    line_bytes = [len(line) + 1 for line in data.split(b"\n")[1:-1]]  # the lines under the header

    batches = list(events.read_batches(inputs, on_bad_rows="skip", batch_bytes=600))

    # Each batch covers the next `rows_read` lines: never more than 600 bytes of them.
    ends = np.cumsum([batch.rows_read for batch in batches])
    spans = [sum(line_bytes[b:e]) for b, e in zip([0, *ends[:-1]], ends, strict=True)]
    assert ends[-1] == len(line_bytes) == 400
    assert len(batches) >= 10 and max(spans) <= 600
    assert 0 < batches[0].progress < 1.0


@pytest.mark.parametrize("inputs", LAYOUTS, indirect=True)
def test_error_mode_raises_the_first_bad_row_like_the_whole_read(inputs):
    with pytest.raises(BadRowError) as whole:
        events.read(inputs, time_unit="s")
    batches = events.read_batches(inputs, time_unit="s", batch_bytes=100)
    with pytest.raises(BadRowError) as streamed:
        list(batches)
    assert str(streamed.value) == str(whole.value)
    assert "line 38" in str(whole.value)  # the first bad line: row 37, under the header


def test_line_numbers_continue_across_blocks(tmp_path):
    lines = [f"u{row},i{row},{1000 + row}" for row in range(100)]
    path = _write_log(tmp_path / "log.csv", lines)

    batches = list(events.read_batches([path], time_unit="s", batch_bytes=64))

    assert len(batches) > 5
    numbers = np.concatenate([b.events.column("source_line").to_numpy() for b in batches])
    assert numbers.tolist() == list(range(2, 102))
    users = [u for b in batches for u in b.events.column("user_id").to_pylist()]
    assert users == [f"u{row}" for row in range(100)]


def test_a_copied_header_inside_a_later_block_is_still_rejected(tmp_path):
    lines = [f"u{row},i{row},{1000 + row}" for row in range(60)]
    lines[50] = "user_id,item_id,timestamp"
    path = _write_log(tmp_path / "log.csv", lines)

    batches = list(events.read_batches([path], on_bad_rows="skip", batch_bytes=100))

    assert combine(batches).rejections.by_reason == {"repeated_header": 1}
    assert "line 52" in combine(batches).rejections.examples["repeated_header"][0]


def test_globo_zip_streams_member_by_member(tmp_path):
    hours = {}
    for hour in range(6):
        rows = [
            f"{user},{hour}{user},1506825423000,2,{100 + user},{1506826828020 + hour * 3600_000},"
            f"4,3,20,1,20,2"
            for user in range(hour * 3, hour * 3 + 20)
        ]
        hours[f"clicks/clicks_hour_{hour:03d}.csv"] = (
            "\n".join([GLOBO_HEADER, *rows]) + "\n"
        ).encode()
    hours["clicks/clicks_hour_006.csv"] = (GLOBO_HEADER + "\n").encode()  # a header only
    archive = _zip(tmp_path / "clicks.zip", hours)

    whole = globo.read([archive])
    batches = list(globo.read_batches([archive], batch_bytes=1500))

    assert len(batches) >= 3
    assert combine(batches).events.equals(whole.events)
    _same_accounting(batches, whole)
    assert whole.rows_read == 120 and batches[-1].inputs == whole.inputs


def test_registry_streams_some_formats_and_reads_the_others_whole(tmp_path):
    path = _write_log(tmp_path / "log.csv", _log_lines(50))
    streamed = list(readers.read_batches("events", [path], batch_bytes=100, time_unit="s"))
    assert len(streamed) > 1
    assert combine(streamed).events.equals(readers.read("events", [path], time_unit="s").events)

    text = tmp_path / "seq.txt"
    text.write_text("u1 i1\nu1 i2\nu2 i1\n")
    (single,) = readers.read_batches("sequences", [text], batch_bytes=1)
    assert single.events.equals(readers.read("sequences", [text]).events)
    with pytest.raises(ValueError, match="format='nope'"):
        readers.read_batches("nope", [text])


def test_arguments_are_checked_at_the_call(tmp_path):
    path = _write_log(tmp_path / "log.csv", _log_lines(5))
    with pytest.raises(ValueError, match="batch_bytes=0"):
        events.read_batches([path], batch_bytes=0)
    with pytest.raises(ValueError, match="workers=0"):
        globo.read_batches([path], workers=0)
    with pytest.raises(ValueError, match="file_format='xml'"):
        events.read_batches([path], file_format="xml")
    with pytest.raises(FileNotFoundError):
        events.read_batches([tmp_path / "missing.csv"])


def test_no_rows_at_all_is_an_error_at_the_end(tmp_path):
    path = _write_log(tmp_path / "log.csv", [])
    with pytest.raises(ValueError, match="No rows in the inputs"):
        list(events.read_batches([path]))


def test_a_later_unreadable_file_does_not_hide_an_earlier_bad_row(tmp_path):
    first = _write_log(tmp_path / "a.csv", ["u1,i1,1573568086", "u1,i2,soon"])
    broken = tmp_path / "b.csv.gz"
    broken.write_bytes(b"\x1f\x8b not gzip at all")
    with pytest.raises(BadRowError, match="a.csv, line 3"):
        list(events.read_batches([first, broken], time_unit="s", batch_bytes=1))
    with pytest.raises(ValueError, match="not a readable gzip stream"):
        list(events.read_batches([broken, first], time_unit="s", batch_bytes=1))


def test_stopping_early_leaves_no_thread_behind(tmp_path):
    path = _write_log(tmp_path / "log.csv", _log_lines(300))
    before = threading.active_count()
    batches = events.read_batches([path], time_unit="s", batch_bytes=100)
    next(batches)
    batches.close()
    assert threading.active_count() == before


def test_combine_merges_accounting_and_keeps_the_first_messages():
    def batch(rows, reason, count):
        rejections = Rejections("skip", max_examples=2)
        for line in range(count):
            rejections.reject(reason, BadRowError("f", line + 1, None, reason))
        table = pa.table({"x": list(range(rows))})
        return ReadResult(table, rows + count, rejections, inputs=[{"path": str(rows)}])

    merged = combine([batch(2, "a", 1), batch(3, "a", 3), batch(1, "b", 1)])

    assert merged.rows_read == 11 and merged.events.num_rows == 6
    assert merged.rejections.by_reason == {"a": 4, "b": 1}
    assert merged.rejections.examples["a"] == ["f, line 1: a", "f, line 1: a"]
    assert [record["path"] for record in merged.inputs] == ["2", "3", "1"]
    with pytest.raises(ValueError, match="at least one ReadResult"):
        combine([])


def test_pieces_parse_in_runs_that_keep_the_piece_order():
    from pipelines.readers import _table

    good = b"user_id,item_id\nu1,i1\nu2,i2\n"
    bad = b"user_id,item_id\nu3,\xff\nu4,i4\n"  # not UTF-8: this piece is walked line by line
    datas = [good, bad, good, good]
    pieces = [_table.Piece(name, data) for name, data in zip("abcd", datas, strict=True)]

    chunks = _table.read_delimited_pieces(pieces, delimiter=",", required=["user_id", "item_id"])

    # a | b | c + d: a slow piece ends a run, so rows come out in piece order.
    assert [sorted(set(chunk.sources.tolist())) for chunk in chunks] == [[0], [1], [2, 3]]
    sources = np.concatenate([chunk.sources for chunk in chunks])
    assert sources.tolist() == [0, 0, 1, 2, 2, 3, 3]
    assert np.concatenate([chunk.lines for chunk in chunks]).tolist() == [2, 3, 3, 2, 3, 2, 3]
    rejections = Rejections("skip")
    _table.report(rejections, chunks)
    assert rejections.examples["not_utf8"][0].startswith("b, line 2")
