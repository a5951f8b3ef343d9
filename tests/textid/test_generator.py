"""recfm.textid: batched diverse beam search (vs a per-item Python-loop reference), Algorithm 1
(batched and one-at-a-time), ID normalisation, initial IDs (table, extractive, LLM keywords) and
the warm-startable IDGenerator. Everything runs on tiny models built here, in well under a minute."""

from __future__ import annotations

import math
import zlib
from collections import Counter


import pytest
import torch

pytest.importorskip("transformers", reason="recfm.textid needs transformers (see docs/models.md)")

import helpers  # noqa: E402
from transformers import LlamaForCausalLM  # noqa: E402

from recfm.models import build_seq2seq, train_tokenizer  # noqa: E402
from recfm.textid.diverse_beam import (  # noqa: E402
    diverse_beam_search,
    diverse_beam_search_tokens,
    encode_sources,
    word_start_tokens,
)
from recfm.textid.generator import IDGenerator  # noqa: E402
from recfm.textid.ids import extractive_ids, make_unique, normalize_id, with_suffix  # noqa: E402
from recfm.textid.initial_ids import (  # noqa: E402
    InitialIds,
    import_id_table,
    initial_ids,
    keyword_prompts,
    llm_keyword_ids,
    parse_keywords,
)
from recfm.textid.unique_ids import UniqueIdConfig, assign_unique_ids, assign_unique_ids_sequential  # noqa: E402

ITEMS = [
    "title: Maybelline Color Sensational Lipstick; brand: Maybelline; category: lips",
    "title: Neutrogena Hydro Boost Water Gel; brand: Neutrogena; category: face moisturizer",
    "title: Olay Regenerist Micro-Sculpting Cream; brand: Olay; category: face cream",
    "title: CeraVe Foaming Facial Cleanser; brand: CeraVe; category: face cleanser",
    "title: L'Oreal Voluminous Original Mascara; brand: L'Oreal; category: eyes",
    "title: Burt's Bees Natural Lip Balm Beeswax; brand: Burt's Bees; category: lips",
    "title: The Ordinary Niacinamide Zinc Serum; brand: The Ordinary; category: face serum",
    "title: Revlon One-Step Hair Dryer Volumizer; brand: Revlon; category: hair tools",
    "title: OPI Nail Lacquer Big Apple Red; brand: OPI; category: nails",
    "title: Essie Nail Polish Ballet Slippers; brand: Essie; category: nails",
    "title: Dove Beauty Bar Sensitive Skin; brand: Dove; category: soap",
    "title: Nivea Creme Tin Moisturizing Cream; brand: Nivea; category: body cream",
]


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(ITEMS * 3, vocab_size=300, lowercase=True)


@pytest.fixture(scope="module")
def t5(tok):
    return build_seq2seq("tiny", tok, seed=0, dropout_rate=0.0).eval()


def tiny_llama(tokenizer, seed: int = 0) -> LlamaForCausalLM:
    return helpers.tiny_llama(len(tokenizer), seed, eos_token_id=tokenizer.eos_token_id,
                              pad_token_id=tokenizer.pad_token_id)


# ---------------------------------------------------------------------------------------------
# The slow, obvious reference: one item, Python loops, full forward pass (no cache) per beam
# ---------------------------------------------------------------------------------------------


