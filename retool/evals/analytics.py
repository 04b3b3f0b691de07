"""How the model used its interpreter in an evaluation, as the ReTool paper reports it.

The numbers are ``retool.trajectory_stats`` (the same definitions RL logs and the benchmarks
print), over the graded samples, with the last-call pass rates of right vs wrong answers.
"""

from __future__ import annotations

from collections.abc import Sequence

from retool.grading import ScoredSample
from retool.trajectory_stats import trajectory_stats


def tool_analytics(samples: Sequence[ScoredSample]) -> dict[str, object]:
    if not samples:
        return {}
    return trajectory_stats([s.trajectory for s in samples], [s.correct for s in samples]).as_dict()
