"""``benchmarks/quality.py --merge``: runs of one benchmark with different seeds, one result."""

import json

import numpy as np
import pytest

from benchmarks import quality
from benchmarks.quality import merge_reports

METRICS = ("hr@20", "ndcg@20")


def globo_report(seeds, commit, rng, **config_changes):
    """A result file as ``run_globo`` writes it, with random per-window figures."""
    runs = []
    for seed in seeds:
        windows = []
        for window in (1, 2, 3):
            record = {"window": window, "examples": 10 * window, "beta": 2.0}
            for metric in METRICS:
                record[metric] = float(rng.uniform(0.2, 0.7))
                record[f"model+recency/{metric}"] = float(rng.uniform(0.2, 0.7))
                record[f"popularity/{metric}"] = 0.1
            windows.append(record)
        runs.append({"seed": seed, "wall_s": 5.0, "per_window": windows})
    config = {
        "benchmark": {"name": "globo-g1", "seeds": list(seeds)},
        "incremental": {"epochs_per_window": 2, **config_changes},
    }
    return {
        "dataset": "globo-g1",
        "name": "globo-g1",
        "command": f"python benchmarks/quality.py --seeds {' '.join(map(str, seeds))}",
        "commit": commit,
        "uncommitted_code": [],
        "seeds": list(seeds),
        "wall_s": 5.0 * len(seeds),
        "device": "cpu",
        "load_average": {"mean": 1.0},
        "config": config,
        "data": {"interactions": 100},
        "results": {},
        "baselines": {"full": {"popularity": {"ndcg@20": 0.1}}},
        "runs": runs,
    }


def test_merged_figures_are_the_mean_and_std_over_all_seeds_of_the_window_averages():
    rng = np.random.default_rng(0)
    parts = [("a.json", globo_report([2, 1], "c1", rng)), ("b.json", globo_report([0], "c2", rng))]
    merged = merge_reports(parts)
    assert merged["seeds"] == [0, 1, 2]
    assert merged["config"]["benchmark"]["seeds"] == [0, 1, 2]
    assert [run["commit"] for run in merged["runs"]] == ["c2", "c1", "c1"]
    assert [part["file"] for part in merged["merged_from"]] == ["a.json", "b.json"]
    assert merged["wall_s"] == 15.0
    all_runs = [run for _, report in parts for run in report["runs"]]
    for protocol, prefix in (("full", ""), ("full/model+recency", "model+recency/")):
        for metric in METRICS:
            # each seed: the mean over its windows; the headline: mean and std over seeds
            per_seed = [
                np.mean([w[prefix + metric] for w in run["per_window"]]) for run in all_runs
            ]
            assert merged["results"][protocol][metric] == round(float(np.mean(per_seed)), 4)
            assert merged["results"][protocol][f"{metric}_std"] == round(float(np.std(per_seed)), 4)
        assert merged["results"][protocol]["examples"] == 60
    assert merged["baselines"] == parts[0][1]["baselines"]


def test_a_seed_in_two_files_is_refused_naming_both():
    rng = np.random.default_rng(1)
    parts = [("a.json", globo_report([0, 1], "c", rng)), ("b.json", globo_report([1], "c", rng))]
    with pytest.raises(SystemExit, match="seed 1 is in both a.json and b.json"):
        merge_reports(parts)


def test_a_different_config_is_refused_naming_the_key():
    rng = np.random.default_rng(2)
    parts = [
        ("a.json", globo_report([0], "c", rng)),
        ("b.json", globo_report([1], "c", rng, freshness_bias=True)),
    ]
    with pytest.raises(
        SystemExit, match=r"b.json: its config differs .* \[incremental\] freshness_bias"
    ):
        merge_reports(parts)


@pytest.mark.parametrize("key", ["dataset", "data", "baselines"])
def test_different_data_or_baselines_are_refused(key):
    rng = np.random.default_rng(3)
    other = globo_report([1], "c", rng)
    other[key] = "something else"
    with pytest.raises(SystemExit, match=f"b.json: its '{key}' differs from a.json's"):
        merge_reports([("a.json", globo_report([0], "c", rng)), ("b.json", other)])


def test_the_random_scorer_may_differ_and_the_first_files_is_kept():
    rng = np.random.default_rng(5)
    first, second = globo_report([0], "c", rng), globo_report([1], "c", rng)
    first["baselines"]["full"]["random"] = {"ndcg@20": 0.0002}
    second["baselines"]["full"]["random"] = {"ndcg@20": 0.0003}
    merged = merge_reports([("a.json", first), ("b.json", second)])
    assert merged["baselines"]["full"]["random"] == {"ndcg@20": 0.0002}
    second["baselines"]["full"]["popularity"] = {"ndcg@20": 0.2}
    with pytest.raises(SystemExit, match="its 'baselines' differs"):
        merge_reports([("a.json", first), ("b.json", second)])


def test_the_command_line_writes_the_merged_file_and_records_its_command(tmp_path, capsys):
    rng = np.random.default_rng(4)
    paths = []
    for seed in (0, 1):
        path = tmp_path / f"seed{seed}.json"
        path.write_text(json.dumps(globo_report([seed], f"c{seed}", rng)))
        paths.append(str(path))
    out = tmp_path / "merged.json"
    assert quality.main(["--merge", *paths, "--out", str(out)]) == 0
    merged = json.loads(out.read_text())
    assert merged["seeds"] == [0, 1]
    assert merged["command"].startswith("python benchmarks/quality.py --merge")
    assert merged["commit"] == "c1"
    assert list(tmp_path.glob("*.partial")) == []
    with pytest.raises(SystemExit):
        quality.main(["--merge", *paths])  # no --out
    assert "--merge needs --out" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        quality.main(["--merge", *paths, "--out", str(out), "--seeds", "3"])
    assert "--seeds would be ignored" in capsys.readouterr().err
