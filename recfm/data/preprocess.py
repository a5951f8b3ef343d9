"""From a RawDataset to a SequenceDataset: filtering, chronological order, item text.

Ordering rule: each user's interactions are sorted by timestamp with a *stable* sort
over the file order, so equal timestamps keep the order the source lists them in.
Breaking ties by item id inflates MovieLens scores (see docs/protocol.md).
"""

from __future__ import annotations

import logging

import numpy as np
import polars as pl
from pydantic import BaseModel, ConfigDict, Field

from recfm.data.dataset import SequenceDataset
from recfm.data.schema import EmptyDatasetError, RawDataset
from recfm.errors import ConfigError

log = logging.getLogger(__name__)

TITLE_FIELDS = ("title", "movie_title", "name", "headline")


class PrepConfig(BaseModel):
    """Preprocessing options; part of the cache key, recorded in every run's config."""

    model_config = ConfigDict(extra="forbid")

    user_core: int = Field(5, ge=0, description="keep users with at least this many interactions (iterated with item_core)")
    item_core: int = Field(5, ge=0, description="keep items with at least this many interactions")
    min_rating: float | None = Field(None, description="drop interactions rated below this (explicit-feedback sources)")
    drop_repeats: bool = Field(False, description="keep only the first interaction of each (user, item) pair")
    max_user_items: int | None = Field(None, ge=3, description="keep only each user's most recent N interactions")
    text_fields: list[str] | None = Field(None, description="catalog fields rendered into item text, in order; None = all")


def k_core(inter: pl.DataFrame, user_core: int, item_core: int) -> pl.DataFrame:
    """Iteratively drop users and items below their minimum counts until both hold."""
    while True:
        n = inter.height
        if item_core > 1:
            inter = inter.filter(pl.len().over("item_id") >= item_core)
        if user_core > 1:
            inter = inter.filter(pl.len().over("user_id") >= user_core)
        if inter.height == n:
            return inter


def render_item_text(row: dict, fields: list[str]) -> str:
    """Item metadata as ``key: value; key: value`` (the papers' prompt format), skipping empty fields."""
    parts = []
    for f in fields:
        v = row.get(f)
        if v is None:
            continue
        v = str(v).strip()
        if v and v.lower() not in ("nan", "none", "null"):
            parts.append(f"{f}: {v}")
    return "; ".join(parts)


def preprocess(raw: RawDataset, cfg: PrepConfig | None = None) -> SequenceDataset:
    cfg = cfg or PrepConfig()
    inter = raw.interactions.with_row_index("_row").drop_nulls(["user_id", "item_id"])
    if cfg.min_rating is not None:
        if "rating" not in inter.columns:
            raise ConfigError(f"{raw.name}: prep.min_rating={cfg.min_rating} but the source has no ratings "
                              "(leave prep.min_rating unset for implicit feedback)")
        inter = inter.filter(pl.col("rating") >= cfg.min_rating)
    if cfg.drop_repeats:
        # "first" in time, not in the file: sort as the sequences will be (timestamp, then file row)
        inter = inter.sort(["timestamp", "_row"], nulls_last=False)
        inter = inter.unique(["user_id", "item_id"], keep="first", maintain_order=True)
    inter = k_core(inter, cfg.user_core, cfg.item_core)
    if inter.height == 0:
        raise EmptyDatasetError(
            f"{raw.name}: no interactions left after filtering (user_core={cfg.user_core}, "
            f"item_core={cfg.item_core}, min_rating={cfg.min_rating}); lower the thresholds"
        )
    # Users in order of first appearance; within a user, stable by timestamp then file row.
    first_seen = inter.group_by("user_id", maintain_order=True).agg(pl.col("_row").min().alias("_first"))
    inter = inter.join(first_seen, on="user_id").sort(["_first", "timestamp", "_row"], nulls_last=False)
    if cfg.max_user_items is not None:
        inter = inter.filter(pl.int_range(pl.len()).over("user_id") >= pl.len().over("user_id") - cfg.max_user_items)

    item_ids = inter.sort("_row").get_column("item_id").unique(maintain_order=True).to_list()
    index = {it: i + 1 for i, it in enumerate(item_ids)}  # 0 is padding
    user_ids = inter.get_column("user_id").unique(maintain_order=True).to_list()
    counts = inter.group_by("user_id", maintain_order=True).len().get_column("len").to_numpy()
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    items = np.fromiter((index[i] for i in inter.get_column("item_id")), dtype=np.int64, count=inter.height)
    timestamps = inter.get_column("timestamp").fill_null(float("nan")).to_numpy().astype(np.float64)

    fields = cfg.text_fields if cfg.text_fields is not None else raw.text_fields
    unknown = [f for f in fields if f not in raw.items.columns]
    if unknown:
        raise ConfigError(f"{raw.name}: prep.text_fields {unknown} not in the catalog (it has {raw.text_fields})")
    catalog = {r["item_id"]: r for r in raw.items.iter_rows(named=True)}
    title_field = next((f for f in TITLE_FIELDS if f in raw.items.columns), fields[0] if fields else None)
    texts, titles = [], []
    for it in item_ids:
        row = catalog.get(it, {})
        text = render_item_text(row, fields)
        texts.append(text or f"item: {it}")
        title = row.get(title_field) if title_field else None
        titles.append(str(title).strip() if title not in (None, "") else it)
    missing = sum(1 for it in item_ids if it not in catalog)
    if missing:
        log.warning("%s: %d of %d items have no catalog entry; their text is the item id", raw.name, missing, len(item_ids))

    return SequenceDataset(
        name=raw.name,
        item_ids=item_ids,
        item_text=texts,
        item_titles=titles,
        user_ids=user_ids,
        offsets=offsets,
        items=items,
        timestamps=timestamps,
    )
