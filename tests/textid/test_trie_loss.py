"""The trie-restricted loss against a slow per-token implementation on random tries."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recfm.textid.trie import TokenTrie
from recfm.textid.trie_loss import IGNORE, CopyBonus, prefix_states, trie_cross_entropy, trie_log_probs

EOS, PAD = 1, 0


def random_trie(seed: int, n_items: int = 40, vocab: int = 12) -> tuple[TokenTrie, list[list[int]]]:
    rng = np.random.default_rng(seed)
    seqs: set[tuple[int, ...]] = set()
    while len(seqs) < n_items:
        seqs.add(tuple(int(t) for t in rng.integers(2, vocab, size=int(rng.integers(1, 5)))))
    seqs_l = [list(s) for s in sorted(seqs)]
    return TokenTrie.from_sequences(seqs_l, EOS, pad_token_id=PAD), seqs_l


def slow_item_log_prob(logits: torch.Tensor, seq: list[int], trie: TokenTrie) -> float:
    """Walk the ID token by token; softmax over the children of the current prefix."""
    logits = logits.detach()
    total, node = 0.0, trie.root(1)
    for j, tok in enumerate(seq + [trie.eos_token_id]):
        allowed, = trie.allowed_tokens(node)[1:]
        allowed = allowed.tolist()
        if len(allowed) > 1:
            row = logits[j, allowed]
            total += float(row[allowed.index(tok)] - torch.logsumexp(row, 0))
        node = trie.step(node, torch.tensor([tok]))
    return total


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cross_entropy_matches_the_slow_walk(seed):
    trie, seqs = random_trie(seed)
    gen = torch.Generator().manual_seed(seed)
    rows = [seqs[i] for i in torch.randint(len(seqs), (16,), generator=gen).tolist()]
    width = max(len(s) for s in rows) + 3
    logits = torch.randn(len(rows), width, 12, generator=gen)
    labels = torch.full((len(rows), width), IGNORE)
    starts = torch.randint(0, 3, (len(rows),), generator=gen).tolist()  # the ID may start anywhere (causal LMs)
    for i, (s, a) in enumerate(zip(rows, starts)):
        labels[i, a : a + len(s) + 1] = torch.tensor(s + [EOS])
    per_row = trie_cross_entropy(logits, labels, trie, reduction="none")
    for i, (s, a) in enumerate(zip(rows, starts)):
        assert per_row[i].item() == pytest.approx(-slow_item_log_prob(logits[i, a:], s, trie), abs=1e-5)
    # the mean runs over the positions with a choice only
    free = sum(1 for s in rows for j in range(len(s) + 1)
               if len(trie.allowed_tokens(trie.walk(torch.tensor([s[:j]]) if j else torch.zeros(1, 0, dtype=torch.long)))[1]) > 1)
    assert trie_cross_entropy(logits, labels, trie).item() == pytest.approx(per_row.sum().item() / free, rel=1e-5)


def every_id_position(seed: int):
    """A random trie over a 30-word vocabulary, every ID's tokens (EOS included) as target positions, and a
    seeded generator: (trie, generator, targets [M], trie states before them [M])."""
    trie, seqs = random_trie(seed, vocab=30)
    targets = torch.tensor([s + [EOS] + [PAD] * (5 - len(s)) for s in seqs])
    valid = targets != PAD
    return trie, torch.Generator().manual_seed(seed), targets[valid], prefix_states(trie, targets)[valid]


def masked_log_softmax_of_targets(logits: torch.Tensor, states: torch.Tensor, targets: torch.Tensor,
                                  trie: TokenTrie) -> torch.Tensor:
    """The slow form: full logits masked to the allowed tokens, log-softmax, the target's entry."""
    return torch.log_softmax(trie.mask_scores(logits, states), dim=-1).gather(1, targets[:, None]).squeeze(1)


@pytest.mark.parametrize("seed", [3, 4])
def test_sparse_log_probs_equal_masked_log_softmax_and_have_finite_gradients(seed):
    trie, gen, targets, states = every_id_position(seed)
    hidden = torch.randn(len(targets), 8, generator=gen, requires_grad=True)
    weight = torch.randn(30, 8, generator=gen, requires_grad=True)
    bias = torch.randn(30, generator=gen)
    lp = trie_log_probs(hidden, states, targets, weight, bias, trie)
    expected = masked_log_softmax_of_targets(hidden @ weight.T + bias, states, targets, trie)
    torch.testing.assert_close(lp, expected, atol=1e-5, rtol=1e-5)
    lp.sum().backward()
    assert torch.isfinite(hidden.grad).all() and torch.isfinite(weight.grad).all()
    # a target the trie does not allow at its state is impossible
    bad = trie_log_probs(hidden[:1].detach(), torch.tensor([0]), torch.tensor([EOS]), weight.detach(), bias, trie)
    assert bad.item() == -np.inf


