"""How a training run uses the CPU: one context shared by every model's ``fit``."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch


@contextmanager
def training_context(num_threads: int | None, seed: int) -> Iterator[None]:
    """``num_threads`` torch threads (None = all cores, shared by the processes a launcher started on
    this machine), denormals flushed, the global RNG seeded inside a fork (the caller's RNG state
    and thread count are restored afterwards)."""
    from recfm.distributed import local_threads

    threads_before = torch.get_num_threads()
    torch.set_num_threads(num_threads or local_threads())
    # Softmax tails and small gradients become denormal floats, which x86 CPUs process
    # one to two orders of magnitude slower: flushing them to zero halved epoch times.
    torch.set_flush_denormal(True)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            yield
    finally:
        torch.set_num_threads(threads_before)
