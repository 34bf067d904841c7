"""The Spark engine gives the local engine's tables: examples, histories, candidates, labels,
vocabularies and the manifest's accounting, on hand-built logs and on real data.

One local-mode session (``local[2]``, 4 shuffle partitions) serves the module.
Each case runs ``prepare`` on both engines with the same input and options and
compares every output table (the splits row by row, in the written order
(time, example_key), and again sorted by ``example_key``).
"""

from __future__ import annotations

import argparse
import json
import zipfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.cli import add_arguments, run
from pipelines.dataset import load_items, load_manifest, load_split
from pipelines.prepare import PrepareOptions, prepare
from pipelines.readers.base import BadRowError
from pipelines.schema import SPLITS
from pipelines.spark.session import JavaNotFoundError, find_java

pytestmark = pytest.mark.spark
pytest.importorskip("pyspark", reason='PySpark is not installed (pip install "feedrec[spark]")')

SHARED_DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
#: Manifest keys that may differ between engines: what ran, how long, how it was partitioned.
ENGINE_KEYS = {"parameters", "timings_s", "elapsed_s", "partitions"}


@pytest.fixture(scope="module")
def spark():
    try:
        find_java()
    except JavaNotFoundError as err:
        pytest.skip(f"Java is missing: {err}")
    from pipelines.spark import local_session

    session = local_session(
        cores=2,
        shuffle_partitions=4,
        driver_memory="1g",
        config={"spark.sql.codegen.wholeStage": "false"},
    )
    yield session
    session.stop()


def run_both(spark, tmp_path, format, inputs, **options):
    """Prepare with both engines; the two DATA_DIRs."""
    local, distributed = tmp_path / "local", tmp_path / "spark"
    prepare(format, inputs, local, options=PrepareOptions(**options))
    from pipelines.spark import prepare as prepare_on_spark

    prepare_on_spark(
        format, inputs, distributed, options=PrepareOptions(engine="spark", **options), spark=spark
    )
    return local, distributed


def assert_same_output(local: Path, distributed: Path, ignore: tuple[str, ...] = ()) -> dict:
    """Equal splits, items, features and manifests (but for ENGINE_KEYS and ``ignore``);
    the manifest."""
    for split in SPLITS:
        expected, received = load_split(local, split), load_split(distributed, split)
        assert received.schema == expected.schema
        assert received.equals(expected), f"{split}: tables differ"
        by_key = received.sort_by("example_key")
        assert by_key.equals(expected.sort_by("example_key"))
        assert row_groups(distributed / f"{split}.parquet") == row_groups(
            local / f"{split}.parquet"
        )
    assert load_items(distributed).equals(load_items(local))
    for path in sorted((local / "features").glob("*.parquet")):
        assert pq.read_table(distributed / "features" / path.name).equals(pq.read_table(path))
    expected_manifest, manifest = load_manifest(local), load_manifest(distributed)
    assert manifest["parameters"]["engine"] == "spark"
    # The local engine writes the compact layout where it can, Spark the lists: the
    # examples read the same (above); the manifests differ only in naming it.
    assert manifest["layout"] == "lists" and "clicks" not in manifest["files"]
    expected_files = dict(expected_manifest["files"])
    if expected_manifest["layout"] == "compact":
        assert expected_files.pop("clicks") == "clicks.parquet"
    assert manifest["files"] == expected_files
    for key in set(expected_manifest) | set(manifest):
        if key not in ENGINE_KEYS | {"layout", "files"} | set(ignore):
            assert manifest.get(key) == expected_manifest.get(key), key
    assert manifest["rows_read"] == manifest["rows_used"] + manifest["rows_rejected"]
    return manifest


def row_groups(path: Path) -> list[int]:
    """The row counts of a Parquet file's row groups (training reads them in a seeded order)."""
    metadata = pq.ParquetFile(path).metadata
    return [metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)]


# --------------------------------------------------------------------------- hand-built logs


