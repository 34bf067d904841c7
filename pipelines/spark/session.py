"""Spark sessions for feedrec: the Java and PySpark checks, and a local-mode session.

PySpark is an optional extra (``pip install "feedrec[spark]"``) and Spark runs
on a Java virtual machine. Both are looked for only when a Spark engine is
asked for, and each missing piece is reported with what to install:

>>> find_java()                                  # doctest: +SKIP
'/usr/lib/jvm/java-17-openjdk-amd64/bin/java'
>>> spark = local_session(cores=2)               # doctest: +SKIP
"""

from __future__ import annotations

import importlib
import os
import shutil
import sys
from pathlib import Path
from typing import Any

#: What to install when Java is missing.
JDK_HINT = (
    "install a JDK 17, e.g. `apt-get install openjdk-17-jre-headless` "
    "(macOS: `brew install openjdk@17`), then put `java` on PATH or set JAVA_HOME"
)
PYSPARK_HINT = 'install the Spark extra: pip install "feedrec[spark]" (PySpark >= 3.5)'


class JavaNotFoundError(FileNotFoundError):
    """Spark needs a Java runtime and none was found (``JAVA_HOME`` / ``java`` on PATH)."""


class PySparkNotInstalledError(ImportError, ValueError):
    """The Spark engine was asked for but PySpark is not installed."""


def find_java() -> str:
    """The ``java`` executable Spark will start: ``$JAVA_HOME/bin/java``, else ``java`` on PATH.

    Raises:
        JavaNotFoundError: ``JAVA_HOME`` is set but holds no ``bin/java``, or it
            is unset and ``java`` is not on ``PATH``; the message says what to install.
    """
    java_home = os.environ.get("JAVA_HOME")
    if java_home:
        java = Path(java_home) / "bin" / "java"
        if java.is_file() and os.access(java, os.X_OK):
            return str(java)
        raise JavaNotFoundError(
            f"Spark needs Java, but JAVA_HOME={java_home!r} has no executable bin/java; {JDK_HINT}"
        )
    java = shutil.which("java")
    if java is None:
        raise JavaNotFoundError(
            f"Spark needs Java, but `java` is not on PATH and JAVA_HOME is not set; {JDK_HINT}"
        )
    return java


def require_pyspark() -> Any:
    """Import and return ``pyspark``, or raise :class:`PySparkNotInstalledError`."""
    try:
        return importlib.import_module("pyspark")
    except ImportError as err:
        raise PySparkNotInstalledError(
            f"the Spark engine needs PySpark, which is not installed ({err}); {PYSPARK_HINT}"
        ) from err


def local_session(
    *,
    cores: int | str = "*",
    shuffle_partitions: int | None = None,
    driver_memory: str = "2g",
    app_name: str = "feedrec",
    config: dict[str, str] | None = None,
):
    """A SparkSession: the active one, or a new local-mode one (``local[cores]``).

    Under ``spark-submit`` the submitted master and settings are used (plus
    ``config``); otherwise Spark runs in local mode on this machine (unless
    ``config`` names a ``spark.master``) with the settings below. Python
    workers use this interpreter (``PYSPARK_PYTHON``, unless already set).

    Args:
        cores: int or ``"*"``. Worker threads in local mode. Defaults to ``"*"`` (all).
        shuffle_partitions: int. ``spark.sql.shuffle.partitions``; defaults to
            twice the cores (4 when ``cores="*"`` cannot be counted).
        driver_memory: str. ``spark.driver.memory`` of a new local JVM. Defaults to ``"2g"``.
        app_name: str. Defaults to ``"feedrec"``.
        config: further Spark settings. Defaults to none.

    Raises:
        PySparkNotInstalledError: PySpark is missing.
        JavaNotFoundError: Java is missing.
    """
    if not (isinstance(cores, int) and cores >= 1) and cores != "*":
        raise ValueError(f"`cores` should be a positive integer or '*'. Received: cores={cores!r}")
    if shuffle_partitions is not None and (
        not isinstance(shuffle_partitions, int) or shuffle_partitions < 1
    ):
        raise ValueError(
            "`shuffle_partitions` should be a positive integer. "
            f"Received: shuffle_partitions={shuffle_partitions!r}"
        )
    require_pyspark()
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    if _submitted():  # spark-submit decided the master and settings
        builder = SparkSession.builder.appName(app_name)
        for key, value in (config or {}).items():
            builder = builder.config(key, value)
        return builder.getOrCreate()
    find_java()
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    count = (os.cpu_count() or 2) if cores == "*" else cores
    settings = {
        "spark.sql.shuffle.partitions": str(shuffle_partitions or 2 * count),
        "spark.driver.memory": driver_memory,
        "spark.ui.enabled": "false",
        "spark.ui.showConsoleProgress": "false",
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
    }
    settings.update(config or {})
    builder = SparkSession.builder.appName(app_name)
    if "spark.master" not in settings:
        builder = builder.master(f"local[{cores}]")
    for key, value in settings.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def _submitted() -> bool:
    """Whether this Python runs under ``spark-submit`` (which started the JVM, set the master)."""
    return "PYSPARK_GATEWAY_PORT" in os.environ
