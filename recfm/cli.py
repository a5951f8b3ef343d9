"""The ``recfm`` command line. Thin: every command calls one library function."""

from __future__ import annotations

import json
import logging
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from recfm import __version__
from recfm.config import ConfigError
from recfm.data.registry import DATASETS, DatasetNotFoundError, load_dataset, resolve
from recfm.data.sources import FORMATS
from recfm.errors import RecfmError
from recfm.serve.batching import MAX_BATCH, MAX_QUEUE, MAX_WAIT_MS

app = typer.Typer(help="recfm: recommendation foundation models on one data layer and one protocol.", no_args_is_help=True)
data_app = typer.Typer(help="List, inspect and prepare datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")
bench_app = typer.Typer(help="Foundation-model click-prediction benchmark (RecBench-MD).", no_args_is_help=True)
app.add_typer(bench_app, name="bench")
multitask_app = typer.Typer(help="Multi-task recommendation foundation model (RecFound).", no_args_is_help=True)
app.add_typer(multitask_app, name="multitask")
# Wide enough for the metrics table when piped (rich falls back to 80 columns off a terminal).
console = Console(stderr=True)
out = Console(width=None if sys.stdout.isatty() else 150)

# Every error a user can fix derives from RecfmError; a missing file named on the command line too.
USER_ERRORS = (RecfmError, FileNotFoundError)
METRIC_COLUMNS = ("hr@5", "ndcg@5", "hr@10", "ndcg@10", "hr@20", "ndcg@20", "mrr")


def _setup_logging(verbose: bool) -> None:
    level = logging.INFO if verbose else logging.WARNING
    handler = RichHandler(console=console, show_path=False, show_time=False, level=level)
    logging.basicConfig(level=level, format="%(message)s", handlers=[handler], force=True)
    # The recfm logger stays at INFO so that a run's train.log gets everything; the console
    # handler's own level decides what --quiet hides.
    logging.getLogger("recfm").setLevel(logging.INFO)


def _print_version(value: bool) -> None:
    if value:
        import platform

        import torch

        out.print(f"recfm {__version__} (torch {torch.__version__}, python {platform.python_version()})")
        raise typer.Exit()


@app.callback()
def main(
    verbose: bool = typer.Option(True, "--verbose/--quiet", help="log progress to stderr (--quiet: warnings only)"),
    version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                 help="print the version and exit"),
) -> None:
    _setup_logging(verbose)
    if not verbose:  # transformers' per-load progress bars too
        import os

        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
        try:
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
        except ImportError:  # pragma: no cover
            pass


def _print_error(e: Exception) -> None:
    # Text, not markup: messages may hold brackets (lists of names) that rich would eat.
    console.print(Text.assemble(("error: ", "bold red"), str(e)), soft_wrap=True)


@contextmanager
def user_errors():
    """Expected mistakes (bad path, bad config, malformed file) print one clear line, not a traceback."""
    try:
        yield
    except USER_ERRORS as e:
        _print_error(e)
        raise typer.Exit(2) from None


@contextmanager
def progress_bars():
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
        console=console, transient=False, disable=not console.is_terminal,
    ) as bars:

        def start(description: str, total: int):
            task = bars.add_task(description, total=total)
            return lambda n: bars.advance(task, n)

        yield start


# -- data ------------------------------------------------------------------------------
@data_app.command("list")
def data_list() -> None:
    """Registered datasets, where they come from and whether they are available here."""
    table = Table(title="datasets (any command also takes a folder in a supported format)")
    for col in ("name", "domain", "format", "available", "description"):
        table.add_column(col)
    for spec in DATASETS.values():
        try:
            spec.locate()
            status = "[green]yes[/]"
        except DatasetNotFoundError as e:
            status = f"[red]no[/]: {e}"
        table.add_row(spec.name, spec.domain, spec.source_format, status, spec.description)
    out.print(table)
    out.print("folder formats: " + ", ".join(FORMATS))


@data_app.command("info")
def data_info(dataset: str = typer.Argument(..., help="registered name or folder path")) -> None:
    """Statistics of a prepared dataset and one example user."""
    with user_errors():
        ds = load_dataset(dataset)
        name, fmt, path, _ = resolve(dataset)
        split = ds.split()
    table = Table(title=f"{ds.name} ({fmt}: {path})", show_header=False)
    for k, v in ds.stats().items():
        table.add_row(k, str(v))
    table.add_row("validation cases", str(len(split.valid)))
    table.add_row("test cases", str(len(split.test)))
    table.add_row("example item text", ds.item_text[0])
    out.print(table)


