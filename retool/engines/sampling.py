"""Choosing the next token from one row of logits: a pure function of the logits, the sampling
parameters and a seeded generator (unit-tested in tests/test_sampling.py)."""

from __future__ import annotations

import torch

from retool.engines.base import SamplingParams

# top-p is decided among the best 64 tokens when they hold top_p of the mass (the usual case: a
# quarter of the cost of 1024), else the best 1024, else all; the kept set is the same either way
CANDIDATES = (64, 1024)


def sample_token(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> int:
    """One token from one row of logits: greedy at temperature 0, else temperature, top-k, top-p.

    Sampling is by inverse CDF over the kept tokens (one uniform draw), which is exact and far
    cheaper than ``torch.multinomial`` over a 49k vocabulary; top-p looks only at the best
    ``CANDIDATES`` tokens when they already hold ``top_p`` of the mass (the usual case), else at all.
    """
    if params.temperature <= 0:
        return int(torch.argmax(logits))
    scaled = logits / params.temperature
    filtered = 0 < params.top_k < scaled.numel() or params.top_p < 1.0
    if not filtered:
        return _inverse_cdf(torch.softmax(scaled, dim=-1), generator)
    total = torch.logsumexp(scaled, dim=-1)
    tiers = [params.top_k] if 0 < params.top_k < scaled.numel() else [min(k, scaled.numel()) for k in CANDIDATES]
    for k in tiers:
        values, order = torch.topk(scaled, k)  # sorted, best first
        probs = torch.exp(values - total)  # shares of the *whole* distribution
        if params.top_p >= 1.0:
            break
        cumulative = probs.cumsum(-1)
        if params.top_k > 0 or cumulative[-1] >= params.top_p or k >= scaled.numel():
            break
    else:  # the candidates were not enough
        values, order = torch.sort(scaled, descending=True)
        probs = torch.softmax(values, dim=-1)
        cumulative = probs.cumsum(-1)
    if params.top_p < 1.0:
        probs = probs[: int((cumulative - probs < params.top_p).sum())]  # keep the token that crosses top_p
    return int(order[_inverse_cdf(probs, generator)])


def _inverse_cdf(probs: torch.Tensor, generator: torch.Generator | None) -> int:
    cumulative = probs.cumsum(-1)
    u = torch.rand((), generator=generator) * cumulative[-1]
    return min(int(torch.searchsorted(cumulative, u, right=True)), probs.numel() - 1)
