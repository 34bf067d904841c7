"""Negative sampling, deterministic in ``(seed, example key)``.

Every random number is a counter-based hash, never a global RNG stream, so
any engine (this local one, a future Spark one) and any partitioning or row
order gives the same negatives:

* ``key_hash = fnv1a64(utf8(example_key))``;
* ``stream = splitmix64(key_hash ^ splitmix64(seed mod 2**64))``;
* draw ``c`` of an example is ``splitmix64(stream + c * 0x9E3779B97F4A7C15)``
  (mod 2**64), read as a float in [0, 1) from its top 53 bits.

Two samplers:

* :func:`choose_from_pools` (impression logs such as MIND): each example's
  negatives are up to K of its impression's non-clicked items, the K with the
  smallest ``splitmix64(stream ^ fnv1a64(item_id))`` -- sampling without
  replacement; when fewer than K exist the list is just shorter.
* :class:`NegativeSampler` (click logs without impressions): negatives are
  items *live* at the example time ``t`` and never the positive:

  - ``uniform`` (no window): uniform over items first seen at or before ``t``;
  - ``uniform`` with ``window=w``: uniform over items with at least one
    event in ``[t - w, t]``;
  - ``popularity``: an item drawn with probability proportional to its clicks
    in ``[t - w, t]`` (``[-inf, t]`` without a window) -- popularity up to the
    example time, never after it.

  Negatives of one example are distinct. Slot ``j`` tries up to
  ``max_attempts`` draws (counters ``j * 2**16 + attempt``); if all fail
  (a tiny pool) the list stops there, so it is just shorter.

Item codes index a *sorted* array of raw item ids, so every ordering used in
sampling depends only on the data's content.
"""

from __future__ import annotations

import re

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.sequences import sorted_unique

SAMPLING_MODES = ("uniform", "popularity")
MAX_ATTEMPTS = 32
_SLOT_STRIDE = 1 << 16
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)
_DURATION_UNITS = {
    "ms": 1,
    "s": 1000,
    "m": 60_000,
    "h": 3_600_000,
    "d": 86_400_000,
    "w": 604_800_000,
}


def parse_duration(value: int | str | None, name: str = "negative_window") -> int | None:
    """A duration: int milliseconds, or a string such as ``"90s"``, ``"6h"``, ``"2d"``."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError(f"`{name}` should be a duration. Received: {name}={value!r}")
    if isinstance(value, int | np.integer):
        milliseconds = int(value)
    else:
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*", str(value))
        if not match:
            raise ValueError(
                f"`{name}` should be a duration such as 30m, 6h, 2d or milliseconds. "
                f"Received: {name}={value!r}"
            )
        milliseconds = int(round(float(match.group(1)) * _DURATION_UNITS[match.group(2) or "ms"]))
    if milliseconds <= 0:
        raise ValueError(f"`{name}` should be a positive duration. Received: {name}={value!r}")
    return milliseconds


def splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser of ``x + golden`` (uint64, wrapping), vectorised."""
    z = np.asarray(x, dtype=np.uint64) + _GOLDEN
    shifted = np.empty_like(z)
    for shift, multiplier in ((30, _MIX1), (27, _MIX2)):  # in place: no temporaries
        np.right_shift(z, np.uint64(shift), out=shifted)
        np.bitwise_xor(z, shifted, out=z)
        np.multiply(z, multiplier, out=z)
    np.right_shift(z, np.uint64(31), out=shifted)
    return np.bitwise_xor(z, shifted, out=z)


