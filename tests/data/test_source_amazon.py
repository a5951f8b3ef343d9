"""Amazon reviews: 2014 (Python-literal metadata), 2018 (JSON) and 2023 (JSONL, parent_asin)."""

from __future__ import annotations

import ast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recfm.data.schema import DataFormatError, EmptyDatasetError
from recfm.data.sources import amazon


def rows(raw):
    return {r["item_id"]: r for r in raw.items.iter_rows(named=True)}


def test_2014_gz_reviews_and_python_literal_meta(amazon14_dir):
    raw = amazon.load_2014(amazon14_dir)
    inter = raw.interactions
    assert inter["user_id"].to_list() == ["A1YJEY40YUW4SE", "A60XNB876KYML", "A60XNB876KYML", "A1YJEY40YUW4SE"]
    assert inter["item_id"].to_list() == ["7806397051", "B00004TMFE", "7806397051", "B00004TMFE"]
    assert inter["timestamp"].to_list() == [1391040000.0, 1397779200.0, 1397779200.0, 1391040000.0]
    assert inter["rating"].to_list() == [1.0, 3.0, 4.0, 5.0]
    assert raw.text_fields == ["title", "brand", "categories", "price"]
    items = rows(raw)
    assert items["7806397051"] == {
        "item_id": "7806397051",
        "title": "Salon Grafix Shaping Hair Spray & Gel",
        "brand": "Salon Grafix",
        "categories": "Beauty, Hair Care, Styling Products, Styling Tools",
        "price": "3.99",
    }
    assert items["B00004TMFE"] == {
        "item_id": "B00004TMFE", "title": "Nature's Gate Lotion", "brand": None,
        "categories": "Beauty, Skin Care", "price": None,
    }
    assert "B0000NOREV" not in items  # metadata of items nobody reviewed is skipped


def test_2018_json_meta_category_list_and_price_strings(amazon18_dir):
    raw = amazon.load_2014(amazon18_dir)
    assert raw.interactions["item_id"].to_list() == ["B0000530HU", "B0000530HU", "B00006L9LC"]
    items = rows(raw)
    assert items["B0000530HU"] == {
        "item_id": "B0000530HU", "title": "Old Spice Classic Cologne", "brand": "Old Spice",
        "categories": None, "price": "$12.99",
    }
    assert items["B00006L9LC"]["categories"] == "Beauty"  # HTML debris dropped, duplicates removed
    assert items["B00006L9LC"]["price"] is None  # CSS scraped into the price field


def test_2018_five_core_name_and_plain_json_reviews(tmp_path, write_file, to_jsonl):
    write_file(tmp_path / "Beauty_5.json", to_jsonl([{"reviewerID": "u", "asin": "i", "unixReviewTime": 5, "overall": 2}]))
    raw = amazon.load_2014(tmp_path)
    assert raw.interactions.row(0) == ("u", "i", 5.0, 2.0)
    assert raw.items.height == 0  # no metadata file


def test_2014_several_categories_need_category(tmp_path, write_file, to_jsonl):
    review = to_jsonl([{"reviewerID": "u", "asin": "i", "unixReviewTime": 5}])
    write_file(tmp_path / "reviews_Beauty_5.json", review)
    write_file(tmp_path / "reviews_Sports_and_Outdoors_5.json", review.replace('"i"', '"s"'))
    write_file(tmp_path / "meta_Sports_and_Outdoors.json", "{'asin': 's', 'title': 'Ball'}\n")
    with pytest.raises(ValueError, match="category="):
        amazon.load_2014(tmp_path)
    raw = amazon.load_2014(tmp_path, category="Sports_and_Outdoors")
    assert raw.interactions["item_id"].to_list() == ["s"]
    assert rows(raw)["s"]["title"] == "Ball"
    with pytest.raises(FileNotFoundError, match="Toys"):
        amazon.load_2014(tmp_path, category="Toys")


def test_2014_malformed_review_line(amazon14_dir, write_file, to_jsonl):
    good = to_jsonl([{"reviewerID": "u", "asin": "i", "unixReviewTime": 5}])
    write_file(amazon14_dir / "reviews_Beauty_5.json", good + "\n" + good + '{"reviewerID": "u", "asin": \n', gz=True)
    with pytest.raises(DataFormatError, match=r"reviews_Beauty_5\.json\.gz:4: expected a JSON object with 'reviewerID'"):
        amazon.load_2014(amazon14_dir)


def test_2014_review_missing_key(tmp_path, write_file, to_jsonl):
    write_file(tmp_path / "reviews_Beauty.json", to_jsonl([{"reviewerID": "u", "asin": "i"}, {"reviewerID": "u"}]))
    with pytest.raises(DataFormatError, match=r"reviews_Beauty\.json:2:"):
        amazon.load_2014(tmp_path)


def test_2014_malformed_meta_line(tmp_path, write_file, to_jsonl):
    write_file(tmp_path / "reviews_Beauty_5.json", to_jsonl([{"reviewerID": "u", "asin": "i", "unixReviewTime": 5}]))
    write_file(tmp_path / "meta_Beauty.json", "{'asin': 'i', 'title': 'ok'}\n{'asin': 'i', 'title': 'broken'\n")
    with pytest.raises(DataFormatError, match=r"meta_Beauty\.json:2: expected a JSON \(or Python literal\) object"):
        amazon.load_2014(tmp_path)


def test_2014_empty_reviews(tmp_path, write_file):
    write_file(tmp_path / "reviews_Beauty_5.json", "", gz=True)
    with pytest.raises(EmptyDatasetError, match=r"reviews_Beauty_5\.json\.gz: no reviews"):
        amazon.load_2014(tmp_path)


