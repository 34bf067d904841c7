"""ItemEncoder: ID plus feature embeddings, tables as non-trainable weights."""

from __future__ import annotations

import numpy as np
import pytest

from feedrec.models import ItemEncoder
from feedrec.models.item_encoder import OOV_INDEX
from pipelines.schema import OOV_INDEX as SCHEMA_OOV_INDEX

NUM_ITEMS, DIM = 7, 4
TABLES = {
    "category": np.array([0, 0, 1, 2, 1, 2, 0], dtype=np.int32),
    "subcategory": np.array([0, 0, 3, 1, 2, 4, 4], dtype=np.int32),
}
SIZES = {"category": 3, "subcategory": 5}
IDS = np.array([[2, 3, 0], [6, 1, 5]], dtype=np.int32)


def _encoder(**kwargs):
    encoder = ItemEncoder(NUM_ITEMS, DIM, feature_vocab_sizes=SIZES, **kwargs)
    encoder.set_feature_tables(TABLES)
    return encoder


def _tables_of(encoder):
    named = {w.path.split("/")[-2]: w.numpy() for w in encoder.weights if w.trainable}
    return named["item_embedding"], named["category_embedding"], named["subcategory_embedding"]


def test_sum_combiner_by_hand():
    encoder = _encoder(combiner="sum")
    items, categories, subcategories = _tables_of(encoder)
    expected = (
        items[IDS] + categories[TABLES["category"][IDS]] + subcategories[TABLES["subcategory"][IDS]]
    )
    np.testing.assert_allclose(encoder(IDS).numpy(), expected, atol=1e-6)


def test_concat_combiner_by_hand():
    encoder = _encoder(combiner="concat")
    items, categories, subcategories = _tables_of(encoder)
    named = {w.name: w.numpy() for w in encoder.weights if "projection" in w.path}
    concatenated = np.concatenate(
        [
            items[IDS],
            categories[TABLES["category"][IDS]],
            subcategories[TABLES["subcategory"][IDS]],
        ],
        axis=-1,
    )
    expected = concatenated @ named["kernel"] + named["bias"]
    np.testing.assert_allclose(encoder(IDS).numpy(), expected, atol=1e-5)
    assert encoder(IDS).shape == (2, 3, DIM)


def test_tables_are_non_trainable_int32_weights():
    encoder = _encoder()
    tables = [w for w in encoder.weights if not w.trainable]
    assert sorted(w.name for w in tables) == ["category_table", "subcategory_table"]
    assert all(w.dtype == "int32" for w in tables)
    assert not any(w.dtype == "int32" for w in encoder.trainable_weights)


def test_features_change_the_vectors():
    plain = ItemEncoder(NUM_ITEMS, DIM, embeddings_initializer="ones")
    featured = _encoder(embeddings_initializer="ones")
    np.testing.assert_array_equal(plain(IDS).numpy(), np.ones((2, 3, DIM)))
    np.testing.assert_array_equal(featured(IDS).numpy(), np.full((2, 3, DIM), 3.0))


@pytest.mark.parametrize("bad_id", [-5, NUM_ITEMS, 10_000])
def test_out_of_range_ids_map_to_oov(bad_id):
    assert OOV_INDEX == SCHEMA_OOV_INDEX
    encoder = _encoder()
    out = encoder(np.array([[bad_id, OOV_INDEX, 2]], dtype=np.int32)).numpy()
    np.testing.assert_array_equal(out[0, 0], out[0, 1])
    assert not np.allclose(out[0, 0], out[0, 2])


def test_any_input_shape():
    encoder = ItemEncoder(NUM_ITEMS, DIM)
    assert encoder(np.array([2, 3])).shape == (2, DIM)
    assert encoder(np.zeros((2, 3, 4), dtype=np.int32)).shape == (2, 3, 4, DIM)


@pytest.mark.parametrize(
    ("tables", "match"),
    [
        ({"category": TABLES["category"]}, r"missing=\['subcategory'\]"),
        ({**TABLES, "color": TABLES["category"]}, r"unknown=\['color'\]"),
        ({**TABLES, "category": np.zeros(3, dtype=np.int32)}, r"shape=\(3,\)"),
        ({**TABLES, "category": np.full(NUM_ITEMS, 3, dtype=np.int32)}, "max=3"),
        ({**TABLES, "category": np.zeros(NUM_ITEMS, dtype=np.float32)}, "dtype=float32"),
    ],
    ids=["missing", "unknown", "length", "range", "dtype"],
)
def test_set_feature_tables_checks(tables, match):
    encoder = ItemEncoder(NUM_ITEMS, DIM, feature_vocab_sizes=SIZES)
    with pytest.raises(ValueError, match=match):
        encoder.set_feature_tables(tables)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_items": 1}, "num_items=1"),
        ({"embedding_dim": 0}, "embedding_dim=0"),
        ({"combiner": "mean"}, "combiner='mean'"),
        ({"dropout": 1.0}, "dropout=1.0"),
        ({"feature_vocab_sizes": {"category": 0}}, r"feature_vocab_sizes\['category'\]=0"),
    ],
)
def test_argument_checks(kwargs, match):
    arguments = {"num_items": NUM_ITEMS, "embedding_dim": DIM, **kwargs}
    with pytest.raises(ValueError, match=match):
        ItemEncoder(**arguments)


@pytest.mark.parametrize("combiner", ["sum", "concat"])
def test_round_trip_carries_the_tables(run_layer_test, tmp_path, combiner):
    encoder = _encoder(combiner=combiner, dropout=0.1, name="items")
    _, loaded = run_layer_test(encoder, (IDS,), {}, tmp_path)
    loaded_encoder = loaded.get_layer("items")
    for name, table in TABLES.items():
        np.testing.assert_array_equal(loaded_encoder.feature_tables[name].numpy(), table)


def test_metadata_only_items_share_the_oov_id_row_but_keep_features():
    import numpy as np

    encoder = ItemEncoder(6, 4, feature_vocab_sizes={"category": 3}, num_id_items=4)
    encoder.set_feature_tables({"category": np.array([0, 0, 1, 2, 1, 2], dtype="int32")})
    vectors = np.asarray(encoder(np.array([1, 2, 3, 4, 5])))
    ids = np.asarray(encoder.item_embedding.embeddings)
    categories = np.asarray(encoder.feature_embeddings["category"].embeddings)
    # items 4 and 5 (>= num_id_items) use ID row 1 (OOV) plus their own category
    np.testing.assert_allclose(vectors[3], ids[1] + categories[1], rtol=1e-6)
    np.testing.assert_allclose(vectors[4], ids[1] + categories[2], rtol=1e-6)
    np.testing.assert_allclose(vectors[1], ids[2] + categories[1], rtol=1e-6)
    assert ids.shape == (4, 4)
    assert ItemEncoder.from_config(encoder.get_config()).num_id_items == 4


def test_num_id_items_is_checked():
    with pytest.raises(ValueError, match="num_id_items=9"):
        ItemEncoder(6, 4, num_id_items=9)
