"""prepare: examples, vocabularies and manifest on disk, from hand-built canonical events."""

import collections
import json
import zipfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from pipelines import prepare as prepare_module
from pipelines.dataset import feature_tables, load_items, load_manifest, load_split
from pipelines.prepare import PrepareOptions, prepare
from pipelines.readers.base import BadRowError, ReadResult, Rejections
from pipelines.schema import CLICKS, COMPACT_EXAMPLES, EVENTS, EXAMPLES, SPLITS, validate
from pipelines.splits import time_cutoffs

SHARED_DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"


# --------------------------------------------------------------------------- helpers


def canonical(rows):
    """EVENTS from (user, item, time, label, impression) tuples."""
    users, items, times, labels, impressions = zip(*rows, strict=True)
    n = len(rows)
    return pa.table(
        {
            "user_id": pa.array(users, pa.string()),
            "item_id": pa.array(items, pa.string()),
            "time": pa.array(times, pa.int64()),
            "label": pa.array(labels, pa.int8()),
            "impression_id": pa.array(impressions, pa.string()),
            "session_id": pa.array([f"s-{u}" for u in users], pa.string()),
            "source_file": pa.array(["log"] * n),
            "source_line": pa.array(range(1, n + 1), pa.int64()),
        },
        schema=EVENTS,
    )


def clicks(rows):
    return canonical([(u, i, t, 1, None) for u, i, t in rows])


def result_of(events, *, rows_read=None, rejected=None, given=None, items=None):
    rejections = Rejections("skip")
    for reason, count in (rejected or {}).items():
        rejections.reject(reason, BadRowError("log", 1, None, reason), count)
    return ReadResult(
        events=events,
        rows_read=rows_read if rows_read is not None else events.num_rows + rejections.total,
        rejections=rejections,
        given_history=given,
        items=items,
    )


def reader_for(result):
    calls = []

    def read(inputs, *, on_bad_rows, **options):
        calls.append((list(inputs), on_bad_rows, options))
        return result(inputs) if callable(result) else result

    read.calls = calls
    return read


