"""One training loop for every next-item model (SASRec, GRU4Rec), with the loss a config field:
full-softmax cross-entropy (default), sampled softmax or gBCE (recfm/baselines/losses.py).

A model plugs in a :class:`SequenceNet` (``encode`` right-padded item sequences into hidden
states; ``item_embeddings`` for the tied output layer) and inherits fitting, scoring and
persistence from :class:`SequentialRecommender`.

Training examples come from ``split.train`` only. Every user's training sequence ``s`` is
trained at every position in one pass (input ``s[:-1]``, labels ``s[1:]``, causal).
Sequences longer than ``max_len + 1`` are cut into windows from the end; consecutive windows
overlap by one item, so every transition ``s[t] -> s[t+1]`` is trained exactly once per
epoch and long histories (MovieLens) are not thrown away. Logits are computed only at the
non-padding positions: against all items (``loss: ce``), or against the positive and negatives
drawn once per step and shared by the whole batch (``sampled_softmax``, ``gbce``).

Selection: the validation ``protocol.selection_metric`` after every ``eval_every`` epochs;
the best weights are kept in memory and restored before ``fit`` returns. Training stops
after ``patience`` epochs without improvement, after ``epochs`` epochs, or when
``max_train_minutes`` runs out: no epoch is started that its predecessors say would overrun it,
and the clock is also read after every step, so a slower epoch (a busy machine) is cut short
and validated instead of overrunning the cap.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Callable, Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import PartialState
from pydantic import BaseModel, ConfigDict, Field
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from recfm.baselines.losses import (LossName, NegativesPer, Sampling, batch_generator, draw_negatives, gbce_beta,
                                    gbce_loss, sampled_softmax_loss)
from recfm.checkpoint import (Checkpoint, check_same_config, load_latest, load_optimizer_state, load_rng_state,
                              optimizer_state, rng_state, save_checkpoint)
from recfm import distributed
from recfm.compute import eval_mode, fast_dropout, flushed_denormals, training_context, widened
from recfm.curves import REPORT_TO_HELP, ReportTo, TrainingHistory
from recfm.data.split import LeaveOneOut
from recfm.data.windows import epoch_batches, pad_right, training_windows
from recfm.evaluation.protocol import Protocol, evaluate
from recfm.models.batching import autocast_context, autocast_dtype
from recfm.recommender import ScoringRecommender, TrainableRecommender

WEIGHTS_FILE = "model.safetensors"
SCORE_GROUP = 64  # histories encoded together in score(), grouped by length


class SequentialTrainConfig(BaseModel):
    """Training fields shared by every next-item model; model configs subclass this."""

    model_config = ConfigDict(extra="forbid")

    epochs: int = Field(200, ge=1, description="maximum number of passes over the training sequences")
    batch_size: int = Field(256, ge=1, description="training sequences (windows) per step")
    lr: float = Field(1e-3, gt=0, description="Adam(W) learning rate")
    weight_decay: float = Field(0.0, ge=0, description="AdamW decoupled weight decay")
    adam_beta2: float = Field(0.999, gt=0, lt=1, description="Adam(W) second-moment decay (SASRec's code: 0.98)")
    max_len: int = Field(50, ge=1, description="longest history the model reads; longer training sequences are windowed")
    item_dropout: float = Field(
        0.0, ge=0, lt=1, description="dropout on the item table itself, once per training step, shared by inputs and "
                                     "outputs (RecTools' item net; 0 = none)")
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
    checkpoint_every: int = Field(
        0, ge=0, description="also checkpoint every this many steps inside an epoch (0 = at epoch ends only)"
    )
    report_to: ReportTo = Field("none", description=REPORT_TO_HELP)
    loss: LossName = Field("ce", description="ce: full-softmax cross-entropy over all items; sampled_softmax: softmax "
                                             "over the positive and num_negatives shared negatives; gbce: gSASRec's "
                                             "generalised binary cross-entropy over the same negatives")
    num_negatives: int = Field(256, ge=1, description="negatives drawn per step (sampled_softmax, gbce), for the batch or "
                                                      "for each sequence (negatives_per)")
    negatives_per: NegativesPer = Field(
        "batch", description="batch: one set of negatives shared by every target of a step (one matmul); sequence: "
                             "each training sequence draws its own, shared by its targets; position: every target "
                             "position draws its own (the published sampled-softmax SASRec; memory targets x "
                             "num_negatives x hidden per step)")
    negative_sampling: Sampling = Field(
        "uniform", description="uniform, or popularity: by training-split counts, with the logQ correction (sampled_softmax)")
    gbce_t: float = Field(0.75, ge=0, le=1, description="gBCE calibration t: 0 = plain BCE, 1 = fully sampling-corrected")
    autocast: Literal["auto", "bf16"] | None = Field(
        None, description="training forward pass in mixed precision: bf16 (weights, optimizer and softmax stay float32); "
                          "auto = bf16 only where the device computes it natively (a GPU with bf16, a CPU with "
                          "AVX512-BF16 or AMX), else float32; None = float32. Scoring is always float32")


class SequenceNet(nn.Module):
    """What a next-item network provides to the trainer. Subclasses hold their item table as
    ``item_emb`` (tied between input and output) and ``item_dropout`` (the config's)."""

    item_emb: nn.Embedding
    item_dropout: float = 0.0

    def encode(self, seqs: torch.Tensor, items: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T) right-padded item indices (0 = padding) -> (B, T, d) causal hidden states:
        position t depends only on items 0..t of its row. ``items``: the table the input items are
        read from (the step's ``item_embeddings()``, so inputs and outputs share one table); None =
        a fresh ``item_embeddings()``."""
        raise NotImplementedError

    def item_embeddings(self) -> torch.Tensor:
        """(n_items + 1, d) item embeddings, tied between input and output; row 0 is padding and never
        scored. In training mode with ``item_dropout``, the table with dropout, a fresh mask per call
        (the trainer calls it once per step and reads inputs and outputs from that one table)."""
        return fast_dropout(self.item_emb.weight, self.item_dropout, self.training)


class FullSoftmaxCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of ``hidden @ items.T`` against ``labels`` (0-based), over ALL items.

    Numerically the same as ``F.cross_entropy(hidden @ items.T, labels)``, but the logits are
    never materialised whole: rows are processed in chunks small enough to stay in cache, and
    the gradients are computed in the same pass (the softmax of a chunk is turned into its
    gradient in place). On CPU this roughly halves the cost of the output layer, which
    dominates training when the catalogue has tens of thousands of items.

    ``dtype`` (e.g. bfloat16) is what the three matmuls read; the softmax, the loss and the
    gradients are float32 whatever it is, as under autocast.
    """

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, items: torch.Tensor, labels: torch.Tensor, chunk: int,
                dtype: torch.dtype | None = None) -> torch.Tensor:
        n = hidden.shape[0]
        grad_hidden = torch.empty_like(hidden)
        grad_items = torch.zeros_like(items)
        total = hidden.new_zeros(())
        low_hidden, low_items = (hidden, items) if dtype is None else (hidden.to(dtype), items.to(dtype))
        for lo in range(0, n, chunk):
            h, y = low_hidden[lo : lo + chunk], labels[lo : lo + chunk]
            z = torch.softmax(widened(h @ low_items.T), dim=1)  # one fused pass; logsumexp + exp is several times slower on CPU
            rows = torch.arange(len(y), device=z.device)
            # the loss value is only reported (gradients below are exact); clamp guards log(0)
            total -= z[rows, y].clamp_min(torch.finfo(z.dtype).tiny).log().sum()
            z[rows, y] -= 1.0
            z.div_(n)  # d(mean loss)/d(logits)
            if dtype is None:
                grad_hidden[lo : lo + chunk] = z @ items
                grad_items.addmm_(z.T, h)
            else:
                z = z.to(dtype)
                grad_hidden[lo : lo + chunk] = z @ low_items
                grad_items += z.T @ h
        ctx.save_for_backward(grad_hidden, grad_items)
        return total / n

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        grad_hidden, grad_items = ctx.saved_tensors
        return grad_hidden * grad_output, grad_items * grad_output, None, None, None


def full_softmax_cross_entropy(hidden: torch.Tensor, items: torch.Tensor, labels: torch.Tensor,
                               dtype: torch.dtype | None = None) -> torch.Tensor:
    """Mean full-softmax cross-entropy; ``labels`` index rows of ``items``; ``dtype``: the matmuls' precision
    (None = that of ``hidden``)."""
    budget = 1 << 21 if hidden.device.type == "cpu" else 1 << 27  # logits per chunk
    with torch.autocast(hidden.device.type, enabled=False):  # the precision is ``dtype``'s alone
        return FullSoftmaxCrossEntropy.apply(widened(hidden), widened(items), labels,
                                             max(16, budget // max(items.shape[0], 1)), dtype)


class NextItemLoss(nn.Module):
    """The training forward pass of a sequence model.

    Each process holds a part of the global batch (:func:`recfm.distributed.batch_share`). Its
    loss is the sum of its cross-entropies divided by the global number of targets: once
    :func:`recfm.distributed.sum_gradients` has summed the gradients over processes they equal
    the gradient of the global batch's mean loss, so one process and many take the same steps
    (up to float summation order)."""

    def __init__(self, net: SequenceNet, loss: str = "ce", log_q: torch.Tensor | None = None, beta: float = 1.0,
                 dtype: torch.dtype | None = None):
        super().__init__()
        self.net, self.loss, self.beta = net, loss, beta
        self.dtype = dtype  # mixed precision (autocast) of the forward pass; None = float32
        self.log_q = log_q  # log sampling probability per item (popularity sampling), None = uniform

    def target_states(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, T - 1, d) hidden states, labels, label mask of right-padded windows (B, T), and the
        (n_items + 1, d) item table the inputs were read from (to score the targets against)."""
        labels = batch[:, 1:]
        mask = labels > 0
        table = self.net.item_embeddings()
        # a row's last item has no label: drop it, so each row's last input is its last target
        # position (what a model counting positions back from the last item must see)
        return self.net.encode(torch.where(mask, batch[:, :-1], 0), table), labels, mask, table

    def forward(self, batch: torch.Tensor, global_targets: float,
                negatives: torch.Tensor | None = None) -> tuple[torch.Tensor | None, float]:
        if batch.shape[0] == 0:  # a part of a batch smaller than the process count: zero gradients
            return None, 0.0
        with autocast_context(batch.device, self.dtype):
            hidden, labels, mask, table = self.target_states(batch)
        n = int(mask.sum())
        items, targets = table[1:], labels[mask] - 1
        rows = mask.nonzero()[:, 0] if negatives is not None and negatives.dim() == 2 else None
        if negatives is not None and negatives.dim() == 3:  # per position: keep the target positions'
            negatives = negatives[:, : labels.shape[1]][mask]
        if self.loss == "ce":
            mean = full_softmax_cross_entropy(hidden[mask], items, targets, self.dtype)
        elif self.loss == "sampled_softmax":
            mean = sampled_softmax_loss(hidden[mask], items, targets, negatives, self.log_q, rows)
        else:
            mean = gbce_loss(hidden[mask], items, targets, negatives, self.beta, rows)
        return mean * (n / global_targets), mean.item() * n


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@dataclasses.dataclass
class FitState:
    """Everything besides tensors that a resumed ``fit`` needs to continue exactly where it stopped."""

    epoch: int = 1
    step: int = 0  # batches of ``epoch`` already trained
    epoch_rng: dict | None = None  # data-order RNG state at the start of ``epoch``
    loss_sum: float = 0.0
    targets: int = 0
    epoch_seconds: float = 0.0
    elapsed: float = 0.0
    best_value: float = -math.inf
    best_epoch: int = 0
    best_valid: dict = dataclasses.field(default_factory=dict)
    history: list = dataclasses.field(default_factory=list)
    stopped: str | None = None

    def next_epoch(self, rng_state: dict, elapsed: float) -> None:
        self.epoch += 1
        self.step, self.loss_sum, self.targets, self.epoch_seconds = 0, 0.0, 0, 0.0
        self.epoch_rng, self.elapsed = rng_state, elapsed


# Settings that may differ on resume without changing what is computed.
_RESUME_FREE = {"show_progress", "num_threads", "device", "max_train_minutes", "checkpoint_every", "report_to"}


class SequentialRecommender(ScoringRecommender, TrainableRecommender):
    """Fit / score / save / load for any :class:`SequenceNet`; subclasses write ``build_net``."""

    config_class: type[SequentialTrainConfig] = SequentialTrainConfig
    resumable = True
    writes_history = True
    reports_validation = True
    embeds_histories = True
    resume_free = _RESUME_FREE

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
        return (self._encode_last(histories) @ self.net.item_embeddings().T).float().cpu()

    @torch.no_grad()
    def embed(self, histories: Sequence[Sequence[int]]) -> np.ndarray:
        """(batch, d) history representations: the hidden state after each history's last item,
        the vector whose dot product with the item embeddings gives ``score``."""
        return self._encode_last(histories).float().cpu().numpy()

    def _encode_last(self, histories: Sequence[Sequence[int]]) -> torch.Tensor:
        was_training = self.net.training
        self.net.eval()
        # Histories are encoded in groups of similar length, so short ones do not pay for
        # the padding of long ones; results do not depend on the grouping.
        lengths = np.array([min(len(h), self.config.max_len) for h in histories], dtype=np.int64)
        order = np.argsort(lengths, kind="stable")
        table = self.net.item_embeddings()
        hidden = torch.empty(len(histories), table.shape[1], dtype=table.dtype, device=self.device)
        with flushed_denormals():
            for lo in range(0, len(order), SCORE_GROUP):
                idx = order[lo : lo + SCORE_GROUP]
                seqs, last = pad_right([histories[i] for i in idx], self.config.max_len)
                out = self.net.encode(seqs.to(self.device))
                hidden[torch.from_numpy(idx).to(self.device)] = out[torch.arange(len(idx), device=self.device),
                                                                    last.to(self.device)]
        self.net.train(was_training)
        return hidden

    # -- training ------------------------------------------------------------------------
    def fit(self, split: LeaveOneOut, protocol: Protocol | None = None, log: Callable[[str], None] = print,
            checkpoints: Path | None = None, resume: bool = False, run_dir: Path | None = None,
            on_validation: Callable[[int, dict], None] | None = None) -> dict:
        """Train on ``split.train``; select on validation. With ``checkpoints`` a resumable checkpoint
        is written after every epoch (and every ``checkpoint_every`` steps); ``resume`` continues from
        the newest one there and reaches the same weights as an uninterrupted run. With ``run_dir``
        every epoch is a line of ``run_dir/history.jsonl`` and ``curves.png`` is drawn at the end.
        ``on_validation(epoch, metrics)`` runs after each validation (a search reports to its pruner
        there; an exception it raises ends the fit)."""
        protocol = protocol or Protocol()
        curves = TrainingHistory(run_dir, self.config.report_to, x="epoch",
                                 metrics=(protocol.selection_metric, "hr@10"), best=protocol.selection_metric,
                                 title=type(self).__name__)
        with training_context(self.config.num_threads, self.config.seed), curves:
            return self._fit(split, protocol, log, Path(checkpoints) if checkpoints else None, resume, curves,
                             on_validation)

    def _loss_module(self, split: LeaveOneOut) -> NextItemLoss:
        cfg = self.config
        log_q = None
        if cfg.loss == "sampled_softmax" and cfg.negative_sampling == "popularity":
            counts = np.bincount(split.train_interactions(), minlength=self.n_items + 1)[1:].astype(np.float64)
            q = (counts + 1.0) / (counts + 1.0).sum()  # +1: an item seen once in valid/test only is still drawable
            log_q = torch.as_tensor(np.log(q), dtype=torch.float32, device=self.device)
        beta = gbce_beta(cfg.num_negatives, self.n_items, cfg.gbce_t) if cfg.loss == "gbce" else 1.0
        return NextItemLoss(self.net, cfg.loss, log_q, beta, autocast_dtype(cfg.autocast, self.device))

    def _negatives(self, weights: torch.Tensor | None, epoch: int, step: int, global_rows: int,
                   global_width: int, mine: slice) -> torch.Tensor | None:
        """The step's negatives, (N,), or this process's (rows, N) or (rows, width - 1, N): the same on
        every process and after a resume (drawn for the whole global batch, then sliced like the batch)."""
        cfg = self.config
        if cfg.loss == "ce":
            return None
        gen = batch_generator(cfg.seed, epoch, step)
        rows = None if cfg.negatives_per == "batch" else global_rows
        positions = global_width - 1 if cfg.negatives_per == "position" else None
        drawn = draw_negatives(self.n_items, cfg.num_negatives, gen, weights, rows, positions)
        return (drawn if rows is None else drawn[mine]).to(self.device)

    def _fit(self, split: LeaveOneOut, protocol: Protocol, log: Callable[[str], None], checkpoints: Path | None,
             resume: bool, curves: TrainingHistory, on_validation: Callable[[int, dict], None] | None = None) -> dict:
        cfg = self.config
        metric = protocol.selection_metric
        name = type(self).__name__
        windows = training_windows(split.train, cfg.max_len)  # split.train only: never valid/test targets
        if len(windows) == 0:
            raise ValueError("no training sequence has two or more items")
        lengths = (windows > 0).sum(axis=1)
        n_batches = math.ceil(len(windows) / cfg.batch_size)
        # One code path for one process and many (torchrun / accelerate launch): each process trains on
        # its part of every batch and the gradients are summed (recfm.distributed), as every trainer does.
        world = distributed.world_size()
        if world > 1:
            state = PartialState(cpu=self.device.type == "cpu")
            self.device = state.device
            self.net.to(self.device)
            log(f"{name}: process {state.process_index} of {world} ({state.distributed_type.value}); "
                f"each takes 1/{world} of every batch")
        loss_module = self._loss_module(split)
        precision = "float32" if loss_module.dtype is None else f"{str(loss_module.dtype).removeprefix('torch.')} autocast"
        log(
            f"{name}: {len(windows)} training windows ({int((lengths - 1).sum())} next-item targets), "
            f"{n_batches} steps/epoch, {sum(p.numel() for p in self.net.parameters())} parameters, "
            f"{torch.get_num_threads()} threads, device {self.device}, {precision}"
        )
        weights = None if loss_module.log_q is None else loss_module.log_q.exp().cpu()  # popularity sampling
        optimizer = torch.optim.AdamW(self.net.parameters(), lr=cfg.lr, betas=(0.9, cfg.adam_beta2),
                                      weight_decay=cfg.weight_decay)
        rng = np.random.default_rng(cfg.seed)  # data order: batches are drawn from it at each epoch start
        budget = cfg.max_train_minutes * 60 if cfg.max_train_minutes else math.inf
        fs = FitState(epoch_rng=rng.bit_generator.state)
        best_state = self._state_copy()
        if resume and checkpoints is not None:
            found = load_latest(checkpoints)
            if found is not None:
                fs, best_state = self._restore(found, optimizer, rng)
                log(f"{name}: resumed from the checkpoint at epoch {fs.epoch}, step {fs.step} of {n_batches}")
        curves.start(keep=len(fs.history), elapsed=fs.elapsed)  # one line per finished epoch: none twice

        def save() -> None:
            if checkpoints is not None and distributed.is_main():
                self._checkpoint(checkpoints, fs, optimizer, best_state, rng)
            distributed.barrier()

        start = time.perf_counter() - fs.elapsed
        while fs.stopped is None:
            epoch = fs.epoch
            rng.bit_generator.state = fs.epoch_rng  # replays this epoch's data order after a resume
            batches = epoch_batches(lengths, cfg.batch_size, rng, cfg.sort_by_length)
            t0 = time.perf_counter() - fs.epoch_seconds
            cut = self._train_steps(loss_module, windows, lengths, batches, optimizer, fs, save, start,
                                    budget, weights)
            loss = fs.loss_sum / max(fs.targets, 1)
            train_seconds = time.perf_counter() - t0
            row = {"epoch": epoch, "loss": round(loss, 5), "train_seconds": round(train_seconds, 2)}
            if cut:
                row["steps"] = f"{fs.step} of {len(batches)} (time budget)"
            elapsed = time.perf_counter() - start
            # summed over processes: clocks differ, and all must stop after the same epoch
            out_of_budget = cut or distributed.any_process(epoch < cfg.epochs and elapsed + elapsed / epoch > budget)
            if epoch % cfg.eval_every == 0 or epoch == cfg.epochs or out_of_budget:
                valid = evaluate(self, split.valid, protocol)
                row["valid"] = {k: round(v, 6) for k, v in valid.items() if k not in ("cases", "eval_seconds")}
                row["valid_seconds"] = round(valid["eval_seconds"], 2)
                if valid[metric] > fs.best_value:
                    fs.best_value, fs.best_epoch, fs.best_valid = valid[metric], epoch, row["valid"]
                    best_state = self._state_copy()
                if on_validation is not None:
                    on_validation(epoch, row["valid"])
            fs.history.append(row)
            elapsed = time.perf_counter() - start
            curves.log(**row, lr=optimizer.param_groups[0]["lr"], seconds=round(elapsed, 2))
            note = ""
            if "valid" in row:
                v = row["valid"]
                note = f" valid {metric} {valid[metric]:.5f} hr@10 {v.get('hr@10', math.nan):.5f} (best {fs.best_value:.5f} @ {fs.best_epoch})"
            log(f"{name} epoch {epoch}: loss {loss:.4f}{note} [{train_seconds:.1f}s train, {elapsed:.0f}s total]")
            if "valid" in row and epoch - fs.best_epoch >= cfg.patience:
                fs.stopped = "patience"
            elif out_of_budget:
                fs.stopped = "budget"
            elif epoch == cfg.epochs:
                fs.stopped = "max_epochs"
            fs.next_epoch(rng.bit_generator.state, time.perf_counter() - start)
            save()
        epoch = fs.epoch - 1
        self.net.load_state_dict(best_state)
        self.net.eval()
        total = time.perf_counter() - start
        log(f"{name}: stopped ({fs.stopped}) after {epoch} epochs, {total:.0f}s; best epoch {fs.best_epoch} "
            f"valid {metric} {fs.best_value:.5f}")
        return {
            "epochs": epoch,
            "best_epoch": fs.best_epoch,
            "best_valid": fs.best_valid,
            "stopped": fs.stopped,
            "seconds": round(total, 1),
            "seconds_per_epoch": round(float(np.mean([h["train_seconds"] for h in fs.history])), 2),
            "precision": precision,
            "history": fs.history,
        }

    def _train_steps(self, loss_module: NextItemLoss, windows: np.ndarray, lengths: np.ndarray,
                     batches: list[np.ndarray], optimizer, fs: "FitState", save: Callable[[], None], start: float,
                     budget: float = math.inf, weights: torch.Tensor | None = None) -> bool:
        """The rest of the current epoch, from step ``fs.step``; a checkpoint every ``checkpoint_every`` steps.
        Returns True when the time budget ran out inside the epoch (the remaining steps are skipped)."""
        cfg = self.config
        params = list(self.net.parameters())
        self.net.train()
        bar = tqdm(total=len(batches), initial=fs.step, desc=f"epoch {fs.epoch}", leave=False,
                   disable=not cfg.show_progress or not distributed.is_local_main(), unit="step")
        t0 = time.perf_counter() - fs.epoch_seconds
        for idx in batches[fs.step:]:
            global_targets = float((lengths[idx] - 1).sum())
            mine, part = distributed.batch_share(idx)  # every process drew the same batch: it trains on its part
            width = int(lengths[mine].max()) if len(mine) else 1
            batch = torch.from_numpy(windows[mine, :width]).to(self.device)
            negatives = self._negatives(weights, fs.epoch, fs.step, len(idx), int(lengths[idx].max()),
                                        part)
            optimizer.zero_grad(set_to_none=True)
            loss, loss_sum = loss_module(batch, global_targets, negatives)
            if loss is not None:
                loss.backward()
            distributed.sum_gradients(params)
            optimizer.step()
            [loss_sum] = distributed.all_sum(loss_sum)
            fs.loss_sum += loss_sum
            fs.targets += int(global_targets)
            fs.step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{fs.loss_sum / fs.targets:.4f}", refresh=False)
            if cfg.checkpoint_every and fs.step % cfg.checkpoint_every == 0 and fs.step < len(batches):
                fs.epoch_seconds = time.perf_counter() - t0
                fs.elapsed = time.perf_counter() - start
                with eval_mode(self.net):  # a checkpoint never changes the training mode the next step sees
                    save()
            # all processes read one verdict: their clocks differ, and they must stop at the same step
            if budget < math.inf and fs.step < len(batches) and \
                    distributed.any_process(time.perf_counter() - start > budget):
                bar.close()
                self.net.eval()
                return True
        bar.close()
        self.net.eval()
        return False

    def _checkpoint(self, directory: Path, fs: "FitState", optimizer, best_state: dict, rng) -> None:
        opt_tensors, opt_meta = optimizer_state(optimizer)
        rng_tensors, _ = rng_state()
        save_checkpoint(directory, f"epoch-{fs.epoch:04d}-step-{fs.step:06d}", Checkpoint(
            tensors={"model": self.net.state_dict(), "best": best_state, "optimizer": opt_tensors, "rng": rng_tensors},
            state={"fit": dataclasses.asdict(fs), "optimizer": opt_meta, "config": self.config.model_dump(mode="json")},
        ))

    def _restore(self, found: Checkpoint, optimizer, rng) -> tuple["FitState", dict]:
        check_same_config(found.state.get("config", {}), self.config.model_dump(mode="json"), _RESUME_FREE)
        self.net.load_state_dict(found.tensors["model"])
        load_optimizer_state(optimizer, found.tensors["optimizer"], found.state["optimizer"])
        load_rng_state(found.tensors["rng"], {"numpy": {}})
        fs = FitState(**found.state["fit"])
        rng.bit_generator.state = fs.epoch_rng
        return fs, {k: v.to(self.device) for k, v in found.tensors["best"].items()}

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
