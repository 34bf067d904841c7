"""Vectorised value parsing for the readers: casts that locate their failures.

Every function here takes whole Arrow arrays and returns numpy masks of the
rows that failed, so that readers find bad rows without a per-row Python loop
and only then build messages for the few that failed.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

TIME_UNITS = ("auto", "s", "ms", "iso")

#: Epoch values above this are milliseconds (``time_unit="auto"``); 1e11 s is
#: the year 5138, 1e11 ms is March 1973.
AUTO_MS_THRESHOLD = 1e11

_INTEGER = r"^-?\d+$"
_NUMBER = r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$"
_ISO_DATE = r"^\d{4}-\d{2}-\d{2}"
_ISO_TIME = r"([Tt ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?)"
#: What Arrow's timestamp cast does not take as it is: a lower-case ``t``/``z``
#: (RFC 3339 allows them), a fraction finer than microseconds (Java, Go: ns).
_ISO_TO_NORMALISE = r"[tz]|\.\d{7}"
_ISO_ZONE = r"(Z|z|[+-]\d{2}(:?\d{2})?)"
_ISO_NAIVE = f"{_ISO_DATE}{_ISO_TIME}?$"
_ISO_ZONED = f"{_ISO_DATE}{_ISO_TIME}{_ISO_ZONE}$"
_PATTERNS = {pa.int64(): _INTEGER, pa.int32(): _INTEGER, pa.float64(): _NUMBER}
_MAX_EPOCH_MS = 2**62


def to_numpy_mask(mask: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A boolean Arrow array as a numpy mask, nulls counted as False."""
    return np.asarray(pc.fill_null(mask, False).to_numpy(zero_copy_only=False), dtype=bool)


