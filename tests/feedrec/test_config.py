import json

import pytest

from feedrec.config import Config, ModelConfig, load_config


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
