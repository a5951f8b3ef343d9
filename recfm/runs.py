"""Run directories: train a model, evaluate it under the protocol, write the artifacts.

A run directory holds:
    config.yaml    the fully resolved configuration (re-runnable with --config)
    metrics.json   dataset, model, protocol, valid and test metrics, timings
    train.log      everything logged while training
    model/         the model's weights (safetensors or JSON, never pickle); text-based models
                   (textid) keep recommender/, id_generator/ and item_ids.tsv in the run directory
    history.jsonl  one line per training epoch, written as it trains; curves.png at the end;
                   tensorboard/ with report_to=tensorboard (recfm/curves.py; none for pop)
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

from recfm import __version__, distributed, rundir
from recfm.model_table import MODELS
from recfm.config import ConfigError, RunConfig, dump, read_yaml, resolve
from recfm.data.catalog import Catalog
from recfm.atomic import atomic_write_json, atomic_write_text
from recfm.errors import RecfmError, describe_validation_error
from recfm.data.registry import load_dataset
from recfm.evaluation.protocol import Protocol, evaluate
from recfm.models.batching import native_bf16

log = logging.getLogger("recfm.run")
CHECKPOINTS = "checkpoints"


class RunError(RecfmError, RuntimeError):
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
    use_preset: bool = True,
    score_test: bool = True,
    on_validation: Callable[[int, dict], None] | None = None,
) -> dict:
    """Train ``model`` on ``dataset``, select on validation, score test once, write ``output``.

    Trainable models checkpoint into ``output/checkpoints/`` while they train; ``resume`` continues
    an interrupted run from there (same resolved config required) and the folder is removed once
    the run has finished. ``use_preset=False`` skips the shipped ``configs/MODEL-DATASET.yaml``.
    ``score_test=False`` (a hyper-parameter search) never scores the test split; ``on_validation(epoch,
    metrics)`` is called after each validation of models that validate per epoch (it may raise to stop).
    Nothing is written before the config, the output folder and the dataset have been checked, and
    a run that fails before training starts leaves no folder behind."""
    distributed.init()  # under torchrun / accelerate launch: every process runs this function
    entry = model_entry(model)
    run, model_cfg, layers = resolve(model, dataset, entry.config, config_file, overrides, use_preset=use_preset)
    check_device(model_cfg)
    from recfm.curves import require_integrations

    require_integrations(getattr(model_cfg, "report_to", "none"))  # e.g. tensorboard missing: before any write
    output = Path(output)
    rundir.check_output(output, overwrite=overwrite, resume=resume)
    if resume:
        _check_resumable(output, dump(run), entry)
    data = load_dataset(dataset, run.prep)  # before touching output: a bad dataset leaves no run folder
    distributed.barrier()  # every process has checked the folder before the first one writes into it
    main = distributed.is_main()
    created = not output.exists()
    if main:
        if overwrite and not resume and output.exists() and any(output.iterdir()):
            # no stale metrics.json or weights of the old run beside the new one; nothing else touched
            kept = rundir.clear_run(output, entry.artifacts)
            if kept:
                log.warning("%s: --overwrite kept files recfm did not write: %s", output, ", ".join(kept))
        output.mkdir(parents=True, exist_ok=True)
        rundir.mark(output, __version__)
        atomic_write_text(output / "config.yaml", dump(run, layers))
        rundir.pin_data(output, run.dataset, data)
    handler = _file_logger(output / "train.log") if main else None
    training = False
    try:
        log.info("recfm %s: training %s on %s (config layers: %s)", __version__, model, dataset, " < ".join(layers))
        torch.manual_seed(run.seed)
        split = data.split()
        log.info("%s: %s", data.name, data.stats())
        env = _environment(model_cfg)
        log.info("threads: %s torch threads, OMP_WAIT_POLICY=%s", env["torch_threads"], env["omp_wait_policy"])
        recommender = entry.model(model_cfg, data.n_items, **catalog_kwargs(entry, data, dataset))
        start = time.perf_counter()
        resumable = entry.model.resumable
        checkpoint_kwargs = {"checkpoints": output / CHECKPOINTS, "resume": resume} if resumable else {}
        if entry.model.writes_history:  # history.jsonl, curves.png (recfm/curves.py)
            checkpoint_kwargs["run_dir"] = output
        training = True
        if on_validation is not None and entry.model.reports_validation:
            checkpoint_kwargs["on_validation"] = on_validation
        history = recommender.fit(split, run.protocol, log=log.info, **checkpoint_kwargs)
        train_seconds = time.perf_counter() - start
        if resume and isinstance(history, dict) and "seconds" in history:
            train_seconds = float(history["seconds"])  # the whole training, before and after the interruption
        if main:
            recommender.save(output / entry.weights_dir)
        metrics = {
            "dataset": data.name,
            "model": model,
            "protocol": run.protocol.describe(),
            "valid": _evaluate(recommender, split.valid, run.protocol, "valid", progress),
            **({"test": _evaluate(recommender, split.test, run.protocol, "test", progress)} if score_test else {}),
            "train_seconds": round(train_seconds, 2),
            "config_layers": layers,
            "peak_memory_mb": peak_memory_mb(),
            "training": history,
            "dataset_stats": data.stats(),
            "environment": _environment(model_cfg),
        }
        if main:
            atomic_write_json(output / "metrics.json", metrics)
            shutil.rmtree(output / CHECKPOINTS, ignore_errors=True)
        distributed.barrier()
        log.info("valid %s", _short(metrics["valid"]))
        if score_test:
            log.info("test  %s", _short(metrics["test"]))
        return metrics
    except BaseException:
        if main and created and not training and output.is_dir():
            if handler is not None:
                logging.getLogger("recfm").removeHandler(handler)
                handler.close()
                handler = None
            shutil.rmtree(output, ignore_errors=True)  # a failed start leaves nothing behind
        raise
    finally:
        if handler is not None:
            logging.getLogger("recfm").removeHandler(handler)
            handler.close()


def check_device(model_cfg) -> None:
    """A CUDA device asked of a torch without CUDA is a config mistake, said before anything runs."""
    device = str(getattr(model_cfg, "device", "") or "")
    if device.startswith("cuda") and not torch.cuda.is_available():
        build = "a CPU-only build" if torch.version.cuda is None else "no visible GPU"
        raise ConfigError(f"device={device!r}, but this torch {torch.__version__} has {build}: use device=cpu "
                          "(or device=auto, which picks cuda when there is one)")
    if device.startswith("cuda:") and device[5:].isdigit() and int(device[5:]) >= torch.cuda.device_count():
        raise ConfigError(f"device={device!r}, but only {torch.cuda.device_count()} CUDA devices are visible")


def _check_resumable(output: Path, config_text: str, entry) -> None:
    if not entry.model.resumable:
        raise RunError(f"{entry.name} training cannot be resumed (it writes no checkpoints); start it again "
                       "with --overwrite instead of --resume")
    rundir.check_resumable(output, lambda saved: yaml.safe_load(saved.read_text()), yaml.safe_load(config_text),
                           {"model": entry.model.resume_free},
                           "the same model, dataset, --config and overrides (or --config that file)", error=RunError)


def catalog_kwargs(entry, data, dataset: str) -> dict:
    """What a model-table row's constructor takes beside its config and item count: the catalog, for
    models that read item metadata (``uses_catalog``)."""
    return {"catalog": _catalog(data, dataset)} if entry.model.uses_catalog else {}


def _catalog(data, dataset: str):
    """What a text-based model reads of ``dataset``: its items' metadata, and its folder (where files
    such as a table of initial IDs live), when it has one."""
    from recfm.data.registry import DATASETS, resolve

    source = resolve(dataset)[2] if (dataset in DATASETS or Path(dataset).exists()) else None
    return Catalog.of(data, source if source is not None and source.is_dir() else None)


def load_run(run_dir: Path, allow_data_change: bool = False):
    """(run config, dataset, fitted recommender) of a finished run directory. The dataset must be
    the one the run was trained on (same fingerprint), unless ``allow_data_change``."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunError(f"{run_dir} is not a run directory (no such folder)")
    if not (run_dir / "config.yaml").is_file():
        raise RunError(f"{run_dir} is not a run directory (no config.yaml)")
    from pydantic import ValidationError

    try:
        run = RunConfig.model_validate(read_yaml(run_dir / "config.yaml"))
        entry = model_entry(run.model["name"])
        model_cfg = entry.config.model_validate(run.model)
    except (ValidationError, KeyError, TypeError, ConfigError) as e:
        reason = describe_validation_error(e) if isinstance(e, ValidationError) else str(e)
        raise RunError(f"{run_dir / 'config.yaml'} is not a valid run config: {reason}") from None
    data = load_dataset(run.dataset, run.prep)
    rundir.check_data(run_dir, data, allow_change=allow_data_change)
    weights = run_dir / entry.weights_dir
    if entry.weights_dir and not weights.is_dir():
        raise RunError(f"{run_dir} has no {entry.weights_dir}/ folder: training did not finish")
    try:
        model = entry.model.load(weights, model_cfg, data.n_items, **catalog_kwargs(entry, data, run.dataset))
    except FileNotFoundError as e:
        raise RunError(str(e)) from None
    except Exception as e:  # a truncated or foreign weights file: say which run, not a library traceback
        raise RunError(f"{run_dir}: the saved model in {weights} cannot be loaded ({type(e).__name__}: {e}); "
                       "the run directory is damaged or from another version: train it again") from None
    return run, data, model


