"""One large JSON Lines or Parquet file streams in bounded batches, with the whole read's rows.

Each test reads the same file whole (the default batch size holds it) and in
tiny batches, and compares rows, line numbers, accounting and messages.
"""

from __future__ import annotations

import gzip
import json
import zipfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.readers import events
from pipelines.readers.base import BadRowError, combine


def _jsonl_lines(rows: int) -> list[str]:
    """Event lines; some broken in each way a JSON line can be, some blank."""
    rng = np.random.default_rng(3)
    lines = []
    for row in range(rows):
        record = {
            "user_id": f"u{rng.integers(30)}",
            "item_id": int(rng.integers(50)),  # a JSON integer id reads as text
            "timestamp": 1_573_568_086 + int(rng.integers(10**6)),
        }
        if row % 10 == 3:  # the session is given on some lines only
            record["session"] = f"s{row}"
        broken = row % 29
        if broken == 5:
            lines.append("{not json")
            continue
        if broken == 11:
            record["item_id"] = [1, 2]  # bad_value
        elif broken == 17:
            record["user_id"] = ""  # empty_user
        elif broken == 23:
            record["timestamp"] = "soon"  # bad_timestamp
        elif broken == 27:
            lines.append("")  # a blank line: not a row
        lines.append(json.dumps(record))
    return lines


def _write(path, lines: list[str], compress: bool = False):
    data = ("\n".join(lines) + "\n").encode()
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


OPTIONS = {"time_unit": "s", "session_col": "session"}


def _same(batches, whole) -> None:
    """Batches give the whole read's rows, lines, accounting and messages."""
    streamed = combine(batches)
    assert pa.concat_tables([batch.events for batch in batches]).equals(whole.events)
    assert streamed.rows_read == whole.rows_read
    assert streamed.rejections.by_reason == whole.rejections.by_reason
    assert streamed.rejections.examples == whole.rejections.examples
    for batch in batches:
        assert batch.rows_read == batch.events.num_rows + batch.rejections.total
    progress = [batch.progress for batch in batches]
    assert progress == sorted(progress) and progress[-1] == 1.0


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gzip"])
@pytest.mark.parametrize("batch_bytes", [1, 90, 700])
def test_a_jsonl_file_streams_in_blocks_with_the_whole_read_rows(tmp_path, compress, batch_bytes):
    lines = _jsonl_lines(300)
    path = _write(tmp_path / ("log.jsonl.gz" if compress else "log.jsonl"), lines, compress)
    whole = events.read([path], on_bad_rows="skip", **OPTIONS)

    batches = list(
        events.read_batches([path], on_bad_rows="skip", batch_bytes=batch_bytes, **OPTIONS)
    )

    assert len(batches) > 5
    _same(batches, whole)
    # The expected accounting, counted from the lines themselves.
    by_reason = whole.rejections.by_reason
    assert by_reason["bad_json"] == sum(line == "{not json" for line in lines)
    assert by_reason["bad_value"] == sum('"item_id": [1, 2]' in line for line in lines)
    assert by_reason["empty_user"] == sum('"user_id": ""' in line for line in lines)
    assert by_reason["bad_timestamp"] == sum('"soon"' in line for line in lines)
    assert whole.rows_read == sum(bool(line) for line in lines)
    # Messages name the file, the line, the field and the value, block or not.
    first_bad_value = next(n for n, line in enumerate(lines, 1) if '"item_id": [1, 2]' in line)
    assert combine(batches).rejections.examples["bad_value"][0] == (
        f"{path}, line {first_bad_value}: field `item_id`: expected a string or an integer, "
        "received '[1, 2]'"
    )
    # source_line is the line in the file (blank lines counted).
    numbers = whole.events.column("source_line").to_pylist()
    users = whole.events.column("user_id").to_pylist()
    assert all(
        json.loads(lines[n - 1])["user_id"] == u for n, u in zip(numbers, users, strict=True)
    )


def test_a_jsonl_block_holds_at_most_batch_bytes_of_lines(tmp_path):
    lines = [
        json.dumps({"user_id": f"u{r}", "item_id": f"i{r}", "timestamp": r}) for r in range(80)
    ]
    path = _write(tmp_path / "log.jsonl", lines)

    batches = list(events.read_batches([path], batch_bytes=200, time_unit="s"))

    ends = np.cumsum([batch.rows_read for batch in batches])
    spans = [
        sum(len(line) + 1 for line in lines[start:end])
        for start, end in zip([0, *ends[:-1]], ends, strict=True)
    ]
    assert ends[-1] == 80 and max(spans) <= 200 and len(batches) >= 20
    numbers = np.concatenate([batch.events.column("source_line") for batch in batches])
    assert numbers.tolist() == list(range(1, 81))


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gzip"])
def test_a_jsonl_bad_row_raises_with_the_same_line_whatever_the_block(tmp_path, compress):
    lines = _jsonl_lines(300)
    path = _write(tmp_path / ("log.jsonl.gz" if compress else "log.jsonl"), lines, compress)
    with pytest.raises(BadRowError) as whole:
        events.read([path], **OPTIONS)
    with pytest.raises(BadRowError) as streamed:
        list(events.read_batches([path], batch_bytes=50, **OPTIONS))

    assert str(streamed.value) == str(whole.value)
    assert whole.value.line == 6 and "expected one JSON object per line" in str(whole.value)


