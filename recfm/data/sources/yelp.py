"""Yelp Open Dataset (academic dataset) JSON files, one JSON object a line.

``yelp_academic_dataset_review.json``: ``user_id``, ``business_id`` (the item), ``stars``
(rating), ``date`` (``YYYY-MM-DD HH:MM:SS``, or a bare date in older releases; local time
without a zone, read as UTC to get unix seconds).
``yelp_academic_dataset_business.json`` (optional): ``business_id``, ``name``,
``categories`` (one comma-separated string), ``city``, ``state``, ``stars``. Attributes,
hours, users, tips and check-ins are ignored. Files may be gzipped (``.json.gz``). Files are
strict UTF-8; a byte that is not, a ``stars`` that is not a finite number or a truncated gzip
file fails with the file and line.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import polars as pl

from recfm.data.schema import DataFormatError, EmptyDatasetError, RawDataset
from recfm.data.sources._io import find_one, finite, numbered_lines
from recfm.data.sources.tabular import json_lines_frame

REVIEW_FILES = ["yelp_academic_dataset_review.json", "yelp_academic_dataset_review.json.gz"]
BUSINESS_FILES = ["yelp_academic_dataset_business.json", "yelp_academic_dataset_business.json.gz"]
CATALOG = ("name", "categories", "city", "state", "stars")


def detect(path: Path) -> bool:
    path = Path(path)
    return path.is_dir() and find_one(path, REVIEW_FILES) is not None


def _unix(date: str) -> float:
    dt = datetime.fromisoformat(date.strip())
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


def _text(value) -> str | None:
    if value is None or isinstance(value, (dict, list, bool)):
        return None
    text = " ".join(str(value).split())
    return text or None


_INTERACTIONS = {"user_id": pl.String, "item_id": pl.String, "timestamp": pl.Float64, "rating": pl.Float64}
_EXPECTED = "a JSON object with 'user_id', 'business_id' and 'date' (YYYY-MM-DD HH:MM:SS)"


def _parse_review(path: Path, n: int, line: str) -> tuple:
    try:
        r = json.loads(line)
        user, item = r["user_id"], r["business_id"]
        if not isinstance(user, str) or not isinstance(item, str) or not user or not item:
            raise ValueError
        stars = r.get("stars")
        return user, item, _unix(r["date"]), None if stars is None else finite(float(stars))
    except (ValueError, TypeError, KeyError, AttributeError):
        raise DataFormatError(path, n, _EXPECTED, line) from None


def _convert(df: pl.DataFrame) -> pl.DataFrame | None:
    date = pl.col("date").str.strip_chars()
    out = df.select(
        pl.col("user_id"),
        pl.col("business_id").alias("item_id"),
        pl.coalesce(
            date.str.to_datetime("%Y-%m-%d %H:%M:%S", strict=False, time_unit="us"),
            date.str.to_date("%Y-%m-%d", strict=False).cast(pl.Datetime("us")),
        ).dt.epoch("us").cast(pl.Float64).truediv(1e6).alias("timestamp"),
        pl.col("stars").alias("rating"),
    )
    bad = out.select(
        pl.any_horizontal(pl.col("user_id", "item_id", "timestamp").is_null()).any()
        | (pl.col("user_id") == "").any()
        | (pl.col("item_id") == "").any()
    ).item()
    return None if bad else out


def _reviews(path: Path) -> pl.DataFrame:
    schema = {"user_id": pl.String, "business_id": pl.String, "stars": pl.Float64, "date": pl.String}
    inter = json_lines_frame(path, schema, _convert, lambda n, line: _parse_review(path, n, line), _INTERACTIONS)
    if inter.height == 0:
        raise EmptyDatasetError(f"{path}: no reviews (the file is empty)")
    return inter


def _businesses(path: Path | None) -> pl.DataFrame:
    schema = {"item_id": pl.String, **{f: pl.String for f in CATALOG}}
    columns: dict[str, list] = {c: [] for c in schema}
    if path is not None:
        for n, line in numbered_lines(path):
            try:
                r = json.loads(line)
                item = r["business_id"]
                if not isinstance(item, str) or not item:
                    raise ValueError
            except (ValueError, TypeError, KeyError):
                raise DataFormatError(path, n, "a JSON object with 'business_id'", line) from None
            cats = r.get("categories")
            if isinstance(cats, list):  # some older releases give a list
                cats = ", ".join(str(c) for c in cats)
            cats = ", ".join(c.strip() for c in cats.split(",") if c.strip()) if isinstance(cats, str) else None
            values = {
                "name": _text(r.get("name")),
                "categories": cats or None,
                "city": _text(r.get("city")),
                "state": _text(r.get("state")),
                "stars": _text(r.get("stars")),
            }
            columns["item_id"].append(item)
            for f in CATALOG:
                columns[f].append(values[f])
    return pl.DataFrame(columns, schema=schema)


def load(path: Path, name: str | None = None) -> RawDataset:
    path = Path(path)
    review_file = find_one(path, REVIEW_FILES) if path.is_dir() else None
    if review_file is None:
        raise FileNotFoundError(f"{path}: no {REVIEW_FILES[0]} (or .json.gz)")
    inter = _reviews(review_file)
    catalog = _businesses(find_one(path, BUSINESS_FILES))
    return RawDataset(name=name or path.name, interactions=inter, items=catalog)
