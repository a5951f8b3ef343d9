"""SASRec (Kang & McAuley, ICDM 2018): causal self-attention over the item sequence.

Item embedding (padding_idx 0, tied with the output layer) + learned positional embedding,
``num_layers`` transformer blocks with causal attention, dropout, final LayerNorm.
The score of item i after a history is <h_last, e_i>. Trained by the shared trainer
(:mod:`recfm.baselines.trainer`) with the loss its config names.

Two blocks (``block``):

- ``pre_ln``: the GPT-style pre-LN block, ``x + Attn(LN(x))`` then ``x + FFN(LN(x))``, GELU,
  feed-forward width ``4 * hidden_size``, dropout on both residual branches.
- ``sasrec``: the block of the SASRec authors' code (also RecTools' SASRec, the published
  sampled-softmax rows): only the queries are normalised (``q = LN(x)``; keys and values read
  ``x``), the residual adds to ``q``, the feed-forward is ReLU with width ``hidden_size`` and its
  residual adds to its normalised input; dropout on the attention weights and the feed-forward only.

Sequences are right-padded and attention is causal, so a real position never attends to
padding and a history's scores do not depend on what it is batched with. Positions count
from the first item read (``positions: from_start``) or back from the last (``from_end``: the
last item of every history has position 0, as absolute positions in a left-padded window of
SASRec's code).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from recfm.compute import FastDropout
from recfm.baselines.trainer import SequenceNet, SequentialRecommender, SequentialTrainConfig


class SASRecConfig(SequentialTrainConfig):
    name: Literal["sasrec"] = Field("sasrec", description="the model-table row (recfm models)")
    hidden_size: int = Field(64, ge=1, description="embedding and transformer width")
    num_layers: int = Field(2, ge=1, description="transformer blocks")
    num_heads: int = Field(1, ge=1, description="attention heads (must divide hidden_size)")
    inner_size: int | None = Field(
        None, ge=1, description="feed-forward width; None = 4 * hidden_size (pre_ln) or hidden_size (sasrec)")
    dropout: float = Field(0.5, ge=0, lt=1, description="embedding, attention and residual dropout")
    block: Literal["pre_ln", "sasrec"] = Field(
        "pre_ln", description="pre_ln: GPT-style pre-LN block; sasrec: the SASRec authors' block (normalised "
                              "queries only, ReLU feed-forward of width hidden_size)")
    positions: Literal["from_start", "from_end"] = Field(
        "from_start", description="position embeddings counted from the first item read, or back from the last "
                                  "(the last item always has position 0)")
    init: Literal["normal", "xavier"] = Field(
        "normal", description="normal: every weight N(0, 0.02); xavier: Xavier-normal for every matrix (RecTools)")

    @model_validator(mode="after")
    def _heads_divide_width(self):
        if self.hidden_size % self.num_heads:
            raise ValueError(f"num_heads={self.num_heads} must divide hidden_size={self.hidden_size}")
        return self


class CausalBlock(nn.Module):
    """Pre-LN transformer block: x + Attn(LN(x)), then x + FFN(LN(x))."""

    def __init__(self, d: int, heads: int, inner: int, dropout: float):
        super().__init__()
        self.heads, self.p = heads, dropout
        self.ln1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.ln2 = nn.LayerNorm(d)
        self.ff1 = nn.Linear(d, inner)
        self.ff2 = nn.Linear(inner, d)
        self.drop = FastDropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=self.p if self.training else 0.0)
        x = x + self.drop(self.proj(a.transpose(1, 2).reshape(b, t, d)))
        return x + self.drop(self.ff2(self.drop(F.gelu(self.ff1(self.ln2(x))))))


class SASRecAuthorsBlock(nn.Module):
    """The SASRec authors' block: q = LN(x); x = q + Attn(q, x, x); then f + FFN(f) with f = LN(x)."""

    def __init__(self, d: int, heads: int, inner: int, dropout: float):
        super().__init__()
        self.heads, self.p = heads, dropout
        self.ln1 = nn.LayerNorm(d)
        self.q = nn.Linear(d, d)
        self.kv = nn.Linear(d, 2 * d)
        self.proj = nn.Linear(d, d)
        self.ln2 = nn.LayerNorm(d)
        self.ff1 = nn.Linear(d, inner)
        self.ff2 = nn.Linear(inner, d)
        self.drop = FastDropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        h = self.heads
        normed = self.ln1(x)
        q = self.q(normed).view(b, t, h, d // h).transpose(1, 2)
        k, v = self.kv(x).view(b, t, 2, h, d // h).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=self.p if self.training else 0.0)
        x = normed + self.proj(a.transpose(1, 2).reshape(b, t, d))
        f = self.ln2(x)
        return f + self.drop(self.ff2(self.drop(F.relu(self.ff1(f)))))


class SASRecNet(SequenceNet):
    def __init__(self, config: SASRecConfig, n_items: int):
        super().__init__()
        d = config.hidden_size
        self.item_emb = nn.Embedding(n_items + 1, d, padding_idx=0)
        self.pos_emb = nn.Embedding(config.max_len, d)
        self.drop = FastDropout(config.dropout)
        self.item_dropout = config.item_dropout
        authors = config.block == "sasrec"
        inner = config.inner_size or (d if authors else 4 * d)
        block = SASRecAuthorsBlock if authors else CausalBlock
        self.blocks = nn.ModuleList(block(d, config.num_heads, inner, config.dropout) for _ in range(config.num_layers))
        self.ln = nn.LayerNorm(d)
        self.from_end = config.positions == "from_end"
        self.apply(self._init)
        if config.init == "xavier":
            for param in self.parameters():
                if param.dim() > 1:
                    nn.init.xavier_normal_(param)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def position_ids(self, seqs: torch.Tensor) -> torch.Tensor:
        """(T,) from the start, or (B, T) back from each row's last item (padding clamped to 0)."""
        steps = torch.arange(seqs.shape[1], device=seqs.device)
        if not self.from_end:
            return steps
        lengths = (seqs > 0).sum(dim=1, keepdim=True)
        return (lengths - 1 - steps).clamp_min(0)

    def encode(self, seqs: torch.Tensor, items: torch.Tensor | None = None) -> torch.Tensor:
        table = self.item_embeddings() if items is None else items
        x = self.drop(F.embedding(seqs, table, padding_idx=0) + self.pos_emb(self.position_ids(seqs)))
        for block in self.blocks:
            x = block(x)
        return self.ln(x)


class SASRec(SequentialRecommender):
    config_class = SASRecConfig

    def build_net(self, config: SASRecConfig, n_items: int) -> SASRecNet:
        return SASRecNet(config, n_items)
