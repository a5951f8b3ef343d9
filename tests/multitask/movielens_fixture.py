"""Small MovieLens-shaped raw datasets for the multi-task tests."""

from __future__ import annotations

import numpy as np

from recfm.data.schema import make_raw

GENRES = ["Action", "Comedy", "Drama", "Horror"]


def fake_movielens(n_users=60, n_items=80, seed=0):
    rng = np.random.default_rng(seed)
    titles = [f"Movie {i}" for i in range(n_items)]
    years = [str(1950 + (i * 7) % 50) for i in range(n_items)]
    genres = [" ".join(sorted({GENRES[i % 4], GENRES[(i // 4) % 4]})) for i in range(n_items)]
    keys = [f"{t} ({y})" for t, y in zip(titles, years)]
    inter = {"user_id": [], "item_id": [], "timestamp": [], "rating": []}
    for u in range(n_users):
        for t, i in enumerate(rng.choice(n_items, 12, replace=False)):
            inter["user_id"].append(f"u{u}")
            inter["item_id"].append(keys[i])
            inter["timestamp"].append(float(t))
            inter["rating"].append(float(rng.integers(1, 6)))
    ml1m = make_raw("ml-1m", inter, {"item_id": keys, "movie_title": titles, "release_year": years, "genre": genres})
    ml100k = make_raw("ml-100k", {"user_id": ["x"], "item_id": ["1"]},
                      {"item_id": [str(i) for i in range(20)], "movie_title": titles[:20], "release_year": years[:20],
                       "class": genres[:20]})
    return ml1m, ml100k
