"""What a text-based model knows of a dataset's items: keys, texts, titles and the dataset's folder.

Never its interactions: a model that reads a catalog (``uses_catalog`` in recfm.recommender) sees
item metadata only, so an unseen dataset's catalog can be handed to a trained model (zero-shot).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass
class Catalog:
    """A dataset's item metadata, in item order (item index i + 1 is ``item_keys[i]``)."""

    item_keys: list[str]
    texts: list[str]
    titles: list[str]
    source_dir: Path | None = None

    @classmethod
    def of(cls, data, source_dir: Path | None = None) -> "Catalog":
        return cls(list(data.item_ids), list(data.item_text), list(data.item_titles), source_dir)

    @property
    def n_items(self) -> int:
        return len(self.item_keys)
