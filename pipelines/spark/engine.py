"""``prepare`` on Spark: raw logs -> examples + vocabularies, the local engine's output.

Data flow (each arrow a Spark job or a step on the driver)::

    sources (driver) -> parse in tasks (local reader code) -> _work/parsed (Parquet)
      -> accounting rows collected (rows_read, rejections; the first error raised)
      -> per-item aggregates (driver: O(items)): codes, events, first seen
      -> time cutoffs (exact quantiles) -> units + splits -> training counts
      -> vocabulary, items.parquet, features/*.parquet, negative sampler (driver)
      -> examples: histories (window functions), negatives (the local samplers
         in mapInArrow), candidates, labels -> _work/examples (Parquet, by split)
      -> per-split counts -> each split sorted by (time, example_key)
      -> {split}.parquet, manifest.json

What an example is, and every rule (histories strictly before the example
time, keys, negatives, splits, vocabulary counts), is the local engine's: see
``pipelines.prepare``. Per-item state (the vocabulary, the sampler) lives on
the driver and is broadcast, like the local engine keeps it in memory; the
rows themselves are only processed by Spark.

Output:

* a local ``out_dir`` is written as the local engine writes it -- one file
  per split -- into a temporary directory renamed into place;
* a URI ``out_dir`` (``s3a://bucket/data``, ``hdfs://...``) gets one
  *directory* of Parquet part files per split (readable as one table by
  ``pyarrow.parquet.read_table`` or Spark), items and features as files, and
  ``manifest.json`` written **last**: object stores have no atomic rename,
  so a consumer must treat a DATA_DIR without ``manifest.json`` as incomplete.
"""

from __future__ import annotations

import collections
import contextlib
import io
import json
import logging
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from pipelines.io import atomic_directory, check_destination, write_json
from pipelines.negatives import NegativeSampler, merge_intervals
from pipelines.prepare import (
    FORMATS,
    MIN_ITEM_INTERACTIONS_REASON,
    PrepareOptions,
    _Progress,
    build_vocabulary,
    feedrec_version,
)
from pipelines.readers import _table
from pipelines.schema import EXAMPLES, OOV_INDEX, SPLITS
from pipelines.spark import readers, stages
from pipelines.spark.session import local_session
from pipelines.splits import TRAIN

logger = logging.getLogger(__name__)

ENGINE = "spark"
_INT64_MAX = np.iinfo(np.int64).max
_EXAMPLE_COLUMNS = [field.name for field in EXAMPLES]
_PARQUET_OPTIONS = {
    "compression": "snappy",
    "use_dictionary": ["user_id", "impression_id", "session_id"],
}


def prepare(
    format: str,
    inputs: list,
    out_dir: str | Path,
    *,
    options: PrepareOptions | None = None,
    spark: SparkSession | None = None,
    progress: bool = False,
) -> dict:
    """Build the examples, vocabularies and manifest of ``out_dir`` with Spark.

    The same arguments and output as :func:`pipelines.prepare.prepare` (the
    local engine), plus the Spark session to run on.

    Args:
        format: ``"mind"``, ``"events"``, ``"globo"`` or ``"sequences"``.
        inputs: paths (files, directories, globs, zip archives) or URIs that
            Spark's file systems read (``s3a://``, ``gs://``, ``hdfs://``, ``file:///``).
        out_dir: str or Path. A local DATA_DIR (written atomically), or a URI.
        options: PrepareOptions. Defaults to ``PrepareOptions()``; ``engine``
            is recorded as ``"spark"``; ``max_rows_in_memory``,
            ``num_partitions``, ``chunk_size`` and ``workers`` concern the local
            engine only (Spark partitions by its own settings).
        spark: SparkSession. Defaults to the active session, else a local one
            (:func:`pipelines.spark.session.local_session`).
        progress: bool. Show the stage bar on stderr. Defaults to False.

    Returns:
        The manifest (also written to ``out_dir/manifest.json``).

    Raises:
        ValueError: bad options, or a malformed row with ``on_bad_rows="error"``
            (``pipelines.readers.base.BadRowError``).
        FileNotFoundError: an input does not exist, or Java is missing.
        FileExistsError: ``out_dir`` is not empty and ``overwrite`` is False.
    """
    started = time.perf_counter()
    options = options or PrepareOptions()
    if format not in FORMATS:
        raise ValueError(f"`format` should be one of {FORMATS}. Received: format={format!r}")
    inputs = [str(p) if readers.is_uri(str(p)) else str(Path(p)) for p in inputs]
    if not inputs:
        raise ValueError("no input given; pass at least one INPUT path")
    for path in inputs:
        local = not readers.is_uri(path)
        if local and not Path(path).exists() and not any(c in path for c in "*?["):
            raise FileNotFoundError(f"input not found: {path}")
    readers.check_reader_options(format, options.reader_options())
    spark = spark or local_session()
    bar = _Progress(progress)
    output = _output_for(spark, out_dir, overwrite=options.overwrite)
    try:
        with output.open():
            manifest = _Job(spark, format, inputs, options, output, bar).run()
            output.remove_work()
            bar.stage("finish")
            manifest["timings_s"] = dict(bar.timings)
            manifest["elapsed_s"] = round(time.perf_counter() - started, 3)
            output.write_manifest(manifest)
    finally:
        bar.close()
    return manifest


