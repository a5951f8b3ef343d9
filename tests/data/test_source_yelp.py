"""Yelp Open Dataset: review + business JSON lines."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from recfm.data.schema import DataFormatError, EmptyDatasetError
from recfm.data.sources import yelp


def unix(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S").replace(tzinfo=timezone.utc).timestamp()


def test_reviews_in_file_order_with_business_catalog(yelp_dir):
    raw = yelp.load(yelp_dir)
    assert raw.name == "yelp"
    inter = raw.interactions
    assert inter["user_id"].to_list() == ["mh_-eMZ6K5RLWhZyISBhwA", "OyoGAe7OKpv6SyGZT5g77Q", "mh_-eMZ6K5RLWhZyISBhwA"]
    assert inter["item_id"].to_list() == ["XQfwVwDr-v0ZS3_CbbE5Xw", "7ATYjTIgM3jUlt4UM3IypQ", "7ATYjTIgM3jUlt4UM3IypQ"]
    assert inter["timestamp"].to_list() == [unix("2018-07-07 22:09:11"), unix("2012-01-03 15:28:18"), unix("2018-07-07 22:09:11")]
    assert inter["timestamp"][0] == 1531001351.0
    assert inter["rating"].to_list() == [3.0, 5.0, 4.0]
    assert raw.text_fields == ["name", "categories", "city", "state", "stars"]
    items = {r["item_id"]: r for r in raw.items.iter_rows(named=True)}
    assert items["XQfwVwDr-v0ZS3_CbbE5Xw"] == {
        "item_id": "XQfwVwDr-v0ZS3_CbbE5Xw", "name": "Turning Point of North Wales",
        "categories": "Restaurants, Breakfast & Brunch, Food, Juice Bars & Smoothies",
        "city": "North Wales", "state": "PA", "stars": "3.0",
    }


def test_gz_date_only_and_no_business_file(tmp_path, write_file, to_jsonl):
    write_file(
        tmp_path / "yelp_academic_dataset_review.json",
        to_jsonl([{"user_id": "u", "business_id": "b", "stars": 4, "date": "2016-03-09", "extra": {"x": 1}}]),
        gz=True,
    )
    raw = yelp.load(tmp_path)
    assert raw.interactions.row(0) == ("u", "b", 1457481600.0, 4.0)
    assert raw.items.height == 0


def test_malformed_date(yelp_dir, write_file, to_jsonl):
    write_file(
        yelp_dir / "yelp_academic_dataset_review.json",
        to_jsonl([{"user_id": "u", "business_id": "b", "date": "2018-07-07 22:09:11"},
                  {"user_id": "u", "business_id": "b", "date": "07/07/2018"}]),
    )  # fmt: skip
    with pytest.raises(DataFormatError, match=r"yelp_academic_dataset_review\.json:2: expected a JSON object") as e:
        yelp.load(yelp_dir)
    assert "07/07/2018" in str(e.value)


def test_malformed_json_and_business_line(yelp_dir, write_file, to_jsonl):
    write_file(yelp_dir / "yelp_academic_dataset_review.json", '{"user_id": "u", "business_id": "b", "date": "2018-07-07"}\n{oops\n')
    with pytest.raises(DataFormatError, match=r"_review\.json:2:"):
        yelp.load(yelp_dir)
    write_file(yelp_dir / "yelp_academic_dataset_review.json", '{"user_id": "u", "business_id": "b", "date": "2018-07-07"}\n')
    write_file(yelp_dir / "yelp_academic_dataset_business.json", '{"business_id": "b"}\n{"name": "no id"}\n')
    with pytest.raises(DataFormatError, match=r"_business\.json:2: expected a JSON object with 'business_id'"):
        yelp.load(yelp_dir)


def test_empty_reviews(tmp_path, write_file):
    write_file(tmp_path / "yelp_academic_dataset_review.json", "\n")
    with pytest.raises(EmptyDatasetError, match=r"yelp_academic_dataset_review\.json: no reviews"):
        yelp.load(tmp_path)


def test_detect(yelp_dir, tmp_path):
    assert yelp.detect(yelp_dir)
    assert not yelp.detect(tmp_path / "nothing")
    assert not yelp.detect(yelp_dir / "yelp_academic_dataset_review.json")
