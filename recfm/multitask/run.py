"""`recfm multitask`: build the task records, train, evaluate, and the ablation table with its plots.

    recfm multitask train --config configs/multitask-cpu.yaml --output runs/mt/full
    recfm multitask evaluate --run runs/mt/full
    recfm multitask ablation --config configs/multitask-cpu.yaml --output runs/mt   # table + 2 plots

A run directory holds ``config.yaml``, ``tmole.safetensors`` + ``tasks.json`` (the adapter; the
backbone is named in the config; a merged run also keeps ``tmole.unmerged.safetensors``, its weights
before the merge), ``history.json`` (losses, S2Sched ratios per step, merge),
``metrics.json`` (per-task test scores), ``sample_ratios.png`` (Figure 3),
``routing_similarity.png`` (Figure 2), and ``history.jsonl`` + ``curves.png`` (a line per step and
per validation pass, recfm/curves.py; ``tensorboard/`` with ``train.report_to: tensorboard``).
Records are built once per data config and cached as JSONL under ``<output>/../records-<hash>/``
or the path given by ``data.records_dir``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from pydantic import BaseModel, ConfigDict, Field

from recfm.atomic import atomic_write_json, atomic_write_text
from recfm.errors import RecfmError
from recfm import distributed, rundir
from recfm.multitask.records import EMB_TASKS, GEN_TASKS, SPLITS, read_records, write_records
from recfm.multitask.movielens_tasks import MovieLensTasks, TaskConfig
from recfm.multitask.trainer import ADAPTER_FILE, UNMERGED_FILE, MultiTaskConfig, is_multitask_run

log = logging.getLogger("recfm.multitask")

# Variants as overrides of the full method. The default set switches one component off at a
# time; RecFound's Table 4 removes the merge first and then S2Sched and/or TMoLE on top of it
# (PAPER_VARIANTS), which `--variants` selects.
VARIANTS: dict[str, dict[str, Any]] = {
    "recfound": {},
    "w/o merge": {"merge": False},
    "w/o S2Sched": {"scheduler": "uniform"},
    "w/o TMoLE": {"model": {"adapter": "lora"}},
    "w/o merge & S2Sched": {"merge": False, "scheduler": "uniform"},
    "w/o merge & TMoLE": {"merge": False, "model": {"adapter": "lora"}},
    "w/o merge & S2Sched & TMoLE": {"merge": False, "scheduler": "uniform", "model": {"adapter": "lora"}},
}
DEFAULT_VARIANTS = ["recfound", "w/o merge", "w/o S2Sched", "w/o TMoLE"]
PAPER_VARIANTS = ["recfound", "w/o merge", "w/o merge & S2Sched", "w/o merge & TMoLE", "w/o merge & S2Sched & TMoLE"]


class DataConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    source: str = Field("movielens", description="'movielens' (built here) or a folder of RecFound JSONL files")
    tasks: list[str] = Field(default_factory=lambda: list(GEN_TASKS + EMB_TASKS), description="the tasks trained and "
                             "scored (docs/multitask.md)")
    build: dict[str, Any] = Field(default_factory=dict, description="TaskConfig fields (history_len, max_records, ...)")


class MultiTaskRunConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    data: DataConfig = Field(default_factory=DataConfig, description="where the task records come from")
    train: MultiTaskConfig = Field(default_factory=MultiTaskConfig, description="model, sampler, merging, steps")


def load_run_config(path: Path | None, overrides: dict | None = None) -> MultiTaskRunConfig:
    from recfm.overrides import deep_merge

    data = yaml.safe_load(Path(path).read_text()) if path else {}
    return MultiTaskRunConfig.model_validate(deep_merge(data or {}, overrides or {}))


def load_raw(name: str):
    """The raw MovieLens dataset ``name`` as its registry entry reads it."""
    from recfm.data.registry import resolve
    from recfm.data.sources import FORMATS

    _, fmt, path, _ = resolve(name)
    return FORMATS[fmt].load(path, name=name)


def build_records(data: DataConfig, cache_root: Path) -> dict[str, dict[str, list]]:
    """{task: {split: records}}: from MovieLens (cached JSONL) or from a folder of RecFound JSONL."""
    if data.source != "movielens":
        return _recfound_folder(Path(data.source), data.tasks)
    key = hashlib.sha256(json.dumps(data.model_dump(), sort_keys=True).encode()).hexdigest()[:12]
    folder = cache_root / f"records-{key}"
    if not (folder / "done.json").is_file():
        log.info("building task records from MovieLens-1M and MovieLens-100K -> %s", folder)
        built = MovieLensTasks(load_raw("movielens-1m"), load_raw("movielens-100k"), TaskConfig(**data.build)).build(data.tasks)
        if distributed.is_main():  # the other processes built the same records; one writes them
            counts = {t: {s: write_records(rs, folder / f"{t}.{s}.jsonl") for s, rs in splits.items()}
                      for t, splits in built.items()}
            atomic_write_json(folder / "done.json", counts)
        return built
    return {t: {s: read_records(folder / f"{t}.{s}.jsonl") for s in SPLITS} for t in data.tasks}


def _recfound_folder(folder: Path, tasks: list[str]) -> dict[str, dict[str, list]]:
    """The published layout: {Generative,Embedding}_dataset_{train,eval,test}.jsonl, tasks mixed."""
    from recfm.multitask.recfound_jsonl import read_recfound_jsonl

    out: dict[str, dict[str, list]] = {}
    for split, name in (("train", "train"), ("valid", "eval"), ("test", "test")):
        for kind in ("Generative", "Embedding"):
            f = folder / f"{kind}_dataset_{name}.jsonl"
            if f.is_file():
                for r in read_recfound_jsonl(f):
                    out.setdefault(r.task, {s: [] for s in SPLITS})[split].append(r)
    if not out:
        raise FileNotFoundError(f"{folder}: no Generative_dataset_*.jsonl or Embedding_dataset_*.jsonl files")
    wanted = [t for t in tasks if t in out] or list(out)
    return {t: out[t] for t in wanted}


# ---------------------------------------------------------------------------------------------
# plots
# ---------------------------------------------------------------------------------------------


def plot_sample_ratios(history: dict, path: Path) -> None:
    """Figure 3: every task's sample ratio per step, one panel per task type."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = list(history["schedule"])
    fig, axes = plt.subplots(1, len(kinds), figsize=(6 * len(kinds), 3.8), squeeze=False)
    for ax, kind in zip(axes[0], kinds):
        rows = history["schedule"][kind]
        steps = [r["step"] for r in rows]
        for key in [k for k in rows[0] if k.startswith("ratio/")]:
            ax.plot(steps, [r[key] for r in rows], label=key.split("/", 1)[1])
        ax.set_title(f"{kind} tasks: sample ratio per batch")
        ax.set_xlabel("training step")
        ax.set_ylabel("ratio")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def routing_similarity(routing: np.ndarray) -> np.ndarray:
    """Cosine similarity between tasks' routing distributions, concatenated over layers."""
    flat = routing.reshape(routing.shape[0], -1)
    flat = flat / np.linalg.norm(flat, axis=1, keepdims=True).clip(min=1e-12)
    return flat @ flat.T


