"""SequenceDataset: chronological item sequences per user, with item text; the unit every model consumes."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from recfm.data.split import LeaveOneOut, leave_one_out

FORMAT_VERSION = 2  # 2: loaders decode strictly (no replaced bytes, no NaN times): older caches are rebuilt


@dataclass
class SequenceDataset:
    """Item indices run from 1 to ``n_items``; 0 is reserved for padding.

    ``items[offsets[u]:offsets[u+1]]`` is user ``u``'s full sequence, oldest first,
    including the validation and test targets: models must only see it through
    :meth:`split`.
    """

    name: str
    item_ids: list[str]
    item_text: list[str]
    item_titles: list[str]
    user_ids: list[str]
    offsets: np.ndarray
    items: np.ndarray
    timestamps: np.ndarray
    _split: LeaveOneOut | None = field(default=None, repr=False, compare=False)
    # Hash of the source files, format and preprocessing (the cache key); a run records it to
    # notice when the data it is scored on is no longer the data it was trained on.
    fingerprint: str = field(default="", compare=False)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_interactions(self) -> int:
        return int(self.items.shape[0])

    def sequence(self, user: int) -> np.ndarray:
        return self.items[self.offsets[user] : self.offsets[user + 1]]

    def split(self) -> LeaveOneOut:
        """Leave-one-out split: last item test, second-to-last validation, the rest training."""
        if self._split is None:
            self._split = leave_one_out(self.offsets, self.items)
        return self._split

    def item_index(self) -> dict[str, int]:
        return {it: i + 1 for i, it in enumerate(self.item_ids)}

    def sorted_by_item_id_share(self) -> float | None:
        """Among users with an evaluation case (3 or more items), the share whose sequence never
        goes down in item-id order (numeric ids compared as numbers). Time order makes that rare
        (1 in n! for n distinct items in random order); a file whose sequences were sorted by id
        instead of by time gives 1.0, and its leave-one-out then holds out the largest id, not the
        newest item. None without such users."""
        lengths = np.diff(self.offsets)
        eligible = lengths >= 3
        if not eligible.any():
            return None
        numeric = all(i.isdigit() for i in self.item_ids)
        order = sorted(range(self.n_items), key=(lambda i: int(self.item_ids[i])) if numeric else self.item_ids.__getitem__)
        rank = np.zeros(self.n_items + 1, dtype=np.int64)
        rank[np.asarray(order, dtype=np.int64) + 1] = np.arange(self.n_items)
        down = np.diff(rank[self.items]) < 0  # step i: from interaction i to i + 1
        down[self.offsets[1:-1] - 1] = False  # steps from one user's last item to the next user's first
        downs = np.concatenate([[0], np.cumsum(down)])
        per_user = downs[np.maximum(self.offsets[1:] - 1, self.offsets[:-1])] - downs[self.offsets[:-1]]
        return float((per_user[eligible] == 0).mean())

    def stats(self) -> dict:
        lengths = np.diff(self.offsets)
        n = self.n_users * self.n_items
        share = self.sorted_by_item_id_share()
        return {
            "users": self.n_users,
            "items": self.n_items,
            "interactions": self.n_interactions,
            "density": round(self.n_interactions / n, 6) if n else 0.0,
            "mean_sequence_length": round(float(lengths.mean()), 2),
            "median_sequence_length": float(np.median(lengths)),
            "max_sequence_length": int(lengths.max()),
            "has_timestamps": bool(np.isfinite(self.timestamps).any()),
            "sorted_by_item_id": None if share is None else round(share, 4),
        }

    # -- persistence (Parquet + JSON, no pickle) --------------------------------------
    def save(self, directory: str | Path) -> None:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        users = np.repeat(np.arange(self.n_users, dtype=np.int64), np.diff(self.offsets))
        pl.DataFrame({"user": users, "item": self.items, "timestamp": self.timestamps}).write_parquet(d / "interactions.parquet")
        pl.DataFrame({"item_id": self.item_ids, "text": self.item_text, "title": self.item_titles}).write_parquet(d / "items.parquet")
        pl.DataFrame({"user_id": self.user_ids}).write_parquet(d / "users.parquet")
        (d / "meta.json").write_text(json.dumps({"name": self.name, "format_version": FORMAT_VERSION, **self.stats()}, indent=2))

    @classmethod
    def load(cls, directory: str | Path) -> "SequenceDataset":
        d = Path(directory)
        meta = json.loads((d / "meta.json").read_text())
        if meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{d}: prepared-data format {meta.get('format_version')} != {FORMAT_VERSION}; re-run prepare")
        inter = pl.read_parquet(d / "interactions.parquet")
        items = pl.read_parquet(d / "items.parquet")
        users = pl.read_parquet(d / "users.parquet").get_column("user_id").to_list()
        counts = np.bincount(inter.get_column("user").to_numpy(), minlength=len(users))
        return cls(
            name=meta["name"],
            item_ids=items.get_column("item_id").to_list(),
            item_text=items.get_column("text").to_list(),
            item_titles=items.get_column("title").to_list(),
            user_ids=users,
            offsets=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
            items=inter.get_column("item").to_numpy().astype(np.int64),
            timestamps=inter.get_column("timestamp").to_numpy().astype(np.float64),
        )


def concat_datasets(datasets: list[SequenceDataset], name: str | None = None) -> SequenceDataset:
    """One dataset from several (e.g. to train a transferable model): users and items are kept
    apart, their ids prefixed with the source name (``movielens-100k/50``)."""
    if not datasets:
        raise ValueError("concat_datasets needs at least one dataset")
    item_ids, item_text, item_titles, user_ids, lengths, items, stamps = [], [], [], [], [], [], []
    base = 0
    for ds in datasets:
        item_ids += [f"{ds.name}/{i}" for i in ds.item_ids]
        item_text += ds.item_text
        item_titles += ds.item_titles
        user_ids += [f"{ds.name}/{u}" for u in ds.user_ids]
        lengths.append(np.diff(ds.offsets))
        items.append(ds.items + base)
        stamps.append(ds.timestamps)
        base += ds.n_items
    counts = np.concatenate(lengths)
    return SequenceDataset(
        name=name or "+".join(ds.name for ds in datasets),
        item_ids=item_ids,
        item_text=item_text,
        item_titles=item_titles,
        user_ids=user_ids,
        offsets=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        items=np.concatenate(items).astype(np.int64),
        timestamps=np.concatenate(stamps).astype(np.float64),
        fingerprint="+".join(ds.fingerprint for ds in datasets) if all(ds.fingerprint for ds in datasets) else "",
    )
