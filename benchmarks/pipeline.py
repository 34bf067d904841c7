"""Benchmark ``feedrec prepare``: throughput on Globo, and memory as the log grows.

Each measurement runs ``prepare`` (through ``pipelines.cli``) in a fresh
Python process and times it from the process start to its exit (the manifest
is the last thing written); peak RSS is that process's ``ru_maxrss``. One
JSON line per figure goes to stdout.

Modes:

* ``globo``: the Globo clicks zip (``../shared/data/globo-news-clicks/``)
  -> examples. Prints ``{"benchmark": "pipeline", "dataset": "globo",
  "clicks", "wall_s", "clicks_per_s", "peak_rss_mb", ...}``. Skips, with a
  message, when the data is absent.
* ``memory``: a synthetic log of ``--base-clicks`` clicks at 1x, 2x, 4x,
  prepared with partitioning (``--max-rows-in-memory``), in three layouts
  (``--layouts``): ``files`` (an ``events`` log in several Parquet files),
  ``csv`` (one large Globo-format CSV file), ``zip`` (one zip of hourly
  Globo-format CSV members, like the real Globo archive), ``jsonl`` and
  ``parquet`` (the ``files`` log as one large JSON Lines or Parquet file).
  Peak RSS should stay roughly flat as the log grows: a single file or zip
  is read a batch at a time too. Prints ``{"benchmark": "pipeline-memory", "layout",
  "scale", "clicks", "input_mb", "partitions", "peak_rss_mb", ...}``.

Every figure has ``wall_s`` (process start to exit) and ``cpu_s`` (user +
system CPU time of the process, all threads), ``examples_layout`` (the
manifest's ``layout``; ``--examples-layout`` sets prepare's ``--layout``) with
``output_mb`` (the DATA_DIR's size), and the 1-minute load average
when it ended: on a machine busy with other work, ``wall_s`` is longer than
on an idle one, ``cpu_s`` much less so.

Usage::

    python benchmarks/pipeline.py                      # both modes
    python benchmarks/pipeline.py --mode globo --repeats 3
    python benchmarks/pipeline.py --mode globo --repeats 3 --examples-layout lists
    python benchmarks/pipeline.py --mode memory --scales 1 2 4 --layouts csv zip
    python benchmarks/pipeline.py --mode memory --scales 1 2 4 --layouts jsonl parquet
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GLOBO = REPO / ".." / "shared" / "data" / "globo-news-clicks" / "clicks_hour_000-309.zip"

CHILD = """
import argparse, sys
from pipelines.cli import add_arguments, run
parser = argparse.ArgumentParser()
add_arguments(parser)
sys.exit(run(parser.parse_args(sys.argv[1:])))
"""


def run_prepare(
    argv: list[str], cpus: str | None = None, examples_layout: str | None = None
) -> dict:
    """Run prepare in a fresh process; wall time, peak RSS, output size and the manifest."""
    if examples_layout:
        argv = [*argv, "--layout", examples_layout]
    command = [sys.executable, "-c", CHILD, *argv, "--no-progress"]
    if cpus:
        command = ["taskset", "-c", cpus, *command]
    started = time.perf_counter()
    process = subprocess.Popen(
        command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    stdout, stderr = process.stdout.read(), process.stderr.read()
    if process.returncode:
        raise RuntimeError(f"prepare failed ({process.returncode}): {stderr.strip() or stdout}")
    out = Path(argv[argv.index("--out") + 1])
    manifest = json.loads((out / "manifest.json").read_text())
    return {
        "wall_s": wall,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "peak_rss_mb": usage.ru_maxrss / 1024,
        "load_average": round(os.getloadavg()[0], 2),  # other work on the machine skews wall_s
        "output_mb": round(sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) / 2**20, 1),
        "manifest": manifest,
    }


def figure(**fields) -> None:
    print(json.dumps(fields), flush=True)


def bench_globo(
    workdir: Path, cpus: str | None, repeats: int, examples_layout: str | None = None
) -> None:
    if not GLOBO.exists():
        print(f"skipped globo: {GLOBO.resolve()} is absent (../shared/data)", file=sys.stderr)
        return
    for repeat in range(repeats):
        out = workdir / f"globo-{repeat}"
        argv = ["--format", "globo", str(GLOBO), "--out", str(out)]
        result = run_prepare(argv, cpus, examples_layout)
        manifest = result["manifest"]
        clicks = manifest["rows_read"]
        figure(
            benchmark="pipeline",
            dataset="globo",
            clicks=clicks,
            examples=sum(s["examples"] for s in manifest["splits"].values()),
            wall_s=round(result["wall_s"], 3),
            clicks_per_s=round(clicks / result["wall_s"]),
            peak_rss_mb=round(result["peak_rss_mb"], 1),
            cpu_s=round(result["cpu_s"], 2),
            load_average=result["load_average"],
            prepare_s=manifest["elapsed_s"],
            timings_s=manifest.get("timings_s"),
            cpus=cpus or len(os.sched_getaffinity(0)),
            history_length=manifest["history_length"],
            negatives=manifest["num_negatives"],
            examples_layout=manifest["layout"],
            output_mb=result["output_mb"],
        )
        shutil.rmtree(out, ignore_errors=True)


def synthetic_days(days: int, clicks_per_day: int, seed: int = 0):
    """Tables of a click log, a day each: Zipf-ish users and items, items live a few days."""
    import numpy as np
    import pyarrow as pa

    rng = np.random.default_rng(seed)
    day = 86_400_000
    for index in range(days):
        start = 1_500_000_000_000 + index * day
        times = np.sort(rng.integers(start, start + day, clicks_per_day))
        users = (rng.pareto(1.2, clicks_per_day) * 1000).astype(np.int64) % 200_000
        # Items published over time: mostly recent ones are clicked.
        ages = (rng.exponential(2_000, clicks_per_day)).astype(np.int64)
        items = np.maximum(index * 5_000 + rng.integers(0, 5_000, clicks_per_day) - ages, 0)
        yield pa.table(
            {
                "user_id": pa.array(users.astype(str)),
                "item_id": pa.array(items.astype(str)),
                "timestamp": pa.array(times),
            }
        )


def synthetic_log(folder: Path, files: int, clicks_per_file: int, seed: int = 0) -> int:
    """Parquet files of a click log, a day each (see :func:`synthetic_days`)."""
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    for index, table in enumerate(synthetic_days(files, clicks_per_file, seed)):
        pq.write_table(table, folder / f"clicks-{index:04d}.parquet")
    return files * clicks_per_file


def synthetic_single(path: Path, layout: str, days: int, clicks_per_day: int, seed=0) -> int:
    """The log of :func:`synthetic_days` as one JSON Lines (``jsonl``) or Parquet file."""
    import pyarrow.parquet as pq

    tables = synthetic_days(days, clicks_per_day, seed)
    if layout == "parquet":
        first = next(tables)
        with pq.ParquetWriter(path, first.schema) as writer:
            writer.write_table(first)  # row groups of at most 1Mi rows
            for table in tables:
                writer.write_table(table)
    else:
        with path.open("w", encoding="utf-8") as file:
            for table in tables:
                file.write(table.to_pandas().to_json(orient="records", lines=True))
    return days * clicks_per_day


LAYOUTS = ("files", "csv", "zip", "jsonl", "parquet")
GLOBO_COLUMNS = (
    "user_id,session_id,session_start,session_size,click_article_id,click_timestamp,"
    "click_environment,click_deviceGroup,click_os,click_country,click_region,click_referrer_type"
)


def globo_rows(clicks: int, hour: int, rng) -> bytes:
    """``clicks`` Globo-format CSV lines (no header) of one hour, like the real log's."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.csv as pa_csv

    start = 1_506_826_800_000 + hour * 3_600_000
    times = np.sort(rng.integers(start, start + 3_600_000, clicks))
    users = (rng.pareto(1.2, clicks) * 1000).astype(np.int64) % 300_000
    ages = rng.exponential(400, clicks).astype(np.int64)
    items = np.maximum(hour * 150 + rng.integers(0, 150, clicks) - ages, 0)
    columns = {
        "user_id": users,
        "session_id": times // 1000 * 1_000_000 + users % 1_000_000,
        "session_start": times // 1000 * 1000,
        "session_size": rng.integers(2, 6, clicks),
        "click_article_id": items,
        "click_timestamp": times,
    }
    for name in GLOBO_COLUMNS.split(",")[6:]:
        columns[name] = rng.integers(1, 30, clicks)
    sink = pa.BufferOutputStream()
    pa_csv.write_csv(
        pa.table(columns), sink, write_options=pa_csv.WriteOptions(include_header=False)
    )
    return sink.getvalue().to_pybytes()