@data_app.command("prepare")
def data_prepare(
    dataset: str = typer.Argument(..., help="registered name or folder path"),
    no_cache: bool = typer.Option(False, "--no-cache", help="rebuild from the source and replace the cached copy"),
) -> None:
    """Load, filter, order and cache a dataset as Parquet."""
    with user_errors():
        start = time.perf_counter()
        ds = load_dataset(dataset, refresh=no_cache)
    out.print(f"{ds.name}: {ds.stats()} ({time.perf_counter() - start:.1f}s)")


# -- models ----------------------------------------------------------------------------
@app.command("models")
def models(
    model: Optional[str] = typer.Argument(None, help="show one model only"),
) -> None:
    """Trainable models: every configuration field with its type, default and description, and the
    presets (configs/MODEL-DATASET.yaml) that override fields per dataset."""
    from recfm.model_table import MODELS
    from recfm.config_docs import describe_fields, preset_overrides

    if model is not None and model not in MODELS:
        _print_error(ConfigError(f"unknown model '{model}'; available: {', '.join(MODELS)}"))
        raise typer.Exit(2)
    for entry in MODELS.values():
        if model is not None and entry.name != model:
            continue
        table = Table(title=f"{entry.name}: {entry.description}", title_justify="left")
        for col in ("field", "type", "default", "description"):
            table.add_column(col, overflow="fold")
        for row in describe_fields(entry.config):
            table.add_row(*row)
        out.print(table)
        for preset, fields in preset_overrides(entry.name):
            out.print(f"    preset {preset}: " + ", ".join(f"{k}={v}" for k, v in fields.items()))


