"""What the server (and `recfm recommend`) does with a trained run, without any HTTP.

    service = RecommendationService.from_run("runs/ml1m-sasrec")
    hist = service.resolve(item_ids=["1193", "661"])
    hist, how = service.resolve_history(titles=["Toy Story"])  # how: each title's match and score
    [answer] = service.recommend([hist], ks=[10], exclude_history=[True])

Every model is reached through the one Recommender seam (``recommend``), so SASRec, GRU4Rec,
Pop and the textual-ID recommender are served by the same code. Errors a client can fix are
:class:`RequestError` with an HTTP status; the app turns them into 4xx answers.
"""

from __future__ import annotations

import difflib
import heapq
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from recfm.errors import RecfmError
from recfm.runs import RunError, load_served


class RequestError(RecfmError, ValueError):
    """A request the client can fix; ``status`` is the HTTP status the server answers with and
    ``details`` (optional) extra fields of the JSON error body (e.g. the candidates of a title)."""

    def __init__(self, message: str, status: int = 422, details: dict | None = None):
        super().__init__(message)
        self.status = status
        self.details = details or {}


def normalize_title(title: str) -> str:
    """Case-, accent-, punctuation- and whitespace-insensitive form used to match free text to titles."""
    text = unicodedata.normalize("NFKD", title).encode("ascii", "ignore").decode().lower()
    return " ".join(re.sub(r"[^a-z0-9]+", " ", text).split())


_YEAR = re.compile(r"\s*\(\s*\d{4}(?:\s*[-/]\s*\d{2,4})?\s*\)\s*$")  # "Toy Story (1995)"
_ARTICLES = "the|a|an|les|la|le|l'|il|das|der|die|el|los|las|den|det"
_TRAILING_ARTICLE = re.compile(rf"^(.*\S)\s*,\s*({_ARTICLES})$", re.IGNORECASE)  # "Matrix, The"
_LEADING_ARTICLE = re.compile(rf"^(?:{_ARTICLES})\s+(?=\S)", re.IGNORECASE)  # "The Matrix"


def title_forms(text: str) -> list[str]:
    """The normalized forms of a title that count as the same title: the whole text first, then
    without a trailing ``(year)``, with a trailing article moved to the front (MovieLens writes
    "Matrix, The (1999)") and without its article ("Matrix")."""
    base = _YEAR.sub("", text).strip()
    trailing = _TRAILING_ARTICLE.match(base)
    if trailing:
        core, article = trailing.group(1), trailing.group(2)
        front = article + ("" if article.endswith("'") else " ") + core
    else:
        core, front = _LEADING_ARTICLE.sub("", base), base
    forms: list[str] = []
    for t in (text, base, front, core):
        n = normalize_title(t)
        if n and n not in forms:
            forms.append(n)
    return forms


@dataclass
class TitleMatch:
    """How a free-text title matched the catalog. ``item`` is the best item (1-based, None when no
    title is similar at all), ``score`` its similarity in [0, 1] (1.0: the same title up to case,
    accents, punctuation, a trailing year and the article), ``exact`` whether the normalized text
    is the catalog title itself, ``confident`` whether it may be taken without the client's
    consent (one item at 1.0, or one above ``TitleIndex.high`` and clearly ahead of the next), and
    ``candidates`` the closest items ``(item, score)``, best first."""

    item: int | None
    score: float
    exact: bool
    confident: bool
    ambiguous: bool
    candidates: list[tuple[int, float]]


