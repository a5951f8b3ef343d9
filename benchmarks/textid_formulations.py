"""Textual-ID formulations, losses and sizes in one table, beside SASRec trained by the same script.

Each cell is one `recfm train` run in its own process, written to runs/bench/<dataset>/<cell>/ and
reused unless --force. Cells (presets: configs/textid-<dataset>.yaml is the items formulation,
configs/textid-<dataset>-prompt.yaml the paper's prompt formulation):

    sasrec          recfm train sasrec with its preset (the yardstick, same box, same protocol)
    items           the textid preset: items as positions, ID decoded word by word, trie loss
    items-full      the same with the full-vocabulary softmax (loss=full)
    items-noaux     the same without the auxiliary item softmax (items.item_loss_weight=0)
    items-40min     the preset with a 40-minute training cap instead of its own
    items-bf16      the preset trained under autocast: auto (bf16 where the CPU computes it natively)
    items-bf16-rerank  the same, and the beam's candidates re-ordered by the item head, its weight chosen on
                    validation from 0, 0.5 and 1 (items.rerank_weights)
    items-untied    the same with separate decoder word embeddings (items.tie_words=false)
    items-unscaled  the same without the sqrt(d) scale of the pooled item vectors (items.scale_items=false)
    items-nowd      the same without AdamW's default weight decay of 0.01 (rec_weight_decay=0)
    items-nowd-dec256  the same, and a decoder as wide as the history side (items.decoder_size=256)
    items-fullaux   the preset with the auxiliary item softmax over the whole catalog (items.item_loss_negatives=0)
    items-aux4096   the preset with 4,096 sampled items in the auxiliary softmax instead of 1,024
    items-ema       the preset, validated, selected and kept as an exponential moving average of its weights
                    (ema_decay=0.999: about 1,000 steps, 6 Beauty epochs)
    items-wdrop0.2  the preset with dropout 0.2 on the word embedding table (items.word_dropout), as SASRec's
                    item-table dropout; items-wdrop0.35 the same at 0.35
    items-lrdecay   the preset with its learning rate falling linearly to 0 over 44 epochs (rec_lr_decay=linear,
                    rec_epochs=44: what the 45-minute cap allows here, the cap then a safety)
    items-copy      the preset with the decoder's copy bonus for words of the last 3 history items (items.copy_items=3)
    items-itemrows  the preset with a free embedding row per item added to its pooled ID words (items.item_rows)
    items-1block    the preset with one transformer block of one head over the items (items.num_layers=1,
                    items.num_heads=1), the depth our tuned SASRec chose on Beauty
    items-aux2      the preset with the auxiliary item softmax weighted 2 instead of 1 (items.item_loss_weight=2)

A cell is its preset at the time it ran: the Beauty preset has one block of one head since 2026-12-08 (the
items-1block cell), so the Beauty rows dated before are the 2-block preset plus their overrides.
    prompt          the paper's formulation (one prompt per prefix through a T5 from a config), full loss
    prompt-trie     the same with the trie-restricted loss

Writes docs/results.md between the 'textid-formulations' markers.

    python benchmarks/textid_formulations.py --datasets movielens-100k --cells sasrec items items-full -- num_threads=1
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from baselines import RESULTS, ROOT, fmt, write_section  # noqa: E402

CONFIGS = ROOT / "configs"
DATASETS = ["movielens-100k", "movielens-1m", "amazon-beauty", "amazon-sports"]
# cell -> (model, preset file name pattern, overrides)
CELLS = {
    "sasrec": ("sasrec", "sasrec-{dataset}.yaml", []),
    "items": ("textid", "textid-{dataset}.yaml", []),
    "items-full": ("textid", "textid-{dataset}.yaml", ["loss=full"]),
    "items-noaux": ("textid", "textid-{dataset}.yaml", ["items.item_loss_weight=0"]),
    "items-40min": ("textid", "textid-{dataset}.yaml", ["max_train_minutes=40"]),
    "items-bf16": ("textid", "textid-{dataset}.yaml", ["autocast=auto"]),
    "items-bf16-rerank": ("textid", "textid-{dataset}.yaml", ["autocast=auto", "items.rerank_weights=[0.0,0.5,1.0]"]),
    "items-untied": ("textid", "textid-{dataset}.yaml", ["items.tie_words=false"]),
    "items-unscaled": ("textid", "textid-{dataset}.yaml", ["items.scale_items=false"]),
    "items-nowd": ("textid", "textid-{dataset}.yaml", ["rec_weight_decay=0"]),
    "items-nowd-dec256": ("textid", "textid-{dataset}.yaml", ["rec_weight_decay=0", "items.decoder_size=256"]),
    "items-fullaux": ("textid", "textid-{dataset}.yaml", ["items.item_loss_negatives=0"]),
    "items-aux4096": ("textid", "textid-{dataset}.yaml", ["items.item_loss_negatives=4096"]),
    "items-ema": ("textid", "textid-{dataset}.yaml", ["ema_decay=0.999"]),
    "items-wdrop0.2": ("textid", "textid-{dataset}.yaml", ["items.word_dropout=0.2"]),
    "items-wdrop0.35": ("textid", "textid-{dataset}.yaml", ["items.word_dropout=0.35"]),
    "items-lrdecay": ("textid", "textid-{dataset}.yaml", ["rec_lr_decay=linear", "rec_epochs=44"]),
    "items-copy": ("textid", "textid-{dataset}.yaml", ["items.copy_items=3"]),
    "items-itemrows": ("textid", "textid-{dataset}.yaml", ["items.item_rows=true"]),
    "items-1block": ("textid", "textid-{dataset}.yaml", ["items.num_layers=1", "items.num_heads=1"]),
    "items-aux2": ("textid", "textid-{dataset}.yaml", ["items.item_loss_weight=2.0"]),
    "prompt": ("textid", "textid-{dataset}-prompt.yaml", []),
    "prompt-trie": ("textid", "textid-{dataset}-prompt.yaml", ["loss=trie"]),
}
FLOOR = 0.8  # the floor: textid NDCG@10 >= 0.8 x SASRec (goal 1.0 x)


def cell_command(dataset: str, cell: str, run_dir: Path, extra: list[str]) -> list[str]:
    model, preset, overrides = CELLS[cell]
    config = CONFIGS / preset.format(dataset=dataset)
    if not config.is_file():
        raise SystemExit(f"cell {cell!r} needs {config.relative_to(ROOT)}, which does not exist")
    return [sys.executable, "-m", "recfm.cli", "train", model, "--dataset", dataset, "--output", str(run_dir),
            "--overwrite", "--config", str(config), *overrides, *extra]


def run_cell(dataset: str, cell: str, out_root: Path, force: bool, extra: list[str]) -> None:
    run_dir = out_root / dataset / cell
    if (run_dir / "metrics.json").is_file() and not force:
        print(f"[reuse] {run_dir}", flush=True)
        return
    cmd = cell_command(dataset, cell, run_dir, extra)
    print("[run]", shlex.join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)


def epochs_text(m: dict) -> str:
    fit = m.get("training", {})
    history = fit.get("history") or []
    trained = [h for h in history if "loss" in h]
    best = fit.get("best_epoch")
    return f"{len(trained)} ({best})" if trained else "?"


def earlier_rows(out_root: Path) -> dict[tuple[str, str], str]:
    """Rows already in docs/results.md whose run folders are not here (an earlier session's, or
    another machine's): kept as they were, so a re-run of one cell does not erase the others."""
    text = RESULTS.read_text() if RESULTS.exists() else ""
    begin, end = "<!-- BEGIN textid-formulations -->", "<!-- END textid-formulations -->"
    if begin not in text:
        return {}
    rows = {}
    for line in text.split(begin, 1)[1].split(end, 1)[0].splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) > 2 and cells[0] in DATASETS and cells[1] in CELLS:
            if not (out_root / cells[0] / cells[1] / "metrics.json").is_file():
                rows[(cells[0], cells[1])] = line
    return rows


