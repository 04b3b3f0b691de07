"""Rollouts for RL: the live policy, our interpreter loop, the outcome reward, the step's numbers.

Both RL trainers (``grpo`` through TRL's ``rollout_func``, ``ppo`` directly) sample through here,
so the tool loop, the loss mask and the reward are the same whichever algorithm updates the model.
Each call builds a fresh ``HFEngine`` over the *current* weights (its KV cache would be stale after
an update) and hands the model back in training mode, unless the trainer passes a vLLM engine whose
weights it has just synced (``vllm_rollouts``). Sampling is seeded from (recipe seed, step),
so a resumed run draws the same samples as an uninterrupted one.

Text-only RL is the same loop with ``max_tool_calls: 0`` and the text-only prompt: a code block the
model writes is never run and ends the answer.

A trajectory stopped by an infrastructure failure (``infra_error``: the sandbox, the engine or the
host failed) gets no reward (``nan``): the trainers leave it out of the group statistics and the
loss, and ``infra/failure_rate`` logs how often it happened.

Not here: advantages, losses, optimizers.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from typing import Any, Sequence

import torch

from retool.datasets import Problem
from retool.engines.base import Engine
from retool.engines.hf import HFEngine
from retool.grading import RewardConfig, extract_answer_from_trajectory, is_equivalent, reward_for_answer
from retool.protocol import get_dialect
from retool.rollout import Rollout, RolloutConfig
from retool.seeds import derive_seed
from retool.training.advantages import zero_advantage_group_share
from retool.training.recipe import RLRecipe
from retool.trajectory import Trajectory


@dataclass(frozen=True)
class RolloutMetrics:
    """One step's rollout numbers, under the ``RunLog`` metric names (see ``as_scalars``)."""

    reward_mean: float  # these means are over scored samples: infrastructure failures are left out
    accuracy: float
    calls_per_answer: float
    failure_rate: float
    model_tokens_mean: float
    interpreter_tokens_mean: float
    truncation_rate: float
    zero_adv_group_share: float
    rollout_s: float
    sandbox_s: float
    infra_failure_rate: float = 0.0

    def as_scalars(self) -> dict[str, float]:
        return {
            "reward/mean": self.reward_mean, "accuracy": self.accuracy,
            "tools/calls_per_answer": self.calls_per_answer, "tools/failure_rate": self.failure_rate,
            "tokens/model_mean": self.model_tokens_mean, "tokens/interpreter_mean": self.interpreter_tokens_mean,
            "truncation_rate": self.truncation_rate, "zero_adv_group_share": self.zero_adv_group_share,
            "time/rollout_s": self.rollout_s, "time/sandbox_s": self.sandbox_s,
            "infra/failure_rate": self.infra_failure_rate,
        }


@dataclass(frozen=True)
class RolloutBatch:
    """``group_size`` consecutive trajectories per problem, with their rewards (``nan``: an
    infrastructure failure, not scored)."""

    problems: list[Problem]
    trajectories: list[Trajectory]
    rewards: list[float]
    correct: list[bool]
    answers: list[str | None]
    metrics: RolloutMetrics

    def scored(self) -> "RolloutBatch":
        """Only the trajectories that were scored (what a trainer without group structure updates on)."""
        keep = [i for i, t in enumerate(self.trajectories) if not t.infra_failure]
        return RolloutBatch(self.problems, [self.trajectories[i] for i in keep], [self.rewards[i] for i in keep],
                            [self.correct[i] for i in keep], [self.answers[i] for i in keep], self.metrics)

    def samples(self, tokenizer: Any, limit: int) -> list[dict[str, Any]]:
        """A few trajectories as readable records for ``samples.jsonl``."""
        out = []
        for i, traj in enumerate(self.trajectories[:limit]):
            out.append({
                "problem_id": traj.meta.get("problem_id"), "gold": traj.meta.get("gold"),
                "answer": self.answers[i], "reward": self.rewards[i], "finish_reason": traj.finish_reason,
                "tool_calls": len(traj.tool_calls),
                "text": tokenizer.decode(traj.ids, skip_special_tokens=False),
            })
        return out