@pytest.fixture
def log_file(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("not read by the fake reader\n")
    return path


def run(tmp_path, log_file, result, name="data", fmt="events", **options):
    options.setdefault("history_length", 2)
    options.setdefault("negatives", 2)
    manifest = prepare(
        fmt,
        [log_file],
        tmp_path / name,
        options=PrepareOptions(**options),
        reader=reader_for(result),
    )
    return manifest, tmp_path / name


def split_rows(data_dir, split):
    return load_split(data_dir, split).to_pylist()


def raw_ids(data_dir):
    return load_items(data_dir).column("item_id").to_pylist()


# u: a@10, b@20, c@20, d@30 ; v: a@15, e@40
CLICK_LOG = clicks(
    [("u", "a", 10), ("v", "a", 15), ("u", "b", 20), ("u", "c", 20), ("u", "d", 30), ("v", "e", 40)]
)


# --------------------------------------------------------------------------- click logs


def test_click_log_by_hand(tmp_path, log_file):
    result = result_of(CLICK_LOG, rejected={"bad_timestamp": 2})
    manifest, data = run(tmp_path, log_file, result, valid_start=30, test_start=40)
    ids = raw_ids(data)
    # Training clicks: a x2, b, c -> a=2, then b=3, c=4 (count desc, then id).
    assert ids == ["", "<oov>", "a", "b", "c"]
    items = load_items(data)
    assert (
        items.column("count").to_pylist() == items.column("clicks").to_pylist() == [0, 0, 2, 1, 1]
    )
    train = split_rows(data, "train")
    assert [r["example_key"] for r in train] == ["u/0", "v/0", "u/1", "u/2"]
    assert [r["history"] for r in train] == [[], [], [2], [2]]  # b and c share t=20
    assert [r["history_length"] for r in train] == [0, 0, 1, 1]
    assert [r["candidates"][0] for r in train] == [2, 2, 3, 4]
    (valid,) = split_rows(data, "valid")
    assert valid["example_key"] == "u/3" and valid["time"] == 30
    assert valid["history"] == [3, 4]  # most recent 2 of a, b, c
    assert valid["candidates"][0] == 1  # d was never clicked in train: OOV
    (test,) = split_rows(data, "test")
    assert test["history"] == [2] and test["session_id"] == "s-v"
    assert test["impression_id"] is None
    for row in train + [valid, test]:
        assert row["labels"] == [1] + [0] * (len(row["candidates"]) - 1)
        assert len(row["candidates"]) <= 3
    assert manifest["splits"]["valid"]["oov"] == {"history": 0, "candidates": 1}
    assert manifest["splits"]["train"]["oov"] == {"history": 0, "candidates": 0}
    assert [manifest["splits"][s]["users"] for s in SPLITS] == [2, 1, 1]
    assert [manifest["splits"][s]["examples"] for s in SPLITS] == [4, 1, 1]
    assert (manifest["rows_read"], manifest["rows_used"], manifest["rows_rejected"]) == (8, 6, 2)
    assert manifest["rejected_by_reason"] == {"bad_timestamp": 2}
    assert manifest["num_items"] == 5 and manifest["history_length"] == 2


def test_negatives_are_live_and_exclude_the_positive(tmp_path, log_file):
    rng = np.random.default_rng(0)
    rows = [
        (f"u{rng.integers(8)}", f"i{rng.integers(30)}", int(t)) for t in rng.integers(0, 1000, 300)
    ]
    log = clicks(rows)
    _, data = run(tmp_path, log_file, result_of(log), negatives=4, min_count=1)
    first_seen = dict(
        (r["item_id"], r["time_min"])
        for r in log.group_by("item_id").aggregate([("time", "min")]).to_pylist()
    )
    ids = raw_ids(data)
    checked = 0
    for split in SPLITS:
        for row in split_rows(data, split):
            positive, *negatives = row["candidates"]
            assert positive not in negatives or positive == 1  # two OOV items may collide
            for index in negatives:
                if index != 1:
                    assert first_seen[ids[index]] <= row["time"]
                    checked += 1
    assert checked > 100


def brute_force_history(log, user, time, length):
    before = [
        (r["time"], r["source_line"], r["item_id"])
        for r in log.to_pylist()
        if r["user_id"] == user and r["time"] < time and r["label"] == 1
    ]
    return [item for _, _, item in sorted(before)][-length:] if length else []


@pytest.mark.parametrize("split_mode", ["time", "leave-last-out"])
def test_histories_equal_brute_force_and_never_leak(tmp_path, log_file, split_mode):
    """Every history is exactly the user's clicks strictly before the example (most recent L)."""
    rng = np.random.default_rng(1)
    rows = [
        (f"u{rng.integers(5)}", f"i{rng.integers(12)}", int(t)) for t in rng.integers(0, 60, 150)
    ]
    log = clicks(rows)  # many equal timestamps per user
    _, data = run(tmp_path, log_file, result_of(log), history_length=4, split_mode=split_mode)
    ids = raw_ids(data)
    train_items = set(ids[2:])
    total = 0
    for split in SPLITS:
        for row in split_rows(data, split):
            expected = brute_force_history(log, row["user_id"], row["time"], 4)
            expected = [i if i in train_items else "<oov>" for i in expected]
            assert [ids[i] for i in row["history"]] == expected, row
            total += 1
    assert total == 150


def test_leave_last_out_is_the_default_for_sequences(tmp_path, log_file):
    log = clicks([("u", f"i{k}", k) for k in range(5)] + [("v", "i0", 0), ("v", "i1", 1)])
    manifest, data = run(tmp_path, log_file, result_of(log), fmt="sequences", history_length=10)
    assert manifest["split_mode"] == "leave-last-out" and manifest["cutoffs"] is None
    train, valid, test = (split_rows(data, s) for s in SPLITS)
    assert sorted(r["example_key"] for r in train) == ["u/0", "u/1", "u/2", "v/0", "v/1"]
    assert [r["example_key"] for r in valid] == ["u/3"]
    assert [r["example_key"] for r in test] == ["u/4"]
    ids = raw_ids(data)
    # SASRec protocol: the test history holds every earlier click, valid included (i3 is OOV).
    assert [ids[i] for i in test[0]["history"]] == ["i0", "i1", "i2", "<oov>"]


def test_min_history_drops_cold_examples(tmp_path, log_file):
    manifest, data = run(
        tmp_path, log_file, result_of(CLICK_LOG), valid_start=30, test_start=40, min_history=1
    )
    assert [r["example_key"] for r in split_rows(data, "train")] == ["u/1", "u/2"]
    assert manifest["splits"]["train"]["dropped_min_history"] == 2
    assert manifest["rows_used"] == 6  # rows are still used (as history)


def test_min_item_interactions_rejects_rows(tmp_path, log_file):
    manifest, data = run(
        tmp_path,
        log_file,
        result_of(CLICK_LOG),
        valid_start=30,
        test_start=40,
        min_item_interactions=2,
    )
    # Only `a` has 2 interactions: the other 4 clicks are rejected rows.
    assert manifest["rejected_by_reason"] == {"min_item_interactions": 4}
    assert manifest["rows_read"] == manifest["rows_used"] + manifest["rows_rejected"] == 6
    assert [r["example_key"] for r in split_rows(data, "train")] == ["u/0", "v/0"]
    assert split_rows(data, "valid") == split_rows(data, "test") == []


# --------------------------------------------------------------------------- impression logs

IMPRESSIONS = canonical(
    [
        ("u", "n1", 10, 1, "I1"),
        ("u", "n2", 10, 0, "I1"),
        ("u", "n3", 10, 0, "I1"),
        ("u", "n4", 10, 1, "I1"),
        ("v", "n2", 20, 0, "I2"),
        ("v", "n5", 20, 0, "I2"),
        ("u", "n1", 30, 0, "I3"),
        ("u", "n6", 30, 1, "I3"),
        ("v", "n2", 40, 1, "I4"),
        ("v", "n7", 40, 0, "I4"),
    ]
)
GIVEN = pa.table(
    {
        "impression_id": ["I1", "I2", "I3", "I4"],
        "history": pa.array(
            [["h1", "h2", "h3"], [], ["h1", "h2", "h3", "n1"], ["n9"]], pa.list_(pa.string())
        ),
    }
)
METADATA = pa.table(
    {"item_id": ["n1", "n2"], "category": ["sports", "news"], "subcategory": ["golf", ""]}
)


def test_mind_like_log_by_hand(tmp_path, log_file):
    result = result_of(IMPRESSIONS, rows_read=4, given=GIVEN, items=METADATA)
    manifest, data = run(
        tmp_path, log_file, result, fmt="mind", valid_start=30, test_start=40, negatives=1
    )
    ids = raw_ids(data)
    # Train counts: I1 and I2 rows (n2 twice) and I1's given history.
    assert ids == ["", "<oov>", "n2", "h1", "h2", "h3", "n1", "n3", "n4", "n5"]
    items = load_items(data)
    assert items.column("count").to_pylist() == [0, 0, 2, 1, 1, 1, 1, 1, 1, 1]
    assert items.column("clicks").to_pylist() == [0, 0, 0, 0, 0, 0, 1, 0, 1, 0]  # n1, n4
    train = split_rows(data, "train")
    assert [r["example_key"] for r in train] == ["I1/0", "I1/3"]  # one per clicked candidate
    for row, clicked in zip(train, ["n1", "n4"], strict=True):
        assert row["history"] == [4, 5]  # the given history's most recent 2
        assert ids[row["candidates"][0]] == clicked
        assert [ids[i] for i in row["candidates"][1:]] in (["n2"], ["n3"])  # its impression's
        assert row["labels"] == [1, 0] and row["impression_id"] == "I1"
    (valid,) = split_rows(data, "valid")
    assert valid["example_key"] == "I3" and valid["history"] == [5, 6]
    assert valid["candidates"] == [6, 1] and valid["labels"] == [0, 1]  # all candidates, in order
    (test,) = split_rows(data, "test")
    assert test["history"] == [1] and test["candidates"] == [2, 1] and test["labels"] == [1, 0]
    assert manifest["impressions_without_click"] == 1  # I2
    assert manifest["splits"]["train"]["impressions_without_click"] == 1
    assert (manifest["rows_read"], manifest["rows_used"], manifest["rows_rejected"]) == (4, 4, 0)
    assert manifest["splits"]["test"]["oov"] == {"history": 1, "candidates": 1}
    tables, sizes = feature_tables(data)
    assert sizes == {"category": 3, "subcategory": 2}
    assert tables["category"][ids.index("n1")] > 0 and tables["subcategory"][ids.index("n2")] == 0


def test_impression_log_rebuilds_histories_from_earlier_clicks(tmp_path, log_file):
    outside = canonical([("u", "x", 5, 1, None), ("u", "late", 30, 1, None)])
    log = pa.concat_tables([IMPRESSIONS, outside])
    manifest, data = run(
        tmp_path, log_file, result_of(log), valid_start=30, test_start=40, history_length=5
    )
    ids = raw_ids(data)
    assert "x" in ids and "late" not in ids  # a click outside impressions counts in train only
    train = split_rows(data, "train")
    assert [[ids[i] for i in r["history"]] for r in train] == [["x"], ["x"]]
    (valid,) = split_rows(data, "valid")
    # I3 at t=30: u's clicks strictly before 30 (n1 and n4 at 10), not `late` at 30 itself.
    assert [ids[i] for i in valid["history"]] == ["x", "n1", "n4"]
    (test,) = split_rows(data, "test")
    assert test["history"] == []  # v never clicked before t=40


def test_min_item_interactions_is_refused_for_impression_logs(tmp_path, log_file):
    with pytest.raises(ValueError, match="min_item_interactions=2"):
        run(tmp_path, log_file, result_of(IMPRESSIONS), min_item_interactions=2)


# --------------------------------------------------------------------------- engine properties


def read_all(data_dir):
    """The examples as read (``EXAMPLES``, either layout) and the items."""
    tables = {split: load_split(data_dir, split) for split in SPLITS}
    tables["items"] = pq.read_table(data_dir / "items.parquet")
    return tables


def read_stored(data_dir):
    """Every table as stored (the compact layout's offsets and clicks included)."""
    return {path.name: pq.read_table(path) for path in sorted(data_dir.glob("*.parquet"))}


def random_click_log(seed=4, n=400):
    rng = np.random.default_rng(seed)
    return clicks(
        [
            (f"u{rng.integers(20)}", f"i{rng.integers(40)}", int(t))
            for t in rng.integers(0, 10**6, n)
        ]
    )


@pytest.mark.parametrize(
    "result, options",
    [
        (result_of(random_click_log()), {}),
        (
            result_of(random_click_log()),
            {"negative_sampling": "popularity", "negative_window": 50_000},
        ),
        (result_of(random_click_log()), {"negative_window": "1m", "split_mode": "leave-last-out"}),
        (result_of(IMPRESSIONS, rows_read=4, given=GIVEN), {"valid_start": 30, "test_start": 40}),
        (result_of(IMPRESSIONS, rows_read=4), {"test_fraction": 0.3}),
    ],
    ids=["uniform", "popularity-window", "uniform-window-llo", "given-history", "impressions"],
)
def test_partitioned_run_equals_in_memory_run(tmp_path, log_file, result, options):
    """Spilling to user partitions and small chunks give the very same tables."""
    manifest, whole = run(tmp_path, log_file, result, name="whole", **options)
    spilled_manifest, spilled = run(
        tmp_path,
        log_file,
        result,
        name="spilled",
        max_rows_in_memory=3,
        num_partitions=3,
        chunk_size=2,
        **options,
    )
    assert manifest["partitions"] == 1 and spilled_manifest["partitions"] == 3
    first, second = read_all(whole), read_all(spilled)
    for name in first:
        assert first[name].equals(second[name]), name
    assert manifest["splits"] == spilled_manifest["splits"]
    assert sum(manifest["splits"][s]["examples"] for s in SPLITS) > 0


@pytest.mark.parametrize(
    "result, options",
    [
        (result_of(random_click_log(n=600)), {"history_length": 5}),
        (result_of(random_click_log()), {"split_mode": "leave-last-out", "history_length": 50}),
        (result_of(IMPRESSIONS, rows_read=4), {"test_fraction": 0.3}),
    ],
    ids=["clicks", "leave-last-out", "impressions"],
)
@pytest.mark.parametrize("spill", [False, True], ids=["in-memory", "partitioned"])
def test_compact_layout_reads_as_the_lists_layout(tmp_path, log_file, result, options, spill):
    """Each click stored once plus offsets gives, read back, the very same examples."""
    if spill:
        options = {**options, "max_rows_in_memory": 7, "num_partitions": 3, "chunk_size": 5}
    lists_manifest, lists = run(tmp_path, log_file, result, name="lists", layout="lists", **options)
    manifest, compact = run(tmp_path, log_file, result, name="compact", **options)
    assert (manifest["layout"], lists_manifest["layout"]) == ("compact", "lists")
    assert manifest["partitions"] == lists_manifest["partitions"] == (3 if spill else 1)
    assert not (lists / "clicks.parquet").exists()
    clicks = pq.read_table(compact / "clicks.parquet")
    assert clicks.num_rows == int(pc.sum(result.events.column("label")).as_py())
    for split in SPLITS:
        assert pq.read_schema(lists / f"{split}.parquet").equals(EXAMPLES)
        assert pq.read_schema(compact / f"{split}.parquet").equals(COMPACT_EXAMPLES)
        expected, received = load_split(lists, split), load_split(compact, split)
        assert received.equals(expected), split
    assert (
        sum(pc.sum(load_split(compact, s).column("history_length")).as_py() or 0 for s in SPLITS)
        > 0
    )
    for key in ("splits", "rows_read", "num_items"):
        assert manifest[key] == lists_manifest[key], key


def test_compact_layout_is_refused_where_histories_are_given(tmp_path, log_file):
    given = result_of(IMPRESSIONS, rows_read=4, given=GIVEN)
    dates = {"valid_start": 30, "test_start": 40}
    with pytest.raises(ValueError, match="layout='compact' needs histories built from the log"):
        run(tmp_path, log_file, given, name="custom", layout="compact", **dates)
    with pytest.raises(ValueError, match="MIND gives each impression its own history"):
        run(tmp_path, log_file, given, name="mind", fmt="mind", layout="compact", **dates)
    manifest, data = run(tmp_path, log_file, given, name="auto", **dates)
    assert manifest["layout"] == "lists" and not (data / "clicks.parquet").exists()
    with pytest.raises(ValueError, match="`layout` should be one of"):
        PrepareOptions(layout="flat")
    with pytest.raises(ValueError, match="local engine only"):
        PrepareOptions(layout="compact", engine="spark")


@pytest.mark.parametrize("spill", [False, True], ids=["in-memory", "partitioned"])
def test_compact_examples_need_their_own_clicks(tmp_path, log_file, spill):
    """Each split records how many clicks it was written with; opening it checks them."""
    options = {"max_rows_in_memory": 50, "num_partitions": 3} if spill else {}
    manifest, data = run(tmp_path, log_file, result_of(random_click_log()), **options)
    assert manifest["partitions"] == (3 if spill else 1)
    clicks = pq.read_table(data / "clicks.parquet")
    for split in SPLITS:
        metadata = pq.read_schema(data / f"{split}.parquet").metadata
        assert metadata[b"feedrec.clicks_rows"] == str(clicks.num_rows).encode()
    _, other = run(tmp_path, log_file, result_of(random_click_log(seed=9, n=300)), name="other")
    (data / "clicks.parquet").write_bytes((other / "clicks.parquet").read_bytes())
    with pytest.raises(
        ValueError,
        match=r"clicks.parquet has 300 clicks, but .*train.parquet "
        r"was written with 400: the clicks file belongs to another run",
    ):
        load_split(data, "train", ["example_key"])  # checked on opening, history or not
    (data / "clicks.parquet").unlink()
    with pytest.raises(FileNotFoundError, match="clicks.parquet is missing"):
        load_split(data, "train")


def test_rerun_gives_identical_tables(tmp_path, log_file):
    result = result_of(random_click_log())
    first_manifest, first = run(tmp_path, log_file, result, name="one", seed=3)
    second_manifest, second = run(tmp_path, log_file, result, name="two", seed=3)
    stored = read_stored(first)
    assert "clicks.parquet" in stored and "history_start" in stored["train.parquet"].column_names
    assert stored.keys() == read_stored(second).keys()
    for name, table in stored.items():
        assert table.equals(read_stored(second)[name]), name
    volatile = ("elapsed_s", "timings_s")
    assert {k: v for k, v in first_manifest.items() if k not in volatile} == {
        k: v for k, v in second_manifest.items() if k not in volatile
    }
    _, other_seed = run(tmp_path, log_file, result, name="three", seed=4)
    assert not read_all(other_seed)["train"].equals(read_all(first)["train"])


def test_rows_are_sorted_by_time_then_key_and_keys_unique(tmp_path, log_file):
    _, data = run(tmp_path, log_file, result_of(random_click_log(n=300)), chunk_size=16)
    for split in SPLITS:
        table = load_split(data, split)
        pairs = list(
            zip(
                table.column("time").to_pylist(),
                table.column("example_key").to_pylist(),
                strict=True,
            )
        )
        assert pairs == sorted(pairs)
        assert len(set(table.column("example_key").to_pylist())) == table.num_rows


def test_files_and_manifest_contract(tmp_path, log_file):
    manifest, data = run(tmp_path, log_file, result_of(CLICK_LOG), valid_start=30, test_start=40)
    assert sorted(p.name for p in data.iterdir()) == [
        "clicks.parquet",  # a click log: the compact layout by default
        "features",
        "items.parquet",
        "manifest.json",
        "test.parquet",
        "train.parquet",
        "valid.parquet",
    ]
    on_disk = json.loads((data / "manifest.json").read_text())
    assert on_disk == load_manifest(data) == json.loads(json.dumps(manifest))
    for key in (
        "format",
        "inputs",
        "parameters",
        "splits",
        "num_items",
        "feature_vocab_sizes",
        "history_length",
        "created_by",
        "elapsed_s",
        "rows_read",
        "rows_used",
        "rows_rejected",
        "rejected_by_reason",
    ):
        assert key in on_disk, key
    assert (
        on_disk["inputs"][0]["path"].endswith("log.csv")
        and len(on_disk["inputs"][0]["sha256"]) == 64
    )
    assert (
        on_disk["parameters"]["history_length"] == 2 and on_disk["parameters"]["valid_start"] == 30
    )
    assert on_disk["created_by"].startswith("feedrec ")
    assert on_disk["layout"] == "compact" and on_disk["files"]["clicks"] == "clicks.parquet"
    assert pq.read_schema(data / "clicks.parquet").equals(CLICKS)
    for split in SPLITS:
        validate(load_split(data, split), EXAMPLES, split)
        assert pq.read_schema(data / f"{split}.parquet").equals(COMPACT_EXAMPLES)


def test_streamable_inputs_are_read_one_file_at_a_time(tmp_path):
    paths = []
    for name in ("a.csv", "b.csv"):
        (tmp_path / name).write_text("x\n")
        paths.append(tmp_path / name)
    parts = {"a.csv": CLICK_LOG.slice(0, 3), "b.csv": CLICK_LOG.slice(3)}
    read = reader_for(lambda inputs: result_of(parts[Path(inputs[0]).name]))
    manifest = prepare(
        "events",
        paths,
        tmp_path / "data",
        reader=read,
        options=PrepareOptions(valid_start=30, test_start=40, history_length=2, user_col="uid"),
    )
    assert [call[0] for call in read.calls] == [[str(paths[0])], [str(paths[1])]]
    assert read.calls[0][2] == {"user_col": "uid"}  # reader options forwarded when set
    assert manifest["rows_read"] == 6 and manifest["splits"]["train"]["examples"] == 4
    assert [i["path"] for i in manifest["inputs"]] == [str(p) for p in paths]


# --------------------------------------------------------------------------- streaming

GLOBO_HEADER = (
    "user_id,session_id,session_start,session_size,click_article_id,click_timestamp,"
    "click_environment,click_deviceGroup,click_os,click_country,click_region,click_referrer_type"
)


def globo_hours(hours=8, clicks_per_hour=150, seed=0):
    """Globo-like hourly CSV texts: many users, items published over time."""
    rng = np.random.default_rng(seed)
    texts = {}
    for hour in range(hours):
        users = rng.integers(0, 400, clicks_per_hour)
        items = hour * 10 + rng.integers(0, 30, clicks_per_hour)
        times = np.sort(1_506_826_800_000 + hour * 3_600_000 + rng.integers(0, 3_600_000, 150))
        rows = [
            f"{u},{u}{hour},1506825423000,2,{i},{t},4,3,20,1,20,2"
            for u, i, t in zip(users, items, times, strict=True)
        ]
        texts[f"clicks_hour_{hour:03d}.csv"] = "\n".join([GLOBO_HEADER, *rows]) + "\n"
    return texts


def one_zip(tmp_path):
    path = tmp_path / "clicks.zip"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, text in globo_hours().items():
            archive.writestr(f"clicks/{name}", text)
    return path


def one_csv(tmp_path):
    path = tmp_path / "clicks_hour_000.csv"  # all the hours in one file
    texts = list(globo_hours().values())
    path.write_text(texts[0] + "".join(text.split("\n", 1)[1] for text in texts[1:]))
    return path


def stores_of(monkeypatch):
    """A test hook: the event stores of the prepare runs that follow."""
    stores = []
    read_all = prepare_module._Job._read_all

    def keep(job):
        stores.append(read_all(job))
        return stores[-1]

    monkeypatch.setattr(prepare_module._Job, "_read_all", keep)
    return stores


@pytest.mark.parametrize("make_input", [one_zip, one_csv], ids=["single-zip", "single-csv"])
def test_a_single_input_streams_through_partitions_in_bounded_memory(
    tmp_path, monkeypatch, make_input
):
    """One zip (or one large file) is read a batch at a time and spilled as it comes."""
    source = make_input(tmp_path)
    stores = stores_of(monkeypatch)
    whole = prepare("globo", [source], tmp_path / "whole")
    monkeypatch.setattr(prepare_module, "_batch_bytes", lambda max_rows: 4_000)
    spilled = prepare(
        "globo",
        [source],
        tmp_path / "spilled",
        options=PrepareOptions(max_rows_in_memory=300, chunk_size=100),
    )

    in_memory, streamed = stores
    assert in_memory.max_rows_held == whole["rows_read"] == 1200
    # 4 kB batches hold about 70 clicks; a partition about 1 / ceil(2 * 1200 / 300) of the
    # clicks (once the first batch tells how large the log is). Never did the whole log
    # sit in memory: at most `max_rows_in_memory` clicks at once.
    assert streamed.batches > 10 and spilled["partitions"] >= 6
    assert streamed.max_rows_held <= 300
    first, second = read_all(tmp_path / "whole"), read_all(tmp_path / "spilled")
    for name in first:
        assert first[name].equals(second[name]), name
    assert whole["splits"] == spilled["splits"] and whole["inputs"] == spilled["inputs"]


def test_many_reader_batches_in_memory_give_the_same_tables(tmp_path, monkeypatch):
    """Ids encoded batch by batch, then unified, give what one batch gives."""
    folder = tmp_path / "clicks"
    folder.mkdir()
    for name, text in globo_hours().items():
        (folder / name).write_text(text)
    stores = stores_of(monkeypatch)
    one = prepare("globo", [folder], tmp_path / "one")
    monkeypatch.setattr(prepare_module, "_batch_bytes", lambda max_rows: 3_000)
    many = prepare("globo", [folder], tmp_path / "many")

    assert len(stores[0].encoded) == 0 and stores[1].partitions == 1  # codes were used up
    first, second = read_all(tmp_path / "one"), read_all(tmp_path / "many")
    for name in first:
        assert first[name].equals(second[name]), name
    volatile = ("elapsed_s", "timings_s")
    assert {k: v for k, v in one.items() if k not in volatile} == {
        k: v for k, v in many.items() if k not in volatile
    }


@pytest.mark.parametrize("n", [0, 1, 2, 7, 100, 1001])
@pytest.mark.parametrize("fractions", [(0.1, 0.1), (0.0, 0.2), (0.3, 0.0), (0.0, 0.0)])
def test_cutoffs_in_memory_equal_the_streamed_cutoffs(n, fractions):
    rng = np.random.default_rng(n)
    times = rng.integers(0, 50, n).astype(np.int64)  # many ties
    pieces = np.array_split(times, 3)
    valid_fraction, test_fraction = fractions

    expected = time_cutoffs(
        lambda: iter(pieces), valid_fraction=valid_fraction, test_fraction=test_fraction
    )

    assert (
        prepare_module.cutoffs_in_memory(
            times.copy(), valid_fraction=valid_fraction, test_fraction=test_fraction
        )
        == expected
    )


# --------------------------------------------------------------------------- atomicity


def test_a_crash_leaves_no_output(tmp_path, log_file, monkeypatch):
    def explode(self, plan):
        raise RuntimeError("boom")

    monkeypatch.setattr(prepare_module._Partition, "build", explode)
    with pytest.raises(RuntimeError, match="boom"):
        run(tmp_path, log_file, result_of(CLICK_LOG))
    assert not (tmp_path / "data").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["log.csv"]  # no temporary left


def test_a_crash_keeps_the_old_output(tmp_path, log_file, monkeypatch):
    _, data = run(tmp_path, log_file, result_of(CLICK_LOG))
    before = read_all(data)
    monkeypatch.setattr(prepare_module, "items_table", lambda *a, **k: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        run(tmp_path, log_file, result_of(random_click_log()), overwrite=True)
    after = read_all(data)
    assert all(before[name].equals(after[name]) for name in before)
    assert (data / "manifest.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "log.csv"]


def test_existing_output_needs_overwrite(tmp_path, log_file):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="--overwrite"):
        run(tmp_path, log_file, result_of(CLICK_LOG))
    assert (tmp_path / "data" / "keep.txt").read_text() == "mine"
    run(tmp_path, log_file, result_of(CLICK_LOG), overwrite=True)
    assert not (tmp_path / "data" / "keep.txt").exists()
    assert (tmp_path / "data" / "manifest.json").exists()


def test_an_empty_file_beside_a_good_one_is_read(tmp_path):
    # an empty chunk of ids once crashed the dictionary encoding
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "a.csv").write_text(
        "user_id,item_id,timestamp\nu1,i1,1700000000\nu1,i2,1700000100\nu2,i1,1700000200\n"
    )
    (logs / "b.jsonl").write_text("")
    pq.write_table(
        pa.table(
            {
                "user_id": pa.array([], pa.string()),
                "item_id": pa.array([], pa.string()),
                "timestamp": pa.array([], pa.int64()),
            }
        ),
        logs / "c.parquet",
    )
    manifest = prepare("events", [logs], tmp_path / "data", options=PrepareOptions(negatives=0))
    assert (manifest["rows_read"], manifest["rows_used"]) == (3, 3)


def test_no_usable_row_is_a_clear_error(tmp_path):
    log = tmp_path / "log.txt"
    log.write_text("u1 i1 extra\nu2\n")
    options = PrepareOptions(negatives=0, on_bad_rows="skip")
    with pytest.raises(ValueError, match=r"log.txt: no usable rows .*2 read, 2 rejected"):
        prepare("sequences", [log], tmp_path / "data", options=options)
    assert not (tmp_path / "data").exists()


def test_an_empty_output_directory_is_fine(tmp_path, log_file):
    (tmp_path / "data").mkdir()
    manifest, data = run(tmp_path, log_file, result_of(CLICK_LOG))
    assert load_manifest(data) == json.loads(json.dumps(manifest))


# --------------------------------------------------------------------------- arguments


@pytest.mark.parametrize(
    "options, message",
    [
        ({"history_length": 0}, "history_length=0"),
        ({"negatives": -1}, "num_negatives=-1"),
        ({"on_bad_rows": "ignore"}, "on_bad_rows='ignore'"),
        ({"split_mode": "random"}, "split_mode='random'"),
        ({"valid_start": 5}, "valid_start=5, test_start=None"),
        ({"valid_start": 9, "test_start": 5}, "valid_start=9, test_start=5"),
        ({"valid_fraction": 1.5}, "valid_fraction=1.5"),
        ({"min_count": 0}, "min_count=0"),
        ({"negative_sampling": "hard"}, "negative_sampling='hard'"),
        ({"negative_window": "soon"}, "negative_window='soon'"),
        ({"engine": "dask"}, "engine='dask'"),
        ({"workers": 0}, "workers=0"),
    ],
)
def test_options_are_checked(options, message):
    with pytest.raises(ValueError, match=message):
        PrepareOptions(**options)


def test_options_normalise_times_and_durations():
    options = PrepareOptions(
        valid_start="2019-11-13", test_start="2019-11-14", negative_window="1h"
    )
    assert (options.valid_start, options.test_start) == (1573603200000, 1573689600000)
    assert options.negative_window == 3_600_000


def test_missing_input_and_unknown_format(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.csv"):
        prepare("events", [tmp_path / "nowhere.csv"], tmp_path / "out")
    with pytest.raises(ValueError, match="format='parquet'"):
        prepare("parquet", [tmp_path], tmp_path / "out")


def test_reader_errors_propagate_and_leave_nothing(tmp_path, log_file):
    def read(inputs, *, on_bad_rows, **options):
        raise BadRowError("log.csv", 3, "time", "expected epoch milliseconds", "soon")

    with pytest.raises(BadRowError, match="log.csv, line 3"):
        prepare("events", [log_file], tmp_path / "out", reader=read)
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- real data


def shared(*parts):
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data not available: {path} is absent")
    return path


def check_data_dir(data, manifest, history_length):
    assert manifest["rows_read"] == manifest["rows_used"] + manifest["rows_rejected"]
    items = load_items(data)
    assert items.column("item_id").to_pylist()[:2] == ["", "<oov>"]
    for split in SPLITS:
        table = load_split(data, split)
        assert table.num_rows == manifest["splits"][split]["examples"]
        lengths = pc.list_value_length(table.column("history")).to_numpy()
        assert (lengths <= history_length).all()
        assert np.array_equal(lengths, table.column("history_length").to_numpy())
        for column in ("history", "candidates"):
            values = pc.list_flatten(table.column(column)).to_numpy()
            assert ((values >= 0) & (values < items.num_rows)).all()


@pytest.mark.real_data
def test_mind_subset(tmp_path):
    folder = shared("mind-small-subset")
    manifest = prepare(
        "mind", [folder], tmp_path / "mind", options=PrepareOptions(history_length=20)
    )
    data = tmp_path / "mind"
    check_data_dir(data, manifest, 20)
    assert manifest["rows_read"] == 4032
    train, valid = load_split(data, "train"), load_split(data, "valid")
    labels = train.column("labels").to_pylist()
    assert all(row[0] == 1 and sum(row) == 1 for row in labels)
    # Eval examples are whole impressions: one per impression id.
    assert len(set(valid.column("impression_id").to_pylist())) == valid.num_rows
    assert manifest["feature_vocab_sizes"]["category"] > 1


@pytest.mark.real_data
def test_globo_slice(tmp_path):
    archive = shared("globo-news-clicks", "clicks_hour_000-309.zip")
    folder = tmp_path / "clicks"
    folder.mkdir()
    with zipfile.ZipFile(archive) as handle:
        for name in ("clicks/clicks_hour_000.csv", "clicks/clicks_hour_001.csv"):
            (folder / Path(name).name).write_bytes(handle.read(name))
    manifest = prepare(
        "globo",
        sorted(folder.iterdir()),
        tmp_path / "globo",
        options=PrepareOptions(history_length=5, negatives=3),
    )
    data = tmp_path / "globo"
    check_data_dir(data, manifest, 5)
    assert manifest["rows_rejected"] == 0
    assert sum(manifest["splits"][s]["examples"] for s in SPLITS) == manifest["rows_read"]
    counts = collections.Counter(
        len(c) for c in load_split(data, "train").column("candidates").to_pylist()
    )
    assert max(counts) == 4 and counts[4] > 0.9 * sum(counts.values())


def test_dataset_loaders_check_their_input(tmp_path, log_file):
    with pytest.raises(FileNotFoundError, match="feedrec prepare"):
        load_split(tmp_path, "train")
    _, data = run(tmp_path, log_file, result_of(CLICK_LOG), valid_start=30, test_start=40)
    with pytest.raises(ValueError, match="split='dev'"):
        load_split(data, "dev")
    keys = load_split(data, "train", columns=["example_key", "time"])
    assert keys.column_names == ["example_key", "time"] and keys.num_rows == 4
    tables, sizes = feature_tables(data)
    assert sizes == {"category": 1, "subcategory": 1}  # no metadata: only "missing"
    assert all((table == 0).all() and len(table) == 5 for table in tables.values())


def test_eval_impressions_without_a_click_are_kept(tmp_path, log_file):
    result = result_of(IMPRESSIONS, rows_read=4, given=GIVEN)
    manifest, data = run(tmp_path, log_file, result, fmt="mind", valid_start=20, test_start=40)
    valid = split_rows(data, "valid")
    assert [r["example_key"] for r in valid] == ["I2", "I3"]
    assert valid[0]["labels"] == [0, 0] and len(valid[0]["candidates"]) == 2
    assert manifest["impressions_without_click"] == 0  # only train impressions count


def test_items_known_only_from_metadata_get_features_but_no_id(tmp_path, log_file):
    metadata = pa.table(
        {
            "item_id": ["n1", "n2", "n7", "n6", "fresh"],
            "category": ["sports", "news", "sports", "news", "sports"],
            "subcategory": ["golf", "", "golf", "", ""],
        }
    )
    result = result_of(IMPRESSIONS, rows_read=4, given=GIVEN, items=metadata)
    manifest, data = run(
        tmp_path, log_file, result, fmt="mind", valid_start=30, test_start=40, negatives=1
    )
    ids = raw_ids(data)
    # the train-only ID vocabulary first, then metadata-only items sorted by raw id
    assert ids == ["", "<oov>", "n2", "h1", "h2", "h3", "n1", "n3", "n4", "n5", "fresh", "n6", "n7"]
    assert manifest["num_id_items"] == 10 and manifest["num_items"] == 13
    (valid,) = split_rows(data, "valid")
    assert valid["candidates"] == [6, ids.index("n6")]  # n6 is not OOV any more
    (test,) = split_rows(data, "test")
    assert test["candidates"] == [2, ids.index("n7")]
    # ... but still counted as unseen in training
    assert manifest["splits"]["valid"]["oov"]["candidates"] == 1
    assert manifest["splits"]["test"]["oov"] == {"history": 1, "candidates": 1}
    tables, _ = feature_tables(data)
    assert tables["category"][ids.index("n7")] == tables["category"][ids.index("n1")] > 0
    items = load_items(data)
    assert items.column("clicks").to_pylist()[10:] == [0, 0, 0]  # no training clicks
    assert items.column("first_seen").to_pylist()[10] is None  # "fresh" never in the log


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_user_time_order_is_the_stable_sort_by_user_then_time(workers):
    rng = np.random.default_rng(5)
    rows = 120_000  # above the size sorted in threads
    users = rng.integers(0, 900, rows)
    times = rng.integers(0, 50, rows)  # many ties: the row order must decide them

    order = prepare_module.user_time_order(users, times, workers)

    # np.lexsort is stable: by user, then time, then row.
    assert order.tolist() == np.lexsort((times, users)).tolist()
