"""Pairwise click-prediction tasks built from any :class:`SequenceDataset`, without leakage.

A task is a set of (user history, candidate item, label) pairs grouped into candidate lists,
scored by a model and measured with :func:`recfm.bench.metrics.click_metrics`. Pairs come from
the project's leave-one-out split (:meth:`SequenceDataset.split`), the only place that decides
what a model may see. For a user with items ``s`` (oldest first):

- ``"test"``: history ``s[:-1]``, positive ``s[-1]``. One group per user.
- ``"valid"``: history ``s[:-2]``, positive ``s[-2]``. One group per user.
  Both need at least 3 items (the leave-one-out rule); shorter users are skipped and counted
  (``meta["skipped_short"]``).
- ``"train"`` (fine-tuning pairs): only the training sequence ``t = s[:-2]`` is read (the whole
  sequence for users with fewer than 3 items, as in the split). Each position ``j >= 1`` of ``t``
  is a positive ``t[j]`` with history ``t[:j]``; the ``train_positions_per_user`` most recent
  positions are used (``j = len(t)-1, len(t)-2, ...``; None = all). One group per position.
  Users whose training sequence has fewer than 2 items are skipped and counted.

Histories keep the last ``history_len`` items, oldest first, right-aligned and left-padded
with 0 (the padding index) into a 2-D array.

Negatives (``negatives_per_positive`` per positive, default 1 = a balanced pair set as in
pairwise click prediction; use e.g. 9 for 10-candidate lists and more informative NDCG/MRR):
drawn uniformly without replacement within a group from the items the user never interacted
with.

- valid/test: "never interacted" is over the user's WHOLE sequence, so an evaluation negative
  is never a held-out positive (nor any item the user consumed).
- train: "never interacted" is over the user's TRAINING sequence only. Excluding the valid and
  test items as well would make the fine-tuning set a function of the held-out targets (they
  could then never appear as negatives), which is a leak; with this rule the train pairs are a
  function of the training sequences alone (tests perturb the held-out items and check the
  train pairs do not change). The price: a held-out item can occasionally be a training
  negative (probability about 2 / n_items per negative), as it would be for a system trained
  before those clicks happened.

Randomness: each user draws from its own ``numpy`` Generator seeded with
``(seed, split, hash(user_id))`` (a stable blake2b hash of the user's id, not its index), so the
pairs are identical across runs, and independent of the order users are processed in or of
their index in the dataset. Each candidate list is shuffled with the same generator: the
metrics break score ties by order of appearance, and a positive-first list would hand a
constant-score model a perfect NDCG/MRR. ``max_users`` (CPU presets) keeps the eligible users
with the smallest ``hash(seed, user_id)``: a seeded sample that is the same for valid and test.

:func:`cached_pairs` stores a built set under ``cache_root()/bench/<dataset>-<key>`` where the key
hashes the config (split included) with a fingerprint of the dataset (name, item count, user
ids, items, offsets), so a test set is built once and reused. Files are ``.npz`` read with
``allow_pickle=False`` plus a JSON ``meta``.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from recfm.data.cache import cache_key, cache_root
from recfm.atomic import atomic_directory, atomic_write_json
from recfm.data.dataset import SequenceDataset

PAIRS_FORMAT_VERSION = 1
SPLITS = ("test", "valid", "train")
_SPLIT_STREAM = {"test": 1, "valid": 2, "train": 3}
_ARRAYS = ("user", "group", "history", "item", "label")


class ClickTaskConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    split: Literal["test", "valid", "train"] = Field("test", description="which leave-one-out stage the pairs come from")
    history_len: int = Field(20, ge=1, description="most recent history items kept per pair (RecBench-MD truncates to 20)")
    negatives_per_positive: int = Field(
        4, ge=1, description="sampled negatives per positive: each user's list holds 1 + this many candidates, so GAUC, "
        "NDCG@5 and MRR rank a real list (1 = balanced pairs)"
    )
    train_positions_per_user: int | None = Field(
        5, ge=1, description="train split: most recent training positions used per user (None = all)"
    )
    max_users: int | None = Field(None, ge=1, description="keep a seeded sample of at most this many users (None = all)")
    seed: int = Field(0, ge=0, description="seed of the negative sampling and user samples")


@dataclass(eq=False)
class ClickPairs:
    """Row ``i`` is one (user, candidate) pair; rows of a group are contiguous, groups numbered 0..G-1
    when built (a :func:`sample_pairs` subset keeps the original group numbers)."""

    user: np.ndarray  # (P,) int64 user index in the dataset
    group: np.ndarray  # (P,) int64 candidate-list id
    history: np.ndarray  # (P, history_len) int64, right-aligned, 0 = padding
    item: np.ndarray  # (P,) int64 candidate item index
    label: np.ndarray  # (P,) int8, 1 = positive
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.item)
        for name in ("user", "group", "item", "label"):
            if getattr(self, name).shape != (n,):
                raise ValueError(f"ClickPairs.{name} has shape {getattr(self, name).shape}, expected ({n},)")
        if self.history.ndim != 2 or self.history.shape[0] != n:
            raise ValueError(f"ClickPairs.history has shape {self.history.shape}, expected ({n}, history_len)")

    def __len__(self) -> int:
        return len(self.item)

    @property
    def n_groups(self) -> int:
        return len(np.unique(self.group))

    def subset(self, rows: np.ndarray) -> "ClickPairs":
        rows = np.arange(len(self))[rows]
        return ClickPairs(*(getattr(self, a)[rows] for a in _ARRAYS), meta=dict(self.meta))

    def equals(self, other: "ClickPairs") -> bool:
        """Same arrays (values, shapes and dtypes) and same meta."""
        return self.meta == other.meta and all(
            getattr(self, a).dtype == getattr(other, a).dtype and np.array_equal(getattr(self, a), getattr(other, a))
            for a in _ARRAYS
        )

    def save(self, path: str | Path) -> None:
        """One ``.npz`` file (arrays + JSON meta as a string), written atomically."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        np.savez_compressed(
            buf,
            **{a: getattr(self, a) for a in _ARRAYS},
            meta=np.array(json.dumps({"format_version": PAIRS_FORMAT_VERSION, **self.meta}, sort_keys=True)),
        )
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(buf.getvalue())
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    @classmethod
    def load(cls, path: str | Path) -> "ClickPairs":
        try:
            with np.load(Path(path), allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                version = meta.pop("format_version", None) if isinstance(meta, dict) else None
                if version != PAIRS_FORMAT_VERSION:
                    raise ValueError(f"{path}: click-pairs format {version} != {PAIRS_FORMAT_VERSION}; rebuild the pairs")
                return cls(*(z[a] for a in _ARRAYS), meta=meta)
        except ValueError:
            raise
        except Exception as e:  # noqa: BLE001 - np.load raises many types (EOFError, BadZipFile, KeyError, ...)
            raise ValueError(f"{path}: not a click-pairs file ({type(e).__name__}: {e}); delete it to rebuild") from None


# -- seeding ------------------------------------------------------------------------------------
def _hash64(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")


def _user_rng(seed: int, split: str, user_id: str) -> np.random.Generator:
    return np.random.default_rng([seed, _SPLIT_STREAM[split], _hash64(user_id)])


def _select_users(users: np.ndarray, user_ids: list[str], max_users: int | None, seed: int) -> np.ndarray:
    """At most ``max_users`` of ``users`` (ascending), by smallest hash(seed, user_id): order-free and seeded."""
    if max_users is None or len(users) <= max_users:
        return users
    keys = np.array([_hash64(f"{seed}\0{user_ids[u]}") for u in users], dtype=np.uint64)
    keep = np.lexsort((users, keys))[:max_users]
    return np.sort(users[keep])


# -- negatives ----------------------------------------------------------------------------------
class _NegativeSampler:
    """Uniform draws without replacement from ``1..n_items`` minus ``excluded`` (one user's items)."""

    def __init__(self, n_items: int, excluded: np.ndarray):
        self.n_items = n_items
        unique = np.unique(excluded)
        self.available = n_items - len(unique)
        # Dense users (more than half the catalogue seen) draw from the explicit complement,
        # the others by rejection against a set of their items.
        self.dense = 2 * len(unique) > n_items
        self.pool = np.setdiff1d(np.arange(1, n_items + 1), unique) if self.dense else None
        self.excluded = None if self.dense else set(unique.tolist())

    def draw(self, rng: np.random.Generator, n_groups: int, k: int) -> np.ndarray:
        """(n_groups, k) negatives, distinct within each row, rows independent."""
        out = np.empty((n_groups, k), dtype=np.int64)
        if self.dense:
            for row in range(n_groups):
                out[row] = rng.choice(self.pool, size=k, replace=False)
            return out
        # Rejection sampling on one i.i.d. uniform stream: the first k distinct admissible values
        # of a row's stretch of the stream form a uniform k-subset; the next row continues the stream.
        excluded, high = self.excluded, self.n_items + 1
        stream: list[int] = []
        pos = 0
        for row in range(n_groups):
            seen: set[int] = set()
            chosen: list[int] = []
            while len(chosen) < k:
                if pos == len(stream):
                    stream = rng.integers(1, high, size=2 * k * (n_groups - row) + 16).tolist()
                    pos = 0
                x = stream[pos]
                pos += 1
                if x not in excluded and x not in seen:
                    seen.add(x)
                    chosen.append(x)
            out[row] = chosen
        return out


def _right_aligned(seq: np.ndarray, ends: np.ndarray, length: int) -> np.ndarray:
    """Row ``i``: the last ``length`` items of ``seq[:ends[i]]``, oldest first, left-padded with 0."""
    padded = np.concatenate([np.zeros(length, dtype=np.int64), np.asarray(seq, dtype=np.int64)])
    return np.lib.stride_tricks.sliding_window_view(padded, length)[np.asarray(ends)]


# -- building -----------------------------------------------------------------------------------
def _resolve(split: str | None, config: ClickTaskConfig | None) -> ClickTaskConfig:
    config = config or ClickTaskConfig()
    split = split or config.split
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return ClickTaskConfig.model_validate({**config.model_dump(), "split": split})


def build_pairs(ds: SequenceDataset, split: str | None = None, config: ClickTaskConfig | None = None) -> ClickPairs:
    """Click pairs of one split (``split`` overrides ``config.split``); see the module doc for the policy."""
    config = _resolve(split, config)
    split = config.split
    k = config.negatives_per_positive
    loo = ds.split()

    # Per eligible user: its positions (history = seq[:end], positive = seq[end]) and the items
    # its negatives must avoid.
    if split in ("test", "valid"):
        cases = loo.test if split == "test" else loo.valid
        case_of = {int(u): i for i, u in enumerate(cases.users)}
        eligible = np.asarray(cases.users, dtype=np.int64)
        skipped_short = ds.n_users - len(eligible)

        def positions(u: int) -> tuple[np.ndarray, np.ndarray]:
            i = case_of[u]  # test: s[:-1] -> s[-1]; valid: s[:-2] -> s[-2], as the split gives them
            history = cases.histories[i]
            return np.append(history, cases.targets[i]), np.array([len(history)])

        def excluded(u: int) -> np.ndarray:
            return ds.sequence(u)  # the whole sequence: a negative is never a held-out positive

    else:
        train = loo.train
        eligible = np.asarray([u for u in range(ds.n_users) if len(train[u]) >= 2], dtype=np.int64)
        skipped_short = ds.n_users - len(eligible)
        m = config.train_positions_per_user

        def positions(u: int) -> tuple[np.ndarray, np.ndarray]:
            t = train[u]  # the split's training sequence: held-out items are not in it
            last = len(t) - 1
            stop = 0 if m is None else max(0, last - m)
            return t, np.arange(last, stop, -1)  # most recent first, every position has a history

        def excluded(u: int) -> np.ndarray:
            return train[u]  # training items only: train pairs never depend on held-out items

    selected = _select_users(eligible, ds.user_ids, config.max_users, config.seed)
    size, L = k + 1, config.history_len
    users, histories, items, labels = [], [], [], []
    skipped_no_negatives = 0
    for u in selected.tolist():
        sampler = _NegativeSampler(ds.n_items, excluded(u))
        if sampler.available < k:
            skipped_no_negatives += 1
            continue
        rng = _user_rng(config.seed, split, ds.user_ids[u])
        seq, ends = positions(u)
        g = len(ends)
        candidates = np.concatenate([seq[ends][:, None], sampler.draw(rng, g, k)], axis=1)  # positive in column 0
        perm = np.argsort(rng.random((g, size)), axis=1)  # shuffle each list (ties keep input order)
        items.append(np.take_along_axis(candidates, perm, axis=1).reshape(-1))
        labels.append((perm == 0).reshape(-1).astype(np.int8))
        histories.append(np.repeat(_right_aligned(seq, ends, L), size, axis=0))
        users.append(np.full(g * size, u, dtype=np.int64))
    n_evaluated = len(users)

    def cat(parts: list[np.ndarray], dtype, shape=(0,)) -> np.ndarray:
        return np.concatenate(parts).astype(dtype, copy=False) if parts else np.zeros(shape, dtype=dtype)

    user = cat(users, np.int64)
    n_groups = len(user) // size
    pairs = ClickPairs(
        user=user,
        group=np.repeat(np.arange(n_groups, dtype=np.int64), size),
        history=cat(histories, np.int64, (0, L)),
        item=cat(items, np.int64),
        label=cat(labels, np.int8),
    )
    pairs.meta = {
        "dataset": ds.name,
        "split": split,
        "config": config.model_dump(),
        "users": n_evaluated,
        "groups": n_groups,
        "pairs": len(pairs),
        "eligible_users": int(len(eligible)),
        "skipped_short": int(skipped_short),
        "skipped_no_negatives": int(skipped_no_negatives),
    }
    return pairs


# -- caching ------------------------------------------------------------------------------------
def dataset_fingerprint(ds: SequenceDataset) -> str:
    """Hash of what the pairs depend on: name, catalogue size, user ids, items and offsets."""
    h = hashlib.sha256()
    h.update(f"{ds.name}\0{ds.n_items}\0{ds.n_users}\0".encode())
    h.update("\0".join(ds.user_ids).encode("utf-8"))
    h.update(np.ascontiguousarray(ds.offsets, dtype="<i8").tobytes())
    h.update(np.ascontiguousarray(ds.items, dtype="<i8").tobytes())
    return h.hexdigest()[:16]


def pairs_cache_dir(ds: SequenceDataset, split: str | None = None, config: ClickTaskConfig | None = None) -> Path:
    config = _resolve(split, config)
    key = cache_key(PAIRS_FORMAT_VERSION, config.model_dump(), dataset_fingerprint(ds))
    name = re.sub(r"[^A-Za-z0-9._+-]+", "-", ds.name).strip("-.") or "dataset"
    return cache_root() / "bench" / f"{name}-{key}"


def cached_pairs(ds: SequenceDataset, split: str | None = None, config: ClickTaskConfig | None = None) -> ClickPairs:
    """:func:`build_pairs`, built once per (dataset, config) and then read from the cache."""
    config = _resolve(split, config)
    target = pairs_cache_dir(ds, config=config)
    if (target / "pairs.npz").is_file():
        return ClickPairs.load(target / "pairs.npz")
    pairs = build_pairs(ds, config=config)
    with atomic_directory(target) as tmp:
        pairs.save(tmp / "pairs.npz")
        atomic_write_json(tmp / "meta.json", {**pairs.meta, "fingerprint": dataset_fingerprint(ds)})
    return pairs


# -- sampling -----------------------------------------------------------------------------------
def sample_pairs(pairs: ClickPairs, n: int, seed: int = 0) -> ClickPairs:
    """About ``n`` pairs made of whole groups (candidate lists stay intact).

    Groups are taken in a seeded random order until the total is as close to ``n`` as whole
    groups allow (at least one group), so samples with one seed are nested as ``n`` grows.
    Rows keep their order and group numbers. ``n >= len(pairs)`` returns ``pairs`` itself.
    """
    if n < 1:
        raise ValueError(f"n must be positive, got {n}")
    if n >= len(pairs):
        return pairs
    ids, counts = np.unique(pairs.group, return_counts=True)
    perm = np.random.default_rng(seed).permutation(len(ids))
    total = np.cumsum(counts[perm])
    j = int(np.searchsorted(total, n))  # first prefix reaching n (j < len since n < len(pairs))
    take = j if j > 0 and n - total[j - 1] <= total[j] - n else j + 1
    keep = np.isin(pairs.group, ids[perm[:take]])
    out = pairs.subset(keep)
    out.meta.update(
        pairs=len(out),
        groups=take,
        users=int(len(np.unique(out.user))),
        sampled={"n": n, "seed": seed, "from_pairs": len(pairs), "from_groups": len(ids)},
    )
    return out
