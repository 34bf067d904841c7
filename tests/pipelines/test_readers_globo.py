"""The Globo.com click-log reader (a preset of the events reader)."""

from __future__ import annotations

import gzip
import zipfile

import pyarrow as pa
import pytest

from pipelines.readers import globo
from pipelines.readers.base import BadRowError
from pipelines.schema import EVENTS, validate

HEADER = (
    "user_id,session_id,session_start,session_size,click_article_id,click_timestamp,"
    "click_environment,click_deviceGroup,click_os,click_country,click_region,click_referrer_type"
)
HOUR_0 = [
    "0,1506825423271737,1506825423000,2,157541,1506826828020,4,3,20,1,20,2",
    "0,1506825423271737,1506825423000,2,68866,1506826858020,4,3,20,1,20,2",
]
HOUR_2 = ["1,1506825426267738,1506825426000,1,235840,1506827017951,4,1,17,1,16,2"]


def _csv(rows: list[str], header: str = HEADER) -> str:
    return "\n".join([header, *rows]) + "\n"


def _zip(tmp_path, files: dict[str, str]):
    path = tmp_path / "clicks.zip"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, text in files.items():
            archive.writestr(f"clicks/{name}", text)
    return path


def _hours(tmp_path):
    return _zip(
        tmp_path,
        {
            "clicks_hour_000.csv": _csv(HOUR_0),
            "clicks_hour_001.csv": HEADER + "\n",  # a header only: valid, no rows
            "clicks_hour_002.csv": _csv(HOUR_2),
        },
    )


def test_zip_of_hourly_files(tmp_path):
    path = _hours(tmp_path)

    result = globo.read([path])

    table = result.events
    validate(table, EVENTS, "globo events")
    assert table.column("user_id").to_pylist() == ["0", "0", "1"]
    assert table.column("item_id").to_pylist() == ["157541", "68866", "235840"]
    assert table.column("time").to_pylist() == [1506826828020, 1506826858020, 1506827017951]
    assert table.column("label").to_pylist() == [1, 1, 1]
    assert table.column("session_id").to_pylist() == [
        "1506825423271737",
        "1506825423271737",
        "1506825426267738",
    ]
    assert table.column("impression_id").null_count == 3
    assert table.column("source_file").to_pylist() == [
        f"{path}:clicks/clicks_hour_000.csv",
        f"{path}:clicks/clicks_hour_000.csv",
        f"{path}:clicks/clicks_hour_002.csv",
    ]
    assert table.column("source_line").to_pylist() == [2, 3, 2]
    assert table.column("click_os").to_pylist() == [20, 20, 17]
    assert table.column("session_size").to_pylist() == [2, 2, 1]
    for name in globo.CONTEXT_COLUMNS:
        assert table.schema.field(name).type == pa.int64()
    assert (result.rows_read, result.rows_rejected) == (3, 0)


def test_folder_and_gzip_give_the_same_events_as_the_zip(tmp_path):
    folder = tmp_path / "clicks"
    folder.mkdir()
    (folder / "clicks_hour_000.csv.gz").write_bytes(gzip.compress(_csv(HOUR_0).encode()))
    (folder / "clicks_hour_002.csv").write_text(_csv(HOUR_2))
    (folder / "articles_metadata.csv").write_text("article_id\n1\n")  # not a click file

    from_folder = globo.read([folder]).events.drop_columns(["source_file"])
    from_zip = globo.read([_hours(tmp_path)]).events.drop_columns(["source_file"])

    assert from_folder.equals(from_zip)


def test_columns_in_another_order(tmp_path):
    names = HEADER.split(",")
    order = list(reversed(range(len(names))))
    reordered = ",".join(names[i] for i in order)
    rows = [",".join(row.split(",")[i] for i in order) for row in HOUR_0]
    path = _zip(
        tmp_path,
        {"clicks_hour_000.csv": _csv(rows, reordered), "clicks_hour_002.csv": _csv(HOUR_2)},
    )
    result = globo.read([path])
    assert result.events.column("item_id").to_pylist() == ["157541", "68866", "235840"]


BAD = [
    (
        "0,1506825423271737,1506825423000,2,1,soon,4,3,20,1,20,2",
        "bad_timestamp",
        "click_timestamp",
        "'soon'",
    ),
    (
        "0,1506825423271737,1506825423000,2,1,1506826828020,4,3,x,1,20,2",
        "bad_value",
        "click_os",
        "'x'",
    ),
    (
        "0,1506825423271737,1506825423000,2,1,1506826828020,4,3,20,1,20",
        "wrong_field_count",
        None,
        "1506826828020",
    ),
    (
        ",1506825423271737,1506825423000,2,1,1506826828020,4,3,20,1,20,2",
        "empty_user",
        "user_id",
        "''",
    ),
    (HEADER, "repeated_header", None, "user_id,session_id"),
]


@pytest.mark.parametrize("line, key, field, shown", BAD, ids=[row[1] for row in BAD])
def test_bad_rows_in_one_file_of_many(tmp_path, line, key, field, shown):
    path = _zip(
        tmp_path,
        {
            "clicks_hour_000.csv": _csv(HOUR_0),
            "clicks_hour_001.csv": _csv([HOUR_0[0], line, HOUR_0[1]]),
            "clicks_hour_002.csv": _csv(HOUR_2),
        },
    )

    with pytest.raises(BadRowError) as caught:
        globo.read([path])
    assert caught.value.file == f"{path}:clicks/clicks_hour_001.csv"
    assert (caught.value.line, caught.value.field) == (3, field)
    assert shown in str(caught.value)

    result = globo.read([path], on_bad_rows="skip")
    assert dict(result.rejections.by_reason) == {key: 1}
    assert (result.rows_read, result.rows_used) == (6, 5)
    assert result.events.column("source_line").to_pylist() == [2, 3, 2, 4, 2]
    assert result.events.column("click_os").to_pylist() == [20, 20, 20, 20, 17]


def test_missing_column_and_no_click_files(tmp_path):
    path = _zip(tmp_path, {"clicks_hour_000.csv": "user_id,click_article_id\n1,2\n"})
    with pytest.raises(ValueError, match=r"clicks_hour_000.csv: missing required column") as err:
        globo.read([path])
    assert "--session-col" not in str(err.value)  # Globo's columns are fixed: no option to offer
    empty = tmp_path / "none"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=r"holds no Globo click files"):
        globo.read([empty])
    only_headers = _zip(tmp_path, {"clicks_hour_100.csv": HEADER + "\n"})
    with pytest.raises(ValueError, match="No rows in the inputs"):
        globo.read([only_headers])