def hash_strings(
    values: pa.Array | pa.ChunkedArray | list, initial: np.ndarray | None = None
) -> np.ndarray:
    """FNV-1a 64 of each string's UTF-8 bytes (uint64), vectorised over byte positions.

    ``initial`` (uint64 per string) continues hashes already computed over a
    prefix: ``hash_strings([b], initial=hash_strings([a])) == hash_strings([a + b])``.
    Nulls hash like the empty string.
    """
    if isinstance(values, list):
        values = pa.array(values, pa.string())
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if not pa.types.is_large_string(values.type):
        values = values.cast(pa.large_string())
    n = len(values)
    if initial is None:
        result = np.full(n, _FNV_OFFSET, dtype=np.uint64)
    else:
        result = np.array(initial, dtype=np.uint64, copy=True)
    if n == 0:
        return result
    buffers = values.buffers()
    offsets = np.frombuffer(buffers[1], dtype=np.int64, count=n + 1, offset=values.offset * 8)
    data = (
        np.frombuffer(buffers[2], dtype=np.uint8)
        if buffers[2] is not None
        else np.zeros(0, np.uint8)
    )
    lengths = np.diff(offsets)
    if values.null_count:
        lengths = np.where(values.is_null().to_numpy(zero_copy_only=False), 0, lengths)
    order = np.argsort(-lengths, kind="stable")  # longest first: active rows are a prefix
    starts, sorted_lengths = offsets[:-1][order], lengths[order]
    hashes = result[order]
    active = n
    for position in range(int(sorted_lengths[0]) if n else 0):
        while active and sorted_lengths[active - 1] <= position:
            active -= 1
        block = data[starts[:active] + position].astype(np.uint64)
        hashes[:active] = (hashes[:active] ^ block) * _FNV_PRIME
    result[order] = hashes
    return result


