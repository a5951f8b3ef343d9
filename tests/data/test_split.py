"""Leave-one-out split on hand-made sequences, and leakage checks on real and synthetic data.

Leakage is checked on *positions*: every interaction gets a unique tag (its global position
+ 1) and the split is run on the tags, so a repeated item can never hide a leak.
"""

from __future__ import annotations

import numpy as np
import pytest

from recfm.baselines.pop import MostPopular, PopConfig
from recfm.data.split import LeaveOneOut, leave_one_out


def offsets_of(seqs: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    lengths = [len(s) for s in seqs]
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    items = np.asarray([i for s in seqs for i in s], dtype=np.int64)
    return offsets, items


def test_leave_one_out_hand_made():
    seqs = [
        [1, 2, 3, 4, 5],  # ordinary user
        [7, 8],  # too short: no eval cases, all items train
        [3, 3, 3],  # repeats, exactly 3 items
        [9],  # single item
        [4, 6, 4, 6],  # repeats of both targets inside the history
    ]
    split = leave_one_out(*offsets_of(seqs))
    assert [t.tolist() for t in split.train] == [[1, 2, 3], [7, 8], [3], [9], [4, 6]]
    assert split.valid.users.tolist() == [0, 2, 4]
    assert [h.tolist() for h in split.valid.histories] == [[1, 2, 3], [3], [4, 6]]
    assert split.valid.targets.tolist() == [4, 3, 4]
    assert split.test.users.tolist() == [0, 2, 4]
    assert [h.tolist() for h in split.test.histories] == [[1, 2, 3, 4], [3, 3], [4, 6, 4]]
    assert split.test.targets.tolist() == [5, 3, 6]
    assert split.train_interactions().tolist() == [1, 2, 3, 7, 8, 3, 9, 4, 6]
    assert split.valid.targets.dtype == np.int64 and split.test.users.dtype == np.int64


def test_leave_one_out_returns_copies():
    offsets, items = offsets_of([[1, 2, 3, 4]])
    split = leave_one_out(offsets, items)
    split.train[0][0] = 99
    split.test.histories[0][0] = 99
    split.valid.histories[0][1] = 99
    assert items.tolist() == [1, 2, 3, 4]


def test_leave_one_out_no_eligible_users():
    split = leave_one_out(*offsets_of([[1, 2], [3]]))
    assert len(split.valid) == 0 and len(split.test) == 0
    assert split.train_interactions().tolist() == [1, 2, 3]
    empty = leave_one_out(np.zeros(1, dtype=np.int64), np.zeros(0, dtype=np.int64))
    assert empty.train == [] and empty.train_interactions().shape == (0,)


# ---------------------------------------------------------------------------------------------
# Leakage: positions
# ---------------------------------------------------------------------------------------------


def synthetic(seed: int = 0, n_users: int = 300, n_items: int = 25) -> tuple[np.ndarray, np.ndarray]:
    """Users of length 0..15 over a small catalog, so items repeat a lot within a user."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(0, 16, size=n_users)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    items = rng.integers(1, n_items + 1, size=int(offsets[-1])).astype(np.int64)
    return offsets, items


def assert_no_positional_leak(offsets: np.ndarray, items: np.ndarray) -> None:
    n = len(items)
    tags = np.arange(1, n + 1, dtype=np.int64)  # tag = global position + 1, unique
    pos = leave_one_out(offsets, tags)
    real = leave_one_out(offsets, items)

    # The real split is the positional split read through the items: it depends on positions only.
    assert len(real.train) == len(pos.train) == len(offsets) - 1
    for r, p in zip(real.train, pos.train):
        assert r.tolist() == items[p - 1].tolist()
    for stage_r, stage_p in ((real.valid, pos.valid), (real.test, pos.test)):
        assert stage_r.users.tolist() == stage_p.users.tolist()
        assert stage_r.targets.tolist() == items[stage_p.targets - 1].tolist()
        for hr, hp in zip(stage_r.histories, stage_p.histories):
            assert hr.tolist() == items[hp - 1].tolist()

    train_positions = set(pos.train_interactions().tolist())
    valid_targets = set(pos.valid.targets.tolist())
    test_targets = set(pos.test.targets.tolist())
    assert not train_positions & valid_targets, "a validation target position is in training"
    assert not train_positions & test_targets, "a test target position is in training"
    assert not valid_targets & test_targets
    # every interaction is used exactly once as training, validation target or test target
    assert len(train_positions) + len(valid_targets) + len(test_targets) == n
    assert len(pos.train_interactions()) == len(train_positions)

    for u, h, t in zip(pos.valid.users, pos.valid.histories, pos.valid.targets):
        lo, hi = offsets[u], offsets[u + 1]
        assert t == hi - 2 + 1, "validation target is the second-to-last interaction"
        assert t not in set(h.tolist()), "validation history contains the validation target"
        assert (h < t).all(), "validation history reaches past its target"
        assert h.tolist() == list(range(lo + 1, hi - 1))
    for u, h, t in zip(pos.test.users, pos.test.histories, pos.test.targets):
        lo, hi = offsets[u], offsets[u + 1]
        assert t == hi - 1 + 1, "test target is the last interaction"
        assert t not in set(h.tolist())
        assert h.tolist() == list(range(lo + 1, hi)), "test history = everything before the test target"
    for u, tr in enumerate(pos.train):
        lo, hi = offsets[u], offsets[u + 1]
        want = range(lo + 1, hi + 1) if hi - lo < 3 else range(lo + 1, hi - 1)
        assert tr.tolist() == list(want)


def test_no_positional_leak_synthetic():
    offsets, items = synthetic()
    assert (np.diff(offsets) < 3).any() and (np.diff(offsets) >= 3).any()
    assert_no_positional_leak(offsets, items)


@pytest.mark.realdata
def test_no_positional_leak_movielens_100k(ml100k):
    assert_no_positional_leak(ml100k.offsets, ml100k.items)
    split = ml100k.split()
    assert len(split.valid) == len(split.test) == ml100k.n_users == 943  # 5-core: everyone has >= 3 items
    # the dataset's own split is this split
    ref = leave_one_out(ml100k.offsets, ml100k.items)
    assert split.test.targets.tolist() == ref.test.targets.tolist()
    assert split.train_interactions().tolist() == ref.train_interactions().tolist()
    assert len(split.train_interactions()) == ml100k.n_interactions - 2 * 943


# ---------------------------------------------------------------------------------------------
# Leakage: the model. Changing held-out targets must not change what MostPopular learns.
# ---------------------------------------------------------------------------------------------


def replace_targets(offsets: np.ndarray, items: np.ndarray, n_items: int) -> np.ndarray:
    """A copy where every validation and test target becomes a different item."""
    out = items.copy()
    for u in range(len(offsets) - 1):
        lo, hi = offsets[u], offsets[u + 1]
        if hi - lo >= 3:
            for p in (hi - 2, hi - 1):
                out[p] = out[p] % n_items + 1  # always a different valid item
    return out


def fit_pop(split: LeaveOneOut, n_items: int) -> MostPopular:
    model = MostPopular(PopConfig(), n_items)
    model.fit(split, log=lambda *_: None)
    return model


def check_pop_ignores_targets(offsets: np.ndarray, items: np.ndarray, n_items: int) -> None:
    base = fit_pop(leave_one_out(offsets, items), n_items)
    changed_items = replace_targets(offsets, items, n_items)
    assert (changed_items != items).any()
    changed = leave_one_out(offsets, changed_items)
    assert (changed.test.targets != leave_one_out(offsets, items).test.targets).all()
    other = fit_pop(changed, n_items)
    assert other.counts.shape == (n_items + 1,)
    assert np.array_equal(base.counts.numpy(), other.counts.numpy())
    # ... and recommendations are identical too
    hist = [h.tolist() for h in changed.test.histories[:50]]
    assert np.array_equal(base.recommend(hist, 10).items, other.recommend(hist, 10).items)
    # counts are exactly the training counts
    expected = np.bincount(leave_one_out(offsets, items).train_interactions(), minlength=n_items + 1)
    assert base.counts.numpy().tolist() == expected.tolist()
    # the check is not vacuous: changing a *training* interaction does change the counts
    first_train = next(lo for lo, hi in zip(offsets[:-1], offsets[1:]) if hi - lo >= 3)
    poked = items.copy()
    poked[first_train] = poked[first_train] % n_items + 1
    assert not np.array_equal(base.counts.numpy(), fit_pop(leave_one_out(offsets, poked), n_items).counts.numpy())


def test_pop_ignores_targets_synthetic():
    offsets, items = synthetic(seed=1)
    check_pop_ignores_targets(offsets, items, n_items=25)


@pytest.mark.realdata
def test_pop_ignores_targets_movielens_100k(ml100k):
    check_pop_ignores_targets(ml100k.offsets, ml100k.items, ml100k.n_items)
