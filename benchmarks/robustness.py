"""Resume after a real kill, and one process vs two, on real data (SASRec, MovieLens-100K).

    python benchmarks/robustness.py                       # both checks
    python benchmarks/robustness.py --checks resume

resume:      an uninterrupted run; a second run SIGKILLed from outside as soon as it has written a
             checkpoint inside its second epoch, then `recfm train ... --resume`; per-epoch losses
             and final metrics compared.
distributed: the same training (dropout 0) in one process and in two gloo processes launched by
             torchrun (one thread each), compared within the tolerance stated in
             tests/test_distributed.py.
Writes the 'robustness' section of docs/results.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from baselines import ROOT, write_section  # noqa: E402

OUT = ROOT / "runs" / "robustness"
COMMON = ["sasrec", "-d", "movielens-100k", "epochs=4", "max_len=50", "hidden_size=64", "num_layers=2",
          "batch_size=64", "patience=10", "show_progress=false", "num_threads=1"]
KEYS = ("ndcg@10", "hr@10", "mrr")


def recfm(*args: str, launcher: list[str] | None = None, wait: bool = True):
    cmd = [*(launcher or [sys.executable]), "-m", "recfm.cli", "--quiet", "train", *args]
    if not wait:
        return subprocess.Popen(cmd, cwd=ROOT)
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True)
    return time.perf_counter() - t0


def metrics(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())


def losses(m: dict) -> list[float]:
    return [h["loss"] for h in m["training"]["history"]]


def resume_check() -> list[str]:
    clean, killed = OUT / "clean", OUT / "killed"
    args = [*COMMON, "checkpoint_every=20"]
    clean_s = recfm(*args[:3], "-o", str(clean), *args[3:], "--overwrite")
    shutil.rmtree(killed, ignore_errors=True)  # the watcher below must only see this run's checkpoints
    proc = recfm(*args[:3], "-o", str(killed), *args[3:], "--overwrite", wait=False)
    latest = killed / "checkpoints" / "latest.json"
    t0 = time.perf_counter()
    while True:  # kill once a checkpoint inside epoch 2 exists: mid-epoch, from outside, no warning
        if latest.is_file():
            name = json.loads(latest.read_text())["name"]
            if name.startswith("epoch-0002") and not name.endswith("step-000000"):
                break
        if proc.poll() is not None:
            raise SystemExit("the run finished before it could be killed; lower checkpoint_every")
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_after = time.perf_counter() - t0
    resume_s = recfm(*args[:3], "-o", str(killed), *args[3:], "--resume")
    a, b = metrics(clean), metrics(killed)
    same_losses = losses(a) == losses(b)
    rows = [f"| {split} {k} | {a[split][k]:.6f} | {b[split][k]:.6f} |" for split in ("valid", "test") for k in KEYS]
    return [
        "### Resume after SIGKILL",
        f"Killed with SIGKILL {killed_after:.1f} s after start, at checkpoint `{name}` (inside epoch 2, "
        f"checkpoints every 20 steps); resumed with `--resume` ({resume_s:.1f} s; the uninterrupted run took "
        f"{clean_s:.1f} s). Per-epoch training losses identical: **{same_losses}** ({losses(a)} vs {losses(b)}).",
        "", "| metric | uninterrupted | killed + resumed |", "|---|---|---|", *rows, "",
    ]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def distributed_check() -> list[str]:
    one, two = OUT / "one-process", OUT / "two-processes"
    args = [*COMMON, "dropout=0"]
    one_s = recfm(*args[:3], "-o", str(one), *args[3:], "--overwrite")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
                "--master_port", str(free_port())]
    two_s = recfm(*args[:3], "-o", str(two), *args[3:], "--overwrite", launcher=torchrun)
    a, b = metrics(one), metrics(two)
    diff = max(abs(x - y) / abs(x) for x, y in zip(losses(a), losses(b)))
    rows = [f"| {split} {k} | {a[split][k]:.6f} | {b[split][k]:.6f} | {abs(a[split][k] - b[split][k]):.1e} |"
            for split in ("valid", "test") for k in KEYS]
    return [
        "### One process vs two (torchrun, gloo)",
        f"Same global batch (64; 32 windows per process), dropout 0, 1 thread per process (so two processes use "
        f"both cores). Wall time of the whole command (start-up, data loading, training, evaluation): one process "
        f"{one_s:.1f} s, two processes {two_s:.1f} s ({one_s / two_s:.2f}x). Largest relative difference of the "
        f"per-epoch losses as logged (5 decimals): {diff:.1e} (tolerance 1e-4); test cases scored: "
        f"{a['test']['cases']} vs {b['test']['cases']} (sharded and gathered, none padded or doubled).",
        "", "| metric | 1 process | 2 processes | abs. difference |", "|---|---|---|---|", *rows, "",
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checks", nargs="+", choices=["resume", "distributed"], default=["resume", "distributed"])
    args = ap.parse_args()
    body = [f"Command: `python benchmarks/robustness.py --checks {' '.join(args.checks)}`  ",
            f"Run {dt.date.today().isoformat()}; {platform.machine()}, {os.cpu_count()} cores, CPU only; "
            f"`recfm train {' '.join(COMMON)}` (plus the settings named below).", ""]
    if "resume" in args.checks:
        body += resume_check()
    if "distributed" in args.checks:
        body += distributed_check()
    write_section("robustness", "\n".join(body).rstrip())


if __name__ == "__main__":
    main()
