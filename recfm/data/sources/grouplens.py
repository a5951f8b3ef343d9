"""MovieLens in the official GroupLens layouts, as downloaded from grouplens.org.

Three layouts, recognised by file name inside one folder:

- ML-1M / ML-10M: ``ratings.dat`` (``UserID::MovieID::Rating::Timestamp``) and
  ``movies.dat`` (``MovieID::Title::Genres``, genres ``|``-separated). ``users.dat`` and
  ``tags.dat`` are ignored.
- ML-100K: ``u.data`` (tab-separated ``user item rating timestamp``) and ``u.item``
  (``id|title|release date|video release date|IMDb URL|`` then 19 genre flags).
- ML-20M / ML-25M / ml-latest: ``ratings.csv`` (``userId,movieId,rating,timestamp``) and
  ``movies.csv`` (``movieId,title,genres``), both with a header line.

The ``.dat`` and ``u.item`` files of the older releases are latin-1; a catalog file is decoded
as UTF-8 when it is valid UTF-8 and as latin-1 otherwise (latin-1 maps every byte to one
character, so no two ids merge), which gives the same text for ML-1M/100K and keeps releases
that moved to UTF-8 right. The ratings files hold numbers only: they are read as strict UTF-8,
and a byte that is not UTF-8 fails with the file and line, as does a line with fewer than four
fields or a rating or timestamp that is not a finite number (``nan``, ``inf``).

Catalog fields, in rendering order: ``title``, ``genres`` (names joined with ", "),
``year`` (from a trailing "(1995)" in the title, else from the release date).
"""

from __future__ import annotations

import re
from pathlib import Path

import polars as pl

from recfm.data.schema import DataFormatError, EmptyDatasetError, RawDataset
from recfm.data.sources._io import find_one, finite, numbered_lines, read_bytes

ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip
NO_GENRES = "(no genres listed)"

_TITLE_YEAR = re.compile(r"\((\d{4})(?:\s*[-\u2013]\s*\d{0,4})?\)\s*$")
_DATE_YEAR = re.compile(r"(\d{4})\s*$")

_LAYOUTS = {
    "ml-1m": (["ratings.dat", "ratings.dat.gz"], ["movies.dat", "movies.dat.gz"]),
    "ml-100k": (["u.data", "u.data.gz"], ["u.item", "u.item.gz"]),
    "ml-csv": (["ratings.csv", "ratings.csv.gz"], ["movies.csv", "movies.csv.gz"]),
}


def _layout(path: Path) -> str | None:
    if not path.is_dir():
        return None
    for layout, (ratings, movies) in _LAYOUTS.items():
        if find_one(path, ratings) is not None:
            # ratings.csv alone is too generic a name: require movies.csv beside it.
            if layout == "ml-csv" and find_one(path, movies) is None:
                continue
            return layout
    return None


def detect(path: Path) -> bool:
    return _layout(Path(path)) is not None


def _decoded_lines(path: Path):
    """(1-based line number, line) of a UTF-8-or-latin-1 file, skipping blank lines."""
    data = read_bytes(path)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = data.decode("latin-1")
    # split on "\n" only: str.splitlines would also split on latin-1 "\x85" and friends.
    for n, line in enumerate(text.split("\n"), start=1):
        line = line.rstrip("\r")
        if line.strip():
            yield n, line


def _year(title: str, release_date: str = "") -> str | None:
    m = _TITLE_YEAR.search(title)
    if m:
        return m.group(1)
    m = _DATE_YEAR.search(release_date)
    return m.group(1) if m else None


def _ratings_lines(path: Path, sep: str, expected: str):
    """Columns of a headerless ``user SEP item SEP rating SEP timestamp`` file; extra fields ignored."""
    users, items, ratings, stamps = [], [], [], []
    for n, line in numbered_lines(path):
        parts = line.split(sep)
        try:
            if len(parts) < 4 or not parts[0].strip() or not parts[1].strip():
                raise ValueError
            rating, stamp = finite(float(parts[2])), finite(float(parts[3]))
        except ValueError:
            raise DataFormatError(path, n, expected, line) from None
        users.append(parts[0].strip())
        items.append(parts[1].strip())
        ratings.append(rating)
        stamps.append(stamp)
    if not users:
        raise EmptyDatasetError(f"{path}: no ratings (the file is empty)")
    return {"user_id": users, "item_id": items, "timestamp": stamps, "rating": ratings}


