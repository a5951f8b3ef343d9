"""Generic tables: CSV, TSV or Parquet interactions (and an optional item table) with a column mapping.

``path`` is either one table file (the interactions) or a folder holding
``interactions.(csv|tsv|parquet)`` and optionally ``items.(csv|tsv|parquet)`` (CSV/TSV may
be gzipped). CSV/TSV files need a header line. Every CSV/TSV value is read as text, so
ids such as ``007`` keep their leading zeros.

Timestamps may be numbers (kept as given) or ISO 8601 date / date-time strings
(converted to unix seconds; a date-time without a zone is taken as UTC). Parquet
date/datetime columns are converted the same way.

Errors name the file, the line (1 for the header) and what was expected: a mapped column
that is missing, a line with the wrong number of fields, an empty id, a value that is not a
(finite) number or a date, bytes that are not UTF-8, a truncated or corrupt gzip file.
"""

from __future__ import annotations

import csv
import io
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator

import polars as pl

from recfm.data.schema import DataFormatError, EmptyDatasetError, RawDataset
from recfm.data.sources._io import READ_ERRORS, find_one, open_text, raw_lines, raw_open, read_error

TABLE_SUFFIXES = (".csv", ".tsv", ".tab", ".parquet", ".pq", ".csv.gz", ".tsv.gz", ".tab.gz")
INTERACTION_FILES = ["interactions.parquet", "interactions.csv", "interactions.tsv", "interactions.csv.gz", "interactions.tsv.gz"]
ITEM_FILES = ["items.parquet", "items.csv", "items.tsv", "items.csv.gz", "items.tsv.gz"]
TITLE_FIELDS = ("title", "movie_title", "name", "headline")
LINE = "__line__"  # helper column of read_table: the file line of each row


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return next((s for s in sorted(TABLE_SUFFIXES, key=len, reverse=True) if name.endswith(s)), path.suffix.lower())


def _is_parquet(path: Path) -> bool:
    return _suffix(path) in (".parquet", ".pq")


def detect(path: Path) -> bool:
    path = Path(path)
    if path.is_file():
        return _suffix(path) in TABLE_SUFFIXES
    return path.is_dir() and find_one(path, INTERACTION_FILES) is not None


def _sep_for(path: Path, sep: str | None) -> str:
    if sep:
        return sep
    suffix = _suffix(path)
    if suffix.startswith((".tsv", ".tab")):
        return "\t"
    if suffix.startswith(".csv"):
        return ","
    with open_text(path) as fh:
        return "\t" if "\t" in fh.readline() else ","


def _sep_name(sep: str) -> str:
    return {"\t": "tab", ",": "comma", ";": "semicolon", "|": "pipe"}.get(sep, repr(sep))


def _columns_text(columns: list[str]) -> str:
    shown = ", ".join(columns[:20])
    return shown + (f", ... ({len(columns)} columns)" if len(columns) > 20 else "")


def _blank_file(path: Path) -> bool:
    with open_text(path) as fh:
        return all(not line.strip() for line in fh)


def _csv_rows(path: Path, sep: str):
    """(physical line number, fields) of every non-blank row, header included."""
    quoting = csv.QUOTE_NONE if sep == "\t" else csv.QUOTE_MINIMAL
    with open_text(path) as fh:
        reader = csv.reader(fh, delimiter=sep, quoting=quoting)
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as e:
                raise DataFormatError(path, reader.line_num, "well-formed CSV quoting", str(e)) from None
            if row and any(f.strip() for f in row):
                yield reader.line_num, row


def _rescan(path: Path, sep: str, required: list[str] = ()) -> None:
    """Find the first line with a wrong field count or an empty required field; raise on it."""
    header = None
    for n, row in _csv_rows(path, sep):
        if header is None:
            header, req = row, [i for i, c in enumerate(row) if c in required]
            continue
        if len(row) != len(header):
            expected = f"{len(header)} {_sep_name(sep)}-separated fields like the header ({_columns_text(header)})"
            raise DataFormatError(path, n, expected + f", found {len(row)}", sep.join(row))
        for i in req:
            if not row[i].strip():
                raise DataFormatError(path, n, f"a non-empty value in column '{header[i]}'", sep.join(row))


def _physical_lines(path: Path) -> int:
    """Number of lines in a (possibly gzipped) file, counted in chunks."""
    count, last = 0, b"\n"
    with raw_open(path) as fh:
        while chunk := fh.read(1 << 24):
            count += chunk.count(b"\n")
            last = chunk[-1:]
    return count + (last != b"\n")


