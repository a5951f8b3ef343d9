"""Multi-task training (RecFound 4): one backbone, generative and embedding batches every step.

Each step draws a generative batch and an embedding batch; how many records of each task go into
them is decided by that type's S2Sched (``scheduler: s2sched``) or uniformly (``uniform``, the
ablation). Loss = generative cross-entropy + InfoNCE. Every ``eval_every`` steps the fixed
validation sample of every task is scored (no gradient) and its losses feed the schedulers.
Adapter weights are kept at ``checkpoints`` evenly spaced steps of the second half of training;
``merge: true`` replaces the final weights by their TIES merge (4.4) relative to the initial ones.

Every ``checkpoint_every`` steps the whole training state (adapters, initial adapters, AdamW,
torch RNG, each task pool's order and RNG, both schedulers, the kept snapshots, the history) is
written to ``output_dir/checkpoints`` atomically (recfm.checkpoint); ``resume=True`` continues
from it and takes exactly the steps an uninterrupted run would have taken.

    run = train_multitask(records, MultiTaskConfig(), model, output_dir)   # records: {task: {split: [...]}}
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from recfm import distributed
from recfm.checkpoint import (Checkpoint, check_same_config, load_latest, load_optimizer_state, load_rng_state,
                              optimizer_state, rng_state, save_checkpoint)
from recfm.compute import eval_mode, training_context
from recfm.curves import REPORT_TO_HELP, ReportTo, TrainingHistory
from recfm.multitask.merge import ties_merge
from recfm.multitask.model import MultiTaskModel, MultiTaskModelConfig, TaskSpec
from recfm.multitask.records import GenRecord
from recfm.multitask.s2sched import S2Sched, S2SchedConfig

log = logging.getLogger("recfm.multitask")


class MultiTaskConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: MultiTaskModelConfig = Field(default_factory=MultiTaskModelConfig, description="backbone and TMoLE experts")
    scheduler: str = Field("s2sched", pattern="^(s2sched|uniform)$", description="uniform = the w/o S2Sched ablation")
    s2sched: S2SchedConfig = Field(default_factory=S2SchedConfig, description="the convergence-aware task sampler")
    merge: bool = Field(True, description="TIES-merge the kept checkpoints (false = the w/o merge ablation)")
    checkpoints: int = Field(3, ge=1, description="adapter snapshots kept in the second half of training")
    merge_density: float = Field(0.8, gt=0, le=1, description="share of each task vector kept by TIES")
    merge_space: Literal["tensors", "delta"] = Field(
        "tensors", description="tensors: TIES over each LoRA A and B tensor apart (RecFound's public code); delta: over "
                               "each expert's update A @ B, refactorised to rank r by SVD (recfm/multitask/merge.py)")
    steps: int = Field(200, ge=1, description="optimizer steps")
    gen_batch: int = Field(8, ge=1, description="generative records per step (B^(G))")
    emb_batch: int = Field(8, ge=1, description="embedding records per step (B^(E))")
    lr: float = Field(2e-4, gt=0, description="AdamW learning rate of the experts")
    max_grad_norm: float = Field(1.0, gt=0, description="gradient-norm clip")
    max_minutes: float | None = Field(None, gt=0, description="stop training after this long (wall clock)")
    eval_records: int | None = Field(200, ge=1, description="test records scored per task (None = all)")
    answer_tokens: int = Field(128, ge=1, description="most tokens generated for a free-text answer when scoring")
    checkpoint_every: int = Field(25, ge=0, description="write a resumable checkpoint every this many steps (0 = never)")
    num_threads: int | None = Field(None, ge=1, description="torch CPU threads; None = the recfm default")
    seed: int = Field(0, description="seed of initialisation and task sampling")
    report_to: ReportTo = Field("none", description=REPORT_TO_HELP)


ADAPTER_FILE = "tmole.safetensors"
UNMERGED_FILE = "tmole.unmerged.safetensors"  # a merged run's final weights before the TIES merge
# Settings that may differ on resume without changing what is computed.
RESUME_FREE = {"num_threads", "max_minutes", "checkpoint_every", "eval_records", "answer_tokens", "report_to"}
CHECKPOINTS = "checkpoints"


def is_multitask_run(run_dir: Path) -> bool:
    """A finished ``recfm multitask train`` output: its adapter weights beside its config."""
    return (Path(run_dir) / ADAPTER_FILE).is_file() and (Path(run_dir) / "config.yaml").is_file()


class TaskPool:
    """Uniform sampling without replacement from one task's training records, refilled when empty."""

    def __init__(self, records: list, rng: np.random.Generator):
        if not records:
            raise ValueError("a task has no training records")
        self.records, self.rng, self.order = records, rng, []

    def state(self) -> dict:
        return {"rng": self.rng.bit_generator.state, "order": [int(i) for i in self.order]}

    def restore(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]
        self.order = list(state["order"])

    def take(self, n: int) -> list:
        out = []
        while len(out) < n:
            if not self.order:
                self.order = list(self.rng.permutation(len(self.records)))
            out.append(self.records[self.order.pop()])
        return out


