"""`recfm bench run`: a matrix of (model, setting, target) cells with resumable results.

    recfm bench run --config configs/bench-cpu.yaml

Every cell writes ``cells/<model>/<target>/<plan>.json`` atomically when it is finished; a
finished cell is never recomputed, so a killed run continues where it stopped. A fine-tuning
plan (the data a model is fine-tuned on, stage by stage) is trained once per model and its LoRA
adapter saved under ``adapters/<model>/<plan>/`` (with ``done.json``); every cell with that plan
(e.g. fine-tuned on movielens-1m, scored on movielens-1m and on amazon-beauty) reuses it.
After the cells, ``report`` writes the leaderboard, the transfer matrix (CSV) and its heatmap.
"""

from __future__ import annotations

import json
import logging
import re
import time
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from recfm.bench.settings import Plan, Setting, builtin_domains, folder_domain, plans_for
from recfm.bench.tasks import ClickTaskConfig, cached_pairs
from recfm import __version__, distributed, rundir
from recfm.atomic import atomic_write_json, atomic_write_text
from recfm.errors import RecfmError

log = logging.getLogger("recfm.bench")


class ModelSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(..., description="short name used in file names and tables")
    path: str = Field(..., description="alias (smollm2-135m-instruct, all-minilm-l6-v2), folder or hub name")
    paradigm: Literal["prompt", "embedding"] = Field(..., description="prompt: P(Yes) of a Yes/No question; "
                                                    "embedding: cosine of history and item embeddings")
    options: dict[str, Any] = Field(default_factory=dict, description="scorer options (batch_size, pooling, ...)")
    finetune: dict[str, Any] = Field(default_factory=dict, description="FinetuneConfig fields for this model, over the config's")


class DatasetEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    domain: str | None = Field(None, description="None = the built-in domain table")


class BenchConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    output: str = Field("runs/bench-md", description="folder of the cell results, reports and caches")
    datasets: dict[str, DatasetEntry] = Field(default_factory=dict, description="the benchmark's datasets (and folders)")
    targets: list[str] = Field(..., description="datasets scored (each a key of datasets, or a registered name)")
    models: list[ModelSpec] = Field(..., description="the foundation models compared")
    settings: list[Setting] = Field(default_factory=lambda: ["zero_shot", "target"],
                                    description="fine-tuning settings (docs/bench.md: zero_shot, target, ...)")
    two_stage_order: Literal["others_then_target", "target_then_others"] = Field(
        "others_then_target", description="the order of the two stages of a two-stage setting")
    task: ClickTaskConfig = Field(default_factory=ClickTaskConfig, description="history length, negatives, seed")
    test_users: int | None = Field(2000, ge=1, description="users per test set (paper: about 20K pairs)")
    valid_users: int | None = Field(300, ge=1, description="users per validation set (early stopping of LoRA)")
    train_users: int | None = Field(5000, ge=1, description="users whose training positions make the fine-tune set")
    finetune: dict[str, Any] = Field(default_factory=dict, description="FinetuneConfig fields (LoRA rank, lr, ...)")
    max_title_chars: int | None = Field(200, ge=8, description="item texts cut to this many characters (None = whole)")

    def domains(self) -> dict[str, str]:
        names = list(dict.fromkeys([*self.datasets, *self.targets]))
        builtin = builtin_domains()
        out = {}
        for n in names:
            entry = self.datasets.get(n) or DatasetEntry()
            domain = entry.domain or builtin.get(n) or folder_domain(n)
            if domain is None:
                raise ValueError(f"dataset {n!r} has no domain (its format does not imply one): give "
                                 f"`datasets: {{{n}: {{domain: ...}}}}`")
            out[n] = domain
        return out


class BenchOutputError(RecfmError, RuntimeError):
    """An output folder whose finished cells the config at hand would not reproduce."""


# What a cell's figure depends on besides its (model, plan, target) key: a folder holding cells
# made with other values of these would mix two benchmarks in one table.
CELL_DEFINING = ("datasets", "two_stage_order", "task", "test_users", "valid_users", "train_users", "finetune",
                 "max_title_chars")
SAVED_CONFIG = "config.json"


