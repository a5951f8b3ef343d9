"""TMoLE (eqs. 1-2) and TIES merging, against hand-computed numbers."""

from __future__ import annotations

import pytest
import torch
from torch import nn
import helpers
from transformers import LlamaForCausalLM

from recfm.multitask.merge import ties_merge, ties_merge_tensors, trim_top_k
from recfm.multitask.tmole import TMoLEConfig, TMoLELinear, attach_tmole


def tiny_llama() -> LlamaForCausalLM:
    return helpers.tiny_llama(50, hidden_size=16, max_positions=32)


SMALL = TMoLEConfig(r=2, alpha=4, dropout=0.0, n_embedding=1, n_generative=1, n_shared=1, task_dim=4, router_hidden=3)


# ---------------------------------------------------------------------------------------------
# TMoLE
# ---------------------------------------------------------------------------------------------


def test_expert_masks_follow_the_task_type():
    cfg = TMoLEConfig()  # 2 embedding + 2 generative + 2 shared
    assert cfg.expert_mask("embedding").tolist() == [True, True, False, False, True, True]
    assert cfg.expert_mask("generative").tolist() == [False, False, True, True, True, True]


def test_attached_model_starts_equal_to_the_base_and_only_adapters_train():
    model = tiny_llama()
    ids = torch.randint(0, 50, (3, 7))
    before = model(input_ids=ids).logits
    tmole = attach_tmole(model, SMALL, ["generative", "embedding"])
    assert len(tmole.layers) == 2 * 4  # q, k, v, o in 2 layers
    with tmole.tasks([0, 1, 0]):
        after = model(input_ids=ids).logits
    torch.testing.assert_close(after, before)  # B = 0 at start
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or "router" in n for n in trainable)
    assert tmole.state.task_embedding.weight.requires_grad
    with pytest.raises(RuntimeError, match="task ids"):
        model(input_ids=ids)


def test_eq1_gates_are_a_masked_softmax_of_the_router():
    model = nn.Sequential()
    model.q_proj = nn.Linear(4, 4)
    tmole = attach_tmole(model, SMALL, ["embedding", "generative"])
    layer = tmole.layers["q_proj"]
    with torch.no_grad():
        tmole.state.task_embedding.weight.copy_(torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0]]))
        layer.router[0].weight.copy_(torch.eye(3, 4))
        layer.router[0].bias.zero_()
        layer.router[2].weight.copy_(torch.tensor([[2.0, 0, 0], [0, 3.0, 0], [1.0, 1.0, 0]]))
        layer.router[2].bias.zero_()
    gelu = nn.functional.gelu
    # task 0 (embedding): hidden = gelu([1, 0, 0]); logits = [2g, 0, g], generative expert masked
    g = gelu(torch.tensor(1.0))
    e = torch.exp(torch.tensor([2 * g, g]))
    want0 = torch.tensor([e[0] / e.sum(), 0.0, e[1] / e.sum()])
    # task 1 (generative): hidden = gelu([0, 1, 0]); logits = [0, 3g, g], embedding expert masked
    e = torch.exp(torch.tensor([3 * g, g]))
    want1 = torch.tensor([0.0, e[0] / e.sum(), e[1] / e.sum()])
    v = layer.gates(torch.tensor([0, 1]))
    torch.testing.assert_close(v, torch.stack([want0, want1]))
    assert v[0, 1] == 0 and v[1, 0] == 0  # exactly zero, not small


def test_eq2_output_is_base_plus_gated_low_rank_sum():
    model = nn.Sequential()
    model.o_proj = nn.Linear(3, 2)
    tmole = attach_tmole(model, SMALL, ["generative"])
    layer: TMoLELinear = tmole.layers["o_proj"]
    torch.manual_seed(1)
    with torch.no_grad():
        layer.lora_B.normal_()
    x = torch.randn(1, 5, 3)
    v = layer.gates(torch.tensor([0]))[0]
    want = model.o_proj.base(x) + (SMALL.alpha / SMALL.r) * sum(
        v[j] * (x @ layer.lora_A[j] @ layer.lora_B[j]) for j in range(SMALL.n_experts))
    with tmole.tasks([0]):
        torch.testing.assert_close(model.o_proj(x), want)
    assert v[0] == 0  # the embedding expert plays no part for a generative task


