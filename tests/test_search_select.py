"""Selections among N samples (``retool.search.select``) and test-time scaling curves
(``retool.search.scaling``), on hand-computed tables."""

from __future__ import annotations

import math
import random

import pytest

from retool.evals.metrics import majority_answer
from retool.grading import is_equivalent
from retool.search.scaling import (
    CurvePoint,
    bootstrap_ci,
    budgets,
    compare,
    paired_bootstrap,
    scaling_curve,
    subset_accuracy,
)
from retool.search.select import (
    AGGREGATIONS,
    SELECTIONS,
    Candidate,
    majority,
    orm_max,
    orm_vote,
    prm_last,
    prm_last_max,
    prm_last_vote,
    prm_min,
    prm_min_max,
    prm_min_vote,
    prm_prod,
    prm_prod_max,
    prm_prod_vote,
    select,
    selected_correct,
)


def cand(answer: str | None, correct: bool, *scores: float, tokens: tuple[int, int, int] = (0, 0, 0)) -> Candidate:
    return Candidate(answer, correct, scores, *tokens)


def exact(a: str, b: str) -> bool:
    return a == b


# -- aggregations ---------------------------------------------------------------------------------


def test_aggregations_on_a_bad_middle_step():
    scores = (0.9, 0.1, 0.8)
    assert prm_min(scores) == 0.1
    assert prm_last(scores) == 0.8
    assert prm_prod((0.5, 0.5, 0.8)) == pytest.approx(0.2)
    assert prm_prod((0.5, 0.5, 0.8)) == pytest.approx(0.5 * 0.5 * 0.8)
    assert AGGREGATIONS == {"min": prm_min, "last": prm_last, "prod": prm_prod}


@pytest.mark.parametrize("aggregate", [prm_min, prm_last, prm_prod])
def test_empty_scores_cannot_be_ranked(aggregate):
    with pytest.raises(ValueError, match="no step scores"):
        aggregate(())


def test_verifier_selection_of_an_unscored_candidate_raises_but_majority_does_not():
    candidates = [cand("1", True), cand("1", True)]
    for name in SELECTIONS:
        if name == "majority":
            assert select(name, candidates) is candidates[0]
        else:
            with pytest.raises(ValueError, match="no step scores"):
                select(name, candidates)


def test_candidate_rejects_scores_outside_unit_interval_and_keeps_a_tuple():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        Candidate("1", True, (0.5, 1.5))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        Candidate("1", True, (math.nan,))
    with pytest.raises(ValueError, match="model_tokens"):
        Candidate("1", True, (0.5,), model_tokens=-1)
    assert Candidate("1", True, [0.5, 0.25]).step_scores == (0.5, 0.25)  # type: ignore[arg-type]


# -- majority --------------------------------------------------------------------------------------


def test_majority_largest_group_wins_and_returns_its_first_member():
    candidates = [cand("3", False, 0.1), cand("5", True, 0.2), cand("5", True, 0.3)]
    assert majority(candidates) is candidates[1]


def test_majority_tie_on_count_goes_to_the_group_seen_first():
    candidates = [cand("3", False, 0.1), cand("5", True, 0.9), cand("5", True, 0.8), cand("3", False, 0.2)]
    assert majority(candidates) is candidates[0]
    assert majority(candidates[::-1]) is candidates[3]  # now "3" (the old last) is seen first


def test_equivalent_answers_are_grouped():
    candidates = [cand("2", False), cand("1/2", True), cand("0.5", True), cand("2", False), cand("\\frac{1}{2}", True)]
    assert majority(candidates) is candidates[1]  # 1/2, 0.5, \frac{1}{2}: three votes against two
    assert majority(candidates, same=exact) is candidates[0]  # counted as strings, "2" would win
    assert majority_answer([c.answer for c in candidates], is_equivalent) == candidates[1].answer  # same rule


def test_equivalent_answers_pool_their_scores_in_a_vote():
    candidates = [cand("2", False, 0.5), cand("1/2", True, 0.375), cand("0.5", True, 0.25)]
    assert prm_last_vote(candidates) is candidates[1]  # 0.375 + 0.25 = 0.625 > 0.5
    assert prm_last_vote(candidates, same=exact) is candidates[0]  # apart, each loses to 0.5


# -- missing answers -------------------------------------------------------------------------------


def test_missing_answers_never_win():
    candidates = [cand(None, False, 1.0), cand(None, False, 1.0), cand(None, False), cand("4", True, 0.1)]
    for name in SELECTIONS:
        assert select(name, candidates) is candidates[3], name
        assert selected_correct(name, candidates), name


