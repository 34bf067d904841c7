import subprocess
import sys

import pytest

from feedrec.cli import build_parser, main

SUBCOMMANDS = ("demo", "prepare", "train", "evaluate", "export", "recommend")


def test_help_lists_every_subcommand(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for name in SUBCOMMANDS:
        assert name in out


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "DATA", "--out", "RUN", "--config", "c.toml", "--epochs", "2"],
        ["evaluate", "RUN", "DATA", "--split", "valid", "--json", "m.json"],
        ["export", "RUN", "--out", "BASE"],
        ["demo", "--workdir", "W"],
    ],
)
def test_contract_flags_parse(argv):
    args = build_parser().parse_args(argv)
    assert args.command == argv[0]


def test_user_errors_are_one_line_without_traceback(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "feedrec.cli",
            "train",
            str(tmp_path / "missing"),
            "--out",
            str(tmp_path / "run"),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "missing" in result.stderr and "feedrec prepare" in result.stderr


def test_bad_config_value_names_the_setting(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text("[model]\nnum_heads = 3\nembedding_dim = 64\n")
    data = tmp_path / "data"
    data.mkdir()
    (data / "manifest.json").write_text("{}")
    code = main(["train", str(data), "--out", str(tmp_path / "run"), "--config", str(config)])
    assert code == 2
