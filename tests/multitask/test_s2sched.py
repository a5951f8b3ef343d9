"""S2Sched: each equation of RecFound 4.3 against numbers computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from recfm.multitask.s2sched import (
    S2Sched,
    S2SchedConfig,
    allocate,
    balancing_weight,
    inter_task_rate,
    intra_task_rate,
    regression_slope,
    sample_ratio,
)


def test_slope_is_least_squares_over_steps():
    assert regression_slope([10, 11, 12, 13], [1.0, 0.9, 0.8, 0.7]) == pytest.approx(-0.1)
    # y = [1, 0, 1, 0] at x = 0..3: slope = sum((x - 1.5)(y - 0.5)) / sum((x - 1.5)^2) = -1 / 5
    assert regression_slope([0, 1, 2, 3], [1, 0, 1, 0]) == pytest.approx(-0.2)
    assert regression_slope([5], [1.0]) == 0.0


def test_eq3_inter_task_rate():
    # K * alpha / sum|alpha| = 3 * [-0.2, 0.1, -0.1] / 0.4 = [-1.5, 0.75, -0.75]; minus its softmax
    got = inter_task_rate(np.array([-0.2, 0.1, -0.1]))
    np.testing.assert_allclose(got, [-0.0793352603, -0.7527119923, -0.1679527474], rtol=1e-8)
    np.testing.assert_allclose(inter_task_rate(np.zeros(2)), [-0.5, -0.5])  # all flat: no preference


def test_eq4_intra_task_rate():
    # history of 2 steps for 2 tasks; sum_s |alpha_i(s)| = [0.4, 0.3]; logits = -2 * [-0.3/0.4, 0.1/0.3]
    got = intra_task_rate(np.array([[-0.1, 0.2], [-0.3, 0.1]]))
    e = [math.exp(1.5), math.exp(-2 / 3)]
    np.testing.assert_allclose(got, [e[0] / sum(e), e[1] / sum(e)], rtol=1e-12)
    np.testing.assert_allclose(got, [0.8972159751, 0.1027840249], rtol=1e-8)


def test_eq5_balancing_weight():
    # one task per step: max_i alpha = max_i |alpha| up to sign. tau = 1, alpha = [[-0.3], [-0.1]]:
    # logits = -1 * 2 * [-0.3, -0.1] / 0.4 = [1.5, 0.5]; beta = 2 * e^0.5 / (e^1.5 + e^0.5)
    assert balancing_weight(np.array([[-0.3], [-0.1]]), 1.0) == pytest.approx(2 / (1 + math.e))
    # the newest max-slope turned positive: beta collapses (tau = 10, logits [15, 7.5, -7.5])
    assert balancing_weight(np.array([[-0.2], [-0.1], [0.1]]), 10.0) == pytest.approx(
        3 * math.exp(-7.5) / (math.exp(15) + math.exp(7.5) + math.exp(-7.5)))
    # two tasks: the numerator takes max_i alpha_i(t), the denominator sums max_i |alpha_i(k)|:
    # m = [-0.3, 0.05], max|alpha| = [0.5, 0.1] (not |m| = [0.3, 0.05]); tau = 1, t = 2:
    # logits = -2 * [-0.3, 0.05] / 0.6 = [1, -1/6]; beta = 2 * e^(-1/6) / (e^1 + e^(-1/6))
    got = balancing_weight(np.array([[-0.3, -0.5], [0.05, -0.1]]), 1.0)
    assert got == pytest.approx(2 * math.exp(-1 / 6) / (math.e + math.exp(-1 / 6)), rel=1e-12)
    assert got == pytest.approx(0.4749160567, rel=1e-8)
    assert balancing_weight(np.array([[-0.1, -0.2], [-0.1, -0.3]]), 10.0) == 1.0  # every step alike: t * (1/t) = 1
    assert balancing_weight(np.array([[-0.1], [-0.3]]), 10.0) == 1.0  # capped by the min


def test_eq6_sample_ratio():
    # logits = -0.25 * [-0.2, -0.5, -0.3] + 0.75 * [0.5, 0.3, 0.2] = [0.425, 0.35, 0.225]
    got = sample_ratio(np.array([-0.2, -0.5, -0.3]), np.array([0.5, 0.3, 0.2]), 0.25)
    e = [math.exp(0.425), math.exp(0.35), math.exp(0.225)]
    np.testing.assert_allclose(got, [x / sum(e) for x in e], rtol=1e-12)
    np.testing.assert_allclose(got, [0.3641031784, 0.3377943521, 0.2981024695], rtol=1e-8)


def test_counts_floor_then_largest_remainder():
    # 10 * [0.364, 0.338, 0.298] = [3.64, 3.38, 2.98]: floors [3, 3, 2], 2 left -> remainders 0.98, 0.64
    assert allocate(10, np.array([0.3641, 0.3378, 0.2981])).tolist() == [4, 3, 3]
    assert allocate(4, np.array([1 / 3, 1 / 3, 1 / 3])).tolist() == [2, 1, 1]  # ties: lower index
    assert allocate(8, np.array([0.5, 0.5])).tolist() == [4, 4]


def test_scheduler_warmup_then_equations_and_log():
    sched = S2Sched(["a", "b"], batch_size=8, total_steps=20, config=S2SchedConfig(warmup_ratio=0.1, window=3))
    assert sched.warmup_steps == 2
    assert sched.next_counts(0) == {"a": 4, "b": 4} and sched.log[-1]["beta"] is None
    losses = {0: (2.0, 4.0), 1: (1.8, 4.0), 2: (1.6, 4.0), 3: (1.5, 3.6)}
    for step, (a, b) in losses.items():
        sched.record(step, {"a": a, "b": b})
    # normalized by the first losses: a = [1, .9, .8, .75], b = [1, 1, 1, .9]; window 3 -> steps 1..3
    np.testing.assert_allclose(sched.slopes(), [regression_slope([1, 2, 3], [0.9, 0.8, 0.75]),
                                                regression_slope([1, 2, 3], [1.0, 1.0, 0.9])])
    counts = sched.next_counts(3)
    alpha = sched.alphas[-1]
    beta = balancing_weight(alpha[None], 10.0)  # the first scheduled step: t * 1/t = 1
    assert beta == 1.0 and sched.log[-1]["beta"] == 1.0
    omega = sample_ratio(inter_task_rate(alpha), intra_task_rate(alpha[None]), beta)
    rec = sched.log[-1]
    np.testing.assert_allclose([rec["ratio/a"], rec["ratio/b"]], omega)
    assert sum(counts.values()) == 8 and counts == dict(zip(["a", "b"], allocate(8, omega).tolist()))
    with pytest.raises(KeyError):
        sched.record(4, {"a": 1.0})
