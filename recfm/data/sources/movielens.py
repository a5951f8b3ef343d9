"""MovieLens in RecBole atomic files (``NAME.inter`` / ``NAME.item`` with ``field:type`` headers).

Files are strict UTF-8 (a byte that is not fails with the file and line); ``timestamp`` and
``rating`` must be finite numbers or empty (``nan`` and ``inf`` fail with the file and line).
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from recfm.data.schema import DataFormatError, EmptyDatasetError, RawDataset
from recfm.data.sources._io import finite, numbered_lines

# RecBole field names -> our schema. Unknown columns are ignored.
_INTER_FIELDS = {"user_id": "user_id", "item_id": "item_id", "timestamp": "timestamp", "rating": "rating"}


def detect_atomic(path: Path) -> bool:
    return path.is_dir() and any(path.glob("*.inter"))


def _read_atomic(path: Path) -> tuple[list[str], list[list[str]], list[int]]:
    """Header field names (type suffix dropped), rows, and each row's line number."""
    lines = numbered_lines(path)
    try:
        _, header = next(lines)
    except StopIteration:
        raise DataFormatError(path, 1, "a header line of tab-separated 'name:type' fields", "") from None
    fields = header.split("\t")
    if not all(":" in f for f in fields):
        raise DataFormatError(path, 1, "a header line of tab-separated 'name:type' fields", header)
    names = [f.split(":", 1)[0] for f in fields]
    rows, line_numbers = [], []
    for n, line in lines:
        parts = line.split("\t")
        if len(parts) != len(names):
            raise DataFormatError(path, n, f"{len(names)} tab-separated fields ({', '.join(names)})", line)
        rows.append(parts)
        line_numbers.append(n)
    return names, rows, line_numbers


def load_atomic(path: Path, name: str | None = None) -> RawDataset:
    path = Path(path)
    inter_files = sorted(path.glob("*.inter"))
    if not inter_files:
        raise FileNotFoundError(f"{path}: no RecBole .inter file")
    inter_file = inter_files[0]
    stem = inter_file.stem
    names, rows, line_numbers = _read_atomic(inter_file)
    for required in ("user_id", "item_id"):
        if required not in names:
            raise DataFormatError(inter_file, 1, f"a '{required}:token' column in the header", "\t".join(names))
    if not rows:
        raise EmptyDatasetError(f"{inter_file}: no interactions")
    cols = {ours: [r[names.index(theirs)] for r in rows] for theirs, ours in _INTER_FIELDS.items() if theirs in names}
    for col in ("timestamp", "rating"):
        if col in cols:
            values = []
            for v, n in zip(cols[col], line_numbers):
                try:
                    values.append(finite(float(v)) if v != "" else None)
                except ValueError:
                    raise DataFormatError(inter_file, n, f"a finite number in column '{col}'", v) from None
            cols[col] = values
    if "timestamp" not in cols:
        cols["timestamp"] = [None] * len(rows)
    inter = pl.DataFrame(cols, schema_overrides={"timestamp": pl.Float64, "rating": pl.Float64})

    item_file = path / f"{stem}.item"
    if item_file.is_file():
        inames, irows, _ = _read_atomic(item_file)
        if "item_id" not in inames:
            raise DataFormatError(item_file, 1, "an 'item_id:token' column in the header", "\t".join(inames))
        catalog = pl.DataFrame({c: [r[i] for r in irows] for i, c in enumerate(inames)}, schema={c: pl.String for c in inames})
    else:
        catalog = pl.DataFrame({"item_id": []}, schema={"item_id": pl.String})
    return RawDataset(name=name or stem, interactions=inter, items=catalog)