def hash_append_int(hashes: np.ndarray, numbers: np.ndarray, separator: str = "/") -> np.ndarray:
    """Continue FNV-1a hashes over ``f"{separator}{number}"`` (non-negative integers).

    ``hash_append_int(hash_strings(["u1"]), [12]) == hash_strings(["u1/12"])``, without
    building the strings.
    """
    hashes = np.array(hashes, dtype=np.uint64, copy=True)
    numbers = np.asarray(numbers, np.int64)
    if (numbers < 0).any():
        raise ValueError("`numbers` should be non-negative")
    for byte in separator.encode("utf-8"):
        hashes = (hashes ^ np.uint64(byte)) * _FNV_PRIME
    digits = np.ones(len(numbers), np.int64)
    power = 10
    while len(numbers) and power <= numbers.max():
        digits += numbers >= power
        power *= 10
    for position in range(int(digits.max()) - 1 if len(numbers) else -1, -1, -1):
        if position == 0:  # every number has a units digit: no gathers
            digit = (numbers % 10 + ord("0")).astype(np.uint64)
            hashes ^= digit
            hashes *= _FNV_PRIME
            continue
        active = np.flatnonzero(digits > position)
        digit = (numbers[active] // 10**position) % 10 + ord("0")
        hashes[active] = (hashes[active] ^ digit.astype(np.uint64)) * _FNV_PRIME
    return hashes


def stream_keys(seed: int, key_hashes: np.ndarray) -> np.ndarray:
    """Per-example stream keys ``splitmix64(key_hash ^ splitmix64(seed))``."""
    seed_mix = splitmix64(np.array([int(seed) % (1 << 64)], dtype=np.uint64))[0]
    return splitmix64(np.asarray(key_hashes, np.uint64) ^ seed_mix)


def uniform_draws(streams: np.ndarray, counter: int) -> np.ndarray:
    """Float64 draws in [0, 1): draw number ``counter`` of each stream."""
    step = np.uint64((int(counter) * int(_GOLDEN)) % (1 << 64))
    bits = splitmix64(streams + step)
    draws = np.right_shift(bits, np.uint64(11), out=bits).astype(np.float64)
    draws *= 1.0 / (1 << 53)
    return draws


def choose_from_pools(
    streams: np.ndarray,
    start: np.ndarray,
    end: np.ndarray,
    value_hashes: np.ndarray,
    num_negatives: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Up to ``num_negatives`` of ``pool[start[i]:end[i]]`` per example, without replacement.

    Each pool entry gets the priority ``splitmix64(stream ^ value_hash)``; the
    smallest ``num_negatives`` are kept, in priority order.

    Returns:
        ``(offsets, flat)``: int64 list offsets (n + 1,) and the chosen
        indices into the pool, ready for ``pa.ListArray.from_arrays``.
    """
    start = np.asarray(start, np.int64)
    lengths = np.asarray(end, np.int64) - start
    n = len(lengths)
    pair_offsets = np.zeros(n + 1, np.int64)
    np.cumsum(lengths, out=pair_offsets[1:])
    total = int(pair_offsets[-1])
    pair_example = np.repeat(np.arange(n), lengths)
    pair_value = np.arange(total, dtype=np.int64) + np.repeat(start - pair_offsets[:-1], lengths)
    priority = splitmix64(streams[pair_example] ^ np.asarray(value_hashes, np.uint64)[pair_value])
    order = np.lexsort((pair_value, priority, pair_example))
    rank = np.arange(total) - pair_offsets[:-1][pair_example[order]]
    keep = order[rank < num_negatives]
    counts = np.minimum(lengths, num_negatives)
    offsets = np.zeros(n + 1, np.int64)
    np.cumsum(counts, out=offsets[1:])
    return offsets, pair_value[keep]


class NegativeSampler:
    """Draws negatives among the items live at each example's time (see the module doc).

    Build it with :meth:`from_events` (or an :class:`ActivityAccumulator` fed
    partition by partition), then call :meth:`sample`.

    Args:
        num_items: int. Item codes are ``0 .. num_items - 1``.
        first_seen: int64 array (num_items,), each item's first event time;
            ``np.iinfo(np.int64).max`` for items without events.
        sampling: ``"uniform"`` or ``"popularity"``.
        window: int or None. Milliseconds before the example time an item
            must have been seen in (uniform) or clicked in (popularity).
        click_items: int array, the click log's items sorted by (time, item)
            (popularity only).
        click_times: int64 array, the matching times.
        intervals: ``(items, starts, ends)`` of each item's live intervals,
            ``[event time, event time + window]`` merged (uniform with a window only).
    """

    def __init__(
        self,
        *,
        num_items: int,
        first_seen: np.ndarray,
        sampling: str = "uniform",
        window: int | None = None,
        click_items: np.ndarray | None = None,
        click_times: np.ndarray | None = None,
        intervals: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    ):
        check_sampling(sampling, window)
        self.num_items = int(num_items)
        self.sampling = sampling
        self.window = window
        self.first_seen = np.asarray(first_seen, np.int64)
        if sampling == "popularity":
            if click_items is None or click_times is None:
                raise ValueError("popularity sampling needs `click_items` and `click_times`")
            self._click_items = np.asarray(click_items, np.int64)
            self._click_times = np.asarray(click_times, np.int64)
        elif window is None:
            known = np.flatnonzero(self.first_seen < np.iinfo(np.int64).max)
            order = np.lexsort((known, self.first_seen[known]))
            self._pool_items = known[order]
            self._pool_first_seen = self.first_seen[self._pool_items]
        else:
            if intervals is None:
                raise ValueError("uniform sampling with a window needs `intervals`")
            self._build_buckets(*intervals)

    @classmethod
    def from_events(
        cls,
        item_codes: np.ndarray,
        times: np.ndarray,
        labels: np.ndarray,
        *,
        num_items: int,
        sampling: str = "uniform",
        window: int | None = None,
    ) -> NegativeSampler:
        """A sampler from all the events of the log (item codes, times, labels)."""
        accumulator = ActivityAccumulator(num_items, sampling=sampling, window=window)
        accumulator.add(item_codes, times, labels)
        return accumulator.build()

    def _build_buckets(self, items: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> None:
        # Live intervals, sorted by (item, start), searched by the rank of their start.
        order = np.lexsort((starts, items))
        self._interval_items = np.asarray(items, np.int64)[order]
        self._interval_starts = np.asarray(starts, np.int64)[order]
        self._interval_ends = np.asarray(ends, np.int64)[order]
        self._start_ranks = sorted_unique(self._interval_starts)
        self._interval_keys = self._interval_items * (len(self._start_ranks) + 1) + (
            np.searchsorted(self._start_ranks, self._interval_starts) + 1
        )
        # Buckets of width window/4: the items live at some time in each bucket
        # (a superset of those live at any one time in it: about 80% are).
        self._bucket_width = max(1, self.window // 4)
        self._origin = int(self._interval_starts.min()) if len(starts) else 0
        first = (self._interval_starts - self._origin) // self._bucket_width
        last = (self._interval_ends - self._origin) // self._bucket_width
        counts = last - first + 1
        num_buckets = int(last.max()) + 1 if len(last) else 0
        pair_offsets = np.zeros(len(counts) + 1, np.int64)
        np.cumsum(counts, out=pair_offsets[1:])
        buckets = np.arange(int(pair_offsets[-1]), dtype=np.int64) + np.repeat(
            first - pair_offsets[:-1], counts
        )
        pairs = sorted_unique(buckets * self.num_items + np.repeat(self._interval_items, counts))
        self._bucket_items = pairs % max(self.num_items, 1)
        self._bucket_offsets = np.searchsorted(
            pairs // max(self.num_items, 1), np.arange(num_buckets + 1)
        )

    def _ranges(self, times: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per example, the proposal array and the range ``[lo, hi)`` to draw from."""
        if self.sampling == "popularity":
            hi = np.searchsorted(self._click_times, times, side="right")
            if self.window is None:
                lo = np.zeros_like(hi)
            else:
                lo = np.searchsorted(self._click_times, times - self.window, side="left")
            return self._click_items, lo, hi
        if self.window is None:
            hi = np.searchsorted(self._pool_first_seen, times, side="right")
            return self._pool_items, np.zeros_like(hi), hi
        num_buckets = len(self._bucket_offsets) - 1
        bucket = (times - self._origin) // self._bucket_width
        valid = (bucket >= 0) & (bucket < num_buckets)
        bucket = np.clip(bucket, 0, max(num_buckets - 1, 0))
        if num_buckets == 0:
            zeros = np.zeros(len(times), np.int64)
            return self._bucket_items, zeros, zeros
        lo = np.where(valid, self._bucket_offsets[bucket], 0)
        hi = np.where(valid, self._bucket_offsets[bucket + 1], 0)
        return self._bucket_items, lo, hi

    def _live(self, items: np.ndarray, times: np.ndarray) -> np.ndarray:
        if self.sampling == "popularity" or self.window is None:
            return np.ones(len(items), dtype=bool)
        rank = np.searchsorted(self._start_ranks, times, side="right")
        keys = items * (len(self._start_ranks) + 1) + rank
        index = np.searchsorted(self._interval_keys, keys, side="right") - 1
        found = index >= 0
        index = np.maximum(index, 0)
        return (
            found
            & (self._interval_items[index] == items)
            & (self._interval_ends[index] >= times)
            & (self._interval_starts[index] <= times)
        )

    def sample(
        self,
        key_hashes: np.ndarray,
        times: np.ndarray,
        positives: np.ndarray,
        num_negatives: int,
        seed: int,
        *,
        max_attempts: int = MAX_ATTEMPTS,
    ) -> np.ndarray:
        """Negatives for each example, an int64 matrix ``(n, num_negatives)``, ``-1`` = none.

        Args:
            key_hashes: uint64 array (n,), ``hash_strings(example_keys)``.
            times: int64 array (n,), the example times.
            positives: int array (n,), the clicked item codes (never drawn).
            num_negatives: int. K.
            seed: int.
            max_attempts: int. Draws tried per slot before giving up.

        Each row is filled left to right; a row stops at its first unfilled slot.
        """
        times = np.asarray(times, np.int64)
        positives = np.asarray(positives, np.int64)
        n = len(times)
        # Slot-major (each slot's draws contiguous); returned as the (n, K) view.
        out = np.full((num_negatives, n), -1, dtype=np.int64)
        if n == 0 or num_negatives == 0:
            return out.T
        streams = stream_keys(seed, key_hashes)
        proposals, lo, hi = self._ranges(times)
        width = hi - lo
        capacity = np.where(width > 0, num_negatives, 0)
        if self.sampling == "uniform" and self.window is None:
            positive_in_pool = self.first_seen[np.clip(positives, 0, None)] <= times
            capacity = np.minimum(width - (positive_in_pool & (positives >= 0)), num_negatives)
        alive = capacity > 0  # rows whose previous slots were all filled
        always_live = self.sampling == "popularity" or self.window is None
        for slot in range(num_negatives):
            active = np.flatnonzero(alive & (capacity > slot))
            filled = np.zeros(n, dtype=bool)
            for attempt in range(max_attempts):
                if not len(active):
                    break
                every = len(active) == n
                rows = slice(None) if every else active  # every row: no copies
                draws = uniform_draws(streams[rows], slot * _SLOT_STRIDE + attempt)
                span = width[rows]
                draws *= span
                pick = np.minimum(draws.astype(np.int64), span - 1)
                pick += lo[rows]
                candidate = proposals[pick]
                ok = candidate != positives[rows]
                for earlier in range(slot):  # distinct from the slots already filled
                    ok &= out[earlier, rows] != candidate
                if not always_live:
                    ok &= self._live(candidate, times[rows])
                if every:  # no gathers: the rows are the positions
                    np.copyto(out[slot], candidate, where=ok)
                    filled |= ok
                    active = np.flatnonzero(~ok)
                    continue
                done = active[ok]
                out[slot, done] = candidate[ok]
                filled[done] = True
                active = active[~ok]
            alive &= filled
        return out.T


class ActivityAccumulator:
    """Collects what :class:`NegativeSampler` needs, one batch of events at a time.

    ``first_seen`` is a running minimum; popularity keeps the clicks' (time,
    item); uniform sampling with a window keeps merged live intervals. The
    result does not depend on how the events were batched.
    """

    def __init__(self, num_items: int, *, sampling: str = "uniform", window: int | None = None):
        check_sampling(sampling, window)
        self.num_items, self.sampling, self.window = int(num_items), sampling, window
        self.first_seen = np.full(self.num_items, np.iinfo(np.int64).max, dtype=np.int64)
        self._clicks: list[tuple[np.ndarray, np.ndarray]] = []
        self._intervals: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def add(self, item_codes: np.ndarray, times: np.ndarray, labels: np.ndarray) -> None:
        item_codes = np.asarray(item_codes, np.int64)
        times = np.asarray(times, np.int64)
        np.minimum.at(self.first_seen, item_codes, times)
        if self.sampling == "popularity":
            clicked = np.asarray(labels) == 1
            self._clicks.append((item_codes[clicked], times[clicked]))
        elif self.window is not None:
            self._intervals.append(merge_intervals(item_codes, times, times + self.window))

    def build(self) -> NegativeSampler:
        kwargs = {}
        if self.sampling == "popularity":
            items = np.concatenate([c[0] for c in self._clicks] or [np.zeros(0, np.int64)])
            times = np.concatenate([c[1] for c in self._clicks] or [np.zeros(0, np.int64)])
            order = np.lexsort((items, times))
            kwargs.update(click_items=items[order], click_times=times[order])
        elif self.window is not None:
            parts = self._intervals or [(np.zeros(0, np.int64),) * 3]
            kwargs["intervals"] = merge_intervals(
                *(np.concatenate(p) for p in zip(*parts, strict=True))
            )
        return NegativeSampler(
            num_items=self.num_items,
            first_seen=self.first_seen,
            sampling=self.sampling,
            window=self.window,
            **kwargs,
        )


def merge_intervals(
    items: np.ndarray, starts: np.ndarray, ends: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Merge overlapping ``[start, end]`` intervals of the same item (vectorised)."""
    items, starts, ends = (np.asarray(a, np.int64) for a in (items, starts, ends))
    if not len(items):
        return items, starts, ends
    order = np.lexsort((starts, items))
    items, starts, ends = items[order], starts[order], ends[order]
    # Running maximum of `end` within each item: offset items far apart.
    ranks = sorted_unique(np.concatenate([starts, ends]))
    span = len(ranks) + 1
    start_keys = items * span + np.searchsorted(ranks, starts)
    end_keys = np.maximum.accumulate(items * span + np.searchsorted(ranks, ends))
    new = np.ones(len(items), dtype=bool)
    new[1:] = start_keys[1:] > end_keys[:-1]
    group = np.cumsum(new) - 1
    first = np.flatnonzero(new)
    merged_ends = np.full(len(first), np.iinfo(np.int64).min, np.int64)
    np.maximum.at(merged_ends, group, ends)
    return items[first], starts[first], merged_ends


def check_sampling(sampling: str, window: int | None) -> None:
    if sampling not in SAMPLING_MODES:
        raise ValueError(
            f"`negative_sampling` should be one of {SAMPLING_MODES}. "
            f"Received: negative_sampling={sampling!r}"
        )
    if window is not None and (not isinstance(window, int | np.integer) or window <= 0):
        raise ValueError(
            f"`negative_window` should be a positive number of milliseconds or None. "
            f"Received: negative_window={window!r}"
        )


def sample_negatives(
    events: pa.Table,
    examples: pa.Table,
    *,
    num_negatives: int,
    seed: int = 0,
    sampling: str = "uniform",
    window: int | str | None = None,
) -> pa.Table:
    """Add ``negatives`` (``list<string>`` of raw item ids) to click ``examples``.

    The table-level form of :class:`NegativeSampler`.

    Args:
        events: canonical events (``pipelines.schema.EVENTS``) of the whole log.
        examples: a table with ``example_key``, ``time`` and ``item_id`` (the positive).
        num_negatives: int. K, the negatives per example (fewer when the pool is smaller).
        seed: int. Defaults to 0.
        sampling: ``"uniform"`` or ``"popularity"``. Defaults to ``"uniform"``.
        window: int milliseconds, a duration string (``"6h"``) or None. Defaults to None.
    """
    check_num_negatives(num_negatives)
    window = parse_duration(window)
    items = pc.unique(
        pa.chunked_array(
            [events.column("item_id").combine_chunks(), examples.column("item_id").combine_chunks()]
        ).combine_chunks()
    )
    items = items.take(pc.array_sort_indices(items))
    sampler = NegativeSampler.from_events(
        pc.index_in(events.column("item_id"), items).to_numpy(),
        events.column("time").to_numpy(),
        events.column("label").to_numpy(),
        num_items=len(items),
        sampling=sampling,
        window=window,
    )
    matrix = sampler.sample(
        hash_strings(examples.column("example_key")),
        examples.column("time").to_numpy(),
        pc.index_in(examples.column("item_id"), items).to_numpy(),
        num_negatives,
        seed,
    )
    return examples.append_column("negatives", matrix_to_lists(matrix, items))


def matrix_to_lists(
    matrix: np.ndarray, values: pa.Array | np.ndarray | None = None
) -> pa.ListArray:
    """Rows of a ``-1``-filled matrix (each a prefix of real entries) -> a list array.

    Row ``i`` becomes ``matrix[i, :k]``, ``k`` its count of entries ``>= 0``;
    the list values have the matrix's integer type. With ``values``, the
    entries are indices into it.
    """
    matrix = np.asarray(matrix)
    valid = matrix >= 0
    full = bool(valid.all())  # every row full (the common case): no row sums, no mask
    counts = np.full(matrix.shape[0], matrix.shape[1]) if full else valid.sum(axis=1)
    offsets = np.zeros(matrix.shape[0] + 1, np.int64)
    np.cumsum(counts, out=offsets[1:])
    if offsets[-1] >= np.iinfo(np.int32).max:
        raise ValueError(f"too many list values ({offsets[-1]}) for one list array")
    if full:
        flat = matrix.reshape(-1)
    else:
        flat = matrix[np.arange(matrix.shape[1]) < counts[:, None]]  # row-major: rows in order
    offsets = pa.array(offsets.astype(np.int32))
    if values is not None:
        return pa.ListArray.from_arrays(offsets, values.take(pa.array(flat)))
    return pa.ListArray.from_arrays(offsets, pa.array(flat))


def check_num_negatives(num_negatives: int) -> None:
    if (
        not isinstance(num_negatives, int | np.integer)
        or isinstance(num_negatives, bool)
        or (num_negatives < 0)
    ):
        raise ValueError(
            "`num_negatives` should be a non-negative integer. "
            f"Received: num_negatives={num_negatives!r}"
        )


def choose_negatives(
    example_keys: pa.Array | list, pools: pa.ListArray, *, num_negatives: int, seed: int = 0
) -> pa.ListArray:
    """Table-level :func:`choose_from_pools`: up to K items of each example's pool.

    ``pools`` is a ``list<string>`` array of raw item ids.
    """
    check_num_negatives(num_negatives)
    if isinstance(pools, pa.ChunkedArray):
        pools = pools.combine_chunks()
    offsets = pools.offsets.to_numpy().astype(np.int64)
    streams = stream_keys(seed, hash_strings(example_keys))
    out_offsets, flat = choose_from_pools(
        streams, offsets[:-1], offsets[1:], hash_strings(pools.values), num_negatives
    )
    return pa.ListArray.from_arrays(
        pa.array(out_offsets.astype(np.int32)), pools.values.take(pa.array(flat))
    )
