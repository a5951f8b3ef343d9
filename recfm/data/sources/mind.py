"""Microsoft News Dataset (MIND: MINDsmall / MINDlarge), one split folder as released.

``behaviors.tsv`` (tab-separated, no header): impression id, user id, time
(``11/15/2019 8:55:22 AM``, local time without a zone, read as UTC to get unix seconds),
history (space-separated ids of the news the user clicked before the logged period; may
be empty) and impressions (space-separated ``N1234-1``: shown and clicked, ``N1234-0``:
shown, not clicked; the test split's unlabeled ``N1234`` counts as not clicked).
``news.tsv`` (tab-separated, no header): news id, category, subcategory, title,
abstract, url, title entities, abstract entities (the last three are ignored and may be
absent).

Interactions are clicks:

- history clicks have no time of their own. Their timestamp is null, which puts them
  before all of the user's impressions (preprocessing sorts null first), in the order they
  are listed (the user's first line first, then ids a later line adds);
- clicked impressions (``-1``) get the impression time; equal times keep file order.

Each (user, news) pair is kept once, at its first occurrence in that order (news in the
history that the user clicks again in an impression stays a history click). The
interactions are listed line by line: a line's new history clicks, then its clicks.
Clicks on news that ``news.tsv`` lacks are dropped, with one logged warning counting them.

Catalog fields, in rendering order: ``category``, ``subcategory``, ``title``,
``abstract``; the title is the item title.
"""

from __future__ import annotations

import logging
from itertools import islice
from pathlib import Path

import polars as pl

from recfm.data.schema import DataFormatError, EmptyDatasetError, RawDataset
from recfm.data.sources._io import check_text, numbered_lines, open_text

log = logging.getLogger(__name__)

BEHAVIORS_FILE = "behaviors.tsv"
NEWS_FILE = "news.tsv"
BEHAVIOR_COLUMNS = ("impression_id", "user_id", "time", "history", "impressions")
TIME_FORMAT = "%m/%d/%Y %I:%M:%S %p"
CATALOG = ("category", "subcategory", "title", "abstract")
NEWS_FIELDS = 8

_IMPRESSIONS = r"^[^\s-]+(?:-[01])?(?:\s+[^\s-]+(?:-[01])?)*$"  # ids with an optional -0/-1 label
_CLICK = r"[^\s-]+-1"
_FIELDS_EXPECTED = (
    "5 tab-separated fields (impression id, user id, time, space-separated history, space-separated impressions)"
)
_RULES = {  # problem column -> what the line should hold
    "_extra_fields": _FIELDS_EXPECTED,
    "_no_user": "a user id in the 2nd tab-separated field",
    "_bad_time": "a time like '11/15/2019 8:55:22 AM' in the 3rd tab-separated field",
    "_bad_impressions": "impressions 'NEWSID-1' (clicked) / 'NEWSID-0' separated by spaces in the 5th tab-separated field",
}


def detect(path: Path) -> bool:
    path = Path(path)
    return path.is_dir() and (path / BEHAVIORS_FILE).is_file() and (path / NEWS_FILE).is_file()


def _line(path: Path, n: int) -> str | None:
    """The text of physical line ``n`` (1-based), for error messages."""
    with open_text(path) as fh:
        found = next(islice(fh, n - 1, n), None)
    return None if found is None else found.rstrip("\r\n")


