"""GRPO-RoC (rStar2-Agent's Resample-on-Correct): oversample a group, keep the failures as they
came, and among the correct traces keep the cleanest.

Why: an outcome reward pays a correct answer the same whether its code ran cleanly or crashed three
times on the way. Trained on as they are, correct traces teach the tool errors they contain (the
interpreter's noise). RoC samples ``oversample × G`` traces per prompt and keeps ``G``:

* the kept share of correct traces is the sampled share (rounded; at least one of each kind when
  both exist, so the group keeps its spread);
* wrong traces are kept uniformly at random: their variety is what the negative advantage teaches;
* correct traces are kept by their ``trace_penalty``, lowest first (ties at random): the share of
  their calls that failed (``0.5`` for a trace with no call at all, rStar2's convention: neither
  clean tool use nor an error) plus one if their format is off (a malformed call, or more than one
  answer written).

Pure functions; ``rl_rollout.sample`` applies them when the recipe sets ``resample_on_correct``.
Not here: sampling, rewards, advantages.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any, Sequence

from retool.protocol import Dialect
from retool.trajectory import Trajectory

NO_CALL_ERROR_SHARE = 0.5  # rStar2-Agent: a trace without tool calls counts as half erroneous


@dataclass(frozen=True)
class ResampleOnCorrect:
    oversample: int = 2  # traces sampled per trace kept (rStar2-Agent: 2G sampled, G kept)

    def __post_init__(self) -> None:
        if self.oversample < 2:
            raise ValueError(f"resample_on_correct.oversample must be >= 2 (1 would keep every trace): {self.oversample}")


def tool_error_share(traj: Trajectory) -> float:
    """The share of ``traj``'s calls that did not run cleanly; ``NO_CALL_ERROR_SHARE`` without calls."""
    calls = traj.tool_calls
    if not calls:
        return NO_CALL_ERROR_SHARE
    return sum(not c.result.ok for c in calls) / len(calls)


def answers_written(traj: Trajectory, tokenizer: Any, dialect: Dialect) -> int:
    """How many answers the model wrote (its own tokens only): openings of the dialect's answer
    section, or ``\\boxed{`` where the box stands in the prose."""
    text = tokenizer.decode(traj.model_ids(), skip_special_tokens=True)
    opening = dialect.answer_open.strip()  # "<answer>" however the model spaced it
    return text.count(opening) if opening else text.count("\\boxed{")


def format_problems(traj: Trajectory, answers: int) -> int:
    """Malformed calls plus answers beyond the first."""
    return sum(c.malformed for c in traj.tool_calls) + max(0, answers - 1)


def trace_penalty(traj: Trajectory, answers: int) -> float:
    """rStar2-Agent's p_err + p_format: tool error share, plus 1 if the format is off."""
    return tool_error_share(traj) + min(1, format_problems(traj, answers))


def resample_on_correct(correct: Sequence[bool | None], penalties: Sequence[float], keep: int,
                        rng: random.Random) -> list[int]:
    """Which of one prompt's oversampled traces to keep (indices, in sampling order). ``correct``:
    the outcome of each trace, None for one that was not scored (an infrastructure failure: kept
    only when too few were scored); ``penalties``: ``trace_penalty`` of each."""
    if len(correct) != len(penalties):
        raise ValueError(f"{len(correct)} outcomes for {len(penalties)} penalties")
    if keep < 1:
        raise ValueError(f"keep must be >= 1: {keep}")
    scored = [i for i, c in enumerate(correct) if c is not None]
    if len(scored) <= keep:
        unscored = [i for i, c in enumerate(correct) if c is None]
        return sorted(scored + unscored[:keep - len(scored)])
    right = [i for i in scored if correct[i]]
    wrong = [i for i in scored if not correct[i]]
    n_right = math.floor(keep * len(right) / len(scored) + 0.5)
    if right and wrong and keep >= 2:
        n_right = min(max(n_right, 1), keep - 1)
    n_right = min(n_right, len(right))
    n_wrong = min(keep - n_right, len(wrong))
    n_right = keep - n_wrong
    ties = {i: rng.random() for i in right}
    cleanest = sorted(right, key=lambda i: (penalties[i], ties[i]))[:n_right]
    return sorted(cleanest + rng.sample(wrong, n_wrong))