def check_output(output: Path, config: BenchConfig) -> None:
    """Refuse an ``output`` whose finished cells this config would not reproduce, before any cell runs.

    A bench folder resumes by design (finished cells are kept), and a config may grow (more models,
    targets or settings add cells); what it may not do is change how a kept cell was computed: the
    fields of :data:`CELL_DEFINING`, or the path, options or fine-tuning of a model already there."""
    output = Path(output)
    saved_file = output / SAVED_CONFIG
    if not saved_file.is_file():
        if output.exists() and (not output.is_dir() or any(output.iterdir())) and not rundir.is_run_dir(output):
            raise BenchOutputError(f"{output} is not empty and holds no bench run ({SAVED_CONFIG}): choose another "
                                   "--output")
        return
    try:
        before = json.loads(saved_file.read_text(encoding="utf-8"))
        saved_models = {m["name"]: m for m in before["models"]}
    except (ValueError, KeyError, TypeError):
        raise BenchOutputError(f"{saved_file} is damaged (not the config a bench run writes): choose another "
                               "--output") from None
    now = json.loads(config.model_dump_json())
    changed = rundir.diff_keys({k: before.get(k) for k in CELL_DEFINING}, {k: now[k] for k in CELL_DEFINING})
    for m in now["models"]:
        if m["name"] in saved_models:
            changed += rundir.diff_keys(saved_models[m["name"]], m, prefix=f"models[{m['name']}].")
    if changed:
        what = ", ".join(f"{key} ({a!r} there, {b!r} now)" for key, a, b in changed[:5])
        raise BenchOutputError(f"{output} holds cells computed with another config: {what}. Its finished cells would "
                               "be mixed with new ones: choose another --output, or restore those values")


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+_-]+", "_", text).strip("_") or "x"


