"""`feedrec train` flags of the scale-out settings reach the training config."""

import pytest

import feedrec.training
from feedrec.cli import build_parser, main


def test_scale_flags_reach_the_config(tmp_path, monkeypatch):
    seen = {}

    def fake_train(data_dir, out_dir, config, **kwargs):
        seen["config"] = config
        return {"loss": [1.0]}

    monkeypatch.setattr(feedrec.training, "train", fake_train)
    argv = ["train", str(tmp_path), "--out", str(tmp_path / "run")]
    assert main([*argv, "--distribute", "multi-worker", "--mixed-precision", "bfloat16"]) == 0
    assert seen["config"].train.distribute == "multi-worker"
    assert seen["config"].train.mixed_precision == "bfloat16"
    assert main(argv) == 0  # unset flags keep the defaults
    assert seen["config"].train.distribute == "none"
    assert seen["config"].train.mixed_precision == "auto"


@pytest.mark.parametrize("flag", ["--distribute", "--mixed-precision"])
def test_scale_flags_refuse_unknown_values(flag, capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["train", "data", "--out", "run", flag, "everything"])
    assert exit_info.value.code == 2
    assert "'everything'" in capsys.readouterr().err
