"""``pipelines.dataset.ExamplesFile``: either layout, a file or a directory of parts."""

import threading

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import pipelines.dataset
from pipelines.dataset import ExamplesFile
from pipelines.schema import EXAMPLES


def examples(n: int, seed: int = 0) -> pa.Table:
    """``n`` examples with random histories (0 to 6 clicks) and 3 candidates."""
    rng = np.random.default_rng(seed)
    histories = [rng.integers(2, 50, rng.integers(0, 7)).tolist() for _ in range(n)]
    return pa.table(
        {
            "example_key": [f"u{i}/0" for i in range(n)],
            "user_id": [f"u{i}" for i in range(n)],
            "time": np.arange(n, dtype=np.int64),
            "impression_id": pa.nulls(n, pa.string()),
            "session_id": pa.nulls(n, pa.string()),
            "history": histories,
            "history_length": [len(h) for h in histories],
            "candidates": [[2, 3, 4]] * n,
            "labels": [[1, 0, 0]] * n,
        }
    ).cast(EXAMPLES)


def test_compact_file_reads_as_its_lists(tmp_path, write_compact):
    table = examples(40)
    path = write_compact(table, tmp_path, row_group_size=16)
    examples_file = ExamplesFile(path)
    assert examples_file.layout == "compact" and examples_file.num_row_groups == 3
    assert examples_file.read().equals(table)
    assert examples_file.read(["history", "time"]).equals(table.select(["history", "time"]))
    assert examples_file.read(["candidates"]).column_names == ["candidates"]
    rows = np.array([0, 3, 17, 39])
    assert examples_file.take(rows).equals(table.take(pa.array(rows)))
    streamed = examples_file.iter_tables(5, row_groups=[2, 0], columns=["history"])
    expected = pa.concat_tables([table.slice(32), table.slice(0, 16)]).select(["history"])
    assert pa.concat_tables(list(streamed)).equals(expected)


def test_a_directory_of_parts_reads_as_one_file(tmp_path):
    table = examples(30, seed=1)
    folder = tmp_path / "train.parquet"
    folder.mkdir()
    pq.write_table(table.slice(0, 20), folder / "part-00000.parquet", row_group_size=8)
    pq.write_table(table.slice(20), folder / "part-00001.parquet", row_group_size=8)
    examples_file = ExamplesFile(folder)
    assert examples_file.layout == "lists"
    assert (examples_file.num_rows, examples_file.num_row_groups) == (30, 5)
    assert examples_file.read().equals(table)
    assert pa.concat_tables(list(examples_file.iter_tables(100, row_groups=[3]))).equals(
        table.slice(20, 8)
    )
    assert examples_file.take(np.array([1, 25])).equals(table.take(pa.array([1, 25])))


def test_bad_files_are_named(tmp_path, write_compact):
    wrong = examples(3).drop_columns(["history"])
    pq.write_table(wrong, tmp_path / "train.parquet")
    with pytest.raises(ValueError, match=r"train.parquet: missing column `history`"):
        ExamplesFile(tmp_path / "train.parquet")
    path = write_compact(examples(3), tmp_path, row_group_size=2)
    with pytest.raises(ValueError, match="no examples column 'histories'"):
        ExamplesFile(path).read(["histories"])
    (tmp_path / "empty.parquet").mkdir()
    with pytest.raises(FileNotFoundError, match="without Parquet parts"):
        ExamplesFile(tmp_path / "empty.parquet")


def test_readers_of_one_file_share_its_clicks_until_it_changes(tmp_path, write_compact):
    table = examples(20, seed=2)
    path = write_compact(table, tmp_path, row_group_size=8)
    first, second = ExamplesFile(path), ExamplesFile(path)
    assert first.clicks() is second.clicks()  # parallel readers, epochs: one copy
    clicks = pq.read_table(tmp_path / "clicks.parquet")
    longer = pa.concat_tables([clicks, clicks])  # a larger file: a new size and time
    pq.write_table(longer, tmp_path / "clicks.parquet")
    changed = ExamplesFile(path).clicks()
    assert changed is not first.clicks() and len(changed) == 2 * len(first.clicks())


def test_nulls_in_a_required_column_are_named(tmp_path):
    table = examples(4)
    nullable = pa.schema([field.with_nullable(True) for field in EXAMPLES])
    keys = pa.array(["a", None, "c", "d"])
    pq.write_table(table.cast(nullable).set_column(0, "example_key", keys), tmp_path / "t.parquet")
    with pytest.raises(ValueError, match=r"`example_key` may not contain nulls; received 1"):
        ExamplesFile(tmp_path / "t.parquet").read()


def test_histories_are_expanded_in_pieces_when_there_are_many(tmp_path, write_compact, monkeypatch):
    """A list array holds fewer than 2**31 values: larger splits expand piece by piece."""
    table = examples(60, seed=3)
    path = write_compact(table, tmp_path, row_group_size=60)
    monkeypatch.setattr(pipelines.dataset, "_MAX_LIST_VALUES", 7)
    read = ExamplesFile(path).read()
    assert read.column("history").num_chunks > 10
    assert read.equals(table)


def test_histories_out_of_their_clicks_are_named(tmp_path, write_compact):
    path = write_compact(examples(10, seed=4), tmp_path, row_group_size=4)
    clicks = pq.read_table(tmp_path / "clicks.parquet")
    pq.write_table(clicks.slice(0, 3), tmp_path / "clicks.parquet")  # no row count recorded
    with pytest.raises(ValueError, match=r"`history_start` \+ `history_length` should lie in"):
        ExamplesFile(path).read()
    (tmp_path / "clicks.parquet").unlink()
    with pytest.raises(FileNotFoundError, match="clicks.parquet is missing"):
        ExamplesFile(path)


def test_readers_starting_at_once_share_one_copy_of_the_clicks(tmp_path, write_compact):
    path = write_compact(examples(200, seed=5), tmp_path, row_group_size=50)
    files = [ExamplesFile(path) for _ in range(4)]
    start, copies = threading.Barrier(len(files)), [None] * len(files)

    def first_read(i):
        start.wait()
        copies[i] = files[i].clicks()

    threads = [threading.Thread(target=first_read, args=(i,)) for i in range(len(files))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({id(c) for c in copies}) == 1
