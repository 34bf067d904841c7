"""Benchmark ``serving_default`` through a reloaded SavedModel, on CPU.

Figures (one JSON line each on stdout):

* ``latency``: 1 user x 100 candidates, one request at a time: p50/p99 in ms
  (target: p50 <= 1 ms on 2 cores).
* ``throughput``: batches of 256 users x 100 candidates sent back to back by
  1, then 2 concurrent clients (``--concurrency``; TF Serving serves
  concurrent requests): users/s over the wall time (target: >= 20,000
  users/s on 2 cores).
* ``latency_realistic``: as ``latency``, but each request holds a history
  length drawn from the MIND subset's impressions (``--realistic``, read from
  the shared data folder when present, skipped otherwise; median 18 clicks,
  19% at 50 or more), right-padded with ``""`` to the same width. Beside the
  worst case, not instead of it: batches of 256 such users almost always
  hold one full history, so the batch figures keep full histories.
* ``floor``: ``item_embedding`` of 1 item, the cost of calling a signature
  at all (Python call, string lookup, one gather): what no model change can
  remove.

Each figure is measured ``--repeats`` times; every repetition is one line
(``"repeat": i``) and a ``"summary"`` line gives the median of the
repetitions and the best one. Lines carry the 1-minute load average and the
process CPU time per call, since the machine may be shared: wall time over
CPU time above 1 means the process waited for a core.

The export is made from a model with the default architecture
(``feedrec.config.ModelConfig()``: L=50, dim 64, 1 block, 2 heads, attention
pooling, category and subcategory features; ``--pooling`` changes the
pooling) and ``--items`` random items, or from a trained run with ``--run``.
Weights do not change the cost. The measurement runs in a fresh process
(feedrec is not imported there), once per client (``--clients``):

* ``eager``: ``tf.saved_model.load`` and the signature's concrete function,
  called from Python with pre-built tensors (a Python service);
* ``session``: TF Serving's way of running a SavedModel: the session-based
  loader (``tf.compat.v1.saved_model.loader.load``, the C++ SavedModelBundle),
  the SignatureDef's tensor names and one ``Session::Run`` per request (through
  ``Session.make_callable``), the thread pools set in the session's config as
  TF Serving's ``--tensorflow_intra_op_parallelism`` and
  ``--tensorflow_inter_op_parallelism`` set them. Its scores are first checked
  against the eager client's on the same requests.

Requests use full histories of L known clicks (the worst case: no padded slot
is skipped).

Usage::

    python benchmarks/serving.py                     # default export, then XLA export
    python benchmarks/serving.py --variants default --repeats 5 --cpus 0,1
    python benchmarks/serving.py --run runs/mind     # a trained run's export
    python benchmarks/serving.py --pooling last      # last-click pooling (ml-1m, globo-g1)
    python benchmarks/serving.py --env TF_ENABLE_ONEDNN_OPTS=0   # a server setting
    python benchmarks/serving.py --clients session --intra-op 1 --inter-op 1

The published figures (README, "Serving benchmark") are those of
``python benchmarks/serving.py --repeats 3`` on a quiet machine (check
``uptime`` first: with a 1-minute load above the core count, the process
waits for a core and the figures are not comparable).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: MIND impressions (read only for their history lengths; never copied).
MIND_BEHAVIORS = REPO / ".." / "shared" / "data" / "mind-small-subset" / "behaviors.tsv"

CHILD = r"""
import json, os, sys, time
import numpy as np
import tensorflow as tf

