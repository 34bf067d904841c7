import math

import numpy as np
import pytest
from sklearn.metrics import ndcg_score

from feedrec.next_item import (
    FULL,
    evaluate_next_item,
    exclusion_lists,
    exclusion_mask,
    full_ranks,
    metric_keys,
    popularity_scorer,
    random_scorer,
    ranking_metrics,
    recent_popularity_scorer,
    sample_negatives,
    sampled_protocol,
    sampled_ranks,
)

# ---------------------------------------------------------------- ranks by hand


def test_full_rank_excludes_history_padding_and_oov():
    # items 0 (padding) and 1 (OOV) score highest but are never ranked
    scores = np.array([[9.0, 9.0, 0.9, 0.5, 0.7, 0.1]])
    target = np.array([3])
    assert full_ranks(scores, target).tolist() == [3.0]  # items 2 and 4 beat it
    history = exclusion_mask([[2]], 6)
    assert full_ranks(scores, target, history).tolist() == [2.0]  # only item 4 left


def test_full_rank_keeps_a_target_that_is_also_in_the_history():
    scores = np.array([[0.0, 0.0, 0.9, 0.5, 0.7]])
    excluded = exclusion_mask([[3, 2]], 5)
    assert full_ranks(scores, np.array([3]), excluded).tolist() == [2.0]


def test_ties_count_against_the_target():
    scores = np.array([[0.0, 0.0, 0.5, 0.5, 0.5, 0.1]])
    assert full_ranks(scores, np.array([3])).tolist() == [3.0]
    constant = np.zeros((1, 6))
    assert full_ranks(constant, np.array([2])).tolist() == [4.0]  # the worst of 4 items


def test_unrankable_targets_are_misses():
    scores = np.random.default_rng(0).random((3, 5))
    ranks = full_ranks(scores, np.array([1, 0, 7]))
    assert np.isinf(ranks).all()
    negatives = np.array([[2, 3], [2, 3], [2, 3]])
    assert np.isinf(sampled_ranks(scores, np.array([1, 0, 7]), negatives)).all()


def test_nan_scores_are_an_error_not_a_perfect_rank():
    # NaN >= x is False: unchecked, a NaN target would rank first and a NaN rival never win
    scores = np.array([[np.nan, np.nan, 0.9, 0.5, 0.7], [0.0, 0.0, 0.2, 0.3, 0.4]])
    targets = np.array([3, 2])
    assert full_ranks(scores, targets).tolist() == [3.0, 3.0]  # NaN padding/OOV: not ranked
    scores[1, 3] = np.nan
    lists = exclusion_lists([[2], [4]], 5)
    for ranks in (
        lambda: full_ranks(scores, targets),
        lambda: full_ranks(scores, targets, lists),
        lambda: sampled_ranks(scores, targets, np.array([[2, 4], [3, 4]])),
    ):
        with pytest.raises(ValueError, match="NaN at real items in 1 of 2 rows .first: row 1"):
            ranks()


def test_sampled_rank_counts_only_its_negatives():
    scores = np.array([[0.0, 0.0, 0.9, 0.5, 0.7, 0.1, 0.6]])
    # target 3 (0.5) against negatives 2 (0.9), 5 (0.1), 6 (0.6)
    assert sampled_ranks(scores, np.array([3]), np.array([[2, 5, 6]])).tolist() == [3.0]