@app.command("train", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def train(
    ctx: typer.Context,
    model: str = typer.Argument(..., help="model name (see `recfm models`)"),
    dataset: str = typer.Option(..., "--dataset", "-d", help="registered name or folder path"),
    output: Path = typer.Option(..., "--output", "-o", help="run directory to create"),
    config: Optional[Path] = typer.Option(None, "--config", "-c",
                                          help="YAML config layered over the defaults and the shipped preset"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing run directory (only the files a run writes)"),
    resume: bool = typer.Option(False, "--resume", help="continue an interrupted run from its last checkpoint"),
    no_preset: bool = typer.Option(False, "--no-preset", help="skip the shipped preset configs/MODEL-DATASET.yaml: bare defaults"),
    seeds: Optional[str] = typer.Option(None, "--seeds", help="e.g. 0,1,2: one run per seed in OUTPUT/seed-N, "
                                        "mean ± std of every metric in OUTPUT/seeds.json"),
) -> None:
    """Train MODEL on a dataset, select on validation, score test once. Extra args are key=value overrides.

    Layers, lowest first: model defaults < preset configs/MODEL-DATASET.yaml (if shipped) < --config < overrides."""
    from recfm.runs import train_run

    if seeds is not None:
        from recfm.reports import parse_seeds, train_seeds

        with user_errors(), progress_bars() as bars:
            summary = train_seeds(model, dataset, output, parse_seeds(seeds), config, ctx.args, overwrite=overwrite,
                                  progress=bars, resume=resume, log=logging.getLogger("recfm.run").info,
                                  use_preset=not no_preset)
        from recfm.distributed import is_main

        if is_main():
            _print_metrics_table([summary], title=f"{model} on {summary['dataset']}, mean ± std over seeds {seeds} "
                                 f"(runs: {output}/seed-N)")
        return
    with user_errors(), progress_bars() as bars:
        metrics = train_run(model, dataset, output, config, ctx.args, overwrite=overwrite, progress=bars, resume=resume,
                            use_preset=not no_preset)
    from recfm.distributed import is_main

    if is_main():  # under torchrun every process gets here with the same metrics
        _print_metrics_table([metrics], title=f"{model} on {metrics['dataset']} (run: {output})")


@app.command("tune")
def tune_cmd(
    model: str = typer.Argument(..., help="model name (see `recfm models`)"),
    dataset: str = typer.Option(..., "--dataset", "-d", help="registered name or folder path"),
    space: Path = typer.Option(..., "--space", "-s", help="search space YAML (params: and fixed:, see docs/protocol.md)"),
    trials: int = typer.Option(20, "--trials", "-n", min=1, help="trials in all, counting those a resumed search has done"),
    output: Path = typer.Option(..., "--output", "-o", help="search folder: study.db, trials/, reports, best.yaml"),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML config under every trial"),
    timeout: Optional[float] = typer.Option(None, "--timeout", min=0.1, help="stop starting trials after this many minutes"),
    seed: int = typer.Option(0, "--seed", help="seed of the TPE sampler"),
) -> None:
    """Search hyper-parameters on validation (Optuna TPE, median pruning); resumable; test scored once, for the best trial."""
    from recfm.tune import tune

    with user_errors(), progress_bars() as bars:
        summary = tune(model, dataset, space, trials, output, config_file=config, timeout_minutes=timeout, seed=seed,
                       progress=bars)
    out.print((output / "trials.md").read_text())
    out.print(f"best trial {summary['best_trial']}: valid {summary['metric']} {summary['best_valid']:.5f}, "
              f"params {summary['best_params']}")
    out.print(f"test (scored once, best trial only): " + " ".join(f"{k}={v:.4f}" for k, v in summary["test"].items()
                                                                 if isinstance(v, float)))
    out.print(f"best config: {output / 'best.yaml'} (recfm train {model} -d {dataset} --config it)")


@app.command("evaluate")
def evaluate_cmd(
    run: Path = typer.Option(..., "--run", "-r", help="run directory made by `recfm train`"),
    exclude_history: Optional[bool] = typer.Option(None, "--exclude-history/--keep-history", help="override the run's protocol"),
    dataset: Optional[str] = typer.Option(None, "--dataset", "-d", help="score on another dataset (zero-shot; textid)"),
    splits: str = typer.Option("valid,test", "--splits", help="which splits to score: valid,test | test | valid"),
    max_cases: Optional[int] = typer.Option(None, "--max-cases", min=1, help="score a seeded sample of this many cases per split"),
    as_json: bool = typer.Option(False, "--json", help="print JSON instead of a table"),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="also write the metrics to this JSON file"),
    allow_data_change: bool = typer.Option(False, "--allow-data-change",
                                           help="score even if the run's dataset changed since training"),
) -> None:
    """Re-load a trained run and score validation and test with its recorded protocol."""
    from recfm.atomic import atomic_write_json
    from recfm.runs import evaluate_run

    if output is not None and output.is_dir():
        _print_error(ConfigError(f"--output {output} is a folder: give a file name for the metrics JSON"))
        raise typer.Exit(2)
    with user_errors(), progress_bars() as bars:
        metrics = evaluate_run(run, progress=bars, exclude_history=exclude_history, dataset=dataset,
                               splits=tuple(x.strip() for x in splits.split(",") if x.strip()), max_cases=max_cases,
                               allow_data_change=allow_data_change)
    if output is not None:
        atomic_write_json(output, metrics)
    if as_json:
        out.print_json(json.dumps(metrics))
    else:
        _print_metrics_table([metrics], title=f"{metrics['model']} on {metrics['dataset']} (run: {run})")


@app.command("recommend")
def recommend(
    run: Path = typer.Option(..., "--run", "-r", help="run directory made by `recfm train`"),
    history: Optional[str] = typer.Option(None, "--history", help="comma-separated item ids of the dataset, oldest first"),
    user: Optional[str] = typer.Option(None, "--user", help="a dataset user: recommend after all but their last item"),
    titles: Optional[list[str]] = typer.Option(
        None, "--title", "--titles", help="the history as free-text titles, oldest first: repeat the option, one title "
        "each (--title 'Toy Story' --title 'Matrix, The'); a title without an exact or high-confidence match is "
        "refused with the closest catalog titles unless --fuzzy"),
    fuzzy: bool = typer.Option(False, "--fuzzy", help="with --title: take the closest catalog title (shown with its "
                               "score) for a title without a confident match"),
    k: int = typer.Option(10, "--k", "-k", min=1, help="items to return (a textid run answers at most its search beam)"),
    exclude_history: bool = typer.Option(False, "--exclude-history", help="never recommend an item of the history "
                                         "(off by default here, as in the evaluation protocol; `recfm serve` "
                                         "excludes the history by default)"),
    as_json: bool = typer.Option(False, "--json", help="print JSON instead of a table"),
    all_users: bool = typer.Option(False, "--all-users", help="every user of the dataset, after their WHOLE sequence "
                                   "(what comes next), written to -o FILE"),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="with --all-users: FILE.parquet or FILE.csv "
                                          "(columns user, rank, item, score)"),
    batch_size: int = typer.Option(256, "--batch-size", min=1, help="with --all-users: users per model call and per written batch"),
    allow_data_change: bool = typer.Option(False, "--allow-data-change",
                                           help="recommend even if the run's dataset changed since training"),
) -> None:
    """Top-K items of a trained run for a history: item ids, textual IDs (textid runs), titles, scores.
    With --all-users: every user's top K, streamed to a Parquet or CSV file."""
    from recfm.serve.service import recommend_items

    if all_users or output is not None:
        if not all_users or output is None or history is not None or user is not None or titles:
            _print_error(ValueError("--all-users needs -o FILE.parquet|FILE.csv and takes neither --history nor --user"))
            raise typer.Exit(2)
        from recfm.batch import recommend_all_users

        with user_errors(), progress_bars() as bars:
            summary = recommend_all_users(run, output, k=k, exclude_history=exclude_history, batch_size=batch_size,
                                          progress=bars, allow_data_change=allow_data_change)
        if as_json:
            out.print_json(json.dumps(summary))
        else:
            out.print(Text(f"wrote {summary['rows']} recommendations ({summary['users']} users, top {summary['k']}, "
                           f"after each user's whole sequence{', history excluded' if exclude_history else ''}) "
                           f"to {summary['output']}"), soft_wrap=True)
        return
    if (history is not None) + (user is not None) + bool(titles) != 1:
        _print_error(ValueError("give exactly one of --history ITEM,ITEM,..., --title TITLE (repeated) or --user USER_ID"))
        raise typer.Exit(2)
    items = [h.strip() for h in history.split(",") if h.strip()] if history is not None else None
    with user_errors():
        result = recommend_items(run, items, k, user=user, titles=titles or None, fuzzy=fuzzy,
                                 exclude_history=exclude_history, allow_data_change=allow_data_change)
    if as_json:
        out.print_json(json.dumps(result))
        return
    _print_recommendations(result, k, run)


