"""``prepare``: raw logs -> examples + vocabularies on disk (Parquet + ``manifest.json``).

Data flow (local engine)::

    reader -> canonical events -> [partitions by hash(user_id)]
           -> pass A, per partition: units (clicks or impressions), splits,
              training item counts, item activity (first seen, clicks, live intervals)
           -> item vocabulary (train only) + negative sampler
           -> pass B, per partition: histories, candidates, labels, in chunks
              of examples sorted by (time, example_key), on worker threads
           -> train/valid/test.parquet (+ clicks.parquet in the compact layout),
              items.parquet, features/*.parquet, manifest.json, written into a
              temporary directory renamed into place

What an example is:

* **Click logs** (no impression ids: Globo, events without impressions,
  sequences): one example per click, key ``"{user_id}/{n}"`` (the user's
  n-th click, 0-based, in (time, input order)); candidates are the clicked
  item followed by up to K negatives from :class:`pipelines.negatives.NegativeSampler`.
* **Impression logs** (MIND, events with impression ids): train has one
  example per clicked candidate, key ``"{impression_id}/{position}"``, with
  candidates the clicked item followed by up to K of that impression's
  non-clicked items; valid/test have one example per impression, key
  ``"{impression_id}"``, with all its candidates in log order. Train
  impressions without a click give no example (``impressions_without_click``).
  An impression's time is its earliest row's; its user and session its first row's.
* **History**: the user's clicks strictly before the example time (most
  recent L kept), or, when the reader supplies one (MIND), the log's own
  history list (its most recent L).

Layout (``PrepareOptions.layout``): ``compact`` writes each partition's
clicks once to ``clicks.parquet`` (vocabulary indices in (user, time) order,
partition after partition) and gives each example ``history_start``, the
start of its history there; ``lists`` writes each history list into its
row. Compact is the default wherever histories are built from the clicks;
``pipelines.dataset.ExamplesFile`` reads both as ``EXAMPLES``. The offsets
depend on the partitioning, the examples as read do not.

Vocabulary counts (train split only): a click log counts each training click;
an impression log counts every row of a training impression, every entry of
its given history, and clicks outside impressions in the training period.

Splits: ``time`` mode cuts at event-time quantiles (see
:func:`pipelines.splits.time_cutoffs`) unless ``valid_start``/``test_start``
are given; ``leave-last-out`` is per user (the default for ``sequences``).

Memory: the reader streams (``pipelines.readers.read_batches``: batches of
about ``16 * max_rows_in_memory`` bytes of text, 1 to 16 MB, parsed in
threads; a zip archive member by member, a large text or JSON Lines file in
blocks of lines, a large Parquet file in batches of rows).
Up to ``max_rows_in_memory`` canonical events are processed as one
partition; as soon as the rows read so far, extrapolated by the share of the
input bytes read, exceed that, events are spilled batch by batch to ``P``
Parquet partitions by ``fnv1a64(user_id) mod P``, so a single zip or file
larger than memory never sits in memory whole. Partitions are processed one
at a time into sorted Arrow IPC runs, and each split is merged back in
(time, key) order one time slab (about ``max_rows_in_memory / 2`` examples)
at a time. The negative sampler keeps per-item state (first-seen times;
merged live intervals with a window; for ``popularity`` the clicks' (time,
item), 16 bytes a click). Results do not depend on ``P``, the batches,
``chunk_size`` or ``workers`` (tested).

Speed (both cores): while the reader's threads parse, the main thread
dictionary-encodes each batch's user and item ids, so the in-memory
partition never hashes an id string again; its (user, time) sort runs on
``workers`` threads, and the splits are planned (examples chosen and put in
(time, key) order) on the second core while the main thread counts items and
builds the vocabulary; the three splits are then built and written at once,
each written by its own thread (Parquet encoding releases the GIL) from
chunks of ``chunk_size`` examples built by ``workers`` threads. The train
split's writer is the longest task of that stage (the list columns' Parquet
encoding, one thread per file).

Determinism: every ordering is by content (sorted raw ids, times, input
order for ties) and every random draw a hash of (seed, example key), so
re-running with the same inputs and options gives identical tables.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import dataclasses
import logging
import math
import resource
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines.dataset import CLICKS_FILE, CLICKS_ROWS_KEY
from pipelines.io import atomic_directory, check_destination, file_info, write_json
from pipelines.negatives import (
    SAMPLING_MODES,
    ActivityAccumulator,
    NegativeSampler,
    check_num_negatives,
    choose_from_pools,
    hash_append_int,
    hash_strings,
    matrix_to_lists,
    parse_duration,
    stream_keys,
)
from pipelines.schema import (
    CLICKS,
    COMPACT_EXAMPLES,
    EVENTS,
    EXAMPLES,
    LAYOUTS,
    OOV_INDEX,
    SPLITS,
    validate,
)
from pipelines.sequences import (
    gather_lists,
    history_bounds,
    last_n,
    pack_user_time,
    sorted_unique,
)
from pipelines.splits import (
    SPLIT_MODES,
    TRAIN,
    assign_leave_last_out,
    assign_time_splits,
    check_fractions,
    parse_time,
    time_cutoffs,
)
from pipelines.vocab import Vocabulary, check_min_count, items_table

if TYPE_CHECKING:
    from pipelines.readers.base import ReadResult

logger = logging.getLogger(__name__)

FORMATS = ("mind", "events", "globo", "sequences")
ENGINES = ("local", "spark")
#: Formats whose input files can be read one at a time (no state across files).
STREAMABLE_FORMATS = ("events", "globo")
#: Reader options forwarded as keyword arguments when set.
READER_OPTIONS = (
    "user_col",
    "item_col",
    "time_col",
    "event_col",
    "impression_col",
    "session_col",
    "time_unit",
)
MIN_ITEM_INTERACTIONS_REASON = "min_item_interactions"
_EVENT_COLUMNS = ("user_id", "item_id", "time", "label", "impression_id", "session_id")
#: Snappy, and dictionaries only for the string columns: list columns encode
#: about twice as fast without them (writing is the slowest stage).
_PARQUET_OPTIONS = {
    "compression": "snappy",
    "use_dictionary": ["user_id", "impression_id", "session_id"],
}

ReadFunction = Callable[..., Any]
_COMPACT_NEEDS_CLICKS = (
    "layout='compact' needs histories built from the log's clicks; {reader} gives each "
    "impression its own history list: use layout='lists' (or leave `layout` unset)"
)
_RUN_ROW_GROUP = 16_384
_MERGE_PIECE = 65_536


@dataclasses.dataclass(frozen=True)
class PrepareOptions:
    """Every option of ``feedrec prepare`` (the CLI flags and the ``[prepare]`` config table).

    Attributes:
        engine: ``"local"`` (pyarrow + NumPy) or ``"spark"`` (PySpark, the
            ``spark`` extra: ``pipelines.spark``; same output). Defaults to ``"local"``.
        history_length: L, the most recent clicks kept per history. Defaults to 50.
        negatives: K, negatives per click example (and per training click of an
            impression log). Defaults to 4.
        seed: seeds negative sampling. Defaults to 0.
        on_bad_rows: ``"error"`` (stop at the first malformed raw row) or
            ``"skip"`` (count it by reason). Defaults to ``"error"``.
        split_mode: ``"time"`` or ``"leave-last-out"``; None means
            ``"leave-last-out"`` for the ``sequences`` format, ``"time"`` otherwise.
        valid_start, test_start: time cutoffs (ms since the epoch, ISO 8601
            string or datetime). When unset, fractions of the log's time range
            are used. Set both or neither.
        valid_fraction, test_fraction: the last ``test_fraction`` of the time
            range is test and the ``valid_fraction`` before it valid. Default 0.1 each.
        min_count: items seen fewer times in training map to OOV. Defaults to 1.
        min_history: examples whose full history (before truncation) is
            shorter are not written. Defaults to 0 (keep cold-start examples).
        min_item_interactions: drop the events of items with fewer events in
            the whole log (SASRec-style filtering; click logs only); the dropped
            raw rows are rejected with reason ``min_item_interactions``. Defaults to 0.
        negative_sampling: ``"uniform"`` or ``"popularity"`` (see
            ``pipelines.negatives``). Defaults to ``"uniform"``.
        negative_window: only items seen within this duration before the
            example time (ms, or ``"6h"``-style string). Defaults to None.
        overwrite: replace a non-empty ``out_dir``. Defaults to False.
        max_rows_in_memory: canonical events processed as one partition;
            larger logs are partitioned. Defaults to 4,000,000.
        num_partitions: partitions when partitioning; None picks
            ``ceil(2 * events / max_rows_in_memory)``. Defaults to None.
        chunk_size: examples built and written per chunk. Defaults to 250,000.
        workers: threads building chunks. Defaults to 2.
        layout: ``"compact"`` (each click stored once, in ``clicks.parquet``;
            each row points into it with ``history_start``) or ``"lists"``
            (each example's history list in its row: L copies of a click).
            Both read as ``EXAMPLES`` through ``pipelines.dataset``. Compact
            needs histories built from the log's clicks: not ``mind`` (its
            histories are given per impression), not the ``spark`` engine.
            None (the default) picks compact where it can, else lists; the
            manifest's ``layout`` says which.
        user_col, item_col, time_col, event_col, impression_col, session_col,
        time_unit: column mapping and time unit for the ``events`` reader,
            forwarded when set. Default None.
    """

    engine: str = "local"
    history_length: int = 50
    negatives: int = 4
    seed: int = 0
    on_bad_rows: str = "error"
    split_mode: str | None = None
    valid_start: int | str | None = None
    test_start: int | str | None = None
    valid_fraction: float = 0.1
    test_fraction: float = 0.1
    min_count: int = 1
    min_history: int = 0
    min_item_interactions: int = 0
    negative_sampling: str = "uniform"
    negative_window: int | str | None = None
    overwrite: bool = False
    max_rows_in_memory: int = 4_000_000
    num_partitions: int | None = None
    chunk_size: int = 250_000
    workers: int = 2
    layout: str | None = None
    user_col: str | None = None
    item_col: str | None = None
    time_col: str | None = None
    event_col: str | None = None
    impression_col: str | None = None
    session_col: str | None = None
    time_unit: str | None = None

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise ValueError(
                f"`engine` should be one of {ENGINES}. Received: engine={self.engine!r}"
            )
        _check_int(self, "history_length", 1)
        check_num_negatives(self.negatives)
        _check_int(self, "seed", None)
        if self.on_bad_rows not in ("error", "skip"):
            raise ValueError(
                "`on_bad_rows` should be 'error' or 'skip'. "
                f"Received: on_bad_rows={self.on_bad_rows!r}"
            )
        if self.split_mode is not None and self.split_mode not in SPLIT_MODES:
            raise ValueError(
                f"`split_mode` should be one of {SPLIT_MODES}. "
                f"Received: split_mode={self.split_mode!r}"
            )
        valid_start = parse_time(self.valid_start, "valid_start")
        test_start = parse_time(self.test_start, "test_start")
        if (valid_start is None) != (test_start is None):
            raise ValueError(
                "set both `valid_start` and `test_start`, or neither. Received: "
                f"valid_start={self.valid_start!r}, test_start={self.test_start!r}"
            )
        if valid_start is not None and valid_start > test_start:
            raise ValueError(
                "`valid_start` should not be after `test_start`. Received: "
                f"valid_start={self.valid_start!r}, test_start={self.test_start!r}"
            )
        object.__setattr__(self, "valid_start", valid_start)
        object.__setattr__(self, "test_start", test_start)
        check_fractions(self.valid_fraction, self.test_fraction)
        check_min_count(self.min_count)
        _check_int(self, "min_history", 0)
        _check_int(self, "min_item_interactions", 0)
        if self.negative_sampling not in SAMPLING_MODES:
            raise ValueError(
                f"`negative_sampling` should be one of {SAMPLING_MODES}. "
                f"Received: negative_sampling={self.negative_sampling!r}"
            )
        object.__setattr__(self, "negative_window", parse_duration(self.negative_window))
        _check_int(self, "max_rows_in_memory", 1)
        if self.num_partitions is not None:
            _check_int(self, "num_partitions", 1)
        _check_int(self, "chunk_size", 1)
        _check_int(self, "workers", 1)
        if self.layout is not None and self.layout not in LAYOUTS:
            raise ValueError(
                f"`layout` should be one of {LAYOUTS}. Received: layout={self.layout!r}"
            )
        if self.layout == "compact" and self.engine != "local":
            raise ValueError(
                "layout='compact' is written by the local engine only; the spark engine "
                "writes layout='lists'"
            )

    def split_mode_for(self, format: str) -> str:
        if self.split_mode is not None:
            return self.split_mode
        return "leave-last-out" if format == "sequences" else "time"

    def reader_options(self) -> dict[str, Any]:
        return {
            name: getattr(self, name) for name in READER_OPTIONS if getattr(self, name) is not None
        }

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _check_int(options: PrepareOptions, name: str, minimum: int | None) -> None:
    value = getattr(options, name)
    if (
        not isinstance(value, int)
        or isinstance(value, bool)
        or (minimum is not None and value < minimum)
    ):
        bound = "" if minimum is None else f" >= {minimum}"
        raise ValueError(f"`{name}` should be an integer{bound}. Received: {name}={value!r}")


# --------------------------------------------------------------------------- entry point


def prepare(
    format: str,
    inputs: list,
    out_dir: str | Path,
    *,
    options: PrepareOptions | None = None,
    progress: bool = False,
    reader: ReadFunction | None = None,
) -> dict:
    """Build the examples, vocabularies and manifest of ``out_dir`` from raw logs.

    Args:
        format: ``"mind"``, ``"events"``, ``"globo"`` or ``"sequences"``.
        inputs: list of paths (files or directories) given to the reader.
        out_dir: str or Path. The DATA_DIR to create; written atomically.
        options: PrepareOptions. Defaults to ``PrepareOptions()``.
        progress: bool. Show a progress bar on stderr. Defaults to False.
        reader: optional ``read(inputs, *, on_bad_rows, **options) -> ReadResult``
            used instead of ``pipelines.readers.READERS[format]``.

    Returns:
        The manifest (also written to ``out_dir/manifest.json``).

    Raises:
        ValueError: bad options, or a malformed row with ``on_bad_rows="error"``
            (``pipelines.readers.base.BadRowError``).
        FileNotFoundError: an input does not exist.
        FileExistsError: ``out_dir`` is not empty and ``overwrite`` is False.
    """
    started = time.perf_counter()
    options = options or PrepareOptions()
    if options.engine == "spark":
        if reader is not None:
            raise ValueError("a custom `reader` runs on the local engine only; engine='spark'")
        from pipelines.spark import prepare as prepare_on_spark  # PySpark only when asked for

        return prepare_on_spark(format, inputs, out_dir, options=options, progress=progress)
    if format not in FORMATS and reader is None:
        raise ValueError(f"`format` should be one of {FORMATS}. Received: format={format!r}")
    if format == "mind" and options.layout == "compact":
        raise ValueError(_COMPACT_NEEDS_CLICKS.format(reader="MIND"))
    inputs = [Path(p) for p in inputs]
    if not inputs:
        raise ValueError("no input given; pass at least one INPUT path")
    for path in inputs:
        if not path.exists() and not any(c in str(path) for c in "*?["):  # globs: the reader's
            raise FileNotFoundError(f"input not found: {path}")
    check_destination(out_dir, overwrite=options.overwrite)
    read = reader or _registered_reader(format)
    bar = _Progress(progress)
    try:
        with atomic_directory(out_dir, overwrite=options.overwrite) as tmp:
            job = _Job(format, inputs, options, read, tmp, bar, custom_reader=reader is not None)
            manifest = job.run()
            shutil.rmtree(tmp / "_work", ignore_errors=True)
            bar.stage("finish")
            manifest["timings_s"] = dict(bar.timings)
            manifest["elapsed_s"] = round(time.perf_counter() - started, 3)
            write_json(tmp / "manifest.json", manifest)
    finally:
        bar.close()
    return manifest


def _batch_bytes(max_rows_in_memory: int) -> int:
    """Raw bytes per reader batch: about 16 per row allowed in memory, 1 to 16 MB.

    Small enough that the reader's threads overlap well (Globo: a dozen batches).
    """
    return int(min(max(16 * max_rows_in_memory, 1 << 20), 16 << 20))


def _registered_reader(format: str) -> ReadFunction:
    from pipelines.readers import READERS

    if format not in READERS:
        raise ValueError(f"no reader for format {format!r}; available: {sorted(READERS)}")
    return READERS[format]


class _Progress:
    """Stage timings (and peak RSS in debug logs), plus a tqdm bar on stderr when enabled."""

    STAGES = ("read", "count", "vocabulary", "examples", "merge", "manifest", "finish")

    def __init__(self, enabled: bool):
        self._bar = None
        self._name, self._started = None, time.perf_counter()
        self.timings: dict[str, float] = {}
        if enabled:
            from tqdm.auto import tqdm

            self._bar = tqdm(  # disable=None: no bar when stderr is not a terminal
                total=len(self.STAGES),
                desc="prepare",
                unit="stage",
                leave=False,
                file=sys.stderr,
                disable=None,
            )

    def stage(self, name: str) -> None:
        """Start stage ``name`` (ending the previous one)."""
        self._lap()
        self._name = name
        if self._bar is not None:
            self._bar.set_description(f"prepare: {name}")

    def _lap(self) -> None:
        now = time.perf_counter()
        if self._name is not None:
            self.timings[self._name] = round(now - self._started, 3)
            logger.debug(
                "prepare: %s took %.2fs; peak RSS %.0f MB",
                self._name,
                now - self._started,
                resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            )
            if self._bar is not None:
                self._bar.update(1)
        self._started = now

    def close(self) -> None:
        self._lap()
        self._name = None
        if self._bar is not None:
            self._bar.close()


# --------------------------------------------------------------------------- reading


@dataclasses.dataclass
class _Encoded:
    """One in-memory batch's user and item ids as dictionary codes (see ``_Store.add``)."""

    users: np.ndarray  # int32 codes into `user_ids`
    user_ids: pa.Array
    items: np.ndarray  # int32 codes into `item_ids`
    item_ids: pa.Array