# --------------------------------------------------------------------------- the job


class _Job:
    def __init__(self, spark, format, inputs, options, output, bar):
        self.spark, self.format, self.inputs, self.options = spark, format, inputs, options
        self.output, self.bar = output, bar
        self.split_mode = options.split_mode_for(format)
        self.rows_read = 0
        self.rejected: collections.Counter[str] = collections.Counter()
        self.rejected_examples: dict[str, list[str]] = {}
        self.items_read = 0
        self.items_rejected: collections.Counter[str] = collections.Counter()
        self.metadata_rows = 0

    # -- reading ----------------------------------------------------------------------

    def read(self) -> DataFrame:
        """Parse every source into ``_work/parsed``; account for the raw rows."""
        options = self.options
        sources = readers.resolve(self.format, self.inputs, self.spark)
        parsed = readers.parse(
            self.spark,
            self.format,
            sources,
            on_bad_rows=options.on_bad_rows,
            reader_options=options.reader_options(),
        )
        path = self.output.work("parsed")
        parsed.write.partitionBy("kind").parquet(path)
        parsed = self.spark.read.schema(readers.PARSED_DDL).parquet(path)
        stats = parsed.where(F.col("kind") == readers.STATS_KIND).select("src", "stats")
        by_source = {row["src"]: json.loads(row["stats"]) for row in stats.collect()}
        self._account(sources, by_source)
        self.input_info = readers.fingerprints(self.spark, sources)
        return parsed

    def _account(self, sources: list[readers.SourceSpec], by_source: dict[int, dict]) -> None:
        for source in sources:  # the first error in read order, as the local reader meets it
            error = by_source[source.src]["error"]
            if error is not None:
                readers.raise_error(error)
        groups: dict[int, list[readers.SourceSpec]] = collections.defaultdict(list)
        for source in sources:
            groups[source.group].append(source)
        for members in groups.values():
            group_rows = 0
            examples: dict[str, list[str]] = collections.defaultdict(list)
            for source in members:
                stats = by_source[source.src]
                group_rows += stats["rows_read"]
                self.rejected.update(stats["by_reason"])
                for key, shown in stats["examples"].items():
                    examples[key].extend(shown)
                if stats.get("items_read") is not None:
                    self.items_read += stats["items_read"]
                    self.items_rejected.update(stats["item_by_reason"])
                    self.metadata_rows += stats["items"]
            if self.format in readers.NOT_EMPTY:
                expected = readers.NOT_EMPTY[self.format]
                _table.check_not_empty(group_rows, members, expected)
            self.rows_read += group_rows
            for key, shown in examples.items():
                self.rejected_examples.setdefault(key, []).extend(shown[:5])

    # -- the whole job -------------------------------------------------------------------

    def run(self) -> dict:
        spark, options = self.spark, self.options
        self.bar.stage("read")
        parsed = self.read()
        events = parsed.where(F.col("kind") == readers.EVENT_KIND).select(
            "user_id", "item_id", "time", "label", "impression_id", "session_id",
            F.col("src").alias("_src"), F.col("pos").alias("_pos"),
        )  # fmt: skip
        if self.format == "sequences":
            events = self._stage(self._positions(events), "events")
        given = None
        if self.format == "mind":
            given = parsed.where(F.col("kind") == readers.GIVEN_KIND).select(
                "impression_id", "history"
            )

        self.bar.stage("count")
        items, per_item = self._items(events, given)
        self.cutoffs(events)  # every event, before any item filter
        kept = self._filter_items(items, per_item)
        if kept is not None:
            events = events.join(F.broadcast(kept), "item_id", "left_semi")
            self.users = events.select(F.countDistinct("user_id")).first()[0]
        if self.has_impressions:
            units = self._stage(self._impressions(events), "units")
            counts, clicks = self._impression_counts(items, units, events, given)
        else:
            units = self._clicks(events)
            counts, clicks = self._click_counts(items, units)

        self.bar.stage("vocabulary")
        vocab, self.num_id_items, code_to_index, item_table, features = build_vocabulary(
            items,
            counts,
            clicks,
            self.first_seen,
            self._metadata(parsed),
            min_count=options.min_count,
        )
        self.num_items = vocab.size
        self.output.write_table("items.parquet", item_table)
        for name, table in features.items():
            self.output.write_table(f"features/{name}.parquet", table)
        self.features = features
        index_frame = spark.createDataFrame(
            pa.table(
                {
                    "item_id": items,
                    "item_code": pa.array(np.arange(len(items), dtype=np.int32)),
                    "item_index": pa.array(code_to_index, pa.int32()),
                }
            )
        )

        self.bar.stage("examples")
        if self.has_impressions:
            examples = self._impression_examples(units, events, given, index_frame, vocab)
        else:
            sampler = self._sampler(items, events)
            examples = self._click_examples(units, index_frame, sampler, code_to_index)
        parts = self._write_parts(examples)
        split_stats = self._split_stats(parts, units)

        self.bar.stage("merge")
        for code, split in enumerate(SPLITS):
            self.output.write_split(split, code, self.buckets)

        self.bar.stage("manifest")
        return self._manifest(split_stats)

    def _write_parts(self, examples: DataFrame) -> DataFrame:
        """Write the examples in one job, as sorted runs that follow each other in time.

        Each split is cut into time buckets of about equal size (from the
        events' time histogram); a (split, bucket) run is one task's sorted
        output, so the runs of a split, read bucket after bucket, are in
        (time, example_key) order without a global sort. Examples dropped by
        ``min_history`` go to bucket -1, to be counted.
        """
        slots = int(self.spark.conf.get("spark.sql.shuffle.partitions"))
        boundaries = stages.time_boundaries(self.histogram, self.low, self.high, slots)
        self.buckets = len(boundaries) + 1
        dropped = F.col("history_full") < F.lit(self.options.min_history)
        bucket = F.when(dropped, -1).otherwise(stages.bucket_of(F.col("time"), boundaries))
        rows = examples.select(*_EXAMPLE_COLUMNS, "split", bucket.alias("_bucket"))
        path = self.output.work("parts")
        (
            rows.repartition(len(SPLITS) * self.buckets, "split", "_bucket")
            .sortWithinPartitions("split", "_bucket", "time", "example_key")
            .write.partitionBy("split", "_bucket")
            .parquet(path)
        )
        return self.spark.read.schema(rows.schema).parquet(path)

    def _stage(self, frame: DataFrame, name: str) -> DataFrame:
        """Write ``frame`` to ``_work/{name}`` and read it back (computed once)."""
        path = self.output.work(name)
        frame.write.parquet(path)
        return self.spark.read.schema(frame.schema).parquet(path)

    @staticmethod
    def _positions(events: DataFrame) -> DataFrame:
        """``sequences``: a row's time is its position in its user's rows (read order)."""
        by_user = Window.partitionBy("user_id").orderBy("_src", "_pos")
        return events.withColumn("time", (F.row_number().over(by_user) - 1).cast("long"))

    # -- items ---------------------------------------------------------------------------

    def _items(self, events: DataFrame, given: DataFrame | None):
        """Sorted raw item ids (an item's code is its position) and per-item events, first
        and last times; sets the totals (events, time range, users, impressions)."""
        rows = events.select("item_id", "time", F.col("impression_id").isNotNull().alias("imp"))
        if given is not None:  # ids of given histories are items too (without events)
            listed = given.select(F.explode("history").alias("item_id"))
            rows = rows.unionByName(listed, allowMissingColumns=True)
        per_item = rows.groupBy("item_id").agg(
            F.count("time").alias("n"),
            F.min("time").alias("first_seen"),
            F.max("time").alias("last_seen"),
            F.max("imp").alias("imp"),
        )
        users = events.agg(F.countDistinct("user_id").alias("users")).select(
            F.lit(None).cast("string").alias("item_id"), "users"
        )
        table = _to_arrow(per_item.unionByName(users, allowMissingColumns=True))
        is_user_row = pc.is_null(table.column("item_id"))
        self.users = int(pc.max(table.filter(is_user_row).column("users")).as_py() or 0)
        per_item = table.filter(pc.invert(is_user_row))
        self.rows = int(pc.sum(per_item.column("n")).as_py() or 0)
        self.low = pc.min(per_item.column("first_seen")).as_py()
        self.high = pc.max(per_item.column("last_seen")).as_py()
        self.has_impressions = bool(pc.any(per_item.column("imp")).as_py())
        items = per_item.column("item_id").combine_chunks().cast(pa.string())
        items = items.take(pc.array_sort_indices(items))
        return items, per_item.filter(pc.greater(per_item.column("n"), 0))

    def _filter_items(self, items: pa.Array, per_item: pa.Table) -> DataFrame | None:
        """``min_item_interactions``: the items kept (None: no filter); sets ``first_seen``."""
        codes = pc.index_in(per_item.column("item_id"), items).to_numpy(zero_copy_only=False)
        events_per_item = np.zeros(len(items), np.int64)
        events_per_item[codes] = per_item.column("n").to_numpy()
        self.first_seen = np.full(len(items), _INT64_MAX, np.int64)
        self.first_seen[codes] = per_item.column("first_seen").to_numpy()
        minimum = self.options.min_item_interactions
        if not minimum:
            return None
        if self.has_impressions:
            raise ValueError(
                "`min_item_interactions` applies to click logs without impressions. "
                f"Received: min_item_interactions={minimum} for an impression log"
            )
        keep = events_per_item >= minimum
        filtered = int(events_per_item[~keep].sum())
        if filtered:
            self.rejected[MIN_ITEM_INTERACTIONS_REASON] += filtered
        self.first_seen[~keep] = _INT64_MAX
        kept_ids = items.filter(pa.array(keep & (events_per_item > 0)))
        return self.spark.createDataFrame(pa.table({"item_id": kept_ids}))

    def _metadata(self, parsed: DataFrame) -> pa.Table | None:
        if not self.metadata_rows:
            return None
        rows = parsed.where(F.col("kind") == readers.ITEM_KIND).orderBy("src", "pos")
        return _to_arrow(rows.select("item_id", "category", "subcategory"))

    # -- splits and counts ---------------------------------------------------------------

    def cutoffs(self, events: DataFrame) -> None:
        """``(valid_start, test_start)``: given, or exact quantiles of every event's time;
        and the events' time histogram (it also sizes the output runs)."""
        options = self.options
        times = events.select("time")
        low, high = self.low if self.rows else 0, self.high if self.rows else 0
        self.histogram = stages.time_histogram(times, low, high) if self.rows else np.zeros(1)
        self.low, self.high = low, high
        if options.valid_start is not None:
            self.valid_start, self.test_start = options.valid_start, options.test_start
        elif self.split_mode != "time":
            self.valid_start = self.test_start = None
        else:
            self.valid_start, self.test_start = stages.time_cutoffs(
                times,
                count=self.rows,
                low=low,
                high=high,
                valid_fraction=options.valid_fraction,
                test_fraction=options.test_fraction,
                histogram=self.histogram,
            )

    def _split(self, units: DataFrame) -> DataFrame:
        if self.split_mode == "time":
            split = stages.time_split(F.col("time"), self.valid_start, self.test_start)
            return units.withColumn("split", split)
        return stages.leave_last_out(units, stages.ORDER)

    def _clicks(self, events: DataFrame) -> DataFrame:
        return self._split(events.where(F.col("label") == 1))

    def _click_counts(self, items: pa.Array, clicks: DataFrame):
        train = clicks.where(F.col("split") == TRAIN).groupBy("item_id").count()
        counts = _align(items, _to_arrow(train), "count")
        return counts, counts

    def _impressions(self, events: DataFrame) -> DataFrame:
        """One unit per impression: its earliest time, its first row's user, session and
        place in the read order, and its rows in log order."""
        rows = events.where(F.col("impression_id").isNotNull())
        first = F.min(F.struct("_src", "_pos", "user_id", "session_id"))
        row = F.struct("_src", "_pos", "item_id", "label")
        units = rows.groupBy("impression_id").agg(
            F.min("time").alias("time"),
            first.alias("_first"),
            F.array_sort(F.collect_list(row)).alias("_rows"),
        )
        units = units.select(
            "impression_id",
            "time",
            *[F.col(f"_first.{c}").alias(c) for c in ("user_id", "session_id", "_src", "_pos")],
            "_rows",
        )
        return self._split(units)

    def _impression_counts(self, items, units, events, given):
        """Training counts: every row of a training impression, every entry of its given
        history, and clicks outside impressions before the user's first non-train one
        (one Spark job); the clicks among them."""
        train = units.where(F.col("split") == TRAIN)
        rows = train.select(F.explode("_rows").alias("row"))
        parts = [rows.select("row.item_id", F.col("row.label").cast("long").alias("clicks"))]
        if given is not None:
            listed = given.join(train.select("impression_id"), "impression_id", "left_semi")
            parts.append(
                listed.select(F.explode("history").alias("item_id"), F.lit(0).alias("clicks"))
            )
        outside = events.where(F.col("impression_id").isNull() & (F.col("label") == 1))
        ends = (
            units.where(F.col("split") != TRAIN).groupBy("user_id").agg(F.min("time").alias("end"))
        )
        before = outside.join(ends, "user_id", "left").where(
            F.col("end").isNull() | (F.col("time") < F.col("end"))
        )
        if self.split_mode == "time":
            before = before.where(F.col("time") < F.lit(self.valid_start))
        parts.append(before.select("item_id", F.lit(1).alias("clicks")))
        union = parts[0]
        for part in parts[1:]:
            union = union.unionByName(part)
        totals = union.groupBy("item_id").agg(
            F.count(F.lit(1)).alias("count"), F.sum("clicks").alias("clicks")
        )
        table = _to_arrow(totals)
        return _align(items, table, "count"), _align(items, table, "clicks")

    # -- negatives -------------------------------------------------------------------------

    def _sampler(self, items: pa.Array, events: DataFrame) -> NegativeSampler:
        """The local engine's sampler, from per-item aggregates (popularity: the clicks)."""
        options = self.options
        sampling, window = options.negative_sampling, options.negative_window
        kwargs: dict[str, Any] = {}
        if sampling == "popularity":
            clicked = _to_arrow(events.where(F.col("label") == 1).select("item_id", "time"))
            codes = _codes(clicked.column("item_id"), items)
            times = clicked.column("time").to_numpy()
            order = np.lexsort((codes, times))
            kwargs.update(click_items=codes[order], click_times=times[order])
        elif window is not None:
            intervals = _to_arrow(stages.live_intervals(events, window))
            kwargs["intervals"] = merge_intervals(
                _codes(intervals.column("item_id"), items),
                intervals.column("start").to_numpy(),
                intervals.column("end").to_numpy(),
            )
        return NegativeSampler(
            num_items=len(items),
            first_seen=self.first_seen,
            sampling=sampling,
            window=window,
            **kwargs,
        )

    # -- examples --------------------------------------------------------------------------

    def _click_examples(self, clicks, index_frame, sampler, code_to_index) -> DataFrame:
        options, context = self.options, self.spark.sparkContext
        indexed = clicks.join(F.broadcast(index_frame), "item_id")
        histories = stages.click_histories(indexed, options.history_length)
        examples = histories.select(
            F.concat_ws("/", "user_id", F.col("n").cast("string")).alias("example_key"),
            "user_id",
            "time",
            F.lit(None).cast("string").alias("impression_id"),
            "session_id",
            "history",
            "history_full",
            "item_code",
            "item_index",
            "split",
        )
        examples = stages.click_negatives(
            examples,
            context.broadcast(sampler),
            context.broadcast(code_to_index),
            num_negatives=options.negatives,
            seed=options.seed,
        )
        candidates = F.concat(F.array("item_index"), F.col("negatives"))
        return _finish(examples.withColumn("candidates", candidates))

    def _impression_examples(self, units, events, given, index_frame, vocab) -> DataFrame:
        options = self.options
        broadcast_vocab = self.spark.sparkContext.broadcast(vocab)
        length = options.history_length
        if given is not None:
            listed = F.coalesce(F.col("given"), F.array().cast("array<string>"))
            recent = F.slice(listed, F.greatest(F.size(listed) - length + 1, F.lit(1)), length)
            joined = units.join(
                given.withColumnRenamed("history", "given"), "impression_id", "left"
            )
            with_ids = joined.select(
                "*", F.size(listed).alias("history_full"), recent.alias("history_ids")
            ).drop("given")
            units = stages.lookup_ids(with_ids, broadcast_vocab, {"history_ids": "history"})
        else:
            clicks = events.where(F.col("label") == 1).join(F.broadcast(index_frame), "item_id")
            units = stages.query_histories(units, clicks, length)
        base = ["user_id", "time", "impression_id", "session_id", "history", "history_full"]

        train = units.where(F.col("split") == TRAIN).select(
            *base, "split", "_rows", F.posexplode("_rows").alias("position", "row")
        )
        train = train.where(F.col("row.label") == 1).select(
            *base,
            "split",
            F.concat_ws("/", "impression_id", F.col("position").cast("string")).alias(
                "example_key"
            ),
            F.col("row.item_id").alias("positive"),
            F.transform(F.filter("_rows", lambda r: r["label"] == 0), lambda r: r["item_id"]).alias(
                "pool"
            ),
        )
        train = stages.impression_negatives(
            train, num_negatives=options.negatives, seed=options.seed
        )
        train = stages.lookup_ids(
            train, broadcast_vocab, {"positive": "positive_index", "negatives": "negative_index"}
        )
        train = _finish(
            train.withColumn(
                "candidates", F.concat(F.array("positive_index"), F.col("negative_index"))
            )
        )
        evaluation = units.where(F.col("split") != TRAIN).select(
            *base,
            "split",
            F.col("impression_id").alias("example_key"),
            F.transform("_rows", lambda r: r["item_id"]).alias("candidate_ids"),
            F.transform("_rows", lambda r: r["label"].cast("tinyint")).alias("labels"),
        )
        evaluation = stages.lookup_ids(evaluation, broadcast_vocab, {"candidate_ids": "candidates"})
        columns = [*_EXAMPLE_COLUMNS, "split", "history_full"]
        evaluation = _typed(evaluation).select(*columns)
        return train.select(*columns).unionByName(evaluation)

    # -- statistics and manifest -----------------------------------------------------------

    def _split_stats(self, parts: DataFrame, units: DataFrame) -> dict[str, dict]:
        """Per split: examples, users, OOV entries, dropped examples (one Spark job); and
        the training impressions without a click (impression logs)."""
        kept = F.col("_bucket") >= 0

        def unseen(column: str):  # OOV, or known from metadata only (no ID embedding)
            no_id = F.filter(column, lambda x: (x == OOV_INDEX) | (x >= self.num_id_items))
            return F.sum(F.when(kept, F.size(no_id)).otherwise(0))

        stats = parts.groupBy("split").agg(
            F.sum(kept.cast("long")).alias("examples"),
            F.countDistinct(F.when(kept, F.col("user_id"))).alias("users"),
            unseen("history").alias("history_oov"),
            unseen("candidates").alias("candidate_oov"),
            F.sum((~kept).cast("long")).alias("dropped"),
        )
        if self.has_impressions:
            without = units.where(
                (F.col("split") == TRAIN) & ~F.exists("_rows", lambda r: r["label"] == 1)
            ).agg(F.count(F.lit(1)).alias("without_click"))
            stats = stats.unionByName(without, allowMissingColumns=True)
        result = {split: _split_entry() for split in SPLITS}
        for row in stats.collect():
            if row["split"] is None:
                result[SPLITS[TRAIN]]["impressions_without_click"] = int(row["without_click"])
                continue
            entry = result[SPLITS[int(row["split"])]]
            entry.update(examples=int(row["examples"]), users=int(row["users"]))
            entry["oov"] = {
                "history": int(row["history_oov"]),
                "candidates": int(row["candidate_oov"]),
            }
            entry["dropped_min_history"] = int(row["dropped"])
        return result

    def _manifest(self, split_stats: dict[str, dict]) -> dict:
        rows_rejected = int(sum(self.rejected.values()))
        parameters = self.options.to_dict()
        parameters["engine"] = ENGINE
        parameters["split_mode"] = self.split_mode
        features = self.features
        return {
            "format": self.format,
            "created_by": f"feedrec {feedrec_version()}",
            "inputs": self.input_info,
            "parameters": parameters,
            "rows_read": int(self.rows_read),
            "rows_used": int(self.rows_read - rows_rejected),
            "rows_rejected": rows_rejected,
            "rejected_by_reason": {k: int(v) for k, v in sorted(self.rejected.items())},
            "rejected_examples": self.rejected_examples,
            "events": int(self.rows),
            "users": int(self.users),
            "has_impressions": bool(self.has_impressions),
            "split_mode": self.split_mode,
            "cutoffs": (
                {"valid_start": int(self.valid_start), "test_start": int(self.test_start)}
                if self.split_mode == "time"
                else None
            ),
            "splits": split_stats,
            "impressions_without_click": int(
                sum(s["impressions_without_click"] for s in split_stats.values())
            ),
            "item_metadata": {
                "rows_read": self.items_read,
                "rows_rejected": int(sum(self.items_rejected.values())),
                "rejected_by_reason": {k: int(v) for k, v in sorted(self.items_rejected.items())},
                "items": int(self.metadata_rows),
            },
            "num_items": int(self.num_items),
            "num_id_items": int(self.num_id_items),
            "feature_vocab_sizes": {name: int(t.num_rows) for name, t in features.items()},
            "history_length": int(self.options.history_length),
            "num_negatives": int(self.options.negatives),
            "partitions": int(self.spark.conf.get("spark.sql.shuffle.partitions")),
            "files": {
                "splits": {split: f"{split}.parquet" for split in SPLITS},
                "items": "items.parquet",
                "features": {name: f"features/{name}.parquet" for name in features},
            },
        }


