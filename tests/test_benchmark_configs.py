"""The benchmark configs load, and ``benchmarks/quality.py --set`` changes only what it names."""

import pytest

from benchmarks.quality import CONFIGS, apply_setting, load_spec, model_config


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.toml")), ids=lambda p: p.stem)
def test_every_benchmark_config_builds_its_model_config(path):
    spec = load_spec(path)
    assert spec["benchmark"]["name"] == path.stem
    config = model_config(spec, seed=3)
    assert config.train.seed == 3
    assert config.model.history_length == spec["model"]["history_length"]


def test_set_overrides_one_key_in_toml_syntax():
    spec = load_spec(CONFIGS / "globo-g1.toml")
    before = {table: dict(values) for table, values in spec.items()}
    passes = spec["incremental"]["epochs_per_window"] + 1  # a change, whatever the config says
    apply_setting(spec, f"incremental.epochs_per_window={passes}")
    apply_setting(spec, "sequential.schedule = 'cosine'")
    assert spec["incremental"]["epochs_per_window"] == passes
    assert spec["sequential"]["schedule"] == "cosine"
    changed = {
        (table, key)
        for table, values in spec.items()
        for key in values
        if before[table].get(key, object()) != values[key]
    }
    assert changed == {("incremental", "epochs_per_window"), ("sequential", "schedule")}


@pytest.mark.parametrize(
    "setting, message",
    [
        ("incremental.epochs_per_windw=2", "has no key 'epochs_per_windw'"),
        ("incremntal.epochs_per_window=2", "unknown table 'incremntal'"),
        ("train.epochs=two", "VALUE is not TOML"),
        ("epochs=2", "expected TABLE.KEY=VALUE"),
    ],
)
def test_set_refuses_what_it_cannot_apply(setting, message):
    spec = load_spec(CONFIGS / "globo-g1.toml")
    with pytest.raises(SystemExit, match=message):
        apply_setting(spec, setting)


def test_git_state_names_uncommitted_code_by_its_full_path(tmp_path, monkeypatch):
    # A modified tracked file shows as " M path" in porcelain: the path must stay whole.
    import subprocess

    from benchmarks import quality

    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    (tmp_path / "feedrec").mkdir()
    (tmp_path / "feedrec" / "config.py").write_text("a = 1\n")
    (tmp_path / "feedrec" / "old.py").write_text("c = 1\n")
    git("init", "-q")
    git("add", ".")
    identity = ["-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    git(*identity, "commit", "-q", "-m", "init")
    (tmp_path / "feedrec" / "config.py").write_text("a = 2\n")
    (tmp_path / "feedrec" / "layers").mkdir()
    (tmp_path / "feedrec" / "layers" / "new.py").write_text("b = 1\n")
    git("mv", "feedrec/old.py", "feedrec/renamed.py")  # porcelain: "R  old -> new"
    monkeypatch.setattr(quality, "REPO", tmp_path)
    state = quality.git_state()
    expected = ["feedrec/config.py", "feedrec/layers/new.py", "feedrec/renamed.py"]
    assert sorted(state["uncommitted_code"]) == expected
    assert len(state["commit"]) == 40