def plot_routing_similarity(routing: np.ndarray, tasks: list[str], path: Path) -> None:
    """Figure 2: routing-similarity heatmap across tasks."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sim = routing_similarity(routing)
    fig, ax = plt.subplots(figsize=(1.0 + 0.6 * len(tasks), 0.8 + 0.6 * len(tasks)))
    im = ax.imshow(sim, vmin=0, vmax=1, cmap="Reds")
    ax.set_xticks(range(len(tasks)), tasks, rotation=45, ha="right")
    ax.set_yticks(range(len(tasks)), tasks)
    for i in range(len(tasks)):
        for j in range(len(tasks)):
            ax.text(j, i, f"{sim[i, j]:.2f}", ha="center", va="center", fontsize=7)
    ax.set_title("TMoLE routing similarity")
    fig.colorbar(im, ax=ax, shrink=0.8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# train / evaluate / ablation
# ---------------------------------------------------------------------------------------------


def write_history_and_plots(model, history: dict, output: Path) -> None:
    """``history.json``, the sample ratios per step (Figure 3) and the routing similarity (Figure 2)."""
    atomic_write_text(output / "history.json", json.dumps(history))
    plot_sample_ratios(history, output / "sample_ratios.png")
    routing = model.tmole.routing().numpy()
    np.save(output / "routing.npy", routing)
    plot_routing_similarity(routing, [t.name for t in model.tasks], output / "routing_similarity.png")


def _score(model, records, config: MultiTaskRunConfig) -> dict:
    from recfm.multitask.evaluate import score_tasks

    kinds = {t.name: t.kind for t in model.tasks}
    return score_tasks(model, {t: records[t]["test"] for t in kinds}, kinds, config.train.eval_records,
                       config.train.answer_tokens)


class MultiTaskRunError(RecfmError, RuntimeError):
    pass


def _check_resumable(config: MultiTaskRunConfig, output: Path) -> None:
    from recfm.multitask.trainer import RESUME_FREE

    rundir.check_resumable(output, lambda saved: load_run_config(saved).model_dump(), config.model_dump(),
                           {"train": RESUME_FREE}, "the same --config and overrides", error=MultiTaskRunError)


def train_run(config: MultiTaskRunConfig, output: Path, records=None, model=None, resume: bool = False) -> dict:
    """Train one variant into ``output``; returns its metrics. ``resume``: continue an interrupted
    run in ``output`` from its newest checkpoint."""
    from recfm.multitask.model import load_multitask_model
    from recfm.multitask.trainer import CHECKPOINTS, task_specs, train_multitask

    distributed.init()  # under torchrun / accelerate launch each process trains on its share of every batch
    main = distributed.is_main()
    from recfm.curves import require_integrations

    require_integrations(config.train.report_to)  # report_to: tensorboard without it installed: before any write
    if resume:
        _check_resumable(config, output)
    if main:
        output.mkdir(parents=True, exist_ok=True)
        atomic_write_text(output / "config.yaml", yaml.safe_dump(config.model_dump(), sort_keys=False))
    records = records if records is not None else build_records(config.data, output.parent)
    if model is None:
        with torch.random.fork_rng(devices=[]):  # the adapters' initial weights follow the run's seed
            torch.manual_seed(config.train.seed)
            model = load_multitask_model(task_specs(records), config.train.model)
    history = train_multitask(records, config.train, model, output, resume=resume)
    if not main:  # the weights are the same in every process; process 0 scores and writes
        return {"steps": len(history["steps"]), "process": distributed.rank()}
    write_history_and_plots(model, history, output)
    metrics = {"tasks": _score(model, records, config), "train_seconds": history["train_seconds"],
               "steps": len(history["steps"]), "stopped": history.get("stopped", "completed")}
    atomic_write_json(output / "metrics.json", metrics)
    shutil.rmtree(output / CHECKPOINTS, ignore_errors=True)
    return metrics


def evaluate_run(run_dir: Path) -> dict:
    from recfm.multitask.model import load_multitask_model
    from recfm.multitask.trainer import load_adapter, task_specs

    run_dir = Path(run_dir)
    if not is_multitask_run(run_dir):
        what = "a recfm train run" if (run_dir / "model").is_dir() or (run_dir / "item_ids.tsv").is_file() else "a folder"
        raise MultiTaskRunError(f"{run_dir} is not a multitask run (it is {what} without {ADAPTER_FILE} and "
                                "config.yaml): give a `recfm multitask train` output; other runs: `recfm evaluate --run`")
    try:
        config = load_run_config(run_dir / "config.yaml")
    except Exception as e:  # a config of another kind of run, or a damaged one
        raise MultiTaskRunError(f"{run_dir / 'config.yaml'} is not a multitask run config: "
                                f"{' '.join(str(e).split())[:300]}") from None
    records = build_records(config.data, run_dir.parent)
    model = load_multitask_model(task_specs(records), config.train.model)
    load_adapter(model, run_dir)
    return {"tasks": _score(model, records, config)}


def zero_shot(config: MultiTaskRunConfig, output: Path) -> dict:
    """The backbone as it is (adapters attached with B = 0 compute exactly the base model)."""
    from recfm.multitask.model import load_multitask_model
    from recfm.multitask.trainer import task_specs

    records = build_records(config.data, output.parent)
    model = load_multitask_model(task_specs(records), config.train.model)
    metrics = {"tasks": _score(model, records, config), "train_seconds": 0, "steps": 0}
    output.mkdir(parents=True, exist_ok=True)
    atomic_write_json(output / "metrics.json", metrics)
    return metrics


# train fields that change only the final merge, not the weights training reaches (the variants of one
# ablation share every other field but the ones VARIANTS sets)
MERGE_ONLY = {"merge", "merge_density", "merge_space", "checkpoints"}


def same_training_but_merge(source: MultiTaskRunConfig, variant: MultiTaskRunConfig) -> bool:
    """Whether ``variant`` (no merge) trains exactly as ``source`` (merged) does: then ``variant``'s weights
    are ``source``'s before its merge."""
    def training(c: MultiTaskRunConfig) -> dict:
        dump = c.model_dump()
        return {**dump, "train": {k: v for k, v in dump["train"].items() if k not in MERGE_ONLY}}

    return source.train.merge and not variant.train.merge and training(source) == training(variant)


