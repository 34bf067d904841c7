"""``prepare`` on Spark: raw logs -> examples + vocabularies, the local engine's output.

Data flow (each arrow a Spark job or a step on the driver)::

    sources (driver) -> parse in tasks (local reader code, pyarrow) -> _work/parsed
      -> accounting rows collected (rows_read, rejections; the first error raised)
      -> per-item aggregates (driver: O(items)): codes, events, first seen, users
      -> time histogram -> cutoffs (exact quantiles) -> units + splits
      -> training counts -> vocabulary (``build_vocabulary``, shared with the
         local engine), items.parquet, features/*.parquet, negative sampler
      -> examples: histories with window functions; then, spread by (split, time
         bucket) and sorted, finished and written in one mapInArrow pass
         (negatives from the local samplers, lookups, labels; pyarrow runs)
      -> per-split counts -> runs joined in order -> {split}.parquet, manifest.json

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
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
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
from pipelines.schema import EXAMPLES, SPLITS
from pipelines.spark import readers, stages
from pipelines.spark.session import local_session
from pipelines.spark.writer import (
    CLICK,
    EVAL_IMPRESSION,
    PARQUET_OPTIONS,
    RESULT_DDL,
    RUN,
    TRAIN_IMPRESSION,
    ExampleWriter,
    filesystem,
)
from pipelines.splits import TRAIN

ENGINE = "spark"
_INT64_MAX = np.iinfo(np.int64).max


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
    output = _output_for(out_dir, overwrite=options.overwrite)
    spark = spark or local_session()
    bar = _Progress(progress)
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

    def read(self) -> tuple[DataFrame, DataFrame | None]:
        """Parse every source (one Spark job); account for the raw rows; the events and
        the given histories (MIND), as DataFrames over the files the tasks wrote."""
        options = self.options
        sources = readers.resolve(self.format, self.inputs, self.spark)
        accounting = readers.parse(
            self.spark,
            self.format,
            sources,
            on_bad_rows=options.on_bad_rows,
            reader_options=options.reader_options(),
            out=self.output.work("parsed", spark=False),
        ).collect()
        by_source = {row["src"]: json.loads(row["stats"]) for row in accounting}
        self._account(sources, by_source)
        self.input_info = readers.fingerprints(self.spark, sources)
        files: dict[str, list[str]] = collections.defaultdict(list)
        for src in sorted(by_source):
            for kind, path in by_source[src]["files"].items():
                files[kind].append(path)
        self.metadata = None
        if files[readers.ITEMS]:
            tables = [_read_table(path) for path in files[readers.ITEMS]]
            metadata = pa.concat_tables(tables).sort_by(
                [("_src", "ascending"), ("_pos", "ascending")]
            )
            self.metadata = metadata.select(["item_id", "category", "subcategory"])
        events = self._frame(readers.EVENTS, files[readers.EVENTS])
        given = self._frame(readers.GIVEN, files[readers.GIVEN]) if files[readers.GIVEN] else None
        return events, given

    def _frame(self, kind: str, paths: list[str]) -> DataFrame:
        schema = readers.PARSED_SCHEMAS[kind]
        if not paths:
            return self.spark.createDataFrame(schema.empty_table())
        uris = [path if "://" in path else Path(path).as_uri() for path in paths]
        return self.spark.read.schema(
            self.spark.createDataFrame(schema.empty_table()).schema
        ).parquet(*uris)

    def _account(self, sources: list[readers.SourceSpec], by_source: dict[int, dict]) -> None:
        """Sum the accounting rows (one per source, or per slice of a reader call's sources)
        as the local engine sums its reader calls; raise the first error in read order."""
        ordered = [by_source[src] for src in sorted(by_source)]
        for stats in ordered:
            if stats["error"] is not None:
                readers.raise_error(stats["error"])
        for group in sorted({source.group for source in sources}):
            members = [source for source in sources if source.group == group]
            group_rows = 0
            examples: dict[str, list[str]] = collections.defaultdict(list)
            for stats in ordered:
                if stats["group"] != group:
                    continue
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
        events, given = self.read()
        if self.format == "sequences":
            events = self._stage(self._positions(events), "events")

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
            self.metadata,
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
        context = spark.sparkContext
        sampler = None
        if self.has_impressions:
            examples = self._impression_examples(units, events, given, index_frame)
        else:
            examples = self._click_examples(units, index_frame)
            sampler = context.broadcast(self._sampler(items, events))
        writer = ExampleWriter(
            runs=self.output.runs,
            vocabulary=context.broadcast(vocab),
            code_to_index=context.broadcast(code_to_index),
            sampler=sampler,
            num_negatives=options.negatives,
            seed=options.seed,
            num_id_items=self.num_id_items,
        )
        split_stats, runs = self._write(examples, writer, units)

        self.bar.stage("merge")
        for code, split in enumerate(SPLITS):
            self.output.assemble(split, runs[code], options.chunk_size)

        self.bar.stage("manifest")
        return self._manifest(split_stats)

    def _write(self, examples: DataFrame, writer: ExampleWriter, units: DataFrame):
        """Write the examples in one Spark job; the per-split counts and the runs written.

        Each split is cut into time buckets of about equal size (from the
        events' time histogram); a task gets whole (split, bucket) runs, sorted,
        so that a split's runs read bucket after bucket are in (time,
        example_key) order without a global sort. Examples below
        ``min_history`` get bucket -1: counted, not written.
        """
        slots = int(self.spark.conf.get("spark.sql.shuffle.partitions"))
        boundaries = stages.time_boundaries(self.histogram, self.low, self.high, slots)
        dropped = F.col("history_full") < F.lit(self.options.min_history)
        bucket = F.when(dropped, -1).otherwise(stages.bucket_of(F.col("time"), boundaries))
        ordered = (
            examples.withColumn("_bucket", bucket)
            .repartition(len(SPLITS) * (len(boundaries) + 1), "split", "_bucket")
            .sortWithinPartitions("split", "_bucket", "time", "example_key")
        )
        results = ordered.mapInArrow(writer, RESULT_DDL)
        run = F.col("kind") == RUN
        totals = results.groupBy("split").agg(
            *[F.sum(c).alias(c) for c in ("rows", "history_oov", "candidate_oov", "dropped")],
            F.countDistinct("user_id").alias("users"),
            F.collect_list(F.when(run, F.struct("bucket", "path"))).alias("runs"),
        )
        if self.has_impressions:
            no_click = (F.col("split") == TRAIN) & ~F.exists("_rows", lambda r: r["label"] == 1)
            without = units.agg(F.sum(no_click.cast("long")).alias("without_click"))
            totals = totals.unionByName(without, allowMissingColumns=True)
        stats = {split: _split_entry() for split in SPLITS}
        runs: dict[int, list[str]] = {code: [] for code in range(len(SPLITS))}
        for row in totals.collect():
            if row["split"] is None:
                stats[SPLITS[TRAIN]]["impressions_without_click"] = int(row["without_click"] or 0)
                continue
            code = int(row["split"])
            entry = stats[SPLITS[code]]
            entry.update(examples=int(row["rows"] or 0), users=int(row["users"]))
            entry["oov"] = {
                "history": int(row["history_oov"] or 0),
                "candidates": int(row["candidate_oov"] or 0),
            }
            entry["dropped_min_history"] = int(row["dropped"] or 0)
            runs[code] = [path for _, path in sorted((r["bucket"], r["path"]) for r in row["runs"])]
        return stats, runs

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

    def _click_examples(self, clicks: DataFrame, index_frame: DataFrame) -> DataFrame:
        """One example per click: its number, history (window functions), the clicked item."""
        indexed = clicks.join(F.broadcast(index_frame), "item_id")
        histories = stages.click_histories(indexed, self.options.history_length)
        return histories.select(
            F.concat_ws("/", "user_id", F.col("n").cast("string")).alias("example_key"),
            "user_id",
            "time",
            F.lit(None).cast("string").alias("impression_id"),
            "session_id",
            "split",
            "history",
            "history_full",
            "item_code",
            "item_index",
            F.lit(CLICK).cast("tinyint").alias("_kind"),
        )

    def _impression_examples(self, units, events, given, index_frame) -> DataFrame:
        """Train: one example per clicked row of an impression, with its non-clicked rows
        as the pool of negatives; valid/test: one example per impression, all its rows."""
        length = self.options.history_length
        if given is not None:  # the log's own history: its most recent L, looked up later
            listed = F.coalesce(F.col("given"), F.array().cast("array<string>"))
            recent = F.slice(listed, F.greatest(F.size(listed) - length + 1, F.lit(1)), length)
            joined = units.join(
                given.withColumnRenamed("history", "given"), "impression_id", "left"
            )
            units = joined.select(
                "*", F.size(listed).alias("history_full"), recent.alias("history_ids")
            ).drop("given")
            history = "history_ids"
        else:
            clicks = events.where(F.col("label") == 1).join(F.broadcast(index_frame), "item_id")
            units = stages.query_histories(units, clicks, length)
            history = "history"
        base = ["user_id", "time", "impression_id", "session_id", "split", history, "history_full"]
        train = units.where(F.col("split") == TRAIN).select(
            *base, "_rows", F.posexplode("_rows").alias("position", "row")
        )
        key = F.concat_ws("/", "impression_id", F.col("position").cast("string"))
        pool = F.transform(F.filter("_rows", lambda r: r["label"] == 0), lambda r: r["item_id"])
        train = train.where(F.col("row.label") == 1).select(
            *base,
            key.alias("example_key"),
            F.col("row.item_id").alias("positive"),
            pool.alias("pool"),
            F.lit(TRAIN_IMPRESSION).cast("tinyint").alias("_kind"),
        )
        evaluation = units.where(F.col("split") != TRAIN).select(
            *base,
            F.col("impression_id").alias("example_key"),
            F.transform("_rows", lambda r: r["item_id"]).alias("candidate_ids"),
            F.transform("_rows", lambda r: r["label"].cast("tinyint")).alias("labels"),
            F.lit(EVAL_IMPRESSION).cast("tinyint").alias("_kind"),
        )
        return train.unionByName(evaluation, allowMissingColumns=True)

    # -- statistics and manifest -----------------------------------------------------------

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
            "layout": "lists",
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


def _read_table(path: str) -> pa.Table:
    """A (small) Parquet file on the driver, from a local path or a URI."""
    fs, where = filesystem(path)
    return pq.read_table(where, filesystem=fs)


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


def _output_for(out_dir: str | Path, *, overwrite: bool):
    if readers.is_uri(str(out_dir)):
        return _RemoteOutput(str(out_dir).rstrip("/"), overwrite=overwrite)
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

    def work(self, name: str, *, spark: bool = True) -> str:
        """Where ``name`` is staged: a URI for Spark, else a local path."""
        path = self.tmp / "_work" / name
        return path.as_uri() if spark else str(path)

    @property
    def runs(self) -> str:
        """Where the example writer puts its runs."""
        return str(self.tmp / "_work" / "runs")

    def remove_work(self) -> None:
        shutil.rmtree(self.tmp / "_work", ignore_errors=True)

    def write_table(self, name: str, table: pa.Table) -> None:
        path = self.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, path)

    def assemble(self, split: str, runs: list[str], row_group: int) -> None:
        """Join a split's runs, in order, into the one file ``{split}.parquet``, in row
        groups of ``row_group`` rows (the local engine writes ``chunk_size`` at a time)."""
        pending: list[pa.RecordBatch] = []
        held = 0
        with pq.ParquetWriter(self.tmp / f"{split}.parquet", EXAMPLES, **PARQUET_OPTIONS) as out:
            for run in runs:
                for batch in pq.ParquetFile(run).iter_batches(batch_size=65_536):
                    pending.append(batch)
                    held += batch.num_rows
                    if held >= row_group:
                        table = pa.Table.from_batches(pending)
                        full = held - held % row_group
                        out.write_table(table.slice(0, full), row_group_size=row_group)
                        pending, held = table.slice(full).to_batches(), held - full
            if held:
                out.write_table(pa.Table.from_batches(pending, EXAMPLES))

    def write_manifest(self, manifest: dict) -> None:
        write_json(self.tmp / "manifest.json", manifest)


class _RemoteOutput:
    """A DATA_DIR on object storage or HDFS: one directory of part files per split,
    ``manifest.json`` written last (there is no atomic rename to rely on)."""

    def __init__(self, uri: str, *, overwrite: bool):
        self.uri, self.overwrite = uri, overwrite
        self.fs, self.root = filesystem(uri)
        self.run_id = uuid.uuid4().hex[:12]

    @contextlib.contextmanager
    def open(self) -> Iterator[None]:
        info = self.fs.get_file_info(self.root)
        if info.type == pafs.FileType.File:
            raise NotADirectoryError(f"output {self.uri} exists and is not a directory")
        if info.type == pafs.FileType.Directory:
            if self.fs.get_file_info(pafs.FileSelector(self.root)) and not self.overwrite:
                raise FileExistsError(
                    f"output directory {self.uri} exists and is not empty; pass --overwrite "
                    "(overwrite=True) to replace it"
                )
            self._delete("manifest.json")  # the old DATA_DIR is incomplete from now on
            self.fs.delete_dir_contents(self.root)
        self.fs.create_dir(self.root, recursive=True)
        try:
            yield
        except BaseException:
            self.remove_work()
            raise

    def _delete(self, name: str) -> None:
        info = self.fs.get_file_info(f"{self.root}/{name}")
        if info.type == pafs.FileType.File:
            self.fs.delete_file(info.path)
        elif info.type == pafs.FileType.Directory:
            self.fs.delete_dir(info.path)

    def work(self, name: str, *, spark: bool = True) -> str:
        """Where ``name`` is staged (a URI)."""
        return f"{self.uri}/_work-{self.run_id}/{name}"

    @property
    def runs(self) -> str:
        """Where the example writer puts its runs."""
        return self.work("runs")

    def remove_work(self) -> None:
        self._delete(f"_work-{self.run_id}")

    def write_bytes(self, name: str, data: bytes) -> None:
        path = f"{self.root}/{name}"
        self.fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        with self.fs.open_output_stream(path) as stream:
            stream.write(data)

    def write_table(self, name: str, table: pa.Table) -> None:
        buffer = io.BytesIO()
        pq.write_table(table, buffer)
        self.write_bytes(name, buffer.getvalue())

    def assemble(self, split: str, runs: list[str], row_group: int) -> None:
        """Move a split's runs into ``{split}.parquet/``, named in order (an empty split
        gets one empty part, so that the directory reads as an empty table)."""
        folder = f"{self.root}/{split}.parquet"
        self.fs.create_dir(folder, recursive=True)
        for number, run in enumerate(runs):
            self.fs.move(filesystem(run)[1], f"{folder}/part-{number:05d}.parquet")
        if not runs:
            self.write_table(f"{split}.parquet/part-00000.parquet", EXAMPLES.empty_table())

    def write_manifest(self, manifest: dict) -> None:
        text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
        self.write_bytes("manifest.json", text.encode("utf-8"))
