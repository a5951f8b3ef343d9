"""Silent data corruption in the loaders (issue 14, item 3): every source either reads its bytes
faithfully or fails with a DataFormatError naming the file and line. Never merged ids (bytes that
are not UTF-8 replaced by U+FFFD), never a NaN/inf timestamp, never a short line taken as a
null timestamp, never a bare EOFError from a truncated gzip file."""

from __future__ import annotations

import gzip
import math
import re
from pathlib import Path

import polars as pl
import pytest

from recfm.data.schema import DataFormatError
from recfm.data.sources import load_path

ATOMIC_HEADER = b"user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
CSV_HEADER = b"userId,movieId,rating,timestamp\n"
MOVIES_CSV = b"movieId,title\n1,x\n"
DATE = "Sun Jun 17 12:00:00 -0700 2012"


def folder(tmp_path: Path, files: dict[str, bytes]) -> Path:
    d = tmp_path / "data"
    d.mkdir()
    for name, body in files.items():
        (d / name).write_bytes(body)
    return d


def amazon14(user: str, item: str, time="1", rating="5") -> bytes:
    return f'{{"reviewerID": "{user}", "asin": "{item}", "unixReviewTime": {time}, "overall": {rating}}}\n'.encode()


def amazon23(user: str, item: str, time="1", rating="5") -> bytes:
    return f'{{"user_id": "{user}", "parent_asin": "{item}", "timestamp": {time}, "rating": {rating}}}\n'.encode()


def yelp(user: str, item: str, stars="3") -> bytes:
    return f'{{"user_id": "{user}", "business_id": "{item}", "date": "2018-01-01 10:00:00", "stars": {stars}}}\n'.encode()


def goodreads(user: str, item: str, rating="4") -> bytes:
    return f'{{"user_id": "{user}", "book_id": "{item}", "is_read": true, "rating": {rating}, "date_added": "{DATE}"}}\n'.encode()


def hm(user: str, item: str = "1") -> bytes:
    return f"2020-01-01,{user},{item},0.1,2\n".encode()


HM_HEADER = b"t_dat,customer_id,article_id,price,sales_channel_id\n"
MIND_TIME = "11/15/2019 8:55:22 AM"

# ---------------------------------------------------------------- 1. bytes that are not UTF-8

