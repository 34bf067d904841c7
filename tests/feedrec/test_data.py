import numpy as np
import pyarrow as pa
import pytest

from feedrec.data import batch_from_table, pad_lists
from pipelines.schema import EXAMPLES


def examples(histories, candidates, labels):
    n = len(histories)
    return pa.table(
        {
            "example_key": [f"k{i}" for i in range(n)],
            "user_id": ["u"] * n,
            "time": list(range(n)),
            "impression_id": [None] * n,
            "session_id": [None] * n,
            "history": histories,
            "history_length": [len(h) for h in histories],
            "candidates": candidates,
            "labels": labels,
        },
        schema=EXAMPLES,
    )


def test_pad_lists_keeps_most_recent_and_pads_right():
    column = pa.array([[5, 6, 7, 8], [9], []], type=pa.list_(pa.int32()))
    padded, kept = pad_lists(column, 3, keep="last")
    np.testing.assert_array_equal(padded, [[6, 7, 8], [9, 0, 0], [0, 0, 0]])
    np.testing.assert_array_equal(kept, [3, 1, 0])
    padded, kept = pad_lists(column, 3, keep="first", pad=-1)
    np.testing.assert_array_equal(padded, [[5, 6, 7], [9, -1, -1], [-1, -1, -1]])


def test_short_history_is_unaffected_by_L():
    table = examples([[3, 4]], [[2, 5]], [[1, 0]])
    short = batch_from_table(table, history_length=4)
    long = batch_from_table(table, history_length=9)
    np.testing.assert_array_equal(long.history[:, :4], short.history)
    assert not long.history[:, 4:].any()
    assert short.history_length.tolist() == long.history_length.tolist() == [2]


def test_candidates_and_labels_are_padded_with_padding_label():
    table = examples([[2], [3, 4]], [[2, 5, 6], [7]], [[1, 0, 0], [1]])
    batch = batch_from_table(table, history_length=2)
    np.testing.assert_array_equal(batch.candidates, [[2, 5, 6], [7, 0, 0]])
    np.testing.assert_array_equal(batch.labels, [[1, 0, 0], [1, -1, -1]])
    assert batch.labels.dtype == np.float32 and batch.history.dtype == np.int32


def test_candidates_are_never_truncated():
    table = examples([[2]], [[2, 5, 6]], [[1, 0, 0]])
    with pytest.raises(ValueError, match="never truncated"):
        batch_from_table(table, history_length=2, num_candidates=2)
