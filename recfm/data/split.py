"""Leave-one-out split. The only place that decides what a model may see.

For a user with items ``s[0..n-1]`` (oldest first):
- training sequence: ``s[:n-2]``
- validation case: history ``s[:n-2]``, target ``s[n-2]``
- test case: history ``s[:n-1]``, target ``s[n-1]``
Users with fewer than 3 interactions have no evaluation cases; all their items train.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class EvalCases:
    """One evaluation stage: ``histories[i]`` is the model input, ``targets[i]`` the held-out item."""

    users: np.ndarray
    histories: list[np.ndarray]
    targets: np.ndarray

    def __len__(self) -> int:
        return len(self.targets)

    def subset(self, index: np.ndarray | slice) -> "EvalCases":
        idx = np.arange(len(self))[index]
        return EvalCases(self.users[idx], [self.histories[i] for i in idx], self.targets[idx])


@dataclass(frozen=True)
class LeaveOneOut:
    train: list[np.ndarray]
    """Per user (indexed like the dataset's users) the training items, oldest first."""
    valid: EvalCases
    test: EvalCases

    def train_interactions(self) -> np.ndarray:
        return np.concatenate(self.train) if self.train else np.zeros(0, dtype=np.int64)


def leave_one_out(offsets: np.ndarray, items: np.ndarray) -> LeaveOneOut:
    train, v_users, v_hist, v_tgt, t_users, t_hist, t_tgt = [], [], [], [], [], [], []
    for u in range(len(offsets) - 1):
        seq = items[offsets[u] : offsets[u + 1]]
        if len(seq) < 3:
            train.append(seq.copy())
            continue
        train.append(seq[:-2].copy())
        v_users.append(u)
        v_hist.append(seq[:-2].copy())
        v_tgt.append(seq[-2])
        t_users.append(u)
        t_hist.append(seq[:-1].copy())
        t_tgt.append(seq[-1])
    as_arr = lambda x: np.asarray(x, dtype=np.int64)  # noqa: E731
    return LeaveOneOut(
        train=train,
        valid=EvalCases(as_arr(v_users), v_hist, as_arr(v_tgt)),
        test=EvalCases(as_arr(t_users), t_hist, as_arr(t_tgt)),
    )
