"""Checkpoints and --resume: a training process SIGKILLed mid-epoch, resumed, ends where an
uninterrupted run ends (same losses, same weights, same metrics)."""

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

from recfm.checkpoint import (CRASH_ENV, LATEST, Checkpoint, CheckpointError, load_latest, load_optimizer_state,
                              load_rng_state, optimizer_state, rng_state, save_checkpoint)


def test_optimizer_and_rng_state_round_trip_through_safetensors_and_json(tmp_path):
    net = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(net.parameters(), lr=0.01, betas=(0.8, 0.9))
    net(torch.ones(4, 3)).sum().backward()
    opt.step()
    gen = np.random.default_rng(5)
    gen.random(3)
    opt_tensors, opt_meta = optimizer_state(opt)
    rng_tensors, rng_meta = rng_state({"order": gen})
    save_checkpoint(tmp_path, "a", Checkpoint(tensors={"opt": opt_tensors, "rng": rng_tensors},
                                              state={"opt": opt_meta, "rng": rng_meta}))
    expected_draws, expected_torch = gen.random(3), torch.rand(2)
    found = load_latest(tmp_path)
    net2 = torch.nn.Linear(3, 2)
    opt2 = torch.optim.AdamW(net2.parameters(), lr=0.5)
    load_optimizer_state(opt2, found.tensors["opt"], json.loads(json.dumps(found.state["opt"])))
    gen2 = np.random.default_rng(0)
    load_rng_state(found.tensors["rng"], found.state["rng"], {"order": gen2})
    np.testing.assert_array_equal(gen2.random(3), expected_draws)
    assert torch.equal(torch.rand(2), expected_torch)
    assert opt2.param_groups[0]["lr"] == 0.01 and tuple(opt2.param_groups[0]["betas"]) == (0.8, 0.9)
    for p, p2 in zip(net.parameters(), net2.parameters()):
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(opt.state[p][key], opt2.state[p2][key])


def test_only_the_newest_complete_checkpoint_is_read(tmp_path):
    save_checkpoint(tmp_path, "step-1", Checkpoint(tensors={"w": {"x": torch.zeros(2)}}, state={"n": 1}))
    save_checkpoint(tmp_path, "step-2", Checkpoint(tensors={"w": {"x": torch.ones(2)}}, state={"n": 2}))
    (tmp_path / ".step-3.tmp").mkdir()  # what a kill during a write leaves: ignored
    assert not (tmp_path / "step-1").exists()  # keep=1
    found = load_latest(tmp_path)
    assert found.state == {"n": 2} and torch.equal(found.tensors["w"]["x"], torch.ones(2))
    (tmp_path / "step-2" / "tensors.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="unreadable"):
        load_latest(tmp_path)
    assert load_latest(tmp_path / "none") is None


def _folder(root: Path) -> Path:
    return random_sequences(root / "tiny-shop", n_users=40, n_items=15, length=8)


def _train(folder: Path, out: Path, *extra: str, crash_after: int | None = None) -> subprocess.CompletedProcess:
    return train_tiny_sasrec(folder, out, *extra, crash_after=crash_after)


@pytest.mark.slow
def test_a_run_killed_mid_epoch_resumes_to_the_same_result(tmp_path):
    folder = _folder(tmp_path)
    clean = _train(folder, tmp_path / "clean")
    assert clean.returncode == 0, clean.stderr
    assert not (tmp_path / "clean" / "checkpoints").exists()  # removed once the run finished

    # 10 steps an epoch: checkpoints after steps 3, 6, 9 and the end of epoch 1, then step 3 of epoch 2
    killed = _train(folder, tmp_path / "killed", crash_after=5)
    assert killed.returncode == -9, killed.stderr
    latest = json.loads((tmp_path / "killed" / "checkpoints" / LATEST).read_text())["name"]
    assert latest == "epoch-0002-step-000003"
    assert not (tmp_path / "killed" / "metrics.json").exists()

    again = _train(folder, tmp_path / "killed", "--resume")
    assert again.returncode == 0, again.stderr
    a = json.loads((tmp_path / "clean" / "metrics.json").read_text())
    b = json.loads((tmp_path / "killed" / "metrics.json").read_text())
    assert [h["loss"] for h in a["training"]["history"]] == [h["loss"] for h in b["training"]["history"]]
    for split in ("valid", "test"):
        for key in ("ndcg@10", "hr@10", "mrr"):
            assert a[split][key] == pytest.approx(b[split][key], abs=1e-6)
    assert "resumed from the checkpoint at epoch 2, step 3" in (tmp_path / "killed" / "train.log").read_text()
    # train_seconds of a resumed run is the whole training: the time before the kill counts too
    assert b["train_seconds"] == pytest.approx(b["training"]["seconds"], abs=0.05)
    assert b["training"]["seconds"] >= b["training"]["history"][0]["train_seconds"] > 0


@pytest.mark.slow
def test_resume_refuses_what_it_cannot_continue(tmp_path):
    folder = _folder(tmp_path)
    assert _train(folder, tmp_path / "run", crash_after=1).returncode == -9
    other = _train(folder, tmp_path / "run", "--resume", "lr=0.5")
    assert other.returncode == 2 and "config differs" in other.stderr
    fresh = _train(folder, tmp_path / "nothing", "--resume")
    assert fresh.returncode == 2 and "nothing to resume" in fresh.stderr
    free = _train(folder, tmp_path / "run", "--resume", "max_train_minutes=30")  # changes nothing computed
    assert free.returncode == 0, free.stderr
