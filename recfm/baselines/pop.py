"""MostPopular: every user gets the items most consumed in the training split."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from recfm.data.split import LeaveOneOut
from recfm.recommender import ScoringRecommender, TrainableRecommender


class PopConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field("pop", description="the model-table row (recfm models)")


class MostPopular(ScoringRecommender, TrainableRecommender):
    def __init__(self, config: PopConfig, n_items: int):
        self.config = config
        self.n_items = n_items
        self.counts = torch.zeros(n_items + 1)

    def fit(self, split: LeaveOneOut, protocol=None, log=print) -> dict:
        # Counts come from training sequences only: validation/test targets never reach the model.
        counts = np.bincount(split.train_interactions(), minlength=self.n_items + 1)
        self.counts = torch.as_tensor(counts, dtype=torch.float32)
        log(f"pop: counted {int(counts.sum())} training interactions over {self.n_items} items")
        return {"epochs": 0}

    def score(self, histories: Sequence[Sequence[int]]) -> torch.Tensor:
        return self.counts.unsqueeze(0).expand(len(histories), -1).clone()

    def save(self, directory: Path) -> None:
        Path(directory).mkdir(parents=True, exist_ok=True)
        (Path(directory) / "counts.json").write_text(json.dumps(self.counts.long().tolist()))

    @classmethod
    def load(cls, directory: Path, config: PopConfig, n_items: int) -> "MostPopular":
        model = cls(config, n_items)
        path = Path(directory) / "counts.json"
        counts = json.loads(path.read_text())
        if not isinstance(counts, list) or len(counts) != n_items + 1:
            size = len(counts) if isinstance(counts, list) else type(counts).__name__
            raise ValueError(f"{path} holds {size} counts, but the dataset has {n_items} items "
                             f"(+1 padding = {n_items + 1}): it belongs to other data")
        model.counts = torch.tensor(counts, dtype=torch.float32)
        return model