@dataclasses.dataclass
class _Store:
    """Canonical events as read: in memory, or spilled to user-hash partitions.

    Each batch's item ids are dictionary-encoded once as it arrives (its
    distinct items, and their event counts for ``min_item_interactions``);
    in memory, its user ids too, and the codes are kept, so that the
    partition never hashes a string again (:meth:`codes`).
    """

    work_dir: Path
    max_rows: int
    num_partitions: int | None
    count_items: bool = False  # events per item id (for `min_item_interactions`)
    tables: list[pa.Table] = dataclasses.field(default_factory=list)
    given: list[pa.Table] = dataclasses.field(default_factory=list)
    encoded: list[_Encoded] = dataclasses.field(default_factory=list)
    partitions: int = 1
    rows: int = 0
    batches: int = 0
    item_ids: list[pa.Array] = dataclasses.field(default_factory=list)
    item_events: list[pa.Table] = dataclasses.field(default_factory=list)
    has_impressions: bool = False
    max_rows_held: int = 0  # the most canonical events held in memory at once (a test hook)

    @property
    def spilled(self) -> bool:
        return self.partitions > 1

    def add(self, events: pa.Table, given: pa.Table | None, expected_rows: int) -> None:
        events = events.select(list(_EVENT_COLUMNS)).append_column(
            "_row", pa.array(np.arange(self.rows, self.rows + events.num_rows, dtype=np.int64))
        )
        self.rows += events.num_rows
        self.max_rows_held = max(self.max_rows_held, events.num_rows if self.spilled else self.rows)
        self.has_impressions |= events.column("impression_id").null_count < events.num_rows
        items, item_ids = _dictionary(events.column("item_id"))
        self.item_ids.append(item_ids)
        if self.count_items:
            counts = np.bincount(items, minlength=len(item_ids))
            self.item_events.append(pa.table({"item_id": item_ids, "n": counts}))
        if given is not None:
            given = given.select(["impression_id", "history"])
            self.item_ids.append(
                pc.unique(pc.list_flatten(given.column("history")).combine_chunks())
            )
        if len(self.item_ids) > 64:  # many batches: keep the distinct ids compact
            self.item_ids = [pc.unique(pa.concat_arrays(self.item_ids))]
        if not self.spilled and max(self.rows, expected_rows) > self.max_rows:
            self.partitions = self.num_partitions or max(
                2, math.ceil(2 * max(self.rows, expected_rows) / self.max_rows)
            )
            for table, given_part in zip(self.tables, self.given, strict=True):
                self._spill(table, given_part)
            self.tables, self.given, self.encoded = [], [], []
        if self.spilled:
            self._spill(events, given)
        else:
            users, user_ids = _dictionary(events.column("user_id"))
            self.tables.append(events)
            self.given.append(given)
            self.encoded.append(_Encoded(users, user_ids, items, item_ids))

    def _spill(self, events: pa.Table, given: pa.Table | None) -> None:
        part = _partition_of(events.column("user_id"), self.partitions)
        given_part = None
        if given is not None:
            impressions = events.column("impression_id").combine_chunks()
            where = _codes(pc.index_in(given.column("impression_id"), impressions))
            given_part = np.where(where >= 0, part[np.maximum(where, 0)] if len(part) else -1, -1)
        for p in range(self.partitions):
            folder = self.work_dir / "partitions" / f"p{p:05d}"
            folder.mkdir(parents=True, exist_ok=True)
            pq.write_table(
                events.filter(pa.array(part == p)), folder / f"events-{self.batches:06d}.parquet"
            )
            if given is not None:
                pq.write_table(
                    given.filter(pa.array(given_part == p)),
                    folder / f"given-{self.batches:06d}.parquet",
                )
        self.batches += 1

    def read_times(self) -> Iterator[np.ndarray]:
        """The event times, batch by batch (from disk when spilled)."""
        if not self.spilled:
            for table in self.tables:
                yield table.column("time").to_numpy()
            return
        for path in sorted((self.work_dir / "partitions").glob("p*/events-*.parquet")):
            yield pq.read_table(path, columns=["time"]).column("time").to_numpy()

    def codes(self, items: pa.Array) -> tuple[np.ndarray, pa.Array, np.ndarray]:
        """In memory: the user codes (first appearance order), user ids and item codes.

        Item codes index ``items`` (the sorted distinct item ids). The batches'
        dictionaries are unified in one pass each (a hash of distinct ids, not of rows).
        """
        if not self.encoded:
            return np.zeros(0, np.int64), pa.array([], pa.string()), np.zeros(0, np.int64)
        user_map, user_ids = _dictionary(
            pa.chunked_array([pa.concat_arrays([e.user_ids for e in self.encoded])])
        )
        users = _apply(user_map, [(e.users, len(e.user_ids)) for e in self.encoded])
        item_map = pc.index_in(pa.concat_arrays([e.item_ids for e in self.encoded]), items)
        item_codes = _apply(
            item_map.to_numpy(zero_copy_only=False),
            [(e.items, len(e.item_ids)) for e in self.encoded],
        )
        return users, user_ids, item_codes

    def iter_partitions(self) -> Iterator[tuple[pa.Table, pa.Table | None]]:
        if not self.spilled:
            events = pa.concat_tables(self.tables) if self.tables else _empty_events()
            givens = [g for g in self.given if g is not None]
            yield events, (pa.concat_tables(givens) if givens else None)
            return
        for p in range(self.partitions):
            folder = self.work_dir / "partitions" / f"p{p:05d}"
            events = pa.concat_tables(
                [pq.read_table(f) for f in sorted(folder.glob("events-*.parquet"))]
            )
            self.max_rows_held = max(self.max_rows_held, events.num_rows)
            given_files = sorted(folder.glob("given-*.parquet"))
            given = (
                pa.concat_tables([pq.read_table(f) for f in given_files]) if given_files else None
            )
            yield events, given


