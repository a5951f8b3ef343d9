"""Next-item training losses over the tied item embeddings: full softmax, sampled softmax, gBCE.

Every loss takes the hidden states at the target positions ``hidden`` (n, d), the output table
``items`` (n_items, d; row j is item j + 1) and 0-based ``labels`` (n,), and returns the mean loss.

- ``ce``: cross-entropy over all items (the trainer's fused, chunked implementation).
- ``sampled_softmax``: cross-entropy over the positive and ``num_negatives`` items drawn once per
  batch and shared by every target (one (n, 1 + N) matmul). Drawn uniformly, or by training
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

from typing import Literal

import torch
import torch.nn.functional as F

LossName = Literal["ce", "sampled_softmax", "gbce"]
Sampling = Literal["uniform", "popularity"]


def batch_generator(seed: int, epoch: int, step: int, device: torch.device | str = "cpu") -> torch.Generator:
    gen = torch.Generator(device="cpu")
    gen.manual_seed((seed * 1_000_003 + epoch) * 1_000_003 + step)
    return gen


def draw_negatives(n_items: int, num: int, generator: torch.Generator, weights: torch.Tensor | None = None) -> torch.Tensor:
    """``num`` 0-based item indices, with replacement: uniform, or proportional to ``weights``."""
    if weights is None:
        return torch.randint(0, n_items, (num,), generator=generator)
    return torch.multinomial(weights, num, replacement=True, generator=generator)


def _shared_logits(hidden, items, labels, negatives):
    pos = (hidden * items[labels]).sum(-1, keepdim=True)  # (n, 1)
    neg = hidden @ items[negatives].T  # (n, N): one matmul for the whole batch
    accidental = negatives.unsqueeze(0) == labels.unsqueeze(1)
    return pos, neg, accidental


def sampled_softmax_loss(hidden: torch.Tensor, items: torch.Tensor, labels: torch.Tensor, negatives: torch.Tensor,
                         log_q: torch.Tensor | None = None) -> torch.Tensor:
    """Mean cross-entropy over [positive, shared negatives]; ``log_q`` (n_items,) = log of the
    sampling probability of each item, subtracted from every logit (None: uniform, no correction)."""
    pos, neg, accidental = _shared_logits(hidden, items, labels, negatives)
    if log_q is not None:
        pos = pos - log_q[labels].unsqueeze(1)
        neg = neg - log_q[negatives].unsqueeze(0)
    neg = neg.masked_fill(accidental, float("-inf"))
    logits = torch.cat([pos, neg], dim=1)
    return (torch.logsumexp(logits, dim=1) - logits[:, 0]).mean()


def gbce_beta(num_negatives: int, n_items: int, t: float) -> float:
    alpha = num_negatives / max(n_items - 1, 1)
    return alpha * (t * (1 - 1 / alpha) + 1 / alpha)


def gbce_loss(hidden: torch.Tensor, items: torch.Tensor, labels: torch.Tensor, negatives: torch.Tensor,
              beta: float) -> torch.Tensor:
    """Mean gBCE over the targets: ``-beta * log sigmoid(s+) - sum over negatives of log sigmoid(-s-)``."""
    pos, neg, accidental = _shared_logits(hidden, items, labels, negatives)
    positive = beta * F.logsigmoid(pos.squeeze(1))
    negative = F.logsigmoid(-neg).masked_fill(accidental, 0.0).sum(1)
    return -(positive + negative).mean()