def write_click_log(folder: Path, seed: int, *, impressions: bool = False) -> list[Path]:
    """Three CSV files of a small random log with many equal times, views, and bad rows.

    With ``impressions``, most rows carry an impression id (several rows each,
    at slightly different times) and a few clicks have none.
    """
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    header = "user,item,ts,action" + (",imp" if impressions else "")
    paths = []
    for number in range(3):
        lines = [header]
        for row in range(60):
            user = f"u{rng.integers(8)}"
            item = f"i{rng.integers(14)}"
            time = int(rng.integers(20)) * 1000  # ms; many ties within and across files
            action = "click" if rng.random() < 0.75 else "view"
            fields = [user, item, str(time), action]
            if impressions:
                fields.append("" if rng.random() < 0.15 else f"m{rng.integers(25)}-{user}")
                fields[2] = str(time + int(rng.integers(3)))
            lines.append(",".join(fields))
            if row in (7, 31) and number < 2:  # bad rows: empty item, a bad time, an unknown type
                bad = [user, "", "5000", "click"] if row == 7 else [user, item, "soon", "like"]
                lines.append(",".join(bad + ([""] if impressions else [])))
        path = folder / f"log-{number}.csv"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        paths.append(path)
    return paths


def test_click_log_through_the_cli(spark, tmp_path, capsys):
    """``feedrec prepare --engine spark``: ties, views, bad rows, leave-last-out,
    min_history, popularity negatives -- the local engine's tables."""
    paths = write_click_log(tmp_path / "log", seed=1)
    flags = [
        *map(str, paths),
        "--format", "events", "--user-col", "user", "--item-col", "item",
        "--time-col", "ts", "--event-col", "action", "--time-unit", "ms",
        "--on-bad-rows", "skip", "--split-mode", "leave-last-out", "--history-length", "3",
        "--negatives", "3", "--min-history", "1", "--negative-sampling", "popularity",
        "--seed", "7", "--chunk-size", "40", "--no-progress",
    ]  # fmt: skip
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert run(parser.parse_args([*flags, "--out", str(tmp_path / "local")])) == 0
    args = parser.parse_args([*flags, "--out", str(tmp_path / "spark"), "--engine", "spark"])
    assert run(args) == 0
    assert "prepared" in capsys.readouterr().out
    manifest = assert_same_output(tmp_path / "local", tmp_path / "spark")
    assert manifest["rows_rejected"] > 0 and manifest["splits"]["train"]["dropped_min_history"] > 0
    train = load_split(tmp_path / "spark", "train")
    assert max(train.column("history_length").to_pylist()) == 3
    assert row_groups(tmp_path / "spark" / "train.parquet")[:2] == [40, 40]
    from pipelines.spark import local_session

    assert local_session() is spark  # the CLI ran on the active session


def test_click_log_with_time_splits_window_and_item_filter(spark, tmp_path):
    paths = write_click_log(tmp_path / "log", seed=2)
    options = dict(
        user_col="user",
        item_col="item",
        time_col="ts",
        event_col="action",
        on_bad_rows="skip",
        negative_window="4s",
        min_item_interactions=12,
        min_count=2,
        history_length=4,
        seed=3,
    )
    local, distributed = run_both(spark, tmp_path, "events", paths, **options)
    manifest = assert_same_output(local, distributed)
    assert manifest["rejected_by_reason"]["min_item_interactions"] > 0
    assert all(manifest["splits"][split]["examples"] for split in SPLITS)


def test_impression_log_without_given_histories(spark, tmp_path):
    """Impressions of several rows, clicks outside impressions: histories by window."""
    paths = write_click_log(tmp_path / "log", seed=3, impressions=True)
    options = dict(
        user_col="user",
        item_col="item",
        time_col="ts",
        event_col="action",
        impression_col="imp",
        on_bad_rows="skip",
        history_length=5,
        negatives=2,
    )
    local, distributed = run_both(spark, tmp_path, "events", paths, **options)
    manifest = assert_same_output(local, distributed)
    assert manifest["has_impressions"] and manifest["impressions_without_click"] > 0


