"""Export a run as a SavedModel that TensorFlow Serving loads.

``export_run(RUN_DIR, EXPORT_BASE)`` writes ``EXPORT_BASE/<version>/`` where
``<version>`` is the next integer (TF Serving serves the highest). The
SavedModel is first written to a hidden temporary directory beside it
(TF Serving ignores names that are not integers) and renamed into place, so
an interrupted export never leaves a version directory behind, and an
existing version is never overwritten.

Signatures (all take the **raw item ids of the log** as strings):

* ``serving_default``: ``history`` ``tf.string [batch, None]`` (a user's
  clicks, oldest first, right-padded with ``""``) and ``candidates``
  ``tf.string [batch, None]`` -> ``scores`` ``float32 [batch, num_candidates]``.
* ``user_embedding``: ``history`` -> ``user_embedding`` ``float32 [batch, dim]``.
* ``item_embedding``: ``items`` ``tf.string [None]`` -> ``item_embedding``
  ``float32 [None, dim]``.

Inside the graph: raw ids are mapped to vocabulary indices with a static hash
table (unknown ids -> OOV, ``""`` -> padding); item features are looked up
from the item table the model carries; a history longer than the model's L is
truncated to its most recent L clicks; an empty history is valid.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np

from pipelines.schema import OOV_INDEX, PADDING_INDEX

logger = logging.getLogger(__name__)

_VERSION = re.compile(r"^\d+$")


def next_version(export_base: str | Path) -> int:
    """One more than the highest integer version under ``export_base`` (1 if none)."""
    export_base = Path(export_base)
    versions = (
        [int(p.name) for p in export_base.iterdir() if _VERSION.match(p.name)]
        if (export_base.is_dir())
        else []
    )
    return max(versions, default=0) + 1


ITEMS_ASSET = "items.tsv"


def write_item_vocabulary(item_ids: list[str], path: str | Path) -> Path:
    """``raw_id<TAB>index`` lines for real items (index >= 2): the export's id table."""
    bad = [i for i in item_ids[2:] if not i or "\t" in i or "\n" in i or "\r" in i]
    if bad:
        raise ValueError(f"item ids must be non-empty without tabs/newlines; received {bad[:3]}")
    lines = "".join(f"{item}\t{index}\n" for index, item in enumerate(item_ids) if index >= 2)
    Path(path).write_text(lines, encoding="utf-8")
    return Path(path)


def build_serving_module(model, vocabulary_file: str | Path, history_length: int):
    """A ``tf.Module`` with the three serving functions around a trained model.

    ``vocabulary_file`` (see :func:`write_item_vocabulary`) becomes a SavedModel
    asset from which the in-graph id table is initialised.
    """
    import tensorflow as tf

    class FeedRecServing(tf.Module):
        def __init__(self):
            super().__init__(name="feedrec_serving")
            self.model = model
            self.vocabulary = tf.saved_model.Asset(str(vocabulary_file))
            self.item_table = tf.lookup.StaticHashTable(
                tf.lookup.TextFileInitializer(
                    self.vocabulary,
                    key_dtype=tf.string,
                    key_index=0,
                    value_dtype=tf.int64,
                    value_index=1,
                    delimiter="\t",
                ),
                default_value=OOV_INDEX,
            )
            self.history_length = history_length

        def _lookup(self, ids):
            index = tf.cast(self.item_table.lookup(ids), tf.int32)
            return tf.where(tf.equal(ids, ""), tf.constant(PADDING_INDEX, tf.int32), index)

        def _history(self, history):
            """Raw ids -> (indices (B, L) right-padded, lengths (B,)), most recent L kept."""
            real = tf.not_equal(history, "")
            ragged = tf.ragged.boolean_mask(self._lookup(history), real)
            lengths = ragged.row_lengths()
            start = tf.maximum(lengths - self.history_length, 0)
            kept = tf.RaggedTensor.from_row_lengths(
                tf.gather(
                    ragged.flat_values, _ranges(ragged.row_starts() + start, lengths - start)
                ),
                lengths - start,
            )
            dense = kept.to_tensor(default_value=PADDING_INDEX, shape=[None, self.history_length])
            return dense, tf.cast(lengths - start, tf.int32)

        @tf.function(
            input_signature=[
                tf.TensorSpec([None, None], tf.string, name="history"),
                tf.TensorSpec([None, None], tf.string, name="candidates"),
            ]
        )
        def serve(self, history, candidates):
            tf.debugging.assert_equal(
                tf.shape(history)[0],
                tf.shape(candidates)[0],
                message="`history` and `candidates` must have the same batch size",
            )
            indices, lengths = self._history(history)
            scores = self.model(
                {
                    "history": indices,
                    "history_length": lengths,
                    "candidates": self._lookup(candidates),
                },
                training=False,
            )
            return {"scores": tf.cast(scores, tf.float32)}

        @tf.function(input_signature=[tf.TensorSpec([None, None], tf.string, name="history")])
        def user_embedding(self, history):
            indices, lengths = self._history(history)
            vectors = self.model.user_embedding(indices, lengths, training=False)
            return {"user_embedding": tf.cast(vectors, tf.float32)}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="items")])
        def item_embedding(self, items):
            vectors = self.model.item_embedding(self._lookup(items))
            return {"item_embedding": tf.cast(vectors, tf.float32)}

    def _ranges(starts, lengths):
        # flat indices [s0, s0+1, ..., s0+n0-1, s1, ...] without Python loops
        row = tf.repeat(tf.range(tf.size(lengths, out_type=tf.int64)), lengths)
        offset = tf.range(tf.reduce_sum(lengths)) - tf.repeat(
            tf.cumsum(lengths, exclusive=True), lengths
        )
        return tf.gather(starts, row) + offset

    return FeedRecServing()