args = json.loads(sys.argv[1])
session = args["client"] == "session"
if session:
    # TF Serving's way: a graph session (its SavedModelBundle), the MetaGraph's
    # restore and table-initialisation ops, the SignatureDef's tensor names, one
    # C++ Session::Run per request, thread pools from the session config.
    graph = tf.Graph()
    runner = tf.compat.v1.Session(graph=graph, config=tf.compat.v1.ConfigProto(
        intra_op_parallelism_threads=args["intra_op"],
        inter_op_parallelism_threads=args["inter_op"]))
    with graph.as_default():
        meta_graph = tf.compat.v1.saved_model.loader.load(runner, ["serve"], args["export"])

    def signature(name):
        definition = meta_graph.signature_def[name]
        names = sorted(definition.inputs)
        (output,) = definition.outputs.values()
        call = runner.make_callable(output.name, [definition.inputs[n].name for n in names])
        return lambda **feeds: call(*(feeds[n] for n in names))

    tensor = np.asarray
else:
    if args["intra_op"]:
        tf.config.threading.set_intra_op_parallelism_threads(args["intra_op"])
    if args["inter_op"]:
        tf.config.threading.set_inter_op_parallelism_threads(args["inter_op"])
    serving = tf.saved_model.load(args["export"])

    def signature(name):
        return serving.signatures[name]

    tensor = tf.constant
assert "feedrec" not in sys.modules
items = [line.split("\t", 1)[0]
         for line in open(os.path.join(args["export"], "assets", "items.tsv"))]
rng = np.random.default_rng(0)

def pick(shape):
    return np.array(items, dtype=object)[rng.integers(0, len(items), shape)]

def request(users):
    return {"history": tensor(pick((users, args["history"]))),
            "candidates": tensor(pick((users, args["candidates"])))}

def realistic_request(clicks):
    # one user, ``clicks`` real clicks right-padded with "" to the benchmark's width
    history = pick((1, args["history"]))
    history[:, clicks:] = ""
    return {"history": tensor(history),
            "candidates": tensor(pick((1, args["candidates"])))}

def measure(fn, inputs, calls, warmup):
    # ``inputs``: one request, or a list of requests sent in turn
    inputs = inputs if isinstance(inputs, list) else [inputs]
    for i in range(warmup):
        fn(**inputs[i % len(inputs)])
    wall = np.empty(calls)
    cpu = time.process_time()
    for i in range(calls):
        request_i = inputs[i % len(inputs)]
        start = time.perf_counter()
        fn(**request_i)
        wall[i] = time.perf_counter() - start
    return wall, (time.process_time() - cpu) / calls

def throughput(fn, inputs, calls, threads):
    # users/s with `threads` clients, each sending `calls` batches back to back
    from concurrent.futures import ThreadPoolExecutor

    for _ in range(3):
        fn(**inputs)

    def client(_):
        times = []
        for _ in range(calls):
            start = time.perf_counter()
            fn(**inputs)
            times.append(time.perf_counter() - start)
        return times

    cpu = time.process_time()
    start = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        times = [t for ts in pool.map(client, range(threads)) for t in ts]
    wall = time.perf_counter() - start
    users = len(times) * len(inputs["history"])
    return users / wall, np.median(times) * 1e3, (time.process_time() - cpu) / len(times)

def emit(line):
    line.update(export=args["name"], client=args["client"],
                load_avg_1m=round(os.getloadavg()[0], 2))
    print(json.dumps(line), flush=True)

serve = signature("serving_default")
item_embedding = signature("item_embedding")
one = request(1)
batch = request(args["batch"])
floor_input = {"items": tensor([items[0]])}
if session:
    # the session computes what the loaded SavedModel does (same export, same requests)
    reference = tf.saved_model.load(args["export"]).signatures["serving_default"]
    for inputs in (one, batch):
        expected = reference(**{k: tf.constant(v) for k, v in inputs.items()})["scores"]
        np.testing.assert_allclose(serve(**inputs), expected.numpy(), rtol=1e-5, atol=1e-5)
realistic = [realistic_request(min(n, args["history"])) for n in args["realistic_lengths"]]
results = {"latency": [], "floor": [], **{f"throughput_x{n}": [] for n in args["concurrency"]}}
if realistic:
    results["latency_realistic"] = []