def test_a_jsonl_zip_member_streams_with_the_whole_read_rows(tmp_path):
    archive = tmp_path / "logs.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as handle:
        handle.writestr("logs/a.jsonl", "\n".join(_jsonl_lines(120)) + "\n")
        handle.writestr("logs/b.jsonl", "\n".join(_jsonl_lines(40)) + "\n")
    whole = events.read([archive], on_bad_rows="skip", **OPTIONS)

    batches = list(events.read_batches([archive], on_bad_rows="skip", batch_bytes=300, **OPTIONS))

    assert len(batches) > 5
    _same(batches, whole)


def test_a_jsonl_column_is_checked_over_the_whole_file_not_per_block(tmp_path):
    lines = [json.dumps({"user_id": "u", "item_id": "i", "timestamp": t}) for t in range(50)]
    lines.append(json.dumps({"user_id": "u", "item_id": "i", "timestamp": 50, "session": "s"}))
    path = _write(tmp_path / "log.jsonl", lines)

    # No block but the last gives a session: still the whole read's rows.
    batches = list(events.read_batches([path], batch_bytes=100, **OPTIONS))
    assert len(batches) > 10
    assert combine(batches).events.equals(events.read([path], **OPTIONS).events)

    # A key that no line gives is missing, whatever the blocks.
    for batch_bytes in (100, events.BATCH_BYTES):
        with pytest.raises(ValueError, match=r"missing required column\(s\) \['device'\]"):
            list(events.read_batches([path], batch_bytes=batch_bytes, extra_cols=["device"]))


def _parquet_log(path, rows: int, row_group_size: int = 64):
    """A log with a few bad rows (empty user, unparseable time), several row groups."""
    users = [f"u{row % 13}" if row % 41 != 7 else "" for row in range(rows)]
    times = [str(1_573_568_086 + row) if row % 53 != 9 else "soon" for row in range(rows)]
    table = pa.table(
        {
            "user_id": users,
            "item_id": np.arange(rows) % 17,  # integer ids read as text
            "timestamp": times,
            "unused": np.zeros(rows),
        }
    )
    pq.write_table(table, path, row_group_size=row_group_size)
    return path


@pytest.mark.parametrize("layout", ["plain", "gzip", "zip"])
@pytest.mark.parametrize("batch_bytes", [1, 500, 5000])
def test_a_parquet_file_streams_in_batches_with_the_whole_read_rows(tmp_path, layout, batch_bytes):
    path = _parquet_log(tmp_path / "log.parquet", 400)
    if layout == "gzip":
        path = tmp_path / "log.parquet.gz"
        path.write_bytes(gzip.compress((tmp_path / "log.parquet").read_bytes()))
    elif layout == "zip":
        path = tmp_path / "logs.zip"
        with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as handle:
            handle.write(tmp_path / "log.parquet", "logs/log.parquet")
    whole = events.read([path], on_bad_rows="skip", time_unit="s")

    batches = list(
        events.read_batches([path], on_bad_rows="skip", time_unit="s", batch_bytes=batch_bytes)
    )

    assert len(batches) > (20 if batch_bytes < 500 else 1)
    _same(batches, whole)
    # Row numbers are 1-based rows of the file, the rejected ones left out.
    bad = {row + 1 for row in range(400) if row % 41 == 7 or row % 53 == 9}
    numbers = whole.events.column("source_line").to_pylist()
    assert numbers == [row for row in range(1, 401) if row not in bad]
    empty = {row + 1 for row in range(400) if row % 41 == 7}
    assert whole.rejections.by_reason == {
        "empty_user": len(empty),
        "bad_timestamp": len(bad - empty),
    }


def test_a_parquet_bad_row_raises_with_the_same_row_whatever_the_batch(tmp_path):
    path = _parquet_log(tmp_path / "log.parquet", 200)
    with pytest.raises(BadRowError) as whole:
        events.read([path], time_unit="s")
    with pytest.raises(BadRowError) as streamed:
        list(events.read_batches([path], time_unit="s", batch_bytes=1))

    assert str(streamed.value) == str(whole.value)
    assert whole.value.line == 8 and whole.value.field == "user_id"


def test_a_streamed_parquet_file_is_checked_before_its_first_batch(tmp_path):
    path = _parquet_log(tmp_path / "log.parquet", 100)
    with pytest.raises(ValueError, match=r"missing required column\(s\) \['session'\]"):
        next(events.read_batches([path], batch_bytes=1, session_col="session"))
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"PAR1 but nothing else" * 10)
    with pytest.raises(ValueError, match="not a readable Parquet file"):
        list(events.read_batches([broken], batch_bytes=1))