def _exact_lines(path: Path, sep: str) -> list[int]:
    """File line of each non-blank data row (quoted line breaks make rows span lines)."""
    rows = _csv_rows(path, sep)
    next(rows, None)
    return [n for n, _ in rows]


def read_table(path: Path, sep: str | None = None, required: list[str] = ()) -> pl.DataFrame:
    """A whole table. CSV/TSV: every column as text, blank lines dropped, plus a ``LINE``
    column (the file line of each row). Parquet: native types, ``LINE`` null.

    ``required`` columns must be non-empty on every row (else DataFormatError at that line).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    if _is_parquet(path):
        try:
            df = pl.read_parquet(path)
        except Exception as e:  # noqa: BLE001 - polars raises several kinds
            raise DataFormatError(path, None, "a readable Parquet file", str(e).splitlines()[0] if str(e) else type(e).__name__) from None
        if df.height == 0 and not df.columns:
            raise EmptyDatasetError(f"{path}: the file is empty")
        df = df.with_columns(pl.lit(None, dtype=pl.Int64).alias(LINE))
        present = [c for c in required if c in df.columns]
        for c in present:
            bad = df.with_row_index("_row").filter(pl.col(c).is_null() | (pl.col(c).cast(pl.String).str.strip_chars() == ""))
            if bad.height:
                raise DataFormatError(path, None, f"a non-empty value in column '{c}' (row {bad['_row'][0] + 1})", str(bad.row(0, named=True)))
        return df
    sep = _sep_for(path, sep)
    if _blank_file(path):
        raise EmptyDatasetError(f"{path}: the file is empty (expected a header line and data rows)")
    try:
        df = pl.read_csv(
            path, separator=sep, infer_schema=False, quote_char=None if sep == "\t" else '"', encoding="utf8",
        )
    except pl.exceptions.NoDataError:
        raise EmptyDatasetError(f"{path}: the file is empty (expected a header line and data rows)") from None
    except Exception as e:  # noqa: BLE001 - polars' messages lack line numbers: find the line ourselves
        _rescan(path, sep, required)  # also reads every byte: not UTF-8, or a damaged gzip stream, raise here
        raise DataFormatError(path, None, f"a {_sep_name(sep)}-separated table with a header line", str(e).splitlines()[0]) from None
    exact = _physical_lines(path) == df.height + 1  # else quoted line breaks (or trailing blank lines)
    df = df.with_row_index(LINE, offset=2).with_columns(pl.col(LINE).cast(pl.Int64))
    # by position: a header field such as "*" or "^a$" would be a wildcard or a pattern to pl.col
    data_cols = [i for i, c in enumerate(df.columns) if c != LINE]
    if data_cols:
        df = df.filter(~pl.all_horizontal([pl.nth(i).is_null() | (pl.nth(i).str.strip_chars() == "") for i in data_cols]))
    if not exact:
        lines = _exact_lines(path, sep)
        if len(lines) == df.height:
            df = df.with_columns(pl.Series(LINE, lines, dtype=pl.Int64))
    present = [c for c in required if c in df.columns]
    if present and df.select(pl.any_horizontal([pl.col(c).is_null() | (pl.col(c).str.strip_chars() == "") for c in present]).any()).item():
        _rescan(path, sep, present)  # a short line (polars pads it with nulls) or an empty value
        for c in present:
            bad = df.filter(pl.col(c).is_null() | (pl.col(c).str.strip_chars() == ""))
            if bad.height:
                raise DataFormatError(path, int(bad[LINE][0]), f"a non-empty value in column '{c}'", None)
    return df


def require_columns(path: Path, df: pl.DataFrame, columns: list[str], roles: dict[str, str] | None = None) -> None:
    """DataFormatError (line 1, the header) for the first of ``columns`` the table lacks."""
    available = [c for c in df.columns if c != LINE]
    for c in columns:
        if c not in df.columns:
            role = f" for {roles[c]}" if roles and c in roles else ""
            raise DataFormatError(
                path, None if _is_parquet(Path(path)) else 1,
                f"a column '{c}'{role} (available columns: {_columns_text(available)})", None,
            )


def _where(path: Path, df: pl.DataFrame, row: int) -> tuple[int | None, str]:
    line = df[LINE][row] if LINE in df.columns else None
    return (int(line) if line is not None else None), ("" if line is not None else f" (row {row + 1})")


def _finite(path: Path, df: pl.DataFrame, column: str, values: pl.Series, expected: str) -> pl.Series:
    """``values`` (Float64, one per row of ``df``); NaN or +-inf raises DataFormatError at its line."""
    bad = (values.is_nan() | values.is_infinite()).fill_null(False).arg_true()
    if len(bad):
        line, row = _where(path, df, int(bad[0]))
        raise DataFormatError(path, line, f"{expected} in column '{column}'{row}", str(df.get_column(column)[int(bad[0])]))
    return values.alias(column)


def to_float(path: Path, df: pl.DataFrame, column: str) -> pl.Series:
    """A column as Float64; a non-empty value that is not a finite number raises DataFormatError at its line."""
    col = df.get_column(column)
    expected = "a finite number"
    if col.dtype.is_numeric():
        return _finite(path, df, column, col.cast(pl.Float64), expected)
    text = col.cast(pl.String).str.strip_chars()
    values = text.cast(pl.Float64, strict=False)
    bad = (values.is_null() & text.is_not_null() & (text != "")).arg_true()
    if len(bad):
        line, row = _where(path, df, int(bad[0]))
        raise DataFormatError(path, line, f"{expected} in column '{column}'{row}", text[int(bad[0])])
    return _finite(path, df, column, values, expected)


def _parse_time(value: str) -> float:
    try:
        return float(value)
    except ValueError:
        pass
    dt = datetime.fromisoformat(value)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


def to_timestamp(path: Path, df: pl.DataFrame, column: str) -> pl.Series:
    """A time column as unix seconds (Float64): numbers as given, ISO dates/date-times converted.
    NaN and +-inf raise DataFormatError at their line."""
    col = df.get_column(column)
    expected = "a finite number or an ISO date/date-time"
    if col.dtype.is_numeric():
        return _finite(path, df, column, col.cast(pl.Float64), expected)
    if col.dtype == pl.Date:
        col = col.cast(pl.Datetime("us"))
    if isinstance(col.dtype, pl.Datetime):
        return (col.dt.epoch("us").cast(pl.Float64) / 1e6).alias(column)
    text = col.cast(pl.String).str.strip_chars()
    numbers = text.cast(pl.Float64, strict=False)
    if numbers.null_count() == text.null_count():
        return _finite(path, df, column, numbers, expected)
    mapping = {}
    for i, value in enumerate(text.to_list()):
        if value is None or value == "" or value in mapping:
            continue
        try:
            mapping[value] = _parse_time(value)
        except ValueError:
            line, row = _where(path, df, i)
            raise DataFormatError(path, line, f"{expected} in column '{column}'{row}", value) from None
    return _finite(path, df, column, text.replace_strict(mapping, default=None, return_dtype=pl.Float64), expected)


def _text_column(path: Path, df: pl.DataFrame, column: str) -> pl.Expr | None:
    dtype = df.schema[column]
    if dtype == pl.String:
        return pl.col(column).str.strip_chars()
    if isinstance(dtype, pl.List) and dtype.inner == pl.String:
        return pl.col(column).list.join(", ")
    if dtype.is_numeric() or dtype in (pl.Boolean, pl.Date) or isinstance(dtype, pl.Datetime):
        return pl.col(column).cast(pl.String)
    return None


def load(
    path: Path,
    name: str | None = None,
    user_col: str = "user_id",
    item_col: str = "item_id",
    time_col: str | None = "timestamp",
    rating_col: str | None = None,
    items_path: Path | str | None = None,
    item_id_col: str | None = None,
    text_cols: list[str] | None = None,
    sep: str | None = None,
) -> RawDataset:
    """Load a table (or a folder with ``interactions.*`` and optional ``items.*``).

    ``time_col=None``: no timestamps (row order is the chronology). ``rating_col=None``: a
    column named ``rating`` is used when present. ``item_id_col`` defaults to ``item_col``;
    ``text_cols`` (default: every other item column, a title-like column first) are the
    catalog's text fields, in rendering order.
    """
    path = Path(path)
    if path.is_dir():
        inter_file = find_one(path, INTERACTION_FILES)
        if inter_file is None:
            raise FileNotFoundError(f"{path}: no interactions.(csv|tsv|parquet) file")
        items_file = Path(items_path) if items_path is not None else find_one(path, ITEM_FILES)
    else:
        inter_file = path
        items_file = Path(items_path) if items_path is not None else None
    mapped = [user_col, item_col] + ([time_col] if time_col else [])
    df = read_table(inter_file, sep=sep, required=mapped)
    if rating_col is None and "rating" in df.columns:
        rating_col = "rating"
    roles = {rating_col: "rating_col", time_col: "time_col", item_col: "item_col", user_col: "user_col"}
    require_columns(inter_file, df, mapped + ([rating_col] if rating_col else []), roles)
    if df.height == 0:
        raise EmptyDatasetError(f"{inter_file}: no interactions (only a header line)")
    cols = {
        "user_id": df.get_column(user_col).cast(pl.String).str.strip_chars(),
        "item_id": df.get_column(item_col).cast(pl.String).str.strip_chars(),
        "timestamp": to_timestamp(inter_file, df, time_col) if time_col else pl.Series([None] * df.height, dtype=pl.Float64),
    }
    if rating_col:
        cols["rating"] = to_float(inter_file, df, rating_col)
    inter = pl.DataFrame({k: v.alias(k) for k, v in cols.items()})

    if items_file is None:
        catalog = pl.DataFrame({"item_id": []}, schema={"item_id": pl.String})
    else:
        id_col = item_id_col or item_col
        idf = read_table(items_file, sep=sep, required=[id_col])
        require_columns(items_file, idf, [id_col], {id_col: "item_id_col"})
        if text_cols is None:
            fields = [c for c in idf.columns if c not in (id_col, LINE, "item_id")]
            title = next((c for c in fields if c.lower() in TITLE_FIELDS), None)
            if title is not None:
                fields = [title] + [c for c in fields if c != title]
            exprs = {c: _text_column(items_file, idf, c) for c in fields}
            exprs = {c: e for c, e in exprs.items() if e is not None}  # nested columns are left out
        else:
            require_columns(items_file, idf, list(text_cols), {c: "text_cols" for c in text_cols})
            exprs = {}
            for c in text_cols:
                e = _text_column(items_file, idf, c)
                if e is None:
                    raise DataFormatError(items_file, None, f"a text, number or list-of-text column '{c}'", str(idf.schema[c]))
                exprs[c] = e
        exprs.pop("item_id", None)
        catalog = idf.select([pl.col(id_col).cast(pl.String).str.strip_chars().alias("item_id"), *(e.alias(c) for c, e in exprs.items())])
    default_name = path.name if path.is_dir() else path.name.split(".")[0]
    return RawDataset(name=name or default_name, interactions=inter, items=catalog)


# ---------------------------------------------------------------- JSON lines (Amazon, Yelp)


def _line_chunks(path: Path, size: int) -> Iterator[tuple[int, list[bytes]]]:
    """(line number of the first line, raw lines) in chunks of ``size`` lines; a damaged gzip
    stream raises DataFormatError naming the line where it breaks."""
    start, chunk = 1, []
    for line in raw_lines(path):
        chunk.append(line)
        if len(chunk) == size:
            yield start, chunk
            start, chunk = start + size, []
    if chunk:
        yield start, chunk


def json_lines_frame(
    path: Path,
    schema: dict[str, pl.DataType],
    convert: Callable[[pl.DataFrame], pl.DataFrame | None],
    parse_line: Callable[[int, str], tuple],
    out_schema: dict[str, pl.DataType],
    chunk_lines: int = 100_000,
) -> pl.DataFrame:
    """Selected top-level keys of a JSON-lines file (gzip-aware), rows in file order.

    Each chunk of lines is parsed by polars with ``schema`` and turned into the result by
    ``convert`` (which returns None when a row is invalid, e.g. a missing id). A chunk that
    polars rejects or ``convert`` refuses is re-read line by line with the lenient
    ``parse_line(line_number, line) -> row tuple``, which raises DataFormatError naming the
    line: polars gives speed, the Python path gives exact errors and tolerance (numbers
    given as strings, Python literals). Bytes that are not UTF-8 raise DataFormatError at
    their line (polars rejects them too): they are never replaced.
    """
    path = Path(path)
    frames = []
    for start, lines in _line_chunks(path, chunk_lines):
        df = None
        non_blank = sum(1 for line in lines if line.strip())
        try:
            parsed = pl.read_ndjson(io.BytesIO(b"".join(lines)), schema=schema)
            if parsed.height == non_blank:
                df = convert(parsed) if parsed.height else None
        except Exception:  # noqa: BLE001 - any polars failure: the Python path finds and names the line
            df = None
        if df is None:
            rows = []
            for n, raw in enumerate(lines, start=start):
                try:
                    text = raw.decode("utf-8").rstrip("\r\n")
                except READ_ERRORS as e:
                    raise read_error(path, e) from None
                if text.strip():
                    rows.append(parse_line(n, text))
            df = pl.DataFrame(rows, schema=out_schema, orient="row")
        frames.append(df.select([pl.col(c).cast(t) for c, t in out_schema.items()]))
    if not frames:
        return pl.DataFrame({c: [] for c in out_schema}, schema=out_schema)
    return pl.concat(frames, how="vertical")
