"""Click-prediction metrics over grouped candidate lists (RecBench-MD style).

Input is one row per (user, candidate) pair: ``groups[i]`` names the candidate list the pair
belongs to (one list per evaluated user, or per training position), ``labels[i]`` is 1 for a
click and 0 otherwise, ``scores[i]`` the model's score (higher = more likely clicked).

- ``auc``: global ROC AUC over all pairs, the Mann-Whitney statistic: the share of
  (positive, negative) pairs the model orders correctly, a tie counting one half. Computed
  from average ranks (tied scores share the mean of their ranks).
- ``gauc``: the same AUC within each group, then the UNWEIGHTED mean over the groups that
  hold at least one positive and one negative; ``gauc_groups`` says how many groups counted.
  (Some papers weight each group by its size or clicks; with a fixed number of candidates per
  group, as ``recfm.bench.tasks`` builds them, the two agree.)
- ``ndcg@k``: within each group, candidates sorted by score descending, binary gains,
  DCG@k = sum over the top k of label / log2(position + 2), divided by the ideal DCG@k of that
  group (its positives all on top). Averaged over the groups with at least one positive.
- ``mrr``: within each group, 1 / (1-based position of the FIRST positive) in that order,
  averaged over the groups with at least one positive. With several positives this is the
  reciprocal rank of the best-placed one, not label-ranking average precision.

Ties (NDCG and MRR only; AUC and GAUC give ties half credit). Equal scores within a group keep
the order in which the pairs appear in the input ("stable order of appearance"). That rule is
deterministic but not neutral: a model that outputs a constant gets the ranking of the input
order, so candidate lists must not be stored positive-first. ``recfm.bench.tasks`` shuffles
each list with a seeded generator for this reason. ``ties="pessimistic"`` instead places
negatives ahead of tied positives (a lower bound that no input order can inflate).

Undefined values are NaN, not errors: ``auc`` when the data hold only one class, ``gauc``
when no group holds both classes, ``ndcg@k`` and ``mrr`` when no group holds a positive.
Everything is vectorised (one lexsort per ordering, no loop over pairs or groups); 100K pairs
take about a tenth of a second on one CPU core.
"""

from __future__ import annotations

from typing import Iterable, Literal

import numpy as np


def _check_inputs(groups, labels, scores) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    groups = np.asarray(groups)
    labels = np.asarray(labels)
    scores = np.asarray(scores)
    for name, a in (("groups", groups), ("labels", labels), ("scores", scores)):
        if a.ndim != 1:
            raise ValueError(f"{name} must be 1-D, got shape {a.shape}")
    if not (len(groups) == len(labels) == len(scores)):
        raise ValueError(
            f"groups, labels and scores must have equal lengths, got {len(groups)}, {len(labels)}, {len(scores)}"
        )
    if len(labels) == 0:
        raise ValueError("no pairs to evaluate")
    if labels.dtype == bool:
        labels = labels.astype(np.int8)
    if not np.issubdtype(labels.dtype, np.number):
        raise ValueError(f"labels must be numeric 0/1, got dtype {labels.dtype}")
    bad = ~((labels == 0) | (labels == 1))
    if bad.any():
        raise ValueError(f"labels must be 0 or 1; found {labels[bad][:5].tolist()} (first of {int(bad.sum())})")
    if not (np.issubdtype(scores.dtype, np.number) or scores.dtype == bool):
        raise ValueError(f"scores must be numeric, got dtype {scores.dtype}")
    scores = scores.astype(np.float64)
    finite = np.isfinite(scores)
    if not finite.all():
        raise ValueError(f"scores must be finite; {int((~finite).sum())} are NaN or infinite")
    return groups, labels.astype(np.int64), scores


def _group_codes(groups: np.ndarray) -> tuple[np.ndarray, int]:
    """Group labels of any sortable dtype -> codes 0..G-1 (in sorted label order)."""
    _, codes = np.unique(groups, return_inverse=True)
    codes = codes.reshape(-1).astype(np.int64)
    return codes, int(codes.max()) + 1


