"""Quality on real data: one command per dataset, results in ``benchmarks/results/<name>.json``.

Usage (from the repository root; the data lives in ``../shared/data``)::

    python benchmarks/quality.py --dataset ml-1m
    python benchmarks/quality.py --dataset ml-1m --config my-ml-1m.toml --seeds 0 \\
        --out /tmp/ml-1m.json
    python benchmarks/quality.py --dataset globo-g1
    python benchmarks/quality.py --dataset mind
    # seeds run apart (in parallel, or in different sessions), then one result:
    python benchmarks/quality.py --merge /tmp/seed0.json /tmp/seed1.json --out FILE

Each dataset has a config under ``benchmarks/configs/`` (``[benchmark]``,
``[prepare]``, ``[model]``, ``[train]``, ``[sequential]``, ``[evaluation]``
and, for Globo, ``[incremental]``); ``--config`` picks another. Every seed
trains from scratch; the headline figure of each metric is the mean over the
seeds with the standard deviation beside it (``"ndcg@10"``,
``"ndcg@10_std"``). Baselines (popularity, recent popularity, random) are
computed once, by the same code, with the first seed (only the random
scorer's draws depend on it).

Protocols:

* **ml-1m** -- SASRec's leave-one-out (the last item is test, the second-last
  validation, the rest train) after SASRec's filtering (items with fewer than
  5 interactions dropped; the counts are checked). ``full``: the test item
  against every item, the user's history excluded; ``sampled_uniform_100``:
  against 100 uniformly sampled items the user never clicked.
* **globo-g1** -- Transformers4Rec's incremental protocol on one-hour
  windows: before window ``w``, the model is fine-tuned on the clicks of
  window ``w - 1`` (so it has seen every earlier window once); then, for each
  session whose last click falls in window ``w`` and that has at least two
  clicks, that last click is predicted from the user's earlier clicks
  (earlier sessions included) against the whole catalogue, the user's
  history excluded; metrics are averaged over the windows. Windows are cut by
  click time, so no training click is later than an evaluated one (cutting by
  session start would train on a session's clicks that run into the next
  window).
* **mind** -- the impression protocol on the MIND sample (a smoke figure).

Scratch data (prepared examples, runs) goes to ``--workdir`` (default
``/tmp/feedrec-quality``), never into the repository.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import platform
import shlex
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DATA = REPO / ".." / "shared" / "data"
CONFIGS = REPO / "benchmarks" / "configs"
RESULTS = REPO / "benchmarks" / "results"
DATASETS = {
    "ml-1m": {"format": "sequences", "inputs": ["ml-1m/ml-1m_sequences.txt.gz"]},
    "globo-g1": {"format": "globo", "inputs": ["globo-news-clicks/clicks_hour_000-309.zip"]},
    "mind": {"format": "mind", "inputs": ["mind-small-subset"]},
}
HOUR_MS = 3_600_000

logger = logging.getLogger("quality")


# ---------------------------------------------------------------------------- plumbing


def load_spec(path: Path) -> dict[str, dict]:
    """The sections of a benchmark config (unknown sections are an error)."""
    from feedrec.config import SECTIONS, read_config_file

    spec = read_config_file(path)
    return {name: dict(spec.get(name, {})) for name in SECTIONS}


#: Tables whose keys are checked by the code that reads them (an unknown key is an
#: error there); in the other tables ``--set`` may only change a key the file has.
CHECKED_TABLES = ("prepare", "model", "train", "sequential")


def apply_setting(spec: dict[str, dict], setting: str) -> None:
    """Apply one ``--set TABLE.KEY=VALUE`` (VALUE in TOML syntax) to ``spec``."""
    name, sep, text = setting.partition("=")
    table, dot, key = name.strip().partition(".")
    if not sep or not dot or not key:
        raise SystemExit(f"--set {setting!r}: expected TABLE.KEY=VALUE, e.g. train.epochs=3")
    if table not in spec:
        raise SystemExit(f"--set {setting!r}: unknown table {table!r}; known: {list(spec)}")
    if table not in CHECKED_TABLES and key not in spec[table]:
        raise SystemExit(
            f"--set {setting!r}: [{table}] has no key {key!r}; known: {sorted(spec[table])}"
        )
    try:
        value = tomllib.loads(f"value = {text.strip()}")["value"]
    except tomllib.TOMLDecodeError as err:
        raise SystemExit(
            f"--set {setting!r}: VALUE is not TOML ({err}); quote strings: KEY='\"text\"'"
        ) from err
    spec[table][key] = value


def model_config(spec: dict, seed: int):
    from feedrec.config import Config

    train = {**spec["train"], "seed": seed}
    return Config.from_dict({"model": spec["model"], "train": train}, source="benchmark config")


def git_state() -> dict:
    def git(*args: str) -> str:
        result = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True)
        return result.stdout

    # porcelain lines are "XY path" ("XY old -> new" for a rename): the status may
    # start with a space, so the output is not stripped before the path is cut at
    # column 3; every untracked file is listed, not only its new directory
    status = git(
        "-c",
        "core.quotePath=false",
        "status",
        "--porcelain",
        "--untracked-files=all",
        "--",
        "feedrec",
        "pipelines",
        "benchmarks",
    )
    paths = [line[3:].split(" -> ")[-1] for line in status.splitlines() if line]
    dirty = [path for path in paths if not path.startswith("benchmarks/results/")]
    return {"commit": git("rev-parse", "HEAD").strip(), "uncommitted_code": dirty}


def device() -> str:
    model = platform.processor() or "CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpus = []
    try:
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
    except ImportError:
        pass
    cores = len(os.sched_getaffinity(0))
    return f"{model}, {cores} CPU cores" + (f", {len(gpus)} GPU(s)" if gpus else ", no GPU")


class LoadMeter:
    """Samples the 1-minute load average every ``every`` seconds, in a daemon thread.

    Other work on a shared machine slows the runs; the mean load says how much.
    """

    def __init__(self, every: float = 30.0) -> None:
        import threading

        self.samples: list[float] = []
        self._stop = threading.Event()
        self.sample()

        def loop() -> None:
            while not self._stop.wait(every):
                self.sample()

        threading.Thread(target=loop, daemon=True).start()

    def sample(self) -> None:
        self.samples.append(os.getloadavg()[0])

    def summary(self) -> dict:
        self._stop.set()
        self.sample()
        return {
            "mean": round(float(np.mean(self.samples)), 2),
            "max": round(float(np.max(self.samples)), 2),
            "samples": len(self.samples),
        }


def prepare_cached(dataset: str, spec: dict, work: Path) -> Path:
    """Prepare the dataset into ``work`` unless an identical preparation is there."""
    from pipelines.prepare import PrepareOptions, prepare

    info = DATASETS[dataset]
    inputs = [DATA / relative for relative in info["inputs"]]
    missing = [str(path) for path in inputs if not path.exists()]
    if missing:
        raise FileNotFoundError(f"real data absent: {missing} (expected ../shared/data)")
    options = PrepareOptions(**spec["prepare"], overwrite=True)
    out = work / f"{dataset}-data"
    # options left None are resolved by prepare (e.g. split_mode): not compared
    wanted = {
        k: v for k, v in dataclasses.asdict(options).items() if k != "overwrite" and v is not None
    }
    manifest_path = out / "manifest.json"
    if manifest_path.exists():
        saved = json.loads(manifest_path.read_text())["parameters"]
        if {k: saved.get(k) for k in wanted} == wanted:
            logger.info("reusing prepared %s in %s", dataset, out)
            return out
    logger.info("preparing %s into %s", dataset, out)
    prepare(info["format"], inputs, out, options=options)
    return out


def data_summary(data_dir: Path) -> dict:
    manifest = json.loads((data_dir / "manifest.json").read_text())
    return {
        "rows_read": manifest["rows_read"],
        "interactions": manifest["rows_used"],
        "rows_rejected": manifest["rows_rejected"],
        "rejected_by_reason": manifest["rejected_by_reason"],
        "users": manifest["users"],
        "items": manifest["num_items"] - 2,
        "splits": {name: split["examples"] for name, split in manifest["splits"].items()},
    }


def check_expected(summary: dict, expected: dict) -> dict:
    checks = {}
    for key, value in expected.items():
        checks[key] = {"expected": value, "found": summary[key], "ok": summary[key] == value}
        if summary[key] != value:
            logger.warning("%s: expected %s, found %s", key, value, summary[key])
    return checks


def mean_std(per_seed: list[dict]) -> dict:
    """``{metric: mean, metric_std: std}`` over seeds (population std, ddof=0)."""
    out: dict[str, float] = {}
    for key in per_seed[0]:
        values = [row[key] for row in per_seed]
        if key in ("examples", "unrankable_targets", "impressions", "skipped_impressions"):
            out[key] = values[0]
            continue
        out[key] = round(float(np.mean(values)), 4)
        out[f"{key}_std"] = round(float(np.std(values)), 4)
    return out


def rounded(metrics: dict) -> dict:
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()}


# ---------------------------------------------------------------------------- ml-1m


def run_sequences(dataset: str, spec: dict, seeds: list[int], work: Path) -> dict:
    """Leave-one-out next-item benchmark (ML-1M): train per seed, evaluate on test."""
    from feedrec.evaluation import evaluate_run
    from feedrec.sequential import SequentialConfig, train_sequential

    data_dir = prepare_cached(dataset, spec, work)
    summary = data_summary(data_dir)
    evaluation = spec["evaluation"]
    sampled = tuple((mode, int(k)) for mode, k in evaluation.get("sampled", [["uniform", 100]]))
    sequential = SequentialConfig.from_dict(spec["sequential"])
    per_seed, runs, baselines = [], [], None
    for seed in seeds:
        run_dir = work / f"{spec['benchmark']['name']}-run-{seed}"
        started = time.perf_counter()
        history = train_sequential(
            data_dir, run_dir, model_config(spec, seed), sequential, overwrite=True, verbose=2
        )
        train_wall = time.perf_counter() - started
        results = evaluate_run(
            run_dir,
            data_dir,
            evaluation.get("split", "test"),
            seed=int(evaluation.get("seed", 0)),
            protocol="next_item",
            sampled=sampled,
        )
        per_seed.append({name: scored["model"] for name, scored in results["protocols"].items()})
        if baselines is None:
            baselines = {
                name: {scorer: rounded(m) for scorer, m in scored.items() if scorer != "model"}
                for name, scored in results["protocols"].items()
            }
        runs.append(
            {
                "seed": seed,
                "train_wall_s": round(train_wall, 1),
                "train_s": round(history["train_seconds"], 1),
                "epochs_run": history["epochs_run"],
                "best_epoch": history.get("best_epoch"),
                "stopped_for_time": history.get("stopped_for_time"),
                "validations": [rounded(v) for v in history.get("validations", [])],
                "test": {name: rounded(m) for name, m in per_seed[-1].items()},
            }
        )
        logger.info("seed %d: %s", seed, json.dumps(runs[-1]["test"]))
    results = {name: mean_std([row[name] for row in per_seed]) for name in per_seed[0]}
    checks = check_expected(summary, spec["benchmark"].get("expected", {}))
    return {
        "data": {**summary, "checks": checks},
        "results": results,
        "baselines": baselines,
        "runs": runs,
        "time_to_target": time_to_target(runs, spec["benchmark"].get("targets", {})),
    }


def time_to_target(runs: list[dict], targets: dict) -> dict:
    """Per seed, the training seconds at the first validation reaching each target."""
    out = {}
    for key, threshold in targets.items():
        seconds = []
        for run in runs:
            hit = [v["seconds"] for v in run["validations"] if v.get(key, -1) >= threshold]
            seconds.append(round(hit[0], 1) if hit else None)
        out[f"{key}>={threshold}"] = {"validation_seconds_per_seed": seconds}
    return out


# ---------------------------------------------------------------------------- mind


def run_mind(dataset: str, spec: dict, seeds: list[int], work: Path) -> dict:
    """The impression protocol on the MIND sample, against popularity and random."""
    from feedrec.evaluation import evaluate_run
    from feedrec.training import train

    data_dir = prepare_cached(dataset, spec, work)
    per_seed, runs, baselines = [], [], None
    for seed in seeds:
        run_dir = work / f"{spec['benchmark']['name']}-run-{seed}"
        started = time.perf_counter()
        history = train(data_dir, run_dir, model_config(spec, seed), overwrite=True, verbose=2)
        train_wall = time.perf_counter() - started
        results = evaluate_run(run_dir, data_dir, "test", protocol="impression")
        model = {k: v for k, v in results["model"].items()}
        per_seed.append(model)
        if baselines is None:
            baselines = {
                "impression": {
                    "popularity": rounded(results["popularity"]),
                    "random": rounded(results["random"]),
                }
            }
        runs.append(
            {
                "seed": seed,
                "train_wall_s": round(train_wall, 1),
                "best_epoch": history.get("best_epoch"),
                "test": rounded(model),
            }
        )
    return {
        "data": data_summary(data_dir),
        "results": {"impression": mean_std(per_seed)},
        "baselines": baselines,
        "runs": runs,
    }


# ---------------------------------------------------------------------------- globo


def run_globo(dataset: str, spec: dict, seeds: list[int], work: Path) -> dict:
    """Transformers4Rec's incremental hourly protocol (see the module docstring)."""
    data_dir = prepare_cached(dataset, spec, work)
    log = GloboLog.load(data_dir, spec["model"]["history_length"])
    incremental = spec["incremental"]
    per_seed, fused, runs, baselines = [], [], [], None
    for seed in seeds:
        started = time.perf_counter()
        result = incremental_run(log, spec, seed, incremental, with_baselines=baselines is None)
        wall = time.perf_counter() - started
        per_seed.append(result["model"])
        if "model+recency" in result:
            fused.append(result["model+recency"])
        if baselines is None:
            baselines = {
                "full": {
                    name: result[name]
                    for name in ("popularity", "recent_popularity", "random")
                    if name in result
                }
            }
        runs.append(
            {
                "seed": seed,
                "wall_s": round(wall, 1),
                "train_s": round(result["train_s"], 1),
                "test": rounded(result["model"]),
                "per_window": result["per_window"],
            }
        )
        logger.info("seed %d: %s", seed, json.dumps(runs[-1]["test"]))
    results = {"full": mean_std(per_seed)}
    if fused:
        # the model's logit plus a fitted recency prior (see incremental_run), labelled apart
        results["full/model+recency"] = mean_std(fused)
    return {
        "data": {**data_summary(data_dir), **log.summary()},
        "results": results,
        "baselines": baselines,
        "runs": runs,
    }


