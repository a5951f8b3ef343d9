"""S2Sched: step-wise convergence-oriented sample scheduler (RecFound 4.3), one per task type.

Embedding and generative tasks get separate schedulers and batch budgets (their losses,
InfoNCE and cross-entropy, live on different scales). Each step after the warmup:

- alpha_i(t): slope of task i's normalized validation loss (loss / its first measured loss) by
  least squares over the last ``window`` (L) measurements, x = the training step;
- eq. (3) gamma_inter_i = -softmax_i(K * alpha_i / sum_j |alpha_j|), K = number of tasks;
- eq. (4) gamma_intra_i = softmax_i(-L * alpha_i(t) / sum_{s in the last L steps} |alpha_i(s)|);
- eq. (5) beta = min(t * softmax_t(-tau * t * max_i alpha_i(t) / sum_{k<=t} max_i |alpha_i(k)|), 1):
  the softmax runs over the history k = 1..t of the scheduled steps and beta reads its last entry
  (t * softmax = 1 when every step looks alike, so beta = 1 means "balanced");
- eq. (6) omega_i = softmax_i(-beta * gamma_inter_i + (1 - beta) * gamma_intra_i);
- 4.3.2: n_i = floor(B * omega_i) samples of task i in the next batch of B.

The equations are implemented as written in the paper. Read together, the inter term gives
more samples to tasks whose validation loss falls slowest or rises (relative to the other tasks
of the type), and the intra term to tasks whose loss falls faster than in their own recent
history. One addition to 4.3.2: the B - sum_i floor(B * omega_i) samples that flooring leaves
over go to the largest remainders (ties: the lower task index), so every batch has exactly B
samples. During the warmup (the first ``warmup_ratio`` of the steps) sampling is uniform (the same
largest-remainder rule) while the validation losses accumulate.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from pydantic import BaseModel, ConfigDict, Field


class S2SchedConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    warmup_ratio: float = Field(0.1, ge=0, lt=1, description="share of the steps with uniform sampling (paper: 10%)")
    window: int = Field(64, ge=2, description="L: slope regression window and eq. (4) history (paper: 64)")
    temperature: float = Field(10.0, gt=0, description="tau of eq. (5) (paper: 10)")
    valid_samples: int = Field(128, ge=1, description="fixed validation sample per task (paper: 128)")
    eval_every: int = Field(1, ge=1, description="measure validation losses every this many steps (paper: 1)")


def _softmax(x: np.ndarray) -> np.ndarray:
    z = np.asarray(x, dtype=np.float64)
    z = z - z.max()
    e = np.exp(z)
    return e / e.sum()


def _safe_ratio(num: np.ndarray, den: float | np.ndarray) -> np.ndarray:
    """num / den with 0 where den is 0 (all slopes exactly flat: no information, no preference)."""
    num = np.asarray(num, dtype=np.float64)
    den = np.broadcast_to(np.asarray(den, dtype=np.float64), num.shape)
    return np.divide(num, den, out=np.zeros_like(num), where=den != 0)


def regression_slope(steps: np.ndarray, values: np.ndarray) -> float:
    """Least-squares slope of values against steps; 0 for fewer than two points."""
    x, y = np.asarray(steps, dtype=np.float64), np.asarray(values, dtype=np.float64)
    if len(x) < 2:
        return 0.0
    xc = x - x.mean()
    den = float((xc * xc).sum())
    return 0.0 if den == 0 else float((xc * (y - y.mean())).sum() / den)


def inter_task_rate(alpha: np.ndarray) -> np.ndarray:
    """Eq. (3): gamma_inter = -softmax(K * alpha / sum |alpha|)."""
    alpha = np.asarray(alpha, dtype=np.float64)
    return -_softmax(len(alpha) * _safe_ratio(alpha, np.abs(alpha).sum()))


def intra_task_rate(alpha_history: np.ndarray) -> np.ndarray:
    """Eq. (4) from ``alpha_history`` [L', K] (the last L' <= L slope vectors, the newest last):
    softmax_i(-L' * alpha_i(t) / sum_s |alpha_i(s)|)."""
    h = np.asarray(alpha_history, dtype=np.float64)
    return _softmax(-len(h) * _safe_ratio(h[-1], np.abs(h).sum(0)))


def balancing_weight(alpha_history: np.ndarray, temperature: float) -> float:
    """Eq. (5) from ``alpha_history`` [t, K], alpha(k) of every scheduled step so far (the newest last):
    min(t * softmax_k(-tau * t * max_i alpha_i(k) / sum_k max_i |alpha_i(k)|)[t], 1)."""
    h = np.atleast_2d(np.asarray(alpha_history, dtype=np.float64))
    t = len(h)
    logits = -temperature * t * _safe_ratio(h.max(1), np.abs(h).max(1).sum())
    return float(min(t * _softmax(logits)[-1], 1.0))


def sample_ratio(gamma_inter: np.ndarray, gamma_intra: np.ndarray, beta: float) -> np.ndarray:
    """Eq. (6): omega = softmax(-beta * gamma_inter + (1 - beta) * gamma_intra)."""
    return _softmax(-beta * np.asarray(gamma_inter) + (1.0 - beta) * np.asarray(gamma_intra))


def allocate(batch_size: int, weights: np.ndarray) -> np.ndarray:
    """n_i = floor(B * w_i), then the leftover samples to the largest remainders (ties: lower index)."""
    w = np.asarray(weights, dtype=np.float64)
    raw = batch_size * w / w.sum()
    counts = np.floor(raw).astype(np.int64)
    left = batch_size - int(counts.sum())
    if left > 0:
        order = np.lexsort((np.arange(len(w)), -(raw - counts)))  # largest remainder first, then index
        counts[order[:left]] += 1
    return counts


@dataclass
class S2Sched:
    """The scheduler of one task type: feed it validation losses, ask it for the next batch's counts."""

    tasks: list[str]
    batch_size: int
    total_steps: int
    config: S2SchedConfig = field(default_factory=S2SchedConfig)
    steps: list[int] = field(default_factory=list)  # steps at which validation losses were measured
    losses: list[np.ndarray] = field(default_factory=list)  # normalized validation losses [K] per measurement
    alphas: list[np.ndarray] = field(default_factory=list)  # alpha(t) [K] per scheduled step
    log: list[dict] = field(default_factory=list)  # one record per allocation (step, ratios, counts, beta)
    _first: np.ndarray | None = None

    def __post_init__(self) -> None:
        if not self.tasks:
            raise ValueError("S2Sched needs at least one task")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")

    @property
    def warmup_steps(self) -> int:
        return int(self.config.warmup_ratio * self.total_steps)

    def state(self) -> dict:
        """JSON-able state (a checkpoint); :meth:`restore` puts it back."""
        return {"steps": self.steps, "losses": [x.tolist() for x in self.losses],
                "alphas": [x.tolist() for x in self.alphas], "log": self.log,
                "first": None if self._first is None else self._first.tolist()}

    def restore(self, state: dict) -> None:
        self.steps = list(state["steps"])
        self.losses = [np.array(x, dtype=np.float64) for x in state["losses"]]
        self.alphas = [np.array(x, dtype=np.float64) for x in state["alphas"]]
        self.log = list(state["log"])
        self._first = None if state["first"] is None else np.array(state["first"], dtype=np.float64)

    def wants_validation(self, step: int) -> bool:
        return step % self.config.eval_every == 0

    def record(self, step: int, losses: dict[str, float]) -> None:
        """Validation losses of every task at ``step`` (on the fixed validation sample)."""
        missing = set(self.tasks) - set(losses)
        if missing:
            raise KeyError(f"validation losses missing for {sorted(missing)}")
        raw = np.array([losses[t] for t in self.tasks], dtype=np.float64)
        if self._first is None:
            self._first = np.where(raw != 0, raw, 1.0)
        self.steps.append(step)
        self.losses.append(raw / self._first)

    def slopes(self) -> np.ndarray:
        """alpha(t): per task, the regression slope of the last ``window`` normalized losses."""
        steps = np.array(self.steps[-self.config.window :])
        values = np.array(self.losses[-self.config.window :])
        return np.array([regression_slope(steps, values[:, i]) for i in range(len(self.tasks))])

    def ratios(self, step: int, adaptive: bool = True) -> tuple[np.ndarray, float | None]:
        """omega for ``step`` (uniform when not ``adaptive``, during the warmup or before two
        measurements) and beta."""
        k = len(self.tasks)
        if not adaptive or step < self.warmup_steps or len(self.losses) < 2:
            return np.full(k, 1.0 / k), None
        self.alphas.append(self.slopes())
        recent = np.array(self.alphas[-self.config.window :])
        gamma_inter = inter_task_rate(recent[-1])
        gamma_intra = intra_task_rate(recent)
        beta = balancing_weight(np.array(self.alphas), self.config.temperature)
        return sample_ratio(gamma_inter, gamma_intra, beta), beta

    def next_counts(self, step: int, adaptive: bool = True) -> dict[str, int]:
        """How many samples of each task the batch of ``step`` takes (sums to ``batch_size``);
        ``adaptive=False``: uniform sampling (the w/o S2Sched ablation), logged alike."""
        omega, beta = self.ratios(step, adaptive)
        counts = allocate(self.batch_size, omega)
        self.log.append({"step": step, "beta": beta, **{f"ratio/{t}": float(w) for t, w in zip(self.tasks, omega)},
                         **{f"count/{t}": int(c) for t, c in zip(self.tasks, counts)}})
        return dict(zip(self.tasks, counts.tolist()))
