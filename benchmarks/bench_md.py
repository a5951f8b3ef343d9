"""RecBench-MD CPU preset on real data, with a kill in the middle to prove that a run resumes.

    python benchmarks/bench_md.py                        # configs/bench-cpu.yaml, killed after 15 min, resumed
    python benchmarks/bench_md.py --kill-after 0         # one uninterrupted run

Runs `recfm bench run --config CONFIG` as a child process, kills it (SIGKILL: no clean-up code
runs) after ``--kill-after`` seconds, checks which cells were on disk, runs the same command again
to completion and checks that none of those cells was rewritten. Then it copies the heatmap to
docs/figures/ and writes the leaderboard, the fine-tuned-vs-zero-shot check and the timings to
docs/results.md between the 'bench-md' markers. Wall time counts both invocations, so the work
the kill threw away is included.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from baselines import ROOT, write_section  # noqa: E402

from recfm.bench.report import transfer_rows  # noqa: E402

TARGET_GAIN = 0.05  # fine-tuned AUC - zero-shot AUC on movielens-1m (issue 4)


def cell_stamps(output: Path) -> dict[str, int]:
    return {str(p.relative_to(output)): p.stat().st_mtime_ns for p in output.glob("cells/*/*/*.json")}


def invoke(cmd: list[str], log_file: Path, kill_after: float | None) -> tuple[float, bool]:
    """Run ``cmd``; SIGKILL it after ``kill_after`` seconds. Returns (wall seconds, was killed)."""
    t0 = time.perf_counter()
    with open(log_file, "a") as log:
        log.write(f"\n$ {' '.join(cmd)}\n")
        log.flush()
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            proc.wait(timeout=kill_after)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return time.perf_counter() - t0, True
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed with exit code {proc.returncode}; see {log_file}")
    return time.perf_counter() - t0, False


def gains(cells: list[dict]) -> list[tuple[str, str, float, float]]:
    """(model, target, zero-shot AUC, fine-tuned-on-target AUC) per model and target."""
    return sorted((r["model"], r["target"], r["zero_shot_auc"], r["auc"]) for r in transfer_rows(cells)
                  if r["setting"] == "target" and r["zero_shot_auc"] is not None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, default=Path("configs/bench-cpu.yaml"))
    ap.add_argument("--kill-after", type=float, default=900, help="seconds before the first invocation is killed (0: no kill)")
    args = ap.parse_args()

    from recfm.bench.report import leaderboard, read_cells
    from recfm.bench.runner import load_config

    config = load_config(ROOT / args.config)
    output = ROOT / config.output
    log_file = ROOT / "runs" / "logs" / "bench-md.log"
    log_file.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "recfm.cli", "bench", "run", "--config", str(args.config)]
    before = cell_stamps(output)
    invocations = []
    seconds, killed = invoke(cmd, log_file, args.kill_after or None)
    invocations.append((seconds, killed, len(cell_stamps(output)) - len(before)))
    at_kill = cell_stamps(output)
    if killed:
        print(f"killed after {seconds:.0f} s with {len(at_kill)} cells on disk; resuming", flush=True)
        seconds, killed = invoke(cmd, log_file, None)
        invocations.append((seconds, killed, len(cell_stamps(output)) - len(at_kill)))
    after = cell_stamps(output)
    rewritten = [k for k, t in at_kill.items() if after.get(k) != t]
    if rewritten:
        raise SystemExit(f"cells finished before the kill were recomputed: {rewritten}")

    subprocess.run([sys.executable, "-m", "recfm.cli", "bench", "report", str(output)], cwd=ROOT, check=True)
    cells = read_cells(output)
    figure = ROOT / "docs" / "figures" / f"{args.config.stem}-transfer.png"
    shutil.copyfile(output / "transfer.png", figure)

    total = sum(s for s, _, _ in invocations)
    runs = "; ".join(f"invocation {i}: {s / 60:.1f} min, {n} cells{' (then SIGKILL)' if k else ''}"
                     for i, (s, k, n) in enumerate(invocations, 1))
    finetunes = {}
    for c in cells:
        for stage in c.get("finetune", {}).get("stages", []):
            finetunes[(c["model"], c["plan"])] = stage
    ft_lines = [f"| {m} | {plan} | {s.get('trained_steps')} | {s.get('stopped')} | {s.get('best_step')} | "
                f"{s.get('best_auc', 0):.4f} | {s.get('seconds', 0):.0f} |" for (m, plan), s in sorted(finetunes.items())]
    gain_lines = []
    for model, target, zs, ft in gains(cells):
        verdict = ""
        if target == "movielens-1m":
            verdict = f"{'met' if ft - zs >= TARGET_GAIN else 'missed'} (target +{TARGET_GAIN})"
        gain_lines.append(f"| {model} | {target} | {zs:.4f} | {ft:.4f} | {ft - zs:+.4f} | {verdict} |")
    body = "\n".join([
        f"Command: `python benchmarks/bench_md.py --config {args.config} --kill-after {args.kill_after:g}` "
        f"(= `recfm bench run --config {args.config}`, SIGKILLed after {args.kill_after:g} s and run again; "
        "`recfm bench report` for the tables).  ",
        f"Run {dt.date.today().isoformat()}; {platform.machine()}, {os.cpu_count()} cores, CPU only; "
        f"wall time **{total / 60:.1f} min** in all ({runs}); cells finished before the kill were reused, none "
        f"recomputed ({len(at_kill)} of {len(after)}).",
        "",
        "Fine-tuned on the target vs zero-shot (test AUC):",
        "",
        "| model | target | zero-shot AUC | fine-tuned AUC | gain | issue target |",
        "|---|---|---|---|---|---|",
        *gain_lines,
        "",
        "LoRA fine-tuning runs (early stopping on validation AUC; step 0 is the zero-shot model):",
        "",
        "| model | fine-tuned on | steps | stopped by | best step | best valid AUC | seconds |",
        "|---|---|---|---|---|---|---|",
        *ft_lines,
        "",
        "Leaderboard (every cell):",
        "",
        leaderboard(cells),
        "",
        f"Transfer heatmap: [docs/figures/{figure.name}](figures/{figure.name}); CSV: `{config.output}/transfer.csv`.",
    ])
    write_section("bench-md", body)
    print(f"wrote docs/results.md and {figure.relative_to(ROOT)}")
    print(json.dumps({"minutes": round(total / 60, 1), "cells": len(after)}, indent=2))


if __name__ == "__main__":
    main()
