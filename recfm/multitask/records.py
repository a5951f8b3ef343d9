"""Multi-task records (RecFound section 3): the two record kinds and their JSON lines.

Two record kinds, one JSON line each:

- :class:`GenRecord` (generative): system prompt, one of the task's instruction paraphrases,
  input, optional options, response. Every generative task here is a choice among ``options``
  (the response is one of them), so a model is scored by ranking the options' likelihoods.
- :class:`EmbRecord` (embedding): an instruction, a query text and its positive item text
  (negatives come from the batch; ``negatives`` holds optional hard negatives).

MovieLens task builders: :mod:`recfm.multitask.movielens_tasks`; the published RecFound files:
:mod:`recfm.multitask.recfound_jsonl`.
"""


from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Literal

from recfm.atomic import atomic_write_text


SYSTEM_PROMPT = "You are a helpful assistant for recommendation tasks."
EMBED_TOKEN = "<|embed|>"
SENTIMENTS = ["very negative", "negative", "neutral", "positive", "very positive"]
RELATIONS = ["watched one after the other", "same genre", "unrelated"]
SPLITS = ("train", "valid", "test")

INSTRUCTIONS: dict[str, list[str]] = {
    "seqrec": [
        "Given the movies a user watched, oldest first, pick the movie they will watch next from the options.",
        "Here is a viewing history. Which of the candidate movies is the user's next one?",
        "Predict the next movie this user watches. Answer with one of the options.",
    ],
    "sentiment": [
        "Given a user's recent movies, say how they will feel about the target movie.",
        "How will this user rate the target movie? Answer with a sentiment from the options.",
        "Predict the user's sentiment towards the movie from their viewing history.",
    ],
    "attribute": [
        "What is the main genre of this movie?",
        "Extract the primary genre of the movie described below.",
        "Name the first listed genre of this movie, choosing from the options.",
    ],
    "profile": [
        "Which profile describes this movie?",
        "Pick the correct release decade and genres for the movie.",
        "Choose the description that matches this movie.",
    ],
    "relation": [
        "How are these two movies related?",
        "Classify the relation between the two movies.",
        "Were these movies watched one after the other, do they share a genre, or are they unrelated?",
    ],
    "matching": [
        "Do these two descriptions refer to the same movie?",
        "Are the two catalog entries the same film? Answer yes or no.",
        "Decide whether both records describe one movie.",
    ],
    "user2item": ["Given a user's viewing history, retrieve the movie they will watch next."],
    "item2item": ["Given a movie, retrieve a movie that people watch right after it."],
    "query2item": ["Given a search query, retrieve a movie that matches it."],
    "user_profile": [
        "Describe this user's taste from the movies they watched: their favourite genres and decade.",
        "Write a short profile of the viewer below: which genres and which era they watch most.",
    ],
    "item_profile": [
        "Describe this movie: its release decade and its genres.",
        "Write the movie's profile: when it came out and which genres it belongs to.",
    ],
}
GEN_TASKS = ("seqrec", "sentiment", "attribute", "profile", "relation", "matching")
EMB_TASKS = ("user2item", "item2item", "query2item")
# Free-text generation (no options, scored by token F1): built on request (``data.tasks``), not by
# default, so the CPU preset's figures keep their task set.
FREE_TEXT_TASKS = ("user_profile", "item_profile")


@dataclass
class GenRecord:
    task: str
    instruction: str
    input: str
    response: str
    options: list[str] | None = None
    system: str = SYSTEM_PROMPT
    kind: Literal["generative"] = "generative"

    def prompt(self) -> str:
        """The user turn: instruction, input and the numbered options."""
        parts = [self.instruction, self.input]
        if self.options:
            parts.append("Options:\n" + "\n".join(f"{i + 1}. {o}" for i, o in enumerate(self.options)))
        return "\n\n".join(p for p in parts if p)


@dataclass
class EmbRecord:
    task: str
    instruction: str
    query: str
    positive: str
    negatives: list[str] = field(default_factory=list)
    kind: Literal["embedding"] = "embedding"

    def query_text(self) -> str:
        return f"{self.instruction}\n{EMBED_TOKEN}\n{self.query}"

    @staticmethod
    def item_text(text: str) -> str:
        return f"{EMBED_TOKEN}\n{text}"


Record = GenRecord | EmbRecord


# ---------------------------------------------------------------------------------------------
# JSON lines
# ---------------------------------------------------------------------------------------------


def write_records(records: Iterable[Record], path: str | Path) -> int:
    """One JSON line per record, written atomically; returns how many."""
    lines = [json.dumps(asdict(r), ensure_ascii=False) + "\n" for r in records]
    atomic_write_text(Path(path), "".join(lines))
    return len(lines)


def read_records(path: str | Path) -> list[Record]:
    out: list[Record] = []
    with open(path) as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                d = json.loads(line)
                if not isinstance(d, dict):
                    raise TypeError(f"a line must be a JSON object, not {type(d).__name__}")
                out.append(GenRecord(**d) if d.get("kind", "generative") == "generative" else EmbRecord(**d))
            except (json.JSONDecodeError, TypeError) as e:
                raise ValueError(f"{path}:{line_no}: not a recfm task record ({e})") from None
    return out