class TitleIndex:
    """Free-text titles to catalog items, with a score a client can judge.

    Equal forms (:func:`title_forms`) score 1.0: the whole normalized title (``exact``), or the
    title without its year or article. Otherwise the score is difflib's similarity ratio of the
    closest forms; a text whose words are part of a longer title ("star wars" in "Star Wars:
    Episode IV - A New Hope") scores at least 0.8, up to 0.89 by how much of the title it covers,
    so the title ranks among the candidates but is never taken without the client's consent.

    A match is ``confident`` when one item scores 1.0, or when the best item scores at least
    ``high`` (a typo) and every other item at least ``margin`` less. Several items at 1.0 (five
    films called "Hamlet") are ``ambiguous``. Ties are broken by catalog order, so an answer never
    depends on dict ordering."""

    def __init__(self, titles: Sequence[str], high: float = 0.9, margin: float = 0.05, n_candidates: int = 5,
                 suggest: float = 0.4):
        self.high, self.margin, self.n_candidates, self.suggest = high, margin, n_candidates, suggest
        self.exact: dict[str, list[int]] = {}
        self.alias: dict[str, list[int]] = {}
        self.items: list[tuple[int, list[str]]] = []  # (item, its forms), catalog order
        for i, title in enumerate(titles, 1):
            forms = title_forms(title or "")
            if forms:
                self.exact.setdefault(forms[0], []).append(i)
                self.items.append((i, forms))
            for f in forms:
                self.alias.setdefault(f, []).append(i)

    def match(self, text: str) -> TitleMatch:
        forms = title_forms(text)
        if not forms:
            return TitleMatch(None, 0.0, False, False, False, [])
        same = self.exact.get(forms[0]) or []
        exact = bool(same)
        if not same:
            same = sorted({i for f in forms for i in self.alias.get(f, [])})
        if same:
            cands = [(i, 1.0) for i in same[: max(self.n_candidates, 1)]]
            return TitleMatch(same[0], 1.0, exact, len(same) == 1, len(same) > 1, cands)
        scores = self._similar(forms)
        ranked = sorted(scores.items(), key=lambda x: (-x[1], x[0]))[: self.n_candidates]
        if not ranked:
            return TitleMatch(None, 0.0, False, False, False, [])
        best, score = ranked[0]
        runner_up = ranked[1][1] if len(ranked) > 1 else 0.0
        confident = score >= self.high and score - runner_up >= self.margin
        return TitleMatch(best, score, False, confident, False, ranked)

    def _similar(self, queries: list[str]) -> dict[int, float]:
        """The ``n_candidates`` most similar items -> their score (3 decimals), each at least ``suggest``.
        Items whose bound (difflib's quick ratios) cannot reach the current top are skipped."""
        top: list[tuple[float, int]] = []  # min-heap of (score, -item): the best n so far
        # one matcher per query: difflib caches what it learns of the second sequence
        matchers = [(query, f" {query} ", difflib.SequenceMatcher(None, "", query, autojunk=False)) for query in queries]
        for item, forms in self.items:
            best = 0.0
            for query, pad, matcher in matchers:
                for form in forms:
                    score = 0.0
                    if len(form) > len(query) and pad in f" {form} ":  # whole words of a longer title
                        score = 0.8 + 0.09 * len(query) / len(form)
                    floor = max(self.suggest, score, best, top[0][0] if len(top) >= self.n_candidates else 0.0)
                    matcher.set_seq1(form)
                    if matcher.real_quick_ratio() >= floor and matcher.quick_ratio() >= floor:
                        score = max(score, matcher.ratio())
                    best = max(best, score)
            if best >= self.suggest and (len(top) < self.n_candidates or (best, -item) > top[0]):
                (heapq.heappush if len(top) < self.n_candidates else heapq.heapreplace)(top, (best, -item))
        return {-neg: round(score, 3) for score, neg in top}


@dataclass
class Limits:
    max_history: int = 200
    max_k: int = 100
    max_title_chars: int = 300  # fuzzy matching costs grow with the text: a title is not an essay
    max_text_chars: int = 4000  # a query, item text or task input (multitask runs): a prompt, not a book


