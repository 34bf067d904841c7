"""feedrec's pipeline on Spark: the local engine's stages again, for logs that outgrow one machine.

``feedrec prepare --engine spark ...`` and :func:`prepare` (the same
arguments as :func:`pipelines.prepare.prepare`, plus a ``SparkSession``)
give the same tables as the local engine on the same input and seed. PySpark
is an optional extra (``pip install "feedrec[spark]"``) and needs Java 17::

    from pyspark.sql import SparkSession
    from pipelines.spark import prepare

    spark = SparkSession.builder.getOrCreate()
    manifest = prepare("globo", ["s3a://bucket/clicks/"], "s3a://bucket/data/globo", spark=spark)

Modules: :mod:`.session` (Java and PySpark checks, a local session),
:mod:`.readers` (raw files parsed in Spark tasks), :mod:`.stages` (splits,
histories, negatives on DataFrames), :mod:`.engine` (orchestration, output).
Importing this package imports neither PySpark nor Java.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipelines.spark.session import (
    JavaNotFoundError,
    PySparkNotInstalledError,
    find_java,
    local_session,
    require_pyspark,
)

__all__ = [
    "JavaNotFoundError",
    "PySparkNotInstalledError",
    "find_java",
    "local_session",
    "prepare",
    "require_pyspark",
]


def prepare(
    format: str,
    inputs: list,
    out_dir: str | Path,
    *,
    options: Any = None,
    spark: Any = None,
    progress: bool = False,
) -> dict:
    """Run ``prepare`` on Spark; see :func:`pipelines.spark.engine.prepare`.

    Raises:
        PySparkNotInstalledError: PySpark is missing (``pip install "feedrec[spark]"``).
        JavaNotFoundError: no session is given and Java is missing.
    """
    require_pyspark()
    from pipelines.spark.engine import prepare as prepare_on_spark

    return prepare_on_spark(
        format, inputs, out_dir, options=options, spark=spark, progress=progress
    )
