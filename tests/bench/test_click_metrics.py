"""Click metrics: hand-computed values, scikit-learn as an oracle, a slow per-group reference, edge cases."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import label_ranking_average_precision_score, ndcg_score, roc_auc_score

from recfm.bench.metrics import click_metrics

# ---------------------------------------------------------------------------------------------
# Helpers: random grouped data and a slow, obviously-correct reference
# ---------------------------------------------------------------------------------------------


def random_groups(rng: np.random.Generator, n_groups: int, max_size: int, ties: bool, p_pos: float = 0.3):
    sizes = rng.integers(1, max_size + 1, size=n_groups)
    groups = np.repeat(rng.permutation(n_groups * 3)[:n_groups], sizes)  # arbitrary, non-contiguous ids
    labels = (rng.random(len(groups)) < p_pos).astype(np.int64)
    scores = rng.integers(0, 4, size=len(groups)).astype(float) if ties else rng.normal(size=len(groups))
    order = rng.permutation(len(groups))  # interleave the groups
    return groups[order], labels[order], scores[order]


def reference(groups, labels, scores, ks, pessimistic=False):
    """Per-group Python loops: pairwise AUC counting, sorted() with the documented tie rule."""

    def pair_auc(y, s):
        pos, neg = s[y == 1], s[y == 0]
        if len(pos) == 0 or len(neg) == 0:
            return None
        wins = sum((p > q) + 0.5 * (p == q) for p in pos for q in neg)
        return wins / (len(pos) * len(neg))

    out = {"auc": pair_auc(labels, scores)}
    aucs, ndcgs, rrs = [], {k: [] for k in ks}, []
    for g in np.unique(groups):
        idx = np.flatnonzero(groups == g)  # input order
        y, s = labels[idx], scores[idx]
        a = pair_auc(y, s)
        if a is not None:
            aucs.append(a)
        if y.sum() == 0:
            continue
        key = (lambda i: (-s[i], y[i], i)) if pessimistic else (lambda i: (-s[i], i))
        ranked = y[sorted(range(len(idx)), key=key)]
        for k in ks:
            dcg = sum(ranked[p] / math.log2(p + 2) for p in range(min(k, len(ranked))))
            idcg = sum(1 / math.log2(p + 2) for p in range(min(k, int(y.sum()))))
            ndcgs[k].append(dcg / idcg)
        rrs.append(1.0 / (int(np.argmax(ranked == 1)) + 1))
    out["gauc"] = float(np.mean(aucs)) if aucs else float("nan")
    out["gauc_groups"] = len(aucs)
    for k in ks:
        out[f"ndcg@{k}"] = float(np.mean(ndcgs[k])) if rrs else float("nan")
    out["mrr"] = float(np.mean(rrs)) if rrs else float("nan")
    return out


def assert_close(got: dict, want: dict):
    assert set(got) == set(want)
    for key in want:
        if want[key] is None or (isinstance(want[key], float) and math.isnan(want[key])):
            assert math.isnan(got[key]), key
        else:
            assert got[key] == pytest.approx(want[key], abs=1e-12), key


# ---------------------------------------------------------------------------------------------
# Hand-computed values
# ---------------------------------------------------------------------------------------------


def test_hand_computed():
    # group 7: scores 0.9(+) 0.8(-) 0.7(+) 0.1(-): ranked + - + -
    # group 3: scores 0.2(-) 0.6(+) 0.6(-): tie between the positive and a negative
    groups = np.array([7, 7, 7, 7, 3, 3, 3])
    labels = np.array([1, 0, 1, 0, 0, 1, 0])
    scores = np.array([0.9, 0.8, 0.7, 0.1, 0.2, 0.6, 0.6])
    m = click_metrics(groups, labels, scores, ks=(1, 2, 3))
    assert set(m) == {"auc", "gauc", "gauc_groups", "ndcg@1", "ndcg@2", "ndcg@3", "mrr"}
    # Global: positives 0.9, 0.7, 0.6 vs negatives 0.8, 0.1, 0.2, 0.6:
    # 0.9 beats 4; 0.7 beats 3 (0.1, 0.2, 0.6); 0.6 beats 2 and ties 1 -> (4 + 3 + 2.5) / 12
    assert m["auc"] == pytest.approx(9.5 / 12)
    # group 7: (2 + 1) / 4 = 0.75; group 3: (1 + 0.5) / 2 = 0.75
    assert m["gauc"] == pytest.approx(0.75) and m["gauc_groups"] == 2
    # group 3, stable ties: order of appearance keeps the positive (row 5) ahead of the tied negative
    # (row 6): ranked + - -. group 7: + - + -.
    d = 1 / math.log2(3)  # discount of position 2
    assert m["ndcg@1"] == pytest.approx(1.0)
    assert m["ndcg@2"] == pytest.approx((1 / (1 + d) + 1.0) / 2)
    assert m["ndcg@3"] == pytest.approx(((1 + 0.5) / (1 + d) + 1.0) / 2)
    assert m["mrr"] == pytest.approx(1.0)
    # Pessimistic ties put the tied negative first in group 3: ranked - + -
    p = click_metrics(groups, labels, scores, ks=(1, 2, 3), ties="pessimistic")
    assert p["ndcg@1"] == pytest.approx(0.5)
    assert p["ndcg@2"] == pytest.approx((1 / (1 + d) + d) / 2)
    assert p["mrr"] == pytest.approx((1 + 0.5) / 2)
    assert p["auc"] == m["auc"] and p["gauc"] == m["gauc"]


def test_mrr_is_first_positive_not_lrap():
    # One group, ranked - + - + + (scores descending): first positive at position 2 -> MRR = 1/2.
    # LRAP = mean over positives of precision at its rank = (1/2 + 2/4 + 3/5) / 3 = 0.5333...
    labels = np.array([0, 1, 0, 1, 1])
    scores = np.array([5.0, 4.0, 3.0, 2.0, 1.0])
    m = click_metrics(np.zeros(5, dtype=int), labels, scores)
    assert m["mrr"] == pytest.approx(0.5)
    lrap = label_ranking_average_precision_score(labels[None, :], scores[None, :])
    assert lrap == pytest.approx((1 / 2 + 2 / 4 + 3 / 5) / 3)
    assert m["mrr"] != pytest.approx(lrap)
    # Two groups: ranked (+ - +) and (- - - +) -> MRR = (1 + 1/4) / 2
    groups = np.array([0, 0, 0, 1, 1, 1, 1])
    labels = np.array([1, 0, 1, 0, 0, 0, 1])
    scores = np.array([3.0, 2.0, 1.0, 4.0, 3.0, 2.0, 1.0])
    assert click_metrics(groups, labels, scores)["mrr"] == pytest.approx(0.625)


def test_group_with_only_positives_or_negatives():
    groups = np.array([0, 0, 1, 1, 1, 2, 2])
    labels = np.array([1, 0, 1, 1, 1, 0, 0])  # group 1: only positives, group 2: only negatives
    scores = np.array([0.2, 0.8, 0.1, 0.5, 0.3, 0.9, 0.4])
    m = click_metrics(groups, labels, scores, ks=(1, 3))
    assert m["gauc_groups"] == 1 and m["gauc"] == pytest.approx(0.0)  # group 0 alone, ranked wrongly
    # NDCG/MRR skip group 2 (no positive); group 1 is perfect whatever the order.
    assert m["mrr"] == pytest.approx((0.5 + 1.0) / 2)
    assert m["ndcg@1"] == pytest.approx((0.0 + 1.0) / 2)
    assert m["ndcg@3"] == pytest.approx((1 / math.log2(3) + 1.0) / 2)
    assert m["auc"] == pytest.approx(roc_auc_score(labels, scores))


def test_undefined_values_are_nan():
    only_neg = click_metrics(np.array([0, 0, 1]), np.array([0, 0, 0]), np.array([0.1, 0.2, 0.3]))
    assert math.isnan(only_neg["auc"]) and math.isnan(only_neg["gauc"]) and only_neg["gauc_groups"] == 0
    assert math.isnan(only_neg["mrr"]) and math.isnan(only_neg["ndcg@5"])
    only_pos = click_metrics(np.array([0, 1]), np.array([1, 1]), np.array([0.1, 0.2]))
    assert math.isnan(only_pos["auc"]) and math.isnan(only_pos["gauc"])
    assert only_pos["mrr"] == 1.0 and only_pos["ndcg@1"] == 1.0


def test_single_group_matches_global_auc():
    rng = np.random.default_rng(3)
    labels = np.array([1, 0] * 20)
    scores = rng.normal(size=40)
    m = click_metrics(np.zeros(40, dtype=int), labels, scores)
    assert m["gauc"] == pytest.approx(m["auc"]) == pytest.approx(roc_auc_score(labels, scores))
    assert m["gauc_groups"] == 1


def test_all_ties():
    # Constant scores: AUC and GAUC are exactly one half; NDCG/MRR follow the input order.
    groups = np.array([0, 0, 0, 1, 1, 1])
    labels = np.array([0, 0, 1, 1, 0, 0])
    m = click_metrics(groups, labels, np.zeros(6))
    assert m["auc"] == 0.5 and m["gauc"] == 0.5
    assert m["mrr"] == pytest.approx((1 / 3 + 1) / 2)
    p = click_metrics(groups, labels, np.zeros(6), ties="pessimistic")
    assert p["mrr"] == pytest.approx(1 / 3) and p["ndcg@1"] == 0.0


def test_group_labels_of_any_dtype_and_order():
    rng = np.random.default_rng(0)
    groups, labels, scores = random_groups(rng, 30, 8, ties=False)
    base = click_metrics(groups, labels, scores)
    as_str = click_metrics(np.array([f"user-{g}" for g in groups]), labels, scores)
    assert_close(as_str, base)
    perm = rng.permutation(len(groups))  # tie-free scores: row order cannot matter
    assert_close(click_metrics(groups[perm], labels[perm], scores[perm]), base)
    # bool labels and float32 scores are accepted
    assert_close(click_metrics(groups, labels.astype(bool), scores.astype(np.float32).astype(float)),
                 click_metrics(groups, labels, scores.astype(np.float32)))


# ---------------------------------------------------------------------------------------------
# scikit-learn oracle and the slow reference, over many group sizes
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("max_size", [1, 2, 5, 21])
def test_against_sklearn(seed, max_size):
    rng = np.random.default_rng(seed * 100 + max_size)
    ks = (1, 3, 5, 10)
    for ties in (False, True):
        groups, labels, scores = random_groups(rng, 40, max_size, ties=ties)
        m = click_metrics(groups, labels, scores, ks=ks)
        if 0 < labels.sum() < len(labels):
            assert m["auc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)  # sklearn: ties = 1/2
        aucs = [
            roc_auc_score(labels[groups == g], scores[groups == g])
            for g in np.unique(groups)
            if 0 < labels[groups == g].sum() < (groups == g).sum()
        ]
        assert m["gauc_groups"] == len(aucs)
        if aucs:
            assert m["gauc"] == pytest.approx(np.mean(aucs), abs=1e-12)
        if ties:  # sklearn's ndcg_score averages over tied orderings: compare on tie-free scores only
            continue
        for k in ks:
            per_group = []
            for g in np.unique(groups):
                y, s = labels[groups == g], scores[groups == g]
                if y.sum() == 0:
                    continue
                # sklearn needs more than one candidate; a lone positive has NDCG 1
                per_group.append(ndcg_score(y[None, :], s[None, :], k=k) if len(y) > 1 else 1.0)
            assert m[f"ndcg@{k}"] == pytest.approx(np.mean(per_group), abs=1e-12)


@settings(max_examples=60, deadline=None)
@given(
    data=st.lists(
        st.tuples(st.integers(0, 6), st.integers(0, 1), st.integers(-3, 3)), min_size=1, max_size=40
    ),
    ks=st.lists(st.integers(1, 8), min_size=1, max_size=3),
    pessimistic=st.booleans(),
)
def test_matches_reference_property(data, ks, pessimistic):
    groups, labels, scores = (np.array(x) for x in zip(*data))
    scores = scores.astype(float)
    m = click_metrics(groups, labels, scores, ks=ks, ties="pessimistic" if pessimistic else "stable")
    want = reference(groups, labels, scores, sorted(set(ks)), pessimistic)
    if want["auc"] is None:
        want["auc"] = float("nan")
    assert_close(m, want)


def test_fast_on_100k_pairs():
    rng = np.random.default_rng(1)
    groups = np.repeat(np.arange(10_000), 10)
    labels = np.tile(np.array([1] + [0] * 9), 10_000)
    scores = rng.normal(size=len(groups)) + labels
    click_metrics(groups, labels, scores)  # warm-up
    t0 = time.perf_counter()
    m = click_metrics(groups, labels, scores)
    assert time.perf_counter() - t0 < 2.0  # a few ms in practice; generous on a busy machine
    assert 0.7 < m["auc"] < 0.8 and m["gauc_groups"] == 10_000


# ---------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "groups, labels, scores, match",
    [
        ([0, 0], [1, 0], [0.1], "equal lengths"),
        ([], [], [], "no pairs"),
        ([0, 0], [1, 2], [0.1, 0.2], "0 or 1"),
        ([0, 0], [1, -1], [0.1, 0.2], "0 or 1"),
        ([0, 0], [1, 0.5], [0.1, 0.2], "0 or 1"),
        ([0, 0], ["1", "0"], [0.1, 0.2], "numeric"),
        ([0, 0], [1, 0], [0.1, float("nan")], "finite"),
        ([0, 0], [1, 0], [0.1, float("inf")], "finite"),
        ([[0, 0]], [[1, 0]], [[0.1, 0.2]], "1-D"),
    ],
)
def test_validation(groups, labels, scores, match):
    with pytest.raises(ValueError, match=match):
        click_metrics(np.array(groups), np.array(labels), np.array(scores))


def test_validation_of_options():
    with pytest.raises(ValueError, match="positive cutoffs"):
        click_metrics(np.array([0, 0]), np.array([1, 0]), np.array([0.1, 0.2]), ks=(0, 5))
    with pytest.raises(ValueError, match="ties"):
        click_metrics(np.array([0, 0]), np.array([1, 0]), np.array([0.1, 0.2]), ties="random")
