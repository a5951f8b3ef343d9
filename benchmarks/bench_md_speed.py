"""Prompt-scoring speed of RecBench-MD on real data: one prompt per pair vs a shared history prefix.

    python benchmarks/bench_md_speed.py                       # movielens-1m, 1 + 4 candidates per user
    python benchmarks/bench_md_speed.py --users 40 --threads 1

SmolLM2-135M-Instruct scores the test click pairs of ``--users`` seeded movielens-1m users, each
user's list being 1 positive and ``--negatives`` sampled negatives (histories of ``--history``
items, titles cut to ``--title-chars``, the CPU preset's wording), twice: with
``share_prefix=False`` (every pair its own full prompt) and with ``share_prefix=True`` (each
history's shared prompt prefix once, each candidate from its KV cache). It reports pairs/s of
both, the speed-up, and the largest difference of the two margins, and writes the
'bench-md-speed' section of docs/results.md.
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
    ap.add_argument("--autocast", default="bf16", choices=["bf16", "none"])
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: recfm's default)")
    ap.add_argument("--no-write", action="store_true", help="print, do not write docs/results.md")
    args = ap.parse_args()

    import torch

    from recfm.bench.runner import BenchConfig, BenchRunner
    from recfm.bench.scorers import load_scorer
    from recfm.compute import training_context

    cfg = BenchConfig(targets=[args.dataset], models=[{"name": "smollm2", "path": "smollm2-135m-instruct",
                                                       "paradigm": "prompt"}],
                      task={"history_len": args.history, "negatives_per_positive": args.negatives, "seed": 0},
                      test_users=args.users, max_title_chars=args.title_chars)
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
    print(body)
    if not args.no_write:
        write_section("bench-md-speed", body)


if __name__ == "__main__":
    main()
