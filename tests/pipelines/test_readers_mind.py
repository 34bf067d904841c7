"""The MIND reader: impressions to candidate events, given histories, news items."""

from __future__ import annotations

import calendar
import zipfile

import pytest

from pipelines.readers import mind
from pipelines.readers.base import BadRowError
from pipelines.schema import EVENTS, validate

NOV_12 = calendar.timegm((2019, 11, 12, 14, 14, 46)) * 1000
NOV_11 = calendar.timegm((2019, 11, 11, 9, 0, 0)) * 1000

BEHAVIORS = [
    "7\tU1\t11/12/2019 2:14:46 PM\tN1 N2\tN3-1 N4-0",
    "5\tU2\t11/11/2019 9:00:00 AM\t\tN4-0 N5-0 N3-1",
]
NEWS = [
    "N3\tsports\tfootball\tTitle three\tAn abstract\thttps://x/3\t[]\t[]",
    'N4\tnews\t\tTitle "four"\t\thttps://x/4\t[]\t[]',
]
# user, item, time, label, impression id, source line
EXPECTED = [
    ("U1", "N3", NOV_12, 1, "7", 1),
    ("U1", "N4", NOV_12, 0, "7", 1),
    ("U2", "N4", NOV_11, 0, "5", 2),
    ("U2", "N5", NOV_11, 0, "5", 2),
    ("U2", "N3", NOV_11, 1, "5", 2),
]


def _text(lines: list[str]) -> str:
    return "\n".join(lines) + "\n"


def _folder(tmp_path, behaviors=BEHAVIORS, news=NEWS):
    folder = tmp_path / "MINDsmall_train"
    folder.mkdir(exist_ok=True)
    (folder / "behaviors.tsv").write_bytes(_text(behaviors).encode("utf-8", "surrogateescape"))
    if news is not None:
        (folder / "news.tsv").write_bytes(_text(news).encode("utf-8", "surrogateescape"))
    return folder


def _events(result) -> list[tuple]:
    names = ["user_id", "item_id", "time", "label", "impression_id", "source_line"]
    table = result.events
    return list(zip(*(table.column(name).to_pylist() for name in names), strict=True))


def test_folder(tmp_path):
    folder = _folder(tmp_path)

    result = mind.read([folder])

    validate(result.events, EVENTS, "mind events")
    assert _events(result) == EXPECTED
    assert result.events.column("session_id").null_count == 5
    assert result.events.column("source_file").to_pylist() == [str(folder / "behaviors.tsv")] * 5
    assert (result.rows_read, result.rows_used, result.rows_rejected) == (2, 2, 0)
    assert result.given_history.to_pylist() == [
        {"impression_id": "7", "history": ["N1", "N2"]},
        {"impression_id": "5", "history": []},
    ]
    assert result.items.to_pylist() == [
        {"item_id": "N3", "category": "sports", "subcategory": "football", "title": "Title three"},
        {"item_id": "N4", "category": "news", "subcategory": None, "title": 'Title "four"'},
    ]
    assert result.items_read == 2 and result.item_rejections.total == 0
    assert [record["path"] for record in result.inputs] == [
        str(folder / "behaviors.tsv"),
        str(folder / "news.tsv"),
    ]


@pytest.mark.parametrize("prefix", ["", "MINDsmall_train/"], ids=["top-level", "one-folder"])
def test_zip(tmp_path, prefix):
    path = tmp_path / "MINDsmall_train.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(f"{prefix}behaviors.tsv", _text(BEHAVIORS))
        archive.writestr(f"{prefix}news.tsv", _text(NEWS))
        archive.writestr(f"{prefix}entity_embedding.vec", "ignored")

    result = mind.read(path)

    assert _events(result) == EXPECTED
    assert result.events.column("source_file")[0].as_py() == f"{path}:{prefix}behaviors.tsv"
    assert result.items.num_rows == 2


def test_files_given_directly_and_news_optional(tmp_path):
    folder = _folder(tmp_path, news=None)
    result = mind.read([folder / "behaviors.tsv"])
    assert _events(result) == EXPECTED
    assert result.items is None and result.item_rejections is None


def test_twelve_oclock(tmp_path):
    folder = _folder(
        tmp_path,
        behaviors=[
            "1\tU1\t11/12/2019 12:05:00 AM\t\tN1-1",
            "2\tU1\t11/12/2019 12:05:00 PM\t\tN1-1",
        ],
    )
    midnight = calendar.timegm((2019, 11, 12, 0, 5, 0)) * 1000
    times = mind.read([folder]).events.column("time").to_pylist()
    assert times == [midnight, midnight + 12 * 3600 * 1000]


def test_rows_are_not_assumed_sorted_and_ids_may_repeat_across_columns(tmp_path):
    folder = _folder(tmp_path, behaviors=list(reversed(BEHAVIORS)))
    result = mind.read([folder])
    assert result.events.column("impression_id").to_pylist() == ["5", "5", "5", "7", "7"]
    assert result.events.column("source_line").to_pylist() == [1, 1, 1, 2, 2]