# (case, files, file:line of the first bad byte). Every case has two ids that differ only in one
# latin-1 byte, \xe9 and \xe8: replacing them merged both into 'caf\ufffd'.
NOT_UTF8 = [
    ("recbole-inter", {"x.inter": ATOMIC_HEADER + b"u\tcaf\xe9\t5\t1\nu\tcaf\xe8\t5\t2\n"}, "x.inter:2"),
    ("recbole-crlf", {"x.inter": ATOMIC_HEADER.replace(b"\n", b"\r\n") + b"u\ta\t5\t1\r\n\r\nu\tcaf\xe9\t5\t2\r\n"}, "x.inter:4"),
    ("recbole-item", {"x.inter": ATOMIC_HEADER + b"u\ta\t5\t1\n",
                      "x.item": b"item_id:token\ttitle:token_seq\na\tx\ncaf\xe9\tA\ncaf\xe8\tB\n"}, "x.item:3"),
    ("p5-sequences", {"user_sequence.txt": b"u1 a b\nu2 caf\xe9 caf\xe8\n"}, "user_sequence.txt:2"),
    ("p5-titles", {"user_sequence.txt": b"u1 a b\n", "item_text.txt": b"a x\nb caf\xe9\n"}, "item_text.txt:2"),
    ("ratings.dat", {"ratings.dat": b"1::1::5::1\n1::caf\xe9::5::1\n1::caf\xe8::5::2\n"}, "ratings.dat:2"),
    ("u.data", {"u.data": b"1\t1\t5\t1\n1\tcaf\xe9\t5\t1\n1\tcaf\xe8\t5\t2\n"}, "u.data:2"),
    ("ratings.csv", {"ratings.csv": CSV_HEADER + b"1,1,5,1\n1,caf\xe9,5,1\n1,caf\xe8,5,2\n", "movies.csv": MOVIES_CSV},
     "ratings.csv:3"),
    ("movies.csv", {"ratings.csv": CSV_HEADER + b"1,1,5,1\n", "movies.csv": b"movieId,title\n1,x\n2,Caf\xe9\n"},
     "movies.csv:3"),
    ("tabular-csv", {"interactions.csv": b"user_id,item_id,timestamp\nu,caf\xe9,1\nu,caf\xe8,2\n"}, "interactions.csv:2"),
    ("tabular-tsv-gz", {"interactions.tsv.gz": gzip.compress(b"user_id\titem_id\ttimestamp\nu\ta\t1\nu\tcaf\xe9\t2\n")},
     "interactions.tsv.gz:3"),
    ("tabular-items", {"interactions.csv": b"user_id,item_id,timestamp\nu,a,1\n", "items.csv": b"item_id,title\na,x\nb,caf\xe9\n"},
     "items.csv:3"),
    ("amazon-2014", {"reviews_Beauty_5.json": amazon14("u", "a") + amazon14("u", "caf\xe9").replace(b"\xc3\xa9", b"\xe9")
                     + amazon14("u", "caf\xe8").replace(b"\xc3\xa8", b"\xe8")}, "reviews_Beauty_5.json:2"),
    ("amazon-2014-meta", {"reviews_Beauty_5.json": amazon14("u", "a"),
                          "meta_Beauty.json": b"{'asin': 'a', 'title': 'Caf\xe9'}\n"}, "meta_Beauty.json:1"),
    ("amazon-2023", {"Beauty.jsonl": amazon23("u", "a") + amazon23("u", "caf\xe9").replace(b"\xc3\xa9", b"\xe9")},
     "Beauty.jsonl:2"),
    ("yelp", {"yelp_academic_dataset_review.json": yelp("u", "a") + yelp("u", "caf\xe9").replace(b"\xc3\xa9", b"\xe9")},
     "yelp_academic_dataset_review.json:2"),
    ("yelp-business", {"yelp_academic_dataset_review.json": yelp("u", "a"),
                       "yelp_academic_dataset_business.json": b'{"business_id": "a", "name": "Caf\xe9"}\n'},
     "yelp_academic_dataset_business.json:1"),
    ("goodreads", {"goodreads_interactions_poetry.json": goodreads("u", "1")
                   + goodreads("u", "caf\xe9").replace(b"\xc3\xa9", b"\xe9")}, "goodreads_interactions_poetry.json:2"),
    ("goodreads-books", {"goodreads_interactions_poetry.json": goodreads("u", "1"),
                         "goodreads_books_poetry.json": b'{"book_id": "1", "title": "Caf\xe9"}\n'},
     "goodreads_books_poetry.json:1"),
    ("mind-behaviors", {"behaviors.tsv": f"1\tU1\t{MIND_TIME}\t\tN1-1\n".encode()
                        + f"2\tU1\t{MIND_TIME}\t\tN\xe9-1 N\xe8-1\n".encode("latin-1"),
                        "news.tsv": b"N1\tc\ts\tt\n"}, "behaviors.tsv:2"),
    ("mind-news", {"behaviors.tsv": f"1\tU1\t{MIND_TIME}\t\tN1-1\n".encode(), "news.tsv": b"N1\tc\ts\tt\nN\xe9\tc\ts\tt\n"},
     "news.tsv:2"),
    ("hm-transactions", {"transactions_train.csv": HM_HEADER + hm("u") + hm("caf\xe9").replace(b"\xc3\xa9", b"\xe9"),
                         "articles.csv": b"article_id,prod_name\n1,x\n"}, "transactions_train.csv:3"),
    ("hm-articles", {"transactions_train.csv": HM_HEADER + hm("u"), "articles.csv": b"article_id,prod_name\n1,Caf\xe9\n"},
     "articles.csv:2"),
]


@pytest.mark.parametrize("files, where", [c[1:] for c in NOT_UTF8], ids=[c[0] for c in NOT_UTF8])
def test_bytes_that_are_not_utf8_fail_with_file_and_line(tmp_path, files, where):
    d = folder(tmp_path, files)
    with pytest.raises(DataFormatError, match=re.escape(where) + r": expected UTF-8 text \(byte 0x[0-9a-f]{2} at column \d+") as e:
        load_path(d)
    assert "\n" not in str(e.value)


def test_latin1_grouplens_catalogs_keep_distinct_ids(tmp_path):
    """movies.dat and u.item are latin-1 by definition: read as latin-1 (faithful), nothing merges."""
    flags = b"|".join([b"0"] * 19)
    d = folder(tmp_path, {
        "u.data": b"1\t1\t5\t1\n",
        "u.item": b"1|Caf\xe9 (1990)|01-Jan-1990||x|" + flags + b"\n1\xe9|A|||x|" + flags + b"\n1\xe8|B|||x|" + flags + b"\n",
    })  # fmt: skip
    items = load_path(d).items
    assert items["item_id"].to_list() == ["1", "1\u00e9", "1\u00e8"]
    assert items["title"][0] == "Caf\u00e9 (1990)"


# ---------------------------------------------------------------- 2. short lines


@pytest.mark.parametrize("line", [b"1,2,5", b"1,2,5,", b"1,2"])
def test_grouplens_ratings_csv_short_line_is_rejected(tmp_path, line):
    d = folder(tmp_path, {"ratings.csv": CSV_HEADER + b"1,1,5,10\n" + line + b"\n1,3,4,12\n", "movies.csv": MOVIES_CSV})
    with pytest.raises(DataFormatError, match=r"ratings\.csv:3: expected "):
        load_path(d)


