"""Format detection over every fixture folder, and load_path."""

from __future__ import annotations

import pytest

from recfm.data.schema import DataFormatError
from recfm.data.sources import FORMATS, UnknownFormatError, detect_format, load_path

EXPECTED = {
    "atomic_dir": "recbole-atomic",
    "p5_dir": "p5-text",
    "ml1m_dir": "grouplens",
    "ml100k_dir": "grouplens",
    "mlcsv_dir": "grouplens",
    "yelp_dir": "yelp",
    "amazon23_dir": "amazon-2023",
    "amazon14_dir": "amazon-2014",
    "amazon18_dir": "amazon-2014",
    "tabular_dir": "tabular",
}


def test_table_order_specific_before_generic():
    assert list(FORMATS) == [
        "recbole-atomic", "p5-text", "grouplens", "yelp", "mind", "goodreads", "hm", "amazon-2023", "amazon-2014", "tabular",
    ]


@pytest.mark.parametrize("fixture, expected", EXPECTED.items())
def test_each_fixture_folder_is_detected_and_loads(request, fixture, expected):
    folder = request.getfixturevalue(fixture)
    assert detect_format(folder).name == expected
    raw = load_path(folder)
    assert raw.interactions.height > 0
    assert raw.name == ("ml-100k" if expected == "recbole-atomic" else folder.name)  # atomic: named after NAME.inter


def test_single_table_file_is_tabular(tabular_dir):
    assert detect_format(tabular_dir / "interactions.csv").name == "tabular"


def test_specific_layout_wins_over_generic(ml1m_dir, write_file, to_jsonl):
    # A GroupLens folder that also holds a generic table and some JSON is still GroupLens.
    write_file(ml1m_dir / "interactions.csv", "user_id,item_id,timestamp\nu,i,1\n")
    write_file(ml1m_dir / "Beauty.json", to_jsonl([{"reviewerID": "u", "asin": "i"}]))
    assert detect_format(ml1m_dir).name == "grouplens"


def test_unrecognised_folder(tmp_path, write_file):
    write_file(tmp_path / "stuff" / "notes.txt", "hello\n")
    write_file(tmp_path / "stuff" / "config.json", '{"a": 1}\n')
    with pytest.raises(UnknownFormatError) as e:
        detect_format(tmp_path / "stuff")
    msg = str(e.value)
    assert "stuff: not a recognised dataset layout" in msg
    for name in FORMATS:
        assert f"- {name}:" in msg


def test_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        detect_format(tmp_path / "absent")
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        load_path(tmp_path / "absent", format="tabular")


def test_load_path_by_name_with_options(tmp_path, write_file):
    f = write_file(tmp_path / "events.csv", "who,what,when\na,x,2020-01-01\na,y,2020-01-02\n")
    raw = load_path(f, user_col="who", item_col="what", time_col="when", name="events")
    assert raw.name == "events" and raw.interactions["item_id"].to_list() == ["x", "y"]
    raw = load_path(f, format="tabular", user_col="who", item_col="what", time_col=None)
    assert raw.interactions["timestamp"].null_count() == 2
    with pytest.raises(DataFormatError, match="available columns: who, what, when"):
        load_path(f)


def test_load_path_errors(p5_dir, amazon14_dir):
    with pytest.raises(UnknownFormatError, match="unknown format 'netflix'; known formats: recbole-atomic"):
        load_path(p5_dir, format="netflix")
    with pytest.raises(TypeError, match=r"format 'p5-text' takes no option\(s\) \['user_col'\]"):
        load_path(p5_dir, user_col="u")
    assert load_path(amazon14_dir, category="Beauty_5").interactions.height == 4
