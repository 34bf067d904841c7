"""``feedrec prepare``: the command-line front of :func:`pipelines.prepare.prepare`.

The main CLI (``feedrec.cli``) builds the ``prepare`` sub-parser with
:func:`add_arguments` and calls :func:`run`. Options come from, in order of
precedence: the command-line flags, the ``[prepare]`` table of ``--config
FILE`` (TOML, JSON or YAML, keys named like the flags with ``_`` or ``-``), then
the defaults of :class:`pipelines.prepare.PrepareOptions`.

Bad input (a malformed row, a missing file, a bad option) prints one line,
``feedrec prepare: error: ...``, on stderr and returns exit code 2, without a
traceback. Progress goes to stderr, the summary to stdout. Nothing here
imports TensorFlow.

Example::

    feedrec prepare --format globo clicks_hour_000-309.zip --out data/globo \\
        --history-length 50 --negatives 4 --on-bad-rows skip
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import zipfile
from pathlib import Path
from typing import Any

from feedrec.config import read_config_file  # plain Python: no TensorFlow
from pipelines.prepare import ENGINES, FORMATS, PrepareOptions, prepare
from pipelines.schema import LAYOUTS, SPLITS

#: Errors caused by the input or the options: one line on stderr, exit code 2.
#: (``BadRowError`` and ``SchemaError`` are ``ValueError``; file problems are ``OSError``.)
USER_ERRORS = (ValueError, KeyError, OSError, zipfile.BadZipFile)
EXIT_USAGE = 2
_OPTION_NAMES = tuple(f.name for f in dataclasses.fields(PrepareOptions))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``prepare`` arguments to ``parser`` (flags default to None: unset)."""
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="log files, folders or archives")
    parser.add_argument("--format", required=True, choices=FORMATS, help="the log format")
    parser.add_argument("--out", required=True, type=Path, metavar="DATA_DIR", help="output folder")
    parser.add_argument(
        "--config", type=Path, metavar="FILE", help="TOML/JSON/YAML with a [prepare] table"
    )
    parser.add_argument("--engine", choices=ENGINES, help="processing engine (default: local)")
    parser.add_argument("--history-length", type=int, metavar="L", help="clicks kept (default: 50)")
    parser.add_argument(
        "--negatives", type=int, metavar="K", help="negatives per click (default: 4)"
    )
    parser.add_argument("--seed", type=int, help="seed of negative sampling (default: 0)")
    parser.add_argument(
        "--on-bad-rows", choices=("error", "skip"), help="stop at a bad row, or skip and count it"
    )
    parser.add_argument(
        "--split-mode",
        choices=("time", "leave-last-out"),
        help="time cutoffs, or per-user leave-last-out (default: time; sequences: leave-last-out)",
    )
    parser.add_argument("--valid-start", metavar="TIME", help="ms since epoch or ISO 8601")
    parser.add_argument("--test-start", metavar="TIME", help="ms since epoch or ISO 8601")
    parser.add_argument(
        "--valid-fraction", type=float, metavar="F", help="share of events for valid (default: 0.1)"
    )
    parser.add_argument(
        "--test-fraction", type=float, metavar="F", help="share of events for test (default: 0.1)"
    )
    parser.add_argument("--min-count", type=int, metavar="N", help="training count for the vocab")
    parser.add_argument(
        "--min-history", type=int, metavar="N", help="skip examples with fewer earlier clicks"
    )
    parser.add_argument(
        "--min-item-interactions",
        type=int,
        metavar="N",
        help="drop items with fewer events (click logs; rows are rejected)",
    )
    parser.add_argument(
        "--negative-sampling", choices=("uniform", "popularity"), help="(default: uniform)"
    )
    parser.add_argument(
        "--negative-window", metavar="DURATION", help="e.g. 6h, 2d: only items seen that recently"
    )
    parser.add_argument(
        "--overwrite", action="store_true", default=None, help="replace a non-empty DATA_DIR"
    )
    parser.add_argument(
        "--max-rows-in-memory", type=int, metavar="N", help="events per partition before spilling"
    )
    parser.add_argument("--num-partitions", type=int, metavar="P", help="partitions when spilling")
    parser.add_argument("--chunk-size", type=int, metavar="N", help="examples per written chunk")
    parser.add_argument("--workers", type=int, metavar="N", help="threads (default: 2)")
    parser.add_argument(
        "--layout",
        choices=LAYOUTS,
        help="each click once + offsets, or history lists in every row (default: compact "
        "where histories come from the clicks, lists for mind and --engine spark)",
    )
    columns = parser.add_argument_group("events format columns")
    for name in ("user", "item", "time", "event", "impression", "session"):
        columns.add_argument(f"--{name}-col", metavar="NAME", help=f"column of {name} values")
    columns.add_argument("--time-unit", choices=("auto", "s", "ms", "iso"), help="time unit")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


