"""Accuracy metrics over k samples per problem. Pure functions, no I/O.

* **avg@k** — the mean accuracy of the k samples (what ReTool reports as pass@1).
* **pass@k** — the unbiased estimator of Chen et al. (2021): with n samples of which c are right,
  ``1 - C(n-c, k) / C(n, k)``, computed as a product so that it never overflows.
* **maj@k** — majority vote over the k extracted answers, equivalent answers counted together;
  a missing answer never wins; ties go to the answer seen first.
"""

from __future__ import annotations

from typing import Callable, Sequence


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of k samples drawn from n (c of them right) is right."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n (n={n}, c={c}, k={k})")
    if n - c < k:
        return 1.0
    failure = 1.0
    for i in range(n - c + 1, n + 1):
        failure *= 1.0 - k / i
    return 1.0 - failure


def avg_at_k(correct: Sequence[bool]) -> float:
    """Mean accuracy of one problem's samples."""
    if not correct:
        raise ValueError("no samples")
    return sum(map(bool, correct)) / len(correct)


def majority_answer(answers: Sequence[str | None], same: Callable[[str, str], bool]) -> str | None:
    """The most frequent answer, grouping answers that ``same`` says are equal; None if none."""
    groups: list[list[str]] = []
    for answer in answers:
        if answer is None:
            continue
        for group in groups:
            if same(group[0], answer):
                group.append(answer)
                break
        else:
            groups.append([answer])
    if not groups:
        return None
    return max(groups, key=len)[0]  # max keeps the first of equal lengths: ties go to the earliest


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0
