"""SavedModel export for TF Serving: signatures, equivalence with the model, bad
requests, versions and interrupted exports, ``feedrec recommend``.

A tiny model (L=4, dim 8, a category feature) over 6 real items is exported
once per module; expected scores come from the in-memory model on indices
mapped by hand.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tensorflow as tf

from feedrec import export
from feedrec.cli import main
from feedrec.config import Config, ModelConfig
from feedrec.models.recommender import build_model

REPO = Path(__file__).resolve().parents[2]
L = 4
DIM = 8
ITEM_IDS = ["", "<oov>", "N10", "N11", "N12", "N13", "N14", "N15"]
INDEX = {item: index for index, item in enumerate(ITEM_IDS) if index >= 2}
MODEL_CONFIG = ModelConfig(
    history_length=L,
    embedding_dim=DIM,
    num_heads=2,
    feed_forward_dim=8,
    item_features=("category",),
)


def _index(item: str) -> int:
    return 0 if item == "" else INDEX.get(item, 1)


@pytest.fixture(scope="module")
def model():
    keras = pytest.importorskip("keras")
    keras.utils.set_random_seed(7)
    category = np.array([0, 0, 1, 2, 1, 2, 1, 2], dtype="int32")
    return build_model(MODEL_CONFIG, len(ITEM_IDS), {"category": category}, {"category": 3})


@pytest.fixture(scope="module")
def export_dir(model, tmp_path_factory):
    return export.export_model(model, ITEM_IDS, tmp_path_factory.mktemp("base"))


@pytest.fixture(scope="module")
def serving(export_dir):
    return export.load_export(export_dir)


def serve(serving, history, candidates) -> np.ndarray:
    out = serving.signatures["serving_default"](
        history=tf.constant(history, tf.string), candidates=tf.constant(candidates, tf.string)
    )
    return out["scores"].numpy()


def model_scores(model, history, candidates) -> np.ndarray:
    """The in-memory model on raw ids mapped by hand (``""`` = padding, right-padded)."""
    lengths = [sum(1 for item in row if item) for row in history]
    width = max(1, max(len(row) for row in history))
    indices = [[_index(item) for item in row] + [0] * (width - len(row)) for row in history]
    return model(
        {
            "history": np.array(indices, "int32"),
            "history_length": np.array(lengths, "int32"),
            "candidates": np.array([[_index(c) for c in row] for row in candidates], "int32"),
        },
        training=False,
    ).numpy()


def test_signatures_take_raw_string_ids(serving):
    assert set(export.SIGNATURES) <= set(serving.signatures)
    expected = {
        "serving_default": {"history": [None, None], "candidates": [None, None]},
        "user_embedding": {"history": [None, None]},
        "item_embedding": {"items": [None]},
    }
    for name, inputs in expected.items():
        _, specs = serving.signatures[name].structured_input_signature
        assert {k: spec.shape.as_list() for k, spec in specs.items()} == inputs
        assert {spec.dtype for spec in specs.values()} == {tf.string}
    outputs = serving.signatures["serving_default"].structured_outputs
    assert list(outputs) == ["scores"] and outputs["scores"].dtype == tf.float32


def test_scores_match_the_model(model, serving):
    history = [["N10", "N12", "N11"], ["N13", "", ""], ["", "", ""]]
    candidates = [["N14", "N10", "N15"], ["N11", "N12", "N13"], ["N10", "N11", "N12"]]
    np.testing.assert_allclose(
        serve(serving, history, candidates), model_scores(model, history, candidates), atol=1e-5
    )


def test_unknown_ids_map_to_oov(model, serving):
    # Only "" is padding: blank or NUL ids are unknown ids like any other.
    history = [["N10", "NEW1"], ["N10", "NEW2"], ["N10", " "], ["N10", "\x00"]]
    candidates = [["NEW3", "N11"], ["NEW4", "N11"], ["\t", "N11"], ["\x00", "N11"]]
    got = serve(serving, history, candidates)
    for row in got[1:]:
        # any unknown id is the same OOV item (rows of a batch may round apart in the last bit)
        np.testing.assert_allclose(got[0], row, rtol=0, atol=1e-6)
    oov = model_scores(model, [["N10", "<oov>"]], [["<oov>", "N11"]])[0]
    assert _index("<oov>") == 1
    np.testing.assert_allclose(got[0], oov, atol=1e-5)


def test_long_history_scores_as_its_last_L(model, serving):
    clicks = ["N10", "N11", "N12", "N13", "N14", "N15", "N12"]
    candidates = [["N10", "N13", "N15"]]
    long = serve(serving, [clicks], candidates)
    np.testing.assert_allclose(long, serve(serving, [clicks[-L:]], candidates), atol=1e-6)
    np.testing.assert_allclose(long, model_scores(model, [clicks[-L:]], candidates), atol=1e-5)
    assert not np.allclose(long, serve(serving, [clicks[:L]], candidates), atol=1e-4)


def test_padding_is_skipped_wherever_it_sits(serving):
    candidates = [["N13", "N14"]]
    np.testing.assert_allclose(
        serve(serving, [["", "N10", "", "N11", ""]], candidates),
        serve(serving, [["N10", "N11"]], candidates),
        atol=1e-6,
    )


def test_padding_candidates_score_below_every_item_and_have_no_vector(model, serving):
    history = [["N10", "N11"], ["N12", ""]]
    candidates = [["N13", "", "N14"], ["", "N15", ""]]
    got = serve(serving, history, candidates)
    real = np.array(candidates) != ""
    np.testing.assert_array_equal(got[~real], export.PADDING_SCORE)
    np.testing.assert_allclose(got[real], model_scores(model, history, candidates)[real], atol=1e-5)
    vectors = serving.signatures["item_embedding"](items=tf.constant(["N13", "", "N14"]))
    vectors = vectors["item_embedding"].numpy()
    np.testing.assert_array_equal(vectors[1], 0.0)
    assert np.abs(vectors[[0, 2]]).min(axis=1).max() > 0


def test_export_items_split_lines_as_the_graph_does(tmp_path):
    # str.splitlines would cut these ids at U+2028 and \x1c; TensorFlow's table reader does not
    ids = ["", "<oov>", "A\u2028B", "C\x1cD", "E"]
    assets = tmp_path / "1" / "assets"
    assets.mkdir(parents=True)
    (tmp_path / "1" / "saved_model.pb").write_bytes(b"")
    export.write_item_vocabulary(ids, assets / export.ITEMS_ASSET)
    assert export.export_items(tmp_path / "1") == ids[2:]


def test_empty_history_gives_finite_scores(model, serving):
    candidates = [["N10", "N11", "NEW"]]
    padded = serve(serving, [["", ""]], candidates)
    no_columns = serve(serving, np.zeros((1, 0), dtype=object), candidates)
    assert np.isfinite(padded).all()
    np.testing.assert_allclose(padded, no_columns, atol=1e-6)
    np.testing.assert_allclose(padded, model_scores(model, [[]], candidates), atol=1e-5)


def test_rows_of_a_batch_score_as_alone(serving):
    # The batch is computed on its longest row's width; each row alone on its own.
    history = [["N10", "", "", "", ""], ["N11", "N12", "N13", "N14", "N15"], ["", "", "", "", ""]]
    candidates = [["N12", "N13"], ["N10", "N15"], ["N11", "N14"]]
    batch = serve(serving, history, candidates)
    for row in range(3):
        alone = serve(serving, [[c for c in history[row] if c]], [candidates[row]])
        np.testing.assert_allclose(batch[row], alone[0], atol=1e-5)


def test_embedding_signatures_give_the_scores(model, serving):
    history = [["N10", "N11"], ["N15", ""]]
    candidates = [["N12", "N13", "NEW"], ["N10", "N11", "N14"]]
    users = serving.signatures["user_embedding"](history=tf.constant(history))["user_embedding"]
    for row in range(2):
        items = serving.signatures["item_embedding"](items=tf.constant(candidates[row]))
        vectors = items["item_embedding"].numpy()
        expected = model.item_embedding(np.array([_index(c) for c in candidates[row]])).numpy()
        np.testing.assert_allclose(vectors, expected, atol=1e-6)
        np.testing.assert_allclose(
            vectors @ users.numpy()[row], serve(serving, history, candidates)[row], atol=1e-5
        )


@pytest.mark.parametrize(
    ("signature", "inputs", "message"),
    [
        ("serving_default", {"history": [[2, 3]], "candidates": [["N10"]]}, "string"),
        ("serving_default", {"history": [["N10"]], "candidates": [[1.5]]}, "string"),
        ("serving_default", {"history": ["N10"], "candidates": [["N10"]]}, "tensor history"),
        ("serving_default", {"history": [["N10"]], "candidates": [[["N10"]]]}, "candidates"),
        (
            "serving_default",
            {"history": [["N10"], ["N11"]], "candidates": [["N12"]]},
            "same batch size",
        ),
        ("user_embedding", {"history": [[["N10"]]]}, "tensor history"),
        ("item_embedding", {"items": [["N10"]]}, "tensor items"),
    ],
    ids=[
        "int-history",
        "float-candidates",
        "rank-1-history",
        "rank-3-candidates",
        "batch-mismatch",
        "rank-3-user-history",
        "rank-2-items",
    ],
)
def test_bad_requests_fail_clearly(serving, signature, inputs, message):
    fn = serving.signatures[signature]
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        fn(**{name: tf.constant(value) for name, value in inputs.items()})


def test_only_serving_state_is_saved(model, export_dir):
    saved = dict(tf.train.list_variables(str(export_dir / "variables" / "variables")))
    shapes = sorted(tuple(shape) for name, shape in saved.items() if "VARIABLE_VALUE" in name)
    expected = [(len(ITEM_IDS), DIM)] + [tuple(v.shape) for v in model.user_encoder.variables]
    assert shapes == sorted(expected)  # no optimizer slots, id embedding or feature tables
    names = " ".join(saved)
    assert "item_vectors" in names and "optimizer" not in names
    sizes = export.export_size(export_dir)
    assert sizes["total"] == sizes["variables"] + sizes["graph"] + sizes["assets"] + (
        (export_dir / "fingerprint.pb").stat().st_size
    )
    assert export.export_items(export_dir) == ITEM_IDS[2:]


def test_versions_and_interrupted_exports(model, tmp_path, monkeypatch):
    base = tmp_path / "base"
    first = export.export_model(model, ITEM_IDS, base)
    assert first == base / "1"
    umask = os.umask(0)
    os.umask(umask)
    assert first.stat().st_mode & 0o777 == 0o777 & ~umask  # not mkdtemp's 0o700
    before = {p: p.read_bytes() for p in first.rglob("*") if p.is_file()}

    def save_then_fail(module, path):
        (Path(path) / "saved_model.pb").write_bytes(b"partial")
        raise OSError("disk full")

    with monkeypatch.context() as patch:
        patch.setattr(export, "save_module", save_then_fail)
        with pytest.raises(OSError, match="disk full"):
            export.export_model(model, ITEM_IDS, base)
    assert sorted(p.name for p in base.iterdir()) == ["1"]  # no version, no leftovers

    second = export.export_model(model, ITEM_IDS, base)
    assert second == base / "2"
    assert {p: p.read_bytes() for p in first.rglob("*") if p.is_file()} == before


KILLED_EXPORT = """
import os, signal, sys
import numpy as np
import tensorflow as tf
from feedrec import export
from feedrec.config import ModelConfig
from feedrec.models.recommender import build_model

