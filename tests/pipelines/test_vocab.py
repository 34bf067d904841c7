"""Vocabularies: training counts, deterministic order, OOV, items.parquet rows, features."""

import numpy as np
import pyarrow as pa
import pytest

from pipelines.schema import FEATURE_VOCAB, ITEMS, OOV_INDEX, validate
from pipelines.vocab import Vocabulary, build_feature_vocabulary, items_table

TRAIN_IDS = ["n3", "n1", "n2", "n1", "n3", "n9", "n1", "n2"]  # n1 x3, n2 x2, n3 x2, n9 x1


def test_order_by_count_then_raw_id():
    vocab = Vocabulary.from_ids(TRAIN_IDS)
    assert vocab.item_ids.to_pylist() == ["n1", "n2", "n3", "n9"]
    assert vocab.counts.tolist() == [3, 2, 2, 1]
    assert vocab.size == 6  # padding and OOV included
    assert vocab.lookup(["n1", "n2", "n3", "n9"]).tolist() == [2, 3, 4, 5]


def test_order_does_not_depend_on_input_order():
    shuffled = list(reversed(TRAIN_IDS))
    assert Vocabulary.from_ids(shuffled).item_ids.to_pylist() == ["n1", "n2", "n3", "n9"]


def test_min_count_and_unseen_ids_map_to_oov():
    vocab = Vocabulary.from_ids(TRAIN_IDS, min_count=2)
    assert vocab.item_ids.to_pylist() == ["n1", "n2", "n3"]
    assert vocab.lookup(["n9", "never-seen", "n3"]).tolist() == [OOV_INDEX, OOV_INDEX, 4]


@pytest.mark.parametrize("min_count", [0, -1, 1.5, True])
def test_min_count_is_checked(min_count):
    with pytest.raises(ValueError, match=f"min_count={min_count!r}"):
        Vocabulary.from_ids(TRAIN_IDS, min_count=min_count)


def test_from_counts_checks_lengths():
    with pytest.raises(ValueError, match="same length"):
        Vocabulary.from_counts(pa.array(["a"]), np.array([1, 2]))


def test_items_table_rows_are_indices():
    vocab = Vocabulary.from_ids(TRAIN_IDS)
    metadata = pa.table(
        {
            "item_id": ["n2", "n1", "n3", "n1", "other"],
            "category": ["sports", "news", "news", "ignored-duplicate", "x"],
            "subcategory": ["golf", "", None, "y", "z"],
        }
    )
    never = np.iinfo(np.int64).max
    items, features = items_table(vocab, first_seen=np.array([5, 7, 1, never]), metadata=metadata)
    validate(items, ITEMS, "items")
    assert items.column("item_index").to_pylist() == list(range(6))
    assert items.column("item_id").to_pylist() == ["", "<oov>", "n1", "n2", "n3", "n9"]
    assert items.column("count").to_pylist() == [0, 0, 3, 2, 2, 1]
    assert items.column("first_seen").to_pylist() == [None, None, 5, 7, 1, None]
    # news is carried by 2 vocabulary items, sports by 1: news gets index 1.
    assert features["category"].to_pylist() == [
        {"index": 0, "value": ""},
        {"index": 1, "value": "news"},
        {"index": 2, "value": "sports"},
    ]
    assert items.column("category").to_pylist() == [0, 0, 1, 2, 1, 0]
    assert features["subcategory"].column("value").to_pylist() == ["", "golf"]
    assert items.column("subcategory").to_pylist() == [0, 0, 0, 1, 0, 0]  # "" and null: missing
    for table in features.values():
        validate(table, FEATURE_VOCAB, "feature")


def test_items_table_without_metadata_has_empty_features():
    items, features = items_table(Vocabulary.from_ids(["a"]))
    assert items.column("category").to_pylist() == [0, 0, 0]
    assert items.column("first_seen").null_count == 3
    assert {name: t.num_rows for name, t in features.items()} == {"category": 1, "subcategory": 1}


def test_clicks_column():
    items, _ = items_table(Vocabulary.from_ids(["a", "b", "a"]), clicks=np.array([1, 0]))
    assert items.column("clicks").to_pylist() == [0, 0, 1, 0]
    assert items.column_names[:6] == ITEMS.names


def test_extra_features():
    metadata = pa.table({"item_id": ["a"], "genre": ["jazz"]})
    items, features = items_table(
        Vocabulary.from_ids(["a"]), metadata=metadata, extra_features=("genre",)
    )
    assert items.column("genre").to_pylist() == [0, 0, 1]
    assert features["genre"].column("value").to_pylist() == ["", "jazz"]


def test_feature_vocabulary_order():
    table = build_feature_vocabulary(["b", "a", "b", None, "", "c", "a", "b"])
    assert table.column("value").to_pylist() == ["", "b", "a", "c"]
    assert table.column("index").to_pylist() == [0, 1, 2, 3]
