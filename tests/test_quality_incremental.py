"""The Globo incremental protocol of ``benchmarks/quality.py`` on a tiny synthetic hourly log."""

import numpy as np
import pytest

from benchmarks.quality import CONFIGS, GloboLog, incremental_run, load_spec
from feedrec.layers import FreshnessBias
from pipelines.prepare import PrepareOptions, prepare

HEADER = (
    "user_id,session_id,session_start,session_size,click_article_id,click_timestamp,"
    "click_environment,click_deviceGroup,click_os,click_country,click_region,click_referrer_type"
)
START = 1_506_826_800_000  # an hour boundary
HOUR = 3_600_000


@pytest.fixture(scope="module")
def globo_log(tmp_path_factory):
    """Six hours of sessions of 2-4 clicks; each hour's articles are new ones."""
    rng = np.random.default_rng(0)
    folder = tmp_path_factory.mktemp("clicks")
    for hour in range(6):
        rows = []
        for session in range(40):
            user = int(rng.integers(0, 60))
            begin = START + hour * HOUR + int(rng.integers(0, HOUR - 10_000))
            for click in range(int(rng.integers(2, 5))):
                item = hour * 5 + int(rng.integers(0, 8))
                rows.append(
                    f"{user},{hour}{session},{begin},3,{item},{begin + click},4,3,20,1,20,2"
                )
        (folder / f"clicks_hour_{hour:03d}.csv").write_text("\n".join([HEADER, *rows]) + "\n")
    out = tmp_path_factory.mktemp("data") / "globo"
    prepare(
        "globo",
        sorted(folder.iterdir()),
        out,
        options=PrepareOptions(history_length=5, negatives=0, valid_fraction=0, test_fraction=0),
    )
    return GloboLog.load(out, history_length=5)


def tiny_spec(**incremental):
    spec = load_spec(CONFIGS / "globo-g1.toml")
    spec["model"].update(history_length=5, embedding_dim=8, feed_forward_dim=16, num_layers=1)
    spec["train"]["batch_size"] = 16
    spec["sequential"]["num_negatives"] = 8
    spec["incremental"].update(min_window_examples=1, recency_prior=False, **incremental)
    return spec


def test_every_window_after_the_first_is_evaluated_with_metrics_in_range(globo_log):
    spec = tiny_spec()
    result = incremental_run(globo_log, spec, 0, spec["incremental"], with_baselines=True)
    windows = [record["window"] for record in result["per_window"]]
    assert windows == [1, 2, 3, 4, 5]
    assert result["model"]["windows"] == 5
    assert result["model"]["examples"] == int(globo_log.evaluated[globo_log.windows >= 1].sum())
    for name in ("model", "popularity", "recent_popularity", "random"):
        assert 0 <= result[name]["ndcg@20"] <= result[name]["hr@20"] <= 1


def test_freshness_state_before_a_window_comes_from_the_windows_before_it(globo_log, monkeypatch):
    states = []
    update = FreshnessBias.update

    def record(layer, recent_clicks, age):
        states.append((np.array(recent_clicks, float), np.array(age, float)))
        update(layer, recent_clicks, age)

    monkeypatch.setattr(FreshnessBias, "update", record)
    spec = tiny_spec(freshness_bias=True)
    with_bias = incremental_run(globo_log, spec, 0, spec["incremental"], with_baselines=False)
    plain = tiny_spec()
    without = incremental_run(globo_log, plain, 0, plain["incremental"], with_baselines=False)
    assert len(states) == 6  # once per window, before its scoring and training
    items, windows = globo_log.items, globo_log.windows
    for window, (clicks, ages) in enumerate(states):
        previous = np.bincount(items[windows == window - 1], minlength=globo_log.num_items)
        np.testing.assert_array_equal(clicks, previous[: globo_log.num_items])
        seen = np.unique(items[windows < window])
        first = np.array([windows[items == item].min() for item in seen])
        np.testing.assert_array_equal(ages[seen], window - 1 - first)
        assert np.isnan(np.delete(ages, seen)).all()  # never clicked before the window
    assert with_bias["model"] != without["model"]
