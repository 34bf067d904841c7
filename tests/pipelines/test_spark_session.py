"""The Spark engine's prerequisites: a clear error for a missing Java or PySpark.

These tests need neither Java nor PySpark (the CLI one needs PySpark importable):
the environment is monkeypatched so that ``java`` cannot be found.
"""

from __future__ import annotations

import argparse
import os
import re
import sys

import pytest

from pipelines.cli import add_arguments, run
from pipelines.spark.session import (
    JavaNotFoundError,
    PySparkNotInstalledError,
    find_java,
    local_session,
    require_pyspark,
)


def fake_java(folder):
    """An executable ``folder/java``; its path."""
    folder.mkdir(parents=True)
    java = folder / "java"
    java.write_text("#!/bin/sh\nexit 0\n")
    java.chmod(0o755)
    return java


def test_java_missing_from_path(monkeypatch, tmp_path):
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(JavaNotFoundError, match="apt-get install openjdk-17-jre-headless") as err:
        find_java()
    assert "`java` is not on PATH and JAVA_HOME is not set" in str(err.value)
    assert isinstance(err.value, FileNotFoundError)  # the CLI reports it in one line


def test_java_home_without_java(monkeypatch, tmp_path):
    monkeypatch.setenv("JAVA_HOME", str(tmp_path))
    fake_java(tmp_path / "elsewhere")
    monkeypatch.setenv("PATH", str(tmp_path / "elsewhere"))  # JAVA_HOME wins over PATH
    with pytest.raises(JavaNotFoundError, match=re.escape(f"JAVA_HOME={str(tmp_path)!r}")):
        find_java()


def test_java_found_in_java_home_then_on_path(monkeypatch, tmp_path):
    in_home = fake_java(tmp_path / "jdk" / "bin")
    on_path = fake_java(tmp_path / "path")
    monkeypatch.setenv("PATH", str(tmp_path / "path"))
    monkeypatch.setenv("JAVA_HOME", str(tmp_path / "jdk"))
    assert find_java() == str(in_home)
    monkeypatch.delenv("JAVA_HOME")
    assert find_java() == str(on_path)


def test_missing_pyspark(monkeypatch):
    monkeypatch.setitem(sys.modules, "pyspark", None)  # `import pyspark` now fails
    with pytest.raises(PySparkNotInstalledError, match=re.escape('pip install "feedrec[spark]"')):
        require_pyspark()
    with pytest.raises(ValueError, match="PySpark"):  # the CLI reports ValueErrors in one line
        require_pyspark()


@pytest.mark.parametrize(
    ("arguments", "message"),
    [({"cores": 0}, "cores=0"), ({"shuffle_partitions": -2}, "shuffle_partitions=-2")],
    ids=["no cores", "negative partitions"],
)
def test_local_session_checks_arguments(arguments, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        local_session(**arguments)


def cli(tmp_path, *flags):
    log = tmp_path / "log.csv"
    log.write_text("user_id,item_id,timestamp\nu1,i1,1000\nu1,i2,2000\n")
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(
        [str(log), "--format", "events", "--out", str(tmp_path / "out"), *flags]
    )
    return run(args)


def test_cli_without_java(monkeypatch, tmp_path, capsys):
    pytest.importorskip("pyspark", reason="PySpark is not installed")
    from pyspark.sql import SparkSession

    monkeypatch.setattr(SparkSession, "getActiveSession", classmethod(lambda cls: None))
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path / "nothing"))
    assert cli(tmp_path, "--engine", "spark", "--no-progress") == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("feedrec prepare: error: Spark needs Java")
    assert "openjdk-17-jre-headless" in error and os.linesep not in error
    assert not (tmp_path / "out").exists()


def test_cli_without_pyspark(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "pyspark", None)
    assert cli(tmp_path, "--engine", "spark", "--no-progress") == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("feedrec prepare: error: the Spark engine needs PySpark")
    assert 'pip install "feedrec[spark]"' in error


def test_existing_output_is_refused_before_spark_starts(monkeypatch, tmp_path):
    pytest.importorskip("pyspark", reason="PySpark is not installed")
    from pipelines.spark import engine

    def no_session(**_):
        raise AssertionError("Spark should not start for a refused destination")

    monkeypatch.setattr(engine, "local_session", no_session)
    log = tmp_path / "log.csv"
    log.write_text("user_id,item_id,timestamp\nu1,i1,1000\n")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("earlier work")
    with pytest.raises(FileExistsError, match="--overwrite"):
        engine.prepare("events", [log], out)
    assert (out / "keep.txt").read_text() == "earlier work"
