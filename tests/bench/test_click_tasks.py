"""Click-pair construction on small synthetic SequenceDatasets: targets, negatives, groups,
determinism, leakage (by perturbing held-out items), cache and sampling.

Leakage checks use datasets where every interaction is a distinct item ("tags"), so an item
equal to a held-out target can only be that very interaction.
"""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from recfm.bench.tasks import (
    ClickPairs,
    ClickTaskConfig,
    build_pairs,
    cached_pairs,
    pairs_cache_dir,
    sample_pairs,
)
from recfm.data.dataset import SequenceDataset


def make_ds(seqs: list[list[int]], n_items: int, user_ids: list[str] | None = None, name: str = "toy") -> SequenceDataset:
    lengths = [len(s) for s in seqs]
    items = np.asarray([i for s in seqs for i in s], dtype=np.int64)
    return SequenceDataset(
        name=name,
        item_ids=[f"i{i}" for i in range(1, n_items + 1)],
        item_text=[f"item {i}" for i in range(1, n_items + 1)],
        item_titles=[f"Item {i}" for i in range(1, n_items + 1)],
        user_ids=user_ids or [f"u{u}" for u in range(len(seqs))],
        offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
        items=items,
        timestamps=np.arange(len(items), dtype=np.float64),
    )


def random_seqs(seed: int, n_users: int = 40, n_items: int = 120, max_len: int = 25) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(1, n_items + 1, size=rng.integers(1, max_len + 1)).tolist() for _ in range(n_users)]