def _apply(mapping: np.ndarray, parts: list[tuple[np.ndarray, int]]) -> np.ndarray:
    """Concatenated ``mapping[offset + codes]`` of ``(codes, dictionary size)`` parts, in order."""
    offsets = np.cumsum([0] + [size for _, size in parts])
    mapping = np.asarray(mapping, np.int64)
    return np.concatenate(
        [
            mapping[offset : offset + size][codes]
            for (codes, size), offset in zip(parts, offsets[:-1], strict=True)
        ]
    )


def _partition_of(user_ids: pa.ChunkedArray | pa.Array, partitions: int) -> np.ndarray:
    """Partition of each row: ``fnv1a64(user_id) mod partitions`` (same for every engine)."""
    users = user_ids.combine_chunks() if isinstance(user_ids, pa.ChunkedArray) else user_ids
    encoded = users.dictionary_encode()
    hashes = hash_strings(encoded.dictionary) % np.uint64(partitions)
    return hashes.astype(np.int64)[encoded.indices.to_numpy(zero_copy_only=False)]


def _empty_events() -> pa.Table:
    schema = pa.schema([EVENTS.field(c) for c in _EVENT_COLUMNS] + [pa.field("_row", pa.int64())])
    return schema.empty_table()


def _dictionary(column: pa.ChunkedArray) -> tuple[np.ndarray, pa.Array]:
    """Dictionary codes (int32, in first-appearance order) and the dictionary of a string column."""
    if len(column) == 0:  # no chunk, or only empty ones (dictionary_encode drops those)
        return np.zeros(0, np.int32), pa.array([], pa.string())
    encoded = pc.dictionary_encode(column)
    indices = [chunk.indices.to_numpy(zero_copy_only=False) for chunk in encoded.chunks]
    return np.concatenate(indices).astype(np.int32, copy=False), encoded.chunk(0).dictionary


# --------------------------------------------------------------------------- the job


