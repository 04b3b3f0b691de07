"""``retool rl`` with ``algorithm: grpo | dapo`` — TRL's GRPOTrainer, our interpreter loop.

This is the only module that touches TRL's GRPO API (``rollout_func`` is marked experimental
there; ``tests/test_grpo_contract.py`` pins what we rely on). What we hand TRL:

* ``rollout_func(prompts, trainer)``: TRL's sampler repeats each prompt ``num_generations`` times
  consecutively; we run one group per distinct problem through ``rl_rollout.sample`` (the live
  weights, the sandbox, the outcome reward) and return ``prompt_ids``, ``completion_ids``,
  ``env_mask`` (1 = model token, 0 = interpreter output: no gradient) and the reward as an extra
  field. An answer that ended normally (``</answer>``, a refused block) gets an EOS appended with
  mask 0, so TRL does not mistake it for a truncated one; a ``length`` finish stays truncated and
  is masked when ``mask_truncated``. Sampling logprobs are passed only with vLLM (TRL corrects for the
  vLLM/trainer mismatch with them); otherwise TRL recomputes the old log-probs itself.
* with ``vllm:``, TRL builds the vLLM and syncs the weights before each call; we sample from it
  through ``vllm_rollouts.rollout_engine`` (our loop, its generation).
* a reward function that returns that reward (so TRL's advantage code sees ``retool.grading``'s).
* the loss settings: ``loss_type`` (dapo: token-level; TRL's others: cispo, sapo, ...),
  ``importance_sampling_level`` (GSPO), ``epsilon``/``epsilon_high`` (clip-higher), ``beta`` (KL; 0
  loads no reference model), ``scale_rewards`` (group std, or none for Dr. GRPO).
* with ``online_filter``: the groups of informative prompts only (``filtered_batch``): TRL's own
  prompts open the step, further ones are drawn by a seeded draw, and the batch keeps TRL's size.

Checkpoints and exact resume are the HF Trainer's (weights, optimizer, scheduler, RNG, step, the
sampler's position); our sampling seeds derive from the step, so resumed rollouts match.

Not here: the rollout loop (``retool.rollout``), scoring (``rl_rollout``), PPO (``ppo``).
"""

from __future__ import annotations

import logging
import math
import os
import random
from pathlib import Path
from typing import Any

from retool.datasets import Problem
from retool.training.interrupt import StopOnRequestCallback, StopRequest
from retool.training.recipe import RLRecipe
from retool.seeds import derive_seed
from retool.training.online_filter import FilterBuffer
from retool.training.rl_rollout import RolloutBatch, sample, sample_filtered, void_turn
from retool.training.run_log import RunLog
from retool.training.trainer_callbacks import RunLogCallback, prepare_trainer, trainer_device_args
from retool.training.vllm_rollouts import grpo_vllm_args, rollout_engine

log = logging.getLogger(__name__)

TRL_METRIC_NAMES = {
    "loss": "loss/policy", "entropy": "entropy", "kl": "kl", "grad_norm": "grad_norm", "learning_rate": "lr",
    "clip_ratio/region_mean": "clip_frac",
}


class RolloutContractError(RuntimeError):
    """TRL called ``rollout_func`` in a way this module was not written for (its API changed)."""


def problems_dataset(problems: list[Problem]):
    """The train set TRL iterates: the problem text as ``prompt`` (plain text: templating is ours)."""
    from datasets import Dataset

    return Dataset.from_list([{"prompt": p.problem, "answer": p.answer, "problem_id": p.id} for p in problems])


def make_rollout_func(recipe: RLRecipe, tokenizer, pool, problems: list[Problem], run_log: RunLog | None):
    by_text: dict[str, Problem] = {}
    for p in problems:
        if by_text.setdefault(p.problem, p).answer != p.answer:
            raise ValueError(f"problem {p.id} appears twice with different answers")
    eos = tokenizer.eos_token_id
    engines: list = []  # the engine over TRL's vLLM, made on first use (the trainer builds the vLLM)
    buffer = FilterBuffer(recipe.online_filter) if recipe.online_filter is not None else None

    def rollout_func(prompts: list[Any], trainer) -> dict[str, list]:
        group = trainer.num_generations
        if len(prompts) % group or any(prompts[i] != prompts[i - i % group] for i in range(len(prompts))):
            raise RolloutContractError(f"expected each prompt repeated {group} times in a row, got {len(prompts)} prompts")
        unique = [by_text[prompts[i]] for i in range(0, len(prompts), group)]
        step = trainer.state.global_step
        model = trainer.accelerator.unwrap_model(trainer.model)
        if recipe.vllm is not None and not engines:
            engines.append(rollout_engine(recipe.vllm, trainer.vllm_generation, tokenizer))
        run = recipe.model_copy(update={"group_size": group})

        def sample_round(chosen, round_: int):
            return sample(model, tokenizer, pool, chosen, run, step, engine=engines[0] if engines else None,
                          round_=round_)

        padded: set[int] = set()
        if buffer is None:
            batch, filtered = sample_round(unique, 0), {}
        else:
            batch, filtered, padded = filtered_batch(buffer, unique, problems, group, recipe.seed, step, sample_round)
        completion_ids, env_mask, logprobs = [], [], []
        for row, traj in enumerate(batch.trajectories):
            ids, mask, lps = list(traj.ids), list(traj.loss_mask), list(traj.logprobs)
            if row in padded or traj.infra_failure or (recipe.mask_void_turns and void_turn(traj)):
                mask = [0] * len(mask)  # no token of it in the loss (an infra failure has no reward either)
            if traj.finish_reason != "length" and (not ids or ids[-1] != eos):
                ids.append(eos)
                mask.append(0)
                lps.append(0.0)
            completion_ids.append(ids)
            env_mask.append(mask)
            logprobs.append(lps)
        if run_log is not None and trainer.accelerator.is_main_process:
            run_log.scalars(step + 1, {**batch.metrics.as_scalars(), **filtered})
            if (step + 1) % recipe.sample_every == 0 or step == 0:
                run_log.samples(step + 1, batch.records(tokenizer, recipe.samples_per_log))
        return {"prompt_ids": [t.prompt_ids for t in batch.trajectories], "completion_ids": completion_ids,
                "logprobs": logprobs if recipe.vllm is not None else None,  # for TRL's vLLM importance sampling
                "env_mask": env_mask, "retool_reward": batch.rewards}

    return rollout_func