def task_specs(records: dict[str, dict[str, list]]) -> list[TaskSpec]:
    specs = []
    for task, splits in records.items():
        sample = next((r for rs in splits.values() for r in rs), None)
        if sample is None:
            raise ValueError(f"task {task} has no records")
        specs.append(TaskSpec(task, "generative" if isinstance(sample, GenRecord) else "embedding"))
    return specs


def _validation_losses(model: MultiTaskModel, valid: dict[str, list], kinds: dict[str, str]) -> dict[str, float]:
    out = {}
    with torch.no_grad():
        for task, records in valid.items():
            loss = model.generative_loss(records) if kinds[task] == "generative" else model.embedding_loss(records)
            out[task] = float(loss)
    return out


def train_multitask(records: dict[str, dict[str, list]], config: MultiTaskConfig, model: MultiTaskModel,
                    output_dir: Path | None = None, say: Callable[[str], None] = log.info,
                    resume: bool = False) -> dict:
    """Train ``model`` on every task's ``train`` records; returns the history (losses, schedules, merge).
    With ``output_dir``, checkpoints go to ``output_dir/checkpoints``; ``resume`` continues from the
    newest one there (none: a fresh start); every step and every validation pass is a line of
    ``output_dir/history.jsonl`` and ``curves.png`` is drawn when training ends."""
    kinds = {t.name: t.kind for t in model.tasks}
    gen_tasks = [t for t in kinds if kinds[t] == "generative" and records[t].get("train")]
    emb_tasks = [t for t in kinds if kinds[t] == "embedding" and records[t].get("train")]
    pools = {t: TaskPool(records[t]["train"], np.random.default_rng([config.seed, i])) for i, t in enumerate(kinds)
             if records[t].get("train")}
    n_valid = config.s2sched.valid_samples
    valid = {t: records[t].get("valid", [])[:n_valid] for t in gen_tasks + emb_tasks}
    # InfoNCE needs at least 2 records for a negative; a task short of validation records is skipped
    valid = {t: v for t, v in valid.items() if len(v) >= (2 if kinds[t] == "embedding" else 1)}
    scheds = {b: S2Sched(ts, batch, config.steps, config.s2sched)
              for b, ts, batch in (("generative", gen_tasks, config.gen_batch), ("embedding", emb_tasks, config.emb_batch))
              if ts}
    history: dict = {"steps": [], "loss": [], "gen_loss": [], "emb_loss": [], "valid": [], "schedule": [],
                     "checkpoint_steps": []}
    params = model.trainable_parameters()
    initial = model.tmole.state_dict()
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)
    keep_at = set(np.unique(np.linspace(config.steps // 2, config.steps, config.checkpoints + 1)[1:].round()).astype(int))
    snapshots: list[dict[str, torch.Tensor]] = []
    folder = Path(output_dir) / CHECKPOINTS if output_dir is not None else None
    state = _TrainState(model, optimizer, pools, scheds, history, snapshots, initial, config)
    from tqdm.auto import tqdm

    curves = TrainingHistory(output_dir, config.report_to, x="step", valid_label="validation loss per task",
                             title="multitask")
    with training_context(config.num_threads, config.seed), curves:
        found = load_latest(folder) if resume and folder is not None else None
        start, elapsed = state.restore(found) if found is not None else (0, 0.0)
        if found is not None:
            say(f"resumed from the checkpoint at step {start} of {config.steps}")
        # one line per step and per validation pass the checkpoint holds; later ones are dropped
        curves.start(keep=len(history["steps"]) + len(history["valid"]), elapsed=elapsed)
        initial = state.initial
        t0 = time.perf_counter() - elapsed
        model.model.train()
        bar = tqdm(range(start + 1, config.steps + 1), desc="multitask", unit="step", mininterval=2, initial=start,
                   total=config.steps)
        step = start
        for step in bar:
            if config.scheduler == "s2sched" and (step - 1) % config.s2sched.eval_every == 0 and valid:
                with eval_mode(model.model):
                    losses = _validation_losses(model, valid, kinds)
                history["valid"].append({"step": step - 1, **losses})
                curves.log(step=step - 1, valid={t: round(v, 6) for t, v in losses.items()},
                           seconds=round(time.perf_counter() - t0, 2))
                for b, sched in scheds.items():
                    if all(t in losses for t in sched.tasks):
                        sched.record(step - 1, {t: losses[t] for t in sched.tasks})
            batch = {}
            for b, sched in scheds.items():
                counts = sched.next_counts(step - 1, adaptive=config.scheduler == "s2sched")
                batch[b] = [r for t, c in counts.items() for r in pools[t].take(c)]
            gen_loss, emb_loss = _losses(model, batch)
            optimizer.zero_grad(set_to_none=True)
            (gen_loss + emb_loss).backward()
            distributed.sum_gradients(params)
            torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
            optimizer.step()
            gen_value, emb_value = distributed.all_sum(float(gen_loss.detach()), float(emb_loss.detach()))
            history["steps"].append(step)
            history["loss"].append(gen_value + emb_value)
            history["gen_loss"].append(gen_value)
            history["emb_loss"].append(emb_value)
            curves.log(step=step, loss=round(gen_value + emb_value, 6), gen_loss=round(gen_value, 6),
                       emb_loss=round(emb_value, 6), lr=optimizer.param_groups[0]["lr"],
                       seconds=round(time.perf_counter() - t0, 2))
            bar.set_postfix(loss=f"{history['loss'][-1]:.3f}", refresh=False)
            if step in keep_at:
                snapshots.append(model.tmole.state_dict())
                history["checkpoint_steps"].append(step)
            if folder is not None and config.checkpoint_every and step % config.checkpoint_every == 0 \
                    and step < config.steps and distributed.is_main():
                state.save(folder, step, time.perf_counter() - t0)
            out_of_time = config.max_minutes is not None and (time.perf_counter() - t0) / 60 >= config.max_minutes
            if distributed.any_process(out_of_time):  # clocks differ between processes: stop together
                history["stopped"] = f"time limit ({config.max_minutes} min) at step {step}"
                break
        bar.close()
        if not snapshots or history["checkpoint_steps"][-1] != step:
            snapshots.append(model.tmole.state_dict())
            history["checkpoint_steps"].append(step)
        model.model.eval()
    history["schedule"] = {b: s.log for b, s in scheds.items()}
    history["train_seconds"] = round(time.perf_counter() - t0, 1)
    if config.merge and len(snapshots) > 1:
        merged = ties_merge(snapshots, base=initial, density=config.merge_density, space=config.merge_space)
        model.tmole.load_state_dict(merged)
        history["merged"] = {"checkpoints": history["checkpoint_steps"], "density": config.merge_density,
                             "space": config.merge_space}
        say(f"merged {len(snapshots)} checkpoints (steps {history['checkpoint_steps']}) with TIES")
    if output_dir is not None and distributed.is_main():
        save_adapter(model, Path(output_dir))
        if config.merge:  # the same training without the merge: `recfm multitask ablation` scores it as w/o merge
            save_tmole_state(snapshots[-1], Path(output_dir) / UNMERGED_FILE)
    return history


@dataclass
class _TrainState:
    """Everything a resumed ``train_multitask`` needs, as safetensors + JSON (recfm.checkpoint)."""

    model: MultiTaskModel
    optimizer: torch.optim.Optimizer
    pools: dict[str, TaskPool]
    scheds: dict[str, S2Sched]
    history: dict
    snapshots: list[dict[str, torch.Tensor]]
    initial: dict[str, torch.Tensor]
    config: MultiTaskConfig

    def save(self, folder: Path, step: int, elapsed: float) -> None:
        opt_tensors, opt_meta = optimizer_state(self.optimizer)
        rng_tensors, _ = rng_state()
        tensors = {"adapter": self.model.tmole.state_dict(), "initial": self.initial, "optimizer": opt_tensors,
                   "rng": rng_tensors, **{f"snapshot-{i}": snap for i, snap in enumerate(self.snapshots)}}
        state = {"step": step, "elapsed": elapsed, "optimizer": opt_meta, "history": self.history,
                 "snapshots": len(self.snapshots), "pools": {t: p.state() for t, p in self.pools.items()},
                 "schedulers": {b: s.state() for b, s in self.scheds.items()},
                 "config": self.config.model_dump(mode="json")}
        save_checkpoint(folder, f"step-{step:06d}", Checkpoint(tensors=tensors, state=state))

    def restore(self, found: Checkpoint) -> tuple[int, float]:
        """Load ``found`` into the objects; returns (the step it was written after, seconds trained)."""
        check_same_config(found.state.get("config", {}), self.config.model_dump(mode="json"), RESUME_FREE)
        self.model.tmole.load_state_dict(found.tensors["adapter"])
        self.initial = found.tensors["initial"]
        load_optimizer_state(self.optimizer, found.tensors["optimizer"], found.state["optimizer"])
        load_rng_state(found.tensors["rng"], {"numpy": {}})
        for t, pool in self.pools.items():
            pool.restore(found.state["pools"][t])
        for b, sched in self.scheds.items():
            sched.restore(found.state["schedulers"][b])
        self.history.clear()
        self.history.update(found.state["history"])
        self.snapshots[:] = [found.tensors[f"snapshot-{i}"] for i in range(found.state["snapshots"])]
        return int(found.state["step"]), float(found.state["elapsed"])


def _losses(model: MultiTaskModel, batch: dict[str, list]) -> tuple[torch.Tensor, torch.Tensor]:
    """This process's share of the step's two losses; summed over processes they are the batch's.

    Generative records are dealt out across processes (``[rank::world]``); each returns its token
    cross-entropy sum over the global token count, so the sum is the batch's token mean. The
    embedding batch is not split: InfoNCE takes its negatives from the whole batch, so every
    process computes the whole loss and contributes 1/world of it. In one process both are the
    plain losses."""
    gen = batch.get("generative", [])
    mine, _ = distributed.batch_share(gen)
    [tokens] = distributed.all_sum(model.target_tokens(mine) if mine else 0)
    gen_loss = model.generative_loss(mine, reduction="sum") / tokens if mine else torch.zeros(())
    emb = batch.get("embedding", [])
    emb_loss = model.embedding_loss(emb) / distributed.world_size() if len(emb) > 1 else torch.zeros(())
    return gen_loss, emb_loss


def save_tmole_state(state: dict[str, torch.Tensor], path: Path) -> None:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in state.items()}, str(path))


def save_adapter(model: MultiTaskModel, directory: Path) -> None:
    """TMoLE weights (safetensors) and the task table (JSON): all a run directory needs beside the backbone."""
    directory.mkdir(parents=True, exist_ok=True)
    save_tmole_state(model.tmole.state_dict(), directory / ADAPTER_FILE)
    (directory / "tasks.json").write_text(json.dumps([t.__dict__ for t in model.tasks], indent=2))


def load_adapter(model: MultiTaskModel, directory: Path, file: str = ADAPTER_FILE) -> None:
    """``file``: the adapter (``tmole.safetensors``) or, of a merged run, its last weights before the merge
    (``UNMERGED_FILE``)."""
    from safetensors.torch import load_file

    model.tmole.load_state_dict(load_file(str(Path(directory) / file)))
