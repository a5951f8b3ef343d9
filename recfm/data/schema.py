"""The one in-memory schema every source format is loaded into.

A loader returns a :class:`RawDataset`: interactions in *file order* (row order is the
tie-breaker for equal timestamps, never the item id) and an item catalog whose
columns other than ``item_id`` are free-text fields.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from recfm.errors import RecfmError

INTERACTION_SCHEMA = {"user_id": pl.String, "item_id": pl.String, "timestamp": pl.Float64}
"""Required interaction columns. ``timestamp`` may be null when a source only gives order."""

OPTIONAL_INTERACTION_COLUMNS = {"rating": pl.Float64}


class DataFormatError(RecfmError, ValueError):
    """A source file does not match its format. The message names file, line and expectation."""

    def __init__(self, path, line: int | None, expected: str, got: str | None = None):
        where = f"{path}" if line is None else f"{path}:{line}"
        msg = f"{where}: expected {expected}"
        if got is not None:
            shown = got if len(got) <= 120 else got[:117] + "..."
            msg += f", got {shown!r}"
        super().__init__(msg)
        self.path, self.line, self.expected = path, line, expected


class EmptyDatasetError(RecfmError, ValueError):
    """Nothing is left after loading or filtering."""


@dataclass(frozen=True)
class RawDataset:
    """Interactions and item catalog of one source, before any preprocessing.

    interactions: columns ``user_id`` (str), ``item_id`` (str), ``timestamp`` (float or
        null), optionally ``rating`` (float); rows in the order the source lists them.
    items: column ``item_id`` (str) plus any number of string text fields, in the order
        they should be rendered. Items that never occur in ``interactions`` are allowed.
    """

    name: str
    interactions: pl.DataFrame
    items: pl.DataFrame

    def __post_init__(self):
        missing = [c for c in INTERACTION_SCHEMA if c not in self.interactions.columns]
        if missing:
            raise ValueError(f"{self.name}: interactions lack columns {missing}")
        if "item_id" not in self.items.columns:
            raise ValueError(f"{self.name}: item catalog lacks column 'item_id'")
        keep = list(INTERACTION_SCHEMA) + [c for c in OPTIONAL_INTERACTION_COLUMNS if c in self.interactions.columns]
        casts = {**INTERACTION_SCHEMA, **OPTIONAL_INTERACTION_COLUMNS}
        inter = self.interactions.select([pl.col(c).cast(casts[c]) for c in keep])
        items = self.items.with_columns(pl.col("item_id").cast(pl.String))
        object.__setattr__(self, "interactions", inter)
        object.__setattr__(self, "items", items.unique("item_id", keep="first", maintain_order=True))

    @property
    def text_fields(self) -> list[str]:
        return [c for c in self.items.columns if c != "item_id"]


def make_raw(name: str, interactions: dict | pl.DataFrame, items: dict | pl.DataFrame | None = None) -> RawDataset:
    """Build a RawDataset from column dicts; a missing catalog becomes bare item ids."""
    inter = interactions if isinstance(interactions, pl.DataFrame) else pl.DataFrame(interactions)
    if "timestamp" not in inter.columns:
        inter = inter.with_columns(pl.lit(None, dtype=pl.Float64).alias("timestamp"))
    if items is None:
        items = inter.select(pl.col("item_id").cast(pl.String)).unique(maintain_order=True)
    cat = items if isinstance(items, pl.DataFrame) else pl.DataFrame(items)
    return RawDataset(name=name, interactions=inter, items=cat)
