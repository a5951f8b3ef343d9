"""Amazon product reviews, as released by the McAuley lab: 2014/2018 and 2023.

2014 / 2018 (one folder, files optionally gzipped):

- reviews: ``reviews_<Category>[_5].json`` (2014) or ``<Category>_5.json`` /
  ``<Category>.json`` (2018); one JSON object a line with ``reviewerID``, ``asin``,
  ``unixReviewTime`` (seconds), ``overall`` (rating).
- metadata: ``meta_<Category>.json``; ``asin``, ``title``, ``brand``, ``categories`` (2014,
  a list of category paths) or ``category`` (2018, a list), ``price``. The 2014 metadata
  lines are Python literals (single quotes), parsed with ``ast.literal_eval`` when
  ``json.loads`` fails.

2023 (``<Category>.jsonl`` + ``meta_<Category>.jsonl``, optionally gzipped): reviews have
``user_id``, ``parent_asin`` (the item; ``asin`` when absent), ``timestamp``
(milliseconds, kept as given) and ``rating``; metadata ``parent_asin``, ``title``,
``store``, ``main_category``, ``categories``, ``price``, ``features``. Nested fields
(``details``, ``images``, ``videos``, ``description``) are left out of the catalog.

A folder holding several categories needs ``category=`` (e.g. ``"Beauty_5"`` or
``"All_Beauty"``) to pick one. Metadata lines of items that have no review are skipped
without being parsed, which keeps the full-category metadata files fast to read.
"""

from __future__ import annotations

import ast
import html
import json
import math
import re
from pathlib import Path

import polars as pl

from recfm.data.schema import DataFormatError, EmptyDatasetError, RawDataset
from recfm.data.sources._io import finite, numbered_lines, raw_open
from recfm.data.sources.tabular import json_lines_frame

_PARSE_ERRORS = (ValueError, SyntaxError, TypeError, RecursionError, MemoryError)
_META_KEY = {"2014": "asin", "2023": "parent_asin"}
_KEY_RE = {
    v: re.compile(r"""[{,]\s*["']""" + k + r"""["']\s*:\s*["']([^"'\\]*)["']""")
    for v, k in _META_KEY.items()
}
_TAG = re.compile(r"</?[A-Za-z][^<>]*>")
_SPACE = re.compile(r"\s+")
_PRICE = re.compile(r"^(?:from\s+)?\$?\s?\d[\d,]*(?:\.\d+)?(?:\s*-\s*\$?\s?\d[\d,]*(?:\.\d+)?)?$", re.IGNORECASE)

CATALOG_2014 = ("title", "brand", "categories", "price")
CATALOG_2023 = ("title", "store", "main_category", "categories", "price", "features")


# Python literals as written by repr(): string tokens (optionally u-prefixed) and constants.
_PY_TOKEN = re.compile(
    r"""(?=['"TFNuU])(?:[uU]?'([^'\\]*(?:\\.[^'\\]*)*)'|[uU]?"([^"\\]*(?:\\.[^"\\]*)*)"|\b(True|False|None)\b)""", re.S
)
_PY_ESCAPE = re.compile(r"""\\(x[0-9a-fA-F]{2}|u[0-9a-fA-F]{4}|U[0-9a-fA-F]{8}|.)|\"""", re.S)
_ESCAPES = {"\\": "\\\\", "'": "'", '"': '\\"', "n": "\\n", "t": "\\t", "r": "\\r", "a": "\\u0007", "b": "\\b", "f": "\\f", "v": "\\u000b"}
_CONSTANTS = {"True": "true", "False": "false", "None": "null"}
_JSON = json.JSONDecoder(strict=False)


def _json_escape(m: re.Match) -> str:
    esc = m.group(1)
    if esc is None:
        return '\\"'  # a bare double quote inside a single-quoted Python string
    if esc[0] in "xuU" and len(esc) > 1:
        cp = int(esc[1:], 16)
        return f"\\u{cp:04x}" if cp <= 0xFFFF else chr(cp)
    if esc in _ESCAPES:
        return _ESCAPES[esc]
    raise ValueError(f"escape \\{esc}")  # not from repr(): leave it to ast.literal_eval


