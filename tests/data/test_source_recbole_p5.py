"""The two original loaders: RecBole atomic files and the P5/IDGenRec text format."""

from __future__ import annotations

import pytest

from recfm.data.schema import DataFormatError, EmptyDatasetError
from recfm.data.sources import movielens, p5


def test_atomic_file_order_ratings_and_catalog(atomic_dir):
    raw = movielens.load_atomic(atomic_dir)
    assert raw.name == "ml-100k"
    inter = raw.interactions
    assert inter.columns == ["user_id", "item_id", "timestamp", "rating"]
    assert inter["item_id"].to_list() == ["242", "302", "51", "100"]  # not sorted by item id or time
    assert inter["timestamp"][0] == inter["timestamp"][2] == 881250949.0
    assert raw.text_fields == ["movie_title", "release_year", "class"]
    assert raw.items.row(1) == ("302", "L.A. Confidential", "1997", "Crime Film-Noir")


def test_atomic_unknown_column_ignored_and_no_item_file(tmp_path, write_file):
    write_file(tmp_path / "x.inter", "session:token\tuser_id:token\titem_id:token\nS\tu\ti\nS\tu\tj\n")
    raw = movielens.load_atomic(tmp_path)
    assert raw.interactions.columns == ["user_id", "item_id", "timestamp"]
    assert raw.interactions["timestamp"].null_count() == 2
    assert raw.items.height == 0


def test_atomic_malformed_line(atomic_dir, write_file):
    write_file(atomic_dir / "ml-100k.inter", "user_id:token\titem_id:token\ttimestamp:float\n1\t2\t3\n\n1\t2\n")
    with pytest.raises(DataFormatError, match=r"ml-100k\.inter:4: expected 3 tab-separated fields"):
        movielens.load_atomic(atomic_dir)
    write_file(atomic_dir / "ml-100k.inter", "user_id:token\titem_id:token\ttimestamp:float\n1\t2\t3\n1\t2\tlater\n")
    with pytest.raises(DataFormatError, match=r"ml-100k\.inter:3: expected a finite number in column 'timestamp'"):
        movielens.load_atomic(atomic_dir)


def test_atomic_empty(tmp_path, write_file):
    write_file(tmp_path / "x.inter", "")
    with pytest.raises(DataFormatError, match=r"x\.inter:1: expected a header line"):
        movielens.load_atomic(tmp_path)
    write_file(tmp_path / "x.inter", "user_id:token\titem_id:token\n")
    with pytest.raises(EmptyDatasetError, match=r"x\.inter: no interactions"):
        movielens.load_atomic(tmp_path)


def test_p5_sequences_and_titles(p5_dir):
    raw = p5.load(p5_dir)
    assert raw.name == "beauty-p5"
    inter = raw.interactions
    assert inter["user_id"].to_list() == ["A1", "A1", "A1", "A2", "A2"]
    assert inter["item_id"].to_list() == ["B9", "B2", "B3", "B2", "B9"]  # line order is the chronology
    assert inter["timestamp"].null_count() == 5
    assert raw.items.row(0) == ("B2", "sedu ionic ceramic tourmaline flat")


def test_p5_malformed_and_empty(tmp_path, write_file):
    write_file(tmp_path / "user_sequence.txt", "A1 B1 B2\n\nA2\n")
    with pytest.raises(DataFormatError, match=r"user_sequence\.txt:3: expected 'USER_ID ITEM_ID"):
        p5.load(tmp_path)
    write_file(tmp_path / "user_sequence.txt", "")
    with pytest.raises(EmptyDatasetError, match=r"user_sequence\.txt: no interactions"):
        p5.load(tmp_path)
