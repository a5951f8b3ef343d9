"""Training curves: ``history.jsonl``, ``curves.png`` and, on request, TensorBoard event files.

Every trainer (SASRec / GRU4Rec, textid, multitask) records its progress through one
:class:`TrainingHistory` made for its run directory:

    with TrainingHistory(run_dir, config.report_to, x="epoch", metrics=("ndcg@10",)) as curves:
        curves.start(keep=lines_in_checkpoint, elapsed=seconds_trained)   # 0, 0.0 for a new run
        curves.log(epoch=1, loss=5.2, lr=1e-3, valid={"ndcg@10": 0.03})    # one line of history.jsonl
    # leaving the block writes curves.png (loss and validation curves) and closes TensorBoard

``history.jsonl`` gets one JSON object per line, appended and closed at once, so a killed process
leaves every line it logged; ``seconds`` (since training started, resumed runs included) is added
to each. A resumed run keeps the first ``keep`` lines (those its checkpoint had logged) and drops
any written after it, so no epoch or step appears twice. With ``report_to`` naming
``tensorboard`` the same scalars go to ``RUN/tensorboard`` (``torch.utils.tensorboard``); on
resume that folder is rewritten from the kept lines. Only the main process writes; with
``run_dir=None`` nothing is written (``log`` still returns the row).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any, Sequence

from pydantic import AfterValidator

from recfm import distributed

HISTORY_FILE = "history.jsonl"
CURVES_FILE = "curves.png"
TENSORBOARD_DIR = "tensorboard"
INTEGRATIONS = ("tensorboard",)  # what report_to may name besides "none" and "all"

log = logging.getLogger("recfm.curves")


def report_targets(value: str | Sequence[str] | None) -> list[str]:
    """The integrations ``report_to`` asks for: "none", "all", "tensorboard" or a list of them."""
    names = [value] if isinstance(value, str) or value is None else list(value)
    out: set[str] = set()
    for name in names:
        key = (name or "none").strip().lower()
        if key == "none":
            continue
        if key == "all":
            out.update(INTEGRATIONS)
        elif key in INTEGRATIONS:
            out.add(key)
        else:
            raise ValueError(f"report_to: unknown integration {name!r}; choose none, all or {', '.join(INTEGRATIONS)}")
    return sorted(out)


def require_integrations(report_to: str | Sequence[str] | None) -> None:
    """Fail at once (one-line ConfigError) when ``report_to`` names an integration that is not installed;
    the run commands call it before they write anything."""
    if "tensorboard" in report_targets(report_to):
        _summary_writer()


def _check_report_to(value):
    report_targets(value)
    return value


# The type of every trainer config's ``report_to`` field (kept as written, checked on validation).
ReportTo = Annotated[list[str] | str, AfterValidator(_check_report_to)]
REPORT_TO_HELP = ("also send the training scalars to: 'none' or 'tensorboard' (RUN/tensorboard, needs "
                  "pip install 'recfm[tensorboard]'); history.jsonl and curves.png are always written")


def _summary_writer():
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        from recfm.errors import ConfigError  # a one-line error on the command line, not a traceback

        raise ConfigError("report_to: tensorboard needs the tensorboard package, which is not installed: "
                          "pip install 'recfm[tensorboard]' (or set report_to: none)") from None
    return SummaryWriter


def _plain(v: Any):
    """numpy / torch scalars as Python numbers in the JSON lines."""
    if hasattr(v, "item"):
        return v.item()
    raise TypeError(f"{type(v).__name__} is not JSON serializable")


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


class TrainingHistory:
    """One run's training curves (see the module docstring).

    ``x``: the key that orders the lines (``epoch``, ``step``), or None to plot them in logging order
    (textid: recommender and generator epochs of several rounds). ``metrics``: the validation keys
    plotted (None: all of them); ``best``: the one whose maximum is marked (the selection metric).
    ``group``: a key whose changes are marked on the plot (``round``)."""

    def __init__(self, run_dir: Path | str | None, report_to: str | Sequence[str] | None = "none", *,
                 x: str | None = "epoch", metrics: Sequence[str] | None = None, best: str | None = None,
                 group: str | None = None, x_label: str | None = None, valid_label: str = "validation",
                 title: str = ""):
        self.targets = report_targets(report_to)
        self.enabled = run_dir is not None and distributed.is_main()
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.x, self.group = x, group
        self.metrics = list(dict.fromkeys(metrics)) if metrics is not None else None
        self.best = best
        self.x_label = x_label or x or "training epoch, in order"
        self.valid_label, self.title = valid_label, title
        self.rows: list[dict] = []
        self._t0 = time.perf_counter()
        self._started = False
        self._writer = None
        # checked in every process, so that all of them stop at once when tensorboard is missing
        needs_writer = run_dir is not None and "tensorboard" in self.targets
        self._writer_class = _summary_writer() if needs_writer else None

    @property
    def path(self) -> Path | None:
        return self.run_dir / HISTORY_FILE if self.run_dir is not None else None

    # -- recording ------------------------------------------------------------------------------
    def start(self, keep: int = 0, elapsed: float = 0.0) -> "TrainingHistory":
        """Begin a new history (``keep=0``) or continue a resumed one: the first ``keep`` lines of
        ``history.jsonl`` stay, later ones go; ``seconds`` counts on from ``elapsed``."""
        self._t0 = time.perf_counter() - elapsed
        self._started = True
        if not self.enabled:
            return self
        self.rows = read_history(self.path)[:keep] if keep else []
        self.run_dir.mkdir(parents=True, exist_ok=True)
        _atomic_write(self.path, "".join(json.dumps(r) + "\n" for r in self.rows).encode())
        if self._writer_class is not None:  # rewritten from the kept lines: TensorBoard shows no step twice
            shutil.rmtree(self.run_dir / TENSORBOARD_DIR, ignore_errors=True)
            self._writer = self._writer_class(log_dir=str(self.run_dir / TENSORBOARD_DIR))
            for i, row in enumerate(self.rows, 1):
                self._emit(row, i)
        return self

    def log(self, **scalars: Any) -> dict:
        """Append one line (``seconds`` since the start is added unless given); returns it."""
        if not self._started:
            self.start()
        row = dict(scalars)
        row.setdefault("seconds", round(time.perf_counter() - self._t0, 2))
        if not self.enabled:
            return row
        line = json.dumps(row, default=_plain)
        with open(self.path, "a") as fh:  # closed at once: a killed process keeps every line it logged
            fh.write(line + "\n")
        self.rows.append(json.loads(line))
        if self._writer is not None:
            self._emit(self.rows[-1], len(self.rows))
            self._writer.flush()
        return row

    def _emit(self, row: dict, index: int) -> None:
        step = row[self.x] if self.x and _number(row.get(self.x)) else index
        for tag, value in _scalars(row, skip={self.x, self.group, "seconds"}):
            self._writer.add_scalar(tag, value, global_step=int(step))

    def close(self) -> Path | None:
        """Close TensorBoard and write ``curves.png``; returns its path (None if nothing was logged)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if not self.enabled or not self.rows:
            return None
        target = self.run_dir / CURVES_FILE
        try:
            plot_curves(self.rows, target, x=self.x, metrics=self.metrics, best=self.best, group=self.group,
                        x_label=self.x_label, valid_label=self.valid_label, title=self.title)
        except Exception as e:  # a finished training run is never lost to a plot
            log.warning("could not write %s: %s: %s", target, type(e).__name__, e)
            return None
        return target

    def __enter__(self) -> "TrainingHistory":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _scalars(row: dict, skip: set, prefix: str = "train") -> list[tuple[str, float]]:
    """(tag, value) of every finite number in ``row``; nested dicts name their own section (``valid/ndcg@10``)."""
    out = []
    for key, value in row.items():
        if key in skip:
            continue
        if isinstance(value, dict):
            out += _scalars(value, set(), prefix=key if prefix == "train" else f"{prefix}/{key}")
        elif _number(value):
            out.append((f"{prefix}/{key}", float(value)))
    return out


