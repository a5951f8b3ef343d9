"""Embedding-based click scoring (RecBench-MD): cosine of the history's and the item's embeddings.

See :mod:`recfm.bench.scorers` for the pooling and truncation rules.
"""

from __future__ import annotations

import logging
from typing import Sequence

import numpy as np
import torch

from recfm.compute import eval_mode
from recfm.bench.prompt_scorer import special_affixes
from recfm.models.batching import (autocast_context, autocast_dtype, batch_progress, distinct_texts, length_batches,
                                   model_device, pad_batch, pad_token_id, unwrap_peft)
from recfm.models.embedding import mean_pool

log = logging.getLogger("recfm.bench")


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """[batch, seq, dim] -> [batch, dim]: masked mean, or the state of the last position where the mask is 1."""
    if pooling == "mean":
        return mean_pool(hidden, attention_mask)
    if pooling == "last":
        positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
        last = (attention_mask * positions).argmax(-1)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    raise ValueError(f"pooling must be 'mean' or 'last', not {pooling!r}")


class EmbeddingScorer:
    """Cosine similarity of a user embedding (history titles) and an item embedding (see the module doc).

    Works with encoders (``load_encoder``; ``pooling="mean"``, as sentence-transformers does)
    and decoders (``load_causal_lm``; ``pooling="last"``: the last real token has read the whole
    text). The hidden states are those of the transformer body (``model.base_model``), without
    any head. Texts are embedded once per distinct text within one ``score`` call. A text that
    tokenizes to nothing (an empty history, with a tokenizer that adds no special tokens) is
    embedded as the single token bos (else eos, unk or pad). ``autocast`` as for
    :class:`PromptScorer`.
    """

    paradigm = "embedding"

    def __init__(
        self,
        model,
        tokenizer,
        *,
        pooling: str = "mean",
        batch_size: int = 64,
        max_length: int = 256,
        separator: str = "; ",
        progress: bool | None = None,
        autocast: str | None = None,
    ):
        if pooling not in ("mean", "last"):
            raise ValueError(f"pooling must be 'mean' or 'last', not {pooling!r}")
        if batch_size < 1 or max_length < 4:
            raise ValueError(f"batch_size must be >= 1 and max_length >= 4, got {batch_size}, {max_length}")
        self.model = model
        self.tokenizer = tokenizer
        self.pooling = pooling
        self.batch_size = batch_size
        self.max_length = max_length
        self.separator = separator
        self.progress = progress
        self.autocast = autocast_dtype(autocast, model_device(model))
        self._prefix, self._suffix = special_affixes(tokenizer)
        if len(self._prefix) + len(self._suffix) >= max_length:
            raise ValueError(f"max_length={max_length} leaves no room beside the tokenizer's special tokens")
        self._pad_id = pad_token_id(tokenizer)
        empty = [tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id, self._pad_id]
        self._empty_id = next(int(t) for t in empty if t is not None)

    def user_text(self, history: Sequence[str]) -> str:
        return self.separator.join(history)

    def token_ids(self, texts: Sequence[str], keep: str = "head") -> list[list[int]]:
        """Token ids with the tokenizer's special tokens, at most ``max_length``: ``keep="tail"``
        cuts from the front (user texts: the newest items are last), ``"head"`` from the end."""
        room = self.max_length - len(self._prefix) - len(self._suffix)
        out = []
        for body in self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]:
            body = list(body)
            if len(body) > room:
                body = body[-room:] if keep == "tail" else body[:room]
            seq = self._prefix + body + self._suffix
            out.append(seq or [self._empty_id])  # an empty text (no history) with a tokenizer that adds nothing
        return out

    def _body(self):
        base = unwrap_peft(self.model)
        return getattr(base, "base_model", base)  # LlamaForCausalLM -> LlamaModel; BertModel -> itself

    def embed_ids(self, ids: Sequence[Sequence[int]]) -> torch.Tensor:
        """Pooled (unnormalized) embeddings of one batch, float32; keeps gradients if enabled."""
        input_ids, mask = pad_batch(ids, self._pad_id, "right")
        device = model_device(self.model)
        input_ids, mask = input_ids.to(device), mask.to(device)
        with autocast_context(model_device(self.model), self.autocast):
            hidden = self._body()(input_ids=input_ids, attention_mask=mask).last_hidden_state
        return pool(hidden.float(), mask, self.pooling)

    def embed(self, texts: Sequence[str], keep: str = "head", progress: bool | None = False) -> torch.Tensor:
        """L2-normalized embeddings [len(texts), dim] in length-sorted batches (gradients if enabled)."""
        if len(texts) == 0:
            raise ValueError("no texts to embed")
        ids = self.token_ids(texts, keep)
        parts, rows = [], []
        batches = length_batches([len(x) for x in ids], self.batch_size)
        with batch_progress(len(batches), progress, "embedding") as bar:
            for batch_rows in batches:
                parts.append(self.embed_ids([ids[r] for r in batch_rows]))
                rows.append(torch.as_tensor(batch_rows))
                bar.update(1)
        vectors = torch.cat(parts)[torch.argsort(torch.cat(rows).to(parts[0].device))]
        return torch.nn.functional.normalize(vectors, dim=-1)

    def cosine(
        self, histories: Sequence[Sequence[str]], candidates: Sequence[str], progress: bool | None = False
    ) -> torch.Tensor:
        """Cosine similarity per pair as a tensor (gradients if enabled); each distinct text embedded once."""
        if len(histories) != len(candidates):
            raise ValueError(f"{len(histories)} histories but {len(candidates)} candidates")
        user_keys, user_index = distinct_texts(self.user_text(h) for h in histories)
        item_keys, item_index = distinct_texts(candidates)
        u = self.embed(user_keys, keep="tail", progress=progress)
        v = self.embed(item_keys, keep="head", progress=progress)
        u = u[torch.as_tensor(user_index, device=u.device)]
        v = v[torch.as_tensor(item_index, device=v.device)]
        return (u * v).sum(-1)

    def score(self, histories: Sequence[Sequence[str]], candidates: Sequence[str]) -> np.ndarray:
        """Cosine similarity per pair in [-1, 1] (float64)."""
        if len(candidates) == 0:
            return np.zeros(0)
        progress = self.progress if self.progress is not None else len(candidates) > 8 * self.batch_size
        with eval_mode(self.model), torch.inference_mode():
            return self.cosine(histories, candidates, progress=progress).double().cpu().numpy()


# ---------------------------------------------------------------------------------------------
# loading
# ---------------------------------------------------------------------------------------------
