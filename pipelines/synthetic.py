"""Synthetic news click logs in MIND format: feedrec's embedded default data set.

``feedrec demo`` runs end to end on data the project makes itself. This module
simulates a news portal and writes its log exactly as MIND ships one
(``behaviors.tsv`` and ``news.tsv``), so the reader, stages and model that
serve real MIND serve the demo too. Nothing is downloaded and no real data is
used: everything comes from one seeded ``numpy`` generator, and the same seed
gives byte-identical files.

The generative process
----------------------
**Time.** The log covers a *window* of ``days`` days from ``start_date``
(midnight). Before it lies a *pre-window* of ``pre_window_days`` days,
simulated the same way but not written: its clicks only fill the ``history``
column, as the clicks before the data set's week do in real MIND. Impression
times follow a daily rhythm (quiet nights, morning and evening peaks).

**Items.** Every news item belongs to a *thread* (a story) with a category (a
fixed MIND-like catalogue of ``num_categories`` topics, news and sports the
largest) and a subcategory. A thread has 1 to ``max_thread_length``
installments (one more with probability ``thread_continue_prob``), published
``thread_gap_hours`` apart on average: most threads are single items, some are
running stories with follow-ups. Threads get a Zipf-Mandelbrot quality
``q = (rank + popularity_offset * num_threads) ** -popularity_exponent``
(random ranks; each item adds log-normal noise), so popularity is power-law.
Each item has a publication time and a half-life (log-normal around
``half_life_hours``, clipped to 1..48 hours). Attention to an item first
builds up and then fades: its appeal is ``(1 - 0.5 ** (age / rise_hours)) *
0.5 ** (age / half_life)``, which peaks when the item is most of a day old
(17 hours with the defaults: the portal promotes it, word spreads). An item is *live* from its
publication until it is ``max_item_age_hours`` old, and an impression shows
only items live at its time. Titles are a few words of the topic's word list, shared by a thread's
installments (follow-ups are prefixed "Update:", "Latest:", ...).

**Users.** ``round(cold_start_fraction * num_impressions)`` users join during
the window and start with an empty history (cold start, so about that share of
impressions has no history); the others have a pre-window past. Activity is
heavy-tailed (Pareto, exponent ``activity_exponent``, capped at
``max_activity`` times the least active): every user has one impression in
the window and the rest are shared out by activity, so a few users have
hundreds of clicks and truncating histories at 50 matters. A user starts with
1 to ``max_interests`` topic interests (log-weights, softmax-normalised).
Between two impressions the log-weights take a random-walk step of standard
deviation ``interest_drift * sqrt(elapsed days)``, and a new interest, stronger
than the others, appears at rate ``new_interest_rate`` per day (the weakest is
dropped beyond ``max_interests``): interests drift, so the *recent* clicks
tell the current topic better than the whole history.

**Impressions.** Users do not influence each other, so each user's impressions
are simulated in time order (all users side by side, vectorised). An
impression shows ``min_candidates`` to ``max_candidates`` live items, never
one the user has clicked before, drawn without replacement from three modules
of a portal:

* ``popular_share`` *trending*: weight ``q * (1 - 0.5 ** (age / half_life))``,
  the quality times the share of its clicks the item has already collected,
  so established hits rather than brand-new items (a portal learns
  popularity from clicks);
* ``related_share`` *for you*: weight ``exp(relevance) * freshness``;
* the rest *latest*: weight ``freshness``.

The user clicks 1, 2 or 3 of them (``click_count_probs``; never 0, as in MIND
training logs), without replacement, with probability proportional to
``exp(utility)``::

    utility   = log q + log(1 - 0.5 ** (age / rise_hours))
              - ln 2 * age / half_life + relevance
    relevance = log(interest[topic] + topic_floor)       # drifting interests
              + thread_boost * [a later installment of a thread among the
                                last thread_memory clicks]  # running stories
              + recent_boost * [same subcategory as one of the last
                                recent_window clicks]       # momentum

The last two terms are the *sequential* signal: they depend on which items
were clicked most recently, which a self-attention model over the history can
read and a most-popular baseline cannot. ``history`` is exactly the user's
clicks strictly before the impression, oldest first (pre-window clicks, then
earlier in-window clicks; the clicks of one impression in the order shown).

The default scale (3,000 users, 3,000 items, 30,000 impressions over 7 days:
about 43k clicks, 750k candidates, histories of 34 clicks on average, 18% of
impressions beyond 50) generates in about 3 seconds of one CPU, and the demo
trains a small model on it in a minute or two on two cores.
``SCALES["small"]`` (300 users, 3,000 impressions over 4 days) takes well
under a second and is what the tests use. Per-impression AUC on every window
day but the first, popularity counted on the days before
(``tests/pipelines/test_synthetic.py``, seed 0, small / default): random
0.50 / 0.50; most popular 0.65 / 0.67; the category share of the last 5 clicks
0.70 / 0.66 against 0.65 / 0.62 for the whole history; popularity plus the
threads, topics and subcategories of the last 5 clicks 0.82 / 0.79.

Example::

    summary = generate_mind_log("demo_data", seed=0, scale="small")
    summary["impressions"], summary["behaviors_path"]

or ``python -m pipelines.synthetic OUT_DIR --seed 0 --scale small``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import logging
import os
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from numpy.lib.stride_tricks import sliding_window_view

from pipelines.readers import mind

logger = logging.getLogger(__name__)

SECONDS_PER_HOUR = 3600
SECONDS_PER_DAY = 86400

#: Topic catalogue: category -> (relative size, subcategories, title words).
_CATALOGUE: tuple[tuple[str, float, tuple[str, ...], tuple[str, ...]], ...] = (
    (
        "news",
        0.22,
        ("newsus", "newsworld", "newspolitics", "newscrime", "newsscience"),
        (
            "senate",
            "governor",
            "election",
            "court",
            "police",
            "mayor",
            "vote",
            "bill",
            "protest",
            "investigation",
            "council",
            "budget",
            "report",
            "officials",
            "city",
            "federal",
            "charges",
            "hearing",
            "campaign",
            "policy",
        ),
    ),
    (
        "sports",
        0.18,
        ("football_nfl", "basketball_nba", "soccer", "baseball_mlb", "icehockey_nhl"),
        (
            "coach",
            "season",
            "playoff",
            "quarterback",
            "trade",
            "injury",
            "win",
            "rookie",
            "team",
            "game",
            "league",
            "score",
            "draft",
            "roster",
            "title",
            "fans",
            "record",
            "stadium",
            "defense",
            "comeback",
        ),
    ),
    (
        "finance",
        0.08,
        ("markets", "personalfinance", "companies", "realestate"),
        (
            "stocks",
            "earnings",
            "rates",
            "investors",
            "shares",
            "retirement",
            "mortgage",
            "bank",
            "profit",
            "market",
            "tax",
            "savings",
            "deal",
            "prices",
            "economy",
        ),
    ),
    (
        "lifestyle",
        0.08,
        ("lifestyleroyals", "shop-holidays", "lifestylebuzz", "pets"),
        (
            "wedding",
            "holiday",
            "gift",
            "style",
            "family",
            "home",
            "dog",
            "cat",
            "royal",
            "secret",
            "tips",
            "trend",
            "viral",
            "celebration",
            "photos",
        ),
    ),
    (
        "health",
        0.06,
        ("wellness", "medical", "nutrition", "fitness"),
        (
            "study",
            "doctors",
            "sleep",
            "diet",
            "heart",
            "cancer",
            "workout",
            "vaccine",
            "brain",
            "risk",
            "symptoms",
            "habits",
            "weight",
            "stress",
            "patients",
        ),
    ),
    (
        "foodanddrink",
        0.05,
        ("recipes", "restaurants", "drinks"),
        (
            "recipe",
            "dinner",
            "chef",
            "restaurant",
            "cookies",
            "pie",
            "turkey",
            "wine",
            "coffee",
            "menu",
            "bakery",
            "soup",
            "dessert",
            "burger",
            "pasta",
        ),
    ),
    (
        "travel",
        0.04,
        ("travelnews", "traveltrip", "airlines"),
        (
            "flight",
            "airport",
            "beach",
            "hotel",
            "island",
            "cruise",
            "road",
            "trip",
            "park",
            "destination",
            "passengers",
            "resort",
            "vacation",
            "tourists",
            "route",
        ),
    ),
    (
        "weather",
        0.04,
        ("weathertopstories", "storms"),
        (
            "snow",
            "storm",
            "cold",
            "forecast",
            "rain",
            "winds",
            "temperatures",
            "freeze",
            "flood",
            "warning",
            "weekend",
            "frost",
            "blizzard",
            "heat",
            "radar",
        ),
    ),
    (
        "autos",
        0.04,
        ("autosnews", "autosenthusiasts", "autosreview"),
        (
            "truck",
            "engine",
            "electric",
            "recall",
            "sedan",
            "dealer",
            "crash",
            "pickup",
            "horsepower",
            "model",
            "driver",
            "suv",
            "racing",
            "prototype",
            "mileage",
        ),
    ),
    (
        "tv",
        0.04,
        ("tvnews", "tv-celebrity", "tvreviews"),
        (
            "series",
            "finale",
            "episode",
            "host",
            "show",
            "cast",
            "season",
            "premiere",
            "network",
            "ratings",
            "star",
            "contestant",
            "reboot",
            "spinoff",
            "trailer",
        ),
    ),
    (
        "music",
        0.03,
        ("musicnews", "music-celebrity"),
        (
            "album",
            "tour",
            "singer",
            "concert",
            "band",
            "song",
            "awards",
            "rapper",
            "stage",
            "single",
            "festival",
            "chart",
            "duet",
            "lyrics",
            "guitarist",
        ),
    ),
    (
        "movies",
        0.03,
        ("movienews", "movies-celebrity", "movies-reviews"),
        (
            "film",
            "sequel",
            "director",
            "box",
            "office",
            "actor",
            "premiere",
            "trailer",
            "studio",
            "remake",
            "franchise",
            "villain",
            "oscar",
            "screen",
            "cast",
        ),
    ),
    (
        "entertainment",
        0.04,
        ("celebrity", "entertainment-news"),
        (
            "star",
            "divorce",
            "couple",
            "rumor",
            "interview",
            "baby",
            "red",
            "carpet",
            "feud",
            "tribute",
            "reunion",
            "dating",
            "fans",
            "photo",
            "statement",
        ),
    ),
    (
        "video",
        0.03,
        ("viral", "animals", "news-video"),
        (
            "watch",
            "video",
            "moment",
            "caught",
            "camera",
            "rescue",
            "amazing",
            "dog",
            "bear",
            "crowd",
            "surprise",
            "footage",
            "clip",
            "reaction",
            "stunt",
        ),
    ),
    (
        "kids",
        0.02,
        ("kids-education", "kids-fun"),
        (
            "school",
            "teacher",
            "students",
            "class",
            "toys",
            "game",
            "science",
            "project",
            "puzzle",
            "story",
            "cartoon",
            "reading",
            "math",
            "art",
            "playground",
        ),
    ),
)

_MIN_WORDS = min(len(words) for _, _, _, words in _CATALOGUE)
_FOLLOW_UP_PREFIXES = ("Update:", "Latest:", "What we know:", "Developing:", "Follow-up:")
_TITLE_LINKS = ("after", "as", "over", "and", "amid", "for", "in", "with")

#: Relative impression rate by hour of day (quiet nights, morning and evening peaks).
_HOURLY_RATE = np.array(
    [2, 1, 1, 1, 1, 2, 4, 7, 9, 8, 7, 7, 7, 7, 6, 6, 6, 7, 8, 9, 9, 8, 6, 4], dtype=np.float64
)


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
    """Every knob of the synthetic MIND log, with the defaults of the demo.

    The module docstring describes the generative process these knobs drive.

    Attributes:
        num_users: int. Users in the window; each has at least one impression.
            Defaults to 3000.
        num_items: int. News items published over the pre-window and the
            window, all listed in ``news.tsv``. Defaults to 3000.
        num_impressions: int. Rows of ``behaviors.tsv`` (pre-window
            impressions come on top and are not written); at least
            ``num_users``. Defaults to 30000.
        days: int. Length of the logged window in days. Defaults to 7.
        pre_window_days: int. Days simulated before the window, whose clicks
            only fill histories. Defaults to 5.
        start_date: str. ISO date of the window's first midnight. Defaults to
            ``"2019-11-09"``.
        num_categories: int. Topics used, the first ones of the built-in
            catalogue (at most 15). Defaults to 15.
        popularity_exponent: float. Zipf exponent of thread quality.
            Defaults to 1.5.
        popularity_offset: float. Zipf-Mandelbrot rank offset, as a fraction
            of the number of threads (keeps the spread of quality the same at
            every scale). Defaults to 0.02.
        half_life_hours: float. Median half-life of an item's appeal.
            Defaults to 20.0.
        half_life_spread: float. Log-normal sigma of the half-life.
            Defaults to 0.5.
        rise_hours: float. Time for an item's attention to build up: its
            appeal is ``(1 - 0.5 ** (age / rise_hours))`` times the decay.
            Defaults to 12.0.
        max_item_age_hours: float. Items older than this are no longer shown.
            Defaults to 48.0.
        thread_continue_prob: float. Probability that a thread gets one more
            installment. Defaults to 0.4.
        max_thread_length: int. Most installments in one thread. Defaults to 8.
        thread_gap_hours: float. Mean time between installments. Defaults to 6.0.
        max_interests: int. Most topic interests a user holds at once; users
            start with 1 to this many. Defaults to 3.
        interest_drift: float. Random-walk step of interest log-weights per
            square-root day. Defaults to 0.8.
        new_interest_rate: float. New interests per user per day.
            Defaults to 0.3.
        topic_floor: float. Added to every topic's interest weight (users
            also click outside their interests). Defaults to 0.1.
        thread_boost: float. Utility bonus of a later installment of a thread
            among the user's last ``thread_memory`` clicks. Defaults to 3.0.
        thread_memory: int. Recent clicks whose threads count.
            Defaults to 10.
        recent_boost: float. Utility bonus of the subcategory of one of the
            last ``recent_window`` clicks. Defaults to 2.0.
        recent_window: int. Clicks that make up short-term momentum.
            Defaults to 3.
        min_candidates: int. Fewest candidates per impression (fewer only if
            fewer items are live). Defaults to 10.
        max_candidates: int. Most candidates per impression. Defaults to 40.
        popular_share: float. Share of candidates from the trending module.
            Defaults to 0.4.
        related_share: float. Share of candidates from the for-you module.
            Defaults to 0.15.
        click_count_probs: tuple of floats. Probabilities of 1, 2, 3, ...
            clicks per impression. Defaults to ``(0.65, 0.25, 0.1)``.
        cold_start_fraction: float. Target share of impressions with an
            empty history (users who join during the window). Defaults to 0.03.
        activity_exponent: float. Pareto exponent of user activity (smaller =
            heavier tail). Defaults to 1.6.
        max_activity: float. Cap on a user's activity relative to the least
            active. Defaults to 30.0.

    Example:

    ```python
    config = SyntheticConfig(num_users=500, num_impressions=5000)
    news, behaviors = simulate_mind_log(config, seed=0)
    ```
    """

    num_users: int = 3000
    num_items: int = 3000
    num_impressions: int = 30000
    days: int = 7
    pre_window_days: int = 5
    start_date: str = "2019-11-09"
    num_categories: int = len(_CATALOGUE)
    popularity_exponent: float = 1.5
    popularity_offset: float = 0.02
    half_life_hours: float = 20.0
    half_life_spread: float = 0.5
    rise_hours: float = 12.0
    max_item_age_hours: float = 48.0
    thread_continue_prob: float = 0.4
    max_thread_length: int = 8
    thread_gap_hours: float = 6.0
    max_interests: int = 3
    interest_drift: float = 0.8
    new_interest_rate: float = 0.3
    topic_floor: float = 0.1
    thread_boost: float = 3.0
    thread_memory: int = 10
    recent_boost: float = 2.0
    recent_window: int = 3
    min_candidates: int = 10
    max_candidates: int = 40
    popular_share: float = 0.4
    related_share: float = 0.15
    click_count_probs: tuple[float, ...] = (0.65, 0.25, 0.1)
    cold_start_fraction: float = 0.03
    activity_exponent: float = 1.6
    max_activity: float = 30.0

    def __post_init__(self) -> None:
        for name in (
            "num_users",
            "num_items",
            "num_impressions",
            "days",
            "num_categories",
            "max_thread_length",
            "max_interests",
            "thread_memory",
            "recent_window",
            "min_candidates",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(
                    f"`{name}` should be a positive integer. Received: {name}={value!r}"
                )
        if not isinstance(self.pre_window_days, int) or self.pre_window_days < 0:
            raise ValueError(
                "`pre_window_days` should be a non-negative integer. "
                f"Received: pre_window_days={self.pre_window_days!r}"
            )
        for name in (
            "popularity_exponent",
            "popularity_offset",
            "interest_drift",
            "new_interest_rate",
            "topic_floor",
            "thread_boost",
            "recent_boost",
            "half_life_spread",
        ):
            value = getattr(self, name)
            if not value >= 0:
                raise ValueError(f"`{name}` should be non-negative. Received: {name}={value!r}")
        for name in (
            "half_life_hours",
            "rise_hours",
            "max_item_age_hours",
            "thread_gap_hours",
            "activity_exponent",
            "max_activity",
        ):
            value = getattr(self, name)
            if not value > 0:
                raise ValueError(f"`{name}` should be positive. Received: {name}={value!r}")
        for name in (
            "thread_continue_prob",
            "popular_share",
            "related_share",
            "cold_start_fraction",
        ):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"`{name}` should be in [0, 1]. Received: {name}={value!r}")
        if self.popular_share + self.related_share > 1.0:
            raise ValueError(
                "`popular_share + related_share` should be at most 1. Received: "
                f"popular_share={self.popular_share}, related_share={self.related_share}"
            )
        if self.num_categories > len(_CATALOGUE):
            raise ValueError(
                f"`num_categories` should be at most {len(_CATALOGUE)}. "
                f"Received: num_categories={self.num_categories}"
            )
        if self.max_candidates < self.min_candidates:
            raise ValueError(
                "`max_candidates` should be at least `min_candidates`. Received: "
                f"max_candidates={self.max_candidates}, min_candidates={self.min_candidates}"
            )
        if self.num_impressions < self.num_users:
            raise ValueError(
                "`num_impressions` should be at least `num_users` (every user has an "
                f"impression). Received: num_impressions={self.num_impressions}, "
                f"num_users={self.num_users}"
            )
        if self.num_new_users > self.num_users:
            raise ValueError(
                "`cold_start_fraction * num_impressions` should be at most `num_users`. "
                f"Received: cold_start_fraction={self.cold_start_fraction}, "
                f"num_impressions={self.num_impressions}, num_users={self.num_users}"
            )
        probs = tuple(float(p) for p in self.click_count_probs)
        if not probs or min(probs) < 0 or abs(sum(probs) - 1.0) > 1e-6:
            raise ValueError(
                "`click_count_probs` should be non-negative and sum to 1. "
                f"Received: click_count_probs={self.click_count_probs!r}"
            )
        object.__setattr__(self, "click_count_probs", probs)
        try:
            dt.date.fromisoformat(self.start_date)
        except (TypeError, ValueError) as err:
            raise ValueError(
                f"`start_date` should be an ISO date (YYYY-MM-DD). Received: "
                f"start_date={self.start_date!r}"
            ) from err

    @property
    def num_new_users(self) -> int:
        """Users who join during the window (their first impression is cold)."""
        return round(self.cold_start_fraction * self.num_impressions)

    def replace(self, **changes: Any) -> SyntheticConfig:
        """A copy with some fields changed (unknown names raise ``ValueError``)."""
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ValueError(f"unknown SyntheticConfig field(s) {unknown}; known: {sorted(known)}")
        return dataclasses.replace(self, **changes)


#: Named sizes: ``default`` for the demo, ``small`` for tests (well under a second).
SCALES: dict[str, SyntheticConfig] = {
    "default": SyntheticConfig(),
    "small": SyntheticConfig(
        num_users=300, num_items=800, num_impressions=3000, days=4, pre_window_days=3
    ),
}


def simulate_mind_log(
    config: SyntheticConfig | None = None, *, seed: int = 0
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Simulate the portal; return ``(news, behaviors)`` as data frames.

    Args:
        config: SyntheticConfig. The knobs. Defaults to ``SyntheticConfig()``.
        seed: int. Seeds all randomness. Defaults to 0.

    Returns:
        ``news``: one row per item with the eight MIND columns plus
        ``publish_time`` (``datetime64[s]``), ``thread``, ``installment``,
        ``half_life_hours`` and ``quality``. ``behaviors``: one row per logged
        impression, in time order, with ``impression_id`` (int),
        ``user_id``, ``time`` (``datetime64[s]``), ``history`` (list of news
        ids, oldest first), ``candidates`` (list of news ids) and ``labels``
        (list of 0/1).
    """
    config = SyntheticConfig() if config is None else config
    if not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"`seed` should be a non-negative integer. Received: seed={seed!r}")
    rng = np.random.default_rng(seed)
    items = _make_items(config, rng)
    users, impressions = _make_impressions(config, rng)
    cand_offsets, cand_items, cand_labels = _simulate_clicks(config, rng, items, users, impressions)
    return _assemble(config, items, users, impressions, cand_offsets, cand_items, cand_labels)


