"""`recfm multitask ablation` end to end on RecFound-format files and a tiny local backbone."""

from __future__ import annotations

import pytest

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
import yaml
from test_multitask_model import word_tokenizer
from helpers import tiny_llama
from typer.testing import CliRunner

from recfm.cli import app
from recfm.multitask.records import GenRecord, EmbRecord

GEN = [{"text": [f"Is movie {i} a comedy? Options: A: yes B: no", "A" if i % 2 else "B"], "task": "Attribute"}
       for i in range(12)]
EMB = [{"query": ["Retrieve the next movie", f"watched movie {i}"], "pos": [["", f"movie {i + 1}"]], "task": "Emb_user"}
       for i in range(12)]


def write_fixture(tmp_path, **train) -> Path:
    """RecFound-format files, a tiny Llama folder and a config using both; returns the config path."""
    data = tmp_path / "data"
    data.mkdir()
    for split, rows in (("train", slice(0, 8)), ("eval", slice(8, 10)), ("test", slice(10, 12))):
        (data / f"Generative_dataset_{split}.jsonl").write_text("\n".join(json.dumps(x) for x in GEN[rows]))
        (data / f"Embedding_dataset_{split}.jsonl").write_text("\n".join(json.dumps(x) for x in EMB[rows]))
    records = {"Attribute": {"train": [GenRecord("Attribute", "", g["text"][0], g["text"][1]) for g in GEN]},
               "Emb_user": {"train": [EmbRecord("Emb_user", e["query"][0], e["query"][1], e["pos"][0][1]) for e in EMB]}}
    tok = word_tokenizer(records)
    lm = tiny_llama(len(tok), hidden_size=16, pad_token_id=0, eos_token_id=1)
    lm.save_pretrained(tmp_path / "lm")
    tok.save_pretrained(tmp_path / "lm")
    cfg = {"data": {"source": str(data)},
           "train": {"steps": 4, "gen_batch": 2, "emb_batch": 2, "checkpoints": 2, "eval_records": 2,
                     "s2sched": {"warmup_ratio": 0.25, "window": 4, "valid_samples": 2},
                     "model": {"backbone": str(tmp_path / "lm"),
                               "tmole": {"r": 2, "alpha": 4, "task_dim": 8, "router_hidden": 4}}, **train}}
    (tmp_path / "mt.yaml").write_text(yaml.safe_dump(cfg))
    return tmp_path / "mt.yaml"


@pytest.mark.slow
def test_ablation_command_writes_the_table_and_both_plots(tmp_path):
    from safetensors.torch import load_file

    write_fixture(tmp_path)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["--quiet", "multitask", "ablation", "-c", str(tmp_path / "mt.yaml"), "-o", str(out),
                                      "train.lr=0.01"])
    assert result.exit_code == 0, result.output
    table = (out / "table.md").read_text()
    for row in ("backbone (zero-shot)", "recfound", "w/o merge", "w/o S2Sched", "w/o TMoLE"):
        assert f"| {row} |" in table
    for variant in ("recfound", "wo-merge", "wo-S2Sched", "wo-TMoLE"):
        assert (out / variant / "sample_ratios.png").stat().st_size > 1000
        assert (out / variant / "routing_similarity.png").stat().st_size > 1000
        assert (out / variant / "tmole.safetensors").is_file()
    assert json.loads((out / "recfound" / "history.json").read_text())["merged"]["checkpoints"] == [3, 4]
    # w/o merge is the full method's training before its merge, scored: the same as training it again
    assert json.loads((out / "wo-merge" / "metrics.json").read_text())["trained_by"] == "recfound"
    assert "merged" not in json.loads((out / "wo-merge" / "history.json").read_text())
    again = CliRunner().invoke(app, ["--quiet", "multitask", "train", "-c", str(tmp_path / "mt.yaml"), "-o",
                                     str(tmp_path / "unmerged"), "train.lr=0.01", "train.merge=false"])
    assert again.exit_code == 0, again.output
    wa, wb = (load_file(str(d / "tmole.safetensors")) for d in (out / "wo-merge", tmp_path / "unmerged"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    ma, mb = (json.loads((d / "metrics.json").read_text())["tasks"] for d in (out / "wo-merge", tmp_path / "unmerged"))
    assert ma == mb
    merged = load_file(str(out / "recfound" / "tmole.safetensors"))
    assert any(not torch.equal(merged[k], wa[k]) for k in wa)  # the merge did change the full method's weights
    assert yaml.safe_load((out / "recfound" / "config.yaml").read_text())["train"]["lr"] == 0.01
    result = CliRunner().invoke(app, ["--quiet", "multitask", "evaluate", "--run", str(out / "recfound")])
    assert result.exit_code == 0 and "Emb_user" in result.output
    bad = CliRunner().invoke(app, ["--quiet", "multitask", "train", "-c", str(tmp_path / "mt.yaml"), "-o", str(out / "x"),
                                   "steps=3"])
    assert bad.exit_code != 0 and "train.KEY=VALUE" in bad.output
    typo = CliRunner().invoke(app, ["--quiet", "multitask", "train", "-c", str(tmp_path / "mt.yaml"), "-o", str(out / "y"),
                                    "train.stepz=3"])
    assert typo.exit_code != 0 and "stepz" in typo.output


@pytest.mark.slow
def test_a_run_killed_mid_training_resumes_to_the_same_result(tmp_path):
    """SIGKILL a real `recfm multitask train` right after its first checkpoint (step 2 of 6), then
    `--resume`: the same per-step losses, S2Sched ratios, merged adapter and test scores as an
    uninterrupted run (TMoLE dropout is on, so the RNG state has to come back too)."""
    from safetensors.torch import load_file

    config = write_fixture(tmp_path, steps=6, checkpoint_every=2, lr=0.01, num_threads=1)

    def train(out, *extra, crash=None):
        env = {**os.environ, "OMP_NUM_THREADS": "1", **({"RECFM_CRASH_AFTER_CHECKPOINT": str(crash)} if crash else {})}
        return subprocess.run([sys.executable, "-m", "recfm.cli", "--quiet", "multitask", "train", "-c", str(config),
                               "-o", str(out), *extra], capture_output=True, text=True, env=env, timeout=300)

    whole = train(tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr[-2000:]
    assert not (tmp_path / "whole" / "checkpoints").exists()  # removed once the run finished
    killed = train(tmp_path / "killed", crash=1)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert (tmp_path / "killed" / "checkpoints" / "step-000002").is_dir()
    assert not (tmp_path / "killed" / "metrics.json").exists()
    changed = train(tmp_path / "killed", "--resume", "train.lr=0.02")
    assert changed.returncode == 2 and "differs" in changed.stderr
    resumed = train(tmp_path / "killed", "--resume", "train.max_minutes=30")  # a free setting may change
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a, b = (json.loads((tmp_path / d / "history.json").read_text()) for d in ("whole", "killed"))
    assert a["steps"] == b["steps"] == [1, 2, 3, 4, 5, 6]
    assert a["loss"] == b["loss"] and a["schedule"] == b["schedule"] and a["valid"] == b["valid"]
    assert a["merged"] == b["merged"]
    wa, wb = (load_file(str(tmp_path / d / "tmole.safetensors")) for d in ("whole", "killed"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    ma, mb = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("whole", "killed"))
    assert ma["tasks"] == mb["tasks"]
    done = train(tmp_path / "killed", "--resume")
    assert done.returncode == 2 and "finished run" in done.stderr
