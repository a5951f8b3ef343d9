"""Does SmolLM2-135M learn click prediction with LoRA? A learning-rate sweep on validation (RecBench-MD).

    python benchmarks/bench_md_lr_sweep.py                          # lr 1e-4, 1e-3, 3e-3 on movielens-1m
    python benchmarks/bench_md_lr_sweep.py --lrs 1e-3 --train-pairs 128 --threads 1

For each learning rate a fresh SmolLM2-135M-Instruct prompt scorer is LoRA-fine-tuned (the CPU
preset's adapter: rank 32, alpha 128, top ``--lora-layers`` layers, bf16, batch 8) on
``--train-pairs`` training pairs of movielens-1m for ``--epochs`` epochs, with the validation AUC
of ``--valid-users`` users' lists (1 positive + 4 negatives each) before training and every
``--eval-every`` steps. Only training and validation pairs are read; the test split is never
scored. Reports, per learning rate, the loss of the first and last steps, every validation AUC
and the best, plus what the Yes/No handling is (the token ids of the Yes and No spellings and the
mean P(Yes) before training), and plots the loss curves. Writes the 'bench-md-lr-sweep' section
of docs/results.md and docs/figures/bench-md-lr-sweep.png.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from baselines import ROOT, write_section  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="movielens-1m")
    ap.add_argument("--lrs", type=float, nargs="+", default=[1e-4, 1e-3, 3e-3])
    ap.add_argument("--train-pairs", type=int, default=256)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--valid-users", type=int, default=40)
    ap.add_argument("--eval-every", type=int, default=32)
    ap.add_argument("--lora-layers", type=int, default=6)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()

    import torch

    from recfm.bench.finetune import FinetuneConfig, finetune
    from recfm.bench.prompt_scorer import answer_token_ids
    from recfm.bench.runner import BenchConfig, BenchRunner
    from recfm.bench.scorers import load_scorer
    from recfm.compute import training_context

    cfg = BenchConfig(targets=[args.dataset], models=[{"name": "smollm2", "path": "smollm2-135m-instruct",
                                                       "paradigm": "prompt"}],
                      task={"history_len": 10, "negatives_per_positive": 4, "train_positions_per_user": 1, "seed": 0},
                      test_users=4, valid_users=args.valid_users, train_users=args.train_pairs, max_title_chars=80)
    runner = BenchRunner(cfg, output=ROOT / "runs" / "bench-md-lr-sweep")
    train_pairs, train_h, train_c = runner.texts(args.dataset, "train")
    keep = np.random.default_rng(0).permutation(len(train_c))[: args.train_pairs]
    train = ([train_h[i] for i in keep], [train_c[i] for i in keep], train_pairs.label[keep])
    valid_pairs, valid_h, valid_c = runner.texts(args.dataset, "valid")
    valid = (valid_pairs.group, valid_h, valid_c, valid_pairs.label)
    rows, curves = [], {}
    with training_context(args.threads, seed=0):
        threads = torch.get_num_threads()
        for lr in args.lrs:
            scorer = load_scorer("smollm2-135m-instruct", "prompt", batch_size=8, autocast="bf16", progress=False)
            if not rows:
                yes, no = answer_token_ids(scorer.tokenizer)
                p_yes = float(np.mean(scorer.score(valid_h, valid_c)))
                handling = (f"Yes tokens {yes} ({scorer.tokenizer.convert_ids_to_tokens(yes)}), No tokens {no} "
                            f"({scorer.tokenizer.convert_ids_to_tokens(no)}); mean P(Yes) on the validation pairs "
                            f"before training {p_yes:.3f} (positives are {float(np.mean(valid_pairs.label)):.2f} of them)")
            ft = FinetuneConfig(lr=lr, lora_last_layers=args.lora_layers, epochs=args.epochs, batch_size=8,
                                eval_every=args.eval_every, eval_at_start=True, patience=100, show_progress=False)
            h = finetune(scorer, train, valid, ft, log=None)
            losses = np.asarray(h["losses"])
            curves[lr] = losses
            head, tail = losses[: min(10, len(losses))].mean(), losses[-min(10, len(losses)):].mean()
            aucs = ", ".join(f"{s}: {a:.3f}" for s, a in zip(h["eval_steps"], h["valid_auc"]))
            rows.append(f"| {lr:g} | {len(losses)} | {head:.3f} | {tail:.3f} | {aucs} | {h['best_auc']:.3f} "
                        f"(step {h['best_step']}) | {h['seconds']:.0f} |")
            print(rows[-1], flush=True)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for lr, losses in curves.items():
        smooth = np.convolve(losses, np.ones(8) / 8, mode="valid") if len(losses) >= 8 else losses
        ax.plot(np.arange(len(smooth)) + 1, smooth, label=f"lr {lr:g}")
    ax.set_xlabel("step")
    ax.set_ylabel("BCE of the Yes-No margin (8-step mean)")
    ax.legend()
    fig.tight_layout()
    figure = ROOT / ("runs" if args.no_write else "docs/figures") / "bench-md-lr-sweep.png"
    figure.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(figure, dpi=120)

    cmd = " ".join(["python benchmarks/bench_md_lr_sweep.py", *sys.argv[1:]])
    n_valid = len(valid_c)
    body = (f"Command: `{cmd}`; {dt.date.today().isoformat()}; {platform.machine()}, {os.cpu_count()} cores, "
            f"{threads} torch thread(s). SmolLM2-135M-Instruct, LoRA rank 32 / alpha 128 on the top "
            f"{args.lora_layers} layers, bf16, batch 8, {len(keep)} {args.dataset} training pairs x {args.epochs} "
            f"epochs; validation AUC on {n_valid} pairs ({args.valid_users} users x 5) at step 0 and every "
            f"{args.eval_every} steps; the test split is not scored. {handling}.\n\n"
            "| lr | steps | loss, first 10 steps | loss, last 10 steps | validation AUC by step | best | seconds |\n"
            "|---|---|---|---|---|---|---|\n" + "\n".join(rows) +
            "\n\nLoss curves: [figures/bench-md-lr-sweep.png](figures/bench-md-lr-sweep.png).")
    print(body)
    if not args.no_write:
        write_section("bench-md-lr-sweep", body)


if __name__ == "__main__":
    main()
