"""Reports of a bench run: leaderboard (markdown), transfer matrix (CSV) and its heatmap (PNG).

The transfer matrix has one row per fine-tuning source (a plan: "zero-shot", "movielens-1m",
"movies > amazon-beauty" for two stages, ...) and one column per target; a value is the target's
test AUC and its gain over the same model's zero-shot AUC on that target.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

METRICS = ("auc", "gauc", "ndcg@5", "mrr")


def read_cells(output: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(Path(output).glob("cells/*/*/*.json"))]


def _fmt(x) -> str:
    return "-" if x is None else f"{x:.4f}"


def leaderboard(cells: list[dict]) -> str:
    lines = ["| target | model | paradigm | setting | fine-tuned on | AUC | GAUC | NDCG@5 | MRR | pairs |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for c in sorted(cells, key=lambda c: (c["target"], -(c["metrics"].get("auc") or 0))):
        m = c["metrics"]
        lines.append(f"| {c['target']} | {c['model']} | {c['paradigm']} | {c['setting']} | {c['plan']} | "
                     + " | ".join(_fmt(m.get(k)) for k in METRICS) + f" | {c['pairs']} |")
    return "\n".join(lines)


def transfer_rows(cells: list[dict]) -> list[dict]:
    zero = {(c["model"], c["target"]): c["metrics"]["auc"] for c in cells if c["plan"] == "zero-shot"}
    rows = []
    for c in cells:
        auc = c["metrics"]["auc"]
        base = zero.get((c["model"], c["target"]))
        rows.append({"model": c["model"], "source": c["plan"], "setting": c["setting"], "target": c["target"],
                     "auc": auc, "zero_shot_auc": base,
                     "gain_over_zero_shot": None if base is None or auc is None else auc - base})
    return sorted(rows, key=lambda r: (r["model"], r["source"], r["target"]))


def write_transfer_csv(rows: list[dict], path: Path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["model", "source", "target", "auc"])
        w.writeheader()
        w.writerows(rows)


def write_heatmap(rows: list[dict], path: Path) -> None:
    """One panel per model: sources x targets, colour = AUC gain over zero-shot, text = AUC."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    models = sorted({r["model"] for r in rows})
    fig, axes = plt.subplots(1, max(len(models), 1), figsize=(5.5 * max(len(models), 1), 4.5), squeeze=False)
    for ax, model in zip(axes[0], models):
        mine = [r for r in rows if r["model"] == model]
        sources = sorted({r["source"] for r in mine}, key=lambda s: (s != "zero-shot", s))
        targets = sorted({r["target"] for r in mine})
        gain = np.full((len(sources), len(targets)), np.nan)
        auc = np.full_like(gain, np.nan)
        for r in mine:
            i, j = sources.index(r["source"]), targets.index(r["target"])
            gain[i, j] = np.nan if r["gain_over_zero_shot"] is None else r["gain_over_zero_shot"]
            auc[i, j] = np.nan if r["auc"] is None else r["auc"]
        lim = max(0.05, float(np.nanmax(np.abs(gain))) if np.isfinite(gain).any() else 0.05)
        im = ax.imshow(gain, cmap="RdBu", vmin=-lim, vmax=lim)
        ax.set_xticks(range(len(targets)), targets, rotation=30, ha="right")
        ax.set_yticks(range(len(sources)), sources)
        ax.set_xlabel("target (test)")
        ax.set_ylabel("fine-tuned on")
        ax.set_title(f"{model}: AUC (colour: gain over zero-shot)")
        for i in range(len(sources)):
            for j in range(len(targets)):
                if np.isfinite(auc[i, j]):
                    ax.text(j, i, f"{auc[i, j]:.3f}", ha="center", va="center", fontsize=9)
        fig.colorbar(im, ax=ax, shrink=0.8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_reports(output: Path, title: str = "recfm bench") -> dict[str, Path]:
    output = Path(output)
    cells = read_cells(output)
    if not cells:
        raise FileNotFoundError(f"{output} holds no finished cells (cells/*/*/*.json)")
    rows = transfer_rows(cells)
    paths = {"leaderboard": output / "leaderboard.md", "transfer_csv": output / "transfer.csv",
             "heatmap": output / "transfer.png"}
    paths["leaderboard"].write_text(f"# {title}\n\nTest pairs, per-user candidate lists; AUC over all pairs, GAUC "
                                    f"and MRR over users.\n\n{leaderboard(cells)}\n")
    write_transfer_csv(rows, paths["transfer_csv"])
    write_heatmap(rows, paths["heatmap"])
    return paths