for repeat in range(args["repeats"]):
    wall, cpu = measure(item_embedding, floor_input, args["calls"], 100)
    results["floor"].append(np.percentile(wall, 50) * 1e3)
    emit({"figure": "floor", "repeat": repeat, "p50_ms": round(results["floor"][-1], 4),
          "cpu_ms_per_call": round(cpu * 1e3, 4)})

    wall, cpu = measure(serve, one, args["calls"], 100)
    p50, p99 = np.percentile(wall, [50, 99]) * 1e3
    results["latency"].append(p50)
    emit({"figure": "latency", "repeat": repeat, "users": 1,
          "candidates": args["candidates"], "history": args["history"],
          "p50_ms": round(p50, 4), "p99_ms": round(p99, 4),
          "cpu_ms_per_call": round(cpu * 1e3, 4)})

    if realistic:
        wall, cpu = measure(serve, realistic, args["calls"], 100)
        p50, p99 = np.percentile(wall, [50, 99]) * 1e3
        results["latency_realistic"].append(p50)
        emit({"figure": "latency_realistic", "repeat": repeat, "users": 1,
              "candidates": args["candidates"], "history": args["history"],
              "clicks": args["realistic_source"], "p50_ms": round(p50, 4),
              "p99_ms": round(p99, 4), "cpu_ms_per_call": round(cpu * 1e3, 4)})

    for threads in args["concurrency"]:
        users_per_s, batch_ms, cpu = throughput(serve, batch, args["batch_calls"], threads)
        results[f"throughput_x{threads}"].append(users_per_s)
        emit({"figure": "throughput", "repeat": repeat, "users": args["batch"],
              "candidates": args["candidates"], "history": args["history"],
              "concurrent_requests": threads, "batch_ms_p50": round(batch_ms, 3),
              "users_per_s": round(users_per_s), "cpu_ms_per_batch": round(cpu * 1e3, 3)})

for figure, values in results.items():
    high = figure.startswith("throughput")
    best = max(values) if high else min(values)
    unit = "users_per_s" if high else "p50_ms"
    name, _, threads = figure.partition("_x")
    extra = {"concurrent_requests": int(threads)} if threads else {}
    emit({"figure": name, **extra, "summary": True, "repeats": len(values),
          f"median_{unit}": round(float(np.median(values)), 4),
          f"best_{unit}": round(float(best), 4)})
"""


def make_exports(
    variants: list[str], num_items: int, run: Path | None, out: Path, pooling: str = "attention"
) -> dict:
    """Export the benchmark model once per variant; returns ``{variant: version_dir}``."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np

    from feedrec.export import export_model, export_run, export_size

    paths = {}
    model = item_ids = None
    if run is None:
        from feedrec.config import ModelConfig
        from feedrec.models.recommender import build_model

        rng = np.random.default_rng(0)
        sizes = {"category": 20, "subcategory": 200}
        tables = {
            name: rng.integers(0, size, num_items).astype("int32") for name, size in sizes.items()
        }
        model = build_model(ModelConfig(pooling=pooling), num_items, tables, sizes)
        item_ids = ["", "<oov>"] + [f"N{index}" for index in range(2, num_items)]
    for variant in variants:
        jit = variant == "xla"
        if run is None:
            path = export_model(model, item_ids, out / variant, jit_compile=jit)
        else:
            path = export_run(run, out / variant, jit_compile=jit)
        sizes = export_size(path)
        print(
            json.dumps({"figure": "export_size", "export": variant, **sizes}),
            flush=True,
        )
        paths[variant] = path
    return paths


