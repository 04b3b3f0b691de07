"""PRIME's pure functions against values computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from retool.training.prime import (
    implicit_prm_loss, implicit_token_rewards, last_model_token, pairwise_ranking_accuracy, prime_returns,
    rloo_outcome, rloo_process,
)


def t(*rows):
    return torch.tensor(rows, dtype=torch.float64)


def test_beta_is_inside_the_reward_and_the_logit_is_its_sum():
    # log-ratio 2 on each of three model tokens, an interpreter token (mask 0) with a large ratio between
    lp, ref = t([-1.0, -1.0, -9.0, -1.0]), t([-3.0, -3.0, -1.0, -3.0])
    mask = t([1, 1, 0, 1])
    r = implicit_token_rewards(lp, ref, mask, beta=0.05)
    assert r.tolist() == [pytest.approx([0.1, 0.1, 0.0, 0.1])]  # β·log-ratio, not the raw 2.0
    loss = implicit_prm_loss(r, mask, torch.tensor([1.0]))
    assert float(loss) == pytest.approx(-math.log(1 / (1 + math.exp(-0.3))))  # BCE(σ(0.3), 1)
    wrong = implicit_prm_loss(r, mask, torch.tensor([0.0]))
    assert float(wrong) == pytest.approx(-math.log(1 - 1 / (1 + math.exp(-0.3))))


def test_rloo_outcome_is_leave_one_out():
    scores = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    out = rloo_outcome(scores, 4)
    # group 1: 1 − 1/3, 0 − 2/3, 0 − 2/3, 1 − 1/3; group 2: all equal → 0
    assert out.tolist() == pytest.approx([2 / 3, -2 / 3, -2 / 3, 2 / 3, 0, 0, 0, 0])
    with pytest.raises(ValueError, match="whole groups"):
        rloo_outcome(scores[:3], 2)
    with pytest.raises(ValueError, match="at least 2"):
        rloo_outcome(scores, 1)


def test_rloo_process_by_hand():
    # K = 2: sample 0 rewards [0.2, 0.4] (mean 0.3), sample 1 [0.1, _, 0.3] with an interpreter token (mean 0.2)
    r = t([0.2, 0.4, 0.0], [0.1, 0.0, 0.3])
    mask = t([1, 1, 0], [1, 0, 1])
    out = rloo_process(r, mask, 2)
    # r·K/(K−1) − (0.3 + 0.2)/(K−1) = 2r − 0.5
    assert out.tolist()[0] == pytest.approx([-0.1, 0.3, 0.0])
    assert out.tolist()[1] == pytest.approx([-0.3, 0.0, 0.1])
    # a single-token reward: the same as the outcome RLOO
    single = rloo_process(t([1.0], [0.0], [0.0]), t([1], [1], [1]), 3)
    assert single.flatten().tolist() == pytest.approx(rloo_outcome(torch.tensor([1.0, 0.0, 0.0]), 3).tolist())


def test_returns_sum_what_follows_and_the_outcome_sits_on_the_last_model_token():
    mask = t([1, 1, 0, 0, 1, 0])  # model, model, interpreter, interpreter, model, padding
    assert last_model_token(mask).tolist() == [4]
    process = t([0.1, 0.2, 9.0, 9.0, 0.3, 9.0])  # values off the mask are ignored
    out = prime_returns(process, torch.tensor([1.0], dtype=torch.float64), mask, process_coef=2.0, outcome_coef=5.0)
    # rewards 0.2, 0.4, 0, 0, 0.6 + 5 → returns 6.2, 6.0, (masked), (masked), 5.6, 0
    assert out.tolist()[0] == pytest.approx([6.2, 6.0, 0.0, 0.0, 5.6, 0.0])


def test_pairwise_ranking_accuracy():
    scores = torch.tensor([0.9, 0.1, 0.5, 0.5, 0.3, 0.8, 0.2, 0.7])
    correct = torch.tensor([1, 0, 1, 0, 1, 1, 1, 1])
    # group 1: pairs (0.9 vs 0.1) right, (0.9 vs 0.5) right, (0.5 vs 0.1) right, (0.5 vs 0.5) tie → 3.5/4
    # group 2: all correct → 0.5
    assert pairwise_ranking_accuracy(scores, correct, 4) == pytest.approx((3.5 / 4 + 0.5) / 2)
    assert pairwise_ranking_accuracy(-scores[:4], correct[:4], 4) == pytest.approx(0.5 / 4)


def test_step_granularity_sums_each_step_at_its_last_model_token():
    from retool.training.prime import pearson, step_rewards

    r = t([0.1, 0.2, 0.0, 0.0, 0.3, 0.4, 0.0])
    mask = t([1, 1, 0, 0, 1, 1, 0])  # step 1: tokens 0-1; interpreter 2-3; step 2: tokens 4-5; padding
    assert step_rewards(r, mask).tolist()[0] == pytest.approx([0.0, 0.3, 0.0, 0.0, 0.0, 0.7, 0.0])
    assert pearson(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([2.0, 4.0, 6.0])) == pytest.approx(1.0)
    assert pearson(torch.tensor([1.0, 1.0]), torch.tensor([0.0, 1.0])) == 0.0
