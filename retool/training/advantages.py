"""Advantage estimation for RL on tool-integrated trajectories: GRPO group baselines, GAE over
model tokens only, VAPO's length-adaptive lambda, and masked whitening.

Why GAE here differs from the textbook one: a tool-integrated trajectory interleaves tokens the
model wrote with tokens the environment inserted (interpreter output), plus the prompt and
padding. Only model tokens are actions. The recurrence therefore runs over the positions with
``mask == 1`` in order and *skips* the others entirely: for a model token the "next state" is the
next model token of the same row, not the next position. Rewards and values at masked positions
are ignored, so callers must put the outcome reward on the last model token of each row.

Everything here is a pure function of tensors: no model code, no optimiser, no config objects.
Deliberately not here: losses (``losses.py``), reward computation (grading), and any
normalisation across processes (callers all-gather first if they want global statistics).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def _as_float(x: Tensor) -> Tensor:
    return x if x.is_floating_point() else x.float()


def _grouped(rewards: Tensor, group_size: int) -> Tensor:
    """``rewards`` [N] viewed as [groups, group_size]; groups are consecutive."""
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D, got shape {tuple(rewards.shape)}")
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    if rewards.numel() % group_size != 0:
        raise ValueError(
            f"{rewards.numel()} rewards do not split into groups of {group_size}"
        )
    return _as_float(rewards).view(-1, group_size)


def group_advantages(
    rewards: Tensor, group_size: int, scale: bool = True, eps: float = 1e-4
) -> Tensor:
    """GRPO advantages: each reward minus its group's mean, divided by (group std + eps) if
    ``scale``.

    ``rewards`` [N] holds the groups one after another (N = groups * group_size). The std is the
    unbiased one (``torch.std`` default, as TRL does). A group of size 1 has no spread: its
    advantage is 0 (instead of the NaN an unbiased std of one sample would give).
    """
    grouped = _grouped(rewards, group_size)
    centred = grouped - grouped.mean(dim=1, keepdim=True)
    if scale:
        if group_size > 1:
            std = grouped.std(dim=1, keepdim=True)
        else:
            std = torch.zeros_like(grouped)
        centred = centred / (std + eps)
    return centred.reshape(-1)


def zero_advantage_group_share(rewards: Tensor, group_size: int) -> float:
    """Fraction of groups whose rewards are all equal: they give no gradient in GRPO (every
    advantage is zero). ``nan`` rewards (unscored samples) are left out; a group with fewer than
    two scored samples is flat. 0.0 when there are no groups."""
    grouped = _grouped(rewards, group_size)  # [G, k]
    if grouped.shape[0] == 0:
        return 0.0
    scored = ~torch.isnan(grouped)  # [G, k]
    hi = grouped.nan_to_num(nan=-math.inf).max(dim=1).values  # [G]
    lo = grouped.nan_to_num(nan=math.inf).min(dim=1).values  # [G]
    flat = (hi == lo) | (scored.sum(dim=1) < 2)
    return flat.float().mean().item()


def gae(
    rewards: Tensor,
    values: Tensor,
    mask: Tensor,
    gamma: float,
    lam: float | Tensor,
) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation over the model tokens of each row.

    ``rewards``, ``values``, ``mask`` are [B, T]; ``lam`` is a float or a [B] tensor (one lambda
    per row, for VAPO's length-adaptive lambda). For a valid position t (mask 1) let t' be the
    next valid position of the same row; then

        delta_t = r_t + gamma * V(t') - V(t)
        A_t     = delta_t + gamma * lam * A(t')

    and where there is no t' the step is terminal (V(t') = A(t') = 0). Positions with mask 0
    (prompt, interpreter output, padding) are skipped: their rewards and values are never read,
    and their advantages and returns are 0. Put the outcome reward on the last model token.

    Returns (advantages, returns) in float32 (returns = A + V at valid positions), computed
    without gradient. The loop runs over T on whole columns; there is no loop over B.
    """
    if not (rewards.shape == values.shape == mask.shape) or rewards.dim() != 2:
        raise ValueError(
            "rewards, values and mask must all be [B, T]; got "
            f"{tuple(rewards.shape)}, {tuple(values.shape)}, {tuple(mask.shape)}"
        )
    batch, length = rewards.shape
    with torch.no_grad():
        r = rewards.float()
        v = values.float()
        valid = mask.bool()
        if isinstance(lam, Tensor):
            if lam.shape != (batch,):
                raise ValueError(f"lam tensor must be [B]={batch}, got {tuple(lam.shape)}")
            lam_row = lam.to(device=r.device, dtype=torch.float32)
        else:
            lam_row = torch.full((batch,), float(lam), device=r.device)
        decay = gamma * lam_row

        advantages = torch.zeros_like(r)
        next_value = torch.zeros(batch, device=r.device)
        next_adv = torch.zeros(batch, device=r.device)
        zero = torch.zeros((), device=r.device)
        for t in reversed(range(length)):
            here = valid[:, t]
            delta = r[:, t] + gamma * next_value - v[:, t]
            adv_t = delta + decay * next_adv
            advantages[:, t] = torch.where(here, adv_t, zero)
            # Masked positions leave the carried "next" state untouched: they are skipped.
            next_value = torch.where(here, v[:, t], next_value)
            next_adv = torch.where(here, adv_t, next_adv)
        returns = torch.where(valid, advantages + v, zero)
    return advantages, returns


def length_adaptive_lambda(lengths: Tensor, alpha: float) -> Tensor:
    """VAPO's per-row lambda = 1 - 1 / (alpha * length), clamped to [0, 1].

    Longer responses get a lambda closer to 1 (less bias over long horizons); a length of 0
    gives 0. ``lengths`` [B] counts the model tokens of each row.
    """
    if alpha <= 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    scaled = alpha * lengths.float()
    positive = scaled > 0
    lam = 1.0 - 1.0 / torch.where(positive, scaled, torch.ones_like(scaled))
    return torch.where(positive, lam, torch.zeros_like(lam)).clamp(0.0, 1.0)


def masked_whiten(x: Tensor, mask: Tensor, eps: float = 1e-8) -> Tensor:
    """(x - masked mean) / (masked std + eps), and 0 where ``mask`` is 0 (PPO advantage
    normalisation).

    The std is unbiased (Bessel-corrected, like TRL's ``masked_whiten``); with fewer than two
    valid entries it is taken as 0. An empty mask gives all zeros.
    """
    if x.shape != mask.shape:
        raise ValueError(f"x {tuple(x.shape)} and mask {tuple(mask.shape)} differ in shape")
    valid = mask.bool()
    xf = _as_float(x)
    zero = torch.zeros((), dtype=xf.dtype, device=xf.device)
    count = valid.sum()
    if count.item() == 0:
        return torch.zeros_like(xf)
    kept = torch.where(valid, xf, zero)
    mean = kept.sum() / count
    centred = torch.where(valid, xf - mean, zero)
    if count.item() > 1:
        std = (centred.pow(2).sum() / (count - 1)).sqrt()
    else:
        std = zero
    return torch.where(valid, centred / (std + eps), zero)