def _print_recommendations(result: dict, k: int, run: Path) -> None:
    hist = Table(title=f"history ({len(result['history'])} items, newest last{'; last 10 shown' if len(result['history']) > 10 else ''})")
    recs = Table(title=f"top {k}: {result['model']} on {result['dataset']} (run: {run})")
    for table in (hist, recs):
        if table is recs:
            table.add_column("rank", justify="right")
        for col in ("item id", "textual id", "title"):
            table.add_column(col)
    recs.add_column("score", justify="right")
    for h in result["history"][-10:]:
        hist.add_row(h["item_id"], h["textual_id"] or "-", h["title"])
    for r in result["recommendations"]:
        recs.add_row(str(r["rank"]), r["item_id"], r["textual_id"] or "-", r["title"], f"{r['score']:.4f}")
    if result.get("resolved"):
        matched = Table(title="titles matched to the catalog (score 1.0: the same title up to case, punctuation, year, article)")
        for col in ("given", "item id", "catalog title", "score", "exact"):
            matched.add_column(col)
        for m in result["resolved"]:
            matched.add_row(m["given"], m["item_id"], m["title"], f"{m['score']:.3f}", "yes" if m["exact"] else "no")
        out.print(matched)
    out.print(hist)
    out.print(recs)
    if result["held_out"]:
        h = result["held_out"]
        hit = next((r["rank"] for r in result["recommendations"] if r["item_id"] == h["item_id"]), None)
        where = f"rank {hit}" if hit else f"not in the top {k}"
        out.print(f"held-out next item: {h['item_id']} {h['textual_id'] or ''} ({h['title']}): {where}")


@app.command("compare")
def compare(
    runs: list[Path] = typer.Argument(..., help="run directories, metrics.json files or `train --seeds` folders"),
    fmt: Optional[str] = typer.Option(None, "--format", "-f",
                                      help="table (terminal, the default) | md | csv | json (default with -o: from its extension)"),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="write the md/csv/json to this file instead of stdout"),
    mixed: bool = typer.Option(False, "--mixed", help="table runs scored under different protocols (one protocol line each)"),
    per_seed: bool = typer.Option(False, "--per-seed", help="one row per seed run instead of their mean ± std"),
) -> None:
    """One table of the valid and test metrics of several runs, with the protocol they were scored under.

    Runs scored under different protocols are refused unless --mixed; runs that differ only in their
    seed become mean ± std rows."""
    from recfm.atomic import atomic_write_text
    from recfm.reports import ReportError, compare_report, notes, output_format, render, rich_table

    with user_errors():
        kind = output_format(fmt, output)
        report = compare_report(runs, mixed=mixed, aggregate=not per_seed)
        if kind == "table":
            out.print(rich_table(report))
            for line in notes(report):
                out.print(Text(line), soft_wrap=True)
            return
        text = render(report, kind)
        if output is None:
            typer.echo(text, nl=False)
            return
        if output.is_dir():
            raise ReportError(f"-o {output} is a folder: give a file name")
        atomic_write_text(output, text)
    console.print(f"wrote {output} ({kind}, {len(report.entries)} runs)")


