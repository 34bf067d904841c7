"""Read a DATA_DIR written by ``feedrec prepare`` (for the model, notebooks and benchmarks).

A DATA_DIR holds ``train.parquet``, ``valid.parquet``, ``test.parquet``
(``pipelines.schema.EXAMPLES``), ``items.parquet`` (``ITEMS``; row ``i`` is
item index ``i``), ``features/{name}.parquet`` (``FEATURE_VOCAB``) and
``manifest.json``. Every loader checks the declared schema.

Example:

>>> manifest = load_manifest("data")                    # doctest: +SKIP
>>> train = load_split("data", "train")                 # doctest: +SKIP
>>> tables, sizes = feature_tables("data")              # doctest: +SKIP
>>> tables["category"][train["candidates"][0][0].as_py()]  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.io import read_json
from pipelines.schema import EXAMPLES, FEATURE_VOCAB, ITEMS, SPLITS, validate

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
    """``{split}.parquet`` (``EXAMPLES``), optionally only some ``columns``."""
    if split not in SPLITS:
        raise ValueError(f"`split` should be one of {SPLITS}. Received: split={split!r}")
    path = _data_dir(data_dir) / f"{split}.parquet"
    table = pq.read_table(path, columns=columns)
    schema = EXAMPLES if columns is None else pa.schema([EXAMPLES.field(c) for c in columns])
    return validate(table, schema, str(path))


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