@torch.no_grad()
def reference_dbs(model, tokenizer, text, G, B, lam, min_new, max_new, lp=1.0):
    causal = not model.config.is_encoder_decoder
    src = encode_sources(tokenizer, [text], 256, causal)[0]
    eos = tokenizer.eos_token_id
    start = getattr(model.config, "decoder_start_token_id", None)

    def next_logp(prefix):
        if causal:
            logits = model(input_ids=torch.tensor([src + prefix])).logits[0, -1]
        else:
            dec = torch.tensor([[start] + prefix])
            logits = model(input_ids=torch.tensor([src]), decoder_input_ids=dec).logits[0, -1]
        return torch.log_softmax(logits.float(), -1)

    f32 = lambda x: torch.tensor(x, dtype=torch.float32)  # noqa: E731
    beams = [[([], 0.0 if b == 0 else -1e9) for b in range(B)] for _ in range(G)]
    hyps = [[] for _ in range(G)]  # (score, insertion order, tokens)
    done = [False] * G
    order = 0
    for t in range(max_new):
        step_logp = [[next_logp(seq) for seq, _ in beams[g]] for g in range(G)]
        chosen = Counter()
        norm = float(t + 1) ** lp
        for g in range(G):
            if done[g]:
                continue
            cands = []
            for b, (seq, score) in enumerate(beams[g]):
                logp = step_logp[g][b].clone()
                V = logp.numel()
                if t < min_new:
                    logp[eos] = -math.inf
                if lam and g > 0:
                    pen = torch.zeros(V)
                    for v, c in chosen.items():
                        pen[v] = c
                    logp = logp - lam * pen
                for v, s in enumerate((f32(score) + logp).tolist()):
                    cands.append((s, b * V + v))
            cands.sort(key=lambda x: (-x[0], x[1]))
            new = []
            for rank, (s, idx) in enumerate(cands[: 2 * B]):
                b, v = divmod(idx, V)
                if v == eos:
                    if rank < B:
                        hyps[g].append((float(f32(s) / norm), order, beams[g][b][0]))
                        order += 1
                elif len(new) < B:
                    new.append((beams[g][b][0] + [v], s))
            hyps[g] = sorted(hyps[g], key=lambda h: (-h[0], h[1]))[:B]
            beams[g] = new
            for seq, _ in new:
                chosen[seq[-1]] += 1
            if len(hyps[g]) == B and hyps[g][-1][0] >= float(f32(new[0][1]) / norm):
                done[g] = True
        if all(done):
            break
    else:
        for g in range(G):
            if not done[g]:
                for seq, s in beams[g]:
                    hyps[g].append((float(f32(s) / float(max_new) ** lp), order, seq))
                    order += 1
                hyps[g] = sorted(hyps[g], key=lambda h: (-h[0], h[1]))[:B]
    return [(tuple(hyps[g][0][2]), hyps[g][0][0]) for g in range(G)]


SETTINGS = [  # G, B, penalty, min_new, max_new
    (5, 1, 0.0, 1, 6),
    (5, 1, 0.5, 1, 6),
    (3, 2, 0.3, 2, 5),
    (4, 3, 1.0, 0, 4),
    (2, 2, 0.7, 4, 7),
]


@pytest.mark.parametrize("G,B,lam,lo,hi", SETTINGS)
def test_diverse_beam_search_equals_reference_seq2seq(tok, t5, G, B, lam, lo, hi):
    texts = ITEMS[:4]
    got = diverse_beam_search_tokens(t5, tok, texts, G, B, lam, lo, hi, batch_size=3)
    for text, hyps in zip(texts, got):
        ref = reference_dbs(t5, tok, text, G, B, lam, lo, hi)
        assert [h.tokens for h in hyps] == [r[0] for r in ref]
        assert [h.score for h in hyps] == pytest.approx([r[1] for r in ref], abs=1e-4)
        for h in hyps:  # the length range, EOS not counted; no EOS/pad inside an ID
            assert lo <= len(h.tokens) <= hi and tok.eos_token_id not in h.tokens


@pytest.mark.parametrize("G,B,lam,lo,hi", SETTINGS[1:3])
def test_diverse_beam_search_equals_reference_causal(tok, G, B, lam, lo, hi):
    lm_tok = train_tokenizer(ITEMS * 3, vocab_size=240)  # appends EOS; the causal path drops it
    lm = tiny_llama(lm_tok, seed=1)
    texts = ITEMS[3:8]
    got = diverse_beam_search_tokens(lm, lm_tok, texts, G, B, lam, lo, hi, batch_size=2)
    for text, hyps in zip(texts, got):
        ref = reference_dbs(lm, lm_tok, text, G, B, lam, lo, hi)
        assert [h.tokens for h in hyps] == [r[0] for r in ref]
        assert all(lo <= len(h.tokens) <= hi for h in hyps)