def export_run(run_dir: str | Path, export_base: str | Path) -> Path:
    """Export ``run_dir`` to ``export_base/<next version>/`` atomically; returns the path."""
    import keras
    import pyarrow.parquet as pq

    from feedrec.runs import check_run_dir, read_json

    run_dir = check_run_dir(run_dir)
    export_base = Path(export_base)
    export_base.mkdir(parents=True, exist_ok=True)
    model = keras.models.load_model(run_dir / "model.keras", compile=False)
    config = read_json(run_dir / "config.json")
    item_ids = pq.read_table(run_dir / "items.parquet", columns=["item_id"]).column(0).to_pylist()
    tmp = Path(tempfile.mkdtemp(prefix=".export-tmp-", dir=export_base))
    try:
        with tempfile.TemporaryDirectory() as scratch:
            vocabulary = write_item_vocabulary(item_ids, Path(scratch) / ITEMS_ASSET)
            module = build_serving_module(model, vocabulary, int(config["model"]["history_length"]))
            _save(module, tmp)
        while True:
            target = export_base / str(next_version(export_base))
            try:
                os.rename(tmp, target)  # fails if target exists: never overwrite a version
                break
            except OSError:
                if not target.exists():
                    raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    size = sum(f.stat().st_size for f in target.rglob("*") if f.is_file())
    logger.info("exported %s (%.1f MB)", target, size / 1e6)
    return target


def _save(module, path: Path) -> None:
    import tensorflow as tf

    tf.saved_model.save(
        module,
        str(path),
        signatures={
            "serving_default": module.serve,
            "user_embedding": module.user_embedding,
            "item_embedding": module.item_embedding,
        },
    )


def load_export(export_dir: str | Path):
    """Load an export with plain TensorFlow (no feedrec classes needed)."""
    import tensorflow as tf

    return tf.saved_model.load(str(export_dir))


def export_items(export_dir: str | Path) -> list[str]:
    """The raw ids of the items an export knows (its vocabulary asset)."""
    path = Path(export_dir) / "assets" / ITEMS_ASSET
    lines = path.read_text(encoding="utf-8").splitlines()
    return [line.split("\t", 1)[0] for line in lines]


def score_request(serving, history: list[str], candidates: list[str]) -> np.ndarray:
    """Scores of ``candidates`` for one user's ``history`` through ``serving_default``."""
    import tensorflow as tf

    fn = serving.signatures["serving_default"]
    out = fn(
        history=tf.constant([history or [""]], tf.string),
        candidates=tf.constant([candidates], tf.string),
    )
    return out["scores"].numpy()[0]


def recommend(
    export_dir, history: list[str], *, catalog: list[str] | None = None, top_k: int = 10
) -> list[tuple[str, float]]:
    """The ``top_k`` catalogue items for ``history`` (the export's items by default),
    excluding items already in the history."""
    serving = load_export(export_dir)
    if catalog is None:
        catalog = export_items(export_dir)
    seen = set(history)
    catalog = [item for item in dict.fromkeys(catalog) if item and item not in seen]
    if not catalog:
        raise ValueError("the catalogue is empty (after removing the history's items)")
    scores = score_request(serving, history, catalog)
    order = np.argsort(-scores, kind="stable")[:top_k]
    return [(catalog[i], float(scores[i])) for i in order]