@dataclasses.dataclass
class GloboLog:
    """Every click of the prepared log, with its window and whether it is evaluated."""

    table: Any  # the examples (pyarrow), in click order
    items: np.ndarray  # clicked item per row
    times: np.ndarray
    windows: np.ndarray  # hour index of each click
    evaluated: np.ndarray  # bool: the last click of a session with >= 2 clicks
    num_items: int
    history_length: int

    @classmethod
    def load(cls, data_dir: Path, history_length: int) -> GloboLog:
        import pyarrow as pa
        import pyarrow.compute as pc

        from feedrec.sequential import _clicked_items, click_order
        from pipelines.dataset import ExamplesFile

        table = ExamplesFile(data_dir / "train.parquet").read()
        for split in ("valid", "test"):
            path = data_dir / f"{split}.parquet"
            if path.exists() and ExamplesFile(path).num_rows:
                table = pa.concat_tables([table, ExamplesFile(path).read()])
        table = table.take(pa.array(click_order(table))).combine_chunks()
        items = _clicked_items(table).astype(np.int64)
        times = table.column("time").to_numpy()
        start = times.min() // HOUR_MS * HOUR_MS
        windows = (times - start) // HOUR_MS
        sessions = pc.dictionary_encode(table.column("session_id").combine_chunks())
        sessions = sessions.indices.to_numpy()
        # last click of each session = the session's last row in click order
        order = np.lexsort((np.arange(len(sessions)), sessions))
        sorted_sessions = sessions[order]
        last = np.r_[sorted_sessions[1:] != sorted_sessions[:-1], True]
        sizes = np.bincount(sessions)
        evaluated = np.zeros(len(sessions), bool)
        evaluated[order[last]] = sizes[sorted_sessions[last]] >= 2
        manifest = json.loads((data_dir / "manifest.json").read_text())
        return cls(
            table, items, times, windows, evaluated, int(manifest["num_items"]), history_length
        )

    def summary(self) -> dict:
        return {
            "windows": int(self.windows.max() + 1),
            "evaluated_sessions": int(self.evaluated.sum()),
        }