class RecommendationService:
    """A loaded run: the catalog, the model behind the Recommender seam, request checks.

    ``max_k`` is the most items a request may ask for: ``limits.max_k``, and for a beam-search
    model at most its beam, since every k up to the beam is answered by the same search (so the
    top k of a larger request starts with the answer to a smaller one)."""

    fuzzy_floor = 0.6  # with fuzzy matching allowed, the closest title is taken when it scores at least this

    def __init__(self, model, data, *, model_name: str, run_dir: str = "", limits: Limits | None = None):
        self.model = model
        self.data = data
        self.model_name = model_name
        self.run_dir = run_dir
        self.limits = limits or Limits()
        self.index = data.item_index()
        self.titles = TitleIndex(data.item_titles)
        self.textual_ids = model.textual_ids()
        self.search_beam = model.search_beam
        self.max_k = min(self.limits.max_k, self.search_beam or self.limits.max_k)
        self.default_k = min(10, self.max_k)

    @classmethod
    def from_run(cls, run_dir: str | Path, limits: Limits | None = None,
                 allow_data_change: bool = False) -> "RecommendationService":
        name, data, model = load_served(Path(run_dir), allow_data_change=allow_data_change)
        return cls(model, data, model_name=name, run_dir=str(run_dir), limits=limits)

    @property
    def can_embed(self) -> bool:
        return self.model.embeds_histories

    @property
    def can_answer(self) -> bool:
        return self.model.answers

    def tasks(self) -> dict[str, list[str]]:
        """The run's task names by kind (multitask runs; empty otherwise)."""
        return {"embedding": list(self.model.embedding_tasks) if self.model.embeds_text else [],
                "generative": list(self.model.generative_tasks) if self.model.answers else []}

    def info(self) -> dict:
        return {"run": self.run_dir, "model": self.model_name, "dataset": self.data.name, "n_items": self.data.n_items,
                "textual_ids": self.textual_ids is not None, "embeddings": self.can_embed,
                "answers": self.can_answer, "tasks": self.tasks(),
                "max_history": self.limits.max_history, "max_k": self.max_k, "search_beam": self.search_beam}

    # -- requests -------------------------------------------------------------------------
    def resolve(self, item_ids: Sequence[str] | None = None, titles: Sequence[str] | None = None,
                fuzzy: bool = False) -> list[int]:
        """A history given as the dataset's item ids or as free-text titles -> 1-based item indices."""
        return self.resolve_history(item_ids, titles, fuzzy)[0]

    def resolve_history(self, item_ids: Sequence[str] | None = None, titles: Sequence[str] | None = None,
                        fuzzy: bool = False, cli: bool = False) -> tuple[list[int], list[dict] | None]:
        """(1-based item indices, for titles how each was matched: ``given``, ``item_id``, ``title``,
        ``score``, ``exact``; None for item ids). A title without a confident match (see
        :class:`TitleIndex`) is refused (422, its candidates in ``details["unmatched"]``) unless
        ``fuzzy``, which takes the closest title (score ``fuzzy_floor`` or more) and says so. ``cli``:
        the refusal's hints name the options of ``recfm recommend`` instead of the JSON fields."""
        if (item_ids is None) == (titles is None):
            raise RequestError("give the history as exactly one of 'history' (item ids) or 'titles' (free text)")
        given = list(item_ids if item_ids is not None else titles)
        if not given:
            raise RequestError("the history is empty: give at least one item")
        if len(given) > self.limits.max_history:
            raise RequestError(f"the history has {len(given)} items; at most {self.limits.max_history} are accepted",
                               status=413)
        if item_ids is not None:
            unknown = [str(h) for h in given if h not in self.index]
            if unknown:
                raise RequestError(f"{len(unknown)} item ids are not in {self.data.name}: {unknown[:5]} "
                                   f"(item ids are the dataset's own, e.g. {', '.join(self.data.item_ids[:3])})")
            return [self.index[h] for h in given], None
        long = [i for i, t in enumerate(given) if len(t) > self.limits.max_title_chars]
        if long:
            raise RequestError(f"{len(long)} titles are longer than {self.limits.max_title_chars} characters "
                               f"(the first at position {long[0]})")
        items, resolved, unmatched = [], [], []
        for text in given:
            m = self.titles.match(text)
            if m.item is not None and (m.confident or (fuzzy and m.score >= self.fuzzy_floor)):
                items.append(m.item)
                resolved.append({"given": text, "item_id": self.data.item_ids[m.item - 1],
                                 "title": self.data.item_titles[m.item - 1], "score": m.score, "exact": m.exact})
            else:
                unmatched.append({"given": text, "ambiguous": m.ambiguous,
                                  "candidates": [{"item_id": self.data.item_ids[i - 1],
                                                  "title": self.data.item_titles[i - 1], "score": s}
                                                 for i, s in m.candidates]})
        if unmatched:
            raise RequestError(self._unmatched_message(unmatched, fuzzy, cli), details={"unmatched": unmatched})
        return items, resolved

    def _unmatched_message(self, unmatched: list[dict], fuzzy: bool, cli: bool = False) -> str:
        parts = []
        for u in unmatched[:5]:
            close = ", ".join(f"{c['title']!r} (item {c['item_id']}, score {c['score']:.3f})" for c in u["candidates"])
            what = "names several items" if u["ambiguous"] else "has no close title" if not close else "is not an exact match"
            parts.append(f"{u['given']!r} {what}" + (f": {close}" if close else ""))
        ids, closest = ("--history ITEM,ITEM", "--fuzzy") if cli else ("'history' (item ids)", '"fuzzy": true')
        hint = (f"give the items as {ids} instead" if fuzzy or any(u["ambiguous"] for u in unmatched)
                else f"give a catalog title, the items as {ids}, or {closest} to take the closest title")
        n = len(unmatched)
        return (f"{n} title{'s' if n != 1 else ''} match{'' if n != 1 else 'es'} no item of {self.data.name} "
                f"with confidence: {'; '.join(parts)}"
                f"{'; ...' if len(unmatched) > 5 else ''} ({hint})")

    def k_message(self, k) -> str:
        why = (f" (this {self.model_name} run searches a beam of {self.search_beam}: every k up to it is answered "
               "by the same search)") if self.search_beam is not None and self.max_k == self.search_beam else ""
        return f"k must be between 1 and {self.max_k}{why}, got {k}"

    def check_k(self, k: int) -> int:
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= self.max_k:
            raise RequestError(self.k_message(k))
        return min(k, self.data.n_items)

    def describe(self, item: int) -> dict:
        return {"item_id": self.data.item_ids[item - 1],
                "textual_id": self.textual_ids[item] if self.textual_ids else None,
                "title": self.data.item_titles[item - 1]}

    # -- model calls (batched) --------------------------------------------------------------
    def recommend(self, histories: Sequence[Sequence[int]], ks: Sequence[int],
                  exclude_history: Sequence[bool]) -> list[list[dict]]:
        """One answer per history, its top ``ks[b]``. The whole batch is one ``recommend`` call for
        the service's largest list (``max_k``, at most the catalog), and each answer is the head of
        its list: so an answer never depends on k or on the requests batched with it (a
        beam-search model searches its fixed beam for every k up to ``max_k``)."""
        depth = min(self.max_k, self.data.n_items)
        exclude = [set(h) if ex else set() for h, ex in zip(histories, exclude_history)]
        top = self.model.recommend([list(h) for h in histories], depth, exclude=exclude)
        answers = []
        for b, k in enumerate(ks):
            row = [(int(i), float(s)) for i, s in zip(top.items[b], top.scores[b]) if i > 0][:k]
            answers.append([{"rank": j + 1, **self.describe(i), "score": round(s, 5)} for j, (i, s) in enumerate(row)])
        return answers

    def embed(self, histories: Sequence[Sequence[int]]) -> np.ndarray:
        if not self.can_embed:
            raise RequestError(f"the {self.model_name} model of this run has no embeddings (generative models "
                               "answer /recommend only)", status=501)
        return np.asarray(self.model.embed(histories), dtype=np.float32)

    def check_embed(self, task: str | None, text: str | None) -> None:
        """Refuse what this run cannot embed: any embedding for a model without them (501), a task or
        a text for a model that embeds histories only (422), an unknown task or a text too long (422)."""
        if not self.can_embed:
            self.embed([])
        if task is None and text is None:
            return
        if not self.model.embeds_text:
            raise RequestError(f"the {self.model_name} model of this run embeds histories only: 'task', 'query' and "
                               "'item' are for multitask runs")
        if task is not None and task not in self.model.embedding_tasks:
            raise RequestError(f"unknown embedding task {task!r}; this run's: {', '.join(self.model.embedding_tasks)}")
        self._check_text("the text", text)

    def _check_text(self, what: str, text: str | None) -> None:
        if text is not None and not text.strip():
            raise RequestError(f"{what} is empty")
        if text is not None and len(text) > self.limits.max_text_chars:
            raise RequestError(f"{what} has {len(text)} characters; at most {self.limits.max_text_chars} are accepted",
                               status=413)

    def embed_batch(self, requests: Sequence[tuple[str, object, str | None]]) -> list[np.ndarray]:
        """Vectors for checked requests ``(kind, value, task)``: kind ``history`` (item indices),
        ``query`` or ``item`` (text); those of one kind and task share a model call."""
        out: list[np.ndarray | None] = [None] * len(requests)
        groups: dict[tuple[str, str | None], list[int]] = {}
        for i, (kind, _, task) in enumerate(requests):
            groups.setdefault((kind, task), []).append(i)
        for (kind, task), rows in groups.items():
            values = [requests[i][1] for i in rows]
            if kind == "history" and task is None:
                vectors = self.embed(values)
            elif kind == "history":
                vectors = self.model.embed(values, task)
            else:
                vectors = self.model.embed_texts(values, task, role=kind)
            for i, v in zip(rows, np.asarray(vectors, dtype=np.float32)):
                out[i] = v
        return out

    def check_answer(self, task: str, input: str, instruction: str | None, options: list[str] | None) -> dict:
        """A checked generative request (multitask runs): a known generative task, a non-empty input,
        at most as many distinct, non-empty options as there are option letters."""
        if not self.can_answer:
            raise RequestError(f"the {self.model_name} model of this run answers no generative tasks (multitask "
                               "runs do)", status=501)
        if task not in self.model.generative_tasks:
            raise RequestError(f"unknown generative task {task!r}; this run's: {', '.join(self.model.generative_tasks)}")
        self._check_text("the input", input)
        if instruction is not None:
            self._check_text("the instruction", instruction)
        if options is not None:
            if not 2 <= len(options) <= 26:
                raise RequestError(f"give between 2 and 26 options (they are lettered A-Z), got {len(options)}")
            for o in options:
                self._check_text("an option", o)
            if len(set(options)) != len(options):
                raise RequestError("the options must be distinct")
        return {"task": task, "input": input, "instruction": instruction, "options": options}

    def answer(self, requests: Sequence[dict]) -> list[dict]:
        return self.model.answer(requests)


