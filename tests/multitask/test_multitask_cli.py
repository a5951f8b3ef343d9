"""`recfm multitask ablation` end to end on RecFound-format files and a tiny local backbone."""

from __future__ import annotations

import json

import torch
import yaml
from test_multitask_model import word_tokenizer
from transformers import LlamaConfig, LlamaForCausalLM
from typer.testing import CliRunner

from recfm.cli import app
from recfm.multitask.records import GenRecord, EmbRecord

GEN = [{"text": [f"Is movie {i} a comedy? Options: A: yes B: no", "A" if i % 2 else "B"], "task": "Attribute"}
       for i in range(12)]
EMB = [{"query": ["Retrieve the next movie", f"watched movie {i}"], "pos": [["", f"movie {i + 1}"]], "task": "Emb_user"}
       for i in range(12)]


def test_ablation_command_writes_the_table_and_both_plots(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for split, rows in (("train", slice(0, 8)), ("eval", slice(8, 10)), ("test", slice(10, 12))):
        (data / f"Generative_dataset_{split}.jsonl").write_text("\n".join(json.dumps(x) for x in GEN[rows]))
        (data / f"Embedding_dataset_{split}.jsonl").write_text("\n".join(json.dumps(x) for x in EMB[rows]))
    records = {"Attribute": {"train": [GenRecord("Attribute", "", g["text"][0], g["text"][1]) for g in GEN]},
               "Emb_user": {"train": [EmbRecord("Emb_user", e["query"][0], e["query"][1], e["pos"][0][1]) for e in EMB]}}
    tok = word_tokenizer(records)
    torch.manual_seed(0)
    lm = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
                                      pad_token_id=0, eos_token_id=1, bos_token_id=None))
    lm.save_pretrained(tmp_path / "lm")
    tok.save_pretrained(tmp_path / "lm")
    cfg = {"data": {"source": str(data)},
           "train": {"steps": 4, "gen_batch": 2, "emb_batch": 2, "checkpoints": 2, "eval_records": 2,
                     "s2sched": {"warmup_ratio": 0.25, "window": 4, "valid_samples": 2},
                     "model": {"backbone": str(tmp_path / "lm"),
                               "tmole": {"r": 2, "alpha": 4, "task_dim": 8, "router_hidden": 4}}}}
    (tmp_path / "mt.yaml").write_text(yaml.safe_dump(cfg))
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
    assert yaml.safe_load((out / "recfound" / "config.yaml").read_text())["train"]["lr"] == 0.01
    result = CliRunner().invoke(app, ["--quiet", "multitask", "evaluate", "--run", str(out / "recfound")])
    assert result.exit_code == 0 and "Emb_user" in result.output
    bad = CliRunner().invoke(app, ["--quiet", "multitask", "train", "-c", str(tmp_path / "mt.yaml"), "-o", str(out / "x"),
                                   "steps=3"])
    assert bad.exit_code != 0 and "train.KEY=VALUE" in bad.output
    typo = CliRunner().invoke(app, ["--quiet", "multitask", "train", "-c", str(tmp_path / "mt.yaml"), "-o", str(out / "y"),
                                    "train.stepz=3"])
    assert typo.exit_code != 0 and "stepz" in typo.output