def load_prepare_config(path: str | Path | None) -> dict[str, Any]:
    """The ``[prepare]`` table of a TOML, JSON or YAML file, with keys as option names."""
    if path is None:
        return {}
    data = read_config_file(path)
    section = data.get("prepare", {})
    values = {key.replace("-", "_"): value for key, value in section.items()}
    unknown = sorted(set(values) - set(_OPTION_NAMES))
    if unknown:
        raise ValueError(
            f"{path}: unknown [prepare] setting(s) {unknown}; known: {list(_OPTION_NAMES)}"
        )
    return values


def options_from_args(args: argparse.Namespace) -> PrepareOptions:
    """PrepareOptions from defaults < ``--config`` < command-line flags."""
    values = load_prepare_config(getattr(args, "config", None))
    for name in _OPTION_NAMES:
        flag = getattr(args, name, None)
        if flag is not None:
            values[name] = flag
    return PrepareOptions(**values)


def run(args: argparse.Namespace) -> int:
    """Run ``feedrec prepare``; returns the exit code (0, or 2 for bad input)."""
    try:
        options = options_from_args(args)
        manifest = prepare(
            args.format,
            args.inputs,
            args.out,
            options=options,
            progress=not getattr(args, "no_progress", False),
        )
    except USER_ERRORS as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        one_line = " ".join(str(message).split())
        print(f"feedrec prepare: error: {one_line}", file=sys.stderr)
        return EXIT_USAGE
    if manifest["rows_rejected"]:
        print(rejection_summary(manifest), file=sys.stderr)
    print(summary(manifest, args.out))
    return 0


def rejection_summary(manifest: dict) -> str:
    """The rejected raw rows by reason, with an example of each (for stderr)."""
    lines = [f"feedrec prepare: skipped {manifest['rows_rejected']:,} bad row(s):"]
    examples = manifest.get("rejected_examples", {})
    for reason, count in manifest["rejected_by_reason"].items():
        shown = examples.get(reason, [])
        lines.append(f"  {reason}: {count:,}" + (f" (e.g. {shown[0]})" if shown else ""))
    return "\n".join(lines)


def summary(manifest: dict, out: str | Path) -> str:
    """A short human summary of a manifest."""
    lines = [
        f"prepared {out} in {manifest['elapsed_s']:.1f}s ({manifest['format']}, "
        f"{manifest['partitions']} partition(s))",
        f"  rows: {manifest['rows_read']:,} read, {manifest['rows_used']:,} used, "
        f"{manifest['rows_rejected']:,} rejected",
    ]
    if manifest["rejected_by_reason"]:
        reasons = ", ".join(f"{k} {v:,}" for k, v in manifest["rejected_by_reason"].items())
        lines.append(f"  rejected by reason: {reasons}")
    lines.append(
        f"  users: {manifest['users']:,}; items: {manifest['num_items']:,} "
        "(vocabulary, padding and OOV included)"
    )
    for split in SPLITS:
        stats = manifest["splits"][split]
        lines.append(
            f"  {split:<5}: {stats['examples']:>10,} examples, {stats['users']:,} users, "
            f"OOV history {stats['oov']['history']:,}, candidates {stats['oov']['candidates']:,}"
        )
    layout = manifest.get("layout", "lists")
    if layout == "compact":
        lines.append("  layout: compact (each click once in clicks.parquet, rows point into it)")
    else:
        lines.append("  layout: lists (each history in its row)")
    if manifest.get("impressions_without_click"):
        lines.append(
            f"  train impressions without a click: {manifest['impressions_without_click']:,}"
        )
    return "\n".join(lines)
