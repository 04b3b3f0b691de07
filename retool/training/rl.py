"""``retool rl``: load a recipe's problems, model and sandbox, and run its algorithm.

Layout of ``output_dir`` (every algorithm): ``checkpoints/`` (resume state), ``final/`` (model +
tokenizer), ``metrics.jsonl`` and ``tb/`` (curves), ``samples.jsonl`` (sample trajectories),
``config.json`` (the recipe); PRIME also ``prm/``, its implicit PRM as a verifier (``load_prm``). Rerunning the same command resumes from the newest checkpoint.

Not here: the algorithms (``grpo``, ``ppo``), the rollout (``rl_rollout``).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from pathlib import Path

from retool.datasets import Problem, load_benchmark
from retool.models import load_tokenizer, load_trainable, training_device
from retool.sandbox.pool import SandboxPool
from retool.training.interrupt import StopRequest
from retool.training.recipe import RLRecipe
from retool.training.run_log import RunLog
from retool.training.sft import resume_point, save_model
from retool.training.vllm_rollouts import check_vllm_usable

@dataclass(frozen=True)
class RLResult:
    output_dir: Path
    final_dir: Path | None  # None when stopped early (Ctrl-C): resume by running the command again
    steps: int
    interrupted: bool


def load_problems(recipe: RLRecipe) -> list[Problem]:
    problems = [p for spec in recipe.data for p in load_benchmark(spec)]
    if recipe.max_problems is not None:
        problems = random.Random(recipe.seed).sample(problems, min(recipe.max_problems, len(problems)))
    return problems


def open_pool(recipe: RLRecipe) -> SandboxPool:
    """One session per in-flight sample. Text-only RL runs no code: its sessions are the stateless
    subprocess kind, which start nothing until asked to run (so they cost nothing)."""
    oversample = recipe.online_filter.oversample if recipe.online_filter is not None else 1.0
    drawn = recipe.group_size * (recipe.resample_on_correct.oversample if recipe.resample_on_correct else 1)
    size = recipe.sandbox_workers or round(recipe.prompts_per_step * oversample) * drawn
    spec = recipe.sandbox if recipe.rollout.tools else replace(recipe.sandbox, backend="subprocess")
    return spec.pool(size)


def run_rl(recipe: RLRecipe, model=None, tokenizer=None, pool: SandboxPool | None = None) -> RLResult:
    """Train as the recipe says (``model``/``tokenizer``/``pool`` objects override the recipe: tests)."""
    if recipe.vllm is not None:
        check_vllm_usable(recipe.vllm)
    out = Path(recipe.output_dir)
    problems = load_problems(recipe)
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(recipe.model)
    if model is None:
        model = load_trainable(recipe.model, device=training_device())
        model.train()
    if recipe.algorithm in ("ppo", "prime") and hasattr(model, "peft_config"):
        raise ValueError(f"{recipe.model} is an adapter; {recipe.algorithm} trains full weights (its critic or "
                         "implicit PRM copies the model): use algorithm dapo or grpo, or a plain checkpoint")
    own_pool = pool is None
    pool = pool if pool is not None else open_pool(recipe)
    run_log = RunLog(out, report_to=recipe.report_to if recipe.algorithm in ("ppo", "prime") else (),
                     config=recipe.model_dump())
    stop = StopRequest()
    try:
        if recipe.algorithm in ("ppo", "prime"):
            from retool.training.ppo import PPOTrainer
            from retool.training.prime_trainer import PRIMETrainer

            kind = PRIMETrainer if recipe.algorithm == "prime" else PPOTrainer
            trainer = kind(recipe, model, tokenizer, problems, pool, run_log)
            with stop:
                steps = trainer.train(stop)
            policy = trainer.policy
        else:
            from retool.training.grpo import build_trainer

            trainer = build_trainer(recipe, model, tokenizer, problems, pool, run_log, stop)
            resume = resume_point(out, run_log)
            with stop:
                trainer.train(resume_from_checkpoint=resume)
            steps, policy = trainer.state.global_step, trainer.model
    finally:
        run_log.close()
        if own_pool:
            pool.close()
    if stop.requested:
        return RLResult(out, None, steps, True)
    final = out / "final"
    save_model(policy, tokenizer, final, recipe.model, recipe.rollout)
    if recipe.algorithm == "prime":
        trainer.save_prm(out / "prm")
    return RLResult(out, final, steps, False)
