"""Run directories: train a model, evaluate it under the protocol, write the artifacts.

A run directory holds:
    config.yaml    the fully resolved configuration (re-runnable with --config)
    metrics.json   dataset, model, protocol, valid and test metrics, timings
    train.log      everything logged while training
    model/         the model's weights (safetensors or JSON, never pickle); text-based models
                   (textid) keep recommender/, id_generator/ and item_ids.tsv in the run directory
"""

from __future__ import annotations

import datetime as dt
import logging
import platform
import resource
import shutil
import time
from pathlib import Path
from typing import Callable

import torch
import yaml

from recfm import __version__, distributed
from recfm.baselines import MODELS
from recfm.data.cache import atomic_write_json, atomic_write_text
from recfm.config import RunConfig, dump, read_yaml, resolve
from recfm.data.registry import load_dataset
from recfm.evaluation.protocol import Protocol, evaluate

log = logging.getLogger("recfm.run")
CHECKPOINTS = "checkpoints"


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
    resume: bool = False,
) -> dict:
    """Train ``model`` on ``dataset``, select on validation, score test once, write ``output``.

    Trainable models checkpoint into ``output/checkpoints/`` while they train; ``resume`` continues
    an interrupted run from there (same resolved config required) and the folder is removed once
    the run has finished."""
    distributed.init()  # under torchrun / accelerate launch: every process runs this function
    entry = model_entry(model)
    run, model_cfg, layers = resolve(model, dataset, entry.config, config_file, overrides)
    output = Path(output)
    if resume:
        _check_resumable(output, dump(run), entry)
    elif output.exists() and any(output.iterdir()):
        if not overwrite:
            raise RunError(f"{output} already holds a run; pass --overwrite, --resume (an interrupted run) "
                           "or choose another --output")
        if not (output / "config.yaml").is_file():
            raise RunError(f"{output} is not a run directory (no config.yaml): --overwrite only replaces runs; "
                           "choose another --output")
    data = load_dataset(dataset, run.prep)  # before touching output: a bad dataset leaves no run folder
    distributed.barrier()  # every process has checked the folder before the first one writes into it
    main = distributed.is_main()
    if main:
        if overwrite and not resume and output.exists():
            shutil.rmtree(output)  # no stale metrics.json or weights of the old run beside the new one
        output.mkdir(parents=True, exist_ok=True)
        atomic_write_text(output / "config.yaml", dump(run))
    handler = _file_logger(output / "train.log") if main else None
    try:
        log.info("recfm %s: training %s on %s (config layers: %s)", __version__, model, dataset, " < ".join(layers))
        torch.manual_seed(run.seed)
        split = data.split()
        log.info("%s: %s", data.name, data.stats())
        recommender = entry.model(model_cfg, data.n_items, **_catalog_kwargs(entry, data, dataset))
        start = time.perf_counter()
        resumable = getattr(entry.model, "resumable", False)
        checkpoint_kwargs = {"checkpoints": output / CHECKPOINTS, "resume": resume} if resumable else {}
        history = recommender.fit(split, run.protocol, log=log.info, **checkpoint_kwargs)
        train_seconds = time.perf_counter() - start
        if main:
            recommender.save(output / entry.weights_dir)
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
        if main:
            atomic_write_json(output / "metrics.json", metrics)
            shutil.rmtree(output / CHECKPOINTS, ignore_errors=True)
        distributed.barrier()
        log.info("valid %s", _short(metrics["valid"]))
        log.info("test  %s", _short(metrics["test"]))
        return metrics
    finally:
        if handler is not None:
            logging.getLogger("recfm").removeHandler(handler)
            handler.close()


def _check_resumable(output: Path, config_text: str, entry) -> None:
    if not getattr(entry.model, "resumable", False):
        raise RunError(f"{entry.name} training cannot be resumed (it writes no checkpoints); start it again")
    if not (output / "config.yaml").is_file():
        raise RunError(f"nothing to resume in {output}: it holds no run (start it without --resume)")
    if (output / "metrics.json").is_file():
        raise RunError(f"{output} holds a finished run: nothing to resume")
    saved, now = yaml.safe_load((output / "config.yaml").read_text()), yaml.safe_load(config_text)
    for cfg in (saved, now):  # settings that do not change what is computed (threads, time budget, ...)
        for key in getattr(entry.model, "resume_free", ()):
            (cfg.get("model") or {}).pop(key, None)
    if saved != now:
        raise RunError(f"the resolved config differs from {output / 'config.yaml'}: resume with the same model, "
                       "dataset, --config and overrides (or --config that file)")


def _catalog_kwargs(entry, data, dataset: str) -> dict:
    if not getattr(entry.model, "uses_catalog", False):
        return {}
    from recfm.data.registry import DATASETS, resolve
    from recfm.textid.training import Catalog

    source = resolve(dataset)[2] if (dataset in DATASETS or Path(dataset).exists()) else None
    return {"catalog": Catalog.of(data, source if source is not None and source.is_dir() else None)}


