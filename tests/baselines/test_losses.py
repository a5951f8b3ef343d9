"""The next-item losses against their definitions: sampled softmax with every item as a negative is
the full softmax, gBCE with beta = 1 is plain BCE, and gradients stay finite on short and padded input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from recfm.baselines.losses import (batch_generator, draw_negatives, gbce_beta, gbce_loss, sampled_softmax_loss)
from recfm.baselines.trainer import full_softmax_cross_entropy


@pytest.fixture()
def batch():
    torch.manual_seed(0)
    n_items, d, n = 30, 8, 12
    return torch.randn(n, d, dtype=torch.float64), torch.randn(n_items, d, dtype=torch.float64), torch.randint(0, n_items, (n,))


def test_sampled_softmax_with_all_items_as_negatives_is_full_cross_entropy(batch):
    hidden, items, labels = batch
    every_item = torch.arange(items.shape[0])
    full = F.cross_entropy(hidden @ items.T, labels)
    assert sampled_softmax_loss(hidden, items, labels, every_item) == pytest.approx(full.item(), abs=1e-10)
    # uniform logQ is a constant shift of every logit: the same loss
    log_q = torch.full((items.shape[0],), -torch.log(torch.tensor(30.0, dtype=torch.float64)))
    assert sampled_softmax_loss(hidden, items, labels, every_item, log_q) == pytest.approx(full.item(), abs=1e-10)
    assert full_softmax_cross_entropy(hidden, items, labels).item() == pytest.approx(full.item(), abs=1e-10)


def test_logq_correction_subtracts_the_log_sampling_probability(batch):
    hidden, items, labels = batch
    negatives = torch.tensor([3, 7, 7, 11])
    log_q = torch.log(torch.rand(items.shape[0], dtype=torch.float64) + 0.1)
    pos = (hidden * items[labels]).sum(1) - log_q[labels]
    neg = hidden @ items[negatives].T - log_q[negatives]
    neg = neg.masked_fill(negatives.unsqueeze(0) == labels.unsqueeze(1), float("-inf"))
    expected = (torch.logsumexp(torch.cat([pos[:, None], neg], 1), 1) - pos).mean()
    assert sampled_softmax_loss(hidden, items, labels, negatives, log_q).item() == pytest.approx(expected.item(), abs=1e-10)


def test_gbce_with_beta_one_is_plain_bce_and_beta_follows_the_paper(batch):
    hidden, items, labels = batch
    negatives = torch.tensor([0, 5, 9, 21])
    pos = (hidden * items[labels]).sum(1)
    neg = hidden @ items[negatives].T
    hit = negatives.unsqueeze(0) == labels.unsqueeze(1)
    bce = F.binary_cross_entropy_with_logits(pos, torch.ones_like(pos), reduction="none")
    bce = bce + (F.binary_cross_entropy_with_logits(neg, torch.zeros_like(neg), reduction="none") * ~hit).sum(1)
    assert gbce_loss(hidden, items, labels, negatives, beta=1.0).item() == pytest.approx(bce.mean().item(), abs=1e-10)
    assert gbce_beta(256, 12102, t=0.0) == pytest.approx(1.0)
    assert gbce_beta(256, 12102, t=1.0) == pytest.approx(256 / 12101)
    alpha = 256 / 12101
    assert gbce_beta(256, 12102, t=0.75) == pytest.approx(alpha * (0.75 * (1 - 1 / alpha) + 1 / alpha))


@pytest.mark.parametrize("loss", ["sampled_softmax", "gbce"])
def test_gradients_are_finite_even_when_every_negative_is_the_target(loss):
    torch.manual_seed(1)
    hidden = torch.randn(1, 4, requires_grad=True)  # one target: a one-item history
    items = torch.randn(5, 4, requires_grad=True)
    labels = torch.tensor([2])
    negatives = torch.tensor([2, 2, 2])
    value = (sampled_softmax_loss(hidden, items, labels, negatives) if loss == "sampled_softmax"
             else gbce_loss(hidden, items, labels, negatives, beta=0.5))
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(hidden.grad).all() and torch.isfinite(items.grad).all()


@pytest.mark.parametrize("loss", ["sampled_softmax", "gbce"])
def test_per_sequence_negatives_equal_each_target_scored_against_its_sequences_own(loss):
    torch.manual_seed(3)
    n_items, d = 25, 6
    items = torch.randn(n_items, d, dtype=torch.float64, requires_grad=True)
    rows = torch.tensor([0, 0, 0, 2, 2, 3])  # sequence 1 has no target (all padding)
    hidden = torch.randn(len(rows), d, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, n_items, (len(rows),))
    negatives = torch.randint(0, n_items, (4, 7))
    negatives[2, 3] = labels[3]  # an accidental hit is masked only in its own sequence's row
    log_q = torch.log(torch.rand(n_items, dtype=torch.float64) + 0.1)

    def one(i):
        shared = negatives[rows[i]]
        if loss == "sampled_softmax":
            return sampled_softmax_loss(hidden[i:i + 1], items, labels[i:i + 1], shared, log_q)
        return gbce_loss(hidden[i:i + 1], items, labels[i:i + 1], shared, beta=0.3)

    slow = torch.stack([one(i) for i in range(len(rows))]).mean()
    fast = (sampled_softmax_loss(hidden, items, labels, negatives, log_q, rows) if loss == "sampled_softmax"
            else gbce_loss(hidden, items, labels, negatives, beta=0.3, rows=rows))
    assert fast.item() == pytest.approx(slow.item(), abs=1e-12)
    slow_grads = torch.autograd.grad(slow, (hidden, items))
    fast_grads = torch.autograd.grad(fast, (hidden, items))
    for a, b in zip(fast_grads, slow_grads):
        assert torch.allclose(a, b, atol=1e-12)


@pytest.mark.parametrize("loss", ["sampled_softmax", "gbce"])
def test_per_position_negatives_equal_each_target_scored_against_its_own(loss):
    torch.manual_seed(4)
    n_items, d, n = 25, 6, 9
    items = torch.randn(n_items, d, dtype=torch.float64, requires_grad=True)
    hidden = torch.randn(n, d, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, n_items, (n,))
    negatives = torch.randint(0, n_items, (n, 5))
    negatives[4, 2] = labels[4]

    def one(i):
        if loss == "sampled_softmax":
            return sampled_softmax_loss(hidden[i:i + 1], items, labels[i:i + 1], negatives[i])
        return gbce_loss(hidden[i:i + 1], items, labels[i:i + 1], negatives[i], beta=0.3)

    slow = torch.stack([one(i) for i in range(n)]).mean()
    fast = (sampled_softmax_loss(hidden, items, labels, negatives) if loss == "sampled_softmax"
            else gbce_loss(hidden, items, labels, negatives, beta=0.3))
    assert fast.item() == pytest.approx(slow.item(), abs=1e-12)
    for a, b in zip(torch.autograd.grad(fast, (hidden, items)), torch.autograd.grad(slow, (hidden, items))):
        assert torch.allclose(a, b, atol=1e-12)


def test_per_position_negatives_are_drawn_per_row_and_position():
    a = draw_negatives(1000, 16, batch_generator(0, 1, 2), rows=3, positions=4)
    assert a.shape == (3, 4, 16)
    assert torch.equal(a, draw_negatives(1000, 16, batch_generator(0, 1, 2), rows=3, positions=4))
    assert len({tuple(r) for r in a.reshape(12, 16).tolist()}) == 12


def test_per_sequence_negatives_are_drawn_per_row_and_reproducibly():
    a = draw_negatives(1000, 16, batch_generator(0, 1, 2), rows=5)
    assert a.shape == (5, 16) and torch.equal(a, draw_negatives(1000, 16, batch_generator(0, 1, 2), rows=5))
    assert len({tuple(r) for r in a.tolist()}) == 5
    weights = torch.zeros(1000)
    weights[7] = 1.0
    assert set(draw_negatives(1000, 16, batch_generator(0, 1, 2), weights, rows=3).flatten().tolist()) == {7}


def test_negatives_are_reproducible_per_step_and_follow_popularity():
    a = draw_negatives(100, 50, batch_generator(3, 2, 7))
    assert torch.equal(a, draw_negatives(100, 50, batch_generator(3, 2, 7)))
    assert not torch.equal(a, draw_negatives(100, 50, batch_generator(3, 2, 8)))
    weights = torch.zeros(100)
    weights[[4, 9]] = torch.tensor([1.0, 3.0])
    drawn = draw_negatives(100, 4000, batch_generator(0, 1, 0), weights)
    assert set(drawn.tolist()) == {4, 9}
    assert (drawn == 9).float().mean().item() == pytest.approx(0.75, abs=0.03)


# -- the losses inside the trainer -------------------------------------------------------------------
from tests.baselines.test_models import MODELS_UNDER_TEST, TINY, N_ITEMS, Untouchable, quiet, successor_split  # noqa: E402

from recfm.baselines.sasrec import SASRec, SASRecConfig  # noqa: E402
from recfm.data.split import LeaveOneOut  # noqa: E402
from recfm.evaluation.protocol import Protocol, evaluate  # noqa: E402


@pytest.mark.slow
@pytest.mark.parametrize("loss, extra", [("sampled_softmax", {}), ("sampled_softmax", {"negative_sampling": "popularity"}),
                                         ("sampled_softmax", {"negatives_per": "sequence"}),
                                         ("sampled_softmax", {"negatives_per": "position"}),
                                         ("gbce", {"gbce_t": 0.75})],
                         ids=["ssm-uniform", "ssm-pop", "ssm-per-sequence", "ssm-per-position", "gbce"])
@pytest.mark.parametrize("i", range(len(MODELS_UNDER_TEST)), ids=["sasrec", "gru4rec", "sasrec-authors"])
def test_every_loss_learns_the_successor_pattern_from_train_only(loss, extra, i):
    split = successor_split()
    model_cls, cfg_cls, arch = MODELS_UNDER_TEST[i]
    # binary losses learn the cycle more slowly than softmax ones: more, smaller steps
    longer = {"epochs": 60, "batch_size": 16, "patience": 60} if loss == "gbce" else {}
    model = model_cls(cfg_cls(**{**TINY, **arch, "loss": loss, "num_negatives": 16, **extra, **longer}), N_ITEMS)
    history = model.fit(LeaveOneOut(split.train, split.valid, Untouchable()), Protocol(), log=quiet)
    assert evaluate(model, split.test, Protocol())["hr@10"] > 0.8  # chance: 10 / 60
    losses = [h["loss"] for h in history["history"]]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]


def test_sampled_training_is_deterministic_for_a_seed():
    split = successor_split(n_users=40)
    runs = []
    for _ in range(2):
        model = SASRec(SASRecConfig(**{**TINY, **MODELS_UNDER_TEST[0][2], "epochs": 2, "loss": "gbce", "num_negatives": 8}), N_ITEMS)
        runs.append([h["loss"] for h in model.fit(split, Protocol(), log=quiet)["history"]])
    assert runs[0] == runs[1]


def test_the_time_cap_is_read_inside_the_epoch():
    split = successor_split(n_users=400)
    model = SASRec(SASRecConfig(**{**TINY, **MODELS_UNDER_TEST[0][2], "batch_size": 4, "epochs": 50,
                                   "max_train_minutes": 1e-5}), N_ITEMS)
    history = model.fit(split, Protocol(), log=quiet)
    assert history["stopped"] == "budget" and history["epochs"] == 1
    first = history["history"][0]
    assert "time budget" in first["steps"] and "valid" in first  # cut short, then validated