def test_mixed_task_batch_equals_rows_one_at_a_time_and_masked_experts_get_no_gradient():
    model = tiny_llama()
    tmole = attach_tmole(model, SMALL, ["generative", "embedding"])
    with torch.no_grad():
        for layer in tmole.layers.values():
            layer.lora_B.normal_(std=0.1)
    ids = torch.randint(0, 50, (2, 6))
    with tmole.tasks([0, 1]):
        both = model(input_ids=ids).logits
    for row, task in enumerate([0, 1]):
        with tmole.tasks([task]):
            torch.testing.assert_close(model(input_ids=ids[row : row + 1]).logits[0], both[row], atol=1e-5, rtol=1e-5)
    with tmole.tasks([0, 0]):  # generative only: the embedding expert (index 0) gets no gradient
        model(input_ids=ids).logits.sum().backward()
    layer = next(iter(tmole.layers.values()))
    assert layer.lora_B.grad[0].abs().sum() == 0 and layer.lora_B.grad[1].abs().sum() > 0


def test_routing_table_and_weights_round_trip():
    model = tiny_llama()
    tmole = attach_tmole(model, SMALL, ["generative", "embedding", "generative"])
    routing = tmole.routing()
    assert routing.shape == (3, 8, 3)
    torch.testing.assert_close(routing.sum(-1), torch.ones(3, 8))
    weights = tmole.state_dict()
    other = attach_tmole(tiny_llama(), SMALL, ["generative", "embedding", "generative"])
    other.load_state_dict(weights)
    torch.testing.assert_close(other.routing(), routing)
    with pytest.raises(KeyError):
        other.load_state_dict({k: v for k, v in list(weights.items())[1:]})


# ---------------------------------------------------------------------------------------------
# TIES merging
# ---------------------------------------------------------------------------------------------


def test_trim_keeps_the_largest_magnitudes():
    t = torch.tensor([3.0, -1.0, 0.5, -2.0])
    assert trim_top_k(t, 0.5).tolist() == [3.0, 0.0, 0.0, -2.0]
    assert trim_top_k(t, 1.0).tolist() == t.tolist()
    assert trim_top_k(torch.tensor([1.0, -1.0, 0.2]), 0.34).tolist() == [1.0, -1.0, 0.0]  # ceil(1.02) = 2
    with pytest.raises(ValueError):
        trim_top_k(t, 0.0)


def test_ties_hand_computed():
    t1 = torch.tensor([3.0, -1.0, 0.5, -2.0])
    t2 = torch.tensor([-4.0, 2.0, 0.1, -1.0])
    t3 = torch.tensor([1.0, 1.0, -3.0, 0.0])
    # trimmed (density 0.5): [3, 0, 0, -2], [-4, 2, 0, 0], [1, 0, -3, 0] (tie 1 vs 1: the earlier entry)
    # elected signs from the sums [0, 2, -3, -2]: [0, +, -, -]; disjoint means: [0, 2, -3, -2]
    assert ties_merge_tensors([t1, t2, t3], density=0.5).tolist() == [0.0, 2.0, -3.0, -2.0]
    # density 1: sums [4, 0] -> entry 0 averages the two positives, entry 1 has no elected sign
    assert ties_merge_tensors([torch.tensor([1.0, -2.0]), torch.tensor([3.0, 2.0])], density=1.0).tolist() == [2.0, 0.0]
    # agreeing values are averaged, disagreeing ones dropped: [2, 4, -1] -> sign +, mean(2, 4) = 3
    assert ties_merge_tensors([torch.tensor([2.0]), torch.tensor([4.0]), torch.tensor([-1.0])], 1.0).tolist() == [3.0]