def score_unmerged(source_dir: Path, config: MultiTaskRunConfig, output: Path) -> dict:
    """A run directory for ``config`` (merge off) from ``source_dir``'s weights before its merge: the
    same training, scored without the merge. Its metrics say which run trained it."""
    from recfm.multitask.model import load_multitask_model
    from recfm.multitask.trainer import load_adapter, save_adapter, task_specs

    records = build_records(config.data, output.parent)
    model = load_multitask_model(task_specs(records), config.train.model)
    load_adapter(model, source_dir, UNMERGED_FILE)
    model.model.eval()
    output.mkdir(parents=True, exist_ok=True)
    atomic_write_text(output / "config.yaml", yaml.safe_dump(config.model_dump(), sort_keys=False))
    history = json.loads((source_dir / "history.json").read_text())
    history.pop("merged", None)
    save_adapter(model, output)
    write_history_and_plots(model, history, output)
    source = json.loads((source_dir / "metrics.json").read_text())
    metrics = {"tasks": _score(model, records, config), "train_seconds": source["train_seconds"],
               "steps": source["steps"], "stopped": source.get("stopped", "completed"),
               "trained_by": source_dir.name}
    atomic_write_json(output / "metrics.json", metrics)
    return metrics


def ablation(config: MultiTaskRunConfig, output: Path, variants: list[str] | None = None) -> Path:
    """Zero-shot backbone + every variant (each skipped if its metrics.json exists); writes table.md. A
    variant that differs from one trained before it only by switching the merge off (w/o merge) is that
    run's weights before its merge, scored: training it again would reach the same weights."""
    from recfm.overrides import deep_merge
    from recfm.multitask.trainer import CHECKPOINTS

    names = variants or DEFAULT_VARIANTS
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    distributed.init()
    main = distributed.is_main()  # under a launcher: all processes train each variant, process 0 scores
    results = {}
    zs = output / "zero-shot"
    if main:
        results["backbone (zero-shot)"] = (json.loads((zs / "metrics.json").read_text())
                                           if (zs / "metrics.json").is_file() else zero_shot(config, zs))
    # variant -> (config, run directory, whether its weights before the merge are there to score)
    done: dict[str, tuple[MultiTaskRunConfig, Path, bool]] = {}
    for name in names:
        run_dir = output / name.replace("/", "").replace(" & ", "-").replace(" ", "-")
        variant = MultiTaskRunConfig.model_validate(deep_merge(config.model_dump(), {"train": VARIANTS[name]}))
        if (run_dir / "metrics.json").is_file():
            results[name] = json.loads((run_dir / "metrics.json").read_text())
            done[name] = (variant, run_dir, (run_dir / UNMERGED_FILE).is_file())
            continue
        # every process must decide alike: for a variant trained in this invocation only the configs are
        # compared (process 0 writes its file; another process may get here before it does)
        source = next((d for c, d, kept in done.values() if kept and same_training_but_merge(c, variant)), None)
        resume = (run_dir / CHECKPOINTS / "latest.json").is_file()  # a variant killed mid-training goes on
        if source is not None and not resume:
            log.info("multitask ablation: %s = %s before its merge (the same training)", name, source.name)
            if main:  # scoring only: the other processes go on to the next variant
                results[name] = score_unmerged(source, variant, run_dir)
        else:
            log.info("multitask ablation: %s%s", name, " (resumed)" if resume else "")
            results[name] = train_run(variant, run_dir, resume=resume)
        done[name] = (variant, run_dir, variant.train.merge)
    if not main:
        return output / "table.md"
    table = ablation_table(results)
    differences = difference_table(results)
    atomic_write_text(output / "table.md", table + "\n" + (f"\n{differences}\n" if differences else ""))
    return output / "table.md"


