"""Readers on Spark: raw files -> canonical events, parsed inside Spark tasks.

The local readers (``pipelines.readers``) already define every format, every
validation rule and every rejection reason; here they run *inside* Spark
tasks, one source file (or zip member) at a time, so that the rows are
parsed and processed by Spark and never gathered on the driver:

1. **resolve** (driver): the inputs become an ordered list of
   :class:`SourceSpec` -- exactly the sources, names and order of the local
   reader. Local paths are resolved by ``pipelines.readers._files``;
   URIs (``s3a://``, ``gs://``, ``hdfs://``, ``file:///``, ...) are listed
   through Spark's Hadoop file system (directories, globs, zip archives).
2. **load + parse** (tasks): local files are opened by the tasks; URIs are
   loaded with Spark's ``binaryFile`` source (zip members extracted in a
   task). A task parses its sources with the local format code -- the text
   files of one reader call together, as the local reader batches them --
   and writes what it found with pyarrow (:data:`PARSED_SCHEMAS`: events,
   MIND's given histories and item metadata) into a work folder. It returns
   one accounting row: ``rows_read``, rejections by reason, their first
   examples, the first error, and the files it wrote.

Every event carries ``(_src, _pos)``: its source's position in the read
order and its position in what that task parsed. Ordering by them
reproduces the local engine's row order, which breaks ties between events at
the same time.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import io
import itertools
import json
import re
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.readers import _files, _table, events, globo, mind, sequences
from pipelines.readers.base import BadRowError, Rejections
from pipelines.schema import EVENTS as CANONICAL

EVENTS, GIVEN, ITEMS = "events", "given", "items"
_STRING_LIST = pa.list_(pa.string())

#: What the parse tasks write, per kind of table: canonical events (with their
#: place in the read order), given histories (MIND) and item metadata (MIND).
PARSED_SCHEMAS = {
    EVENTS: pa.schema(
        [
            ("user_id", pa.string()),
            ("item_id", pa.string()),
            ("time", pa.int64()),
            ("label", pa.int8()),
            ("impression_id", pa.string()),
            ("session_id", pa.string()),
            ("_src", pa.int64()),
            ("_pos", pa.int64()),
        ]
    ),
    GIVEN: pa.schema([("impression_id", pa.string()), ("history", _STRING_LIST)]),
    ITEMS: pa.schema(
        [
            ("item_id", pa.string()),
            ("category", pa.string()),
            ("subcategory", pa.string()),
            ("_src", pa.int64()),
            ("_pos", pa.int64()),
        ]
    ),
}
#: The parse tasks' output: one accounting row per source (or slice of a call's sources).
STATS_DDL = "src bigint, stats string"
_SOURCE_DDL = (
    "src bigint, grp int, role string, name string, path string, member string, data binary"
)
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:(//|/)")


@dataclasses.dataclass(frozen=True)
class SourceSpec:
    """One raw input stream, as the local reader would see it.

    Attributes:
        src: position in the read order.
        group: the local engine's reader call the source belongs to (rejection
            examples are capped per call, 5 per reason).
        role: ``"behaviors"``/``"news"`` for MIND, else ``""``.
        name: the display name (``source_file``, error messages).
        path: the local file (the archive of a member), or None for a URI.
        uri: the file's URI when it is read through Spark's file system, else None.
        member: the zip member, or None.
    """

    src: int
    group: int
    role: str
    name: str
    path: str | None
    uri: str | None
    member: str | None


@dataclasses.dataclass(frozen=True)
class _Format:
    accept: Callable[[str], bool]
    expected: str
    streamable: bool


_FORMATS = {
    "globo": _Format(
        lambda name: fnmatch.fnmatch(name, globo.FILE_PATTERN),
        f"Globo click files ({globo.FILE_PATTERN})",
        True,
    ),
    "events": _Format(
        events._is_log_file,
        "event log files (.csv, .tsv, .parquet, .jsonl, optionally .gz)",
        True,
    ),
    "sequences": _Format(
        lambda name: name.lower().endswith(".txt"),
        "user-item sequence files (.txt, optionally .gz)",
        False,
    ),
    "mind": _Format(
        lambda name: name in (mind.BEHAVIORS, mind.NEWS),
        f"MIND {mind.BEHAVIORS} and {mind.NEWS}",
        False,
    ),
}
#: What the local readers expect when the inputs hold no row at all.
NOT_EMPTY = {
    "globo": "at least one event",
    "events": "at least one event",
    "sequences": "`user item` lines",
}


def is_uri(path: str | Path) -> bool:
    """Whether ``path`` is a URI read through Spark's file systems (``s3a://b/k``, ``file:///x``)."""
    return isinstance(path, str) and bool(_URI.match(path))


