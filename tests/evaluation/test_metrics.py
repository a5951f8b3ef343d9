"""Ranking metrics: hand-computed values, a slow reference implementation, and scikit-learn as an oracle."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import label_ranking_average_precision_score, ndcg_score, top_k_accuracy_score

from recfm.evaluation.metrics import metrics_from_ranks, ranks_in_topk

# ---------------------------------------------------------------------------------------------
# Hand-computed values
# ---------------------------------------------------------------------------------------------


def test_hand_computed_ranks():
    # 7 cases; rank -1 is a miss, 25 lies beyond every cutoff.
    m = metrics_from_ranks(np.array([0, 1, 4, -1, 9, 19, 25]), ks=(5, 10, 20))
    assert set(m) == {"hr@5", "ndcg@5", "hr@10", "ndcg@10", "hr@20", "ndcg@20", "mrr"}
    # HR@K: hits {0,1,4} / {0,1,4,9} / {0,1,4,9,19}
    assert m["hr@5"] == pytest.approx(3 / 7) == pytest.approx(0.42857142857142855)
    assert m["hr@10"] == pytest.approx(0.5714285714285714)
    assert m["hr@20"] == pytest.approx(0.7142857142857143)
    # NDCG@5 = (1/log2(2) + 1/log2(3) + 1/log2(6)) / 7 = (1 + 0.63092975 + 0.38685281) / 7
    assert m["ndcg@5"] == pytest.approx(0.2882546515437142, abs=1e-12)
    # NDCG@10 adds 1/log2(11) = 0.28906483
    assert m["ndcg@10"] == pytest.approx(0.32954962673198385, abs=1e-12)
    # NDCG@20 adds 1/log2(21) = 0.22767025
    assert m["ndcg@20"] == pytest.approx(0.36207394797440573, abs=1e-12)
    # MRR = (1 + 1/2 + 1/5 + 0 + 1/10 + 1/20 + 1/26) / 7 (every returned position counts, 25 included)
    assert m["mrr"] == pytest.approx(0.2697802197802198, abs=1e-12)
    assert m["mrr"] == pytest.approx((1 + 1 / 2 + 1 / 5 + 1 / 10 + 1 / 20 + 1 / 26) / 7)


def test_single_cases():
    assert metrics_from_ranks([0], ks=[1]) == {"hr@1": 1.0, "ndcg@1": 1.0, "mrr": 1.0}
    assert metrics_from_ranks([-1], ks=[1, 5]) == {"hr@1": 0.0, "ndcg@1": 0.0, "hr@5": 0.0, "ndcg@5": 0.0, "mrr": 0.0}
    m = metrics_from_ranks([1], ks=[1, 2])
    assert m["hr@1"] == 0.0 and m["ndcg@1"] == 0.0
    assert m["hr@2"] == 1.0 and m["ndcg@2"] == pytest.approx(1 / math.log2(3)) == pytest.approx(0.6309297535714575)
    assert m["mrr"] == 0.5
    # rank == K is a miss at K (0-based ranks)
    m = metrics_from_ranks([5], ks=[5, 6])
    assert m["hr@5"] == 0.0 and m["hr@6"] == 1.0


def test_ks_order_does_not_matter():
    ranks = np.array([3, 0, -1, 7])
    assert metrics_from_ranks(ranks, ks=[10, 1, 5]) == metrics_from_ranks(ranks, ks=(1, 5, 10))


def test_empty_ranks_raise():
    with pytest.raises(ValueError, match="no evaluation cases"):
        metrics_from_ranks(np.array([], dtype=np.int64))


# ---------------------------------------------------------------------------------------------
# ranks_in_topk
# ---------------------------------------------------------------------------------------------


def test_ranks_in_topk_positions_and_absent_targets():
    top = np.array(
        [
            [7, 3, 9, 1],
            [7, 3, 9, 1],
            [2, 4, 6, 8],
            [5, 0, 0, 0],  # fewer allowed items than k: the row ends in padding 0
            [0, 0, 0, 0],  # nothing allowed at all
        ]
    )
    targets = np.array([7, 1, 3, 5, 5])
    ranks = ranks_in_topk(top, targets)
    assert ranks.dtype == np.int64
    assert ranks.tolist() == [0, 3, -1, 0, -1]


def test_ranks_in_topk_padding_never_matches_a_real_target():
    top = np.array([[4, 0, 0], [0, 0, 0]])
    assert ranks_in_topk(top, np.array([2, 1])).tolist() == [-1, -1]


def test_ranks_in_topk_empty_batch():
    assert ranks_in_topk(np.zeros((0, 5), dtype=np.int64), np.zeros(0, dtype=np.int64)).shape == (0,)


# ---------------------------------------------------------------------------------------------
# Property: agrees with an obvious per-case implementation
# ---------------------------------------------------------------------------------------------


def slow_metrics(ranks: list[int], ks: list[int]) -> dict[str, float]:
    out = {}
    for k in sorted(set(ks)):
        hr = ndcg = 0.0
        for r in ranks:
            if r != -1 and r < k:
                hr += 1.0
                ndcg += 1.0 / math.log2(r + 2)
        out[f"hr@{k}"] = hr / len(ranks)
        out[f"ndcg@{k}"] = ndcg / len(ranks)
    out["mrr"] = sum(1.0 / (r + 1) for r in ranks if r != -1) / len(ranks)
    return out


@settings(max_examples=150, deadline=None)
@given(
    ranks=st.lists(st.integers(min_value=-1, max_value=60), min_size=1, max_size=40),
    ks=st.lists(st.integers(min_value=1, max_value=70), min_size=1, max_size=5, unique=True),
)
def test_metrics_match_slow_reference(ranks, ks):
    fast = metrics_from_ranks(np.array(ranks), ks)
    slow = slow_metrics(ranks, ks)
    assert fast.keys() == slow.keys()
    for key in slow:
        assert fast[key] == pytest.approx(slow[key], rel=1e-12, abs=1e-12), key
    for key, v in fast.items():
        assert 0.0 <= v <= 1.0
    # monotone in K
    kk = sorted(ks)
    for a, b in zip(kk, kk[1:]):
        assert fast[f"hr@{a}"] <= fast[f"hr@{b}"] and fast[f"ndcg@{a}"] <= fast[f"ndcg@{b}"] + 1e-15


def slow_rank_of(row: list[int], target: int) -> int:
    for j, item in enumerate(row):
        if item == target:
            return j
    return -1


@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_ranks_in_topk_matches_slow_reference(data):
    n_items = data.draw(st.integers(min_value=1, max_value=30))
    k = data.draw(st.integers(min_value=1, max_value=n_items))
    b = data.draw(st.integers(min_value=1, max_value=8))
    rows, targets = [], []
    for _ in range(b):
        real = data.draw(st.lists(st.integers(1, n_items), min_size=0, max_size=k, unique=True))
        rows.append(real + [0] * (k - len(real)))  # a list with distinct items, padded with 0
        targets.append(data.draw(st.integers(1, n_items)))
    got = ranks_in_topk(np.array(rows, dtype=np.int64), np.array(targets))
    assert got.tolist() == [slow_rank_of(r, t) for r, t in zip(rows, targets)]


# ---------------------------------------------------------------------------------------------
# Oracle: scikit-learn on full score matrices
# ---------------------------------------------------------------------------------------------


def _ranks_from_scores(scores: np.ndarray, targets: np.ndarray, depth: int) -> np.ndarray:
    top = np.argsort(-scores, axis=1, kind="stable")[:, :depth]
    return ranks_in_topk(top, targets)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_against_sklearn_on_full_score_matrices(seed):
    rng = np.random.default_rng(seed)
    n_cases, n_items = 300, 50
    # a random permutation per row: distinct scores, so there are no ties to break
    scores = np.argsort(rng.random((n_cases, n_items)), axis=1).astype(np.float64) + rng.random((n_cases, 1))
    targets = rng.integers(0, n_items, size=n_cases)
    onehot = np.zeros((n_cases, n_items))
    onehot[np.arange(n_cases), targets] = 1.0
    ks = [1, 5, 10, 20]

    ranks = _ranks_from_scores(scores, targets, depth=n_items)
    assert (ranks >= 0).all()
    m = metrics_from_ranks(ranks, ks)
    for k in ks:
        assert m[f"ndcg@{k}"] == pytest.approx(ndcg_score(onehot, scores, k=k), abs=1e-12)
        assert m[f"hr@{k}"] == pytest.approx(top_k_accuracy_score(targets, scores, k=k, labels=np.arange(n_items)), abs=1e-12)
    # True reciprocal rank: 1 / (1 + number of items scored above the target), computed by hand.
    above = (scores > scores[np.arange(n_cases), targets][:, None]).sum(axis=1)
    assert m["mrr"] == pytest.approx(np.mean(1.0 / (above + 1)), abs=1e-12)
    # With exactly one relevant item per case and an untruncated list this coincides with LRAP.
    assert m["mrr"] == pytest.approx(label_ranking_average_precision_score(onehot, scores), abs=1e-12)

    # Truncating the list (depth 20) leaves HR/NDCG at K <= 20 unchanged; MRR becomes MRR@20:
    # targets beyond the list count 0, not their reciprocal rank.
    ranks20 = _ranks_from_scores(scores, targets, depth=20)
    m20 = metrics_from_ranks(ranks20, ks)
    for k in ks:
        assert m20[f"hr@{k}"] == m[f"hr@{k}"] and m20[f"ndcg@{k}"] == m[f"ndcg@{k}"]
    assert m20["mrr"] == pytest.approx(np.mean(np.where(above < 20, 1.0 / (above + 1), 0.0)), abs=1e-12)
    assert m20["mrr"] < m["mrr"]
