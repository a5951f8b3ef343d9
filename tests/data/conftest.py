"""Fixture folders in the exact layout of each real source format, written into tmp_path.

Each happy-path fixture has a few users and items, equal timestamps listed in an order
that differs from item-id order (file order must survive), and an unknown column or key.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest


def write(path: Path, content: str | bytes, gz: bool = False, encoding: str = "utf-8") -> Path:
    """Write text (or bytes) to ``path``; ``gz`` appends ``.gz`` and compresses."""
    data = content if isinstance(content, bytes) else content.encode(encoding)
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)
    return path


@pytest.fixture
def write_file():
    """The :func:`write` helper, for tests that build their own (malformed) variants."""
    return write


def jsonl(records: list[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


@pytest.fixture
def to_jsonl():
    return jsonl


def pylit(records: list[dict]) -> str:
    """Python-literal lines, as in the Amazon 2014 metadata files."""
    return "".join(repr(r) + "\n" for r in records)


# ---------------------------------------------------------------- GroupLens

ML1M_RATINGS = (
    "1::1193::5::978300760\n"
    "1::661::3::978302109\n"
    "1::914::3::978301968\n"
    "2::3408::4::978300275\n"
    "2::1193::5::978300275\n"  # same second as the line above: file order is the tie-breaker
    "2::661::4::978298709\n"
)
ML1M_MOVIES = (
    b"661::James and the Giant Peach (1996)::Animation|Children's|Musical\n"
    b"914::My Fair Lady (1964)::Musical|Romance\n"
    b"1193::One Flew Over the Cuckoo's Nest (1975)::Drama\n"
    b"3408::Erin Brockovich (2000)::Drama\n"
    b"3409::Caf\xe9 au lait (M\xe9tisse) (1993)::Comedy\n"  # latin-1, as in the real file
)
ML1M_USERS = "1::F::1::10::48067\n2::M::56::16::70072\n"


@pytest.fixture
def ml1m_dir(tmp_path: Path) -> Path:
    d = tmp_path / "ml-1m"
    write(d / "ratings.dat", ML1M_RATINGS)
    write(d / "movies.dat", ML1M_MOVIES)
    write(d / "users.dat", ML1M_USERS)
    write(d / "README", "MovieLens 1M\n")
    return d


ML100K_DATA = "196\t242\t3\t881250949\n186\t302\t3\t891717742\n196\t51\t2\t881250949\n22\t377\t1\t878887116\n"
_FLAGS = "|".join(["0"] * 19)


def u_item_line(item: str, title: str, date: str, genres: list[int]) -> str:
    flags = ["1" if i in genres else "0" for i in range(19)]
    return f"{item}|{title}|{date}||http://us.imdb.com/M/title-exact?x|" + "|".join(flags) + "\n"


ML100K_ITEM = (
    u_item_line("51", "Legends of the Fall (1994)", "01-Jan-1994", [8, 14, 17, 18])
    + u_item_line("242", "Kolya (1996)", "24-Jan-1997", [5])
    + u_item_line("267", "unknown", "", [0])
    + u_item_line("302", "L.A. Confidential", "01-Jan-1997", [6, 10, 13, 16])
).encode("latin-1") + b"377|Heavyweights (1994)|01-Jan-1994||http://x|" + _FLAGS.encode() + b"\n"


@pytest.fixture
def ml100k_dir(tmp_path: Path) -> Path:
    d = tmp_path / "ml-100k"
    write(d / "u.data", ML100K_DATA)
    write(d / "u.item", ML100K_ITEM)
    write(d / "u.user", "1|24|M|technician|85711\n")
    return d


ML_CSV_RATINGS = "userId,movieId,rating,timestamp\n1,296,5.0,1147880044\n1,306,3.5,1147868817\n2,1,4.0,1147868817\n2,296,4.5,1147868817\n"
ML_CSV_MOVIES = (
    "movieId,title,genres\n"
    "1,Toy Story (1995),Adventure|Animation|Children|Comedy|Fantasy\n"
    '296,"Pulp Fiction, The (1994)",Comedy|Crime|Drama|Thriller\n'
    "306,Three Colors: Red (Trois couleurs: Rouge) (1994),(no genres listed)\n"
)


@pytest.fixture
def mlcsv_dir(tmp_path: Path) -> Path:
    d = tmp_path / "ml-25m"
    write(d / "ratings.csv", ML_CSV_RATINGS)
    write(d / "movies.csv", ML_CSV_MOVIES)
    write(d / "tags.csv", "userId,movieId,tag,timestamp\n1,296,classic,1147880044\n")
    return d


# ---------------------------------------------------------------- Amazon

AMAZON14_REVIEWS = [
    {"reviewerID": "A1YJEY40YUW4SE", "asin": "7806397051", "reviewerName": "Andrea", "helpful": [3, 4],
     "reviewText": "Very oily and creamy.", "overall": 1.0, "summary": "Don't waste your money",
     "unixReviewTime": 1391040000, "reviewTime": "01 30, 2014"},
    {"reviewerID": "A60XNB876KYML", "asin": "B00004TMFE", "reviewerName": "Jessica H.", "helpful": [1, 1],
     "reviewText": "Works.", "overall": 3.0, "summary": "ok", "unixReviewTime": 1397779200, "reviewTime": "04 18, 2014"},
    {"reviewerID": "A60XNB876KYML", "asin": "7806397051", "helpful": [0, 0], "reviewText": "Again.",
     "overall": 4.0, "summary": "same day", "unixReviewTime": 1397779200, "reviewTime": "04 18, 2014"},
    {"reviewerID": "A1YJEY40YUW4SE", "asin": "B00004TMFE", "overall": 5.0, "unixReviewTime": 1391040000,
     "reviewTime": "01 30, 2014", "summary": "tie"},
]  # fmt: skip
AMAZON14_META = [
    {"asin": "7806397051", "title": "Salon Grafix Shaping Hair Spray &amp; Gel", "price": 3.99,
     "imUrl": "http://ecx.images-amazon.com/images/I/x.jpg",
     "related": {"also_bought": ["B00004TMFE"], "bought_together": []}, "salesRank": {"Beauty": 1000},
     "categories": [["Beauty", "Hair Care", "Styling Products"], ["Beauty", "Hair Care", "Styling Tools"]],
     "brand": "Salon Grafix"},
    {"asin": "B00004TMFE", "categories": [["Beauty", "Skin Care"]], "description": "Moisturizer.",
     "title": "Nature's Gate Lotion", "brand": ""},
    {"asin": "B0000NOREV", "title": "Never reviewed", "categories": [["Beauty"]]},
]  # fmt: skip


@pytest.fixture
def amazon14_dir(tmp_path: Path) -> Path:
    d = tmp_path / "amazon-beauty-2014"
    write(d / "reviews_Beauty_5.json", jsonl(AMAZON14_REVIEWS), gz=True)
    write(d / "meta_Beauty.json", pylit(AMAZON14_META), gz=True)
    return d


AMAZON18_REVIEWS = [
    {"overall": 5.0, "verified": True, "reviewTime": "09 1, 2016", "reviewerID": "A3CIUOJXQ5VDQ2", "asin": "B0000530HU",
     "style": {"Size:": " 7.0 oz", "Flavor:": " Classic Ice Blue"}, "reviewerName": "Shelly F", "reviewText": "Great",
     "summary": "Five Stars", "unixReviewTime": 1472688000},
    {"overall": 5.0, "verified": True, "reviewTime": "11 14, 2013", "reviewerID": "A3H7T87S984REU", "asin": "B0000530HU",
     "reviewerName": "houserules18", "vote": "2", "unixReviewTime": 1384387200},
    {"overall": 1.0, "verified": False, "reviewerID": "A3CIUOJXQ5VDQ2", "asin": "B00006L9LC", "unixReviewTime": 1472688000},
]  # fmt: skip
AMAZON18_META = [
    {"category": [], "tech1": "", "description": ["A cologne."], "fit": "", "title": "Old Spice Classic Cologne",
     "also_buy": [], "tech2": "", "brand": "Old Spice", "feature": [], "rank": "1,633 in Beauty", "also_view": [],
     "details": {}, "main_cat": "All Beauty", "similar_item": "", "date": "", "price": "$12.99", "asin": "B0000530HU",
     "imageURL": [], "imageURLHighRes": []},
    {"category": ["Beauty", "</span></span></span>", "Beauty"], "title": "Citre Shine Mousse", "brand": "Citre Shine",
     "price": ".a-box-inner{background-color:#fff}", "asin": "B00006L9LC"},
]  # fmt: skip


@pytest.fixture
def amazon18_dir(tmp_path: Path) -> Path:
    d = tmp_path / "amazon-all-beauty-2018"
    write(d / "All_Beauty.json", jsonl(AMAZON18_REVIEWS))
    write(d / "meta_All_Beauty.json", jsonl(AMAZON18_META))
    return d


AMAZON23_REVIEWS = [
    {"rating": 5.0, "title": "Such a lovely scent", "text": "...", "images": [], "asin": "B00YQ6X8EO",
     "parent_asin": "B00YQ6X8EO", "user_id": "AGKHLEW2SOWHNMFQIJGBECAF7INQ", "timestamp": 1588687728923,
     "helpful_vote": 0, "verified_purchase": True},
    {"rating": 4.0, "title": "Works", "text": "...", "images": [], "asin": "B081TJ8YS3", "parent_asin": "B081TJ8Z00",
     "user_id": "AGKHLEW2SOWHNMFQIJGBECAF7INQ", "timestamp": 1588615855070, "helpful_vote": 1, "verified_purchase": True},
    {"rating": 1.0, "asin": "B00YQ6X8EO", "parent_asin": "B00YQ6X8EO", "user_id": "AFQLNQNQYFWQZPJQZS6V3NZU4QBQ",
     "timestamp": 1588615855070, "verified_purchase": False},
    {"rating": 3.0, "asin": "B07NOASIN1", "user_id": "AFQLNQNQYFWQZPJQZS6V3NZU4QBQ", "timestamp": 1588615855070},
]  # fmt: skip
AMAZON23_META = [
    {"main_category": "All Beauty", "title": "Howard LC0008 Leather Conditioner, 8-Ounce", "average_rating": 4.8,
     "rating_number": 10, "features": ["Revitalizes leather.", "Made in USA"], "description": [], "price": None,
     "images": [{"hi_res": None, "large": "https://x.jpg"}], "videos": [], "store": "Howard Products",
     "categories": [], "details": {"Package Dimensions": "7.1 x 5.5 x 3 inches"}, "parent_asin": "B00YQ6X8EO",
     "bought_together": None},
    {"main_category": "All Beauty", "title": "Yes to Tomatoes Mask", "features": [], "price": 8.49, "store": "Yes To",
     "categories": ["Beauty & Personal Care", "Skin Care"], "details": {}, "parent_asin": "B081TJ8Z00"},
]  # fmt: skip


@pytest.fixture
def amazon23_dir(tmp_path: Path) -> Path:
    d = tmp_path / "amazon-2023-all-beauty"
    write(d / "All_Beauty.jsonl", jsonl(AMAZON23_REVIEWS), gz=True)
    write(d / "meta_All_Beauty.jsonl", jsonl(AMAZON23_META), gz=True)
    return d


# ---------------------------------------------------------------- Yelp

YELP_REVIEWS = [
    {"review_id": "KU_O5udG6zpxOg-VcAEodg", "user_id": "mh_-eMZ6K5RLWhZyISBhwA", "business_id": "XQfwVwDr-v0ZS3_CbbE5Xw",
     "stars": 3.0, "useful": 0, "funny": 0, "cool": 0, "text": "Decent.", "date": "2018-07-07 22:09:11"},
    {"review_id": "BiTunyQ73aT9WBnpR9DZGw", "user_id": "OyoGAe7OKpv6SyGZT5g77Q", "business_id": "7ATYjTIgM3jUlt4UM3IypQ",
     "stars": 5.0, "useful": 1, "funny": 0, "cool": 1, "text": "Great!", "date": "2012-01-03 15:28:18"},
    {"review_id": "r3", "user_id": "mh_-eMZ6K5RLWhZyISBhwA", "business_id": "7ATYjTIgM3jUlt4UM3IypQ",
     "stars": 4.0, "text": "Tie.", "date": "2018-07-07 22:09:11"},
]  # fmt: skip
YELP_BUSINESSES = [
    {"business_id": "XQfwVwDr-v0ZS3_CbbE5Xw", "name": "Turning Point of North Wales", "address": "1460 Bethlehem Pike",
     "city": "North Wales", "state": "PA", "postal_code": "19454", "latitude": 40.21, "longitude": -75.22,
     "stars": 3.0, "review_count": 169, "is_open": 1, "attributes": {"NoiseLevel": "u'average'"},
     "categories": "Restaurants, Breakfast & Brunch, Food, Juice Bars & Smoothies", "hours": {"Monday": "7:30-15:0"}},
    {"business_id": "7ATYjTIgM3jUlt4UM3IypQ", "name": "Arizona Biltmore Golf Club", "city": "Phoenix", "state": "AZ",
     "stars": 4.5, "categories": "Golf, Active Life", "attributes": None, "hours": None},
]  # fmt: skip


@pytest.fixture
def yelp_dir(tmp_path: Path) -> Path:
    d = tmp_path / "yelp"
    write(d / "yelp_academic_dataset_review.json", jsonl(YELP_REVIEWS))
    write(d / "yelp_academic_dataset_business.json", jsonl(YELP_BUSINESSES))
    write(d / "yelp_academic_dataset_user.json", jsonl([{"user_id": "mh_-eMZ6K5RLWhZyISBhwA", "name": "Ann"}]))
    return d


# ---------------------------------------------------------------- tabular

TAB_INTERACTIONS = (
    "user_id,item_id,timestamp,rating,session\n"
    "u1,007,2021-03-04T10:00:00Z,5,s1\n"
    "u1,003,2021-03-04 10:00:00,4,s1\n"  # same instant as the line above, ISO without zone = UTC
    "u2,003,2021-03-01,3,s2\n"
    "u1,010,2021-03-05,2,s3\n"
)
TAB_ITEMS = 'item_id,price,title,brand\n003,9.5,"Mug, large",Acme\n007,,Teapot,Acme\n010,1,Spoon,\n'


@pytest.fixture
def tabular_dir(tmp_path: Path) -> Path:
    d = tmp_path / "shop"
    write(d / "interactions.csv", TAB_INTERACTIONS)
    write(d / "items.csv", TAB_ITEMS)
    return d


# ---------------------------------------------------------------- RecBole atomic and P5

ATOMIC_INTER = (
    "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
    "196\t242\t3\t881250949\n186\t302\t3\t891717742\n196\t51\t2\t881250949\n196\t100\t5\t881250000\n"
)
ATOMIC_ITEM = (
    "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
    "242\tKolya\t1996\tComedy\n302\tL.A. Confidential\t1997\tCrime Film-Noir\n51\tLegends of the Fall\t1994\tDrama\n"
)


@pytest.fixture
def atomic_dir(tmp_path: Path) -> Path:
    d = tmp_path / "ml-100k-atomic"
    write(d / "ml-100k.inter", ATOMIC_INTER)
    write(d / "ml-100k.item", ATOMIC_ITEM)
    write(d / "ml-100k.user", "user_id:token\tage:token\n196\t49\n")
    return d


P5_SEQUENCES = "A1 B9 B2 B3\nA2 B2 B9\n"
P5_ITEMS = "B2 sedu ionic ceramic tourmaline flat\nB3 nail polish remover\nB9 lip balm\n"


@pytest.fixture
def p5_dir(tmp_path: Path) -> Path:
    d = tmp_path / "beauty-p5"
    write(d / "user_sequence.txt", P5_SEQUENCES)
    write(d / "item_initial_ids.txt", P5_ITEMS)
    return d
