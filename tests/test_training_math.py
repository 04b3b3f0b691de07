"""The RL math in retool.training.advantages and retool.training.losses, against values worked
out by hand (the arithmetic is in the comments)."""

from __future__ import annotations

import math

import pytest
import torch

from retool.training.advantages import (
    gae,
    group_advantages,
    length_adaptive_lambda,
    masked_whiten,
    zero_advantage_group_share,
)
from retool.training.losses import (
    aggregate,
    aggregation_share,
    entropy_from_logits,
    kl_k3,
    policy_loss,
    token_logprobs,
    value_loss,
)


def close(actual: torch.Tensor, expected: list | float, atol: float = 1e-6) -> None:
    torch.testing.assert_close(
        actual.float(), torch.tensor(expected, dtype=torch.float32), atol=atol, rtol=0
    )


# --- GRPO group advantages ----------------------------------------------------------------


def test_group_advantages_unbiased_std():
    # group [1, -1, -1, -1]: mean -0.5; deviations [1.5, -0.5, -0.5, -0.5];
    # squares 2.25 + 3 * 0.25 = 3.0; unbiased var 3.0 / 3 = 1.0 -> std 1.0.
    # Group [2, 2, 2, 2]: deviations all 0 -> advantages 0 whatever the std.
    eps = 1e-4
    rewards = torch.tensor([1.0, -1.0, -1.0, -1.0, 2.0, 2.0, 2.0, 2.0])
    a = group_advantages(rewards, group_size=4, eps=eps)
    close(a, [1.5 / (1 + eps), -0.5 / (1 + eps), -0.5 / (1 + eps), -0.5 / (1 + eps), 0, 0, 0, 0])


def test_group_advantages_unscaled_and_groups_are_consecutive():
    # groups [0, 1] (mean 0.5) and [3, 5] (mean 4): centred [-0.5, 0.5, -1, 1].
    a = group_advantages(torch.tensor([0.0, 1.0, 3.0, 5.0]), group_size=2, scale=False)
    close(a, [-0.5, 0.5, -1.0, 1.0])


def test_group_advantages_rejects_ragged_groups():
    with pytest.raises(ValueError):
        group_advantages(torch.zeros(5), group_size=4)


def test_group_of_one_gives_zero_not_nan():
    close(group_advantages(torch.tensor([3.0, -1.0]), group_size=1), [0.0, 0.0])


def test_zero_advantage_group_share():
    # groups: [1,1,1,1] flat, [1,0,1,1] not, [0,0,0,0] flat -> 2 of 3.
    rewards = torch.tensor([1, 1, 1, 1, 1, 0, 1, 1, 0, 0, 0, 0], dtype=torch.float32)
    assert zero_advantage_group_share(rewards, 4) == pytest.approx(2 / 3)
    assert zero_advantage_group_share(torch.tensor([1.0, 0.0]), 2) == 0.0


# --- GAE over model tokens ----------------------------------------------------------------

# One row: position 0 is prompt, 1-2 model tokens, 3-4 interpreter output, 5 the last model
# token (carrying the outcome reward 1).
MASK = [0, 1, 1, 0, 0, 1]
VALUES = [9.0, 1.0, 2.0, 7.0, 7.0, 3.0]
REWARDS = [0.0, 0.0, 0.0, 0.0, 0.0, 1.0]


def test_gae_skips_masked_positions():
    # gamma 1, lambda 0.5; valid positions 1 -> 2 -> 5.
    # t=5: no next valid -> delta = 1 + 0 - 3 = -2;           A5 = -2
    # t=2: next is 5     -> delta = 0 + V5 - V2 = 3 - 2 = 1;  A2 = 1 + 0.5 * (-2) = 0
    # t=1: next is 2     -> delta = 0 + V2 - V1 = 2 - 1 = 1;  A1 = 1 + 0.5 * 0 = 1
    # returns = A + V: R1 = 2, R2 = 2, R5 = 1; masked positions 0.
    adv, ret = gae(
        torch.tensor([REWARDS]), torch.tensor([VALUES]), torch.tensor([MASK]), gamma=1.0, lam=0.5
    )
    close(adv, [[0, 1, 0, 0, 0, -2]])
    close(ret, [[0, 2, 2, 0, 0, 1]])


def test_gae_ignores_rewards_and_values_at_masked_positions():
    rewards = torch.tensor([[7.0, 0.0, 0.0, 100.0, -5.0, 1.0]])
    values = torch.tensor([[-3.0, 1.0, 2.0, float("nan"), 1e6, 3.0]])
    adv, ret = gae(rewards, values, torch.tensor([MASK]), gamma=1.0, lam=0.5)
    close(adv, [[0, 1, 0, 0, 0, -2]])
    close(ret, [[0, 2, 2, 0, 0, 1]])