@dataclasses.dataclass
class _Context:
    """Global, read-only state shared by the partitions."""

    options: PrepareOptions
    split_mode: str
    valid_start: int
    test_start: int
    items: pa.Array  # sorted raw item ids; an item's code is its position
    keep_item: np.ndarray | None  # min_item_interactions filter by code
    has_impressions: bool
    item_hashes: np.ndarray | None = None
    code_to_index: np.ndarray | None = None
    num_id_items: int | None = None  # indices >= this have no ID embedding (metadata only)
    sampler: NegativeSampler | None = None
    layout: str = "lists"  # as written (see `_Job._layout`)


class _Job:
    def __init__(self, format, inputs, options, read, out: Path, bar: _Progress, custom_reader):
        self.format, self.inputs, self.options, self.read = format, inputs, options, read
        self.custom_reader = custom_reader
        self.out, self.bar = out, bar
        self.work = out / "_work"
        self.rows_read = 0
        self.rejected: collections.Counter[str] = collections.Counter()
        self.rejected_examples: dict[str, list[str]] = {}
        self.input_info: list[dict] = []
        self.metadata: list[pa.Table] = []
        self.items_read = 0
        self.users = 0
        self.items_rejected: collections.Counter[str] = collections.Counter()
        self.given_histories = False  # the reader gave history lists (MIND)

    # -- reading ----------------------------------------------------------------------

    def _read_all(self) -> _Store:
        options = self.options
        store = _Store(
            self.work,
            options.max_rows_in_memory,
            options.num_partitions,
            count_items=options.min_item_interactions > 0,
        )
        for result, inputs, progress in self._results():
            events = validate(result.events, EVENTS, f"{self.format} reader output")
            self.rows_read += int(result.rows_read)
            self.rejected.update(result.rejections.by_reason)
            for key, examples in result.rejections.examples.items():
                self.rejected_examples.setdefault(key, []).extend(examples[:5])
            self.input_info.extend(inputs)
            if result.items is not None:
                self.metadata.append(result.items)
            item_rejections = getattr(result, "item_rejections", None)
            if getattr(result, "items_read", None) is not None:
                self.items_read += int(result.items_read)
            if item_rejections is not None:
                self.items_rejected.update(item_rejections.by_reason)
            rows = store.rows + events.num_rows
            expected = rows if progress >= 1.0 else int(rows / max(progress, 1e-9))
            self.given_histories |= result.given_history is not None
            store.add(events, result.given_history, expected)
            del result, events
        return store

    def _nothing_read(self) -> str:
        """The error when no row of the inputs is usable: what was read and rejected."""
        names = ", ".join(str(p) for p in self.inputs[:3])
        names += ", ..." if len(self.inputs) > 3 else ""
        rejected = sum(self.rejected.values())
        reasons = ", ".join(f"{reason}: {n}" for reason, n in sorted(self.rejected.items()))
        return (
            f"{names}: no usable rows to build examples from; expected at least one "
            f"{self.format} row ({self.rows_read} read, {rejected} rejected"
            + (f" -- {reasons})" if reasons else ")")
        )

    def _results(self) -> Iterator[tuple[ReadResult, list[dict], float]]:
        """The reader's results batch by batch, with their input records and progress.

        The registered readers stream (``pipelines.readers.read_batches``):
        progress is the fraction of the input bytes read so far. A custom
        ``read`` function gets the inputs of a streamable format one at a
        time, else all at once.
        """
        options = self.options
        if not self.custom_reader:
            from pipelines.readers import read_batches

            batches = read_batches(
                self.format,
                [str(p) for p in self.inputs],
                on_bad_rows=options.on_bad_rows,
                batch_bytes=_batch_bytes(options.max_rows_in_memory),
                **options.reader_options(),
            )
            for result in batches:
                yield result, result.inputs, getattr(result, "progress", 1.0)
            return
        groups = [[p] for p in self.inputs]
        if self.format not in STREAMABLE_FORMATS or len(self.inputs) == 1:
            groups = [self.inputs]
        total_bytes = sum(_size(p) for p in self.inputs)
        seen_bytes = 0
        for number, group in enumerate(groups, start=1):
            result = self.read(
                [str(p) for p in group], on_bad_rows=options.on_bad_rows, **options.reader_options()
            )
            seen_bytes += sum(_size(p) for p in group)
            inputs = result.inputs or [file_info(p) for p in _files(group)]
            progress = 1.0 if number == len(groups) else seen_bytes / max(total_bytes, 1)
            yield result, inputs, progress

    def _layout(self) -> str:
        """The layout written: the option, or compact unless the reader gave histories."""
        if self.options.layout is None:
            return "lists" if self.given_histories else "compact"
        if self.options.layout == "compact" and self.given_histories:
            raise ValueError(_COMPACT_NEEDS_CLICKS.format(reader="this reader"))
        return self.options.layout

    # -- the whole job -------------------------------------------------------------------

    def run(self) -> dict:
        options = self.options
        self.bar.stage("read")
        store = self._read_all()
        if store.rows == 0:
            raise ValueError(self._nothing_read())
        ctx = self._context(store)

        self.bar.stage("count")
        counts = np.zeros(len(ctx.items), np.int64)
        clicks = np.zeros(len(ctx.items), np.int64)
        activity = ActivityAccumulator(
            len(ctx.items), sampling=options.negative_sampling, window=options.negative_window
        )
        first_seen = np.full(len(ctx.items), np.iinfo(np.int64).max, np.int64)
        cached = None
        planner = concurrent.futures.ThreadPoolExecutor(1)
        for events, given in store.iter_partitions():
            codes = None if store.spilled else store.codes(ctx.items)
            store.encoded = []
            part = _Partition(events, given, ctx, codes)
            self.rejected[MIN_ITEM_INTERACTIONS_REASON] += part.filtered
            part_counts, part_clicks = part.training_counts()
            counts += part_counts
            clicks += part_clicks
            self.users += len(part.user_ids)
            np.minimum.at(first_seen, part.item, part.time)
            if not ctx.has_impressions:
                activity.add(part.item, part.time, part.label)
            if not store.spilled:
                cached = part
                # Plans need no vocabulary: they run on the other core meanwhile.
                cached.start_plans(planner)
        del events, given, part
        if cached is not None:
            store.tables, store.given = [], []  # the cached partition holds what is needed
        if not self.rejected[MIN_ITEM_INTERACTIONS_REASON]:
            del self.rejected[MIN_ITEM_INTERACTIONS_REASON]

        self.bar.stage("vocabulary")
        metadata = (
            pa.concat_tables(self.metadata, promote_options="permissive") if self.metadata else None
        )
        vocab, ctx.num_id_items, ctx.code_to_index, items, features = build_vocabulary(
            ctx.items, counts, clicks, first_seen, metadata, min_count=options.min_count
        )
        ctx.item_hashes = hash_strings(ctx.items)
        if not ctx.has_impressions:
            ctx.sampler = activity.build()
        del activity
        pq.write_table(items, self.out / "items.parquet")
        (self.out / "features").mkdir()
        for name, table in features.items():
            pq.write_table(table, self.out / "features" / f"{name}.parquet")

        self.bar.stage("examples")
        stats = {split: _SplitStats() for split in SPLITS}
        ctx.layout = self._layout()
        compact = ctx.layout == "compact"
        writers = _SplitWriters(
            self.out,
            self.work,
            spilled=store.spilled,
            schema=COMPACT_EXAMPLES if compact else EXAMPLES,
        )
        partitions = [(None, None)] if cached is not None else store.iter_partitions()
        # The splits are built and written at once, each by its own thread (writing
        # releases the GIL); their chunks are built by the `workers` threads of `pool`.
        with (
            (
                _ClicksWriter(self.out / CLICKS_FILE) if compact else contextlib.nullcontext()
            ) as clicks,
            concurrent.futures.ThreadPoolExecutor(options.workers) as pool,
            concurrent.futures.ThreadPoolExecutor(len(SPLITS)) as split_pool,
        ):
            for index, (events, given) in enumerate(partitions):
                part = cached if cached is not None else _Partition(events, given, ctx)
                cached = None
                part.index_items()
                if clicks is not None:
                    part.click_offset = clicks.write(part.click_index)
                    writers.clicks_rows = clicks.rows
                jobs = [
                    split_pool.submit(
                        _write_split, part, code, index, pool, writers, stats[split], options
                    )
                    for code, split in enumerate(SPLITS)
                ]
                for job in jobs:
                    job.result()
                del part, jobs
        planner.shutdown()
        self.bar.stage("merge")
        writers.finish(max(1, options.max_rows_in_memory // 2))

        self.bar.stage("manifest")
        return self._manifest(store, ctx, vocab, features, stats)

    def _context(self, store: _Store) -> _Context:
        options = self.options
        items = (
            pa.concat_arrays([a.cast(pa.string()) for a in store.item_ids])
            if store.item_ids
            else pa.array([], pa.string())
        )
        items = pc.unique(items)
        items = items.take(pc.array_sort_indices(items))
        keep = None
        if options.min_item_interactions:
            if store.has_impressions:
                raise ValueError(
                    "`min_item_interactions` applies to click logs without impressions. "
                    f"Received: min_item_interactions={options.min_item_interactions} for an "
                    "impression log"
                )
            totals = (
                pa.concat_tables(store.item_events).group_by("item_id").aggregate([("n", "sum")])
            )
            n = np.zeros(len(items), np.int64)
            n[pc.index_in(totals.column("item_id"), items).to_numpy()] = totals.column(
                "n_sum"
            ).to_numpy()
            keep = n >= options.min_item_interactions
        store.item_events = []
        split_mode = options.split_mode_for(self.format)
        if options.valid_start is not None:
            valid_start, test_start = options.valid_start, options.test_start
        elif not store.spilled:
            valid_start, test_start = cutoffs_in_memory(
                np.concatenate([np.zeros(0, np.int64), *store.read_times()]),
                valid_fraction=options.valid_fraction,
                test_fraction=options.test_fraction,
            )
        else:
            valid_start, test_start = time_cutoffs(
                store.read_times,
                valid_fraction=options.valid_fraction,
                test_fraction=options.test_fraction,
            )
        return _Context(
            options=options,
            split_mode=split_mode,
            valid_start=valid_start,
            test_start=test_start,
            items=items,
            keep_item=keep,
            has_impressions=store.has_impressions,
        )

    def _manifest(self, store, ctx, vocab, features, stats) -> dict:
        rows_rejected = int(sum(self.rejected.values()))
        parameters = self.options.to_dict()
        parameters["split_mode"] = ctx.split_mode
        manifest = {
            "format": self.format,
            "created_by": f"feedrec {feedrec_version()}",
            "inputs": self.input_info,
            "parameters": parameters,
            "rows_read": int(self.rows_read),
            "rows_used": int(self.rows_read - rows_rejected),
            "rows_rejected": rows_rejected,
            "rejected_by_reason": {k: int(v) for k, v in sorted(self.rejected.items())},
            "rejected_examples": self.rejected_examples,
            "events": int(store.rows),
            "users": int(self.users),
            "has_impressions": bool(ctx.has_impressions),
            "split_mode": ctx.split_mode,
            "cutoffs": (
                {"valid_start": int(ctx.valid_start), "test_start": int(ctx.test_start)}
                if ctx.split_mode == "time"
                else None
            ),
            "splits": {split: stats[split].to_dict() for split in SPLITS},
            "impressions_without_click": int(
                sum(s.impressions_without_click for s in stats.values())
            ),
            "item_metadata": {
                "rows_read": self.items_read,
                "rows_rejected": int(sum(self.items_rejected.values())),
                "rejected_by_reason": {k: int(v) for k, v in sorted(self.items_rejected.items())},
                "items": int(sum(t.num_rows for t in self.metadata)),
            },
            "num_items": int(vocab.size),
            "num_id_items": int(ctx.num_id_items),
            "feature_vocab_sizes": {name: int(t.num_rows) for name, t in features.items()},
            "history_length": int(self.options.history_length),
            "layout": ctx.layout,
            "num_negatives": int(self.options.negatives),
            "partitions": int(store.partitions),
            "files": {
                "splits": {split: f"{split}.parquet" for split in SPLITS},
                **({"clicks": CLICKS_FILE} if ctx.layout == "compact" else {}),
                "items": "items.parquet",
                "features": {name: f"features/{name}.parquet" for name in features},
            },
        }
        return manifest


def build_vocabulary(
    items: pa.Array,
    counts: np.ndarray,
    clicks: np.ndarray,
    first_seen: np.ndarray,
    metadata: pa.Table | None,
    *,
    min_count: int = 1,
) -> tuple[Vocabulary, int, np.ndarray, pa.Table, dict[str, pa.Table]]:
    """The item vocabulary and ``items.parquet`` from per-item training counts (every engine).

    Args:
        items: the sorted raw item ids; an item's code is its position.
        counts, clicks, first_seen: int64 arrays per item code: the vocabulary
            count and the clicks over the training split, the first event time.
        metadata: the readers' item metadata (MIND ``news.tsv``), or None.
        min_count: int. Defaults to 1.

    Returns:
        ``(vocab, num_id_items, code_to_index, items, features)``: items known
        only from metadata come after the ``num_id_items`` ID items;
        ``code_to_index`` maps item codes to vocabulary indices.
    """
    vocab = Vocabulary.from_counts(items, counts, min_count=min_count)
    num_id_items = vocab.size
    if metadata is not None:  # items with features but no ID embedding (see vocab.py)
        extra = vocab.missing(metadata.column("item_id"))
        extra_codes = _codes(pc.index_in(extra, items))
        vocab = vocab.extended(extra, np.where(extra_codes >= 0, counts[extra_codes], 0))
    code_to_index = vocab.lookup(items)
    vocab_codes = _codes(pc.index_in(vocab.item_ids, items))
    in_log = vocab_codes >= 0
    codes = np.maximum(vocab_codes, 0)
    table, features = items_table(
        vocab,
        first_seen=np.where(in_log, first_seen[codes], np.iinfo(np.int64).max),
        clicks=np.where(in_log, clicks[codes], 0),
        metadata=metadata,
    )
    return vocab, num_id_items, code_to_index, table, features


def cutoffs_in_memory(
    times: np.ndarray, *, valid_fraction: float = 0.1, test_fraction: float = 0.1
) -> tuple[int, int]:
    """:func:`pipelines.splits.time_cutoffs` of times held in memory, by one ``np.partition``.

    Same ranks, same result (tested): ``test_start`` is the
    ``(n - round(n * test_fraction))``-th smallest time, ``valid_start`` the
    ``(n - round(n * (test_fraction + valid_fraction)))``-th.
    """
    check_fractions(valid_fraction, test_fraction)
    n = len(times)
    if n == 0:
        return 0, 0
    test_rank = n - int(round(n * test_fraction))
    valid_rank = n - int(round(n * (test_fraction + valid_fraction)))
    ranks = sorted({rank for rank in (valid_rank, test_rank) if rank < n})
    ordered = np.partition(times, ranks) if ranks else times
    test_start = int(times.max()) + 1 if test_rank >= n else int(ordered[test_rank])
    valid_start = test_start if valid_rank >= test_rank else int(ordered[valid_rank])
    return valid_start, test_start


def _write_split(
    part: _Partition,
    split_code: int,
    index: int,
    pool: concurrent.futures.Executor,
    writers: _SplitWriters,
    stats: _SplitStats,
    options: PrepareOptions,
) -> None:
    """Plan, build (in ``pool``) and write one split of one partition, chunk by chunk."""
    split = SPLITS[split_code]
    plan = part.plan(split_code)
    stats.dropped_min_history += plan.dropped
    stats.impressions_without_click += plan.without_click
    stats.users += plan.users
    writers.open(split, index)
    try:
        chunks = plan.chunks(options.chunk_size)
        for table, oov in _ordered_map(pool, part.build, chunks, options.workers):
            stats.add(table, oov)
            writers.write(split, index, table)
    finally:
        writers.close(split, index)


def _ordered_map(pool, function, items, ahead: int):
    """``pool.map`` that keeps at most ``ahead`` results pending (bounded memory)."""
    pending = collections.deque()
    for item in items:
        pending.append(pool.submit(function, item))
        if len(pending) > ahead:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def feedrec_version() -> str:
    """The version of feedrec (from the package, else from its installed metadata)."""
    try:
        from feedrec import __version__

        return __version__
    except ImportError:  # e.g. `feedrec` shadowed by a namespace package on sys.path
        from importlib import metadata

        try:
            return metadata.version("feedrec")
        except metadata.PackageNotFoundError:
            return "unknown"


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in _files([path]))


def _files(paths) -> list[Path]:
    files = []
    for path in paths:
        path = Path(path)
        files.extend(sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path])
    return files