class BenchRunner:
    def __init__(self, config: BenchConfig, output: Path | None = None, log_fn: Callable[[str], None] = log.info):
        self.config = config
        self.output = Path(output or config.output)
        self.log = log_fn
        self.domains = config.domains()
        self._data: dict[str, Any] = {}
        self._pairs: dict[tuple[str, str], Any] = {}

    # -- data -------------------------------------------------------------------------------
    def dataset(self, name: str):
        if name not in self._data:
            from recfm.data.registry import load_dataset

            self._data[name] = load_dataset(name)
        return self._data[name]

    def pairs(self, name: str, split: str):
        key = (name, split)
        if key not in self._pairs:
            users = {"test": self.config.test_users, "valid": self.config.valid_users, "train": self.config.train_users}[split]
            cfg = self.config.task.model_copy(update={"split": split, "max_users": users})
            self._pairs[key] = cached_pairs(self.dataset(name), split, cfg)
        return self._pairs[key]

    def texts(self, name: str, split: str):
        from recfm.bench.scorers import pair_texts

        pairs = self.pairs(name, split)
        hist, cand = pair_texts(pairs, self.dataset(name).item_text, self.config.max_title_chars)
        return pairs, hist, cand

    # -- cells ------------------------------------------------------------------------------
    def cells(self) -> list[tuple[ModelSpec, Plan, str]]:
        out = []
        for m in self.config.models:
            for target in self.config.targets:
                for setting in self.config.settings:
                    for plan in plans_for(setting, target, self.domains, self.config.two_stage_order):
                        out.append((m, plan, target))
        return out

    def cell_path(self, m: ModelSpec, plan: Plan, target: str) -> Path:
        return self.output / "cells" / slug(m.name) / slug(target) / f"{slug(plan.key)}.json"

    def adapter_dir(self, m: ModelSpec, plan: Plan) -> Path:
        return self.output / "adapters" / slug(m.name) / slug(plan.key)

    def run(self) -> list[dict]:
        # Under torchrun / accelerate launch every process runs the same cells: fine-tuning splits each
        # batch, scoring splits the pairs, and process 0 alone writes files.
        distributed.init()
        check_output(self.output, self.config)
        cells = self.cells()
        todo = [c for c in cells if not self.cell_path(*c).is_file()]
        distributed.barrier()  # every process has its to-do list before the first cell file appears
        main = distributed.is_main()
        self.log(f"bench: {len(cells)} cells, {len(cells) - len(todo)} already done, {len(todo)} to run -> {self.output}")
        if main:
            self.output.mkdir(parents=True, exist_ok=True)
            if not rundir.is_run_dir(self.output):
                rundir.mark(self.output, __version__)
            atomic_write_text(self.output / SAVED_CONFIG, self.config.model_dump_json(indent=2))
        # Cells sharing a model and a plan run together: one fine-tuning, one loaded model.
        todo.sort(key=lambda c: (self.config.models.index(c[0]), c[1].key, c[2]))
        current: tuple[str, str] | None = None
        scorer = None
        for i, (m, plan, target) in enumerate(todo, 1):
            if current != (m.name, plan.key):
                scorer = self._prepared_scorer(m, plan)
                current = (m.name, plan.key)
            t0 = time.perf_counter()
            pairs, hist, cand = self.texts(target, "test")
            scores = distributed.map_sharded(
                lambda idx: scorer.score([hist[i] for i in idx], [cand[i] for i in idx]), len(hist))
            from recfm.bench.metrics import click_metrics

            metrics = click_metrics(pairs.group, pairs.label, np.asarray(scores, dtype=np.float64))
            record = {
                "model": m.name, "path": m.path, "paradigm": m.paradigm, "setting": plan.setting,
                "plan": plan.key, "stages": [list(s) for s in plan.stages], "target": target,
                "target_domain": self.domains[target], "pairs": len(pairs), "groups": pairs.n_groups,
                "metrics": {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in metrics.items()},
                "score_seconds": round(time.perf_counter() - t0, 1),
                "date": time.strftime("%Y-%m-%d"),
            }
            done = self.adapter_dir(m, plan) / "done.json"
            if done.is_file():
                record["finetune"] = json.loads(done.read_text())
            if main:
                atomic_write_json(self.cell_path(m, plan, target), record)
            self.log(f"[{i}/{len(todo)}] {m.name} | {plan.key} -> {target}: AUC {metrics['auc']:.4f} "
                     f"GAUC {metrics['gauc']:.4f} MRR {metrics['mrr']:.4f} ({record['score_seconds']:.0f}s)")
        distributed.barrier()
        return [json.loads(self.cell_path(*c).read_text()) for c in cells if self.cell_path(*c).is_file()]

    def _prepared_scorer(self, m: ModelSpec, plan: Plan):
        """The model of ``m`` as ``plan`` leaves it: base weights, or base + the plan's LoRA adapter
        (trained now unless a finished one is on disk)."""
        from recfm.bench.finetune import FinetuneConfig, finetune, load_adapter
        from recfm.bench.scorers import load_scorer

        scorer = load_scorer(m.path, m.paradigm, **m.options)
        if not plan.stages:
            return scorer
        adir = self.adapter_dir(m, plan)
        if (adir / "done.json").is_file():
            self.log(f"{m.name}: reusing the adapter of {plan.key} ({adir})")
            load_adapter(scorer, adir)
            return scorer
        cfg = FinetuneConfig(**{**self.config.finetune, **m.finetune})
        histories = []
        for n, stage in enumerate(plan.stages, 1):
            train = [self.texts(d, "train") for d in stage]
            valid = [self.texts(d, "valid") for d in stage]
            groups = np.concatenate([v[0].group + 10_000_000 * j for j, v in enumerate(valid)])
            self.log(f"{m.name}: fine-tuning stage {n}/{len(plan.stages)} on {'+'.join(stage)} "
                     f"({sum(len(t[0]) for t in train)} pairs)")
            history = finetune(
                scorer,
                ([h for t in train for h in t[1]], [c for t in train for c in t[2]],
                 np.concatenate([t[0].label for t in train])),
                (groups, [h for v in valid for h in v[1]], [c for v in valid for c in v[2]],
                 np.concatenate([v[0].label for v in valid])),
                cfg, output_dir=adir, log=self.log,
            )
            histories.append({"stage": list(stage), **history})
        if distributed.is_main():
            atomic_write_json(adir / "done.json", {"plan": plan.key, "stages": histories})
        return scorer


def load_config(path: Path) -> BenchConfig:
    import yaml

    data = yaml.safe_load(Path(path).read_text()) or {}
    return BenchConfig.model_validate(data)