def check_reader_options(format: str, reader_options: dict[str, Any]) -> None:
    """The local readers' checks of their options (raise ``ValueError`` the same way)."""
    if format == "events":
        events_spec(reader_options)
    elif reader_options:
        _table.no_format_options(format, reader_options)


def events_spec(reader_options: dict[str, Any]) -> events.EventColumns:
    """The ``events`` reader's column mapping for the prepare options."""
    names = {"user_col": "user", "item_col": "item", "time_col": "time", "event_col": "event"}
    names.update(impression_col="impression", session_col="session", time_unit="time_unit")
    return events.EventColumns(**{names[key]: value for key, value in reader_options.items()})


# --------------------------------------------------------------------------- resolving


def resolve(format: str, inputs: list, spark=None) -> list[SourceSpec]:
    """The sources behind ``inputs``, in the local reader's order and with its names.

    Args:
        format: one of ``"mind"``, ``"events"``, ``"globo"``, ``"sequences"``.
        inputs: paths (files, directories, globs, zip archives) or URIs.
        spark: the SparkSession, needed only for URIs.

    Raises:
        FileNotFoundError, ValueError: as the local readers do.
    """
    spec = _FORMATS[format]
    found: list[tuple[int, _files.Source, str | None]] = []  # (group, source, uri)
    for group, given in enumerate(inputs):
        if is_uri(str(given)):
            found.extend((group, *pair) for pair in _remote_sources(spark, str(given), spec))
        else:
            found.extend(
                (group, source, None)
                for source in _files.resolve([given], accept=spec.accept, expected=spec.expected)
            )
    if format == "mind":
        found = _mind_sources(found, inputs)
    if not spec.streamable or len(inputs) == 1:
        found = [(0, source, uri) for _, source, uri in found]
    return [
        SourceSpec(
            src=position,
            group=group,
            role=source.stem if format == "mind" else "",
            name=source.name,
            path=None if uri else str(source.path),
            uri=uri,
            member=source.member,
        )
        for position, (group, source, uri) in enumerate(found)
    ]


def _mind_sources(found, inputs):
    """One ``behaviors.tsv`` and at most one ``news.tsv`` (the checks of ``mind._locate``)."""
    by_stem: dict[str, list] = {mind.BEHAVIORS: [], mind.NEWS: []}
    for item in found:
        stem = item[1].stem
        if stem not in by_stem:
            raise ValueError(
                f"{item[1].name}: not a MIND file; expected {mind.BEHAVIORS} or {mind.NEWS}"
            )
        by_stem[stem].append(item)
    for name, matched in by_stem.items():
        if len(matched) > 1:
            raise ValueError(
                f"Expected one MIND split, found {len(matched)} {name} files: "
                f"{[item[1].name for item in matched]}"
            )
    if not by_stem[mind.BEHAVIORS]:
        raise FileNotFoundError(
            f"No {mind.BEHAVIORS} in the inputs {[str(given) for given in inputs]}; "
            f"found {[item[1].name for item in found]}"
        )
    return by_stem[mind.BEHAVIORS] + by_stem[mind.NEWS]


def _remote_sources(spark, given: str, spec: _Format) -> list[tuple[_files.Source, str]]:
    """Sources of one URI (file, directory, glob or zip), listed by Spark's Hadoop file system."""
    if spark is None:
        raise ValueError(f"reading {given!r} needs a SparkSession")
    jvm = spark.sparkContext._jvm
    path = jvm.org.apache.hadoop.fs.Path(given)
    fs = path.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
    statuses = list(fs.globStatus(path) or [])
    globbed = bool(_files._GLOB_CHARS.search(given))
    if not statuses:
        raise FileNotFoundError(f"{given}: no such file or directory (expected {spec.expected})")
    if not globbed and statuses[0].isDirectory():
        listed = sorted(fs.listStatus(statuses[0].getPath()), key=lambda s: s.getPath().getName())
        files = [(s.getPath().toString(), False) for s in listed if s.isFile()]
        where = "directory"
    elif not globbed:
        files = [(statuses[0].getPath().toString(), True)]
        where = ""
    else:
        files = [(s.getPath().toString(), False) for s in statuses if s.isFile()]
        where = "glob"
    zips = [uri for uri, _ in files if uri.lower().endswith(".zip")]
    members = _zip_members(spark, zips) if zips else {}
    found = []
    for uri, explicit in files:
        name = given if explicit else uri
        base = PurePosixPath(uri).name
        if uri in members:
            kept = [
                member
                for member in members[uri]
                if spec.accept(_files._strip_gz(PurePosixPath(member).name))
                and not PurePosixPath(member).name.startswith(".")
                and not member.startswith("__MACOSX/")
            ]
            if explicit and not kept:
                raise FileNotFoundError(f"{name}: zip archive holds no {spec.expected}")
            found.extend((_files.Source(f"{name}:{m}", Path(base), m), uri) for m in kept)
        elif (explicit or spec.accept(_files._strip_gz(base))) and not base.startswith("."):
            found.append((_files.Source(name, Path(base)), uri))
    if not found and where:
        raise FileNotFoundError(f"{given}: {where} holds no {spec.expected}")
    return found


