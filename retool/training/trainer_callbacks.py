"""Bridges from the HF ``Trainer`` (SFT, GRPO on TRL) to our ``RunLog``.

TRL reports to TensorBoard itself; this copies what it logs into ``metrics.jsonl`` under our metric
names, so ``retool plot`` and experiment reports read one format whichever trainer ran.

Not here: computing metrics (the trainers and ``rl_rollout``), writing files (``run_log``).
"""

from __future__ import annotations

from typing import Mapping

from transformers import TrainerCallback

from retool.training.run_log import RunLog


class RunLogCallback(TrainerCallback):
    """On every Trainer log event, write the renamed numeric values at the current global step."""

    def __init__(self, run_log: RunLog, rename: Mapping[str, str]) -> None:
        self.run_log, self.rename = run_log, dict(rename)

    def on_log(self, args, state, control, logs=None, **kwargs):
        values = {self.rename.get(k, k): float(v) for k, v in (logs or {}).items()
                  if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if values and state.is_world_process_zero:
            self.run_log.scalars(state.global_step, values)
        return control
