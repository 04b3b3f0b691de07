"""Choosing one of N sampled solutions: majority vote, and verifier-guided max and vote (OpenR's names).

Why: one run of N samples per problem can be re-read many ways for free once a verifier has scored
every step. OpenR (Wang et al., 2024) reports on MATH500: majority 0.782, PRM-weighted vote
0.792, PRM best-of-N (max) 0.776 — a verifier helps most as a *weight* on votes and can hurt
when trusted alone. These functions let ``rerank`` and ``scaling`` measure the same comparison
on retool's own runs.

The names read ``<score>_<selection>``:

* **score** — how one candidate's per-step scores become one number (``AGGREGATIONS``):
  ``prm_min`` (the weakest step), ``prm_last`` (the final step), ``prm_prod`` (all steps right,
  if steps were independent). ``orm`` is an outcome reward model: it gives one score, stored as
  the last entry of ``step_scores``, so ``orm_*`` is the same arithmetic as ``prm_last_*``; the
  separate name says in a report which kind of verifier was meant.
* **selection** — ``max``: the candidate with the highest score. ``vote``: answers grouped by
  equivalence, the group with the largest *summed* score wins and its highest-scored member is
  returned. ``majority`` reads no score: the largest group wins, its first member is returned.

Rules shared by every selection, fixed so that results are reproducible:

* Candidates with ``answer is None`` are dropped first: a missing answer never wins; if every
  answer is missing the selection is None.
* Grouping is ``retool.evals.metrics.majority_answer``'s rule: in sample order, a candidate joins
  the first group for which ``same(representative, answer)`` holds (the representative is the
  group's first member; ``same`` defaults to ``retool.grading.is_equivalent``), else starts one.
* Ties. ``max``: the first of the highest. ``majority``: equal counts go to the group that
  appeared first. ``vote``: equal totals go to the group with the higher best member score, then
  to the group that appeared first; within the group, the first of its highest-scored members.
  Totals are ``math.fsum`` sums, so they do not depend on the order of the additions.

What it deliberately does not do: score anything (verifiers live in ``verifiers.py`` and
``retool.prm``), grade against gold (``Candidate.correct`` arrives graded), or subsample
(``scaling.py``). Every function here is pure.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

from retool.grading import is_equivalent

Same = Callable[[str, str], bool]  # (representative, answer) -> are they the same answer?


@dataclass(frozen=True)
class Candidate:
    """One sampled solution of one problem, as the selections see it."""

    answer: str | None  # the sample's extracted final answer; None: it gave no answer
    correct: bool  # whether ``answer`` matches the gold answer (graded before selection)
    step_scores: tuple[float, ...]  # a verifier's score per step, each in [0, 1]; () without a verifier
    model_tokens: int = 0  # tokens the model generated for this sample
    tool_tokens: int = 0  # interpreter-output tokens fed back into the model's context
    verifier_tokens: int = 0  # tokens the verifier read to score this sample

    def __post_init__(self) -> None:
        object.__setattr__(self, "step_scores", tuple(self.step_scores))
        bad = [s for s in self.step_scores if not 0.0 <= s <= 1.0]  # also catches NaN
        if bad:
            raise ValueError(f"step scores must lie in [0, 1], got {bad}")
        for kind in ("model_tokens", "tool_tokens", "verifier_tokens"):
            if getattr(self, kind) < 0:
                raise ValueError(f"{kind} must be >= 0, got {getattr(self, kind)}")


# -- aggregations: per-step scores -> one score ---------------------------------------------------


def _require(scores: Sequence[float]) -> None:
    if not scores:
        raise ValueError("this candidate has no step scores, so a verifier-based selection cannot rank it; "
                         "score every candidate first, or use 'majority'")


def prm_min(scores: Sequence[float]) -> float:
    """The weakest step: a solution is only as good as its worst step."""
    _require(scores)
    return min(scores)


def prm_last(scores: Sequence[float]) -> float:
    """The final step's score (an outcome reward model's one score is stored there)."""
    _require(scores)
    return scores[-1]


def prm_prod(scores: Sequence[float]) -> float:
    """The product of the step scores: the chance every step is right, were steps independent."""
    _require(scores)
    return math.prod(scores)


AGGREGATIONS: dict[str, Callable[[Sequence[float]], float]] = {"min": prm_min, "last": prm_last, "prod": prm_prod}


# -- selections: candidates -> one candidate ------------------------------------------------------


def _answered(candidates: Sequence[Candidate]) -> list[Candidate]:
    return [c for c in candidates if c.answer is not None]


def _groups(candidates: Sequence[Candidate], same: Same) -> list[list[int]]:
    """Indices into ``candidates`` (all answered), grouped by ``same`` in order of first appearance."""
    groups: list[list[int]] = []
    for i, c in enumerate(candidates):
        for group in groups:
            if same(candidates[group[0]].answer, c.answer):
                group.append(i)
                break
        else:
            groups.append([i])
    return groups


def _best(candidates: Sequence[Candidate], aggregate: Callable[[Sequence[float]], float]) -> Candidate | None:
    answered = _answered(candidates)
    if not answered:
        return None
    return max(answered, key=lambda c: aggregate(c.step_scores))  # max keeps the first of equal scores


def _vote(candidates: Sequence[Candidate], aggregate: Callable[[Sequence[float]], float],
          same: Same) -> Candidate | None:
    answered = _answered(candidates)
    if not answered:
        return None
    scores = [aggregate(c.step_scores) for c in answered]
    groups = _groups(answered, same)
    winner = max(groups, key=lambda g: (math.fsum(scores[i] for i in g), max(scores[i] for i in g)))
    return answered[max(winner, key=lambda i: scores[i])]


def majority(candidates: Sequence[Candidate], same: Same = is_equivalent) -> Candidate | None:
    """The first member of the largest group of equivalent answers; equal counts: the earliest group."""
    answered = _answered(candidates)
    if not answered:
        return None
    return answered[max(_groups(answered, same), key=len)[0]]


def orm_max(candidates: Sequence[Candidate], same: Same = is_equivalent) -> Candidate | None:
    """Best-of-N by the outcome score (the last entry): the same arithmetic as ``prm_last_max``."""
    return _best(candidates, prm_last)


def orm_vote(candidates: Sequence[Candidate], same: Same = is_equivalent) -> Candidate | None:
    """Vote weighted by the outcome score (the last entry): the same arithmetic as ``prm_last_vote``."""
    return _vote(candidates, prm_last, same)


def prm_min_max(candidates: Sequence[Candidate], same: Same = is_equivalent) -> Candidate | None:
    """The candidate whose weakest step scores highest."""
    return _best(candidates, prm_min)


def prm_min_vote(candidates: Sequence[Candidate], same: Same = is_equivalent) -> Candidate | None:
    """Vote weighted by each candidate's weakest step score."""
    return _vote(candidates, prm_min, same)