# --------------------------------------------------------------------------- statistics


@dataclasses.dataclass
class _SplitStats:
    examples: int = 0
    users: int = 0
    candidates: int = 0
    history_oov: int = 0
    candidate_oov: int = 0
    dropped_min_history: int = 0
    impressions_without_click: int = 0

    def add(self, table: pa.Table, oov: tuple[int, int]) -> None:
        self.examples += table.num_rows
        self.history_oov += oov[0]
        self.candidate_oov += oov[1]

    def to_dict(self) -> dict:
        return {
            "examples": self.examples,
            "users": self.users,
            "oov": {"history": self.history_oov, "candidates": self.candidate_oov},
            "dropped_min_history": self.dropped_min_history,
            "impressions_without_click": self.impressions_without_click,
        }


# --------------------------------------------------------------------------- writing


class _SplitWriters:
    """Writers: straight to ``{split}.parquet``, or per-partition runs merged at the end.

    Runs are temporary Arrow IPC files (no encoding cost) of record batches of
    ``_RUN_ROW_GROUP`` rows; the time range of every batch is remembered so
    that the merge reads only the batches overlapping each time slab.
    """

    def __init__(self, out: Path, work: Path, *, spilled: bool, schema: pa.Schema = EXAMPLES):
        self.out, self.work, self.spilled, self.schema = out, work, spilled, schema
        self.clicks_rows: int | None = None  # compact layout: the clicks written so far
        self._writers: dict[tuple[str, int], Any] = {}
        self.batches: dict[str, list[_RunBatch]] = collections.defaultdict(list)
        self._counts: dict[tuple[str, int], int] = collections.Counter()

    def open(self, split: str, partition: int) -> None:
        if self.spilled:
            path = self._run_path(split, partition)
            path.parent.mkdir(parents=True, exist_ok=True)
            writer = pa.ipc.new_file(path, self.schema)
        else:
            writer = pq.ParquetWriter(
                self.out / f"{split}.parquet", self.file_schema(), **_PARQUET_OPTIONS
            )
        self._writers[split, partition] = writer

    def file_schema(self) -> pa.Schema:
        """The schema of the final files; compact ones record their clicks' row count
        (in memory, the one partition's clicks are written before any split)."""
        if self.clicks_rows is None:
            return self.schema
        return self.schema.with_metadata({CLICKS_ROWS_KEY: str(self.clicks_rows)})

    def _run_path(self, split: str, partition: int) -> Path:
        return self.work / "runs" / split / f"run-{partition:05d}.arrow"

    def write(self, split: str, partition: int, table: pa.Table) -> None:
        writer = self._writers[split, partition]
        if not self.spilled:
            writer.write_table(table)
            return
        times = table.column("time").to_numpy()  # sorted: a batch spans first..last
        position = 0
        for batch in table.to_batches(max_chunksize=_RUN_ROW_GROUP):
            if not batch.num_rows:
                continue
            writer.write_batch(batch)
            self.batches[split].append(
                _RunBatch(
                    self._run_path(split, partition),
                    self._counts[split, partition],
                    int(times[position]),
                    int(times[position + batch.num_rows - 1]),
                )
            )
            self._counts[split, partition] += 1
            position += batch.num_rows

    def close(self, split: str, partition: int) -> None:
        self._writers.pop((split, partition)).close()

    def finish(self, slab_rows: int) -> None:
        """Merge each split's runs in (time, example_key) order, one time slab at a time."""
        if self.spilled:
            for split in SPLITS:
                merge_sorted_runs(
                    self.batches[split],
                    self.out / f"{split}.parquet",
                    slab_rows,
                    self.schema,
                    self.file_schema(),
                )


