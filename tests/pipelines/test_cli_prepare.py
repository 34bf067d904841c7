"""`feedrec prepare` command line: options, config, exit codes and messages."""

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.cli import add_arguments, load_prepare_config, options_from_args, run

REPO = Path(__file__).resolve().parents[2]

CSV = """user_id,item_id,timestamp
u1,a,1000
u1,b,2000
u2,a,2500
u1,c,3000
u2,d,4000
u2,e,5000
"""


def parse(*argv):
    parser = argparse.ArgumentParser(prog="feedrec prepare")
    add_arguments(parser)
    return parser.parse_args([str(a) for a in argv])


@pytest.fixture
def log(tmp_path):
    path = tmp_path / "clicks.csv"
    path.write_text(CSV)
    return path


def manifest_of(folder):
    return json.loads((folder / "manifest.json").read_text())


def test_prepare_succeeds_and_summarises(tmp_path, log, capsys):
    out = tmp_path / "data"
    code = run(
        parse(
            "--format",
            "events",
            log,
            "--out",
            out,
            "--history-length",
            "3",
            "--negatives",
            "1",
            "--valid-start",
            "3000",
            "--test-start",
            "5000",
            "--time-unit",
            "ms",
        )
    )
    assert code == 0
    captured = capsys.readouterr()
    assert f"prepared {out}" in captured.out
    assert "rows: 6 read, 6 used, 0 rejected" in captured.out
    assert "train:          3 examples, 2 users" in captured.out
    assert "layout: compact (each click once in clicks.parquet" in captured.out
    manifest = manifest_of(out)
    assert manifest["parameters"]["history_length"] == 3
    assert [manifest["splits"][s]["examples"] for s in ("train", "valid", "test")] == [3, 2, 1]


def test_config_file_and_flags_precedence(tmp_path, log):
    config = tmp_path / "prepare.toml"
    config.write_text(
        "[prepare]\nhistory_length = 7\nnegatives = 3\nsplit-mode = 'leave-last-out'\n"
    )
    args = parse(
        "--format", "events", log, "--out", tmp_path / "d", "--config", config, "--negatives", "2"
    )
    options = options_from_args(args)
    assert (options.history_length, options.negatives, options.split_mode) == (
        7,
        2,
        "leave-last-out",
    )
    json_config = tmp_path / "prepare.json"
    json_config.write_text(json.dumps({"prepare": {"seed": 9}}))
    assert load_prepare_config(json_config) == {"seed": 9}
    pytest.importorskip("yaml", reason="PyYAML is optional: YAML configs need it")
    yaml_config = tmp_path / "prepare.yaml"
    yaml_config.write_text("prepare:\n  seed: 9\n  history-length: 7\n")
    assert load_prepare_config(yaml_config) == {"seed": 9, "history_length": 7}


def test_bad_row_exits_2_with_one_line(tmp_path, log, capsys):
    log.write_text(CSV + "u3,f,not-a-time\n")
    code = run(parse("--format", "events", log, "--out", tmp_path / "data", "--no-progress"))
    assert code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("feedrec prepare: error: ")
    assert "clicks.csv, line 8" in err and "Traceback" not in err
    assert not (tmp_path / "data").exists()


def test_skip_bad_rows_summarises_them_on_stderr(tmp_path, log, capsys):
    log.write_text(CSV + "u3,f,not-a-time\n,g,6000\n")
    out = tmp_path / "data"
    code = run(
        parse("--format", "events", log, "--out", out, "--on-bad-rows", "skip", "--no-progress")
    )
    assert code == 0
    err = capsys.readouterr().err
    manifest = manifest_of(out)
    assert manifest["rows_read"] == 8 and manifest["rows_rejected"] == 2
    assert "skipped 2 bad row(s)" in err
    for reason, count in manifest["rejected_by_reason"].items():
        assert f"{reason}: {count}" in err


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--valid-start", "3000"], "set both `valid_start` and `test_start`"),
        (["--history-length", "0"], "history_length=0"),
        (["--negative-window", "later"], "negative_window='later'"),
        (
            ["--valid-fraction", "0.6", "--test-fraction", "0.5"],
            "valid_fraction=0.6, test_fraction=0.5",
        ),
    ],
)
def test_bad_options_exit_2(tmp_path, log, capsys, extra, message):
    code = run(parse("--format", "events", log, "--out", tmp_path / "data", *extra))
    assert code == 2
    assert message in capsys.readouterr().err


