"""Bridges from the HF ``Trainer`` (SFT, GRPO on TRL) to our run layout and ``RunLog``.

TRL reports to TensorBoard itself; ``RunLogCallback`` copies what it logs into ``metrics.jsonl``
under our metric names, so ``retool plot`` and experiment reports read one format whichever trainer
ran. ``trainer_device_args`` and ``prepare_trainer`` are the setup both Trainer-based commands
share (precision; TensorBoard folder, pad token).

Not here: computing metrics (the trainers and ``rl_rollout``), writing files (``run_log``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

from transformers import TrainerCallback

from retool.training.run_log import RunLog


def trainer_device_args() -> dict[str, bool]:
    """A Trainer config's device keywords: CPU without CUDA, bf16 where the GPU has it."""
    import torch

    cuda = torch.cuda.is_available()
    return {"use_cpu": not cuda, "bf16": cuda and torch.cuda.is_bf16_supported()}


def prepare_trainer(out: Path, tokenizer: Any) -> None:
    """Point the Trainer's TensorBoard callback at ``out/tb``; give the tokenizer a pad token (batches
    are padded)."""
    os.environ["TENSORBOARD_LOGGING_DIR"] = str(out / "tb")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token


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