def recommend_items(run_dir: Path, history: list[str] | None = None, k: int = 10, *, user: str | None = None,
                    titles: list[str] | None = None, fuzzy: bool = False,
                    exclude_history: bool = False, allow_data_change: bool = False) -> dict:
    """Top-k items of a trained run for a history of the dataset's item ids, of free-text ``titles``
    (each matched to the catalog as by ``recfm serve``: without an exact or high-confidence match
    it is refused with its candidates unless ``fuzzy``; ``resolved`` shows each match and score),
    or for a dataset user (their test-time history: every item but the held-out last one, shown as
    ``held_out``). ``exclude_history`` defaults to False here (as the evaluation protocol), while
    the server's defaults to true. k is at most the run's search beam for a textid run."""
    service = RecommendationService.from_run(run_dir, allow_data_change=allow_data_change)
    data = service.data
    held_out = resolved = None
    try:
        if user is not None:
            if user not in data.user_ids:
                raise RunError(f"user {user!r} is not in {data.name} (e.g. {', '.join(data.user_ids[:3])})")
            seq = data.sequence(data.user_ids.index(user)).tolist()
            hist, held_out = seq[:-1], seq[-1]
            if not hist:
                raise RunError(f"user {user!r} has a single item: no history to recommend from")
        elif titles is not None:
            hist, resolved = service.resolve_history(titles=titles, fuzzy=fuzzy, cli=True)
        else:
            hist = service.resolve(item_ids=history or [])
        [recs] = service.recommend([hist], [service.check_k(k)], [exclude_history])
    except RequestError as e:
        raise RunError(str(e)) from None
    return {"run": str(run_dir), "model": service.model_name, "dataset": data.name,
            "history": [service.describe(i) for i in hist], "resolved": resolved,
            "held_out": service.describe(held_out) if held_out else None, "recommendations": recs}
