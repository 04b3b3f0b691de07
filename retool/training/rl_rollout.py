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
import random
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Sequence

import torch

from retool.datasets import Problem
from retool.engines.base import Engine
from retool.engines.hf import HFEngine
from retool.grading import RewardConfig, ScoredSample, Verdict, score
from retool.protocol import get_dialect
from retool.rollout import Rollout, RolloutConfig
from retool.seeds import derive_seed
from retool.training.advantages import zero_advantage_group_share
from retool.training.online_filter import FilterBuffer
from retool.training.recipe import RLRecipe
from retool.training.roc import answers_written, resample_on_correct, trace_penalty
from retool.trajectory import Trajectory
from retool.trajectory_stats import TrajectoryStats, trajectory_stats

INFRA_VERDICT = Verdict(None, False, "infra_error")  # not graded: an infrastructure failure


@dataclass(frozen=True)
class RolloutMetrics:
    """One step's rollout numbers, under the ``RunLog`` metric names (see ``as_scalars``); the tool
    numbers are ``retool.trajectory_stats`` (the definitions ``retool eval`` reports)."""

    reward_mean: float  # these means are over scored samples: infrastructure failures are left out
    accuracy: float
    stats: TrajectoryStats
    zero_adv_group_share: float
    rollout_s: float
    sandbox_s: float
    infra_failure_rate: float = 0.0
    extras: dict[str, float] = field(default_factory=dict)  # what an option adds (``roc/*``)

    def as_scalars(self) -> dict[str, float]:
        st = self.stats
        return {**self.extras,
            "reward/mean": self.reward_mean, "accuracy": self.accuracy,
            "tools/calls_per_answer": st.tool_calls_per_answer, "tools/failure_rate": st.code_failure_rate,
            "tools/code_ratio": st.code_ratio, "tools/first_call_position": st.first_code_position,
            "tools/limit_rate": st.tool_limit_rate, "tools/invalid_call_rate": st.invalid_call_rate,
            "tools/malformed_call_rate": st.malformed_call_rate,
            "tokens/model_mean": st.model_tokens_mean, "tokens/interpreter_mean": st.interpreter_tokens_mean,
            "truncation_rate": st.truncation_rate, "zero_adv_group_share": self.zero_adv_group_share,
            "time/rollout_s": self.rollout_s, "time/sandbox_s": self.sandbox_s,
            "infra/failure_rate": self.infra_failure_rate,
        }


@dataclass(frozen=True)
class RolloutBatch:
    """``group_size`` consecutive scored samples per problem (an infrastructure failure has reward
    ``nan`` and the verdict ``infra_error``: it is not scored)."""

    samples: list[ScoredSample]
    metrics: RolloutMetrics

    @property
    def trajectories(self) -> list[Trajectory]:
        return [s.trajectory for s in self.samples]

    @property
    def rewards(self) -> list[float]:
        return [s.reward for s in self.samples]

    def scored(self) -> "RolloutBatch":
        """Only the samples that were scored (what a trainer without group structure updates on)."""
        return RolloutBatch([s for s in self.samples if not s.trajectory.infra_failure], self.metrics)

    def records(self, tokenizer: Any, limit: int) -> list[dict[str, Any]]:
        """A few samples as readable records for ``samples.jsonl``."""
        return [{"problem_id": s.problem_id, "gold": s.gold, "answer": s.answer, "reward": s.reward,
                 "finish_reason": s.trajectory.finish_reason, "tool_calls": len(s.trajectory.tool_calls),
                 "text": tokenizer.decode(s.trajectory.ids, skip_special_tokens=False)}
                for s in self.samples[:limit]]


def void_turn(traj: Trajectory) -> bool:
    """SimpleTIR's void turn: the trajectory's last model turn wrote neither a code block nor an
    answer (it ended at EOS with no answer; a cut-off turn is ``mask_truncated``'s business)."""
    return traj.finish_reason == "eos"


def trained_on(traj: Trajectory, recipe: RLRecipe) -> bool:
    """Whether any of ``traj``'s tokens enter the loss: not an infrastructure failure, not cut by the
    budget (``mask_truncated``), not ended by a void turn (``mask_void_turns``)."""
    if traj.infra_failure:
        return False
    if recipe.mask_truncated and traj.finish_reason == "length":
        return False
    return not (recipe.mask_void_turns and void_turn(traj))


def rollout_config(recipe: RLRecipe, step: int, round_: int = 0) -> RolloutConfig:
    """The recipe's rollout, seeded for ``step`` (a resumed run draws the same samples); ``round_``
    > 0: another sampling round of the same step (online prompt filtering)."""
    rollout = recipe.rollout
    seed = derive_seed(recipe.seed, "rl-step", step) if round_ == 0 else derive_seed(recipe.seed, "rl-step", step, round_)
    return replace(rollout, sampling=rollout.sampling.with_(seed=seed))


def reward_config(recipe: RLRecipe) -> RewardConfig:
    r = recipe.reward
    return RewardConfig(r.correct, r.incorrect, r.no_answer)


