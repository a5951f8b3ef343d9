"""Foundation-model scorers for pairwise click prediction (RecBench-MD's two paradigms).

A scorer turns (user history, candidate item) pairs, given as text, into one score per pair
(higher = more likely clicked), which :func:`recfm.bench.metrics.click_metrics` measures.

- :class:`PromptScorer` (prompt-based, causal LMs): the pair is written as a prompt (an
  instruction, the numbered history, the candidate and an answer cue ending in
  ``"Answer (Yes or No):"``) and the score is the probability of "Yes" against "No" at the
  next token::

      P(yes) = exp(LSE(yes)) / (exp(LSE(yes)) + exp(LSE(no))) = sigmoid(LSE(yes) - LSE(no))

  where LSE(yes) is the log-sum-exp of the last-position logits over every single-token
  spelling of Yes for this tokenizer ("Yes", " Yes", "yes", " yes", "YES"), and likewise for
  No. The other tokens of the vocabulary play no part (a softmax restricted to the two
  answers). With a chat template the instruction is a user turn and the answer cue opens the
  assistant turn.
- :class:`EmbeddingScorer` (embedding-based, encoders or decoders): the user text (the
  history's titles joined, most recent last, cut from the FRONT to ``max_length`` tokens so
  the newest items survive) and the item text are embedded separately, by masked mean pooling
  or by the last non-pad token's state, and the score is their cosine similarity.

Both take texts; :func:`pair_texts` makes them from :class:`recfm.bench.tasks.ClickPairs` and
a catalogue's item texts. :func:`load_scorer` loads a model by alias, folder or hub name with
the ``recfm.models`` loaders. Fine-tuning (LoRA) is in :mod:`recfm.bench.finetune`.

Padding is done here, not by the tokenizer: prompts are LEFT-padded (the last position is
every prompt's last token) with position ids counted from each prompt's first real token, so
a batch scores exactly as its pairs one at a time; embedding inputs are right-padded and the
pooling reads the attention mask. Inputs are sorted by length before batching.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from recfm.bench.embedding_scorer import EmbeddingScorer, pool
from recfm.bench.prompt_scorer import (DEFAULT_TEMPLATE, NO_VARIANTS, YES_VARIANTS, PromptScorer, PromptTemplate,
                                       answer_token_ids, special_affixes)

__all__ = ["DEFAULT_TEMPLATE", "EmbeddingScorer", "NO_VARIANTS", "PARADIGMS", "PromptScorer", "PromptTemplate",
           "YES_VARIANTS", "answer_token_ids", "load_scorer", "model_kind", "pair_texts", "pool", "special_affixes"]

log = logging.getLogger("recfm.bench")

PARADIGMS = ("prompt", "embedding")


# ---------------------------------------------------------------------------------------------
# pairs -> texts
# ---------------------------------------------------------------------------------------------


def _clip(text: str, max_chars: int | None) -> str:
    text = " ".join(str(text).split())  # one line: titles go into numbered lists
    if max_chars is not None and len(text) > max_chars:
        text = text[:max_chars].rstrip()
    return text


def pair_texts(pairs, item_text: Sequence[str], max_chars: int | None = 200) -> tuple[list[list[str]], list[str]]:
    """(histories, candidates) as text for :class:`~recfm.bench.tasks.ClickPairs`.

    Item index ``i`` (1-based, as in the datasets) is ``item_text[i - 1]``; padding (0) in the
    history rows is skipped, so ``histories[p]`` lists pair ``p``'s items oldest first. Each
    text is put on one line (whitespace runs become one space) and cut to ``max_chars``
    characters (None = no cut).
    """
    history = np.asarray(pairs.history)
    item = np.asarray(pairs.item)
    used = np.unique(np.concatenate([history[history > 0], item]))
    if used.size and (used.min() < 1 or used.max() > len(item_text)):
        raise ValueError(
            f"item indices must lie in 1..{len(item_text)} (0 = padding); found {used.min()}..{used.max()}"
        )
    text = {int(i): _clip(item_text[int(i) - 1], max_chars) for i in used}
    histories = [[text[i] for i in row if i > 0] for row in history.tolist()]
    candidates = [text[i] for i in item.tolist()]
    return histories, candidates


# ---------------------------------------------------------------------------------------------
# tokenizer and model helpers
# ---------------------------------------------------------------------------------------------


def model_kind(name_or_path: str | Path) -> str:
    """"causal_lm" or "encoder" for an alias, a ``.gguf`` file, a folder or a hub name (its config's architectures)."""
    from recfm.models.registry import resolve_alias

    entry = resolve_alias(str(name_or_path))
    if entry is not None:
        kind = entry.kind
    elif str(name_or_path).endswith(".gguf"):
        kind = "causal_lm"
    else:
        config_file = Path(str(name_or_path)).expanduser() / "config.json"
        if config_file.is_file():
            config = json.loads(config_file.read_text())
        else:  # a hub name
            from recfm.models.loading import _from_pretrained, _transformers

            config = _from_pretrained(_transformers().AutoConfig, name_or_path, "load_scorer").to_dict()
        archs = config.get("architectures") or []
        if config.get("is_encoder_decoder"):
            kind = "seq2seq"
        elif any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs):
            kind = "causal_lm"
        else:
            kind = "encoder"
    if kind == "seq2seq":
        raise ValueError(f"{name_or_path!r} is an encoder-decoder model; the scorers take causal LMs or encoders")
    return kind


def load_scorer(model: str | Path, paradigm: str, *, dtype=torch.float32, device=None, **kwargs):
    """A scorer for ``model`` (alias, ``.gguf`` file, local folder or hub name), loaded with ``recfm.models``.

    ``paradigm="prompt"``: ``load_causal_lm`` + :class:`PromptScorer`. ``"embedding"``:
    encoders via ``load_encoder`` (mean pooling), causal LMs via ``load_causal_lm`` with
    ``pooling="last"`` (override with ``pooling=``). Other keyword arguments go to the scorer.
    """
    from recfm.models import load_causal_lm, load_encoder

    if paradigm not in PARADIGMS:
        raise ValueError(f"paradigm must be one of {PARADIGMS}, not {paradigm!r}")
    if paradigm == "prompt":
        m, tok = load_causal_lm(model, dtype=dtype, device=device)
        return PromptScorer(m, tok, **kwargs)
    if model_kind(model) == "causal_lm":
        m, tok = load_causal_lm(model, dtype=dtype, device=device)
        kwargs.setdefault("pooling", "last")
    else:
        m, tok = load_encoder(model, dtype=dtype, device=device)
    return EmbeddingScorer(m, tok, **kwargs)
