"""P5 / IDGenRec text format.

``user_sequence.txt``: ``USER ITEM ITEM ...`` per line, items oldest first (no timestamps:
the line order is the chronology). An item text file, ``ITEM word word ...`` per line
(``item_initial_ids.txt`` in the IDGenRec release), gives each item a short title.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from recfm.data.schema import DataFormatError, EmptyDatasetError, RawDataset
from recfm.data.sources._io import find_one, numbered_lines

SEQUENCE_FILE = "user_sequence.txt"
ITEM_TEXT_FILES = ["item_text.txt", "item_titles.txt", "item_initial_ids.txt", "items.txt"]


def detect(path: Path) -> bool:
    return path.is_dir() and (path / SEQUENCE_FILE).is_file()


def load(path: Path, name: str | None = None) -> RawDataset:
    path = Path(path)
    seq_file = path / SEQUENCE_FILE
    users, items = [], []
    for n, line in numbered_lines(seq_file):
        parts = line.split()
        if len(parts) < 2:
            raise DataFormatError(seq_file, n, "'USER_ID ITEM_ID [ITEM_ID ...]' (a user and at least one item)", line)
        users.extend([parts[0]] * (len(parts) - 1))
        items.extend(parts[1:])
    if not users:
        raise EmptyDatasetError(f"{seq_file}: no interactions")
    item_ids, titles = [], []
    text_file = find_one(path, ITEM_TEXT_FILES)
    if text_file is not None:
        for n, line in numbered_lines(text_file):
            parts = line.split(maxsplit=1)
            item_ids.append(parts[0])
            titles.append(parts[1].strip() if len(parts) > 1 else "")
    inter = pl.DataFrame({"user_id": users, "item_id": items, "timestamp": pl.Series([None] * len(users), dtype=pl.Float64)})
    catalog = pl.DataFrame({"item_id": item_ids, "title": titles}, schema={"item_id": pl.String, "title": pl.String})
    return RawDataset(name=name or path.name, interactions=inter, items=catalog)