def _behaviors(path: Path) -> pl.DataFrame:
    """Columns ``_row`` (0-based file line), ``user_id``, ``timestamp``, ``history`` and
    ``impressions`` (stripped text) of every non-blank line, validated."""
    if next(numbered_lines(path), None) is None:
        raise EmptyDatasetError(f"{path}: no impressions (the file is empty)")
    # a sixth column catches lines with too many fields (polars would drop them silently)
    schema = {c: pl.String for c in (*BEHAVIOR_COLUMNS, "_extra")}
    text = {c: pl.col(c).fill_null("").str.strip_chars() for c in (*BEHAVIOR_COLUMNS[1:], "_extra")}
    try:
        df = (
            pl.scan_csv(
                path, separator="\t", has_header=False, schema=schema, quote_char=None, empty_string_is_null=False,
                encoding="utf8", truncate_ragged_lines=True, missing_columns="insert",
            )
            .with_row_index("_row")
            .select(pl.col("_row").cast(pl.Int64), *(e.alias(c) for c, e in text.items()))
            .collect()
        )
    except pl.exceptions.PolarsError as e:
        check_text(path)  # bytes that are not UTF-8: DataFormatError at their line
        raise DataFormatError(path, None, _FIELDS_EXPECTED, str(e).splitlines()[0] if str(e) else type(e).__name__) from None
    # blank lines come back as rows of empty strings (kept in _row numbering)
    df = df.filter(pl.any_horizontal([pl.col(c) != "" for c in text]))
    stamp = pl.col("time").str.to_datetime(TIME_FORMAT, strict=False, time_unit="us").dt.epoch("us").cast(pl.Float64) / 1e6
    df = df.with_columns(stamp.alias("timestamp")).with_columns(
        (pl.col("_extra") != "").alias("_extra_fields"),
        (pl.col("user_id") == "").alias("_no_user"),
        pl.col("timestamp").is_null().alias("_bad_time"),
        ~pl.col("impressions").str.contains(_IMPRESSIONS).alias("_bad_impressions"),
    )
    bad = df.filter(pl.any_horizontal(list(_RULES)))
    if bad.height:
        first = bad.row(0, named=True)
        rule = next(r for r in _RULES if first[r])
        n = int(first["_row"]) + 1  # no quoting: one row per physical line
        line = _line(path, n)
        expected = _RULES[rule] if rule != "_extra_fields" else _FIELDS_EXPECTED + f", found {(line or '').count(chr(9)) + 1}"
        raise DataFormatError(path, n, expected, line)
    return df.select("_row", "user_id", "timestamp", "history", "impressions")


def _clicks(behaviors: pl.DataFrame) -> pl.DataFrame:
    """History clicks and clicked impressions, one row per (user, news), in line order."""
    history = (
        behaviors.filter(pl.col("history") != "")
        .unique(["user_id", "history"], keep="first", maintain_order=True)  # a user's lines repeat one history
        .select(
            "_row", pl.lit(0, dtype=pl.Int8).alias("_kind"), "user_id",
            pl.col("history").str.extract_all(r"\S+").alias("item_id"),
            pl.lit(None, dtype=pl.Float64).alias("timestamp"),
        )
    )
    clicked = behaviors.select(
        "_row", pl.lit(1, dtype=pl.Int8).alias("_kind"), "user_id",
        pl.col("impressions").str.extract_all(_CLICK).list.eval(pl.element().str.strip_suffix("-1")).alias("item_id"),
        "timestamp",
    )
    events = (
        pl.concat([history, clicked])
        .explode("item_id")
        .drop_nulls("item_id")
        .sort(["_row", "_kind"], maintain_order=True)  # per line: its history, then its clicks
        .with_row_index("_seq")
    )
    # first occurrence in the user's chronology: history (listed order), then clicks by time, then file order
    first = (
        events.sort(["_kind", "timestamp", "_seq"], nulls_last=False)
        .unique(["user_id", "item_id"], keep="first", maintain_order=True)
        .sort("_seq")
    )
    return first.select("user_id", "item_id", "timestamp")


def _text(value: str) -> str | None:
    text = " ".join(value.split())
    return text or None


def _news(path: Path) -> pl.DataFrame:
    columns: dict[str, list] = {c: [] for c in ("item_id", *CATALOG)}
    expected = (
        f"{NEWS_FIELDS} tab-separated fields (news id, category, subcategory, title, abstract, url, "
        "title entities, abstract entities) with a news id"
    )
    for n, line in numbered_lines(path):
        parts = line.split("\t")
        if not 4 <= len(parts) <= NEWS_FIELDS or not parts[0].strip():
            raise DataFormatError(path, n, expected + f", found {len(parts)} fields", line)
        parts += [""] * (len(CATALOG) + 1 - len(parts))
        columns["item_id"].append(parts[0].strip())
        for f, value in zip(CATALOG, parts[1 : len(CATALOG) + 1]):
            columns[f].append(_text(value))
    return pl.DataFrame(columns, schema={c: pl.String for c in columns})


def load(path: Path, name: str | None = None) -> RawDataset:
    path = Path(path)
    if not detect(path):
        raise FileNotFoundError(f"{path}: no MIND {BEHAVIORS_FILE} + {NEWS_FILE}")
    behaviors_file, news_file = path / BEHAVIORS_FILE, path / NEWS_FILE
    inter = _clicks(_behaviors(behaviors_file))
    catalog = _news(news_file)
    known = inter.get_column("item_id").is_in(catalog.get_column("item_id").implode())
    if not known.all():
        missing = inter.filter(~known)
        log.warning(
            "%s: skipped %d clicks on %d news ids missing from %s (e.g. %s)",
            behaviors_file, missing.height, missing.get_column("item_id").n_unique(), news_file,
            missing.get_column("item_id")[0],
        )
        inter = inter.filter(known)
    return RawDataset(name=name or path.name, interactions=inter, items=catalog)