@pytest.mark.parametrize("name, body", [("ratings.dat", b"1::1::5::10\n1::2::5\n"), ("ratings.dat", b"1::1::5::10\n1::2::5::\n"),
                                        ("u.data", b"1\t1\t5\t10\n1\t2\t5\n"), ("u.data", b"1\t1\t5\t10\n1\t2\t5\t\n")])
def test_grouplens_dat_short_line_is_rejected(tmp_path, name, body):
    with pytest.raises(DataFormatError, match=re.escape(name) + ":2: expected "):
        load_path(folder(tmp_path, {name: body}))


# ---------------------------------------------------------------- 3. NaN / inf numbers

NON_FINITE = ["nan", "NaN", "inf", "-inf", "Infinity", "1e400"]


@pytest.mark.parametrize("value", NON_FINITE)
@pytest.mark.parametrize("column", ["timestamp", "rating"])
def test_recbole_non_finite_numbers_are_rejected(tmp_path, value, column):
    row = {"timestamp": f"u\tb\t4\t{value}\n", "rating": f"u\tb\t{value}\t2\n"}[column]
    d = folder(tmp_path, {"x.inter": ATOMIC_HEADER + b"u\ta\t5\t1\n" + row.encode()})
    with pytest.raises(DataFormatError, match=rf"x\.inter:3: expected a finite number in column '{column}', got '{re.escape(value)}'"):
        load_path(d)


@pytest.mark.parametrize("value", NON_FINITE)
@pytest.mark.parametrize("case", ["ratings.dat", "u.data", "ratings.csv", "tabular", "tabular-rating"])
def test_grouplens_and_tabular_non_finite_numbers_are_rejected(tmp_path, case, value):
    v = value.encode()
    files, where = {
        "ratings.dat": ({"ratings.dat": b"1::1::5::10\n1::2::5::" + v + b"\n"}, "ratings.dat:2"),
        "u.data": ({"u.data": b"1\t1\t5\t10\n1\t2\t" + v + b"\t11\n"}, "u.data:2"),
        "ratings.csv": ({"ratings.csv": CSV_HEADER + b"1,1,5,10\n1,2,5," + v + b"\n", "movies.csv": MOVIES_CSV}, "ratings.csv:3"),
        "tabular": ({"interactions.csv": b"user_id,item_id,timestamp\nu,a,1\nu,b," + v + b"\n"}, "interactions.csv:3"),
        "tabular-rating": ({"interactions.csv": b"user_id,item_id,timestamp,rating\nu,a,1,1\nu,b,2," + v + b"\n"},
                           "interactions.csv:3"),
    }[case]
    with pytest.raises(DataFormatError, match=re.escape(where) + ": expected ") as e:
        load_path(folder(tmp_path, files))
    assert value in str(e.value)


def test_parquet_non_finite_timestamp_names_the_row(tmp_path):
    d = tmp_path / "t"
    d.mkdir()
    pl.DataFrame({"user_id": ["u", "u"], "item_id": ["a", "b"], "timestamp": [1.0, math.nan]}).write_parquet(d / "interactions.parquet")
    with pytest.raises(DataFormatError, match=r"interactions\.parquet: expected a finite number or an ISO date.* \(row 2\)"):
        load_path(d)


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity", "1e400", '"nan"', '"inf"'])
@pytest.mark.parametrize("case", ["amazon-2014", "amazon-2014-rating", "amazon-2023", "yelp-stars", "goodreads-rating"])
def test_json_lines_non_finite_numbers_are_rejected(tmp_path, case, value):
    files, where = {
        "amazon-2014": ({"reviews_Beauty_5.json": amazon14("u", "a") + amazon14("u", "b", time=value)}, "reviews_Beauty_5.json:2"),
        "amazon-2014-rating": ({"reviews_Beauty_5.json": amazon14("u", "a") + amazon14("u", "b", rating=value)},
                               "reviews_Beauty_5.json:2"),
        "amazon-2023": ({"Beauty.jsonl": amazon23("u", "a") + amazon23("u", "b", time=value)}, "Beauty.jsonl:2"),
        "yelp-stars": ({"yelp_academic_dataset_review.json": yelp("u", "a") + yelp("u", "b", stars=value)},
                       "yelp_academic_dataset_review.json:2"),
        "goodreads-rating": ({"goodreads_interactions_poetry.json": goodreads("u", "1") + goodreads("u", "2", rating=value)},
                             "goodreads_interactions_poetry.json:2"),
    }[case]
    with pytest.raises(DataFormatError, match=re.escape(where) + ": expected "):
        load_path(folder(tmp_path, files))


# ---------------------------------------------------------------- 4. truncated or corrupt gzip


def many(line, n: int = 3000) -> bytes:
    return b"".join(line(k) for k in range(n))