def _split_entry() -> dict:
    return {
        "examples": 0,
        "users": 0,
        "oov": {"history": 0, "candidates": 0},
        "dropped_min_history": 0,
        "impressions_without_click": 0,
    }


def _finish(examples: DataFrame) -> DataFrame:
    """Labels ``[1, 0, ...]`` for candidates that start with the positive; declared types."""
    labelled = examples.withColumn("labels", stages.labels_first_positive(F.col("candidates")))
    return _typed(labelled)


def _typed(examples: DataFrame) -> DataFrame:
    return examples.withColumns(
        {
            "history": F.col("history").cast("array<int>"),
            "history_length": F.size("history").cast("int"),
            "candidates": F.col("candidates").cast("array<int>"),
            "labels": F.col("labels").cast("array<tinyint>"),
            "time": F.col("time").cast("long"),
        }
    )


def _to_arrow(frame: DataFrame) -> pa.Table:
    """A (small: per-item) DataFrame as an Arrow table on the driver."""
    if hasattr(frame, "toArrow"):
        return frame.toArrow()
    return pa.Table.from_batches(frame._collect_as_arrow(), schema=None)  # PySpark 3.5


def _codes(ids: pa.ChunkedArray | pa.Array, items: pa.Array) -> np.ndarray:
    return np.asarray(pc.index_in(ids, items).to_numpy(zero_copy_only=False), np.int64)


