"""Causal sequence training: every position of a user's sequence predicts the next item.

The ``next_item_causal`` objective (SASRec's, with the full-softmax loss of
"SASRec+"): a user's click sequence ``x_0 .. x_n`` is fed to the causal user
encoder, and the state after click ``i`` is trained to score ``x_{i+1}``
above every other item of the catalogue (tied input/output item vectors:
the output item vectors are the item encoder's). Serving is unchanged: with
``pooling="last"`` the user vector is the state after the last click, which
is exactly what the position of that click was trained to be.

Training data come from the prepared examples (``train.parquet``): per user,
the last training example's history plus its clicked item is the training
sequence (its most recent ``L + 1`` clicks: ``L`` inputs, ``L`` targets), or,
with ``windows="all"``, the user's whole click sequence cut into windows of
``L`` inputs, so that every click is a target. For incremental training on a
time window, only the positions whose target falls in the window are trained
(``since``).

The run directory has the layout of ``feedrec train`` (``model.keras`` is the
plain :class:`feedrec.models.FeedRecModel`), so ``feedrec evaluate`` and
``feedrec export`` work on it; ``sequential.json`` records the objective.

Training is checkpointed in ``RUN_DIR.partial/`` at every epoch end and resumes
there when the same call is made again (:func:`train_sequential`).

Settings (:class:`SequentialConfig`) sit in a ``[sequential]`` table beside
``[model]`` and ``[train]``; see ``benchmarks/configs/`` for examples.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from feedrec.config import Config, config_from_tables, read_config_file
from feedrec.data import Batch, load_split, pad_lists, positions_within, split_path
from feedrec.runs import atomic_directory, read_json, write_json
from pipelines.dataset import ExamplesFile

logger = logging.getLogger(__name__)

#: Sampling probabilities are floored here, not at keras-rs's default of 1e-6:
#: on a large log a tail item's probability is below 1e-6, and clipping it
#: would under-correct its logits.
PROBABILITY_FLOOR = 1e-30

OBJECTIVES = ("next_item_causal",)
SEQUENTIAL_LOSSES = ("full_softmax", "sampled_softmax")
SCHEDULES = ("constant", "cosine")
WINDOWS = ("last", "all")
HISTORY_SCOPES = ("window", "all")
#: Item indices below this are padding and OOV: never a target, never a logit column.
FIRST_ITEM_INDEX = 2


@dataclasses.dataclass(frozen=True)
class SequentialConfig:
    """How to train on sequences (the ``[sequential]`` table).

    Attributes:
        objective: ``"next_item_causal"``: every position predicts the next item.
        loss: ``"full_softmax"`` (cross-entropy over the whole catalogue) or
            ``"sampled_softmax"`` (against ``num_negatives`` items sampled per
            batch, uniformly or by popularity, with the logQ correction).
        num_negatives: negatives per batch for ``sampled_softmax``.
        negative_sampling: ``"uniform"`` or ``"popularity"`` (training counts).
        schedule: learning-rate schedule over the planned steps:
            ``"constant"`` or ``"cosine"`` (decay to ``min_learning_rate``).
        warmup_steps: linear warm-up steps. Defaults to 0.
        min_learning_rate: floor of the cosine schedule. Defaults to 0.
        validate_every: epochs between validations (full-catalogue
            ``validation_metric`` on ``valid.parquet``); the last epoch is
            always validated. 0 = never.
        patience: validations without improvement before stopping (0 = train
            all epochs); the best validated weights are kept either way.
        validation_metric: e.g. ``"ndcg@10"``.
        max_train_seconds: stop once training has taken this long (checked
            after every batch), or None.
        width_multiple: batches are padded to a multiple of this width (users
            of similar length are batched together, so short users do not pay
            for long ones).
        item_embedding_stddev: re-draw the item ID embeddings from
            ``N(0, stddev)`` before training; None keeps the item encoder's
            initialiser (uniform in +-0.05, small beside the position
            embeddings, and slow to grow into confident output logits).
        windows: which training sequences a user gives. ``"last"`` (SASRec):
            one, the most recent ``L + 1`` clicks. ``"all"``: the user's whole
            training sequence, cut from its end into windows of ``L`` inputs
            (each click is a target exactly once; a window's first input is
            the previous window's last target); users longer than ``L``
            contribute every click instead of their last ``L``.
        window_stride: with ``windows="all"``, how far apart the windows'
            ends are. 0 (the default) = ``L``: windows do not overlap, so the
            first targets of a window see only the few clicks before them in
            it, where serving sees the last ``L``. A stride ``S < L`` cuts a
            window every ``S`` clicks from the end, each training only its
            newest ``S`` targets (a user's oldest window trains all of its
            own): every click is still a target exactly once, and every
            target after a user's first ``L`` clicks sees at least ``L - S``
            clicks before it. About ``L / S`` times the windows; the softmax
            is computed at the targets only, so an epoch costs less than
            that.
        exclude_history: with ``full_softmax``, mask the clicks each target
            has seen (other than the target itself: a re-click is still
            learned) out of its softmax, as the evaluation excludes a user's
            history from the ranking: the model is not trained to push down
            items the protocol never ranks. ``"window"``: the clicks before
            it in its window (its inputs); ``"all"``: also every click of the
            user before the window (:attr:`Sequences.earlier`), the whole
            history as the evaluation sees it; needs ``windows="all"``.
            ``True`` is ``"window"`` (what it meant when it was measured
            first; recorded as ``"window"``). Defaults to False.
        validation_sampled_negatives: also record, at each validation, the
            metrics against this many uniform negatives (the SASRec protocol,
            ``sampled_uniform_K``), for learning curves; 0 = not. Model
            selection always uses the full-catalogue metric.
    """

    objective: str = "next_item_causal"
    loss: str = "full_softmax"
    num_negatives: int = 1024
    negative_sampling: str = "uniform"
    schedule: str = "constant"
    warmup_steps: int = 0
    min_learning_rate: float = 0.0
    validate_every: int = 1
    patience: int = 0
    validation_metric: str = "ndcg@10"
    max_train_seconds: float | None = None
    width_multiple: int = 16
    item_embedding_stddev: float | None = None
    validation_sampled_negatives: int = 0
    windows: str = "last"
    window_stride: int = 0
    exclude_history: bool | str = False

    def __post_init__(self) -> None:
        for name, choices in (
            ("objective", OBJECTIVES),
            ("loss", SEQUENTIAL_LOSSES),
            ("schedule", SCHEDULES),
            ("negative_sampling", ("uniform", "popularity")),
            ("windows", WINDOWS),
        ):
            value = getattr(self, name)
            if value not in choices:
                raise ValueError(f"`{name}` should be one of {choices}. Received: {name}={value!r}")
        for name in ("num_negatives", "width_multiple"):
            _check_int(name, getattr(self, name), minimum=1)
        for name in (
            "warmup_steps",
            "validate_every",
            "patience",
            "validation_sampled_negatives",
            "window_stride",
        ):
            _check_int(name, getattr(self, name), minimum=0)
        if self.window_stride and self.windows != "all":
            raise ValueError(
                '`window_stride` needs windows="all" (windows="last" gives one window per '
                f"user). Received: window_stride={self.window_stride}, windows={self.windows!r}"
            )
        if self.exclude_history is True:  # the same as "window": one spelling recorded
            object.__setattr__(self, "exclude_history", "window")
        if self.masks_earlier_clicks and self.windows != "all":
            raise ValueError(
                'exclude_history="all" needs windows="all": with windows="last", the clicks '
                "before a user's window are cut by the prepared history's length. "
                f'Received: windows={self.windows!r} (use exclude_history="window")'
            )
        if self.exclude_history and self.loss != "full_softmax":
            raise ValueError(
                '`exclude_history` needs loss="full_softmax". '
                f"Received: exclude_history={self.exclude_history!r}, loss={self.loss!r}"
            )
        if self.min_learning_rate < 0:
            raise ValueError(
                "`min_learning_rate` should be non-negative. "
                f"Received: min_learning_rate={self.min_learning_rate}"
            )
        if self.item_embedding_stddev is not None and self.item_embedding_stddev <= 0:
            raise ValueError(
                "`item_embedding_stddev` should be positive or None. "
                f"Received: item_embedding_stddev={self.item_embedding_stddev}"
            )
        if self.max_train_seconds is not None and self.max_train_seconds <= 0:
            raise ValueError(
                "`max_train_seconds` should be positive or None. "
                f"Received: max_train_seconds={self.max_train_seconds}"
            )

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "[sequential]") -> SequentialConfig:
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - fields)
        if unknown:
            raise ValueError(f"{source}: unknown setting(s) {unknown}; known: {sorted(fields)}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def masks_earlier_clicks(self) -> bool:
        """True for ``exclude_history="all"``: training reads :attr:`Sequences.earlier`."""
        return history_scope(self.exclude_history) == "all"


def history_scope(exclude_history) -> str | None:
    """``exclude_history`` as None, ``"window"`` or ``"all"`` (True = ``"window"``)."""
    if exclude_history is False:
        return None
    if exclude_history is True:
        return "window"
    if exclude_history in HISTORY_SCOPES:
        return exclude_history
    raise ValueError(
        f"`exclude_history` should be false, true or one of {HISTORY_SCOPES}. "
        f"Received: exclude_history={exclude_history!r}"
    )


def _check_int(name: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"`{name}` should be an integer >= {minimum}. Received: {name}={value!r}")


# ---------------------------------------------------------------------------- data


@dataclasses.dataclass(frozen=True)
class Sequences:
    """Training sequences, right-padded.

    Attributes:
        items: int32 ``(N, L)``, the input clicks, oldest first, 0 = padding.
        lengths: int32 ``(N,)``, real clicks per row.
        targets: int32 ``(N, L)``, the item that follows each input click;
            0 where there is nothing to learn (padding, or a position outside
            the trained window).
        users: the user of each row.
        earlier: int32, flat, or None: the clicks of every row's user, from
            which :attr:`earlier_spans` cut each row's clicks *before* its
            first input (what ``exclude_history="all"`` masks besides the
            inputs). None unless asked for (``earlier=True`` of
            :func:`sequences_from_examples`, ``windows="all"`` only).
        earlier_spans: int64 ``(N, 2)`` or None: row ``i``'s earlier clicks
            are ``earlier[earlier_spans[i, 0] : earlier_spans[i, 1]]``, oldest
            first.
    """

    items: np.ndarray
    lengths: np.ndarray
    targets: np.ndarray
    users: np.ndarray
    earlier: np.ndarray | None = None
    earlier_spans: np.ndarray | None = None

    def earlier_clicks(self, row: int) -> np.ndarray:
        """Row ``row``'s clicks before its first input (empty without :attr:`earlier`)."""
        if self.earlier is None:
            return np.zeros(0, np.int32)
        start, end = self.earlier_spans[row]
        return self.earlier[start:end]

    def __len__(self) -> int:
        return len(self.lengths)

    @property
    def num_targets(self) -> int:
        return int((self.targets >= FIRST_ITEM_INDEX).sum())


def click_order(table: pa.Table) -> np.ndarray:
    """Row order by (user, time, click number): the n of the key ``"{user}/{n}"``.

    Click logs number each user's clicks in the key; rows whose key has no
    number keep their table order among equal times.
    """
    users = pc.dictionary_encode(table.column("user_id").combine_chunks()).indices.to_numpy()
    times = table.column("time").to_numpy()
    number = np.arange(table.num_rows)
    if "example_key" in table.column_names:
        keys = table.column("example_key").combine_chunks()
        if pc.all(pc.match_substring_regex(keys, r"/\d+$")).as_py():
            found = pc.extract_regex(keys, r"/(?P<n>\d+)$").field("n")
            number = pc.cast(found, pa.int64()).to_numpy()
    return np.lexsort((number, times, users))


def sequences_from_examples(
    table: pa.Table,
    max_length: int,
    since: int | None = None,
    windows: str = "last",
    stride: int | None = None,
    earlier: bool = False,
) -> Sequences:
    """Training sequences from click-log examples.

    Args:
        table: click-log examples (``pipelines.schema.EXAMPLES`` columns
            ``user_id``, ``time``, ``history``, ``candidates``, ``labels``; the
            clicked candidate is the one labelled 1).
        max_length: int. ``L``, the inputs per sequence.
        since: int or None. Train only the positions whose target was clicked
            at or after this time (the user's examples with ``time >= since``);
            None trains every position.
        windows: ``"last"``: per user, the last example's history plus its
            click (the most recent ``L + 1`` clicks), one row per user in
            order of first appearance. ``"all"``: per user, the first
            example's history followed by every example's click, cut from the
            end into windows of ``L`` inputs (see :class:`SequentialConfig`).
        stride: int or None. With ``windows="all"``, a window ends every
            ``stride`` clicks and trains its newest ``stride`` targets
            (``SequentialConfig.window_stride``); None = ``max_length``.
        earlier: bool. Also build :attr:`Sequences.earlier` (for
            ``exclude_history="all"``; needs ``windows="all"``).

    Returns:
        :class:`Sequences`.
    """
    _check_int("max_length", max_length, minimum=1)
    if windows not in WINDOWS:
        raise ValueError(f"`windows` should be one of {WINDOWS}. Received: windows={windows!r}")
    stride = _window_stride(stride, max_length, windows)
    _check_earlier(earlier, windows)
    if table.num_rows == 0:
        empty = np.zeros((0, max_length), np.int32)
        return Sequences(
            empty,
            np.zeros(0, np.int32),
            empty.copy(),
            np.zeros(0, object),
            earlier=np.zeros(0, np.int32) if earlier else None,
            earlier_spans=np.zeros((0, 2), np.int64) if earlier else None,
        )
    if windows == "all":
        return _all_windows(
            table,
            max_length,
            since,
            lambda rows: table.column("history").take(pa.array(rows)),
            stride,
            earlier,
        )
    order = click_order(table)
    codes, names = _user_codes(table, order)
    n = len(names)
    last = table.take(pa.array(order[_ends(codes)]))
    histories, history_lengths = pad_lists(last.column("history"), max_length, keep="last")
    clicked = _clicked_items(last)
    # sequence = kept history + the click, then inputs = seq[:-1], targets = seq[1:]
    sequence = np.zeros((n, max_length + 1), np.int64)
    sequence[:, :max_length] = histories
    sequence[np.arange(n), history_lengths] = clicked
    lengths = history_lengths.astype(np.int32)  # inputs: the history; targets shift by one
    positions = np.arange(max_length)[None, :]
    targets = np.where(positions < lengths[:, None], sequence[:, 1:], 0)
    # the first input is history[0]; its target is history[1] (or the click)
    items = np.where(positions < lengths[:, None], sequence[:, :max_length], 0)
    if since is not None:
        times = table.column("time").to_numpy()[order]
        new = np.bincount(codes[times >= since], minlength=n)
        trained = positions >= (lengths - new)[:, None]
        targets = np.where(trained, targets, 0)
    return Sequences(
        items=items.astype(np.int32),
        lengths=lengths,
        targets=np.where(targets >= FIRST_ITEM_INDEX, targets, 0).astype(np.int32),
        users=names,
    )


def _window_stride(stride: int | None, max_length: int, windows: str) -> int:
    """``stride`` checked against ``max_length`` (None or 0 = ``max_length``)."""
    if stride is None:
        return max_length
    if isinstance(stride, bool) or not isinstance(stride, int) or not 0 <= stride <= max_length:
        raise ValueError(
            f"`window_stride` should be an integer in [1, L={max_length}] (0 = L). "
            f"Received: {stride!r}"
        )
    if stride == 0:
        return max_length
    if windows != "all":
        raise ValueError(f'`stride` needs windows="all". Received: windows={windows!r}')
    return stride


def _check_earlier(earlier: bool, windows: str) -> None:
    if earlier and windows != "all":
        raise ValueError(
            "the clicks before each window (`earlier=True`) need windows='all'. "
            f"Received: windows={windows!r}"
        )


def _all_windows(
    table: pa.Table,
    max_length: int,
    since: int | None,
    first_histories,
    stride: int,
    earlier: bool = False,
) -> Sequences:
    """``windows="all"`` of ``table``; ``first_histories(rows)`` is the history column at ``rows``.

    (A callable, so that a reader can decode only the rows it needs.)
    """
    order = click_order(table)
    codes, names = _user_codes(table, order)
    return _windows(
        codes,
        _clicked_items(table)[order],
        table.column("time").to_numpy()[order],
        first_histories(order[_starts(codes)]),
        max_length,
        since,
        names,
        stride,
        earlier,
    )


def _user_codes(table: pa.Table, order: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row of ``table.take(order)``, a user code 0, 1, ... (non-decreasing), and the names."""
    users = pc.dictionary_encode(table.column("user_id").combine_chunks().take(pa.array(order)))
    return users.indices.to_numpy(), np.asarray(users.dictionary.to_pylist(), dtype=object)


def _starts(codes: np.ndarray) -> np.ndarray:
    return np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]])


def _ends(codes: np.ndarray) -> np.ndarray:
    return np.flatnonzero(np.r_[codes[1:] != codes[:-1], True])


def _windows(
    codes: np.ndarray,
    clicked: np.ndarray,
    times: np.ndarray,
    first_histories: pa.ChunkedArray | pa.Array,
    max_length: int,
    since: int | None,
    names: np.ndarray,
    stride: int,
    earlier: bool = False,
) -> Sequences:
    """Every user's whole sequence cut into windows of ``max_length`` inputs.

    A window ends every ``stride`` inputs from the end and trains its newest
    ``stride`` targets; the oldest (which starts at the first input) trains
    all of its own. ``stride == max_length``: windows side by side.

    ``codes``, ``clicked`` and ``times`` are per click, in click order
    (grouped by user); ``first_histories`` is each user's history before their
    first click (trained like the clicks; with ``since``, only its last
    ``max_length`` items are kept, as inputs). Rows come grouped by user, each
    user's most recent window first. With ``earlier``, also each window's
    clicks before it (:attr:`Sequences.earlier`).
    """
    longest = max(1, int(pc.max(pc.list_value_length(first_histories)).as_py() or 1))
    # the whole first history is trained; with since, L items of context
    prefix, prefix_lengths = pad_lists(
        first_histories, longest if since is None else max_length, keep="last"
    )
    num_users = len(prefix_lengths)
    clicked_rows = clicked != 0  # a row without a click adds nothing to the sequence
    codes, clicked, times = codes[clicked_rows], clicked[clicked_rows], times[clicked_rows]
    tokens, offsets, prefix_at, at = _user_sequences(prefix, prefix_lengths, codes, clicked)
    total = np.diff(np.r_[offsets, len(tokens)])
    trainable = np.zeros(len(tokens), bool)
    if since is None:  # clicks before the table are trained too, as in windows="last"
        trainable[prefix_at] = tokens[prefix_at] >= FIRST_ITEM_INDEX
    trainable[at] = clicked >= FIRST_ITEM_INDEX
    if since is not None:
        trainable[at] &= times >= since
    inputs = np.maximum(total - 1, 0)  # input positions; the target of position p is p + 1
    # windows end at inputs, inputs - stride, ...; the last is the first to start at 0
    count = np.where(inputs > 0, 1 + -(-np.maximum(inputs - max_length, 0) // stride), 0)
    owner = np.repeat(np.arange(num_users), count)
    back = positions_within(count)
    end = offsets[owner] + inputs[owner] - back * stride
    start = np.maximum(offsets[owner], end - max_length)
    oldest = back == count[owner] - 1
    positions = np.arange(max_length)
    real = positions < (end - start)[:, None]
    # a window trains its newest `stride` targets, the oldest window all of them
    new = real & (oldest[:, None] | (positions >= (end - start - stride)[:, None]))
    index = np.where(real, start[:, None] + positions, 0)
    after = np.where(real, index + 1, 0)
    items = np.where(real, tokens[index], 0)
    targets = np.where(new & trainable[after], tokens[after], 0)
    sequences = Sequences(
        items=items.astype(np.int32),
        lengths=(end - start).astype(np.int32),
        targets=targets.astype(np.int32),
        users=names[owner],
    )
    if not earlier:
        return sequences
    # the clicks before each window: with since, the whole first history, not its last L
    clicks, clicks_offsets, dropped = tokens, offsets, np.zeros(num_users, np.int64)
    if since is not None:
        whole, whole_lengths = pad_lists(first_histories, longest, keep="last")
        clicks, clicks_offsets, _, _ = _user_sequences(whole, whole_lengths, codes, clicked)
        dropped = whole_lengths - prefix_lengths
    before = clicks_offsets[owner] + dropped[owner] + (start - offsets[owner])
    return dataclasses.replace(
        sequences,
        earlier=clicks.astype(np.int32),
        earlier_spans=np.stack([clicks_offsets[owner], before], axis=1).astype(np.int64),
    )


def _user_sequences(
    prefix: np.ndarray, prefix_lengths: np.ndarray, codes: np.ndarray, clicked: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Every user's ``prefix`` row then clicks, flat.

    ``codes`` and ``clicked`` are per click, grouped by user. Returns the
    tokens, each user's offset in them, and where the prefix items and the
    clicks were put.
    """
    clicks = np.bincount(codes, minlength=len(prefix_lengths))
    total = prefix_lengths + clicks
    offsets = np.cumsum(total) - total
    tokens = np.zeros(int(total.sum()), np.int64)
    owner = np.repeat(np.arange(len(prefix_lengths)), prefix_lengths)
    column = positions_within(prefix_lengths)
    prefix_at = offsets[owner] + column
    tokens[prefix_at] = prefix[owner, column]
    at = offsets[codes] + prefix_lengths[codes] + positions_within(clicks)
    tokens[at] = clicked
    return tokens, offsets, prefix_at, at


def _clicked_items(table: pa.Table) -> np.ndarray:
    width = max(1, int(pc.max(pc.list_value_length(table.column("candidates"))).as_py() or 1))
    candidates, _ = pad_lists(table.column("candidates"), width, keep="first")
    labels, _ = pad_lists(table.column("labels"), width, keep="first", pad=-1)
    clicked = labels == 1
    return np.where(clicked.any(axis=1), candidates[np.arange(len(labels)), clicked.argmax(1)], 0)


def load_training_sequences(
    data_dir: str | Path,
    max_length: int,
    windows: str = "last",
    stride: int | None = None,
    earlier: bool = False,
) -> Sequences:
    """:func:`sequences_from_examples` of ``train.parquet``.

    Only the histories that are used are decoded (each user's last row for
    ``windows="last"``, first row for ``"all"``), not the whole file's.
    """
    stride = _window_stride(stride, max_length, windows)
    _check_earlier(earlier, windows)
    examples = ExamplesFile(split_path(data_dir, "train"))
    if windows == "all":
        columns = ["example_key", "user_id", "time", "candidates", "labels"]
        table = examples.read(columns)
        if table.num_rows == 0:
            return sequences_from_examples(table, max_length, windows="all", earlier=earlier)

        def first_histories(rows: np.ndarray) -> pa.ChunkedArray:
            wanted = np.sort(rows)
            found = examples.take(wanted, ["history"]).column("history")
            return found.take(pa.array(np.searchsorted(wanted, rows)))

        return _all_windows(table, max_length, None, first_histories, stride, earlier)
    keys = examples.read(["example_key", "user_id", "time"])
    order = click_order(keys)
    codes, _ = _user_codes(keys, order)
    wanted = np.sort(order[_ends(codes)])
    columns = ["example_key", "user_id", "time", "history", "candidates", "labels"]
    return sequences_from_examples(examples.take(wanted, columns), max_length, windows=windows)


def batch_indices(
    lengths: np.ndarray, batch_size: int, rng: np.random.Generator, pool: int = 64
) -> list[np.ndarray]:
    """Shuffled batches of rows of similar length.

    Rows are shuffled, cut into pools of ``pool`` batches, sorted by length
    within a pool and batched; the batches are then shuffled. Short rows thus
    share batches with short rows (less padding) while every epoch mixes users.
    """
    order = rng.permutation(len(lengths))
    batches = []
    span = batch_size * pool
    for start in range(0, len(order), span):
        chunk = order[start : start + span]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    rng.shuffle(batches)
    return batches


def batch_rows(sequences: Sequences, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """The rows of each batch of one epoch: :func:`batch_indices` of the rows with a target."""
    keep = np.flatnonzero((sequences.targets >= FIRST_ITEM_INDEX).any(axis=1))
    return [keep[local] for local in batch_indices(sequences.lengths[keep], batch_size, rng)]


def sequence_batches(
    sequences: Sequences,
    batch_size: int,
    rng: np.random.Generator,
    width_multiple: int = 16,
    earlier: bool = False,
):
    """One epoch of ``({"items", "lengths"}, targets)`` batches, as NumPy arrays.

    Rows without any target are dropped; the rest are batched by
    :func:`batch_indices`, and each batch is cut to its longest row rounded
    up to ``width_multiple`` (at most ``L``). With ``earlier``, the inputs
    also hold ``"earlier"``: each row's :meth:`Sequences.earlier_clicks`,
    right-padded with 0 to the batch's longest rounded up to a power of two
    (for ``exclude_history="all"``; few distinct shapes, so that XLA compiles
    the step a few times, not once per batch).
    """
    full_width = sequences.items.shape[1]
    widths = _earlier_widths(sequences) if earlier else None
    for rows in batch_rows(sequences, batch_size, rng):
        longest = max(int(sequences.lengths[rows].max()), 1)
        width = min(full_width, -(-longest // width_multiple) * width_multiple)
        inputs = {
            "items": sequences.items[rows, :width],
            "lengths": sequences.lengths[rows],
        }
        if earlier:
            clicks = [sequences.earlier_clicks(row) for row in rows]
            padded = np.zeros((len(rows), int(widths[rows].max())), np.int32)
            for number, row_clicks in enumerate(clicks):
                padded[number, : len(row_clicks)] = row_clicks
            inputs["earlier"] = padded
        yield inputs, sequences.targets[rows, :width]


def _earlier_widths(sequences: Sequences) -> np.ndarray:
    """Per row, the smallest power of two >= its count of earlier clicks (1 for none).

    A batch's ``"earlier"`` is as wide as its rows' largest: few distinct
    shapes, so that XLA compiles the step a few times, not once per batch.
    """
    if sequences.earlier is None:
        raise ValueError("`earlier=True` needs `sequences.earlier` (windows='all')")
    counts = sequences.earlier_spans[:, 1] - sequences.earlier_spans[:, 0]
    powers = np.left_shift(1, np.arange(63, dtype=np.int64))
    return powers[np.searchsorted(powers, np.maximum(counts, 1))]


def count_batches(sequences: Sequences, batch_size: int, pool: int = 64) -> int:
    """The number of batches :func:`sequence_batches` yields per epoch."""
    rows = int((sequences.targets >= FIRST_ITEM_INDEX).any(axis=1).sum())
    span = batch_size * pool
    full, rest = divmod(rows, span)
    return full * pool + -(-rest // batch_size)


def sequence_dataset(
    sequences: Sequences,
    batch_size: int,
    seed: int,
    width_multiple: int = 16,
    first_epoch: int = 0,
    earlier: bool = False,
):
    """A ``tf.data.Dataset`` of :func:`sequence_batches`, reshuffled every epoch.

    Each pass over the dataset (each Keras epoch) draws a new batch order from
    ``numpy.random.default_rng([seed, epoch])``, the first pass being epoch
    ``first_epoch`` (a resumed training continues the same orders). Shapes are
    declared ``(None, None)``, so batches of any width share one traced step.

    The batches are the same as :func:`sequence_batches`' for the same
    generator, but cut in the graph: Python draws each epoch's row numbers once
    (one ``(batches, batch_size)`` array, -1 past a short last batch, through
    ``tf.numpy_function``), and ``tf.data`` gathers and cuts every batch from
    tensors of the sequences (a copy: 8 bytes per position of ``items`` and
    ``targets``, 9 MB for ML-1M at L=50). (The ``Dataset.from_generator`` it
    replaced cost 30-40 ms of system time per ML-1M step on 2 cores: the first
    element a generator dataset pulls makes TensorFlow reset ``malloc``'s mmap
    threshold, undoing :func:`feedrec.allocator.tune_malloc`; see
    :func:`feedrec.allocator.reapply`.)

    With ``earlier``, the inputs also hold ``"earlier"``, as in
    :func:`sequence_batches` (gathered from a copy of
    :attr:`Sequences.earlier`, 4 bytes per click).
    """
    import itertools

    import tensorflow as tf

    epochs = itertools.count(first_epoch)

    def epoch_rows():
        rng = np.random.default_rng([seed, next(epochs)])
        batches = batch_rows(sequences, batch_size, rng)
        rows = np.full((len(batches), batch_size), -1, np.int64)
        for number, batch_of_rows in enumerate(batches):
            rows[number, : len(batch_of_rows)] = batch_of_rows
        return rows

    items = tf.constant(sequences.items, tf.int32)
    lengths = tf.constant(sequences.lengths, tf.int32)
    targets = tf.constant(sequences.targets, tf.int32)
    full_width = int(sequences.items.shape[1])
    if earlier:
        widths = tf.constant(_earlier_widths(sequences), tf.int64)
        earlier_clicks = tf.constant(sequences.earlier, tf.int32)
        spans = tf.constant(sequences.earlier_spans, tf.int64)

    def batch(rows):
        rows = tf.boolean_mask(rows, rows >= 0)
        batch_lengths = tf.gather(lengths, rows)
        longest = tf.maximum(tf.reduce_max(batch_lengths), 1)
        width = tf.minimum(full_width, -(-longest // width_multiple) * width_multiple)
        inputs = {"items": tf.gather(items, rows)[:, :width], "lengths": batch_lengths}
        if earlier:
            span = tf.gather(spans, rows)
            clicks = tf.gather(earlier_clicks, tf.ragged.range(span[:, 0], span[:, 1]))
            bucket = tf.reduce_max(tf.gather(widths, rows))
            shape = tf.stack([tf.shape(rows, out_type=tf.int64)[0], bucket])
            inputs["earlier"] = clicks.to_tensor(0, shape=shape)
        return inputs, tf.gather(targets, rows)[:, :width]

    def epoch(_):  # runs once per pass: one Python call per epoch
        rows = tf.numpy_function(epoch_rows, [], tf.int64, stateful=True)
        return tf.data.Dataset.from_tensor_slices(tf.ensure_shape(rows, (None, batch_size)))

    dataset = tf.data.Dataset.from_tensors(0).flat_map(epoch).map(batch)
    steps = count_batches(sequences, batch_size)
    return dataset.apply(tf.data.experimental.assert_cardinality(steps)).prefetch(2)


# ---------------------------------------------------------------------------- model


def NextItemTrainer(  # noqa: N802 - factory that returns a keras Model
    recommender,
    loss: str = "full_softmax",
    num_negatives: int = 1024,
    sampling_weights: np.ndarray | None = None,
    seed: int = 0,
    item_bias=None,
    exclude_history: bool | str = False,
):
    """A ``keras.Model`` that trains ``recommender`` on the next-item objective.

    Its ``call`` returns the causal user states ``(batch, width, dim)``; the loss
    scores the states at positions with a target against the catalogue's item
    vectors (the recommender's own item encoder: tied embeddings) with
    :class:`feedrec.tasks.next_item_loss.NextItemSoftmaxLoss`:

    * ``full_softmax``: logits over every item, padding and OOV masked (with
      ``exclude_history``, the clicks each target has seen too:
      :func:`mask_history`; ``"all"`` reads the clicks before the window from
      the inputs' ``"earlier"``, see :func:`sequence_dataset`);
    * ``sampled_softmax``: the target against ``num_negatives`` items drawn
      per batch (shared by its positions) from ``sampling_weights`` (uniform
      when None), logits corrected by ``-log q`` (logQ, with keras-rs'
      ``SamplingProbabilityCorrection``); a negative equal to the row's target
      is masked (keras-rs 0.4's ``RemoveAccidentalHits`` adds ~1e-40 instead of
      a large negative, a no-op: keras-team/keras-rs#206).

    ``item_bias``, a layer mapping item indices to a score offset (e.g.
    :class:`feedrec.layers.FreshnessBias`), is added to every item's logit and
    trained with the recommender; whoever scores with the recommender adds it
    too (it is not part of the recommender or its export).

    Only ``recommender`` is saved; the trainer is a training harness.
    """
    import keras
    import keras_rs
    import tensorflow as tf
    from keras import ops

    from feedrec.layers.masking import large_negative
    from feedrec.tasks.next_item_loss import NextItemSoftmaxLoss

    if loss not in SEQUENTIAL_LOSSES:
        raise ValueError(f"`loss` should be one of {SEQUENTIAL_LOSSES}. Received: loss={loss!r}")
    scope = history_scope(exclude_history)
    if scope and loss != "full_softmax":
        raise ValueError(f'`exclude_history` needs loss="full_softmax". Received: loss={loss!r}')
    num_items = int(recommender.item_encoder.num_items)
    if loss == "sampled_softmax" and num_negatives >= num_items - FIRST_ITEM_INDEX:
        raise ValueError(
            "`num_negatives` should be below the number of real items. Received: "
            f"num_negatives={num_negatives}, num_items={num_items}"
        )

    def normalised(sampling_weights) -> np.ndarray:
        weights = np.zeros(num_items)
        if sampling_weights is None:
            weights[:] = 1.0
        else:
            given = np.asarray(sampling_weights, np.float64)[:num_items]
            weights[: len(given)] = given
        weights[:FIRST_ITEM_INDEX] = 0.0
        if weights.sum() <= 0 or (weights < 0).any():
            raise ValueError(
                "`sampling_weights` should be non-negative and give some real item a "
                f"positive weight. Received: sum={weights.sum()}, min={weights.min()}"
            )
        return (weights / weights.sum()).astype(np.float32)

    probabilities = normalised(sampling_weights)

    class _Trainer(keras.Model):
        def __init__(self):
            super().__init__(name="next_item_trainer")
            self.recommender = recommender
            self.next_item_loss = NextItemSoftmaxLoss()
            self.correction = keras_rs.layers.SamplingProbabilityCorrection(
                epsilon=PROBABILITY_FLOOR
            )
            self.log_probabilities = tf.Variable(
                np.log(np.maximum(probabilities, PROBABILITY_FLOOR)), trainable=False, name="log_q"
            )
            self.generator = tf.random.Generator.from_seed(seed)
            self.all_items = tf.range(num_items, dtype=tf.int32)
            if item_bias is not None and not item_bias.built:
                item_bias(np.zeros((1,), "int32"))  # its variables exist before a traced step
            self.item_bias = item_bias

        def set_sampling_weights(self, weights) -> None:
            """New ``(num_items,)`` weights for ``sampled_softmax`` (e.g. recent clicks)."""
            probabilities = np.maximum(normalised(weights), PROBABILITY_FLOOR)
            self.log_probabilities.assign(np.log(probabilities))

        def call(self, inputs, training=None):
            return self.recommender.sequence_embedding(
                inputs["items"], inputs["lengths"], training=training
            )

        def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
            targets = ops.cast(y, "int32")
            keep = targets >= FIRST_ITEM_INDEX
            states = tf.boolean_mask(y_pred, keep)
            positives = tf.boolean_mask(targets, keep)
            states = ops.cast(states, "float32")
            if loss == "full_softmax":
                catalogue = ops.cast(self.recommender.item_embedding(self.all_items), "float32")
                logits = ops.matmul(states, ops.transpose(catalogue))
                if self.item_bias is not None:
                    logits = logits + self.item_bias(self.all_items)[None, :]
                reserved = ops.arange(num_items) < FIRST_ITEM_INDEX
                logits = ops.where(reserved[None, :], large_negative("float32"), logits)
                if scope:
                    logits = mask_history(
                        logits,
                        x["items"],
                        targets,
                        large_negative("float32"),
                        earlier=self._earlier(x) if scope == "all" else None,
                    )
                value = self.next_item_loss(positives, logits)
            else:
                value = self._sampled(states, positives)
            return value + (ops.sum(self.losses) if self.losses else 0.0)

        @staticmethod
        def _earlier(x):
            if not isinstance(x, dict) or "earlier" not in x:
                raise ValueError(
                    'exclude_history="all" needs the clicks before each window: inputs '
                    '{"items", "lengths", "earlier"} (sequence_dataset(..., earlier=True))'
                )
            return x["earlier"]

        def _sampled(self, states, positives):
            negatives = tf.random.stateless_categorical(
                self.log_probabilities[None, :],
                num_negatives,
                seed=self.generator.make_seeds(1)[:, 0],
                dtype=tf.int32,
            )[0]
            logits = sampled_softmax_logits(
                states,
                self.recommender.item_embedding(positives),
                self.recommender.item_embedding(negatives),
                positives,
                negatives,
                self.log_probabilities,
                correction=self.correction,
            )
            if self.item_bias is not None:  # column 0 is the positive, then the negatives
                logits = ops.concatenate(
                    [
                        logits[:, :1] + self.item_bias(positives)[:, None],
                        logits[:, 1:] + self.item_bias(negatives)[None, :],
                    ],
                    axis=-1,
                )
            return self.next_item_loss(ops.zeros_like(positives), logits)

    return _Trainer()


def history_pairs(items, targets):
    """``(position, item)`` pairs: the clicks each target position has seen.

    For every position ``(b, t)`` with a target (``targets >= FIRST_ITEM_INDEX``),
    numbered in row-major order (as ``tf.boolean_mask`` orders them), a pair
    for each item of ``items[b, : t + 1]`` other than the target itself (a
    re-click is still learned) and padding/OOV; an item seen twice gives two
    pairs.

    Args:
        items: int ``(batch, width)``, the input clicks.
        targets: int ``(batch, width)``, 0 where there is no target.

    Returns:
        int32 ``(pairs, 2)``: the target position's number and the item.
    """
    import tensorflow as tf

    items = tf.cast(items, tf.int32)
    targets = tf.cast(targets, tf.int32)
    where = tf.where(targets >= FIRST_ITEM_INDEX)
    window = tf.gather(items, where[:, 0])  # (positions, width)
    positives = tf.gather_nd(targets, where)
    seen = tf.range(tf.shape(items)[1])[None, :] <= tf.cast(where[:, 1:], tf.int32)
    seen &= (window >= FIRST_ITEM_INDEX) & (window != positives[:, None])
    rows = tf.broadcast_to(tf.range(tf.shape(where)[0])[:, None], tf.shape(window))
    return tf.stack([tf.boolean_mask(rows, seen), tf.boolean_mask(window, seen)], axis=1)


def mask_history(logits, items, targets, value: float, earlier=None):
    """``logits (positions, num_items)`` with the clicks each target has seen set to ``value``.

    The seen clicks are :func:`history_pairs` (each target's inputs),
    scattered into the logits (no dense mask is built); with ``earlier``
    (int ``(batch, E)``, each row's clicks before its window, 0 = padding),
    also those clicks, for every target of the row, except the target itself.
    They are scattered into a ``(batch, num_items)`` mask, gathered to the
    positions. Shapes come from tensors, so it compiles with XLA.
    """
    import tensorflow as tf

    pairs = history_pairs(items, targets)
    fill = tf.fill(tf.shape(pairs)[:1], tf.constant(value, logits.dtype))
    logits = tf.tensor_scatter_nd_update(logits, pairs, fill)
    if earlier is None:
        return logits
    earlier = tf.cast(earlier, tf.int32)
    targets = tf.cast(targets, tf.int32)
    num_items = tf.shape(logits)[1]
    rows = tf.broadcast_to(tf.range(tf.shape(earlier)[0])[:, None], tf.shape(earlier))
    seen = tf.tensor_scatter_nd_max(
        tf.zeros(tf.stack([tf.shape(earlier)[0], num_items]), tf.int32),
        tf.reshape(tf.stack([rows, earlier], axis=-1), [-1, 2]),
        tf.ones(tf.size(earlier), tf.int32),
    )
    where = tf.where(targets >= FIRST_ITEM_INDEX)
    columns = tf.range(num_items)[None, :]
    seen = tf.gather(seen, where[:, 0]) > 0  # (positions, num_items)
    seen &= (columns >= FIRST_ITEM_INDEX) & (columns != tf.gather_nd(targets, where)[:, None])
    return tf.where(seen, tf.constant(value, logits.dtype), logits)


def history_columns(items, targets, num_items: int, earlier=None):
    """Bool ``(positions, num_items)``, True where :func:`mask_history` masks: the dense view."""
    import tensorflow as tf

    positions = tf.reduce_sum(tf.cast(tf.cast(targets, tf.int32) >= FIRST_ITEM_INDEX, tf.int32))
    zeros = tf.zeros(tf.stack([positions, num_items]))
    return mask_history(zeros, items, targets, 1.0, earlier=earlier) > 0


def sampled_softmax_logits(
    states,
    positive_vectors,
    negative_vectors,
    positives,
    negatives,
    log_probabilities,
    correction=None,
):
    """Logits ``(positions, 1 + K)``: the positive in column 0, then shared negatives.

    Each logit is corrected by minus the log of its item's sampling
    probability (logQ; the expected count is ``K`` times it, and ``log K`` is
    common to all columns), and a negative equal to the row's positive gets a
    large negative logit (an accidental hit must not count against itself).

    Args:
        states: float ``(positions, dim)``.
        positive_vectors: float ``(positions, dim)``, the targets' vectors.
        negative_vectors: float ``(K, dim)``.
        positives: int ``(positions,)`` target items.
        negatives: int ``(K,)`` sampled items.
        log_probabilities: float ``(num_items,)`` log sampling probabilities.
        correction: a ``keras_rs.layers.SamplingProbabilityCorrection`` or
            None (one is made).
    """
    import keras_rs
    from keras import ops

    from feedrec.layers.masking import large_negative

    correction = correction or keras_rs.layers.SamplingProbabilityCorrection(
        epsilon=PROBABILITY_FLOOR
    )
    states = ops.cast(states, "float32")
    positive_logits = ops.sum(
        states * ops.cast(positive_vectors, "float32"), axis=-1, keepdims=True
    )
    negative_logits = ops.matmul(states, ops.transpose(ops.cast(negative_vectors, "float32")))
    positive_q = ops.exp(ops.take(log_probabilities, positives))[:, None]
    negative_q = ops.exp(ops.take(log_probabilities, negatives))[None, :]
    positive_logits = correction(positive_logits, positive_q)
    negative_logits = correction(
        negative_logits, ops.broadcast_to(negative_q, ops.shape(negative_logits))
    )
    hit = ops.equal(ops.expand_dims(positives, -1), ops.expand_dims(negatives, 0))
    negative_logits = ops.where(hit, large_negative("float32"), negative_logits)
    return ops.concatenate([positive_logits, negative_logits], axis=-1)


# ---------------------------------------------------------------------------- training


def NextItemValidation(  # noqa: N802 - factory that returns a keras Callback
    recommender,
    valid_batch: Batch,
    exclude: list[np.ndarray],
    *,
    every: int = 1,
    patience: int = 0,
    metric: str = "ndcg@10",
    max_train_seconds: float | None = None,
    sampled_negatives: int = 0,
):
    """Full-catalogue validation every ``every`` epochs; early stopping; a time budget.

    Adds ``val_<metric>`` (and ``val_hr@10``) to the epoch logs when it
    validates, keeps the weights of the best validation, restores them at the
    end, stops after ``patience`` validations without improvement (0 = never)
    and once training has run ``max_train_seconds``. Each validation is kept
    in ``validations`` with its time since the start of training; with
    ``sampled_negatives`` it also holds the ``sampled_uniform_K`` metrics
    (prefixed ``"sampled_uniform_K/"``), which are never used for selection.
    """
    import keras

    from feedrec.evaluation import model_scorer, next_item_targets
    from feedrec.next_item import FULL, evaluate_next_item

    targets = next_item_targets(valid_batch)
    num_items = int(recommender.item_encoder.num_items)
    cutoff = int(metric.split("@")[1]) if "@" in metric else 10

    class _Validation(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.best, self.best_epoch, self.best_weights = -np.inf, -1, None
            self.waited = 0
            self.validations: list[dict] = []
            self.started = None
            self.stopped_for_time = False
            self.seconds_before = 0.0  # training time of the runs this one resumes

        def state(self) -> dict:
            """What a resumed training needs (the best weights are kept apart)."""
            return {
                "best": None if self.best_epoch < 0 else float(self.best),
                "best_epoch": self.best_epoch,
                "waited": self.waited,
                "validations": self.validations,
                "stopped_for_time": self.stopped_for_time,
            }

        def resume(self, state: dict, best_weights, seconds_before: float) -> None:
            self.best = -np.inf if state["best"] is None else state["best"]
            self.best_epoch, self.waited = state["best_epoch"], state["waited"]
            self.validations = list(state["validations"])
            self.stopped_for_time = state["stopped_for_time"]
            self.best_weights, self.seconds_before = best_weights, seconds_before

        def on_train_begin(self, logs=None):
            self.started = time.perf_counter() - self.seconds_before

        def on_train_batch_end(self, batch, logs=None):
            if max_train_seconds and time.perf_counter() - self.started > max_train_seconds:
                self.stopped_for_time = True
                self.model.stop_training = True

        def validate(self, epoch: int) -> dict:
            seconds = time.perf_counter() - self.started
            sampled = (("uniform", sampled_negatives),) if sampled_negatives else ()
            scored = evaluate_next_item(
                {"model": model_scorer(recommender, valid_batch)},
                targets,
                exclude,
                num_items,
                sampled=sampled,
                cutoffs=sorted({10, cutoff}),
            )
            record = {"epoch": epoch + 1, "seconds": seconds}
            record.update({k: v for k, v in scored.pop(FULL)["model"].items() if "@" in k})
            for protocol, by_scorer in scored.items():
                record.update(
                    {f"{protocol}/{k}": v for k, v in by_scorer["model"].items() if "@" in k}
                )
            self.validations.append(record)
            return record

        def on_epoch_end(self, epoch, logs=None):
            final = epoch + 1 >= (self.params or {}).get("epochs", np.inf)
            last = final or self.stopped_for_time or self.model.stop_training
            if not every or ((epoch + 1) % every and not last):
                return
            record = self.validate(epoch)
            value = record[metric]
            if logs is not None:
                logs[f"val_{metric}"] = value
                logs["val_hr@10"] = record["hr@10"]
            logger.info("epoch %d: validation %s %.4f", epoch + 1, metric, value)
            if value > self.best:
                self.best, self.best_epoch, self.waited = value, epoch, 0
                self.best_weights = recommender.get_weights()
            else:
                self.waited += 1
                if patience and self.waited >= patience:
                    self.model.stop_training = True

        def on_train_end(self, logs=None):
            if self.best_weights is not None:
                recommender.set_weights(self.best_weights)

    return _Validation()


def build_sequential_model(
    config: Config, data_dir: str | Path, sequential: SequentialConfig | None = None
):
    """The recommender (causal user encoder) for ``data_dir``'s vocabulary."""
    import keras

    from feedrec.models.recommender import build_model
    from feedrec.training import feature_tables

    manifest = read_json(Path(data_dir) / "manifest.json")
    tables, vocab_sizes = feature_tables(data_dir, config.model.item_features)
    model = build_model(
        config.model,
        int(manifest["num_items"]),
        tables,
        vocab_sizes,
        num_id_items=manifest.get("num_id_items"),
        causal=True,
    )
    if sequential is not None and sequential.item_embedding_stddev:
        table = model.item_encoder.item_embedding.embeddings
        initializer = keras.initializers.RandomNormal(
            stddev=sequential.item_embedding_stddev, seed=config.train.seed
        )
        table.assign(initializer(table.shape, dtype=table.dtype))
    return model, vocab_sizes


def make_optimizer(train_config, sequential: SequentialConfig, total_steps: int):
    """Adam (``LazyAdam`` with ``sparse_updates``) with the schedule over ``total_steps`` steps."""
    import keras

    from feedrec.training import LazyAdam

    rate = train_config.learning_rate
    if sequential.schedule == "cosine":
        decay_steps = max(1, total_steps - sequential.warmup_steps)
        learning_rate = keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=0.0 if sequential.warmup_steps else rate,
            decay_steps=decay_steps,
            alpha=sequential.min_learning_rate / rate,
            warmup_target=rate if sequential.warmup_steps else None,
            warmup_steps=sequential.warmup_steps,
        )
    elif sequential.warmup_steps:
        learning_rate = _Warmup(rate, sequential.warmup_steps)
    else:
        learning_rate = rate
    if train_config.sparse_updates:
        return LazyAdam(learning_rate)
    return keras.optimizers.Adam(learning_rate)


def _Warmup(rate: float, steps: int):  # noqa: N802
    import keras
    from keras import ops

    class Warmup(keras.optimizers.schedules.LearningRateSchedule):
        def __call__(self, step):
            fraction = ops.minimum(1.0, (ops.cast(step, "float32") + 1.0) / steps)
            return rate * fraction

        def get_config(self):
            return {"rate": rate, "steps": steps}

    return Warmup()


def compile_trainer(
    recommender,
    config: Config,
    sequential: SequentialConfig,
    total_steps: int,
    counts=None,
    item_bias=None,
):
    """A compiled :func:`NextItemTrainer` for ``recommender`` (``item_bias``: see there)."""
    weights = counts if sequential.negative_sampling == "popularity" else None
    trainer = NextItemTrainer(
        recommender,
        loss=sequential.loss,
        num_negatives=sequential.num_negatives,
        sampling_weights=weights,
        seed=config.train.seed,
        item_bias=item_bias,
        exclude_history=sequential.exclude_history,
    )
    import tensorflow as tf

    from feedrec.training import resolve_settings

    settings = resolve_settings(config.train, gpu=bool(tf.config.list_physical_devices("GPU")))
    trainer.compile(
        optimizer=make_optimizer(config.train, sequential, total_steps),
        jit_compile=settings.jit_compile,
    )
    return trainer


def _EpochCheckpoints(  # noqa: N802 - factory that returns a keras Callback
    progress, state: dict, validation, partial: Path, writers: dict, seconds_before: float
):
    """Checkpoint the training at every epoch end; write TensorBoard scalars; stop on NaN.

    Runs last (after the validation and the caller's callbacks), so an
    epoch's checkpoint holds its validation and any stop request: the
    weights, optimizer and sampler (``progress``, a
    ``feedrec.training._Progress``), and in ``state`` the epochs done, the
    history so far, the validation state and the training seconds. The best
    weights go to ``best-epoch<N>.npz`` in ``partial`` before the checkpoint
    that names them.
    """
    import keras

    from feedrec.training import NonFiniteLossError, write_scalars

    class EpochCheckpoints(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.started = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            loss = float((logs or {}).get("loss", 0.0))
            if not math.isfinite(loss):
                raise NonFiniteLossError(
                    f"the training loss is {loss} at batch {batch + 1} of epoch "
                    f"{state['epoch'] + 1}; training stopped. The last good checkpoint is "
                    f"{progress.latest or 'none (no epoch finished yet)'}; lower the "
                    "learning rate or check the data, then train again with --overwrite"
                )

        def on_epoch_end(self, epoch, logs=None):
            logs = {k: float(v) for k, v in (logs or {}).items()}
            for name, value in logs.items():
                state["history"].setdefault(name, []).append(value)
            state["epoch"] = epoch + 1
            # an early stop (patience, time budget, a callback) ends the training for good
            state["stopped"] = bool(self.model.stop_training)
            state["train_seconds"] = seconds_before + time.perf_counter() - self.started
            record = None
            if validation is not None:
                records = validation.validations
                if records and records[-1]["epoch"] == epoch + 1:
                    record = records[-1]
                if record is not None and validation.best_epoch == epoch:
                    save_weights(partial / f"best-epoch{epoch + 1}.npz", validation.best_weights)
                state["validation"] = validation.state()
            progress.save({**state, "step": epoch + 1})
            keep = f"best-epoch{(validation.best_epoch + 1) if validation else 0}.npz"
            for old in partial.glob("best-epoch*.npz"):
                if old.name != keep:
                    old.unlink()
            # after the checkpoint: a resumed epoch is never logged twice
            step = int(self.model.optimizer.iterations.numpy())
            rate = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
            scalars = {"epoch_loss": logs.get("loss", np.nan), "learning_rate": rate}
            write_scalars(writers["train"], step, scalars)
            if record is not None:
                scalars = {k: v for k, v in record.items() if k not in ("epoch", "seconds")}
                write_scalars(writers["validation"], step, scalars)

    return EpochCheckpoints()


class ResumeError(ValueError):
    """``RUN_DIR.partial/`` matches the training but cannot be restored.

    A ``ValueError``, so the CLI reports it in one line.
    """


def save_weights(path: Path, weights: list[np.ndarray]) -> None:
    """``weights`` (``model.get_weights()``) to an ``.npz``, atomically."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as file:
        np.savez(file, *weights)
    tmp.replace(path)


def load_weights(path: Path) -> list[np.ndarray]:
    """The weights :func:`save_weights` wrote, in order."""
    with np.load(path, allow_pickle=False) as saved:
        return [saved[f"arr_{i}"] for i in range(len(saved.files))]


def train_sequential(
    data_dir: str | Path,
    out_dir: str | Path,
    config: Config | None = None,
    sequential: SequentialConfig | None = None,
    *,
    overwrite: bool = False,
    verbose: int | None = None,
    callbacks: list | None = None,
) -> dict:
    """Train a causal next-item recommender on ``DATA_DIR`` and write ``RUN_DIR``.

    Crash safety: the training is checkpointed in ``RUN_DIR.partial/`` at the
    end of every epoch (weights, optimizer, sampler, history, validation
    state and best weights; TensorBoard scalars in ``logs/``); the same call
    after a crash resumes at the last finished epoch and ends with the same
    weights as an uninterrupted run (each epoch's batch order is a function
    of ``(seed, epoch)``). A partial training of another config or data is
    refused (discarded with ``overwrite``).

    Args:
        data_dir: a click-log or sequences directory from ``feedrec prepare``.
        out_dir: the run directory to write (``feedrec train``'s layout plus
            ``sequential.json``).
        config: model and train settings; ``model.pooling`` should be
            ``"last"`` (warned otherwise: serving would pool differently
            from training).
        sequential: the objective's settings. Defaults to ``SequentialConfig()``.
        overwrite: replace a non-empty ``out_dir``.
        verbose: Keras verbosity; None = a progress bar on a terminal, one
            line per epoch otherwise.
        callbacks: more Keras callbacks, called after feedrec's validation
            and before its epoch checkpoint (their epoch logs and stop requests
            are part of the checkpoint and the history).

    Returns:
        The training history: per-epoch loss, validations, best epoch, seconds.

    Raises:
        NonFiniteLossError: the loss became NaN or infinite (the last epoch's
            checkpoint stays in ``RUN_DIR.partial/``).
        ResumeError: ``RUN_DIR.partial/`` belongs to this config and data but
            cannot be restored (e.g. written by other code).
    """
    import keras
    import tensorflow as tf

    from feedrec.evaluation import click_log, earlier_items, item_counts
    from feedrec.runs import CHECKPOINTS, LOGS, partial_dir
    from feedrec.training import (
        _fingerprint,
        _open_partial,
        _Progress,
        _summary_writers,
        check_directories,
    )

    config = config or Config()
    sequential = sequential or SequentialConfig()
    if config.train.distribute != "none" or config.train.mixed_precision == "bfloat16":
        raise ValueError(
            "the next-item objective ([sequential]) trains on one device in float32; "
            f"received train.distribute={config.train.distribute!r}, "
            f"train.mixed_precision={config.train.mixed_precision!r} "
            "(use distribute='none' and mixed_precision 'auto' or 'off')"
        )
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    manifest = check_directories(data_dir, out_dir, overwrite)
    if config.model.pooling != "last":
        logger.warning(
            "pooling=%r: the next-item objective trains the state after each click; "
            "serving pools differently unless pooling='last'",
            config.model.pooling,
        )
    length = config.model.history_length
    started = time.perf_counter()
    sequences = load_training_sequences(
        data_dir,
        length,
        sequential.windows,
        sequential.window_stride,
        earlier=sequential.masks_earlier_clicks,
    )
    if sequences.num_targets == 0:
        raise ValueError(f"{split_path(data_dir, 'train')} has no sequence to train on")
    logger.info(
        "next-item training on %d sequences, %d targets", len(sequences), sequences.num_targets
    )
    keras.utils.set_random_seed(config.train.seed)
    model, vocab_sizes = build_sequential_model(config, data_dir, sequential)
    counts = item_counts(data_dir / "items.parquet")
    steps = count_batches(sequences, config.train.batch_size)
    trainer = compile_trainer(model, config, sequential, config.train.epochs * steps, counts=counts)
    trainer.optimizer.build(trainer.trainable_variables)  # its slots are checkpointed

    partial = partial_dir(out_dir)
    _open_partial(
        partial, _fingerprint(config, data_dir, sequential=sequential.to_dict()), overwrite
    )
    progress = _Progress(partial, trainer, trainer.optimizer, sampler=trainer.generator)
    try:
        state = progress.restore()
        best = (state or {}).get("validation") or {"best_epoch": -1}
        best_path = partial / f"best-epoch{best['best_epoch'] + 1}.npz"
        best_weights = load_weights(best_path) if best["best_epoch"] >= 0 else None
    except (AssertionError, OSError, ValueError, tf.errors.OpError) as error:
        raise ResumeError(
            f"{partial} holds a training this code cannot resume ({type(error).__name__}: "
            f"{error}); delete {partial} to train from the start"
        ) from error
    if state is None:
        state = {
            "epoch": 0,
            "stopped": False,
            "history": {},
            "validation": None,
            "train_seconds": 0.0,
        }
    else:
        logger.info(
            "resuming from %s after epoch %d of %d%s",
            progress.latest,
            state["epoch"],
            config.train.epochs,
            " (it had stopped early: only RUN_DIR is left to write)" if state["stopped"] else "",
        )
    seconds_before = state["train_seconds"]

    validation = None
    valid_path = data_dir / "valid.parquet"
    if sequential.validate_every and valid_path.exists() and ExamplesFile(valid_path).num_rows:
        valid_batch = load_split(data_dir, "valid", length)
        exclude = earlier_items(click_log(data_dir), valid_batch)
        validation = NextItemValidation(
            model,
            valid_batch,
            exclude,
            every=sequential.validate_every,
            patience=sequential.patience,
            metric=sequential.validation_metric,
            max_train_seconds=sequential.max_train_seconds,
            sampled_negatives=sequential.validation_sampled_negatives,
        )
        if state["validation"] is not None:
            validation.resume(state["validation"], best_weights, seconds_before)
        own = [validation]
    elif sequential.max_train_seconds:
        own = [_TimeBudget(sequential.max_train_seconds, seconds_before)]
    else:
        own = []
    writers = _summary_writers(partial / LOGS, is_chief=True)
    checkpoints = _EpochCheckpoints(progress, state, validation, partial, writers, seconds_before)

    batches = sequence_dataset(
        sequences,
        config.train.batch_size,
        config.train.seed,
        sequential.width_multiple,
        first_epoch=state["epoch"],
        earlier=sequential.masks_earlier_clicks,
    )
    if verbose is None:
        verbose = 1 if sys.stdout.isatty() else 2
    fit_started = time.perf_counter()
    try:
        trainer.fit(
            batches,
            epochs=config.train.epochs,
            initial_epoch=config.train.epochs if state["stopped"] else state["epoch"],
            callbacks=[*own, *(callbacks or []), checkpoints],
            verbose=verbose,
            shuffle=False,
        )
    finally:
        for writer in writers.values():
            writer.close()
    history: dict[str, Any] = dict(state["history"])
    history["train_seconds"] = seconds_before + time.perf_counter() - fit_started
    history["setup_seconds"] = fit_started - started
    history["epochs_run"] = len(history.get("loss", []))
    if validation is not None:
        history["validations"] = validation.validations
        if validation.best_epoch >= 0:
            history["best_epoch"] = validation.best_epoch + 1
        history["stopped_for_time"] = validation.stopped_for_time

    with atomic_directory(out_dir, overwrite=overwrite) as tmp:
        model.save(tmp / "model.keras")
        write_json(tmp / "config.json", config.to_dict())
        write_json(tmp / "sequential.json", sequential.to_dict())
        write_json(
            tmp / "data.json",
            {
                "data_dir": str(data_dir.resolve()),
                "num_items": int(model.item_encoder.num_items),
                "feature_vocab_sizes": vocab_sizes,
                "format": manifest.get("format"),
                "train_sequences": len(sequences),
                "train_targets": sequences.num_targets,
            },
        )
        (tmp / "items.parquet").write_bytes((data_dir / "items.parquet").read_bytes())
        write_json(tmp / "history.json", history)
        for name in (CHECKPOINTS, LOGS):
            if (partial / name).exists():
                shutil.copytree(partial / name, tmp / name)
    shutil.rmtree(partial, ignore_errors=True)
    logger.info("wrote run directory %s", out_dir)
    return history


def load_sequential_config(
    path: str | Path, overrides: dict[str, dict[str, Any]] | None = None
) -> tuple[Config, SequentialConfig] | None:
    """Read a config file with a ``[sequential]`` table; None if it has none.

    ``[model]`` and ``[train]`` become a :class:`feedrec.config.Config` (with
    ``overrides``, e.g. CLI flags; None values are ignored), ``[sequential]`` a
    :class:`SequentialConfig`; the tables of other commands
    (``feedrec.config.OTHER_SECTIONS``) are ignored, so
    ``benchmarks/configs/ml-1m.toml`` works with ``feedrec train``.
    """
    data = read_config_file(path)
    if "sequential" not in data:
        return None
    sequential = SequentialConfig.from_dict(data.pop("sequential"), f"{path}: [sequential]")
    return config_from_tables(data, overrides, source=str(path)), sequential


def train_from_cli(args) -> bool:
    """``feedrec train`` with a config that has a ``[sequential]`` table.

    Returns False (nothing done) when ``args.config`` has none, so the caller
    trains the usual way.
    """
    overrides = {
        "train": {
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "learning_rate": args.learning_rate,
            "seed": args.seed,
            "distribute": args.distribute,
            "mixed_precision": args.mixed_precision,
        },
        "model": {"history_length": args.history_length, "pooling": args.pooling},
    }
    loaded = load_sequential_config(args.config, overrides) if args.config else None
    if loaded is None:
        return False
    config, sequential = loaded
    history = train_sequential(
        args.data_dir, args.out, config, sequential, overwrite=args.overwrite
    )
    best = history.get("best_epoch")
    if best:
        metric = sequential.validation_metric
        value = next(v[metric] for v in history["validations"] if v["epoch"] == best)
        print(f"best epoch {best}: validation {metric} {value:.4f}; run written to {args.out}")
    else:
        print(f"run written to {args.out}")
    return True


def _TimeBudget(seconds: float, seconds_before: float = 0.0):  # noqa: N802
    import keras

    class TimeBudget(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.started = time.perf_counter() - seconds_before

        def on_train_batch_end(self, batch, logs=None):
            if time.perf_counter() - self.started > seconds:
                self.model.stop_training = True

    return TimeBudget()


def epochs_for(seconds: float, epoch_seconds: float) -> int:
    """How many whole epochs of ``epoch_seconds`` fit in ``seconds`` (at least 1)."""
    return max(1, math.floor(seconds / max(epoch_seconds, 1e-9)))
