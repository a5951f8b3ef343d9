"""User textual IDs: the ID generator's ID for the titles of a history, cached per history."""

from __future__ import annotations

from typing import Sequence

from recfm.textid.generator import IDGenerator
from recfm.textid.ids import normalize_id
from recfm.textid.recommender import id_prefix


class UserIds:
    """User textual IDs made by the generator from the titles of the history it is given (the
    model input), cached per history; ``clear()`` after the generator changes."""

    def __init__(self, generator: IDGenerator, titles: Sequence[str], max_chars: int = 600):
        self.generator = generator
        self.titles = titles
        self.max_chars = max_chars
        self.prefix = id_prefix(generator.tokenizer)
        self.cache: dict[tuple[int, ...], list[int]] = {}
        self.seen_texts = 0  # how many histories were turned into user IDs (tests read it)

    def text(self, window: Sequence[int]) -> str:
        return "; ".join(self.titles[i - 1] for i in reversed(window))[: self.max_chars]

    def clear(self) -> None:
        self.cache.clear()

    def __call__(self, windows: Sequence[Sequence[int]]) -> list[list[int]]:
        keys = [tuple(int(i) for i in w) for w in windows]
        todo = sorted({k for k in keys if k not in self.cache})
        if todo:
            self.seen_texts += len(todo)
            ids = self.generator.generate_ids([self.text(k) for k in todo], num_groups=1, max_new_tokens=9)
            tok = self.generator.tokenizer
            enc = tok([self.prefix + normalize_id(c[0] if c else "") for c in ids], add_special_tokens=False)["input_ids"]
            self.cache.update(zip(todo, enc))
        return [self.cache[k] for k in keys]