def test_full_rank_matches_a_python_loop():
    rng = np.random.default_rng(3)
    num_items = 30
    scores = rng.normal(size=(20, num_items))
    targets = rng.integers(2, num_items, size=20)
    history = [rng.choice(np.arange(2, num_items), size=rng.integers(0, 10)) for _ in range(20)]
    ranks = full_ranks(scores, targets, exclusion_mask(history, num_items))
    for row in range(20):
        target = targets[row]
        others = [j for j in range(2, num_items) if j != target and j not in set(history[row])]
        expected = 1 + sum(scores[row, j] >= scores[row, target] for j in others)
        assert ranks[row] == expected


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_full_rank_from_lists_equals_full_rank_from_the_mask(dtype):
    # Ties (rounded scores), repeated and out-of-range history items, targets in
    # the history, padding/OOV targets, empty histories: both forms agree.
    rng = np.random.default_rng(11)
    num_items = 40
    scores = np.round(rng.normal(size=(60, num_items)), 1).astype(dtype)
    targets = rng.integers(0, num_items + 2, size=60)
    history = [
        rng.integers(-1, num_items + 3, size=rng.integers(0, 15)).tolist() for _ in range(60)
    ]
    history[0] = []
    history[1] = [int(targets[1])] * 3
    rows = rng.permutation(60)[:45]
    from_mask = full_ranks(scores[rows], targets[rows], exclusion_mask(history, num_items, rows))
    lists = exclusion_lists(history, num_items, rows)
    from_lists = full_ranks(scores[rows], targets[rows], lists)
    np.testing.assert_array_equal(from_lists, from_mask)
    assert np.isinf(from_mask).any() and np.isfinite(from_mask).any()
    # the lists hold each row's distinct rankable items, sorted, padded with -1
    for position, row in enumerate(rows):
        expected = sorted({i for i in history[row] if 2 <= i < num_items})
        kept = lists[position][lists[position] >= 0].tolist()
        assert kept == expected


def test_exclusion_lists_of_nothing_exclude_nothing():
    scores = np.array([[0.0, 0.0, 0.9, 0.5, 0.7]])
    assert exclusion_lists(None, 5, np.array([0])).tolist() == [[-1]]
    assert full_ranks(scores, np.array([3]), exclusion_lists(None, 5, np.array([0]))).tolist() == [
        3.0
    ]
    with pytest.raises(ValueError, match="excluded.shape"):
        full_ranks(scores, np.array([3]), np.array([2, 4]))


def test_ndcg_matches_sklearn_on_the_ranked_items():
    rng = np.random.default_rng(5)
    num_items = 25
    scores = rng.normal(size=(15, num_items))
    targets = rng.integers(2, num_items, size=15)
    history = [rng.choice(np.arange(2, num_items), size=5, replace=False) for _ in range(15)]
    ranks = full_ranks(scores, targets, exclusion_mask(history, num_items))
    for row in range(15):
        kept = [j for j in range(2, num_items) if j == targets[row] or j not in history[row]]
        relevance = (np.array(kept) == targets[row]).astype(float)
        expected = ndcg_score([relevance], [scores[row, kept]], k=10)
        assert ranking_metrics(ranks[row : row + 1], cutoffs=(10,))["ndcg@10"] == pytest.approx(
            expected
        )


# ---------------------------------------------------------------- metrics by hand


def test_ranking_metrics_by_hand():
    metrics = ranking_metrics(np.array([1.0, 3.0, 11.0, np.inf]), cutoffs=(5, 10, 20))
    assert metrics["hr@5"] == 0.5
    assert metrics["ndcg@5"] == pytest.approx((1.0 + 1.0 / math.log2(4)) / 4)
    assert metrics["mrr@5"] == pytest.approx((1.0 + 1.0 / 3) / 4)
    assert metrics["hr@10"] == 0.5
    assert metrics["hr@20"] == 0.75
    assert metrics["ndcg@20"] == pytest.approx((1.0 + 0.5 + 1.0 / math.log2(12)) / 4)
    assert metrics["mrr@20"] == pytest.approx((1.0 + 1.0 / 3 + 1.0 / 11) / 4)
    assert metrics["examples"] == 4
    assert set(metric_keys((5, 10, 20))) < set(metrics)


def test_ranking_metrics_refuses_ranks_below_one():
    with pytest.raises(ValueError, match="ranks >= 1"):
        ranking_metrics(np.array([0.0, 2.0]))


