"""Training curves (recfm.curves): history.jsonl, curves.png and TensorBoard events from every trainer,
and a resumed run that logs no epoch or step twice."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import random_sequences, train_tiny_sasrec

from recfm.checkpoint import CRASH_ENV, LATEST
from recfm.config import ConfigError
from recfm.curves import CURVES_FILE, HISTORY_FILE, TENSORBOARD_DIR, TrainingHistory, read_history, report_targets

sys.path.insert(0, str(Path(__file__).parent / "multitask"))  # the multi-task fixtures live there

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_png(path: Path) -> None:
    from PIL import Image

    assert path.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(path) as img:
        img.verify()
    with Image.open(path) as img:
        assert img.format == "PNG" and img.size[0] > 300 and img.size[1] > 200


def tensorboard_scalars(run_dir: Path) -> dict[str, list[int]]:
    """{tag: [steps]} of every scalar in RUN/tensorboard's event files."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = list((run_dir / TENSORBOARD_DIR).glob("events.out.tfevents.*"))
    assert files, f"no event file in {run_dir / TENSORBOARD_DIR}"
    acc = EventAccumulator(str(run_dir / TENSORBOARD_DIR))
    acc.Reload()
    return {tag: [e.step for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


pytestmark = pytest.mark.usefixtures("one_thread")


# -- the recorder ---------------------------------------------------------------------------------
def test_lines_seconds_resume_truncation_and_the_picture(tmp_path):
    with TrainingHistory(tmp_path, x="epoch", metrics=("ndcg@10",)) as h:
        h.start()
        for epoch in (1, 2, 3):
            row = h.log(epoch=epoch, loss=3.0 - epoch / 2, lr=0.01, valid={"ndcg@10": 0.1 * epoch, "mrr": 0.05})
            assert row["seconds"] >= 0
    rows = read_history(tmp_path / HISTORY_FILE)
    assert [r["epoch"] for r in rows] == [1, 2, 3] and all({"loss", "lr", "seconds", "valid"} <= r.keys() for r in rows)
    assert_png(tmp_path / CURVES_FILE)

    # a resumed run whose checkpoint had logged 2 lines: the 3rd and a line torn by a kill go
    with open(tmp_path / HISTORY_FILE, "a") as fh:
        fh.write('{"epoch": 4, "lo')
    with TrainingHistory(tmp_path) as h:
        h.start(keep=2, elapsed=100.0)
        assert h.log(epoch=3, loss=0.1)["seconds"] >= 100.0
    assert [r["epoch"] for r in read_history(tmp_path / HISTORY_FILE)] == [1, 2, 3]
    assert read_history(tmp_path / HISTORY_FILE)[-1]["loss"] == 0.1

    with TrainingHistory(tmp_path / "np") as h:  # numpy and torch scalars are written as numbers
        h.log(epoch=np.int64(1), loss=np.float32(0.5), lr=torch.tensor(0.01))
    assert read_history(tmp_path / "np" / HISTORY_FILE)[0]["loss"] == 0.5

    nowhere = TrainingHistory(None)  # no run directory: rows come back, nothing is written
    assert nowhere.log(epoch=1, loss=1.0)["loss"] == 1.0 and nowhere.close() is None


def test_report_to_is_checked_and_a_missing_tensorboard_is_one_clear_error(tmp_path, monkeypatch):
    from recfm.baselines.sasrec import SASRecConfig
    from recfm.multitask.trainer import MultiTaskConfig
    from recfm.textid.config import TextIDConfig

    assert report_targets("none") == [] and report_targets(["tensorboard"]) == ["tensorboard"]
    assert report_targets("all") == ["tensorboard"] and report_targets(["none", "TensorBoard"]) == ["tensorboard"]
    for cls in (SASRecConfig, TextIDConfig, MultiTaskConfig):
        assert cls().report_to == "none" and cls(report_to=["tensorboard"]).report_to == ["tensorboard"]
        with pytest.raises(ValueError, match="unknown integration 'wandb'"):
            cls(report_to="wandb")
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if tensorboard were not installed
    with pytest.raises(ConfigError, match=r"pip install 'recfm\[tensorboard\]'") as err:
        TrainingHistory(tmp_path, "tensorboard")
    assert "\n" not in str(err.value)
    TrainingHistory(tmp_path, "none").close()  # only asking for it needs it

    from typer.testing import CliRunner

    from recfm.cli import app

    monkeypatch.setenv("RECFM_CACHE_DIR", str(tmp_path / "cache"))
    folder = random_sequences(tmp_path / "tiny-shop", n_users=20, n_items=10, length=6)
    result = CliRunner().invoke(app, ["--quiet", "train", "sasrec", "-d", str(folder), "-o", str(tmp_path / "run"),
                                      "prep.user_core=2", "prep.item_core=0", "report_to=tensorboard"])
    assert result.exit_code == 2 and "recfm[tensorboard]" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "run").exists()  # refused before anything was written


# -- SASRec / GRU4Rec ------------------------------------------------------------------------------
def test_sasrec_writes_a_line_per_epoch_the_png_and_tensorboard_events(tmp_path):
    from tests.baselines.test_models import successor_split

    from recfm.baselines.sasrec import SASRec, SASRecConfig

    cfg = SASRecConfig(epochs=3, batch_size=32, hidden_size=16, num_layers=1, max_len=12, eval_every=2, patience=5,
                       num_threads=1, show_progress=False, report_to="tensorboard")
    history = SASRec(cfg, 60).fit(successor_split(), log=lambda s: None, run_dir=tmp_path)
    rows = read_history(tmp_path / HISTORY_FILE)
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert [r["loss"] for r in rows] == [h["loss"] for h in history["history"]]  # metrics.json "training" is kept
    for r in rows:
        assert {"epoch", "loss", "train_seconds", "lr", "seconds"} <= r.keys() and r["lr"] == 1e-3
    assert "valid" not in rows[0] and {"ndcg@10", "hr@10", "mrr"} <= rows[1]["valid"].keys()  # eval_every=2, last
    assert rows[0]["seconds"] <= rows[1]["seconds"] <= rows[2]["seconds"]
    assert_png(tmp_path / CURVES_FILE)
    scalars = tensorboard_scalars(tmp_path)
    assert scalars["train/loss"] == [1, 2, 3] and scalars["valid/ndcg@10"] == [2, 3]


def _train(folder: Path, out: Path, *extra: str, crash_after: int | None = None) -> subprocess.CompletedProcess:
    return train_tiny_sasrec(folder, out, *extra, crash_after=crash_after)


@pytest.mark.slow
def test_a_killed_and_resumed_run_logs_every_epoch_once(tmp_path):
    """`recfm train` SIGKILLed mid-epoch 2, then --resume: history.jsonl and TensorBoard hold epochs
    1, 2, 3 once each, with the losses of an uninterrupted run."""
    folder = random_sequences(tmp_path / "tiny-shop", n_users=40, n_items=15, length=8)
    clean = _train(folder, tmp_path / "clean")
    assert clean.returncode == 0, clean.stderr
    assert_png(tmp_path / "clean" / CURVES_FILE)

    run = tmp_path / "killed"
    killed = _train(folder, run, "report_to=tensorboard", crash_after=5)  # checkpoint at epoch 2, step 3
    assert killed.returncode == -9, killed.stderr
    assert json.loads((run / "checkpoints" / LATEST).read_text())["name"] == "epoch-0002-step-000003"
    assert [r["epoch"] for r in read_history(run / HISTORY_FILE)] == [1]
    assert not (run / CURVES_FILE).exists()
    with open(run / HISTORY_FILE, "a") as fh:  # what a kill after logging epoch 2, before its checkpoint, leaves
        fh.write(json.dumps({"epoch": 2, "loss": 99.0}) + '\n{"epoch": 3, "lo')

    again = _train(folder, run, "report_to=tensorboard", "--resume")
    assert again.returncode == 0, again.stderr
    a, b = read_history(tmp_path / "clean" / HISTORY_FILE), read_history(run / HISTORY_FILE)
    assert [r["epoch"] for r in b] == [1, 2, 3]
    assert [r["loss"] for r in a] == [r["loss"] for r in b]
    assert b[0]["seconds"] <= b[1]["seconds"] <= b[2]["seconds"]
    metrics = json.loads((run / "metrics.json").read_text())
    assert [h["loss"] for h in metrics["training"]["history"]] == [r["loss"] for r in b]
    assert_png(run / CURVES_FILE)
    scalars = tensorboard_scalars(run)
    assert scalars["train/loss"] == [1, 2, 3] and scalars["valid/ndcg@10"] == [1, 2, 3]


def test_pop_writes_no_history(tmp_path, monkeypatch):
    from recfm.runs import train_run

    monkeypatch.setenv("RECFM_CACHE_DIR", str(tmp_path / "cache"))
    folder = random_sequences(tmp_path / "tiny-shop", n_users=20, n_items=10, length=6)
    train_run("pop", str(folder), tmp_path / "pop", overrides=["prep.user_core=2", "prep.item_core=0"])
    assert (tmp_path / "pop" / "metrics.json").is_file()
    assert not (tmp_path / "pop" / HISTORY_FILE).exists() and not (tmp_path / "pop" / CURVES_FILE).exists()


# -- textid ------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_textid_logs_warm_start_recommender_and_generator_epochs_in_order(tmp_path, monkeypatch):
    from tests.textid.test_training import tiny_model, write_shop

    from recfm.data.registry import load_dataset

    monkeypatch.setenv("RECFM_CACHE_DIR", str(tmp_path / "cache"))
    data = load_dataset(write_shop(tmp_path / "tiny-shop"), use_cache=False)
    model = tiny_model(data, strategy="alternate", rounds=2, rec_epochs=2, gen_epochs=1, prompt_ids="item",
                       report_to="tensorboard")
    history = model.fit(data.split(), log=lambda s: None, run_dir=tmp_path / "run")
    rows = read_history(tmp_path / "run" / HISTORY_FILE)
    kinds = [("warm" if "warm_start_loss" in r else "gen" if "gen_loss" in r else "rec") for r in rows]
    assert kinds == ["warm", "gen", "rec", "rec", "gen", "rec", "rec"]  # the paper's order: generator first
    rec = [r for r in rows if "loss" in r]
    assert [(r["round"], r["epoch"]) for r in rec] == [(1, 1), (1, 2), (2, 1), (2, 2)]
    assert [r["loss"] for r in rec] == [h["loss"] for h in history["history"]]
    assert all("ndcg@10" in r["valid"] and r["lr"] == model.config.rec_lr for r in rec)
    assert [r["seconds"] for r in rows] == sorted(r["seconds"] for r in rows)
    assert_png(tmp_path / "run" / CURVES_FILE)
    scalars = tensorboard_scalars(tmp_path / "run")
    assert scalars["train/loss"] == [3, 4, 6, 7] and scalars["train/gen_loss"] == [2, 5]


# -- multitask ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mt_records():
    from movielens_fixture import fake_movielens
    from test_multitask_model import TASKS

    from recfm.multitask.movielens_tasks import MovieLensTasks, TaskConfig

    ml1m, ml100k = fake_movielens()
    return MovieLensTasks(ml1m, ml100k, TaskConfig(history_len=3, n_options=4, max_records=12)).build(TASKS)


def test_multitask_logs_steps_and_validation_and_resumes_without_duplicates(mt_records, tmp_path):
    """Train 6 steps with checkpoints at 2 and 4; resume from the one at step 4: the lines of steps 5
    and 6 (and the validation after step 4) are dropped and logged again, each once, as before."""
    from test_multitask_model import tiny_model

    from recfm.multitask.s2sched import S2SchedConfig
    from recfm.multitask.trainer import MultiTaskConfig, train_multitask

    cfg = MultiTaskConfig(steps=6, gen_batch=4, emb_batch=4, lr=5e-3, checkpoints=2, checkpoint_every=2,
                          num_threads=1, report_to="tensorboard",
                          s2sched=S2SchedConfig(warmup_ratio=0.25, window=4, valid_samples=2, eval_every=2))
    run = tmp_path / "run"
    history = train_multitask(mt_records, cfg, tiny_model(mt_records), run, say=lambda m: None)
    first = read_history(run / HISTORY_FILE)
    steps = [r for r in first if "loss" in r]
    valid = [r for r in first if "valid" in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4, 5, 6] and [r["step"] for r in valid] == [0, 2, 4]
    assert [r["loss"] for r in steps] == pytest.approx(history["loss"], abs=1e-6)
    assert all({"gen_loss", "emb_loss", "lr", "seconds"} <= r.keys() for r in steps)
    assert set(valid[0]["valid"]) == set(history["valid"][0]) - {"step"}
    assert_png(run / CURVES_FILE)
    assert (run / "checkpoints" / "step-000004").is_dir()  # the newest checkpoint (run.py removes the folder)

    again = train_multitask(mt_records, cfg, tiny_model(mt_records), run, say=lambda m: None, resume=True)
    assert again["loss"] == history["loss"]
    second = read_history(run / HISTORY_FILE)
    key = lambda r: ("loss" in r, r["step"])  # noqa: E731
    assert [key(r) for r in second] == [key(r) for r in first]  # same lines, same order, none twice
    assert [r.get("loss") for r in second] == pytest.approx([r.get("loss") for r in first], abs=1e-6)
    scalars = tensorboard_scalars(run)
    assert scalars["train/loss"] == [1, 2, 3, 4, 5, 6]
    assert all(steps == [0, 2, 4] for tag, steps in scalars.items() if tag.startswith("valid/"))


def test_only_the_main_process_writes(tmp_path, monkeypatch):
    from recfm import distributed

    monkeypatch.setattr(distributed, "rank", lambda: 1)
    h = TrainingHistory(tmp_path, "none")
    h.start()
    assert h.log(epoch=1, loss=1.0)["loss"] == 1.0
    h.close()
    assert not any(tmp_path.iterdir())
