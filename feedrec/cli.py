"""The ``feedrec`` command line.

Subcommands (names and flags are a contract; see README "CLI reference")::

    feedrec demo [--workdir DIR]
    feedrec prepare --format {mind,events,globo,sequences} INPUT... --out DATA_DIR [...]
    feedrec train DATA_DIR --out RUN_DIR [--config FILE] [--epochs N]
    feedrec evaluate RUN_DIR DATA_DIR [--split test] [--json FILE]
    feedrec export RUN_DIR --out EXPORT_BASE
    feedrec recommend EXPORT_DIR --history N1,N2,... [--catalog FILE] [--top-k 10]

Errors in the user's input print one line (``feedrec: error: ...``) and exit
with status 2, without a traceback. TensorFlow is imported only by the
subcommands that need it, after its C++ log noise has been turned down
(oneDNN stays on). ``train``, ``evaluate`` and ``demo`` keep TensorFlow's large
buffers in the process (``feedrec.allocator.tune_malloc``).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from feedrec import __version__

logger = logging.getLogger("feedrec")

# Commands whose work is TensorFlow's on CPU: glibc's malloc is tuned for them (feedrec.allocator)
TUNED_COMMANDS = ("train", "evaluate", "demo")
USER_ERRORS = (
    ValueError,
    FileNotFoundError,
    FileExistsError,
    NotADirectoryError,
    IsADirectoryError,
    PermissionError,
    KeyError,
)


def quiet_tensorflow() -> None:
    """Keep TensorFlow's C++ start-up noise out of the CLI's output.

    Sets ``TF_CPP_MIN_LOG_LEVEL=2`` unless the user chose a level, and filters
    the native lines that ignore it (see ``feedrec._stderr``). oneDNN stays on
    (disabling it halves CPU speed).
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    from feedrec._stderr import filter_tensorflow_noise

    filter_tensorflow_noise()
    for name in ("absl", "tensorflow"):  # their Python loggers: INFO lines are noise here
        logging.getLogger(name).setLevel(logging.WARNING)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="feedrec",
        description="Masked self-attention recommender for click-sequence feeds.",
    )
    parser.add_argument("--version", action="version", version=f"feedrec {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    demo = sub.add_parser(
        "demo",
        help="generate a synthetic news log, then prepare, train, evaluate and export",
        description="End-to-end demo on an embedded synthetic news click log (no download).",
    )
    demo.add_argument(
        "--workdir",
        type=Path,
        default=Path("feedrec-demo"),
        help="where to write the log, data, run and export (default: ./feedrec-demo)",
    )
    demo.add_argument(
        "--scale",
        choices=("small", "default"),
        default="default",
        help="size of the generated log (default: default)",
    )
    demo.add_argument("--epochs", type=int, default=None, help="override the demo's epochs")
    demo.add_argument("--seed", type=int, default=0, help="seed of the generator and training")

    prepare = sub.add_parser(
        "prepare",
        help="build click-sequence examples from raw logs",
        description="Raw logs -> examples (Parquet) + vocabularies + manifest.json.",
    )
    from pipelines import cli as pipelines_cli

    pipelines_cli.add_arguments(prepare)

    train = sub.add_parser("train", help="train a model on a prepared DATA_DIR")
    train.add_argument("data_dir", type=Path, metavar="DATA_DIR")
    train.add_argument("--out", type=Path, required=True, metavar="RUN_DIR")
    train.add_argument("--config", type=Path, metavar="FILE", help="TOML/JSON/YAML config")
    train.add_argument("--epochs", type=int, help="override train.epochs")
    train.add_argument("--batch-size", type=int, help="override train.batch_size")
    train.add_argument("--learning-rate", type=float, help="override train.learning_rate")
    train.add_argument("--seed", type=int, help="override train.seed")
    train.add_argument("--history-length", type=int, help="override model.history_length")
    train.add_argument("--pooling", help="override model.pooling")
    train.add_argument(
        "--distribute",
        choices=("none", "mirrored", "multi-worker"),
        help="override train.distribute: one device, all local GPUs, or a TF_CONFIG cluster",
    )
    train.add_argument(
        "--mixed-precision",
        choices=("auto", "off", "bfloat16"),
        help="override train.mixed_precision (auto: bfloat16 with a GPU, off on CPU)",
    )
    train.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing RUN_DIR (an interrupted run of the same command resumes "
        "without it)",
    )

    evaluate = sub.add_parser("evaluate", help="evaluate a run on a split of a DATA_DIR")
    evaluate.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    evaluate.add_argument("data_dir", type=Path, metavar="DATA_DIR")
    evaluate.add_argument("--split", default="test", help="split to evaluate (default: test)")
    evaluate.add_argument("--json", type=Path, metavar="FILE", help="also write the metrics here")
    evaluate.add_argument("--seed", type=int, default=0, help="seed of the baselines' tie-breaking")
    evaluate.add_argument(
        "--protocol",
        choices=("auto", "impression", "next_item"),
        default="auto",
        help="auto (default): impression logs -> impression, click logs/sequences -> next_item",
    )

    export = sub.add_parser("export", help="export a run as a TF Serving SavedModel")
    export.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    export.add_argument(
        "--out",
        type=Path,
        required=True,
        metavar="EXPORT_BASE",
        help="writes EXPORT_BASE/<version>/ (a new integer version)",
    )
    export.add_argument(
        "--jit-compile",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="compile the numeric part with XLA: about 2x faster on CPU, but TF Serving "
        "then needs --xla_cpu_compilation_enabled=true (default: off)",
    )

    recommend = sub.add_parser("recommend", help="top items for a history, from an export")
    recommend.add_argument(
        "export_dir",
        type=Path,
        metavar="EXPORT_DIR",
        help="an export version directory, or an EXPORT_BASE (its highest version)",
    )
    recommend.add_argument(
        "--history", required=True, help="comma-separated raw item ids, oldest first"
    )
    recommend.add_argument(
        "--catalog",
        type=Path,
        metavar="FILE",
        help="candidate raw ids, one per line (default: the export's items)",
    )
    recommend.add_argument("--top-k", type=int, default=10)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    if args.command != "prepare":
        quiet_tensorflow()
    if args.command in TUNED_COMMANDS:
        from feedrec.allocator import tune_malloc

        tune_malloc()
    try:
        return int(COMMANDS[args.command](args) or 0)
    except USER_ERRORS as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"feedrec {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("feedrec: interrupted", file=sys.stderr)
        return 130


