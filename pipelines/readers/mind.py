"""Reader for MIND (Microsoft News Dataset): ``behaviors.tsv`` + ``news.tsv``.

Input: one MIND split, as a folder, as the distributed zip (its members at the
top level or in one folder), or as the two files themselves. ``news.tsv`` is
optional: without it ``items`` is ``None`` and items are known by id only.

``behaviors.tsv`` (tab-separated, no header, rows in any order) has one
impression per line::

    impression_id  user_id  M/D/YYYY h:mm:ss AM/PM  history  impressions
    58376  U81994  11/12/2019 2:14:46 PM  N138 N64727  N60374-0 N59852-1

Times are taken as UTC. Each impression becomes one event per candidate of
its ``impressions`` column (label 1 = clicked, 0 = shown), all with the
impression's id, user and time; ``given_history`` maps the impression id to
its ``history`` column (raw news ids, oldest first, possibly empty).

Bad impression rows are rejected with the usual keys plus
``empty_impression_id``, ``bad_impression_token`` (a candidate that is not
``<id>-0``/``<id>-1``, or no candidate at all) and ``duplicate_impression_id``
(a later row reusing an id). ``rows_read`` counts impressions.

``news.tsv`` (8 tab-separated columns: id, category, subcategory, title,
abstract, url, title entities, abstract entities) gives ``items``:
``item_id``, ``category``, ``subcategory``, ``title`` (empty ones null). Its
bad rows follow the same ``on_bad_rows`` policy and are counted apart, in
``ReadResult.item_rejections``, under keys prefixed ``news_``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.readers import _files, _table
from pipelines.readers._values import empty_mask, matches, to_numpy_mask
from pipelines.readers.base import OnBadRows, ReadResult, Rejections
from pipelines.schema import EVENTS

BEHAVIORS = "behaviors.tsv"
NEWS = "news.tsv"
BEHAVIORS_COLUMNS = ("impression_id", "user_id", "time", "history", "impressions")
NEWS_COLUMNS = (
    "item_id",
    "category",
    "subcategory",
    "title",
    "abstract",
    "url",
    "title_entities",
    "abstract_entities",
)
ITEM_COLUMNS = ("item_id", "category", "subcategory", "title")
TIME_FORMAT = "%m/%d/%Y %I:%M:%S %p"
_TIME_PATTERN = r"^(\d{1,2})/(\d{1,2})/\d{4} \d{1,2}:\d{2}:\d{2} [AP]M$"
_TOKEN_PATTERN = r"^.+-[01]$"


def read(
    inputs: str | Path | Sequence[str | Path],
    *,
    on_bad_rows: OnBadRows = "error",
    **format_options,
) -> ReadResult:
    """Read one MIND split into canonical events, items and given histories.

    Args:
        inputs: a MIND folder, its zip, or the ``behaviors.tsv`` (and
            ``news.tsv``) files.
        on_bad_rows: ``"error"`` raises ``BadRowError`` at the first bad row
            (of either file); ``"skip"`` drops bad rows and counts them.
        **format_options: none are accepted (``ValueError``).

    Returns:
        A ``ReadResult`` whose ``rows_read`` counts impressions.
    """
    _table.no_format_options("mind", format_options)
    behaviors, news = _locate(inputs)
    rejections = Rejections(on_bad_rows)
    chunk = _table.read_delimited(
        behaviors.name, behaviors.read_bytes(), delimiter="\t", columns=BEHAVIORS_COLUMNS
    )
    _table.check_not_empty(chunk.rows_read, [behaviors], "MIND impression lines")
    milliseconds = _check_behaviors(chunk)
    chunk.table = chunk.table.append_column("milliseconds", pa.array(milliseconds, pa.int64()))
    table, lines = chunk.finish(rejections)
    events, given_history = _events(table, lines, behaviors.name)
    items = item_rejections = items_read = None
    if news is not None:
        item_rejections = Rejections(on_bad_rows)
        items, items_read = _read_news(news, item_rejections)
    return ReadResult(
        events=events,
        rows_read=chunk.rows_read,
        rejections=rejections,
        items=items,
        given_history=given_history,
        inputs=_files.fingerprint([behaviors] + ([news] if news else [])),
        item_rejections=item_rejections,
        items_read=items_read,
    )


def _locate(inputs) -> tuple[_files.Source, _files.Source | None]:
    sources = _files.resolve(
        inputs,
        accept=lambda name: name in (BEHAVIORS, NEWS),
        expected=f"MIND {BEHAVIORS} and {NEWS}",
    )
    found: dict[str, list[_files.Source]] = {BEHAVIORS: [], NEWS: []}
    for source in sources:
        if source.stem not in found:
            raise ValueError(f"{source.name}: not a MIND file; expected {BEHAVIORS} or {NEWS}")
        found[source.stem].append(source)
    for name, matched in found.items():
        if len(matched) > 1:
            raise ValueError(
                f"Expected one MIND split, found {len(matched)} {name} files: "
                f"{[source.name for source in matched]}"
            )
    if not found[BEHAVIORS]:
        raise FileNotFoundError(
            f"No {BEHAVIORS} in the inputs {[str(given) for given in _as_list(inputs)]}; "
            f"found {[source.name for source in sources]}"
        )
    return found[BEHAVIORS][0], (found[NEWS] or [None])[0]


def _as_list(inputs) -> list:
    return [inputs] if isinstance(inputs, str | Path) else list(inputs)


def _check_behaviors(chunk: _table.Chunk) -> np.ndarray:
    """Reject bad impression rows; return each row's time in milliseconds."""
    impression = chunk.column("impression_id")
    chunk.reject(
        empty_mask(impression),
        "empty_impression_id",
        "impression_id",
        "impression id is empty",
        impression,
    )
    user = chunk.column("user_id")
    chunk.reject(empty_mask(user), "empty_user", "user_id", "user id is empty", user)
    text = chunk.column("time")
    milliseconds, failed = parse_mind_time(text)
    chunk.reject(failed, "bad_timestamp", "time", "expected M/D/YYYY h:mm:ss AM/PM", text)
    _reject_bad_candidates(chunk)
    _reject_duplicates(chunk, "impression_id", "duplicate_impression_id", "impression")
    return milliseconds