def _zip_members(spark, uris: list[str]) -> dict[str, list[str]]:
    """Member names of remote zip archives (checked safe), listed in a Spark job."""

    def list_members(batches):
        for batch in batches:
            for row in batch.to_pylist():
                with zipfile.ZipFile(io.BytesIO(row["content"])) as archive:
                    infos = archive.infolist()
                for info in infos:
                    _files.check_member_name(row["path"], info.filename)
                names = [info.filename for info in infos if not info.is_dir()]
                yield pa.RecordBatch.from_pylist(
                    [{"path": row["path"], "members": names}],
                    schema=pa.schema([("path", pa.string()), ("members", _STRING_LIST)]),
                )

    files = spark.read.format("binaryFile").load(uris).select("path", "content")
    rows = files.mapInArrow(list_members, "path string, members array<string>").collect()
    return {row["path"]: list(row["members"]) for row in rows}


# --------------------------------------------------------------------------- loading


def fingerprints(spark, sources: list[SourceSpec]) -> list[dict]:
    """The manifest's ``inputs``: ``{"path", "bytes", "sha256"}`` per physical file and call.

    Local files are hashed on the driver (as the local engine does); URIs in a
    Spark job, so that their bytes never travel to the driver.
    """
    remote = sorted({s.uri for s in sources if s.uri})
    digests: dict[str, tuple[int, str]] = {}
    if remote:

        def digest(batches):
            for batch in batches:
                paths = batch.column("path").to_pylist()
                contents = batch.column("content").to_pylist()
                yield pa.RecordBatch.from_pydict(
                    {
                        "path": paths,
                        "bytes": [len(c) for c in contents],
                        "sha256": [hashlib.sha256(c).hexdigest() for c in contents],
                    }
                )

        frame = spark.read.format("binaryFile").load(remote).select("path", "content")
        for row in frame.mapInArrow(digest, "path string, bytes bigint, sha256 string").collect():
            digests[row["path"]] = (row["bytes"], row["sha256"])
    records: list[dict] = []
    for group in sorted({s.group for s in sources}):
        members = [s for s in sources if s.group == group]
        local = [_files.Source(s.name, Path(s.path), s.member) for s in members if s.path]
        records.extend(_files.fingerprint(local))
        seen = set()
        for s in members:
            if s.uri and s.uri not in seen:
                seen.add(s.uri)
                size, sha = digests[s.uri]
                path = s.name.rsplit(":", 1)[0] if s.member else s.name
                records.append({"path": path, "bytes": size, "sha256": sha})
    return records


def parse(
    spark, format: str, sources: list[SourceSpec], *, on_bad_rows: str, reader_options, out: str
):
    """A DataFrame of :data:`STATS_DDL` rows (lazy): collecting it parses the sources, whose
    tables the tasks write under ``out`` (a local folder or a URI) with pyarrow; each
    accounting row lists the files its task wrote (``stats["files"]``)."""
    slots = max(1, min(len(sources), 4 * spark.sparkContext.defaultParallelism))
    rows = [(s.src, s.group, s.role, s.name, s.path, s.member, None) for s in sources if s.path]
    frames = []
    if rows:  # local files: the tasks open them, in contiguous slices of the read order
        local = spark.sparkContext.parallelize(rows, slots)
        frames.append(spark.createDataFrame(local, _SOURCE_DDL))
    remote = [s for s in sources if s.uri]
    if remote:  # loaded by Spark (a task per file), then spread over the tasks
        frames.append(_load_remote(spark, remote).repartition(slots, "src"))
    frame = frames[0] if len(frames) == 1 else frames[0].unionByName(frames[1])
    task = _ParseTask(format, on_bad_rows, dict(reader_options), out)
    return frame.mapInArrow(task, STATS_DDL)


