"""Training recipes: one YAML file per run, validated before anything loads.

A recipe names every knob that changes the result; nothing is read from the environment. How a
trajectory is written and where its code runs are not re-declared here: a recipe holds the
library's own settings, ``rollout:`` (``RolloutConfig``: dialect, budgets, sampling, few-shot) and
``sandbox:`` (``SandboxSpec``: backend and limits). A section lists only what it changes: the rest
keeps the recipe's defaults, which differ from the library's where RL and SFT deliberately differ
(said beside them). Unknown keys are errors (a typo such as ``learing_rate`` must not silently
train with the default). Paths are resolved against the current directory, except ``output_dir``
placeholders are left to the caller.

Not here: running anything (``sft.py``, ``grpo.py``, ``ppo.py``), accelerate/DeepSpeed settings
(those live in ``training/accelerate/*.yaml`` and are passed to ``accelerate launch``).
"""

from __future__ import annotations

from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from retool.engines.base import SamplingParams
from retool.rollout import RolloutConfig
from retool.sandbox.spec import SandboxSpec
from retool.training.online_filter import OnlineFilter
from retool.training.roc import ResampleOnCorrect


LOSS_TYPES = ("dapo", "grpo", "dr_grpo", "bnpo", "cispo", "sapo", "luspo", "vespo")  # what TRL's GRPOTrainer has
OWN_LOSS_TYPES = ("dapo", "grpo", "dr_grpo")  # the aggregations retool's own loop (ppo, prime) implements


