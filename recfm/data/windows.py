"""Next-item training windows and batches, shared by every model that trains on whole sequences
(SASRec, GRU4Rec, the item-level textual-ID model): one place decides which transitions an epoch
trains and how histories are padded."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

SORT_POOL = 64  # batches sorted by length together (see epoch_batches)


def training_windows(train: Sequence[np.ndarray], max_len: int) -> np.ndarray:
    """All training windows, right-padded into one (n_windows, max_len + 1) int64 array.

    A sequence of length n <= max_len + 1 is one window; a longer one is cut from the end
    into windows of max_len + 1 items that overlap by one item, so each transition appears
    in exactly one window. Sequences shorter than 2 items have no transition and are skipped.
    """
    width = max_len + 1
    rows: list[np.ndarray] = []
    for seq in train:
        end = len(seq)
        while end >= 2:
            start = max(0, end - width)
            rows.append(seq[start:end])
            if start == 0:
                break
            end = start + 1
    out = np.zeros((len(rows), width), dtype=np.int64)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


def epoch_batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator, sort_by_length: bool) -> list[np.ndarray]:
    """Window indices per step for one epoch, in random order.

    With ``sort_by_length`` the shuffled windows are sorted by length within pools of
    ``SORT_POOL`` batches before being cut into batches (whose order is then shuffled), so a
    batch holds windows of similar length and little compute goes to padding.
    """
    order = rng.permutation(len(lengths))
    if sort_by_length:
        pool = batch_size * SORT_POOL
        order = np.concatenate(
            [chunk[np.argsort(-lengths[chunk], kind="stable")] for chunk in np.split(order, range(pool, len(order), pool))]
        )
    batches = [order[lo : lo + batch_size] for lo in range(0, len(order), batch_size)]
    if sort_by_length:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


def pad_right(histories: Sequence[Sequence[int]], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep the last ``max_len`` items of each history; right-pad to the longest.
    Returns (seqs (B, T), index of the last item per row). Empty histories read as one padding item."""
    rows = [np.asarray(h, dtype=np.int64)[-max_len:] for h in histories]
    width = max(1, max((len(r) for r in rows), default=1))
    seqs = np.zeros((len(rows), width), dtype=np.int64)
    for i, r in enumerate(rows):
        seqs[i, : len(r)] = r
    last = np.array([max(len(r), 1) - 1 for r in rows], dtype=np.int64)
    return torch.from_numpy(seqs), torch.from_numpy(last)
