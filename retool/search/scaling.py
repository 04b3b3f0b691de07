"""Test-time scaling curves from one run: accuracy of each selection at n = 1, 2, 4, …, N samples.

Sampling N solutions per problem once and subsampling them gives every budget n ≤ N without new
generations: at budget n a selection sees a random size-n subset of the problem's N candidates,
and its accuracy is the mean over ``subsets`` such subsets, then over problems. ``"avg"`` is the
reference: the expected accuracy of one sample (mean correctness of all N, the same at every n).

Why it is built this way:

* **Subsets keep sample order.** A subset is drawn without replacement (``random.Random.sample``)
  and put back in sample order, so the selections' first-appearance tie rules (``select.py``)
  mean the same thing on a subset as on the full run.
* **Exact where cheap.** When a budget has no more distinct subsets than ``subsets`` (always at
  n = N, where there is one), all of them are enumerated instead: the exact expectation.
* **Paired by construction.** The subsets of one problem at one budget come from a generator
  seeded by ``(seed, problem id, n)`` alone, so every method is evaluated on the very same
  subsets: differences between methods (``compare``) are paired per problem and per subset.
* **Intervals over problems.** The uncertainty that matters is which problems were asked: the
  percentile bootstrap resamples problems with replacement (``bootstrap_ci``, and
  ``paired_bootstrap`` for a difference of two methods on the same problems).
* **Measured tokens.** A point's x-coordinate is what budget n costs per problem: n × the mean
  per-candidate tokens, reported per kind (model, interpreter, verifier). Methods that read no
  verifier score (``"avg"``, ``"majority"``) spend no verifier tokens.

What it deliberately does not do: score or grade (candidates arrive scored and graded), draw
plots (``rerank``), or accept problems with different N (a budget would mean different things).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from itertools import combinations
from typing import Mapping, Sequence

from retool.grading import is_equivalent
from retool.search.select import SELECTIONS, UNSCORED, Candidate, Same, selected_correct

AVG = "avg"  # the expected accuracy of a single sample


@dataclass(frozen=True)
class CurvePoint:
    """One method at one budget, averaged over problems."""

    method: str  # "avg" or a name in ``select.SELECTIONS``
    n: int  # samples per problem the selection sees
    accuracy: float  # mean over problems of the per-problem subset accuracy
    ci_low: float  # lower end of the percentile bootstrap interval over problems
    ci_high: float  # upper end of that interval
    model_tokens: float  # mean model tokens per problem at budget n (n × mean per candidate)
    tool_tokens: float  # mean interpreter tokens per problem at budget n
    verifier_tokens: float  # mean verifier tokens per problem at budget n (0 for avg and majority)

    @property
    def tokens(self) -> float:
        """Everything budget n costs per problem: model + interpreter + verifier."""
        return self.model_tokens + self.tool_tokens + self.verifier_tokens


def budgets(n: int) -> list[int]:
    """1, 2, 4, … below ``n``, then ``n`` itself (a power of two or not)."""
    if n < 1:
        raise ValueError(f"need at least one sample per problem, got {n}")
    out, b = [], 1
    while b < n:
        out.append(b)
        b *= 2
    return out + [n]


def _check_method(method: str) -> None:
    if method != AVG and method not in SELECTIONS:
        raise ValueError(f"unknown method {method!r}; known: {AVG}, {', '.join(SELECTIONS)}")


def subset_accuracy(candidates: Sequence[Candidate], method: str, n: int, subsets: int, rng: random.Random,
                    same: Same = is_equivalent) -> float:
    """How often ``method`` picks a correct candidate from a size-``n`` subset of ``candidates``:
    the mean over ``subsets`` random subsets, or over all of them when there are no more than that."""
    _check_method(method)
    total = len(candidates)
    if total == 0:
        raise ValueError("no candidates")
    if not 1 <= n <= total:
        raise ValueError(f"need 1 <= n <= {total} (the candidates there are), got n={n}")
    if subsets < 1:
        raise ValueError(f"need at least one subset, got {subsets}")
    if method == AVG:
        return sum(c.correct for c in candidates) / total
    if math.comb(total, n) <= subsets:
        draws = list(combinations(range(total), n))  # every subset, in sample order
    else:
        draws = [sorted(rng.sample(range(total), n)) for _ in range(subsets)]
    hits = [selected_correct(method, [candidates[i] for i in idx], same) for idx in draws]
    return sum(hits) / len(hits)


# -- bootstrap over problems ---------------------------------------------------------------------


def _percentile(ordered: Sequence[float], q: float) -> float:
    """The q-quantile of sorted values, linearly interpolated (numpy's default rule)."""
    pos = q * (len(ordered) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def bootstrap_ci(values: Sequence[float], resamples: int = 2000, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): the mean of ``values`` (one per problem) with its percentile bootstrap
    interval, resampling the values with replacement ``resamples`` times."""
    if not values:
        raise ValueError("no values to bootstrap")
    if resamples < 1:
        raise ValueError(f"need at least one resample, got {resamples}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    k = len(values)
    rng = random.Random(seed)
    means = sorted(math.fsum(rng.choices(values, k=k)) / k for _ in range(resamples))
    tail = (1.0 - level) / 2
    return math.fsum(values) / k, _percentile(means, tail), _percentile(means, 1.0 - tail)


def paired_bootstrap(a: Sequence[float], b: Sequence[float], resamples: int = 2000, seed: int = 0,
                     level: float = 0.95) -> tuple[float, float, float]:
    """(mean of a − b, low, high) for two methods measured on the same problems: problems are
    resampled with replacement, keeping each problem's pair together (percentile interval)."""
    if len(a) != len(b):
        raise ValueError(f"paired values need equal lengths, got {len(a)} and {len(b)}")
    if not a:
        raise ValueError("no paired values to bootstrap")
    return bootstrap_ci([x - y for x, y in zip(a, b)], resamples, seed, level)


# -- curves --------------------------------------------------------------------------------------


def _samples(problems: Mapping[str, Sequence[Candidate]]) -> int:
    """The one N every problem has."""
    if not problems:
        raise ValueError("no problems")
    first, *rest = problems
    n = len(problems[first])
    if n == 0:
        raise ValueError(f"problem {first!r} has no candidates")
    for pid in rest:
        if len(problems[pid]) != n:
            raise ValueError(f"every problem needs the same number of candidates: {first!r} has {n}, "
                             f"{pid!r} has {len(problems[pid])}")
    return n


def _rng(seed: int, pid: str, n: int) -> random.Random:
    """The subsets' generator for one problem at one budget: the same for every method (pairing)."""
    return random.Random(f"{seed}/{pid}/{n}")


def _memo(same: Same) -> Same:
    """``same`` remembered per pair of answers: subsets compare the same answers again and again."""
    cache: dict[tuple[str, str], bool] = {}

    def cached(a: str, b: str) -> bool:
        if (a, b) not in cache:
            cache[a, b] = same(a, b)
        return cache[a, b]

    return cached


def _per_problem(problems: Mapping[str, Sequence[Candidate]], method: str, n: int, subsets: int, seed: int,
                 same: Same) -> list[float]:
    return [subset_accuracy(cands, method, n, subsets, _rng(seed, pid, n), same) for pid, cands in problems.items()]


def scaling_curve(problems: Mapping[str, Sequence[Candidate]], methods: Sequence[str], subsets: int = 8,
                  seed: int = 0, resamples: int = 2000, level: float = 0.95,
                  same: Same = is_equivalent) -> list[CurvePoint]:
    """Each method at each budget in ``budgets(N)``, in that order, with a bootstrap interval
    over problems and the tokens the budget costs per problem."""
    total = _samples(problems)
    for method in methods:
        _check_method(method)
    same = _memo(same)
    every = [c for cands in problems.values() for c in cands]
    mean_tokens = {kind: sum(getattr(c, kind) for c in every) / len(every)
                   for kind in ("model_tokens", "tool_tokens", "verifier_tokens")}
    points = []
    for method in methods:
        verifier = 0.0 if method == AVG or method in UNSCORED else mean_tokens["verifier_tokens"]
        for n in budgets(total):
            acc, low, high = bootstrap_ci(_per_problem(problems, method, n, subsets, seed, same),
                                          resamples, seed, level)
            points.append(CurvePoint(method, n, acc, low, high, n * mean_tokens["model_tokens"],
                                     n * mean_tokens["tool_tokens"], n * verifier))
    return points


def compare(problems: Mapping[str, Sequence[Candidate]], method: str, baseline: str, n: int, subsets: int = 8,
            seed: int = 0, resamples: int = 2000, level: float = 0.95,
            same: Same = is_equivalent) -> tuple[float, float, float]:
    """(accuracy of ``method`` − accuracy of ``baseline``, low, high) at budget ``n``, paired per
    problem on the same subsets."""
    total = _samples(problems)
    if not 1 <= n <= total:
        raise ValueError(f"need 1 <= n <= {total} (the samples per problem), got n={n}")
    same = _memo(same)
    a = _per_problem(problems, method, n, subsets, seed, same)
    b = _per_problem(problems, baseline, n, subsets, seed, same)
    return paired_bootstrap(a, b, resamples, seed, level)