def _prepare(args) -> int:
    from pipelines import cli as pipelines_cli

    return pipelines_cli.run(args)


def _train(args) -> int:
    from feedrec.config import load_config
    from feedrec.sequential import train_from_cli
    from feedrec.training import train

    if train_from_cli(args):  # the config has a [sequential] table: the next-item objective
        return 0
    config = load_config(
        args.config,
        {
            "train": {
                "epochs": args.epochs,
                "batch_size": args.batch_size,
                "learning_rate": args.learning_rate,
                "seed": args.seed,
                "distribute": args.distribute,
                "mixed_precision": args.mixed_precision,
            },
            "model": {"history_length": args.history_length, "pooling": args.pooling},
        },
    )
    history = train(args.data_dir, args.out, config, overwrite=args.overwrite)
    if "val_auc" in history:
        print(
            f"best epoch {history['best_epoch']}: validation AUC "
            f"{max(history['val_auc']):.4f}; run written to {args.out}"
        )
    else:
        print(f"run written to {args.out}")
    return 0


def _evaluate(args) -> int:
    from feedrec.evaluation import evaluate_run, format_table
    from feedrec.runs import null_if_not_finite, write_json

    results = evaluate_run(
        args.run_dir, args.data_dir, args.split, seed=args.seed, protocol=args.protocol
    )
    print(f"{args.split}: {results['examples']} examples")
    print(format_table(results))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        write_json(args.json, null_if_not_finite(results))  # undefined metrics: null
    return 0


def _export(args) -> int:
    from feedrec.export import export_run

    path = export_run(args.run_dir, args.out, jit_compile=args.jit_compile)
    print(path)
    return 0


def _recommend(args) -> int:
    from feedrec.export import recommend

    # ids are stripped the same way in both ("N1, N2" is N1 and N2)
    history = [item.strip() for item in args.history.split(",") if item.strip()]
    catalog = None
    if args.catalog:
        lines = args.catalog.read_text(encoding="utf-8").splitlines()
        catalog = [line.strip() for line in lines if line.strip()]
    for rank, (item, score) in enumerate(
        recommend(args.export_dir, history, catalog=catalog, top_k=args.top_k), start=1
    ):
        print(f"{rank:>3}  {item}  {score:.4f}")
    return 0


def _demo(args) -> int:
    from feedrec.demo import run_demo

    if not args.verbose:  # the demo narrates its own steps
        logging.getLogger().setLevel(logging.WARNING)

    run_demo(args.workdir, scale=args.scale, epochs=args.epochs, seed=args.seed)
    return 0


COMMANDS = {
    "demo": _demo,
    "prepare": _prepare,
    "train": _train,
    "evaluate": _evaluate,
    "export": _export,
    "recommend": _recommend,
}

if __name__ == "__main__":
    sys.exit(main())
