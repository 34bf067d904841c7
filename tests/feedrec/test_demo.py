"""``feedrec demo`` end to end, at the small scale."""

import json

from feedrec.demo import run_demo
from feedrec.evaluation import evaluate_run


def test_demo_end_to_end(tmp_path, capsys):
    metrics = run_demo(tmp_path, scale="small", epochs=1, seed=0)
    out = capsys.readouterr().out
    assert "6/6" in out and "popularity" in out

    written = json.loads((tmp_path / "metrics.json").read_text())
    assert written == metrics
    assert set(written) == {"model", "popularity", "random"}
    for scores in written.values():
        assert set(scores) == {"auc", "mrr", "ndcg@5", "ndcg@10"}
        assert all(0.0 <= v <= 1.0 for v in scores.values())

    # the run directory is usable by `feedrec evaluate` / `export`
    again = evaluate_run(tmp_path / "run", tmp_path / "data", "test")
    assert again["model"]["auc"] == written["model"]["auc"]
    versions = [p.name for p in (tmp_path / "export").iterdir() if not p.name.startswith(".")]
    assert versions == ["1"]
    assert (tmp_path / "export" / "1" / "saved_model.pb").exists()

    # a second demo in the same folder replaces the run and adds export version 2
    run_demo(tmp_path, scale="small", epochs=1, seed=0)
    assert sorted(p.name for p in (tmp_path / "export").iterdir()) == ["1", "2"]