def _reject_bad_candidates(chunk: _table.Chunk) -> None:
    """Reject rows with a candidate that is not ``<id>-0``/``<id>-1``, or none."""
    raw = chunk.column("impressions")
    tokens = split_ids(raw)
    flat = pc.list_flatten(tokens)
    parents = np.asarray(pc.list_parent_indices(tokens).to_numpy(), dtype=np.int64)
    bad_tokens = np.flatnonzero(~matches(flat, _TOKEN_PATTERN))
    rows, first = np.unique(parents[bad_tokens], return_index=True)
    # Show each row's first bad token, or the whole field when it has none.
    shown = dict(
        zip(rows.tolist(), flat.take(pa.array(bad_tokens[first])).to_pylist(), strict=True)
    )
    counts = np.asarray(pc.list_value_length(tokens).to_numpy(), dtype=np.int64)
    shown.update({int(row): raw[int(row)].as_py() for row in np.flatnonzero(counts == 0)})
    bad = np.zeros(len(raw), dtype=bool)
    bad[list(shown)] = True
    reason = "expected space-separated <news id>-<0|1> candidates"
    chunk.reject(bad, "bad_impression_token", "impressions", reason, shown)


def parse_mind_time(text: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """``M/D/YYYY h:mm:ss AM/PM`` (UTC) to int64 ms, and the mask of bad values."""
    well_formed = matches(text, _TIME_PATTERN)
    stamps = pc.strptime(text, format=TIME_FORMAT, unit="ms", error_is_null=True)
    # strptime rolls impossible dates over (2/30 -> 3/2): check month and day.
    parts = pc.extract_regex(
        pc.if_else(pa.array(well_formed), text, "0/0/"), r"^(?P<m>\d+)/(?P<d>\d+)/"
    )
    same_date = to_numpy_mask(
        pc.and_(
            pc.equal(pc.cast(parts.field("m"), pa.int64()), pc.month(stamps)),
            pc.equal(pc.cast(parts.field("d"), pa.int64()), pc.day(stamps)),
        )
    )
    failed = ~(well_formed & same_date)
    milliseconds = np.array(pc.fill_null(pc.cast(stamps, pa.int64()), 0).to_numpy(), np.int64)
    milliseconds[failed] = 0
    return milliseconds, failed


def split_ids(text: pa.Array) -> pa.ListArray:
    """Whitespace-separated ids to lists, with no empty ids (``""`` -> ``[]``)."""
    lists = pc.utf8_split_whitespace(text)
    flat = pc.list_flatten(lists)
    parents = np.asarray(pc.list_parent_indices(lists).to_numpy(), dtype=np.int64)
    keep = to_numpy_mask(pc.greater(pc.utf8_length(flat), 0))
    counts = np.bincount(parents[keep], minlength=len(text))
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), flat.filter(pa.array(keep)))