def eos_prone(model, tokenizer, scale=6.0):
    """The model with its EOS output row scaled: EOS wins at scattered steps, so groups and items
    finish at different times (exercises finished hypotheses, done groups and batch shrinking)."""
    with torch.no_grad():
        model.get_output_embeddings().weight[tokenizer.eos_token_id] *= scale
    return model


@pytest.mark.parametrize("causal", [False, True])
def test_diverse_beam_search_equals_reference_with_early_eos(tok, warm, causal):
    """Groups and items finishing at different steps: finished hypotheses, done groups, batch shrinking."""
    model = eos_prone(tiny_llama(tok, seed=2), tok, scale=8.0) if causal else warm[0].model  # warm: trained T5
    texts = ITEMS[:6]
    got = diverse_beam_search_tokens(model, tok, texts, 3, 2, 0.6, 1, 8, batch_size=4)
    lengths = {len(h.tokens) for per in got for h in per}
    assert len(lengths) > 2 and min(lengths) < 8  # EOS at various steps
    for text, hyps in zip(texts, got):
        ref = reference_dbs(model, tok, text, 3, 2, 0.6, 1, 8)
        assert [h.tokens for h in hyps] == [r[0] for r in ref]
        assert [h.score for h in hyps] == pytest.approx([r[1] for r in ref], abs=1e-4)


def test_diverse_beam_search_batching_and_lengths(tok, t5):
    a = diverse_beam_search(t5, tok, ITEMS, num_groups=5, diversity_penalty=0.4, min_new_tokens=3,
                            max_new_tokens=5, batch_size=4)
    b = diverse_beam_search(t5, tok, ITEMS, num_groups=5, diversity_penalty=0.4, min_new_tokens=3,
                            max_new_tokens=5, batch_size=64)
    c = diverse_beam_search(t5, tok, list(reversed(ITEMS)), num_groups=5, diversity_penalty=0.4,
                            min_new_tokens=3, max_new_tokens=5, batch_size=5)
    assert a == b == list(reversed(c)) and len(a) == len(ITEMS) and all(len(x) == 5 for x in a)
    assert all(x == normalize_id(x) for per in a for x in per)
    hyps = diverse_beam_search_tokens(t5, tok, ITEMS, 3, 2, 0.2, 7, 7, batch_size=5)
    assert all(len(h.tokens) == 7 for per in hyps for h in per)  # min == max: exact length
    with pytest.raises(ValueError):
        diverse_beam_search(t5, tok, ITEMS, min_new_tokens=5, max_new_tokens=4)


def test_no_repeat_words_forbids_a_collapsed_generator_to_repeat_a_word(tok, t5):
    """A generator that wants one word at every step ("1996 1996 1996", seen after alternate
    training) must produce that word at most once per candidate when repeats are forbidden."""
    word = next(i for i in range(len(tok)) if tok.convert_ids_to_tokens(i) == "\u2581cream")
    hook = t5.get_output_embeddings().register_forward_hook(lambda m, i, out: out.index_add(
        -1, torch.tensor([word]), torch.full((*out.shape[:-1], 1), 30.0)))
    try:
        free = diverse_beam_search_tokens(t5, tok, ITEMS[:3], 3, 1, 0.5, 3, 5)
        banned = diverse_beam_search_tokens(t5, tok, ITEMS[:3], 3, 1, 0.5, 3, 5, no_repeat_words=True)
    finally:
        hook.remove()
    assert any(h.tokens.count(word) > 1 for per in free for h in per)  # the collapse, reproduced
    assert all(h.tokens.count(word) <= 1 for per in banned for h in per)
    assert all(3 <= len(h.tokens) <= 5 for per in banned for h in per)
    starts = word_start_tokens(tok)
    assert all(len([t for t in h.tokens if starts[t]]) == len({t for t in h.tokens if starts[t]})
               for per in banned for h in per)


