"""The SASRec-style sequence reader: `user item` lines, time = position per user."""

from __future__ import annotations

import collections
import gzip

import numpy as np
import pyarrow as pa
import pytest

from pipelines.readers import sequences
from pipelines.readers.base import BadRowError
from pipelines.schema import EVENTS, validate

TEXT = "1 10\n1 11\n2 10\n1 12\n"
# user, item, time (= position within the user's sequence), source line
EXPECTED = [("1", "10", 0, 1), ("1", "11", 1, 2), ("2", "10", 0, 3), ("1", "12", 2, 4)]


def _rows(result) -> list[tuple]:
    names = ["user_id", "item_id", "time", "source_line"]
    return list(zip(*(result.events.column(name).to_pylist() for name in names), strict=True))


@pytest.mark.parametrize(
    "name, content",
    [
        ("seq.txt", TEXT.encode()),
        ("seq.txt.gz", gzip.compress(TEXT.encode())),
        ("seq.txt", TEXT.replace(" ", "\t").encode()),  # tabs: the slow path
        ("seq.txt", TEXT.replace(" ", "   ").replace("\n", " \r\n").encode()),
    ],
    ids=["plain", "gzip", "tabs", "padded-crlf"],
)
def test_reads_user_item_lines(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)

    result = sequences.read([path])

    validate(result.events, EVENTS, "sequence events")
    assert _rows(result) == EXPECTED
    assert result.events.column("label").to_pylist() == [1, 1, 1, 1]
    assert result.events.column("impression_id").null_count == 4
    assert result.events.column("session_id").null_count == 4
    assert result.rows_read == result.rows_used == 4


def test_positions_continue_across_files_of_a_directory(tmp_path):
    (tmp_path / "a.txt").write_text("1 10\n2 20\n")
    (tmp_path / "b.txt").write_text("1 11\n")
    (tmp_path / "notes.md").write_text("not a sequence file")

    result = sequences.read([tmp_path])

    assert result.events.column("time").to_pylist() == [0, 0, 1]
    assert result.events.column("source_file").to_pylist() == [
        str(tmp_path / "a.txt"),
        str(tmp_path / "a.txt"),
        str(tmp_path / "b.txt"),
    ]


def test_positions_match_a_counter():
    rng = np.random.default_rng(0)
    users = [f"u{value}" for value in rng.integers(0, 7, size=200)]
    seen: collections.Counter[str] = collections.Counter()
    expected = []
    for user in users:
        expected.append(seen[user])
        seen[user] += 1
    assert sequences.positions(pa.array(users)).tolist() == expected
    chunked = pa.chunked_array([users[:50], users[50:]])
    assert sequences.positions(chunked).tolist() == expected


@pytest.mark.parametrize(
    "line, key, shown",
    [
        ("1", "wrong_field_count", "'1'"),
        ("1 13 14", "wrong_field_count", "1 13 14"),
        ("1 1\udcff3", "not_utf8", r"b'1\xff3'"),
    ],
    ids=["one-field", "three-fields", "not-utf8"],
)
def test_bad_lines(tmp_path, line, key, shown):
    path = tmp_path / "seq.txt"
    path.write_bytes(f"1 10\n{line}\n\n1 11\n".encode("utf-8", "surrogateescape"))

    with pytest.raises(BadRowError) as caught:
        sequences.read([path])
    assert (caught.value.file, caught.value.line) == (str(path), 2)
    assert shown in str(caught.value)

    result = sequences.read([path], on_bad_rows="skip")
    assert dict(result.rejections.by_reason) == {key: 1}
    assert (result.rows_read, result.rows_used) == (3, 2)  # the blank line is no row
    # Rejected lines take no position: the user's sequence stays 0, 1.
    assert _rows(result) == [("1", "10", 0, 1), ("1", "11", 1, 4)]


def test_empty_input(tmp_path):
    path = tmp_path / "seq.txt"
    path.write_text("")
    with pytest.raises(ValueError, match="No rows in the inputs"):
        sequences.read([path])