class _ClicksWriter:
    """``clicks.parquet`` of the compact layout: the partitions' clicks, one after another."""

    def __init__(self, path: Path):
        self._writer = pq.ParquetWriter(path, CLICKS, compression="snappy", use_dictionary=False)
        self.rows = 0

    def write(self, item_index: np.ndarray) -> int:
        """Append a partition's clicks (vocabulary indices, in (user, time) order);
        returns where they start."""
        start = self.rows
        self._writer.write_table(
            pa.table({"item_index": pa.array(item_index.astype(np.int32))}, schema=CLICKS)
        )
        self.rows += len(item_index)
        return start

    def __enter__(self) -> _ClicksWriter:
        return self

    def __exit__(self, *exc) -> None:
        self._writer.close()


@dataclasses.dataclass(frozen=True)
class _RunBatch:
    """One record batch of a run file and the time range of its rows."""

    path: Path
    index: int
    first: int
    last: int


def merge_sorted_runs(
    batches: list[_RunBatch],
    path: Path,
    slab_rows: int,
    schema: pa.Schema = EXAMPLES,
    file_schema: pa.Schema | None = None,
) -> None:
    """Merge runs of examples, each sorted by (time, example_key), into one sorted Parquet file.

    Memory is bounded by about ``slab_rows`` examples: slabs are cut at batch
    boundary times so that each holds about ``slab_rows`` rows, and a slab
    reads only the batches whose time range overlaps it.
    """
    readers: dict[Path, pa.ipc.RecordBatchFileReader] = {}

    def batch_of(entry: _RunBatch) -> pa.RecordBatch:
        if entry.path not in readers:
            readers[entry.path] = pa.ipc.open_file(pa.OSFile(str(entry.path)))
        return readers[entry.path].get_batch(entry.index)

    # Slab edges: the first times of batches, every `per_slab` batches (sorted).
    starts = np.sort(np.array([b.first for b in batches], np.int64))
    per_slab = max(1, slab_rows // _RUN_ROW_GROUP)
    edges = [None, *sorted_unique(starts[per_slab::per_slab]).tolist(), None]
    pool = pa.default_memory_pool()
    with pq.ParquetWriter(path, file_schema or schema, **_PARQUET_OPTIONS) as writer:
        for low, high in zip(edges[:-1], edges[1:], strict=True):
            pieces = []
            for entry in batches:
                if (low is not None and entry.last < low) or (
                    high is not None and entry.first >= high
                ):
                    continue
                piece = batch_of(entry)
                times = piece.column("time")
                mask = None
                if low is not None and entry.first < low:
                    mask = pc.greater_equal(times, low)
                if high is not None and entry.last >= high:
                    upper = pc.less(times, high)
                    mask = upper if mask is None else pc.and_(mask, upper)
                pieces.append(piece if mask is None else piece.filter(mask))
            if pieces:
                slab = pa.Table.from_batches(pieces, schema=schema)
                order = _example_order(slab).to_numpy()
                # Small takes: taking list columns needs several times their size.
                for begin in range(0, len(order), _MERGE_PIECE):
                    writer.write_table(slab.take(pa.array(order[begin : begin + _MERGE_PIECE])))
                del slab, pieces
            pool.release_unused()


def _example_order(table: pa.Table) -> pa.Array:
    return pc.sort_indices(table, sort_keys=[("time", "ascending"), ("example_key", "ascending")])


# --------------------------------------------------------------------------- a partition


@dataclasses.dataclass
class _Plan:
    """The examples of one split of one partition, in output order: (time, example_key).

    ``rows`` identify the examples: click indices (``click``), positions of
    clicked rows in the impression rows (``impression_train``) or impression
    groups (``impression_eval``); everything else is derived per chunk.
    """

    kind: str  # "click", "impression_train" or "impression_eval"
    rows: np.ndarray
    dropped: int = 0
    without_click: int = 0
    users: int = 0

    def chunks(self, size: int) -> Iterator[_Plan]:
        for begin in range(0, len(self.rows), size):
            yield dataclasses.replace(self, rows=self.rows[begin : begin + size])


@dataclasses.dataclass
class _Units:
    """Per-example arrays of a chunk (see :meth:`_Partition.units`)."""

    time: np.ndarray
    user: np.ndarray
    head: np.ndarray  # user code (click) or impression group: the key's first part
    tail: np.ndarray  # the key's number (click ordinal, candidate position) or -1
    key_hash: np.ndarray
    session: np.ndarray  # sorted position of the row carrying the session id
    group: np.ndarray  # impression group or -1


class _Partition:
    """The events of one partition of users, as sorted NumPy arrays.

    ``codes`` (in memory: ``_Store.codes``) gives the user codes, user ids and
    item codes of ``events`` already; otherwise the ids are encoded here.
    """

    def __init__(
        self,
        events: pa.Table,
        given: pa.Table | None,
        ctx: _Context,
        codes: tuple[np.ndarray, pa.Array, np.ndarray] | None = None,
    ):
        self.ctx = ctx
        if codes is None:
            item = pc.index_in(events.column("item_id"), ctx.items).to_numpy(zero_copy_only=False)
            users = None
        else:
            users, self.user_ids, item = codes
        item = np.asarray(item, np.int64)
        self.filtered = 0
        if ctx.keep_item is not None:
            keep = ctx.keep_item[item]
            self.filtered = int((~keep).sum())
            if self.filtered:
                events, item = events.filter(pa.array(keep)), item[keep]
                users = None  # re-encoded: some users may have no events left
        row = events.column("_row").to_numpy()
        if len(row) > 1 and not (np.diff(row) > 0).all():
            by_row = np.argsort(row, kind="stable")
            events, item, row = events.take(pa.array(by_row)), item[by_row], row[by_row]
            users = None
        if users is None:
            users, self.user_ids = _encode(events.column("user_id"))
        users = np.asarray(users, np.int64)
        time_ = events.column("time").to_numpy()
        # Sorted by (user, time); ties keep the log order (a stable sort of rows in `_row` order).
        order = user_time_order(users, time_, ctx.options.workers)
        self.user = users[order]
        self.time = time_[order]
        self.item = item[order]
        self.label = events.column("label").to_numpy()[order]
        self.order = order  # sorted position -> row of `events`
        self.sessions = events.column("session_id").combine_chunks()
        self.row = self.impression = None  # impression logs only
        if ctx.has_impressions:
            impressions, self.impression_ids = _encode(events.column("impression_id"))
            self.impression = impressions[order]
            self.row = row[order]
        else:
            self.impression_ids = pa.array([], pa.string())
        clicks = np.flatnonzero(self.label == 1)
        if len(clicks) == len(order):  # every event is a click: no copies
            self.click_user, self.click_time, self.click_item = self.user, self.time, self.item
        else:
            self.click_user = self.user[clicks]
            self.click_time = self.time[clicks]
            self.click_item = self.item[clicks]
        self.click_position = clicks
        # Each user's first click; each click's first click at the same (user, time).
        self.user_first = np.searchsorted(self.click_user, np.arange(len(self.user_ids) + 1))
        new_run = np.ones(len(clicks), bool)
        new_run[1:] = (self.click_user[1:] != self.click_user[:-1]) | (
            self.click_time[1:] != self.click_time[:-1]
        )
        self.click_run_start = np.maximum.accumulate(np.where(new_run, np.arange(len(clicks)), 0))
        self.given = None
        if given is not None and ctx.has_impressions:
            # Align given histories with this partition's impression codes.
            where = pc.index_in(self.impression_ids, given.column("impression_id"))
            self.given = given.column("history").combine_chunks().take(where)
            self.given = pc.fill_null(self.given, pa.scalar([], self.given.type))
        if ctx.has_impressions:
            self._impression_units()
        else:
            self.unit_time, self.unit_user = self.click_time, self.click_user
            self.unit_tiebreak = np.arange(len(clicks))
        if ctx.split_mode == "time":
            self.unit_split = assign_time_splits(
                self.unit_time, valid_start=ctx.valid_start, test_start=ctx.test_start
            )
        else:
            self.unit_split = assign_leave_last_out(
                self.unit_user, self.unit_time, self.unit_tiebreak
            )
        # Vocabulary indices, filled by `index_items` once the vocabulary exists.
        self.click_index = self.row_index = None
        # Where this partition's clicks start in `clicks.parquet` (compact layout).
        self.click_offset = 0

    def _impression_units(self) -> None:
        rows = np.flatnonzero(self.impression >= 0)
        order = np.lexsort((self.row[rows], self.impression[rows]))
        self.imp_rows = rows[order]  # rows of each impression, in log order
        groups = self.impression[self.imp_rows]
        count = len(self.impression_ids)
        self.imp_offsets = np.searchsorted(groups, np.arange(count + 1))
        first = self.imp_rows[self.imp_offsets[:-1]]
        starts = self.imp_offsets[:-1]
        self.unit_time = (
            np.minimum.reduceat(self.time[self.imp_rows], starts)
            if count
            else np.zeros(0, np.int64)
        )
        self.unit_user = self.user[first]
        self.unit_position = first
        self.unit_tiebreak = self.row[first]
        self.imp_group = groups
        clicked = self.label[self.imp_rows] == 1
        pool = np.flatnonzero(~clicked)  # non-clicked positions, grouped by impression
        self.pool_offsets = np.searchsorted(groups[pool], np.arange(count + 1))
        self.pool_positions = pool

    # -- pass A -------------------------------------------------------------------------

    def training_counts(self) -> tuple[np.ndarray, np.ndarray]:
        """Per item code: the vocabulary count and the clicks, over the training split."""
        n = len(self.ctx.items)
        train = self.unit_split == TRAIN
        if not self.ctx.has_impressions:
            clicks = np.bincount(self.click_item[train], minlength=n)
            return clicks, clicks
        in_train = train[self.imp_group]
        rows = self.imp_rows[in_train]
        counts = np.bincount(self.item[rows], minlength=n)
        clicks = np.bincount(self.item[rows[self.label[rows] == 1]], minlength=n)
        if self.given is not None:
            lists = self.given.filter(pa.array(train))
            values = pc.list_flatten(lists)
            codes = _codes(pc.index_in(values, self.ctx.items))
            counts += np.bincount(codes[codes >= 0], minlength=n)
        # Clicks outside impressions, before the user's first non-train impression.
        outside = (self.impression < 0) & (self.label == 1)
        if outside.any():
            end = np.full(len(self.user_ids), np.iinfo(np.int64).max, np.int64)
            np.minimum.at(end, self.unit_user[~train], self.unit_time[~train])
            if self.ctx.split_mode == "time":
                end = np.minimum(end, self.ctx.valid_start)
            before = np.bincount(self.item[outside & (self.time < end[self.user])], minlength=n)
            counts += before
            clicks += before
        return counts, clicks

    # -- pass B -------------------------------------------------------------------------

    def index_items(self) -> None:
        """Vocabulary indices of the clicks and impression rows (once the vocabulary exists)."""
        index = self.ctx.code_to_index
        hashes = getattr(self, "_hashes", None)
        self.user_hashes, self.impression_hashes = (
            self._id_hashes() if hashes is None else hashes.result()
        )
        self.click_index = index[self.click_item]
        # Running count of the clicks without a training ID: a history's OOV count
        # is a difference of two entries.
        self.click_unseen = np.zeros(len(self.click_index) + 1, np.int64)
        np.cumsum(self._unseen_mask(self.click_index), out=self.click_unseen[1:])
        if self.ctx.has_impressions:
            self.row_index = index[self.item[self.imp_rows]]
            self.pool_items = self.item[self.imp_rows[self.pool_positions]]

    def start_plans(self, pool: concurrent.futures.Executor) -> None:
        """Hash the ids and plan every split in ``pool`` now (no vocabulary needed).

        ``index_items`` and ``plan`` then wait for them.
        """
        self._hashes = pool.submit(self._id_hashes)
        self._planned = {code: pool.submit(self._plan, code) for code in range(len(SPLITS))}

    def _id_hashes(self) -> tuple[np.ndarray, np.ndarray]:
        """FNV-1a hashes of the user and impression ids (the example keys start with them)."""
        return hash_strings(self.user_ids), hash_strings(self.impression_ids)

    def plan(self, split: int) -> _Plan:
        """The examples of split ``split`` (a code), in output order."""
        planned = getattr(self, "_planned", {}).pop(split, None)
        return self._plan(split) if planned is None else planned.result()

    def _plan(self, split: int) -> _Plan:
        options = self.ctx.options
        units = np.flatnonzero(self.unit_split == split)
        without_click = 0
        if not self.ctx.has_impressions:
            kind, rows = "click", units
        elif split == TRAIN:
            kind = "impression_train"
            in_split = self.unit_split[self.imp_group] == split
            rows = np.flatnonzero(in_split & (self.label[self.imp_rows] == 1))
            without_click = int(len(units) - len(sorted_unique(self.imp_group[rows])))
        else:
            kind, rows = "impression_eval", units
        dropped = 0
        if options.min_history:
            keep = self._full_history_length(kind, rows) >= options.min_history
            dropped = int((~keep).sum())
            rows = rows[keep]
        if kind == "click":
            times, users = self.click_time[rows], self.click_user[rows]
        else:
            group = self.imp_group[rows] if kind == "impression_train" else rows
            times, users = self.unit_time[group], self.unit_user[group]

        def keys_of(sub: np.ndarray) -> pa.Array:
            arrays = self.units(kind, rows[sub], with_hash=False)
            return self.keys(kind, arrays.head, arrays.tail)

        order = _sorted_by_time_key(times, keys_of)
        return _Plan(
            kind=kind,
            rows=rows[order],
            dropped=dropped,
            without_click=without_click,
            users=int(np.count_nonzero(np.bincount(users, minlength=1))),
        )

    def units(self, kind: str, rows: np.ndarray, *, with_hash: bool = True) -> _Units:
        """The per-example arrays of ``rows`` of a plan of ``kind``."""
        if kind == "click":
            user = self.click_user[rows]
            tail = rows - self.user_first[user]  # the user's n-th click
            hashes = self.user_hashes[user] if with_hash else None
            time_, session, group = self.click_time[rows], self.click_position[rows], None
            head = user
        else:
            group = self.imp_group[rows] if kind == "impression_train" else rows
            user, time_ = self.unit_user[group], self.unit_time[group]
            session, head = self.unit_position[group], group
            hashes = self.impression_hashes[group] if with_hash else None
            tail = rows - self.imp_offsets[group] if kind == "impression_train" else None
        if group is None:
            group = np.full(len(rows), -1, np.int64)
        if tail is None:
            tail = np.full(len(rows), -1, np.int64)
            key_hash = hashes
        else:
            key_hash = hash_append_int(hashes, tail) if with_hash else None
        return _Units(time_, user, head, tail, key_hash, session, group)

    def _full_history_length(self, kind: str, rows: np.ndarray) -> np.ndarray:
        """Each example's history length before truncation."""
        if kind == "click":
            return self.click_run_start[rows] - self.user_first[self.click_user[rows]]
        group = self.imp_group[rows] if kind == "impression_train" else rows
        if self.given is not None:
            return pc.list_value_length(self.given).to_numpy(zero_copy_only=False)[group]
        users = self.unit_user[group]
        _, end = history_bounds(self.click_user, self.click_time, users, self.unit_time[group], 0)
        return end - self.user_first[users]

    def keys(
        self, kind: str, head: np.ndarray, tail: np.ndarray, heads: pa.Array | None = None
    ) -> pa.Array:
        """Example keys: ``{user}/{n}``, ``{impression}/{position}`` or ``{impression}``.

        ``heads`` are the names of ``head`` when the caller has them already.
        """
        if heads is None:
            names = self.user_ids if kind == "click" else self.impression_ids
            heads = names.take(pa.array(head))
        if kind == "impression_eval":
            return heads
        return pc.binary_join_element_wise(heads, pa.array(tail).cast(pa.string()), "/")

    def _unseen_mask(self, indices: np.ndarray) -> np.ndarray:
        """Entries with no training ID: OOV, or known from metadata only."""
        return (indices == OOV_INDEX) | (indices >= self.ctx.num_id_items)

    def _unseen(self, indices: np.ndarray) -> int:
        return int(np.count_nonzero(self._unseen_mask(indices)))

    def build(self, plan: _Plan) -> tuple[pa.Table, tuple[int, int]]:
        """The examples of one chunk of a plan, and their (history, candidates) OOV counts."""
        ctx, options = self.ctx, self.ctx.options
        index = ctx.code_to_index
        kind, rows = plan.kind, plan.rows
        units = self.units(kind, rows)
        length = options.history_length
        compact = ctx.layout == "compact"
        if self.given is not None:
            lists = last_n(self.given.take(pa.array(units.group)), length)
            codes = _codes(pc.index_in(lists.values, ctx.items))
            values = np.where(codes >= 0, index[np.maximum(codes, 0)], OOV_INDEX).astype(np.int32)
            history = pa.ListArray.from_arrays(lists.offsets, pa.array(values, pa.int32()))
            kept = np.diff(lists.offsets.to_numpy())
            history_oov = self._unseen(values)
        else:
            if kind == "click":  # the queries are the clicks themselves
                end = self.click_run_start[rows]
                start = np.maximum(self.user_first[units.user], end - length)
            else:
                start, end = history_bounds(
                    self.click_user, self.click_time, units.user, units.time, length
                )
            history = None if compact else gather_lists(start, end, self.click_index, pa.int32())
            history_start, kept = start + self.click_offset, end - start
            unseen = self.click_unseen
            history_oov = int(unseen[end].sum() - unseen[start].sum())
        if kind == "click":
            positive = self.click_item[rows]
            negatives = ctx.sampler.sample(
                units.key_hash, units.time, positive, options.negatives, options.seed
            )
            matrix = np.empty((len(rows), negatives.shape[1] + 1), np.int32)
            matrix[:, 0] = index[positive]
            matrix[:, 1:] = np.where(negatives >= 0, index[np.maximum(negatives, 0)], -1)
            candidates = matrix_to_lists(matrix)
            labels = _first_is_positive(candidates)
        elif kind == "impression_train":
            offsets, chosen = choose_from_pools(
                stream_keys(options.seed, units.key_hash),
                self.pool_offsets[units.group],
                self.pool_offsets[units.group + 1],
                ctx.item_hashes[self.pool_items],
                options.negatives,
            )
            positives = self.row_index[rows]
            candidates = _prepend(positives, offsets, index[self.pool_items[chosen]])
            labels = _first_is_positive(candidates)
        else:
            start, end = self.imp_offsets[units.group], self.imp_offsets[units.group + 1]
            candidates = gather_lists(start, end, self.row_index, pa.int32())
            labels = gather_lists(start, end, self.label[self.imp_rows], pa.int8())
        candidates = candidates.cast(pa.list_(pa.int32()))
        user_ids = self.user_ids.take(pa.array(units.user))
        table = pa.table(
            {
                "example_key": self.keys(
                    kind, units.head, units.tail, user_ids if kind == "click" else None
                ),
                "user_id": user_ids,
                "time": pa.array(units.time, pa.int64()),
                "impression_id": (
                    self.impression_ids.take(_nullable(units.group))
                    if ctx.has_impressions
                    else pa.nulls(len(rows), pa.string())
                ),
                "session_id": self.sessions.take(pa.array(self.order[units.session])),
                **(
                    {"history_start": pa.array(history_start, pa.int64())}
                    if compact
                    else {"history": history.cast(pa.list_(pa.int32()))}
                ),
                "history_length": pa.array(kept.astype(np.int32)),
                "candidates": candidates,
                "labels": labels.cast(pa.list_(pa.int8())),
            },
            schema=COMPACT_EXAMPLES if compact else EXAMPLES,
        )
        candidate_values = candidates.values.to_numpy(zero_copy_only=False)
        oov = (history_oov, self._unseen(candidate_values))
        return table, oov


def user_time_order(users: np.ndarray, times: np.ndarray, workers: int = 2) -> np.ndarray:
    """Rows sorted by (user, time), ties in row order (a stable sort), on ``workers`` threads.

    Rows are split into ``workers`` ranges of user codes; each range is sorted
    in its own thread (NumPy sorts without the GIL) and the ranges follow one
    another, so the result is the single stable sort's.
    """
    keys = pack_user_time(users, times)[0]
    users = np.asarray(users, np.int64)
    if workers < 2 or len(keys) < 100_000:
        return np.argsort(keys, kind="stable")
    bounds = np.linspace(0, int(users.max()) + 1, workers + 1).astype(np.int64)
    pieces = [
        np.flatnonzero((users >= low) & (users < high))
        for low, high in zip(bounds[:-1], bounds[1:], strict=True)
    ]
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        sorted_pieces = pool.map(lambda rows: rows[np.argsort(keys[rows], kind="stable")], pieces)
        return np.concatenate(list(sorted_pieces))


def _codes(indices: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Int64 positions from ``pc.index_in``, ``-1`` where not found."""
    return pc.fill_null(indices, -1).to_numpy(zero_copy_only=False).astype(np.int64)


def _encode(column: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, pa.Array]:
    """Dictionary codes (int64, ``-1`` for nulls) and the dictionary (string)."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    encoded = array.cast(pa.string()).dictionary_encode()
    codes = pc.fill_null(encoded.indices, -1).to_numpy(zero_copy_only=False).astype(np.int64)
    return codes, encoded.dictionary


def _nullable(codes: np.ndarray) -> pa.Array:
    codes = np.asarray(codes, np.int64)
    return pa.array(np.maximum(codes, 0), mask=codes < 0)


def _sorted_by_time_key(times: np.ndarray, keys_of: Callable[[np.ndarray], pa.Array]) -> np.ndarray:
    """Order by (time, key); keys (``keys_of(rows)``) are only built for equal times."""
    order = np.argsort(times)  # ties are re-sorted by key below, stability is not needed
    sorted_times = times[order]
    tied = np.zeros(len(times), bool)
    if len(times) > 1:
        same = sorted_times[1:] == sorted_times[:-1]
        tied[1:] |= same
        tied[:-1] |= same
    where = np.flatnonzero(tied)
    if len(where):
        subset = order[where]
        sub = pa.table({"time": pa.array(sorted_times[where]), "key": keys_of(subset)})
        sub_order = pc.sort_indices(sub, sort_keys=[("time", "ascending"), ("key", "ascending")])
        order[where] = subset[sub_order.to_numpy()]
    return order


def _first_is_positive(candidates: pa.ListArray) -> pa.ListArray:
    offsets = candidates.offsets.to_numpy().astype(np.int64)
    labels = np.zeros(int(offsets[-1]), np.int8)
    starts = offsets[:-1][np.diff(offsets) > 0]
    labels[starts] = 1
    return pa.ListArray.from_arrays(candidates.offsets, pa.array(labels, pa.int8()))


def _prepend(first: np.ndarray, offsets: np.ndarray, values: np.ndarray) -> pa.ListArray:
    """Lists ``[first[i], *values[offsets[i]:offsets[i+1]]]``."""
    n = len(first)
    new_offsets = np.asarray(offsets, np.int64) + np.arange(n + 1)
    out = np.empty(int(new_offsets[-1]), np.int32)
    heads = np.zeros(len(out), bool)
    heads[new_offsets[:-1]] = True
    out[heads] = first
    out[~heads] = values
    return pa.ListArray.from_arrays(
        pa.array(new_offsets.astype(np.int32)), pa.array(out, pa.int32())
    )
