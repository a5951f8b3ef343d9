"""A real `recfm tune` search on MovieLens-100K that is killed part-way and resumed.

    python benchmarks/tune_ml100k.py --trials 8 --kill-after 240

Runs `recfm tune sasrec -d movielens-100k --space configs/tune/sasrec-movielens-100k.yaml`, SIGKILLs
it after --kill-after seconds, runs the same command again (it resumes from OUTPUT/study.db), and
prints the trials table and the best trial's test scores (scored once).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--kill-after", type=float, default=240, help="seconds before the first invocation is killed")
    ap.add_argument("--output", type=Path, default=ROOT / "runs" / "tune-ml100k")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    cmd = [sys.executable, "-m", "recfm.cli", "--quiet", "tune", "sasrec", "-d", "movielens-100k", "--space",
           str(ROOT / "configs" / "tune" / "sasrec-movielens-100k.yaml"), "--trials", str(args.trials),
           "-o", str(args.output)]
    if args.threads:
        space = args.output.parent / "tune-ml100k-space.yaml"
        space.parent.mkdir(parents=True, exist_ok=True)
        space.write_text((ROOT / "configs" / "tune" / "sasrec-movielens-100k.yaml").read_text().replace(
            "fixed:\n", f"fixed:\n  num_threads: {args.threads}\n", 1))
        cmd[cmd.index("--space") + 1] = str(space)
    print("[run]", shlex.join(cmd), flush=True)
    t0 = time.perf_counter()
    first = subprocess.Popen(cmd, cwd=ROOT, start_new_session=True)
    try:
        first.wait(timeout=args.kill_after)
        print(f"the search finished before the kill ({time.perf_counter() - t0:.0f} s): raise --trials", flush=True)
    except subprocess.TimeoutExpired:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
        print(f"[killed] after {time.perf_counter() - t0:.0f} s", flush=True)
    t1 = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True)
    best = json.loads((args.output / "best.json").read_text())
    print(f"resumed run: {time.perf_counter() - t1:.0f} s; whole search {time.perf_counter() - t0:.0f} s")
    print(json.dumps({k: best[k] for k in ("trials", "completed", "pruned", "best_trial", "best_valid", "best_params", "test")},
                     indent=1))


if __name__ == "__main__":
    main()
