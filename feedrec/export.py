"""Export a trained model as a SavedModel that TensorFlow Serving loads.

``export_run(RUN_DIR, EXPORT_BASE)`` writes ``EXPORT_BASE/<version>/``, where
``<version>`` is the next integer (TF Serving serves the highest one). The
SavedModel is first written to a hidden temporary directory beside it (TF
Serving ignores names that are not integers) and renamed into place only
once complete, so an interrupted export never leaves a version directory
behind, and an existing version is never overwritten.

Signatures (all take the **raw item ids of the log** as strings):

* ``serving_default``: ``history`` ``tf.string (batch, None)`` (a user's
  clicks, oldest first, right-padded with ``""``) and ``candidates``
  ``tf.string (batch, None)`` -> ``scores`` ``float32 (batch, num_candidates)``
  (a ``""`` candidate is padding: it scores :data:`PADDING_SCORE`, below any
  item).
* ``user_embedding``: ``history`` -> ``user_embedding`` ``float32 (batch, dim)``.
* ``item_embedding``: ``items`` ``tf.string (None,)`` -> ``item_embedding``
  ``float32 (None, dim)`` (zeros for ``""``).

Inside the graph, raw ids are mapped to vocabulary indices by a hash table
initialised from the ``items.tsv`` asset (unknown ids -> OOV, ``""`` ->
padding); the most recent ``L`` clicks of each history are kept; an empty
history is valid.

What is saved is what serving needs and nothing else. The item tower (id
embedding plus the category/subcategory embeddings looked up from the item
feature tables, combined) does not depend on the request, so it is evaluated
once at export for every item of the vocabulary and saved as one
``item_vectors (num_items, dim)`` table; the graph looks up an item's vector
by its index. The user encoder's weights are saved as they are. No optimizer
state, no separate id embedding or feature tables, no Keras model.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
import tensorflow as tf

from pipelines.schema import FIRST_ITEM_INDEX, OOV_INDEX, PADDING_INDEX

#: The score of a ``""`` (padding) candidate: below any real logit, finite (JSON).
PADDING_SCORE = -1e9

logger = logging.getLogger(__name__)

#: The asset holding ``raw_id<TAB>index`` for every real item.
ITEMS_ASSET = "items.tsv"
#: The signatures of an export, by name.
SIGNATURES = ("serving_default", "user_embedding", "item_embedding")

_VERSION = re.compile(r"^\d+$")
_TEMPORARY_PREFIX = ".export-tmp-"


def next_version(export_base: str | Path) -> int:
    """One more than the highest integer version under ``export_base`` (1 if none)."""
    export_base = Path(export_base)
    if not export_base.is_dir():
        return 1
    versions = [int(p.name) for p in export_base.iterdir() if _VERSION.match(p.name)]
    return max(versions, default=0) + 1


def write_item_vocabulary(item_ids: list[str], path: str | Path) -> Path:
    """Write the export's id table: ``raw_id<TAB>index`` for the real items.

    Args:
        item_ids: list of str. The raw id of each item index (the
            ``item_id`` column of ``items.parquet`` in ``item_index`` order);
            entries 0 (padding) and 1 (OOV) are not written.
        path: where to write the table.

    Returns:
        ``path``.
    """
    real = item_ids[FIRST_ITEM_INDEX:]
    bad = [item for item in real if not item or any(c in item for c in "\t\n\r")]
    if bad:
        raise ValueError(
            "Item ids should be non-empty and hold no tab or newline. "
            f"Received: {[*bad[:3]]!r} ({len(bad)} bad)"
        )
    if len(set(real)) != len(real):
        raise ValueError(
            f"Item ids should be unique. Received: {len(real) - len(set(real))} repeats"
        )
    lines = "".join(f"{item}\t{index}\n" for index, item in enumerate(real, FIRST_ITEM_INDEX))
    Path(path).write_text(lines, encoding="utf-8")
    return Path(path)


class ServingModule(tf.Module):
    """The serving graph around a trained :class:`feedrec.models.FeedRecModel`.

    Holds the ``item_vectors`` table (the item tower evaluated once for every
    item index), the TensorFlow variables of the model's user encoder and the
    raw id -> index hash table, and exposes the three serving functions as
    ``tf.function``s with fixed input signatures. Save it with
    :func:`save_module`; the SavedModel needs neither feedrec nor Keras to
    load.

    Histories: ``""`` is padding wherever it sits; each row keeps its most
    recent ``min(clicks, L)`` clicks, left-aligned. Without XLA the encoder
    runs on ``max(1, longest kept row)`` columns instead of ``L`` (padded
    slots are masked, so they cannot change a score; they are just not
    computed).

    Args:
        model: ``FeedRecModel``. The trained model; only its item encoder (run
            once, here) and its user encoder are used.
        vocabulary_file: str or Path. The id table written by
            :func:`write_item_vocabulary`; it becomes the ``items.tsv`` asset.
        jit_compile: bool. Compile the numeric part of each signature (after
            the string lookups) with XLA, on ``L`` columns. Faster on CPU, but
            TF Serving runs it only with ``--xla_cpu_compilation_enabled=true``
            and compiles once per new input shape. Defaults to ``False``.
        **kwargs: base module arguments (``name``).

    Call arguments (``serve``):
        history: string ``(batch, history_len)``. Raw clicked ids, oldest
            first, right-padded with ``""``; any width.
        candidates: string ``(batch, num_candidates)``. Raw candidate ids.

    Returns:
        ``{"scores": float32 (batch, num_candidates)}``, the model's logits.
    """

    def __init__(
        self, model, vocabulary_file: str | Path, jit_compile: bool = False, **kwargs
    ) -> None:
        super().__init__(**kwargs)
        for name in ("item_encoder", "user_encoder", "history_length", "item_embedding"):
            if not hasattr(model, name):
                raise ValueError(
                    f"`model` should be a FeedRecModel (it has no `{name}`). "
                    f"Received: model={model!r}"
                )
        if not isinstance(jit_compile, bool):
            raise ValueError(
                f"`jit_compile` should be a bool. Received: jit_compile={jit_compile!r}"
            )
        self.history_length = int(model.history_length)
        self.num_items = int(model.item_encoder.num_items)
        self.jit_compile = jit_compile
        encoder = model.user_encoder
        # Track the TensorFlow variables under the encoder's Keras variables, not
        # the Keras layer: a SavedModel that tracks Keras 3 layers loads in TF 2
        # Python but fails in TF Serving's session-based loader ("Could not find
        # variable ...", keras-team/keras#20095).
        self.user_encoder_variables = [variable.value for variable in encoder.variables]
        self._encode_user = functools.partial(encoder, training=False)  # not tracked
        vectors = model.item_embedding(tf.range(self.num_items))
        self.item_vectors = tf.Variable(vectors, trainable=False, name="item_vectors")
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

    def lookup(self, ids):
        """Raw ids ``(...)`` -> int32 indices: ``""`` -> padding, unknown -> OOV."""
        return self._indices(*self._find(ids))

    def _find(self, ids):
        """The string ops of :meth:`lookup`: the table's int64 index and each id's length.

        ``tf.strings.length(ids) == 0`` marks padding; it is cheaper than
        comparing strings, and leaves only numeric work for :meth:`_indices`
        (compiled with the rest when ``jit_compile``).
        """
        return self.item_table.lookup(ids), tf.strings.length(ids)

    @staticmethod
    def _indices(table_index, id_length):
        """Int32 indices from :meth:`_find`'s table indices and id lengths."""
        padding = tf.constant(PADDING_INDEX, tf.int32)
        return tf.where(tf.equal(id_length, 0), padding, tf.cast(table_index, tf.int32))

    def truncate(self, history):
        """History indices ``(batch, history_len)`` -> ``(indices, lengths)``.

        Args:
            history: int32 ``(batch, history_len)`` from :meth:`lookup`, 0 for
                padding wherever it sits.

        Returns:
            ``indices`` int32 ``(batch, T)``: each row's most recent
            ``min(clicks, L)`` clicks, left-aligned, oldest first, padded with
            0, where ``T`` is ``L`` with XLA, else ``max(1, longest kept
            row)``; and ``lengths`` int32 ``(batch,)``.
        """
        real = tf.cast(tf.not_equal(history, PADDING_INDEX), tf.int32)
        rank = tf.cumsum(real, axis=1)  # 1-based rank of each click in its row
        lengths = tf.reduce_sum(real, axis=1)
        kept = tf.minimum(lengths, self.history_length)
        if self.jit_compile:
            width = tf.constant(self.history_length)
        else:
            width = tf.maximum(tf.reduce_max(kept), 1)
        slots = tf.range(width)
        wanted = (lengths - kept)[:, None] + slots[None, :] + 1  # the rank each slot holds
        column = tf.searchsorted(rank, wanted, side="left")  # in [0, history_len]
        padded = tf.pad(history, [[0, 0], [0, 1]])  # column history_len holds 0
        gathered = tf.gather(padded, column, batch_dims=1)
        valid = tf.sequence_mask(kept, width)
        return tf.where(valid, gathered, tf.zeros_like(gathered)), kept

    def _numeric(self, fn):
        """``fn``, compiled with XLA when ``jit_compile`` (built while tracing, not tracked)."""
        return tf.function(fn, jit_compile=True, autograph=False) if self.jit_compile else fn

    def _user_vectors(self, history, history_id_lengths):
        # ``history``: the table's int64 indices; ``history_id_lengths``: the
        # string length of each raw id (0 = padding), as :meth:`_find` returns them.
        indices, lengths = self.truncate(self._indices(history, history_id_lengths))
        return self._encode_user(tf.gather(self.item_vectors, indices), lengths)

    def _scores(self, history, history_id_lengths, candidates, candidate_id_lengths):
        user = self._user_vectors(history, history_id_lengths)
        items = tf.gather(self.item_vectors, self._indices(candidates, candidate_id_lengths))
        if self.jit_compile:
            # XLA fuses the gather into a multiply-and-sum and never writes the
            # (batch, num_candidates, dim) vectors: 40% less time than a dot there.
            scores = tf.reduce_sum(items * user[:, None, :], axis=-1)
        else:
            scores = tf.einsum("bd,bcd->bc", user, items)
        padding = tf.equal(candidate_id_lengths, 0)
        return tf.where(padding, tf.constant(PADDING_SCORE), tf.cast(scores, tf.float32))

    @tf.function(
        input_signature=[
            tf.TensorSpec([None, None], tf.string, name="history"),
            tf.TensorSpec([None, None], tf.string, name="candidates"),
        ]
    )
    def serve(self, history, candidates):
        history = _ensure_shape(history, [None, None], "history")
        candidates = _ensure_shape(candidates, [None, None], "candidates")
        check = tf.debugging.assert_equal(
            tf.shape(history)[0],
            tf.shape(candidates)[0],
            message="`history` and `candidates` should have the same batch size",
        )
        with tf.control_dependencies([check]):
            history = self._find(history)
        scores = self._numeric(self._scores)(*history, *self._find(candidates))
        return {"scores": scores}

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.string, name="history")])
    def user_embedding(self, history):
        history = _ensure_shape(history, [None, None], "history")
        vectors = self._numeric(self._user_vectors)(*self._find(history))
        return {"user_embedding": tf.cast(vectors, tf.float32)}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="items")])
    def item_embedding(self, items):
        items = _ensure_shape(items, [None], "items")
        vectors = tf.cast(tf.gather(self.item_vectors, self.lookup(items)), tf.float32)
        padding = tf.equal(tf.strings.length(items), 0)[:, None]
        return {"item_embedding": tf.where(padding, tf.zeros_like(vectors), vectors)}