def sample(model, tokenizer, pool, problems: Sequence[Problem], recipe: RLRecipe, step: int,
           engine: Engine | None = None, round_: int = 0) -> RolloutBatch:
    """``recipe.group_size`` trajectories per problem from the current weights, scored. ``engine``:
    one that already holds those weights (vLLM, synced by the trainer); default a fresh ``HFEngine``.
    With ``resample_on_correct``, ``oversample`` times as many are drawn and each group is cut back
    to ``group_size`` (``training/roc.py``); the accuracy logged is the kept groups', the sampled
    one is ``roc/accuracy_sampled``."""
    config = rollout_config(recipe, step, round_)
    roc = recipe.resample_on_correct
    group = recipe.group_size * (roc.oversample if roc is not None else 1)
    own_engine = engine is None
    if own_engine:
        engine = HFEngine(model, tokenizer, max_batch=max(1, len(problems) * group),
                          capacity=min(1024, recipe.rollout.max_total_tokens + 512))
    started = time.monotonic()
    try:
        rollout = Rollout(engine, pool, config)
        prompts, metas, owners = [], [], []
        for problem in problems:
            ids = rollout.prompt_ids(problem.problem)
            for k in range(group):
                prompts.append(ids)
                metas.append({"problem_id": problem.id, "sample": k})
                owners.append((problem, k))
        trajectories = rollout.run(prompts, metas)
    finally:
        if own_engine:
            engine.close()
        model.train()
    rollout_s = time.monotonic() - started
    dialect, rewards = get_dialect(recipe.rollout.dialect), reward_config(recipe)
    samples = [ScoredSample(problem, k, t, INFRA_VERDICT, math.nan) if t.infra_failure
               else score(problem, k, t, tokenizer, dialect, rewards)
               for (problem, k), t in zip(owners, trajectories)]
    if roc is None:
        return RolloutBatch(samples, summarize(samples, group, rollout_s, rollout.stats.sandbox_s))
    rng = random.Random(derive_seed(recipe.seed, "roc", step, round_))
    kept, extras = downsample_groups(samples, group, recipe.group_size, tokenizer, dialect, rng)
    metrics = summarize(kept, recipe.group_size, rollout_s, rollout.stats.sandbox_s)
    return RolloutBatch(kept, replace(metrics, extras=extras))


@dataclass(frozen=True)
class FilteredBatch:
    """What online filtering collected for one step: ``batch`` (kept groups, oldest first), the
    ``filter/*`` numbers, and the groups it dropped in this step's last round (a trainer that needs a
    batch of fixed size pads with them, out of the loss)."""

    batch: RolloutBatch
    stats: dict[str, float]
    dropped: list[list[ScoredSample]]


def sample_filtered(buffer: FilterBuffer[list[ScoredSample]], wanted: int, group: int,
                    draw: Callable[[int, int], Sequence[Problem]],
                    sample_round: Callable[[Sequence[Problem], int], RolloutBatch]) -> FilteredBatch:
    """Online prompt filtering's loop, for both RL loops: rounds of ``draw(n, round)`` prompts,
    sampled by ``sample_round(problems, round)``, offered to ``buffer`` group by group, until it
    holds ``wanted`` informative groups or ``max_rounds`` is reached (then what there is)."""
    started, batch, rounds = time.monotonic(), None, 0
    dropped: list[list[ScoredSample]] = []
    while batch is None:
        needed = buffer.needed(wanted)
        if needed > 0:
            sampled = sample_round(draw(buffer.settings.to_sample(needed), rounds), rounds)
            dropped = []
            for i in range(0, len(sampled.samples), group):
                samples = sampled.samples[i:i + group]
                if not buffer.offer(samples, [float(s.correct) for s in samples if not s.trajectory.infra_failure]):
                    dropped.append(samples)
            rounds += 1
        batch = buffer.take(wanted, force=rounds >= buffer.settings.max_rounds)
    samples = [s for kept in batch for s in kept]
    metrics = summarize(samples, group, time.monotonic() - started)
    return FilteredBatch(RolloutBatch(samples, metrics), {**buffer.stats(), "filter/rounds": rounds}, dropped)


def downsample_groups(samples: list[ScoredSample], drawn: int, keep: int, tokenizer, dialect,
                      rng: random.Random) -> tuple[list[ScoredSample], dict[str, float]]:
    """GRPO-RoC over consecutive groups of ``drawn`` samples, each cut to ``keep``; and the numbers
    that show what it did: the sampled accuracy, and the penalty of the correct traces kept and dropped."""
    kept: list[ScoredSample] = []
    penalty_kept, penalty_dropped = [], []
    for i in range(0, len(samples), drawn):
        group = samples[i:i + drawn]
        correct = [None if s.trajectory.infra_failure else s.correct for s in group]
        penalties = [trace_penalty(s.trajectory, answers_written(s.trajectory, tokenizer, dialect)) for s in group]
        chosen = set(resample_on_correct(correct, penalties, keep, rng))
        kept.extend(s for j, s in enumerate(group) if j in chosen)
        for j, s in enumerate(group):
            if correct[j]:
                (penalty_kept if j in chosen else penalty_dropped).append(penalties[j])
    scored = [s for s in samples if not s.trajectory.infra_failure]
    return kept, {"roc/accuracy_sampled": sum(s.correct for s in scored) / max(len(scored), 1),
                  "roc/penalty_kept_correct": _mean(penalty_kept), "roc/penalty_dropped_correct": _mean(penalty_dropped)}


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def summarize(samples: list[ScoredSample], group: int, rollout_s: float = 0.0, sandbox_s: float = 0.0) -> RolloutMetrics:
    kept = [s for s in samples if not s.trajectory.infra_failure]
    scored = len(kept) or 1
    return RolloutMetrics(
        reward_mean=sum(s.reward for s in kept) / scored,
        accuracy=sum(s.correct for s in kept) / scored,
        stats=trajectory_stats([s.trajectory for s in samples], [s.correct for s in samples]),
        zero_adv_group_share=(zero_advantage_group_share(torch.tensor([s.reward for s in samples]), group)
                              if group > 1 else 0.0),
        rollout_s=rollout_s, sandbox_s=sandbox_s,
        infra_failure_rate=(len(samples) - len(kept)) / max(len(samples), 1),
    )