class RecipeError(ValueError):
    """A recipe that cannot be used, with the file and the field at fault."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _sections_override_defaults(cls, data: Any) -> Any:
        """``rollout: {max_total_tokens: 192}`` changes that one field of the recipe's default
        rollout, not of a library default the recipe does not use."""
        if not isinstance(data, dict):
            return data
        merged = dict(data)
        for name, info in cls.model_fields.items():
            if isinstance(merged.get(name), dict) and is_dataclass(info.default):
                merged[name] = _merge(_as_dict(info.default), merged[name])
        return merged


def _as_dict(settings: Any) -> dict[str, Any]:
    return {f.name: _as_dict(getattr(settings, f.name)) if is_dataclass(getattr(settings, f.name))
            else getattr(settings, f.name) for f in fields(settings)}


def _merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in changes.items():
        out[key] = _merge(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    return out


class LoraSettings(_Strict):
    r: int = Field(16, gt=0)
    alpha: int = Field(32, gt=0)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] | str = "all-linear"


class SFTRecipe(_Strict):
    """``retool sft``: supervised fine-tuning on code-integrated (or text) traces."""

    model: str = "smollm2-135m-instruct"  # the untrained base, by name (not the shipped adapter)
    data: list[str]  # jsonl files of {"messages": [user, assistant], ...} (coldstart format)
    output_dir: str
    # the prompt each trace is rendered under, as the rollout will write it: dialect, few-shot (off:
    # a trained model needs no demonstration), and max_tool_calls 0 for text-only traces
    rollout: RolloutConfig = RolloutConfig(few_shot=False)
    max_length: int = Field(1024, gt=0)
    max_examples: int | None = Field(None, gt=0)
    epochs: float = Field(1.0, gt=0)
    max_steps: int = -1  # > 0 overrides epochs
    learning_rate: float = Field(5e-5, gt=0)
    lr_scheduler: str = "cosine"
    warmup_ratio: float = Field(0.0, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    batch_size: int = Field(8, gt=0)
    grad_accum: int = Field(1, gt=0)
    seed: int = 0
    save_steps: int = Field(100, gt=0)
    logging_steps: int = Field(10, gt=0)
    lora: LoraSettings | None = None
    report_to: list[str] = ["tensorboard"]  # add "wandb" when it is installed


class RewardSettings(_Strict):
    correct: float = 1.0
    incorrect: float = -1.0
    no_answer: float | None = None  # optional penalty, off by default


class PPOSettings(_Strict):
    """Only for ``algorithm: ppo`` (ReTool's algorithm; VAPO options included)."""

    critic: Literal["value_head", "separate"] = "value_head"  # value head on a copy of the actor backbone
    critic_model: str | None = None  # for "separate": another checkpoint; default the actor's
    critic_learning_rate: float = Field(5e-6, gt=0)
    gamma: float = Field(1.0, gt=0, le=1)
    lambda_actor: float = Field(1.0, ge=0, le=1)  # decoupled GAE (VAPO): unbiased policy advantages
    lambda_critic: float = Field(1.0, ge=0, le=1)  # value targets
    length_adaptive_alpha: float | None = Field(None, gt=0)  # VAPO: λ_actor = 1 − 1/(α·length)
    value_clip: float | None = Field(0.2, gt=0)
    critic_warmup_steps: int = Field(0, ge=0)  # train only the critic for the first N steps
    ppo_epochs: int = Field(1, gt=0)
    minibatch_size: int = Field(8, gt=0)


class PRIMESettings(_Strict):
    """Only for ``algorithm: prime`` (PRIME: an implicit PRM in place of the critic)."""

    prm_learning_rate: float = Field(1e-6, gt=0)
    beta: float = Field(0.05, gt=0)  # r_t = β · log(πφ/πref), β inside the reward (``training/prime.py``)
    reference: Literal["sft", "old_policy"] = "sft"  # πref: the frozen starting model, or the step's old policy
    prm_update: Literal["before", "after"] = "before"  # update the PRM before its rewards are read (2 forwards)
    granularity: Literal["token", "step"] = "token"  # step: each tool-integrated step's sum, at its last token
    process_coef: float = Field(5.0, ge=0)
    outcome_coef: float = Field(5.0, ge=0)
    ppo_epochs: int = Field(1, gt=0)
    minibatch_size: int = Field(8, gt=0)


class VLLMSettings(_Strict):
    """Rollouts on vLLM (GPU), through TRL's vLLM integration (both algorithms): ``colocate`` builds a
    vLLM on each training GPU, ``server`` talks to ``trl vllm-serve`` running on other GPUs."""

    mode: Literal["colocate", "server"] = "colocate"
    server_host: str = "127.0.0.1"
    server_port: int = 8000
    server_base_url: str | None = None  # overrides host and port
    server_timeout: float = Field(240.0, gt=0)  # how long to wait for the server to come up
    gpu_memory_utilization: float = Field(0.3, gt=0, le=1)  # colocate: vLLM's share of each training GPU
    tensor_parallel_size: int = Field(1, gt=0)
    max_model_length: int | None = Field(None, gt=0)  # colocate: vLLM's context (default: the model's)

    @model_validator(mode="after")
    def _one_rank_per_vllm(self) -> "VLLMSettings":
        if self.mode == "colocate" and self.tensor_parallel_size > 1:
            raise ValueError("colocate with tensor_parallel_size > 1 would need every rank of a group to generate in "
                             "lock-step, which the multi-turn loop does not do; use mode: server for a sharded vLLM")
        return self


class RLRecipe(_Strict):
    """``retool rl``: outcome-reward RL with the interpreter in the loop."""

    algorithm: Literal["grpo", "dapo", "ppo", "prime"] = "dapo"
    model: str = "smollm2-135m-instruct"  # the untrained base, by name (not the shipped adapter)
    data: list[str]  # problems: any file ``retool.datasets`` reads (id, problem, answer)
    output_dir: str
    max_problems: int | None = Field(None, gt=0)
    # how samples are written: RL samples at temperature 1 (not the library's greedy default), with
    # short budgets and no demonstration; max_tool_calls 0 is text-only RL (a code block ends the
    # answer). The sampling seed is not set here: each step's derives from ``seed``.
    rollout: RolloutConfig = RolloutConfig(max_total_tokens=512, max_tool_calls=4, few_shot=False,
                                           sampling=SamplingParams(temperature=1.0))
    sandbox: SandboxSpec = SandboxSpec()
    sandbox_workers: int | None = Field(None, gt=0)  # default: one per sample of a step (no queueing)
    # the loop
    steps: int = Field(20, gt=0)
    prompts_per_step: int = Field(8, gt=0)
    group_size: int = Field(4, gt=0)  # samples per prompt (GRPO's G; PPO samples this many too)
    # the update
    learning_rate: float = Field(1e-6, gt=0)
    micro_batch_size: int = Field(8, gt=0)
    # dapo = token-level mean over the batch; grpo, dr_grpo: per-sequence and constant denominators
    # (every algorithm); the rest are TRL's (algorithm grpo): bnpo (local token mean), cispo (MiniMax-M1:
    # clipped IS weights, epsilon_high is its ε_max, ~5), sapo (soft gate, sapo_temperature_*), luspo
    # (sequence level, length-scaled), vespo (soft Gamma weights on sequence ratios)
    loss_type: Literal[LOSS_TYPES] = "dapo"
    importance_sampling_level: Literal["token", "sequence"] = "token"  # sequence: GSPO's ratio (TRL's; grpo)
    sapo_temperature_pos: float = Field(1.0, gt=0)
    sapo_temperature_neg: float = Field(1.05, gt=0)
    epsilon: float = Field(0.2, gt=0)
    epsilon_high: float = Field(0.28, gt=0)  # clip-higher (DAPO)
    beta: float = Field(0.0, ge=0)  # KL coefficient; 0 = no reference model (ReTool, DAPO)
    mask_truncated: bool = True  # truncated answers get no gradient (DAPO's overlong filtering)
    mask_void_turns: bool = False  # SimpleTIR: a trajectory ended by a turn with neither code nor answer, no gradient
    scale_rewards: bool = True  # GRPO's std normalisation (False: Dr. GRPO)
    max_grad_norm: float = Field(1.0, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    reward: RewardSettings = RewardSettings()
    ppo: PPOSettings = PPOSettings()
    prime: PRIMESettings = PRIMESettings()
    # online prompt filtering (PRIME, DAPO's dynamic sampling): only groups whose accuracy lies in
    # ``accuracy`` fill a step's batch; more prompts are sampled until it is full (every algorithm)
    online_filter: OnlineFilter | None = None
    # GRPO-RoC (rStar2-Agent): draw ``oversample × group_size`` per prompt, keep group_size: the wrong
    # ones at random, the correct ones with the fewest tool errors and format problems (all algorithms)
    resample_on_correct: ResampleOnCorrect | None = None
    vllm: VLLMSettings | None = None
    # bookkeeping
    seed: int = 0
    save_steps: int = Field(10, gt=0)
    logging_steps: int = Field(1, gt=0)
    sample_every: int = Field(5, gt=0)  # write sample trajectories every N steps
    samples_per_log: int = Field(4, gt=0)
    report_to: list[str] = ["tensorboard"]

    @model_validator(mode="after")
    def _consistent(self) -> "RLRecipe":
        if self.epsilon_high < self.epsilon:
            raise ValueError("epsilon_high is the upper clip; it must be ≥ epsilon")
        if self.algorithm in ("grpo", "dapo", "prime") and self.group_size < 2:
            raise ValueError("group-relative advantages (and PRIME's leave-one-out) need group_size ≥ 2")
        if self.algorithm == "dapo" and self.loss_type != "dapo":
            raise ValueError("algorithm dapo uses loss_type dapo (token-level); use algorithm grpo for the others")
        if self.algorithm in ("ppo", "prime") and self.loss_type not in OWN_LOSS_TYPES:
            raise ValueError(f"loss_type {self.loss_type} is TRL's (algorithm grpo); {self.algorithm} aggregates with "
                             f"one of {', '.join(OWN_LOSS_TYPES)}")
        if self.algorithm in ("ppo", "prime") and self.importance_sampling_level != "token":
            raise ValueError("importance_sampling_level sequence (GSPO) is TRL's: use algorithm grpo")
        if self.loss_type == "luspo" and self.importance_sampling_level != "sequence":
            raise ValueError("loss_type luspo is a sequence-level loss: set importance_sampling_level: sequence")
        if self.importance_sampling_level == "sequence" and self.loss_type in ("bnpo", "dr_grpo", "dapo", "cispo", "vespo"):
            raise ValueError(f"loss_type {self.loss_type} works on token-level ratios: importance_sampling_level "
                             "sequence goes with grpo, sapo or luspo")
        if self.rollout.sampling.seed is not None:
            raise ValueError("rollout.sampling.seed: each step's sampling seed derives from the recipe's seed; set seed")
        if self.rollout.sampling.temperature <= 0:
            raise ValueError("rollout.sampling.temperature: RL needs sampling (> 0); greedy samples are all alike")
        return self


class PRMRecipe(_Strict):
    """``retool prm train``: a verifier on step labels (``retool prm label``), on the policy's trunk."""

    objective: Literal["process", "outcome", "implicit"] = "process"  # outcome: the ORM baseline; implicit: PRIME
    model: str = "smollm2-135m-instruct"  # the policy whose samples were labelled (its trunk starts the PRM)
    labels: list[str]  # labels.jsonl files or the directories holding them
    output_dir: str
    max_length: int = Field(1024, gt=0)  # tokens of prompt + trajectory; boundaries past it are not trained on
    val_fraction: float = Field(0.2, ge=0, lt=1)  # of problems (by a hash of the id), never trained on
    train_blocks: int | None = Field(2, ge=0)  # train only the top k blocks (0: the head on cached states); None: all
    lora: LoraSettings | None = None  # GPU: LoRA on the trunk instead of train_blocks
    beta: float = Field(0.05, gt=0)  # implicit: the log-ratio's scale (PRIME's β)
    epochs: float = Field(2.0, gt=0)
    max_steps: int = -1  # > 0 overrides epochs
    learning_rate: float = Field(1e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    batch_size: int = Field(4, gt=0)
    seed: int = 0
    save_steps: int = Field(20, gt=0)
    eval_steps: int = Field(20, gt=0)
    logging_steps: int = Field(1, gt=0)
    report_to: list[str] = ["tensorboard"]

    @model_validator(mode="after")
    def _consistent(self) -> "PRMRecipe":
        if self.lora is not None and self.train_blocks is not None:
            raise ValueError("lora and train_blocks are two ways to choose what trains; set train_blocks: null with lora")
        return self


Recipe = SFTRecipe | RLRecipe | PRMRecipe


def load_recipe(path: str | Path, kind: type[SFTRecipe] | type[RLRecipe] | type[PRMRecipe], **overrides) -> Recipe:
    """Read and validate a recipe; ``overrides`` (from the command line) replace top-level keys."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise RecipeError(f"no recipe at {path}") from None
    except yaml.YAMLError as exc:
        raise RecipeError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise RecipeError(f"{path} must hold a mapping of settings, not {type(raw).__name__}")
    raw.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return kind.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or '(recipe)'}: {e['msg']}" for e in exc.errors())
        raise RecipeError(f"{path}: {problems}") from None
