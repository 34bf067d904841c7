"""PositionEmbedding: slot i gets row i, whatever the padded width."""

from __future__ import annotations

import numpy as np
import pytest

from feedrec.layers import PositionEmbedding


def test_slot_i_gets_row_i():
    layer = PositionEmbedding(sequence_length=6)
    out = layer(np.zeros((2, 4, 3), dtype="float32")).numpy()
    table = layer.position_embeddings.numpy()
    np.testing.assert_array_equal(out[0], table[:4])
    np.testing.assert_array_equal(out[1], table[:4])


def test_real_clicks_get_the_same_positions_whatever_the_width():
    # A history of 3 clicks padded to 4 or to 6 gets rows 0, 1, 2 for its clicks.
    layer = PositionEmbedding(sequence_length=6)
    narrow = layer(np.zeros((1, 4, 3), dtype="float32")).numpy()
    wide = layer(np.zeros((1, 6, 3), dtype="float32")).numpy()
    np.testing.assert_array_equal(narrow[:, :3], wide[:, :3])


def test_rejects_inputs_longer_than_sequence_length():
    layer = PositionEmbedding(sequence_length=3)
    with pytest.raises(ValueError, match="history_len=5, sequence_length=3"):
        layer(np.zeros((1, 5, 2), dtype="float32"))


def test_argument_check():
    with pytest.raises(ValueError, match="sequence_length=0"):
        PositionEmbedding(sequence_length=0)


def test_round_trip(run_layer_test, tmp_path):
    x = np.random.default_rng(0).normal(size=(2, 5, 4)).astype("float32")
    run_layer_test(PositionEmbedding(6, name="positions"), (x,), {}, tmp_path)
