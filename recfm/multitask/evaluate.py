"""Scores of a multi-task model per task (RecFound 5.1).

- Generative tasks with options: accuracy and macro-F1 over the label set (the option texts when
  every record has the same options, e.g. sentiments; otherwise the task is a per-record choice,
  like the 20-way next-movie question, and its accuracy is Recall@1).
- Generative tasks without options (free text): the greedy answer (up to ``answer_tokens``
  tokens) against the reference, token-level F1 (SQuAD-style: lower-cased word overlap, averaged
  over records) and exact-match accuracy.
- Embedding tasks: each test query ranks the task's test corpus (every distinct positive and
  hard negative of the task's test records) by cosine; NDCG@20 and MRR@20 of its positive.

:func:`paper_metric` names the figure RecFound's tables report per task: F1 for the generative
tasks (macro-F1 over labels, token F1 for free text), Recall@1 for sequential recommendation,
NDCG@20 for Item2Item, MRR@20 for User2Item and Query2Item.

Every task's metrics keep the per-record outcomes they were computed from (``outcomes``: the
reference and predicted answers, or the positive's rank), so :func:`bootstrap_interval` can put a
95% interval on any of them, and on an average over tasks, without scoring again.
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


def token_f1(truth: str, pred: str) -> float:
    """Word-overlap F1 of an answer (SQuAD's): lower-cased whitespace tokens, counted with multiplicity."""
    from collections import Counter

    t, p = truth.lower().split(), pred.lower().split()
    if not t or not p:
        return float(t == p)
    common = sum((Counter(t) & Counter(p)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(t)
    return 2 * precision * recall / (precision + recall)


def generative_scores(model, records: Sequence[GenRecord], batch_size: int = 8, answer_tokens: int = 128) -> dict:
    with_options = [r for r in records if r.options]
    free = [r for r in records if not r.options]
    truth, pred = [], []
    if with_options:
        picks = model.choose(with_options, batch_size)
        truth += [r.response for r in with_options]
        pred += [r.options[i] for r, i in zip(with_options, picks)]
    if free:
        truth += [r.response.strip().lower() for r in free]
        pred += [a.strip().lower() for a in model.answer(free, max_new_tokens=answer_tokens)]
    acc = float(np.mean([t == p for t, p in zip(truth, pred)]))
    fixed_labels = len({tuple(r.options) for r in with_options}) == 1 and not free
    out = {"records": len(records), "accuracy": acc}
    outcomes = {"truth": truth, "pred": pred}
    if free and not with_options:
        out["token_f1"] = float(np.mean([token_f1(t, p) for t, p in zip(truth, pred)]))
    elif fixed_labels or free:
        labels = list(with_options[0].options) if fixed_labels else None
        out["macro_f1"] = macro_f1(truth, pred, labels)
        outcomes["labels"] = labels
    else:
        out["recall@1"] = acc
    out["outcomes"] = outcomes
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
    return {"records": len(records), "corpus": len(corpus), **ranking_metrics(ranks, k),
            "outcomes": {"ranks": ranks.tolist(), "k": k}}


def score_tasks(model, test: dict[str, Sequence], kinds: dict[str, str], limit: int | None = None,
                answer_tokens: int = 128) -> dict[str, dict]:
    """{task: metrics} over the first ``limit`` test records of every task."""
    out = {}
    for task, records in test.items():
        records = list(records)[:limit] if limit else list(records)
        if not records:
            continue
        with eval_mode(model.model):
            out[task] = (generative_scores(model, records, answer_tokens=answer_tokens) if kinds[task] == "generative"
                         else embedding_scores(model, records))
    return out


def metric_on(metrics: dict, key: str, rows: np.ndarray | None = None) -> float:
    """``key`` of a task's metrics recomputed from its outcomes, on the records ``rows`` (all: None)."""
    o = metrics["outcomes"]
    if "ranks" in o:
        ranks = np.asarray(o["ranks"])
        return ranking_metrics(ranks if rows is None else ranks[rows], o["k"])[key]
    truth, pred = (o["truth"], o["pred"]) if rows is None else \
        ([o["truth"][i] for i in rows], [o["pred"][i] for i in rows])
    if key == "macro_f1":
        return macro_f1(truth, pred, o.get("labels"))
    if key == "token_f1":
        return float(np.mean([token_f1(t, p) for t, p in zip(truth, pred)]))
    return float(np.mean([t == p for t, p in zip(truth, pred)]))  # accuracy, recall@1


def bootstrap_interval(cells: Sequence[tuple[dict, str]], n: int = 1000, level: float = 0.95,
                       seed: int = 0, minus: Sequence[tuple[dict, str]] | None = None) -> tuple[float, float] | None:
    """Percentile bootstrap interval of the mean of ``key`` over the tasks ``cells`` ((metrics, key)
    pairs; one pair = one task's metric): each replicate resamples every task's test records with
    replacement, independently. None when a task has no outcomes (metrics written before they
    were kept).

    With ``minus`` (the same tasks of another variant, scored on the same records in the same order),
    the interval of the difference of the two means: each replicate draws the same records for both
    (a paired bootstrap), so record-to-record difficulty, which both variants share, cancels out."""
    both = [*cells, *(minus or [])]
    if not cells or any("outcomes" not in m for m, _ in both):
        return None
    sizes = [_n_outcomes(m) for m, _ in cells]
    if minus is not None and [_n_outcomes(m) for m, _ in minus] != sizes:
        raise ValueError("a paired interval needs both variants scored on the same records, task for task")
    rng = np.random.default_rng(seed)
    reps = []
    for _ in range(n):
        rows = [rng.integers(0, size, size) for size in sizes]
        value = np.mean([metric_on(m, key, r) for (m, key), r in zip(cells, rows)])
        if minus is not None:
            value -= np.mean([metric_on(m, key, r) for (m, key), r in zip(minus, rows)])
        reps.append(value)
    lo, hi = np.quantile(reps, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def _n_outcomes(metrics: dict) -> int:
    outcomes = metrics["outcomes"]
    return len(outcomes.get("ranks", outcomes.get("truth", [])))


ITEM_TO_ITEM = ("item2item", "emb_item")  # our task name and RecFound's


def paper_metric(task: str, metrics: dict) -> str:
    """The key of ``metrics`` RecFound reports for ``task`` (module doc)."""
    if "ndcg@20" in metrics:
        return "ndcg@20" if task.lower() in ITEM_TO_ITEM else "mrr@20"
    for key in ("recall@1", "token_f1", "macro_f1"):
        if key in metrics:
            return key
    return "accuracy"
