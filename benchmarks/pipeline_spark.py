"""Benchmark ``feedrec prepare`` on both engines: the full Globo zip, local vs Spark.

Each engine runs in a fresh Python process (Spark in local mode, its JVM
started by that process) and is timed from the process start to its exit,
JVM start-up included; ``prepare_s`` is the manifest's own ``elapsed_s``
(without the interpreter and, for Spark, the session start). ``peak_rss_mb``
is the peak resident memory of the process tree (Python, JVM, Python
workers), sampled every 0.2 s from ``/proc``. With ``--compare``, the two
outputs are then checked table by table (sorted by ``example_key``). One JSON
line per figure goes to stdout.

Usage::

    python benchmarks/pipeline_spark.py                     # local[2], both engines
    python benchmarks/pipeline_spark.py --cores 4 --compare
    python benchmarks/pipeline_spark.py --engines spark --driver-memory 6g
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GLOBO = REPO / ".." / "shared" / "data" / "globo-news-clicks" / "clicks_hour_000-309.zip"

CHILD = """
import json, sys
from pipelines.prepare import PrepareOptions, prepare
engine, source, out, cores, memory = sys.argv[1:6]
options = PrepareOptions(engine=engine)
if engine == "spark":
    from pipelines.spark import local_session, prepare as prepare_on_spark
    spark = local_session(cores=int(cores), driver_memory=memory)
    prepare_on_spark("globo", [source], out, options=options, spark=spark)
    spark.stop()
else:
    prepare("globo", [source], out, options=options)
"""


def tree_rss_mb(root: int) -> float:
    """Resident memory of ``root`` and its descendants, from /proc (MB)."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as file:
                fields = file.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid, parent = int(entry), int(fields[1])
        children.setdefault(parent, []).append(pid)
        rss[pid] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        total += rss.get(pid, 0)
        stack.extend(children.get(pid, []))
    return total / 2**20


def run_engine(engine: str, out: Path, cores: int, memory: str) -> dict:
    """Run one engine in a fresh process; wall time, peak tree RSS and the manifest."""
    command = [sys.executable, "-c", CHILD, engine, str(GLOBO), str(out), str(cores), memory]
    started = time.perf_counter()
    process = subprocess.Popen(
        command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    peak = [0.0]

    def sample() -> None:
        while process.poll() is None:
            peak[0] = max(peak[0], tree_rss_mb(process.pid))
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, stderr = process.communicate()
    wall = time.perf_counter() - started
    sampler.join()
    if process.returncode:
        raise RuntimeError(f"{engine} prepare failed ({process.returncode}): {stderr[-3000:]}")
    manifest = json.loads((out / "manifest.json").read_text())
    return {"wall_s": wall, "peak_rss_mb": peak[0], "manifest": manifest}


def same_tables(local: Path, spark: Path) -> bool:
    """Whether both DATA_DIRs hold equal tables (splits as read, in either layout,
    compared sorted by example_key)."""
    import pyarrow.parquet as pq

    from pipelines.dataset import load_split

    for split in ("train", "valid", "test"):
        expected = load_split(local, split).sort_by("example_key")
        received = load_split(spark, split).sort_by("example_key")
        if not received.equals(expected):
            return False
        del expected, received
    return all(
        pq.read_table(spark / name).equals(pq.read_table(local / name))
        for name in [
            "items.parquet",
            *(f"features/{p.name}" for p in (local / "features").iterdir()),
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--engines", nargs="+", choices=("local", "spark"), default=["local", "spark"]
    )
    parser.add_argument("--cores", type=int, default=2, help="Spark local[N] (default: 2)")
    parser.add_argument("--driver-memory", default="4g", help="Spark driver JVM heap (default: 4g)")
    parser.add_argument("--compare", action="store_true", help="check the outputs are equal")
    parser.add_argument("--workdir", type=Path, help="scratch folder (default: a temp folder)")
    args = parser.parse_args(argv)
    if not GLOBO.exists():
        print(f"skipped: {GLOBO.resolve()} is absent (../shared/data)", file=sys.stderr)
        return 0
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="feedrec-bench-spark-"))
    workdir.mkdir(parents=True, exist_ok=True)
    outs = {}
    try:
        for engine in args.engines:
            out = workdir / f"globo-{engine}"
            shutil.rmtree(out, ignore_errors=True)
            result = run_engine(engine, out, args.cores, args.driver_memory)
            manifest = result["manifest"]
            clicks = manifest["rows_read"]
            print(
                json.dumps(
                    {
                        "benchmark": "pipeline-engines",
                        "dataset": "globo",
                        "engine": engine,
                        "clicks": clicks,
                        "examples": sum(s["examples"] for s in manifest["splits"].values()),
                        "wall_s": round(result["wall_s"], 2),
                        "prepare_s": manifest["elapsed_s"],
                        "clicks_per_s": round(clicks / result["wall_s"]),
                        "peak_rss_mb": round(result["peak_rss_mb"], 1),
                        "timings_s": manifest.get("timings_s"),
                        "cores": args.cores if engine == "spark" else None,
                        "cpus": len(os.sched_getaffinity(0)),
                        "load_average": [round(x, 2) for x in os.getloadavg()],
                    }
                ),
                flush=True,
            )
            outs[engine] = out
        if args.compare and len(outs) == 2:
            equal = same_tables(outs["local"], outs["spark"])
            print(json.dumps({"benchmark": "pipeline-engines", "same_tables": equal}), flush=True)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
