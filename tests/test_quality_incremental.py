"""The Globo incremental protocol of ``benchmarks/quality.py`` on a tiny synthetic hourly log."""

import numpy as np
import pytest

from benchmarks import quality
from benchmarks.quality import CONFIGS, GloboLog, freshness_states, incremental_run, load_spec
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
    # the plain protocol (one pass, no freshness state) unless a test asks for more
    spec["incremental"].update(
        min_window_examples=1,
        recency_prior=False,
        freshness_bias=False,
        freshness_scoring="slot",
        epochs_per_window=1,
    )
    spec["incremental"].update(incremental)
    return spec


def test_the_full_softmax_without_any_history_trains_with_its_earlier_clicks(globo_log):
    spec = tiny_spec()
    spec["sequential"].update(loss="full_softmax", windows="all", exclude_history="all")
    result = incremental_run(globo_log, spec, 0, spec["incremental"], with_baselines=False)
    assert [record["window"] for record in result["per_window"]] == [1, 2, 3, 4, 5]
    assert 0 < result["model"]["ndcg@20"] <= result["model"]["hr@20"] <= 1


def test_every_window_after_the_first_is_evaluated_with_metrics_in_range(globo_log):
    spec = tiny_spec()
    result = incremental_run(globo_log, spec, 0, spec["incremental"], with_baselines=True)
    windows = [record["window"] for record in result["per_window"]]
    assert windows == [1, 2, 3, 4, 5]
    assert result["model"]["windows"] == 5
    assert result["model"]["examples"] == int(globo_log.evaluated[globo_log.windows >= 1].sum())
    for name in ("model", "popularity", "recent_popularity", "random"):
        assert 0 <= result[name]["ndcg@20"] <= result[name]["hr@20"] <= 1


def test_freshness_state_counts_only_clicks_before_its_time():
    times = np.array([5, 1, 9, 3, 3, 12, 7]) * HOUR // 4
    items = np.array([2, 3, 2, 4, 2, 3, 5])
    state = freshness_states(times, items, 7, recent_ms=HOUR)
    for at in np.arange(0, 16) * HOUR // 4:
        clicks, age = state(int(at))
        recent = (times >= at - HOUR) & (times < at)
        np.testing.assert_array_equal(clicks, np.bincount(items[recent], minlength=7))
        for item in range(7):
            before = times[(items == item) & (times < at)]
            expected = (at - before.min()) / HOUR if len(before) else np.nan
            np.testing.assert_equal(age[item], expected)