def _align(items: pa.Array, table: pa.Table, column: str) -> np.ndarray:
    """Per item code: the ``column`` of ``table`` (by ``item_id``), 0 where absent."""
    values = np.zeros(len(items), np.int64)
    if table.num_rows:
        codes = _codes(table.column("item_id"), items)
        values[codes] = pc.fill_null(table.column(column), 0).to_numpy()
    return values


# --------------------------------------------------------------------------- output


def _output_for(spark, out_dir: str | Path, *, overwrite: bool):
    if readers.is_uri(str(out_dir)):
        return _RemoteOutput(spark, str(out_dir).rstrip("/"), overwrite=overwrite)
    check_destination(out_dir, overwrite=overwrite)
    return _LocalOutput(Path(out_dir), overwrite=overwrite)


class _LocalOutput:
    """A local DATA_DIR, built in a temporary directory and renamed into place."""

    def __init__(self, path: Path, *, overwrite: bool):
        self.path, self.overwrite = path, overwrite
        self.tmp: Path | None = None

    @contextlib.contextmanager
    def open(self) -> Iterator[None]:
        with atomic_directory(self.path, overwrite=self.overwrite) as tmp:
            self.tmp = tmp.resolve()
            yield

    def work(self, name: str) -> str:
        return (self.tmp / "_work" / name).as_uri()

    def remove_work(self) -> None:
        shutil.rmtree(self.tmp / "_work", ignore_errors=True)

    def write_table(self, name: str, table: pa.Table) -> None:
        path = self.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, path)

    def write_split(self, split: str, code: int, buckets: int) -> None:
        """Join a split's sorted runs, bucket after bucket, into ``{split}.parquet``."""
        folder = self.tmp / "_work" / "parts" / f"split={code}"
        with pq.ParquetWriter(self.tmp / f"{split}.parquet", EXAMPLES, **_PARQUET_OPTIONS) as out:
            for bucket in range(buckets):
                for part in sorted((folder / f"_bucket={bucket}").glob("part-*.parquet")):
                    for batch in pq.ParquetFile(part).iter_batches(batch_size=65_536):
                        out.write_table(pa.Table.from_batches([batch]).cast(EXAMPLES))

    def write_manifest(self, manifest: dict) -> None:
        write_json(self.tmp / "manifest.json", manifest)


