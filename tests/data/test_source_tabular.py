"""Generic CSV / TSV / Parquet tables with a column mapping."""

from __future__ import annotations

from datetime import datetime, timezone

import polars as pl
import pytest

from recfm.data.schema import DataFormatError, EmptyDatasetError
from recfm.data.sources import tabular

T0 = datetime(2021, 3, 4, 10, tzinfo=timezone.utc).timestamp()
DAY = 86400.0


def test_csv_folder_iso_times_ties_and_items(tabular_dir):
    raw = tabular.load(tabular_dir)
    assert raw.name == "shop"
    inter = raw.interactions
    assert inter.columns == ["user_id", "item_id", "timestamp", "rating"]  # 'session' ignored, 'rating' picked up
    assert inter["user_id"].to_list() == ["u1", "u1", "u2", "u1"]
    assert inter["item_id"].to_list() == ["007", "003", "003", "010"]  # ids stay text, file order kept
    assert inter["timestamp"].to_list() == [T0, T0, T0 - 3 * DAY - 10 * 3600, T0 + DAY - 10 * 3600]
    assert inter["rating"].to_list() == [5.0, 4.0, 3.0, 2.0]
    assert raw.text_fields == ["title", "price", "brand"]  # title first, then file order
    assert raw.items.rows() == [("003", "Mug, large", "9.5", "Acme"), ("007", "Teapot", None, "Acme"), ("010", "Spoon", "1", None)]


def test_tsv_file_with_column_mapping_and_numeric_times(tmp_path, write_file):
    f = write_file(tmp_path / "log.tsv", 'uid\tsku\tts\tstars\n7\tA "quoted\t10\t1\n7\tB\t10\t2\n8\tA "quoted\t5\t3\n')
    items = write_file(tmp_path / "catalog.tsv", "sku\tname\tcolor\nA \"quoted\tHat\tred\nB\tCap\tblue\n")
    raw = tabular.load(f, user_col="uid", item_col="sku", time_col="ts", rating_col="stars", items_path=items, text_cols=["name"])
    assert raw.name == "log"
    assert raw.interactions.rows() == [("7", 'A "quoted', 10.0, 1.0), ("7", "B", 10.0, 2.0), ("8", 'A "quoted', 5.0, 3.0)]
    assert raw.items.rows() == [('A "quoted', "Hat"), ("B", "Cap")]


def test_no_time_column(tmp_path, write_file):
    f = write_file(tmp_path / "seq.csv", "user_id,item_id\nu,b\nu,a\n")
    raw = tabular.load(f, time_col=None)
    assert raw.interactions["timestamp"].null_count() == 2
    assert raw.interactions["item_id"].to_list() == ["b", "a"]


def test_gzipped_csv(tmp_path, write_file):
    d = tmp_path / "gz"
    write_file(d / "interactions.csv", "user_id,item_id,timestamp\nu,i,1.5\nu,j,1.5\n", gz=True)
    assert tabular.detect(d)
    raw = tabular.load(d)
    assert raw.interactions["item_id"].to_list() == ["i", "j"]
    assert raw.items.height == 0


def test_parquet_with_datetime_and_list_columns(tmp_path):
    d = tmp_path / "pq"
    d.mkdir()
    pl.DataFrame({
        "user_id": [1, 1, 2],
        "item_id": [30, 10, 30],
        "timestamp": [datetime(2021, 3, 4, 10), datetime(2021, 3, 4, 10), datetime(2021, 3, 1)],
        "extra": [[1], [2], [3]],
    }).write_parquet(d / "interactions.parquet")  # fmt: skip
    pl.DataFrame({"item_id": [10, 30], "tags": [["a", "b"], []], "title": ["Ten", "Thirty"], "meta": [{"k": 1}, {"k": 2}]}).write_parquet(
        d / "items.parquet"
    )
    raw = tabular.load(d)
    assert raw.interactions.rows() == [("1", "30", T0), ("1", "10", T0), ("2", "30", T0 - 3 * DAY - 10 * 3600)]
    assert raw.text_fields == ["title", "tags"]  # the struct column is left out
    assert raw.items.rows() == [("10", "Ten", "a, b"), ("30", "Thirty", "")]


def test_missing_mapped_column_names_available_columns(tabular_dir):
    with pytest.raises(DataFormatError) as e:
        tabular.load(tabular_dir, user_col="customer")
    msg = str(e.value)
    assert "interactions.csv:1:" in msg
    assert "expected a column 'customer' for user_col (" in msg and "available columns: user_id, item_id, timestamp, rating, session" in msg


def test_missing_item_id_and_text_columns(tabular_dir):
    with pytest.raises(DataFormatError, match=r"items\.csv:1: expected a column 'sku' for item_id_col \(available columns: item_id, price, title, brand\)"):
        tabular.load(tabular_dir, item_id_col="sku")
    with pytest.raises(DataFormatError, match=r"items\.csv:1: expected a column 'colour' for text_cols"):
        tabular.load(tabular_dir, text_cols=["title", "colour"])