def ablation_table(results: dict[str, dict], intervals: bool = True) -> str:
    """One row per variant: each task's main metric and the generative / embedding averages, each
    with its bootstrap 95% interval over the test records (``intervals``; runs written before
    per-record outcomes were kept show the value alone)."""
    from recfm.multitask.evaluate import bootstrap_interval, paper_metric

    tasks = list(next(iter(results.values()))["tasks"])
    first = results[next(iter(results))]["tasks"]
    header = "| variant | " + " | ".join(f"{t} ({paper_metric(t, first[t])})" for t in tasks) + \
        " | gen. avg | emb. avg | train s |"
    lines = [header, "|" + "---|" * (len(tasks) + 4)]
    def cell(value: float, parts: list[tuple[dict, str]]) -> str:
        ci = bootstrap_interval(parts) if intervals else None
        return f"{value:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")

    for name, res in results.items():
        vals = []
        for t in tasks:
            m = res["tasks"].get(t)
            key = None if m is None else paper_metric(t, m)
            vals.append("-" if m is None else cell(m[key], [(m, key)]))
        averages = [cell(float(np.mean([m[k] for m, k in group])), group) if group else "-"
                    for group in task_groups(res, tasks)]
        lines.append(f"| {name} | " + " | ".join(vals) + f" | {averages[0]} | {averages[1]} | "
                     f"{res.get('train_seconds', 0):.0f} |")
    return "\n".join(lines)


