"""How a training run uses the CPU: one context shared by every model's ``fit``."""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

_flushing = threading.local()  # the flag lives in each thread's FPU state, so the depth is per thread


@contextmanager
def flushed_denormals() -> Iterator[None]:
    """Denormal floats flushed to zero on this thread while inside (re-entrant); back to IEEE
    behaviour on leaving the outermost one, so callers' own numerics are left as they were.
    Softmax tails and small gradients become denormal floats, which x86 CPUs process one to two
    orders of magnitude slower: flushing them halved epoch times."""
    depth = getattr(_flushing, "depth", 0)
    if depth == 0:
        torch.set_flush_denormal(True)
    _flushing.depth = depth + 1
    try:
        yield
    finally:
        _flushing.depth = depth
        if depth == 0:
            torch.set_flush_denormal(False)


@contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """``model.eval()`` inside the block; the train / eval mode it had is restored after it."""
    was = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was)


@contextmanager
def training_context(num_threads: int | None, seed: int) -> Iterator[None]:
    """``num_threads`` torch threads (None = all cores, shared by the processes a launcher started on
    this machine), denormals flushed, the global RNG seeded inside a fork (the caller's RNG state
    and thread count are restored afterwards)."""
    from recfm.distributed import local_threads

    threads_before = torch.get_num_threads()
    torch.set_num_threads(num_threads or local_threads())
    try:
        with flushed_denormals(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            yield
    finally:
        torch.set_num_threads(threads_before)


_LEVELS = 1 << 16  # a keep decision compares one 16-bit uniform with a threshold


def dropout_keep_mask(shape: torch.Size | tuple[int, ...], p: float, device: torch.device | str = "cpu") -> torch.Tensor:
    """A bool mask, True with probability ``1 - round(p * 65536) / 65536`` independently per element.

    CPU random numbers cost one generator call per element whatever their width, so the mask reads
    four 16-bit uniforms out of every 64-bit draw: about 8x faster than ``torch.bernoulli`` for the
    item table of a 12K-item catalog, where dropout masks took a fifth of a SASRec step. Draws come
    from the global generator, so ``torch.manual_seed`` and a checkpoint's RNG state reproduce them."""
    n = 1
    for size in shape:
        n *= size
    words = torch.randint(-(1 << 63), (1 << 63) - 1, ((n + 3) // 4,), dtype=torch.int64, device=device)
    return words.view(torch.int16)[:n].view(shape) >= round(p * _LEVELS) - _LEVELS // 2


def fast_dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """Inverted dropout: each element zeroed with probability ``p`` (to 1/65536), the rest scaled so
    that the expectation is ``x`` exactly. On CPU the mask comes from :func:`dropout_keep_mask`;
    elsewhere ``F.dropout`` (a fused kernel) is already fast."""
    if not training or p == 0:
        return x
    if x.device.type != "cpu":
        return F.dropout(x, p)
    dropped = round(p * _LEVELS)
    if dropped >= _LEVELS:
        return torch.zeros_like(x)
    # one float mask, already scaled: forward and backward are then a single multiply each
    scale = dropout_keep_mask(x.shape, p, x.device).to(x.dtype).mul_(_LEVELS / (_LEVELS - dropped))
    return x * scale


class FastDropout(nn.Module):
    """``nn.Dropout`` with the mask of :func:`fast_dropout`."""

    def __init__(self, p: float = 0.5):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fast_dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def widened(t: torch.Tensor) -> torch.Tensor:
    """float32 for a half-precision tensor (autocast's bf16 matmul outputs), anything wider as it is:
    softmaxes and losses are computed at float32 or more."""
    return t.float() if t.is_floating_point() and t.element_size() < 4 else t


class WeightAverage:
    """An exponential moving average of ``model``'s parameters (torch's ``AveragedModel`` with an EMA
    rule): ``update()`` after every optimizer step, ``swapped_in()`` to evaluate or save the averaged
    weights in ``model`` itself, after which the live training weights come back."""

    def __init__(self, model: torch.nn.Module, decay: float):
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        if not 0 < decay < 1:
            raise ValueError(f"an average's decay must be in (0, 1), got {decay}")
        self.model = model
        self.average = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay))

    def update(self) -> None:
        self.average.update_parameters(self.model)

    @contextmanager
    def swapped_in(self) -> Iterator[torch.nn.Module]:
        live = [p.detach().clone() for p in self.model.parameters()]
        with torch.no_grad():
            for p, a in zip(self.model.parameters(), self.average.module.parameters()):
                p.copy_(a)
        try:
            yield self.model
        finally:
            with torch.no_grad():
                for p, saved in zip(self.model.parameters(), live):
                    p.copy_(saved)