def test_all_missing_selects_nothing():
    candidates = [cand(None, False, 1.0), cand(None, False)]
    for name in SELECTIONS:
        assert select(name, candidates) is None, name
        assert selected_correct(name, candidates) is False, name
        assert select(name, []) is None, name


# -- max and vote ----------------------------------------------------------------------------------


def test_max_and_vote_disagree_one_confident_wrong_against_several_medium_right():
    candidates = [cand("7", False, 0.9), cand("8", True, 0.6), cand("8", True, 0.6), cand("8", True, 0.6)]
    for name in ("prm_last_max", "orm_max", "prm_min_max", "prm_prod_max"):
        assert select(name, candidates) is candidates[0], name
        assert not selected_correct(name, candidates), name
    for name in ("prm_last_vote", "orm_vote", "prm_min_vote", "prm_prod_vote"):
        assert select(name, candidates) is candidates[1], name  # 1.8 against 0.9
        assert selected_correct(name, candidates), name


def test_max_tie_goes_to_the_first_highest():
    candidates = [cand("1", False, 0.25), cand("2", True, 0.75), cand("3", False, 0.75)]
    assert prm_last_max(candidates) is candidates[1]
    assert prm_last_max(candidates[::-1]) is candidates[2]  # reversed: "3" is now first of the 0.75s


def test_vote_tie_on_total_goes_to_the_higher_best_member():
    # "1": 0.5 + 0.5 = 1.0 (best 0.5); "2": 1.0 alone (best 1.0). "1" appears first but loses.
    candidates = [cand("1", False, 0.5), cand("1", False, 0.5), cand("2", True, 1.0)]
    assert prm_last_vote(candidates) is candidates[2]
    assert prm_last_vote(candidates[::-1]) is candidates[2]  # the same winner with "2" seen first


def test_vote_tie_on_total_and_best_goes_to_the_group_seen_first_and_its_best_member():
    # "1": 0.25 + 0.75, "2": 0.75 + 0.25: equal totals and equal best members.
    candidates = [cand("1", True, 0.25), cand("2", False, 0.75), cand("1", True, 0.75), cand("2", False, 0.25)]
    assert prm_last_vote(candidates) is candidates[2]  # group "1" (seen first), its 0.75 member
    assert prm_last_vote(candidates[1:]) is candidates[1]  # now "2" is seen first


def test_vote_returns_the_first_of_equal_best_members():
    candidates = [cand("9", True, 0.5), cand("9", True, 0.75), cand("9", True, 0.75)]
    assert prm_last_vote(candidates) is candidates[1]


def test_min_and_last_differ_on_a_bad_middle_step():
    shaky = cand("1", False, 0.9, 0.1, 0.9)  # last 0.9, min 0.1, product 0.081
    steady = cand("2", True, 0.6, 0.6, 0.6)  # last 0.6, min 0.6, product 0.216
    candidates = [shaky, steady]
    assert prm_last_max(candidates) is shaky
    assert orm_max(candidates) is shaky  # the outcome score is the last entry
    assert prm_min_max(candidates) is steady
    assert prm_prod_max(candidates) is steady
    assert prm_last_vote(candidates) is shaky and orm_vote(candidates) is shaky
    assert prm_min_vote(candidates) is steady and prm_prod_vote(candidates) is steady


def test_prod_differs_from_min():
    a = cand("1", True, 0.5, 0.5)  # min 0.5, product 0.25
    b = cand("2", False, 0.4, 1.0)  # min 0.4, product 0.4
    assert prm_min_max([a, b]) is a
    assert prm_prod_max([a, b]) is b


def test_selection_names_and_unknown_name():
    assert set(SELECTIONS) == {"majority", "orm_max", "orm_vote", "prm_min_max", "prm_min_vote",
                               "prm_last_max", "prm_last_vote", "prm_prod_max", "prm_prod_vote"}
    with pytest.raises(ValueError, match="unknown selection 'best'.*majority.*prm_prod_vote"):
        select("best", [cand("1", True, 0.5)])
    with pytest.raises(ValueError, match="unknown selection"):
        selected_correct("best", [cand("1", True, 0.5)])


# -- scaling ---------------------------------------------------------------------------------------


def test_budgets():
    assert budgets(6) == [1, 2, 4, 6]
    assert budgets(8) == [1, 2, 4, 8]
    assert budgets(1) == [1]
    with pytest.raises(ValueError):
        budgets(0)


