"""One training loop for every next-item model (SASRec, GRU4Rec): full-softmax cross-entropy.

A model plugs in a :class:`SequenceNet` (``encode`` right-padded item sequences into hidden
states; ``item_embeddings`` for the tied output layer) and inherits fitting, scoring and
persistence from :class:`SequentialRecommender`.

Training examples come from ``split.train`` only. Every user's training sequence ``s`` is
trained at every position in one pass (input ``s[:-1]``, labels ``s[1:]``, causal).
Sequences longer than ``max_len + 1`` are cut into windows from the end; consecutive windows
overlap by one item, so every transition ``s[t] -> s[t+1]`` is trained exactly once per
epoch and long histories (MovieLens) are not thrown away. Logits are computed only at the
non-padding positions, against all items (no sampled negatives).

Selection: the validation ``protocol.selection_metric`` after every ``eval_every`` epochs;
the best weights are kept in memory and restored before ``fit`` returns. Training stops
after ``patience`` epochs without improvement, after ``epochs`` epochs, or before an epoch
that would overrun ``max_train_minutes``.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from recfm.compute import training_context
from recfm.data.split import LeaveOneOut
from recfm.evaluation.protocol import Protocol, evaluate
from recfm.recommender import ScoringRecommender

WEIGHTS_FILE = "model.safetensors"
SCORE_GROUP = 64  # histories encoded together in score(), grouped by length
SORT_POOL = 64  # batches sorted by length together (see epoch_batches)


class SequentialTrainConfig(BaseModel):
    """Training fields shared by every next-item model; model configs subclass this."""

    model_config = ConfigDict(extra="forbid")

    epochs: int = Field(200, ge=1, description="maximum number of passes over the training sequences")
    batch_size: int = Field(256, ge=1, description="training sequences (windows) per step")
    lr: float = Field(1e-3, gt=0, description="Adam(W) learning rate")
    weight_decay: float = Field(0.0, ge=0, description="AdamW decoupled weight decay")
    max_len: int = Field(50, ge=1, description="longest history the model reads; longer training sequences are windowed")
    patience: int = Field(10, ge=1, description="stop after this many epochs without validation improvement")
    eval_every: int = Field(1, ge=1, description="validate every this many epochs (and after the last one)")
    seed: int = Field(42, description="seeds weight init, shuffling and dropout")
    max_train_minutes: float | None = Field(
        None, gt=0, description="wall-clock budget: no epoch is started that would overrun it; the best so far is kept"
    )
    num_threads: int | None = Field(None, ge=1, description="torch CPU threads; None = all cores")
    device: str = Field("auto", description="'auto' (cuda when available, else cpu), 'cpu', 'cuda', 'cuda:1', ...")
    sort_by_length: bool = Field(
        True, description="batch windows of similar length together (less padding); batch order stays random"
    )
    show_progress: bool = Field(True, description="tqdm bar per epoch")


class SequenceNet(nn.Module):
    """What a next-item network provides to the trainer."""

    def encode(self, seqs: torch.Tensor) -> torch.Tensor:
        """(B, T) right-padded item indices (0 = padding) -> (B, T, d) causal hidden states:
        position t depends only on items 0..t of its row."""
        raise NotImplementedError

    def item_embeddings(self) -> torch.Tensor:
        """(n_items + 1, d) output embeddings; row 0 is padding and never scored."""
        raise NotImplementedError


class FullSoftmaxCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of ``hidden @ items.T`` against ``labels`` (0-based), over ALL items.

    Numerically the same as ``F.cross_entropy(hidden @ items.T, labels)``, but the logits are
    never materialised whole: rows are processed in chunks small enough to stay in cache, and
    the gradients are computed in the same pass (the softmax of a chunk is turned into its
    gradient in place). On CPU this roughly halves the cost of the output layer, which
    dominates training when the catalogue has tens of thousands of items.
    """

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, items: torch.Tensor, labels: torch.Tensor, chunk: int) -> torch.Tensor:
        n = hidden.shape[0]
        grad_hidden = torch.empty_like(hidden)
        grad_items = torch.zeros_like(items)
        total = hidden.new_zeros(())
        for lo in range(0, n, chunk):
            h, y = hidden[lo : lo + chunk], labels[lo : lo + chunk]
            z = torch.softmax(h @ items.T, dim=1)  # one fused pass; logsumexp + exp is several times slower on CPU
            rows = torch.arange(len(y), device=z.device)
            # the loss value is only reported (gradients below are exact); clamp guards log(0)
            total -= z[rows, y].clamp_min(torch.finfo(z.dtype).tiny).log().sum()
            z[rows, y] -= 1.0
            z.div_(n)  # d(mean loss)/d(logits)
            grad_hidden[lo : lo + chunk] = z @ items
            grad_items.addmm_(z.T, h)
        ctx.save_for_backward(grad_hidden, grad_items)
        return total / n

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        grad_hidden, grad_items = ctx.saved_tensors
        return grad_hidden * grad_output, grad_items * grad_output, None, None