def _ensure_shape(tensor, shape, name):
    """Check a request's rank at run time: the signature's shape is not enforced
    when a client calls it ("Shape of tensor history [2] is not compatible with
    expected shape [?,?]")."""
    return tf.ensure_shape(tensor, shape, name=name)


def save_module(module: ServingModule, path: str | Path) -> None:
    """``tf.saved_model.save`` with the three signatures of :data:`SIGNATURES`."""
    tf.saved_model.save(
        module,
        str(path),
        signatures={
            "serving_default": module.serve,
            "user_embedding": module.user_embedding,
            "item_embedding": module.item_embedding,
        },
    )


def export_model(
    model, item_ids: list[str], export_base: str | Path, *, jit_compile: bool = False
) -> Path:
    """Export ``model`` to ``export_base/<next version>/`` atomically.

    Args:
        model: ``FeedRecModel``. The trained model.
        item_ids: list of str. The raw id of every item index, padding and
            OOV included (``items.parquet``'s ``item_id`` in ``item_index``
            order).
        export_base: str or Path. The folder TF Serving watches.
        jit_compile: bool. XLA for the numeric part (see
            :class:`ServingModule`). Defaults to ``False``.

    Returns:
        The new version directory.
    """
    num_items = int(model.item_encoder.num_items)
    if len(item_ids) > num_items:
        raise ValueError(
            f"`item_ids` should have at most the model's {num_items} items. "
            f"Received: {len(item_ids)} ids"
        )
    export_base = Path(export_base)
    export_base.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=_TEMPORARY_PREFIX, dir=export_base))
    try:
        tmp.chmod(0o777 & ~_umask())  # mkdtemp's 0o700 would hide the version from others
        with tempfile.TemporaryDirectory() as scratch:
            vocabulary = write_item_vocabulary(item_ids, Path(scratch) / ITEMS_ASSET)
            module = ServingModule(
                model, vocabulary, jit_compile=jit_compile, name="feedrec_serving"
            )
            save_module(module, tmp)
        target = _rename_to_next_version(tmp, export_base)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    sizes = export_size(target)
    logger.info(
        "Exported %s: %.2f MB (variables %.2f MB, graph %.2f MB, assets %.2f MB)",
        target,
        sizes["total"] / 1e6,
        sizes["variables"] / 1e6,
        sizes["graph"] / 1e6,
        sizes["assets"] / 1e6,
    )
    return target


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _rename_to_next_version(tmp: Path, export_base: Path) -> Path:
    """Rename ``tmp`` to the next free integer version, never onto an existing one."""
    while True:
        target = export_base / str(next_version(export_base))
        try:
            # Fails if ``target`` exists and is not empty (another exporter won the race).
            os.rename(tmp, target)
            return target
        except OSError:
            if not target.exists():
                raise