def tagged_seqs(seed: int, n_users: int = 40, max_len: int = 25) -> tuple[list[list[int]], int]:
    """Every interaction is a distinct item; 60 spare items are never interacted with."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, max_len + 1, size=n_users)
    tags = rng.permutation(int(lengths.sum())) + 1
    seqs = np.split(tags, np.cumsum(lengths)[:-1])
    return [s.tolist() for s in seqs], int(lengths.sum()) + 60


def groups_of(pairs: ClickPairs) -> list[np.ndarray]:
    ids, starts = np.unique(pairs.group, return_index=True)
    order = np.argsort(starts)
    bounds = np.append(np.sort(starts), len(pairs))
    assert np.all(np.diff(np.sort(starts)) > 0)
    rows = [np.arange(bounds[i], bounds[i + 1]) for i in range(len(order))]
    for r in rows:  # contiguous: one id per block
        assert len(np.unique(pairs.group[r])) == 1
    assert sum(len(r) for r in rows) == len(pairs)
    return rows


def unpad(row: np.ndarray) -> list[int]:
    return row[row > 0].tolist()


def per_user_view(pairs: ClickPairs, ds: SequenceDataset) -> dict[str, list]:
    """user id -> its groups (history, items, labels), in build order: comparable across datasets."""
    out: dict[str, list] = {}
    for r in groups_of(pairs):
        uid = ds.user_ids[int(pairs.user[r[0]])]
        out.setdefault(uid, []).append(
            (pairs.history[r[0]].tolist(), pairs.item[r].tolist(), pairs.label[r].tolist())
        )
    return out


# ---------------------------------------------------------------------------------------------
# Targets and histories
# ---------------------------------------------------------------------------------------------


def test_hand_made_targets_and_histories():
    seqs = [[1, 2, 3, 4, 5], [7, 8], [3, 3, 3], [9], [4, 6, 4, 6]]
    ds = make_ds(seqs, n_items=30)
    cfg = ClickTaskConfig(history_len=3, negatives_per_positive=2)

    test = build_pairs(ds, "test", cfg)
    assert test.meta["split"] == "test" and test.meta["skipped_short"] == 2 and test.meta["users"] == 3
    view = {u: g for u, g in per_user_view(test, ds).items()}
    assert sorted(view) == ["u0", "u2", "u4"]
    (hist, items, labels), = view["u0"]
    assert hist == [2, 3, 4] and items[labels.index(1)] == 5
    assert view["u2"][0][0] == [0, 3, 3] and view["u2"][0][1][view["u2"][0][2].index(1)] == 3
    assert view["u4"][0][0] == [4, 6, 4] and view["u4"][0][1][view["u4"][0][2].index(1)] == 6

    valid = build_pairs(ds, "valid", cfg)
    view = per_user_view(valid, ds)
    assert view["u0"][0][0] == [1, 2, 3] and view["u0"][0][1][view["u0"][0][2].index(1)] == 4
    assert view["u2"][0][0] == [0, 0, 3]
    assert view["u4"][0][0] == [0, 4, 6] and view["u4"][0][1][view["u4"][0][2].index(1)] == 4

    train = build_pairs(ds, "train", cfg.model_copy(update={"train_positions_per_user": 2}))
    view = per_user_view(train, ds)
    # u0 trains on [1, 2, 3]: positions 2 then 1 (most recent first); u1 ([7, 8], all train): position 1;
    # u2 trains on [3] and u3 on [9]: too short; u4 trains on [4, 6]: position 1.
    assert [(h, it[lab.index(1)]) for h, it, lab in view["u0"]] == [([0, 1, 2], 3), ([0, 0, 1], 2)]
    assert [(h, it[lab.index(1)]) for h, it, lab in view["u1"]] == [([0, 0, 7], 8)]
    assert [(h, it[lab.index(1)]) for h, it, lab in view["u4"]] == [([0, 0, 4], 6)]
    assert sorted(view) == ["u0", "u1", "u4"] and train.meta["skipped_short"] == 2


def test_train_positions_most_recent_first_and_all():
    seq = list(range(1, 13))  # 12 items: train on 1..10
    ds = make_ds([seq], n_items=40)
    few = per_user_view(build_pairs(ds, "train", ClickTaskConfig(history_len=4, train_positions_per_user=3)), ds)["u0"]
    assert [it[lab.index(1)] for _, it, lab in few] == [10, 9, 8]
    assert few[0][0] == [6, 7, 8, 9]
    every = per_user_view(build_pairs(ds, "train", ClickTaskConfig(history_len=4, train_positions_per_user=None)), ds)["u0"]
    assert [it[lab.index(1)] for _, it, lab in every] == list(range(10, 1, -1))
    assert every[-1][0] == [0, 0, 0, 1]


def test_split_argument_overrides_config():
    ds = make_ds(random_seqs(0), n_items=120)
    pairs = build_pairs(ds, "valid", ClickTaskConfig(split="test"))
    assert pairs.meta["split"] == "valid" and pairs.meta["config"]["split"] == "valid"
    assert build_pairs(ds, config=ClickTaskConfig(split="valid")).equals(pairs)
    with pytest.raises(ValueError, match="split"):
        build_pairs(ds, "holdout")
    with pytest.raises(ValidationError):
        ClickTaskConfig(negatives=3)
    with pytest.raises(ValidationError):
        ClickTaskConfig(negatives_per_positive=0)


# ---------------------------------------------------------------------------------------------
# Group structure and negatives
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("split", ["test", "valid", "train"])
@pytest.mark.parametrize("k", [1, 4])
def test_group_structure_and_negatives(split, k):
    seqs = random_seqs(1)
    ds = make_ds(seqs, n_items=120)
    loo = ds.split()
    pairs = build_pairs(ds, split, ClickTaskConfig(negatives_per_positive=k, history_len=6))
    rows = groups_of(pairs)
    assert len(rows) == pairs.meta["groups"] == pairs.n_groups and len(pairs) == pairs.meta["pairs"]
    assert pairs.history.shape == (len(pairs), 6) and pairs.label.dtype == np.int8
    for r in rows:
        assert len(r) == k + 1 and pairs.label[r].sum() == 1  # exactly one positive, k negatives
        assert len(np.unique(pairs.user[r])) == 1 and (pairs.history[r] == pairs.history[r[0]]).all()
        assert len(np.unique(pairs.item[r])) == k + 1  # negatives distinct, and distinct from the positive
        assert pairs.item[r].min() >= 1 and pairs.item[r].max() <= ds.n_items
        u = int(pairs.user[r[0]])
        negatives = pairs.item[r][pairs.label[r] == 0]
        # evaluation negatives avoid the whole sequence, train negatives the training sequence
        seen = ds.sequence(u) if split != "train" else loo.train[u]
        assert not np.isin(negatives, seen).any()
    if split != "train":  # one group per evaluated user
        eligible = [u for u in range(ds.n_users) if len(seqs[u]) >= 3]
        assert sorted(np.unique(pairs.user).tolist()) == eligible
        assert pairs.meta["skipped_short"] == ds.n_users - len(eligible)


def test_positive_position_is_shuffled():
    ds = make_ds(random_seqs(2, n_users=200), n_items=120)
    pairs = build_pairs(ds, "test", ClickTaskConfig(negatives_per_positive=4))
    slots = np.concatenate([np.flatnonzero(pairs.label[r]) for r in groups_of(pairs)])
    counts = np.bincount(slots, minlength=5)
    assert (counts > 10).all()  # every slot used; a positive-first layout would fool tie-breaking


def test_dense_users_and_exhausted_catalogue():
    # u0 saw 9 of 10 items (explicit-pool sampler), u1 saw every item (no negative left), u2 is sparse.
    ds = make_ds([[1, 2, 3, 4, 5, 6, 7, 8, 9], list(range(1, 11)), [3, 1, 4]], n_items=10)
    pairs = build_pairs(ds, "test", ClickTaskConfig(negatives_per_positive=1))
    assert pairs.meta["skipped_no_negatives"] == 1 and pairs.meta["users"] == 2
    view = per_user_view(pairs, ds)
    assert "u1" not in view
    assert sorted(view["u0"][0][1]) == [9, 10]  # the only admissible negative is 10
    with_many = build_pairs(ds, "test", ClickTaskConfig(negatives_per_positive=2))
    assert "u0" not in per_user_view(with_many, ds) and with_many.meta["skipped_no_negatives"] == 2


def test_dense_user_train_pairs():
    # Training sequence 1..28 of a 40-item catalogue: negatives come from the complement 29..40
    # (held-out items 29 and 30 included: train negatives only avoid training items).
    ds = make_ds([list(range(1, 31))], n_items=40)
    pairs = build_pairs(ds, "train", ClickTaskConfig(negatives_per_positive=3, train_positions_per_user=None))
    rows = groups_of(pairs)
    assert len(rows) == 27
    for r in rows:
        negatives = pairs.item[r][pairs.label[r] == 0]
        assert len(set(negatives.tolist())) == 3 and (negatives >= 29).all()


def test_negatives_roughly_uniform():
    ds = make_ds([[1, 2, 3]] * 3000, n_items=13)  # admissible negatives: 4..13
    pairs = build_pairs(ds, "test", ClickTaskConfig(negatives_per_positive=3))
    counts = np.bincount(pairs.item[pairs.label == 0], minlength=14)[4:]
    assert counts.sum() == 9000 and (np.abs(counts - 900) < 120).all()


# ---------------------------------------------------------------------------------------------
# Determinism
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("split", ["test", "valid", "train"])
def test_deterministic_and_independent_of_user_order(split):
    seqs = random_seqs(3, n_users=50)
    ds = make_ds(seqs, n_items=120)
    cfg = ClickTaskConfig(negatives_per_positive=3, max_users=30, seed=7)
    a = build_pairs(ds, split, cfg)
    assert a.equals(build_pairs(make_ds(seqs, n_items=120), split, cfg))
    # The same users listed in another order (other indices): the same pairs per user id,
    # and the same max_users sample.
    perm = np.random.default_rng(0).permutation(len(seqs))
    shuffled = make_ds([seqs[i] for i in perm], n_items=120, user_ids=[f"u{i}" for i in perm])
    b = build_pairs(shuffled, split, cfg)
    assert per_user_view(a, ds) == per_user_view(b, shuffled)
    assert a.meta["users"] <= 30 and a.meta["users"] == b.meta["users"]
    # another seed gives other negatives (same users and positives without max_users)
    full = cfg.model_copy(update={"max_users": None})
    c, d = build_pairs(ds, split, full), build_pairs(ds, split, full.model_copy(update={"seed": 8}))
    assert len(c) == len(d) and np.array_equal(c.user, d.user)
    assert not np.array_equal(np.sort(c.item[c.label == 0]), np.sort(d.item[d.label == 0]))
    assert np.array_equal(np.sort(c.item[c.label == 1]), np.sort(d.item[d.label == 1]))


def test_max_users_same_sample_for_valid_and_test():
    ds = make_ds(random_seqs(4, n_users=80), n_items=120)
    cfg = ClickTaskConfig(max_users=20, seed=1)
    test, valid = build_pairs(ds, "test", cfg), build_pairs(ds, "valid", cfg)
    assert len(np.unique(test.user)) == 20
    assert np.array_equal(np.unique(test.user), np.unique(valid.user))
    other = build_pairs(ds, "test", cfg.model_copy(update={"seed": 2}))
    assert not np.array_equal(np.unique(test.user), np.unique(other.user))


# ---------------------------------------------------------------------------------------------
# Leakage
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_train_pairs_ignore_held_out_items(seed):
    """Perturb the last two items (valid and test targets) of every user: train pairs must not change."""
    seqs, n_items = tagged_seqs(seed)
    ds = make_ds(seqs, n_items)
    rng = np.random.default_rng(seed + 100)
    perturbed = []
    for s in seqs:
        if len(s) < 3:
            perturbed.append(list(s))  # no held-out items: everything is training data
            continue
        unused = np.setdiff1d(np.arange(1, n_items + 1), s[:-2])
        perturbed.append(s[:-2] + rng.choice(unused, size=2, replace=False).tolist())
    ds2 = make_ds(perturbed, n_items)
    for cfg in (
        ClickTaskConfig(negatives_per_positive=2, train_positions_per_user=None),
        ClickTaskConfig(negatives_per_positive=5, max_users=15, history_len=4),
    ):
        a, b = build_pairs(ds, "train", cfg), build_pairs(ds2, "train", cfg)
        assert a.equals(b)
    # and, explicitly: no held-out target is a train positive or inside a train history
    a = build_pairs(ds, "train", ClickTaskConfig(train_positions_per_user=None, history_len=30))
    for r in groups_of(a):
        s = seqs[int(a.user[r[0]])]
        if len(s) < 3:
            continue
        held_out = s[-2:]
        assert not np.isin(a.item[r][a.label[r] == 1], held_out).any()
        assert not np.isin(a.history[r[0]], held_out).any()


@pytest.mark.parametrize("split, cut", [("test", 1), ("valid", 2)])
def test_eval_histories_never_contain_their_target(split, cut):
    seqs, n_items = tagged_seqs(5)
    ds = make_ds(seqs, n_items)
    pairs = build_pairs(ds, split, ClickTaskConfig(history_len=50, negatives_per_positive=3))
    for r in groups_of(pairs):
        s = seqs[int(pairs.user[r[0]])]
        target = int(pairs.item[r][pairs.label[r] == 1][0])
        assert target == s[-cut]
        history = unpad(pairs.history[r[0]])
        assert history == s[:-cut] and target not in history
        if split == "valid":  # the validation case never sees the test item either
            assert s[-1] not in history and s[-1] not in pairs.item[r].tolist()


# ---------------------------------------------------------------------------------------------
# Persistence, cache, sampling
# ---------------------------------------------------------------------------------------------


def test_save_load_round_trip(tmp_path):
    ds = make_ds(random_seqs(6), n_items=120)
    pairs = build_pairs(ds, "valid", ClickTaskConfig(negatives_per_positive=2))
    pairs.save(tmp_path / "p.npz")
    assert [p.name for p in tmp_path.iterdir()] == ["p.npz"]  # no temporary left behind
    loaded = ClickPairs.load(tmp_path / "p.npz")
    assert loaded.equals(pairs) and loaded.meta == pairs.meta
    with np.load(tmp_path / "p.npz", allow_pickle=False) as z:
        assert sorted(z.files) == ["group", "history", "item", "label", "meta", "user"]


def test_load_rejects_other_format_version(tmp_path):
    pairs = build_pairs(make_ds(random_seqs(6), n_items=120), "test")
    arrays = {a: getattr(pairs, a) for a in ("user", "group", "history", "item", "label")}
    np.savez(tmp_path / "old.npz", **arrays, meta=np.array('{"format_version": 0}'))
    with pytest.raises(ValueError, match="format"):
        ClickPairs.load(tmp_path / "old.npz")


def test_cache_round_trip(cache_dir):
    ds = make_ds(random_seqs(7), n_items=120)
    cfg = ClickTaskConfig(negatives_per_positive=3)
    first = cached_pairs(ds, "test", cfg)
    target = pairs_cache_dir(ds, "test", cfg)
    assert target.parent == cache_dir / "bench" and target.name.startswith("toy-")
    assert (target / "pairs.npz").is_file() and (target / "meta.json").is_file()
    assert first.equals(build_pairs(ds, "test", cfg))
    stamp = (target / "pairs.npz").stat().st_mtime_ns
    again = cached_pairs(ds, "test", cfg)
    assert again.equals(first) and (target / "pairs.npz").stat().st_mtime_ns == stamp  # read, not rebuilt
    # other split, config or data -> other entry
    assert pairs_cache_dir(ds, "valid", cfg) != target
    assert pairs_cache_dir(ds, "test", cfg.model_copy(update={"seed": 1})) != target
    changed = make_ds(random_seqs(7)[:-1] + [[1, 2, 3, 4]], n_items=120)
    assert pairs_cache_dir(changed, "test", cfg) != target
    assert pairs_cache_dir(make_ds(random_seqs(7), n_items=120, name="other"), "test", cfg).name.startswith("other-")


def test_sample_pairs_keeps_whole_groups():
    ds = make_ds(random_seqs(8, n_users=200), n_items=120)
    pairs = build_pairs(ds, "train", ClickTaskConfig(negatives_per_positive=2))  # groups of 3
    small = sample_pairs(pairs, 100, seed=0)
    assert abs(len(small) - 100) <= 1 and len(small) % 3 == 0
    sizes = np.unique(small.group, return_counts=True)[1]
    assert (sizes == 3).all()
    for r in groups_of(small):
        assert small.label[r].sum() == 1
    # rows are taken verbatim from the full set, order kept
    full_rows = {(g, i): k for k, (g, i) in enumerate(zip(pairs.group.tolist(), pairs.item.tolist()))}
    idx = [full_rows[(g, i)] for g, i in zip(small.group.tolist(), small.item.tolist())]
    assert idx == sorted(idx)
    assert np.array_equal(pairs.history[idx], small.history)
    assert small.meta["pairs"] == len(small) and small.meta["sampled"]["n"] == 100
    # deterministic, seeded, nested as n grows
    assert sample_pairs(pairs, 100, seed=0).equals(small)
    assert not np.array_equal(sample_pairs(pairs, 100, seed=1).group, small.group)
    bigger = sample_pairs(pairs, 300, seed=0)
    assert set(small.group.tolist()) <= set(bigger.group.tolist())
    assert sample_pairs(pairs, 1, seed=0).n_groups == 1
    assert sample_pairs(pairs, len(pairs)) is pairs
    with pytest.raises(ValueError):
        sample_pairs(pairs, 0)


def test_pairs_feed_the_metrics():
    from recfm.bench.metrics import click_metrics

    ds = make_ds(random_seqs(9, n_users=100), n_items=120)
    pairs = build_pairs(ds, "test", ClickTaskConfig(negatives_per_positive=4))
    oracle = click_metrics(pairs.group, pairs.label, pairs.label.astype(float))
    assert oracle["auc"] == 1.0 and oracle["mrr"] == 1.0 and oracle["gauc_groups"] == pairs.n_groups
    constant = click_metrics(pairs.group, pairs.label, np.zeros(len(pairs)))
    assert constant["auc"] == 0.5 and constant["mrr"] < 0.8  # shuffled lists: no free credit from ties