def incremental_run(log: GloboLog, spec: dict, seed: int, incremental: dict, with_baselines: bool):
    """Fine-tune window after window; evaluate each window before training on it.

    Scorers per window (all on the same examples, full catalogue, history
    excluded): ``model`` (with ``[incremental] freshness_bias``, the model's
    logit plus a :class:`feedrec.layers.FreshnessBias` trained with it; each
    window is scored and trained slot by slot (``freshness_slot_minutes``),
    the state for a slot starting at ``T`` being each item's clicks in
    ``[T - recent_window_hours, T)`` and its age in hours at ``T``; with
    ``freshness_scoring = "example"`` each evaluated example is scored with
    the state at its own time ``t`` instead: clicks in ``[t - recent, t)``
    and ages at ``t``, training staying slot by slot);
    with ``[incremental] recency_prior``, ``model+recency`` = model logit +
    beta * log(1 + the item's clicks in the hour before the example), beta
    picked from ``prior_grid`` on the previous evaluated window (past data
    only); with ``with_baselines``, popularity
    (clicks before the window), recent popularity (clicks in the hour before
    the example) and random.
    """
    import keras
    import pyarrow as pa

    from feedrec.data import batch_from_table
    from feedrec.evaluation import earlier_items, model_scorer
    from feedrec.layers import FreshnessBias
    from feedrec.metrics import break_ties
    from feedrec.models.recommender import build_model
    from feedrec.next_item import (
        exclusion_lists,
        full_ranks,
        ranking_metrics,
        recent_popularity_scorer,
    )
    from feedrec.sequential import (
        SequentialConfig,
        compile_trainer,
        sequence_dataset,
        sequences_from_examples,
    )

    config = model_config(spec, seed)
    sequential = SequentialConfig.from_dict(spec["sequential"])
    keras.utils.set_random_seed(seed)
    model = build_model(config.model, log.num_items, causal=True)
    epochs = int(incremental.get("epochs_per_window", 1))
    negative_hours = int(incremental.get("negative_window_hours", 24))
    recent_ms = int(incremental.get("recent_window_hours", 1)) * HOUR_MS
    first = int(incremental.get("first_evaluated_window", 1))
    min_examples = int(incremental.get("min_window_examples", 1))
    prior = bool(incremental.get("recency_prior", False))
    grid = [float(b) for b in incremental.get("prior_grid", [0.25, 0.5, 1.0, 2.0, 4.0])]
    limit = incremental.get("max_windows")
    freshness = None
    if incremental.get("freshness_bias"):
        log_clicks = bool(incremental.get("freshness_log_clicks", False))
        freshness = FreshnessBias(log.num_items, log_clicks=log_clicks)
    slot_ms = int(incremental.get("freshness_slot_minutes", 10)) * 60_000
    scoring = incremental.get("freshness_scoring", "slot")
    if scoring not in ("slot", "example"):
        raise SystemExit(
            f'[incremental] freshness_scoring: expected "slot" or "example", got {scoring!r}'
        )
    per_example = freshness is not None and scoring == "example"
    if freshness is not None:
        state_at = freshness_states(log.times, log.items, log.num_items, recent_ms)
        first_clicked = first_clicks(log.times, log.items, log.num_items)
    origin = int(log.times.min()) // HOUR_MS * HOUR_MS  # window 0 starts here

    def slots(rows: np.ndarray, times: np.ndarray) -> list[tuple[int | None, np.ndarray]]:
        """``rows`` by the freshness slot of their ``times``: ``(slot start, rows)`` in time
        order; one group ``(None, rows)`` without a freshness bias."""
        if freshness is None:
            return [(None, rows)]
        starts = (times - origin) // slot_ms * slot_ms + origin
        return [(int(at), rows[starts == at]) for at in np.unique(starts)]

    def set_state(at: int | None):
        """Set the freshness state for a slot starting at ``at``; each item's offset."""
        if at is None:
            return 0.0
        freshness.update(*state_at(at))
        return keras.ops.convert_to_numpy(freshness(np.arange(log.num_items)))

    def scored_chunks(rows: np.ndarray):
        """``(offsets, chunk, recent)``: evaluated ``rows`` in chunks, each with its slot's
        offsets, or with ``freshness_scoring = "example"`` each example's own
        (``(chunk, items)``); ``recent`` is the chunk's ``recent_counts`` where they were
        computed for the offsets (so that they are counted once), else None."""
        if per_example:
            for start in range(0, len(rows), 1024):
                chunk = rows[start : start + 1024]
                at = log.times[eval_rows[chunk]][:, None]
                recent = recent_counts(chunk)
                clicks = np.floor(recent).astype(np.int32)  # the tie-breaking noise < 1
                yield freshness.offsets(clicks, ages_at(first_clicked, at)), chunk, recent
            return
        for at, group in slots(rows, log.times[eval_rows[rows]]):
            offsets = set_state(at)
            for start in range(0, len(group), 1024):
                yield offsets, group[start : start + 1024], None

    trainer = compile_trainer(model, config, sequential, total_steps=1, item_bias=freshness)
    eval_rows = np.flatnonzero(log.evaluated)
    eval_batch = batch_from_table(
        log.table.take(pa.array(eval_rows)), log.history_length, num_candidates=1
    )
    targets = eval_batch_targets(eval_batch, np.arange(len(eval_rows)))
    click_log = pa.table(
        {"user_id": log.table.column("user_id"), "time": log.times, "item": log.items}
    )
    exclude = earlier_items(click_log, eval_batch)
    eval_windows = log.windows[eval_rows]
    recent_counts = recent_popularity_scorer(
        log.times, log.items, log.times[eval_rows], log.num_items, window=recent_ms
    )
    counts = np.zeros(log.num_items)
    last_window = int(log.windows.max())
    if limit is not None:
        last_window = min(last_window, first + int(limit) - 1)
    per_window, train_seconds, beta = [], 0.0, grid[len(grid) // 2]
    names = ["model"] + (["model+recency"] if prior else [])
    if with_baselines:
        names += ["popularity", "recent_popularity", "random"]
    for window in range(0, last_window + 1):
        rows = np.flatnonzero(eval_windows == window)
        if window >= first and len(rows) >= min_examples:
            score_model = model_scorer(model, eval_batch)
            popular = break_ties(counts, seed=0)
            rng = np.random.default_rng([seed, window])
            ranks = {name: [] for name in names}
            grid_ranks = {b: [] for b in grid}
            for offsets, chunk, recent in scored_chunks(rows):
                chunk_targets = targets[chunk]
                excluded = exclusion_lists(exclude, log.num_items, chunk)
                model_scores = score_model(chunk) + offsets
                ranks["model"].append(full_ranks(model_scores, chunk_targets, excluded))
                if (prior or with_baselines) and recent is None:
                    recent = recent_counts(chunk)
                if prior:
                    log_recent = np.log1p(np.floor(recent)).astype(np.float32)
                    fused = model_scores + beta * log_recent
                    ranks["model+recency"].append(full_ranks(fused, chunk_targets, excluded))
                    for b in grid:
                        fused = model_scores + b * log_recent
                        grid_ranks[b].append(full_ranks(fused, chunk_targets, excluded))
                if with_baselines:
                    baseline_scores = {
                        "popularity": np.broadcast_to(popular, model_scores.shape),
                        "recent_popularity": recent,
                        "random": rng.random(model_scores.shape),
                    }
                    for name, scores in baseline_scores.items():
                        ranks[name].append(full_ranks(scores, chunk_targets, excluded))
            record = {"window": window, "examples": len(rows)}
            for name in names:
                metrics = ranking_metrics(np.concatenate(ranks[name]), (5, 10, 20))
                prefix = "" if name == "model" else f"{name}/"
                record.update({f"{prefix}{k}": round(v, 4) for k, v in metrics.items() if "@" in k})
            if prior:
                record["beta"] = beta
                by_beta = {
                    b: ranking_metrics(np.concatenate(r), (20,))["ndcg@20"]
                    for b, r in grid_ranks.items()
                }
                beta = max(by_beta, key=by_beta.get)  # for the next window
            per_window.append(record)
        # then learn this window's clicks
        in_window = np.flatnonzero(log.windows == window)
        counts += np.bincount(log.items[in_window], minlength=log.num_items)[: log.num_items]
        if not len(in_window) or window == last_window:
            continue
        if sequential.loss == "sampled_softmax":
            recent_clicks = (log.windows > window - negative_hours) & (log.windows <= window)
            weights = np.bincount(log.items[recent_clicks], minlength=log.num_items).astype(float)
            trainer.set_sampling_weights(weights + 1e-3)
        started = time.perf_counter()
        for part, (at, part_rows) in enumerate(slots(in_window, log.times[in_window])):
            set_state(at)
            sequences = sequences_from_examples(
                log.table.take(pa.array(part_rows)),
                log.history_length,
                since=int(log.times[part_rows].min()),
                windows=sequential.windows,
                stride=sequential.window_stride,
                earlier=sequential.masks_earlier_clicks,
            )
            batch_seed = seed * 100_003 + window + 1_000_003 * part
            batches = sequence_dataset(
                sequences,
                config.train.batch_size,
                batch_seed,
                sequential.width_multiple,
                earlier=sequential.masks_earlier_clicks,
            )
            trainer.fit(batches, epochs=epochs, verbose=0, shuffle=False)
        train_seconds += time.perf_counter() - started
        if window % 24 == 0:
            logger.info("seed %d window %d: %s", seed, window, json.dumps(per_window[-1:] or None))
    return {
        name: rounded(_average_windows(per_window, "" if name == "model" else f"{name}/"))
        for name in names
    } | {"per_window": per_window, "train_s": train_seconds}


def freshness_states(times: np.ndarray, items: np.ndarray, num_items: int, recent_ms: int):
    """``state(at)``: each item's clicks in ``[at - recent_ms, at)`` and its age at ``at``.

    The age is in hours since the item's first click, NaN where that click is
    not before ``at``: nothing at or after ``at`` is used.
    """
    order = np.argsort(times, kind="stable")
    sorted_times, sorted_items = times[order], items[order]
    first = first_clicks(times, items, num_items)

    def state(at: int) -> tuple[np.ndarray, np.ndarray]:
        low, high = np.searchsorted(sorted_times, [at - recent_ms, at])
        clicks = np.bincount(sorted_items[low:high], minlength=num_items)[:num_items]
        return clicks, ages_at(first, at)

    return state


def first_clicks(times: np.ndarray, items: np.ndarray, num_items: int) -> np.ndarray:
    """Each item's first click time (inf for an item never clicked)."""
    first = np.full(num_items, np.inf)
    np.minimum.at(first, items, times)
    return first


def ages_at(first: np.ndarray, at) -> np.ndarray:
    """Hours since each item's first click at time ``at`` (a scalar, or ``(n, 1)`` times for
    ``(n, num_items)``); NaN where that click is not before ``at``."""
    with np.errstate(invalid="ignore"):
        return np.where(first < at, (at - first) / HOUR_MS, np.nan)


def eval_batch_targets(batch, rows: np.ndarray) -> np.ndarray:
    from feedrec.evaluation import next_item_targets

    return next_item_targets(batch)[rows]


def _subset_scorer(scorer, rows: np.ndarray):
    """A scorer over a window's examples, given one over all evaluated examples."""
    return lambda local: scorer(rows[local])


def _short(metrics: dict) -> dict:
    return {k: round(v, 4) for k, v in metrics.items() if "@" in k}


def _average_windows(per_window: list[dict], prefix: str = "") -> dict:
    """The mean over windows of each metric (Transformers4Rec averages windows)."""
    keys = [k for k in per_window[0] if k.startswith(prefix) and "@" in k[len(prefix) :]]
    keys = [k for k in keys if "/" not in k[len(prefix) :]]
    out = {k[len(prefix) :]: float(np.mean([w[k] for w in per_window])) for k in keys}
    out["windows"] = len(per_window)
    out["examples"] = int(sum(w["examples"] for w in per_window))
    return out


# ---------------------------------------------------------------------------- merge


def seed_metrics(dataset: str, run: dict) -> dict[str, dict]:
    """One run's figures by protocol, as the runner averaged them over seeds.

    Globo's are recomputed from the per-window records (unrounded, and the
    recency-fused scorer too); the others come from the run's ``test`` figures.
    """
    if dataset == "globo-g1":
        windows = run["per_window"]
        out = {"full": _average_windows(windows)}
        if any(key.startswith("model+recency/") for key in windows[0]):
            out["full/model+recency"] = _average_windows(windows, "model+recency/")
        return out
    if dataset == "mind":
        return {"impression": run["test"]}
    return dict(run["test"])


def _comparable(key: str, value):
    """``value`` as merging compares it: the random scorer draws with the run's seed."""
    if key != "baselines" or not isinstance(value, dict):
        return value
    return {
        protocol: {name: m for name, m in scorers.items() if name != "random"}
        for protocol, scorers in value.items()
    }


def merge_reports(reports: list[tuple[str, dict]]) -> dict:
    """One result from several runs of the same benchmark with different seeds.

    ``reports`` are ``(file name, report)`` pairs as :func:`main` writes them.
    They must agree on the dataset, the config (``[benchmark] seeds`` aside),
    the data and the baselines (the random scorer aside: its draws depend on
    the seed of the run that computed it; the first file's is kept), and no
    seed may appear twice. Every run keeps the commit of the file it came
    from, and ``merged_from`` lists each file's command, commit, seeds and wall
    time; the merged ``commit`` is the last file's and ``wall_s`` the sum of
    the files' (more than the elapsed time when they ran side by side).
    """
    if not reports:
        raise SystemExit("--merge: no result files given")
    first_name, first = reports[0]

    def config_of(report: dict) -> dict:
        config = json.loads(json.dumps(report["config"]))
        config.get("benchmark", {}).pop("seeds", None)
        return config

    seen: dict[int, str] = {}
    runs, parts = [], []
    for name, report in reports:
        for key in ("dataset", "data", "baselines"):
            if _comparable(key, report.get(key)) != _comparable(key, first.get(key)):
                raise SystemExit(
                    f"--merge: {name}: its {key!r} differs from {first_name}'s: "
                    "only runs of the same benchmark on the same data can be merged"
                )
        ours, theirs = config_of(report), config_of(first)
        if ours != theirs:
            diff = sorted(
                f"[{table}] {key}"
                for table in set(ours) | set(theirs)
                for key in set(ours.get(table, {})) | set(theirs.get(table, {}))
                if ours.get(table, {}).get(key) != theirs.get(table, {}).get(key)
            )
            raise SystemExit(
                f"--merge: {name}: its config differs from {first_name}'s in {', '.join(diff)}"
            )
        part = {
            key: report.get(key)
            for key in (
                "command",
                "commit",
                "uncommitted_code",
                "seeds",
                "wall_s",
                "load_average",
                "malloc_tuned",
            )
        }
        if report.get("note"):
            part["note"] = report["note"]
        parts.append({"file": name, **part})
        for run in report["runs"]:
            if run["seed"] in seen:
                raise SystemExit(
                    f"--merge: seed {run['seed']} is in both {seen[run['seed']]} and {name}"
                )
            seen[run["seed"]] = name
            runs.append({**run, "commit": report["commit"], "file": name})
    runs.sort(key=lambda run: run["seed"])
    per_seed = [seed_metrics(first["dataset"], run) for run in runs]
    results = {protocol: mean_std([m[protocol] for m in per_seed]) for protocol in per_seed[0]}
    merged = {
        "dataset": first["dataset"],
        "name": first["name"],
        "command": None,  # set by the caller
        "commit": parts[-1]["commit"],
        "uncommitted_code": sorted({p for part in parts for p in part["uncommitted_code"] or []}),
        "seeds": [run["seed"] for run in runs],
        "wall_s": round(sum(part["wall_s"] for part in parts), 1),
        "device": first["device"],
        "config": first["config"]
        | {"benchmark": {**first["config"]["benchmark"], "seeds": sorted(seen)}},
        "merged_from": parts,
        "data": first["data"],
        "results": results,
        "baselines": first["baselines"],
        "runs": runs,
    }
    if "time_to_target" in first:
        targets = first["config"].get("benchmark", {}).get("targets", {})
        merged["time_to_target"] = time_to_target(runs, targets)
    return merged


def write_report(report: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    partial.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    partial.replace(out)  # atomic: a crash never leaves a half-written result


# ---------------------------------------------------------------------------- main

RUNNERS = {"ml-1m": run_sequences, "globo-g1": run_globo, "mind": run_mind}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", choices=sorted(RUNNERS), help="required unless --merge")
    parser.add_argument("--config", type=Path, help="default: benchmarks/configs/<dataset>.toml")
    parser.add_argument("--seeds", type=int, nargs="+", help="override [benchmark] seeds")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/feedrec-quality"))
    parser.add_argument("--out", type=Path, help="default: benchmarks/results/<name>.json")
    parser.add_argument(
        "--max-windows", type=int, help="globo-g1: evaluate only this many windows (smoke runs)"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="TABLE.KEY=VALUE",
        help="override one config setting, VALUE in TOML syntax (e.g. "
        "incremental.epochs_per_window=2, sequential.schedule='\"cosine\"'); repeatable",
    )
    parser.add_argument(
        "--merge",
        nargs="+",
        type=Path,
        metavar="RESULT",
        help="merge result files of the same benchmark run with different seeds into one "
        "(--out is then required); nothing is run",
    )
    args = parser.parse_args(argv)
    argv_text = " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    command = f"python benchmarks/quality.py {argv_text}".strip()
    if args.merge:
        if not args.out:
            parser.error("--merge needs --out")
        given = [
            flag
            for flag, value in (
                ("--dataset", args.dataset),
                ("--config", args.config),
                ("--seeds", args.seeds),
                ("--max-windows", args.max_windows),
                ("--set", args.set),
            )
            if value
        ]
        if given:
            parser.error(f"--merge runs nothing, so {', '.join(given)} would be ignored: drop it")
        reports = []
        for path in args.merge:
            try:
                reports.append((str(path), json.loads(path.read_text(encoding="utf-8"))))
            except (OSError, json.JSONDecodeError) as err:
                parser.error(f"--merge: cannot read {path}: {err}")
        merged = merge_reports(reports)
        merged["command"] = command
        write_report(merged, args.out)
        print(json.dumps({"written": str(args.out), "results": merged["results"]}, indent=1))
        return 0
    if not args.dataset:
        parser.error("--dataset is required (unless --merge)")
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from feedrec.allocator import tune_malloc

    malloc_tuned = tune_malloc()  # as `feedrec train` does (feedrec.allocator)
    config_path = args.config or CONFIGS / f"{args.dataset}.toml"
    spec = load_spec(config_path)
    name = spec["benchmark"].get("name", args.dataset)
    spec["benchmark"]["name"] = name
    seeds = args.seeds or list(spec["benchmark"].get("seeds", [0, 1, 2]))
    if args.max_windows:
        spec["incremental"]["max_windows"] = args.max_windows
    for setting in args.set:
        apply_setting(spec, setting)
    args.workdir.mkdir(parents=True, exist_ok=True)
    state = git_state()
    meter = LoadMeter()
    started = time.perf_counter()
    outcome = RUNNERS[args.dataset](args.dataset, spec, seeds, args.workdir)
    wall = time.perf_counter() - started
    report = {
        "dataset": args.dataset,
        "name": name,
        "command": command,
        "commit": state["commit"],
        "uncommitted_code": state["uncommitted_code"],
        "seeds": seeds,
        "wall_s": round(wall, 1),
        "device": device(),
        "load_average": meter.summary(),
        "malloc_tuned": malloc_tuned,
        "config": {k: v for k, v in spec.items() if v},
        **outcome,
    }
    out = args.out or RESULTS / f"{name}.json"
    write_report(report, out)
    print(json.dumps({"written": str(out), "results": report["results"]}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