def test_layout_flag_and_config_key(tmp_path, log, capsys):
    assert run(parse("--format", "events", log, "--out", tmp_path / "auto")) == 0
    assert manifest_of(tmp_path / "auto")["layout"] == "compact"
    assert (tmp_path / "auto" / "clicks.parquet").is_file()
    config = tmp_path / "c.toml"
    config.write_text('[prepare]\nlayout = "lists"\n')
    assert run(parse("--format", "events", log, "--out", tmp_path / "l", "--config", config)) == 0
    assert manifest_of(tmp_path / "l")["layout"] == "lists"
    assert not (tmp_path / "l" / "clicks.parquet").exists()
    argv = ("--format", "events", log, "--out", tmp_path / "s", "--engine", "spark")
    assert run(parse(*argv, "--layout", "compact")) == 2
    assert "written by the local engine only" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse("--format", "events", log, "--out", tmp_path / "x", "--layout", "flat")


def test_missing_input_and_existing_output_exit_2(tmp_path, log, capsys):
    assert run(parse("--format", "events", tmp_path / "none.csv", "--out", tmp_path / "d")) == 2
    assert "input not found" in capsys.readouterr().err
    out = tmp_path / "taken"
    out.mkdir()
    (out / "x").write_text("x")
    assert run(parse("--format", "events", log, "--out", out)) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert run(parse("--format", "events", log, "--out", out, "--overwrite", "--no-progress")) == 0
    assert not (out / "x").exists()


def test_unknown_config_setting_exits_2(tmp_path, log, capsys):
    config = tmp_path / "c.toml"
    config.write_text("[prepare]\nhistory_lenght = 3\n")
    assert run(parse("--format", "events", log, "--out", tmp_path / "d", "--config", config)) == 2
    assert "unknown [prepare] setting(s) ['history_lenght']" in capsys.readouterr().err


def test_sequences_format_end_to_end(tmp_path, capsys):
    path = tmp_path / "seq.txt"
    path.write_text("".join(f"{u} {i}\n" for u in (1, 2) for i in range(1, 6)))
    out = tmp_path / "data"
    assert run(parse("--format", "sequences", path, "--out", out, "--no-progress")) == 0
    manifest = manifest_of(out)
    assert manifest["split_mode"] == "leave-last-out"
    assert [manifest["splits"][s]["examples"] for s in ("train", "valid", "test")] == [6, 2, 2]


def test_prepare_does_not_import_tensorflow(tmp_path, log):
    script = (
        "import argparse, sys\n"
        "from pipelines.cli import add_arguments, run\n"
        "parser = argparse.ArgumentParser()\n"
        "add_arguments(parser)\n"
        f"code = run(parser.parse_args(['--format', 'events', {str(log)!r}, '--out', "
        f"{str(tmp_path / 'data')!r}]))\n"
        "assert code == 0, code\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras'))\n"
        "print('LOADED', loaded)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "LOADED []" in done.stdout
    assert (tmp_path / "data" / "manifest.json").exists()


def test_corrupt_archive_exits_2(tmp_path, capsys):
    archive = tmp_path / "clicks.zip"
    archive.write_bytes(b"PK\x03\x04 this is not a zip archive")
    assert run(parse("--format", "globo", archive, "--out", tmp_path / "d", "--no-progress")) == 2
    err = capsys.readouterr().err
    assert err.startswith("feedrec prepare: error: ") and err.count("\n") == 1
