"""PRIME's pure functions: implicit process rewards, leave-one-out (RLOO) advantages, the implicit
PRM's loss and its monitoring metric. Tensors are ``[batch, tokens]`` over the completion, with the
loss mask (1 = a model token; interpreter tokens are 0 and are never actions).

**The reward convention (pinned by tests).** The implicit PRM πφ gives each model token
``r_t = β · (log πφ(y_t|y<t) − log πref(y_t|y<t))``: β is *inside* the reward. The PRM's outcome
logit is ``Σ_t r_t`` over model tokens, trained with BCE on the outcome label, and the process
advantages use the same ``r_t``. (PRIME's paper and repository do this; verl's recipe feeds the raw
log-ratio to the advantage and applies β only in the loss. A value of β therefore means the same
thing in both places here.)

**RLOO as PRIME computes it.** Samples come in groups of K of one prompt (consecutive rows). For a
process reward, the baseline of sample i is the mean, over the other K−1 samples, of their per-token
mean reward: ``r̂_t^i = r_t^i · K/(K−1) − Σ_j mean_t(r^j) / (K−1)``; for an outcome score (one value
per sample) it is the plain leave-one-out ``s_i − mean_{j≠i} s_j``, placed at the last model token.
Returns are the reverse cumulative sum of ``process_coef · r̂ + outcome_coef · ŝ`` over the
completion (interpreter tokens add nothing, but the return flows across them).

Not here: models, forwards, the trainer (``ppo.py``'s machinery), prompt filtering.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _groups(x: Tensor, group_size: int) -> Tensor:
    if group_size < 2:
        raise ValueError(f"RLOO needs at least 2 samples per prompt, got {group_size}")
    if x.shape[0] % group_size:
        raise ValueError(f"batch of {x.shape[0]} is not whole groups of {group_size}")
    return x.reshape(-1, group_size, *x.shape[1:])


def implicit_token_rewards(logprobs: Tensor, ref_logprobs: Tensor, mask: Tensor, beta: float) -> Tensor:
    """``β · log(πφ / πref)`` on model tokens, 0 elsewhere."""
    return beta * (logprobs - ref_logprobs) * mask.to(logprobs.dtype)


def implicit_prm_loss(token_rewards: Tensor, mask: Tensor, correct: Tensor) -> Tensor:
    """BCE(σ(Σ_t r_t), correct), averaged over the batch: the implicit PRM trained on outcomes only."""
    logits = (token_rewards * mask.to(token_rewards.dtype)).sum(-1)
    return F.binary_cross_entropy_with_logits(logits, correct.to(logits.dtype))


def rloo_outcome(scores: Tensor, group_size: int) -> Tensor:
    """``s_i − mean_{j≠i} s_j`` within each group of ``group_size``."""
    g = _groups(scores.to(torch.float64), group_size)
    others = (g.sum(1, keepdim=True) - g) / (group_size - 1)
    return (g - others).reshape(scores.shape).to(scores.dtype)


def rloo_process(token_rewards: Tensor, mask: Tensor, group_size: int) -> Tensor:
    """PRIME's token-level leave-one-out: each model token's reward scaled by K/(K−1), minus the sum
    over the group (itself included) of each sample's mean per-token reward ÷ (K−1); 0 off the mask.
    For a single-token reward this is exactly ``rloo_outcome``."""
    m = mask.to(token_rewards.dtype)
    per_sample = (token_rewards * m).sum(-1) / m.sum(-1).clamp(min=1)  # mean over each sample's model tokens
    total = _groups(per_sample, group_size).sum(1, keepdim=True).expand(-1, group_size).reshape(-1, 1)
    return (token_rewards * (group_size / (group_size - 1)) - total / (group_size - 1)) * m


def step_rewards(token_rewards: Tensor, mask: Tensor) -> Tensor:
    """Step granularity: each tool-integrated step (a run of model tokens between interpreter
    outputs) gets the sum of its token rewards, placed at its last model token; 0 elsewhere."""
    m = mask.bool()
    out = torch.zeros_like(token_rewards)
    ends = m & ~torch.nn.functional.pad(m[:, 1:], (0, 1), value=False)  # last token of each run
    running = (token_rewards * m).cumsum(-1)
    for row in range(m.shape[0]):
        end_positions = torch.nonzero(ends[row]).flatten()
        before = 0.0
        for e in end_positions.tolist():
            total = running[row, e]
            out[row, e] = total - before
            before = total
    return out


def pearson(x: Tensor, y: Tensor) -> float:
    """Correlation of two 1-D series (0 when either has no spread)."""
    x, y = x.double() - x.double().mean(), y.double() - y.double().mean()
    denom = (x.square().sum() * y.square().sum()).sqrt()
    return float((x * y).sum() / denom) if denom > 0 else 0.0


def last_model_token(mask: Tensor) -> Tensor:
    """Index of each row's last model token (0 for a row with none)."""
    positions = torch.arange(mask.shape[-1], device=mask.device).expand_as(mask)
    return torch.where(mask.bool(), positions, torch.zeros_like(positions)).max(-1).values


def prime_returns(process: Tensor, outcome: Tensor, mask: Tensor, process_coef: float = 5.0,
                  outcome_coef: float = 5.0) -> Tensor:
    """Returns (= advantages before whitening): the reverse cumulative sum over the completion of
    ``process_coef · process`` (token-level, already RLOO'd) plus ``outcome_coef · outcome`` (one RLOO'd
    score per sample, placed at its last model token); 0 off the mask."""
    m = mask.to(process.dtype)
    rewards = process_coef * process * m
    rewards = rewards.scatter_add(1, last_model_token(mask)[:, None], outcome_coef * outcome[:, None].to(process.dtype))
    returns = rewards.flip(-1).cumsum(-1).flip(-1)
    return returns * m


def pairwise_ranking_accuracy(scores: Tensor, correct: Tensor, group_size: int) -> float:
    """Within each group, the share of (correct, incorrect) pairs whose scores are ordered the same
    way (a tie counts half); a group without both kinds scores 0.5; the mean over groups."""
    s, y = _groups(scores.to(torch.float64), group_size), _groups(correct.bool(), group_size)
    accs = []
    for gs, gy in zip(s, y):
        good, bad = gs[gy], gs[~gy]
        if len(good) == 0 or len(bad) == 0:
            accs.append(0.5)
            continue
        diff = good[:, None] - bad[None, :]
        accs.append(float(((diff > 0).double() + 0.5 * (diff == 0).double()).mean()))
    return sum(accs) / len(accs)