class _RemoteOutput:
    """A DATA_DIR on a Spark file system (object storage, HDFS): split directories,
    ``manifest.json`` last (no atomic rename there)."""

    def __init__(self, spark, uri: str, *, overwrite: bool):
        self.spark, self.uri, self.overwrite = spark, uri, overwrite
        jvm = spark.sparkContext._jvm
        self._path = jvm.org.apache.hadoop.fs.Path
        self.fs = self._path(uri).getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
        self.run_id = uuid.uuid4().hex[:12]

    @contextlib.contextmanager
    def open(self) -> Iterator[None]:
        root = self._path(self.uri)
        if self.fs.exists(root):
            if self.fs.getFileStatus(root).isFile():
                raise NotADirectoryError(f"output {self.uri} exists and is not a directory")
            if len(self.fs.listStatus(root)) and not self.overwrite:
                raise FileExistsError(
                    f"output directory {self.uri} exists and is not empty; pass --overwrite "
                    "(overwrite=True) to replace it"
                )
            self.fs.delete(self._path(f"{self.uri}/manifest.json"), False)  # incomplete now
            self.fs.delete(root, True)
        try:
            yield
        except BaseException:
            self.remove_work()
            raise

    def work(self, name: str) -> str:
        return f"{self.uri}/_work-{self.run_id}/{name}"

    def remove_work(self) -> None:
        self.fs.delete(self._path(f"{self.uri}/_work-{self.run_id}"), True)

    def write_bytes(self, name: str, data: bytes) -> None:
        stream = self.fs.create(self._path(f"{self.uri}/{name}"), True)
        try:
            stream.write(bytearray(data))
        finally:
            stream.close()

    def write_table(self, name: str, table: pa.Table) -> None:
        buffer = io.BytesIO()
        pq.write_table(table, buffer)
        self.write_bytes(name, buffer.getvalue())

    def write_split(self, split: str, code: int, buckets: int) -> None:
        """Move a split's sorted runs into ``{split}.parquet/``, named in order."""
        runs = f"{self.work('parts')}/split={code}"
        target = self._path(f"{self.uri}/{split}.parquet")
        self.fs.mkdirs(target)
        for bucket in range(buckets):
            folder = self._path(f"{runs}/_bucket={bucket}")
            if not self.fs.exists(folder):
                continue
            files = sorted(
                status.getPath().toString()
                for status in self.fs.listStatus(folder)
                if status.getPath().getName().startswith("part-")
            )
            for number, name in enumerate(files):
                moved = self._path(
                    f"{self.uri}/{split}.parquet/part-{bucket:05d}-{number:03d}.parquet"
                )
                self.fs.rename(self._path(name), moved)

    def write_manifest(self, manifest: dict) -> None:
        text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
        self.write_bytes("manifest.json", text.encode("utf-8"))
