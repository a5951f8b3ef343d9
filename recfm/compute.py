"""How a training run uses the CPU: one context shared by every model's ``fit``."""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Iterator

import torch

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
