"""Read a DATA_DIR written by ``feedrec prepare`` (for the model, notebooks and benchmarks).

A DATA_DIR holds ``train.parquet``, ``valid.parquet``, ``test.parquet``
(``pipelines.schema.EXAMPLES``), ``items.parquet`` (``ITEMS``; row ``i`` is
item index ``i``), ``features/{name}.parquet`` (``FEATURE_VOCAB``) and
``manifest.json``. Every loader checks the declared schema.

In the ``compact`` layout (``feedrec prepare --layout compact``) the split
files hold ``history_start`` instead of the ``history`` lists
(``COMPACT_EXAMPLES``) and ``clicks.parquet`` (``CLICKS``) holds every click
once; :class:`ExamplesFile` reads either layout as ``EXAMPLES``, expanding the
histories of only the rows it returns. Every reader of examples goes through it.

Example:

>>> manifest = load_manifest("data")                    # doctest: +SKIP
>>> train = load_split("data", "train")                 # doctest: +SKIP
>>> tables, sizes = feature_tables("data")              # doctest: +SKIP
>>> tables["category"][train["candidates"][0][0].as_py()]  # doctest: +SKIP
"""

from __future__ import annotations

import functools
import threading
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.io import read_json
from pipelines.schema import (
    CLICKS,
    COMPACT_EXAMPLES,
    EXAMPLES,
    FEATURE_VOCAB,
    ITEMS,
    SPLITS,
    validate,
)
from pipelines.sequences import gather_lists

CLICKS_FILE = "clicks.parquet"
#: Key of the compact split files' Parquet metadata: the row count of the
#: ``clicks.parquet`` written with them (checked when a split is opened).
CLICKS_ROWS_KEY = b"feedrec.clicks_rows"
#: Histories are expanded in pieces of at most this many values (an Arrow list
#: array holds fewer than 2**31).
_MAX_LIST_VALUES = 1 << 30
_CLICKS_LOCK = threading.Lock()

MANIFEST = "manifest.json"


def _data_dir(data_dir: str | Path) -> Path:
    data_dir = Path(data_dir)
    if not (data_dir / MANIFEST).is_file():
        raise FileNotFoundError(
            f"{data_dir}: no {MANIFEST}; is this a directory written by `feedrec prepare`?"
        )
    return data_dir


def load_manifest(data_dir: str | Path) -> dict:
    """The ``manifest.json`` of a DATA_DIR, as a dict."""
    return read_json(_data_dir(data_dir) / MANIFEST)


def load_split(data_dir: str | Path, split: str, columns: list[str] | None = None) -> pa.Table:
    """``{split}.parquet`` (``EXAMPLES``, either layout), optionally only some ``columns``."""
    if split not in SPLITS:
        raise ValueError(f"`split` should be one of {SPLITS}. Received: split={split!r}")
    return ExamplesFile(_data_dir(data_dir) / f"{split}.parquet").read(columns)


def _gather_in_pieces(start: np.ndarray, end: np.ndarray, values: pa.Array) -> pa.ChunkedArray:
    """``gather_lists`` in pieces of about ``_MAX_LIST_VALUES`` values at most, so that
    a split of any size can be expanded (one list array holds fewer than 2**31)."""
    total = np.cumsum(end - start)
    limits = np.arange(_MAX_LIST_VALUES, total[-1] if len(total) else 0, _MAX_LIST_VALUES)
    bounds = [0, *np.searchsorted(total, limits, side="right").tolist(), len(start)]
    pieces = [
        gather_lists(start[a:b], end[a:b], values)
        for a, b in zip(bounds[:-1], bounds[1:], strict=True)
        if b > a
    ]
    return pa.chunked_array(pieces, EXAMPLES.field("history").type)


@functools.lru_cache(maxsize=2)
def _read_clicks(path: str, mtime_ns: int, size: int) -> pa.Array:
    """``clicks.parquet``'s item indices (cached by path, modification time and size)."""
    table = validate(pq.read_table(path), CLICKS, path)
    return table.column("item_index").combine_chunks()