def full_softmax_cross_entropy(hidden: torch.Tensor, items: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean full-softmax cross-entropy; ``labels`` index rows of ``items``."""
    budget = 1 << 21 if hidden.device.type == "cpu" else 1 << 27  # logits per chunk
    return FullSoftmaxCrossEntropy.apply(hidden, items, labels, max(16, budget // max(items.shape[0], 1)))


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


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class SequentialRecommender(ScoringRecommender):
    """Fit / score / save / load for any :class:`SequenceNet`; subclasses write ``build_net``."""

    config_class: type[SequentialTrainConfig] = SequentialTrainConfig

    def __init__(self, config: SequentialTrainConfig, n_items: int):
        self.config = config
        self.n_items = n_items
        self.device = resolve_device(config.device)
        # Weight init draws from a private RNG stream: same seed, same initial weights,
        # without disturbing the caller's global RNG.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            self.net: SequenceNet = self.build_net(config, n_items)
        self.net.to(self.device)
        self.net.eval()

    def build_net(self, config, n_items: int) -> SequenceNet:
        raise NotImplementedError

    # -- the Recommender seam ------------------------------------------------------------
    @torch.no_grad()
    def score(self, histories: Sequence[Sequence[int]]) -> torch.Tensor:
        was_training = self.net.training
        self.net.eval()
        torch.set_flush_denormal(True)
        # Histories are encoded in groups of similar length, so short ones do not pay for
        # the padding of long ones; results do not depend on the grouping.
        lengths = np.array([min(len(h), self.config.max_len) for h in histories], dtype=np.int64)
        order = np.argsort(lengths, kind="stable")
        hidden = torch.empty(len(histories), self.net.item_embeddings().shape[1], device=self.device)
        for lo in range(0, len(order), SCORE_GROUP):
            idx = order[lo : lo + SCORE_GROUP]
            seqs, last = pad_right([histories[i] for i in idx], self.config.max_len)
            out = self.net.encode(seqs.to(self.device))
            hidden[torch.from_numpy(idx).to(self.device)] = out[torch.arange(len(idx), device=self.device), last.to(self.device)]
        scores = hidden @ self.net.item_embeddings().T
        self.net.train(was_training)
        return scores.float().cpu()

    # -- training ------------------------------------------------------------------------
    def fit(self, split: LeaveOneOut, protocol: Protocol | None = None, log: Callable[[str], None] = print) -> dict:
        protocol = protocol or Protocol()
        with training_context(self.config.num_threads, self.config.seed):
            return self._fit(split, protocol, log)

    def _fit(self, split: LeaveOneOut, protocol: Protocol, log: Callable[[str], None]) -> dict:
        cfg = self.config
        metric = protocol.selection_metric
        name = type(self).__name__
        windows = training_windows(split.train, cfg.max_len)  # split.train only: never valid/test targets
        if len(windows) == 0:
            raise ValueError("no training sequence has two or more items")
        lengths = (windows > 0).sum(axis=1)
        n_batches = math.ceil(len(windows) / cfg.batch_size)
        log(
            f"{name}: {len(windows)} training windows ({int((lengths - 1).sum())} next-item targets), "
            f"{n_batches} steps/epoch, {sum(p.numel() for p in self.net.parameters())} parameters, "
            f"{torch.get_num_threads()} threads, device {self.device}"
        )
        optimizer = torch.optim.AdamW(self.net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        rng = np.random.default_rng(cfg.seed)
        budget = cfg.max_train_minutes * 60 if cfg.max_train_minutes else math.inf

        best_value, best_epoch, best_valid = -math.inf, 0, {}
        best_state = self._state_copy()
        history: list[dict] = []
        stopped = "max_epochs"
        start = time.perf_counter()
        epoch = 0
        for epoch in range(1, cfg.epochs + 1):
            t0 = time.perf_counter()
            loss = self._train_epoch(windows, lengths, optimizer, rng, epoch)
            train_seconds = time.perf_counter() - t0
            row = {"epoch": epoch, "loss": round(loss, 5), "train_seconds": round(train_seconds, 2)}
            elapsed = time.perf_counter() - start
            out_of_budget = epoch < cfg.epochs and elapsed + elapsed / epoch > budget
            if epoch % cfg.eval_every == 0 or epoch == cfg.epochs or out_of_budget:
                valid = evaluate(self, split.valid, protocol)
                row["valid"] = {k: round(v, 6) for k, v in valid.items() if k not in ("cases", "eval_seconds")}
                row["valid_seconds"] = round(valid["eval_seconds"], 2)
                if valid[metric] > best_value:
                    best_value, best_epoch, best_valid = valid[metric], epoch, row["valid"]
                    best_state = self._state_copy()
            history.append(row)
            elapsed = time.perf_counter() - start
            note = ""
            if "valid" in row:
                v = row["valid"]
                note = f" valid {metric} {valid[metric]:.5f} hr@10 {v.get('hr@10', math.nan):.5f} (best {best_value:.5f} @ {best_epoch})"
            log(f"{name} epoch {epoch}: loss {loss:.4f}{note} [{train_seconds:.1f}s train, {elapsed:.0f}s total]")
            if "valid" in row and epoch - best_epoch >= cfg.patience:
                stopped = "patience"
                break
            if out_of_budget:
                stopped = "budget"
                break
        self.net.load_state_dict(best_state)
        self.net.eval()
        total = time.perf_counter() - start
        log(f"{name}: stopped ({stopped}) after {epoch} epochs, {total:.0f}s; best epoch {best_epoch} valid {metric} {best_value:.5f}")
        return {
            "epochs": epoch,
            "best_epoch": best_epoch,
            "best_valid": best_valid,
            "stopped": stopped,
            "seconds": round(total, 1),
            "seconds_per_epoch": round(float(np.mean([h["train_seconds"] for h in history])), 2),
            "history": history,
        }

    def _train_epoch(self, windows: np.ndarray, lengths: np.ndarray, optimizer, rng, epoch: int) -> float:
        cfg = self.config
        self.net.train()
        total_loss, total_targets = 0.0, 0
        batches = epoch_batches(lengths, cfg.batch_size, rng, cfg.sort_by_length)
        bar = tqdm(batches, desc=f"epoch {epoch}", leave=False, disable=not cfg.show_progress, unit="step")
        for idx in bar:
            width = int(lengths[idx].max())
            batch = torch.from_numpy(windows[idx, :width]).to(self.device)
            inputs, labels = batch[:, :-1], batch[:, 1:]
            hidden = self.net.encode(inputs)
            mask = labels > 0
            h = hidden[mask]  # only positions with a next item: no logits for padding
            loss = full_softmax_cross_entropy(h, self.net.item_embeddings()[1:], labels[mask] - 1)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            n = int(mask.sum())
            total_loss += loss.item() * n
            total_targets += n
            bar.set_postfix(loss=f"{total_loss / total_targets:.4f}", refresh=False)
        bar.close()
        self.net.eval()
        return total_loss / max(total_targets, 1)

    def _state_copy(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.net.state_dict().items()}

    # -- persistence (safetensors, no pickle) ----------------------------------------------
    def save(self, directory: Path) -> None:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.net.state_dict().items()}
        save_file(state, str(d / WEIGHTS_FILE), metadata={"model": type(self).__name__, "n_items": str(self.n_items)})

    @classmethod
    def load(cls, directory: Path, config: SequentialTrainConfig, n_items: int):
        model = cls(config, n_items)
        state = load_file(str(Path(directory) / WEIGHTS_FILE), device=str(model.device))
        model.net.load_state_dict(state)
        model.net.eval()
        return model