def _load_remote(spark, sources: list[SourceSpec]):
    """Rows of ``_SOURCE_DDL`` with the bytes of each remote source (members extracted)."""
    by_uri: dict[str, list[tuple]] = {}
    for s in sources:
        by_uri.setdefault(s.uri, []).append((s.src, s.group, s.role, s.name, s.member))

    def explode(batches):
        for batch in batches:
            for row in batch.to_pylist():
                archive = None
                for src, group, role, name, member in by_uri.get(row["path"], []):
                    if member is None:
                        data = row["content"]
                    else:
                        archive = archive or zipfile.ZipFile(io.BytesIO(row["content"]))
                        data = archive.read(member)
                    yield pa.RecordBatch.from_pylist(
                        [
                            {
                                "src": src,
                                "grp": group,
                                "role": role,
                                "name": name,
                                "path": None,
                                "member": member,
                                "data": data,
                            }
                        ],
                        schema=_SOURCE_SCHEMA,
                    )

    files = spark.read.format("binaryFile").load(sorted(by_uri)).select("path", "content")
    return files.mapInArrow(explode, _SOURCE_DDL)


_SOURCE_SCHEMA = pa.schema(
    [
        ("src", pa.int64()),
        ("grp", pa.int32()),
        ("role", pa.string()),
        ("name", pa.string()),
        ("path", pa.string()),
        ("member", pa.string()),
        ("data", pa.binary()),
    ]
)


@dataclasses.dataclass(frozen=True)
class _BytesSource(_files.Source):
    """A source whose (possibly gzipped) bytes were loaded by Spark."""

    data: bytes = b""

    def read_bytes(self) -> bytes:
        return _files.gunzip(self.name, self.data)


# --------------------------------------------------------------------------- parsing