def load_run(run_dir: Path):
    """(run config, dataset, fitted recommender) of a finished run directory."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise RunError(f"{run_dir} is not a run directory (no config.yaml)")
    from pydantic import ValidationError

    try:
        run = RunConfig.model_validate(read_yaml(run_dir / "config.yaml"))
        entry = model_entry(run.model["name"])
        model_cfg = entry.config.model_validate(run.model)
    except (ValidationError, KeyError, TypeError) as e:
        raise RunError(f"{run_dir / 'config.yaml'} is not a valid run config: {e}") from None
    data = load_dataset(run.dataset, run.prep)
    weights = run_dir / entry.weights_dir
    if entry.weights_dir and not weights.is_dir():
        raise RunError(f"{run_dir} has no {entry.weights_dir}/ folder: training did not finish")
    try:
        model = entry.model.load(weights, model_cfg, data.n_items, **_catalog_kwargs(entry, data, run.dataset))
    except FileNotFoundError as e:
        raise RunError(str(e)) from None
    except Exception as e:  # a truncated or foreign weights file: say which run, not a library traceback
        raise RunError(f"{run_dir}: the saved model in {weights} cannot be loaded ({type(e).__name__}: {e}); "
                       "the run directory is damaged or from another version: train it again") from None
    return run, data, model


def evaluate_run(run_dir: Path, progress=None, exclude_history: bool | None = None, dataset: str | None = None,
                 splits: tuple[str, ...] = ("valid", "test"), max_cases: int | None = None) -> dict:
    """Re-score a finished run on validation and test with its recorded protocol. ``dataset``: score
    it on another dataset instead (zero-shot; only models that map item text to IDs can)."""
    run, data, recommender = load_run(run_dir)
    protocol = run.protocol
    if exclude_history is not None:
        protocol = protocol.model_copy(update={"exclude_history": exclude_history})
    if max_cases is not None:
        protocol = protocol.model_copy(update={"max_cases": max_cases})
    extra: dict = {}
    if dataset is not None and dataset != run.dataset:
        if not hasattr(recommender, "for_catalog"):
            raise RunError(f"{run.model['name']} cannot score an unseen dataset: its items are learned ids, "
                           "not text (zero-shot needs a text-based model such as textid)")
        from recfm.textid.training import Catalog

        data = load_dataset(dataset)
        recommender = recommender.for_catalog(Catalog.of(data))
        extra = {"trained_on": run.dataset, "zero_shot": True, **recommender.report}
    bad = set(splits) - {"valid", "test"}
    if bad or not splits:
        raise RunError(f"splits must be valid and/or test, not {sorted(bad) or 'nothing'}")
    split = data.split()
    scored = {name: _evaluate(recommender, getattr(split, name), protocol, name, progress) for name in splits}
    return {"dataset": data.name, "model": run.model["name"], "protocol": protocol.describe(), **scored, **extra,
            "environment": _environment()}


def _evaluate(model, cases, protocol: Protocol, stage: str, progress) -> dict:
    scored = protocol.sample(cases)
    callback = progress(f"evaluating {stage}", len(scored)) if progress else None
    metrics = evaluate(model, scored, protocol, progress=callback)
    if len(scored) < len(cases):
        metrics["cases_in_split"] = len(cases)
    return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in metrics.items()}


def _short(m: dict) -> str:
    return " ".join(f"{k}={m[k]:.4f}" for k in ("hr@10", "ndcg@10", "mrr") if k in m)


def _environment() -> dict:
    return {
        "recfm": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
        "processes": distributed.world_size(),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


def recommend_items(run_dir: Path, history: list[str] | None = None, k: int = 10, *, user: str | None = None,
                    exclude_history: bool = False) -> dict:
    """Top-k items of a trained run for a history of the dataset's item ids, or for a dataset user
    (their test-time history: every item but the held-out last one, shown as ``held_out``)."""
    from recfm.serve.service import RecommendationService, RequestError

    service = RecommendationService.from_run(run_dir)
    data = service.data
    held_out = None
    try:
        if user is not None:
            if user not in data.user_ids:
                raise RunError(f"user {user!r} is not in {data.name} (e.g. {', '.join(data.user_ids[:3])})")
            seq = data.sequence(data.user_ids.index(user)).tolist()
            hist, held_out = seq[:-1], seq[-1]
            if not hist:
                raise RunError(f"user {user!r} has a single item: no history to recommend from")
        else:
            hist = service.resolve(item_ids=history or [])
        [recs] = service.recommend([hist], [service.check_k(k)], [exclude_history])
    except RequestError as e:
        raise RunError(str(e)) from None
    return {"run": str(run_dir), "model": service.model_name, "dataset": data.name,
            "history": [service.describe(i) for i in hist], "held_out": service.describe(held_out) if held_out else None,
            "recommendations": recs}
