"""Per-token log-probabilities, entropies and the PPO-family losses (GRPO, DAPO, Dr. GRPO, PPO
value loss), as pure functions of tensors.

Layout: everything is [B, T] over the same token positions as ``input_ids``, so one loss mask
(1 on model-written tokens, 0 on prompt, interpreter output and padding) applies to every
tensor. ``token_logprobs(...)[:, t]`` is the log-probability of token t given tokens < t;
position 0 has no prediction and is 0.

Masked positions contribute nothing, and their gradient is exactly zero: masking is done with
``torch.where`` on the inputs of any ``exp`` (so an overflow at a masked position cannot turn
into ``0 * inf = nan`` in the backward pass), and ``aggregate`` selects rather than multiplies.

Deliberately not here: advantage estimation (``advantages.py``), the model forward pass, chunked
or fused log-softmax for huge vocabularies (``token_logprobs`` materialises a float32
[B, T, V] tensor), and any cross-process reduction of losses or metrics.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

AggregationMode = Literal["dapo", "grpo", "dr_grpo"]


def _shifted_logits(logits: Tensor, temperature: float) -> Tensor:
    """Float32 logits that predicted positions 1..T-1 (from positions 0..T-2)."""
    if logits.dim() != 3:
        raise ValueError(f"logits must be [B, T, V], got {tuple(logits.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    shifted = logits[:, :-1].float()
    return shifted / temperature if temperature != 1.0 else shifted


def _pad_first(x: Tensor) -> Tensor:
    """[B, T-1] -> [B, T] with a zero column in front (position 0 has no prediction)."""
    return F.pad(x, (1, 0), value=0.0)


def token_logprobs(logits: Tensor, input_ids: Tensor, temperature: float = 1.0) -> Tensor:
    """out[:, t] = log p(input_ids[:, t] | tokens < t) from ``logits[:, t-1] / temperature``;
    out[:, 0] = 0. Float32, differentiable, aligned with a [B, T] loss mask."""
    if input_ids.shape != logits.shape[:2]:
        raise ValueError(
            f"input_ids {tuple(input_ids.shape)} do not match logits {tuple(logits.shape)}"
        )
    logp = torch.log_softmax(_shifted_logits(logits, temperature), dim=-1)
    picked = logp.gather(-1, input_ids[:, 1:].long().unsqueeze(-1)).squeeze(-1)
    return _pad_first(picked)


def entropy_from_logits(logits: Tensor, temperature: float = 1.0) -> Tensor:
    """Entropy of the distribution that predicted token t (from ``logits[:, t-1]``), [B, T],
    position 0 = 0. Float32 and differentiable."""
    shifted = _shifted_logits(logits, temperature)
    logp = torch.log_softmax(shifted, dim=-1)
    entropy = -(logp.exp() * logp).sum(dim=-1)
    return _pad_first(entropy)


def aggregate(
    per_token: Tensor,
    mask: Tensor,
    mode: AggregationMode,
    max_len: int | None = None,
) -> Tensor:
    """Reduce a [B, T] per-token loss to a scalar over the masked tokens.

    - ``dapo``: token-level mean over the whole batch, sum(x*m) / sum(m).
    - ``grpo``: mean over rows of each row's token mean; rows without tokens are left out.
    - ``dr_grpo``: sum(x*m) / (B * max_len), ``max_len`` defaulting to T (a constant
      denominator, so long and short responses are not reweighted).

    With no masked token at all the result is 0, still connected to the graph.
    """
    if per_token.shape != mask.shape or per_token.dim() != 2:
        raise ValueError(
            f"per_token {tuple(per_token.shape)} and mask {tuple(mask.shape)} must be one [B, T]"
        )
    if mode not in ("dapo", "grpo", "dr_grpo"):
        raise ValueError(f"unknown aggregation mode {mode!r}")
    valid = mask.bool()
    if not bool(valid.any()):
        return per_token.sum() * 0.0
    kept = torch.where(valid, per_token, torch.zeros_like(per_token))
    if mode == "dapo":
        return kept.sum() / valid.sum()
    if mode == "grpo":
        counts = valid.sum(dim=1)
        has_tokens = counts > 0
        row_means = kept.sum(dim=1) / counts.clamp(min=1)
        return row_means[has_tokens].mean()
    batch, length = per_token.shape
    denominator = batch * (length if max_len is None else max_len)
    if denominator <= 0:
        raise ValueError(f"max_len must be > 0, got {max_len}")
    return kept.sum() / denominator


def aggregation_share(part: Tensor, whole: Tensor, mode: AggregationMode) -> float:
    """The weight of a micro-batch's aggregated loss in its minibatch's: summing
    ``share × aggregate(part)`` over micro-batches (rows of ``whole``'s mask) gives exactly
    ``aggregate(whole)`` — so a minibatch too large for memory takes several passes, one step.

    - ``dapo``: the part's share of masked tokens;
    - ``grpo``: its share of rows that have masked tokens;
    - ``dr_grpo``: its share of rows (the denominator is rows × a fixed length).
    """
    if mode == "dapo":
        num, den = part.bool().sum(), whole.bool().sum()
    elif mode == "grpo":
        num, den = (part.bool().sum(1) > 0).sum(), (whole.bool().sum(1) > 0).sum()
    elif mode == "dr_grpo":
        num, den = part.shape[0], whole.shape[0]
    else:
        raise ValueError(f"unknown aggregation mode {mode!r}")
    return float(num) / float(den) if float(den) > 0 else 0.0


def masked_mean(x: Tensor, valid: Tensor) -> float:
    """Detached mean of ``x`` over ``valid`` as a python float; 0.0 when nothing is valid."""
    count = int(valid.sum().item())
    if count == 0:
        return 0.0
    return (torch.where(valid, x.detach().float(), 0.0).sum() / count).item()


@dataclass(frozen=True)
class PolicyLoss:
    """The clipped policy loss and its detached metrics (all over masked tokens)."""

    loss: Tensor
    clip_frac: float
    approx_kl: float
    ratio_mean: float


def _same_shape(**tensors: Tensor) -> None:
    shapes = {tuple(t.shape) for t in tensors.values()}
    if len(shapes) != 1:
        got = ", ".join(f"{name} {tuple(t.shape)}" for name, t in tensors.items())
        raise ValueError(f"{', '.join(tensors)} must share one [B, T] shape; got {got}")


def policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    eps_low: float,
    eps_high: float,
    mode: AggregationMode = "dapo",
) -> PolicyLoss:
    """PPO clipped surrogate with asymmetric clipping (DAPO's clip-higher), per token:

        ratio = exp(logprobs - old_logprobs)
        per   = -min(ratio * A, clamp(ratio, 1 - eps_low, 1 + eps_high) * A)

    aggregated with :func:`aggregate`. ``advantages`` is [B, T] or [B] (one per row, broadcast
    over T). Metrics, over masked tokens: ``clip_frac`` is the share where the clipped branch
    is the one taken and differs (A > 0 and ratio > 1 + eps_high, or A < 0 and
    ratio < 1 - eps_low); ``approx_kl`` is the k3 estimate of KL(old || new) with samples from
    the old policy, ratio - 1 - log(ratio) (non-negative, unbiased); ``ratio_mean`` the mean
    ratio.
    """
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(1).expand_as(logprobs)
    _same_shape(logprobs=logprobs, old_logprobs=old_logprobs, advantages=advantages, mask=mask)
    valid = mask.bool()
    log_ratio = torch.where(valid, logprobs - old_logprobs.detach(), 0.0)
    adv = torch.where(valid, advantages.detach().to(log_ratio.dtype), 0.0)
    ratio = log_ratio.exp()
    clipped_ratio = ratio.clamp(1.0 - eps_low, 1.0 + eps_high)
    per_token = -torch.minimum(ratio * adv, clipped_ratio * adv)
    loss = aggregate(per_token, mask, mode)

    with torch.no_grad():
        clipped = ((adv > 0) & (ratio > 1.0 + eps_high)) | ((adv < 0) & (ratio < 1.0 - eps_low))
        k3 = ratio - 1.0 - log_ratio
        return PolicyLoss(
            loss=loss,
            clip_frac=masked_mean(clipped.float(), valid),
            approx_kl=masked_mean(k3, valid),
            ratio_mean=masked_mean(ratio, valid),
        )


def value_loss(
    values: Tensor,
    old_values: Tensor,
    returns: Tensor,
    mask: Tensor,
    clip: float | None,
    mode: AggregationMode = "dapo",
) -> tuple[Tensor, float]:
    """PPO value loss per token, aggregated with :func:`aggregate`.

    With ``clip``: 0.5 * max((v - R)^2, (old + clamp(v - old, -clip, clip) - R)^2); without it
    0.5 * (v - R)^2. The second item is the share of masked tokens where the clipped branch was
    strictly larger (0.0 without clipping).
    """
    _same_shape(values=values, old_values=old_values, returns=returns, mask=mask)
    valid = mask.bool()
    returns = returns.detach()
    unclipped = (values - returns).pow(2)
    if clip is None:
        return aggregate(0.5 * unclipped, mask, mode), 0.0
    old = old_values.detach()
    clipped_values = old + (values - old).clamp(-clip, clip)
    clipped = (clipped_values - returns).pow(2)
    per_token = 0.5 * torch.maximum(unclipped, clipped)
    clip_frac = masked_mean((clipped > unclipped).float(), valid)
    return aggregate(per_token, mask, mode), clip_frac


def kl_k3(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """Per-token k3 estimator of KL(policy || reference) with samples from the policy:
    exp(ref - lp) - (ref - lp) - 1. Non-negative; mask it yourself (e.g. via ``aggregate``)."""
    diff = ref_logprobs - logprobs
    return diff.exp() - diff - 1.0
