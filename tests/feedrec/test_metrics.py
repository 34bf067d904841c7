import numpy as np
import pytest
from sklearn.metrics import ndcg_score, roc_auc_score

from feedrec.metrics import break_ties, impression_metrics, per_impression_metrics


def mind_reference(y_true, y_score):
    """The MIND evaluation script's formulas, one impression at a time."""
    order = np.argsort(y_score)[::-1]
    ranked = np.take(y_true, order)
    mrr = np.sum(ranked / (np.arange(len(ranked)) + 1)) / np.sum(y_true)

    def dcg(labels, k):
        labels = labels[:k]
        return np.sum((2**labels - 1) / np.log2(np.arange(len(labels)) + 2))

    ndcg = {k: dcg(ranked, k) / dcg(np.sort(y_true)[::-1], k) for k in (5, 10)}
    return roc_auc_score(y_true, y_score), mrr, ndcg


def random_impressions(seed, n=40, max_c=15, ties=False):
    rng = np.random.default_rng(seed)
    scores = np.full((n, max_c), 123.0)
    labels = np.full((n, max_c), -1)
    for i in range(n):
        c = rng.integers(2, max_c + 1)
        lab = rng.integers(0, 2, size=c)
        lab[0], lab[1] = 1, 0  # both classes present
        rng.shuffle(lab)
        labels[i, :c] = lab
        scores[i, :c] = rng.integers(0, 3, size=c) if ties else rng.normal(size=c)
    return scores, labels


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_mind_script_and_sklearn_without_ties(seed):
    scores, labels = random_impressions(seed)
    per = per_impression_metrics(scores, labels)
    for i in range(len(scores)):
        real = labels[i] >= 0
        auc, mrr, ndcg = mind_reference(labels[i, real], scores[i, real])
        assert per["auc"][i] == pytest.approx(auc)
        assert per["mrr"][i] == pytest.approx(mrr)
        assert per["ndcg@5"][i] == pytest.approx(ndcg[5])
        assert per["ndcg@10"][i] == pytest.approx(ndcg[10])
        # binary labels: 2**y - 1 == y, so sklearn's linear-gain nDCG agrees
        assert per["ndcg@10"][i] == pytest.approx(
            ndcg_score([labels[i, real]], [scores[i, real]], k=10)
        )


def test_auc_with_ties_matches_sklearn():
    scores, labels = random_impressions(7, ties=True)
    per = per_impression_metrics(scores, labels)
    for i in range(len(scores)):
        real = labels[i] >= 0
        assert per["auc"][i] == pytest.approx(roc_auc_score(labels[i, real], scores[i, real]))


def test_ties_give_the_expected_value_over_their_orders():
    # With many ties: nDCG@k equals sklearn's (which averages tied gains), and
    # MRR and nDCG@k equal the mean over every order of the tied candidates,
    # so where the click sits in the candidate list changes nothing.
    import itertools

    scores, labels = random_impressions(11, n=30, max_c=6, ties=True)
    per = per_impression_metrics(scores, labels, cutoffs=(3, 10))
    checked = 0
    for i in range(len(scores)):
        real = labels[i] >= 0
        score, label = scores[i, real], labels[i, real]
        if not 0 < label.sum() < label.size:
            continue
        checked += 1
        assert per["ndcg@3"][i] == pytest.approx(ndcg_score([label], [score], k=3))
        discounts = 1.0 / np.log2(np.arange(label.size) + 2.0)
        ideal = -np.sort(-label)
        runs = []
        for order in itertools.permutations(range(label.size)):
            ranked = label[sorted(order, key=lambda j: -score[j])]  # ties in this order
            mrr = (ranked / np.arange(1, label.size + 1)).sum() / label.sum()
            ndcg = [(ranked * discounts)[:k].sum() / (ideal * discounts)[:k].sum() for k in (3, 10)]
            runs.append([mrr, *ndcg])
        expected = np.mean(runs, axis=0)
        assert per["mrr"][i] == pytest.approx(expected[0])
        assert per["ndcg@3"][i] == pytest.approx(expected[1])
        assert per["ndcg@10"][i] == pytest.approx(expected[2])
    assert checked >= 10


def test_a_click_listed_first_gains_nothing_from_a_tie():
    tied = impression_metrics(np.array([[0.5, 0.5, 0.5, 0.1]]), np.array([[1, 0, 0, 0]]))
    assert tied["mrr"] == pytest.approx((1 + 1 / 2 + 1 / 3) / 3)
    assert tied["ndcg@5"] == pytest.approx((1 + 1 / np.log2(3) + 1 / np.log2(4)) / 3)
    moved = impression_metrics(np.array([[0.5, 0.5, 0.5, 0.1]]), np.array([[0, 0, 1, 0]]))
    assert moved == tied


def test_a_real_candidate_at_minus_infinity_ranks_above_the_padding():
    # Padding is scored -inf inside; a real -inf score (a baseline that rules
    # an item out) must still rank among the real candidates, however many
    # padding slots follow it.
    scores = np.array([[-np.inf, 0.0], [0.0, -np.inf]])
    labels = np.array([[1, 0], [0, 1]])
    plain = impression_metrics(scores, labels, cutoffs=(1, 2))
    assert plain["auc"] == 0.0 and plain["mrr"] == pytest.approx(0.5)
    for pad in (1, 3):
        padded = impression_metrics(
            np.pad(scores, ((0, 0), (0, pad))),
            np.pad(labels, ((0, 0), (0, pad)), constant_values=-1),
            cutoffs=(1, 2),
        )
        assert padded == plain


def test_padding_is_ignored_whatever_its_score():
    scores, labels = random_impressions(3)
    other = np.where(labels < 0, 1e9, scores)
    assert impression_metrics(scores, labels) == impression_metrics(other, labels)


def test_hand_computed_values():
    # clicked item ranked 2nd of 3: AUC 1/2, MRR 1/2, nDCG = (1/log2 3) / 1
    result = impression_metrics(np.array([[0.5, 0.9, 0.1]]), np.array([[1, 0, 0]]))
    assert result["auc"] == pytest.approx(0.5)
    assert result["mrr"] == pytest.approx(0.5)
    assert result["ndcg@5"] == pytest.approx(1 / np.log2(3))


def test_single_class_impressions_are_skipped_and_counted():
    scores = np.array([[0.9, 0.1], [0.3, 0.2]])
    labels = np.array([[1, 0], [1, 1]])
    result = impression_metrics(scores, labels)
    assert result["impressions"] == 1
    assert result["skipped_impressions"] == 1
    assert result["auc"] == 1.0


def test_bad_labels_and_shapes_are_named():
    with pytest.raises(ValueError, match="labels.*Received: \\[2\\]"):
        impression_metrics(np.zeros((1, 2)), np.array([[1, 2]]))
    with pytest.raises(ValueError, match="same shape"):
        impression_metrics(np.zeros((1, 2)), np.zeros((1, 3)))


def test_break_ties_keeps_order_of_distinct_scores():
    scores = np.array([[1.0, 1.0, 2.0, 0.0]])
    broken = break_ties(scores, seed=0)
    assert len(np.unique(broken)) == 4
    assert np.argmax(broken) == 2 and np.argmin(broken) == 3
