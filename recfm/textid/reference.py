"""The slow reference trie: the dict-of-dicts trie of the public IDGenRec / GENRE code and its
``prefix_allowed_tokens_fn``, walked in Python per prefix. Nothing in training or serving uses
it: the vectorised :class:`~recfm.textid.trie.TokenTrie` is tested and benchmarked against it
(``constrained_topk(..., constraint="prefix_fn")`` runs the same search with it)."""

from __future__ import annotations

from typing import Collection, Iterable, Sequence

import torch

from recfm.textid.trie import DuplicateItemIDError, TokenTrie, _as_item_ids


class DictTrie:
    """The dict-of-dicts trie of the public IDGenRec / GENRE code: the slow reference.

    ``get(prefix)`` walks the nested dicts token by token in Python and returns the allowed next
    tokens (sorted), or ``None`` for an invalid prefix. After a complete ID (its EOS) only pad and
    eos are allowed, as in :class:`TokenTrie`.
    """

    _ITEM = "item"

    def __init__(
        self,
        seqs: Iterable[Sequence[int]],
        eos_token_id: int,
        *,
        pad_token_id: int | None = None,
        item_ids: Sequence[int] | None = None,
    ):
        seqs = [list(s) for s in seqs]
        self.eos_token_id = int(eos_token_id)
        self.pad_token_id = self.eos_token_id if pad_token_id is None else int(pad_token_id)
        self._tail = sorted({self.pad_token_id, self.eos_token_id})
        ids = _as_item_ids(item_ids, len(seqs)).tolist()
        self.root: dict = {}
        for item, seq in zip(ids, seqs):
            if not seq or seq[-1] != self.eos_token_id:
                seq = seq + [self.eos_token_id]
            node = self.root
            for tok in seq[:-1]:
                node = node.setdefault(tok, {})
            if self.eos_token_id in node:
                clash = [node[self.eos_token_id][self._ITEM], item]
                raise DuplicateItemIDError(f"items {clash} share tokens {seq}", [clash])
            node[self.eos_token_id] = {self._ITEM: item}

    @classmethod
    def from_token_trie(cls, trie: TokenTrie) -> "DictTrie":
        return cls(trie.sequences(), trie.eos_token_id, pad_token_id=trie.pad_token_id,
                   item_ids=trie.items.tolist())

    def _node(self, prefix: Sequence[int]):
        node = self.root
        for tok in prefix:
            if self._ITEM in node:  # complete ID: pad / eos keep it there
                if tok not in self._tail:
                    return None
                continue
            node = node.get(tok)
            if node is None:
                return None
        return node

    def get(self, prefix: Sequence[int]) -> list[int] | None:
        node = self._node(prefix)
        if node is None:
            return None
        if self._ITEM in node:
            return list(self._tail)
        return sorted(node)

    def item(self, prefix: Sequence[int]) -> int:
        """The item whose complete ID is ``prefix`` (plus pad/eos), else 0."""
        node = self._node(prefix)
        return node[self._ITEM] if node is not None and self._ITEM in node else 0


def make_prefix_allowed_tokens_fn(trie: DictTrie, prompt_length: int, dead_tokens: Sequence[int] | None = None,
                                  exclude: Sequence[Collection[int]] | None = None):
    """``prefix_allowed_tokens_fn(batch_id, input_ids)`` for ``generate``, as in the public IDGenRec code.

    The generated suffix ``input_ids[prompt_length:]`` is walked in ``trie``. transformers rejects
    an empty list, so an invalid prefix (a beam that is already at -inf) gets ``dead_tokens``
    (default: pad), which changes nothing: its running score stays -inf. With ``exclude`` (per
    prompt, the ``batch_id``), tokens whose every item below is excluded are not allowed: the slow
    reference of :meth:`TokenTrie.exclusion_edges`.
    """
    dead = list(dead_tokens) if dead_tokens is not None else [trie.pad_token_id]
    below: dict[int, set[int]] = {}

    def items_below(node: dict) -> set[int]:
        if id(node) not in below:
            below[id(node)] = {node[DictTrie._ITEM]} if DictTrie._ITEM in node else \
                set().union(*(items_below(child) for child in node.values()))
        return below[id(node)]

    def prefix_allowed_tokens(batch_id: int, input_ids: torch.Tensor) -> list[int]:
        prefix = input_ids[prompt_length:].tolist()
        allowed = trie.get(prefix)
        if allowed and exclude is not None and exclude[batch_id]:
            node = trie._node(prefix)
            if DictTrie._ITEM not in node:
                allowed = [t for t in allowed if not items_below(node[t]) <= set(exclude[batch_id])]
        return allowed if allowed else dead

    return prefix_allowed_tokens


def dict_trie(trie: TokenTrie) -> DictTrie:
    """The slow reference trie with the same IDs (built once per TokenTrie, cached on it)."""
    cached = getattr(trie, "_dict_trie", None)
    if cached is None:
        cached = DictTrie.from_token_trie(trie)
        trie._dict_trie = cached
    return cached
