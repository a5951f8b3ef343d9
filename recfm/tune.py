"""`recfm tune`: hyper-parameter search on the validation metric (Optuna: TPE, median pruning).

    recfm tune sasrec -d movielens-100k --space configs/tune/sasrec.yaml --trials 20 -o runs/tune-ml100k

A search space is YAML; its keys are the ``key=value`` override keys of ``recfm train`` (a bare key
is a model field; ``prep.*``/``protocol.*`` address the other sections)::

    fixed:                  # the same for every trial
      epochs: 40
    params:
      lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
      hidden_size: {type: categorical, choices: [64, 128, 256]}
      num_layers: {type: int, low: 1, high: 3}

Every trial is a normal run directory (``OUTPUT/trials/trial-NNN``) trained without scoring the test
split; each validation epoch is reported to the pruner. The study lives in ``OUTPUT/study.db``
(SQLite), so a killed search resumes where it stopped: finished trials are kept and the trial that
was running is run again. At the end the best trial (on validation) is scored on test once, and
``OUTPUT`` gets ``trials.md`` / ``trials.csv`` (every trial), ``history.png`` (optimisation
history), ``best.yaml`` (a config for ``recfm train --config``) and ``best.json``.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
from pathlib import Path
from typing import Any, Callable, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from recfm.config import ConfigError, parse_override, read_yaml, resolve
from recfm.overrides import deep_merge, nested
from recfm.atomic import atomic_write_json, atomic_write_text
from recfm.errors import describe_validation_error

log = logging.getLogger("recfm.tune")
STUDY = "recfm-tune"


class Param(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["float", "int", "categorical"] = Field(description="how the value is drawn")
    low: float | None = Field(None, description="lower bound (float, int)")
    high: float | None = Field(None, description="upper bound, inclusive (float, int)")
    log: bool = Field(False, description="draw on a log scale (float, int)")
    step: float | None = Field(None, description="grid step (float, int)")
    choices: list[Any] | None = Field(None, description="the values to choose from (categorical)")

    @model_validator(mode="after")
    def _consistent(self):
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("a categorical parameter needs a non-empty 'choices' list")
        else:
            if self.low is None or self.high is None:
                raise ValueError(f"a {self.type} parameter needs 'low' and 'high'")
            if self.low > self.high:
                raise ValueError(f"low={self.low} > high={self.high}")
            if self.log and self.low <= 0:
                raise ValueError(f"log scale needs low > 0, got {self.low}")
        return self

    def suggest(self, trial, name: str):
        if self.type == "categorical":
            return trial.suggest_categorical(name, self.choices)
        if self.type == "int":
            return trial.suggest_int(name, int(self.low), int(self.high), log=self.log, step=int(self.step or 1))
        return self.written(trial.suggest_float(name, self.low, self.high, log=self.log, step=self.step))

    def written(self, value):
        """The value as a config should hold it: Optuna builds stepped floats as low + k * step, and
        0.1 + 2 * 0.1 is 0.30000000000000004."""
        return float(f"{value:.12g}") if self.type == "float" and self.step else value

    def contains(self, value) -> bool:
        """Whether the search can propose ``value`` (inside the bounds, and on the grid when stepped)."""
        if self.type == "categorical":
            return value in self.choices
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not self.low <= value <= self.high:
            return False
        return not self.step or math.isclose(round((value - self.low) / self.step) * self.step + self.low, value,
                                             rel_tol=1e-9, abs_tol=1e-12)

    def example(self):
        return self.choices[0] if self.type == "categorical" else (int(self.low) if self.type == "int" else self.low)


class SearchSpace(BaseModel):
    model_config = ConfigDict(extra="forbid")

    params: dict[str, Param] = Field(description="override key -> how to draw it")
    fixed: dict[str, Any] = Field(default_factory=dict, description="override key -> value, for every trial")
    metric: str | None = Field(None, description="validation metric to maximise (default: the protocol's selection metric)")

    @model_validator(mode="after")
    def _not_empty(self):
        if not self.params:
            raise ValueError("'params' is empty: nothing to search")
        return self


def _override(key: str, value) -> str:
    return f"{key}={json.dumps(value) if not isinstance(value, str) else value}"


def load_space(path: Path, model: str, dataset: str, model_config_cls, config_file: Path | None = None) -> SearchSpace:
    """Read and check a search space before any trial runs: unknown fields, empty choices and
    low > high are one ConfigError line."""
    raw = read_yaml(path)
    try:
        space = SearchSpace.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(f"search space {path}: {describe_validation_error(e, SearchSpace)}") from None
    for key, param in space.params.items():  # every key must name a real field; the example value must fit it
        try:
            resolve(model, dataset, model_config_cls, config_file, [*_fixed(space), _override(key, param.example())])
        except ConfigError as e:
            raise ConfigError(f"search space {path}: parameter '{key}': {e}") from None
    return space


def _fixed(space: SearchSpace) -> list[str]:
    return [_override(k, v) for k, v in space.fixed.items()]


def base_params(space: SearchSpace, run_cfg, model_cfg) -> dict | None:
    """The searched fields' values in the configuration every trial starts from (defaults, preset,
    ``--config``, ``fixed``), when the search can propose all of them; else None. A fresh search runs
    them as its first trial, so the table always shows where the search started."""
    values = {}
    for key, param in space.params.items():
        path, _ = parse_override(f"{key}=0")
        obj = model_cfg if path[0] == "model" else run_cfg
        for part in path[1:] if path[0] == "model" else path:
            obj = getattr(obj, part, None)
        if obj is None or not param.contains(obj):
            return None
        values[key] = obj
    return values


def tune(model: str, dataset: str, space_path: Path, trials: int, output: Path, *, config_file: Path | None = None,
         timeout_minutes: float | None = None, seed: int = 0,
         progress: Callable[[str, int], Callable[[int], None]] | None = None) -> dict:
    """Run (or resume) the search in ``output``; score the best trial on test once; write the reports."""
    import optuna

    from recfm.runs import evaluate_run, model_entry, train_run

    entry = model_entry(model)
    if not entry.model.reports_validation:
        raise ConfigError(f"{model} has no per-epoch validation to search over (tune sasrec, gru4rec, ...)")
    space = load_space(space_path, model, dataset, entry.config, config_file)
    run_cfg, model_cfg, _ = resolve(model, dataset, entry.config, config_file, _fixed(space))
    metric = space.metric or run_cfg.protocol.selection_metric
    output = Path(output)
    (output / "trials").mkdir(parents=True, exist_ok=True)
    atomic_write_text(output / "space.yaml", yaml.safe_dump(
        {"model": model, "dataset": dataset, "config": str(config_file) if config_file else None,
         **space.model_dump(mode="json", exclude_none=True)}, sort_keys=False))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        storage=f"sqlite:///{(output / 'study.db').resolve()}", study_name=STUDY, load_if_exists=True,
        direction="maximize", pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=2))
    # A resumed search must not replay the random proposals of its first start: the sampler's seed
    # moves on with the trials already in the study (the same command still gives the same search).
    study.sampler = sampler_for(seed, len(study.trials), trials)
    _requeue_interrupted(study)
    if not study.trials and (base := base_params(space, run_cfg, model_cfg)) is not None:
        study.enqueue_trial(base)
        log.info("trial 0 runs the base configuration's own values: %s", base)
    done = sum(t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED) for t in study.trials)
    if done:
        log.info("resuming the search in %s: %d of %d trials already finished", output, done, trials)

    def objective(trial) -> float:
        params = {k: p.suggest(trial, k) for k, p in space.params.items()}
        run_dir = output / "trials" / f"trial-{trial.number:03d}"
        trial.set_user_attr("run_dir", str(run_dir.relative_to(output)))
        log.info("trial %d: %s", trial.number, params)

        def report(epoch: int, valid: dict) -> None:
            trial.report(float(valid[metric]), epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"epoch {epoch}: valid {metric} {valid[metric]:.5f} below the median")

        metrics = train_run(model, dataset, run_dir, config_file,
                            [*_fixed(space), *(_override(k, v) for k, v in params.items())],
                            overwrite=True, score_test=False, on_validation=report, progress=progress)
        best = metrics["training"].get("best_valid") or metrics["valid"]
        trial.set_user_attr("epochs", metrics["training"].get("epochs"))
        trial.set_user_attr("train_seconds", metrics["train_seconds"])
        return float(best[metric]) if metric in best else float(metrics["valid"][metric])

    remaining = max(0, trials - done)
    if remaining:
        study.optimize(objective, n_trials=remaining, timeout=timeout_minutes * 60 if timeout_minutes else None,
                       catch=())
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        raise ConfigError(f"no trial of {output} completed (all pruned or failed): widen the space or add trials")
    best = max(complete, key=lambda t: t.value)
    best_dir = output / best.user_attrs["run_dir"]
    # the test split is scored here, once, for the best trial only
    test = evaluate_run(best_dir, splits=("test",), progress=progress)["test"]
    best_params = {k: space.params[k].written(v) for k, v in best.params.items()}
    best_cfg = _as_config({**space.fixed, **best_params})
    atomic_write_text(output / "best.yaml", f"# recfm tune {model} on {dataset}: trial {best.number}, "
                                            f"valid {metric} {best.value:.5f} (the best of {len(complete)} completed)\n"
                                            + yaml.safe_dump(best_cfg, sort_keys=False))
    summary = {"model": model, "dataset": dataset, "metric": metric, "best_trial": best.number,
               "best_valid": best.value, "best_params": best_params, "best_run": str(best_dir),
               "test": test, "test_note": "scored once, for the best trial on validation; no trial saw test",
               "trials": len(study.trials), "completed": len(complete),
               "pruned": sum(t.state == optuna.trial.TrialState.PRUNED for t in study.trials)}
    atomic_write_json(output / "best.json", summary)
    _write_tables(study, space, metric, output)
    _plot_history(study, metric, output / "history.png")
    return summary


def sampler_for(seed: int, trials_so_far: int, trials: int):
    """TPE, seeded by (seed, trials already run); a quarter of the budget (at least 3, at most 10)
    drawn at random before TPE models the results."""
    import optuna

    return optuna.samplers.TPESampler(seed=seed * 100_003 + trials_so_far,
                                      n_startup_trials=min(10, max(3, trials // 4)))


def _as_config(overrides: dict) -> dict:
    """Override keys -> a nested config mapping that ``recfm train --config`` takes."""
    out: dict = {}
    for key, value in overrides.items():
        path, _ = parse_override(f"{key}=0")
        out = deep_merge(out, nested(path, value))
    return out


def _requeue_interrupted(study) -> None:
    """A trial left RUNNING by a killed search is marked failed and its parameters queued again."""
    from optuna.trial import TrialState

    for t in study.trials:
        if t.state == TrialState.RUNNING:
            study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
            study.enqueue_trial(t.params, user_attrs={"rerun_of": t.number}, skip_if_exists=False)
            log.info("trial %d was interrupted: it runs again", t.number)


def trial_rows(study, space: SearchSpace, metric: str) -> list[dict]:
    rows = []
    for t in study.trials:
        if t.state.name == "WAITING":
            continue
        last = max(t.intermediate_values) if t.intermediate_values else None
        rows.append({"trial": t.number, "state": t.state.name.lower(),
                     f"valid {metric}": round(t.value, 5) if t.value is not None else
                     (round(t.intermediate_values[last], 5) if last is not None else None),
                     "epochs": t.user_attrs.get("epochs", last),
                     "train s": t.user_attrs.get("train_seconds"),
                     **{k: (p.written(t.params[k]) if k in t.params else None) for k, p in space.params.items()}})
    return rows


def _write_tables(study, space: SearchSpace, metric: str, output: Path) -> None:
    rows = trial_rows(study, space, metric)
    columns = list(rows[0]) if rows else []
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(output / "trials.csv", buf.getvalue())
    md = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    md += ["| " + " | ".join("" if r[c] is None else (f"{r[c]:.4g}" if isinstance(r[c], float) else str(r[c]))
                             for c in columns) + " |" for r in rows]
    note = (f"\nValidation {metric} per trial (pruned trials: the last reported epoch). The test split was "
            "scored once, for the best trial only (best.json).\n")
    atomic_write_text(output / "trials.md", "\n".join(md) + "\n" + note)


def _plot_history(study, metric: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [(t.number, t.value) for t in study.trials if t.value is not None]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    if points:
        xs, ys = zip(*points)
        best, running = [], -math.inf
        for y in ys:
            running = max(running, y)
            best.append(running)
        ax.scatter(xs, ys, s=14, label="completed trial")
        ax.step(xs, best, where="post", color="C1", label="best so far")
    pruned = [(t.number, t.intermediate_values[max(t.intermediate_values)]) for t in study.trials
              if t.state.name == "PRUNED" and t.intermediate_values]
    if pruned:
        ax.scatter(*zip(*pruned), s=14, marker="x", color="grey", label="pruned (last epoch)")
    ax.set_xlabel("trial")
    ax.set_ylabel(f"valid {metric}")
    ax.set_title("optimisation history")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
