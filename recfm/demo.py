"""`recfm demo`: the main job on real data, end to end.

Pop and SASRec on MovieLens-1M (``configs/sasrec-DATASET-demo.yaml``), then the textual-ID
recommender on MovieLens-100K (``configs/textid-DATASET-demo.yaml``) and its top 10 for a real
user. Every step is an ordinary run directory under ``output``; the CLI only prints.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from recfm.config import PRESET_DIR
from recfm.model_table import MODELS
from recfm.runs import train_run
from recfm.serve.service import recommend_items


def run_demo(output: Path, dataset: str = "movielens-1m", textid_dataset: str = "movielens-100k",
             user: str = "196", skip_baselines: bool = False, progress=None,
             section: Callable[[str], None] = print,
             show_metrics: Callable[[list[dict], str], None] = lambda rows, title: None) -> dict:
    """Train the demo's runs one after another; returns the textual-ID run's recommendations for
    ``user`` (as ``recommend_items``). ``section(title)`` announces each part, ``show_metrics(rows,
    title)`` receives each part's metrics as soon as they exist."""
    plan = [] if skip_baselines else [("pop", None), ("sasrec", PRESET_DIR / f"sasrec-{dataset}-demo.yaml")]
    rows = []
    for model, cfg in plan:
        if model not in MODELS:
            section(f"skipping {model}: not available in this build")
            continue
        section(f"{model} on {dataset}")
        rows.append(train_run(model, dataset, output / model, cfg if cfg is not None and cfg.is_file() else None,
                              overwrite=True, progress=progress))
    if rows:
        show_metrics(rows, f"demo: {dataset}, leave-one-out, full ranking")
    section(f"textid (IDGenRec) on {textid_dataset}")
    cfg = PRESET_DIR / f"textid-{textid_dataset}-demo.yaml"
    metrics = train_run("textid", textid_dataset, output / "textid", cfg if cfg.is_file() else None,
                        overwrite=True, progress=progress)
    show_metrics([metrics], f"demo: textual-ID recommender on {textid_dataset}")
    return recommend_items(output / "textid", user=user, k=10)