def export_run(run_dir: str | Path, export_base: str | Path, *, jit_compile: bool = False) -> Path:
    """Export the model of ``run_dir`` to ``export_base/<next version>/``; returns the path.

    The item ids are ``items.parquet``'s ``item_id`` column in ``item_index``
    order. See :func:`export_model`.
    """
    import pyarrow.parquet as pq

    from feedrec.runs import check_run_dir, load_run

    run_dir = check_run_dir(run_dir)
    model, _, _ = load_run(run_dir)
    items = pq.read_table(run_dir / "items.parquet", columns=["item_index", "item_id"])
    items = items.sort_by("item_index")
    index = items.column("item_index").to_numpy()
    if not np.array_equal(index, np.arange(len(index))):
        raise ValueError(
            f"{run_dir / 'items.parquet'}: `item_index` should run 0, 1, ..., n-1. "
            f"Received: {index[:5].tolist()}..."
        )
    item_ids = items.column("item_id").to_pylist()
    return export_model(model, item_ids, export_base, jit_compile=jit_compile)


def export_size(export_dir: str | Path) -> dict[str, int]:
    """Bytes of an export: ``total``, ``variables``, ``graph`` (saved_model.pb), ``assets``."""
    export_dir = Path(export_dir)

    def size(path: Path) -> int:
        if path.is_file():
            return path.stat().st_size
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())

    return {
        "total": size(export_dir),
        "variables": size(export_dir / "variables"),
        "graph": size(export_dir / "saved_model.pb"),
        "assets": size(export_dir / "assets"),
    }


