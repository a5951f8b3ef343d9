"""H&M Personalized Fashion Recommendations (Kaggle), CSV files with a header line.

``transactions_train.csv``: ``t_dat`` (``YYYY-MM-DD``, read as UTC midnight: many
purchases share a day, and equal days keep file order), ``customer_id`` (the user),
``article_id`` (the item), ``price`` and ``sales_channel_id`` (ignored). Every row is an
interaction, repeat purchases included (``prep.drop_repeats`` removes them).
``articles.csv`` (optional): ``article_id``, ``prod_name``, ``product_type_name``,
``colour_group_name``, ``section_name``, ``detail_desc`` and more codes and names, which
are ignored. ``customers.csv`` is ignored.

Article ids are read as text and normalised to 10 digits with leading zeros
(``0108775015``): the Kaggle files write them zero-padded, but copies saved through a
numeric column lose the zero, and both forms must meet.

Catalog fields, in rendering order: ``name`` (``prod_name``, the item title),
``product_type``, ``colour``, ``section`` and ``description`` (``detail_desc``, whitespace
collapsed, cut to 300 characters at a word boundary).

The transactions file (3.5 GB) is scanned once, reading only the three columns used.
"""

from __future__ import annotations

import csv
from pathlib import Path

import polars as pl

from recfm.data.schema import DataFormatError, EmptyDatasetError, RawDataset
from recfm.data.sources._io import open_text
from recfm.data.sources.tabular import LINE, read_table, require_columns

TRANSACTIONS_FILE = "transactions_train.csv"
ARTICLES_FILE = "articles.csv"
ARTICLE_ID_DIGITS = 10
DESCRIPTION_CHARS = 300
CATALOG = {  # catalog field -> articles.csv column
    "name": "prod_name",
    "product_type": "product_type_name",
    "colour": "colour_group_name",
    "section": "section_name",
    "description": "detail_desc",
}
_USED = ("t_dat", "customer_id", "article_id")
_ARTICLE_ID = rf"^\d{{1,{ARTICLE_ID_DIGITS}}}$"
_RULES = {  # problem column -> what the line should hold
    "_extra_fields": "as many comma-separated fields as the header",
    "_no_customer": "a non-empty 'customer_id'",
    "_bad_article": f"an 'article_id' of 1 to {ARTICLE_ID_DIGITS} digits",
    "_bad_date": "a 't_dat' date YYYY-MM-DD",
}


def detect(path: Path) -> bool:
    path = Path(path)
    return path.is_dir() and (path / TRANSACTIONS_FILE).is_file() and (path / ARTICLES_FILE).is_file()


def _article_id(column: str) -> pl.Expr:
    return pl.col(column).str.strip_chars().str.zfill(ARTICLE_ID_DIGITS)


def _header(path: Path) -> list[str]:
    """The column names on line 1."""
    with open_text(path) as fh:
        row = next(csv.reader(fh), None)
    if row is None or not any(f.strip() for f in row):
        if _blank(path):
            raise EmptyDatasetError(f"{path}: the file is empty (expected a header line and data rows)")
        raise DataFormatError(path, 1, "a header line (t_dat,customer_id,article_id,price,sales_channel_id)", None)
    return [f.strip() for f in row]


def _blank(path: Path) -> bool:
    with open_text(path) as fh:
        return all(not line.strip() for line in fh)


def _row_line(path: Path, row: int) -> tuple[int, list[str]]:
    """Physical line and fields of data row ``row`` (0-based, blank lines counted as polars counts them)."""
    with open_text(path) as fh:
        reader = csv.reader(fh)
        next(reader, None)
        for i, fields in enumerate(reader):
            if i == row:
                return reader.line_num, fields
    return row + 2, []