def test_protocol_labels():
    assert sampled_protocol("uniform", 100) == "sampled_uniform_100"
    assert sampled_protocol("popularity", 50) == "sampled_popularity_50"
    with pytest.raises(ValueError, match="sampling='bert'"):
        sampled_protocol("bert", 100)
    with pytest.raises(ValueError, match="num_negatives=0"):
        sampled_protocol("uniform", 0)


# ---------------------------------------------------------------- negatives


def test_negatives_never_hit_target_history_or_reserved_items_and_are_distinct():
    rng = np.random.default_rng(0)
    num_items = 40
    targets = rng.integers(2, num_items, size=50)
    history = [rng.choice(np.arange(2, num_items), size=10, replace=False) for _ in range(50)]
    excluded = exclusion_mask(history, num_items)
    negatives = sample_negatives(targets, excluded, 20, np.random.default_rng(1))
    assert negatives.shape == (50, 20)
    for row in range(50):
        drawn = set(negatives[row].tolist())
        assert len(drawn) == 20
        assert targets[row] not in drawn
        assert not drawn & set(history[row].tolist())
        assert min(drawn) >= 2


def test_negatives_are_seeded_and_chunk_invariant():
    num_items = 30
    targets = np.arange(2, 22)
    excluded = np.zeros((20, num_items), dtype=bool)
    whole = sample_negatives(targets, excluded, 5, np.random.default_rng(7))
    again = sample_negatives(targets, excluded, 5, np.random.default_rng(7))
    rng = np.random.default_rng(7)
    chunked = np.concatenate(
        [sample_negatives(targets[i : i + 3], excluded[i : i + 3], 5, rng) for i in range(0, 20, 3)]
    )
    np.testing.assert_array_equal(np.sort(whole, 1), np.sort(again, 1))
    np.testing.assert_array_equal(np.sort(whole, 1), np.sort(chunked, 1))
    other = sample_negatives(targets, excluded, 5, np.random.default_rng(8))
    assert not np.array_equal(np.sort(whole, 1), np.sort(other, 1))


def test_popularity_sampling_follows_the_weights_and_uniform_does_not():
    num_items = 6
    weights = np.array([0.0, 0.0, 1.0, 2.0, 7.0, 0.0])  # item 5 never clicked
    n = 20_000
    targets = np.full(n, 5)
    excluded = np.zeros((n, num_items), dtype=bool)
    popular = sample_negatives(targets, excluded, 1, np.random.default_rng(0), weights)[:, 0]
    share = np.bincount(popular, minlength=num_items) / n
    np.testing.assert_allclose(share[2:5], [0.1, 0.2, 0.7], atol=0.015)
    assert share[5] == 0 and share[:2].sum() == 0
    uniform = sample_negatives(targets, excluded, 1, np.random.default_rng(0))[:, 0]
    share = np.bincount(uniform, minlength=num_items) / n
    np.testing.assert_allclose(share[2:5], [1 / 3] * 3, atol=0.015)


def test_too_few_items_to_draw_is_an_error():
    excluded = exclusion_mask([[2, 3]], 6)
    with pytest.raises(ValueError, match="num_negatives=2.*only 1 item"):
        sample_negatives(np.array([4]), excluded, 2, np.random.default_rng(0))


# ---------------------------------------------------------------- the driver


def _oracle(targets, num_items, sign=1.0):
    def score(rows):
        scores = np.zeros((len(rows), num_items))
        scores[np.arange(len(rows)), targets[rows]] = sign
        return scores

    return score


