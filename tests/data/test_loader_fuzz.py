"""Every source format, fed malformed files: a clear recfm error or a valid dataset, never a crash
(an unexpected exception type) and never a partial file left in the cache."""

from __future__ import annotations

import gzip
import json
import re

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recfm.data.registry import DatasetNotFoundError, load_dataset
from recfm.data.schema import DataFormatError, EmptyDatasetError
from recfm.data.sources import FORMATS, UnknownFormatError, load_path

CLEAR_ERRORS = (DataFormatError, EmptyDatasetError, UnknownFormatError, DatasetNotFoundError)

# The file names each format is recognised by; contents are generated.
LAYOUTS = {
    "recbole-atomic": ["shop.inter", "shop.item"],
    "p5-text": ["user_sequence.txt", "item_initial_ids.txt"],
    "grouplens-1m": ["ratings.dat", "movies.dat"],
    "grouplens-100k": ["u.data", "u.item"],
    "yelp": ["yelp_academic_dataset_review.json", "yelp_academic_dataset_business.json"],
    "mind": ["behaviors.tsv", "news.tsv"],
    "goodreads": ["goodreads_interactions_poetry.json", "goodreads_books_poetry.json"],
    "hm": ["transactions_train.csv", "articles.csv"],
    "amazon-2023": ["Beauty.jsonl", "meta_Beauty.jsonl"],
    "amazon-2014": ["reviews_Beauty_5.json", "meta_Beauty.json"],
    "tabular": ["interactions.csv", "items.csv"],
}

# Fields that look like the real thing often enough to get past the first checks.
fields = st.one_of(
    st.sampled_from(["user_id", "item_id", "u1", "i2", "1", "0", "-3", "5.0", "978300760", "", "NaN", "title",
                     "user_id:token", "item_id:token", "rating:float", "timestamp:float", "Toy Story (1995)",
                     "Animation|Comedy", "N1-1", "N2-0", "2020-09-01", "0.05"]),
    st.text(max_size=6),
)
delimiters = st.sampled_from(["\t", ",", "::", "|", " ", ";"])
text_lines = st.builds(lambda fs, d: d.join(fs), st.lists(fields, min_size=1, max_size=6), delimiters)
json_lines = st.builds(json.dumps, st.dictionaries(
    st.sampled_from(["user_id", "reviewerID", "asin", "parent_asin", "business_id", "book_id", "rating", "overall",
                     "stars", "timestamp", "unixReviewTime", "date", "title", "is_read"]),
    st.one_of(st.integers(-2, 10**10), st.text(max_size=5), st.none(), st.floats(allow_nan=False, allow_subnormal=False)),
    max_size=6))
lines = st.lists(st.one_of(text_lines, json_lines), max_size=12)
file_bodies = st.one_of(lines.map(lambda ls: "\n".join(ls).encode()), st.binary(max_size=64))


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(bodies=st.lists(file_bodies, min_size=2, max_size=2))
def test_malformed_files_give_clear_errors_and_no_partial_cache(layout, bodies, tmp_path_factory, monkeypatch):
    root = tmp_path_factory.mktemp("fuzz")
    cache = root / "cache"
    monkeypatch.setenv("RECFM_CACHE_DIR", str(cache))
    folder = root / "data"
    folder.mkdir()
    for name, body in zip(LAYOUTS[layout], bodies):
        (folder / name).write_bytes(body)
    try:
        data = load_dataset(folder)
    except CLEAR_ERRORS as e:
        assert str(e).strip()
    else:
        assert data.n_items > 0 and data.n_users > 0
    leftovers = [p for p in cache.rglob("*") if p.name.startswith(".")] if cache.exists() else []
    assert not leftovers, leftovers


def test_every_format_is_fuzzed():
    covered = {name.split("-1m")[0].split("-100k")[0] for name in LAYOUTS}
    assert covered >= set(FORMATS)


# ---------------------------------------------------------------- valid files, damaged below the format

