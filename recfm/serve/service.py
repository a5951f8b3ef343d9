"""What the server (and `recfm recommend`) does with a trained run, without any HTTP.

    service = RecommendationService.from_run("runs/ml1m-sasrec")
    hist = service.resolve(item_ids=["1193", "661"])          # or titles=["Toy Story (1995)"]
    [answer] = service.recommend([hist], ks=[10], exclude_history=[True])

Every model is reached through the one Recommender seam (``recommend``), so SASRec, GRU4Rec,
Pop and the textual-ID recommender are served by the same code. Errors a client can fix are
:class:`RequestError` with an HTTP status; the app turns them into 4xx answers.
"""

from __future__ import annotations

import difflib
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np


class RequestError(ValueError):
    """A request the client can fix; ``status`` is the HTTP status the server answers with."""

    def __init__(self, message: str, status: int = 422):
        super().__init__(message)
        self.status = status


def normalize_title(title: str) -> str:
    """Case-, accent-, punctuation- and whitespace-insensitive form used to match free text to titles."""
    text = unicodedata.normalize("NFKD", title).encode("ascii", "ignore").decode().lower()
    return " ".join(re.sub(r"[^a-z0-9]+", " ", text).split())


class TitleIndex:
    """Free-text titles to catalog items: an exact match of the normalized title first, then the
    closest title (difflib ratio >= ``cutoff``). Ambiguous exact matches take the first item in
    catalog order, so an answer never depends on dict ordering."""

    def __init__(self, titles: Sequence[str], cutoff: float = 0.75):
        self.cutoff = cutoff
        self.normalized = [normalize_title(t or "") for t in titles]
        self.exact: dict[str, int] = {}
        for i, t in enumerate(self.normalized, 1):
            if t:
                self.exact.setdefault(t, i)

    def match(self, text: str) -> tuple[int | None, list[str]]:
        """(1-based item index or None, close titles to suggest when nothing matched)."""
        key = normalize_title(text)
        if not key:
            return None, []
        if key in self.exact:
            return self.exact[key], []
        close = difflib.get_close_matches(key, self.exact.keys(), n=3, cutoff=min(self.cutoff, 0.5))
        if close and difflib.SequenceMatcher(None, key, close[0]).ratio() >= self.cutoff:
            return self.exact[close[0]], []
        return None, close


@dataclass
class Limits:
    max_history: int = 200
    max_k: int = 100
    max_title_chars: int = 300  # fuzzy matching costs grow with the text: a title is not an essay


class RecommendationService:
    """A loaded run: the catalog, the model behind the Recommender seam, request checks."""

    def __init__(self, model, data, *, model_name: str, run_dir: str = "", limits: Limits | None = None):
        self.model = model
        self.data = data
        self.model_name = model_name
        self.run_dir = run_dir
        self.limits = limits or Limits()
        self.index = data.item_index()
        self.titles = TitleIndex(data.item_titles)
        self.textual_ids = model.textual_ids() if hasattr(model, "textual_ids") else None

    @classmethod
    def from_run(cls, run_dir: str | Path, limits: Limits | None = None) -> "RecommendationService":
        from recfm.runs import load_run

        run, data, model = load_run(Path(run_dir))
        return cls(model, data, model_name=run.model["name"], run_dir=str(run_dir), limits=limits)

    @property
    def can_embed(self) -> bool:
        return hasattr(self.model, "embed")

    def info(self) -> dict:
        return {"run": self.run_dir, "model": self.model_name, "dataset": self.data.name, "n_items": self.data.n_items,
                "textual_ids": self.textual_ids is not None, "embeddings": self.can_embed,
                "max_history": self.limits.max_history, "max_k": self.limits.max_k}

    # -- requests -------------------------------------------------------------------------
    def resolve(self, item_ids: Sequence[str] | None = None, titles: Sequence[str] | None = None) -> list[int]:
        """A history given as the dataset's item ids or as free-text titles -> 1-based item indices."""
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
            return [self.index[h] for h in given]
        long = [i for i, t in enumerate(given) if len(t) > self.limits.max_title_chars]
        if long:
            raise RequestError(f"{len(long)} titles are longer than {self.limits.max_title_chars} characters "
                               f"(the first at position {long[0]})")
        out, misses = [], []
        for text in given:
            item, close = self.titles.match(text)
            if item is None:
                misses.append(f"{text!r}" + (f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""))
            else:
                out.append(item)
        if misses:
            raise RequestError(f"{len(misses)} titles match no item of {self.data.name}: {'; '.join(misses[:5])}")
        return out

    def check_k(self, k: int) -> int:
        if not 1 <= k <= self.limits.max_k:
            raise RequestError(f"k must be between 1 and {self.limits.max_k}, got {k}")
        return min(k, self.data.n_items)

    def describe(self, item: int) -> dict:
        return {"item_id": self.data.item_ids[item - 1],
                "textual_id": self.textual_ids[item] if self.textual_ids else None,
                "title": self.data.item_titles[item - 1]}

    # -- model calls (batched) --------------------------------------------------------------
    def recommend(self, histories: Sequence[Sequence[int]], ks: Sequence[int],
                  exclude_history: Sequence[bool]) -> list[list[dict]]:
        """One answer per history. Histories asking for the same k go through one ``recommend``
        call, so a batched answer equals the answer to the same request sent alone (beam search
        widens its beam with k)."""
        answers: list[list[dict]] = [[] for _ in histories]
        for k in sorted(set(ks)):
            rows = [b for b, kb in enumerate(ks) if kb == k]
            exclude = [set(histories[b]) if exclude_history[b] else set() for b in rows]
            top = self.model.recommend([histories[b] for b in rows], k, exclude=exclude)
            for r, b in enumerate(rows):
                answers[b] = [{"rank": j + 1, **self.describe(int(i)), "score": round(float(s), 5)}
                              for j, (i, s) in enumerate(zip(top.items[r], top.scores[r])) if i > 0]
        return answers

    def embed(self, histories: Sequence[Sequence[int]]) -> np.ndarray:
        if not self.can_embed:
            raise RequestError(f"the {self.model_name} model of this run has no embeddings (generative models "
                               "answer /recommend only)", status=501)
        return np.asarray(self.model.embed(histories), dtype=np.float32)