def _json_token(m: re.Match) -> str:
    const = m.group(3)
    if const is not None:
        return _CONSTANTS[const]
    body = m.group(1) if m.group(1) is not None else m.group(2)
    if "\\" not in body and '"' not in body:
        return f'"{body}"'
    return '"' + _PY_ESCAPE.sub(_json_escape, body) + '"'


def python_literal(line: str):
    """A Python literal line (repr of a dict) as ast.literal_eval reads it, several times faster:
    rewritten as JSON when it uses only repr()'s escapes, ast.literal_eval otherwise."""
    try:
        if not any(s in line for s in ('"', "\\", "True", "False", "None")):
            return _JSON.decode(line.replace("'", '"'))  # only plain single-quoted strings: swap the quotes
        return _JSON.decode(_PY_TOKEN.sub(_json_token, line))
    except (ValueError, RecursionError, OverflowError):
        return ast.literal_eval(line)


class _RecordParser:
    """json.loads, falling back to a Python literal; tries the last line's winner first (fast on 2014 meta)."""

    def __init__(self):
        self.literal_first = False

    def __call__(self, line: str) -> dict:
        first, second = (python_literal, json.loads) if self.literal_first else (json.loads, python_literal)
        try:
            obj = first(line)
        except _PARSE_ERRORS:
            obj = second(line)
            self.literal_first = not self.literal_first
        if not isinstance(obj, dict):
            raise ValueError("not an object")
        return obj


# ---------------------------------------------------------------- files


def _split_name(p: Path) -> tuple[str, str] | None:
    """(stem, extension) for ``stem.json[l][.gz]``, else None."""
    name = p.name
    for ext in (".jsonl.gz", ".jsonl", ".json.gz", ".json"):
        if name.endswith(ext) and len(name) > len(ext):
            return name[: -len(ext)], ext.removesuffix(".gz")
    return None


def _first_line(p: Path, limit: int = 1 << 16) -> str:
    """The start (at most ``limit`` bytes) of the first non-blank line, for sniffing only: decoded
    leniently, as nothing read here is kept (loading reads the file strictly)."""
    try:
        with raw_open(p) as fh:
            for _ in range(100):
                line = fh.readline(limit)
                if not line or line.strip():
                    return line.decode("utf-8", errors="replace")
    except (OSError, DataFormatError):
        pass
    return ""


def _review_key(stem: str) -> str:
    return stem.removeprefix("reviews_")


def _review_files(folder: Path, ext: str) -> list[Path]:
    """Review files of one release (ext ``.json``: 2014/2018, ``.jsonl``: 2023), sorted."""
    if not folder.is_dir():
        return []
    files = {}
    for p in folder.iterdir():
        parts = _split_name(p) if p.is_file() else None
        if parts and parts[1] == ext:
            files[p] = parts[0]
    metas = {stem.removeprefix("meta_") for stem in files.values() if stem.startswith("meta_")}
    found = []
    for p, stem in sorted(files.items()):
        if stem.startswith("meta_"):
            continue
        key = _review_key(stem)
        if ext == ".json":
            named = stem.startswith("reviews_") or key.endswith("_5")
            head = "" if named else _first_line(p)
            sniffed = '"reviewerID"' in head or "'reviewerID'" in head
        else:
            named = False
            head = _first_line(p)
            sniffed = '"user_id"' in head and ('"asin"' in head or '"parent_asin"' in head)
        if named or sniffed or key in metas or key.removesuffix("_5") in metas:
            found.append(p)
    return found


def _meta_file(folder: Path, key: str, ext: str) -> Path | None:
    for k in dict.fromkeys([key, key.removesuffix("_5")]):
        for suffix in (ext, ext + ".gz"):
            if (folder / f"meta_{k}{suffix}").is_file():
                return folder / f"meta_{k}{suffix}"
    metas = [p for p in sorted(folder.iterdir()) if p.is_file() and (s := _split_name(p)) and s[1] == ext and s[0].startswith("meta_")]
    return metas[0] if len(metas) == 1 else None