def test_ties_merge_of_state_dicts_relative_to_a_base():
    base = {"w": torch.tensor([1.0, 1.0]), "b": torch.tensor([0.0])}
    a = {"w": torch.tensor([2.0, 0.0]), "b": torch.tensor([1.0])}
    b = {"w": torch.tensor([4.0, 1.5]), "b": torch.tensor([-3.0])}
    merged = ties_merge([a, b], base=base, density=1.0, scale=0.5)
    # w: task vectors [1, -1] and [3, 0.5] -> signs [+, -] -> [2, -1] -> base + 0.5 * that
    assert merged["w"].tolist() == [2.0, 0.5]
    assert merged["b"].tolist() == [-1.5]  # [1] and [-3]: sum -2, only -3 agrees
    assert ties_merge([a, b], names=["b"], density=1.0).keys() == {"b"}
    with pytest.raises(KeyError):
        ties_merge([a, {"w": b["w"]}], names=["b"])


def lora_factors(seed: int, n: int = 2, dims: tuple[int, int] = (6, 5), r: int = 2):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, dims[0], r, generator=g), torch.randn(n, r, dims[1], generator=g)


def test_delta_space_merges_the_experts_updates_and_keeps_their_rank():
    a, b = lora_factors(0)
    zero_b = torch.zeros_like(b)
    base = {"q.lora_A": a, "q.lora_B": zero_b, "router": torch.zeros(3)}
    ckpt = {"q.lora_A": a, "q.lora_B": b, "router": torch.tensor([1.0, -1.0, 2.0])}
    # one checkpoint, nothing trimmed: the merged factors give back its update exactly (rank r already)
    one = ties_merge([ckpt], base=base, density=1.0, space="delta")
    torch.testing.assert_close(torch.bmm(one["q.lora_A"], one["q.lora_B"]), torch.bmm(a, b), atol=1e-5, rtol=1e-5)
    assert one["q.lora_A"].shape == a.shape and one["q.lora_B"].shape == b.shape
    assert one["router"].tolist() == [1.0, -1.0, 2.0]  # not a LoRA factor: merged as a tensor
    # factors that differ by a sign make the same update: delta space agrees, tensor space cancels them
    flipped = {"q.lora_A": -a, "q.lora_B": -b, "router": ckpt["router"]}
    zero_a = {**base, "q.lora_A": torch.zeros_like(a)}
    delta = ties_merge([ckpt, flipped], base=zero_a, density=1.0, space="delta")
    torch.testing.assert_close(torch.bmm(delta["q.lora_A"], delta["q.lora_B"]), torch.bmm(a, b), atol=1e-5, rtol=1e-5)
    tensors = ties_merge([ckpt, flipped], base=zero_a, density=1.0, space="tensors")
    assert torch.count_nonzero(torch.bmm(tensors["q.lora_A"], tensors["q.lora_B"])) == 0
    # two different updates: the merge is the best rank-r approximation of their TIES merge
    a2, b2 = lora_factors(1)
    two = ties_merge([ckpt, {**ckpt, "q.lora_A": a2, "q.lora_B": b2}], base=base, density=0.5, space="delta")
    target = ties_merge_tensors([torch.bmm(a, b), torch.bmm(a2, b2)], density=0.5)
    best = torch.linalg.svdvals(target)[:, 2:].square().sum(-1).sqrt()  # Eckart-Young: the rank-2 residual
    got = torch.linalg.matrix_norm(target - torch.bmm(two["q.lora_A"], two["q.lora_B"]))
    assert torch.linalg.matrix_rank(target).min() > 2  # a real truncation
    torch.testing.assert_close(got, best, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="space"):
        ties_merge([ckpt], space="factors")


def test_last_layers_limits_the_adapted_projections():
    tmole = attach_tmole(tiny_llama(), SMALL.model_copy(update={"last_layers": 1}), ["generative"])
    assert sorted(tmole.layers) == [f"model.layers.1.self_attn.{p}" for p in ("k_proj", "o_proj", "q_proj", "v_proj")]
