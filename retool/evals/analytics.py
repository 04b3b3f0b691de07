"""How the model used its interpreter, as the ReTool paper reports it.

From graded samples: the share of responses that wrote code, code lines per response, the share
of code blocks that ran cleanly, the pass rate of the *last* code block in correct vs wrong
responses, tool calls per response, where in the response the first code call came (relative
position in tokens), model vs interpreter tokens, truncation rate, and sandbox status counts.
Pure functions over ``Sample`` records; nothing here runs code.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from retool.evals.metrics import mean
from retool.trajectory import Trajectory


@dataclass(frozen=True)
class Sample:
    """One graded answer."""

    problem_id: str
    sample: int
    answer: str | None
    gold: str
    correct: bool
    trajectory: Trajectory


def tool_analytics(samples: list[Sample]) -> dict[str, float | dict[str, int]]:
    trajs = [s.trajectory for s in samples]
    if not trajs:
        return {}
    with_code = [t for t in trajs if t.tool_calls]

    def last_block_pass_rate(group: list[Sample]) -> float:
        lasts = [s.trajectory.tool_calls[-1].result.ok for s in group if s.trajectory.tool_calls]
        return mean([float(x) for x in lasts])

    all_calls = [c for t in trajs for c in t.tool_calls]
    first_positions = [t.tool_calls[0].code_end / max(len(t.ids), 1) for t in with_code]
    return {
        "responses": len(trajs),
        "code_ratio": len(with_code) / len(trajs),
        "code_lines_per_response": mean([sum(len(c.code.splitlines()) for c in t.tool_calls) for t in trajs]),
        "tool_calls_per_response": mean([len(t.tool_calls) for t in trajs]),
        "code_pass_rate": mean([float(c.result.ok) for c in all_calls]),
        "last_code_pass_rate_correct": last_block_pass_rate([s for s in samples if s.correct]),
        "last_code_pass_rate_wrong": last_block_pass_rate([s for s in samples if not s.correct]),
        "first_code_position": mean(first_positions),
        "model_tokens_per_response": mean([t.num_model_tokens for t in trajs]),
        "interpreter_tokens_per_response": mean([t.num_tool_tokens for t in trajs]),
        "truncation_rate": mean([float(t.finish_reason in ("length", "max_tool_calls")) for t in trajs]),
        "finish_reasons": dict(Counter(t.finish_reason or "unfinished" for t in trajs)),
        "sandbox_status": dict(Counter(c.result.status.value for c in all_calls)),
    }
