"""Tests for the synthetic MIND log generator (``pipelines.synthetic``).

The files are parsed here by hand, independently of the project's MIND reader,
and every statistic is recomputed from the generated log with plain numpy.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import json
import re
from pathlib import Path

import numpy as np
import pytest

from pipelines.synthetic import (
    SCALES,
    SyntheticConfig,
    format_mind_time,
    generate_mind_log,
    main,
    simulate_mind_log,
)

MIND_TIME = "%m/%d/%Y %I:%M:%S %p"
SEED = 0


# ----------------------------------------------------------------- helpers


def _read_behaviors(path: Path) -> list[dict]:
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        fields = line.split("\t")
        assert len(fields) == 5, f"behaviors.tsv row with {len(fields)} fields: {line[:80]!r}"
        impression_id, user_id, time, history, impressions = fields
        tokens = impressions.split(" ")
        rows.append(
            {
                "impression_id": impression_id,
                "user_id": user_id,
                "time_text": time,
                "time": dt.datetime.strptime(time, MIND_TIME),
                "history": history.split(" ") if history else [],
                "tokens": tokens,
                "candidates": [token.rsplit("-", 1)[0] for token in tokens],
                "labels": [int(token.rsplit("-", 1)[1]) for token in tokens],
            }
        )
    return rows


def _read_news(path: Path) -> list[list[str]]:
    rows = [line.split("\t") for line in path.read_text(encoding="utf-8").splitlines()]
    for fields in rows:
        assert len(fields) == 8, f"news.tsv row with {len(fields)} fields: {fields[:2]}"
    return rows


def _impression_auc(scores, labels) -> float:
    """Share of (clicked, not clicked) pairs ordered right; ties count one half."""
    scores, labels = np.asarray(scores, dtype=float), np.asarray(labels)
    difference = scores[labels == 1][:, None] - scores[labels == 0][None, :]
    return float(((difference > 0).sum() + 0.5 * (difference == 0).sum()) / difference.size)


def _scorer_aucs(news, behaviors, last: int = 5) -> dict[str, float]:
    """Mean per-impression AUC of simple scorers on every window day but the first.

    ``popularity`` is the log click count of the item on the days before the
    impression's day. The others read only the user's history: ``recent_topic``
    (share of the last ``last`` clicks in the candidate's category),
    ``full_topic`` (the same over the whole history), ``thread`` (candidate's
    thread among the last ``last`` clicks) and ``sequence`` (popularity plus
    threads, topics and subcategories of the last ``last`` clicks).
    """
    thread = dict(zip(news["news_id"], news["thread"], strict=True))
    category = dict(zip(news["news_id"], news["category"], strict=True))
    subcategory = dict(zip(news["news_id"], news["subcategory"], strict=True))
    day = behaviors["time"].dt.normalize().to_numpy()
    aucs = collections.defaultdict(list)
    random = np.random.default_rng(123)
    for today in np.unique(day)[1:]:
        clicks = collections.Counter()
        before = day < today
        for candidates, labels in zip(
            behaviors["candidates"][before], behaviors["labels"][before], strict=True
        ):
            clicks.update(item for item, label in zip(candidates, labels, strict=True) if label)
        now = day == today
        for history, candidates, labels in zip(
            behaviors["history"][now],
            behaviors["candidates"][now],
            behaviors["labels"][now],
            strict=True,
        ):
            recent = history[-last:]
            recent_threads = {thread[item] for item in recent}
            recent_categories = collections.Counter(category[item] for item in recent)
            recent_subcategories = {subcategory[item] for item in recent}
            all_categories = collections.Counter(category[item] for item in history)
            popularity = np.log1p([clicks[item] for item in candidates])
            recent_topic = np.array([recent_categories[category[c]] for c in candidates])
            recent_topic = recent_topic / max(len(recent), 1)
            full_topic = np.array([all_categories[category[c]] for c in candidates])
            full_topic = full_topic / max(len(history), 1)
            same_thread = np.array([thread[c] in recent_threads for c in candidates], float)
            same_sub = np.array([subcategory[c] in recent_subcategories for c in candidates], float)
            sequence = 2 * same_thread + 3 * recent_topic + 0.5 * same_sub + 0.5 * popularity
            for name, scores in (
                ("random", random.random(len(candidates))),
                ("popularity", popularity),
                ("recent_topic", recent_topic),
                ("full_topic", full_topic),
                ("thread", same_thread),
                ("sequence", sequence),
            ):
                aucs[name].append(_impression_auc(scores, labels))
    return {name: float(np.mean(values)) for name, values in aucs.items()}


@pytest.fixture(scope="module")
def small_files(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("synthetic_small")
    summary = generate_mind_log(out_dir, scale="small", seed=SEED)
    return summary, _read_behaviors(out_dir / "behaviors.tsv"), _read_news(out_dir / "news.tsv")


@pytest.fixture(scope="module")
def small_frames():
    return simulate_mind_log(SCALES["small"], seed=SEED)


@pytest.fixture(scope="module")
def small_aucs(small_frames):
    return _scorer_aucs(*small_frames)


# ------------------------------------------------------------------ format


@pytest.mark.parametrize(
    "time, expected",
    [
        pytest.param(
            dt.datetime(2019, 11, 12, 14, 14, 46), "11/12/2019 2:14:46 PM", id="afternoon"
        ),
        pytest.param(dt.datetime(2019, 1, 2, 0, 0, 5), "1/2/2019 12:00:05 AM", id="midnight"),
        pytest.param(dt.datetime(2019, 7, 4, 12, 30, 0), "7/4/2019 12:30:00 PM", id="noon"),
        pytest.param(dt.datetime(2019, 12, 31, 9, 5, 59), "12/31/2019 9:05:59 AM", id="morning"),
    ],
)
def test_format_mind_time(time, expected):
    assert format_mind_time(time) == expected
    assert dt.datetime.strptime(expected, MIND_TIME) == time


def test_impression_auc_helper():
    assert _impression_auc([3, 1, 2], [1, 0, 0]) == 1.0
    assert _impression_auc([1, 2, 3], [1, 0, 0]) == 0.0
    assert _impression_auc([1, 2, 3, 0], [1, 0, 1, 0]) == 0.75  # pairs: 1>0, 3>2, 3>0; 1<2
    assert _impression_auc([5, 5, 5], [0, 1, 0]) == 0.5


def test_files_parse_as_mind(small_files):
    summary, behaviors, news = small_files
    news_ids = [fields[0] for fields in news]
    assert len(set(news_ids)) == len(news_ids)
    assert all(re.fullmatch(r"N\d+", news_id) for news_id in news_ids)
    for fields in news:
        assert all(fields[:6]), f"empty field in {fields}"
        assert fields[6:] == ["[]", "[]"]
        assert fields[5].startswith("https://")
    known = set(news_ids)
    ids = [row["impression_id"] for row in behaviors]
    assert all(re.fullmatch(r"[1-9]\d*", impression_id) for impression_id in ids)
    assert len(set(ids)) == len(ids)
    for row in behaviors:
        assert re.fullmatch(r"U\d+", row["user_id"])
        # The time round-trips: month, day and hour without leading zeros.
        time = row["time"]
        expected = f"{time.month}/{time.day}/{time.year} {int(time.strftime('%I'))}:" + (
            time.strftime("%M:%S %p")
        )
        assert row["time_text"] == expected
        assert all(re.fullmatch(r"N\d+-[01]", token) for token in row["tokens"])
        assert sum(row["labels"]) >= 1
        assert len(set(row["candidates"])) == len(row["candidates"])
        assert set(row["candidates"]) <= known
        assert set(row["history"]) <= known
    assert all(re.fullmatch(r"N\d+", item) for row in behaviors for item in row["history"])


def test_summary_matches_files(small_files):
    summary, behaviors, news = small_files
    config = SCALES["small"]
    assert summary["impressions"] == len(behaviors) == config.num_impressions
    assert summary["clicks"] == sum(sum(row["labels"]) for row in behaviors)
    assert summary["candidates"] == sum(len(row["candidates"]) for row in behaviors)
    assert summary["users"] == len({row["user_id"] for row in behaviors}) == config.num_users
    assert summary["items"] == len(news) == config.num_items
    assert summary["max_history_length"] == max(len(row["history"]) for row in behaviors)
    assert summary["config"] == dataclasses.asdict(config)


def test_files_match_simulated_frames(small_files, small_frames):
    _, behaviors, news = small_files
    news_frame, behavior_frame = small_frames
    assert [fields[0] for fields in news] == news_frame["news_id"].tolist()
    assert [fields[1] for fields in news] == news_frame["category"].tolist()
    assert [row["time"] for row in behaviors] == behavior_frame["time"].dt.to_pydatetime().tolist()
    assert [row["history"] for row in behaviors] == behavior_frame["history"].tolist()
    assert [row["candidates"] for row in behaviors] == behavior_frame["candidates"].tolist()
    assert [row["labels"] for row in behaviors] == behavior_frame["labels"].tolist()


def test_counts_per_impression_in_range(small_files):
    config = SCALES["small"]
    _, behaviors, _ = small_files
    sizes = np.array([len(row["candidates"]) for row in behaviors])
    clicks = np.array([sum(row["labels"]) for row in behaviors])
    assert sizes.min() >= config.min_candidates and sizes.max() <= config.max_candidates
    assert clicks.min() == 1 and clicks.max() <= len(config.click_count_probs)
    assert 20 < sizes.mean() < 30  # uniform on 10..40
    assert 1.3 < clicks.mean() < 1.6  # 0.65 * 1 + 0.25 * 2 + 0.1 * 3 = 1.45


# ----------------------------------------------------------------- history


def test_history_is_exactly_the_earlier_clicks(small_files):
    _, behaviors, _ = small_files
    by_user = collections.defaultdict(list)
    for row in behaviors:
        by_user[row["user_id"]].append(row)
    checked = 0
    for rows in by_user.values():
        rows.sort(key=lambda row: row["time"])
        for earlier, later in zip(rows[:-1], rows[1:], strict=True):
            assert earlier["time"] < later["time"]  # strictly before, so no ambiguity
            pairs = zip(earlier["candidates"], earlier["labels"], strict=True)
            clicked = [item for item, label in pairs if label]
            assert later["history"] == earlier["history"] + clicked
            checked += 1
    assert checked == len(behaviors) - len(by_user)


def test_history_and_candidates_are_in_the_past(small_frames):
    news, behaviors = small_frames
    config = SCALES["small"]
    published = dict(zip(news["news_id"], news["publish_time"], strict=True))
    max_age = np.timedelta64(int(config.max_item_age_hours * 3600), "s")
    for time, history, candidates in zip(
        behaviors["time"], behaviors["history"], behaviors["candidates"], strict=True
    ):
        time = np.datetime64(time, "s")
        assert all(published[item] < time for item in history)
        ages = np.array([time - published[item] for item in candidates])
        assert (ages > np.timedelta64(0, "s")).all(), "a candidate shown before it was published"
        assert (ages <= max_age).all(), "a candidate shown after it went stale"


def test_clicked_items_are_never_shown_again(small_frames):
    _, behaviors = small_frames
    shown_again = sum(
        len(set(history) & set(candidates))
        for history, candidates in zip(behaviors["history"], behaviors["candidates"], strict=True)
    )
    assert shown_again == 0


def test_cold_start_and_long_histories(small_files):
    config = SCALES["small"]
    _, behaviors, _ = small_files
    lengths = np.array([len(row["history"]) for row in behaviors])
    # Exactly the first impressions of the users who join during the window.
    assert (lengths == 0).sum() == config.num_new_users == round(0.03 * config.num_impressions)
    assert 0.02 <= (lengths == 0).mean() <= 0.05
    users_over_50 = {row["user_id"] for row in behaviors if len(row["history"]) > 50}
    assert len(users_over_50) >= 0.03 * config.num_users
    assert (lengths > 50).mean() >= 0.05
    assert lengths.max() > 150


# -------------------------------------------------------------- statistics


def test_item_clicks_are_heavy_tailed(small_files):
    _, behaviors, news = small_files
    clicks = collections.Counter(
        item
        for row in behaviors
        for item, label in zip(row["candidates"], row["labels"], strict=True)
        if label
    )
    counts = np.sort(np.array([clicks[fields[0]] for fields in news]))[::-1]
    top = counts[: len(counts) // 10].sum() / counts.sum()
    assert top > 0.4, f"top 10% of items get {top:.2f} of the clicks"


def test_users_click_a_few_topics(small_frames):
    news, behaviors = small_frames
    category = dict(zip(news["news_id"], news["category"], strict=True))
    final = behaviors.groupby("user_id")["history"].last()
    everyone = collections.Counter(category[item] for history in final for item in history)
    top3_everyone = sum(n for _, n in everyone.most_common(3)) / sum(everyone.values())
    top3_user = [
        sum(n for _, n in collections.Counter(category[i] for i in history[-20:]).most_common(3))
        / 20
        for history in final
        if len(history) >= 20
    ]
    assert len(top3_user) >= 30
    assert np.mean(top3_user) >= top3_everyone + 0.05, (np.mean(top3_user), top3_everyone)


def test_follow_ups_of_recent_threads_are_clicked_more(small_frames):
    news, behaviors = small_frames
    thread = dict(zip(news["news_id"], news["thread"], strict=True))
    rates = {True: [0, 0], False: [0, 0]}
    for history, candidates, labels in zip(
        behaviors["history"], behaviors["candidates"], behaviors["labels"], strict=True
    ):
        recent = {thread[item] for item in history[-5:]}
        for item, label in zip(candidates, labels, strict=True):
            rates[thread[item] in recent][0] += label
            rates[thread[item] in recent][1] += 1
    follow_up, other = (clicks / shown for clicks, shown in (rates[True], rates[False]))
    assert follow_up > 3 * other, f"click rate {follow_up:.3f} vs {other:.3f}"


def test_popularity_beats_random(small_aucs):
    assert abs(small_aucs["random"] - 0.5) < 0.02
    assert small_aucs["popularity"] >= 0.55, small_aucs


def test_recent_clicks_beat_popularity(small_aucs):
    assert small_aucs["sequence"] >= small_aucs["popularity"] + 0.08, small_aucs
    assert small_aucs["thread"] > 0.55, small_aucs


def test_recent_clicks_tell_the_topic_better_than_the_whole_history(small_aucs):
    assert small_aucs["recent_topic"] >= small_aucs["full_topic"] + 0.01, small_aucs


# ------------------------------------------------------------- determinism


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path, small_files):
    summary, _, _ = small_files
    generate_mind_log(tmp_path / "again", scale="small", seed=SEED)
    generate_mind_log(tmp_path / "other", scale="small", seed=SEED + 1)
    for name in ("behaviors.tsv", "news.tsv"):
        original = Path(summary[f"{name.split('.')[0]}_path"]).read_bytes()
        assert (tmp_path / "again" / name).read_bytes() == original
        assert (tmp_path / "other" / name).read_bytes() != original


def test_overwrites_atomically_and_leaves_no_temporary_files(tmp_path):
    (tmp_path / "behaviors.tsv").write_text("old\n")
    summary = generate_mind_log(tmp_path, scale="small", seed=SEED, num_impressions=400)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["behaviors.tsv", "news.tsv"]
    assert len((tmp_path / "behaviors.tsv").read_text().splitlines()) == 400
    assert summary["impressions"] == 400


def test_failed_write_leaves_no_temporary_files(tmp_path):
    (tmp_path / "behaviors.tsv").mkdir()  # os.replace onto a folder fails
    with pytest.raises(OSError):
        generate_mind_log(tmp_path, scale="small", seed=SEED, num_impressions=400)
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_overrides_reach_the_config(tmp_path):
    summary = generate_mind_log(
        tmp_path,
        scale="small",
        num_users=50,
        num_items=300,
        num_impressions=200,
        days=2,
        min_candidates=5,
        max_candidates=8,
    )
    assert (summary["users"], summary["items"], summary["impressions"]) == (50, 300, 200)
    assert summary["config"]["days"] == 2
    assert 5 * 200 <= summary["candidates"] <= 8 * 200
    assert summary["start"] >= "2019-11-09" and summary["end"] < "2019-11-11"


def test_cli_writes_the_files(tmp_path, capsys):
    assert main([str(tmp_path / "cli"), "--seed", "3", "--scale", "small"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["seed"] == 3
    assert printed["impressions"] == SCALES["small"].num_impressions
    assert Path(printed["behaviors_path"]).is_file() and Path(printed["news_path"]).is_file()


# -------------------------------------------------------------- arguments


@pytest.mark.parametrize(
    "changes, message",
    [
        pytest.param({"num_users": 0}, r"`num_users` .* Received: num_users=0", id="users"),
        pytest.param({"days": 1.5}, r"`days` .* Received: days=1.5", id="days-float"),
        pytest.param({"pre_window_days": -1}, r"Received: pre_window_days=-1", id="pre-window"),
        pytest.param({"half_life_hours": 0.0}, r"Received: half_life_hours=0.0", id="half-life"),
        pytest.param({"thread_boost": -1.0}, r"Received: thread_boost=-1.0", id="boost"),
        pytest.param(
            {"popular_share": 1.5}, r"`popular_share` .* Received: popular_share=1.5", id="share"
        ),
        pytest.param(
            {"popular_share": 0.7, "related_share": 0.5},
            r"popular_share=0.7, related_share=0.5",
            id="shares-sum",
        ),
        pytest.param(
            {"min_candidates": 20, "max_candidates": 10},
            r"max_candidates=10, min_candidates=20",
            id="candidates",
        ),
        pytest.param(
            {"num_impressions": 10}, r"num_impressions=10, num_users=3000", id="impressions"
        ),
        pytest.param({"num_categories": 99}, r"num_categories=99", id="categories"),
        pytest.param(
            {"click_count_probs": (0.5, 0.2)}, r"click_count_probs=\(0.5, 0.2\)", id="probs"
        ),
        pytest.param({"start_date": "11/9/2019"}, r"start_date='11/9/2019'", id="date"),
        pytest.param(
            {"cold_start_fraction": 0.5}, r"cold_start_fraction=0.5", id="too-many-new-users"
        ),
    ],
)
def test_config_rejects_bad_values(changes, message):
    with pytest.raises(ValueError, match=message):
        SyntheticConfig(**changes)


def test_bad_arguments_of_the_entry_points(tmp_path):
    with pytest.raises(ValueError, match=r"unknown SyntheticConfig field\(s\) \['num_user'\]"):
        generate_mind_log(tmp_path, scale="small", num_user=5)
    with pytest.raises(ValueError, match=r"Received: scale='huge'"):
        generate_mind_log(tmp_path, scale="huge")
    with pytest.raises(ValueError, match=r"Received: seed=-1"):
        simulate_mind_log(SCALES["small"], seed=-1)
    assert not list(tmp_path.iterdir())


# ------------------------------------------------------------ default size


@pytest.mark.slow
def test_default_scale_sizes_and_signal(tmp_path):
    summary = generate_mind_log(tmp_path, seed=SEED)
    assert (summary["users"], summary["items"], summary["impressions"]) == (3000, 3000, 30000)
    assert summary["max_history_length"] > 50
    aucs = _scorer_aucs(*simulate_mind_log(SCALES["default"], seed=SEED))
    assert aucs["popularity"] >= 0.55, aucs
    assert aucs["sequence"] >= aucs["popularity"] + 0.08, aucs