def test_two_samples_one_correct():
    right, wrong = cand("1", True, 0.25), cand("2", False, 0.75)
    rng = random.Random(0)
    assert subset_accuracy([right, wrong], "avg", 1, 8, rng) == 0.5
    assert subset_accuracy([right, wrong], "avg", 2, 8, rng) == 0.5  # independent of n
    assert subset_accuracy([right, wrong], "majority", 1, 8, rng) == 0.5  # both singletons, exactly
    assert subset_accuracy([right, wrong], "majority", 2, 8, rng) == 1.0  # tie: the first sample
    assert subset_accuracy([wrong, right], "majority", 2, 8, rng) == 0.0
    assert subset_accuracy([right, wrong], "prm_last_max", 2, 8, rng) == 0.0


THREE = [cand("1", True, 0.2), cand("2", False, 0.9), cand("1", True, 0.3)]
# n = 2 subsets {0,1}, {0,2}, {1,2}: majority picks 0 (tie, first), 0, 1 (tie, first) -> 2/3 right;
# prm_last_max picks 1, 2, 1 -> 1/3; prm_last_vote: 0.2 v 0.9 -> 1, 0.5 -> 0, 0.9 v 0.3 -> 1 -> 1/3.
# n = 3: majority "1" (two votes) right; max and vote (0.5 v 0.9) pick the wrong "2".
EXPECTED_THREE = {("avg", 1): 2 / 3, ("avg", 2): 2 / 3, ("avg", 3): 2 / 3,
                  ("majority", 1): 2 / 3, ("majority", 2): 2 / 3, ("majority", 3): 1.0,
                  ("prm_last_max", 1): 2 / 3, ("prm_last_max", 2): 1 / 3, ("prm_last_max", 3): 0.0,
                  ("prm_last_vote", 1): 2 / 3, ("prm_last_vote", 2): 1 / 3, ("prm_last_vote", 3): 0.0}


@pytest.mark.parametrize("method_n", sorted(EXPECTED_THREE))
def test_subset_accuracy_enumerates_exactly(method_n):
    method, n = method_n
    assert subset_accuracy(THREE, method, n, 8, random.Random(0)) == pytest.approx(EXPECTED_THREE[method_n])


def test_random_subsets_keep_sample_order():
    # Distinct answers: majority picks the earliest sample of the subset, never the last of twelve.
    # 60 subsets of 66 possible: drawn at random, not enumerated.
    candidates = [cand(str(i), i == 11, 0.5) for i in range(12)]
    assert subset_accuracy(candidates, "majority", 2, 60, random.Random(0)) == 0.0
    candidates = [cand(str(i), i == 0, 0.5) for i in range(12)]
    acc = subset_accuracy(candidates, "majority", 2, 60, random.Random(0))
    assert 0.05 < acc < 0.35  # sample 0 is in a sixth of the 2-subsets, and then it is the earliest


def test_random_subsets_are_deterministic_given_the_generator():
    candidates = [cand(str(i % 3), i % 3 == 0, (i % 4) / 4) for i in range(8)]
    runs = [subset_accuracy(candidates, "prm_last_vote", 3, 5, random.Random(7)) for _ in range(2)]
    assert runs[0] == runs[1]
    assert runs[0] * 5 == pytest.approx(round(runs[0] * 5))  # a mean over exactly 5 subsets


def test_subset_accuracy_rejects_bad_arguments():
    with pytest.raises(ValueError, match="unknown method"):
        subset_accuracy(THREE, "best", 1, 8, random.Random(0))
    with pytest.raises(ValueError, match="n=4"):
        subset_accuracy(THREE, "majority", 4, 8, random.Random(0))
    with pytest.raises(ValueError, match="no candidates"):
        subset_accuracy([], "majority", 1, 8, random.Random(0))


def test_scaling_curve_points_in_order_with_exact_accuracies():
    methods = ("avg", "majority", "prm_last_max", "prm_last_vote")
    curve = scaling_curve({"p": THREE}, methods, subsets=8, resamples=50)
    assert [(p.method, p.n) for p in curve] == [(m, n) for m in methods for n in (1, 2, 3)]
    for point in curve:
        expected = EXPECTED_THREE[point.method, point.n]
        assert point.accuracy == pytest.approx(expected)
        assert point.ci_low == point.ci_high == point.accuracy  # one problem: nothing to resample


