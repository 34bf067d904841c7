"""The readers on the real datasets in ../shared/data (skipped when absent).

Expected counts are those published in the data folder's README.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow.compute as pc
import pytest

from pipelines.readers import globo, mind, sequences
from pipelines.schema import EVENTS, validate

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"

pytestmark = [
    pytest.mark.real_data,
    pytest.mark.skipif(not DATA.is_dir(), reason=f"real data folder {DATA} is absent"),
]


def _distinct(result, column: str) -> int:
    return pc.count_distinct(result.events.column(column)).as_py()


def test_mind_small_subset():
    result = mind.read([DATA / "mind-small-subset"])

    validate(result.events, EVENTS, "MIND events")
    assert result.rows_read == result.rows_used == 4032
    assert result.events.num_rows == 149_984
    assert pc.sum(result.events.column("label")).as_py() == 6053
    assert _distinct(result, "user_id") == 3784
    assert _distinct(result, "impression_id") == 4032
    assert result.given_history.num_rows == 4032
    assert result.items.num_rows == result.items_read == 2000
    assert result.item_rejections.total == 0


@pytest.mark.slow
def test_globo_clicks_zip():
    result = globo.read([DATA / "globo-news-clicks" / "clicks_hour_000-309.zip"])

    validate(result.events, EVENTS, "Globo events")
    assert result.rows_read == result.rows_used == result.events.num_rows == 2_596_481
    assert result.rows_rejected == 0
    assert _distinct(result, "user_id") == 302_330
    assert _distinct(result, "item_id") == 39_728
    assert _distinct(result, "session_id") == 908_022


@pytest.mark.parametrize(
    "path, interactions, users",
    [
        ("ml-1m/ml-1m_sequences.txt.gz", 1_000_209, 6040),
        ("sasrec-video/Video.txt", 287_107, 31_013),
    ],
)
def test_sequences(path, interactions, users):
    result = sequences.read([DATA / path])

    validate(result.events, EVENTS, "sequence events")
    assert result.rows_read == result.rows_used == result.events.num_rows == interactions
    assert _distinct(result, "user_id") == users
    # Each user's positions start at 0 once.
    first = pc.sum(pc.equal(result.events.column("time"), 0)).as_py()
    assert first == users