_FLAGS = "|".join("0" * 18)
VALID = {  # layout -> (files, whether each interaction must have a timestamp)
    "recbole-atomic": ({"shop.inter": "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
                                      "u1\ti1\t5\t978300760\nu1\ti2\t3\t978300761\nu2\ti1\t4\t978300762\n",
                        "shop.item": "item_id:token\ttitle:token_seq\ni1\tCafé au lait\ni2\tTea\n"}, False),
    "p5-text": ({"user_sequence.txt": "A1 B1 B2 B3\nA2 B2 B1\n", "item_initial_ids.txt": "B1 café\nB2 tea\nB3 mug\n"}, False),
    "grouplens-1m": ({"ratings.dat": "1::10::5::978300760\n1::20::3::978300761\n2::10::4::978300762\n",
                      "movies.dat": "10::Café (1995)::Drama\n20::Tea (1996)::Comedy|Drama\n"}, True),
    "grouplens-100k": ({"u.data": "1\t10\t5\t978300760\n1\t20\t3\t978300761\n2\t10\t4\t978300762\n",
                        "u.item": f"10|Café (1995)|01-Jan-1995||x|1|{_FLAGS}\n20|Tea (1996)|01-Jan-1996||x|1|{_FLAGS}\n"}, True),
    "grouplens-csv": ({"ratings.csv": "userId,movieId,rating,timestamp\n1,10,5,978300760\n1,20,3.5,978300761\n2,10,4,978300762\n",
                       "movies.csv": 'movieId,title,genres\n10,"Café, Le (1995)",Drama\n20,Tea (1996),Comedy\n'}, True),
    "yelp": ({"yelp_academic_dataset_review.json": "".join(json.dumps(
                 {"user_id": u, "business_id": b, "stars": s, "date": d}, ensure_ascii=False) + "\n" for u, b, s, d in
                 [("u1", "bé1", 3.0, "2018-07-07 22:09:11"), ("u1", "b2", 5, "2018-07-08"), ("u2", "bé1", 4, "2018-07-09 10:00:00")]),
              "yelp_academic_dataset_business.json": '{"business_id": "bé1", "name": "Café", "categories": "Food, Bars"}\n'}, True),
    "mind": ({"behaviors.tsv": "1\tU1\t11/11/2019 9:05:58 AM\tN1 N2\tN3-1 N2-0\n2\tU2\t11/12/2019 6:11:30 PM\t\tN1-1 N3-1\n",
              "news.tsv": "N1\tnews\tus\tCafé\tx\nN2\tsports\tmlb\tGame\t\nN3\ttv\tnews\tFinale\tRecap\n"}, False),
    "goodreads": ({"goodreads_interactions_poetry.json": "".join(json.dumps(
                      {"user_id": u, "book_id": b, "is_read": True, "rating": r, "date_added": "Mon Aug 01 13:41:57 -0700 2011"},
                      ensure_ascii=False) + "\n" for u, b, r in [("u1", "1é", 4), ("u1", "2", 0), ("u2", "1é", 5)]),
                   "goodreads_books_poetry.json": '{"book_id": "1é", "title": "Poèmes"}\n{"book_id": "2", "title": "Leaves"}\n'}, False),
    "hm": ({"transactions_train.csv": "t_dat,customer_id,article_id,price,sales_channel_id\n"
                                      "2018-09-20,c1,0663713001,0.05,2\n2018-09-20,c1,0541518023,0.03,2\n2018-09-21,c2,0663713001,0.05,1\n",
            "articles.csv": "article_id,prod_name,detail_desc\n0663713001,Body,Lace café\n0541518023,Bra,Push-up\n"}, True),
    "amazon-2023": ({"Beauty.jsonl": "".join(json.dumps({"user_id": u, "parent_asin": a, "timestamp": t, "rating": 5.0},
                                                        ensure_ascii=False) + "\n" for u, a, t in
                                             [("U1", "Bé1", 1588687728923), ("U1", "B2", 1588687728924), ("U2", "Bé1", 1588687728925)]),
                     "meta_Beauty.jsonl": '{"parent_asin": "Bé1", "title": "Crème"}\n'}, False),
    "amazon-2014": ({"reviews_Beauty_5.json": "".join(json.dumps({"reviewerID": u, "asin": a, "unixReviewTime": t, "overall": 4.0},
                                                                 ensure_ascii=False) + "\n" for u, a, t in
                                                      [("A1", "Bé1", 1391040000), ("A1", "B2", 1391040001), ("A2", "Bé1", 1391040002)]),
                     "meta_Beauty.json": "{'asin': 'Bé1', 'title': 'Crème &amp; gel', 'price': 3.99}\n"}, False),
    "tabular": ({"interactions.csv": "user_id,item_id,timestamp,rating\nu1,é7,2021-03-04T10:00:00Z,5\nu1,003,978300761,4\nu2,é7,2021-03-01,3\n",
                 "items.csv": 'item_id,title\né7,"Mug, café"\n003,Teapot\n'}, True),
}
GZIP_OK = {"grouplens-1m", "grouplens-100k", "grouplens-csv", "yelp", "goodreads", "amazon-2023", "amazon-2014", "tabular"}
NON_FINITE = [b"nan", b"NaN", b"inf", b"-inf", b"Infinity", b"1e999"]

