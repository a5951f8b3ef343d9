"""UCSD Goodreads book graph (Wan & McAuley): JSON-lines interactions and book metadata.

``goodreads_interactions_<genre>.json`` (or ``goodreads_interactions_dedup.json`` /
``goodreads_interactions.json`` for the whole graph), one JSON object a line:
``user_id``, ``book_id``, ``is_read`` (bool), ``rating`` (0-5, 0 = not rated),
``date_added`` (``Sun Jun 17 12:00:00 -0700 2012``, converted to unix seconds), plus
``review_id``, ``read_at``, ... which are ignored.

**What counts as an interaction:** a line with ``is_read`` true or ``rating`` > 0. Books
that were only shelved (``to-read``, unread and unrated) are skipped: they say what a user
plans to read, not what they read. ``rating`` is kept when > 0, null otherwise. An empty
``date_added`` gives a null timestamp.

``goodreads_books_<genre>.json`` (or ``goodreads_books.json``): ``book_id``, ``title``,
``publication_year``, ``publisher``, ``description``, ``popular_shelves`` (a list of
``{"count": ..., "name": ...}``), ... Catalog fields, in rendering order: ``title``,
``year``, ``publisher``, ``description`` (whitespace collapsed, cut to 300 characters at a
word boundary), ``shelves`` (the 3 most used shelf names, leaving out the reading-status
shelves ``to-read``, ``currently-reading`` and ``read`` that nearly every book has).
Author ids, series, similar books and editions are left out. Books nobody interacted with
are skipped without being parsed.

Every file may be gzipped (``.json.gz``). A folder holding several genres needs
``genre=`` (e.g. ``"poetry"``, or ``"dedup"`` for the whole graph) to pick one.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from pathlib import Path

import polars as pl

from recfm.data.schema import DataFormatError, EmptyDatasetError, RawDataset
from recfm.data.sources._io import finite, numbered_lines
from recfm.data.sources.tabular import json_lines_frame

INTERACTIONS_PREFIX = "goodreads_interactions"
BOOKS_PREFIX = "goodreads_books"
DATE_FORMAT = "%a %b %d %H:%M:%S %z %Y"
CATALOG = ("title", "year", "publisher", "description", "shelves")
DESCRIPTION_CHARS = 300
TOP_SHELVES = 3
STATUS_SHELVES = frozenset({"to-read", "currently-reading", "read"})

_EXTENSIONS = (".json.gz", ".json")
_BOOK_ID_RE = re.compile(r'"book_id"\s*:\s*"([^"\\]*)"')
_INTERACTIONS = {"user_id": pl.String, "item_id": pl.String, "timestamp": pl.Float64, "rating": pl.Float64, "_keep": pl.Boolean}
_EXPECTED = (
    "a JSON object with 'user_id', 'book_id', 'date_added' (like 'Sun Jun 17 12:00:00 -0700 2012'), "
    "'is_read' (true/false) and 'rating' (a number)"
)


# ---------------------------------------------------------------- files


def _genre(path: Path, prefix: str) -> str | None:
    """The ``<genre>`` of ``<prefix>[_<genre>].json[.gz]`` ('' without one), else None."""
    name = path.name
    for ext in _EXTENSIONS:
        if name.startswith(prefix) and name.endswith(ext):
            rest = name[len(prefix) : -len(ext)]
            if rest == "" or rest.startswith("_"):
                return rest[1:]
    return None


def _interaction_files(folder: Path) -> dict[str, Path]:
    """genre -> interactions file (the plain ``.json`` when both it and ``.json.gz`` exist)."""
    if not folder.is_dir():
        return {}
    found: dict[str, Path] = {}
    for p in sorted(folder.iterdir(), key=lambda p: (p.name.endswith(".gz"), p.name)):
        genre = _genre(p, INTERACTIONS_PREFIX) if p.is_file() else None
        if genre is not None:
            found.setdefault(genre, p)
    return found


def detect(path: Path) -> bool:
    return bool(_interaction_files(Path(path)))


def _pick(folder: Path, genre: str | None) -> tuple[str, Path]:
    files = _interaction_files(folder)
    if not files:
        raise FileNotFoundError(f"{folder}: no {INTERACTIONS_PREFIX}_<genre>.json(.gz) file")
    if genre is not None:
        if genre not in files:
            shown = ", ".join(repr(g) for g in files)
            raise FileNotFoundError(f"{folder}: no Goodreads interactions for genre {genre!r} (genres: {shown})")
        return genre, files[genre]
    if len(files) > 1:
        names = ", ".join(p.name for p in files.values())
        raise ValueError(f"{folder}: several Goodreads interaction files ({names}); pass genre= one of {', '.join(map(repr, files))}")
    return next(iter(files.items()))


def _books_file(folder: Path, genre: str) -> Path | None:
    """``goodreads_books_<genre>``, else ``goodreads_books`` (the whole graph), else the only books file."""
    books: dict[str, Path] = {}
    for p in sorted(folder.iterdir(), key=lambda p: (p.name.endswith(".gz"), p.name)):
        g = _genre(p, BOOKS_PREFIX) if p.is_file() else None
        if g is not None:
            books.setdefault(g, p)
    for key in (genre, ""):
        if key in books:
            return books[key]
    return next(iter(books.values())) if len(books) == 1 else None


# ---------------------------------------------------------------- interactions


def _flag(value) -> bool:
    if value is None or isinstance(value, bool):
        return bool(value)
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0", ""):
        return value.strip().lower() in ("true", "1")
    raise ValueError(f"not a flag: {value!r}")


def _parse_interaction(path: Path, n: int, line: str) -> tuple:
    try:
        r = json.loads(line)
        user, item, date = r["user_id"], r["book_id"], r["date_added"]
        if isinstance(user, int) and not isinstance(user, bool):
            user = str(user)
        if isinstance(item, int) and not isinstance(item, bool):
            item = str(item)
        if not isinstance(user, str) or not isinstance(item, str) or not user or not item or not isinstance(date, str):
            raise ValueError
        stamp = datetime.strptime(date.strip(), DATE_FORMAT).timestamp() if date.strip() else None
        rating = r.get("rating")
        rating = 0.0 if rating in (None, "") else finite(float(rating))
        is_read = _flag(r.get("is_read"))
        return user, item, stamp, rating if rating > 0 else None, is_read or rating > 0
    except (ValueError, TypeError, KeyError, AttributeError, OverflowError):
        raise DataFormatError(path, n, _EXPECTED, line) from None


def _convert(df: pl.DataFrame) -> pl.DataFrame | None:
    date = pl.col("date_added").str.strip_chars()
    rating = pl.col("rating").fill_null(0.0)
    out = df.select(
        pl.col("user_id"),
        pl.col("book_id").alias("item_id"),
        date.str.to_datetime(DATE_FORMAT, strict=False, time_unit="us").dt.epoch("us").cast(pl.Float64).truediv(1e6).alias("timestamp"),
        pl.when(rating > 0).then(rating).otherwise(None).alias("rating"),
        (pl.col("is_read").fill_null(False) | (rating > 0)).alias("_keep"),
    )
    bad = pl.concat([df.select(date.alias("date")), out], how="horizontal").select(
        (pl.col("user_id").is_null() | (pl.col("user_id") == "") | pl.col("item_id").is_null() | (pl.col("item_id") == "")).any()
        | pl.col("date").is_null().any()
        | (pl.col("timestamp").is_null() & (pl.col("date") != "")).any()
    ).item()
    return None if bad else out


def _interactions(path: Path) -> pl.DataFrame:
    schema = {"user_id": pl.String, "book_id": pl.String, "is_read": pl.Boolean, "rating": pl.Float64, "date_added": pl.String}
    rows = json_lines_frame(path, schema, _convert, lambda n, line: _parse_interaction(path, n, line), _INTERACTIONS)
    if rows.height == 0:
        raise EmptyDatasetError(f"{path}: no interactions (the file is empty)")
    inter = rows.filter(pl.col("_keep")).drop("_keep")
    if inter.height == 0:
        raise EmptyDatasetError(f"{path}: no line has is_read true or a rating > 0 (books only shelved are not interactions)")
    return inter


# ---------------------------------------------------------------- books


def _text(value) -> str | None:
    if value is None or isinstance(value, (dict, list, bool)):
        return None
    text = " ".join(str(value).split())
    return text or None


def _shorten(text: str | None, limit: int) -> str | None:
    """``text`` cut to at most ``limit`` characters, at a word boundary, with '...' when cut."""
    if text is None or len(text) <= limit:
        return text
    cut = text[: limit - 3]
    if " " in cut and not text[limit - 3].isspace():
        cut = cut.rsplit(" ", 1)[0]
    return cut.rstrip(" ,;:.-") + "..."


def _shelves(value) -> str | None:
    if not isinstance(value, list):
        return None
    ranked = []
    for i, shelf in enumerate(value):
        if not isinstance(shelf, dict):
            continue
        name = _text(shelf.get("name"))
        try:
            count = int(shelf.get("count") or 0)
        except (TypeError, ValueError):
            count = 0
        if name and name.lower() not in STATUS_SHELVES:
            ranked.append((-count, i, name))
    names = list(dict.fromkeys(name for _, _, name in sorted(ranked)))
    return ", ".join(names[:TOP_SHELVES]) or None


def _books(path: Path | None, wanted: set[str]) -> pl.DataFrame:
    schema = {"item_id": pl.String, **{f: pl.String for f in CATALOG}}
    columns: dict[str, list] = {c: [] for c in schema}
    if path is None:
        return pl.DataFrame(columns, schema=schema)
    for n, line in numbered_lines(path):
        m = _BOOK_ID_RE.search(line)
        if m is not None and m.group(1) not in wanted:
            continue  # a book nobody read: not parsed
        try:
            r = json.loads(line)
            item = r["book_id"]
            if isinstance(item, int) and not isinstance(item, bool):
                item = str(item)
            if not isinstance(item, str) or not item:
                raise ValueError
        except (ValueError, TypeError, KeyError):
            raise DataFormatError(path, n, "a JSON object with 'book_id'", line) from None
        if item not in wanted:
            continue
        values = {
            "title": _text(r.get("title")) or _text(r.get("title_without_series")),
            "year": _text(r.get("publication_year")),
            "publisher": _text(r.get("publisher")),
            "description": _shorten(_text(r.get("description")), DESCRIPTION_CHARS),
            "shelves": _shelves(r.get("popular_shelves")),
        }
        columns["item_id"].append(item)
        for f in CATALOG:
            columns[f].append(values[f])
    return pl.DataFrame(columns, schema=schema)


def load(path: Path, name: str | None = None, genre: str | None = None) -> RawDataset:
    path = Path(path)
    genre, inter_file = _pick(path, genre)
    inter = _interactions(inter_file)
    catalog = _books(_books_file(path, genre), set(inter.get_column("item_id").unique().to_list()))
    return RawDataset(name=name or path.name, interactions=inter, items=catalog)
