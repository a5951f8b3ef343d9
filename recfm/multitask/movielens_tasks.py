"""Multi-task records built from real MovieLens data (:class:`MovieLensTasks`).

Tasks built by :class:`MovieLensTasks` (``GEN_TASKS`` and ``EMB_TASKS`` in :mod:`recfm.multitask.records`):

| task | kind | from | split by |
|---|---|---|---|
| seqrec | 20-way choice of the next movie | ML-1M sequences | user |
| sentiment | rating 1-5 as 5-way sentiment | ML-1M ratings | user |
| attribute | the movie's first listed genre, 18-way | ML-1M catalog | movie |
| profile | the movie's decade and genres, 4-way | ML-1M catalog | movie |
| relation | co-consumed / same genre / unrelated pair | ML-1M sequences | pair |
| matching | same movie in ML-100K and ML-1M (different text)? yes/no | both catalogs | movie |
| user2item | history -> next movie | ML-1M sequences | user |
| item2item | movie -> the movie watched next | ML-1M sequences | pair (and user) |
| query2item | genre + decade query -> a matching movie | ML-1M catalog | movie |
| user_profile | history -> free-text profile: the history's two commonest genres and decade | ML-1M sequences | user |
| item_profile | title -> free-text profile: release decade and genres | ML-1M catalog | movie |

The last two (``FREE_TEXT_TASKS``) have no options: the answer is generated and scored by token
F1. A user profile is a summary of the history shown in its own prompt (what the user watched
before the target position), never of later items.

Users are split into train / valid / test groups (80/10/10, seeded); a user's records land in
one group only, so no validation or test user's items reach training. Co-consumption (relation,
item2item) is read from each group's own users only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np

from recfm.multitask.records import (EMB_TASKS, FREE_TEXT_TASKS, GEN_TASKS, INSTRUCTIONS, RELATIONS, SENTIMENTS,
                                     SPLITS, EmbRecord, GenRecord, Record)


# ---------------------------------------------------------------------------------------------
# movie text
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Movie:
    key: str
    title: str
    year: str
    genres: tuple[str, ...]

    def text(self) -> str:
        return f"{self.title} ({self.year}), {', '.join(self.genres) or 'no genre'}"

    @property
    def decade(self) -> str:
        return f"{self.year[:3]}0s" if len(self.year) == 4 and self.year.isdigit() else "unknown decade"

    def profile(self) -> str:
        """The item profile the profile tasks ask for: release decade and genres."""
        return f"released in the {self.decade}; genres: {', '.join(self.genres)}"


def movies_from_raw(raw) -> dict[str, Movie]:
    """Movies of a MovieLens RawDataset catalog (fields movie_title, release_year, genre or class)."""
    genre_col = "genre" if "genre" in raw.items.columns else "class"
    out = {}
    for row in raw.items.iter_rows(named=True):
        genres = tuple(g for g in str(row.get(genre_col) or "").split() if g)
        out[str(row["item_id"])] = Movie(str(row["item_id"]), str(row.get("movie_title") or ""),
                                         str(row.get("release_year") or ""), genres)
    return out


# ---------------------------------------------------------------------------------------------
# builders
# ---------------------------------------------------------------------------------------------


@dataclass
class TaskConfig:
    history_len: int = 10
    n_options: int = 20
    per_user: int = 1  # records per user for the sequence tasks
    max_records: int | None = 2000  # per task and split (None = all)
    seed: int = 0


def _user_groups(users: list[str], seed: int) -> dict[str, str]:
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(users))
    n_valid = n_test = max(1, len(users) // 10)
    group = {}
    for rank, idx in enumerate(order):
        group[users[idx]] = "test" if rank < n_test else "valid" if rank < n_test + n_valid else "train"
    return group


def _instruction(task: str, rng: np.random.Generator) -> str:
    options = INSTRUCTIONS[task]
    return options[int(rng.integers(len(options)))]


def _commonest(values: list[str], n: int) -> list[str]:
    """The ``n`` most frequent values, ties broken by first appearance (so the answer is deterministic)."""
    counts: dict[str, int] = {}
    for v in values:
        counts[v] = counts.get(v, 0) + 1
    return sorted(counts, key=lambda v: -counts[v])[:n]


def _cap(records: list, limit: int | None, rng: np.random.Generator) -> list:
    if limit is None or len(records) <= limit:
        return records
    keep = np.sort(rng.choice(len(records), limit, replace=False))
    return [records[i] for i in keep]


class MovieLensTasks:
    """Builds every task of the module table from ML-1M (ratings, sequences, catalog) and ML-100K."""

    def __init__(self, raw_1m, raw_100k=None, config: TaskConfig | None = None):
        self.config = config or TaskConfig()
        self.movies = movies_from_raw(raw_1m)
        self.movies_100k = movies_from_raw(raw_100k) if raw_100k is not None else {}
        inter = raw_1m.interactions.with_row_index("_row").sort(["user_id", "timestamp", "_row"])
        self.sequences: dict[str, list[tuple[str, float]]] = {}
        for user, item, rating in zip(inter["user_id"], inter["item_id"], inter["rating"]):
            if item in self.movies:
                self.sequences.setdefault(user, []).append((item, rating))
        self.users = sorted(self.sequences)
        self.group = _user_groups(self.users, self.config.seed)
        self.keys = sorted(self.movies)
        movie_rng = np.random.default_rng(self.config.seed + 1)
        order = movie_rng.permutation(len(self.keys))
        n = max(1, len(self.keys) // 10)
        self.movie_group = {self.keys[i]: ("test" if r < n else "valid" if r < 2 * n else "train")
                            for r, i in enumerate(order)}
        self.genres = sorted({g for m in self.movies.values() for g in m.genres})

    def _rng(self, task: str, split: str) -> np.random.Generator:
        stream = (GEN_TASKS.index(task) if task in GEN_TASKS else 10 + EMB_TASKS.index(task) if task in EMB_TASKS
                  else 20 + FREE_TEXT_TASKS.index(task))
        return np.random.default_rng([self.config.seed, stream, SPLITS.index(split)])

    def _history_text(self, items: list[str]) -> str:
        return "\n".join(f"{i + 1}. {self.movies[k].text()}" for i, k in enumerate(items))

    def _user_cases(self, split: str, rng: np.random.Generator) -> Iterable[tuple[str, list[str], int]]:
        """(user, item keys, target position) for the users of ``split``: the last item(s) as targets."""
        h = self.config.history_len
        for user in self.users:
            if self.group[user] != split:
                continue
            seq = [k for k, _ in self.sequences[user]]
            for back in range(1, self.config.per_user + 1):
                pos = len(seq) - back
                if pos >= 1:
                    yield user, seq[max(0, pos - h) : pos + 1], min(pos, h)

    # -- generative ------------------------------------------------------------------------
    def seqrec(self, split: str) -> list[GenRecord]:
        rng, out = self._rng("seqrec", split), []
        for user, window, t in self._user_cases(split, rng):
            seen = {k for k, _ in self.sequences[user]}
            target = window[t]
            negatives: list[str] = []
            while len(negatives) < self.config.n_options - 1:
                k = self.keys[int(rng.integers(len(self.keys)))]
                if k not in seen and k not in negatives:
                    negatives.append(k)
            options = [self.movies[k].text() for k in [target, *negatives]]
            rng.shuffle(options)
            out.append(GenRecord("seqrec", _instruction("seqrec", rng), "History:\n" + self._history_text(window[:t]),
                                 self.movies[target].text(), options))
        return _cap(out, self.config.max_records, rng)

    def sentiment(self, split: str) -> list[GenRecord]:
        rng, out = self._rng("sentiment", split), []
        for user, window, t in self._user_cases(split, rng):
            rating = dict(self.sequences[user])[window[t]]
            label = SENTIMENTS[int(round(rating)) - 1]
            text = f"History:\n{self._history_text(window[:t])}\n\nTarget movie: {self.movies[window[t]].text()}"
            out.append(GenRecord("sentiment", _instruction("sentiment", rng), text, label, list(SENTIMENTS)))
        return _cap(out, self.config.max_records, rng)

    def attribute(self, split: str) -> list[GenRecord]:
        rng, out = self._rng("attribute", split), []
        for k in self.keys:
            m = self.movies[k]
            if self.movie_group[k] == split and m.genres:
                out.append(GenRecord("attribute", _instruction("attribute", rng), f"Movie: {m.title} ({m.year})",
                                     m.genres[0], list(self.genres)))
        return _cap(out, self.config.max_records, rng)

    def profile(self, split: str) -> list[GenRecord]:
        rng, out = self._rng("profile", split), []
        for k in self.keys:
            if self.movie_group[k] != split:
                continue
            m, options = self.movies[k], []
            truth = m.profile()
            options.append(truth)
            while len(options) < 4:
                other = self.movies[self.keys[int(rng.integers(len(self.keys)))]].profile()
                if other not in options:
                    options.append(other)
            rng.shuffle(options)
            out.append(GenRecord("profile", _instruction("profile", rng), f"Movie: {m.title}", truth, options))
        return _cap(out, self.config.max_records, rng)

    def user_profile(self, split: str) -> list[GenRecord]:
        rng, out = self._rng("user_profile", split), []
        for user, window, t in self._user_cases(split, rng):
            shown = [self.movies[k] for k in window[:t]]
            if not shown:
                continue
            genres = _commonest([g for m in shown for g in m.genres], 2)
            decade = _commonest([m.decade for m in shown], 1)
            answer = f"likes {' and '.join(genres) or 'no genre in particular'}; mostly movies from the {decade[0]}"
            out.append(GenRecord("user_profile", _instruction("user_profile", rng),
                                 "History:\n" + self._history_text(window[:t]), answer))
        return _cap(out, self.config.max_records, rng)

    def item_profile(self, split: str) -> list[GenRecord]:
        rng, out = self._rng("item_profile", split), []
        for k in self.keys:
            m = self.movies[k]
            if self.movie_group[k] == split and m.genres:
                out.append(GenRecord("item_profile", _instruction("item_profile", rng), f"Movie: {m.title}",
                                     m.profile()))
        return _cap(out, self.config.max_records, rng)

    def _co_consumed(self, split: str) -> list[tuple[str, str]]:
        """Consecutive pairs (a watched right before b) in the sequences of ``split``'s users."""
        pairs = []
        for user in self.users:
            if self.group[user] == split:
                seq = [k for k, _ in self.sequences[user]]
                pairs += list(zip(seq[:-1], seq[1:]))
        return pairs

    def _pair_set(self, split: str | None) -> set[tuple[str, str]]:
        """Unordered consecutive pairs of ``split``'s users (None: every user), cached."""
        key = split or "all"
        cache = self.__dict__.setdefault("_pair_sets", {})
        if key not in cache:
            splits = SPLITS if split is None else (split,)
            cache[key] = {tuple(sorted(p)) for s in splits for p in self._co_consumed(s)}
        return cache[key]

    def relation(self, split: str) -> list[GenRecord]:
        """Co-consumed pairs of ``split``'s users (valid/test: none seen in training), each with a
        same-genre and an unrelated partner for its first movie. "Never co-consumed" is checked
        against the training users' pairs for training records and against all users' pairs for
        evaluation records (so evaluation labels are right and training reads no held-out user)."""
        rng, out = self._rng("relation", split), []
        train_pairs = self._pair_set("train")
        known = train_pairs if split == "train" else self._pair_set(None)
        co = [p for p in self._co_consumed(split)
              if p[0] != p[1] and (split == "train" or tuple(sorted(p)) not in train_pairs)]
        limit = (self.config.max_records or 3 * len(co)) // 3
        by_genre: dict[str, list[str]] = {}
        for k in self.keys:
            if self.movies[k].genres:
                by_genre.setdefault(self.movies[k].genres[0], []).append(k)
        for i in rng.permutation(len(co))[:limit]:
            a, b = co[i]
            out.append(self._relation_record(a, b, RELATIONS[0], rng))
            same = by_genre.get(self.movies[a].genres[0], []) if self.movies[a].genres else []
            for _ in range(20):  # a same-genre partner never watched next to a
                c = same[int(rng.integers(len(same)))] if same else None
                if c and c != a and tuple(sorted((a, c))) not in known:
                    out.append(self._relation_record(a, c, RELATIONS[1], rng))
                    break
            for _ in range(20):  # unrelated: no shared genre, never watched next to a
                c = self.keys[int(rng.integers(len(self.keys)))]
                if not set(self.movies[c].genres) & set(self.movies[a].genres) and tuple(sorted((a, c))) not in known:
                    out.append(self._relation_record(a, c, RELATIONS[2], rng))
                    break
        return out

    def _relation_record(self, a: str, b: str, label: str, rng) -> GenRecord:
        if rng.random() < 0.5:
            a, b = b, a
        text = f"Movie A: {self.movies[a].text()}\nMovie B: {self.movies[b].text()}"
        return GenRecord("relation", _instruction("relation", rng), text, label, list(RELATIONS))

    def matching(self, split: str) -> list[GenRecord]:
        """ML-100K entry vs ML-1M entry, written differently: the same movie (title + year) or not."""
        rng, out = self._rng("matching", split), []
        if not self.movies_100k:
            return out
        by_title = {(m.title.lower(), m.year): k for k, m in self.movies.items()}
        for m100 in self.movies_100k.values():
            k = by_title.get((m100.title.lower(), m100.year))
            if k is None or self.movie_group[k] != split:
                continue
            left = f"'{m100.title}', a {m100.year} film ({' / '.join(m100.genres)})"
            if rng.random() < 0.5:
                right, label = self.movies[k], "yes"
            else:  # a hard negative: same first genre or same year, another title
                pool = [o for o in self.keys if o != k and self.movies[o].title != m100.title and
                        (self.movies[o].year == m100.year or self.movies[o].genres[:1] == m100.genres[:1])]
                if not pool:
                    continue
                right, label = self.movies[pool[int(rng.integers(len(pool)))]], "no"
            text = f"Record 1: {left}\nRecord 2: movie_title: {right.title}; release_year: {right.year}; genre: {' '.join(right.genres)}"
            out.append(GenRecord("matching", _instruction("matching", rng), text, label, ["yes", "no"]))
        return _cap(out, self.config.max_records, rng)

    # -- embedding -------------------------------------------------------------------------
    def user2item(self, split: str) -> list[EmbRecord]:
        rng, out = self._rng("user2item", split), []
        for user, window, t in self._user_cases(split, rng):
            out.append(EmbRecord("user2item", INSTRUCTIONS["user2item"][0], self._history_text(window[:t]),
                                 self.movies[window[t]].text()))
        return _cap(out, self.config.max_records, rng)

    def item2item(self, split: str) -> list[EmbRecord]:
        rng = self._rng("item2item", split)
        train = self._pair_set("train") if split != "train" else set()
        pairs = [p for p in self._co_consumed(split) if p[0] != p[1] and tuple(sorted(p)) not in train]
        pairs = list(dict.fromkeys(pairs))
        out = [EmbRecord("item2item", INSTRUCTIONS["item2item"][0], self.movies[a].text(), self.movies[b].text())
               for a, b in pairs]
        return _cap(out, self.config.max_records, rng)

    def query2item(self, split: str) -> list[EmbRecord]:
        rng, out = self._rng("query2item", split), []
        for k in self.keys:
            m = self.movies[k]
            if self.movie_group[k] == split and m.genres:
                genre = m.genres[int(rng.integers(len(m.genres)))]
                out.append(EmbRecord("query2item", INSTRUCTIONS["query2item"][0],
                                     f"a {genre.lower()} movie from the {m.decade}", m.text()))
        return _cap(out, self.config.max_records, rng)

    def build(self, tasks: Iterable[str] = GEN_TASKS + EMB_TASKS) -> dict[str, dict[str, list[Record]]]:
        """{task: {split: records}}."""
        return {t: {s: getattr(self, t)(s) for s in SPLITS} for t in tasks}
