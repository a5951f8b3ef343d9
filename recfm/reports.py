"""Comparison tables of finished runs, and one model trained over several seeds.

    report = compare_report(["runs/pop", "runs/sasrec"])   # ReportError on a bad file or on mixed protocols
    print(render(report, "md"))                             # "md", "csv" or "json"; rich_table(report) on a terminal
    summary = train_seeds("sasrec", "movielens-100k", "runs/s", seeds=[0, 1, 2])   # runs/s/seed-N/ + runs/s/seeds.json

A table never shows a number without the protocol it was measured under: one protocol line per
distinct protocol, and runs scored under different protocols (another MRR depth, a sampled
split, history excluded or not, other cutoffs) are refused unless ``mixed=True``. Rows of a
sampled evaluation say "N of M" users. Runs that differ only in their seed (a ``--seeds`` folder,
or its ``seed-N`` runs given one by one) become one mean ± std row per split.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import shutil
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import yaml

from recfm.runs import RunError

SPLITS = ("valid", "test")
NOT_METRICS = {"cases", "cases_in_split", "eval_seconds"}
SEEDS_FILE = "seeds.json"
SEEDS_KIND = "seeds"
STD_NOTE = "sample standard deviation (n - 1) across seeds"
PROTOCOL_ORDER = ("split", "ranking", "ks", "exclude_history", "mrr_depth", "selection", "cases")


class ReportError(RunError):
    """A run folder or metrics file that cannot be tabled, or runs that must not share one table."""


# -- reading runs -----------------------------------------------------------------------------
@dataclass
class Entry:
    """One run of a table, or the mean ± std of runs that differ only in their seed."""

    run: str
    model: str
    dataset: str
    protocol: dict
    splits: dict[str, dict]  # split -> {"mean": {...}, "std": {...} | None, "cases": int | None, "cases_in_split": ...}
    train_seconds: float | None = None
    train_seconds_std: float | None = None
    seeds: list | None = None
    raw: dict = field(default_factory=dict, repr=False)  # the metrics.json object of a single run
    config: dict | None = field(default=None, repr=False)  # its config.yaml, to find seed siblings


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def read_json(path: Path) -> Any:
    """The JSON object in ``path``; a missing, unreadable, truncated or invalid file is one ReportError line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ReportError(f"{path} does not exist") from None
    except UnicodeDecodeError:
        raise ReportError(f"{path} is not valid JSON (not UTF-8 text): the file is damaged") from None
    except OSError as e:
        raise ReportError(f"{path} cannot be read ({e.strerror or e})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        what = "is empty" if not text.strip() else f"is not valid JSON ({e.msg}: line {e.lineno}, column {e.colno})"
        raise ReportError(f"{path} {what}: truncated or edited; re-score the run (recfm evaluate --run DIR -o FILE) "
                          "or train it again") from None


def _split_scores(path: Path, name: str, scores: Any) -> dict[str, float]:
    if not isinstance(scores, dict):
        raise ReportError(f"{path}: '{name}' is a JSON {type(scores).__name__}, not an object of metrics")
    out = {}
    for key, value in scores.items():
        if not _is_number(value):
            raise ReportError(f"{path}: {name}.{key} is {value!r}, not a number")
        out[key] = value
    return out


def _common_fields(path: Path, obj: Any, what: str) -> tuple[str, str, dict]:
    if not isinstance(obj, dict):
        raise ReportError(f"{path} holds a JSON {type(obj).__name__}, not the object of a {what}")
    protocol = obj.get("protocol", {})
    if not isinstance(protocol, dict):
        raise ReportError(f"{path}: 'protocol' is a JSON {type(protocol).__name__}, not an object")
    if not any(s in obj for s in SPLITS):
        raise ReportError(f"{path} has neither valid nor test metrics: not a {what}")
    return str(obj.get("model", "?")), str(obj.get("dataset", "?")), protocol


def entry_from_metrics(obj: Any, run: str, path: Path | None = None, config: dict | None = None) -> Entry:
    """An :class:`Entry` of a run's metrics.json object (or of a seeds.json object, see :func:`entry_from_seeds`)."""
    path = Path(path or run)
    if isinstance(obj, dict) and obj.get("kind") == SEEDS_KIND:
        return entry_from_seeds(obj, run, path)
    model, dataset, protocol = _common_fields(path, obj, "run's metrics.json")
    splits = {}
    for name in SPLITS:
        if name in obj:
            scores = _split_scores(path, name, obj[name])
            splits[name] = {"mean": {k: v for k, v in scores.items() if k not in NOT_METRICS}, "std": None,
                            "cases": scores.get("cases"), "cases_in_split": scores.get("cases_in_split")}
    secs = obj.get("train_seconds")
    return Entry(run=run, model=model, dataset=dataset, protocol=protocol, splits=splits,
                 train_seconds=secs if _is_number(secs) else None, raw=obj, config=config)


def entry_from_seeds(obj: Any, run: str, path: Path | None = None) -> Entry:
    """An :class:`Entry` (mean ± std rows) of a seeds.json object made by :func:`aggregate_seeds`."""
    path = Path(path or run)
    model, dataset, protocol = _common_fields(path, obj, SEEDS_FILE)
    splits = {}
    for name in SPLITS:
        if name not in obj:
            continue
        part = obj[name]
        if not isinstance(part, dict) or not isinstance(part.get("mean"), dict):
            raise ReportError(f"{path}: '{name}' has no 'mean' object: not a {SEEDS_FILE} made by recfm train --seeds")
        mean = _split_scores(path, f"{name}.mean", part["mean"])
        std = _split_scores(path, f"{name}.std", part.get("std", {}))
        splits[name] = {"mean": mean, "std": std, "cases": part.get("cases"), "cases_in_split": part.get("cases_in_split")}
    secs = obj.get("train_seconds") if isinstance(obj.get("train_seconds"), dict) else {}
    seeds = obj.get("seeds") if isinstance(obj.get("seeds"), list) else None
    return Entry(run=run, model=model, dataset=dataset, protocol=protocol, splits=splits,
                 train_seconds=secs.get("mean") if _is_number(secs.get("mean")) else None,
                 train_seconds_std=secs.get("std") if _is_number(secs.get("std")) else None, seeds=seeds, raw=obj)


def _read_config(run_dir: Path) -> dict | None:
    try:
        config = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    return config if isinstance(config, dict) else None


def read_entry(path: Path | str) -> Entry:
    """A run directory, its metrics.json, a ``--seeds`` folder or its seeds.json, or a metrics file of
    ``recfm evaluate -o``: one :class:`Entry`."""
    path = Path(path)
    if path.is_dir():
        if (path / "metrics.json").is_file():
            return entry_from_metrics(read_json(path / "metrics.json"), str(path), path / "metrics.json",
                                      _read_config(path))
        if (path / SEEDS_FILE).is_file():
            return entry_from_seeds(read_json(path / SEEDS_FILE), str(path), path / SEEDS_FILE)
        hint = " (its seed runs have not all finished: recfm train ... --seeds ... --resume)" if any(path.glob("seed-*")) else ""
        raise ReportError(f"{path} has no metrics.json (not a finished run) and no {SEEDS_FILE}{hint}")
    if not path.exists():
        raise ReportError(f"{path} does not exist")
    config = _read_config(path.parent) if path.name == "metrics.json" else None
    return entry_from_metrics(read_json(path), str(path), path, config)


# -- seeds ------------------------------------------------------------------------------------
def aggregate_seeds(metrics: Sequence[dict], seeds: Sequence, runs: Sequence[str]) -> dict:
    """The seeds.json object of runs that differ only in their seed: per split the mean and the
    sample standard deviation (n - 1) of every metric; the runs must share model, dataset,
    protocol and evaluation cases."""
    if len(metrics) < 2:
        raise ReportError("a mean ± std needs at least two seed runs")
    first = metrics[0]
    for key in ("model", "dataset", "protocol"):
        for run, m in zip(runs, metrics):
            if m.get(key) != first.get(key):
                raise ReportError(f"seed runs differ in {key}: {runs[0]} and {run} cannot be averaged")
    out: dict[str, Any] = {"kind": SEEDS_KIND, "model": first.get("model"), "dataset": first.get("dataset"),
                           "protocol": first.get("protocol", {}), "seeds": list(seeds), "runs": list(runs),
                           "std": STD_NOTE}
    for split in SPLITS:
        have = [split in m for m in metrics]
        if not any(have):
            continue
        if not all(have):
            raise ReportError(f"{runs[have.index(False)]} has no {split} metrics but {runs[have.index(True)]} has")
        parts = [m[split] for m in metrics]
        names = [k for k in parts[0] if k not in NOT_METRICS]
        for run, part in zip(runs, parts):
            if sorted(k for k in part if k not in NOT_METRICS) != sorted(names):
                raise ReportError(f"seed runs report different {split} metrics: {runs[0]} and {run}")
            for key in ("cases", "cases_in_split"):
                if part.get(key) != parts[0].get(key):
                    raise ReportError(f"seed runs were scored on different {split} cases ({key}): {runs[0]} and {run}")
        values = {n: [float(p[n]) for p in parts] for n in names}
        agg = {"mean": {n: round(statistics.fmean(v), 6) for n, v in values.items()},
               "std": {n: round(statistics.stdev(v), 6) for n, v in values.items()}}
        for key in ("cases", "cases_in_split"):
            if key in parts[0]:
                agg[key] = parts[0][key]
        out[split] = agg
    secs = [m.get("train_seconds") for m in metrics]
    if all(_is_number(s) for s in secs):
        out["train_seconds"] = {"mean": round(statistics.fmean(secs), 2), "std": round(statistics.stdev(secs), 2)}
    return out


def _seed_of(config: dict) -> tuple:
    model = config.get("model") if isinstance(config.get("model"), dict) else {}
    return config.get("seed"), model.get("seed")


def _without_seed(config: dict) -> str:
    rest = {k: v for k, v in config.items() if k != "seed"}
    if isinstance(rest.get("model"), dict):
        rest["model"] = {k: v for k, v in rest["model"].items() if k != "seed"}
    return json.dumps(rest, sort_keys=True, default=str)


def _group_label(runs: list[str]) -> str:
    paths = [Path(r) for r in runs]
    parents = {p.parent for p in paths}
    if len(parents) == 1 and all(re.fullmatch(r"seed-.+", p.name) for p in paths):
        return str(paths[0].parent)
    return ", ".join(runs)


def group_seeds(entries: list[Entry]) -> list[Entry]:
    """Single runs whose config.yaml is the same but for the seed (and that share model, dataset and
    protocol) become one mean ± std entry, at the place of the first of them."""
    groups: dict[str, list[int]] = {}
    for i, e in enumerate(entries):
        if e.config is not None and e.seeds is None:
            key = json.dumps([_without_seed(e.config), e.model, e.dataset, e.protocol], sort_keys=True, default=str)
            groups.setdefault(key, []).append(i)
    merged: dict[int, Entry] = {}
    dropped: set[int] = set()
    for members in groups.values():
        seeds = [_seed_of(entries[i].config) for i in members]
        if len(members) < 2 or len(set(seeds)) < len(seeds):
            continue  # one run, or the same seed twice (a re-run): show them as they are
        runs = [entries[i].run for i in members]
        run_seeds = [s[0] for s in seeds]
        shown = run_seeds if len(set(run_seeds)) == len(run_seeds) else [s[1] for s in seeds]
        try:
            summary = aggregate_seeds([entries[i].raw for i in members], shown, runs)
        except ReportError:
            continue  # not averageable (other cases scored): keep the single rows
        merged[members[0]] = entry_from_seeds(summary, _group_label(runs))
        dropped.update(members[1:])
    return [merged.get(i, e) for i, e in enumerate(entries) if i not in dropped]


def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` -> [0, 1, 2]; at least two distinct integers."""
    from recfm.config import ConfigError

    parts = [p.strip() for p in str(text).split(",") if p.strip()]
    try:
        seeds = [int(p) for p in parts]
    except ValueError:
        raise ConfigError(f"--seeds {text!r} must be comma-separated integers, e.g. --seeds 0,1,2") from None
    if len(seeds) < 2:
        raise ConfigError(f"--seeds {text!r} names {len(seeds)} seed; a mean ± std needs at least two (one run: seed=N)")
    if len(set(seeds)) < len(seeds):
        raise ConfigError(f"--seeds {text!r} repeats a seed")
    return seeds


def train_seeds(
    model: str,
    dataset: str,
    output: Path,
    seeds: Sequence[int],
    config_file: Path | None = None,
    overrides: Sequence[str] = (),
    overwrite: bool = False,
    progress: Callable[[str, int], Callable[[int], None]] | None = None,
    resume: bool = False,
    log: Callable[[str], None] | None = None,
    **train_kwargs,
) -> dict:
    """Train ``model`` once per seed into ``output/seed-N`` (``recfm.runs.train_run`` with the
    override ``seed=N``, and ``model.seed=N`` for models whose own config has a seed: SASRec's
    weights, shuffling and dropout follow that one), then write ``output/seeds.json``: per split
    the mean and sample standard deviation of every metric. Returns that object.

    ``resume`` keeps the seed runs that finished (their config must be the one resolved now),
    resumes an interrupted one from its checkpoint and trains the rest; ``overwrite`` replaces
    every seed run and removes ``seed-*`` runs of seeds no longer asked for. Other keyword
    arguments (``use_preset``) go to ``train_run``."""
    from recfm import distributed
    from recfm.config import ConfigError, dump, parse_override, resolve
    from recfm.atomic import atomic_write_json
    from recfm.runs import model_entry, train_run

    seeds = list(seeds)
    if len(seeds) < 2 or len(set(seeds)) < len(seeds):
        raise ConfigError(f"seeds {seeds}: give at least two distinct seeds")
    for text in overrides:
        path, _ = parse_override(text)
        if path in (["seed"], ["model", "seed"]):
            raise ConfigError(f"override {text!r} conflicts with --seeds: each seed run sets seed=N itself")
    entry = model_entry(model)
    seeds_model = "seed" in entry.config.model_fields
    output = Path(output)
    names = [f"seed-{s}" for s in seeds]
    if output.is_file():
        raise RunError(f"{output} is a file, not a folder for seed runs")
    if output.is_dir() and any(output.iterdir()):
        if (output / "config.yaml").is_file():
            raise RunError(f"{output} holds a single run, not a folder of seed runs: choose another --output")
        ours = (output / SEEDS_FILE).is_file() or any(p.is_dir() and p.name.startswith("seed-") for p in output.iterdir())
        if not ours:
            raise RunError(f"{output} is not empty and holds no seed runs: choose another --output")
        if not (overwrite or resume):
            raise RunError(f"{output} already holds seed runs; pass --overwrite, --resume (keep the finished seeds) "
                           "or choose another --output")

    def seed_overrides(s: int) -> list[str]:
        return [*overrides, f"seed={s}", *([f"model.seed={s}"] if seeds_model else [])]

    # Every seed's configuration resolves before anything is trained or removed (a typo fails at once).
    preset = {"use_preset": train_kwargs["use_preset"]} if "use_preset" in train_kwargs else {}
    resolved = {s: dump(resolve(model, dataset, entry.config, config_file, seed_overrides(s), **preset)[0]) for s in seeds}
    main = distributed.is_main()
    if main and output.is_dir():
        (output / SEEDS_FILE).unlink(missing_ok=True)  # rewritten once every seed has finished
        if overwrite:
            for stale in output.glob("seed-*"):
                if stale.is_dir() and stale.name not in names and (stale / "config.yaml").is_file():
                    shutil.rmtree(stale)
    results = []
    for s, name in zip(seeds, names):
        run_dir = output / name
        finished = (run_dir / "metrics.json").is_file()
        if resume and finished and not overwrite:
            if _read_config(run_dir) != yaml.safe_load(resolved[s]):
                raise RunError(f"{run_dir} finished with another configuration than the one resolved now: "
                               "resume with the same model, dataset, --config and overrides, or --overwrite")
            if log:
                log(f"{name}: finished earlier, kept")
            results.append(read_json(run_dir / "metrics.json"))
            continue
        if log:
            log(f"{name} ({seeds.index(s) + 1} of {len(seeds)})")
        started = (run_dir / "config.yaml").is_file() and not finished
        results.append(train_run(model, dataset, run_dir, config_file, seed_overrides(s),
                                 overwrite=overwrite and not (resume and started), progress=progress,
                                 resume=resume and started, **train_kwargs))
    summary = aggregate_seeds(results, seeds, names)
    if main:
        atomic_write_json(output / SEEDS_FILE, summary)
    distributed.barrier()
    return summary


# -- the report -------------------------------------------------------------------------------
@dataclass
class Report:
    title: str
    entries: list[Entry]
    protocols: list[dict]  # distinct protocols, in order of first appearance
    protocol_of: list[int]  # entry index -> index into protocols
    metrics: list[str]  # metric columns

    @property
    def show_run(self) -> bool:
        return any(e.run for e in self.entries)

    @property
    def show_seeds(self) -> bool:
        return any(e.seeds for e in self.entries)

    @property
    def sampled(self) -> bool:
        return any(s.get("cases_in_split") for e in self.entries for s in e.splits.values())

    def protocol_id(self, i: int) -> str:
        return _letter(i)

    def runs_of(self, p: int) -> list[str]:
        return [e.run or f"{e.model} on {e.dataset}" for e, q in zip(self.entries, self.protocol_of) if q == p]

    def mrr_header(self) -> str:
        depths = {p.get("mrr_depth") for p in self.protocols}
        return f"mrr@{depths.pop()}" if len(depths) == 1 and None not in depths else "mrr"


def _letter(i: int) -> str:
    return chr(ord("A") + i) if i < 26 else f"P{i + 1}"


def _metric_order(name: str) -> tuple:
    m = re.fullmatch(r"(hr|ndcg)@(\d+)", name)
    if m:
        return (0, int(m.group(2)), m.group(1) != "hr", name)
    return (1 if name == "mrr" else 2, 0, False, name)


def _fmt_value(v: Any) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, list):
        return ",".join(map(str, v))
    return str(v)


def protocol_line(protocol: dict) -> str:
    """The protocol of metrics.json in one line of prose."""
    if not protocol:
        return "not recorded in metrics.json"
    parts = []
    for key in [*[k for k in PROTOCOL_ORDER if k in protocol], *[k for k in protocol if k not in PROTOCOL_ORDER]]:
        v = protocol[key]
        if key in ("split", "ranking", "selection"):
            parts.append(str(v))
        elif key == "ks":
            parts.append(f"HR/NDCG@{_fmt_value(v)}")
        elif key == "mrr_depth":
            parts.append(f"MRR within the top {v}")
        elif key == "cases":
            parts.append("every case scored" if v == "all" else f"cases: {v}")
        else:
            parts.append(f"{key}={_fmt_value(v)}")
    return "; ".join(parts)


def _differing_keys(protocols: list[dict]) -> list[str]:
    keys = [*[k for k in PROTOCOL_ORDER if any(k in p for p in protocols)],
            *sorted({k for p in protocols for k in p} - set(PROTOCOL_ORDER))]
    missing = object()
    return [k for k in keys if len({json.dumps(p.get(k, missing), sort_keys=True, default=repr) for p in protocols}) > 1]


def default_title(entries: list[Entry]) -> str:
    present = [s for s in SPLITS if any(s in e.splits for e in entries)]
    what = " and ".join(present) or "no"
    n = len(entries)
    return f"{what} metrics of {n} run{'s' if n != 1 else ''} (protocol below)"


def build_report(entries: list[Entry], title: str | None = None, mixed: bool = False) -> Report:
    """Check the protocols (``mixed``: allow several) and lay out the table of ``entries``."""
    protocols: list[dict] = []
    protocol_of = []
    for e in entries:
        if e.protocol not in protocols:
            protocols.append(e.protocol)
        protocol_of.append(protocols.index(e.protocol))
    if len(protocols) > 1 and not mixed:
        keys = _differing_keys(protocols)
        k = keys[0] if keys else "protocol"
        a = entries[0]
        b = next(e for e, p in zip(entries, protocol_of) if p != 0)
        shown = lambda e: _fmt_value(e.protocol[k]) if k in e.protocol else "(not recorded)"  # noqa: E731
        raise ReportError(f"the runs were scored under different protocols (differing: {', '.join(keys)}; "
                          f"{k} is {shown(a)!r} in {a.run or a.model} but {shown(b)!r} in {b.run or b.model}): "
                          "their numbers are not comparable; pass --mixed to table them anyway, one protocol line each")
    names = {n for e in entries for s in e.splits.values() for n in s["mean"]}
    metrics = sorted(names, key=_metric_order)
    return Report(title or default_title(entries), entries, protocols, protocol_of, metrics)


def compare_report(paths: Sequence[Path | str], title: str | None = None, mixed: bool = False,
                   aggregate: bool = True) -> Report:
    """The report of run directories, metrics files and ``--seeds`` folders; ``aggregate``: runs
    differing only in their seed become one mean ± std entry."""
    if not paths:
        raise ReportError("give at least one run directory")
    entries = [read_entry(p) for p in paths]
    if aggregate:
        entries = group_seeds(entries)
    return build_report(entries, title, mixed)


def report_from_metrics(metrics: Sequence[dict], title: str | None = None, runs: Sequence[str] | None = None,
                        mixed: bool = True) -> Report:
    """The report of metrics objects in memory (what train_run / evaluate_run / train_seeds return)."""
    runs = list(runs) if runs is not None else [""] * len(metrics)
    entries = [entry_from_metrics(m, r, Path(r or "metrics")) for m, r in zip(metrics, runs)]
    return build_report(entries, title, mixed)


# -- rows and renderings ----------------------------------------------------------------------
def _cell(mean: float | None, std: float | None, digits: int = 4) -> str:
    if mean is None:
        return "-"
    return f"{mean:.{digits}f}" if std is None else f"{mean:.{digits}f} ± {std:.{digits}f}"


def _users(split: dict) -> str:
    cases, total = split.get("cases"), split.get("cases_in_split")
    if cases is None:
        return "-"
    return f"{cases} of {total}" if total else str(cases)


def records(report: Report) -> list[dict]:
    """One plain record per (entry, split): the numbers behind every rendering."""
    out = []
    for e, p in zip(report.entries, report.protocol_of):
        for split in SPLITS:
            if split not in e.splits:
                continue
            s = e.splits[split]
            is_test = split == "test" or "test" not in e.splits
            out.append({
                "run": e.run, "model": e.model, "dataset": e.dataset, "split": split,
                "protocol": report.protocol_id(p), "users": s.get("cases"), "users_in_split": s.get("cases_in_split"),
                "seeds": e.seeds, "metrics": {m: s["mean"].get(m) for m in report.metrics},
                "std": None if s["std"] is None else {m: s["std"].get(m) for m in report.metrics},
                "train_seconds": e.train_seconds if is_test else None,
                "train_seconds_std": e.train_seconds_std if is_test else None,
            })
    return out


def _display_columns(report: Report) -> list[str]:
    cols = ["run"] if report.show_run else []
    cols += ["model", "dataset", "split"]
    if len(report.protocols) > 1:
        cols.append("protocol")
    if report.show_seeds:
        cols.append("seeds")
    cols.append("users")
    cols += [report.mrr_header() if m == "mrr" else m for m in report.metrics]
    cols.append("train s")
    return cols


def display_rows(report: Report) -> list[list[str]]:
    rows = []
    for r in records(report):
        row = [r["run"]] if report.show_run else []
        row += [r["model"], r["dataset"], r["split"]]
        if len(report.protocols) > 1:
            row.append(r["protocol"])
        if report.show_seeds:
            row.append(",".join(map(str, r["seeds"])) if r["seeds"] else "")
        row.append(_users({"cases": r["users"], "cases_in_split": r["users_in_split"]}))
        std = r["std"] or {}
        row += [_cell(r["metrics"][m], std.get(m) if r["std"] is not None else None) for m in report.metrics]
        secs = r["train_seconds"]
        row.append("" if secs is None else _cell(secs, r["train_seconds_std"], 0))
        rows.append(row)
    return rows


def notes(report: Report) -> list[str]:
    """The lines printed under the table: the protocol(s), what "N of M" and "±" mean."""
    lines = []
    if len(report.protocols) == 1:
        lines.append(f"protocol: {protocol_line(report.protocols[0])}")
    else:
        for i, p in enumerate(report.protocols):
            lines.append(f"protocol {report.protocol_id(i)} ({', '.join(report.runs_of(i))}): {protocol_line(p)}")
    if report.sampled:
        lines.append("N of M users: sampled evaluation, a seeded sample of N of the split's M users "
                     "(protocol.max_cases), each still ranked over all items")
    if report.show_seeds:
        lines.append(f"mean ± {STD_NOTE}")
    return lines


def rich_table(report: Report):
    from rich.table import Table
    from rich.text import Text

    table = Table(title=report.title)
    left = {"run", "model", "dataset", "split", "protocol", "seeds"}
    for col in _display_columns(report):
        # fold, not "…": a squeezed run path or dataset name must stay readable
        if col == "run":
            table.add_column(col, overflow="fold")
        else:
            table.add_column(col, justify="left" if col in left else "right", no_wrap=True)
    for row in display_rows(report):
        table.add_row(*(Text(c) for c in row))  # Text: run paths may hold [brackets] that markup would eat
    return table


def _md_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|")


def to_markdown(report: Report) -> str:
    cols = _display_columns(report)
    left = {"run", "model", "dataset", "split", "protocol", "seeds"}
    lines = [f"**{_md_escape(report.title)}**", "", "| " + " | ".join(cols) + " |",
             "|" + "|".join(":---" if c in left else "---:" for c in cols) + "|"]
    lines += ["| " + " | ".join(_md_escape(c) for c in row) + " |" for row in display_rows(report)]
    lines.append("")
    lines += [f"{_md_escape(n)}  " for n in notes(report)]
    return "\n".join(lines).rstrip() + "\n"


def to_csv(report: Report) -> str:
    """Numbers unrounded (as stored), one row per run and split, the protocol spelled out in each row."""
    with_std = any(r["std"] is not None for r in records(report))
    header = ["run", "model", "dataset", "split", "users", "users_in_split", "seeds", *report.metrics]
    if with_std:
        header += [f"{m}_std" for m in report.metrics]
    header += ["train_seconds", *(["train_seconds_std"] if with_std else []), "protocol"]
    by_id = {report.protocol_id(i): p for i, p in enumerate(report.protocols)}
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    for r in records(report):
        blank = lambda v: "" if v is None else v  # noqa: E731
        row = [r["run"], r["model"], r["dataset"], r["split"], blank(r["users"]), blank(r["users_in_split"]),
               " ".join(map(str, r["seeds"])) if r["seeds"] else ""]
        row += [blank(r["metrics"][m]) for m in report.metrics]
        if with_std:
            row += [blank((r["std"] or {}).get(m)) for m in report.metrics]
        row += [blank(r["train_seconds"]), *([blank(r["train_seconds_std"])] if with_std else [])]
        row.append(protocol_line(by_id[r["protocol"]]))
        writer.writerow(row)
    return buf.getvalue()


def to_json(report: Report) -> str:
    doc = {
        "title": report.title,
        "protocols": [{"id": report.protocol_id(i), "runs": report.runs_of(i), "text": protocol_line(p), "protocol": p}
                      for i, p in enumerate(report.protocols)],
        "metrics": report.metrics,
        "rows": records(report),
        "notes": notes(report),
    }
    return json.dumps(doc, indent=2) + "\n"


FORMATS = {"md": to_markdown, "csv": to_csv, "json": to_json}
SUFFIXES = {".md": "md", ".markdown": "md", ".csv": "csv", ".json": "json"}


def output_format(fmt: str | None, output: Path | None) -> str:
    """``table`` (the terminal), ``md``, ``csv`` or ``json``: as given, else from ``output``'s suffix."""
    if fmt is not None:
        fmt = fmt.lower()
        if fmt not in ("table", *FORMATS):
            raise ReportError(f"--format {fmt!r}: choose table, md, csv or json")
        if fmt == "table" and output is not None:
            raise ReportError("the table is for the terminal: with -o FILE choose --format md, csv or json")
        return fmt
    if output is None:
        return "table"
    if Path(output).suffix.lower() in SUFFIXES:
        return SUFFIXES[Path(output).suffix.lower()]
    raise ReportError(f"-o {output}: say which format with --format md, csv or json (or name the file .md, .csv or .json)")


def render(report: Report, fmt: str) -> str:
    if fmt not in FORMATS:
        raise ReportError(f"unknown format {fmt!r}: choose md, csv or json")
    return FORMATS[fmt](report)
