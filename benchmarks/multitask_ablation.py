"""RecFound ablation on real MovieLens tasks (CPU preset), into docs/results.md.

    python benchmarks/multitask_ablation.py                      # configs/multitask-cpu.yaml
    python benchmarks/multitask_ablation.py --paper-variants     # RecFound Table 4's cumulative variants
    python benchmarks/multitask_ablation.py -- train.num_threads=1 train.max_minutes=90   # overrides

Runs `recfm multitask ablation` (finished variants are reused), copies the full method's two
plots to docs/figures/ and writes the table, the paper's Table 4 and the wall time between the
'multitask-ablation' markers.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from baselines import ROOT, write_section  # noqa: E402

PAPER_TABLE4 = """| RecFound Table 4 (Mistral-7B, RecFound data) | Generative avg | Embedding avg |
|---|---|---|
| RecFound | 0.704 | 0.775 |
| w/o M.M. | 0.703 | 0.775 |
| w/o M.M. & S2Sched | 0.679 | 0.762 |
| w/o M.M. & TMoLE | 0.678 | 0.759 |
| w/o M.M. & S2Sched & TMoLE | 0.684 | 0.748 |"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, default=Path("configs/multitask-cpu.yaml"))
    ap.add_argument("--output", type=Path, default=Path("runs/multitask/cpu"))
    ap.add_argument("--paper-variants", action="store_true")
    ap.add_argument("overrides", nargs="*", help="section.key=value overrides of the config, after `--`")
    args = ap.parse_args()
    cmd = [sys.executable, "-m", "recfm.cli", "multitask", "ablation", "-c", str(args.config), "-o", str(args.output),
           *(["--paper-variants"] if args.paper_variants else []), *args.overrides]
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True)
    minutes = (time.perf_counter() - t0) / 60
    figures = ROOT / "docs" / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    for name in ("sample_ratios.png", "routing_similarity.png"):
        shutil.copyfile(ROOT / args.output / "recfound" / name, figures / f"multitask-{name}")
    table = (ROOT / args.output / "table.md").read_text().strip()
    body = "\n".join([
        f"Command: `python benchmarks/multitask_ablation.py --config {args.config}"
        f"{' --paper-variants' if args.paper_variants else ''}"
        f"{' -- ' + ' '.join(args.overrides) if args.overrides else ''}` (= `recfm multitask ablation`).  ",
        f"Run {dt.date.today().isoformat()}; {platform.machine()}, {os.cpu_count()} cores, CPU only; "
        f"{minutes:.1f} min in this invocation (variants finished earlier are reused). Test records of the "
        "MovieLens tasks (docs/multitask.md); generative columns: macro-F1 or Recall@1, embedding: NDCG@20.",
        "",
        table,
        "",
        PAPER_TABLE4,
        "",
        "Plots of the full method: [sample ratios per step](figures/multitask-sample_ratios.png) (paper Figure 3), "
        "[routing similarity](figures/multitask-routing_similarity.png) (paper Figure 2).",
    ])
    write_section("multitask-ablation", body)
    print("wrote docs/results.md")


if __name__ == "__main__":
    main()