def load_served(run_dir: Path, allow_data_change: bool = False):
    """(model name, catalog, recommender) of any finished run a server can answer from: a
    ``recfm train`` run, or a ``recfm multitask train`` run (retrieval over its item index, text
    embeddings and answers to its generative tasks)."""
    from recfm.multitask.trainer import is_multitask_run

    if is_multitask_run(run_dir) and not (Path(run_dir) / "data.json").is_file():
        from recfm.multitask.serving import load_served_multitask

        return load_served_multitask(Path(run_dir))
    run, data, model = load_run(run_dir, allow_data_change=allow_data_change)
    return run.model["name"], data, model


def evaluate_run(run_dir: Path, progress=None, exclude_history: bool | None = None, dataset: str | None = None,
                 splits: tuple[str, ...] = ("valid", "test"), max_cases: int | None = None,
                 allow_data_change: bool = False) -> dict:
    """Re-score a finished run on validation and test with its recorded protocol. ``dataset``: score
    it on another dataset instead (zero-shot; only models that map item text to IDs can)."""
    run, data, recommender = load_run(run_dir, allow_data_change=allow_data_change)
    protocol = run.protocol
    if exclude_history is not None:
        protocol = protocol.model_copy(update={"exclude_history": exclude_history})
    if max_cases is not None:
        protocol = protocol.model_copy(update={"max_cases": max_cases})
    extra: dict = {}
    if dataset is not None and dataset != run.dataset:
        if not model_entry(run.model["name"]).model.zero_shot:
            raise RunError(f"{run.model['name']} cannot score an unseen dataset: its items are learned ids, "
                           "not text (zero-shot needs a text-based model such as textid)")
        data = load_dataset(dataset)
        recommender = recommender.for_catalog(_catalog(data, dataset))
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


def _environment(model_cfg=None) -> dict:
    import os

    threads = getattr(model_cfg, "num_threads", None) or distributed.local_threads()
    return {
        "recfm": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "torch_threads": threads,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(OpenMP default)"),
        # autocast: auto trains in bf16 only on such a CPU: figures compare only between like machines
        "cpu_native_bf16": native_bf16("cpu"),
        "processes": distributed.world_size(),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
