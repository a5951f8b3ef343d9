"""Seconds per training epoch of the baseline and textual-ID presets, float32 against mixed precision.

Each cell is a fresh process that trains the preset ``configs/MODEL-DATASET.yaml`` for one epoch
through the real trainer (``fit``: length-sorted batches of the training windows, the preset's loss
and dropout) with ``autocast`` set to ``none`` or ``auto``, then validates once on all users. It
prints the epoch's training seconds, the validation seconds and the epoch's mean loss (the two
precisions must agree on it to about 1%). ``auto`` is bf16 only on a CPU with AVX512-BF16 or AMX
(a GPU with bf16); elsewhere both columns measure float32.

    python benchmarks/baseline_speed.py                        # every SASRec/GRU4Rec preset
    python benchmarks/baseline_speed.py --cells sasrec:amazon-beauty --json speed.json

Run it with the box to itself (the cells run one after another, each with all cores by default).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CELLS = ["sasrec:amazon-beauty", "sasrec:amazon-sports", "sasrec:movielens-1m",
         "gru4rec:amazon-beauty", "gru4rec:amazon-sports", "gru4rec:movielens-1m"]
# The textual-ID presets (formulation: items) are timed the same way: --cells textid:amazon-beauty

CELL_SCRIPT = r"""
import json, sys
import recfm
from recfm.config import resolve
from recfm.data.registry import load_dataset
from recfm.evaluation.protocol import Protocol
from recfm.model_table import MODELS
from recfm.models.batching import native_bf16
from recfm.runs import catalog_kwargs

model, dataset, autocast, threads = sys.argv[1:5]
epochs = ["rec_epochs=1"] if model == "textid" else ["epochs=1", "show_progress=false"]
overrides = [*epochs, "max_train_minutes=null", "autocast=" + ("null" if autocast == "none" else autocast)]
if threads != "all":
    overrides.append(f"num_threads={threads}")
entry = MODELS[model]
run, cfg, layers = resolve(model, dataset, entry.config, overrides=overrides)
data = load_dataset(run.dataset)
rec = entry.model(cfg, data.n_items, **catalog_kwargs(entry, data, run.dataset))
out = rec.fit(data.split(), Protocol(), log=lambda _m: None)
row = out["history"][0]
print(json.dumps({"train_seconds": row["train_seconds"], "valid_seconds": row["valid_seconds"],
                  "loss": row["loss"], "precision": out["precision"], "layers": layers,
                  "native_bf16": native_bf16("cpu")}))
"""


def measure(cell: str, autocast: str, threads: str) -> dict:
    model, dataset = cell.split(":")
    done = subprocess.run([sys.executable, "-c", CELL_SCRIPT, model, dataset, autocast, threads], cwd=ROOT,
                          capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{cell} ({autocast}) failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", nargs="+", default=CELLS, help="MODEL:DATASET presets to time")
    parser.add_argument("--threads", default="all", help="torch threads per cell ('all' = the preset's default)")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    rows = []
    for cell in args.cells:
        exact, mixed = measure(cell, "none", args.threads), measure(cell, "auto", args.threads)
        rows.append({"cell": cell, "float32": exact, "auto": mixed})
        print(f"{cell}: float32 {exact['train_seconds']:.1f} s, auto ({mixed['precision']}) "
              f"{mixed['train_seconds']:.1f} s", file=sys.stderr, flush=True)
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    native = rows[0]["auto"]["native_bf16"] if rows else False
    print(f"{stamp}; {platform.machine()}, CPU native bf16: {native}; threads: {args.threads}\n")
    print("| preset | float32 train s / epoch | auto train s / epoch | speed-up | valid s (float32 / auto) "
          "| epoch-1 loss (float32 / auto) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        e, m = r["float32"], r["auto"]
        print(f"| {r['cell']} | {e['train_seconds']:.1f} | {m['train_seconds']:.1f} ({m['precision']}) "
              f"| {e['train_seconds'] / m['train_seconds']:.2f}x | {e['valid_seconds']:.1f} / {m['valid_seconds']:.1f} "
              f"| {e['loss']:.4f} / {m['loss']:.4f} |")
    if args.json:
        args.json.write_text(json.dumps({"date": stamp, "threads": args.threads, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