def table(out_root: Path) -> str:
    """Rows for every finished cell of every dataset (also those of earlier invocations)."""
    lines = [
        "Command: `python benchmarks/textid_formulations.py --datasets DATASET --cells CELL ...` (each cell is one "
        "`recfm train` run with its preset and the cell's overrides; see the script's docstring).  ",
        f"Table written {dt.date.today().isoformat()}; machine: {platform.machine()}, {os.cpu_count()} cores; "
        "protocol: leave-one-out, full ranking over all items (beam search over every item's ID for textid), history "
        "kept, selected on validation NDCG@10, test scored once, all users. `epochs (best)`: epochs trained and the "
        "one selected.",
        "",
        "| dataset | cell | HR@10 | NDCG@10 | x SASRec | epochs (best) | s / epoch | train s | threads | run date |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    kept = earlier_rows(out_root)
    for dataset in DATASETS:
        lines += [line for (d, _), line in kept.items() if d == dataset]
        ref_file = out_root / dataset / "sasrec" / "metrics.json"
        ref = json.loads(ref_file.read_text())["test"]["ndcg@10"] if ref_file.is_file() else None
        for cell in CELLS:
            path = out_root / dataset / cell / "metrics.json"
            if not path.is_file():
                continue
            m = json.loads(path.read_text())
            t = m["test"]
            ratio = ""
            if ref and cell != "sasrec":
                r = t["ndcg@10"] / ref
                ratio = f"{r:.2f}" + ("" if r >= FLOOR else f" (floor {FLOOR}: missed)")
            history = [h for h in m.get("training", {}).get("history", []) if "train_seconds" in h or "seconds" in h]
            per_epoch = [h.get("train_seconds", h.get("seconds")) for h in history]
            spe = f"{sum(per_epoch) / len(per_epoch):.0f}" if per_epoch else "?"
            env = m.get("environment", {})
            lines.append(f"| {dataset} | {cell} | {fmt(t.get('hr@10'))} | {fmt(t.get('ndcg@10'))} | {ratio} | "
                         f"{epochs_text(m)} | {spe} | {m.get('train_seconds', 0):.0f} | {env.get('torch_threads', '?')} | "
                         f"{(env.get('date') or '?')[:10]} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", default=["movielens-100k"], choices=DATASETS)
    ap.add_argument("--cells", nargs="+", default=["sasrec", "items"], choices=list(CELLS))
    ap.add_argument("--output", type=Path, default=ROOT / "runs" / "bench")
    ap.add_argument("--force", action="store_true")
    ap.add_argument("--table-only", action="store_true", help="only rewrite the table from finished cells")
    ap.add_argument("overrides", nargs="*", help="key=value overrides for every cell (e.g. num_threads=1)")
    args = ap.parse_args()
    if not args.table_only:
        for d in args.datasets:
            for c in args.cells:
                run_cell(d, c, args.output, args.force, args.overrides)
    write_section("textid-formulations", table(args.output))
    print("wrote docs/results.md")


if __name__ == "__main__":
    main()
