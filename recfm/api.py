"""The Python API: the functions the CLI calls, in a few lines.

    import recfm

    data = recfm.load_dataset("movielens-100k")            # or a folder in a supported format
    run = recfm.train("sasrec", "movielens-100k", "runs/ml100k", overrides=["epochs=3"])
    run.metrics["test"]["ndcg@10"]
    run = recfm.load_run("runs/ml100k")                     # later, in another process
    run.evaluate(splits=("test",))["test"]                  # re-scored with the run's protocol
    run.recommend(["50", "172"], k=5)                       # [{"rank": 1, "item_id": ..., "title": ..., "score": ...}]

Every model answers through the same ``recommend`` seam, so this code does not change with the model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from recfm.data.registry import load_dataset
from recfm.errors import RecfmError


@dataclass
class Run:
    """A finished run directory with its model loaded."""

    directory: Path
    config: Any  # recfm.config.RunConfig
    data: Any  # recfm.data.dataset.SequenceDataset
    model: Any  # answers recommend(histories, k, exclude)

    @property
    def metrics(self) -> dict:
        path = self.directory / "metrics.json"
        return json.loads(path.read_text()) if path.is_file() else {}

    def recommend(self, history: Sequence[str], k: int = 10, exclude_history: bool = False) -> list[dict]:
        """Top-k items after ``history`` (the dataset's item ids, oldest first)."""
        index = self.data.item_index()
        unknown = [h for h in history if str(h) not in index]
        if unknown:
            raise RecfmError(f"{len(unknown)} item ids are not in {self.data.name}: {unknown[:5]}")
        items = [index[str(h)] for h in history]
        top = self.model.recommend([items], k, exclude=[set(items) if exclude_history else set()])
        return [{"rank": r + 1, "item_id": self.data.item_ids[i - 1], "title": self.data.item_titles[i - 1],
                 "score": float(s)} for r, (i, s) in enumerate(zip(top.items[0], top.scores[0])) if i > 0]

    def evaluate(self, splits: Sequence[str] = ("valid", "test"), **options) -> dict:
        """Re-score the run under its recorded protocol (options as in ``recfm evaluate``)."""
        from recfm.runs import evaluate_run

        return evaluate_run(self.directory, splits=tuple(splits), **options)


def train(model: str, dataset: str, output: str | Path, config: str | Path | None = None,
          overrides: Sequence[str] = (), *, overwrite: bool = False, resume: bool = False,
          use_preset: bool = True) -> Run:
    """``recfm train MODEL -d DATASET -o OUTPUT [-c CONFIG] [key=value ...]``; returns the loaded run."""
    from recfm.runs import train_run

    train_run(model, dataset, Path(output), Path(config) if config else None, list(overrides), overwrite=overwrite,
              resume=resume, use_preset=use_preset)
    return load_run(output)


def load_run(directory: str | Path, allow_data_change: bool = False) -> Run:
    """A finished run directory (``recfm train``'s output), its data and its model."""
    from recfm.runs import load_run as _load

    config, data, model = _load(Path(directory), allow_data_change=allow_data_change)
    return Run(Path(directory), config, data, model)


__all__ = ["Run", "load_dataset", "load_run", "train"]
