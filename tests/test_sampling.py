"""Token sampling (pure function of logits, parameters and a seeded generator)."""

import math

import torch

from retool.engines.base import SamplingParams
from retool.engines.sampling import sample_token
from retool.bench.rollout import distinct_prefixes


def draws(logits, params, n=4000, seed=0):
    g = torch.Generator().manual_seed(seed)
    counts = torch.zeros(logits.numel())
    for _ in range(n):
        counts[sample_token(logits, params, g)] += 1
    return counts / n


def test_greedy_and_top_k_1_take_the_argmax():
    logits = torch.tensor([0.1, 2.0, 1.9, -3.0])
    assert sample_token(logits, SamplingParams(temperature=0), None) == 1
    assert set(draws(logits, SamplingParams(temperature=1.0, top_k=1), n=50).nonzero().flatten().tolist()) == {1}


def test_frequencies_follow_the_softmax():
    probs = torch.tensor([0.5, 0.3, 0.2])
    freq = draws(probs.log(), SamplingParams(temperature=1.0))
    assert torch.allclose(freq, probs, atol=0.03)


def test_temperature_sharpens():
    probs = torch.tensor([0.5, 0.3, 0.2])
    freq = draws(probs.log(), SamplingParams(temperature=0.5))
    expected = probs ** 2 / (probs ** 2).sum()  # T = 0.5 squares the probabilities
    assert torch.allclose(freq, expected, atol=0.03)


def test_top_p_keeps_the_smallest_set_reaching_p():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    freq = draws(probs.log(), SamplingParams(temperature=1.0, top_p=0.7))  # keeps 0.5 and 0.3 (crosses 0.7)
    assert freq[2] == 0 and freq[3] == 0
    assert math.isclose(float(freq[0]), 0.5 / 0.8, abs_tol=0.03)


def test_top_p_falls_back_to_the_whole_vocabulary_when_candidates_hold_too_little():
    logits = torch.zeros(5000)  # uniform: the best 1024 tokens hold only ~20% of the mass
    freq = draws(logits, SamplingParams(temperature=1.0, top_p=0.9), n=3000)
    assert int((freq > 0).sum()) > 2000  # far beyond the 1024 candidates


def test_top_p_reaches_past_the_first_candidates_when_they_hold_too_little():
    # 200 equal tokens well ahead of the rest: the best 64 hold ~30% of the mass, top-p 0.9 needs ~190
    logits = torch.cat([torch.full((200,), 6.0), torch.zeros(4800)])
    freq = draws(logits, SamplingParams(temperature=1.0, top_p=0.9), n=3000)
    kept = freq.nonzero().flatten()
    assert int(kept.max()) < 200 and len(kept) > 150


def test_seeded_sampling_repeats():
    logits = torch.randn(1000)
    p = SamplingParams(temperature=1.0, top_p=0.9)
    a = [sample_token(logits, p, g) for g in [torch.Generator().manual_seed(7)] for _ in range(20)]
    b = [sample_token(logits, p, g) for g in [torch.Generator().manual_seed(7)] for _ in range(20)]
    assert a == b


def test_distinct_prefixes_counts_shared_prompt_tokens_once():
    assert distinct_prefixes([[1, 2, 3, 4], [1, 2, 3, 5], [1, 2, 3, 4], [9]]) == 4 + 1 + 1
    assert distinct_prefixes([[1, 2], [1, 2, 3]]) == 3
