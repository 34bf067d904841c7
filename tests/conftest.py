"""Shared fixtures: where the real data lives, and small generated logs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = (REPO_ROOT / ".." / "shared" / "data").resolve()


def real_data(*parts: str) -> Path:
    """Path of a file or folder under ../shared/data; skips the test when absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data not available: {path} is absent (../shared/data beside the repo)")
    return path


def _write_compact(table, directory, row_group_size: int) -> Path:
    """``table`` (``EXAMPLES``) written by hand in the compact layout as ``train.parquet``.

    The histories go to ``clicks.parquet`` in reverse row order, so a reader
    must follow each row's ``history_start`` (any order is valid).
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipelines.schema import CLICKS, COMPACT_EXAMPLES

    history = table.column("history").combine_chunks()
    offsets = history.offsets.to_numpy().astype(np.int64)
    lengths = np.diff(offsets)
    reverse = np.arange(len(lengths))[::-1]
    starts = np.zeros(len(lengths), np.int64)
    starts[reverse] = np.concatenate([[0], np.cumsum(lengths[reverse])[:-1]])
    values = history.values.to_numpy()
    pieces = [values[offsets[r] : offsets[r + 1]] for r in reverse]
    clicks = np.concatenate(pieces) if pieces else np.zeros(0, np.int32)
    pq.write_table(
        pa.table({"item_index": pa.array(clicks, pa.int32())}, schema=CLICKS),
        Path(directory) / "clicks.parquet",
    )
    index = table.column_names.index("history")
    compact = table.remove_column(index).add_column(index, "history_start", pa.array(starts))
    path = Path(directory) / "train.parquet"
    pq.write_table(compact.cast(COMPACT_EXAMPLES), path, row_group_size=row_group_size)
    return path


@pytest.fixture
def write_compact():
    """Write an ``EXAMPLES`` table in the compact layout by hand (not with ``prepare``)."""
    return _write_compact