class ExamplesFile:
    """One ``{split}.parquet`` of either layout, read as ``EXAMPLES`` tables.

    The layout is read from the file's own schema: a ``history_start`` column
    means ``compact``, with the clicks in ``clicks.parquet`` beside it (read
    once, when a history is first asked for). The schema is checked before
    any row is read. ``path`` may also be a directory of Parquet parts (the
    Spark engine's output on a URI, copied down), read as one file: its parts
    in name order, their row groups numbered one after another.

    Example:

    >>> examples = ExamplesFile("data/train.parquet")            # doctest: +SKIP
    >>> examples.read(["history", "candidates"])                 # doctest: +SKIP
    >>> for table in examples.iter_tables(8192, columns=["history"]):  # doctest: +SKIP
    ...     ...
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        paths = sorted(self.path.glob("*.parquet")) if self.path.is_dir() else [self.path]
        if not paths:
            raise FileNotFoundError(f"{self.path}: a directory without Parquet parts")
        self.parts = [pq.ParquetFile(p) for p in paths]
        names = self.parts[0].schema_arrow.names
        self.compact = "history_start" in names and "history" not in names
        self.schema = COMPACT_EXAMPLES if self.compact else EXAMPLES
        for where, part in zip(paths, self.parts, strict=True):
            validate(part.schema_arrow.empty_table(), self.schema, str(where))
        self._groups = [
            (part, group) for part in self.parts for group in range(part.metadata.num_row_groups)
        ]
        self._clicks: pa.Array | None = None
        if self.compact:
            self._check_clicks_file()

    def _check_clicks_file(self) -> None:
        """The compact layout's ``clicks.parquet`` exists and is the one written with
        this split (the row count in the split's metadata), from the footers only."""
        path = self.path.with_name(CLICKS_FILE)
        if not path.is_file():
            raise FileNotFoundError(
                f"{self.path} has the compact layout (`history_start`), but {path} "
                "is missing; the histories are stored there"
            )
        written = (self.parts[0].schema_arrow.metadata or {}).get(CLICKS_ROWS_KEY)
        found = pq.read_metadata(path).num_rows
        if written is not None and int(written) != found:
            raise ValueError(
                f"{path} has {found} clicks, but {self.path} was written with "
                f"{int(written)}: the clicks file belongs to another run"
            )

    @property
    def layout(self) -> str:
        return "compact" if self.compact else "lists"

    @property
    def num_rows(self) -> int:
        return sum(part.metadata.num_rows for part in self.parts)

    @property
    def num_row_groups(self) -> int:
        return len(self._groups)

    def stored_columns(self, columns: list[str] | None = None) -> list[str]:
        """The file's columns that give ``columns`` (``EXAMPLES`` names; None = all)."""
        columns = EXAMPLES.names if columns is None else list(columns)
        for name in columns:
            if name not in EXAMPLES.names:
                raise ValueError(
                    f"{self.path}: no examples column {name!r}; columns: {EXAMPLES.names}"
                )
        if not self.compact or "history" not in columns:
            return columns
        stored = [c for c in columns if c != "history"]
        return stored + [c for c in ("history_start", "history_length") if c not in stored]

    def expand(self, table: pa.Table, columns: list[str] | None = None) -> pa.Table:
        """``table`` (read with :meth:`stored_columns`) as the ``EXAMPLES`` ``columns``."""
        columns = EXAMPLES.names if columns is None else list(columns)
        if self.compact and "history" in columns:
            start = table.column("history_start").to_numpy()
            end = start + table.column("history_length").to_numpy()
            clicks = self.clicks()
            if len(start) and (start.min() < 0 or end.max() > len(clicks)):
                raise ValueError(
                    f"{self.path}: `history_start` + `history_length` should lie in "
                    f"[0, {len(clicks)}] (the clicks of {self.path.with_name(CLICKS_FILE)}); "
                    f"received [{int(start.min())}, {int(end.max())}]"
                )
            history = _gather_in_pieces(start, end, clicks)
            table = table.append_column(EXAMPLES.field("history"), history)
        schema = pa.schema([EXAMPLES.field(c) for c in columns])
        return validate(table.select(columns), schema, str(self.path))  # nulls included

    def clicks(self) -> pa.Array:
        """The compact layout's clicks (``clicks.parquet``'s ``item_index``), held in
        memory (4 bytes a click) and shared by every reader of the same file in the
        process (parallel training readers, epochs)."""
        if self._clicks is None:  # its presence was checked on opening
            path = self.path.with_name(CLICKS_FILE)
            stat = path.stat()
            with _CLICKS_LOCK:  # concurrent first readers: one of them reads
                self._clicks = _read_clicks(str(path.resolve()), stat.st_mtime_ns, stat.st_size)
        return self._clicks

    def read(self, columns: list[str] | None = None) -> pa.Table:
        """The whole file (or ``columns``) as one ``EXAMPLES`` table."""
        stored = self.stored_columns(columns)
        table = pa.concat_tables([part.read(columns=stored) for part in self.parts])
        return self.expand(table, columns)

    def take(self, rows: np.ndarray, columns: list[str] | None = None) -> pa.Table:
        """Rows ``rows`` (sorted, unique) of the file, read batch by batch; only
        their histories are expanded."""
        stored = self.stored_columns(columns)
        rows = np.asarray(rows, np.int64)
        pieces, offset = [], 0
        batches = (
            batch
            for part in self.parts
            for batch in part.iter_batches(batch_size=65_536, columns=stored)
        )
        for batch in batches:
            local = rows[(rows >= offset) & (rows < offset + batch.num_rows)] - offset
            if len(local):
                pieces.append(pa.Table.from_batches([batch]).take(pa.array(local)))
            offset += batch.num_rows
        table = (
            pa.concat_tables(pieces)
            if pieces
            else self.parts[0].schema_arrow.empty_table().select(stored)
        )
        return self.expand(table, columns)

    def iter_tables(self, batch_size: int, row_groups=None, columns: list[str] | None = None):
        """``EXAMPLES`` tables of at most ``batch_size`` rows, in file order
        (of the ``row_groups`` given, in that order; all by default)."""
        if row_groups is None:
            row_groups = range(self.num_row_groups)
        stored = self.stored_columns(columns)
        for group in row_groups:
            part, local = self._groups[int(group)]
            for batch in part.iter_batches(
                batch_size=batch_size, row_groups=[local], columns=stored
            ):
                yield self.expand(pa.Table.from_batches([batch]), columns)


def load_items(data_dir: str | Path) -> pa.Table:
    """``items.parquet`` (``ITEMS``): row ``i`` is item index ``i`` (0 padding, 1 OOV)."""
    path = _data_dir(data_dir) / "items.parquet"
    table = validate(pq.read_table(path), ITEMS, str(path))
    index = table.column("item_index").to_numpy()
    if not np.array_equal(index, np.arange(len(index))):
        raise ValueError(f"{path}: `item_index` should equal the row number")
    return table


def load_feature_vocab(data_dir: str | Path, name: str) -> pa.Table:
    """``features/{name}.parquet`` (``FEATURE_VOCAB``): index -> value, 0 = missing."""
    path = _data_dir(data_dir) / "features" / f"{name}.parquet"
    if not path.is_file():
        available = sorted(p.stem for p in path.parent.glob("*.parquet"))
        raise FileNotFoundError(f"{path}: no feature {name!r}; available: {available}")
    return validate(pq.read_table(path), FEATURE_VOCAB, str(path))


def feature_tables(data_dir: str | Path) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """Item index -> feature index arrays, and the feature vocabulary sizes.

    Returns:
        ``(tables, sizes)``: ``tables[name][item_index]`` is the item's index
        in ``features/{name}.parquet`` (int32, 0 = missing), for every feature
        in the manifest; ``sizes[name]`` is that vocabulary's size (missing included).
    """
    manifest = load_manifest(data_dir)
    items = load_items(data_dir)
    tables, sizes = {}, {}
    for name, size in manifest.get("feature_vocab_sizes", {}).items():
        if name not in items.column_names:
            raise ValueError(f"{data_dir}: feature {name!r} is in the manifest but not in items")
        values = items.column(name).to_numpy().astype(np.int32)
        if len(values) and (values.min() < 0 or values.max() >= size):
            raise ValueError(
                f"{data_dir}: feature {name!r} has indices outside [0, {size}); "
                f"received [{values.min()}, {values.max()}]"
            )
        tables[name], sizes[name] = values, int(size)
    return tables, sizes
