"""Textual item IDs (IDGenRec): prefix tries over tokenized IDs and trie-constrained decoding.

    from recfm.textid import TokenTrie, constrained_topk

    trie = TokenTrie.from_texts(id_texts, tokenizer)        # id_texts[i] is item i + 1's textual ID
    items, scores = constrained_topk(model, tokenizer, trie, prompts, k=10, exclude=histories)

``TokenTrie`` keeps the trie as flat tensors (CSR children + sorted transition keys), so the
allowed tokens and next states of all beams come from a few tensor operations;
``TrieLogitsProcessor`` plugs it into ``generate``. ``DictTrie`` and
``make_prefix_allowed_tokens_fn`` (``recfm.textid.reference``) are the slow dict-of-dicts
reference of the public code. ``TextIDModel`` (``recfm.textid.training``) is the ``textid`` row
of the model table and ``TextIDConfig`` (``recfm.textid.config``) its configuration.

The trie needs only torch and numpy; the generation names (``recfm.textid.constrained``, which
imports transformers) and the model names are imported on first use, so ``import recfm.textid``
stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

from recfm.textid.reference import DictTrie, dict_trie, make_prefix_allowed_tokens_fn
from recfm.textid.trie import DEAD, DuplicateItemIDError, TokenTrie

_LAZY = {
    "Catalog": "recfm.textid.config",
    "TextIDConfig": "recfm.textid.config",
    "TextIDModel": "recfm.textid.training",
    "TrieLogitsProcessor": "recfm.textid.constrained",
    "constrained_topk": "recfm.textid.constrained",
    "select_topk": "recfm.textid.constrained",
}

__all__ = [
    "Catalog",
    "DEAD",
    "DictTrie",
    "DuplicateItemIDError",
    "TextIDConfig",
    "TextIDModel",
    "TokenTrie",
    "TrieLogitsProcessor",
    "constrained_topk",
    "dict_trie",
    "make_prefix_allowed_tokens_fn",
    "select_topk",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'recfm.textid' has no attribute {name!r}")