def _reject_duplicates(chunk: _table.Chunk, column: str, key: str, what: str) -> None:
    """Reject rows whose ``column`` repeats that of an earlier (good) row."""
    codes = pc.dictionary_encode(chunk.column(column)).indices
    codes = np.asarray(pc.fill_null(codes, -1).to_numpy(), dtype=np.int64)
    good = np.flatnonzero(~chunk.bad)
    _, first = np.unique(codes[good], return_index=True)
    duplicate = np.zeros(len(codes), dtype=bool)
    duplicate[good] = True
    duplicate[good[first]] = False
    chunk.reject(
        duplicate,
        key,
        column,
        f"{what} id already used by an earlier line",
        chunk.column(column),
    )


def _events(table: pa.Table, lines: np.ndarray, name: str) -> tuple[pa.Table, pa.Table]:
    tokens = split_ids(table.column("impressions").combine_chunks())
    flat = pc.list_flatten(tokens)
    parents = pa.array(pc.list_parent_indices(tokens))
    impression = table.column("impression_id").combine_chunks()
    events = pa.table(
        {
            "user_id": table.column("user_id").combine_chunks().take(parents),
            "item_id": pc.utf8_slice_codeunits(flat, 0, -2),
            "time": table.column("milliseconds").combine_chunks().take(parents),
            "label": pc.cast(pc.utf8_slice_codeunits(flat, -1), pa.int8()),
            "impression_id": impression.take(parents),
            "session_id": pa.nulls(len(flat), pa.string()),
            "source_file": pa.repeat(pa.scalar(name, pa.string()), len(flat)),
            "source_line": pa.array(lines, pa.int64()).take(parents),
        },
        schema=EVENTS,
    )
    history = pa.table(
        {
            "impression_id": impression,
            "history": split_ids(table.column("history").combine_chunks()),
        }
    )
    return events, history


def _read_news(source: _files.Source, rejections: Rejections) -> tuple[pa.Table, int]:
    chunk = _table.read_delimited(
        source.name,
        source.read_bytes(),
        delimiter="\t",
        columns=NEWS_COLUMNS,
        include=ITEM_COLUMNS,
    )
    item = chunk.column("item_id")
    chunk.reject(empty_mask(item), "empty_item", "item_id", "news id is empty", item)
    _reject_duplicates(chunk, "item_id", "duplicate_item", "news")
    table, _ = chunk.finish(rejections, prefix="news_")
    columns = {"item_id": table.column("item_id")}
    for name in ITEM_COLUMNS[1:]:
        values = table.column(name).combine_chunks()
        columns[name] = pc.if_else(
            pa.array(empty_mask(values)), pa.nulls(len(values), pa.string()), values
        )
    return pa.table(columns), chunk.rows_read