def _print_metrics_table(rows: list[dict], title: str, runs: Optional[list[str]] = None) -> None:
    from recfm.reports import notes, report_from_metrics, rich_table

    report = report_from_metrics(rows, title=title, runs=runs)
    out.print(rich_table(report))
    for line in notes(report):
        out.print(Text(line), soft_wrap=True)


@app.command("demo")
def demo(
    output: Path = typer.Option(Path("runs/demo"), "--output", "-o", help="folder for the demo's run directories"),
    dataset: str = typer.Option("movielens-1m", "--dataset", "-d"),
    textid_dataset: str = typer.Option("movielens-100k", "--textid-dataset", help="dataset of the textual-ID part"),
    user: str = typer.Option("196", "--user", help="the real user whose textual-ID recommendations are shown"),
    skip_baselines: bool = typer.Option(False, "--skip-baselines", help="only the textual-ID part"),
) -> None:
    """The main job on real data: Pop and SASRec on MovieLens-1M, then a textual-ID generative
    recommender (IDGenRec) on MovieLens-100K and its recommendations for a real user."""
    from recfm.demo import run_demo

    with user_errors(), progress_bars() as bars:
        result = run_demo(output, dataset, textid_dataset, user, skip_baselines, progress=bars, section=console.rule,
                          show_metrics=lambda rows, title: _print_metrics_table(rows, title=title))
    _print_recommendations(result, 10, output / "textid")


# -- bench ------------------------------------------------------------------------------
@bench_app.command("run")
def bench_run(
    config: Path = typer.Option(..., "--config", "-c", help="bench YAML (e.g. configs/bench-cpu.yaml)"),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="results folder (default: the config's output)"),
) -> None:
    """Run a settings matrix; finished cells are kept, so a killed run resumes where it stopped."""
    from recfm.bench.report import leaderboard, read_cells, write_reports
    from recfm.bench.runner import BenchRunner, load_config

    from pydantic import ValidationError

    from recfm.bench.runner import BenchConfig
    from recfm.errors import describe_validation_error

    with user_errors():
        try:
            cfg = load_config(config)
        except ValidationError as e:
            raise ConfigError(f"{config}: {describe_validation_error(e, BenchConfig)}") from None
        except (OSError, UnicodeDecodeError, ValueError) as e:  # unreadable, not UTF-8, not YAML
            raise ConfigError(f"{config}: {' '.join(str(e).split())}") from None
        runner = BenchRunner(cfg, output, log_fn=logging.getLogger("recfm.bench").info)
        runner.run()
        paths = write_reports(runner.output)
    out.print(leaderboard(read_cells(runner.output)))
    for name, path in paths.items():
        out.print(f"{name}: {path}")


@bench_app.command("report")
def bench_report(output: Path = typer.Argument(..., help="a bench results folder")) -> None:
    """Rewrite the leaderboard, transfer CSV and heatmap from the finished cells."""
    from recfm.bench.report import leaderboard, read_cells, write_reports

    with user_errors():
        paths = write_reports(output)
    out.print(leaderboard(read_cells(output)))
    for name, path in paths.items():
        out.print(f"{name}: {path}")


def _without_outcomes(tasks: dict[str, dict]) -> dict[str, dict]:
    """The metrics to print: the per-record outcomes stay in metrics.json."""
    return {t: {k: v for k, v in m.items() if k != "outcomes"} for t, m in tasks.items()}