def _pick(folder: Path, ext: str, category: str | None, release: str) -> Path:
    files = _review_files(folder, ext)
    if category is not None:
        exact = [p for p in files if _review_key(_split_name(p)[0]) == category]
        loose = [p for p in files if _review_key(_split_name(p)[0]).removesuffix("_5") == category]
        if not (exact or loose):
            shown = ", ".join(p.name for p in files) or "none"
            raise FileNotFoundError(f"{folder}: no Amazon {release} review file for category {category!r} (review files: {shown})")
        files = exact or loose
    if not files:
        raise FileNotFoundError(f"{folder}: no Amazon {release} review file (*{ext} or *{ext}.gz)")
    if len(files) > 1:
        keys = ", ".join(repr(_review_key(_split_name(p)[0])) for p in files)
        raise ValueError(f"{folder}: several Amazon {release} review files ({', '.join(p.name for p in files)}); pass category= one of {keys}")
    return files[0]


def detect_2014(path: Path) -> bool:
    return bool(_review_files(Path(path), ".json"))


def detect_2023(path: Path) -> bool:
    return bool(_review_files(Path(path), ".jsonl"))


def detect(path: Path) -> bool:
    return detect_2023(path) or detect_2014(path)


# ---------------------------------------------------------------- values


def _number(value) -> float | None:
    """A finite number, or None when absent; ValueError for anything else (NaN and inf included)."""
    if value is None or value == "" or isinstance(value, bool):
        return None
    return finite(float(value))


def _utf8_repair(text: str) -> str:
    """UTF-8 bytes read as latin-1 code points ('CafÃ©', from Python 2 reprs) back to 'Café'."""
    if text.isascii() or max(text) > "\xff":
        return text
    try:
        return text.encode("latin-1").decode("utf-8")
    except UnicodeDecodeError:
        return text


def _text(value) -> str | None:
    if not isinstance(value, (str, int, float)) or isinstance(value, bool):
        return None
    text = _SPACE.sub(" ", _TAG.sub(" ", html.unescape(_utf8_repair(str(value))))).strip()
    return text or None


def _flatten(value) -> list[str]:
    if isinstance(value, (list, tuple)):
        return [s for v in value for s in _flatten(v)]
    text = _text(value)
    return [text] if text else []


def _categories(value) -> str | None:
    names = list(dict.fromkeys(_flatten(value)))
    return ", ".join(names) or None


def _price(value) -> str | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return f"{value:.2f}" if math.isfinite(value) and value >= 0 else None
    text = _text(value)
    return text if text and _PRICE.match(text) else None


def _features(value) -> str | None:
    parts = [p.rstrip(".;") for p in _flatten(value)]
    return "; ".join(p for p in parts if p) or None


# ---------------------------------------------------------------- loading


_INTERACTIONS = {"user_id": pl.String, "item_id": pl.String, "timestamp": pl.Float64, "rating": pl.Float64}


