"""Milliseconds per training step of the item-level textual-ID model, and where they go.

Builds the preset's model (``configs/textid-DATASET.yaml``, formulation ``items``) from a fixed seed,
trains ``--steps`` batches of the training windows in a fixed random order and prints the median
step time (the first two steps are warm-up); ``--profile`` then runs five more steps under
``torch.profiler`` and prints the operators by self CPU time, grouped by input shape. The loss at
the last step is printed so that two code versions can be checked to train alike.

    python benchmarks/textid_step_profile.py --dataset amazon-beauty --precision bf16 --threads 1
    python benchmarks/textid_step_profile.py --profile            # where a float32 step goes

Run it with the box to itself.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from recfm.data.registry import load_dataset, resolve
from recfm.data.windows import training_windows
from recfm.textid.config import TextIDConfig
from recfm.textid.ids import make_unique, normalize_id
from recfm.textid.initial_ids import initial_ids
from recfm.textid.item_level import ItemLevelNet, ItemLevelRecommender, WordVocab

ROOT = Path(__file__).resolve().parents[1]


def build(dataset: str) -> tuple[ItemLevelRecommender, np.ndarray, TextIDConfig]:
    preset = yaml.safe_load((ROOT / "configs" / f"textid-{dataset}.yaml").read_text())["model"]
    # fields an older recfm lacks (e.g. autocast) are dropped, so a checkout before a change can be timed too
    cfg = TextIDConfig(**{k: v for k, v in preset.items() if k in TextIDConfig.model_fields})
    data = load_dataset(dataset)
    id_cfg = cfg.initial_ids
    if id_cfg.path and id_cfg.path.startswith("dataset:"):
        id_cfg = id_cfg.model_copy(update={"path": str(resolve(dataset)[2] / id_cfg.path[len("dataset:"):])})
    ids, _ = initial_ids(list(data.item_ids), list(data.item_text), id_cfg)
    ids, _ = make_unique([normalize_id(x) for x in ids])
    vocab = WordVocab.of_ids(ids)
    torch.manual_seed(0)
    net = ItemLevelNet(cfg.items, len(vocab), cfg.max_history)
    rec = ItemLevelRecommender(net, vocab, ids, max_len=cfg.max_history, loss=cfg.loss)
    return rec, training_windows(data.split().train, cfg.max_history), cfg


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="amazon-beauty")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--steps", type=int, default=14)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rec, windows, cfg = build(args.dataset)
    optimizer = torch.optim.AdamW(rec.model.parameters(), lr=cfg.rec_lr, weight_decay=cfg.rec_weight_decay)
    lengths = (windows > 0).sum(1)
    order = np.random.default_rng(0).permutation(len(windows))
    precision = torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision == "bf16")
    rec.model.train()

    def step(i: int) -> float:
        rows = order[i * cfg.batch_size : (i + 1) * cfg.batch_size]
        batch = torch.from_numpy(windows[rows][:, : max(2, int(lengths[rows].max()))])
        optimizer.zero_grad(set_to_none=True)
        with precision:
            loss, _ = rec.loss(batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(rec.model.parameters(), 1.0)
        optimizer.step()
        return float(loss.detach())

    times, loss = [], float("nan")
    for i in range(args.steps):
        t0 = time.perf_counter()
        loss = step(i)
        times.append(time.perf_counter() - t0)
    print(f"{args.dataset} {args.precision}, {args.threads} thread(s): median step {np.median(times[2:]) * 1000:.0f} ms "
          f"(batch {cfg.batch_size}, {len(windows) // cfg.batch_size + 1} steps an epoch); loss at step {args.steps}: {loss:.3f}")
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            for i in range(args.steps, args.steps + 5):
                step(i)
        print(prof.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total", row_limit=20))


if __name__ == "__main__":
    main()