def filtered_batch(buffer: FilterBuffer, unique: list[Problem], problems: list[Problem], group: int, seed: int,
                   step: int, sample_round) -> tuple[RolloutBatch, dict[str, float], set[int]]:
    """Online prompt filtering inside TRL's loop: TRL's prompts open the first round, more are drawn
    (seeded by step and round, so a resumed run draws the same) until ``len(unique)`` informative
    groups are in hand. TRL wants exactly as many groups as it sent: the batch may hold other
    problems than its prompts (its completion log then pairs them with its prompt text), and a step
    left short after ``max_rounds`` is padded with dropped groups whose tokens are all out of the
    loss. Returns (batch, ``filter/*`` numbers, the padded rows)."""

    def draw(n: int, round_: int) -> list[Problem]:
        rng = random.Random(derive_seed(seed, "filter-draw", step, round_))
        opening = list(unique) if round_ == 0 else []
        return opening + [problems[rng.randrange(len(problems))] for _ in range(max(0, n - len(opening)))]

    filtered = sample_filtered(buffer, len(unique), group, draw, sample_round)
    samples, short = list(filtered.batch.samples), len(unique) - len(filtered.batch.samples) // group
    padding = [s for dropped in filtered.dropped[:short] for s in dropped]
    padded = set(range(len(samples), len(samples) + len(padding)))
    if len(samples) + len(padding) != len(unique) * group:
        raise RolloutContractError(f"online filtering gathered {len(samples) + len(padding)} samples for "
                                   f"{len(unique) * group}")
    batch = RolloutBatch(samples + padding, filtered.batch.metrics)
    return batch, {**filtered.stats, "filter/padded_groups": short}, padded


def outcome_reward(prompts, completions, retool_reward, **kwargs) -> list[float | None]:
    """The reward ``rl_rollout`` computed with ``retool.grading`` on the model's own tokens; None for
    an infrastructure failure, which TRL then leaves out of the group baseline (advantage 0)."""
    return [None if math.isnan(r) else r for r in retool_reward]


def grpo_config(recipe: RLRecipe):
    from trl import GRPOConfig

    from accelerate import PartialState

    out = Path(recipe.output_dir)
    processes = PartialState().num_processes
    per_step = recipe.prompts_per_step * recipe.group_size  # samples per optimizer step, all processes together
    micro = min(recipe.micro_batch_size, per_step)
    if per_step % (micro * processes):
        raise ValueError(f"prompts_per_step × group_size ({per_step}) must be a multiple of micro_batch_size × "
                         f"processes ({micro} × {processes})")
    return GRPOConfig(
        output_dir=str(out / "checkpoints"), report_to=list(recipe.report_to),
        max_steps=recipe.steps, learning_rate=recipe.learning_rate, lr_scheduler_type="constant",
        weight_decay=recipe.weight_decay, max_grad_norm=recipe.max_grad_norm,
        per_device_train_batch_size=micro, gradient_accumulation_steps=per_step // (micro * processes),
        num_generations=recipe.group_size, max_completion_length=recipe.rollout.max_total_tokens + 1,
        temperature=recipe.rollout.sampling.temperature, top_p=recipe.rollout.sampling.top_p,
        loss_type=recipe.loss_type, importance_sampling_level=recipe.importance_sampling_level,
        sapo_temperature_pos=recipe.sapo_temperature_pos, sapo_temperature_neg=recipe.sapo_temperature_neg,
        epsilon=recipe.epsilon, epsilon_high=recipe.epsilon_high, beta=recipe.beta,
        scale_rewards="group" if recipe.scale_rewards else "none", mask_truncated_completions=recipe.mask_truncated,
        num_iterations=1, seed=recipe.seed, data_seed=recipe.seed, save_steps=recipe.save_steps,
        save_total_limit=2, logging_steps=recipe.logging_steps, disable_dropout=True,
        remove_unused_columns=False, dataloader_num_workers=0, **trainer_device_args(),
        **({"use_vllm": False} if recipe.vllm is None else grpo_vllm_args(recipe.vllm)),
    )


def build_trainer(recipe: RLRecipe, model, tokenizer, problems: list[Problem], pool, run_log: RunLog | None,
                  stop: StopRequest | None = None):
    from trl import GRPOTrainer

    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # we know; the contract test watches it
    prepare_trainer(Path(recipe.output_dir), tokenizer)
    callbacks = []
    if stop is not None:
        callbacks.append(StopOnRequestCallback(stop))
    if run_log is not None:
        callbacks.append(RunLogCallback(run_log, TRL_METRIC_NAMES))
    return GRPOTrainer(model=model, reward_funcs=[outcome_reward], args=grpo_config(recipe),
                       train_dataset=problems_dataset(problems), processing_class=tokenizer,
                       rollout_func=make_rollout_func(recipe, tokenizer, pool, problems, run_log),
                       callbacks=callbacks)
