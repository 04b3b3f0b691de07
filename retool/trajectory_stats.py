"""How trajectories used the interpreter: one definition of each number, for every caller.

RL logs it each step, ``retool eval`` reports it, the rollout benchmark prints it: all three call
``trajectory_stats``, so a training curve and an evaluation report compare number for number
(the ReTool paper's analytics: code ratio, calls per answer, code pass rate — overall and of the
last block in right vs wrong answers —, where the first call comes, tokens written by the model vs
the interpreter, how often the budget or the call limit ended an answer).

Trajectories stopped by an infrastructure failure (``infra_error``) are left out of every number
(they are not the model's doing); ``infra_failures`` counts them. Pure functions over
``Trajectory`` records: nothing here runs code or grades.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from retool.trajectory import Trajectory


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


@dataclass(frozen=True)
class TrajectoryStats:
    responses: int  # trajectories counted (infrastructure failures left out)
    infra_failures: int
    code_ratio: float  # share of responses that called the interpreter at least once
    tool_calls_per_answer: float
    code_lines_per_response: float
    code_pass_rate: float  # share of calls whose cell ran cleanly (0 without calls)
    code_failure_rate: float  # share of calls that errored, timed out or crashed (0 without calls)
    first_code_position: float  # where the first call ended, as a share of the response's tokens
    model_tokens_mean: float
    interpreter_tokens_mean: float
    truncation_rate: float  # share ended by the token budget (finish "length")
    tool_limit_rate: float  # share ended by the tool-call limit (finish "max_tool_calls")
    invalid_call_rate: float = 0.0  # chat dialect: share of calls that could not run (bad JSON, unknown function)
    malformed_call_rate: float = 0.0  # share of calls that were no program: those, and code that does not parse
    answer_present_rate: float = 0.0  # share that ended with an answer (finish "answer")
    forced_answer_share: float = 0.0  # budget forcing: share whose answer the loop opened at the thinking cap
    last_code_pass_rate_correct: float | None = None  # of the last call, in right answers (with grades)
    last_code_pass_rate_wrong: float | None = None
    finish_reasons: dict[str, int] | None = None
    sandbox_status: dict[str, int] | None = None

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def trajectory_stats(trajectories: Sequence[Trajectory], correct: Sequence[bool] | None = None) -> TrajectoryStats:
    """The numbers for ``trajectories``; ``correct`` (parallel, when graded) adds the last-call pass
    rates of right and wrong answers."""
    if correct is not None and len(correct) != len(trajectories):
        raise ValueError(f"{len(correct)} grades for {len(trajectories)} trajectories")
    kept = [i for i, t in enumerate(trajectories) if not t.infra_failure]
    trajs = [trajectories[i] for i in kept]
    calls = [c for t in trajs for c in t.tool_calls]
    with_code = [t for t in trajs if t.tool_calls]
    passed = sum(c.result.ok for c in calls)

    def last_call_pass_rate(right: bool) -> float | None:
        if correct is None:
            return None
        return _mean([float(trajectories[i].tool_calls[-1].result.ok) for i in kept
                      if trajectories[i].tool_calls and bool(correct[i]) is right])

    return TrajectoryStats(
        responses=len(trajs),
        infra_failures=len(trajectories) - len(trajs),
        code_ratio=_mean([float(bool(t.tool_calls)) for t in trajs]),
        tool_calls_per_answer=_mean([len(t.tool_calls) for t in trajs]),
        code_lines_per_response=_mean([sum(len(c.code.splitlines()) for c in t.tool_calls) for t in trajs]),
        code_pass_rate=passed / len(calls) if calls else 0.0,
        code_failure_rate=(len(calls) - passed) / len(calls) if calls else 0.0,
        first_code_position=_mean([t.tool_calls[0].code_end / max(len(t.ids), 1) for t in with_code]),
        model_tokens_mean=_mean([t.num_model_tokens for t in trajs]),
        interpreter_tokens_mean=_mean([t.num_tool_tokens for t in trajs]),
        truncation_rate=_mean([float(t.finish_reason == "length") for t in trajs]),
        tool_limit_rate=_mean([float(t.finish_reason == "max_tool_calls") for t in trajs]),
        invalid_call_rate=sum(c.invalid is not None for c in calls) / len(calls) if calls else 0.0,
        malformed_call_rate=sum(c.malformed for c in calls) / len(calls) if calls else 0.0,
        answer_present_rate=_mean([float(t.finish_reason == "answer") for t in trajs]),
        forced_answer_share=_mean([float(any(kind == "answer" for *_, kind in t.forced)) for t in trajs]),
        last_code_pass_rate_correct=last_call_pass_rate(True),
        last_code_pass_rate_wrong=last_call_pass_rate(False),
        finish_reasons=dict(Counter(t.finish_reason or "unfinished" for t in trajs)),
        sandbox_status=dict(Counter(c.result.status.value for c in calls)),
    )