def read_history(path: Path | str) -> list[dict]:
    """The lines of a ``history.jsonl`` (an unfinished last line, from a kill mid-write, is dropped)."""
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            break
        if isinstance(row, dict):
            rows.append(row)
    return rows


def _file_mode() -> int:
    """What ``open`` would give a new file (mkstemp makes 0600 files)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, _file_mode())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


# -- the picture ----------------------------------------------------------------------------------
def plot_curves(rows: list[dict], path: Path, *, x: str | None = "epoch", metrics: Sequence[str] | None = None,
                best: str | None = None, group: str | None = None, x_label: str = "epoch",
                valid_label: str = "validation", title: str = "") -> None:
    """Training losses (every top-level ``*loss`` key) and validation values (``valid`` of each line,
    ``metrics`` only if given; the maximum of ``best`` marked) against ``x`` (or the line number),
    one panel each; PNG through matplotlib's Agg canvas (no pyplot, no global backend change)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    xs = [row[x] if x and _number(row.get(x)) else i for i, row in enumerate(rows, 1)]
    loss_keys = list(dict.fromkeys(k for r in rows for k, v in r.items() if k.endswith("loss") and _number(v)))
    valid_keys = list(dict.fromkeys(k for r in rows for k, v in (r.get("valid") or {}).items() if _number(v)))
    if metrics is not None:
        valid_keys = [k for k in metrics if k in valid_keys]
    panels = [p for p in (("loss", loss_keys), ("valid", valid_keys)) if p[1]]
    fig = Figure(figsize=(6.0 * max(len(panels), 1), 4.0))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, max(len(panels), 1), squeeze=False)[0]
    for ax, (kind, keys) in zip(axes, panels):
        for key in keys:
            if kind == "loss":
                pts = [(xv, r[key]) for xv, r in zip(xs, rows) if _number(r.get(key))]
            else:
                pts = [(xv, r["valid"][key]) for xv, r in zip(xs, rows) if _number((r.get("valid") or {}).get(key))]
            many = len(pts) > 60
            line, = ax.plot([p[0] for p in pts], [p[1] for p in pts], label=key, linewidth=1.0 if many else 1.5,
                            marker=None if many else "o", markersize=3)
            if kind == "valid" and key == best and pts:
                bx, by = max(pts, key=lambda p: p[1])  # the first maximum: the one selection keeps
                ax.plot([bx], [by], marker="*", markersize=12, color=line.get_color(), linestyle="none",
                        label=f"best {key} {by:.4f} @ {bx}")
        ax.set_xlabel(x_label)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("training loss" if kind == "loss" else valid_label)
        ax.set_title("training loss" if kind == "loss" else
                     valid_label + (f" (selection: {best})" if best in keys else ""))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        if group:
            for xv, prev, row in zip(xs[1:], rows, rows[1:]):
                if group in row and prev.get(group) != row[group]:
                    ax.axvline(xv - 0.5, color="grey", linestyle=":", linewidth=1)
                    ax.text(xv - 0.5, 1.0, f" {group} {row[group]}", transform=ax.get_xaxis_transform(),
                            fontsize=7, va="top", color="grey")
    if not panels:
        axes[0].text(0.5, 0.5, "no losses or validation values logged", ha="center", va="center")
        axes[0].set_axis_off()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, format="png", dpi=110)
        os.chmod(tmp, _file_mode())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