def _grouped_auc(codes: np.ndarray, n_groups: int, labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-group Mann-Whitney AUC (ties = 1/2) and the mask of groups where it is defined."""
    n = len(labels)
    order = np.lexsort((scores, codes))  # by group, then score ascending
    c, s, y = codes[order], scores[order], labels[order]
    # Runs of equal (group, score): each member gets the run's average position.
    new_run = np.empty(n, dtype=bool)
    new_run[0] = True
    new_run[1:] = (c[1:] != c[:-1]) | (s[1:] != s[:-1])
    run_start = np.flatnonzero(new_run)
    run_end = np.append(run_start[1:], n)
    run_mid = (run_start + run_end - 1) / 2.0  # mean 0-based position of the run
    run_id = np.cumsum(new_run) - 1
    size = np.bincount(c, minlength=n_groups)
    group_start = np.concatenate([[0], np.cumsum(size)[:-1]])
    rank = run_mid[run_id] - group_start[c] + 1.0  # 1-based average rank within the group
    n_pos = np.bincount(c, weights=y, minlength=n_groups)
    n_neg = size - n_pos
    rank_sum = np.bincount(c, weights=y * rank, minlength=n_groups)
    defined = (n_pos > 0) & (n_neg > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        auc = (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)
    return np.where(defined, auc, np.nan), defined


def click_metrics(
    groups: np.ndarray,
    labels: np.ndarray,
    scores: np.ndarray,
    ks: Iterable[int] = (1, 5, 10),
    ties: Literal["stable", "pessimistic"] = "stable",
) -> dict[str, float]:
    """AUC, GAUC (unweighted mean over groups with both classes), NDCG@k and MRR; see the module doc.

    ``groups`` may be any 1-D array of sortable labels (ints, strings); the pairs of a group need
    not be contiguous. Returns ``{"auc", "gauc", "gauc_groups", "ndcg@k"..., "mrr"}``, where
    ``gauc_groups`` is the (integer) number of groups averaged into ``gauc``.
    """
    groups, labels, scores = _check_inputs(groups, labels, scores)
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise ValueError(f"ks must be positive cutoffs, got {ks}")
    if ties not in ("stable", "pessimistic"):
        raise ValueError(f"ties must be 'stable' or 'pessimistic', got {ties!r}")
    n = len(labels)
    codes, n_groups = _group_codes(groups)

    out: dict[str, float] = {}
    auc, _ = _grouped_auc(np.zeros(n, dtype=np.int64), 1, labels, scores)
    out["auc"] = float(auc[0])
    gauc, defined = _grouped_auc(codes, n_groups, labels, scores)
    out["gauc"] = float(gauc[defined].mean()) if defined.any() else float("nan")
    out["gauc_groups"] = int(defined.sum())

    # Ranking order: group, score descending, then (pessimistic: negatives first,) input position.
    keys = (np.arange(n), labels, -scores, codes) if ties == "pessimistic" else (np.arange(n), -scores, codes)
    order = np.lexsort(keys)
    c, y = codes[order], labels[order]
    size = np.bincount(c, minlength=n_groups)
    group_start = np.concatenate([[0], np.cumsum(size)[:-1]])
    pos = np.arange(n) - group_start[c]  # 0-based position within the group
    discount = 1.0 / np.log2(pos + 2.0)
    n_pos = np.bincount(c, weights=y, minlength=n_groups).astype(np.int64)
    has_pos = n_pos > 0
    # Ideal DCG@k of a group with p positives: sum of the first min(p, k) discounts.
    cum_discount = np.concatenate([[0.0], np.cumsum(1.0 / np.log2(np.arange(int(size.max())) + 2.0))])
    for k in ks:
        dcg = np.bincount(c, weights=y * discount * (pos < k), minlength=n_groups)
        idcg = cum_discount[np.minimum(n_pos, k)]
        out[f"ndcg@{k}"] = float((dcg[has_pos] / idcg[has_pos]).mean()) if has_pos.any() else float("nan")

    positive = y == 1
    pc, pp = c[positive], pos[positive]  # positives in ranking order, grouped
    first = np.ones(len(pc), dtype=bool)
    first[1:] = pc[1:] != pc[:-1]
    out["mrr"] = float((1.0 / (pp[first] + 1.0)).mean()) if len(pc) else float("nan")
    return out
