import json

import pytest

from feedrec.config import Config, ModelConfig, load_config, read_config_file


def test_defaults_round_trip_through_dict():
    config = Config()
    assert Config.from_dict(config.to_dict()) == config


@pytest.mark.parametrize("suffix", [".toml", ".json"])
def test_file_and_overrides(tmp_path, suffix):
    path = tmp_path / f"c{suffix}"
    if suffix == ".toml":
        path.write_text('[model]\npooling = "mean"\n[train]\nepochs = 7\n')
    else:
        path.write_text(json.dumps({"model": {"pooling": "mean"}, "train": {"epochs": 7}}))
    config = load_config(path, {"train": {"epochs": 2, "batch_size": None}})
    assert config.model.pooling == "mean"
    assert config.train.epochs == 2  # the flag wins
    assert config.train.batch_size == Config().train.batch_size  # unset flag keeps default


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_heads": 3}, "divisible by `num_heads`.*num_heads=3"),
        ({"pooling": "max"}, "pooling.*Received: pooling='max'"),
        ({"dropout": 1.5}, "dropout=1.5"),
        ({"history_length": 0}, "history_length=0"),
        ({"relative_position_bias": "true"}, "relative_position_bias='true'"),
        ({"gated_residual": "true"}, "gated_residual='true'"),
        ({"feed_forward_activation": "tanh"}, "feed_forward_activation='tanh'"),
    ],
)
def test_bad_values_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ModelConfig(**kwargs)


def test_unknown_setting_is_named(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[model]\nheads = 2\n")
    with pytest.raises(ValueError, match=r"c.toml: \[model\]: unknown setting.*heads"):
        load_config(path)


def test_yaml_file(tmp_path):
    pytest.importorskip("yaml", reason="PyYAML is optional: YAML configs need it")
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  pooling: mean\ntrain:\n  epochs: 7\n")
    config = load_config(path)
    assert (config.model.pooling, config.train.epochs) == ("mean", 7)


def test_one_file_for_every_command(tmp_path):
    # A benchmark config holds [prepare], [benchmark], ... beside [model]/[train]:
    # `feedrec train` reads its own tables and leaves the others to their commands.
    path = tmp_path / "c.toml"
    path.write_text(
        "[benchmark]\nname = 'x'\n[prepare]\nnegatives = 9\n[model]\npooling = 'mean'\n"
        "[evaluation]\nsplit = 'test'\n[incremental]\nepochs_per_window = 2\n"
    )
    assert load_config(path).model.pooling == "mean"
    path.write_text("[sequential]\nwindows = 'all'\n")
    with pytest.raises(ValueError, match=r"\[sequential\] table.*load_sequential_config"):
        load_config(path)
    path.write_text("[modle]\npooling = 'mean'\n")
    with pytest.raises(ValueError, match=r"unknown section\(s\) \['modle'\]"):
        load_config(path)


@pytest.mark.parametrize(
    "name, text, match",
    [
        ("c.toml", "[model\n", r"c.toml: not valid TOML"),
        ("c.json", "{", r"c.json: not valid JSON"),
        ("c.ini", "[model]\n", r"c.ini: unsupported config format '.ini'"),
        ("c.json", "[1, 2]", r"c.json: expected tables of settings"),
        ("c.toml", "model = 3\n", r"c.toml: \[model\] should be a table of settings, received 3"),
        ("c.toml", "[modle]\nx = 1\n", r"c.toml: unknown section\(s\) \[.modle.\]"),
    ],
)
def test_bad_files_are_named(tmp_path, name, text, match):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ValueError, match=match):
        read_config_file(path)
    with pytest.raises(FileNotFoundError, match="config file not found"):
        read_config_file(tmp_path / "missing.toml")