GOOD = BEHAVIORS[0]
BAD = [
    ("9\tU9\t11/12/2019 2:14:46 PM\tN1", "wrong_field_count", None, "N1"),
    ("9\tU9\t13/45/2019 1:00:00 PM\t\tN1-1", "bad_timestamp", "time", "13/45/2019"),
    ("9\tU9\t2/30/2019 1:00:00 PM\t\tN1-1", "bad_timestamp", "time", "2/30/2019"),
    ("9\tU9\t11/12/2019 14:14:46\t\tN1-1", "bad_timestamp", "time", "14:14:46"),
    ("9\t\t11/12/2019 2:14:46 PM\t\tN1-1", "empty_user", "user_id", "''"),
    ("\tU9\t11/12/2019 2:14:46 PM\t\tN1-1", "empty_impression_id", "impression_id", "''"),
    (
        "9\tU9\t11/12/2019 2:14:46 PM\t\tN1-1 N12-x",
        "bad_impression_token",
        "impressions",
        "'N12-x'",
    ),
    ("9\tU9\t11/12/2019 2:14:46 PM\t\tN12", "bad_impression_token", "impressions", "'N12'"),
    ("9\tU9\t11/12/2019 2:14:46 PM\t\tN12-2", "bad_impression_token", "impressions", "N12-2"),
    ("9\tU9\t11/12/2019 2:14:46 PM\t\t-1", "bad_impression_token", "impressions", "'-1'"),
    ("9\tU9\t11/12/2019 2:14:46 PM\tN1\t ", "bad_impression_token", "impressions", "' '"),
    ("9\tU\udcff9\t11/12/2019 2:14:46 PM\t\tN1-1", "not_utf8", "user_id", r"b'U\xff9'"),
    ("7\tU9\t11/12/2019 2:14:46 PM\t\tN1-1", "duplicate_impression_id", "impression_id", "'7'"),
]


@pytest.mark.parametrize(
    "line, key, field, shown", BAD, ids=[f"{r[1]}-{i}" for i, r in enumerate(BAD)]
)
def test_bad_impression_rows(tmp_path, line, key, field, shown):
    folder = _folder(tmp_path, behaviors=[GOOD, line, BEHAVIORS[1]])

    with pytest.raises(BadRowError) as caught:
        mind.read([folder])
    error = caught.value
    assert (error.file, error.line, error.field) == (str(folder / "behaviors.tsv"), 2, field)
    assert shown in str(error)

    result = mind.read([folder], on_bad_rows="skip")
    assert dict(result.rejections.by_reason) == {key: 1}
    assert (result.rows_read, result.rows_used) == (3, 2)
    assert [row[:5] for row in _events(result)] == [row[:5] for row in EXPECTED]
    assert result.given_history.column("impression_id").to_pylist() == ["7", "5"]


@pytest.mark.parametrize(
    "line, key",
    [
        ("N9\tsports", "news_wrong_field_count"),
        ("\tsports\tfootball\tT\tA\tU\t[]\t[]", "news_empty_item"),
        ("N3\tnews\tother\tT\tA\tU\t[]\t[]", "news_duplicate_item"),
        ("N9\tsp\udcffrts\tfootball\tT\tA\tU\t[]\t[]", "news_not_utf8"),
    ],
)
def test_bad_news_rows_are_counted_apart(tmp_path, line, key):
    folder = _folder(tmp_path, news=[NEWS[0], line, NEWS[1]])

    with pytest.raises(BadRowError, match="news.tsv, line 2"):
        mind.read([folder])

    result = mind.read([folder], on_bad_rows="skip")
    assert dict(result.item_rejections.by_reason) == {key: 1}
    assert result.rejections.total == 0 and result.rows_read == result.rows_used == 2
    assert result.items_read == 3
    assert result.items.column("item_id").to_pylist() == ["N3", "N4"]
    assert result.items.column("category").to_pylist() == ["sports", "news"]


def test_locating_the_files(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="holds no MIND behaviors.tsv and news.tsv"):
        mind.read([empty])
    news_only = tmp_path / "news_only"
    news_only.mkdir()
    (news_only / "news.tsv").write_text(_text(NEWS))
    with pytest.raises(FileNotFoundError, match="No behaviors.tsv in the inputs"):
        mind.read([news_only])
    first = _folder(tmp_path)
    second = tmp_path / "copy"
    second.mkdir()
    (second / "behaviors.tsv").write_text(_text(BEHAVIORS))
    with pytest.raises(ValueError, match="Expected one MIND split, found 2 behaviors.tsv"):
        mind.read([first, second])
    other = tmp_path / "other.tsv"
    other.write_text("x\n")
    with pytest.raises(ValueError, match="other.tsv: not a MIND file"):
        mind.read([other])


def test_empty_behaviors_is_a_clear_error(tmp_path):
    folder = _folder(tmp_path, behaviors=[])
    (folder / "behaviors.tsv").write_text("")
    with pytest.raises(ValueError, match="No rows in the inputs.*behaviors.tsv"):
        mind.read([folder])