def null_mask(values: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """True where ``values`` is null."""
    return to_numpy_mask(pc.is_null(values))


def empty_mask(values: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """True where a string column is null or ``""``."""
    if pa.types.is_null(values.type):
        return np.ones(len(values), dtype=bool)
    empty = to_numpy_mask(pc.equal(values, ""))
    return empty | null_mask(values) if values.null_count else empty


def matches(values: pa.Array | pa.ChunkedArray, pattern: str) -> np.ndarray:
    """True where a string value fully matches the regular expression ``pattern``."""
    return to_numpy_mask(pc.match_substring_regex(values, pattern))


def safe_cast(
    values: pa.Array | pa.ChunkedArray, target: pa.DataType
) -> tuple[pa.Array, np.ndarray]:
    """Cast ``values`` to ``target``; failed values become null.

    Strings are first checked against a pattern for numeric targets, so the
    common failures are found in one vectorised pass; the rest (overflow, an
    impossible date) are located by bisection, a few casts per bad value.

    Returns:
        The cast array (failures null) and a mask of the non-null values that
        failed.
    """
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    failed = np.zeros(len(values), dtype=bool)
    pattern = _PATTERNS.get(target)
    if pattern is not None and pa.types.is_string(values.type):
        failed = ~matches(values, pattern) & ~null_mask(values)
        if failed.any():
            values = pc.if_else(pa.array(failed), pa.nulls(len(values), values.type), values)
    cast, bisected = _bisect_cast(values, target)
    return cast, failed | bisected


def _bisect_cast(values: pa.Array, target: pa.DataType) -> tuple[pa.Array, np.ndarray]:
    try:
        return pc.cast(values, target), np.zeros(len(values), dtype=bool)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OverflowError):
        if len(values) == 1:
            return pa.nulls(1, target), np.ones(1, dtype=bool)
    middle = len(values) // 2
    left, left_failed = _bisect_cast(values.slice(0, middle), target)
    right, right_failed = _bisect_cast(values.slice(middle), target)
    return pa.concat_arrays([left, right]), np.concatenate([left_failed, right_failed])


def parse_time(values: pa.Array | pa.ChunkedArray, unit: str) -> tuple[np.ndarray, np.ndarray]:
    """Parse a timestamp column to int64 milliseconds since the epoch, UTC.

    Args:
        values: integers or floats (epoch seconds or milliseconds), strings
            (epoch numbers or ISO-8601 ``YYYY-MM-DD[(T| )hh:mm[:ss[.fff...]]]``
            with an optional zone ``Z``/``+hh:mm``; no zone means UTC; digits
            past microseconds are dropped, ``t``/``z`` read as ``T``/``Z``) or
            Arrow timestamps (naive ones are taken as UTC).
        unit: ``"s"`` or ``"ms"`` for epoch numbers, ``"iso"`` for ISO
            strings, or ``"auto"``: ISO strings are parsed as such and epoch
            numbers above ``1e11`` in magnitude are milliseconds, the others
            seconds (decided value by value; before 1970 too).

    Returns:
        ``(milliseconds, failed)``: int64 numpy array (0 where failed) and the
        mask of null or unparsable values.
    """
    if unit not in TIME_UNITS:
        raise ValueError(f"`time_unit` should be one of {TIME_UNITS}. Received: time_unit={unit!r}")
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    kind = values.type
    if pa.types.is_timestamp(kind) or pa.types.is_date(kind):
        milliseconds = pc.cast(pc.cast(values, pa.timestamp("ms"), safe=False), pa.int64())
        failed = null_mask(milliseconds)
        return np.asarray(pc.fill_null(milliseconds, 0).to_numpy(), dtype=np.int64), failed
    if pa.types.is_integer(kind) or pa.types.is_floating(kind):
        if unit == "iso":
            return np.zeros(len(values), dtype=np.int64), np.ones(len(values), dtype=bool)
        return _epoch(values, unit)
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_null(kind)):
        return np.zeros(len(values), dtype=np.int64), np.ones(len(values), dtype=bool)
    values = pc.cast(values, pa.string())
    result = np.zeros(len(values), dtype=np.int64)
    failed = null_mask(values)
    numeric = matches(values, _NUMBER) & ~failed
    if numeric.any():
        if unit == "iso":
            failed |= numeric
        else:
            numbers, bad = safe_cast(values.filter(pa.array(numeric)), pa.float64())
            parsed, parse_failed = _epoch(numbers, unit)
            result[numeric] = parsed
            failed[np.flatnonzero(numeric)[bad | parse_failed]] = True
    text = ~numeric & ~failed
    if text.any():
        if unit in ("s", "ms"):
            failed |= text
        else:
            for pattern, target in (
                (_ISO_NAIVE, pa.timestamp("us")),
                (_ISO_ZONED, pa.timestamp("us", "UTC")),
            ):
                chosen = text & matches(values, pattern)
                if chosen.any():
                    iso = values.filter(pa.array(chosen))
                    if matches(iso, _ISO_TO_NORMALISE).any():  # kept to microseconds
                        iso = pc.replace_substring_regex(iso, r"(\.\d{6})\d+", r"\1")
                        iso = pc.utf8_upper(iso)
                    stamps, bad = safe_cast(iso, target)
                    micros = pc.fill_null(pc.cast(stamps, pa.int64()), 0).to_numpy()
                    result[chosen] = np.floor_divide(micros, 1000)
                    failed[np.flatnonzero(chosen)[bad]] = True
                    text &= ~chosen
            failed |= text
    result[failed] = 0
    return result, failed


def _epoch(values: pa.Array, unit: str) -> tuple[np.ndarray, np.ndarray]:
    """Epoch seconds / milliseconds (per ``unit``) to int64 milliseconds."""
    failed = null_mask(values)
    if pa.types.is_integer(values.type):
        raw = np.asarray(pc.fill_null(pc.cast(values, pa.int64()), 0).to_numpy(), dtype=np.int64)
        seconds = (
            np.full(len(raw), unit == "s") if unit != "auto" else np.abs(raw) <= AUTO_MS_THRESHOLD
        )
        failed |= seconds & (np.abs(raw) > _MAX_EPOCH_MS // 1000)
        result = np.where(seconds & ~failed, raw * 1000, raw)
    else:
        raw = np.asarray(pc.fill_null(pc.cast(values, pa.float64()), 0.0).to_numpy(), dtype=float)
        seconds = (
            np.full(len(raw), unit == "s") if unit != "auto" else np.abs(raw) <= AUTO_MS_THRESHOLD
        )
        scaled = np.where(seconds, raw * 1000.0, raw)
        failed |= ~np.isfinite(scaled) | (np.abs(np.nan_to_num(scaled)) > _MAX_EPOCH_MS)
        result = np.round(np.where(failed, 0.0, scaled)).astype(np.int64)
    result[failed] = 0
    return result, failed
