"""recfm.textid: the vectorised token trie against the dict-of-dicts reference, and trie-constrained
beam search (tiny T5 and tiny Llama) against ``generate(prefix_allowed_tokens_fn=...)``."""

from __future__ import annotations

import random


import pytest
import torch

pytest.importorskip("transformers", reason="recfm.textid needs transformers (see docs/models.md)")

from helpers import tiny_llama  # noqa: E402

import recfm.textid.constrained as constrained_mod  # noqa: E402
from recfm.models import build_seq2seq, train_tokenizer  # noqa: E402
from recfm.textid.trie import DEAD as DEAD_STATE  # noqa: E402
from recfm.textid import (  # noqa: E402
    DuplicateItemIDError,
    TokenTrie,
    TrieLogitsProcessor,
    constrained_topk,
)
from recfm.textid.reference import DictTrie, make_prefix_allowed_tokens_fn  # noqa: E402


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see the root conftest


# ----------------------------------------------------------------------------- random tries


def random_ids(rng: random.Random, vocab: int, n: int, eos: int, specials: set[int]) -> list[list[int]]:
    """``n`` distinct token sequences with many shared prefixes (stems) and varying lengths."""
    content = [t for t in range(vocab) if t != eos and t not in specials]
    stems = [[rng.choice(content) for _ in range(rng.randint(0, 4))] for _ in range(max(1, n // 4))]
    out: set[tuple[int, ...]] = set()
    while len(out) < n:
        seq = rng.choice(stems) + [rng.choice(content) for _ in range(rng.randint(0, 4))]
        if seq:
            out.add(tuple(seq))
    ids = [list(s) for s in out]
    rng.shuffle(ids)
    return ids


def make_random_trie(seed: int):
    rng = random.Random(seed)
    vocab = rng.randint(4, 300)
    eos = rng.randrange(vocab)
    pad = rng.choice([eos, rng.randrange(vocab)])  # pad == eos (causal LMs) or not (T5)
    # pad may also appear inside IDs when it is a separate token
    specials = set() if rng.random() < 0.5 else {pad}
    n_possible = vocab - 1 - len(specials - {eos})
    n = rng.randint(1, min(200, 4 * n_possible ** 2))
    seqs = random_ids(rng, vocab, n, eos, specials)
    if rng.random() < 0.5:  # some callers terminate their sequences themselves
        seqs = [s + [eos] if rng.random() < 0.5 else s for s in seqs]
    item_ids = None if rng.random() < 0.5 else rng.sample(range(1, 10 * len(seqs) + 1), len(seqs))
    trie = TokenTrie.from_sequences(seqs, eos, pad_token_id=pad, item_ids=item_ids)
    ref = DictTrie(seqs, eos, pad_token_id=pad, item_ids=item_ids)
    return rng, vocab, eos, pad, seqs, trie, ref, item_ids or list(range(1, len(seqs) + 1))


def probe_prefixes(rng: random.Random, vocab: int, eos: int, pad: int, seqs: list[list[int]]) -> list[list[int]]:
    """Every prefix of every ID (with EOS, and with pad/eos after it), plus random invalid ones."""
    out: list[list[int]] = []
    for s in seqs:
        full = s if s[-1] == eos else s + [eos]
        out += [full[:j] for j in range(len(full) + 1)]
        out.append(full + [pad, eos, pad])
        out.append(full + [rng.randrange(vocab)])  # usually invalid after a complete ID
        j = rng.randrange(len(full))
        out.append(full[:j] + [rng.randrange(vocab)] + full[j:])  # an inserted token
        out.append(full[:j] + [vocab + rng.randrange(5)])  # out of the trie's range
        out.append(full[:j] + [-1 - rng.randrange(3)])  # negative id
    out += [[rng.randrange(vocab) for _ in range(rng.randint(1, 6))] for _ in range(50)]
    return out


def pad_rows(prefixes: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prefixes)
    mat = torch.zeros(len(prefixes), width, dtype=torch.long)
    for i, p in enumerate(prefixes):
        mat[i, : len(p)] = torch.tensor(p, dtype=torch.long)
    return mat, torch.tensor([len(p) for p in prefixes])


@pytest.mark.parametrize("seed", range(30))
def test_trie_agrees_with_dict_trie(seed):
    rng, vocab, eos, pad, seqs, trie, ref, item_ids = make_random_trie(seed)
    prefixes = probe_prefixes(rng, vocab, eos, pad, seqs)
    # group by length so each group is one batched walk
    by_len: dict[int, list[list[int]]] = {}
    for p in prefixes:
        by_len.setdefault(len(p), []).append(p)
    width = vocab + 5  # the mask may be wider than the trie's tokens
    for length, group in by_len.items():
        mat = torch.tensor(group, dtype=torch.long).view(len(group), length)
        nodes = trie.walk(mat)
        expected = [ref.get(p) for p in group]
        want = torch.zeros(len(group), width, dtype=torch.bool)
        r_idx = [r for r, e in enumerate(expected) for _ in (e or [])]
        c_idx = [t for e in expected for t in (e or [])]
        want[r_idx, c_idx] = True
        assert torch.equal(trie.allowed_mask(nodes, width), want), (length, group)
        assert (nodes >= 0).tolist() == [e is not None for e in expected], (length, group)
        assert trie.items_at(nodes).tolist() == [ref.item(p) for p in group], (length, group)
        if length:  # step from the parent state is the same as walking the whole prefix
            parents = trie.walk(mat[:, :-1])
            assert torch.equal(trie.step(parents, mat[:, -1]), nodes)
    # the sparse form and the stored sequences
    nodes = trie.walk(pad_rows([p for p in prefixes if p])[0][:, :1])
    rows, toks = trie.allowed_tokens(nodes)
    dense = torch.zeros(nodes.shape[0], width, dtype=torch.bool)
    dense[rows, toks] = True
    assert torch.equal(dense, trie.allowed_mask(nodes, width))
    by_item = {int(i): (s if s[-1] == eos else s + [eos]) for i, s in zip(item_ids, seqs)}
    assert {int(i): s for i, s in zip(trie.items.tolist(), trie.sequences())} == by_item
    some = trie.items[rng.randrange(trie.n_items)].item()
    assert trie.item_sequence(some) == by_item[some]


@pytest.mark.parametrize("seed", range(12))
def test_mask_scores_matches_allowed_mask(seed):
    """Sparse, heavy (dense cached rows, broadcast or not) and mixed batches, in place or not."""
    rng = random.Random(1000 + seed)
    vocab = rng.choice([120, 200, 400])
    eos, pad = 1, 0
    # a wide root (> 64 first tokens: "heavy") and ordinary nodes below it
    seqs = random_ids(rng, vocab, rng.randint(150, 400), eos, {pad})
    firsts = {s[0] for s in seqs}
    seqs += [[t, rng.randrange(2, vocab)] for t in range(2, 100) if t not in firsts]
    trie = TokenTrie.from_sequences(seqs, eos, pad_token_id=pad)
    width = vocab + rng.randint(0, 7)
    depth1 = trie.walk(torch.tensor([[s[0]] for s in seqs]))
    deep = trie.walk(torch.tensor([s[:2] for s in seqs if len(s) >= 2]))
    leaf = trie.item_leaf
    cases = {
        "root": trie.root(12),
        "light": depth1[:30],
        "mixed": torch.cat([trie.root(3), depth1[:10], torch.tensor([-1, -1]), leaf[:4], deep[:5]]),
        "dead": torch.full((4,), -1),
    }
    hnodes, _, _ = trie.heavy_masks(width)
    if hnodes.numel() > 1:
        cases["heavy-distinct"] = hnodes.repeat(3)
    assert int(trie.degree[0]) > 64 and 0 in hnodes.tolist()
    for name, nodes in cases.items():
        scores = torch.randn(nodes.shape[0], width)
        expected = torch.where(trie.allowed_mask(nodes, width), scores, -torch.inf)
        copy = scores.clone()
        out = trie.mask_scores(scores, nodes)
        assert torch.equal(out, expected), name
        assert torch.equal(scores, copy), f"{name}: inplace=False modified its input"
        out = trie.mask_scores(scores, nodes, inplace=True)
        assert out.data_ptr() == scores.data_ptr() and torch.equal(scores, expected), name


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("collide", [False, True])
def test_processor_states_under_beam_reordering(seed, collide, monkeypatch):
    """The cached states equal a fresh walk while rows are permuted, duplicated and broken as beam
    search does; with a degenerate hash (every row collides) the exact check keeps them right."""
    if collide:
        monkeypatch.setattr(constrained_mod, "_HASH_MULT", 0)
    rng = random.Random(2000 + seed)
    vocab, eos, pad = 60, 1, 0
    seqs = random_ids(rng, vocab, 80, eos, {pad})
    trie = TokenTrie.from_sequences(seqs, eos, pad_token_id=pad)
    ref = DictTrie(seqs, eos, pad_token_id=pad)
    rows, prompt = 24, rng.randint(1, 4)
    ids = torch.randint(2, vocab, (rows, prompt))
    cached = TrieLogitsProcessor(trie, prompt)
    fresh = TrieLogitsProcessor(trie, prompt, cache=False)
    for _ in range(trie.max_len + 3):
        assert torch.equal(cached.states(ids), fresh.states(ids))
        assert torch.equal(fresh.states(ids), trie.walk(ids[:, prompt:]))
        # next tokens: mostly allowed ones (as constrained beams), sometimes anything
        nxt = []
        for r in range(rows):
            allowed = ref.get(ids[r, prompt:].tolist())
            nxt.append(rng.choice(allowed) if allowed and rng.random() < 0.9 else rng.randrange(vocab))
        ids = torch.cat([ids, torch.tensor(nxt)[:, None]], 1)
        ids = ids[torch.tensor([rng.randrange(rows) for _ in range(rows)])]  # reorder / duplicate rows
    # a call that does not continue the previous one (a new batch) is walked from scratch
    other = torch.randint(2, vocab, (5, prompt + 2))
    assert torch.equal(cached.states(other), trie.walk(other[:, prompt:]))


def test_duplicates_and_bad_sequences_raise():
    with pytest.raises(DuplicateItemIDError, match=r"items \[2, 4, 6\].*\[3, 1\]") as err:
        TokenTrie.from_sequences([[5, 2], [3], [5, 2, 7], [3, 1], [4], [3]], eos_token_id=1)
    assert err.value.clashes == [[2, 4, 6]]
    with pytest.raises(DuplicateItemIDError, match=r"items \[10, 30\]"):
        TokenTrie.from_sequences([[5, 2], [6], [5, 2, 1]], eos_token_id=1, item_ids=[10, 20, 30])
    with pytest.raises(DuplicateItemIDError):
        DictTrie([[5, 2], [5, 2]], eos_token_id=1)
    with pytest.raises(ValueError, match="EOS"):
        TokenTrie.from_sequences([[5, 1, 2]], eos_token_id=1)
    with pytest.raises(ValueError, match="empty"):
        TokenTrie.from_sequences([[5], []], eos_token_id=1)
    with pytest.raises(ValueError, match="empty"):
        TokenTrie.from_sequences([[5], [1]], eos_token_id=1)
    with pytest.raises(ValueError, match=">= 1"):
        TokenTrie.from_sequences([[5]], eos_token_id=1, item_ids=[0])
    tok = train_tokenizer(["red matte lipstick", "hydro boost gel", "olay cream"] * 3, vocab_size=120)
    with pytest.raises(DuplicateItemIDError, match="'olay cream'"):
        TokenTrie.from_texts(["red matte lipstick", "olay cream", "hydro boost gel", "olay  cream"], tok)


def test_build_100k_items():
    # Correctness at catalog scale; build speed is measured by the performance benchmark, not here.
    gen = torch.Generator().manual_seed(0)
    vocab, n = 32000, 100_000
    heads = torch.randint(3, vocab, (3000, 3), generator=gen)  # shared prefixes
    rows = torch.cat([heads[torch.randint(0, 3000, (n,), generator=gen)],
                      torch.randint(3, vocab, (n, 7), generator=gen)], 1).tolist()
    head_len = torch.randint(1, 4, (n,), generator=gen).tolist()
    tail_len = torch.randint(4, 8, (n,), generator=gen).tolist()
    # the last two tokens number the item: unique by construction
    seqs = [r[:h] + r[3 : 3 + t] + [3 + i % 30000, 3 + i // 30000]
            for i, (r, h, t) in enumerate(zip(rows, head_len, tail_len))]
    trie = TokenTrie.from_sequences(seqs, eos_token_id=1, pad_token_id=0)
    assert trie.n_items == n and trie.max_len == 3 + 7 + 2 + 1
    probe = seqs[:: len(seqs) // 500]
    nodes = trie.walk(torch.tensor([s[:6] for s in probe]))
    assert bool((nodes > 0).all())
    full = trie.walk(torch.tensor([s + [1, 0] for s in probe if len(s) == 9]))
    assert trie.items_at(full).tolist() == [i + 1 for i in range(0, n, n // 500) if len(seqs[i]) == 9]


# ----------------------------------------------------------------------------- generation

TITLES = [
    "sedu ionic ceramic tourmaline flat iron", "sedu ionic hair dryer", "sedu ceramic round brush",
    "maybelline color sensational lipstick red", "maybelline color sensational lipstick pink",
    "maybelline great lash mascara black", "neutrogena hydro boost water gel",
    "neutrogena hydro boost eye cream", "neutrogena oil free acne wash", "olay regenerist micro sculpting cream",
    "olay regenerist serum", "olay total effects cream", "cerave foaming facial cleanser",
    "cerave moisturizing cream", "loreal voluminous original mascara", "loreal true match foundation",
    "burts bees lip balm beeswax", "burts bees lip balm mango", "the ordinary niacinamide serum",
    "the ordinary hyaluronic acid serum", "revlon one step hair dryer", "revlon nail enamel red",
    "rene furterer complexe 5", "raw mango butter 16 oz", "bellesha hands free foot scrubber",
    "crystal glass nail file buffer", "titania double foot file", "avani dead sea mineral mud",
    "derma e psorzem cream", "vitatress biotin shampoo", "garnier fructis sleek shine",
    "garnier micellar cleansing water", "dove beauty bar white", "dove men care body wash",
    "nivea soft moisturizing cream", "nivea lip butter vanilla", "essie nail polish ballet slippers",
    "essie gel couture top coat", "opi nail lacquer big apple red", "opi infinite shine base coat",
]
IDS = [" ".join(t.split()[:5]) for t in TITLES]  # short unique textual IDs, many shared prefixes


def make_prompts(rng: random.Random, n: int) -> list[str]:
    return [
        "user has purchased items " + ", ".join(rng.sample(IDS, rng.randint(1, 5))) + "; predict the next item"
        for _ in range(n)
    ]


@pytest.fixture(scope="module")
def catalog():
    tok = train_tokenizer(TITLES + make_prompts(random.Random(0), 5), vocab_size=300)
    trie = TokenTrie.from_texts(IDS, tok)
    return tok, trie


@pytest.fixture(scope="module")
def t5(catalog):
    tok, _ = catalog
    return build_seq2seq("tiny", tok, seed=0).eval()


@pytest.fixture(scope="module")
def llama(catalog):
    tok, _ = catalog
    return tiny_llama(len(tok), heads=4, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                      tie_word_embeddings=True, isolate_rng=True)


def reference_topk(model, tok, trie, prompts, k, beams):
    """generate(prefix_allowed_tokens_fn=DictTrie...) and a plain-Python mapping to items."""
    ref = DictTrie.from_token_trie(trie)
    enc_dec = model.config.is_encoder_decoder
    enc = tok(prompts, return_tensors="pt", padding=True, padding_side="right" if enc_dec else "left")
    plen = 1 if enc_dec else enc["input_ids"].shape[1]
    with torch.no_grad():
        out = model.generate(
            **enc, num_beams=beams, num_return_sequences=beams, max_new_tokens=trie.max_len, do_sample=False,
            output_scores=True, return_dict_in_generate=True, eos_token_id=trie.eos_token_id,
            pad_token_id=trie.pad_token_id, prefix_allowed_tokens_fn=make_prefix_allowed_tokens_fn(ref, plen),
        )
    rows = []
    for b in range(len(prompts)):
        got: list[tuple[int, float]] = []
        for j in range(b * beams, (b + 1) * beams):
            item = ref.item(out.sequences[j, plen:].tolist())
            score = float(out.sequences_scores[j])
            if item and score > -1e6 and item not in {i for i, _ in got}:
                got.append((item, score))
        got.sort(key=lambda x: -x[1])
        rows.append(got[:k])
    return rows


@pytest.mark.parametrize("backbone", ["t5", "llama"])
def test_constrained_topk_matches_prefix_allowed_tokens_fn(backbone, catalog, request):
    model = request.getfixturevalue(backbone)
    tok, trie = catalog
    prompts = make_prompts(random.Random(1), 4)  # different lengths: padded in the batch
    k = 10
    items, scores = constrained_topk(model, tok, trie, prompts, k)
    assert items.shape == scores.shape == (len(prompts), k)
    expected = reference_topk(model, tok, trie, prompts, k, beams=k)
    for b, row in enumerate(expected):
        assert items[b, : len(row)].tolist() == [i for i, _ in row]
        torch.testing.assert_close(scores[b, : len(row)], torch.tensor([s for _, s in row]), atol=1e-5, rtol=0)
        assert len(row) == k, "the tiny catalog has enough IDs for 10 distinct items"
    # every item is real and distinct, best first
    assert bool(((items >= 1) & (items <= len(IDS))).all())
    assert all(len(set(r)) == k for r in items.tolist())
    assert bool((scores[:, :-1] >= scores[:, 1:]).all())
    # the same search through constrained_topk's slow path
    slow_items, slow_scores = constrained_topk(model, tok, trie, prompts, k, constraint="prefix_fn")
    assert torch.equal(slow_items, items)
    torch.testing.assert_close(slow_scores, scores, atol=1e-5, rtol=0)
    # one prompt at a time gives the same lists as the padded batch
    for b, p in enumerate(prompts):
        one_items, one_scores = constrained_topk(model, tok, trie, [p], k)
        assert one_items[0].tolist() == items[b].tolist()
        torch.testing.assert_close(one_scores[0], scores[b], atol=1e-5, rtol=0)


@pytest.mark.parametrize("backbone", ["t5", "llama"])
def test_wider_beams_and_encoded_batch(backbone, catalog, request):
    model = request.getfixturevalue(backbone)
    tok, trie = catalog
    enc_dec = model.config.is_encoder_decoder
    prompts = make_prompts(random.Random(2), 4)
    enc = tok(prompts, return_tensors="pt", padding=True, padding_side="right" if enc_dec else "left")
    k = 5
    items, scores = constrained_topk(model, tok, trie, enc, k, num_beams=12)
    expected = reference_topk(model, tok, trie, prompts, k, beams=12)
    assert items.tolist() == [[i for i, _ in row] for row in expected]


def test_exclusion_edges_block_the_highest_fully_excluded_nodes():
    # items 1: [5, 6], 2: [5, 7], 3: [8], 4: [5] (EOS = 1 appended to each)
    trie = TokenTrie.from_sequences([[5, 6], [5, 7], [8], [5]], eos_token_id=1, pad_token_id=0)
    five, eight = trie.walk(torch.tensor([[5], [8]])).tolist()
    five_six = int(trie.walk(torch.tensor([[5, 6]]))[0])
    assert trie.subtree_items[[0, five, eight, five_six]].tolist() == [4, 3, 1, 1]
    slots = trie.n_nodes + 1
    edges = trie.exclusion_edges([{1}, {1, 2}, {4}, {1, 2, 4}, {1, 2, 3, 4}, set(), {99, 0}])
    assert edges.n_prompts == 7
    assert sorted(zip(edges.keys.tolist(), edges.tokens.tolist())) == sorted([
        (0 * slots + five, 6),                       # item 1 alone under "5 6": the edge into it
        (1 * slots + five, 6), (1 * slots + five, 7),  # two of the three items under "5"
        (2 * slots + five, 1),                       # item 4 is "5" + EOS: its leaf, beside items 1 and 2
        (3 * slots + 0, 5),                          # everything under "5": the root's edge
        (4 * slots + 0, 5), (4 * slots + 0, 8),      # every item; unknown ids and empty sets block nothing
    ])
    # 2 prompts x 2 beams, the beams at the root and at "5"
    scores = torch.zeros(4, 10)
    trie.mask_excluded(scores, torch.tensor([0, five, 0, five]), trie.exclusion_edges([{1}, {1, 2, 4}]))
    assert {tuple(x) for x in torch.nonzero(scores == -torch.inf).tolist()} == {(1, 6), (2, 5)}
    scores = torch.zeros(2, 10)  # a dead beam (-1) is left alone
    trie.mask_excluded(scores, torch.tensor([DEAD_STATE, five]), trie.exclusion_edges([{4}]))
    assert {tuple(x) for x in torch.nonzero(scores == -torch.inf).tolist()} == {(1, 1)}
    with pytest.raises(ValueError, match="whole number of beams"):
        trie.mask_excluded(torch.zeros(3, 10), torch.zeros(3, dtype=torch.long), trie.exclusion_edges([{1}, {2}]))


@pytest.mark.parametrize("backbone", ["t5", "llama"])
def test_exclusion_inside_the_search(backbone, catalog, request):
    """Excluded items are forbidden inside the beam search: the vectorised trie and the slow
    prefix_allowed_tokens_fn reference give the same beams; with beams for every item the search
    is exhaustive and equals the full ranking minus the excluded items; a prompt's answer does not
    depend on the other prompts (their histories) in the batch; the beam width stays k."""
    model = request.getfixturevalue(backbone)
    tok, trie = catalog
    prompts = make_prompts(random.Random(2), 4)
    k = 5
    full, full_scores = constrained_topk(model, tok, trie, prompts, len(IDS))  # every item, exhaustive
    assert bool((full > 0).all())
    sedu = {i + 1 for i, t in enumerate(IDS) if t.startswith("sedu")}  # a whole shared prefix
    exclude = [set(full[0, :3].tolist()), set(full[1, :1].tolist()) | sedu | {0, 10_000},
               set(full[2, : len(IDS) - 2].tolist()), set()]  # unknown ids are ignored; row 2 keeps 2 items
    items, scores = constrained_topk(model, tok, trie, prompts, k, exclude=exclude)
    slow_items, slow_scores = constrained_topk(model, tok, trie, prompts, k, exclude=exclude, constraint="prefix_fn")
    assert torch.equal(items, slow_items)
    torch.testing.assert_close(scores, slow_scores, atol=1e-5, rtol=0)
    for b in range(len(prompts)):
        assert not set(items[b].tolist()) & exclude[b]
        alone_items, alone_scores = constrained_topk(model, tok, trie, [prompts[b]], k, exclude=[exclude[b]])
        assert alone_items[0].tolist() == items[b].tolist()
        torch.testing.assert_close(alone_scores[0], scores[b], atol=1e-5, rtol=0)
    assert items[2, :2].tolist() == [i for i in full[2].tolist() if i not in exclude[2]] and items[2, 2:].tolist() == [0] * 3
    exact, exact_scores = constrained_topk(model, tok, trie, prompts, k, num_beams=len(IDS), exclude=exclude)
    for b in range(len(prompts)):
        kept = [(i, sc) for i, sc in zip(full[b].tolist(), full_scores[b].tolist()) if i not in exclude[b]][:k]
        assert exact[b, : len(kept)].tolist() == [i for i, _ in kept]
        torch.testing.assert_close(exact_scores[b, : len(kept)], torch.tensor([sc for _, sc in kept]), atol=1e-5, rtol=0)
    seen = []
    real_generate = model.generate
    def spy(*args, **kwargs):
        seen.append(kwargs["num_beams"])
        return real_generate(*args, **kwargs)
    model.generate = spy
    try:
        constrained_topk(model, tok, trie, prompts, k, exclude=exclude)
    finally:
        del model.generate
    assert seen == [k]


def test_short_catalog_pads_and_unconstrained_drops_non_items(t5, catalog):
    tok, _ = catalog
    few = TokenTrie.from_texts(IDS[:3], tok, item_ids=[7, 8, 9])
    items, scores = constrained_topk(t5, tok, few, make_prompts(random.Random(3), 2), 5)
    for row, srow in zip(items.tolist(), scores.tolist()):
        assert sorted(row[:3]) == [7, 8, 9] and row[3:] == [0, 0]
        assert all(s > -1e6 for s in srow[:3]) and srow[3:] == [-float("inf")] * 2
    _, trie = catalog
    items, scores = constrained_topk(t5, tok, trie, make_prompts(random.Random(3), 2), 5, constraint="none")
    real = items > 0
    assert bool(((items <= len(IDS)) & (torch.isfinite(scores) == real)).all())


def test_processor_in_greedy_search_yields_items(t5, llama, catalog):
    """Outside beam search: greedy decoding of a batch; finished rows may only continue with pad/eos."""
    tok, trie = catalog
    prompts = make_prompts(random.Random(4), 5)
    for model in (t5, llama):
        enc_dec = model.config.is_encoder_decoder
        enc = tok(prompts, return_tensors="pt", padding=True, padding_side="right" if enc_dec else "left")
        plen = 1 if enc_dec else enc["input_ids"].shape[1]
        proc = TrieLogitsProcessor(trie, plen)
        with torch.no_grad():
            out = model.generate(**enc, do_sample=False, num_beams=1, max_new_tokens=trie.max_len + 2,
                                 logits_processor=[proc], eos_token_id=trie.eos_token_id,
                                 pad_token_id=trie.pad_token_id)
        items = trie.items_at(trie.walk(out[:, plen:]))
        assert bool((items > 0).all()), out[:, plen:]
