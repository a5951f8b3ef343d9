"""Preprocessing: chronological order with file-order ties, filters, k-core, item text, real-data counts."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from recfm.data.preprocess import PrepConfig, k_core, preprocess, render_item_text
from recfm.data.registry import load_dataset, resolve
from recfm.data.schema import EmptyDatasetError, make_raw
from recfm.data.sources import FORMATS

NO_CORE = dict(user_core=0, item_core=0)


def seqs(d) -> dict[str, list[str]]:
    """user id -> item ids, oldest first."""
    return {u: [d.item_ids[i - 1] for i in d.sequence(k)] for k, u in enumerate(d.user_ids)}


def test_timestamp_ties_keep_file_order_not_item_id_order():
    raw = make_raw(
        "ties",
        {
            "user_id": ["u", "u", "u", "u", "v", "v"],
            "item_id": ["9", "3", "5", "7", "2", "1"],
            "timestamp": [5.0, 5.0, 1.0, 5.0, 3.0, 3.0],
        },
    )
    d = preprocess(raw, PrepConfig(**NO_CORE))
    # "5" is oldest; then the three ties at t=5 in the order the file lists them: 9, 3, 7
    # (sorting ties by item id would give 3, 7, 9; by index order 3/9 would also differ).
    assert seqs(d) == {"u": ["5", "9", "3", "7"], "v": ["2", "1"]}
    assert d.timestamps.tolist() == [1.0, 5.0, 5.0, 5.0, 3.0, 3.0]
    assert d.user_ids == ["u", "v"]  # users in order of first appearance
    # item indices follow first appearance in the file, 1-based (0 is padding)
    assert d.item_ids == ["9", "3", "5", "7", "2", "1"]
    assert d.items.min() == 1 and d.items.max() == d.n_items


def test_interleaved_users_and_unsorted_file():
    raw = make_raw(
        "mixed",
        {
            "user_id": ["b", "a", "b", "a", "b", "a"],
            "item_id": ["x", "y", "z", "x", "y", "z"],
            "timestamp": [30.0, 20.0, 10.0, 10.0, 20.0, 30.0],
        },
    )
    d = preprocess(raw, PrepConfig(**NO_CORE))
    assert d.user_ids == ["b", "a"]
    assert seqs(d) == {"b": ["z", "y", "x"], "a": ["x", "y", "z"]}
    assert d.offsets.tolist() == [0, 3, 6]


def test_null_timestamps_keep_file_order():
    raw = make_raw("p5-like", {"user_id": ["u", "v", "u", "u", "v"], "item_id": ["c", "q", "a", "b", "p"]})
    d = preprocess(raw, PrepConfig(**NO_CORE))
    assert seqs(d) == {"u": ["c", "a", "b"], "v": ["q", "p"]}
    assert np.isnan(d.timestamps).all()
    assert d.stats()["has_timestamps"] is False


def test_k_core_reaches_a_fixed_point():
    # core 2. Pass 1 drops item d, then user u4 (left with c only); that leaves item c with a
    # single interaction, so pass 2 drops c and then user u3 (left with a only).
    inter = pl.DataFrame(
        {
            "user_id": ["u1", "u1", "u2", "u2", "u3", "u3", "u4", "u4"],
            "item_id": ["a", "b", "a", "b", "a", "c", "c", "d"],
        }
    )
    one_pass = inter.filter(pl.len().over("item_id") >= 2).filter(pl.len().over("user_id") >= 2)
    assert one_pass.height == 6 and "c" in one_pass["item_id"].to_list()  # one pass is not enough

    out = k_core(inter, user_core=2, item_core=2)
    assert sorted(zip(out["user_id"], out["item_id"])) == [("u1", "a"), ("u1", "b"), ("u2", "a"), ("u2", "b")]
    assert out.group_by("user_id").len()["len"].min() >= 2
    assert out.group_by("item_id").len()["len"].min() >= 2
    # through preprocess as well
    raw = make_raw("core", {**inter.to_dict(as_series=False), "timestamp": [float(i) for i in range(8)]})
    d = preprocess(raw, PrepConfig(user_core=2, item_core=2))
    assert seqs(d) == {"u1": ["a", "b"], "u2": ["a", "b"]}
    # core 0 / 1 filter nothing
    assert k_core(inter, 0, 1).height == 8


@pytest.mark.parametrize("seed", range(5))
def test_k_core_random_is_fixed_point(seed):
    rng = np.random.default_rng(seed)
    n = 400
    inter = pl.DataFrame({"user_id": rng.integers(0, 60, n).astype(str), "item_id": rng.zipf(1.6, n).astype(str)})
    out = k_core(inter, user_core=4, item_core=3)
    if out.height:
        assert out.group_by("user_id").len()["len"].min() >= 4
        assert out.group_by("item_id").len()["len"].min() >= 3
    assert k_core(out, 4, 3).height == out.height


def test_min_rating():
    raw = make_raw(
        "rated",
        {
            "user_id": ["u"] * 5,
            "item_id": ["a", "b", "c", "d", "e"],
            "timestamp": [1.0, 2.0, 3.0, 4.0, 5.0],
            "rating": [5.0, 3.0, 4.0, 3.5, 1.0],
        },
    )
    assert seqs(preprocess(raw, PrepConfig(**NO_CORE, min_rating=4)))["u"] == ["a", "c"]
    assert seqs(preprocess(raw, PrepConfig(**NO_CORE, min_rating=3.5)))["u"] == ["a", "c", "d"]
    assert seqs(preprocess(raw, PrepConfig(**NO_CORE)))["u"] == ["a", "b", "c", "d", "e"]
    unrated = make_raw("unrated", {"user_id": ["u"], "item_id": ["a"]})
    with pytest.raises(ValueError, match="no ratings"):
        preprocess(unrated, PrepConfig(**NO_CORE, min_rating=4))


def test_drop_repeats_keeps_the_chronologically_first():
    raw = make_raw(
        "repeats",
        {
            "user_id": ["u", "u", "u", "u", "v", "v"],
            "item_id": ["A", "B", "A", "C", "A", "A"],
            "timestamp": [10.0, 5.0, 1.0, 20.0, 7.0, 7.0],
        },
    )
    kept = preprocess(raw, PrepConfig(**NO_CORE))
    assert seqs(kept) == {"u": ["A", "B", "A", "C"], "v": ["A", "A"]}
    d = preprocess(raw, PrepConfig(**NO_CORE, drop_repeats=True))
    # the file lists A@10 before A@1, but the first interaction with A is the one at t=1
    assert seqs(d) == {"u": ["A", "B", "C"], "v": ["A"]}
    assert d.timestamps.tolist() == [1.0, 5.0, 20.0, 7.0]


def test_max_user_items_keeps_the_most_recent():
    raw = make_raw(
        "long",
        {
            "user_id": ["u"] * 6 + ["v"] * 3,
            "item_id": list("abcdef") + list("xyz"),
            "timestamp": [6.0, 1.0, 5.0, 2.0, 4.0, 3.0, 1.0, 2.0, 3.0],
        },
    )
    d = preprocess(raw, PrepConfig(**NO_CORE, max_user_items=3))
    # u in time order: b d f e c a -> last three: e c a; v is short enough to be untouched
    assert seqs(d) == {"u": ["e", "c", "a"], "v": ["x", "y", "z"]}
    assert d.timestamps.tolist() == [4.0, 5.0, 6.0, 1.0, 2.0, 3.0]
    assert set(d.item_ids) == {"a", "c", "e", "x", "y", "z"}  # dropped items leave the catalog
    with pytest.raises(ValueError):
        PrepConfig(max_user_items=2)


def test_render_item_text():
    row = {"item_id": "1", "title": " Toy Story ", "genre": "Animation", "year": None, "note": "", "x": "nan"}
    assert render_item_text(row, ["title", "genre"]) == "title: Toy Story; genre: Animation"
    assert render_item_text(row, ["genre", "title"]) == "genre: Animation; title: Toy Story"
    assert render_item_text(row, ["title", "year", "note", "x", "missing", "genre"]) == "title: Toy Story; genre: Animation"
    assert render_item_text({"title": "  "}, ["title"]) == ""
    assert render_item_text({"n": 3}, ["n"]) == "n: 3"


def test_item_text_in_prepared_dataset():
    raw = make_raw(
        "cat",
        {"user_id": ["u", "u", "u"], "item_id": ["1", "2", "3"], "timestamp": [1.0, 2.0, 3.0]},
        {"item_id": ["1", "2"], "title": ["X", "Z"], "genre": ["Y", None]},
    )
    d = preprocess(raw, PrepConfig(**NO_CORE))
    assert d.item_ids == ["1", "2", "3"]
    assert d.item_text == ["title: X; genre: Y", "title: Z", "item: 3"]  # empty field skipped; no catalog row
    assert d.item_titles == ["X", "Z", "3"]
    only = preprocess(raw, PrepConfig(**NO_CORE, text_fields=["genre"]))
    assert only.item_text == ["genre: Y", "item: 2", "item: 3"]
    assert only.item_titles == ["X", "Z", "3"]  # the title does not depend on text_fields


def test_unknown_text_fields_error():
    raw = make_raw("cat", {"user_id": ["u"], "item_id": ["1"]}, {"item_id": ["1"], "title": ["X"]})
    with pytest.raises(ValueError, match=r"plot.*title"):
        preprocess(raw, PrepConfig(**NO_CORE, text_fields=["title", "plot"]))


def test_over_filtering_raises_helpful_error():
    raw = make_raw("tiny", {"user_id": ["u", "u", "v"], "item_id": ["a", "b", "a"], "timestamp": [1.0, 2.0, 3.0]})
    with pytest.raises(EmptyDatasetError, match=r"tiny.*no interactions left.*user_core=5.*item_core=5.*lower the thresholds"):
        preprocess(raw, PrepConfig())
    rated = make_raw("rated", {"user_id": ["u"], "item_id": ["a"], "rating": [1.0]})
    with pytest.raises(EmptyDatasetError, match="min_rating=4"):
        preprocess(rated, PrepConfig(**NO_CORE, min_rating=4))
    assert issubclass(EmptyDatasetError, ValueError)


def test_null_ids_are_dropped():
    raw = make_raw("nulls", {"user_id": ["u", None, "u", "u"], "item_id": ["a", "b", None, "c"], "timestamp": [1.0, 2.0, 3.0, 4.0]})
    assert seqs(preprocess(raw, PrepConfig(**NO_CORE))) == {"u": ["a", "c"]}


# ---------------------------------------------------------------------------------------------
# Real data
# ---------------------------------------------------------------------------------------------


@pytest.mark.realdata
def test_movielens_100k_prepares(ml100k):
    st = ml100k.stats()
    assert st["users"] == 943
    assert (st["items"], st["interactions"]) == (1349, 99287)
    assert np.diff(ml100k.offsets).min() >= 5
    assert ml100k.item_text[0].startswith("movie_title: ") and "; release_year: " in ml100k.item_text[0]
    # timestamps never decrease within a user
    for u in range(ml100k.n_users):
        ts = ml100k.timestamps[ml100k.offsets[u] : ml100k.offsets[u + 1]]
        assert (np.diff(ts) >= 0).all()


@pytest.mark.realdata
def test_movielens_100k_ties_follow_file_order(ml100k):
    _, fmt, path, _ = resolve("movielens-100k")
    raw = FORMATS[fmt].load(path, name="ml")
    d = preprocess(raw, PrepConfig(**NO_CORE))
    inter = raw.interactions.with_row_index("row")
    by_file = inter.sort(["user_id", "timestamp", "row"]).group_by("user_id", maintain_order=True).agg("item_id")
    by_id = (
        inter.with_columns(pl.col("item_id").cast(pl.Int64).alias("iid"))
        .sort(["user_id", "timestamp", "iid"])
        .group_by("user_id", maintain_order=True)
        .agg("item_id")
    )
    want = dict(zip(by_file["user_id"], by_file["item_id"].to_list()))
    assert seqs(d) == want  # every user: timestamp order, ties in file order
    ties_where_id_order_differs = sum(a != b for a, b in zip(by_file["item_id"].to_list(), by_id["item_id"].to_list()))
    assert ties_where_id_order_differs > 0  # the data really has ties where the two rules disagree


@pytest.mark.realdata
def test_amazon_beauty_counts(amazon_beauty_dir, cache_dir):
    d = load_dataset("amazon-beauty", use_cache=False)
    assert (d.n_users, d.n_items, d.n_interactions) == (22_363, 12_101, 198_502)
    # no timestamps: each sequence is its line of user_sequence.txt, in order
    with open(amazon_beauty_dir / "user_sequence.txt") as fh:
        lines = [next(fh).split() for _ in range(20)]
    index = d.item_index()
    users = {u: k for k, u in enumerate(d.user_ids)}
    for parts in lines:
        if parts[0] in users:
            assert d.sequence(users[parts[0]]).tolist() == [index[i] for i in parts[1:]]
    assert not any(t.startswith("item: ") for t in d.item_text[:100])  # item text comes from item_initial_ids.txt