def test_gae_per_row_lambda():
    # Row 0 as above (lambda 0.5). Row 1 same data with lambda 1: A_t = (sum of later rewards)
    # - V(t) = 1 - V(t): A5 = 1 - 3 = -2, A2 = 1 - 2 = -1, A1 = 1 - 1 = 0;
    # returns = A + V = 1 at every valid position.
    adv, ret = gae(
        torch.tensor([REWARDS, REWARDS]),
        torch.tensor([VALUES, VALUES]),
        torch.tensor([MASK, MASK]),
        gamma=1.0,
        lam=torch.tensor([0.5, 1.0]),
    )
    close(adv, [[0, 1, 0, 0, 0, -2], [0, 0, -1, 0, 0, -2]])
    close(ret, [[0, 2, 2, 0, 0, 1], [0, 1, 1, 0, 0, 1]])


def test_gae_discounts_once_across_a_skipped_span():
    # mask [1, 0, 1], gamma 0.9, lambda 1, V = [0.5, -, 2], reward 1 on position 2.
    # t=2: delta = 1 - 2 = -1; A2 = -1.
    # t=0: delta = 0 + 0.9 * 2 - 0.5 = 1.3; A0 = 1.3 + 0.9 * (-1) = 0.4
    #      (= Monte Carlo 0.9 * 1 - 0.5: one discount step over the interpreter span, not two).
    adv, ret = gae(
        torch.tensor([[0.0, 5.0, 1.0]]),
        torch.tensor([[0.5, 9.0, 2.0]]),
        torch.tensor([[1, 0, 1]]),
        gamma=0.9,
        lam=1.0,
    )
    close(adv, [[0.4, 0.0, -1.0]])
    close(ret, [[0.9, 0.0, 1.0]])


def _gae_reference(r, v, m, gamma, lam):
    """Per-element loop: compact each row to its valid positions, run textbook GAE, scatter."""
    adv = torch.zeros_like(r)
    for b in range(r.shape[0]):
        idx = [t for t in range(r.shape[1]) if m[b, t]]
        a_next, v_next = 0.0, 0.0
        for t in reversed(idx):
            a_next = r[b, t] + gamma * v_next - v[b, t] + gamma * lam[b] * a_next
            v_next = v[b, t]
            adv[b, t] = a_next
    return adv


def test_gae_matches_a_per_element_reference():
    gen = torch.Generator().manual_seed(0)
    r, v = torch.randn(5, 40, generator=gen), torch.randn(5, 40, generator=gen)
    m = torch.rand(5, 40, generator=gen) > 0.4
    lam = torch.rand(5, generator=gen)
    adv, ret = gae(r, v, m, gamma=0.97, lam=lam)
    expected = _gae_reference(r, v, m, 0.97, lam)
    torch.testing.assert_close(adv, expected)
    torch.testing.assert_close(ret, torch.where(m, expected + v, 0.0))


def test_gae_has_no_gradient():
    values = torch.tensor([VALUES], requires_grad=True)
    adv, ret = gae(torch.tensor([REWARDS]), values, torch.tensor([MASK]), 1.0, 0.5)
    assert not adv.requires_grad and not ret.requires_grad


def test_length_adaptive_lambda():
    # alpha * l = 0.5 -> 1 - 1/0.5 = -1 -> clamped 0;  alpha * l = 5 -> 1 - 0.2 = 0.8;  l = 0 -> 0.
    close(length_adaptive_lambda(torch.tensor([10, 100, 0]), alpha=0.05), [0.0, 0.8, 0.0])


def test_masked_whiten():
    # valid [1, 2, 3]: mean 2, deviations [-1, 0, 1], unbiased var 2/2 = 1 -> std 1.
    out = masked_whiten(torch.tensor([1.0, 2.0, 3.0, 100.0]), torch.tensor([1, 1, 1, 0]))
    close(out, [-1.0, 0.0, 1.0, 0.0], atol=1e-6)
    close(masked_whiten(torch.ones(3), torch.zeros(3)), [0.0, 0.0, 0.0])


# --- aggregation --------------------------------------------------------------------------

X = [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]
RAGGED = [[1, 1, 0], [1, 0, 0]]


def test_aggregate_modes():
    x, m = torch.tensor(X), torch.tensor(RAGGED)
    # dapo: (1 + 2 + 4) / 3 tokens = 7/3
    close(aggregate(x, m, "dapo"), 7 / 3)
    # grpo: row means (1 + 2)/2 = 1.5 and 4/1 = 4 -> (1.5 + 4)/2 = 2.75
    close(aggregate(x, m, "grpo"), 2.75)
    # dr_grpo: 7 / (B * T) = 7 / 6; with max_len 7: 7 / 14 = 0.5
    close(aggregate(x, m, "dr_grpo"), 7 / 6)
    close(aggregate(x, m, "dr_grpo", max_len=7), 0.5)