real_save = tf.saved_model.save

def save_then_die(*args, **kwargs):
    real_save(*args, **kwargs)  # the SavedModel is complete, not yet renamed
    os.kill(os.getpid(), signal.SIGKILL)

tf.saved_model.save = save_then_die
model = build_model(ModelConfig(history_length=2, embedding_dim=4, num_heads=1,
                                feed_forward_dim=4, item_features=()), 4)
export.export_model(model, ["", "<oov>", "A", "B"], sys.argv[1])
"""


def test_a_killed_export_leaves_no_version(tmp_path):
    base = tmp_path / "base"
    (base / "1").mkdir(parents=True)
    (base / "1" / "saved_model.pb").write_bytes(b"version 1")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-c", KILLED_EXPORT, str(base)], env=env, capture_output=True
    )
    assert result.returncode == -signal.SIGKILL, result.stderr.decode()[-2000:]
    leftovers = [p for p in base.iterdir() if p.name != "1"]
    assert len(leftovers) == 1 and leftovers[0].name.startswith(".")  # ignored by TF Serving
    assert (leftovers[0] / "saved_model.pb").exists()
    assert (base / "1" / "saved_model.pb").read_bytes() == b"version 1"
    assert export.next_version(base) == 2


def test_jit_compiled_export_gives_the_same_scores(model, serving, tmp_path):
    compiled = export.load_export(export.export_model(model, ITEM_IDS, tmp_path, jit_compile=True))
    history = [["N10", "N11", "N12", "N13", "N14"], ["N15", " ", "", "", ""], ["", "", "", "", ""]]
    candidates = [["N12", "N13", "X"], ["N10", "N15", "N11"], ["N11", "N14", "N10"]]
    expected = serve(serving, history, candidates)
    np.testing.assert_allclose(serve(compiled, history, candidates), expected, atol=1e-5)
    np.testing.assert_allclose(expected, model_scores(model, history, candidates), atol=1e-5)


@pytest.mark.parametrize(
    "options",
    [{}, {"gated_residual": True, "feed_forward_activation": "swiglu", "norm_first": True}],
    ids=["relative", "relative_ligr"],
)
@pytest.mark.parametrize("jit_compile", [False, True], ids=["graph", "xla"])
def test_relative_position_bias_export_gives_the_model_scores(tmp_path, jit_compile, options):
    # A causal last-click model with learned relative distances (random here),
    # with or without the LiGR blocks: the export serves what the in-memory
    # model computes, padding anywhere.
    import dataclasses

    keras = pytest.importorskip("keras")
    keras.utils.set_random_seed(3)
    config = dataclasses.replace(
        MODEL_CONFIG, pooling="last", relative_position_bias=True, item_features=(), **options
    )
    model = build_model(config, len(ITEM_IDS), causal=True)
    tables = [w for w in model.weights if "relative_bias" in w.path]
    assert tables
    ligr = [w.path for w in model.weights if "_gate/" in w.path or "feed_forward_linear" in w.path]
    assert bool(ligr) == bool(options)  # build_model passes the LiGR options on
    for table in tables:
        table.assign(np.random.default_rng(0).normal(size=table.shape))
    served = export.load_export(
        export.export_model(model, ITEM_IDS, tmp_path, jit_compile=jit_compile)
    )
    history = [["N10", "N11", "N12"], ["N15", "", "N13"], ["", "", ""]]
    candidates = [["N12", "N13", "X"], ["N10", "N15", "N11"], ["N11", "N14", "N10"]]
    expected = model_scores(model, [["N10", "N11", "N12"], ["N15", "N13"], []], candidates)
    np.testing.assert_allclose(serve(served, history, candidates), expected, atol=1e-5)


def test_next_version_counts_integer_names_only(tmp_path):
    assert export.next_version(tmp_path / "missing") == 1
    for name in ("3", "10", ".export-tmp-x", "11-old", "notes"):
        (tmp_path / name).mkdir()
    assert export.next_version(tmp_path) == 11


@pytest.mark.parametrize(
    ("item_ids", "message"),
    [
        (["", "<oov>", "N1", "N\t2"], "tab or newline"),
        (["", "<oov>", "N1", ""], "non-empty"),
        (["", "<oov>", "N1", "N1"], "unique"),
    ],
    ids=["tab", "empty", "repeat"],
)
def test_bad_item_ids_are_refused(tmp_path, item_ids, message):
    with pytest.raises(ValueError, match=message):
        export.write_item_vocabulary(item_ids, tmp_path / "items.tsv")


def test_more_ids_than_the_model_has_items_is_refused(model, tmp_path):
    with pytest.raises(ValueError, match=f"at most the model's {len(ITEM_IDS)} items"):
        export.export_model(model, [*ITEM_IDS, "N16"], tmp_path)
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def run_dir(model, tmp_path_factory):
    """A run directory by hand; ``items.parquet`` rows are not in index order."""
    run = tmp_path_factory.mktemp("run")
    model.save(run / "model.keras")
    (run / "config.json").write_text(json.dumps(Config(model=MODEL_CONFIG).to_dict()))
    (run / "data.json").write_text(json.dumps({"num_items": len(ITEM_IDS)}))
    order = [3, 0, 7, 1, 2, 6, 4, 5]
    items = pa.table(
        {
            "item_index": pa.array(order, pa.int32()),
            "item_id": [ITEM_IDS[i] for i in order],
        }
    )
    pq.write_table(items, run / "items.parquet")
    return run


def _recommend_lines(capsys, argv):
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = [line.split() for line in lines]
    return [(int(rank), item, float(score)) for rank, item, score in rows]


def test_cli_export_then_recommend(run_dir, model, tmp_path, capsys):
    assert main(["export", str(run_dir), "--out", str(tmp_path / "base")]) == 0
    version = Path(capsys.readouterr().out.strip())
    assert version == tmp_path / "base" / "1"
    assert export.export_items(version) == ITEM_IDS[2:]  # by item_index, not row order

    history = ["N10", "N13"]
    rows = _recommend_lines(
        capsys, ["recommend", str(version), "--history", ",".join(history), "--top-k", "3"]
    )
    catalog = [item for item in ITEM_IDS[2:] if item not in history]
    scores = model_scores(model, [history], [catalog])[0]
    best = [catalog[i] for i in np.argsort(-scores, kind="stable")[:3]]
    assert [rank for rank, _, _ in rows] == [1, 2, 3]
    assert [item for _, item, _ in rows] == best
    np.testing.assert_allclose(
        [score for _, _, score in rows], np.sort(scores)[::-1][:3], atol=1e-4
    )

    spaced = _recommend_lines(capsys, ["recommend", str(version), "--history", " N10 , N13"])
    assert spaced[:3] == rows  # ids are stripped, as in a catalogue file

    catalog_file = tmp_path / "catalog.txt"
    catalog_file.write_text("N15\nN11\n\nN10\nNEW\n")
    rows = _recommend_lines(
        capsys,
        ["recommend", str(version), "--history", "N10", "--catalog", str(catalog_file)],
    )
    assert sorted(item for _, item, _ in rows) == ["N11", "N15", "NEW"]  # history left out

    # a catalogue that is a folder: one line on stderr, exit 2, no traceback
    assert main(["recommend", str(version), "--history", "N10", "--catalog", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("feedrec recommend: error:") and str(tmp_path) in err
    assert "Traceback" not in err

    # EXPORT_BASE instead of its version: the latest version, as TF Serving picks it
    from_base = _recommend_lines(capsys, ["recommend", str(version.parent), "--history", "N10"])
    from_version = _recommend_lines(capsys, ["recommend", str(version), "--history", "N10"])
    assert from_base == from_version


def test_resolve_export_picks_the_highest_complete_version(tmp_path):
    base = tmp_path / "base"
    for name in ("1", "7", "12"):
        (base / name).mkdir(parents=True)
    for name in ("1", "7"):
        (base / name / "saved_model.pb").write_bytes(b"")
    (base / "99x").mkdir()  # not an integer version
    (base / "99x" / "saved_model.pb").write_bytes(b"")
    assert export.resolve_export(base) == base / "7"  # 12 holds no SavedModel
    assert export.resolve_export(base / "1") == base / "1"
    for missing in (base / "12", tmp_path / "nowhere"):
        with pytest.raises(FileNotFoundError, match="is not a feedrec export"):
            export.resolve_export(missing)


def test_cli_recommend_without_an_export_is_a_clear_error(tmp_path, capsys):
    assert main(["recommend", str(tmp_path / "nowhere"), "--history", "N10"]) == 2
    err = capsys.readouterr().err
    assert "nowhere is not a feedrec export" in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("flags", "jit_compile"),
    [([], False), (["--jit-compile"], True), (["--no-jit-compile"], False)],
    ids=["default", "jit", "no-jit"],
)
def test_cli_export_jit_compile_flag(run_dir, tmp_path, monkeypatch, capsys, flags, jit_compile):
    calls = []

    def fake_export_run(run, base, *, jit_compile):
        calls.append((Path(run), Path(base), jit_compile))
        return Path(base) / "1"

    monkeypatch.setattr(export, "export_run", fake_export_run)
    assert main(["export", str(run_dir), "--out", str(tmp_path / "base"), *flags]) == 0
    assert calls == [(run_dir, tmp_path / "base", jit_compile)]
    assert capsys.readouterr().out.strip() == str(tmp_path / "base" / "1")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--history", "N10", "--top-k", "0"], "top_k=0"),
        (["--history", "N10,N11", "--catalog", "{catalog}"], "catalogue is empty"),
    ],
    ids=["top-k", "empty-catalogue"],
)
def test_cli_recommend_user_errors(export_dir, tmp_path, capsys, argv, message):
    catalog = tmp_path / "catalog.txt"
    catalog.write_text("N10\nN11\n")
    argv = [a.replace("{catalog}", str(catalog)) for a in argv]
    assert main(["recommend", str(export_dir), *argv]) == 2
    assert message in capsys.readouterr().err


def test_recommend_with_an_empty_history(serving, export_dir):
    rows = export.recommend(export_dir, [], top_k=2)
    scores = serve(serving, [[""]], [ITEM_IDS[2:]])[0]
    assert [item for item, _ in rows] == [ITEM_IDS[2 + i] for i in np.argsort(-scores)[:2]]
    assert all(np.isfinite(score) for _, score in rows)
