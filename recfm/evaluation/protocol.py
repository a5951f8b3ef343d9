"""The evaluation protocol every model in recfm is measured with.

Leave-one-out, ranking over ALL items (no sampled negatives). The model is asked for its
top ``depth`` items per case through :meth:`Recommender.recommend`; HR/NDCG use the
cutoffs ``ks`` and MRR the whole returned list (so MRR is MRR@depth; depth defaults to
max(ks); set ``depth`` to the catalog size for an untruncated MRR on score-based models).
"""

from __future__ import annotations

import time
from typing import Callable

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from recfm import distributed
from recfm.data.split import EvalCases
from recfm.evaluation.metrics import metrics_from_ranks, ranks_in_topk
from recfm.recommender import Recommender


class Protocol(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ks: list[int] = Field(default_factory=lambda: [5, 10, 20], description="cutoffs for HR@K and NDCG@K")
    exclude_history: bool = Field(
        False, description="remove the case's history items from the ranking (a target seen before then counts as a miss)"
    )
    depth: int | None = Field(None, ge=1, description="list length requested from the model; MRR is computed within it")
    batch_size: int = Field(256, ge=1, description="histories per recommend() call while scoring")
    selection_metric: str = Field("ndcg@10", description="validation metric used for early stopping and model selection")
    max_cases: int | None = Field(
        None, ge=1, description="final scores of a run on a seeded sample of this many cases per split (None = every "
        "case); for models whose full evaluation is too slow (beam search on CPU); recorded in metrics.json",
    )

    @model_validator(mode="after")
    def _check_cutoffs(self) -> "Protocol":
        # A list shorter than a cutoff would silently report HR@K/NDCG@K of a shorter list.
        if not self.ks or min(self.ks) < 1:
            raise ValueError(f"ks must be a non-empty list of positive cutoffs, got {self.ks}")
        if self.depth is not None and self.depth < max(self.ks):
            k = max(self.ks)
            raise ValueError(f"depth={self.depth} is below the largest cutoff {k}: HR/NDCG@{k} would be wrong")
        produced = {"mrr"} | {f"{m}@{k}" for k in self.ks for m in ("hr", "ndcg")}
        if self.selection_metric not in produced:
            raise ValueError(f"selection_metric {self.selection_metric!r} is not computed with ks={self.ks}; choose from {sorted(produced)}")
        return self

    @property
    def list_depth(self) -> int:
        return self.depth or max(self.ks)

    def describe(self) -> dict:
        """What goes into metrics.json so a number can never be read without its protocol."""
        return {
            "split": "leave-one-out (last item test, second-to-last validation)",
            "ranking": "full ranking over all items, no sampled negatives",
            "ks": list(self.ks),
            "exclude_history": self.exclude_history,
            "mrr_depth": self.list_depth,
            "selection": f"validation {self.selection_metric}; test scored once",
            "cases": "all" if self.max_cases is None else f"seeded sample of at most {self.max_cases} per split (seed 0)",
        }

    def sample(self, cases: EvalCases) -> EvalCases:
        """``cases``, or a seeded sample of ``max_cases`` of them (the same sample on every run)."""
        if self.max_cases is None or self.max_cases >= len(cases):
            return cases
        return cases.subset(np.sort(np.random.default_rng(0).choice(len(cases), self.max_cases, replace=False)))


def evaluate(
    model: Recommender,
    cases: EvalCases,
    protocol: Protocol | None = None,
    progress: Callable[[int], None] | None = None,
) -> dict[str, float]:
    """Metrics of ``model`` on ``cases``; ``progress(n)`` is called after each batch of n cases."""
    protocol = protocol or Protocol()
    # Under several processes each scores its shard of the cases; the ranks are gathered by case.
    mine = distributed.shard(len(cases))
    local = cases if len(mine) == len(cases) else cases.subset(mine)
    ranks = np.empty(len(local), dtype=np.int64)
    start = time.perf_counter()
    for lo in range(0, len(local), protocol.batch_size):
        hi = min(lo + protocol.batch_size, len(local))
        histories = local.histories[lo:hi]
        exclude = [set(h.tolist()) for h in histories] if protocol.exclude_history else None
        top = model.recommend(histories, protocol.list_depth, exclude=exclude)
        ranks[lo:hi] = ranks_in_topk(top.items, local.targets[lo:hi])
        if progress is not None:
            progress(hi - lo)
    ranks = distributed.gather_by_index(len(cases), mine, ranks)
    metrics = metrics_from_ranks(ranks, protocol.ks)
    metrics["cases"] = len(cases)
    metrics["eval_seconds"] = round(time.perf_counter() - start, 3)
    return metrics