def test_aggregate_grpo_skips_empty_rows():
    # only row 0 has tokens: (1 + 2)/2 = 1.5
    close(aggregate(torch.tensor(X), torch.tensor([[1, 1, 0], [0, 0, 0]]), "grpo"), 1.5)


@pytest.mark.parametrize("mode", ["dapo", "grpo", "dr_grpo"])
def test_aggregate_empty_mask_is_zero_and_connected(mode):
    x = torch.tensor(X, requires_grad=True)
    out = aggregate(x, torch.zeros(2, 3), mode)
    assert out.item() == 0.0 and out.requires_grad
    out.backward()
    assert torch.equal(x.grad, torch.zeros(2, 3))


@pytest.mark.parametrize("mode", ["dapo", "grpo", "dr_grpo"])
def test_micro_batches_weighted_by_their_share_give_the_minibatch_loss(mode):
    x = torch.tensor(X + [[7.0, 8.0, 9.0]])
    m = torch.tensor(RAGGED + [[1, 1, 1]])
    # dapo: tokens 2 + 1 + 3 = 6; rows [0] and [1, 2] hold 2/6 and 4/6
    # grpo: rows with tokens 3; [0] holds 1/3, [1, 2] 2/3; dr_grpo: rows 1/3 and 2/3
    expected = {"dapo": (2 / 6, 4 / 6), "grpo": (1 / 3, 2 / 3), "dr_grpo": (1 / 3, 2 / 3)}[mode]
    shares = (aggregation_share(m[:1], m, mode), aggregation_share(m[1:], m, mode))
    assert shares == pytest.approx(expected)
    total = shares[0] * aggregate(x[:1], m[:1], mode) + shares[1] * aggregate(x[1:], m[1:], mode)
    close(total, aggregate(x, m, mode).item())
    assert aggregation_share(torch.zeros(1, 3), torch.zeros(2, 3), mode) == 0.0 or mode == "dr_grpo"


def test_aggregate_unknown_mode():
    with pytest.raises(ValueError):
        aggregate(torch.tensor(X), torch.tensor(RAGGED), "mean")  # type: ignore[arg-type]


# --- policy loss --------------------------------------------------------------------------


def _policy_case():
    # four tokens, one row, all valid; eps_low 0.2, eps_high 0.28 (band [0.8, 1.28]).
    ratios = [1.5, 0.5, 1.0, 1.5]
    advantages = torch.tensor([[1.0, -1.0, 2.0, -1.0]])
    old = torch.zeros(1, 4)
    logprobs = torch.tensor([[math.log(r) for r in ratios]], requires_grad=True)
    return logprobs, old, advantages, ratios


def test_policy_loss_clip_higher():
    logprobs, old, adv, ratios = _policy_case()
    # t0: r 1.5,  A +1: min(1.5, 1.28) = 1.28      -> per -1.28  (clipped)
    # t1: r 0.5,  A -1: min(-0.5, -0.8) = -0.8     -> per  0.8   (clipped)
    # t2: r 1.0,  A +2: min(2, 2) = 2              -> per -2
    # t3: r 1.5,  A -1: min(-1.5, -1.28) = -1.5    -> per  1.5   (pessimistic branch: unclipped)
    # dapo: (-1.28 + 0.8 - 2 + 1.5) / 4 = -0.98 / 4 = -0.245
    out = policy_loss(logprobs, old, adv, torch.ones(1, 4), eps_low=0.2, eps_high=0.28)
    close(out.loss, -0.245)
    assert out.clip_frac == pytest.approx(0.5)
    # ratio mean (1.5 + 0.5 + 1 + 1.5) / 4 = 1.125
    assert out.ratio_mean == pytest.approx(1.125)
    # k3 = r - 1 - ln r per token, averaged
    k3 = [r - 1 - math.log(r) for r in ratios]
    assert out.approx_kl == pytest.approx(sum(k3) / 4, abs=1e-6)
    # d per / d lp = -r * A where unclipped, 0 where clipped; then / 4 tokens:
    # t2: -1 * 2 / 4 = -0.5;  t3: -1.5 * (-1) / 4 = 0.375
    out.loss.backward()
    close(logprobs.grad, [[0.0, 0.0, -0.5, 0.375]])


def test_policy_loss_row_advantages_broadcast():
    # [B] advantages == the same value on every token of the row.
    logprobs, old, _, _ = _policy_case()
    mask = torch.ones(1, 4)
    per_row = policy_loss(logprobs, old, torch.tensor([1.0]), mask, 0.2, 0.28)
    per_token = policy_loss(logprobs, old, torch.ones(1, 4), mask, 0.2, 0.28)
    close(per_row.loss, per_token.loss.item())