def test_2023_parent_asin_millisecond_timestamps(amazon23_dir):
    raw = amazon.load_2023(amazon23_dir)
    inter = raw.interactions
    assert inter["user_id"].to_list() == ["AGKHLEW2SOWHNMFQIJGBECAF7INQ"] * 2 + ["AFQLNQNQYFWQZPJQZS6V3NZU4QBQ"] * 2
    assert inter["item_id"].to_list() == ["B00YQ6X8EO", "B081TJ8Z00", "B00YQ6X8EO", "B07NOASIN1"]  # parent_asin, else asin
    assert inter["timestamp"].to_list() == [1588687728923.0, 1588615855070.0, 1588615855070.0, 1588615855070.0]
    assert inter["rating"].to_list() == [5.0, 4.0, 1.0, 3.0]
    assert raw.text_fields == ["title", "store", "main_category", "categories", "price", "features"]
    items = rows(raw)
    assert items["B00YQ6X8EO"] == {
        "item_id": "B00YQ6X8EO", "title": "Howard LC0008 Leather Conditioner, 8-Ounce", "store": "Howard Products",
        "main_category": "All Beauty", "categories": None, "price": None, "features": "Revitalizes leather; Made in USA",
    }
    assert items["B081TJ8Z00"]["categories"] == "Beauty & Personal Care, Skin Care"
    assert items["B081TJ8Z00"]["price"] == "8.49"


def test_2023_malformed_and_empty(tmp_path, write_file, to_jsonl):
    good = to_jsonl([{"user_id": "u", "parent_asin": "p", "timestamp": 1}])
    write_file(tmp_path / "Toys.jsonl", good + '{"user_id": "u", "parent_asin": "p", "timestamp": "soon"}\n')
    with pytest.raises(DataFormatError, match=r"Toys\.jsonl:2: expected a JSON object with 'user_id', 'parent_asin'"):
        amazon.load_2023(tmp_path)
    write_file(tmp_path / "Toys.jsonl", "")
    write_file(tmp_path / "meta_Toys.jsonl", "")
    assert amazon.detect_2023(tmp_path)  # an empty reviews file is still recognised by its metadata partner
    with pytest.raises(EmptyDatasetError, match=r"Toys\.jsonl: no reviews"):
        amazon.load_2023(tmp_path)


def test_detect_by_release(amazon14_dir, amazon18_dir, amazon23_dir, yelp_dir, tmp_path, write_file):
    assert amazon.detect_2014(amazon14_dir) and not amazon.detect_2023(amazon14_dir)
    assert amazon.detect_2014(amazon18_dir) and not amazon.detect_2023(amazon18_dir)
    assert amazon.detect_2023(amazon23_dir) and not amazon.detect_2014(amazon23_dir)
    assert not amazon.detect(yelp_dir)  # other JSON lines are not Amazon reviews
    write_file(tmp_path / "x" / "config.json", '{"lr": 0.1}\n')
    assert not amazon.detect(tmp_path / "x")


def test_python2_repr_meta_utf8_bytes_are_repaired(tmp_path, write_file, to_jsonl):
    write_file(tmp_path / "reviews_Beauty_5.json", to_jsonl([{"reviewerID": "u", "asin": "i", "unixReviewTime": 5}]))
    # Python 2 wrote UTF-8 bytes as \xNN escapes: 'Caf\xc3\xa9' is "Café"
    write_file(tmp_path / "meta_Beauty.json", "{'asin': 'i', 'title': 'Caf\\xc3\\xa9 \"Noir\" cream', 'brand': u'L\\'Or\\xe9al'}\n")
    item = rows(amazon.load_2014(tmp_path))["i"]
    assert item["title"] == 'Café "Noir" cream'
    assert item["brand"] == "L'Oréal"


def test_numbers_as_strings_take_the_lenient_path(tmp_path, write_file, to_jsonl):
    write_file(tmp_path / "reviews_Beauty_5.json", to_jsonl([
        {"reviewerID": "u", "asin": "i", "unixReviewTime": "5", "overall": "4.0"},
        {"reviewerID": 17, "asin": "j", "unixReviewTime": 6},
    ]))  # fmt: skip
    assert amazon.load_2014(tmp_path).interactions.rows() == [("u", "i", 5.0, 4.0), ("17", "j", 6.0, None)]


_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text()
_values = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4), max_leaves=12)


@settings(max_examples=80, deadline=None)
@given(st.dictionaries(st.text(), _values, max_size=6))
def test_python_literal_reads_what_repr_writes(record):
    line = repr(record)
    assert amazon.python_literal(line) == ast.literal_eval(line) == record


@pytest.mark.parametrize("module_name", ["amazon", "yelp"])
def test_polars_fast_path_matches_python_path(module_name, amazon14_dir, amazon18_dir, amazon23_dir, yelp_dir, monkeypatch):
    from recfm.data.sources import tabular, yelp

    module = {"amazon": amazon, "yelp": yelp}[module_name]
    folders = [amazon14_dir, amazon18_dir, amazon23_dir] if module_name == "amazon" else [yelp_dir]
    real = tabular.json_lines_frame

    def only(path_taken):
        def reader(path, schema, convert, parse_line, out_schema, **kw):
            if path_taken == "polars":
                def parse_line(n, line):
                    raise AssertionError(f"{path}:{n} fell back to the Python path")
            else:
                def convert(df):
                    return None
            return real(path, schema, convert, parse_line, out_schema, **kw)
        return reader

    for folder in folders:
        results = []
        for taken in ("polars", "python"):
            monkeypatch.setattr(module, "json_lines_frame", only(taken))
            results.append(module.load(folder).interactions)
        assert results[0].equals(results[1]), folder
