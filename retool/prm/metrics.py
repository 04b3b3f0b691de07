"""How well scores in [0, 1] separate right from wrong: AUROC and log-loss (pure functions).

AUROC is the Mann–Whitney probability that a random positive scores above a random negative, ties
counting one half; it is undefined (None) when one class is absent, rather than a made-up 0.5.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

EPS = 1e-7


def auroc(scores: Sequence[float], labels: Sequence[int | bool]) -> float | None:
    if len(scores) != len(labels):
        raise ValueError(f"{len(scores)} scores but {len(labels)} labels")
    pairs = sorted(zip(scores, labels), key=lambda p: p[0])
    n_pos = sum(1 for _, y in pairs if y)
    n_neg = len(pairs) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    rank_sum, i = 0.0, 0
    while i < len(pairs):  # average ranks over ties
        j = i
        while j < len(pairs) and pairs[j][0] == pairs[i][0]:
            j += 1
        mean_rank = (i + 1 + j) / 2
        rank_sum += mean_rank * sum(1 for _, y in pairs[i:j] if y)
        i = j
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def log_loss(scores: Sequence[float], targets: Sequence[float]) -> float:
    """Mean binary cross-entropy of soft ``targets`` under ``scores`` (clipped away from 0 and 1)."""
    if len(scores) != len(targets) or not scores:
        raise ValueError("log_loss needs as many targets as scores, at least one")
    total = 0.0
    for p, y in zip(scores, targets):
        p = min(max(p, EPS), 1 - EPS)
        total -= y * math.log(p) + (1 - y) * math.log(1 - p)
    return total / len(scores)
