"""Sequential-recommendation prompts over textual IDs, assembled from token pieces.

A template is text with two placeholders, ``{user}`` and ``{history}``. The fixed text between
them is tokenized once; a prompt is the concatenation of those pieces with the token lists of
the user ID and of the history's item IDs (joined by ``separator``). The same token lists build
the decoding trie and the training targets, so what the model reads, what it is trained to
write and what the trie allows are one tokenization. Every prompt also returns, per token, the
history slot it came from (``-1`` for template text): the alternate-training step swaps those
positions for soft ID embeddings.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

# Ten phrasings of one request (the paper's 10 templates follow P5's; these are our own words).
# Each has a "with user" and an "items only" form; the ablations pick the form.
TEMPLATES: list[str] = [
    "User {user} has interacted with items {history}. Predict the next item the user will interact with.",
    "Here is the history of user {user}: {history}. What should be recommended next?",
    "User {user} recently chose {history}. Which item will the user choose next?",
    "Given the items {history} chosen in order by user {user}, recommend the next item.",
    "The interaction sequence of user {user} is {history}. Generate the next item.",
    "User {user} bought {history} in this order. What will the user buy next?",
    "Items so far for user {user}: {history}. Suggest the item that comes next.",
    "Predict what user {user} picks after {history}.",
    "Considering the history {history} of user {user}, which item fits next?",
    "History of {user}: {history}. Next item:",
]
_PLACEHOLDER = re.compile(r"\{(user|history)\}")


def _without_user(template: str) -> str:
    """Items-only form: drop the user placeholder and the words that only introduce it."""
    text = re.sub(r"\s+(?:of|by|for) user \{user\}", "", template)
    text = text.replace("User {user}", "The user").replace("user {user}", "the user").replace("{user}", "the user")
    return re.sub(r"\s+([:.,])", r"\1", text)


@dataclass(frozen=True)
class Prompt:
    tokens: list[int]
    slots: list[int]  # per token: index into the history of the ID it belongs to, or -1
    offsets: list[int]  # per token: its position inside that ID (0 for template text)


class PromptBuilder:
    """Builds prompt token lists for histories of items, given each item's ID token list.

    ``id_tokens[i]`` are the tokens of item ``i``'s textual ID (index 0 unused). ``with_user``
    adds the user's textual ID (``user_tokens`` per prompt) where a template asks for it.
    """

    def __init__(self, tokenizer, *, with_user: bool, with_items: bool = True, separator: str = ",",
                 templates: Sequence[str] = TEMPLATES, max_tokens: int = 512):
        if not (with_user or with_items):
            raise ValueError("a prompt needs user IDs, item IDs or both")
        self.with_user, self.with_items, self.max_tokens = with_user, with_items, max_tokens
        self._encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"] if text else []
        self.templates = [self._pieces(t if with_user else _without_user(t)) for t in templates]
        self.separator = self._encode(separator)
        self.eos = tokenizer.eos_token_id

    def _pieces(self, template: str) -> list[list[int] | str]:
        out: list[list[int] | str] = []
        pos = 0
        for m in _PLACEHOLDER.finditer(template):
            out.append(self._encode(template[pos : m.start()].strip()))
            out.append(m.group(1))
            pos = m.end()
        out.append(self._encode(template[pos:].strip()))
        return out

    def build(self, history: Sequence[int], id_tokens: Sequence[Sequence[int]], template: int = 0,
              user_tokens: Sequence[int] = ()) -> Prompt:
        """The prompt for one history (item indices, oldest first; already truncated)."""
        tokens: list[int] = []
        slots: list[int] = []
        offsets: list[int] = []
        for piece in self.templates[template % len(self.templates)]:
            if piece == "user":
                tokens += user_tokens
                slots += [-1] * len(user_tokens)
                offsets += [0] * len(user_tokens)
            elif piece == "history":
                items = history if self.with_items else []
                for j, item in enumerate(items):
                    if j:
                        tokens += self.separator
                        slots += [-1] * len(self.separator)
                        offsets += [0] * len(self.separator)
                    ids = id_tokens[item]
                    tokens += ids
                    slots += [j] * len(ids)
                    offsets += range(len(ids))
            else:
                tokens += piece
                slots += [-1] * len(piece)
                offsets += [0] * len(piece)
        if len(tokens) > self.max_tokens:  # keep the end: the newest items and the question
            cut = len(tokens) - self.max_tokens
            tokens, slots, offsets = tokens[cut:], slots[cut:], offsets[cut:]
        return Prompt(tokens, slots, offsets)

    def text(self, history: Sequence[str], template: int = 0, user: str = "") -> str:
        """Readable form of a prompt (for logs and docs), from ID strings."""
        raw = TEMPLATES[template % len(TEMPLATES)]
        raw = raw if self.with_user else _without_user(raw)
        items = ", ".join(history) if self.with_items else ""
        return raw.replace("{user}", user).replace("{history}", items)
