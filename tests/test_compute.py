"""recfm.compute's dropout against its definition: the drop rate, an exact expectation, the gradient
through the kept elements only, reproducible from the global seed, and nothing outside training."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from recfm.compute import FastDropout, WeightAverage, dropout_keep_mask, fast_dropout


@pytest.mark.parametrize("p", [0.1, 0.2, 0.5, 0.9])
def test_the_mask_keeps_each_element_with_probability_one_minus_p(p):
    torch.manual_seed(0)
    keep = dropout_keep_mask((400, 250), p)
    assert keep.dtype == torch.bool and keep.shape == (400, 250)
    # 100,000 draws: the standard error of the rate is at most 0.0016
    assert keep.float().mean().item() == pytest.approx(1 - p, abs=0.008)


def test_every_position_of_a_drawn_word_is_used_uniformly():
    torch.manual_seed(1)
    keep = dropout_keep_mask((100_003,), 0.5)  # not a multiple of 4: the last word is cut
    lanes = keep[: 100_000].view(-1, 4).float().mean(0)
    assert torch.allclose(lanes, torch.full((4,), 0.5), atol=0.015)


def test_kept_elements_are_scaled_so_the_expectation_is_exact():
    torch.manual_seed(2)
    x = torch.randn(300, 300).abs() + 1.0
    out = fast_dropout(x, 0.2)
    kept = out != 0
    ratio = out[kept] / x[kept]
    assert torch.allclose(ratio, torch.full_like(ratio, 65536 / (65536 - round(0.2 * 65536))))
    means = torch.stack([fast_dropout(torch.ones(1000, 100), 0.3).mean() for _ in range(20)])
    assert means.mean().item() == pytest.approx(1.0, abs=0.01)


def test_the_gradient_flows_through_the_kept_elements_only():
    torch.manual_seed(3)
    x = torch.randn(64, 32, requires_grad=True)
    out = fast_dropout(x, 0.4)
    out.sum().backward()
    scale = 65536 / (65536 - round(0.4 * 65536))
    expected = (out.detach() != 0).float() * scale
    assert torch.allclose(x.grad, expected)


def test_the_global_seed_reproduces_the_mask_and_eval_is_the_identity():
    x = torch.randn(50, 40)
    torch.manual_seed(7)
    a = fast_dropout(x, 0.5)
    torch.manual_seed(7)
    b = fast_dropout(x, 0.5)
    assert torch.equal(a, b) and not torch.equal(a, fast_dropout(x, 0.5))
    module = FastDropout(0.5).eval()
    assert module(x) is x and fast_dropout(x, 0.0) is x and fast_dropout(x, 0.5, training=False) is x
    assert torch.equal(fast_dropout(x, 1.0), torch.zeros_like(x))


def test_a_dropout_module_matches_nn_dropout_statistically():
    torch.manual_seed(4)
    x = torch.ones(200, 500)
    ours, theirs = FastDropout(0.25).train()(x), F.dropout(x, 0.25)
    assert (ours == 0).float().mean().item() == pytest.approx((theirs == 0).float().mean().item(), abs=0.01)
    assert ours.mean().item() == pytest.approx(1.0, abs=0.02)


def test_the_weight_average_is_an_exponential_moving_average_and_swaps_back():
    model = torch.nn.Linear(3, 2)
    average = WeightAverage(model, decay=0.9)
    seen = []
    for step in range(4):
        with torch.no_grad():
            model.weight.fill_(float(step))
        seen.append(float(step))
        average.update()
    expected = seen[0]  # the first update copies, each later one moves 10% of the way
    for value in seen[1:]:
        expected = 0.9 * expected + 0.1 * value
    live = model.weight.detach().clone()
    with average.swapped_in() as swapped:
        assert swapped is model and torch.allclose(model.weight, torch.full_like(live, expected))
    assert torch.equal(model.weight, live)
    with pytest.raises(ValueError, match="decay"):
        WeightAverage(model, decay=1.0)