@dataclasses.dataclass(frozen=True)
class _ParseTask:
    """The ``mapInArrow`` function: parse each source of a partition with the local code."""

    format: str
    on_bad_rows: str
    reader_options: dict
    out: str

    def __call__(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        rows = sorted((row for batch in batches for row in batch.to_pylist()), key=_src)
        if self.format not in ("globo", "events"):
            for row in rows:
                yield from self.parse([row])
            return
        for _, group in itertools.groupby(rows, key=lambda row: row["grp"]):
            yield from self.parse(list(group))  # text files of a call parse together

    def parse(self, rows: list[dict]) -> Iterator[pa.RecordBatch]:
        """Parse consecutive sources of one reader call; their rows and one accounting row
        (keyed by the first source)."""
        sources = [_source_of(row) for row in rows]
        rejections = Rejections(self.on_bad_rows)
        stats: dict[str, Any] = {"rows_read": 0, "error": None, "group": rows[0]["grp"]}
        try:
            out = self._parse(sources, rows[0]["role"], rejections, stats)
        except (ValueError, OSError) as err:
            stats["error"] = error_record(err)
            out = []
        stats["by_reason"] = dict(rejections.by_reason)
        stats["examples"] = {key: list(shown) for key, shown in rejections.examples.items()}
        src_of = {row["name"]: row["src"] for row in rows}
        first = rows[0]["src"]
        stats["files"] = {}
        for kind, table in out:
            if kind == EVENTS:
                if len(rows) > 1:
                    names = table.column("source_file").to_pylist()
                    src = pa.array([src_of[name] for name in names], pa.int64())
                else:
                    src = pa.array(np.full(table.num_rows, first, np.int64))
                table = table.append_column("_src", src)
            elif kind == ITEMS:
                table = table.append_column("_src", pa.array(np.full(table.num_rows, first)))
            if kind != GIVEN:
                positions = np.arange(table.num_rows, dtype=np.int64)
                table = table.append_column("_pos", pa.array(positions))
            stats["files"][kind] = self._write(kind, first, table)
        yield pa.RecordBatch.from_pydict(
            {"src": [first], "stats": [json.dumps(stats)]},
            schema=pa.schema([("src", pa.int64()), ("stats", pa.string())]),
        )

    def _write(self, kind: str, first: int, table: pa.Table) -> str:
        """Write one table of the parsed rows; its path (unique to the task attempt)."""
        from pyspark import TaskContext

        from pipelines.spark.writer import filesystem

        context = TaskContext.get()
        attempt = f"a{context.attemptNumber()}-{context.taskAttemptId()}" if context else "local"
        fs, root = filesystem(self.out)
        folder = f"{root}/{kind}"
        fs.create_dir(folder, recursive=True)
        path = f"{folder}/part-{first:06d}-{attempt}.parquet"
        schema = PARSED_SCHEMAS[kind]
        pq.write_table(table.select(schema.names).cast(schema), path, filesystem=fs)
        return path if "://" not in self.out else f"{self.out}/{kind}/{path.rsplit('/', 1)[1]}"

    def _parse(self, sources, role, rejections, stats) -> list[tuple[int, pa.Table]]:
        if self.format == "mind":
            return _parse_mind(sources[0], role, rejections, stats)
        if self.format == "sequences":
            (source,) = sources
            chunk = _table.read_delimited(
                source.name,
                source.read_bytes(),
                delimiter=_table.WHITESPACE,
                columns=sequences.COLUMNS,
            )
            stats["rows_read"] = chunk.rows_read
            table, _ = chunk.finish(rejections)
            rows = table.num_rows
            return [
                (
                    EVENTS,
                    pa.table(
                        {
                            "user_id": table.column("user_id"),
                            "item_id": table.column("item_id"),
                            "time": pa.array(np.zeros(rows, np.int64)),  # set by position later
                            "label": pa.array(np.ones(rows, np.int8)),
                            "impression_id": pa.nulls(rows, pa.string()),
                            "session_id": pa.nulls(rows, pa.string()),
                        }
                    ),
                )
            ]
        spec = globo.COLUMNS if self.format == "globo" else events_spec(self.reader_options)
        tables = []
        for chunk in events._chunks(sources, spec, "auto", None):
            stats["rows_read"] += chunk.rows_read
            tables.append(events._to_events(chunk, spec, rejections))
        columns = CANONICAL.names[:6] + ["source_file"]
        return [(EVENTS, pa.concat_tables([t.select(columns) for t in tables]))]


def _src(row: dict) -> int:
    return row["src"]


def _source_of(row: dict) -> _files.Source:
    """The reader's view of a source row: a local file (or member), or bytes Spark loaded."""
    if row["data"] is not None:
        base = PurePosixPath(row["member"] or row["name"]).name
        return _BytesSource(row["name"], Path(base), None, row["data"])
    return _files.Source(row["name"], Path(row["path"]), row["member"])


def _parse_mind(source, role, rejections, stats) -> list[tuple[int, pa.Table]]:
    """One MIND file: ``behaviors.tsv`` (events, given histories) or ``news.tsv`` (items)."""
    if role == mind.NEWS:
        item_rejections = Rejections(rejections.on_bad_rows)
        items, items_read = mind._read_news(source, item_rejections)
        stats.update(
            items_read=items_read,
            item_by_reason=dict(item_rejections.by_reason),
            items=items.num_rows,
        )
        return [(ITEMS, items.select(["item_id", "category", "subcategory"]))]
    chunk = _table.read_delimited(
        source.name, source.read_bytes(), delimiter="\t", columns=mind.BEHAVIORS_COLUMNS
    )
    stats["rows_read"] = chunk.rows_read
    _table.check_not_empty(chunk.rows_read, [source], "MIND impression lines")
    milliseconds = mind._check_behaviors(chunk)
    chunk.table = chunk.table.append_column("milliseconds", pa.array(milliseconds, pa.int64()))
    table, lines = chunk.finish(rejections)
    found, given = mind._events(table, lines, source.name)
    columns = CANONICAL.names[:6]
    return [(EVENTS, found.select(columns)), (GIVEN, given)]


# --------------------------------------------------------------------------- errors


def error_record(err: Exception) -> dict:
    """A JSON-able record of a reader error, re-raised on the driver by :func:`raise_error`."""
    record = {"type": type(err).__name__, "message": str(err)}
    if isinstance(err, BadRowError):
        record["bad_row"] = [err.file, err.line, err.field, err.reason]
    return record


def raise_error(record: dict) -> None:
    """Raise the error described by :func:`error_record` (a ``BadRowError`` stays one)."""
    message = record["message"]
    if "bad_row" in record:
        err = BadRowError(*record["bad_row"])
        err.args = (message,)
        raise err
    if record["type"] in ("FileNotFoundError", "NotADirectoryError"):
        raise FileNotFoundError(message)
    raise ValueError(message)