damage = st.one_of(
    st.tuples(st.just("byte"), st.floats(0, 1, exclude_max=True), st.integers(0x80, 0xFF)),
    st.tuples(st.just("non-finite"), st.floats(0, 1, exclude_max=True), st.sampled_from(NON_FINITE)),
    st.tuples(st.just("cut"), st.floats(0, 1, exclude_max=True), st.none()),
    st.tuples(st.just("gzip"), st.floats(0, 1, exclude_max=True), st.booleans()),
)


def _damaged(body: bytes, kind: str, where: float, arg) -> bytes:
    at = int(where * len(body))
    if kind == "byte":  # a latin-1 byte in the middle of the text (not UTF-8 on its own)
        return body[:at] + bytes([arg]) + body[at:]
    if kind == "non-finite":  # the number at or after the position replaced by NaN or inf
        numbers = [m for m in re.finditer(rb"-?\d+(?:\.\d+)?", body) if m.end() > at] or list(re.finditer(rb"-?\d+(?:\.\d+)?", body))
        m = numbers[0]
        return body[: m.start()] + arg + body[m.end() :]
    if kind == "cut":  # the rest of one line lost
        end = body.find(b"\n", at)
        return body[:at] + (body[end:] if end >= 0 else b"")
    packed = gzip.compress(body, mtime=0)
    return packed[: max(1, int(where * len(packed)))] if arg else packed  # truncated, or intact


@pytest.mark.parametrize("layout", sorted(VALID))
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(which=st.integers(0, 1), hit=damage)
def test_damaged_files_fail_with_file_and_line_or_load_faithfully(layout, which, hit, tmp_path_factory):
    """Bytes that are not UTF-8, NaN/inf numbers, lines cut short, truncated gzip: a DataFormatError
    (or another clear error) on one line naming the file, or data without a replacement character
    and without a NaN/inf (or, where the format requires one, missing) timestamp."""
    files, timed = VALID[layout]
    kind, where, arg = hit
    if kind == "gzip" and layout not in GZIP_OK:
        kind, arg = "cut", None
    folder = tmp_path_factory.mktemp("damaged")
    name = sorted(files)[which % len(files)]
    for fname, text in files.items():
        body = text.encode("utf-8")
        if fname == name:
            body = _damaged(body, kind, where, arg)
            fname += ".gz" if kind == "gzip" else ""
        (folder / fname).write_bytes(body)
    try:
        raw = load_path(folder)
    except CLEAR_ERRORS as e:
        msg = str(e)
        assert msg.strip() and str(folder) in msg, msg
        if isinstance(e, DataFormatError):
            assert "\n" not in msg, msg
        return
    inter = raw.interactions
    for col in [c for c in ("timestamp", "rating") if c in inter.columns]:
        values = inter.get_column(col)
        assert not (values.is_nan().any() or values.is_infinite().any()), (col, values.to_list())
    if timed:
        assert inter.get_column("timestamp").null_count() == 0, inter
    text_cols = [c for c, t in raw.items.schema.items() if t == pl.String]
    for frame, cols in ((inter, ["user_id", "item_id"]), (raw.items, text_cols)):
        for col in cols:
            assert not frame.get_column(col).str.contains("\ufffd", literal=True).any(), (col, frame.get_column(col).to_list())


def test_every_format_is_fuzzed_with_damaged_files():
    covered = {name.split("-1m")[0].split("-100k")[0].split("-csv")[0] for name in VALID}
    assert covered >= set(FORMATS)
