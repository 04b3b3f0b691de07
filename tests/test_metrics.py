"""avg@k, unbiased pass@k and maj@k against hand-computed values."""

import math

import pytest

from retool.evals.metrics import avg_at_k, majority_answer, pass_at_k


def test_pass_at_k_by_hand():
    assert pass_at_k(5, 2, 3) == pytest.approx(1 - math.comb(3, 3) / math.comb(5, 3))  # = 0.9
    assert pass_at_k(5, 2, 3) == pytest.approx(0.9)
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)  # pass@1 is the plain accuracy
    assert pass_at_k(10, 0, 5) == 0.0
    assert pass_at_k(4, 4, 1) == 1.0
    assert pass_at_k(4, 1, 4) == 1.0  # with k = n, one right sample is enough
    assert pass_at_k(100, 1, 10) == pytest.approx(0.1)
    with pytest.raises(ValueError):
        pass_at_k(3, 4, 1)


def test_pass_at_k_does_not_overflow():
    assert 0.0 < pass_at_k(2000, 3, 50) < 1.0


def test_avg_at_k():
    assert avg_at_k([True, False, True, True]) == 0.75
    with pytest.raises(ValueError):
        avg_at_k([])


def test_majority_groups_equivalent_answers_ignores_missing_and_breaks_ties_by_order():
    same = lambda a, b: a.lstrip("0") == b.lstrip("0")  # noqa: E731
    assert majority_answer(["25", "025", "24", None, None, None], same) == "25"
    assert majority_answer(["3", "4", "4", "3"], same) == "3"  # tie: the first seen
    assert majority_answer([None, None], same) is None
