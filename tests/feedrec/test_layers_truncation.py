"""truncate_history keeps the most recent clicks, left-aligned."""

from __future__ import annotations

import numpy as np
import pytest

from feedrec.layers import truncate_history


def _by_hand(history, lengths, max_length):
    out = np.zeros((len(history), max_length), dtype=np.int32)
    kept_lengths = []
    for row, (items, n) in enumerate(zip(history, lengths, strict=True)):
        kept = list(items[: min(n, len(items))])[-max_length:] if n else []
        out[row, : len(kept)] = kept
        kept_lengths.append(len(kept))
    return out, np.array(kept_lengths)


@pytest.mark.parametrize("max_length", [1, 3, 5, 8], ids=lambda n: f"L={n}")
def test_keeps_the_most_recent_items(max_length):
    # Oldest first, right-padded; padded slots hold garbage that must vanish.
    history = np.array(
        [[10, 11, 12, 13, 14, 0], [20, 21, 99, 98, 97, 96], [30, 31, 32, 33, 34, 35], [7] * 6]
    )
    lengths = np.array([5, 2, 6, 0])
    result, result_lengths = truncate_history(history, lengths, max_length)
    expected, expected_lengths = _by_hand(history, lengths, max_length)
    np.testing.assert_array_equal(result.numpy(), expected)
    np.testing.assert_array_equal(result_lengths.numpy(), expected_lengths)


def test_most_recent_item_is_last_real_slot():
    result, lengths = truncate_history([[1, 2, 3, 4, 5, 6, 7]], [7], 3)
    assert result.numpy().tolist() == [[5, 6, 7]]
    assert lengths.numpy().tolist() == [3]


def test_lengths_beyond_the_width_are_clipped():
    result, lengths = truncate_history([[4, 5]], [9], 4)
    assert result.numpy().tolist() == [[4, 5, 0, 0]]
    assert lengths.numpy().tolist() == [2]


def test_zero_width_history():
    result, lengths = truncate_history(np.zeros((2, 0), dtype=np.int32), [0, 0], 3)
    assert result.numpy().tolist() == [[0, 0, 0], [0, 0, 0]]
    assert lengths.numpy().tolist() == [0, 0]


def test_argument_check():
    with pytest.raises(ValueError, match="max_length=0"):
        truncate_history([[1]], [1], 0)