def test_higher_penalty_gives_more_distinct_candidates(tok, t5):
    def distinct(lam):
        c = diverse_beam_search(t5, tok, ITEMS, num_groups=5, diversity_penalty=lam, min_new_tokens=1,
                                max_new_tokens=6)
        return [len(set(per)) for per in c]

    d0, d_low, d_high = distinct(0.0), distinct(0.1), distinct(2.0)
    assert d0 == [1] * len(ITEMS)  # no penalty, one beam per group: every group decodes the same
    assert sum(d_high) > sum(d_low) >= sum(d0)
    assert sum(d_high) >= 2 * len(ITEMS)


# ---------------------------------------------------------------------------------------------
# Normalisation, suffixes, schedule
# ---------------------------------------------------------------------------------------------


def test_normalize_id():
    assert normalize_id("  Red   LIPSTICK, ") == "red lipstick"
    assert normalize_id("...«Nail   Polish»!!") == "nail polish"
    assert normalize_id("l'oreal\tparis - mascara.") == "l'oreal paris - mascara"
    assert normalize_id("ＦＵＬＬ width") == "full width"  # NFKC
    assert normalize_id(" ,.;! ") == "" and normalize_id("") == "" and normalize_id(None) == ""
    assert normalize_id(normalize_id(" A  b. ")) == normalize_id(" A  b. ")


def test_suffix_rule_and_make_unique():
    assert with_suffix("Red Lip", {"red lip", "red lip 2"}) == "red lip 3"
    assert with_suffix("", set()) == "item 2"
    ids, n = make_unique(["a", "A.", "b", "a", "", "a 2"])
    assert ids == ["a", "a 2", "b", "a 3", "item 2", "a 2 2"] and n == 4
    assert len(set(ids)) == len(ids)


