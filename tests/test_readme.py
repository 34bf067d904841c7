"""The README's configuration blocks are the code's defaults (documentation drift fails here)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from feedrec.config import Config
from feedrec.sequential import SequentialConfig

README = Path(__file__).resolve().parents[1] / "README.md"


def toml_blocks() -> list[dict]:
    text = README.read_text(encoding="utf-8")
    return [tomllib.loads(block) for block in re.findall(r"```toml\n(.*?)```", text, re.S)]


def block_with(table: str) -> dict:
    found = [block for block in toml_blocks() if table in block]
    assert found, f"README.md has no ```toml block with a [{table}] table"
    return found[0]


def test_model_and_train_defaults_are_documented():
    block = block_with("model")
    assert Config.from_dict({"model": block["model"], "train": block["train"]}) == Config()


def test_sequential_defaults_are_documented():
    documented = block_with("sequential")["sequential"]
    assert SequentialConfig.from_dict(documented) == SequentialConfig()
