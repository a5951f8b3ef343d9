"""formulation: items: beam search against the exact reference, exclusion, leakage, persistence, the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from recfm.cli import app
from recfm.data.registry import load_dataset
from recfm.textid.config import TextIDConfig
from recfm.textid.item_level import ItemLevelConfig, ItemLevelNet, ItemLevelRecommender, WordVocab
from tests.textid.test_training import assert_targets_never_reach_training, write_shop

runner = CliRunner()
CLI_OVERRIDES = ["formulation=items", "strategy=rec_only", "batch_size=8", "num_beams=5", "num_threads=1",
                 "max_history=8", "items.hidden_size=16", "items.num_layers=1", "items.decoder_size=16",
                 "initial_ids.kind=table", "initial_ids.path=dataset:item_initial_ids.txt"]
ITEMS = dict(formulation="items", strategy="rec_only", rec_epochs=3, batch_size=8, num_beams=5, num_threads=1,
             max_history=8, initial_ids={"kind": "table", "path": "dataset:item_initial_ids.txt"},
             items={"hidden_size": 16, "num_layers": 1, "num_heads": 2, "decoder_size": 16})


@pytest.fixture()
def shop(tmp_path, monkeypatch):
    monkeypatch.setenv("RECFM_CACHE_DIR", str(tmp_path / "cache"))
    return write_shop(tmp_path / "tiny-shop")


def random_recommender(seed: int = 0, tie_words: bool = False, copy_items: int = 0) -> ItemLevelRecommender:
    ids = [f"{w} {k}" for w in ("red", "blue", "green", "warm") for k in ("lamp", "chair", "soft chair", "lamp shade")]
    vocab = WordVocab.of_ids(ids)
    torch.manual_seed(seed)
    net = ItemLevelNet(ItemLevelConfig(hidden_size=16, num_layers=1, num_heads=2, decoder_size=16, tie_words=tie_words,
                                       copy_items=copy_items), len(vocab), 6)
    with torch.no_grad():  # spread the scores: an untrained net scores every ID almost alike
        for p in net.parameters():
            p.mul_(20)
        if copy_items:  # copying words of the last items changes the order
            net.copy_weight.copy_(torch.linspace(40.0, 10.0, copy_items))
    return ItemLevelRecommender(net.eval(), vocab, ids, max_len=6, num_beams=4)


@pytest.mark.parametrize("tie_words,copy_items", [(False, 0), (True, 0), (True, 2)])
def test_wide_beam_returns_the_exact_top_k_with_the_exact_scores(tie_words, copy_items):
    rec = random_recommender(tie_words=tie_words, copy_items=copy_items)
    histories = [[1, 2, 3], [5], [16, 4, 9, 9, 1, 2, 3, 7]]
    exact = rec.item_log_probs(histories)
    assert torch.allclose(exact[:, 1:].exp().sum(1), torch.ones(3), atol=1e-4)  # a distribution over items
    rec.num_beams = rec.n_items
    top = rec.recommend(histories, k=5)
    want = torch.topk(exact, 5, dim=1)
    assert np.array_equal(top.items, want.indices.numpy())
    np.testing.assert_allclose(top.scores, want.values.numpy(), atol=1e-4)
    if copy_items:  # a strong copy weight: every top item repeats a word of one of the last two items
        texts = rec.items.texts
        for history, row in zip(histories, top.items[:, :3]):
            recent = set(texts[history[-1]].split()) | set(texts[history[-2]].split() if len(history) > 1 else [])
            assert all(recent & set(texts[i].split()) for i in row)


def test_recent_items_at_every_position_and_at_the_last():
    from recfm.textid.item_level import recent_items, recent_items_everywhere

    items = torch.tensor([[4, 5, 6, 0], [7, 0, 0, 0]])
    everywhere = recent_items_everywhere(items, 2)
    assert everywhere[0].tolist() == [[4, 0], [5, 4], [6, 5], [0, 6]] and everywhere[1, 0].tolist() == [7, 0]
    assert recent_items(items, torch.tensor([2, 0]), 3).tolist() == [[6, 5, 4], [7, 0, 0]]


def test_exclusion_removes_items_and_lists_stay_distinct_real_items():
    rec = random_recommender(1)
    exclude = [{1, 2, 3, 4}, set(range(1, 16))]
    top = rec.recommend([[1, 2], [3]], k=4, exclude=exclude)
    assert not set(top.items[0]) & exclude[0] and len(set(top.items[0])) == 4
    assert list(top.items[1]) == [16, 0, 0, 0]  # one allowed item left; the rest is padding
    assert np.isneginf(top.scores[1, 1:]).all()


@pytest.mark.parametrize("extra", [{}, {"ema_decay": 0.9}, {"items": {**ITEMS["items"], "word_dropout": 0.3}},
                                   {"items": {**ITEMS["items"], "word_rows": "encoder"}},
                                   {"items": {**ITEMS["items"], "copy_items": 2}},
                                   {"items": {**ITEMS["items"], "item_rows": True, "item_loss_weight": 1.0}}])
def test_no_validation_or_test_target_reaches_the_item_level_model(shop, monkeypatch, extra):
    monkeypatch.setattr("recfm.textid.word_transfer.encoder_embedder", lambda name: stub_text_vectors)
    assert_targets_never_reach_training(shop, monkeypatch, ITEMS | extra)


def test_a_weight_average_changes_what_is_kept_not_how_it_trains(shop, tmp_path):
    runs = {}
    for name, extra in (("live", []), ("ema", ["ema_decay=0.9"])):
        out = tmp_path / name
        r = runner.invoke(app, ["train", "textid", "-d", str(shop), "-o", str(out), "--no-preset", *CLI_OVERRIDES,
                                "rec_epochs=3", "patience=5", *extra])
        assert r.exit_code == 0, r.output
        losses = [json.loads(line).get("loss") for line in (out / "history.jsonl").read_text().splitlines()]
        runs[name] = losses, load_file(str(out / "recommender" / "model.safetensors"))
    assert runs["live"][0] == runs["ema"][0] and len(runs["live"][0]) == 3  # the same steps, the same losses
    assert any(not torch.equal(v, runs["ema"][1][k]) for k, v in runs["live"][1].items())  # other weights kept


def test_linear_lr_decay_reaches_zero_at_the_last_step_and_changes_training(shop, tmp_path):
    from recfm.textid.training import linear_decay

    weight = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([weight], lr=2.0)
    decay, seen = linear_decay(optimizer, 4), []
    for _ in range(5):
        optimizer.step()
        decay.step()
        seen.append(optimizer.param_groups[0]["lr"])
    assert seen == [1.5, 1.0, 0.5, 0.0, 0.0]
    losses = {}
    for decay_kind in ("none", "linear"):
        out = tmp_path / decay_kind
        r = runner.invoke(app, ["train", "textid", "-d", str(shop), "-o", str(out), "--no-preset", *CLI_OVERRIDES,
                                "rec_epochs=2", "patience=5", f"rec_lr_decay={decay_kind}"])
        assert r.exit_code == 0, r.output
        losses[decay_kind] = [json.loads(line).get("loss") for line in (out / "history.jsonl").read_text().splitlines()]
    assert losses["none"] != losses["linear"]
    with pytest.raises(ValueError, match="rec_lr_decay"):
        TextIDConfig(formulation="prompt", rec_lr_decay="linear")


def test_train_save_load_recommend_and_evaluate_through_the_cli(shop, tmp_path):
    out = tmp_path / "run"
    r = runner.invoke(app, ["train", "textid", "-d", str(shop), "-o", str(out), "--no-preset", *CLI_OVERRIDES,
                            "rec_epochs=4"])
    assert r.exit_code == 0, r.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test"]["cases"] == 30 and 0 <= metrics["test"]["ndcg@10"] <= 1
    assert (out / "recommender" / "model.safetensors").is_file() and not (out / "id_generator").exists()
    r = runner.invoke(app, ["recommend", "-r", str(out), "--user", "u3", "-k", "5"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["evaluate", "-r", str(out)])
    assert r.exit_code == 0, r.output
    data = load_dataset(shop, use_cache=False)
    split = data.split()
    from recfm.runs import load_run

    a = load_run(out)[2]
    b = load_run(out)[2]
    ta = a.recommend(split.test.histories[:10], 5)
    assert np.array_equal(ta.items, b.recommend(split.test.histories[:10], 5).items)
    assert ((ta.items > 0) & (ta.items <= data.n_items)).all()


def test_for_catalog_keeps_every_trained_word_and_gives_new_words_the_mean():
    rec = random_recommender(2)
    ids = ["red lamp", "purple lamp", "blue stool", "purple stool", "warm soft chair"]  # purple, stool: unseen
    other = rec.for_catalog(ids)
    assert other.new_words == 2 and other.vocab.words[: len(rec.vocab)] == rec.vocab.words
    assert other.n_items == 5 and other.items.texts[1:] == ids
    old, new = rec.model.word_emb.weight, other.model.word_emb.weight
    assert torch.equal(new[: len(old)], old)  # the trained words are untouched
    mean = old[4:].mean(0)
    for w in ("purple", "stool"):
        assert torch.allclose(new[other.vocab.index[w]], mean)
        assert torch.isclose(other.model.out_bias[other.vocab.index[w]], rec.model.out_bias[4:].mean())
    histories = [[1, 2], [5]]
    top = other.recommend(histories, k=5)
    assert all(sorted(row) == [1, 2, 3, 4, 5] for row in top.items.tolist())  # every real item, once
    exact = other.item_log_probs(histories)  # the grown model is still a distribution over the new catalog
    assert torch.allclose(exact[:, 1:].exp().sum(1), torch.ones(2), atol=1e-4)
    before = rec.recommend(histories, k=3)  # the source model is not changed by the copy
    assert np.array_equal(before.items, random_recommender(2).recommend(histories, k=3).items)


@pytest.mark.parametrize("tie_words", [False, True])
def test_for_catalog_maps_new_words_from_an_encoder_to_the_rows_of_their_look_alikes(tie_words):
    rec = random_recommender(3, tie_words=tie_words)
    rec.model.unseen_words = "encoder"
    known = rec.vocab.words[4:]
    # every trained row a linear image of a 3-d code per word, and the encoder reads the codes: the map is learnable
    g = torch.Generator().manual_seed(0)
    codes = torch.randn(len(known), 3, generator=g)
    net = rec.model
    with torch.no_grad():
        net.word_emb.weight[4:] = codes @ torch.randn(3, net.word_emb.weight.shape[1], generator=g)
        net.out_bias[4:] = codes @ torch.randn(3, generator=g)
        if not tie_words:
            net.dec_emb.weight[4:] = codes @ torch.randn(3, net.dec_emb.weight.shape[1], generator=g)
    vectors = dict(zip(known, codes))
    vectors |= {"purple": vectors["red"], "stool": vectors["chair"]}  # the encoder reads them as synonyms
    ids = ["red lamp", "purple lamp", "blue stool", "purple stool", "warm soft chair"]
    other = rec.for_catalog(ids, embed_words=lambda words: torch.stack([vectors[w] for w in words]))
    old, new = rec.model.word_emb.weight, other.model.word_emb.weight
    assert torch.equal(new[: len(old)], old)
    for word, twin in (("purple", "red"), ("stool", "chair")):
        row = new[other.vocab.index[word]]
        distances = (old[4:] - row).norm(dim=1)
        assert known[int(distances.argmin())] == twin
    assert other.word_map_report["mapped_words"] == 2 and other.word_map_report["from_words"] == len(known)
    top = other.recommend([[1, 2], [5]], k=5)
    assert all(sorted(row) == [1, 2, 3, 4, 5] for row in top.items.tolist())


def stub_text_vectors(words: list[str]) -> torch.Tensor:
    """A deterministic stand-in for a sentence encoder: one seeded unit vector per word."""
    rows = [torch.randn(8, generator=torch.Generator().manual_seed(sum(map(ord, w)) * 7919 + len(w))) for w in words]
    return torch.nn.functional.normalize(torch.stack(rows), dim=1)


def grounded_recommender(word_rows: str, seed: int = 0) -> ItemLevelRecommender:
    from recfm.textid.item_level import word_vectors

    ids = [f"{w} {k}" for w in ("red", "blue", "green", "warm") for k in ("lamp", "chair", "soft chair", "lamp shade")]
    vocab = WordVocab.of_ids(ids)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("recfm.textid.word_transfer.encoder_embedder", lambda name: stub_text_vectors)
        vectors = word_vectors(vocab, "stub")
    torch.manual_seed(seed)
    cfg = ItemLevelConfig(hidden_size=16, num_layers=1, num_heads=2, decoder_size=16, word_rows=word_rows)
    return ItemLevelRecommender(ItemLevelNet(cfg, len(vocab), 6, word_vectors=vectors).eval(), vocab, ids, max_len=6,
                                num_beams=4)


@pytest.mark.parametrize("word_rows", ["encoder", "encoder+free"])
def test_grounded_word_rows_are_the_learned_map_of_the_encoder_vectors_also_for_unseen_words(word_rows):
    rec = grounded_recommender(word_rows)
    net = rec.model
    rows = net.word_rows()
    words = slice(4, None)
    mapped = net.word_proj(net.word_text)
    expected_words = mapped[words] + (net.word_emb.weight[words] if word_rows == "encoder+free" else 0)
    assert torch.allclose(rows[words], expected_words)
    assert torch.allclose(rows[:4], net.word_emb.weight[:4])  # special tokens keep free rows; padding stays zero
    assert not rows[0].any()
    # training moves the map (and the free rows where there are any), not the frozen text vectors
    net.train()
    windows = torch.tensor([[1, 4, 9, 0], [16, 4, 1, 2]])
    rec.loss(windows)[0].backward()
    assert net.word_proj.weight.grad.abs().sum() > 0 and "word_text" not in dict(net.named_parameters())
    assert (net.word_emb.weight.grad[words].abs().sum() > 0) == (word_rows == "encoder+free")
    net.eval()
    # an unseen catalog: each new word's row is the same learned map of its own encoder vector
    ids = ["red lamp", "purple lamp", "blue stool", "purple stool", "warm soft chair"]
    other = rec.for_catalog(ids, embed_words=stub_text_vectors)
    grown = other.model.word_rows()
    assert torch.equal(grown[: len(rec.vocab)], rows)  # known words unchanged
    for word in ("purple", "stool"):
        i = other.vocab.index[word]
        free = other.model.word_emb.weight[i] if word_rows == "encoder+free" else 0
        assert torch.allclose(grown[i], net.word_proj(stub_text_vectors([word]))[0] + free, atol=1e-6)
    assert not torch.allclose(grown[other.vocab.index["purple"]], grown[other.vocab.index["stool"]])
    top = other.recommend([[1, 2], [5]], k=5)
    assert all(sorted(row) == [1, 2, 3, 4, 5] for row in top.items.tolist())


def test_grounded_word_rows_need_one_text_vector_per_word():
    cfg = ItemLevelConfig(hidden_size=16, num_layers=1, num_heads=2, decoder_size=16, word_rows="encoder")
    with pytest.raises(ValueError, match="one text vector per word"):
        ItemLevelNet(cfg, 10, 6)
    with pytest.raises(ValueError, match="one text vector per word"):
        ItemLevelNet(cfg, 10, 6, word_vectors=torch.zeros(9, 8))


def test_grounded_word_rows_train_save_load_and_score_an_unseen_catalog_through_the_cli(shop, tmp_path, monkeypatch):
    monkeypatch.setattr("recfm.textid.word_transfer.encoder_embedder", lambda name: stub_text_vectors)
    out = tmp_path / "run"
    r = runner.invoke(app, ["train", "textid", "-d", str(shop), "-o", str(out), "--no-preset", *CLI_OVERRIDES,
                            "rec_epochs=2", "items.word_rows=encoder"])
    assert r.exit_code == 0, r.output
    assert "word rows: encoder" in (out / "train.log").read_text()
    from recfm.runs import load_run

    data = load_dataset(shop, use_cache=False)
    histories = data.split().test.histories[:10]
    a, b = load_run(out)[2], load_run(out)[2]
    assert np.array_equal(a.recommend(histories, 5).items, b.recommend(histories, 5).items)
    unseen = write_shop(tmp_path / "unseen-shop", n_users=12, n_items=9, seed=5, prefix="z")
    r = runner.invoke(app, ["--quiet", "evaluate", "-r", str(out), "--dataset", str(unseen), "--splits", "test", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["test"]["cases"] == 12


def test_zero_shot_on_an_unseen_catalog_through_the_cli(shop, tmp_path):
    out = tmp_path / "run"
    r = runner.invoke(app, ["train", "textid", "-d", str(shop), "-o", str(out), "--no-preset", *CLI_OVERRIDES,
                            "rec_epochs=2"])
    assert r.exit_code == 0, r.output
    unseen = write_shop(tmp_path / "unseen-shop", n_users=12, n_items=9, seed=5, prefix="z")
    r = runner.invoke(app, ["--quiet", "evaluate", "-r", str(out), "--dataset", str(unseen), "--splits", "test", "--json"])
    assert r.exit_code == 0, r.output
    zs = json.loads(r.output)
    assert zs["zero_shot"] and zs["dataset"] == "unseen-shop" and zs["test"]["cases"] == 12
    # the unseen shop's IDs come from its own folder's table (the run's initial-ID rule), not the training shop's
    assert zs["zero_shot_ids"]["items"] == 9 and zs["zero_shot_ids"]["new_words"] >= 0


def test_item_level_needs_rec_only():
    with pytest.raises(ValueError, match="rec_only"):
        TextIDConfig(formulation="items", strategy="alternate")


def test_the_auxiliary_item_loss_is_the_catalog_softmax_and_its_sampled_estimate():
    rec = random_recommender(2)
    rec.model.item_loss_negatives = 0
    states = torch.randn(5, 16)
    targets = torch.tensor([1, 4, 4, 9, 16])
    vectors = rec.model.item_vectors(torch.arange(1, 17), rec.id_tokens) * rec.model.item_scale
    exact = torch.nn.functional.cross_entropy(states @ vectors.T, targets - 1)
    assert torch.isclose(rec.item_loss(states, targets), exact, atol=1e-5)  # item_loss_negatives: 0 is exact
    # every item drawn once as a negative: the target's copy is masked, so the softmax is the catalog's
    assert torch.isclose(rec.item_loss(states, targets, negatives=torch.arange(1, 17)), exact, atol=1e-5)
    rec.model.item_loss_weight = 1.0
    windows = torch.tensor([[1, 4, 9, 0], [16, 4, 1, 2]])
    with_item, _ = rec.loss(windows)
    rec.model.item_loss_weight = 0.0
    without, _ = rec.loss(windows)
    assert with_item > without


def test_no_target_reaches_the_item_level_model_with_the_item_loss(shop, monkeypatch):
    assert_targets_never_reach_training(shop, monkeypatch, {**ITEMS, "items": {**ITEMS["items"], "item_loss_weight": 1.0}})


def test_pooled_item_vectors_are_the_mean_of_the_id_words_without_padding():
    rec = random_recommender(2)
    net, id_tokens = rec.model, rec.id_tokens
    items = torch.tensor([[1, 5, 0], [16, 0, 0]])  # 0: the padding item, whose ID has no words
    tokens = id_tokens[items]
    count = (tokens != 0).sum(-1, keepdim=True)
    slow = (net.word_emb(tokens) * (tokens != 0)[..., None]).sum(-2) / count.clamp(min=1)
    assert torch.allclose(net.item_vectors(items, id_tokens), slow, atol=1e-5)
    assert not net.item_vectors(items, id_tokens)[0, 2].any()


def test_item_rows_add_each_items_own_row_to_its_pooled_words_and_an_unseen_catalog_gets_none():
    ids = ["red lamp", "red lamp shade", "blue chair"]
    vocab = WordVocab.of_ids(ids)
    torch.manual_seed(0)
    cfg = ItemLevelConfig(hidden_size=16, num_layers=1, num_heads=2, decoder_size=16, item_rows=True)
    with pytest.raises(ValueError, match="n_items"):
        ItemLevelNet(cfg, len(vocab), 6)
    net = ItemLevelNet(cfg, len(vocab), 6, n_items=3)
    rec = ItemLevelRecommender(net.eval(), vocab, ids, max_len=6, num_beams=3)
    items = torch.tensor([[1, 2, 0], [3, 0, 0]])
    plain = ItemLevelNet(cfg.model_copy(update={"item_rows": False}), len(vocab), 6)
    plain.load_state_dict({k: v for k, v in net.state_dict().items() if not k.startswith("item_emb")})
    words_only = plain.item_vectors(items, rec.id_tokens)
    assert torch.allclose(net.item_vectors(items, rec.id_tokens), words_only + net.item_emb.weight[items])
    assert not net.item_vectors(items, rec.id_tokens)[0, 2].any()  # the padding item stays zero
    other = rec.for_catalog(["red chair", "blue lamp"])
    assert other.model.item_emb.weight.shape == (3, 16) and not other.model.item_emb.weight.any()
    assert net.item_emb.weight.any()  # the source model keeps its rows
    assert sorted(other.recommend([[1]], k=2).items[0].tolist()) == [1, 2]


def test_item_rows_train_save_and_load_through_the_cli(shop, tmp_path):
    out = tmp_path / "run"
    r = runner.invoke(app, ["train", "textid", "-d", str(shop), "-o", str(out), "--no-preset", *CLI_OVERRIDES,
                            "rec_epochs=2", "items.item_rows=true", "items.item_loss_weight=1.0"])
    assert r.exit_code == 0, r.output
    state = load_file(str(out / "recommender" / "model.safetensors"))
    assert state["item_emb.weight"].shape[0] == load_dataset(shop, use_cache=False).n_items + 1
    from recfm.runs import load_run

    split = load_dataset(shop, use_cache=False).split()
    a, b = load_run(out)[2], load_run(out)[2]
    assert np.array_equal(a.recommend(split.test.histories[:10], 5).items, b.recommend(split.test.histories[:10], 5).items)


def test_dropout_is_the_fast_mask_everywhere_and_off_in_eval():
    from recfm.compute import FastDropout

    rec = random_recommender(3)
    dropouts = [m for m in rec.model.modules() if isinstance(m, torch.nn.Dropout)]
    assert not dropouts, "every dropout module is FastDropout (attention dropout stays inside MultiheadAttention)"
    assert sum(isinstance(m, FastDropout) for m in rec.model.modules()) == 2 + 3  # input, decoder; 3 per layer
    histories = torch.tensor([[1, 2, 3, 0], [5, 6, 0, 0]])
    rec.model.eval()
    assert torch.equal(rec.model.encode(histories, rec.id_tokens), rec.model.encode(histories, rec.id_tokens))


def test_word_dropout_drops_table_entries_in_training_only_and_keeps_padding_zero():
    rec = random_recommender(4)
    rec.model.word_dropout = 0.5
    weight = rec.model.word_emb.weight
    rec.model.train()
    torch.manual_seed(0)
    table = rec.model.word_table()
    zeroed = (table == 0) & (weight != 0)
    assert 0.4 < zeroed.float().mean() < 0.6  # about half the entries, each kept one scaled by 1 / (1 - p)
    assert torch.allclose(table[~zeroed & (weight != 0)], 2 * weight[~zeroed & (weight != 0)])
    assert not table[0].any()  # the padding word stays zero
    assert not torch.equal(rec.model.word_table(), table)  # a fresh mask each read
    rec.model.eval()
    assert torch.equal(rec.model.word_table(), weight)
    items = torch.tensor([[1, 5, 0]])
    assert torch.equal(rec.model.item_vectors(items, rec.id_tokens), rec.model.item_vectors(items, rec.id_tokens))


def test_bf16_autocast_loss_is_close_to_float32_and_returns_float32():
    rec = random_recommender(4)
    with torch.no_grad():
        for p in rec.model.parameters():
            p.div_(20)  # the fixture's x20 scale makes logits too large for a bf16 comparison
    rec.model.item_loss_weight = 1.0
    windows = torch.tensor([[1, 2, 3, 4, 0], [5, 6, 7, 8, 9], [16, 1, 0, 0, 0]])
    rec.model.eval()
    torch.manual_seed(0)
    full, n = rec.loss(windows)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.manual_seed(0)
        half, m = rec.loss(windows)
    assert n == m and half.dtype == torch.float32
    assert abs(float(half) - float(full)) < 0.02 * abs(float(full))


def test_item_level_trains_under_bf16_autocast_through_the_cli(shop, tmp_path):
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", "textid", "--dataset", str(shop), "--output", str(out), *CLI_OVERRIDES,
                                 "rec_epochs=2", "autocast=bf16"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["training"]["precision"] == "bfloat16"
    losses = [row["loss"] for row in metrics["training"]["history"]]
    assert len(losses) == 2 and all(np.isfinite(losses))


def test_reranked_beam_is_the_exact_top_k_of_id_plus_weighted_item_head_log_probs():
    rec = random_recommender(5, tie_words=True)
    histories = [[1, 2, 3], [5], [16, 4, 9, 9, 1, 2, 3, 7]]
    exact = rec.item_log_probs(histories)
    seqs, last = __import__("recfm.data.windows", fromlist=["pad_right"]).pad_right(histories, rec.max_len)
    with torch.no_grad():
        states = rec.model.encode(seqs, rec.id_tokens)[torch.arange(3), last]
        catalog = torch.arange(1, rec.n_items + 1)
        head = torch.log_softmax(states @ (rec.model.item_vectors(catalog, rec.id_tokens) * rec.model.item_scale).T, 1)
    rec.num_beams = rec.n_items
    rec.model.rerank_weight = 0.7
    top = rec.recommend(histories, k=5)
    want = torch.topk(exact[:, 1:] + 0.7 * head, 5, dim=1)
    assert np.array_equal(top.items, want.indices.numpy() + 1)
    np.testing.assert_allclose(top.scores, want.values.numpy(), atol=1e-4)
    rec.model.rerank_weight = 0.0
    assert not np.array_equal(rec.recommend(histories, k=5).items, top.items)  # the weight changes the lists


def test_the_rerank_weight_is_chosen_on_validation_and_saved_with_the_run(shop, tmp_path):
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", "textid", "--dataset", str(shop), "--output", str(out), *CLI_OVERRIDES,
                                 "rec_epochs=2", "items.item_loss_weight=1", "items.rerank_weights=[0.0,1.0]"])
    assert result.exit_code == 0, result.output
    rerank = json.loads((out / "metrics.json").read_text())["training"]["rerank"]
    assert set(rerank["valid"]) == {"0.0", "1.0"} and rerank["chosen"] in (0.0, 1.0)
    assert rerank["valid"][str(rerank["chosen"])] == max(rerank["valid"].values())
    meta = json.loads((out / "recommender" / "recfm-textid.json").read_text())
    assert meta["config"]["rerank_weight"] == rerank["chosen"]