def test_freshness_bias_is_scored_and_trained_slot_by_slot(globo_log, monkeypatch):
    calls = []
    state_of = quality.freshness_states

    def recording(*args, **kwargs):
        state = state_of(*args, **kwargs)

        def at(time):
            calls.append(time)
            return state(time)

        return at

    monkeypatch.setattr(quality, "freshness_states", recording)
    spec = tiny_spec(freshness_bias=True, freshness_slot_minutes=20)
    with_bias = incremental_run(globo_log, spec, 0, spec["incremental"], with_baselines=False)
    plain = tiny_spec()
    without = incremental_run(globo_log, plain, 0, plain["incremental"], with_baselines=False)
    assert with_bias["model"] != without["model"]
    times, windows = globo_log.times, globo_log.windows
    slot = 20 * 60_000
    expected = []
    for window in range(6):
        evaluated = times[globo_log.evaluated & (windows == window)]
        if window >= 1:  # scoring: the slots with an evaluated click
            expected += sorted({int(t) // slot * slot for t in evaluated})
        if window < 5:  # training: the slots with a click (not after the last window)
            expected += sorted({int(t) // slot * slot for t in times[windows == window]})
    assert calls == expected


def test_freshness_log_clicks_builds_the_sloped_bias_and_learns_its_slope(globo_log, monkeypatch):
    import feedrec.layers

    built = []

    class Recording(feedrec.layers.FreshnessBias):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            built.append(self)

    monkeypatch.setattr(feedrec.layers, "FreshnessBias", Recording)
    spec = tiny_spec(freshness_bias=True, freshness_log_clicks=True)
    sloped = incremental_run(globo_log, spec, 0, spec["incremental"], with_baselines=False)
    plain = tiny_spec(freshness_bias=True, freshness_log_clicks=False)
    stepped = incremental_run(globo_log, plain, 0, plain["incremental"], with_baselines=False)
    assert [layer.log_clicks for layer in built] == [True, False]
    assert float(built[0].log_click_weight.numpy()) != 0.0  # trained with the model
    assert sloped["model"] != stepped["model"]


def test_ages_at_many_times_equal_the_slot_state_ages():
    times = np.array([5, 1, 9, 3, 3, 12, 7]) * HOUR // 4
    items = np.array([2, 3, 2, 4, 2, 3, 5])
    state = freshness_states(times, items, 7, recent_ms=HOUR)
    at = np.arange(0, 16)[:, None] * HOUR // 4
    ages = quality.ages_at(quality.first_clicks(times, items, 7), at)
    assert ages.shape == (16, 7)
    for row, time in enumerate(at[:, 0]):
        np.testing.assert_equal(ages[row], state(int(time))[1])


def test_freshness_scoring_by_example_uses_the_state_at_each_examples_time(globo_log, monkeypatch):
    import feedrec.layers

    seen = []  # (times, clicks, ages) of every per-example scoring call
    ages_at = quality.ages_at

    def recording_ages(first, at):
        ages = ages_at(first, at)
        if np.ndim(at) == 2:
            seen.append([np.asarray(at)[:, 0], None, ages])
        return ages

    class Recording(feedrec.layers.FreshnessBias):
        def offsets(self, recent_clicks, age):
            seen[-1][1] = np.asarray(recent_clicks)
            return super().offsets(recent_clicks, age)

    monkeypatch.setattr(quality, "ages_at", recording_ages)
    monkeypatch.setattr(feedrec.layers, "FreshnessBias", Recording)
    by_slot = tiny_spec(freshness_bias=True, freshness_log_clicks=True)
    slotted = incremental_run(globo_log, by_slot, 0, by_slot["incremental"], with_baselines=False)
    assert not seen  # slot scoring asks for no per-example state
    by_example = tiny_spec(freshness_bias=True, freshness_log_clicks=True)
    by_example["incremental"]["freshness_scoring"] = "example"
    own = incremental_run(globo_log, by_example, 0, by_example["incremental"], with_baselines=False)
    assert own["model"] != slotted["model"]
    evaluated = globo_log.times[globo_log.evaluated & (globo_log.windows >= 1)]
    scored = np.concatenate([times for times, _, _ in seen])
    np.testing.assert_array_equal(np.sort(scored), np.sort(evaluated))
    times, items = globo_log.times, globo_log.items
    for chunk_times, clicks, ages in seen:
        for row, t in enumerate(chunk_times):
            recent = (times >= t - HOUR) & (times < t)
            expected = np.bincount(items[recent], minlength=globo_log.num_items)
            np.testing.assert_array_equal(clicks[row], expected)
            clicked_before = np.isin(np.arange(globo_log.num_items), items[times < t])
            np.testing.assert_array_equal(~np.isnan(ages[row]), clicked_before)
    bad = tiny_spec(freshness_bias=True, freshness_scoring="exact")
    with pytest.raises(SystemExit, match='freshness_scoring: expected "slot" or "example"'):
        incremental_run(globo_log, bad, 0, bad["incremental"], with_baselines=False)


def test_per_example_scoring_counts_recent_clicks_once_per_chunk(globo_log, monkeypatch):
    import feedrec.next_item

    make_scorer = feedrec.next_item.recent_popularity_scorer
    calls = []

    def counting_scorer(*args, **kwargs):
        scorer = make_scorer(*args, **kwargs)

        def counted(rows):
            calls.append(len(rows))
            return scorer(rows)

        return counted

    monkeypatch.setattr(feedrec.next_item, "recent_popularity_scorer", counting_scorer)
    runs = {}
    for scoring in ("slot", "example"):
        spec = tiny_spec(freshness_bias=True, recency_prior=True, freshness_scoring=scoring)
        calls.clear()
        runs[scoring] = incremental_run(globo_log, spec, 0, spec["incremental"], True)
        runs[scoring]["calls"] = list(calls)
    evaluated = int((globo_log.evaluated & (globo_log.windows >= 1)).sum())
    # one call per scored chunk in either mode: every evaluated example counted exactly once
    assert sum(runs["example"]["calls"]) == evaluated
    assert sum(runs["slot"]["calls"]) == evaluated
    # the count baselines do not depend on how the model is scored (random draws per chunk,
    # and the chunks differ): the shared counts are the same
    for name in ("recent_popularity", "popularity"):
        assert runs["example"][name] == runs["slot"][name]