@pytest.mark.parametrize("mode", ["dapo", "grpo", "dr_grpo"])
def test_policy_loss_gradient_exactly_zero_off_mask(mode):
    # masked positions carry nonzero advantages and a log-ratio that overflows exp():
    # the gradient there must still be exactly 0 (not NaN, not tiny).
    logprobs = torch.tensor([[0.1, 1000.0, -0.2, 0.3], [50.0, 0.05, -1e4, 0.0]], requires_grad=True)
    old = torch.zeros(2, 4)
    adv = torch.tensor([[1.0, 5.0, -1.0, 2.0], [-3.0, 1.0, 4.0, 0.5]])
    mask = torch.tensor([[1, 0, 1, 0], [0, 1, 0, 1]])
    out = policy_loss(logprobs, old, adv, mask, 0.2, 0.28, mode=mode)
    out.loss.backward()
    assert torch.isfinite(out.loss)
    off = ~mask.bool()
    assert torch.equal(logprobs.grad[off], torch.zeros(int(off.sum())))
    assert (logprobs.grad[mask.bool()] != 0).all()
    assert math.isfinite(out.approx_kl) and math.isfinite(out.ratio_mean)


# --- value loss ---------------------------------------------------------------------------


def test_value_loss_clipped_and_unclipped():
    # token 0: v 1, old 0, R 0.5: unclipped (0.5)^2 = 0.25; clipped v = 0 + 0.2 -> (0.3)^2 = 0.09
    #          -> max 0.25 (unclipped)
    # token 1: v 3, old 2, R 3.5: unclipped 0.25; clipped v = 2.2 -> (1.3)^2 = 1.69 -> clipped
    # token 2: masked, huge error, ignored.
    values = torch.tensor([[1.0, 3.0, 100.0]], requires_grad=True)
    old = torch.tensor([[0.0, 2.0, 0.0]])
    returns = torch.tensor([[0.5, 3.5, 0.0]])
    mask = torch.tensor([[1, 1, 0]])
    # clipped: 0.5 * (0.25 + 1.69) / 2 = 0.485; clip fraction 1/2
    loss, frac = value_loss(values, old, returns, mask, clip=0.2)
    close(loss, 0.485)
    assert frac == pytest.approx(0.5)
    # d/dv: token 0 takes the unclipped branch: 0.5 * 2 * (1 - 0.5) / 2 = 0.25;
    # token 1 takes the clipped branch, constant in v (v - old = 1 is outside +-0.2): 0.
    loss.backward()
    close(values.grad, [[0.25, 0.0, 0.0]])
    # unclipped: 0.5 * (0.25 + 0.25) / 2 = 0.125, fraction 0
    loss, frac = value_loss(values, old, returns, mask, clip=None)
    close(loss, 0.125)
    assert frac == 0.0


# --- log-probabilities, entropy, KL -------------------------------------------------------


def test_token_logprobs_alignment():
    # V = 2. logits[0] = [0, ln 3] -> p = [1/4, 3/4]; logits[1] = [0, 0] -> p = [1/2, 1/2];
    # logits[2] is never used (no token after the last).
    # input_ids [0, 1, 0]: out[0] = 0, out[1] = log p(1 | logits[0]) = ln 3/4,
    # out[2] = log p(0 | logits[1]) = ln 1/2.
    logits = torch.tensor([[[0.0, math.log(3)], [0.0, 0.0], [5.0, -5.0]]])
    ids = torch.tensor([[0, 1, 0]])
    close(token_logprobs(logits, ids), [[0.0, math.log(0.75), math.log(0.5)]])
    # temperature 2: logits[0] / 2 = [0, ln 3 / 2] -> p(1) = sqrt3 / (1 + sqrt3)
    s3 = math.sqrt(3)
    close(token_logprobs(logits, ids, temperature=2.0)[:, 1], [math.log(s3 / (1 + s3))])


def test_entropy_from_logits():
    # uniform over V = 5 -> ln 5 at positions >= 1; position 0 -> 0
    close(entropy_from_logits(torch.zeros(1, 3, 5)), [[0.0, math.log(5), math.log(5)]])
    # p = [1/4, 3/4] -> H = -(1/4 ln 1/4 + 3/4 ln 3/4)
    logits = torch.tensor([[[0.0, math.log(3)], [0.0, 0.0]]])
    h = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    close(entropy_from_logits(logits), [[0.0, h]])


def test_kl_k3():
    # equal -> 0; lp 0, ref ln 2: exp(ln 2) - ln 2 - 1 = 1 - ln 2
    lp = torch.tensor([[0.3, 0.0]])
    ref = torch.tensor([[0.3, math.log(2)]])
    close(kl_k3(lp, ref), [[0.0, 1 - math.log(2)]])
