"""Prompt-scoring speed of RecBench-MD on real data: one prompt per pair vs a shared history prefix.

    python benchmarks/bench_md_speed.py                       # movielens-1m, 1 + 4 candidates per user
    python benchmarks/bench_md_speed.py --users 40 --threads 1

SmolLM2-135M-Instruct scores the test click pairs of ``--users`` seeded movielens-1m users, each
user's list being 1 positive and ``--negatives`` sampled negatives (histories of ``--history``
items, titles cut to ``--title-chars``, the CPU preset's wording), twice: with
``share_prefix=False`` (every pair its own full prompt) and with ``share_prefix=True`` (each
history's shared prompt prefix once, each candidate from its KV cache). It reports pairs/s of
both, the speed-up, and the largest difference of the two margins. Then it LoRA-fine-tunes the
top ``--lora-layers`` layers on ``--train-pairs`` training pairs for ``--epochs`` epochs, twice:
through the whole model at every step (``cache_frozen_layers=False``) and from the hidden states
below the adapted layers, kept from each pair's first step (``True``), and reports training
samples/s of both. It writes the 'bench-md-speed' section of docs/results.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from baselines import write_section  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="movielens-1m")
    ap.add_argument("--users", type=int, default=60)
    ap.add_argument("--negatives", type=int, default=4)
    ap.add_argument("--history", type=int, default=10)
    ap.add_argument("--title-chars", type=int, default=80)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--autocast", default="auto", choices=["auto", "bf16", "none"],
                    help="auto: bf16 only where this CPU computes it natively (else float32)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: recfm's default)")
    ap.add_argument("--train-pairs", type=int, default=96)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--lora-layers", type=int, default=6)
    ap.add_argument("--no-write", action="store_true", help="print, do not write docs/results.md")
    args = ap.parse_args()

    import torch

    from recfm.bench.runner import BenchConfig, BenchRunner
    from recfm.bench.scorers import load_scorer
    from recfm.compute import training_context

    cfg = BenchConfig(targets=[args.dataset], models=[{"name": "smollm2", "path": "smollm2-135m-instruct",
                                                       "paradigm": "prompt"}],
                      task={"history_len": args.history, "negatives_per_positive": args.negatives, "seed": 0},
                      test_users=args.users, train_users=args.train_pairs, valid_users=4,
                      max_title_chars=args.title_chars)
    runner = BenchRunner(cfg, output=Path("runs/bench-md-speed"))
    pairs, histories, candidates = runner.texts(args.dataset, "test")
    autocast = None if args.autocast == "none" else args.autocast
    with training_context(args.threads, seed=0):
        threads = torch.get_num_threads()
        scorer = load_scorer("smollm2-135m-instruct", "prompt", batch_size=args.batch_size, autocast=autocast,
                             progress=False)
        scorer.margins(histories[:4], candidates[:4])  # warm-up: first-call allocations out of the timing
        figures = {}
        for share in (False, True):
            scorer.share_prefix = share
            t0 = time.perf_counter()
            figures[share] = scorer.margins(histories, candidates)
            figures[f"{share}_s"] = time.perf_counter() - t0
        train_pairs, train_h, train_c = runner.texts(args.dataset, "train")
        keep = np.arange(min(args.train_pairs, len(train_c)))
        valid_pairs, valid_h, valid_c = runner.texts(args.dataset, "valid")
        valid = (valid_pairs.group, valid_h, valid_c, valid_pairs.label)
        from recfm.bench.finetune import FinetuneConfig, finetune

        training = {}
        for cache in (False, True):
            fresh = load_scorer("smollm2-135m-instruct", "prompt", batch_size=args.batch_size, autocast=autocast,
                                progress=False)
            cfg = FinetuneConfig(lora_last_layers=args.lora_layers, epochs=args.epochs, batch_size=args.batch_size,
                                 eval_every=10**6, eval_at_start=False, show_progress=False, cache_frozen_layers=cache)
            t0 = time.perf_counter()
            history = finetune(fresh, ([train_h[i] for i in keep], [train_c[i] for i in keep],
                                       train_pairs.label[keep]), valid, cfg, log=None)
            training[cache] = (time.perf_counter() - t0, history)
    n = len(candidates)
    slow, fast = n / figures["False_s"], n / figures["True_s"]
    diff = float(np.max(np.abs(figures[False] - figures[True])))
    stamp = dt.date.today().isoformat()
    machine = f"{platform.machine()}, {os.cpu_count()} cores, {threads} torch thread(s), Python {platform.python_version()}"
    cmd = " ".join(["python benchmarks/bench_md_speed.py", *sys.argv[1:]])
    body = (f"Command: `{cmd}`; {stamp}; {machine}. SmolLM2-135M-Instruct, {args.dataset} test lists of "
            f"{args.users} users x (1 positive + {args.negatives} negatives) = {n} pairs, histories of {args.history} "
            f"items, titles cut to {args.title_chars} characters, batch {args.batch_size}, autocast {args.autocast}.\n\n"
            "| prompt scoring | seconds | pairs/s |\n|---|---|---|\n"
            f"| one prompt per pair (`share_prefix: false`) | {figures['False_s']:.1f} | {slow:.2f} |\n"
            f"| shared history prefix, KV cache (`share_prefix: true`, default) | {figures['True_s']:.1f} | {fast:.2f} |\n\n"
            f"Speed-up {fast / slow:.2f}x; largest margin difference between the two {diff:.2e} "
            "(bf16 autocast rounds the two paths' different matrix shapes differently; the float32 unit test holds "
            "them within 1e-4).")
    n_train = len(keep) * args.epochs
    (slow_s, slow_h), (fast_s, fast_h) = training[False], training[True]
    loss_gap = float(np.max(np.abs(np.subtract(slow_h["losses"], fast_h["losses"]))))
    body += (f"\n\nLoRA fine-tuning (rank 32, top {args.lora_layers} layers, batch {args.batch_size}, {len(keep)} "
             f"training pairs x {args.epochs} epochs = {n_train} samples, {len(slow_h['losses'])} steps; the seconds "
             "include one final validation of 4 users' lists):\n\n"
             "| training | seconds | samples/s |\n|---|---|---|\n"
             f"| whole model every step (`cache_frozen_layers: false`) | {slow_s:.1f} | {n_train / slow_s:.2f} |\n"
             f"| top layers from kept frozen states (`cache_frozen_layers: true`, default) | {fast_s:.1f} | "
             f"{n_train / fast_s:.2f} |\n\n"
             f"Speed-up {slow_s / fast_s:.2f}x; largest per-step loss difference {loss_gap:.2e}.")
    print(body)
    if not args.no_write:
        write_section("bench-md-speed", body)


if __name__ == "__main__":
    main()
