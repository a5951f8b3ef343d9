"""GroupLens MovieLens layouts: ML-1M (.dat, latin-1), ML-100K (u.data/u.item), ML-20M+ (csv)."""

from __future__ import annotations

import pytest

from recfm.data.preprocess import PrepConfig, preprocess
from recfm.data.schema import DataFormatError, EmptyDatasetError
from recfm.data.sources import grouplens


def test_ml1m_file_order_ratings_and_latin1_titles(ml1m_dir):
    raw = grouplens.load(ml1m_dir)
    assert raw.name == "ml-1m"
    inter = raw.interactions
    assert inter["user_id"].to_list() == ["1", "1", "1", "2", "2", "2"]
    assert inter["item_id"].to_list() == ["1193", "661", "914", "3408", "1193", "661"]  # file order, not sorted
    assert inter["timestamp"].to_list()[3:5] == [978300275.0, 978300275.0]
    assert inter["rating"].to_list() == [5.0, 3.0, 3.0, 4.0, 5.0, 4.0]
    assert raw.text_fields == ["title", "genres", "year"]
    items = {r["item_id"]: r for r in raw.items.iter_rows(named=True)}
    assert items["661"] == {
        "item_id": "661", "title": "James and the Giant Peach (1996)",
        "genres": "Animation, Children's, Musical", "year": "1996",
    }
    assert items["3409"]["title"] == "Café au lait (Métisse) (1993)"
    assert items["3409"]["year"] == "1993"


def test_ml1m_ties_keep_file_order_through_preprocess(ml1m_dir):
    ds = preprocess(grouplens.load(ml1m_dir), PrepConfig(user_core=0, item_core=0))
    user2 = ds.items[ds.offsets[1] : ds.offsets[2]]
    # 661 is older; 3408 and 1193 share a second and keep the order the file lists them in.
    assert [ds.item_ids[i - 1] for i in user2] == ["661", "3408", "1193"]
    assert ds.item_titles[ds.item_ids.index("3408")] == "Erin Brockovich (2000)"


def test_ml1m_gz_and_extra_trailing_field_ignored(tmp_path, write_file):
    d = tmp_path / "ml-10m"
    write_file(d / "ratings.dat", "5::10::4.5::1000::extra\n5::20::3::999\n", gz=True)
    write_file(d / "movies.dat", "10::GoldenEye (1995)::Action|Adventure|Thriller::x\n", gz=True)
    raw = grouplens.load(d)
    assert raw.interactions["item_id"].to_list() == ["10", "20"]
    assert raw.interactions["rating"].to_list() == [4.5, 3.0]
    assert raw.items.row(0, named=True)["genres"] == "Action, Adventure, Thriller"


def test_ml1m_without_movies_gives_bare_catalog(tmp_path, write_file):
    write_file(tmp_path / "ratings.dat", "1::2::3::4\n")
    raw = grouplens.load(tmp_path)
    assert raw.items.height == 0 and raw.interactions.height == 1


def test_ml1m_malformed_rating_line(tmp_path, write_file):
    write_file(tmp_path / "ratings.dat", "1::1193::5::978300760\n\n1::661::three::978302109\n")
    with pytest.raises(DataFormatError, match=r"ratings\.dat:3: expected 'UserID::MovieID::Rating::Timestamp'") as e:
        grouplens.load(tmp_path)
    assert "three" in str(e.value)


def test_ml1m_too_few_fields(tmp_path, write_file):
    write_file(tmp_path / "ratings.dat", "1::1193::5::978300760\n1::661::5\n")
    with pytest.raises(DataFormatError, match=r"ratings\.dat:2:"):
        grouplens.load(tmp_path)


def test_ml1m_malformed_movie_line(tmp_path, write_file):
    write_file(tmp_path / "ratings.dat", "1::1::5::1\n")
    write_file(tmp_path / "movies.dat", "1::Toy Story (1995)::Animation\n2|Jumanji (1995)|Adventure\n")
    with pytest.raises(DataFormatError, match=r"movies\.dat:2: expected 'MovieID::Title::Genres'"):
        grouplens.load(tmp_path)


