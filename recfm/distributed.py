"""Many processes, one code path: launch any `recfm train` under ``torchrun`` or ``accelerate launch``.

The process group is set up by Hugging Face Accelerate (``PartialState``) from the launcher's
environment (gloo on CPU, NCCL on GPUs); in a plain single process every helper here is a no-op,
so no caller branches on the number of processes.

    torchrun --nproc_per_node 2 -m recfm.cli train sasrec -d movielens-1m -o runs/ddp
    accelerate launch --multi_gpu --num_processes 8 -m recfm.cli train sasrec ...

Evaluation shards the cases across processes by index and gathers (index, rank) pairs, so no
case is counted twice and none is padded in: metrics are those of one process scoring all.
"""

from __future__ import annotations

import atexit
import os
from typing import Any, Sequence

import numpy as np
import torch
import torch.distributed as dist

from recfm.errors import RecfmError


def launched() -> bool:
    """True when a launcher (torchrun, accelerate launch, mpirun) started several processes."""
    keys = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE")
    return any(int(os.environ.get(k, "1")) > 1 for k in keys)


SHARDING_ENV = {"ACCELERATE_USE_FSDP": "FSDP", "ACCELERATE_USE_DEEPSPEED": "DeepSpeed"}


class UnsupportedLaunch(RecfmError, RuntimeError):
    """The launcher asked for something the trainers cannot do (a sharded engine)."""


def init() -> None:
    """Join the process group the launcher describes (no-op in a single process)."""
    for key, engine in SHARDING_ENV.items():
        if os.environ.get(key, "").lower() in ("1", "true", "yes"):
            # The trainers replicate the model (DDP) and gather their results on process 0; a sharded
            # engine would hang or fail there, so it is refused up front.
            raise UnsupportedLaunch(f"{engine} is not supported by recfm's trainers yet: launch with a DDP (multi-GPU or "
                               "multi-CPU) accelerate config; every model here fits on one device")
    if launched() and not dist.is_initialized():
        from accelerate import PartialState

        # cpu=True is what makes Accelerate use gloo across CPU processes; without it a CPU-only
        # machine reports a single process to Accelerate while torch.distributed is set up.
        PartialState(cpu=not torch.cuda.is_available())
        # A gloo group left to the interpreter's teardown can abort the process at exit
        # ("terminate called without an active exception") after all the work is done.
        atexit.register(_leave)


def _leave() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def is_local_main() -> bool:
    """The first process of this machine (the one that shows progress bars)."""
    return int(os.environ.get("LOCAL_RANK", "0")) == 0


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def local_threads() -> int:
    """CPU threads for this process: the cores shared by the processes of this machine."""
    per_machine = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(1, (os.cpu_count() or 1) // per_machine)


def shard(n: int) -> np.ndarray:
    """Indices 0..n-1 this process handles (strided, so every process gets a similar mix)."""
    return np.arange(rank(), n, world_size())


def all_sum(*values: float) -> list[float]:
    """Sums over processes of a few scalars (float64, so counts stay exact)."""
    if world_size() == 1:
        return [float(v) for v in values]
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t)
    return t.tolist()


def any_process(flag: bool) -> bool:
    """True on every process when ``flag`` is true on any: decisions such as "out of time" that
    each process's own clock could answer differently, taken together so no process waits alone
    in a collective the others left."""
    return all_sum(float(bool(flag)))[0] > 0


def _gather(n: int, index: np.ndarray, values) -> list[tuple[np.ndarray, Any]]:
    """Every process's (index, values), checked to cover 0..n-1 exactly once."""
    parts: list[Any] = [None] * world_size()
    dist.all_gather_object(parts, (np.asarray(index), values))
    seen = np.zeros(n, dtype=np.int64)
    for idx, _ in parts:
        np.add.at(seen, idx, 1)
    if (seen > 1).any():
        raise RuntimeError("two processes scored the same case")
    if (seen == 0).any():
        raise RuntimeError(f"{int((seen == 0).sum())} cases were scored by no process")
    return parts


def gather_by_index(n: int, index: np.ndarray, values: np.ndarray) -> np.ndarray:
    """The full length-``n`` array from each process's ``values`` at its ``index``."""
    if world_size() == 1:
        out = np.empty(n, dtype=values.dtype)
        out[index] = values
        return out
    parts = _gather(n, index, values)
    out = np.empty(n, dtype=next(v.dtype for idx, v in parts if len(idx)) if n else values.dtype)
    for idx, vals in parts:
        out[idx] = vals
    return out


def map_sharded_list(fn, n: int) -> list:
    """Like :func:`map_sharded` for Python objects: ``fn(indices)`` returns one object per index."""
    mine = shard(n)
    values = list(fn(mine)) if len(mine) else []
    if world_size() == 1:
        return values
    out: list = [None] * n
    for idx, vals in _gather(n, mine, values):
        for i, v in zip(idx.tolist(), vals):
            out[i] = v
    return out


def map_sharded(fn, n: int) -> np.ndarray:
    """``fn(indices)`` over this process's share of ``0..n-1``, gathered into the full length-n array."""
    mine = shard(n)
    values = np.asarray(fn(mine)) if len(mine) else np.empty(0)
    return gather_by_index(n, mine, values)


def batch_share(rows: Sequence) -> tuple[Sequence, slice]:
    """This process's part of a training batch that every process drew alike: ``rows[rank::world]``
    and the slice that cuts it, so per-row extras drawn for the whole batch (templates, negatives)
    are cut the same way. Each trainer weights its part's loss by its share of the batch (rows,
    targets or tokens, whichever its loss averages over) and calls :func:`sum_gradients`."""
    part = slice(rank(), None, world_size())
    return rows[part], part


def sum_gradients(params: list[torch.Tensor]) -> None:
    """Sum the gradients of ``params`` over processes: the one gradient synchronisation of every
    trainer (one Accelerate all-reduce of their concatenation).

    Each process has run backward on its part of the batch with the loss weighted by its share
    (:func:`batch_share`), so the sum is the whole batch's gradient, as DDP's average is with an
    unweighted loss. A process whose part is empty contributes zeros. Done by hand rather than by
    wrapping models in DDP because several trainers score through custom methods of peft models
    and leave some parameters unused in a step (task-routed experts, alternate training)."""
    if world_size() == 1:
        return
    from accelerate.utils import reduce

    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = reduce(torch.cat([g.reshape(-1).float() for g in grads]), reduction="sum")
    offset = 0
    for p, g in zip(params, grads):
        n = g.numel()
        p.grad = flat[offset : offset + n].view_as(g).to(g.dtype)
        offset += n
