"""IDGenRec (textid) quality beside Pop and SASRec from the same protocol and the paper's tables.

Each cell is one `recfm train textid` run in its own process, written to
runs/bench/<dataset>/<cell>/ and reused unless --force. Cells:

    textid            the paper formulation's CPU preset configs/textid-<dataset>-prompt.yaml (Rec-only, paper's
                      initial IDs); every cell starts from it alone (--no-preset), not from the item-level
                      default preset configs/textid-<dataset>.yaml
    textid-base       Rec-only, 2 recommender epochs (the reference of the ablations below)
    textid-alternate  2 rounds x (1 recommender epoch), 1 generator epoch between (lr 1e-3 so it moves)
    textid-user       user IDs only in the prompt      (Table 6 ablation)
    textid-both       user and item IDs in the prompt  (Table 6 ablation)
    textid-id-only    ID generator trained, recommender left as initialised (Table 5 ablation)

Writes docs/results.md between the 'textid-quality' markers.

    python benchmarks/textid_quality.py --datasets amazon-beauty amazon-sports --cells textid
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
from baselines import ROOT, fmt, write_section  # noqa: E402

DATASETS = ["amazon-beauty", "amazon-sports", "movielens-100k", "movielens-1m"]
# Ablation cells are equal-epoch comparisons as in the paper's Tables 5-6 (the alternate run trains
# the recommender for as many epochs in total as the Rec-only run), sized for movielens-100k on CPU;
# "textid-base" is their Rec-only reference under the same epoch count.
ABLATION = ["max_train_minutes=null", "valid_sample=0"]
CELLS = {
    "textid": [],
    "textid-base": [*ABLATION, "rec_epochs=2"],
    "textid-alternate": [*ABLATION, "strategy=alternate", "rounds=2", "rec_epochs=1", "gen_epochs=1", "gen_lr=0.001",
                         "gen_max_instances=5000"],
    "textid-user": [*ABLATION, "rec_epochs=2", "prompt_ids=user"],
    "textid-both": [*ABLATION, "rec_epochs=2", "prompt_ids=both"],
    "textid-id-only": [*ABLATION, "strategy=id_only", "rounds=2", "gen_epochs=1", "gen_lr=0.001", "gen_max_instances=5000"],
}
PAPER = {  # IDGenRec paper (Tables 4-5; HR@5, NDCG@5, HR@10, NDCG@10), full ranking, leave-one-out
    ("amazon-beauty", "IDGenRec (Table 4)"): (0.0618, 0.0486, 0.0814, 0.0541),
    ("amazon-beauty", "IDGenRec Rec-only (Table 5)"): (0.0601, 0.0442, 0.0797, 0.0505),
    ("amazon-beauty", "IDGenRec ID-only (Table 5)"): (0.0111, 0.0067, 0.0192, 0.0093),
    ("amazon-sports", "IDGenRec (Table 4)"): (0.0429, 0.0326, 0.0574, 0.0372),
    ("amazon-sports", "IDGenRec Rec-only (Table 5)"): (0.0350, 0.0271, 0.0461, 0.0307),
    ("amazon-sports", "IDGenRec ID-only (Table 5)"): (0.0102, 0.0070, 0.0155, 0.0087),
}
TARGET_RATIO = 1.3  # textid NDCG@10 >= 1.3 x our SASRec


def run_cell(dataset: str, cell: str, out_root: Path, force: bool, extra: list[str], max_cases: int | None) -> None:
    run_dir = out_root / dataset / cell
    if (run_dir / "metrics.json").is_file() and not force:
        print(f"[reuse] {run_dir}", flush=True)
    elif (run_dir / "textid.json").is_file() and not force:
        # Trained, but its final scoring never finished (stopped for time): score the saved model.
        cmd = [sys.executable, "-m", "recfm.cli", "evaluate", "--run", str(run_dir), "--output", str(run_dir / EVAL_FILE),
               *(["--max-cases", str(max_cases)] if max_cases else [])]
        print("[evaluate]", shlex.join(cmd), flush=True)
        subprocess.run(cmd, check=True, cwd=ROOT)
    else:
        extra = [*extra, *([f"protocol.max_cases={max_cases}"] if max_cases else [])]
        cmd = [sys.executable, "-m", "recfm.cli", "train", "textid", "--dataset", dataset, "--output", str(run_dir),
               "--overwrite", "--no-preset", "--config", str(ROOT / "configs" / f"textid-{dataset}-prompt.yaml"),
               *extra, *CELLS[cell]]
        print("[run]", shlex.join(cmd), flush=True)
        subprocess.run(cmd, check=True, cwd=ROOT)


EVAL_FILE = "metrics-evaluate.json"


def cell_metrics(run_dir: Path) -> dict | None:
    """metrics.json of a finished run, else the scores `recfm evaluate` wrote for a trained one."""
    for name in ("metrics.json", EVAL_FILE):
        if (run_dir / name).is_file():
            return json.loads((run_dir / name).read_text())
    return None


def cases_text(t: dict) -> str:
    return f"{t['cases']:,} of {t['cases_in_split']:,}" if "cases_in_split" in t else f"all {t.get('cases', 0):,}"


def table(out_root: Path) -> str:
    lines = [
        "Command: `python benchmarks/textid_quality.py --datasets DATASET --cells CELL` (each cell is "
        "`recfm train textid --dataset DATASET --output runs/bench/DATASET/CELL` plus the cell's overrides over "
        "the paper formulation's preset `configs/textid-DATASET-prompt.yaml`, with `--no-preset`); Pop and SASRec rows come from `make bench`.  ",
        f"Table written {dt.date.today().isoformat()}; machine: {platform.machine()}, {os.cpu_count()} cores; "
        "protocol: leave-one-out, full ranking (trie-constrained beam search over every item's ID), history "
        "not excluded, selected on validation NDCG@10, test scored once. `test users`: all, or a seeded sample "
        "(`--max-cases`; still ranked over every item).",
        "",
        "| dataset | model | source | test users | HR@5 | NDCG@5 | HR@10 | NDCG@10 | train s | run date | target |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for dataset in DATASETS:
        sasrec = out_root / dataset / "sasrec" / "metrics.json"
        ref = json.loads(sasrec.read_text())["test"]["ndcg@10"] if sasrec.is_file() else None
        for cell in ["pop", "sasrec", *CELLS]:
            m = cell_metrics(out_root / dataset / cell)
            if m is None or "test" not in m:
                continue
            t = m["test"]
            target = ""
            if cell == "textid" and ref and dataset in ("amazon-beauty", "amazon-sports"):
                ratio = t["ndcg@10"] / ref
                target = f"NDCG@10 = {ratio:.2f} x SASRec (target {TARGET_RATIO}x: {'met' if ratio >= TARGET_RATIO else 'missed'})"
            seconds = f"{m['train_seconds']:.0f}" if "train_seconds" in m else "see train.log"
            date = m.get("environment", {}).get("date") or m.get("date") or "?"
            lines.append(f"| {dataset} | {cell} | **recfm** | {cases_text(t)} | {fmt(t.get('hr@5'))} | "
                         f"{fmt(t.get('ndcg@5'))} | {fmt(t.get('hr@10'))} | {fmt(t.get('ndcg@10'))} | {seconds} | "
                         f"{date[:10]} | {target} |")
        for (d, source), (hr5, n5, hr10, n10) in PAPER.items():
            if d == dataset:
                lines.append(f"| {dataset} | textid | {source} | all | {fmt(hr5)} | {fmt(n5)} | {fmt(hr10)} | {fmt(n10)} | | | |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", default=["amazon-beauty", "amazon-sports"])
    ap.add_argument("--cells", nargs="+", default=["textid"], choices=list(CELLS))
    ap.add_argument("--output", type=Path, default=ROOT / "runs" / "bench")
    ap.add_argument("--force", action="store_true")
    ap.add_argument("--max-cases", type=int, default=None,
                    help="final scores on a seeded sample of this many cases per split (protocol.max_cases)")
    ap.add_argument("--no-write", action="store_true", help="print the table instead of writing docs/results.md "
                    "(a re-run of some cells, to compare with the table there)")
    ap.add_argument("overrides", nargs="*", help="key=value overrides for every cell (e.g. max_train_minutes=20)")
    args = ap.parse_args()
    for d in args.datasets:
        for c in args.cells:
            run_cell(d, c, args.output, args.force, args.overrides, args.max_cases)
    if args.no_write:
        print(table(args.output))
        return
    write_section("textid-quality", table(args.output))
    print("wrote docs/results.md")


if __name__ == "__main__":
    main()
