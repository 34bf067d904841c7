"""The reader registry: dispatch by format name, and no TensorFlow import."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pipelines import readers
from pipelines.readers import events, globo, mind, sequences


def test_registry_names_every_reader():
    assert readers.READERS == {
        "mind": mind.read,
        "events": events.read,
        "globo": globo.read,
        "sequences": sequences.read,
    }


def test_read_dispatches_with_options(tmp_path):
    path = tmp_path / "seq.txt"
    path.write_text("1 10\n1\n")
    result = readers.read("sequences", [path], on_bad_rows="skip")
    assert result.events.column("item_id").to_pylist() == ["10"]
    assert dict(result.rejections.by_reason) == {"wrong_field_count": 1}


def test_unknown_format_quotes_the_received_value(tmp_path):
    with pytest.raises(ValueError, match="Received: format='criteo'"):
        readers.read("criteo", [tmp_path])


def test_readers_do_not_import_tensorflow():
    root = Path(__file__).resolve().parents[2]
    code = "import sys, pipelines.readers; print('tensorflow' in sys.modules)"
    output = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True
    )
    assert output.stdout.strip() == "False"


@pytest.mark.parametrize("format", ["mind", "globo", "sequences"])
def test_fixed_formats_refuse_column_options(tmp_path, format):
    with pytest.raises(
        ValueError, match=f"`{format}` reader takes no format options.*Received: user_col='uid'"
    ):
        readers.read(format, [tmp_path], user_col="uid")