def history_lengths(behaviors: Path, count: int, seed: int = 0) -> list[int]:
    """``count`` history lengths drawn from a MIND ``behaviors.tsv`` (column 4:
    the space-separated clicked ids), or ``[]`` when the file is absent."""
    if not behaviors.is_file():
        return []
    import numpy as np

    with behaviors.open(encoding="utf-8") as lines:
        lengths = [len(line.split("\t")[3].split()) for line in lines if line.strip()]
    return np.random.default_rng(seed).choice(lengths, count).tolist()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--variants", nargs="+", choices=("default", "xla"), default=["default", "xla"]
    )
    parser.add_argument("--run", type=Path, help="export this trained run instead")
    parser.add_argument(
        "--pooling",
        choices=("attention", "mean", "last", "query"),
        default="attention",
        help="the random model's pooling (default: the default architecture's, attention); "
        "with `last` (the pooling of the ml-1m and globo-g1 configs, here on the default "
        "architecture) the last block computes only the last click's slot",
    )
    parser.add_argument("--items", type=int, default=50_000, help="items of the random model")
    parser.add_argument("--history", type=int, default=50, help="clicks per request history")
    parser.add_argument("--candidates", type=int, default=100)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--calls", type=int, default=1000, help="1-user calls per repetition")
    parser.add_argument(
        "--batch-calls", type=int, default=30, help="batches per client per repetition"
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        nargs="+",
        default=[1, 2],
        help="concurrent batch requests (a server's clients), one figure each",
    )
    parser.add_argument(
        "--clients",
        nargs="+",
        choices=("eager", "session"),
        default=["eager", "session"],
        help="how the measuring process calls the export: `eager` (tf.saved_model.load, "
        "a signature's concrete function from Python) or `session` (TF Serving's "
        "session-based loader and one Session::Run per request); one set of figures each",
    )
    parser.add_argument("--intra-op", type=int, default=0, help="TF intra-op threads (0: TF's)")
    parser.add_argument("--inter-op", type=int, default=0, help="TF inter-op threads (0: TF's)")
    parser.add_argument(
        "--realistic",
        type=Path,
        default=MIND_BEHAVIORS,
        metavar="BEHAVIORS_TSV",
        help="also measure 1-user latency with history lengths drawn from this MIND "
        "behaviors.tsv (default: the shared MIND subset; skipped if absent)",
    )
    parser.add_argument("--cpus", help="pin the measuring process with taskset, e.g. 0,1")
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a server environment setting for the measuring process, e.g. "
        "TF_ENABLE_ONEDNN_OPTS=0 or XLA_FLAGS=...; repeatable",
    )
    args = parser.parse_args(argv)
    if args.run is not None and args.pooling != "attention":
        parser.error("--pooling sets the random model's pooling; a --run has its own")
    settings = {}
    for item in args.env:
        name, equals, value = item.partition("=")
        if not equals or not name:
            parser.error(f"--env should be NAME=VALUE. Received: --env {item!r}")
        settings[name] = value

    lengths = history_lengths(args.realistic, 1000)
    if not lengths:
        print(json.dumps({"figure": "latency_realistic", "skipped": f"no {args.realistic}"}))
    with tempfile.TemporaryDirectory(prefix="feedrec-serving-") as tmp:
        if args.run is None:
            print(json.dumps({"figure": "model", "pooling": args.pooling, "items": args.items}))
        paths = make_exports(args.variants, args.items, args.run, Path(tmp), args.pooling)
        for (variant, path), client in itertools.product(paths.items(), args.clients):
            child = {
                "export": str(path),
                "name": variant,
                "client": client,
                "history": args.history,
                "candidates": args.candidates,
                "batch": args.batch,
                "repeats": args.repeats,
                "calls": args.calls,
                "batch_calls": args.batch_calls,
                "concurrency": args.concurrency,
                "realistic_lengths": lengths,
                "realistic_source": "MIND" if lengths else None,
                "intra_op": args.intra_op,
                "inter_op": args.inter_op,
            }
            command = [sys.executable, "-c", CHILD, json.dumps(child)]
            if args.cpus:
                command = ["taskset", "-c", args.cpus, *command]
            env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **settings}
            if settings:
                line = {"figure": "settings", "export": variant, "client": client, "env": settings}
                print(json.dumps(line))
                sys.stdout.flush()
            result = subprocess.run(command, env=env, cwd=tmp, stdout=sys.stdout)
            if result.returncode:
                return result.returncode
    return 0


if __name__ == "__main__":
    sys.exit(main())
