"""SASRec (Kang & McAuley, ICDM 2018): causal self-attention over the item sequence.

Item embedding (padding_idx 0, tied with the output layer) + learned positional embedding,
``num_layers`` pre-LN transformer blocks with causal attention, dropout, final LayerNorm.
The score of item i after a history is <h_last, e_i>. Trained with full-softmax
cross-entropy over all items by the shared trainer (:mod:`recfm.baselines.trainer`).

Sequences are right-padded and attention is causal, so a real position never attends to
padding and a history's scores do not depend on what it is batched with. Positions count
from the first item of the (at most ``max_len``) items read.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from recfm.baselines.trainer import SequenceNet, SequentialRecommender, SequentialTrainConfig


class SASRecConfig(SequentialTrainConfig):
    name: Literal["sasrec"] = Field("sasrec", description="the model-table row (recfm models)")
    hidden_size: int = Field(64, ge=1, description="embedding and transformer width")
    num_layers: int = Field(2, ge=1, description="transformer blocks")
    num_heads: int = Field(1, ge=1, description="attention heads (must divide hidden_size)")
    inner_size: int | None = Field(None, ge=1, description="feed-forward width; None = 4 * hidden_size")
    dropout: float = Field(0.5, ge=0, lt=1, description="embedding, attention and residual dropout")

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
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=self.p if self.training else 0.0)
        x = x + self.drop(self.proj(a.transpose(1, 2).reshape(b, t, d)))
        return x + self.drop(self.ff2(self.drop(F.gelu(self.ff1(self.ln2(x))))))


class SASRecNet(SequenceNet):
    def __init__(self, config: SASRecConfig, n_items: int):
        super().__init__()
        d = config.hidden_size
        self.item_emb = nn.Embedding(n_items + 1, d, padding_idx=0)
        self.pos_emb = nn.Embedding(config.max_len, d)
        self.drop = nn.Dropout(config.dropout)
        inner = config.inner_size or 4 * d
        self.blocks = nn.ModuleList(CausalBlock(d, config.num_heads, inner, config.dropout) for _ in range(config.num_layers))
        self.ln = nn.LayerNorm(d)
        self.apply(self._init)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)
        if isinstance(m, nn.Embedding) and m.padding_idx is not None:
            with torch.no_grad():
                m.weight[m.padding_idx].zero_()

    def encode(self, seqs: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(seqs.shape[1], device=seqs.device)
        x = self.drop(self.item_emb(seqs) + self.pos_emb(positions))
        for block in self.blocks:
            x = block(x)
        return self.ln(x)

    def item_embeddings(self) -> torch.Tensor:
        return self.item_emb.weight


class SASRec(SequentialRecommender):
    config_class = SASRecConfig

    def build_net(self, config: SASRecConfig, n_items: int) -> SASRecNet:
        return SASRecNet(config, n_items)
