"""Texts -> vectors with an encoder from ``load_encoder`` (sentence-transformers style, without it)."""

from __future__ import annotations

import logging
from typing import Sequence

import torch

log = logging.getLogger("recfm.models")


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Average of the token states where ``attention_mask`` is 1: [batch, seq, dim] -> [batch, dim]."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


@torch.no_grad()
def embed_texts(
    model,
    tokenizer,
    texts: Sequence[str],
    batch_size: int = 64,
    max_length: int = 256,
    pooling: str = "mean",
    normalize: bool = True,
) -> torch.Tensor:
    """Embed ``texts`` in batches: a float32 CPU tensor [len(texts), hidden_size].

    The defaults reproduce all-MiniLM-L6-v2's sentence-transformers pipeline (mean pooling over
    256 tokens, L2 normalization). ``pooling="cls"`` takes the first token instead.
    """
    if pooling not in ("mean", "cls"):
        raise ValueError(f"pooling must be 'mean' or 'cls', not {pooling!r}")
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(texts), batch_size):
        batch = tokenizer(
            list(texts[start : start + batch_size]),
            padding=True,
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
        ).to(device)
        hidden = model(**batch).last_hidden_state
        vec = mean_pool(hidden, batch["attention_mask"]) if pooling == "mean" else hidden[:, 0]
        if normalize:
            vec = torch.nn.functional.normalize(vec, dim=-1)
        out.append(vec.float().cpu())
    if not out:
        return torch.empty(0, model.config.hidden_size)
    return torch.cat(out)
