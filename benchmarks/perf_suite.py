"""Performance suite: how the hot paths scale with the catalog, on synthetic catalogs of 1K-100K items.

    python benchmarks/perf_suite.py                         # everything below
    python benchmarks/perf_suite.py --sizes 1000 10000 --skip-real

1. The real-catalog micro-benchmarks (benchmarks/textid_speed.py on Amazon Beauty, its own
   sections of docs/results.md): trie-constrained decoding vs transformers'
   prefix_allowed_tokens_fn vs unconstrained beam search, and batched vs one-at-a-time ID
   assignment (Algorithm 1).
2. Scaling curves on synthetic catalogs of 1K to 100K items, each size in a fresh process (so
   peak memory is that size's own):
- trie: build time and node count of the prefix tree over N textual IDs (3-4 words each, from a
  2,000-word vocabulary, made unique), tokenized by a catalog-trained tokenizer;
- constrained decoding: users/s of trie-constrained beam search (beam 10, top-10) of an untrained
  tiny T5 over those IDs, 64 users;
- SASRec: training windows/s over one epoch (2,000 users x 20 items) with the full-softmax loss
  over all N items, and evaluation users/s (full ranking over all N items);
- peak resident memory of the process.
Writes runs/perf/scaling.json, docs/figures/perf-scaling.png and the 'perf-scaling' section of
docs/results.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from baselines import ROOT, write_section  # noqa: E402

USERS, SEQ_LEN, DECODE_USERS = 2000, 20, 64


def synthetic_ids(n: int, rng: np.random.Generator) -> list[str]:
    words = [f"w{i}" for i in range(2000)]
    seen: set[str] = set()
    out = []
    while len(out) < n:
        text = " ".join(rng.choice(words, size=int(rng.integers(3, 5))))
        if text not in seen:
            seen.add(text)
            out.append(text)
    return out


def measure(n_items: int, threads: int) -> dict:
    import torch

    from recfm.baselines.sasrec import SASRec, SASRecConfig
    from recfm.data.split import leave_one_out
    from recfm.evaluation.protocol import Protocol, evaluate
    from recfm.models import build_seq2seq, train_tokenizer
    from recfm.textid.constrained import constrained_topk
    from recfm.textid.trie import TokenTrie

    torch.set_num_threads(threads)
    rng = np.random.default_rng(0)
    row: dict = {"items": n_items}

    ids = synthetic_ids(n_items, rng)
    tok = train_tokenizer(ids[:20000], vocab_size=2500)
    t0 = time.perf_counter()
    trie = TokenTrie.from_texts(ids, tok)
    row["trie_build_s"] = round(time.perf_counter() - t0, 3)
    row["trie_nodes"] = trie.n_nodes
    model = build_seq2seq("tiny", tok, seed=0).eval()
    prompts = [" ".join(rng.choice(ids, size=5)) for _ in range(DECODE_USERS)]
    enc = tok(prompts, return_tensors="pt", padding=True)
    t0 = time.perf_counter()
    with torch.no_grad():
        constrained_topk(model, tok, trie, {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]},
                         10, num_beams=10)
    row["decode_users_per_s"] = round(DECODE_USERS / (time.perf_counter() - t0), 1)

    seqs = rng.integers(1, n_items + 1, size=(USERS, SEQ_LEN))
    split = leave_one_out(np.arange(0, USERS * SEQ_LEN + 1, SEQ_LEN), seqs.reshape(-1))
    sasrec = SASRec(SASRecConfig(epochs=1, max_len=SEQ_LEN, batch_size=128, show_progress=False, num_threads=threads,
                                 eval_every=100), n_items)
    protocol = Protocol()
    t0 = time.perf_counter()
    history = sasrec.fit(split, protocol, log=lambda s: None)
    train_s = history["history"][0]["train_seconds"]
    row["train_windows_per_s"] = round(USERS / max(train_s, 1e-9), 1)
    t0 = time.perf_counter()
    evaluate(sasrec, split.test, protocol)
    row["eval_users_per_s"] = round(USERS / (time.perf_counter() - t0), 1)
    row["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return row


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("trie_build_s", "trie build (s)"), ("decode_users_per_s", "constrained decoding (users/s)"),
              ("train_windows_per_s", "SASRec training (windows/s)"), ("eval_users_per_s", "SASRec evaluation (users/s)"),
              ("peak_rss_mb", "peak memory (MB)")]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.4))
    x = [r["items"] for r in rows]
    for ax, (key, title) in zip(axes, panels):
        ax.plot(x, [r[key] for r in rows], marker="o")
        ax.set_xscale("log")
        ax.set_ylim(bottom=0)  # a flat curve must look flat
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("catalog items")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 3000, 10000, 30000, 100000])
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--skip-real", action="store_true", help="skip the real-catalog micro-benchmarks (textid_speed)")
    ap.add_argument("--real-users", type=int, default=128, help="test users decoded by textid_speed")
    ap.add_argument("--real-items", type=int, default=500, help="items assigned IDs by textid_speed")
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)  # internal: measure one size, print JSON
    args = ap.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.threads)))
        return
    if not args.skip_real:
        subprocess.run([sys.executable, str(Path(__file__).with_name("textid_speed.py")), "--users",
                        str(args.real_users), "--items", str(args.real_items)], cwd=ROOT, check=True)
    rows = []
    for n in args.sizes:
        out = subprocess.run([sys.executable, __file__, "--one", str(n), "--threads", str(args.threads)], cwd=ROOT,
                             check=True, capture_output=True, text=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    (ROOT / "runs" / "perf").mkdir(parents=True, exist_ok=True)
    (ROOT / "runs" / "perf" / "scaling.json").write_text(json.dumps(rows, indent=2))
    plot(rows, ROOT / "docs" / "figures" / "perf-scaling.png")
    cols = ["items", "trie_build_s", "trie_nodes", "decode_users_per_s", "train_windows_per_s", "eval_users_per_s",
            "peak_rss_mb"]
    lines = [f"Command: `{' '.join(['python benchmarks/perf_suite.py', *sys.argv[1:]])}`  ",
             f"Run {dt.date.today().isoformat()}; {platform.machine()}, {os.cpu_count()} cores, {args.threads} torch "
             f"threads, CPU only; synthetic catalogs (one process per size). Decoding: untrained tiny T5, beam 10, "
             f"{DECODE_USERS} users; SASRec: default size, {USERS} users x {SEQ_LEN} items, full softmax and full "
             "ranking over all items.", "",
             "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows]
    lines += ["", "![scaling](figures/perf-scaling.png)"]
    write_section("perf-scaling", "\n".join(lines))


if __name__ == "__main__":
    main()