def test_schedule_matches_the_paper():
    sched = UniqueIdConfig().schedule()
    assert len(sched) == 20
    assert [p for p, _, _ in sched[:10]] == [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
    assert {(lo, hi) for _, lo, hi in sched[:10]} == {(1, 9)} and {(lo, hi) for _, lo, hi in sched[10:]} == {(10, 19)}
    assert sched[10][0] == 0.1
    with pytest.raises(ValueError):
        UniqueIdConfig(length_ranges=[(5, 5)])


# ---------------------------------------------------------------------------------------------
# Algorithm 1 with fake generators
# ---------------------------------------------------------------------------------------------


def adversarial(texts, penalty, min_len, max_len):
    return [["Same", "same.", "other", "THIRD"] for _ in texts]


@pytest.mark.parametrize("assign", [assign_unique_ids, assign_unique_ids_sequential])
def test_uniqueness_with_an_adversarial_generator(assign):
    texts = [f"item {i}" for i in range(30)]
    ids, stats = assign(texts, adversarial)
    assert len(ids) == 30 and len(set(ids)) == 30 and all(ids)
    assert ids[:3] == ["same", "other", "third"]
    assert ids[3:6] == ["same 2", "same 3", "same 4"]  # last resort: the last round's first candidate + suffix
    assert stats.suffixed == 27 and stats.items == 30
    assert stats.second_attempt == 27 and stats.longer_id == 27
    assert stats.max_attempts == 21 and stats.attempts_histogram == {1: 3, 21: 27}


def test_adversarial_generator_with_empty_and_taken_ids():
    ids, stats = assign_unique_ids(["x", "y", "z"], lambda t, p, lo, hi: [["", "!!"] for _ in t], taken={"x 2"})
    assert ids == ["x 3", "y 2", "z 2"] and stats.suffixed == 3  # no candidate at all: base from the text


def staged(texts, penalty, min_len, max_len):
    """A hand-made generator: the text itself; from penalty 0.3 on also "<text> x"; in the long
    range only "<text> long"."""
    out = []
    for t in texts:
        if min_len >= 10:
            out.append([f"{t} long"])
        elif penalty >= 0.3 - 1e-9:
            out.append([t, f"{t} x"])
        else:
            out.append([t])
    return out


@pytest.mark.parametrize("assign", [assign_unique_ids, assign_unique_ids_sequential])
def test_stats_on_a_hand_made_case(assign):
    texts = ["a", "a", "a", "b", "c", "c", "a"]
    ids, stats = assign(texts, staged)
    # a: round 1; a: round 3 ("a x"); a: round 11 ("a long"); b, c: round 1; c: round 3; a: suffix
    assert ids == ["a", "a x", "a long", "b", "c", "c x", "a long 2"]
    assert stats.items == 7
    assert stats.second_attempt == 4 and stats.second_attempt_share == pytest.approx(4 / 7)
    assert stats.longer_id == 2 and stats.longer_id_share == pytest.approx(2 / 7)
    assert stats.suffixed == 1
    assert stats.attempts_histogram == {1: 3, 3: 2, 11: 1, 21: 1}
    if assign is assign_unique_ids:
        assert stats.rounds == 20 and stats.generated == 7 + 4 + 4 + 2 * 8 + 1 * 9
    else:
        assert stats.rounds == stats.generated == 1 + 3 + 11 + 1 + 1 + 3 + 20


def test_batched_and_sequential_claim_differently_with_the_same_guarantee():
    # "zero" proposes only "q" in round 1, then "q" or "p"; "one" proposes "p" or "r".
    def gen(texts, penalty, lo, hi):
        return [(["q", "p"] if penalty > 0.15 else ["q"]) if t == "zero" else ["p", "r"] for t in texts]

    texts = ["zero", "zero", "one"]
    b_ids, b_stats = assign_unique_ids(texts, gen)
    s_ids, s_stats = assign_unique_ids_sequential(texts, gen)
    # sequential: item 1 takes "p" in its round 2 before item 2 starts; batched: item 2 takes "p"
    # in round 1 before item 1 reaches round 2, so item 1 ends with the suffix rule. Both unique.
    assert s_ids == ["q", "p", "r"] and s_stats.suffixed == 0
    assert b_ids == ["q", "q 2", "p"] and b_stats.suffixed == 1


def hashed(vocab_size=6, k=3):
    """A deterministic pseudo-random generator: candidates depend on (text, penalty, length)."""

    def gen(texts, penalty, lo, hi):
        out = []
        for t in texts:
            h = zlib.crc32(f"{t}|{penalty:.1f}|{lo}".encode())
            words = [f"w{(h >> (4 * j)) % vocab_size}" for j in range(k)]
            out.append([" ".join(words[: 1 + j % 2]) + ("" if lo < 10 else " long") for j in range(k)])
        return out

    return gen


def test_batched_and_sequential_satisfy_the_same_invariants():
    texts = [f"product {i % 40}" for i in range(120)]  # repeated texts: plenty of collisions
    rounds = {}
    for assign in (assign_unique_ids, assign_unique_ids_sequential):
        proposed: dict[str, set[str]] = {}

        def gen(t, p, lo, hi, _g=hashed()):
            out = _g(t, p, lo, hi)
            for text, cands in zip(t, out):
                proposed.setdefault(text, set()).update(cands)
            return out

        ids, stats = assign(texts, gen)
        assert len(ids) == len(texts) and len(set(ids)) == len(ids) and all(i and i == normalize_id(i) for i in ids)
        assert stats.items == len(texts) and stats.suffixed > 0 and 0 < stats.second_attempt < len(texts)
        n_suffix = 0
        for text, x in zip(texts, ids):  # an ID is a candidate proposed for that text, or a suffixed one
            if x not in proposed[text]:
                base, n = x.rsplit(" ", 1)
                assert n.isdigit() and base in proposed[text]
                n_suffix += 1
        assert n_suffix == stats.suffixed
        again, stats2 = assign(texts, hashed())
        assert again == ids and stats2.as_dict().keys() == stats.as_dict().keys()  # deterministic
        assert stats2.suffixed == stats.suffixed and stats2.second_attempt == stats.second_attempt
        rounds[assign.__name__] = stats.rounds
    assert rounds["assign_unique_ids"] <= 20 < rounds["assign_unique_ids_sequential"]


# ---------------------------------------------------------------------------------------------
# Initial IDs
# ---------------------------------------------------------------------------------------------


def test_table_import(tmp_path):
    path = tmp_path / "ids.txt"
    path.write_text("I1 Red Lipstick\nI2 red lipstick.\n\nI3 blue   nail polish\n"
                    "I9 not in dataset\nI1 ignored repeat\nI5\n")
    item_ids = ["I1", "I2", "I3", "I4", "I5"]
    texts = ["title: red lipstick", "title: red lipstick matte", "title: nail polish", "title: foot cream soft",
             "title: hair spray strong"]
    ids, report = import_id_table(item_ids, path, texts)
    assert ids[:3] == ["red lipstick", "red lipstick", "blue nail polish"]
    assert report.missing == ["I4"] and report.unused_table_rows == 1 and report.fallbacks == 2
    assert ids[3] == extractive_ids(texts)[3] and ids[4] == extractive_ids(texts)[4]
    ids, report = initial_ids(item_ids, texts, InitialIds(kind="table", path=str(path)))
    assert ids[:3] == ["red lipstick", "red lipstick 2", "blue nail polish"] and report.suffixed == 1
    assert len(set(ids)) == 5 and report.as_dict()["missing"] == 1
    with pytest.raises(ValueError):
        InitialIds(kind="table")


@pytest.mark.realdata
def test_table_import_amazon_beauty(amazon_beauty_dir):
    from recfm.data import load_dataset

    ds = load_dataset("amazon-beauty")
    ids, report = initial_ids(ds.item_ids, ds.item_text,
                              InitialIds(kind="table", path=str(amazon_beauty_dir / "item_initial_ids.txt")))
    assert report.missing == [] and len(set(ids)) == ds.n_items and all(ids)


def test_extractive_ids():
    texts = [
        "title: Red Lipstick Matte; brand: Acme",
        "title: Red Nail Polish; brand: Acme",
        "title: Blue Nail Polish Glitter; brand: Acme",
        "title: the and of",
    ]
    ids = extractive_ids(texts, max_words=2)
    assert ids[0] == "lipstick matte"  # 'red' and 'acme' are common, field names dropped
    assert ids[1] == "red nail"  # red, nail, polish tie: the earlier words win
    assert ids[2] == "blue glitter"  # kept in text order
    assert ids[3] == "the and"  # nothing but stopwords: keep them
    assert all("title" not in x and "brand" not in x for x in ids)
    assert extractive_ids(texts, 2) == ids


def test_parse_keywords():
    assert parse_keywords("Lipstick, Red, Matte finish, extra", 3) == "lipstick red matte finish"
    assert parse_keywords("1. Nail polish\n2. Red\n3. Nail polish\n4. Glossy", 3) == "nail polish red glossy"
    assert parse_keywords("Keywords: \"serum\"; face / niacinamide\n\nThese keywords...", 5) == "serum face niacinamide"
    assert parse_keywords("Title: Nyx, eye shadow palette, nyx, 10", 3) == "nyx eye shadow palette 10"
    assert parse_keywords("", 3) == "" and parse_keywords(" , ; ", 3) == ""


def test_llm_keywords_with_a_tiny_causal_lm():
    lm_tok = train_tokenizer(ITEMS * 3, vocab_size=240, add_eos=False)
    lm = tiny_llama(lm_tok, seed=3)
    prompt = keyword_prompts(lm_tok, ITEMS[:1], 2)[0]  # no chat template: plain lines
    assert prompt.endswith("Title: Maybelline Color Sensational Lipstick; Maybelline; lips\nKeywords:")
    assert "2 short keywords" in prompt and "Keywords: maybelline, lipstick, matte" in prompt
    ids, answers = llm_keyword_ids(ITEMS[:6], lm, lm_tok, num_keywords=2, batch_size=4, max_new_tokens=8)
    assert len(ids) == len(answers) == 6 and all(x == normalize_id(x) for x in ids)
    assert ids == [parse_keywords(a, 2) for a in answers]
    again, _ = llm_keyword_ids(ITEMS[:6], lm, lm_tok, num_keywords=2, batch_size=6, max_new_tokens=8)
    assert again == ids  # greedy, deterministic, independent of batching
    out, report = initial_ids([f"I{i}" for i in range(6)], ITEMS[:6],
                              InitialIds(kind="keywords_llm", num_keywords=2, max_new_tokens=8, unique=True),
                              model=lm, tokenizer=lm_tok)
    assert all(out) and len(set(out)) == 6 and report.kind == "keywords_llm"
    assert report.fallbacks == sum(1 for x in ids if not x)


# ---------------------------------------------------------------------------------------------
# IDGenerator: warm start, real Algorithm 1, save / load
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def warm(tok):
    targets = extractive_ids(ITEMS, max_words=3)
    gen = IDGenerator(build_seq2seq("tiny", tok, seed=0, dropout_rate=0.0), tok)
    before = gen.loss(ITEMS, targets)
    losses = gen.warm_start(ITEMS, targets, epochs=25, lr=1e-2, batch_size=4, progress=False)
    return gen, targets, before, losses


def test_warm_start_reduces_loss_and_reproduces_targets(warm):
    gen, targets, before, losses = warm
    after = gen.loss(ITEMS, targets)
    assert len(losses) == 25 and losses[-1] < losses[0] and after < 0.1 * before
    first = [c[0] for c in gen.generate_ids(ITEMS, num_groups=1, beams_per_group=2, max_new_tokens=16)]
    assert sum(f == t for f, t in zip(first, targets)) >= 0.75 * len(ITEMS)
    assert not gen.model.training


def test_real_generator_assign_is_unique_and_deterministic(warm, tmp_path):
    gen, targets, _, _ = warm
    texts = ITEMS[:8] + ITEMS[:3]  # three exact duplicates: they must get other IDs
    cfg = UniqueIdConfig(batch_size=5, penalty_step=0.3)  # penalties 0.1, 0.4, 0.7, 1.0 per length range
    ids, stats = gen.assign(texts, cfg)
    assert len(set(ids)) == len(texts) and all(ids)
    assert stats.second_attempt >= 3 and stats.items == len(texts)
    assert gen.assign(texts, cfg)[0] == ids  # same input, same IDs
    s_ids, s_stats = gen.assign(texts, cfg, sequential=True)
    assert len(set(s_ids)) == len(texts) and all(s_ids) and s_ids[0] == ids[0]
    assert s_stats.items == stats.items and s_stats.rounds >= len(texts)
    gen.save_pretrained(tmp_path / "gen")
    again = IDGenerator.from_pretrained(tmp_path / "gen")
    assert again.generate_ids(ITEMS[:4], diversity_penalty=0.3) == gen.generate_ids(ITEMS[:4], diversity_penalty=0.3)


def test_id_generator_rejects_causal_models(tok):
    with pytest.raises(ValueError):
        IDGenerator(tiny_llama(tok), tok)
