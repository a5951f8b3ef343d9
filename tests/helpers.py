"""Test helpers: free ports, torchrun launches, tiny dataset folders written by the tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(processes: int, args: list[str], env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """``python ARGS`` alone, or as ``processes`` gloo processes under torchrun, one thread each."""
    launcher = [sys.executable]
    if processes > 1:
        launcher += ["-m", "torch.distributed.run", "--nproc_per_node", str(processes), "--master_addr", "127.0.0.1",
                     "--master_port", str(free_port())]
    return subprocess.run([*launcher, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


def random_sequences(folder: Path, n_users: int, n_items: int, length: int, seed: int = 0) -> Path:
    """A P5-format folder (``user_sequence.txt``) of random item sequences."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    lines = [f"u{u} " + " ".join(f"i{x}" for x in rng.integers(0, n_items, size=length)) for u in range(n_users)]
    (folder / "user_sequence.txt").write_text("\n".join(lines) + "\n")
    return folder


def tiny_shop(folder: Path) -> Path:
    """30 users walking a 12-item catalog in P5 format; item texts 'red widget N' (titles)."""
    folder.mkdir(parents=True)
    lines = [f"u{u} " + " ".join(f"i{(u + j) % 12}" for j in range(6)) for u in range(30)]
    (folder / "user_sequence.txt").write_text("\n".join(lines) + "\n")
    (folder / "item_initial_ids.txt").write_text("\n".join(f"i{i} red widget {i}" for i in range(12)) + "\n")
    return folder


def one_and_two_processes(script: Path) -> dict[int, dict]:
    """The JSON that ``script`` prints last, run alone and as two processes; each run checks its size."""
    import json

    runs = {}
    for n in (1, 2):
        done = launch(n, [str(script)], timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        runs[n] = json.loads(done.stdout.strip().splitlines()[-1])
        assert runs[n]["processes"] == n
    return runs


def train_tiny_sasrec(folder: Path, out: Path, *extra: str, crash_after: int | None = None) -> subprocess.CompletedProcess:
    """`recfm train` of a tiny SASRec in its own process (checkpoints every 3 steps); ``crash_after``
    SIGKILLs it right after that many checkpoints (recfm.checkpoint's fault injection)."""
    from recfm.checkpoint import CRASH_ENV

    env = {**os.environ, "RECFM_CACHE_DIR": str(out.parent / "cache"), "OMP_NUM_THREADS": "1"}
    env.pop(CRASH_ENV, None)
    if crash_after:
        env[CRASH_ENV] = str(crash_after)
    args = ["train", "sasrec", "-d", str(folder), "-o", str(out), "prep.user_core=2", "prep.item_core=0", "epochs=3",
            "batch_size=4", "hidden_size=16", "num_layers=1", "checkpoint_every=3", "show_progress=false",
            "num_threads=1", "patience=5"]
    return subprocess.run([sys.executable, "-m", "recfm.cli", "--quiet", *args, *extra], env=env, capture_output=True,
                          text=True, timeout=300)


def tiny_llama(vocab_size: int, seed: int = 0, *, hidden_size: int = 32, heads: int = 2, kv_heads: int = 2,
               max_positions: int = 256, pad_token_id: int | None = None, eos_token_id: int | None = None,
               isolate_rng: bool = False, **config):
    """The one backbone the LLM tests build: a 2-layer Llama of seeded random weights, in eval mode.

    The seed is set on torch's global generator (code the test runs next draws after it), unless
    ``isolate_rng``: then the caller's generator state is left as it was (module-scoped fixtures)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                      num_hidden_layers=2, num_attention_heads=heads, num_key_value_heads=kv_heads,
                      max_position_embeddings=max_positions, pad_token_id=pad_token_id, eos_token_id=eos_token_id,
                      bos_token_id=None, **config)
    with torch.random.fork_rng(devices=[], enabled=isolate_rng):
        torch.manual_seed(seed)
        return LlamaForCausalLM(cfg).eval()
