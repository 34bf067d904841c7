"""Real data end to end: ``feedrec prepare`` -> ``train`` -> ``export`` on the MIND
subset, then the export reloaded in a fresh Python process that never imports
feedrec, scored both through ``tf.saved_model.load`` and through the
session-based loader that TF Serving uses, and compared with the in-memory
model on a batch of test impressions.

Training is tiny (1 epoch, dim 16, L=8 over histories prepared with 20 clicks,
so the export's in-graph truncation is exercised). Skipped when
``../shared/data/mind-small-subset`` is absent.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from feedrec.cli import main
from feedrec.export import PADDING_SCORE, export_items, export_size
from feedrec.runs import load_run

pytestmark = pytest.mark.real_data

MIND = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "mind-small-subset"
BATCH = 48
CONFIG = """
[model]
history_length = 8
embedding_dim = 16
num_heads = 2
feed_forward_dim = 16

[train]
epochs = 1
batch_size = 512
"""

FRESH_PROCESS = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import tensorflow as tf

    export_dir, request_file, out_file = sys.argv[1:]
    request = json.loads(open(request_file).read())
    inputs = {name: np.array(rows, dtype=object) for name, rows in request.items()}

    serving = tf.saved_model.load(export_dir)
    eager = serving.signatures["serving_default"](
        **{name: tf.constant(value) for name, value in inputs.items()}
    )["scores"].numpy()

    # TF Serving's way: a session, the MetaGraph's restore op, the SignatureDef's
    # tensor names (tf.compat.v1 is the only Python route to that loader).
    with tf.Graph().as_default(), tf.compat.v1.Session() as session:
        meta = tf.compat.v1.saved_model.loader.load(session, ["serve"], export_dir)
        signature = meta.signature_def["serving_default"]
        feeds = {signature.inputs[name].name: value for name, value in inputs.items()}
        session_scores = session.run(signature.outputs["scores"].name, feeds)

    assert not any(name.startswith("feedrec") for name in sys.modules), "feedrec imported"
    np.savez(out_file, eager=eager, session=session_scores)
    """
)


@pytest.fixture(scope="module")
def mind_export(tmp_path_factory):
    if not MIND.is_dir():
        pytest.skip(f"real data not available: {MIND.resolve()} is absent")
    work = tmp_path_factory.mktemp("mind")
    (work / "config.toml").write_text(CONFIG)
    argv = ["prepare", "--format", "mind", str(MIND), "--out", str(work / "data")]
    assert main([*argv, "--history-length", "20"]) == 0
    argv = ["train", str(work / "data"), "--out", str(work / "run")]
    assert main([*argv, "--config", str(work / "config.toml")]) == 0
    assert main(["export", str(work / "run"), "--out", str(work / "export")]) == 0
    return work


def _test_batch(work: Path):
    """Raw-id request and index inputs for the first ``BATCH`` test impressions."""
    items = pq.read_table(work / "run" / "items.parquet").sort_by("item_index")
    ids = np.array(items.column("item_id").to_pylist(), dtype=object)
    rows = pq.read_table(work / "data" / "test.parquet").slice(0, BATCH).to_pylist()
    width = max(len(row["history"]) for row in rows)
    num_candidates = max(len(row["candidates"]) for row in rows)
    history = np.zeros((len(rows), width), "int32")
    candidates = np.zeros((len(rows), num_candidates), "int32")
    for b, row in enumerate(rows):
        history[b, : row["history_length"]] = row["history"][: row["history_length"]]
        candidates[b, : len(row["candidates"])] = row["candidates"]
    lengths = np.array([row["history_length"] for row in rows], "int32")
    ids[0] = ""  # padding is sent as ""; index 1's id "<oov>" is unknown to the export
    request = {"history": ids[history].tolist(), "candidates": ids[candidates].tolist()}
    return request, {"history": history, "history_length": lengths, "candidates": candidates}


def test_fresh_process_scores_match_the_in_memory_model(mind_export, tmp_path):
    version = mind_export / "export" / "1"
    request, inputs = _test_batch(mind_export)
    assert max(len(row) for row in request["history"]) > 8  # truncation is exercised
    assert any(not any(row) for row in request["history"])  # and an empty history
    (tmp_path / "request.json").write_text(json.dumps(request))

    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.pop("PYTHONPATH", None)
    result = subprocess.run(
        [sys.executable, "-c", FRESH_PROCESS, str(version), "request.json", "scores.npz"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    served = np.load(tmp_path / "scores.npz")

    model, _, _ = load_run(mind_export / "run")
    expected = model(inputs, training=False).numpy()
    assert np.isfinite(expected).all()
    real = inputs["candidates"] != 0  # impressions of different sizes, padded with ""
    assert not real.all()
    for client in ("eager", "session"):
        np.testing.assert_allclose(served[client][real], expected[real], atol=1e-5)
        np.testing.assert_array_equal(served[client][~real], PADDING_SCORE)


def test_export_carries_the_vocabulary_and_little_else(mind_export):
    version = mind_export / "export" / "1"
    items = pq.read_table(mind_export / "run" / "items.parquet").sort_by("item_index")
    assert export_items(version) == items.column("item_id").to_pylist()[2:]
    table_bytes = items.num_rows * 16 * 4  # item_vectors: num_items x dim float32
    sizes = export_size(version)
    assert table_bytes <= sizes["variables"] < table_bytes + 200_000  # + the user encoder
