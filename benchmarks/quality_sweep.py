"""Short learning-curve runs of the next-item objective, one per set of overrides.

The option comparisons in README "Quality on real data" come from this script: each
run trains ``feedrec.sequential.train_sequential`` on a prepared data directory (e.g.
the one ``benchmarks/quality.py --dataset ml-1m`` leaves in its work folder) with the
dataset config's settings plus one set of overrides, validating every epoch, and
prints one JSON line: the overrides, wall time, per-epoch loss and validation
``(epoch, seconds, ndcg@10, hr@10, sampled_uniform_100/ndcg@10)``.

Usage::

    python benchmarks/quality_sweep.py --data /tmp/feedrec-quality/ml-1m-data \\
        --epochs 3 --runs '{"pre_norm": {"model": {"norm_first": true}},
                           "post_norm": {"model": {"norm_first": false}}}'
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.quality import CONFIGS, load_spec, model_config  # noqa: E402


def merged(spec: dict, overrides: dict) -> dict:
    """``spec`` with each table updated by the same table of ``overrides``."""
    out = {name: dict(table) for name, table in spec.items()}
    for name, table in overrides.items():
        out.setdefault(name, {}).update(table)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="a prepared DATA_DIR")
    parser.add_argument("--config", type=Path, default=CONFIGS / "ml-1m.toml")
    parser.add_argument("--runs", required=True, help="JSON: name -> {table: {key: value}}")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/feedrec-quality/sweep"))
    args = parser.parse_args(argv)
    # progress on stderr (each validation as it comes); the JSON lines on stdout
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )

    from feedrec.sequential import SequentialConfig, train_sequential

    base = load_spec(args.config)
    for name, overrides in json.loads(args.runs).items():
        spec = merged(base, overrides)
        spec["train"]["epochs"] = args.epochs
        spec["sequential"].update({"validate_every": 1, "patience": 0})
        spec["sequential"].pop("max_train_seconds", None)
        started = time.perf_counter()
        history = train_sequential(
            args.data,
            args.workdir / name,
            model_config(spec, args.seed),
            SequentialConfig.from_dict(spec["sequential"]),
            overwrite=True,
            verbose=0,
        )
        curve = [
            (
                v["epoch"],
                round(v["seconds"]),
                round(v["ndcg@10"], 4),
                round(v["hr@10"], 4),
                round(v.get("sampled_uniform_100/ndcg@10", -1.0), 4),
            )
            for v in history.get("validations", [])
        ]
        line = {
            "name": name,
            "overrides": overrides,
            "seed": args.seed,
            "wall_s": round(time.perf_counter() - started, 1),
            "loss": [round(v, 4) for v in history["loss"]],
            "validation": curve,
        }
        print(json.dumps(line), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