def _reviews(path: Path, user_key: str, item_keys: tuple[str, ...], time_key: str, rating_key: str) -> pl.DataFrame:
    parse = _RecordParser()
    expected = f"a JSON object with '{user_key}', '{item_keys[0]}' and a numeric '{time_key}'"

    def parse_line(n: int, line: str) -> tuple:
        try:
            r = parse(line)
            user = r[user_key]
            item = next(r[k] for k in item_keys if r.get(k) not in (None, ""))
            if user in (None, "") or isinstance(user, (dict, list, bool)) or isinstance(item, (dict, list, bool)):
                raise ValueError
            return str(user), str(item), _number(r.get(time_key)), _number(r.get(rating_key))
        except (*_PARSE_ERRORS, KeyError, StopIteration):
            raise DataFormatError(path, n, expected, line) from None

    def convert(df: pl.DataFrame) -> pl.DataFrame | None:
        item = pl.lit(None, dtype=pl.String)
        for k in reversed(item_keys):  # the first non-empty key wins
            item = pl.when(pl.col(k).is_not_null() & (pl.col(k) != "")).then(pl.col(k)).otherwise(item)
        out = df.select(
            pl.col(user_key).alias("user_id"), item.alias("item_id"),
            pl.col(time_key).alias("timestamp"), pl.col(rating_key).alias("rating"),
        )
        bad = out.select(
            (pl.col("user_id").is_null() | (pl.col("user_id") == "") | pl.col("item_id").is_null()).any()
        ).item()
        return None if bad else out

    schema = {user_key: pl.String, **{k: pl.String for k in item_keys}, time_key: pl.Float64, rating_key: pl.Float64}
    inter = json_lines_frame(path, schema, convert, parse_line, _INTERACTIONS)
    if inter.height == 0:
        raise EmptyDatasetError(f"{path}: no reviews (the file is empty)")
    return inter


def _meta(path: Path | None, release: str, wanted: set[str]) -> pl.DataFrame:
    fields = CATALOG_2014 if release == "2014" else CATALOG_2023
    schema = {"item_id": pl.String, **{f: pl.String for f in fields}}
    if path is None:
        return pl.DataFrame({c: [] for c in schema}, schema=schema)
    key, key_re, parse = _META_KEY[release], _KEY_RE[release], _RecordParser()
    id_keys = (key, "asin") if release == "2023" else (key,)
    columns: dict[str, list] = {c: [] for c in schema}
    for n, line in numbered_lines(path):
        m = key_re.search(line)
        if m is not None and m.group(1) not in wanted:
            continue
        try:
            r = parse(line)
            item = next(r[k] for k in id_keys if r.get(k) not in (None, ""))
        except (*_PARSE_ERRORS, StopIteration):
            raise DataFormatError(path, n, f"a JSON (or Python literal) object with '{key}'", line) from None
        item = str(item)
        if item not in wanted:
            continue
        columns["item_id"].append(item)
        if release == "2014":
            values = {
                "title": _text(r.get("title")),
                "brand": _text(r.get("brand")),
                "categories": _categories(r.get("categories", r.get("category"))),
                "price": _price(r.get("price")),
            }
        else:
            values = {
                "title": _text(r.get("title")),
                "store": _text(r.get("store")),
                "main_category": _text(r.get("main_category")),
                "categories": _categories(r.get("categories")),
                "price": _price(r.get("price")),
                "features": _features(r.get("features")),
            }
        for f in fields:
            columns[f].append(values[f])
    return pl.DataFrame(columns, schema=schema)


def _load(path: Path, name: str | None, category: str | None, release: str) -> RawDataset:
    path = Path(path)
    ext = ".json" if release == "2014" else ".jsonl"
    label = "2014/2018" if release == "2014" else "2023"
    review_file = _pick(path, ext, category, label)
    if release == "2014":
        inter = _reviews(review_file, "reviewerID", ("asin",), "unixReviewTime", "overall")
    else:
        inter = _reviews(review_file, "user_id", ("parent_asin", "asin"), "timestamp", "rating")
    key = _review_key(_split_name(review_file)[0])
    meta = _meta(_meta_file(path, key, ext), release, set(inter.get_column("item_id").unique().to_list()))
    return RawDataset(name=name or path.name, interactions=inter, items=meta)


def load_2014(path: Path, name: str | None = None, category: str | None = None) -> RawDataset:
    """Amazon reviews 2014 or 2018 (``.json`` files)."""
    return _load(path, name, category, "2014")


def load_2023(path: Path, name: str | None = None, category: str | None = None) -> RawDataset:
    """Amazon reviews 2023 (``.jsonl`` files)."""
    return _load(path, name, category, "2023")


def load(path: Path, name: str | None = None, category: str | None = None) -> RawDataset:
    """Either release, by the files present (2023 ``.jsonl`` first)."""
    return (load_2023 if detect_2023(path) else load_2014)(path, name, category)
