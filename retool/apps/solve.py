"""``retool solve``: one problem, one trajectory, printed as it was written.

Builds the engine and a one-session sandbox pool from the settings, runs the rollout, and
returns a JSON-ready report (the trajectory's text, token ids, loss mask, tool calls with status,
finish reason, answer). Printing is optional so the same function serves ``--json``.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any

from rich.markup import escape

from retool.engines.spec import EngineSpec
from retool.rollout import Rollout, RolloutConfig
from retool.sandbox.spec import SandboxSpec
from retool.grading import extract_answer_from_trajectory
from retool.terminal import for_terminal
from retool.transcript import print_transcript


def run_solve(problem: str, engine: EngineSpec, sandbox: SandboxSpec, rollout: RolloutConfig,
              console=None) -> dict[str, Any]:
    started = time.monotonic()
    served = engine.build(max_batch=1)
    try:
        with sandbox.pool(size=1) as pool:
            runner = Rollout(served, pool, rollout)
            traj = runner.run([runner.prompt_ids(problem)], [{"problem": problem}])[0]
        tokenizer = served.tokenizer
        answer = extract_answer_from_trajectory(traj, tokenizer, runner.dialect)
        if console is not None:
            print_transcript(console, traj, tokenizer, runner.dialect)
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
            "tool_calls": [c.to_dict() for c in traj.tool_calls],
            "config": {"engine": {**asdict(engine), "api_key": None}, "sandbox": asdict(sandbox),
                       "rollout": asdict(rollout)},
        }
    finally:
        served.close()