def slow_copy_bonus(recent: torch.Tensor, weight: torch.Tensor, first_word: int, vocab: int) -> torch.Tensor:
    """``[M, vocab]``: for every row and token, weight[k] times how often the k-th recent ID holds the token."""
    out = torch.zeros(recent.shape[0], vocab)
    for m in range(recent.shape[0]):
        for k in range(recent.shape[1]):
            for tok in recent[m, k].tolist():
                if tok >= first_word:
                    out[m, tok] += weight[k]
    return out


@pytest.mark.parametrize("seed", [5, 6])
def test_copy_bonus_and_log_probs_with_it_equal_the_slow_dense_form(seed):
    trie, gen, targets, states = every_id_position(seed)
    m = len(targets)
    recent = torch.randint(0, 30, (m, 3, 4), generator=gen)  # 3 recent IDs of 4 words (0 = padding, 1 = EOS)
    weight = torch.tensor([1.5, -0.5, 0.25], requires_grad=True)
    copy = CopyBonus(recent, weight, first_word=2)
    slow = slow_copy_bonus(recent, weight.detach(), 2, 30)
    torch.testing.assert_close(copy.dense(torch.arange(30), 30), slow)
    picked = torch.tensor([7, 2, 29, 3])
    torch.testing.assert_close(copy.dense(picked, 30), slow[:, picked])
    rows = torch.randint(0, m, (50,), generator=gen)
    tokens = torch.randint(0, 30, (50,), generator=gen)
    torch.testing.assert_close(copy.pairs(rows, tokens), slow[rows, tokens])
    hidden = torch.randn(m, 8, generator=gen)
    out_weight = torch.randn(30, 8, generator=gen)
    bias = torch.randn(30, generator=gen)
    lp = trie_log_probs(hidden, states, targets, out_weight, bias, trie, copy)
    expected = masked_log_softmax_of_targets(hidden @ out_weight.T + bias + slow, states, targets, trie)
    torch.testing.assert_close(lp, expected, atol=1e-5, rtol=1e-5)
    lp.sum().backward()
    assert weight.grad is not None and torch.isfinite(weight.grad).all() and weight.grad.abs().sum() > 0


def test_sparse_log_probs_of_bf16_states_under_autocast_are_float32_and_close():
    trie, gen, targets, states = every_id_position(5)
    hidden = torch.randn(len(targets), 8, generator=gen).bfloat16()  # what a bf16 decoder returns
    weight, bias = torch.randn(30, 8, generator=gen), torch.randn(30, generator=gen)
    exact = trie_log_probs(hidden.float(), states, targets, weight, bias, trie)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        lp = trie_log_probs(hidden, states, targets, weight, bias, trie)
    assert lp.dtype == torch.float32
    torch.testing.assert_close(lp, exact, atol=0.1, rtol=0.02)  # bf16 root matmul, float32 logsumexp


def test_seq2seq_recommender_loss_is_the_trie_cross_entropy_of_its_logits(tmp_path, monkeypatch):
    from recfm.data.registry import load_dataset
    from tests.textid.test_training import tiny_model, write_shop

    monkeypatch.setenv("RECFM_CACHE_DIR", str(tmp_path / "cache"))
    torch.manual_seed(0)
    data = load_dataset(write_shop(tmp_path / "shop"), use_cache=False)
    model = tiny_model(data, prompt_ids="item", loss="trie", warm_start_epochs=0)
    model._build(lambda s: None)
    rec = model.rec
    histories, targets = [[1, 2, 3], [4], [5, 6]], [4, 5, 7]
    batch = rec.batch(rec.prompts(histories), targets)
    got = rec.loss(batch)
    logits = rec.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).logits
    trie, slow, free = rec.items.trie, 0.0, 0
    for i, t in enumerate(targets):
        seq = rec.items.tokens[t]
        slow += slow_item_log_prob(logits[i], seq, trie)
        free += sum(len(trie.allowed_tokens(trie.walk(torch.tensor([seq[:j]], dtype=torch.long)))[1]) > 1
                    for j in range(len(seq) + 1))
    assert got.item() == pytest.approx(-slow / free, rel=1e-5)
    rec.loss_kind = "full"
    assert rec.loss(batch).item() > got.item()  # the full softmax also spreads mass over impossible tokens