def _transactions(path: Path) -> pl.DataFrame:
    header = _header(path)
    require_columns(path, pl.DataFrame(schema={c: pl.String for c in header}), list(_USED))
    # one column more than the header catches lines with too many fields (polars would drop them silently)
    schema = {**{c: pl.String for c in header}, "_extra": pl.String}
    try:
        df = (
            pl.scan_csv(
                path, has_header=False, skip_rows=1, schema=schema, encoding="utf8",
                truncate_ragged_lines=True, missing_columns="insert",
            )
            .with_row_index("_row")
            .select(pl.col("_row").cast(pl.Int64), *(pl.col(c).str.strip_chars() for c in (*_USED, "_extra")))
            .collect()
        )
    except pl.exceptions.PolarsError as e:  # e.g. broken quoting or not UTF-8: the generic reader names the line
        read_table(path, sep=",", required=list(_USED))
        raise DataFormatError(path, None, "a comma-separated table with a header line", str(e).splitlines()[0] if str(e) else type(e).__name__) from None
    df = df.filter(pl.any_horizontal([pl.col(c).is_not_null() & (pl.col(c) != "") for c in (*_USED, "_extra")]))  # blank lines
    if df.height == 0:
        raise EmptyDatasetError(f"{path}: no transactions (only a header line)")
    stamp = pl.col("t_dat").str.to_date("%Y-%m-%d", strict=False).cast(pl.Datetime("us")).dt.epoch("us").cast(pl.Float64) / 1e6
    df = df.with_columns(stamp.alias("timestamp")).with_columns(
        (pl.col("_extra").is_not_null() & (pl.col("_extra") != "")).alias("_extra_fields"),
        (pl.col("customer_id").is_null() | (pl.col("customer_id") == "")).alias("_no_customer"),
        ~pl.col("article_id").fill_null("").str.contains(_ARTICLE_ID).alias("_bad_article"),
        pl.col("timestamp").is_null().alias("_bad_date"),
    )
    bad = df.filter(pl.any_horizontal(list(_RULES)))
    if bad.height:
        first = bad.row(0, named=True)
        rule = next(r for r in _RULES if first[r])
        line, fields = _row_line(path, int(first["_row"]))
        expected = _RULES[rule]
        if rule == "_extra_fields":
            shown = ", ".join(header)
            expected = f"{len(header)} comma-separated fields like the header ({shown}), found {len(fields)}"
        raise DataFormatError(path, line, expected, ",".join(fields))
    return df.select(
        pl.col("customer_id").alias("user_id"), _article_id("article_id").alias("item_id"), "timestamp",
    )


def _shorten(text: str | None, limit: int) -> str | None:
    """``text`` cut to at most ``limit`` characters, at a word boundary, with '...' when cut."""
    if text is None or len(text) <= limit:
        return text
    cut = text[: limit - 3]
    if " " in cut and not text[limit - 3].isspace():
        cut = cut.rsplit(" ", 1)[0]
    return cut.rstrip(" ,;:.-") + "..."


def _text(column: str) -> pl.Expr:
    text = pl.col(column).str.replace_all(r"\s+", " ").str.strip_chars()
    return pl.when(text != "").then(text)


def _articles(path: Path) -> pl.DataFrame:
    df = read_table(path, sep=",", required=["article_id"])
    require_columns(path, df, ["article_id"])
    bad = df.filter(~pl.col("article_id").str.strip_chars().str.contains(_ARTICLE_ID))
    if bad.height:
        raise DataFormatError(path, int(bad[LINE][0]), _RULES["_bad_article"], bad["article_id"][0])
    text = {field: _text(column) if column in df.columns else pl.lit(None, dtype=pl.String) for field, column in CATALOG.items()}
    catalog = df.select(_article_id("article_id").alias("item_id"), *(e.alias(f) for f, e in text.items()))
    described = [_shorten(t, DESCRIPTION_CHARS) for t in catalog.get_column("description").to_list()]
    return catalog.with_columns(pl.Series("description", described, dtype=pl.String))


def load(path: Path, name: str | None = None) -> RawDataset:
    path = Path(path)
    if not (path.is_dir() and (path / TRANSACTIONS_FILE).is_file()):
        raise FileNotFoundError(f"{path}: no H&M {TRANSACTIONS_FILE}")
    inter = _transactions(path / TRANSACTIONS_FILE)
    articles = path / ARTICLES_FILE
    if articles.is_file():
        catalog = _articles(articles)
    else:
        catalog = pl.DataFrame(schema={"item_id": pl.String, **{f: pl.String for f in CATALOG}})
    return RawDataset(name=name or path.name, interactions=inter, items=catalog)
