"""Run directories: train a model, evaluate it under the protocol, write the artifacts.

A run directory holds:
    config.yaml    the fully resolved configuration (re-runnable with --config)
    metrics.json   dataset, model, protocol, valid and test metrics, timings
    train.log      everything logged while training
    model/         the model's weights (safetensors or JSON, never pickle)
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import platform
import resource
import time
from pathlib import Path
from typing import Callable

import torch

from recfm import __version__
from recfm.baselines import MODELS
from recfm.data.cache import atomic_write_json
from recfm.config import RunConfig, dump, read_yaml, resolve
from recfm.data.registry import load_dataset
from recfm.evaluation.protocol import Protocol, evaluate

log = logging.getLogger("recfm.run")


class RunError(RuntimeError):
    pass


def model_entry(name: str):
    if name not in MODELS:
        raise RunError(f"unknown model '{name}'; available: {', '.join(MODELS)}")
    return MODELS[name]


def peak_memory_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # Linux reports KiB


def _file_logger(path: Path) -> logging.Handler:
    handler = logging.FileHandler(path, mode="a")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger("recfm").addHandler(handler)
    logging.getLogger("recfm").setLevel(logging.INFO)
    return handler


def train_run(
    model: str,
    dataset: str,
    output: Path,
    config_file: Path | None = None,
    overrides: tuple[str, ...] | list[str] = (),
    overwrite: bool = False,
    progress: Callable[[str, int], Callable[[int], None]] | None = None,
) -> dict:
    """Train ``model`` on ``dataset``, select on validation, score test once, write ``output``."""
    entry = model_entry(model)
    run, model_cfg, layers = resolve(model, dataset, entry.config, config_file, overrides)
    output = Path(output)
    if output.exists() and any(output.iterdir()) and not overwrite:
        raise RunError(f"{output} already holds a run; pass --overwrite or choose another --output")
    data = load_dataset(dataset, run.prep)  # before touching output: a bad dataset leaves no run folder
    output.mkdir(parents=True, exist_ok=True)
    (output / "config.yaml").write_text(dump(run))
    handler = _file_logger(output / "train.log")
    try:
        log.info("recfm %s: training %s on %s (config layers: %s)", __version__, model, dataset, " < ".join(layers))
        torch.manual_seed(run.seed)
        split = data.split()
        log.info("%s: %s", data.name, data.stats())
        recommender = entry.model(model_cfg, data.n_items)
        start = time.perf_counter()
        history = recommender.fit(split, run.protocol, log=log.info)
        train_seconds = time.perf_counter() - start
        recommender.save(output / "model")
        metrics = {
            "dataset": data.name,
            "model": model,
            "protocol": run.protocol.describe(),
            "valid": _evaluate(recommender, split.valid, run.protocol, "valid", progress),
            "test": _evaluate(recommender, split.test, run.protocol, "test", progress),
            "train_seconds": round(train_seconds, 2),
            "peak_memory_mb": peak_memory_mb(),
            "training": history,
            "dataset_stats": data.stats(),
            "environment": _environment(),
        }
        atomic_write_json(output / "metrics.json", metrics)
        log.info("valid %s", _short(metrics["valid"]))
        log.info("test  %s", _short(metrics["test"]))
        return metrics
    finally:
        logging.getLogger("recfm").removeHandler(handler)
        handler.close()


def load_run(run_dir: Path):
    """(run config, dataset, fitted recommender) of a finished run directory."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise RunError(f"{run_dir} is not a run directory (no config.yaml)")
    run = RunConfig.model_validate(read_yaml(run_dir / "config.yaml"))
    entry = model_entry(run.model["name"])
    model_cfg = entry.config.model_validate(run.model)
    data = load_dataset(run.dataset, run.prep)
    if not (run_dir / "model").is_dir():
        raise RunError(f"{run_dir} has no model/ folder: training did not finish")
    return run, data, entry.model.load(run_dir / "model", model_cfg, data.n_items)


def evaluate_run(run_dir: Path, progress=None, exclude_history: bool | None = None) -> dict:
    """Re-score a finished run on validation and test with its recorded protocol."""
    run, data, recommender = load_run(run_dir)
    protocol = run.protocol
    if exclude_history is not None:
        protocol = protocol.model_copy(update={"exclude_history": exclude_history})
    split = data.split()
    return {
        "dataset": data.name,
        "model": run.model["name"],
        "protocol": protocol.describe(),
        "valid": _evaluate(recommender, split.valid, protocol, "valid", progress),
        "test": _evaluate(recommender, split.test, protocol, "test", progress),
    }


def _evaluate(model, cases, protocol: Protocol, stage: str, progress) -> dict:
    callback = progress(f"evaluating {stage}", len(cases)) if progress else None
    metrics = evaluate(model, cases, protocol, progress=callback)
    return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in metrics.items()}


def _short(m: dict) -> str:
    return " ".join(f"{k}={m[k]:.4f}" for k in ("hr@10", "ndcg@10", "mrr") if k in m)


def _environment() -> dict:
    return {
        "recfm": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