def resolve_export(export_dir: str | Path) -> Path:
    """The version directory to load: ``export_dir`` itself when it holds a
    ``saved_model.pb``, else its highest integer version that does (the one TF
    Serving would serve from an ``EXPORT_BASE``).

    Raises:
        FileNotFoundError: neither holds a SavedModel.
    """
    export_dir = Path(export_dir)
    if (export_dir / "saved_model.pb").is_file():
        return export_dir
    versions = []
    if export_dir.is_dir():
        versions = sorted(
            (int(p.name), p)
            for p in export_dir.iterdir()
            if _VERSION.match(p.name) and (p / "saved_model.pb").is_file()
        )
    if not versions:
        raise FileNotFoundError(
            f"{export_dir} is not a feedrec export: expected a version directory holding "
            "saved_model.pb, or an EXPORT_BASE with integer versions; write one with "
            "`feedrec export RUN_DIR --out EXPORT_BASE`"
        )
    return versions[-1][1]


def load_export(export_dir: str | Path):
    """Load an export with plain TensorFlow (no feedrec classes needed).

    ``export_dir`` is a version directory or an ``EXPORT_BASE`` (its highest
    version is loaded, see :func:`resolve_export`).
    """
    return tf.saved_model.load(str(resolve_export(export_dir)))