def prm_last_max(candidates: Sequence[Candidate], same: Same = is_equivalent) -> Candidate | None:
    """The candidate whose final step scores highest."""
    return _best(candidates, prm_last)


def prm_last_vote(candidates: Sequence[Candidate], same: Same = is_equivalent) -> Candidate | None:
    """Vote weighted by each candidate's final step score."""
    return _vote(candidates, prm_last, same)


def prm_prod_max(candidates: Sequence[Candidate], same: Same = is_equivalent) -> Candidate | None:
    """The candidate whose product of step scores is highest."""
    return _best(candidates, prm_prod)


def prm_prod_vote(candidates: Sequence[Candidate], same: Same = is_equivalent) -> Candidate | None:
    """Vote weighted by each candidate's product of step scores."""
    return _vote(candidates, prm_prod, same)


Selection = Callable[..., "Candidate | None"]  # (candidates, same=is_equivalent) -> the chosen one

SELECTIONS: dict[str, Selection] = {
    "majority": majority,
    "orm_max": orm_max,
    "orm_vote": orm_vote,
    "prm_min_max": prm_min_max,
    "prm_min_vote": prm_min_vote,
    "prm_last_max": prm_last_max,
    "prm_last_vote": prm_last_vote,
    "prm_prod_max": prm_prod_max,
    "prm_prod_vote": prm_prod_vote,
}

UNSCORED = frozenset({"majority"})  # selections that read no verifier score (they spend no verifier tokens)


def select(name: str, candidates: Sequence[Candidate], same: Same = is_equivalent) -> Candidate | None:
    """The candidate that selection ``name`` chooses (None: no candidate has an answer)."""
    if name not in SELECTIONS:
        raise ValueError(f"unknown selection {name!r}; known: {', '.join(SELECTIONS)}")
    return SELECTIONS[name](candidates, same)


def selected_correct(name: str, candidates: Sequence[Candidate], same: Same = is_equivalent) -> bool:
    """Is the candidate that ``name`` chooses correct? Nothing chosen counts as wrong."""
    chosen = select(name, candidates, same)
    return chosen is not None and chosen.correct
