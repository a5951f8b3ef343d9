"""Ranking metrics for one held-out target per case.

A case's ``rank`` is the 0-based position of its target in the model's list, or -1 when
the target is not in the list (a miss at every cutoff). With one relevant item per case:
HR@K = [rank < K], NDCG@K = 1 / log2(rank + 2) if rank < K else 0 (the ideal DCG is 1),
MRR = 1 / (rank + 1) for a hit within the list depth, else 0.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np


def ranks_in_topk(top_items: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Position of each target in its row of ``top_items`` (B, k), -1 when absent."""
    hits = top_items == np.asarray(targets)[:, None]
    found = hits.any(axis=1)
    return np.where(found, hits.argmax(axis=1), -1).astype(np.int64)


def metrics_from_ranks(ranks: np.ndarray, ks: Iterable[int] = (5, 10, 20)) -> dict[str, float]:
    ranks = np.asarray(ranks, dtype=np.int64)
    if ranks.size == 0:
        raise ValueError("no evaluation cases")
    hit = ranks >= 0
    out: dict[str, float] = {}
    for k in sorted(ks):
        within = hit & (ranks < k)
        out[f"hr@{k}"] = float(within.mean())
        out[f"ndcg@{k}"] = float(np.where(within, 1.0 / np.log2(np.maximum(ranks, 0) + 2.0), 0.0).mean())
    out["mrr"] = float(np.where(hit, 1.0 / (np.maximum(ranks, 0) + 1.0), 0.0).mean())
    return out