def _multitask_config(config: Optional[Path], overrides: list[str]):
    """The YAML config with ``section.key=value`` overrides (``train.steps=50``, ``data.build.history_len=5``)."""
    from pydantic import ValidationError

    from recfm.errors import describe_validation_error
    from recfm.multitask.run import MultiTaskRunConfig, load_run_config
    from recfm.overrides import apply_overrides

    nested = apply_overrides({}, overrides, ("data", "train"), example="train.KEY=VALUE or data.KEY=VALUE: train.steps=50")
    try:
        return load_run_config(config, nested)
    except ValidationError as e:
        raise ConfigError(f"{config or 'defaults'}: {describe_validation_error(e, MultiTaskRunConfig)}") from None
    except (OSError, UnicodeDecodeError, ValueError) as e:  # unreadable, not UTF-8, not YAML
        raise ConfigError(f"{config or 'defaults'}: {' '.join(str(e).split())}") from None


@multitask_app.command("train", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def multitask_train(
    ctx: typer.Context,
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML with data: and train: sections"),
    output: Path = typer.Option(..., "--output", "-o", help="run directory"),
    resume: bool = typer.Option(False, "--resume", help="continue an interrupted run from its newest checkpoint"),
) -> None:
    """Train one model on every task (overrides: train.steps=50 train.scheduler=uniform ...)."""
    from recfm.multitask.run import train_run

    with user_errors():
        metrics = train_run(_multitask_config(config, list(ctx.args)), output, resume=resume)
    out.print_json(json.dumps(_without_outcomes(metrics["tasks"])))


@multitask_app.command("evaluate")
def multitask_evaluate(run: Path = typer.Option(..., "--run", help="a `recfm multitask train` run directory")) -> None:
    """Re-score a trained run on every task's test records."""
    from recfm.multitask.run import evaluate_run

    with user_errors():
        metrics = evaluate_run(run)
    out.print_json(json.dumps(_without_outcomes(metrics["tasks"])))


@multitask_app.command("ablation", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def multitask_ablation(
    ctx: typer.Context,
    config: Optional[Path] = typer.Option(None, "--config", "-c"),
    output: Path = typer.Option(..., "--output", "-o", help="folder for the variants, table.md and the plots"),
    paper: bool = typer.Option(False, "--paper-variants", help="RecFound Table 4's cumulative variants instead"),
) -> None:
    """Zero-shot backbone, full method and the three ablations: one table, two plots per variant."""
    from recfm.multitask.run import PAPER_VARIANTS, ablation

    with user_errors():
        table = ablation(_multitask_config(config, list(ctx.args)), output, PAPER_VARIANTS if paper else None)
    out.print(table.read_text())


@app.command("serve")
def serve(
    run: Path = typer.Option(..., "--run", "-r", help="run directory made by `recfm train` or `recfm multitask train`"),
    host: str = typer.Option("127.0.0.1", "--host", help="interface to listen on (0.0.0.0 exposes it to the network)"),
    port: int = typer.Option(8000, "--port", "-p", min=1, max=65535),
    max_batch: int = typer.Option(MAX_BATCH, "--max-batch", min=1, help="requests answered by one model call at most"),
    max_wait_ms: float = typer.Option(MAX_WAIT_MS, "--max-wait-ms", min=0, help="how long a request waits for others to batch with"),
    max_history: int = typer.Option(200, "--max-history", min=1, help="longer histories are refused (413)"),
    max_queue: int = typer.Option(MAX_QUEUE, "--max-queue", min=1, help="requests waiting beyond this are refused (503)"),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="torch CPU threads (default: all cores)"),
    allow_data_change: bool = typer.Option(False, "--allow-data-change",
                                           help="serve even if the run's dataset changed since training"),
) -> None:
    """HTTP API of a trained run: POST /recommend, POST /embed, GET /health (a multitask run: POST /answer too);
    OpenAPI at /docs."""
    import torch
    import uvicorn

    from recfm.serve import Limits, RecommendationService, create_app

    if threads:
        torch.set_num_threads(threads)
    with user_errors():
        service = RecommendationService.from_run(run, Limits(max_history=max_history), allow_data_change=allow_data_change)
    import gc

    # The loaded model, catalog and libraries are long-lived: moving them out of the collector's view
    # keeps full collections (tens of ms over torch's and transformers' objects) out of request latency.
    gc.collect()
    gc.freeze()
    console.print(f"serving {service.model_name} on {service.data.name} ({service.data.n_items} items) "
                  f"at http://{host}:{port} (API docs: /docs)")
    uvicorn.run(create_app(service, max_batch=max_batch, max_wait_ms=max_wait_ms, max_queue=max_queue), host=host, port=port,
                log_level="warning", access_log=False)


def run() -> None:  # pragma: no cover
    sys.exit(app())


if __name__ == "__main__":  # pragma: no cover
    app()
