"""Scores of a multi-task model per task (RecFound 5.1).

- Generative tasks with options: accuracy and macro-F1 over the label set (the option texts when
  every record has the same options, e.g. sentiments; otherwise the task is a per-record choice,
  like the 20-way next-movie question, and its accuracy is Recall@1).
- Generative tasks without options: exact match of the greedy answer (case and surrounding
  spaces ignored), accuracy and macro-F1 over the reference answers.
- Embedding tasks: each test query ranks the task's test corpus (every distinct positive and
  hard negative of the task's test records) by cosine; NDCG@20 and MRR@20 of its positive.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from recfm.compute import eval_mode
from recfm.evaluation.metrics import metrics_from_ranks
from recfm.multitask.records import EmbRecord, GenRecord


def macro_f1(truth: Sequence[str], pred: Sequence[str], labels: Sequence[str] | None = None) -> float:
    """Macro-averaged F1 over ``labels`` (default: the labels present in ``truth``)."""
    labels = sorted(set(truth)) if labels is None else list(labels)
    scores = []
    for lab in labels:
        tp = sum(t == lab and p == lab for t, p in zip(truth, pred))
        fp = sum(t != lab and p == lab for t, p in zip(truth, pred))
        fn = sum(t == lab and p != lab for t, p in zip(truth, pred))
        scores.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores)) if scores else float("nan")


def generative_scores(model, records: Sequence[GenRecord], batch_size: int = 8) -> dict:
    with_options = [r for r in records if r.options]
    free = [r for r in records if not r.options]
    truth, pred = [], []
    if with_options:
        picks = model.choose(with_options, batch_size)
        truth += [r.response for r in with_options]
        pred += [r.options[i] for r, i in zip(with_options, picks)]
    if free:
        truth += [r.response.strip().lower() for r in free]
        pred += [a.strip().lower() for a in model.answer(free)]
    acc = float(np.mean([t == p for t, p in zip(truth, pred)]))
    fixed_labels = len({tuple(r.options) for r in with_options}) == 1 and not free
    out = {"records": len(records), "accuracy": acc}
    if fixed_labels or free:
        out["macro_f1"] = macro_f1(truth, pred, with_options[0].options if fixed_labels else None)
    else:
        out["recall@1"] = acc
    return out


def ranking_metrics(ranks: np.ndarray, k: int = 20) -> dict:
    """NDCG@k and MRR@k of 0-based ranks of the single relevant item (the protocol's metrics,
    with ranks beyond k counted as misses so that MRR is cut at k too)."""
    m = metrics_from_ranks(np.where(np.asarray(ranks) < k, ranks, -1), [k])
    return {f"ndcg@{k}": m[f"ndcg@{k}"], f"mrr@{k}": m["mrr"]}


@torch.no_grad()
def embedding_scores(model, records: Sequence[EmbRecord], batch_size: int = 16, k: int = 20) -> dict:
    corpus = list(dict.fromkeys([t for r in records for t in (r.positive, *r.negatives)]))
    index = {t: i for i, t in enumerate(corpus)}
    task = records[0].task
    docs = torch.cat([model.embed([EmbRecord.item_text(t) for t in corpus[s : s + batch_size]],
                                  [task] * len(corpus[s : s + batch_size])) for s in range(0, len(corpus), batch_size)])
    queries = torch.cat([model.embed([r.query_text() for r in records[s : s + batch_size]],
                                     [r.task for r in records[s : s + batch_size]])
                         for s in range(0, len(records), batch_size)])
    sims = queries @ docs.T
    target = torch.tensor([index[r.positive] for r in records])
    own = sims[torch.arange(len(records)), target]
    ranks = ((sims >= own[:, None]).sum(1) - 1).cpu().numpy()  # 0 = best; ties count against the positive
    return {"records": len(records), "corpus": len(corpus), **ranking_metrics(ranks, k)}


def score_tasks(model, test: dict[str, Sequence], kinds: dict[str, str], limit: int | None = None) -> dict[str, dict]:
    """{task: metrics} over the first ``limit`` test records of every task."""
    out = {}
    for task, records in test.items():
        records = list(records)[:limit] if limit else list(records)
        if not records:
            continue
        with eval_mode(model.model):
            out[task] = (generative_scores(model, records) if kinds[task] == "generative"
                         else embedding_scores(model, records))
    return out
