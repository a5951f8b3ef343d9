"""Run directories: the marker that says recfm made a folder, what ``--overwrite`` may delete,
and the data a run was trained on.

``--overwrite`` never deletes a folder recfm did not make: a run directory carries a marker file
(``.recfm-run``) from the moment it is created, and replacing a run removes only the files and
folders a run writes (:data:`RUN_ARTIFACTS` and the model's own), whatever else the user keeps
there. ``data.json`` pins the prepared data (its fingerprint: a hash of the source files, format
and preprocessing), so a run is never scored silently on data that changed under it.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import shutil
from pathlib import Path
from typing import Callable, Iterable

from recfm.atomic import atomic_write_json
from recfm.errors import RecfmError

MARKER = ".recfm-run"
DATA_FILE = "data.json"
# Files and folders any run may write into its directory (the model's weights are added per model).
RUN_ARTIFACTS = (MARKER, DATA_FILE, "config.yaml", "metrics.json", "train.log", "history.jsonl", "curves.png",
                 "tensorboard", "checkpoints")


class RunDirError(RecfmError, RuntimeError):
    pass


def is_run_dir(path: Path) -> bool:
    return (Path(path) / MARKER).is_file()


def check_output(output: Path, *, overwrite: bool, resume: bool) -> None:
    """Refuse an ``--output`` that would lose or mix files, before anything is written."""
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise RunDirError(f"--output {output} is a file, not a folder: choose a folder for the run")
    if resume or not output.exists() or not any(output.iterdir()):
        return
    if not overwrite:
        raise RunDirError(f"{output} already holds a run; pass --overwrite, --resume (an interrupted run) "
                          "or choose another --output")
    if not is_run_dir(output):
        raise RunDirError(f"{output} was not made by recfm (it has no {MARKER} marker): --overwrite only replaces "
                          "recfm run directories; choose another --output")


def clear_run(output: Path, model_artifacts: Iterable[str]) -> list[str]:
    """Delete what a run wrote in ``output`` (a marked run directory); return the names left alone."""
    output = Path(output)
    if not is_run_dir(output):
        raise RunDirError(f"{output} is not a recfm run directory: nothing deleted")
    known = {*RUN_ARTIFACTS, *model_artifacts}
    kept = []
    for entry in sorted(output.iterdir()):
        if entry.name not in known:
            kept.append(entry.name)
        elif entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    return kept


def mark(output: Path, version: str) -> None:
    atomic_write_json(Path(output) / MARKER, {"recfm": version,
                                              "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")})


def pin_data(output: Path, dataset: str, data) -> None:
    """``data.json``: which prepared data the run was trained on."""
    atomic_write_json(Path(output) / DATA_FILE, {
        "dataset": dataset, "name": data.name, "fingerprint": data.fingerprint,
        "users": data.n_users, "items": data.n_items, "interactions": data.n_interactions})


def check_data(run_dir: Path, data, allow_change: bool = False) -> dict | None:
    """Refuse to use ``data`` for a run trained on other data (unless ``allow_change``); returns
    the pinned record, or None for a run written before runs pinned their data."""
    path = Path(run_dir) / DATA_FILE
    if not path.is_file():
        return None
    try:
        pinned = json.loads(path.read_text(encoding="utf-8"))
        saved = str(pinned["fingerprint"])
    except (ValueError, KeyError, TypeError):
        raise RunDirError(f"{path} is damaged (not the JSON a run writes): train the run again") from None
    if saved and data.fingerprint and saved != data.fingerprint and not allow_change:
        raise RunDirError(
            f"{run_dir} was trained on {pinned.get('dataset')} with data fingerprint {saved}, but that dataset "
            f"now has fingerprint {data.fingerprint} ({data.n_users} users, {data.n_items} items; trained on "
            f"{pinned.get('users')} / {pinned.get('items')}): its files or preprocessing changed. Train again, "
            "or pass --allow-data-change to use the new data anyway")
    return pinned


def check_resumable(output: Path, read_saved: Callable[[Path], dict], now: dict, free: dict[str, Iterable[str]],
                    how: str, error: type[Exception] = RunDirError) -> None:
    """Refuse ``--resume`` (raise ``error``) unless ``output`` holds an unfinished run whose saved
    config equals this one. ``read_saved``: reads the run's config.yaml into a dict; ``now``: this
    invocation's config as a dict; ``free``: per top-level section, the keys a resumed run may change
    (threads, time budgets: what does not change what is computed); ``how``: what to resume with,
    for the message."""
    output = Path(output)
    saved_file = output / "config.yaml"
    if not saved_file.is_file():
        raise error(f"nothing to resume in {output}: it holds no run (start it without --resume)")
    if (output / "metrics.json").is_file():
        raise error(f"{output} holds a finished run: nothing to resume")
    saved, now = read_saved(saved_file), copy.deepcopy(now)
    for cfg in (saved, now):
        for section, keys in free.items():
            for key in keys:
                (cfg.get(section) or {}).pop(key, None)
    if saved != now:
        changed = ", ".join(f"{key} ({before!r} in the run, {after!r} now)" for key, before, after in diff_keys(saved, now)[:5])
        raise error(f"the resolved config differs from {saved_file} in {changed}: resume with {how}")


def diff_keys(before: dict, after: dict, prefix: str = "") -> list[tuple[str, object, object]]:
    """(dotted key, old value, new value) for every leaf that differs between two nested dicts."""
    out = []
    for key in sorted(set(before) | set(after), key=str):
        a, b = before.get(key), after.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += diff_keys(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append((f"{prefix}{key}", a, b))
    return out
