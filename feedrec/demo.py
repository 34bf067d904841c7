"""``feedrec demo``: the whole product on an embedded synthetic news log.

generate (MIND format) -> prepare -> train -> evaluate -> export -> reload the
export and score one request. Leaves in WORKDIR::

    log/            behaviors.tsv + news.tsv (the generated raw log)
    data/           prepared examples (Parquet) + manifest.json
    run/            the trained run directory (usable by evaluate / export)
    export/<v>/     the SavedModel (TF Serving layout)
    metrics.json    {"model": {...}, "popularity": {...}, "random": {...}}
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from feedrec.config import Config, ModelConfig, TrainConfig

logger = logging.getLogger(__name__)


def say(*args) -> None:
    print(*args, flush=True)


#: The demo's model and training settings (small enough for 2 CPU cores).
DEMO_CONFIG = Config(
    model=ModelConfig(
        history_length=50,
        embedding_dim=64,
        num_heads=2,
        num_layers=1,
        feed_forward_dim=128,
        dropout=0.1,
        pooling="attention",
    ),
    train=TrainConfig(epochs=3, batch_size=256, learning_rate=2e-3, seed=0),
)
METRIC_KEYS = ("auc", "mrr", "ndcg@5", "ndcg@10")


def run_demo(
    workdir: str | Path,
    *,
    scale: str = "default",
    epochs: int | None = None,
    seed: int = 0,
    config: Config = DEMO_CONFIG,
) -> dict:
    """Run the demo in ``workdir`` and return the metrics written to ``metrics.json``."""
    import dataclasses

    from feedrec.evaluation import evaluate_run, format_table
    from feedrec.export import export_run, load_export, score_request
    from feedrec.runs import write_json
    from feedrec.training import train
    from pipelines.prepare import PrepareOptions, prepare
    from pipelines.synthetic import generate_mind_log

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    train_config = dataclasses.replace(
        config.train, seed=seed, **({"epochs": epochs} if epochs else {})
    )
    config = config.replace(train=train_config)
    timings = {}

    def step(name):
        say(f"[demo] {name} ...")
        return time.perf_counter()

    started = step("1/6 generating a synthetic MIND-format news log")
    summary = generate_mind_log(workdir / "log", seed=seed, scale=scale)
    timings["generate"] = time.perf_counter() - started
    say(
        f"       {summary['impressions']:,} impressions, {summary['clicks']:,} clicks, "
        f"{summary['users']:,} users, {summary['items']:,} items -> {workdir / 'log'}"
    )

    started = step("2/6 building click sequences (feedrec prepare)")
    manifest = prepare(
        "mind",
        [workdir / "log"],
        workdir / "data",
        options=PrepareOptions(
            history_length=config.model.history_length, seed=seed, overwrite=True
        ),
        progress=True,
    )
    timings["prepare"] = time.perf_counter() - started
    splits = manifest["splits"]
    say("       examples: " + ", ".join(f"{k} {v['examples']:,}" for k, v in splits.items()))

    started = step("3/6 training the masked self-attention model")
    train(workdir / "data", workdir / "run", config, overwrite=True)
    timings["train"] = time.perf_counter() - started

    started = step("4/6 evaluating on the test split (impression protocol)")
    results = evaluate_run(workdir / "run", workdir / "data", "test", seed=seed)
    timings["evaluate"] = time.perf_counter() - started
    say(format_table(results))

    started = step("5/6 exporting a SavedModel")
    export_dir = export_run(workdir / "run", workdir / "export")
    timings["export"] = time.perf_counter() - started
    say(f"       {export_dir}")

    step("6/6 reloading the export and scoring one request")
    serving = load_export(export_dir)
    history, candidates = _one_request(workdir / "data")
    scores = score_request(serving, history, candidates)
    for item, score in sorted(zip(candidates, scores, strict=True), key=lambda p: -p[1])[:5]:
        say(f"       {item:>10}  {score:+.3f}")

    metrics = {
        name: {k: results[name][k] for k in METRIC_KEYS}
        for name in ("model", "popularity", "random")
    }
    write_json(workdir / "metrics.json", metrics)
    write_json(workdir / "timings.json", timings)
    say(f"[demo] done in {sum(timings.values()):.0f}s; metrics in {workdir / 'metrics.json'}")
    return metrics


def _one_request(data_dir: Path) -> tuple[list[str], list[str]]:
    """The raw ids of one test impression's history and candidates."""
    import pyarrow.parquet as pq

    items = pq.read_table(data_dir / "items.parquet", columns=["item_id"]).column(0).to_pylist()
    from pipelines.dataset import load_split

    test = load_split(data_dir, "test", ["history", "candidates"])
    row = test.slice(0, 1).to_pylist()[0]
    return [items[i] for i in row["history"]], [items[i] for i in row["candidates"]]
