"""The multi-task model, trainer and evaluation on a tiny Llama and MovieLens-shaped records."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from movielens_fixture import fake_movielens
from tokenizers import Tokenizer, models, pre_tokenizers
from helpers import tiny_llama
from transformers import PreTrainedTokenizerFast

from recfm.multitask.evaluate import (bootstrap_interval, macro_f1, metric_on, paper_metric, ranking_metrics,
                                     score_tasks, token_f1)
from recfm.multitask.model import LETTERS, MultiTaskModel, MultiTaskModelConfig, option_prompt, target_text
from recfm.multitask.records import EMBED_TOKEN, GenRecord
from recfm.multitask.movielens_tasks import MovieLensTasks, TaskConfig
from recfm.multitask.s2sched import S2SchedConfig
from recfm.multitask.tmole import TMoLEConfig
from recfm.multitask.run import ablation_table, difference_table
from recfm.multitask.trainer import MultiTaskConfig, load_adapter, task_specs, train_multitask

TASKS = ["seqrec", "sentiment", "matching", "user2item", "query2item"]


@pytest.fixture(scope="module")
def records():
    ml1m, ml100k = fake_movielens()
    return MovieLensTasks(ml1m, ml100k, TaskConfig(history_len=3, n_options=4, max_records=12)).build(TASKS)


def word_tokenizer(records, with_embed: bool = True) -> PreTrainedTokenizerFast:
    words = {"<pad>", "</s>", "<unk>", *LETTERS, *([EMBED_TOKEN] if with_embed else [])}
    split = pre_tokenizers.Whitespace()
    texts = ["Answer with the letter of one option. Options: Answer:"]
    for splits in records.values():
        for rs in splits.values():
            for r in rs:
                texts += [r.system, option_prompt(r), r.response] if isinstance(r, GenRecord) else [r.query_text(), r.positive]
    for t in texts:
        words.update(w for w, _ in split.pre_tokenize_str(t))
    vocab = {w: i for i, w in enumerate(["<pad>", "</s>", "<unk>", *sorted(words - {"<pad>", "</s>", "<unk>"})])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = split
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                   additional_special_tokens=[EMBED_TOKEN] if with_embed else [])


def tiny_model(records, adapter="tmole", with_embed=True) -> MultiTaskModel:
    tok = word_tokenizer(records, with_embed)
    lm = tiny_llama(len(tok), max_positions=512, pad_token_id=0, eos_token_id=1, initializer_range=0.5).train()
    # a wide init: with the default 0.02 a frozen random head caps every logit near 0.6, so no adapter could fit
    cfg = MultiTaskModelConfig(adapter=adapter, tmole=TMoLEConfig(r=4, alpha=8, dropout=0.0, task_dim=8, router_hidden=8))
    return MultiTaskModel(lm, tok, task_specs(records), cfg)


def test_length_groups_bound_the_padding():
    from recfm.models.batching import length_groups

    assert length_groups([475, 150, 130, 480, 160]) == [[2, 1, 4], [0, 3]]  # 160 <= 1.25 * 130, 475 > 1.25 * 130
    assert length_groups([10, 10, 10], slack=1.0) == [[0, 1, 2]]
    assert length_groups([]) == []
    with pytest.raises(ValueError):
        length_groups([1], slack=0.5)


def test_grouped_generative_loss_equals_one_padded_batch(records):
    """Records of very different lengths: the loss over length groups is the token mean of one
    right-padded batch (the model in float64; the loss is taken in float32, hence 1e-6)."""
    import torch.nn.functional as F

    model = tiny_model(records)
    model.model.double()
    model.tmole.state.double()  # the task-embedding table lives beside the model
    for layer in model.tmole.layers.values():
        layer.lora_B.data.normal_(0, 0.1)  # non-zero adapters, so the routed experts take part
    gen = records["seqrec"]["train"][:2] + records["sentiment"]["train"][:2] + records["matching"]["train"][:2]
    lengths = [len(model._chat(r)) for r in gen]
    assert max(lengths) > 1.25 * min(lengths)  # more than one group
    rows = [model._chat(r) + model._target(r) for r in gen]
    ids, mask = model._pad(rows, left=False)
    labels = torch.full_like(ids, -100)
    for i, r in enumerate(gen):
        p, t = len(model._chat(r)), model._target(r)
        labels[i, p : p + len(t)] = torch.tensor(t)
    with torch.no_grad(), model.tmole.tasks(model.ids_of([r.task for r in gen])):
        logits = model.model(input_ids=ids, attention_mask=mask).logits
    expected = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100)
    with torch.no_grad():
        got = model.generative_loss(gen)
        total = model.generative_loss(gen, reduction="sum")
    assert float(got) == pytest.approx(float(expected), rel=1e-6)
    assert float(total) == pytest.approx(float(expected) * model.target_tokens(gen), rel=1e-6)


def test_prompt_letters_and_targets(records):
    r = records["seqrec"]["train"][0]
    text = option_prompt(r)
    assert all(f"{LETTERS[i]}. {o}" in text for i, o in enumerate(r.options))
    assert target_text(r) == LETTERS[r.options.index(r.response)]
    assert target_text(GenRecord("t", "", "q", "free answer")) == "free answer"


def test_losses_choices_and_embeddings(records):
    model = tiny_model(records)
    gen = records["seqrec"]["train"][:3] + records["sentiment"]["train"][:2]
    assert torch.isfinite(model.generative_loss(gen))
    # the output layer on the answer positions only: the loss and gradients of the full logits
    params = model.trainable_parameters()
    with torch.no_grad():
        for p in params:
            p.add_(0.05 * torch.randn_like(p))  # B = 0 at init would leave half the gradients zero
    fast = model.generative_loss(gen)
    fast_grads = torch.autograd.grad(fast, params, allow_unused=True)
    model.plain_head = False
    full = model.generative_loss(gen)
    full_grads = torch.autograd.grad(full, params, allow_unused=True)
    model.plain_head = True
    torch.testing.assert_close(fast, full)
    for a, b in zip(fast_grads, full_grads):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)
    assert any(a is not None and a.abs().sum() > 0 for a in fast_grads)
    assert torch.isfinite(model.embedding_loss(records["user2item"]["train"][:4]))
    picks = model.choose(gen, batch_size=2)
    assert len(picks) == 5 and all(0 <= p < len(r.options) for p, r in zip(picks, gen))
    assert picks == model.choose(gen, batch_size=5)  # left padding + position ids: batching changes nothing
    slow = []  # one record at a time, unpadded, every position's logits
    for r in gen:
        ids = torch.tensor([model._chat(r)])
        with model.tmole.tasks(model.ids_of([r.task])), torch.no_grad():
            last = model.model(input_ids=ids).logits[0, -1]
        slow.append(int(last[model.letter_ids[: len(r.options)]].argmax()))
    assert picks == slow
    e = model.embed(["a b", "c"], ["user2item", "query2item"])
    torch.testing.assert_close(e.norm(dim=-1), torch.ones(2))
    [a] = model.answer([GenRecord("matching", "", "Record 1", "yes")], max_new_tokens=2)
    assert isinstance(a, str) and len(model.tokenizer.encode(a, add_special_tokens=False)) <= 2
    assert model.answer([GenRecord("matching", "", "Record 1", "yes")], max_new_tokens=2) == [a]  # greedy: the same
    with pytest.raises(KeyError, match="unknown tasks"):
        model.ids_of(["nope"])


@pytest.mark.slow
def test_training_schedules_merges_and_the_adapter_reloads(records, tmp_path):
    model = tiny_model(records)
    cfg = MultiTaskConfig(steps=8, gen_batch=4, emb_batch=4, lr=5e-3, checkpoints=2,
                          s2sched=S2SchedConfig(warmup_ratio=0.25, window=4, valid_samples=2))
    history = train_multitask(records, cfg, model, tmp_path / "run", say=lambda m: None)
    gen_log, emb_log = history["schedule"]["generative"], history["schedule"]["embedding"]
    assert len(gen_log) == 8 and all(sum(v for k, v in row.items() if k.startswith("count/")) == 4 for row in gen_log)
    assert gen_log[0]["beta"] is None and gen_log[-1]["beta"] is not None  # warmup (2 steps), then eq. (5)
    assert {k for k in emb_log[0] if k.startswith("ratio/")} == {"ratio/user2item", "ratio/query2item"}
    assert history["merged"]["checkpoints"] == [6, 8] and len(history["valid"]) == 8
    picks = model.choose(records["seqrec"]["test"])
    queries = [r.query_text() for r in records["user2item"]["test"][:3]]
    vectors = model.embed(queries, ["user2item"] * 3)
    fresh = tiny_model(records)
    load_adapter(fresh, tmp_path / "run")
    assert fresh.choose(records["seqrec"]["test"]) == picks
    torch.testing.assert_close(fresh.embed(queries, ["user2item"] * 3), vectors)  # <|embed|> rows are rebuilt alike


def test_ablations_uniform_sampling_and_plain_lora(records):
    model = tiny_model(records, adapter="lora")
    assert model.tmole.config.n_experts == 1
    cfg = MultiTaskConfig(steps=3, gen_batch=6, emb_batch=4, scheduler="uniform", merge=False)
    history = train_multitask(records, cfg, model, say=lambda m: None)
    assert all(row["count/seqrec"] == 2 for row in history["schedule"]["generative"]) and "merged" not in history
    assert history["valid"] == []  # no validation passes without S2Sched


@pytest.mark.slow
def test_training_reduces_the_generative_loss(records):
    model = tiny_model(records)
    batch = records["sentiment"]["train"][:8]
    opt = torch.optim.Adam(model.trainable_parameters(), lr=3e-2)
    first = float(model.generative_loss(batch).detach())
    for _ in range(40):
        opt.zero_grad()
        model.generative_loss(batch).backward()
        opt.step()
    assert float(model.generative_loss(batch)) < 0.5 * first  # only the adapters and the router train


def test_metrics_by_hand(records):
    # labels a, b: F1(a) = 2*1/(2*1+1+0) = 2/3; F1(b) = 2*1/(2*1+0+1) = 2/3
    assert macro_f1(["a", "a", "b"], ["a", "b", "b"]) == pytest.approx(2 / 3)
    assert macro_f1(["a", "b"], ["a", "a"], labels=["a", "b", "c"]) == pytest.approx((2 / 3 + 0 + 0) / 3)
    m = ranking_metrics(np.array([0, 1, 25]), k=20)
    assert m["ndcg@20"] == pytest.approx((1 + 1 / np.log2(3)) / 3) and m["mrr@20"] == pytest.approx(0.5)
    scores = score_tasks(tiny_model(records), {t: records[t]["test"] for t in TASKS},
                         {t: ("embedding" if t.endswith("item") else "generative") for t in TASKS}, limit=5)
    assert set(scores["seqrec"]) == {"records", "accuracy", "recall@1", "outcomes"}
    assert set(scores["sentiment"]) == {"records", "accuracy", "macro_f1", "outcomes"}
    assert {"ndcg@20", "mrr@20", "corpus", "outcomes"} <= set(scores["user2item"])
    # every metric is recomputed exactly from the outcomes kept beside it
    for task, key in (("seqrec", "recall@1"), ("sentiment", "macro_f1"), ("user2item", "ndcg@20"), ("user2item", "mrr@20")):
        assert metric_on(scores[task], key) == pytest.approx(scores[task][key])


def test_paper_metrics_token_f1_and_the_metric_each_task_reports():
    assert token_f1("the cat sat", "the cat sat") == 1.0
    assert token_f1("the cat sat down", "a cat sat") == pytest.approx(2 * (2 / 3) * (2 / 4) / (2 / 3 + 2 / 4))
    assert token_f1("yes", "") == 0.0 and token_f1("", "") == 1.0 and token_f1("Yes", "yes") == 1.0
    emb = {"ndcg@20": 0.5, "mrr@20": 0.4}
    assert [paper_metric(t, emb) for t in ("item2item", "Emb_item", "user2item", "query2item", "Emb_user")] == \
        ["ndcg@20", "ndcg@20", "mrr@20", "mrr@20", "mrr@20"]
    assert paper_metric("seqrec", {"accuracy": 0.1, "recall@1": 0.1}) == "recall@1"
    assert paper_metric("profile_text", {"accuracy": 0.0, "token_f1": 0.3}) == "token_f1"
    assert paper_metric("sentiment", {"accuracy": 0.5, "macro_f1": 0.4}) == "macro_f1"
    free = {"records": 2, "accuracy": 0.0, "token_f1": 0.75,
            "outcomes": {"truth": ["a b", "c d"], "pred": ["a b x", "c"]}}
    assert metric_on(free, "token_f1") == pytest.approx((0.8 + 2 / 3) / 2)


def test_bootstrap_intervals_cover_the_estimate_and_shrink_with_more_records():
    rng = np.random.default_rng(0)

    def accuracy_task(n: int) -> dict:
        truth = ["a"] * n
        pred = ["a" if x else "b" for x in rng.random(n) < 0.6]
        return {"records": n, "accuracy": np.mean([t == p for t, p in zip(truth, pred)]),
                "outcomes": {"truth": truth, "pred": pred}}

    small, large = accuracy_task(100), accuracy_task(2000)
    lo, hi = bootstrap_interval([(small, "accuracy")])
    assert lo < small["accuracy"] < hi
    # a binomial proportion: the 95% interval is about +-1.96 sqrt(p(1-p)/n)
    assert (hi - lo) / 2 == pytest.approx(1.96 * np.sqrt(0.24 / 100), rel=0.2)
    wide, narrow = hi - lo, np.subtract(*bootstrap_interval([(large, "accuracy")])[::-1])
    assert narrow < wide / 3
    assert bootstrap_interval([(small, "accuracy")]) == (lo, hi)  # seeded: the same interval every time
    ranks = {"records": 50, "outcomes": {"ranks": list(rng.integers(0, 40, 50)), "k": 20}}
    ranks.update(ranking_metrics(np.array(ranks["outcomes"]["ranks"]), 20))
    avg_lo, avg_hi = bootstrap_interval([(small, "accuracy"), (ranks, "ndcg@20")])
    assert avg_lo < (small["accuracy"] + ranks["ndcg@20"]) / 2 < avg_hi
    assert bootstrap_interval([({"accuracy": 0.5}, "accuracy")]) is None  # written before outcomes were kept
    table = ablation_table({"a": {"tasks": {"t1": small, "item2item": ranks}, "train_seconds": 3}})
    assert "item2item (ndcg@20)" in table
    assert f"{small['accuracy']:.3f} [{lo:.3f}, {hi:.3f}]" in table and table.count("[") == 4  # 2 tasks, 2 averages


def test_a_paired_interval_draws_the_same_records_for_both_variants():
    rng = np.random.default_rng(1)
    n = 400
    truth = ["a"] * n
    correct = rng.random(n) < 0.5
    flips = np.flatnonzero(~correct)[:20]  # b answers 20 more records right: +0.05, all else shared
    better = correct.copy()
    better[flips] = True

    def task(right: np.ndarray) -> dict:
        pred = ["a" if r else "b" for r in right]
        return {"accuracy": float(right.mean()), "outcomes": {"truth": truth, "pred": pred}}

    a, b = task(correct), task(better)
    assert bootstrap_interval([(a, "accuracy")], minus=[(a, "accuracy")]) == (0.0, 0.0)
    lo, hi = bootstrap_interval([(b, "accuracy")], minus=[(a, "accuracy")])
    assert 0 < lo < 0.05 < hi  # the shared answers cancel: the paired interval excludes 0
    a_lo, a_hi = bootstrap_interval([(a, "accuracy")])
    b_lo, b_hi = bootstrap_interval([(b, "accuracy")])
    assert a_hi > b_lo  # while the two variants' own intervals overlap
    with pytest.raises(ValueError, match="same records"):
        bootstrap_interval([(b, "accuracy")], minus=[(task(correct[:-1]) | {"outcomes": {"truth": truth[:-1],
                                                      "pred": ["a"] * (n - 1)}}, "accuracy")])
    table = difference_table({"recfound": {"tasks": {"t1": a}}, "other": {"tasks": {"t1": b}},
                              "zero-shot": {"tasks": {"t1": a}}})
    assert "| other | +0.050 [" in table and "| zero-shot | +0.000 [+0.000, +0.000] | - |" in table
    assert "| recfound |" not in table and difference_table({"other": {"tasks": {"t1": b}}}) == ""


def test_an_added_embed_token_gets_the_mean_row_every_time(records):
    a, b = tiny_model(records, with_embed=False), tiny_model(records, with_embed=False)
    weight = a.model.get_input_embeddings().weight
    assert weight.shape[0] == len(a.tokenizer) and EMBED_TOKEN in a.tokenizer.get_vocab()
    torch.testing.assert_close(weight[-1], weight[:-1].mean(0))
    torch.testing.assert_close(b.model.get_input_embeddings().weight, weight)


@pytest.mark.slow
def test_training_under_two_processes_matches_one():
    """The same 8 steps alone and as two gloo processes (torchrun): generative records are split between
    the processes, the embedding batch is shared; per-step losses and the merged adapter agree to 1e-4."""
    from pathlib import Path

    from helpers import one_and_two_processes

    runs = one_and_two_processes(Path(__file__).with_name("ddp_train_script.py"))
    for key in ("gen_loss", "emb_loss"):
        np.testing.assert_allclose(runs[2][key], runs[1][key], rtol=1e-4, atol=1e-6)
    assert runs[2]["weights"] == pytest.approx(runs[1]["weights"], rel=1e-4)