def test_scaling_curve_token_accounting():
    problems = {"p1": [cand("1", True, 0.5, tokens=(10, 4, 2)), cand("2", False, 0.5, tokens=(30, 6, 4))],
                "p2": [cand("1", True, 0.5, tokens=(20, 0, 0)), cand("1", True, 0.5, tokens=(40, 2, 6))]}
    # per candidate: model 25, interpreter 3, verifier 3
    points = {(p.method, p.n): p for p in scaling_curve(problems, ("avg", "majority", "prm_last_max"), resamples=20)}
    assert isinstance(points["avg", 1], CurvePoint)
    assert (points["prm_last_max", 2].model_tokens, points["prm_last_max", 2].tool_tokens,
            points["prm_last_max", 2].verifier_tokens) == (50, 6, 6)
    assert points["prm_last_max", 2].tokens == 62
    assert points["prm_last_max", 1].tokens == 31
    assert (points["majority", 2].verifier_tokens, points["majority", 2].tokens) == (0, 56)  # reads no score
    assert (points["avg", 1].model_tokens, points["avg", 1].verifier_tokens) == (25, 0)


def test_scaling_curve_needs_the_same_n_everywhere():
    problems = {"a": [cand("1", True, 0.5)] * 2, "b": [cand("1", True, 0.5)] * 2, "c": [cand("1", True, 0.5)]}
    with pytest.raises(ValueError, match="'c' has 1"):
        scaling_curve(problems, ("majority",))
    with pytest.raises(ValueError, match="'c' has 1"):
        compare(problems, "majority", "avg", 1)
    with pytest.raises(ValueError, match="unknown method"):
        scaling_curve({"a": [cand("1", True, 0.5)]}, ("best",))


def _mixed_problems(count: int = 12, n: int = 6) -> dict[str, list[Candidate]]:
    rng = random.Random(3)
    problems = {}
    for p in range(count):
        answers = [rng.choice("123") for _ in range(n)]
        problems[f"p{p}"] = [cand(a, a == "1", rng.random()) for a in answers]
    return problems


def test_scaling_curve_is_deterministic_given_seed():
    problems = _mixed_problems()
    one = scaling_curve(problems, ("avg", "majority", "prm_last_vote"), subsets=3, seed=5, resamples=200)
    two = scaling_curve(problems, ("avg", "majority", "prm_last_vote"), subsets=3, seed=5, resamples=200)
    assert one == two
    for point in one:
        assert point.ci_low <= point.accuracy <= point.ci_high


def test_compare_is_paired_on_the_same_subsets():
    problems = _mixed_problems()
    # n=2 of 6 with 3 subsets is random: only identical subsets make a method's difference with itself 0.
    assert compare(problems, "majority", "majority", 2, subsets=3, resamples=100) == (0.0, 0.0, 0.0)
    assert compare(problems, "prm_last_vote", "prm_last_vote", 4, subsets=3, resamples=100) == (0.0, 0.0, 0.0)
    # the THREE table at n=3: vote 0, majority 1
    assert compare({"p": THREE}, "prm_last_vote", "majority", 3, resamples=50) == (-1.0, -1.0, -1.0)
    with pytest.raises(ValueError, match="n=7"):
        compare(problems, "majority", "avg", 7)


# -- bootstrap -------------------------------------------------------------------------------------


def test_bootstrap_ci_contains_the_mean():
    values = [0.0, 1.0, 0.0, 1.0, 1.0, 0.5]
    mean, low, high = bootstrap_ci(values, resamples=500, seed=1)
    assert mean == pytest.approx(3.5 / 6)
    assert low < mean < high
    assert bootstrap_ci(values, resamples=500, seed=1) == (mean, low, high)  # deterministic


def test_bootstrap_ci_percentiles_by_hand():
    # Resampled means of [0, 1] are 0, 1/2, 1 with chances 1/4, 1/2, 1/4.
    assert bootstrap_ci([0.0, 1.0], level=0.95) == (0.5, 0.0, 1.0)
    assert bootstrap_ci([0.0, 1.0], level=0.4) == (0.5, 0.5, 0.5)  # the 30th and 70th percentiles


def test_bootstrap_ci_is_degenerate_on_equal_values():
    assert bootstrap_ci([0.1] * 7) == (0.1, 0.1, 0.1)
    with pytest.raises(ValueError):
        bootstrap_ci([])


def test_paired_bootstrap():
    assert paired_bootstrap([0.2, 0.7, 0.1], [0.2, 0.7, 0.1]) == (0.0, 0.0, 0.0)
    # every problem gains exactly 0.25: a paired interval has no width, whatever the spread of a and b
    assert paired_bootstrap([0.25, 0.5, 1.0], [0.0, 0.25, 0.75]) == (0.25, 0.25, 0.25)
    with pytest.raises(ValueError, match="equal lengths"):
        paired_bootstrap([0.1, 0.2], [0.1])
    with pytest.raises(ValueError):
        paired_bootstrap([], [])