GZIP_CASES = {  # case -> (file to damage, its body, the other files)
    "amazon-2014": ("reviews_Beauty_5.json.gz", many(lambda k: amazon14(f"u{k % 97}", f"i{k}", time=str(k))), {}),
    "amazon-2014-meta": ("meta_Beauty.json.gz", many(lambda k: f"{{'asin': 'i{k}', 'title': 'item {k}'}}\n".encode()),
                         {"reviews_Beauty_5.json": amazon14("u", "i2999")}),
    "amazon-2023": ("Beauty.jsonl.gz", many(lambda k: amazon23(f"u{k % 97}", f"i{k}", time=str(k))), {"meta_Beauty.jsonl": b""}),
    "yelp": ("yelp_academic_dataset_review.json.gz", many(lambda k: yelp(f"u{k % 97}", f"b{k}")), {}),
    "yelp-business": ("yelp_academic_dataset_business.json.gz", many(lambda k: f'{{"business_id": "b{k}", "name": "n{k}"}}\n'.encode()),
                      {"yelp_academic_dataset_review.json": yelp("u", "b1")}),
    "goodreads": ("goodreads_interactions_poetry.json.gz", many(lambda k: goodreads(f"u{k % 97}", str(k))), {}),
    "goodreads-books": ("goodreads_books_poetry.json.gz", many(lambda k: f'{{"book_id": "{k}", "title": "t{k}"}}\n'.encode()),
                        {"goodreads_interactions_poetry.json": goodreads("u", "2999")}),
    "ratings.dat": ("ratings.dat.gz", many(lambda k: f"{k % 97}::{k}::5::{k}\n".encode()), {}),
    "movies.dat": ("movies.dat.gz", many(lambda k: f"{k}::Movie {k} (1999)::Drama\n".encode()), {"ratings.dat": b"1::1::5::1\n"}),
    "ratings.csv": ("ratings.csv.gz", CSV_HEADER + many(lambda k: f"{k % 97},{k},5,{k}\n".encode()), {"movies.csv": MOVIES_CSV}),
    "tabular": ("interactions.csv.gz", b"user_id,item_id,timestamp\n" + many(lambda k: f"u{k % 97},i{k},{k}\n".encode()), {}),
}


@pytest.mark.parametrize("damage", ["truncated", "corrupt", "not-gzip"])
@pytest.mark.parametrize("case", sorted(GZIP_CASES))
def test_damaged_gzip_names_file_and_where_it_breaks(tmp_path, case, damage):
    name, body, others = GZIP_CASES[case]
    packed = bytearray(gzip.compress(body, mtime=0))
    if damage == "truncated":
        packed = packed[: len(packed) // 2]
    elif damage == "corrupt":
        for k in range(len(packed) // 2, len(packed) // 2 + 16):
            packed[k] ^= 0x5A
    else:
        packed = bytearray(body[:200])  # a plain file named .gz
    d = folder(tmp_path, {name: bytes(packed), **others})
    with pytest.raises(DataFormatError) as e:
        load_path(d)
    msg = str(e.value)
    assert "\n" not in msg
    m = re.search(re.escape(name) + r":(\d+): expected a complete gzip file \((.*)\)$", msg)
    assert m, msg
    if damage == "truncated":
        assert m.group(2).startswith(f"truncated: the compressed stream breaks off at byte {len(packed)}, the end of the file"), msg
        decompressed = int(re.search(r"after (\d+) decompressed bytes", msg).group(1))
        assert 0 < decompressed < len(body) and int(m.group(1)) == body[:decompressed].count(b"\n") + 1
    elif damage == "not-gzip":
        assert int(m.group(1)) == 1 and "at byte 0" in m.group(2), msg


def test_cli_prints_one_error_line_and_exits_2(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from recfm.cli import app

    monkeypatch.setenv("RECFM_CACHE_DIR", str(tmp_path / "cache"))
    name, body, _ = GZIP_CASES["amazon-2014"]
    d = folder(tmp_path, {name: gzip.compress(body)[:5000]})
    r = CliRunner().invoke(app, ["--quiet", "data", "info", str(d)])
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert r.exit_code == 2, r.output
    assert len(lines) == 1 and lines[0].startswith("error: ") and f"{name}:" in lines[0], r.output
    assert "Aborted" not in r.output and "Traceback" not in r.output


def test_intact_gzip_and_utf8_still_load(tmp_path):
    name, body, _ = GZIP_CASES["amazon-2014"]
    d = folder(tmp_path, {name: gzip.compress(body), "meta_Beauty.json": "{'asin': 'i1', 'title': 'Caf\u00e9'}\n".encode()})
    raw = load_path(d)
    assert raw.interactions.height == 3000 and raw.items.row(0) == ("i1", "Caf\u00e9", None, None, None)
