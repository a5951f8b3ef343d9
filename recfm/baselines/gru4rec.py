"""GRU4Rec (Hidasi et al., ICLR 2016) in its common next-item form (as in RecBole):
item embedding -> dropout -> GRU layers -> linear projection to the embedding size,
scored against the (tied) item embeddings. Trained with full-softmax cross-entropy by the
shared trainer (:mod:`recfm.baselines.trainer`).

Sequences are right-padded: a GRU reads left to right, so padding after the last item
never changes the hidden state that is scored.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from recfm.compute import FastDropout
from recfm.baselines.trainer import SequenceNet, SequentialRecommender, SequentialTrainConfig


class GRU4RecConfig(SequentialTrainConfig):
    name: Literal["gru4rec"] = Field("gru4rec", description="the model-table row (recfm models)")
    embedding_size: int = Field(64, ge=1, description="item embedding width (also the output width)")
    hidden_size: int = Field(128, ge=1, description="GRU state width")
    num_layers: int = Field(1, ge=1, description="stacked GRU layers")
    dropout: float = Field(0.3, ge=0, lt=1, description="dropout on the input embeddings and between GRU layers")


class GRU4RecNet(SequenceNet):
    def __init__(self, config: GRU4RecConfig, n_items: int):
        super().__init__()
        self.item_emb = nn.Embedding(n_items + 1, config.embedding_size, padding_idx=0)
        self.item_dropout = config.item_dropout
        self.drop = FastDropout(config.dropout)
        self.gru = nn.GRU(
            config.embedding_size,
            config.hidden_size,
            num_layers=config.num_layers,
            batch_first=True,
            dropout=config.dropout if config.num_layers > 1 else 0.0,
        )
        self.proj = nn.Linear(config.hidden_size, config.embedding_size)
        nn.init.normal_(self.item_emb.weight, std=0.02)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()
        for name, p in self.gru.named_parameters():
            (nn.init.xavier_uniform_ if name.startswith("weight") else nn.init.zeros_)(p)
        nn.init.xavier_uniform_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def encode(self, seqs: torch.Tensor, items: torch.Tensor | None = None) -> torch.Tensor:
        out, _ = self.gru(self.drop(F.embedding(seqs, self.item_embeddings() if items is None else items, padding_idx=0)))
        return self.proj(out)


class GRU4Rec(SequentialRecommender):
    config_class = GRU4RecConfig

    def build_net(self, config: GRU4RecConfig, n_items: int) -> GRU4RecNet:
        return GRU4RecNet(config, n_items)
