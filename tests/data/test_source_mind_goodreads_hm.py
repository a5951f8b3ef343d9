"""MIND (behaviors.tsv + news.tsv), UCSD Goodreads (JSON lines) and H&M (Kaggle CSV) loaders.

Every fixture is written into tmp_path in the layout of the real release.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from pathlib import Path

import pytest

from recfm.data.preprocess import PrepConfig, preprocess
from recfm.data.registry import load_dataset, resolve
from recfm.data.schema import DataFormatError, EmptyDatasetError
from recfm.data.sources import amazon, detect_format, goodreads, hm, load_path, mind, tabular

NO_CORE = PrepConfig(user_core=0, item_core=0)


def rows(raw):
    return {r["item_id"]: r for r in raw.items.iter_rows(named=True)}


def sequences(ds) -> dict[str, list[str]]:
    return {
        u: [ds.item_ids[i - 1] for i in ds.items[ds.offsets[k] : ds.offsets[k + 1]]] for k, u in enumerate(ds.user_ids)
    }


# ---------------------------------------------------------------- MIND


def mind_time(text: str) -> float:
    return datetime.strptime(text, "%m/%d/%Y %I:%M:%S %p").replace(tzinfo=timezone.utc).timestamp()


T1, T2, T3, T5 = "11/11/2019 9:05:58 AM", "11/12/2019 6:11:30 PM", "11/11/2019 3:12:05 AM", "11/14/2019 7:01:48 AM"
MIND_BEHAVIORS = (
    f"1\tU13740\t{T1}\tN55189 N42782 N34694\tN55689-1 N35729-0 N20678-1\n"
    f"2\tU91836\t{T2}\tN31739\tN20678-0 N39317-1 N58114-1\n"  # two clicks of one impression: file order
    # U13740 again, earlier in the day: N42782 is already a history click, N11111 is not in news.tsv,
    # and N55689 is clicked here before line 1 clicks it
    f"3\tU13740\t{T3}\tN55189 N42782 N34694\tN42782-1 N11111-1 N55689-1 N35729-0\n"
    "\n"
    f"5\tU91836\t{T2}\tN31739\tN55689-1\n"  # same second as line 2: after its clicks
    f"6\tU73700\t{T5}\t\tN20678-0 N58114-1\n"  # no history
)
MIND_NEWS = (
    "N55189\tlifestyle\tlifestyleroyals\tThe Brands Queen Elizabeth, Prince Charles, and Prince Philip Swear By\t"
    "Shop the notebooks, jackets, and more that the royals can't live without.\thttps://assets.msn.com/x\t"
    '[{"Label": "Prince Philip", "Type": "P"}]\t[]\n'
    'N42782\tsports\tbaseball_mlb\t"Three takeaways from Yankees\' ALCS Game 5"\t\thttps://assets.msn.com/y\t[]\t[]\n'
    "N34694\tnews\tnewsus\tFire  crews   battle blaze\tCrews worked through the night.\thttps://x\t[]\t[]\n"
    "N55689\tsports\tfootball_nfl\tCharles Rogers, former Lions receiver, dies at 38\tHe was 38.\thttps://x\t[]\t[]\n"
    "N35729\tnews\tnewsus\tNever clicked\t\thttps://x\t[]\t[]\n"
    "N31739\tfinance\tfinance-companies\tWalmart Slashes Prices\tAbstract.\thttps://x\t[]\t[]\n"
    "N20678\tautos\tautosenthusiasts\tClassic Cars\t\thttps://x\t[]\t[]\n"
    "N39317\tvideo\tvideo-news\tThe Shocking Truth\t\thttps://x\t[]\t[]\n"
    "N58114\ttv\ttvnews\tFinale Recap\tWhat happened.\n"  # url and entity columns absent
)


@pytest.fixture
def mind_dir(tmp_path: Path, write_file) -> Path:
    d = tmp_path / "MINDsmall_train"
    write_file(d / "behaviors.tsv", MIND_BEHAVIORS)
    write_file(d / "news.tsv", MIND_NEWS)
    write_file(d / "entity_embedding.vec", "Q1\t0.1\t0.2\n")
    return d


def test_mind_history_first_dedup_and_missing_news(mind_dir, caplog):
    with caplog.at_level(logging.WARNING, logger="recfm.data.sources.mind"):
        raw = load_path(mind_dir)
    assert raw.name == "MINDsmall_train"
    assert raw.interactions.rows() == [
        ("U13740", "N55189", None), ("U13740", "N42782", None), ("U13740", "N34694", None),  # history, listed order
        ("U13740", "N20678", mind_time(T1)),  # line 1: N55689 is dropped there, line 3 clicks it earlier
        ("U91836", "N31739", None), ("U91836", "N39317", mind_time(T2)), ("U91836", "N58114", mind_time(T2)),
        ("U13740", "N55689", mind_time(T3)),  # line 3: N42782 already in the history, N11111 unknown
        ("U91836", "N55689", mind_time(T2)),
        ("U73700", "N58114", mind_time(T5)),
    ]  # fmt: skip
    assert "skipped 1 clicks on 1 news ids missing from" in caplog.text and "N11111" in caplog.text
    assert raw.text_fields == ["category", "subcategory", "title", "abstract"]
    items = rows(raw)
    assert items["N42782"] == {
        "item_id": "N42782", "category": "sports", "subcategory": "baseball_mlb",
        "title": "\"Three takeaways from Yankees' ALCS Game 5\"", "abstract": None,
    }  # fmt: skip
    assert items["N34694"]["title"] == "Fire crews battle blaze"
    assert items["N58114"]["abstract"] == "What happened."
    assert "N35729" in items  # catalog keeps news nobody clicked


def test_mind_sequences_text_and_titles_through_preprocess(mind_dir):
    ds = preprocess(load_path(mind_dir), NO_CORE)
    assert sequences(ds) == {
        "U13740": ["N55189", "N42782", "N34694", "N55689", "N20678"],  # history, then clicks by time (3:12 before 9:05)
        "U91836": ["N31739", "N39317", "N58114", "N55689"],  # equal times keep file order
        "U73700": ["N58114"],
    }
    i = ds.item_ids.index("N55689")
    assert ds.item_text[i] == (
        "category: sports; subcategory: football_nfl; title: Charles Rogers, former Lions receiver, dies at 38; "
        "abstract: He was 38."
    )
    assert ds.item_titles[i] == "Charles Rogers, former Lions receiver, dies at 38"


def test_mind_test_split_unlabeled_impressions(tmp_path, write_file):
    write_file(tmp_path / "behaviors.tsv", f"1\tU1\t{T1}\tN2 N1 N2\tN3 N4\n2\tU2\t{T1}\t\tN1 N2\n")
    write_file(tmp_path / "news.tsv", "".join(f"N{i}\tnews\tnewsus\tT{i}\t\t\t[]\t[]\n" for i in range(1, 5)))
    raw = mind.load(tmp_path)
    assert raw.interactions.rows() == [("U1", "N2", None), ("U1", "N1", None)]  # unlabeled impressions are no clicks


@pytest.mark.parametrize(
    "line, expected",
    [
        ("9\tU1\t2019-11-11 09:05:58\tN1\tN2-1", r"behaviors\.tsv:3: expected a time like '11/15/2019 8:55:22 AM'"),
        (f"9\tU1\t{T1}\tN1\tN2-2 N3-0", r"behaviors\.tsv:3: expected impressions 'NEWSID-1'"),
        (f"9\tU1\t{T1}\tN1", r"behaviors\.tsv:3: expected impressions"),  # 4 fields: no impressions
        (f"9\t\t{T1}\tN1\tN2-1", r"behaviors\.tsv:3: expected a user id"),
        (f"9\tU1\t{T1}\tN1\tN2-1\textra", r"behaviors\.tsv:3: expected 5 tab-separated fields .*, found 6"),
    ],
)
def test_mind_malformed_behaviors_line(mind_dir, write_file, line, expected):
    good = f"1\tU1\t{T1}\tN55189\tN42782-1\n"
    write_file(mind_dir / "behaviors.tsv", good + "\n" + line + "\n" + good)  # a blank line 2 still counts
    with pytest.raises(DataFormatError, match=expected) as e:
        mind.load(mind_dir)
    assert line.split("\t")[2] in str(e.value)  # the offending line is quoted


def test_mind_malformed_news_and_empty_behaviors(mind_dir, write_file):
    write_file(mind_dir / "news.tsv", "N1\tnews\tnewsus\tT\t\t\t[]\t[]\nN2 news newsus\n")
    with pytest.raises(DataFormatError, match=r"news\.tsv:2: expected 8 tab-separated fields .*found 1 fields"):
        mind.load(mind_dir)
    write_file(mind_dir / "behaviors.tsv", "\n")
    with pytest.raises(EmptyDatasetError, match=r"behaviors\.tsv: no impressions"):
        mind.load(mind_dir)


# ---------------------------------------------------------------- Goodreads

GR_U1, GR_U2 = "8842281e1d1347389f2ab93d60773d4d", "7504b2aee1ecb5b2872d3da381c6c91e"
GR_INTERACTIONS = [
    {"user_id": GR_U1, "book_id": "1384", "review_id": "e7d3f3e8", "is_read": True, "rating": 4,
     "date_added": "Mon Aug 01 13:41:57 -0700 2011", "date_updated": "Mon Aug 01 13:42:41 -0700 2011",
     "read_at": "Fri Jan 01 00:00:00 -0800 2010", "started_at": ""},
    {"user_id": GR_U1, "book_id": "1376", "review_id": "r2", "is_read": False, "rating": 0,
     "date_added": "Mon Aug 01 13:40:00 -0700 2011"},  # only shelved: not an interaction
    {"user_id": GR_U1, "book_id": "30119", "is_read": False, "rating": 3, "date_added": "Sun Jun 17 12:00:00 -0700 2012"},
    {"user_id": GR_U2, "book_id": "30119", "is_read": True, "rating": 0, "date_added": "Tue Feb 14 20:00:00 +0000 2012"},
    {"user_id": GR_U2, "book_id": "1384", "is_read": True, "rating": 5, "date_added": "Tue Feb 14 12:00:00 -0800 2012"},
]  # fmt: skip
LONG_DESCRIPTION = ("Poems of love and loss,\n written over  forty years. " * 12).strip()
GR_BOOKS = [
    {"isbn": "0375701907", "text_reviews_count": "7", "series": [], "country_code": "US", "language_code": "eng",
     "popular_shelves": [{"count": "3127", "name": "to-read"}, {"count": "290", "name": "poetry"},
                         {"count": "188", "name": "currently-reading"}, {"count": "40", "name": "favorites"},
                         {"count": "52", "name": "classics"}, {"count": "12", "name": "read"},
                         {"count": "11", "name": "american"}],
     "asin": "", "is_ebook": "false", "average_rating": "4.36", "similar_books": ["30119"],
     "description": LONG_DESCRIPTION, "format": "Paperback",
     "authors": [{"author_id": "8396", "role": ""}], "publisher": "Vintage", "num_pages": "384",
     "publication_year": "1998", "book_id": "1384", "work_id": "1355", "title": "Selected Poems",
     "title_without_series": "Selected Poems"},
    {"book_id": "99999", "title": "Nobody read this", "popular_shelves": []},
    {"popular_shelves": [], "description": "", "publisher": "", "publication_year": "", "book_id": "30119",
     "title": "", "title_without_series": "Leaves of Grass", "authors": []},
]  # fmt: skip


def gr_time(text: str) -> float:
    return datetime.strptime(text, "%a %b %d %H:%M:%S %z %Y").timestamp()


@pytest.fixture
def goodreads_dir(tmp_path: Path, write_file, to_jsonl) -> Path:
    d = tmp_path / "goodreads-poetry"
    write_file(d / "goodreads_interactions_poetry.json", to_jsonl(GR_INTERACTIONS))
    write_file(d / "goodreads_books_poetry.json", to_jsonl(GR_BOOKS))
    write_file(d / "goodreads_book_authors.json", to_jsonl([{"author_id": "8396", "name": "Walt Whitman"}]))
    write_file(d / "goodreads_reviews_poetry.json", to_jsonl([{"user_id": GR_U1, "book_id": "1384", "review_text": "x"}]))
    return d


def test_goodreads_read_or_rated_lines_with_book_catalog(goodreads_dir):
    raw = load_path(goodreads_dir)
    assert raw.name == "goodreads-poetry"
    inter = raw.interactions
    assert inter["user_id"].to_list() == [GR_U1, GR_U1, GR_U2, GR_U2]
    assert inter["item_id"].to_list() == ["1384", "30119", "30119", "1384"]  # the shelved-only 1376 is skipped
    assert inter["timestamp"].to_list() == [
        gr_time("Mon Aug 01 13:41:57 -0700 2011"), gr_time("Sun Jun 17 12:00:00 -0700 2012"),
        gr_time("Tue Feb 14 20:00:00 +0000 2012"), gr_time("Tue Feb 14 12:00:00 -0800 2012"),
    ]  # fmt: skip
    assert inter["timestamp"][0] == 1312231317.0
    assert inter["timestamp"][2] == inter["timestamp"][3]  # the same instant in two zones
    assert inter["rating"].to_list() == [4.0, 3.0, None, 5.0]  # rating 0 = not rated
    assert raw.text_fields == ["title", "year", "publisher", "description", "shelves"]
    items = rows(raw)
    assert set(items) == {"1384", "30119"}  # books nobody read are left out
    book = items["1384"]
    assert (book["title"], book["year"], book["publisher"]) == ("Selected Poems", "1998", "Vintage")
    assert book["shelves"] == "poetry, classics, favorites"  # by count, reading-status shelves left out
    assert len(book["description"]) <= 300 and book["description"].endswith("written over forty...")  # cut at a word boundary
    assert book["description"].startswith("Poems of love and loss, written over forty years. Poems")
    assert items["30119"] == {
        "item_id": "30119", "title": "Leaves of Grass", "year": None, "publisher": None, "description": None, "shelves": None,
    }  # fmt: skip


def test_goodreads_ties_keep_file_order_through_preprocess(goodreads_dir):
    ds = preprocess(load_path(goodreads_dir), NO_CORE)
    assert sequences(ds) == {GR_U1: ["1384", "30119"], GR_U2: ["30119", "1384"]}  # U2: equal times, file order
    i = ds.item_ids.index("1384")
    assert ds.item_titles[i] == "Selected Poems"
    assert ds.item_text[i].startswith("title: Selected Poems; year: 1998; publisher: Vintage; description: Poems of")
    assert ds.item_text[i].endswith("; shelves: poetry, classics, favorites")


def test_goodreads_gzip_files_and_genre_choice(tmp_path, write_file, to_jsonl):
    d = tmp_path / "goodreads"
    write_file(d / "goodreads_interactions_poetry.json", to_jsonl(GR_INTERACTIONS), gz=True)
    write_file(d / "goodreads_books_poetry.json", to_jsonl(GR_BOOKS), gz=True)
    comics = [{"user_id": "u9", "book_id": "555", "is_read": True, "rating": 2, "date_added": "Sun Jun 17 12:00:00 -0700 2012"}]
    write_file(d / "goodreads_interactions_comics_graphic.json", to_jsonl(comics), gz=True)
    write_file(d / "goodreads_books.json", to_jsonl([{"book_id": "555", "title": "Maus", "popular_shelves": []}]), gz=True)
    assert detect_format(d).name == "goodreads"
    with pytest.raises(ValueError, match="genre= one of 'comics_graphic', 'poetry'"):
        load_path(d)
    raw = load_path(d, genre="poetry")
    assert raw.interactions["item_id"].to_list() == ["1384", "30119", "30119", "1384"]
    assert rows(raw)["1384"]["shelves"] == "poetry, classics, favorites"
    raw = load_path(d, genre="comics_graphic")  # no goodreads_books_comics_graphic: the whole-graph books file
    assert raw.interactions.rows() == [("u9", "555", gr_time("Sun Jun 17 12:00:00 -0700 2012"), 2.0)]
    assert rows(raw)["555"]["title"] == "Maus"
    with pytest.raises(FileNotFoundError, match="no Goodreads interactions for genre 'history'"):
        load_path(d, genre="history")


def test_goodreads_malformed_lines(goodreads_dir, write_file, to_jsonl):
    good = to_jsonl(GR_INTERACTIONS[:1])
    write_file(goodreads_dir / "goodreads_interactions_poetry.json",
               good + to_jsonl([{"user_id": "u", "book_id": "1", "is_read": True, "date_added": "2012-06-17"}]), gz=True)  # fmt: skip
    (goodreads_dir / "goodreads_interactions_poetry.json").unlink()
    with pytest.raises(DataFormatError, match=r"goodreads_interactions_poetry\.json\.gz:2: expected a JSON object with 'user_id'") as e:
        load_path(goodreads_dir)
    assert "2012-06-17" in str(e.value)
    write_file(goodreads_dir / "goodreads_interactions_poetry.json", good + '{"user_id": "u", "book_id": \n', gz=True)
    with pytest.raises(DataFormatError, match=r"_poetry\.json\.gz:2:"):
        load_path(goodreads_dir)
    write_file(goodreads_dir / "goodreads_interactions_poetry.json", good, gz=True)
    write_file(goodreads_dir / "goodreads_books_poetry.json", '{"book_id": "1384", "title": "x"}\n{"title": "no id"}\n')
    with pytest.raises(DataFormatError, match=r"goodreads_books_poetry\.json:2: expected a JSON object with 'book_id'"):
        load_path(goodreads_dir)


def test_goodreads_polars_fast_path_matches_python_path(goodreads_dir, monkeypatch):
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

    results = []
    for taken in ("polars", "python"):
        monkeypatch.setattr(goodreads, "json_lines_frame", only(taken))
        results.append(goodreads.load(goodreads_dir).interactions)
    assert results[0].equals(results[1])
    assert results[0].height == 4


def test_goodreads_nothing_read(tmp_path, write_file, to_jsonl):
    write_file(tmp_path / "goodreads_interactions_poetry.json", to_jsonl(GR_INTERACTIONS[1:2]))
    with pytest.raises(EmptyDatasetError, match=r"no line has is_read true or a rating > 0"):
        goodreads.load(tmp_path)


# ---------------------------------------------------------------- H&M

C1 = "000058a12d5b43e67d225668fa1f8d618c13dc232df0cad8ffe7ad4a1091e318"
C2 = "00007d2de826758b65a93dd24ce629ed66842531df6699338c5570910a014cc2"
HM_TRANSACTIONS = (
    "t_dat,customer_id,article_id,price,sales_channel_id\n"
    f"2018-09-20,{C1},0663713001,0.050830508474576264,2\n"
    f"2018-09-20,{C1},0541518023,0.03049152542372881,2\n"  # same day: file order
    f"2018-09-20,{C2},505221004,0.015237288135593221,2\n"  # the leading zero lost
    f"2018-09-19,{C2},0685687003,0.01693220338983051,1\n"
    f"2018-09-21,{C1},0663713001,0.050830508474576264,2\n"  # a repeat purchase
)
HM_ARTICLE_COLUMNS = (
    "article_id,product_code,prod_name,product_type_no,product_type_name,product_group_name,graphical_appearance_no,"
    "graphical_appearance_name,colour_group_code,colour_group_name,perceived_colour_value_id,perceived_colour_value_name,"
    "perceived_colour_master_id,perceived_colour_master_name,department_no,department_name,index_code,index_name,"
    "index_group_no,index_group_name,section_no,section_name,garment_group_no,garment_group_name,detail_desc"
).split(",")
LONG_DESC = "Fitted top in soft, stretch jersey with a round neckline, long sleeves and ribbing at the cuffs. " * 5


def article(article_id: str, name: str, ptype: str, colour: str, section: str, desc: str) -> str:
    values = dict.fromkeys(HM_ARTICLE_COLUMNS, "1")
    values.update(article_id=article_id, prod_name=name, product_type_name=ptype, colour_group_name=colour,
                  section_name=section, detail_desc=desc, department_name="Jersey Basic", index_name="Ladieswear")  # fmt: skip
    quote = lambda v: f'"{v}"' if any(c in v for c in ',"\n') else v  # noqa: E731
    return ",".join(quote(values[c]) for c in HM_ARTICLE_COLUMNS) + "\n"


HM_ARTICLES = (
    ",".join(HM_ARTICLE_COLUMNS) + "\n"
    + article("0663713001", "Atlanta Push Body Harlow", "Underwear body", "Black", "Womens Lingerie", "Lace push-up body.")
    + article("541518023", "Rae Push (Melbourne) 2p", "Bra", "Light Pink", "Womens Lingerie", "Push-up bras in lace,\nwith underwire.")
    + article("0505221004", "Inca jumper", "Sweater", "Dark Orange", "Divided Collection", "")
    + article("0685687003", "V-neck top", "Top", "White", "Womens Everyday Basics", LONG_DESC.strip())
    + article("0108775015", "Strap top", "Vest top", "Black", "Womens Everyday Basics", "Jersey top.")
)


@pytest.fixture
def hm_dir(tmp_path: Path, write_file) -> Path:
    d = tmp_path / "h-and-m"
    write_file(d / "transactions_train.csv", HM_TRANSACTIONS)
    write_file(d / "articles.csv", HM_ARTICLES)
    write_file(d / "customers.csv", f"customer_id,FN,Active,club_member_status,fashion_news_frequency,age,postal_code\n{C1},,,ACTIVE,NONE,49,x\n")
    return d


def test_hm_zero_padded_article_ids_file_order_and_catalog(hm_dir):
    raw = load_path(hm_dir)
    assert raw.name == "h-and-m"
    day = lambda d: datetime.fromisoformat(d).replace(tzinfo=timezone.utc).timestamp()  # noqa: E731
    assert raw.interactions.rows() == [
        (C1, "0663713001", day("2018-09-20")), (C1, "0541518023", day("2018-09-20")),
        (C2, "0505221004", day("2018-09-20")), (C2, "0685687003", day("2018-09-19")),
        (C1, "0663713001", day("2018-09-21")),
    ]  # fmt: skip
    assert raw.interactions["timestamp"][0] == 1537401600.0
    assert raw.text_fields == ["name", "product_type", "colour", "section", "description"]
    items = rows(raw)
    assert set(items) == {"0663713001", "0541518023", "0505221004", "0685687003", "0108775015"}
    assert items["0541518023"] == {
        "item_id": "0541518023", "name": "Rae Push (Melbourne) 2p", "product_type": "Bra", "colour": "Light Pink",
        "section": "Womens Lingerie", "description": "Push-up bras in lace, with underwire.",
    }  # fmt: skip
    assert items["0505221004"]["description"] is None
    desc = items["0685687003"]["description"]
    assert len(desc) <= 300 and desc.endswith("...") and LONG_DESC.startswith(desc[:-3])


def test_hm_sequences_text_and_titles_through_preprocess(hm_dir):
    ds = preprocess(load_path(hm_dir), NO_CORE)
    assert sequences(ds) == {
        C1: ["0663713001", "0541518023", "0663713001"],  # same day in file order; repeats kept
        C2: ["0685687003", "0505221004"],
    }
    i = ds.item_ids.index("0541518023")
    assert ds.item_titles[i] == "Rae Push (Melbourne) 2p"
    assert ds.item_text[i] == (
        "name: Rae Push (Melbourne) 2p; product_type: Bra; colour: Light Pink; section: Womens Lingerie; "
        "description: Push-up bras in lace, with underwire."
    )


@pytest.mark.parametrize(
    "line, expected",
    [
        (f"20/09/2018,{C1},0663713001,0.05,2", r"transactions_train\.csv:4: expected a 't_dat' date YYYY-MM-DD"),
        (f"2018-09-20,{C1},A663713001,0.05,2", r"transactions_train\.csv:4: expected an 'article_id' of 1 to 10 digits"),
        ("2018-09-20,,0663713001,0.05,2", r"transactions_train\.csv:4: expected a non-empty 'customer_id'"),
        (f"2018-09-20,{C1},0663713001,0.05,2,7", r"transactions_train\.csv:4: expected 5 comma-separated fields"),
    ],
)
def test_hm_malformed_transaction_line(hm_dir, write_file, line, expected):
    head, first = HM_TRANSACTIONS.splitlines()[:2]
    write_file(hm_dir / "transactions_train.csv", f"{head}\n{first}\n\n{line}\n{first}\n")
    with pytest.raises(DataFormatError, match=expected):
        hm.load(hm_dir)


def test_hm_missing_column_and_bad_article_id(hm_dir, write_file):
    write_file(hm_dir / "transactions_train.csv", f"t_dat,customer,article_id\n2018-09-20,{C1},0663713001\n")
    with pytest.raises(DataFormatError, match=r"transactions_train\.csv:1: expected a column 'customer_id'"):
        hm.load(hm_dir)
    write_file(hm_dir / "transactions_train.csv", HM_TRANSACTIONS)
    write_file(hm_dir / "articles.csv", HM_ARTICLES + article("0x12", "Bad", "Top", "Red", "S", "d"))
    with pytest.raises(DataFormatError, match=r"articles\.csv:8: expected an 'article_id' of 1 to 10 digits"):
        hm.load(hm_dir)  # line 8: a quoted line break in line 3 makes the row span two lines


# ---------------------------------------------------------------- detection and load_dataset


def test_detection_picks_the_new_formats_only_where_they_fit(mind_dir, goodreads_dir, hm_dir, tmp_path, write_file):
    assert detect_format(mind_dir).name == "mind"
    assert detect_format(goodreads_dir).name == "goodreads"
    assert detect_format(hm_dir).name == "hm"
    assert not amazon.detect(goodreads_dir)  # Goodreads JSON lines are not Amazon reviews
    assert detect_format(hm_dir / "transactions_train.csv").name == "tabular"  # a single table stays generic
    assert not mind.detect(mind_dir / "behaviors.tsv") and not hm.detect(hm_dir / "articles.csv")
    write_file(tmp_path / "half-mind" / "behaviors.tsv", MIND_BEHAVIORS)
    assert not mind.detect(tmp_path / "half-mind")
    write_file(tmp_path / "csvs" / "goodreads_interactions.csv", "user_id,book_id,is_read,rating,is_reviewed\n0,948,1,5,0\n")
    assert not goodreads.detect(tmp_path / "csvs")  # the CSV release (remapped ids) is another format
    write_file(hm_dir / "interactions.csv", "user_id,item_id\nu,i\n")
    assert detect_format(hm_dir).name == "hm" and tabular.detect(hm_dir)  # specific before generic


@pytest.mark.parametrize("fixture, fmt", [("mind_dir", "mind"), ("goodreads_dir", "goodreads"), ("hm_dir", "hm")])
def test_load_dataset_end_to_end(request, cache_dir, fixture, fmt):
    folder = request.getfixturevalue(fixture)
    assert resolve(folder)[1] == fmt
    ds = load_dataset(folder, NO_CORE, use_cache=False)
    raw = load_path(folder)
    assert ds.name == folder.name
    assert ds.n_interactions == raw.interactions.height
    assert ds.n_users == raw.interactions["user_id"].n_unique()
    assert all(t and not t.startswith("item: ") for t in ds.item_text)  # every item found in the catalog
    assert not cache_dir.exists() or not any(cache_dir.rglob("meta.json"))
