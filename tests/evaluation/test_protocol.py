"""evaluate() and Protocol with a hand-made ScoringRecommender whose scores are fixed in advance."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from recfm.data.split import EvalCases
from recfm.evaluation.metrics import metrics_from_ranks
from recfm.evaluation.protocol import Protocol, evaluate
from recfm.recommender import ScoringRecommender


class FixedScores(ScoringRecommender):
    """Scores looked up by history: ``table[tuple(history)]`` is a vector over items 0..n_items."""

    def __init__(self, n_items: int, table: dict[tuple, np.ndarray] | None = None, default: np.ndarray | None = None):
        self.n_items = n_items
        self.table = table or {}
        self.default = default
        self.calls: list[tuple[int, int, bool]] = []  # (batch, k, exclude given)

    def score(self, histories):
        rows = [self.table.get(tuple(int(i) for i in h), self.default) for h in histories]
        return torch.tensor(np.stack(rows), dtype=torch.float64)

    def recommend(self, histories, k, exclude=None):
        self.calls.append((len(histories), k, exclude is not None))
        return super().recommend(histories, k, exclude)


def make_cases(histories: list[list[int]], targets: list[int]) -> EvalCases:
    return EvalCases(
        users=np.arange(len(targets), dtype=np.int64),
        histories=[np.asarray(h, dtype=np.int64) for h in histories],
        targets=np.asarray(targets, dtype=np.int64),
    )


# Six items. Column 0 (padding) gets the highest score of all and must still never be recommended.
# Full order by score: 2, 3, 4, 6, 5, 1.
SCORES6 = np.array([100.0, 0.1, 0.9, 0.8, 0.7, 0.2, 0.5])
CASES6 = make_cases(
    histories=[[2, 3], [4], [1], [5, 6]],
    targets=[4, 4, 1, 1],
)


def strip(m: dict) -> dict:
    return {k: v for k, v in m.items() if k != "eval_seconds"}


def test_the_scoring_adapter_ranks_by_score_skips_padding_and_excludes():
    model = FixedScores(6, default=SCORES6)
    top = model.recommend([[1], [1]], k=4, exclude=[set(), {3, 6}])
    assert top.items.tolist() == [[2, 3, 4, 6], [2, 4, 5, 1]]  # column 0 scores highest and never appears
    np.testing.assert_allclose(top.scores[0], [0.9, 0.8, 0.7, 0.5])


def test_recommend_lists_with_and_without_exclusion():
    model = FixedScores(6, default=SCORES6)
    top = model.recommend([[2, 3], [1]], 6)
    assert top.items.tolist() == [[2, 3, 4, 6, 5, 1]] * 2
    assert top.scores.shape == (2, 6)
    top = model.recommend([[2, 3], [1]], 6, exclude=[{2, 3}, {1, 2, 3, 4, 5, 6}])
    assert top.items.tolist() == [[4, 6, 5, 1, 0, 0], [0, 0, 0, 0, 0, 0]]  # padding only where nothing is left
    assert np.isneginf(top.scores[0, 4:]).all() and np.isneginf(top.scores[1]).all()
    # k above the catalog size is clipped to it
    assert model.recommend([[1]], 50).items.tolist() == [[2, 3, 4, 6, 5, 1]]


def test_padding_item_is_never_recommended():
    rng = np.random.default_rng(0)
    n_items = 30
    model = FixedScores(n_items, default=np.concatenate([[1e9], rng.random(n_items)]))
    for k in (1, 5, n_items):
        top = model.recommend([[1], [2, 3]], k)
        assert (top.items != 0).all()
        assert (top.items >= 1).all() and (top.items <= n_items).all()
        assert all(len(set(row)) == k for row in top.items.tolist())


def test_recommend_does_not_write_into_the_models_tensor():
    """A model may return a tensor it keeps (cached scores); masking must act on a copy."""

    class Cached(ScoringRecommender):
        n_items = 6

        def __init__(self):
            self.cached = torch.tensor(np.stack([SCORES6, SCORES6]), dtype=torch.float32)  # .float() is then a no-op

        def score(self, histories):
            return self.cached

    model = Cached()
    before = model.cached.clone()
    first = model.recommend([[2], [3]], 6, exclude=[{2}, {3}]).items
    assert torch.equal(model.cached, before)
    assert model.recommend([[2], [3]], 6, exclude=[{2}, {3}]).items.tolist() == first.tolist()


def test_evaluate_hand_computed_without_exclusion():
    model = FixedScores(6, default=SCORES6)
    m = evaluate(model, CASES6, Protocol(ks=[1, 3], selection_metric="ndcg@3", depth=6))
    # ranks: target 4 at 2, target 4 at 2, target 1 at 5, target 1 at 5
    assert strip(m) == pytest.approx(
        {"hr@1": 0.0, "ndcg@1": 0.0, "hr@3": 0.5, "ndcg@3": 2 * (1 / math.log2(4)) / 4, "mrr": (1 / 3 + 1 / 3 + 1 / 6 + 1 / 6) / 4, "cases": 4}
    )
    assert m["ndcg@3"] == pytest.approx(0.25) and m["mrr"] == pytest.approx(0.25)
    assert m["cases"] == 4 and isinstance(m["eval_seconds"], float)
    assert model.calls == [(4, 6, False)]


def test_evaluate_hand_computed_with_exclusion():
    model = FixedScores(6, default=SCORES6)
    m = evaluate(model, CASES6, Protocol(ks=[1, 3], selection_metric="ndcg@3", depth=6, exclude_history=True))
    # case 0: 2,3 removed -> target 4 first; case 1: target 4 is in the history -> miss;
    # case 2: target 1 in the history -> miss; case 3: 5,6 removed -> order 2,3,4,1 -> rank 3.
    assert strip(m) == pytest.approx(
        {"hr@1": 0.25, "ndcg@1": 0.25, "hr@3": 0.25, "ndcg@3": 0.25, "mrr": (1 + 1 / 4) / 4, "cases": 4}
    )
    assert model.calls == [(4, 6, True)]


def test_default_depth_is_largest_cutoff_and_bounds_mrr():
    model = FixedScores(6, default=SCORES6)
    protocol = Protocol(ks=[1, 3], selection_metric="ndcg@3")
    assert protocol.list_depth == 3
    m = evaluate(model, CASES6, protocol)
    # ranks 2, 2 are in the 3-item list; the two rank-5 targets are beyond it and count 0 in MRR@3
    assert m["mrr"] == pytest.approx((1 / 3 + 1 / 3) / 4)
    assert m["hr@3"] == 0.5
    assert model.calls == [(4, 3, False)]
    # depth beyond the catalog behaves like the full catalog
    deep = evaluate(FixedScores(6, default=SCORES6), CASES6, Protocol(ks=[1, 3], selection_metric="ndcg@3", depth=1000))
    assert strip(deep) == strip(evaluate(FixedScores(6, default=SCORES6), CASES6, Protocol(ks=[1, 3], selection_metric="ndcg@3", depth=6)))


@pytest.mark.parametrize(
    "kwargs",
    [{"ks": [5, 10, 20], "depth": 10}, {"ks": [5], "depth": 4}, {"ks": []}, {"ks": [0, 5]}, {"batch_size": 0}, {"depth": 0}, {"bogus": 1}],
)
def test_invalid_protocols_are_rejected(kwargs):
    with pytest.raises(ValidationError):
        Protocol(**kwargs)


def test_describe():
    p = Protocol(ks=[10, 1], exclude_history=True, depth=50, selection_metric="hr@10")
    d = p.describe()
    assert d == {
        "split": "leave-one-out (last item test, second-to-last validation)",
        "ranking": "full ranking over all items, no sampled negatives",
        "ks": [10, 1],
        "exclude_history": True,
        "mrr_depth": 50,
        "selection": "validation hr@10; test scored once",
        "cases": "all",
    }
    json.dumps(d)  # goes into metrics.json
    default = Protocol().describe()
    assert default["ks"] == [5, 10, 20] and default["mrr_depth"] == 20 and default["exclude_history"] is False
    assert "ndcg@10" in default["selection"]


# ---------------------------------------------------------------------------------------------
# Random full-ranking case, against an explicit rank count
# ---------------------------------------------------------------------------------------------

N_ITEMS = 40


def random_setup(seed: int = 0, n_cases: int = 57):
    rng = np.random.default_rng(seed)
    histories, targets, table = [], [], {}
    while len(histories) < n_cases:
        h = tuple(int(x) for x in rng.integers(1, N_ITEMS + 1, size=rng.integers(1, 6)))
        if h in table:
            continue
        # distinct scores: a permutation; the padding column gets the top score
        table[h] = np.concatenate([[N_ITEMS + 10.0], rng.permutation(N_ITEMS).astype(np.float64)])
        histories.append(list(h))
        # about a third of the targets repeat a history item
        targets.append(int(rng.choice(h)) if rng.random() < 0.3 else int(rng.integers(1, N_ITEMS + 1)))
    return table, make_cases(histories, targets)


def expected_ranks(table, cases: EvalCases, exclude: bool, depth: int) -> np.ndarray:
    ranks = []
    for h, t in zip(cases.histories, cases.targets):
        s = table[tuple(h.tolist())]
        allowed = [i for i in range(1, N_ITEMS + 1) if not (exclude and i in set(h.tolist()))]
        if t not in allowed:
            ranks.append(-1)
            continue
        r = sum(1 for i in allowed if s[i] > s[t])  # items strictly above the target, over ALL items
        ranks.append(r if r < depth else -1)
    return np.asarray(ranks)


@pytest.mark.parametrize("exclude", [False, True])
@pytest.mark.parametrize("depth", [None, N_ITEMS])
def test_full_ranking_matches_explicit_rank_count(exclude, depth):
    table, cases = random_setup()
    protocol = Protocol(ks=[1, 5, 10, 20], exclude_history=exclude, depth=depth)
    m = evaluate(FixedScores(N_ITEMS, table), cases, protocol)
    want = metrics_from_ranks(expected_ranks(table, cases, exclude, protocol.list_depth), protocol.ks)
    assert strip(m) == pytest.approx({**want, "cases": len(cases)}, abs=1e-12)


def test_exclusion_changes_exactly_the_expected_cases():
    table, cases = random_setup(seed=3)
    on = expected_ranks(table, cases, True, N_ITEMS)
    off = expected_ranks(table, cases, False, N_ITEMS)
    in_hist = np.array([t in set(h.tolist()) for h, t in zip(cases.histories, cases.targets)])
    assert in_hist.any() and (~in_hist).any()
    assert (on[in_hist] == -1).all()  # a target seen before is a miss with exclusion
    assert (on[~in_hist] <= off[~in_hist]).all()  # otherwise it can only move up
    p_on = Protocol(ks=[5], depth=N_ITEMS, exclude_history=True, selection_metric="ndcg@5")
    p_off = Protocol(ks=[5], depth=N_ITEMS, selection_metric="ndcg@5")
    assert evaluate(FixedScores(N_ITEMS, table), cases, p_on)["mrr"] == pytest.approx(metrics_from_ranks(on, [5])["mrr"])
    assert evaluate(FixedScores(N_ITEMS, table), cases, p_off)["mrr"] == pytest.approx(metrics_from_ranks(off, [5])["mrr"])


@pytest.mark.parametrize("exclude", [False, True])
def test_batch_size_does_not_change_results(exclude):
    table, cases = random_setup(seed=1)
    results, seen = [], []
    for bs in (1, 2, 7, 56, 57, 1000):
        model = FixedScores(N_ITEMS, table)
        progress: list[int] = []
        m = evaluate(model, cases, Protocol(batch_size=bs, exclude_history=exclude, depth=N_ITEMS), progress=progress.append)
        results.append(strip(m))
        assert sum(progress) == len(cases)
        assert [c[0] for c in model.calls] == progress
        assert max(progress) == min(bs, len(cases))
        seen.append(len(model.calls))
    assert all(r == results[0] for r in results)
    assert seen == [57, 29, 9, 2, 1, 1]


def test_subset_cases():
    table, cases = random_setup(seed=2)
    sub = cases.subset(slice(10, 20))
    assert len(sub) == 10 and sub.targets.tolist() == cases.targets[10:20].tolist()
    m = evaluate(FixedScores(N_ITEMS, table), sub, Protocol(depth=N_ITEMS))
    want = metrics_from_ranks(expected_ranks(table, sub, False, N_ITEMS), [5, 10, 20])
    assert strip(m) == pytest.approx({**want, "cases": 10})


def test_no_cases_raises():
    with pytest.raises(ValueError, match="no evaluation cases"):
        evaluate(FixedScores(6, default=SCORES6), make_cases([], []), Protocol())


def test_selection_metric_must_be_a_computed_metric():
    with pytest.raises(ValueError, match="selection_metric"):
        Protocol(ks=[5, 20], selection_metric="ndcg@10")
    assert Protocol(ks=[5, 20], selection_metric="hr@20").selection_metric == "hr@20"


def test_max_cases_samples_the_same_cases_every_time_and_is_described():
    cases = EvalCases(users=np.arange(1, 11), histories=[np.array([1])] * 10, targets=np.arange(1, 11))
    assert Protocol().sample(cases) is cases and Protocol(max_cases=10).sample(cases) is cases
    a, b = Protocol(max_cases=4).sample(cases), Protocol(max_cases=4).sample(cases)
    assert len(a) == 4 and a.users.tolist() == b.users.tolist() == sorted(set(a.users.tolist()))
    assert set(a.targets.tolist()) == set(a.users.tolist())  # whole cases, not mixed rows
    assert Protocol(max_cases=4).describe()["cases"].startswith("seeded sample of at most 4")
    assert Protocol().describe()["cases"] == "all"
    with pytest.raises(ValidationError):
        Protocol(max_cases=0)