def test_ml1m_empty_ratings(tmp_path, write_file):
    write_file(tmp_path / "ratings.dat", "")
    with pytest.raises(EmptyDatasetError, match=r"ratings\.dat: no ratings"):
        grouplens.load(tmp_path)


def test_ml100k_tab_data_and_genre_flags(ml100k_dir):
    raw = grouplens.load(ml100k_dir)
    inter = raw.interactions
    assert inter["user_id"].to_list() == ["196", "186", "196", "22"]
    assert inter["item_id"].to_list() == ["242", "302", "51", "377"]
    assert inter["timestamp"][0] == inter["timestamp"][2] == 881250949.0
    items = {r["item_id"]: r for r in raw.items.iter_rows(named=True)}
    assert items["51"]["genres"] == "Drama, Romance, War, Western"
    assert items["51"]["year"] == "1994"
    assert items["302"] == {"item_id": "302", "title": "L.A. Confidential", "genres": "Crime, Film-Noir, Mystery, Thriller", "year": "1997"}
    assert items["267"] == {"item_id": "267", "title": "unknown", "genres": "unknown", "year": None}
    assert items["377"]["genres"] is None


def test_ml100k_malformed_item_line(tmp_path, write_file):
    write_file(tmp_path / "u.data", "1\t2\t3\t4\n")
    write_file(tmp_path / "u.item", "1|Toy Story (1995)|01-Jan-1995||http://x|" + "|".join("0" * 19) + "\n2|Jumanji|x\n")
    with pytest.raises(DataFormatError, match=r"u\.item:2: expected 24 '\|'-separated fields"):
        grouplens.load(tmp_path)


def test_ml100k_malformed_data_line(tmp_path, write_file):
    write_file(tmp_path / "u.data", "1\t2\t3\t4\n1 2 3 4\n")
    with pytest.raises(DataFormatError, match=r"u\.data:2: expected tab-separated"):
        grouplens.load(tmp_path)


def test_ml100k_empty(tmp_path, write_file):
    write_file(tmp_path / "u.data", "\n\n")
    with pytest.raises(EmptyDatasetError, match="u.data"):
        grouplens.load(tmp_path)


def test_ml_csv_layout(mlcsv_dir):
    raw = grouplens.load(mlcsv_dir)
    assert raw.interactions["item_id"].to_list() == ["296", "306", "1", "296"]
    assert raw.interactions["timestamp"].to_list()[1:] == [1147868817.0] * 3
    items = {r["item_id"]: r for r in raw.items.iter_rows(named=True)}
    assert items["296"]["title"] == "Pulp Fiction, The (1994)"
    assert items["296"]["genres"] == "Comedy, Crime, Drama, Thriller"
    assert items["306"]["genres"] is None and items["306"]["year"] == "1994"


def test_ml_csv_wrong_field_count(tmp_path, write_file):
    write_file(tmp_path / "ratings.csv", "userId,movieId,rating,timestamp\n1,2,3,4\n1,2,3,4,5\n")
    write_file(tmp_path / "movies.csv", "movieId,title,genres\n2,X,Drama\n")
    with pytest.raises(DataFormatError, match=r"ratings\.csv:3: expected 4 comma-separated fields"):
        grouplens.load(tmp_path)


def test_ml_csv_missing_column(tmp_path, write_file):
    write_file(tmp_path / "ratings.csv", "userId,movieId,stars\n1,2,3\n")
    write_file(tmp_path / "movies.csv", "movieId,title,genres\n2,X,Drama\n")
    with pytest.raises(DataFormatError, match=r"ratings\.csv:1: expected a column 'rating' \(available columns: userId, movieId, stars\)"):
        grouplens.load(tmp_path)


def test_detect(ml1m_dir, ml100k_dir, mlcsv_dir, tmp_path, write_file):
    assert grouplens.detect(ml1m_dir) and grouplens.detect(ml100k_dir) and grouplens.detect(mlcsv_dir)
    write_file(tmp_path / "other" / "ratings.csv", "a,b\n")  # ratings.csv alone is not enough
    assert not grouplens.detect(tmp_path / "other")
    assert not grouplens.detect(ml1m_dir / "ratings.dat")