def synthetic_globo(path: Path, layout: str, hours: int, clicks_per_hour: int, seed=0) -> int:
    """One large CSV file (``csv``) or one zip of hourly members (``zip``), hour by hour."""
    import zipfile

    import numpy as np

    rng = np.random.default_rng(seed)
    header = (GLOBO_COLUMNS + "\n").encode()
    if layout == "csv":
        with path.open("wb") as file:
            file.write(header)
            for hour in range(hours):
                file.write(globo_rows(clicks_per_hour, hour, rng))
    else:
        with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for hour in range(hours):
                text = header + globo_rows(clicks_per_hour, hour, rng)
                archive.writestr(f"clicks/clicks_hour_{hour:03d}.csv", text)
    return hours * clicks_per_hour


def bench_memory(
    workdir: Path,
    scales: list[int],
    base_clicks: int,
    files_per_scale: int,
    max_rows: int,
    cpus: str | None,
    layouts: list[str],
    examples_layout: str | None = None,
) -> None:
    per_hour = 25_000
    for layout in layouts:
        for scale in scales:
            folder = workdir / f"synthetic-{layout}-{scale}x"
            folder.mkdir(parents=True, exist_ok=True)
            if layout == "files":
                files = files_per_scale * scale
                clicks = synthetic_log(folder, files, base_clicks // files_per_scale)
                inputs = sorted(str(p) for p in folder.iterdir())
                argv = ["--format", "events", *inputs, "--time-unit", "ms"]
            elif layout in ("jsonl", "parquet"):
                days = files_per_scale * scale
                path = folder / f"clicks.{layout}"
                clicks = synthetic_single(path, layout, days, base_clicks // files_per_scale)
                inputs = [str(path)]
                argv = ["--format", "events", *inputs, "--time-unit", "ms"]
            else:
                name = "clicks_hour_000.csv" if layout == "csv" else "clicks.zip"
                hours = max(1, base_clicks * scale // per_hour)
                clicks = synthetic_globo(folder / name, layout, hours, per_hour)
                inputs = [str(folder / name)]
                argv = ["--format", "globo", *inputs]
            input_mb = sum(Path(p).stat().st_size for p in inputs) / 2**20
            out = workdir / f"synthetic-{layout}-{scale}x-data"
            argv += ["--out", str(out), "--max-rows-in-memory", str(max_rows)]
            result = run_prepare(argv, cpus, examples_layout)
            manifest = result["manifest"]
            figure(
                benchmark="pipeline-memory",
                dataset="synthetic-globo" if layout in ("csv", "zip") else "synthetic-events",
                layout=layout,
                scale=scale,
                clicks=clicks,
                input_files=len(inputs),
                input_mb=round(input_mb, 1),
                partitions=manifest["partitions"],
                max_rows_in_memory=max_rows,
                wall_s=round(result["wall_s"], 3),
                clicks_per_s=round(clicks / result["wall_s"]),
                peak_rss_mb=round(result["peak_rss_mb"], 1),
                cpu_s=round(result["cpu_s"], 2),
                load_average=result["load_average"],
                cpus=cpus or len(os.sched_getaffinity(0)),
                examples_layout=manifest["layout"],
                output_mb=result["output_mb"],
            )
            shutil.rmtree(out, ignore_errors=True)
            shutil.rmtree(folder, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=("globo", "memory", "all"), default="all")
    parser.add_argument("--cpus", help="pin the prepare process to these CPUs (taskset), e.g. 0,1")
    parser.add_argument("--repeats", type=int, default=1, help="Globo runs (default: 1)")
    parser.add_argument("--scales", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--base-clicks", type=int, default=1_000_000, help="clicks at 1x")
    parser.add_argument("--files-per-scale", type=int, default=4, help="input files at 1x")
    parser.add_argument("--max-rows-in-memory", type=int, default=500_000)
    parser.add_argument(
        "--layouts",
        nargs="+",
        choices=LAYOUTS,
        default=list(LAYOUTS),
        help="memory mode: several Parquet files, one large CSV, one zip, one large JSON "
        "Lines file, one large Parquet file (default: all)",
    )
    parser.add_argument(
        "--examples-layout",
        choices=("compact", "lists"),
        help="prepare's --layout (default: prepare's own: compact for these click logs)",
    )
    parser.add_argument("--workdir", type=Path, help="scratch folder (default: a temp folder)")
    args = parser.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="feedrec-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        if args.mode in ("globo", "all"):
            bench_globo(workdir, args.cpus, args.repeats, args.examples_layout)
        if args.mode in ("memory", "all"):
            bench_memory(
                workdir,
                args.scales,
                args.base_clicks,
                args.files_per_scale,
                args.max_rows_in_memory,
                args.cpus,
                args.layouts,
                args.examples_layout,
            )
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