def rollout_config(recipe: RLRecipe, step: int) -> RolloutConfig:
    """The recipe's rollout, seeded for ``step`` (a resumed run draws the same samples)."""
    rollout = recipe.rollout
    return replace(rollout, sampling=rollout.sampling.with_(seed=derive_seed(recipe.seed, "rl-step", step)))


def reward_config(recipe: RLRecipe) -> RewardConfig:
    r = recipe.reward
    return RewardConfig(r.correct, r.incorrect, r.no_answer)


def score(traj: Trajectory, gold: str, tokenizer: Any, recipe: RLRecipe) -> tuple[float, bool, str | None]:
    """The outcome reward from the model's own tokens (``retool.grading``): (reward, correct, answer)."""
    answer = extract_answer_from_trajectory(traj, tokenizer, get_dialect(recipe.rollout.dialect))
    return reward_for_answer(answer, gold, reward_config(recipe)), is_equivalent(answer, gold), answer


def sample(model, tokenizer, pool, problems: Sequence[Problem], recipe: RLRecipe, step: int,
           engine: Engine | None = None) -> RolloutBatch:
    """``recipe.group_size`` trajectories per problem from the current weights, scored. ``engine``:
    one that already holds those weights (vLLM, synced by the trainer); default a fresh ``HFEngine``."""
    config = rollout_config(recipe, step)
    group = recipe.group_size
    own_engine = engine is None
    if own_engine:
        engine = HFEngine(model, tokenizer, max_batch=max(1, len(problems) * group),
                          capacity=min(1024, recipe.rollout.max_total_tokens + 512))
    started = time.monotonic()
    try:
        rollout = Rollout(engine, pool, config)
        prompts, metas = [], []
        for problem in problems:
            ids = rollout.prompt_ids(problem.problem)
            for k in range(group):
                prompts.append(ids)
                metas.append({"problem_id": problem.id, "gold": problem.answer, "sample": k})
        trajectories = rollout.run(prompts, metas)
    finally:
        if own_engine:
            engine.close()
        model.train()
    rollout_s = time.monotonic() - started
    scored = [(math.nan, False, None) if t.infra_failure else score(t, t.meta["gold"], tokenizer, recipe)
              for t in trajectories]
    rewards = [s[0] for s in scored]
    for traj, r in zip(trajectories, rewards):
        traj.reward = r
    metrics = summarize(trajectories, rewards, [s[1] for s in scored], group, rollout_s, rollout.stats.sandbox_s)
    return RolloutBatch(list(problems), trajectories, rewards, [s[1] for s in scored], [s[2] for s in scored], metrics)


def summarize(trajectories: list[Trajectory], rewards: list[float], correct: list[bool], group: int,
              rollout_s: float = 0.0, sandbox_s: float = 0.0) -> RolloutMetrics:
    infra = sum(t.infra_failure for t in trajectories)
    kept = [i for i, t in enumerate(trajectories) if not t.infra_failure]
    scored = len(kept) or 1
    trajectories_all, trajectories = trajectories, [trajectories[i] for i in kept]
    n = len(trajectories) or 1
    calls = [c for t in trajectories for c in t.tool_calls]
    failed = sum(1 for c in calls if not c.result.ok)
    return RolloutMetrics(
        reward_mean=sum(rewards[i] for i in kept) / scored,
        accuracy=sum(correct[i] for i in kept) / scored,
        calls_per_answer=len(calls) / n,
        failure_rate=failed / len(calls) if calls else 0.0,
        model_tokens_mean=sum(t.num_model_tokens for t in trajectories) / n,
        interpreter_tokens_mean=sum(t.num_tool_tokens for t in trajectories) / n,
        truncation_rate=sum(t.finish_reason == "length" for t in trajectories) / n,
        zero_adv_group_share=zero_advantage_group_share(torch.tensor(rewards), group) if group > 1 else 0.0,
        rollout_s=rollout_s, sandbox_s=sandbox_s,
        infra_failure_rate=infra / max(len(trajectories_all), 1),
    )
