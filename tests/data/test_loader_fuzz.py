"""Every source format, fed malformed files: a clear recfm error or a valid dataset, never a crash
(an unexpected exception type) and never a partial file left in the cache."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recfm.data.registry import DatasetNotFoundError, load_dataset
from recfm.data.schema import DataFormatError, EmptyDatasetError
from recfm.data.sources import FORMATS, UnknownFormatError

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