def test_evaluate_labels_protocols_and_shares_negatives_between_scorers():
    rng = np.random.default_rng(0)
    num_items = 150
    targets = rng.integers(2, num_items, size=12)
    history = [
        rng.choice(np.setdiff1d(np.arange(2, num_items), [target]), size=8, replace=False)
        for target in targets
    ]
    counts = rng.integers(1, 50, size=num_items).astype(float)
    scorers = {
        "best": _oracle(targets, num_items),
        "worst": _oracle(targets, num_items, sign=-1.0),
        "random": random_scorer(num_items, seed=3),
    }
    results = evaluate_next_item(
        scorers,
        targets,
        history,
        num_items,
        sampled=[("uniform", 100), ("popularity", 100)],
        item_counts=counts,
        chunk_size=5,
    )
    assert set(results) == {FULL, "sampled_uniform_100", "sampled_popularity_100"}
    for protocol in results:
        assert results[protocol]["best"]["ndcg@10"] == 1.0
        assert results[protocol]["worst"]["hr@20"] == 0.0
        assert results[protocol]["random"]["examples"] == 12
    # full: the worst possible rank is the number of items left after the history
    worst = full_ranks(scorers["worst"](np.arange(12)), targets, exclusion_mask(history, 150))
    assert worst.tolist() == [150 - 2 - 8] * 12


def test_evaluate_does_not_depend_on_chunk_size():
    rng = np.random.default_rng(1)
    num_items = 60
    targets = rng.integers(2, num_items, size=25)
    history = [rng.choice(np.arange(2, num_items), size=4, replace=False) for _ in range(25)]
    scores = rng.normal(size=(25, num_items))

    def run(chunk_size):
        return evaluate_next_item(
            {"model": lambda rows: scores[rows]},
            targets,
            history,
            num_items,
            sampled=[("uniform", 20)],
            chunk_size=chunk_size,
            seed=4,
        )

    assert run(1) == run(100)
    full = ranking_metrics(full_ranks(scores, targets, exclusion_mask(history, num_items)))
    assert run(7)[FULL]["model"]["ndcg@10"] == pytest.approx(full["ndcg@10"])


def test_evaluate_needs_counts_for_popularity_sampling():
    with pytest.raises(ValueError, match="item_counts"):
        evaluate_next_item({}, np.array([2]), None, 10, sampled=[("popularity", 3)])


# ---------------------------------------------------------------- baselines


def test_popularity_scorer_ranks_by_count_with_seeded_tie_breaking():
    counts = np.array([0, 0, 5, 9, 5, 1])
    scores = popularity_scorer(counts, seed=0)(np.arange(2))
    assert scores.shape == (2, 6)
    assert np.argsort(-scores[0])[:1].tolist() == [3]
    assert scores[0, 2] != scores[0, 4]  # the tie is broken ...
    np.testing.assert_array_equal(scores[0], scores[1])  # ... the same way for every row
    assert full_ranks(scores, np.array([3, 5])).tolist() == [1.0, 4.0]


def test_recent_popularity_counts_the_window_before_each_example():
    click_times = np.array([0, 10, 20, 30, 40, 50])
    click_items = np.array([2, 2, 3, 3, 3, 4])
    query_times = np.array([35, 51, 21, 100])
    score = recent_popularity_scorer(click_times, click_items, query_times, 5, window=20)
    counts = np.round(score(np.arange(4))).astype(int)
    # t=35: clicks at 20, 30 -> item 3 twice; t=51: 40, 50 -> items 3, 4 (30 is not > 31)
    assert counts[0].tolist() == [0, 0, 0, 2, 0]
    assert counts[1].tolist() == [0, 0, 0, 1, 1]
    assert counts[2].tolist() == [0, 0, 1, 1, 0]  # t=21: clicks at 10 and 20
    assert counts[3].tolist() == [0, 0, 0, 0, 0]
    again = np.round(score(np.array([3, 0]))).astype(int)
    np.testing.assert_array_equal(again, counts[[3, 0]])


def test_random_scorer_is_seeded():
    a = random_scorer(8, seed=1)(np.arange(3))
    b = random_scorer(8, seed=1)(np.arange(3))
    np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="num_items=2"):
        random_scorer(2)