@pytest.mark.parametrize(
    "body, line",
    [
        ("u,i,1\nu,i,2,9\nu,i,3\n", 3),  # too many fields
        ("u,i,1\n\nu,i,2\nu,i\n", 5),  # too few fields (polars would pad it with nulls), after a blank line
        ('u,"multi\nline",1\nu,i,2,3\n', 4),  # a quoted line break makes the row span two lines
        ("u,i,1\n,i,2\n", 3),  # empty user id
    ],
)
def test_bad_row_reports_its_line(tmp_path, write_file, body, line):
    f = write_file(tmp_path / "interactions.csv", "user_id,item_id,timestamp\n" + body)
    with pytest.raises(DataFormatError, match=rf"interactions\.csv:{line}: expected "):
        tabular.load(f)


def test_bad_timestamp_and_rating_report_their_line(tmp_path, write_file):
    f = write_file(tmp_path / "interactions.csv", 'user_id,item_id,timestamp,rating\nu,"a\nb",2021-01-01,1\nu,i,yesterday,2\n')
    with pytest.raises(DataFormatError, match=r"interactions\.csv:4: expected a finite number or an ISO date/date-time in column 'timestamp', got 'yesterday'"):
        tabular.load(f)
    f = write_file(tmp_path / "interactions.csv", "user_id,item_id,timestamp,rating\nu,i,1,1\nu,i,2,five\n")
    with pytest.raises(DataFormatError, match=r"interactions\.csv:3: expected a finite number in column 'rating', got 'five'"):
        tabular.load(f)


def test_empty_and_header_only(tmp_path, write_file):
    f = write_file(tmp_path / "interactions.csv", "")
    with pytest.raises(EmptyDatasetError, match=r"interactions\.csv: the file is empty"):
        tabular.load(f)
    f = write_file(tmp_path / "interactions.csv", "user_id,item_id,timestamp\n")
    with pytest.raises(EmptyDatasetError, match=r"interactions\.csv: no interactions"):
        tabular.load(f)


def test_detect(tabular_dir, tmp_path, write_file):
    assert tabular.detect(tabular_dir)
    assert tabular.detect(tabular_dir / "interactions.csv")
    assert tabular.detect(write_file(tmp_path / "x.parquet", b""))
    assert not tabular.detect(write_file(tmp_path / "notes.txt", "hello"))
    assert not tabular.detect(tmp_path / "missing")
    (tmp_path / "no-table").mkdir()
    write_file(tmp_path / "no-table" / "ratings.csv", "a,b\n")
    assert not tabular.detect(tmp_path / "no-table")


def test_json_lines_chunks_keep_order_and_exact_line_numbers(tmp_path, write_file):
    """The polars-per-chunk reader behind the Amazon and Yelp loaders."""
    out = {"k": pl.String, "v": pl.Float64}

    def convert(df):
        return None if df["k"].null_count() else df.select("k", "v")

    def parse_line(n, line):
        import json

        r = json.loads(line)
        if "k" not in r:
            raise DataFormatError(f, n, "a key 'k'", line)
        return str(r["k"]), float(r["v"])

    lines = ['{"k": "a", "v": 1}', "", '{"k": "b", "v": "2"}', '{"k": "c", "v": 3, "x": [1]}', '{"k": "d", "v": 4}']
    f = write_file(tmp_path / "x.jsonl", "\n".join(lines) + "\n", gz=True)
    df = tabular.json_lines_frame(f, {"k": pl.String, "v": pl.Float64}, convert, parse_line, out, chunk_lines=2)
    assert df.rows() == [("a", 1.0), ("b", 2.0), ("c", 3.0), ("d", 4.0)]  # chunk 2 ('"2"') took the Python path
    f = write_file(tmp_path / "x.jsonl", "\n".join(lines + ['{"v": 6}']) + "\n")
    with pytest.raises(DataFormatError, match=r"x\.jsonl:6: expected a key 'k'"):
        tabular.json_lines_frame(f, {"k": pl.String, "v": pl.Float64}, convert, parse_line, out, chunk_lines=2)


def test_a_header_field_that_polars_would_read_as_a_pattern_is_a_plain_column(tmp_path):
    """Found by the loader fuzz test: a column named "*" was polars' wildcard, so the blank-row filter
    also reached the integer line-number column and failed."""
    from recfm.data.sources.tabular import read_table

    path = tmp_path / "inter.csv"
    path.write_text("user_id,item_id,*,^x$\n1,2,a,b\n1,3,,\n,,,\n2,2,c,d\n")
    df = read_table(path, sep=",", required=["user_id", "item_id"])
    assert df["user_id"].to_list() == ["1", "1", "2"] and df["*"].to_list() == ["a", None, "c"]
    assert df["__line__"].to_list() == [2, 3, 5]  # the blank line 4 dropped, line numbers kept