def generate_mind_log(
    out_dir: str | os.PathLike,
    *,
    num_users: int | None = None,
    num_items: int | None = None,
    num_impressions: int | None = None,
    days: int | None = None,
    seed: int = 0,
    scale: str = "default",
    config: SyntheticConfig | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """Write a synthetic MIND log (``behaviors.tsv``, ``news.tsv``) into ``out_dir``.

    The files are written to temporary names in ``out_dir`` and renamed into
    place, so a reader never sees half a file. Same seed and settings give
    byte-identical files.

    Args:
        out_dir: str or path. Created if missing.
        num_users, num_items, num_impressions, days: int. Override the
            scale's value when given.
        seed: int. Seeds all randomness. Defaults to 0.
        scale: str. Base settings from ``SCALES`` (``"default"`` or
            ``"small"``); ignored when ``config`` is given. Defaults to
            ``"default"``.
        config: SyntheticConfig. Base settings instead of ``scale``.
        **overrides: any other ``SyntheticConfig`` field.

    Returns:
        A summary dict: ``behaviors_path``, ``news_path``, ``seed``,
        ``impressions``, ``clicks``, ``candidates``, ``users``, ``items``,
        ``empty_history_impressions``, ``max_history_length``, ``start``,
        ``end`` (first and last impression time, ISO) and ``config``.
    """
    if config is None:
        if scale not in SCALES:
            raise ValueError(
                f"`scale` should be one of {sorted(SCALES)}. Received: scale={scale!r}"
            )
        config = SCALES[scale]
    named = {"num_users": num_users, "num_items": num_items}
    named.update({"num_impressions": num_impressions, "days": days})
    overrides.update({k: v for k, v in named.items() if v is not None})
    if overrides:
        config = config.replace(**overrides)
    news, behaviors = simulate_mind_log(config, seed=seed)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    news_path, behaviors_path = out_dir / "news.tsv", out_dir / "behaviors.tsv"
    _write_atomically({news_path: _news_lines(news), behaviors_path: _behavior_lines(behaviors)})

    history_lengths = behaviors["history"].map(len).to_numpy()
    summary = {
        "behaviors_path": str(behaviors_path),
        "news_path": str(news_path),
        "seed": int(seed),
        "impressions": len(behaviors),
        "clicks": int(behaviors["labels"].map(sum).sum()),
        "candidates": int(behaviors["candidates"].map(len).sum()),
        "users": int(behaviors["user_id"].nunique()),
        "items": len(news),
        "empty_history_impressions": int((history_lengths == 0).sum()),
        "max_history_length": int(history_lengths.max()),
        "start": behaviors["time"].iloc[0].isoformat(),
        "end": behaviors["time"].iloc[-1].isoformat(),
        "config": dataclasses.asdict(config),
    }
    logger.info(
        "wrote %d impressions, %d clicks, %d news to %s",
        summary["impressions"],
        summary["clicks"],
        summary["items"],
        out_dir,
    )
    return summary


def format_mind_time(time: dt.datetime) -> str:
    """MIND's timestamp layout, ``M/D/YYYY h:mm:ss AM/PM`` without leading zeros."""
    hour = time.hour % 12 or 12
    half = "AM" if time.hour < 12 else "PM"
    return f"{time.month}/{time.day}/{time.year} {hour}:{time.minute:02d}:{time.second:02d} {half}"


# --------------------------------------------------------------------------- items


def _make_items(config: SyntheticConfig, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Threads of installments, sorted by publication time (seconds from window start)."""
    catalogue = _CATALOGUE[: config.num_categories]
    n = config.num_items
    max_age = config.max_item_age_hours * SECONDS_PER_HOUR
    span_start = -config.pre_window_days * SECONDS_PER_DAY - max_age
    span_end = config.days * SECONDS_PER_DAY

    # Thread lengths: 1 + geometric continuation, capped; enough threads to cover n items.
    extra = (
        rng.geometric(1.0 - config.thread_continue_prob, size=n) - 1
        if (config.thread_continue_prob < 1.0)
        else np.full(n, config.max_thread_length - 1)
    )
    lengths = np.minimum(1 + extra, config.max_thread_length)
    num_threads = int(np.searchsorted(np.cumsum(lengths), n) + 1)
    lengths = lengths[:num_threads]
    lengths[-1] -= lengths.sum() - n
    thread = np.repeat(np.arange(num_threads), lengths)
    installment = np.arange(n) - np.repeat(np.cumsum(lengths) - lengths, lengths)

    sizes = np.array([size for _, size, _, _ in catalogue])
    thread_category = rng.choice(len(catalogue), size=num_threads, p=sizes / sizes.sum())
    num_sub = np.array([len(subs) for _, _, subs, _ in catalogue])
    sub_offset = np.concatenate([[0], np.cumsum(num_sub)[:-1]])
    thread_sub = sub_offset[thread_category] + (
        rng.random(num_threads) ** 1.5 * num_sub[thread_category]
    ).astype(np.int64)
    rank = rng.permutation(num_threads) + 1
    offset = config.popularity_offset * num_threads
    thread_log_quality = -config.popularity_exponent * np.log(rank + offset)

    thread_start = rng.uniform(span_start, span_end, size=num_threads)
    gaps = rng.exponential(config.thread_gap_hours * SECONDS_PER_HOUR, size=n)
    gaps[installment == 0] = 0.0
    cumulative = np.cumsum(gaps)
    since_first = cumulative - np.repeat(cumulative[np.cumsum(lengths) - lengths], lengths)
    publish = np.floor(thread_start[thread] + since_first).astype(np.int64)

    half_life = np.clip(
        config.half_life_hours * np.exp(config.half_life_spread * rng.standard_normal(n)), 1.0, 48.0
    )
    items = {
        "publish": publish,
        "thread": thread,
        "installment": installment,
        "category": thread_category[thread],
        "subcategory": thread_sub[thread],
        "log_quality": (thread_log_quality[thread] + 0.3 * rng.standard_normal(n)).astype(
            np.float32
        ),
        "half_life": half_life * SECONDS_PER_HOUR,
        "decay": (np.log(2.0) / (half_life * SECONDS_PER_HOUR)).astype(np.float32),  # per second
        "number": rng.choice(np.arange(1, 20 * n + 1), size=n, replace=False),
        # Title words: 4 distinct word indices (every word list has >= 15 words),
        # a linking word and a follow-up prefix, shared by the thread.
        "words": np.concatenate(
            [
                np.argsort(rng.random((num_threads, _MIN_WORDS)), axis=1)[:, :4],
                rng.integers(0, 1 << 30, size=(num_threads, 2)),
            ],
            axis=1,
        )[thread],
        "abstract_words": rng.integers(0, _MIN_WORDS, size=(n, 3)),
    }
    # Later installments of the same thread, as item indices (-1 = none).
    thread_end = np.repeat(np.cumsum(lengths), lengths)
    follow_ups = np.arange(n)[:, None] + np.arange(1, config.max_thread_length)[None, :]
    follow_ups = np.where(follow_ups < thread_end[:, None], follow_ups, -1)

    order = np.argsort(publish, kind="stable")
    position = np.empty(n, dtype=np.int64)
    position[order] = np.arange(n)
    items["follow_ups"] = np.where(follow_ups >= 0, position[np.maximum(follow_ups, 0)], -1)
    return {key: value[order] for key, value in items.items()}


# ----------------------------------------------------------------------- users


def _make_impressions(
    config: SyntheticConfig, rng: np.random.Generator
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Users (activity, initial interests) and their impression times, sorted by (user, time)."""
    num_users = config.num_users
    is_new = np.zeros(num_users, dtype=bool)
    is_new[rng.choice(num_users, size=config.num_new_users, replace=False)] = True
    activity = np.minimum(
        (1.0 - rng.random(num_users)) ** (-1.0 / config.activity_exponent), config.max_activity
    )
    spare = config.num_impressions - num_users
    window_count = 1 + rng.multinomial(spare, activity / activity.sum())
    expected = (1.0 + spare * activity / activity.sum()) * config.pre_window_days / config.days
    pre_count = np.where(is_new, 0, np.maximum(rng.poisson(expected), 1))
    if config.pre_window_days == 0:
        pre_count[:] = 0

    def times(counts: np.ndarray, first_day: int, num_days: int) -> np.ndarray:
        total = int(counts.sum())
        day = first_day + rng.integers(0, num_days, size=total)
        hour = rng.choice(24, size=total, p=_HOURLY_RATE / _HOURLY_RATE.sum())
        return day * SECONDS_PER_DAY + hour * SECONDS_PER_HOUR + rng.integers(0, 3600, size=total)

    user = np.concatenate(
        [np.repeat(np.arange(num_users), pre_count), np.repeat(np.arange(num_users), window_count)]
    )
    time = np.concatenate(
        [
            times(pre_count, -config.pre_window_days, max(config.pre_window_days, 1)),
            times(window_count, 0, config.days),
        ]
    )
    in_window = np.concatenate([np.zeros(pre_count.sum(), bool), np.ones(window_count.sum(), bool)])
    order = np.lexsort((time, user))
    user, time, in_window = user[order], time[order], in_window[order]
    # Strictly increasing times per user: t_k = max(t_k, t_{k-1} + 1).
    counts = np.bincount(user, minlength=num_users)
    starts = np.cumsum(counts) - counts
    rank = np.arange(len(user)) - starts[user]
    offset = user.astype(np.int64) * (1 << 40)
    time = np.maximum.accumulate(time - rank + offset) - offset + rank

    # Initial interests: 1..max_interests topics, log-weights around 0; others off.
    sizes = np.array([size for _, size, _, _ in _CATALOGUE[: config.num_categories]])
    num_interests = rng.integers(1, config.max_interests + 1, size=num_users)
    gumbel = rng.gumbel(size=(num_users, config.num_categories)) + np.log(sizes)
    topic_rank = np.argsort(np.argsort(-gumbel, axis=1), axis=1)
    interests = np.where(
        topic_rank < num_interests[:, None],
        0.5 * rng.standard_normal((num_users, config.num_categories)),
        -np.inf,
    )
    users = {
        "interests": interests,
        "number": rng.choice(np.arange(1, 30 * num_users + 1), size=num_users, replace=False),
    }
    impressions = {"user": user, "time": time, "in_window": in_window, "rank": rank}
    return users, impressions


# ---------------------------------------------------------------------- clicks


def _top(keys: np.ndarray, number: np.ndarray) -> np.ndarray:
    """Boolean mask of the ``number[row]`` largest keys of each row (ties broken by position)."""
    mask = np.zeros(keys.shape, dtype=bool)
    most = int(number.max(initial=0))
    if most == 0:
        return mask
    width = keys.shape[1]
    top = np.argpartition(keys, width - most, axis=1)[:, width - most :]
    top = np.take_along_axis(top, np.argsort(-np.take_along_axis(keys, top, axis=1), axis=1), 1)
    take = np.arange(most)[None, :] < number[:, None]
    mask[np.nonzero(take)[0], top[take]] = True
    return mask


def _gumbel(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Standard Gumbel noise in float32 (``-log`` of a standard exponential)."""
    return -np.log(np.maximum(rng.standard_exponential(shape, dtype=np.float32), 1e-30))


def _mark(shape: tuple[int, int], positions: np.ndarray) -> np.ndarray:
    """``(rows, width)`` mask, True at ``positions[row, ...]`` that lie in ``[0, width)``."""
    mask = np.zeros(shape, dtype=bool)
    rows = np.broadcast_to(
        np.arange(shape[0]).reshape((-1,) + (1,) * (positions.ndim - 1)), positions.shape
    )
    inside = (positions >= 0) & (positions < shape[1])
    mask[rows[inside], positions[inside]] = True
    return mask


def _simulate_clicks(
    config: SyntheticConfig,
    rng: np.random.Generator,
    items: dict[str, np.ndarray],
    users: dict[str, np.ndarray],
    impressions: dict[str, np.ndarray],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Run every user's impressions in time order, all users side by side.

    Users do not interact, so step ``k`` handles the ``k``-th impression of
    every user who has one. Returns per-impression candidate offsets (CSR
    style), candidate item indices and labels, in impression order.
    """
    num_impressions = len(impressions["user"])
    # Remember enough clicks to never show a user an item they clicked: an item
    # clicked more than ``max_age`` ago is no longer live, and a user clicks at
    # most ``len(click_count_probs)`` items per impression.
    max_age = int(config.max_item_age_hours * SECONDS_PER_HOUR)
    key = impressions["user"] * (1 << 40) + impressions["time"]
    recent_impressions = np.arange(len(key)) - np.searchsorted(key, key - max_age, side="left")
    memory = max(
        config.thread_memory,
        config.recent_window,
        int(recent_impressions.max(initial=0)) * len(config.click_count_probs),
    )
    interests = users["interests"].copy()
    last_time = np.zeros(config.num_users, dtype=np.int64)
    recent = np.full((config.num_users, memory), -1, dtype=np.int64)  # newest first
    publish = items["publish"]
    click_counts = np.arange(1, len(config.click_count_probs) + 1)
    num_topics = config.num_categories
    topic_prior = np.log(np.array([s for _, s, _, _ in _CATALOGUE[:num_topics]]))
    thread_boost, recent_boost = np.float32(config.thread_boost), np.float32(config.recent_boost)
    zero = np.float32(0.0)
    rise_rate = np.float32(np.log(2.0) / (config.rise_hours * SECONDS_PER_HOUR))
    # Item columns padded at the end so that every live window is a slice.
    padded = {
        key: np.concatenate([values, np.repeat(values[-1:], len(values))])
        for key, values in (
            ("publish", publish.astype(np.float32)),
            ("decay", items["decay"]),
            ("category", items["category"]),
            ("subcategory", items["subcategory"]),
            ("log_quality", items["log_quality"]),
        )
    }
    num_subcategories = sum(len(subs) for _, _, subs, _ in _CATALOGUE[:num_topics])

    steps = np.argsort(impressions["rank"], kind="stable")
    bounds = np.cumsum(np.bincount(impressions["rank"]))
    chunks_items, chunks_labels, chunks_rows, chunks_counts = [], [], [], []
    for step, rows in enumerate(np.split(steps, bounds[:-1])):
        user = impressions["user"][rows]
        time = impressions["time"][rows]
        batch = len(rows)

        # 1. Interests drift; sometimes a new one appears (stronger than the rest).
        elapsed_days = np.where(step == 0, 0.0, (time - last_time[user]) / SECONDS_PER_DAY)
        logits = interests[user]
        active = np.isfinite(logits)
        noise = config.interest_drift * np.sqrt(elapsed_days)[:, None]
        logits = np.where(active, logits + noise * rng.standard_normal(logits.shape), -np.inf)
        arrives = rng.random(batch) < -np.expm1(-config.new_interest_rate * elapsed_days)
        arrives &= ~active.all(axis=1)
        if arrives.any():
            sub = logits[arrives]
            pick = np.argmax(
                np.where(np.isfinite(sub), -np.inf, topic_prior + rng.gumbel(size=sub.shape)),
                axis=1,
            )
            strongest = np.max(sub, axis=1)
            sub[np.arange(len(sub)), pick] = strongest + 0.5
            too_many = np.isfinite(sub).sum(axis=1) > config.max_interests
            weakest = np.argmin(np.where(np.isfinite(sub), sub, np.inf), axis=1)
            sub[np.flatnonzero(too_many), weakest[too_many]] = -np.inf
            logits[arrives] = sub
        interests[user] = logits
        last_time[user] = time
        weights = np.exp(logits - logits.max(axis=1, keepdims=True))
        weights /= weights.sum(axis=1, keepdims=True)

        # 2. Live items: published before the impression and not too old. They
        # are a contiguous run ``low + position`` of the items sorted by time.
        low = np.searchsorted(publish, time - max_age, side="left")
        high = np.searchsorted(publish, time, side="left")
        width = max(int((high - low).max()), 1)
        position = np.arange(width)
        valid = position[None, :] < (high - low)[:, None]
        live = {key: sliding_window_view(values, width)[low] for key, values in padded.items()}
        past = recent[user]  # (batch, memory), newest first, -1 = none
        has_past = past >= 0
        past_safe = np.maximum(past, 0)
        valid &= ~_mark(valid.shape, np.where(has_past, past - low[:, None], -1))

        # 3. Utility of every live item for this user now.
        freshness = (live["publish"] - time[:, None].astype(np.float32)) * live["decay"]
        log_weights = np.log(weights + config.topic_floor).astype(np.float32)
        topic = np.take(log_weights, live["category"] + (np.arange(batch) * num_topics)[:, None])
        in_memory = has_past[:, : config.thread_memory, None]
        follow_ups = items["follow_ups"][past_safe[:, : config.thread_memory]]
        follow_up = _mark(
            valid.shape,
            np.where(in_memory & (follow_ups >= 0), follow_ups - low[:, None, None], -1),
        )
        recent_subcategories = np.where(
            has_past[:, : config.recent_window],
            items["subcategory"][past_safe[:, : config.recent_window]],
            -1,
        )
        momentum = np.take(
            _mark((batch, num_subcategories), recent_subcategories),
            live["subcategory"] + (np.arange(batch) * num_subcategories)[:, None],
        )
        relevance = (
            topic + np.where(follow_up, thread_boost, zero) + np.where(momentum, recent_boost, zero)
        )
        log_quality = live["log_quality"]

        # 4. Candidates from the trending, for-you and latest modules, without replacement.
        num_live = valid.sum(axis=1)
        if num_live.min() < 1:
            raise ValueError(
                "no live item to show at some impression; raise `num_items` or "
                f"`max_item_age_hours`. Received: num_items={config.num_items}, "
                f"max_item_age_hours={config.max_item_age_hours}"
            )
        count = rng.integers(config.min_candidates, config.max_candidates + 1, size=batch)
        count = np.minimum(count, num_live)
        num_popular = np.round(count * config.popular_share).astype(np.int64)
        num_related = np.minimum(
            np.round(count * config.related_share).astype(np.int64), count - num_popular
        )
        with np.errstate(divide="ignore", invalid="ignore"):  # fresh or not-live items
            accumulated = np.log(-np.expm1(freshness))  # share of its clicks an item has had
        chosen = np.zeros_like(valid)
        for keys, number in (
            (log_quality + accumulated, num_popular),
            (relevance + freshness, num_related),
            (freshness, count - num_popular - num_related),
        ):
            keys = np.where(valid & ~chosen, keys + _gumbel(rng, valid.shape), -np.inf)
            chosen |= _top(keys, number)
        # Shown in random order: shuffle each row's chosen positions.
        chosen_row, chosen_position = np.nonzero(chosen)
        shuffle = np.lexsort((rng.random(len(chosen_row)), chosen_row))
        most = int(count.max())
        cand_valid = np.arange(most)[None, :] < count[:, None]
        shown = np.zeros((batch, most), dtype=np.int64)
        shown[cand_valid] = chosen_position[shuffle]
        cand = low[:, None] + shown

        # 5. Clicks: 1..3 candidates, without replacement, proportional to exp(utility).
        clicks = np.minimum(rng.choice(click_counts, size=batch, p=config.click_count_probs), count)
        age = np.maximum(time[:, None] - publish[cand], 1).astype(np.float32)
        rising = np.log(-np.expm1(age * -rise_rate))  # attention builds up, then decays
        utility = rising + sum(
            np.take_along_axis(x, shown, axis=1) for x in (log_quality, freshness, relevance)
        )
        click_keys = np.where(cand_valid, utility + _gumbel(rng, cand.shape), -np.inf)
        labels = _top(click_keys, clicks)

        # 6. Remember the clicks, newest first (later in the list = later click).
        clicked = np.where(labels, cand, -1)[:, ::-1]
        merged = np.concatenate([clicked, past], axis=1)
        keep = np.argsort(merged < 0, axis=1, kind="stable")[:, :memory]
        recent[user] = np.take_along_axis(merged, keep, axis=1)

        chunks_rows.append(rows)
        chunks_counts.append(count)
        chunks_items.append(cand[cand_valid])
        chunks_labels.append(labels[cand_valid].astype(np.int8))

    rows = np.concatenate(chunks_rows)
    counts = np.concatenate(chunks_counts)
    flat_items = np.concatenate(chunks_items)
    flat_labels = np.concatenate(chunks_labels)
    # Reorder the CSR blocks from step order to impression order.
    step_starts = np.cumsum(counts) - counts
    sizes = np.zeros(num_impressions, dtype=np.int64)
    sizes[rows] = counts
    src_starts = np.zeros(num_impressions, dtype=np.int64)
    src_starts[rows] = step_starts
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    gather = np.repeat(src_starts, sizes) + (
        np.arange(offsets[-1]) - np.repeat(offsets[:-1], sizes)
    )
    return offsets, flat_items[gather], flat_labels[gather]


# -------------------------------------------------------------------- assemble


def _assemble(
    config: SyntheticConfig,
    items: dict[str, np.ndarray],
    users: dict[str, np.ndarray],
    impressions: dict[str, np.ndarray],
    offsets: np.ndarray,
    cand_items: np.ndarray,
    cand_labels: np.ndarray,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    news_ids = np.array([f"N{number}" for number in items["number"]], dtype=object)
    news = _news_frame(config, items, news_ids)
    base = np.datetime64(config.start_date, "s")

    user = impressions["user"]
    # Clicks in impression order = each user's click sequence, oldest first.
    clicked_items = cand_items[cand_labels == 1]
    clicks_per_impression = np.add.reduceat(cand_labels.astype(np.int64), offsets[:-1])
    clicks_before = np.cumsum(clicks_per_impression) - clicks_per_impression
    counts = np.bincount(user, minlength=config.num_users)
    first = np.cumsum(counts) - counts
    user_first_click = clicks_before[first][user]  # where each user's clicks begin

    window_rows = np.flatnonzero(impressions["in_window"])
    window_rows = window_rows[np.lexsort((user[window_rows], impressions["time"][window_rows]))]
    history, candidates, labels = [], [], []
    for row in window_rows:
        history.append(news_ids[clicked_items[user_first_click[row] : clicks_before[row]]].tolist())
        block = slice(offsets[row], offsets[row + 1])
        candidates.append(news_ids[cand_items[block]].tolist())
        labels.append(cand_labels[block].tolist())
    behaviors = pd.DataFrame(
        {
            "impression_id": np.arange(1, len(window_rows) + 1),
            "user_id": [f"U{n}" for n in users["number"][user[window_rows]]],
            "time": base + impressions["time"][window_rows].astype("timedelta64[s]"),
            "history": history,
            "candidates": candidates,
            "labels": labels,
        }
    )
    return news, behaviors


def _news_frame(
    config: SyntheticConfig, items: dict[str, np.ndarray], news_ids: np.ndarray
) -> pd.DataFrame:
    catalogue = _CATALOGUE[: config.num_categories]
    subcategories = [sub for _, _, subs, _ in catalogue for sub in subs]
    titles, abstracts = [], []
    for category, installment, words, extra in zip(
        items["category"],
        items["installment"],
        items["words"],
        items["abstract_words"],
        strict=True,
    ):
        vocabulary = catalogue[category][3]
        picked = [vocabulary[w] for w in words[:4]]
        link = _TITLE_LINKS[words[4] % len(_TITLE_LINKS)]
        title = f"{picked[0].capitalize()} {picked[1]} {link} {picked[2]} {picked[3]}"
        if installment > 0:
            title = f"{_FOLLOW_UP_PREFIXES[(words[5] + installment) % 5]} {title}"
        titles.append(title)
        abstracts.append(
            f"The {picked[1]} {link} the {picked[2]} drew attention to "
            f"{' and '.join(vocabulary[i] for i in extra)}."
        )
    order = np.argsort(items["number"], kind="stable")
    base = np.datetime64(config.start_date, "s")
    frame = pd.DataFrame(
        {
            "news_id": news_ids,
            "category": [catalogue[c][0] for c in items["category"]],
            "subcategory": [subcategories[s] for s in items["subcategory"]],
            "title": titles,
            "abstract": abstracts,
            "url": [f"https://feedrec.invalid/synthetic/{n}.html" for n in news_ids],
            "title_entities": "[]",
            "abstract_entities": "[]",
            "publish_time": base + items["publish"].astype("timedelta64[s]"),
            "thread": items["thread"],
            "installment": items["installment"],
            "half_life_hours": items["half_life"] / SECONDS_PER_HOUR,
            "quality": np.exp(items["log_quality"]),
        }
    )
    return frame.iloc[order].reset_index(drop=True)


# ----------------------------------------------------------------------- files

# news.tsv's column order is the reader's; the generator's frame names the id `news_id`.
NEWS_COLUMNS = ("news_id", *mind.NEWS_COLUMNS[1:])


def _news_lines(news: pd.DataFrame) -> list[str]:
    columns = [news[name].tolist() for name in NEWS_COLUMNS]
    return ["\t".join(fields) + "\n" for fields in zip(*columns, strict=True)]


def _behavior_lines(behaviors: pd.DataFrame) -> list[str]:
    lines = []
    for impression_id, user_id, time, history, candidates, labels in zip(
        behaviors["impression_id"].tolist(),
        behaviors["user_id"].tolist(),
        behaviors["time"].dt.to_pydatetime(),
        behaviors["history"].tolist(),
        behaviors["candidates"].tolist(),
        behaviors["labels"].tolist(),
        strict=True,
    ):
        shown = " ".join(f"{item}-{label}" for item, label in zip(candidates, labels, strict=True))
        fields = (str(impression_id), user_id, format_mind_time(time), " ".join(history), shown)
        lines.append("\t".join(fields) + "\n")
    return lines


def _write_atomically(contents: dict[Path, list[str]]) -> None:
    """Write every file under a temporary name, then rename them all into place."""
    temporary: dict[Path, Path] = {}
    token = uuid.uuid4().hex
    try:
        for path, lines in contents.items():
            temporary[path] = path.with_name(f".{path.name}.{token}.tmp")
            with open(temporary[path], "x", encoding="utf-8", newline="\n") as file:
                file.writelines(lines)
        for path, name in temporary.items():
            os.replace(name, path)
    finally:
        for name in temporary.values():
            if os.path.exists(name):
                os.unlink(name)


# ------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    """``python -m pipelines.synthetic OUT_DIR [--seed N] [--scale small|default]``."""
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.synthetic",
        description="Write a synthetic news click log in MIND format (behaviors.tsv, news.tsv).",
    )
    parser.add_argument("out_dir", help="folder to write behaviors.tsv and news.tsv into")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--scale", choices=sorted(SCALES), default="default", help="size preset")
    args = parser.parse_args(argv)
    summary = generate_mind_log(args.out_dir, seed=args.seed, scale=args.scale)
    summary.pop("config")
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
