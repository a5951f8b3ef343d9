"""Resumable training checkpoints: safetensors for tensors, JSON for everything else, never pickle.

    checkpoints/
        latest.json              {"name": "step-000120"}: written last, atomically
        step-000120/
            tensors.safetensors  model, optimizer state, best weights so far, torch RNG states
            state.json           the trainer's counters, history, optimizer/scheduler hyper-parameters,
                                 numpy RNG states (data order)

A checkpoint folder is written under a temporary name and renamed when complete; ``latest.json``
is replaced atomically afterwards. A kill at any moment therefore leaves either the previous
checkpoint or the new one, never a half-written one that ``load_latest`` would read.

``RECFM_CRASH_AFTER_CHECKPOINT=N`` (fault injection, used by the resume tests) SIGKILLs the
process right after its N-th checkpoint: the hardest way a training job can die.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from recfm.errors import RecfmError
from recfm.atomic import atomic_directory, atomic_write_json

LATEST = "latest.json"
TENSORS = "tensors.safetensors"
STATE = "state.json"
CRASH_ENV = "RECFM_CRASH_AFTER_CHECKPOINT"


class CheckpointError(RecfmError, RuntimeError):
    pass


@dataclass
class Checkpoint:
    """What a trainer saves and gets back: named tensor groups and a JSON-able state."""

    tensors: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    state: dict[str, Any] = field(default_factory=dict)


def check_same_config(saved: dict, now: dict, free: set[str] | frozenset[str]) -> None:
    """Refuse to resume a checkpoint written with other settings (those in ``free`` may differ:
    they change nothing that is computed, e.g. threads or a time budget)."""
    changed = sorted(k for k in now if k not in free and saved.get(k) != now[k])
    if changed:
        raise CheckpointError(f"the checkpoint was written with other settings ({', '.join(changed)}); "
                              "resume with the run's own config or start a new run")


# -- optimizer, scheduler and RNG state as tensors + JSON --------------------------------------
def optimizer_state(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for idx, values in sd["state"].items():
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{idx}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{idx}.{name}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def load_optimizer_state(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    state: dict[int, dict] = {}
    for key, value in [*tensors.items(), *meta["scalars"].items()]:
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def rng_state(generators: dict[str, np.random.Generator] | None = None) -> tuple[dict[str, torch.Tensor], dict]:
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{i}"] = s
    numpy_states = {name: g.bit_generator.state for name, g in (generators or {}).items()}
    return tensors, {"numpy": numpy_states}


def load_rng_state(tensors: dict[str, torch.Tensor], meta: dict,
                   generators: dict[str, np.random.Generator] | None = None) -> None:
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("cuda."))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    for name, g in (generators or {}).items():
        g.bit_generator.state = meta["numpy"][name]


# -- folders ---------------------------------------------------------------------------------
def save_checkpoint(directory: Path, name: str, checkpoint: Checkpoint, keep: int = 1) -> Path:
    """Write ``directory/name`` atomically, point ``latest.json`` at it, keep the newest ``keep``."""
    directory = Path(directory)
    flat = {}
    for group, tensors in checkpoint.tensors.items():
        if "/" in group:
            raise ValueError(f"tensor group names cannot hold '/': {group!r}")
        flat.update({f"{group}/{k}": v.detach().cpu().contiguous() for k, v in tensors.items()})
    target = directory / name
    if target.exists():
        shutil.rmtree(target)
    with atomic_directory(target) as tmp:
        save_file(flat, str(tmp / TENSORS))
        (tmp / STATE).write_text(json.dumps(checkpoint.state, indent=1))
        for f in (tmp / TENSORS, tmp / STATE):
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    atomic_write_json(directory / LATEST, {"name": name})
    finished = sorted(p for p in directory.iterdir() if p.is_dir() and not p.name.startswith("."))
    for old in finished[:-keep] if keep > 0 else []:
        if old.name != name:
            shutil.rmtree(old, ignore_errors=True)
    _maybe_crash()
    return target


def load_latest(directory: Path) -> Checkpoint | None:
    """The newest complete checkpoint under ``directory``, or None when there is none."""
    pointer = Path(directory) / LATEST
    if not pointer.is_file():
        return None
    try:
        name = json.loads(pointer.read_text())["name"]
        folder = Path(directory) / name
        flat = load_file(str(folder / TENSORS))
        state = json.loads((folder / STATE).read_text())
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error type for a corrupt file
        raise CheckpointError(f"checkpoint in {directory} is unreadable ({type(e).__name__}: {e}); "
                              "delete the folder to start over") from None
    tensors: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in flat.items():
        group, name = key.split("/", 1)
        tensors.setdefault(group, {})[name] = value
    return Checkpoint(tensors=tensors, state=state)


_saved = 0


def _maybe_crash() -> None:
    global _saved
    _saved += 1
    limit = os.environ.get(CRASH_ENV)
    if limit and _saved >= int(limit):
        os.kill(os.getpid(), signal.SIGKILL)