def _catalog(ids: list[str], titles: list[str], genres: list[str | None], years: list[str | None]) -> pl.DataFrame:
    return pl.DataFrame(
        {"item_id": ids, "title": titles, "genres": genres, "year": years},
        schema={"item_id": pl.String, "title": pl.String, "genres": pl.String, "year": pl.String},
    )


def _movies_dat(path: Path) -> pl.DataFrame:
    ids, titles, genres, years = [], [], [], []
    for n, line in _decoded_lines(path):
        parts = line.split("::")
        if len(parts) < 3 or not parts[0].strip():
            raise DataFormatError(path, n, "'MovieID::Title::Genres'", line)
        title = parts[1].strip()
        names = [g.strip() for g in parts[2].split("|") if g.strip() and g.strip() != NO_GENRES]
        ids.append(parts[0].strip())
        titles.append(title)
        genres.append(", ".join(names) or None)
        years.append(_year(title))
    return _catalog(ids, titles, genres, years)


def _u_item(path: Path) -> pl.DataFrame:
    n_fields = 5 + len(ML100K_GENRES)
    expected = f"{n_fields} '|'-separated fields (id|title|release date|video release date|IMDb URL|19 genre flags 0/1)"
    ids, titles, genres, years = [], [], [], []
    for n, line in _decoded_lines(path):
        parts = line.split("|")
        flags = parts[5:n_fields]
        if len(parts) < n_fields or not parts[0].strip() or any(f.strip() not in ("0", "1") for f in flags):
            raise DataFormatError(path, n, expected, line)
        title = parts[1].strip()
        names = [g for g, f in zip(ML100K_GENRES, flags) if f.strip() == "1"]
        ids.append(parts[0].strip())
        titles.append(title)
        genres.append(", ".join(names) or None)
        years.append(_year(title, parts[2].strip()))
    return _catalog(ids, titles, genres, years)


def _ratings_csv(path: Path) -> dict:
    from recfm.data.sources.tabular import read_table, require_columns, to_float

    # every field required: a short line is an error (polars would pad it with nulls), not a null timestamp
    df = read_table(path, sep=",", required=["userId", "movieId", "rating", "timestamp"])
    require_columns(path, df, ["userId", "movieId", "rating", "timestamp"])
    if df.height == 0:
        raise EmptyDatasetError(f"{path}: no ratings (only a header line)")
    return {
        "user_id": df.get_column("userId"),
        "item_id": df.get_column("movieId"),
        "timestamp": to_float(path, df, "timestamp"),
        "rating": to_float(path, df, "rating"),
    }


def _movies_csv(path: Path) -> pl.DataFrame:
    from recfm.data.sources.tabular import read_table, require_columns

    df = read_table(path, sep=",", required=["movieId"])
    require_columns(path, df, ["movieId", "title"])
    titles = [(t or "").strip() for t in df.get_column("title").to_list()]
    raw_genres = df.get_column("genres").to_list() if "genres" in df.columns else [None] * df.height
    genres = []
    for g in raw_genres:
        names = [x.strip() for x in (g or "").split("|") if x.strip() and x.strip() != NO_GENRES]
        genres.append(", ".join(names) or None)
    return _catalog(df.get_column("movieId").to_list(), titles, genres, [_year(t) for t in titles])


def load(path: Path, name: str | None = None) -> RawDataset:
    path = Path(path)
    layout = _layout(path)
    if layout is None:
        raise FileNotFoundError(f"{path}: no GroupLens ratings file (ratings.dat, u.data, or ratings.csv + movies.csv)")
    rating_names, movie_names = _LAYOUTS[layout]
    ratings_file = find_one(path, rating_names)
    movies_file = find_one(path, movie_names)
    if layout == "ml-1m":
        inter = _ratings_lines(ratings_file, "::", "'UserID::MovieID::Rating::Timestamp' (numeric rating and timestamp)")
    elif layout == "ml-100k":
        inter = _ratings_lines(ratings_file, "\t", "tab-separated 'user item rating timestamp' (numeric rating and timestamp)")
    else:
        inter = _ratings_csv(ratings_file)
    if movies_file is None:
        catalog = _catalog([], [], [], [])
    elif layout == "ml-1m":
        catalog = _movies_dat(movies_file)
    elif layout == "ml-100k":
        catalog = _u_item(movies_file)
    else:
        catalog = _movies_csv(movies_file)
    frame = pl.DataFrame(inter, schema={"user_id": pl.String, "item_id": pl.String, "timestamp": pl.Float64, "rating": pl.Float64})
    return RawDataset(name=name or path.name, interactions=frame, items=catalog)