def task_groups(result: dict, tasks: list[str]) -> tuple[list[tuple[dict, str]], list[tuple[dict, str]]]:
    """A variant's (metrics, paper metric key) pairs of its generative tasks and of its embedding tasks."""
    from recfm.multitask.evaluate import paper_metric

    gen, emb = [], []
    for t in tasks:
        m = result["tasks"].get(t)
        if m is not None:
            key = paper_metric(t, m)
            (emb if key in ("ndcg@20", "mrr@20") else gen).append((m, key))
    return gen, emb


def difference_table(results: dict[str, dict], reference: str = "recfound") -> str:
    """Each other variant's generative and embedding averages minus ``reference``'s, with a paired
    bootstrap 95% interval (the same test records drawn for both variants): an interval that excludes 0
    says the two differ beyond the sampling of records. Empty when ``reference`` is not among the results."""
    from recfm.multitask.evaluate import bootstrap_interval

    if reference not in results:
        return ""
    tasks = list(results[reference]["tasks"])
    ref = task_groups(results[reference], tasks)
    lines = [f"| variant minus {reference} | gen. avg | emb. avg |", "|---|---|---|"]
    for name, res in results.items():
        if name == reference:
            continue
        cells = []
        for group, ref_group in zip(task_groups(res, tasks), ref):
            if not group or len(group) != len(ref_group):
                cells.append("-")
                continue
            diff = float(np.mean([m[k] for m, k in group]) - np.mean([m[k] for m, k in ref_group]))
            ci = bootstrap_interval(group, minus=ref_group)
            cells.append(f"{diff:+.3f}" + (f" [{ci[0]:+.3f}, {ci[1]:+.3f}]" if ci else ""))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