def test_sequences_on_uris(spark, tmp_path):
    """``file://`` URIs go through Spark's file systems: inputs loaded as binary files,
    output as one directory of part files per split and manifest.json last."""
    folder = tmp_path / "seq"
    folder.mkdir()
    rng = np.random.default_rng(4)
    for number in range(2):
        lines = [f"{rng.integers(6)} {rng.integers(20)}" for _ in range(80)]
        (folder / f"part-{number}.txt").write_text("\n".join(lines) + "\n")
    prepare("sequences", [folder], tmp_path / "local", options=PrepareOptions(history_length=4))
    from pipelines.spark import prepare as prepare_on_spark

    out = (tmp_path / "remote").as_uri()
    options = PrepareOptions(engine="spark", history_length=4)
    manifest = prepare_on_spark("sequences", [folder.as_uri()], out, options=options, spark=spark)
    expected = load_manifest(tmp_path / "local")
    for key in ("rows_read", "rows_used", "events", "users", "num_items", "splits", "cutoffs"):
        assert manifest[key] == expected[key], key
    remote = tmp_path / "remote"
    assert json.loads((remote / "manifest.json").read_text())["rows_read"] == 160
    for split in SPLITS:
        parts = pq.read_table(remote / f"{split}.parquet").cast(
            load_split(tmp_path / "local", split).schema
        )
        assert parts.equals(load_split(tmp_path / "local", split)), split
    assert not list(remote.glob("_work*"))


def test_first_bad_row_is_raised(spark, tmp_path):
    paths = write_click_log(tmp_path / "log", seed=5)
    options = dict(user_col="user", item_col="item", time_col="ts", event_col="action")
    with pytest.raises(BadRowError) as local_error:
        prepare("events", paths, tmp_path / "local", options=PrepareOptions(**options))
    from pipelines.spark import prepare as prepare_on_spark

    with pytest.raises(BadRowError) as spark_error:
        prepare_on_spark("events", paths, tmp_path / "spark", options=PrepareOptions(**options))
    assert str(spark_error.value) == str(local_error.value)
    first_bad = (
        paths[0]
        .read_text()
        .splitlines()
        .index(next(line for line in paths[0].read_text().splitlines() if ",," in line))
    )
    assert f"log-0.csv, line {first_bad + 1}" in str(spark_error.value)
    assert not (tmp_path / "spark").exists()


# --------------------------------------------------------------------------- real data


def test_mind_sample(spark, tmp_path):
    folder = SHARED_DATA / "mind-small-subset"
    if not folder.exists():
        pytest.skip(f"real data not available: {folder} is absent (../shared/data)")
    local, distributed = run_both(spark, tmp_path, "mind", [folder], history_length=20, seed=11)
    manifest = assert_same_output(local, distributed)
    assert manifest["num_id_items"] < manifest["num_items"]  # news known from metadata only


def test_globo_slice_from_a_zip_uri(spark, tmp_path):
    """A zip of hourly files read through Spark's file system (``file://``): members
    listed and extracted in tasks; the local engine reads the same zip from its path."""
    archive = SHARED_DATA / "globo-news-clicks" / "clicks_hour_000-309.zip"
    if not archive.exists():
        pytest.skip(f"real data not available: {archive} is absent (../shared/data)")
    sliced = tmp_path / "clicks.zip"
    with zipfile.ZipFile(archive) as source, zipfile.ZipFile(sliced, "w") as target:
        for hour in (0, 1, 2, 3, 100):  # 100 holds only its header
            name = f"clicks/clicks_hour_{hour:03d}.csv"
            target.writestr(name, source.read(name))
    options = PrepareOptions(history_length=10)
    prepare("globo", [sliced], tmp_path / "local", options=options)
    from pipelines.spark import prepare as prepare_on_spark

    prepare_on_spark("globo", [sliced.as_uri()], tmp_path / "spark", options=options, spark=spark)
    manifest = assert_same_output(tmp_path / "local", tmp_path / "spark", ignore=("inputs",))
    expected = load_manifest(tmp_path / "local")["inputs"]
    assert [(r["bytes"], r["sha256"]) for r in manifest["inputs"]] == [
        (r["bytes"], r["sha256"]) for r in expected
    ]
    assert manifest["splits"]["train"]["examples"] > 1000
    histories = load_split(tmp_path / "spark", "valid").column("history")
    assert pa.compute.max(pa.compute.list_value_length(histories)).as_py() == 10