def export_items(export_dir: str | Path) -> list[str]:
    """The raw ids of the items an export knows (its ``items.tsv`` asset), by index.

    ``export_dir`` as for :func:`load_export`.
    """
    path = resolve_export(export_dir) / "assets" / ITEMS_ASSET
    # "\n" only, as TensorFlow's table reader splits it (str.splitlines would also
    # split an id at "\x0b", "\x1c", "\u2028", ...).
    lines = path.read_text(encoding="utf-8").split("\n")
    return [line.split("\t", 1)[0] for line in lines if line]


def score_request(serving, history: list[str], candidates: list[str]) -> np.ndarray:
    """Scores ``(num_candidates,)`` of ``candidates`` for one user's ``history``.

    Args:
        serving: a loaded export (:func:`load_export`).
        history: list of str. Raw clicked ids, oldest first; may be empty.
        candidates: list of str. Raw candidate ids.
    """
    fn = serving.signatures["serving_default"]
    out = fn(
        history=tf.constant([list(history) or [""]], tf.string),
        candidates=tf.constant([list(candidates)], tf.string, shape=[1, len(candidates)]),
    )
    return out["scores"].numpy()[0]


def recommend(
    export_dir: str | Path,
    history: list[str],
    *,
    catalog: list[str] | None = None,
    top_k: int = 10,
) -> list[tuple[str, float]]:
    """The ``top_k`` best-scored catalogue items for ``history``.

    Args:
        export_dir: str or Path. An export version directory, or an
            ``EXPORT_BASE`` (its highest version is used).
        history: list of str. Raw clicked ids, oldest first; may be empty.
        catalog: list of str or None. Candidate raw ids. Defaults to every
            item the export knows. Items of the history are left out.
        top_k: int. How many items to return. Defaults to 10.

    Returns:
        ``[(item_id, score), ...]``, best first (ties keep catalogue order).
    """
    if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k <= 0:
        raise ValueError(f"`top_k` should be a positive integer. Received: top_k={top_k!r}")
    export_dir = resolve_export(export_dir)
    serving = load_export(export_dir)
    if catalog is None:
        catalog = export_items(export_dir)
    seen = set(history)
    catalog = [item for item in dict.fromkeys(catalog) if item and item not in seen]
    if not catalog:
        raise ValueError("The catalogue is empty once the history's items are removed")
    scores = score_request(serving, history, catalog)
    order = np.argsort(-scores, kind="stable")[:top_k]
    return [(catalog[i], float(scores[i])) for i in order]
