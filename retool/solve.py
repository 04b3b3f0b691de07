"""``retool solve``: one problem, one trajectory, printed as it was written.

Builds the engine and a one-session sandbox pool from a frozen config, runs the rollout, and
returns a JSON-ready report (the trajectory's text, token ids, loss mask, tool calls with status,
finish reason, answer). Printing is optional so the same function serves ``--json``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from rich.markup import escape

from retool.engines import create_engine
from retool.engines.base import SamplingParams
from retool.rollout import Rollout, RolloutConfig
from retool.sandbox import SandboxLimits, SandboxPool
from retool.grading import extract_answer_from_trajectory
from retool.terminal import for_terminal
from retool.transcript import print_transcript


@dataclass(frozen=True)
class SolveConfig:
    model: str | None = None
    engine: str = "hf"
    base_url: str | None = None
    api_key: str | None = None
    sandbox: str = "jupyter"
    dialect: str = "retool"
    max_tool_calls: int = 8
    max_tokens: int = 1024
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    timeout: float = 10.0


def run_solve(problem: str, config: SolveConfig, console=None) -> dict[str, Any]:
    started = time.monotonic()
    engine = create_engine(config.engine, config.model, base_url=config.base_url, api_key=config.api_key, max_batch=1)
    try:
        rollout_config = RolloutConfig(
            dialect=config.dialect,
            max_tool_calls=config.max_tool_calls,
            max_total_tokens=config.max_tokens,
            sampling=SamplingParams(temperature=config.temperature, top_p=config.top_p, seed=config.seed),
            sandbox_timeout=config.timeout,
        )
        with SandboxPool(config.sandbox, size=1, limits=SandboxLimits(timeout_s=config.timeout)) as pool:
            rollout = Rollout(engine, pool, rollout_config)
            traj = rollout.run([rollout.prompt_ids(problem)], [{"problem": problem}])[0]
        tokenizer = engine.tokenizer
        answer = extract_answer_from_trajectory(traj, tokenizer, rollout.dialect)
        if console is not None:
            print_transcript(console, traj, tokenizer, rollout.dialect)
            console.rule()
            if traj.infra_failure:
                console.print(f"[red]stopped: {escape(traj.finish_detail or 'infrastructure failure')}[/red] "
                              "(not the model's doing)", highlight=False)
            shown = escape(for_terminal(answer)) if answer is not None else "(none)"
            console.print(
                f"answer: [bold]{shown}[/bold]   finish: {traj.finish_reason}   "
                f"tool calls: {len(traj.tool_calls)} "
                f"({', '.join(c.result.status.value for c in traj.tool_calls) or '-'})   "
                f"tokens: {traj.num_model_tokens} model + {traj.num_tool_tokens} interpreter   "
                f"{time.monotonic() - started:.1f} s",
                highlight=False,
            )
        return {
            "problem": problem,
            "answer": answer,
            "finish_reason": traj.finish_reason,
            "finish_detail": traj.finish_detail,
            "text": tokenizer.decode(traj.ids, skip_special_tokens=False),
            "prompt_ids": traj.prompt_ids,
            "ids": traj.ids,
            "loss_mask": traj.loss_mask,
            "logprobs": traj.logprobs,
            "tool_calls": [
                {"code": c.code, "status": c.result.status.value, "stdout": c.result.stdout, "error": c.result.error,
                 "output_span": list(c.output_span)}
                for c in traj.tool_calls
            ],
            "config": {k: v for k, v in config.__dict__.items() if k != "api_key"},
        }
    finally:
        engine.close()
