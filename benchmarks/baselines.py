"""Baseline results table: Pop, SASRec and GRU4Rec on MovieLens-1M, Amazon Beauty and Sports.

Each cell is one `recfm train` run in its own process (so peak memory is per run), written
to runs/bench/<dataset>/<model>/. Finished cells are reused unless --force. The table is
written into docs/results.md between the 'baselines' markers, beside published figures.

    python benchmarks/baselines.py                       # everything, datasets one after another, all cores
    python benchmarks/baselines.py --datasets amazon-beauty --models sasrec
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results.md"
DATASETS = ["movielens-100k", "movielens-1m", "amazon-beauty", "amazon-sports"]
MODELS = ["pop", "sasrec", "gru4rec"]

# Published figures (../shared/reference/anchors.md), leave-one-out with full ranking:
# (source, history setting as published, HR@10, NDCG@10).
PUBLISHED = {
    ("amazon-beauty", "sasrec"): [("SASRec, sampled softmax 256 neg., h256, 1 block (eSASRec benchmark)", "excluded (its code)", 0.0921, 0.0531),
                                  ("RecBole 1.2.1, CE, 2-core box", "kept", 0.0792, 0.0389),
                                  ("IDGenRec paper, Table 4", "not stated", 0.0605, 0.0318)],
    ("amazon-beauty", "gru4rec"): [("RecBole 1.2.1, 2-core box", "kept", 0.0648, 0.0353)],
    ("amazon-beauty", "pop"): [("RecBole 1.2.1", "excluded", 0.0088, 0.0038)],
    # Our amazon-sports file is sorted by ASIN, not by time (docs/data.md, "Order"); the benchmark's is chronological.
    ("amazon-sports", "sasrec"): [("SASRec, sampled softmax 256 neg., h256, 1 block (eSASRec benchmark; chronological S3-Rec file, not our ASIN-sorted one)", "excluded (its code)", 0.0569, 0.0314),
                                  ("IDGenRec paper, Table 4 (its data: our ASIN-sorted file)", "not stated", 0.0350, 0.0192)],
    ("movielens-1m", "sasrec"): [("SASRec+, full-softmax CE, 63 epochs (Klenitskiy & Vasilev 2023)", "excluded (its code: filter_seen)", 0.3152, 0.1821),
                                 ("generative-recommenders (sampled softmax)", "kept", 0.2853, 0.1603)],
    ("movielens-1m", "gru4rec"): [("generative-recommenders", "kept", 0.2811, 0.1648)],
    ("movielens-1m", "pop"): [("RecBole 1.2.1", "excluded", 0.0353, 0.0169)],
}
# (metric, goal) per (dataset, model, history setting); the targets.
TARGETS = {("amazon-beauty", "sasrec", "excluded"): ("ndcg@10", 0.050), ("amazon-beauty", "sasrec", "kept"): ("ndcg@10", 0.045),
           ("amazon-sports", "sasrec", "excluded"): ("ndcg@10", 0.030), ("amazon-sports", "sasrec", "kept"): ("ndcg@10", 0.027),
           ("movielens-1m", "sasrec", "kept"): ("hr@10", 0.30),
           ("amazon-beauty", "gru4rec", "kept"): ("ndcg@10", 0.0353)}
EXCLUDED_FILE = "test-exclude-history.json"
FILTERED_FILE = "test-benchmark-filter.json"
# Datasets whose published rows (the eSASRec benchmark) drop test users, as its holdout splitter does.
FILTERED_DATASETS = {"amazon-beauty", "amazon-sports"}


def benchmark_filtered_test(run_dir: Path) -> dict:
    """Test scores on the eSASRec benchmark's holdout: history excluded, and only the users whose
    target is neither cold (absent from every user's sequence but its last item, the benchmark's
    training data) nor already in their own history (its splitter's ``filter_cold_items`` and
    ``filter_already_seen``). The same trained model: only the scored users and the ranking rule differ."""
    import numpy as np

    from recfm.evaluation.protocol import evaluate
    from recfm.runs import load_run

    run, data, model = load_run(run_dir)
    test = data.split().test
    in_training = np.zeros(data.n_items + 1, dtype=bool)
    for history in test.histories:  # a test history is the user's sequence but its last item
        in_training[history] = True
    keep = np.array([i for i, (h, t) in enumerate(zip(test.histories, test.targets))
                     if in_training[t] and t not in set(h.tolist())], dtype=np.int64)
    metrics = evaluate(model, test.subset(keep), run.protocol.model_copy(update={"exclude_history": True}))
    return {**metrics, "cases_in_split": len(test)}


def run_cell(dataset: str, model: str, out_root: Path, force: bool, threads: int | None = None) -> dict:
    """Train the cell (history kept, the protocol default) and re-score its test split with the
    history excluded: the same trained model, so the two rows differ only in the ranking rule."""
    run_dir = out_root / dataset / model
    if (run_dir / "metrics.json").is_file() and not force:
        print(f"[reuse] {run_dir}", flush=True)
    else:
        overrides = [f"num_threads={threads}"] if threads and model != "pop" else []
        cmd = [sys.executable, "-m", "recfm.cli", "train", model, "--dataset", dataset, "--output", str(run_dir),
               "--overwrite", *overrides]
        print("[run]", shlex.join(cmd), flush=True)
        subprocess.run(cmd, check=True, cwd=ROOT)
        (run_dir / EXCLUDED_FILE).unlink(missing_ok=True)
    if not (run_dir / EXCLUDED_FILE).is_file():
        cmd = [sys.executable, "-m", "recfm.cli", "--quiet", "evaluate", "--run", str(run_dir), "--splits", "test",
               "--exclude-history", "--json", "-o", str(run_dir / EXCLUDED_FILE)]
        print("[run]", shlex.join(cmd), flush=True)
        subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    metrics["test_excluded"] = json.loads((run_dir / EXCLUDED_FILE).read_text())["test"]
    if dataset in FILTERED_DATASETS and model != "pop":
        if not (run_dir / FILTERED_FILE).is_file():
            print(f"[score] {run_dir}: the eSASRec benchmark's filtered test", flush=True)
            (run_dir / FILTERED_FILE).write_text(json.dumps(benchmark_filtered_test(run_dir), indent=1))
        metrics["test_filtered"] = json.loads((run_dir / FILTERED_FILE).read_text())
    return metrics


def fmt(x):
    return "-" if x is None else f"{x:.4f}"


def earlier_rows() -> dict[tuple[str, str], list[str]]:
    """The recfm rows of the table now in docs/results.md, per (dataset, model): kept, with their run
    dates, for cells this invocation neither ran nor found on disk (run directories are not kept
    between machines), so re-running one cell never drops the others."""
    text = RESULTS.read_text() if RESULTS.exists() else ""
    section = re.search(r"<!-- BEGIN baselines -->(.*?)<!-- END baselines -->", text, flags=re.S)
    rows: dict[tuple[str, str], list[str]] = {}
    for line in (section.group(1) if section else "").splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 12 and cells[2] == "**recfm**":
            rows.setdefault((cells[0], cells[1]), []).append(line)
    return rows


def table(results: dict, command: str, earlier: dict[tuple[str, str], list[str]] | None = None) -> str:
    earlier = {k: v for k, v in (earlier or {}).items() if k not in results}
    lines = [
        f"Command: `{command}` (re-uses finished cells; `--force` retrains). Each recfm row pair is one run, "
        "`recfm train MODEL --dataset DATASET --output runs/bench/DATASET/MODEL` with the preset "
        "`configs/MODEL-DATASET.yaml` (chosen on validation only), scored on test once with the history kept "
        "(the protocol default) and once more with it excluded (`recfm evaluate --exclude-history --splits test`).  ",
        f"Table written {dt.date.today().isoformat()}; machine: {platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}; protocol: leave-one-out, full ranking over all items, model selected "
        "on validation NDCG@10 (history kept), test scored once per history setting."
        + (" Rows with an earlier run date are kept from the previous table (their run directories were not on "
           "this machine)." if earlier else ""),
        "",
        "| dataset | model | source | history | HR@10 | NDCG@10 | HR@20 | NDCG@20 | epochs (best) | train s | run date | target |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    order = lambda k: (DATASETS.index(k[0]) if k[0] in DATASETS else 99, k[1])  # noqa: E731
    for dataset, model in sorted({*results, *earlier}, key=order):
        if (dataset, model) not in results:
            lines += earlier[(dataset, model)]
            lines += [f"| {dataset} | {model} | {source} | {setting} | {fmt(hr10)} | {fmt(n10)} | - | - | | | | |"
                      for source, setting, hr10, n10 in PUBLISHED.get((dataset, model), [])]
            continue
        m = results[(dataset, model)]
        training = m.get("training", {})
        epochs = f"{training.get('epochs', '-')} ({training.get('best_epoch', '-')})" if training.get("epochs") else "-"
        settings = [("kept", m["test"]), ("excluded", m["test_excluded"])]
        if "test_filtered" in m:
            f = m["test_filtered"]
            settings.append((f"excluded, benchmark filter ({f['cases']} of {f['cases_in_split']} users)", f))
        for setting, t in settings:
            target = ""
            if (dataset, model, setting) in TARGETS:
                key, goal = TARGETS[(dataset, model, setting)]
                target = f"{key} >= {goal}: {'met' if t[key] >= goal else f'missed by {goal - t[key]:.4f}'}"
            lines.append(
                f"| {dataset} | {model} | **recfm** | {setting} | {fmt(t['hr@10'])} | {fmt(t['ndcg@10'])} | "
                f"{fmt(t.get('hr@20'))} | {fmt(t.get('ndcg@20'))} | {epochs} | {m['train_seconds']:.0f} | "
                f"{m.get('environment', {}).get('date', '?')[:10]} | {target} |")
        for source, setting, hr10, n10 in PUBLISHED.get((dataset, model), []):
            lines.append(f"| {dataset} | {model} | {source} | {setting} | {fmt(hr10)} | {fmt(n10)} | - | - | | | | |")
    return "\n".join(lines)


def write_section(name: str, body: str) -> None:
    begin, end = f"<!-- BEGIN {name} -->", f"<!-- END {name} -->"
    text = RESULTS.read_text() if RESULTS.exists() else "# Results\n"
    block = f"{begin}\n{body}\n{end}"
    if begin in text:
        text = re.sub(re.escape(begin) + r".*?" + re.escape(end), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    RESULTS.write_text(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", default=DATASETS)
    ap.add_argument("--models", nargs="+", default=MODELS)
    ap.add_argument("--output", type=Path, default=ROOT / "runs" / "bench")
    ap.add_argument("--force", action="store_true", help="retrain cells that already have metrics.json")
    ap.add_argument("--threads", type=int, default=None, help="torch threads per run (two invocations with --threads 1 share 2 cores)")
    args = ap.parse_args()
    results = {(d, m): run_cell(d, m, args.output, args.force, args.threads) for d in args.datasets for m in args.models}
    # Table rows for every finished cell, including ones from earlier partial invocations.
    for d in DATASETS:
        for m in MODELS:
            f = args.output / d / m / "metrics.json"
            if (d, m) not in results and f.is_file():
                results[(d, m)] = run_cell(d, m, args.output, force=False)  # reused; its excluded-history score added
    write_section("baselines", table(results, "make bench  # = python benchmarks/baselines.py", earlier_rows()))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
