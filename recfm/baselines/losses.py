"""Next-item training losses over the tied item embeddings: full softmax, sampled softmax, gBCE.

Every loss takes the hidden states at the target positions ``hidden`` (n, d), the output table
``items`` (n_items, d; row j is item j + 1) and 0-based ``labels`` (n,), and returns the mean loss.

- ``ce``: cross-entropy over all items (the trainer's fused, chunked implementation).
- ``sampled_softmax``: cross-entropy over the positive and ``num_negatives`` items, drawn once per
  batch and shared by every target (one (n, 1 + N) matmul), or drawn once per training sequence
  and shared by that sequence's targets (one batched matmul; ``rows`` says which sequence each
  target belongs to), or drawn for every target position (``(n, N)``: the published
  sampled-softmax SASRec, RecTools'; memory n x N x d per step). Per-sequence and per-position
  negatives push many more item embeddings away per step than ``N``. Drawn uniformly, or by training
  popularity with the logQ correction (each logit minus log q(item), Yi et al. 2019), so the
  estimate aims at the full softmax rather than at a popularity-biased one. A negative that is
  the target itself is masked out of that target's row.
- ``gbce``: gSASRec's generalised binary cross-entropy (Petrov & Macdonald, RecSys 2023) over the
  same shared negatives: ``-beta * log sigmoid(s+) - sum log(1 - sigmoid(s-))`` with
  ``beta = alpha * (t * (1 - 1/alpha) + 1/alpha)``, ``alpha = N / (n_items - 1)`` the sampling rate
  and ``t`` in [0, 1] the calibration: ``t = 0`` gives ``beta = 1``, plain BCE with sampled
  negatives; ``t = 1`` gives ``beta = alpha``, fully corrected for sampling (gSASRec uses 0.75).

Negatives come from a generator seeded by (seed, epoch, step): the same on every process and after
a resume, with no extra state to checkpoint.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F

from recfm.compute import widened

LossName = Literal["ce", "sampled_softmax", "gbce"]
Sampling = Literal["uniform", "popularity"]
NegativesPer = Literal["batch", "sequence", "position"]


def batch_generator(seed: int, epoch: int, step: int, device: torch.device | str = "cpu") -> torch.Generator:
    gen = torch.Generator(device="cpu")
    gen.manual_seed((seed * 1_000_003 + epoch) * 1_000_003 + step)
    return gen


def draw_negatives(n_items: int, num: int, generator: torch.Generator, weights: torch.Tensor | None = None,
                   rows: int | None = None, positions: int | None = None) -> torch.Tensor:
    """``num`` 0-based item indices, with replacement: uniform, or proportional to ``weights``;
    (num,) shared by the batch, (rows, num) when each of ``rows`` sequences gets its own, or
    (rows, positions, num) when every position of every sequence does."""
    shape = tuple(k for k in (rows, positions) if k is not None) + (num,)
    if weights is None:
        return torch.randint(0, n_items, shape, generator=generator)
    flat = torch.multinomial(weights, math.prod(shape), replacement=True, generator=generator)
    return flat.view(shape)


def _negative_logits(hidden: torch.Tensor, items: torch.Tensor, negatives: torch.Tensor,
                     rows: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, N) logits of each target's negatives and their (n or 1, N) item indices."""
    if negatives.dim() == 1:
        return hidden @ items[negatives].T, negatives.unsqueeze(0)  # one matmul for the whole batch
    if rows is None:  # (n, N): every target its own
        return torch.einsum("nd,nkd->nk", hidden, items[negatives]), negatives
    # per sequence: lay the targets out as (sequences, longest, d) again for one batched matmul
    counts = torch.bincount(rows, minlength=negatives.shape[0])
    starts = torch.cumsum(counts, 0) - counts
    column = torch.arange(len(rows), device=rows.device) - starts[rows]
    padded = hidden.new_zeros(negatives.shape[0], int(counts.max()), hidden.shape[1])
    padded = padded.index_put((rows, column), hidden)
    logits = torch.bmm(padded, items[negatives].transpose(1, 2))[rows, column]
    return logits, negatives[rows]


def _logits(hidden, items, labels, negatives, rows):
    pos = (hidden * items[labels]).sum(-1, keepdim=True)  # (n, 1)
    neg, ids = _negative_logits(hidden, items, negatives, rows)
    # float32 from here on: under autocast the matmuls may have been bf16, the softmax must not be
    return widened(pos), widened(neg), ids, ids == labels.unsqueeze(1)


def sampled_softmax_loss(hidden: torch.Tensor, items: torch.Tensor, labels: torch.Tensor, negatives: torch.Tensor,
                         log_q: torch.Tensor | None = None, rows: torch.Tensor | None = None) -> torch.Tensor:
    """Mean cross-entropy over [positive, negatives]; ``negatives`` (N,) shared by all targets,
    (R, N) per sequence with ``rows`` (n,) each target's sequence, targets of a sequence contiguous,
    or (n, N) per target with ``rows`` None;
    ``log_q`` (n_items,) = log of the sampling probability of each item, subtracted from every logit
    (None: uniform, no correction)."""
    pos, neg, ids, accidental = _logits(hidden, items, labels, negatives, rows)
    if log_q is not None:
        pos = pos - log_q[labels].unsqueeze(1)
        neg = neg - log_q[ids]
    neg = neg.masked_fill(accidental, float("-inf"))
    logits = torch.cat([pos, neg], dim=1)
    return (torch.logsumexp(logits, dim=1) - logits[:, 0]).mean()


def gbce_beta(num_negatives: int, n_items: int, t: float) -> float:
    alpha = num_negatives / max(n_items - 1, 1)
    return alpha * (t * (1 - 1 / alpha) + 1 / alpha)


def gbce_loss(hidden: torch.Tensor, items: torch.Tensor, labels: torch.Tensor, negatives: torch.Tensor,
              beta: float, rows: torch.Tensor | None = None) -> torch.Tensor:
    """Mean gBCE over the targets: ``-beta * log sigmoid(s+) - sum over negatives of log sigmoid(-s-)``
    (negatives and rows as in ``sampled_softmax_loss``)."""
    pos, neg, _, accidental = _logits(hidden, items, labels, negatives, rows)
    positive = beta * F.logsigmoid(pos.squeeze(1))
    negative = F.logsigmoid(-neg).masked_fill(accidental, 0.0).sum(1)
    return -(positive + negative).mean()
