"""Which torch thread settings keep a training run fast on a shared machine (issue: one busy
process beside a run that uses every core slowed it about 10x).

For each setting, a fresh process times SASRec training steps (Beauty-sized catalog: 12,101 items,
hidden 256, batch 256, max_len 50, full-softmax CE), once with the machine to itself and once beside
``--busy`` single-threaded spinning processes. Settings: intra-op threads (all cores, cores - 1, 1),
OpenMP wait policy (the default, PASSIVE), and recfm's default (``num_threads=None``).

    python benchmarks/threads.py --steps 30 --busy 1

Run it on a quiet box; the table goes to stdout (markdown) and --json FILE.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

STEP_SCRIPT = r"""
import json, os, sys, time
if sys.argv[3] == "torch-first":  # torch starts OpenMP before recfm could set a policy: the variable as given
    import torch
import recfm  # otherwise first, as the CLI does: recfm sets its OpenMP default before torch starts
import numpy as np, torch
from recfm.baselines.sasrec import SASRec, SASRecConfig
from recfm.baselines.trainer import NextItemLoss
from recfm.compute import training_context
threads = None if sys.argv[1] == "default" else int(sys.argv[1])
steps = int(sys.argv[2])
cfg = SASRecConfig(hidden_size=256, num_layers=1, num_heads=1, dropout=0.2, max_len=50, num_threads=threads)
model = SASRec(cfg, 12101)
rng = np.random.default_rng(0)
batch = torch.from_numpy(rng.integers(1, 12102, size=(256, 51)))
with training_context(cfg.num_threads, 0):
    used = torch.get_num_threads()
    loss_mod = NextItemLoss(model.net)
    opt = torch.optim.AdamW(model.net.parameters(), lr=1e-3)
    model.net.train()
    for i in range(steps + 3):
        if i == 3:
            t0 = time.perf_counter()
        loss, _ = loss_mod(batch, float(256 * 50), 1)
        opt.zero_grad(); loss.backward(); opt.step()
    print(json.dumps({"threads": used, "seconds_per_step": (time.perf_counter() - t0) / steps}))
"""


def spin() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def measure(threads: str, env_extra: dict, steps: int, busy: int) -> dict:
    spinners = [spin() for _ in range(busy)]
    try:
        time.sleep(0.5 if busy else 0)
        env = {**os.environ, **env_extra}
        for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            env.pop(key, None)
        order = "recfm-first"
        if "OMP_WAIT_POLICY" not in env_extra:  # recfm's default: no variable, recfm imported first
            env.pop("OMP_WAIT_POLICY", None)
        if env.get("OMP_WAIT_POLICY") == "":  # OpenMP's own default: no variable, torch imported before recfm
            env.pop("OMP_WAIT_POLICY")
            order = "torch-first"
        done = subprocess.run([sys.executable, "-c", STEP_SCRIPT, threads, str(steps), order], capture_output=True, text=True,
                              env=env, timeout=3600)
        if done.returncode:
            raise RuntimeError(done.stderr[-2000:])
        return json.loads(done.stdout.strip().splitlines()[-1])
    finally:
        for p in spinners:
            p.kill()
            p.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=15)
    ap.add_argument("--busy", type=int, default=1, help="single-threaded spinning processes beside the run")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    settings = [("all cores, OMP_WAIT_POLICY=ACTIVE", str(cores), {"OMP_WAIT_POLICY": "ACTIVE"}),
                ("all cores, OpenMP's default policy", str(cores), {"OMP_WAIT_POLICY": ""}),
                ("all cores, OMP_WAIT_POLICY=PASSIVE", str(cores), {"OMP_WAIT_POLICY": "PASSIVE"}),
                ("1 thread (OpenMP's default policy)", "1", {"OMP_WAIT_POLICY": ""})]
    if cores > 2:
        settings.insert(2, ("cores - 1", str(cores - 1), {"OMP_WAIT_POLICY": ""}))
    settings.append(("recfm default (num_threads=None, PASSIVE set by recfm)", "default", {}))
    rows = []
    for name, threads, env in settings:
        alone = measure(threads, env, args.steps, 0)
        shared = measure(threads, env, args.steps, args.busy)
        rows.append({"setting": name, "threads": alone["threads"], "alone_s": round(alone["seconds_per_step"], 4),
                     "shared_s": round(shared["seconds_per_step"], 4),
                     "slowdown": round(shared["seconds_per_step"] / alone["seconds_per_step"], 2)})
        print(rows[-1], flush=True)
    print(f"\n{cores} cores; seconds per training step, alone and beside {args.busy} busy single-threaded process(es)\n")
    print("| setting | torch threads | alone s/step | shared s/step | slowdown |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['setting']} | {r['threads']} | {r['alone_s']:.3f} | {r['shared_s']:.3f} | {r['slowdown']:.2f}x |")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"cores": cores, "busy": args.busy, "steps": args.steps, "rows": rows}, fh, indent=2)


if __name__ == "__main__":
    main()
