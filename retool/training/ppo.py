"""``retool rl`` with ``algorithm: ppo`` — ReTool's algorithm, our own actor–critic on accelerate.

One step::

    sample (rl_rollout: group_size answers per problem, the interpreter in the loop, outcome reward)
    → old log-probs and values (no grad)      → reward on each answer's last model token
    → GAE twice: λ_actor (1, or VAPO's 1 − 1/(α·len)) for the policy, λ_critic for value targets
    → ppo_epochs × minibatches: clipped policy loss (clip-higher, token-level aggregation)
                                 + clipped value loss; critic alone during warm-up steps

Every position with loss mask 0 — prompt, interpreter output, padding, and whole answers cut by the
token budget when ``mask_truncated`` — is skipped by GAE and contributes exactly zero gradient.

The critic is the actor's backbone with a scalar head (``AutoModelForTokenClassification``,
``num_labels=1``, head zero-initialised so it starts at V = 0), or a separate checkpoint.
``values[:, t]`` is read from the hidden state before token t, like ``token_logprobs``.

With a ``vllm:`` section the rollouts run on TRL's vLLM (``vllm_rollouts.open_vllm``): the policy's
weights are pushed into it before every rollout; old log-probs are still recomputed here.

Checkpoints (``checkpoint.py``) hold both models, both optimizers, the RNG states and the data
position; sampling seeds derive from the step, so a resumed run repeats the uninterrupted one.

Not here: sampling (``rl_rollout``), the math (``advantages``, ``losses``), GRPO (``grpo``).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import torch

from retool.datasets import Problem
from retool.training.advantages import gae, length_adaptive_lambda, masked_whiten
from retool.training.checkpoint import DataCursor, latest_checkpoint, load_checkpoint, save_checkpoint
from retool.training.interrupt import StopRequest
from retool.training.losses import (aggregate, aggregation_share, entropy_from_logits, kl_k3, masked_mean, policy_loss,
                                    token_logprobs, value_loss)
from retool.training.recipe import RLRecipe
from retool.training.online_filter import FilterBuffer
from retool.training.rl_rollout import RolloutBatch, sample, sample_filtered, trained_on
from retool.training.run_log import RunLog
from retool.trajectory import collate


def build_critic(recipe: RLRecipe, policy):
    """A value model: the policy's backbone (or ``ppo.critic_model``) plus a zero-initialised head."""
    from transformers import AutoModelForTokenClassification

    settings = recipe.ppo
    if settings.critic == "separate" and settings.critic_model:
        critic = AutoModelForTokenClassification.from_pretrained(settings.critic_model, num_labels=1)
    else:
        config = copy.deepcopy(policy.config)
        config.num_labels = 1
        critic = AutoModelForTokenClassification.from_config(config)
        critic.base_model.load_state_dict(policy.base_model.state_dict(), strict=True)
    head = critic.score if hasattr(critic, "score") else critic.classifier
    torch.nn.init.zeros_(head.weight)
    if getattr(head, "bias", None) is not None:
        torch.nn.init.zeros_(head.bias)
    return critic.to(next(policy.parameters()).device)


@dataclass(frozen=True)
class Rollouts:
    """A step's samples as tensors; every [B, T] tensor shares the ``input_ids`` layout."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    mask: torch.Tensor  # trained positions: model tokens of answers that count
    old_logprobs: torch.Tensor
    old_values: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor


class PPOTrainer:
    def __init__(self, recipe: RLRecipe, model, tokenizer, problems: list[Problem], pool, run_log: RunLog) -> None:
        from accelerate import Accelerator

        self.recipe, self.tokenizer, self.pool, self.run_log = recipe, tokenizer, pool, run_log
        self.problems = problems
        self.accelerator = Accelerator(cpu=not torch.cuda.is_available())
        torch.manual_seed(recipe.seed)
        self.reference = copy.deepcopy(model).eval().requires_grad_(False) if self.needs_reference() else None
        critic, critic_opt = self.build_helper(model)
        actor_opt = torch.optim.AdamW(model.parameters(), lr=recipe.learning_rate, weight_decay=recipe.weight_decay)
        self.policy, self.critic, self.actor_opt, self.critic_opt = self.accelerator.prepare(
            model, critic, actor_opt, critic_opt)
        self.cursor = DataCursor(len(problems), recipe.seed)
        self.step = 0
        self.vllm, self.engine = None, None
        self.filter_buffer: FilterBuffer | None = None
        if recipe.vllm is not None:
            from retool.training.vllm_rollouts import open_vllm, rollout_engine

            self.vllm = open_vllm(recipe.vllm, self.accelerator.unwrap_model(self.policy), self.accelerator,
                                  tokenizer, recipe.rollout.max_total_tokens)
            self.engine = rollout_engine(recipe.vllm, self.vllm, tokenizer)

    def needs_reference(self) -> bool:
        """A frozen copy of the starting policy is kept for the KL term."""
        return self.recipe.beta > 0

    def build_helper(self, model):
        """The second trained model and its optimizer: here the critic (PRIME: its implicit PRM)."""
        critic = build_critic(self.recipe, model)
        return critic, torch.optim.AdamW(critic.parameters(), lr=self.recipe.ppo.critic_learning_rate)

    def usable(self, batch: RolloutBatch) -> RolloutBatch:
        """What the update sees: infrastructure failures are no part of it."""
        return batch.scored()

    # -- the loop --------------------------------------------------------------------------------

    def train(self, stop: StopRequest | None = None) -> int:
        recipe, out = self.recipe, self.run_log.run_dir
        resume = latest_checkpoint(out / "checkpoints")
        if resume is not None:
            self.step = load_checkpoint(resume, self)
            self.run_log.truncate_after(self.step)
        while self.step < recipe.steps and not (stop and stop.requested):
            policy = self.accelerator.unwrap_model(self.policy)
            if self.vllm is not None:
                self.vllm.sync_weights()  # every step: after an update, and after a resume
            batch, filtered = self.collect(policy)
            started = time.monotonic()
            scored = self.usable(batch)
            numbers = self.update(scored) if scored.trajectories else {}
            self.step += 1
            numbers["time/update_s"] = time.monotonic() - started
            self.run_log.scalars(self.step, {**batch.metrics.as_scalars(), **filtered, **numbers})
            if self.step % recipe.sample_every == 0 or self.step == 1:
                self.run_log.samples(self.step, batch.records(self.tokenizer, recipe.samples_per_log))
            if self.step % recipe.save_steps == 0 or self.step == recipe.steps or (stop and stop.requested):
                save_checkpoint(out / "checkpoints", self.step, self)
        return self.step

    def collect(self, policy) -> tuple[RolloutBatch, dict[str, float]]:
        """This step's samples. With ``online_filter``: rounds of oversampled prompts until the batch
        holds ``prompts_per_step`` informative groups (surplus carried to the next step; carried
        groups are not checkpointed, so a resumed run samples their replacements)."""
        recipe, f = self.recipe, self.recipe.online_filter
        if f is None:
            problems = [self.problems[i] for i in self.cursor.take(recipe.prompts_per_step)]
            return sample(policy, self.tokenizer, self.pool, problems, recipe, self.step, engine=self.engine), {}
        if self.filter_buffer is None:
            self.filter_buffer = FilterBuffer(f)
        filtered = sample_filtered(
            self.filter_buffer, recipe.prompts_per_step, recipe.group_size,
            draw=lambda n, round_: [self.problems[i] for i in self.cursor.take(n)],
            sample_round=lambda problems, round_: sample(policy, self.tokenizer, self.pool, problems, recipe, self.step,
                                                         engine=self.engine, round_=round_))
        return filtered.batch, filtered.stats

    # -- one update ----------------------------------------------------------------------------------

    def prepare_rollouts(self, batch: RolloutBatch) -> Rollouts:
        recipe, settings = self.recipe, self.recipe.ppo
        packed, ids, attn, mask = self.pack(batch)
        device = self.accelerator.device
        old_logprobs, old_values = [], []
        with torch.no_grad():
            for rows in self._chunks(len(ids), recipe.micro_batch_size, shuffle=False):
                old_logprobs.append(self._logprobs(self.policy, ids[rows], attn[rows])[0])
                old_values.append(self._values(ids[rows], attn[rows]))
        old_logprobs, old_values = torch.cat(old_logprobs), torch.cat(old_values)
        rewards = torch.zeros_like(mask)
        lengths = packed.loss_mask.sum(1)
        for row, reward in enumerate(batch.rewards):
            last = _last_index(packed.loss_mask[row])
            if last is not None:
                rewards[row, last] = reward
        if settings.length_adaptive_alpha is not None:
            lam_actor = length_adaptive_lambda(lengths.to(device), settings.length_adaptive_alpha)
        else:
            lam_actor = settings.lambda_actor
        advantages, _ = gae(rewards, old_values, mask, settings.gamma, lam_actor)
        _, returns = gae(rewards, old_values, mask, settings.gamma, settings.lambda_critic)
        advantages = masked_whiten(advantages, mask)
        return Rollouts(ids, attn, mask, old_logprobs, old_values, advantages, returns)

    def pack(self, batch: RolloutBatch):
        """(packed, input ids, attention mask, trained positions) on the device: the trained positions
        are the loss mask without the trajectories the recipe keeps out (truncated, void turns)."""
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        packed = collate(batch.trajectories, pad)
        device = self.accelerator.device
        keep = torch.tensor([trained_on(t, self.recipe) for t in batch.trajectories], device=device)
        mask = packed.loss_mask.to(device) * keep.unsqueeze(1)
        return packed, packed.input_ids.to(device), packed.attention_mask.to(device), mask

    def update(self, batch: RolloutBatch) -> dict[str, float]:
        recipe, settings = self.recipe, self.recipe.ppo
        r = self.prepare_rollouts(batch)
        train_actor = self.step >= settings.critic_warmup_steps
        sums: dict[str, list[float]] = {}
        for _ in range(settings.ppo_epochs):
            for rows in self._chunks(len(r.input_ids), settings.minibatch_size, shuffle=True):
                ids, attn, mask = r.input_ids[rows], r.attention_mask[rows], r.mask[rows]
                if train_actor:
                    self.actor_step(r, rows, sums)
                values = self._values(ids, attn)
                vl, vclip = value_loss(values, r.old_values[rows], r.returns[rows], mask, settings.value_clip,
                                       recipe.loss_type)
                self.critic_opt.zero_grad(set_to_none=True)
                self.accelerator.backward(vl)
                self.accelerator.clip_grad_norm_(self.critic.parameters(), recipe.max_grad_norm)
                self.critic_opt.step()
                _add(sums, "loss/value", vl.item())
                _add(sums, "value/clip_frac", vclip)
        numbers = {k: sum(v) / len(v) for k, v in sums.items()}
        numbers["lr"] = recipe.learning_rate
        numbers["critic_warmup"] = float(not train_actor)
        return numbers

    def actor_step(self, r: Rollouts, rows: list[int], sums: dict[str, list[float]]) -> None:
        """One clipped policy-gradient step on the minibatch ``rows`` (plus the KL term with β > 0),
        its forward and backward in micro-batches of ``micro_batch_size`` rows (the memory bound:
        full-vocabulary logits per token), each weighted so the step is the minibatch's exactly."""
        recipe = self.recipe
        whole = r.mask[rows]
        self.actor_opt.zero_grad(set_to_none=True)
        numbers = {"loss/policy": 0.0, "clip_frac": 0.0, "kl": 0.0, "entropy": 0.0}
        for start in range(0, len(rows), recipe.micro_batch_size):
            part = rows[start:start + recipe.micro_batch_size]
            ids, attn, mask = r.input_ids[part], r.attention_mask[part], r.mask[part]
            share = aggregation_share(mask, whole, recipe.loss_type)
            tokens = aggregation_share(mask, whole, "dapo")  # metrics are token means
            logprobs, entropy = self._logprobs(self.policy, ids, attn, with_entropy=True)
            pl = policy_loss(logprobs, r.old_logprobs[part], r.advantages[part], mask,
                             recipe.epsilon, recipe.epsilon_high, recipe.loss_type)
            loss = pl.loss
            if recipe.beta > 0:
                with torch.no_grad():
                    ref, _ = self._logprobs(self.reference, ids, attn)
                kl = aggregate(kl_k3(logprobs, ref), mask, recipe.loss_type)
                loss = loss + recipe.beta * kl
                numbers["kl"] += share * kl.item()
            else:
                numbers["kl"] += tokens * pl.approx_kl
            self.accelerator.backward(loss * share)
            numbers["loss/policy"] += share * pl.loss.item()
            numbers["clip_frac"] += tokens * pl.clip_frac
            numbers["entropy"] += tokens * masked_mean(entropy, mask.bool())
        norm = self.accelerator.clip_grad_norm_(self.policy.parameters(), recipe.max_grad_norm)
        self.actor_opt.step()
        for key, value in numbers.items():
            _add(sums, key, value)
        _add(sums, "grad_norm", float(norm))

    # -- helpers ---------------------------------------------------------------------------------

    def _logprobs(self, model, ids, attn, with_entropy: bool = False):
        logits = model(input_ids=ids, attention_mask=attn).logits
        logprobs = token_logprobs(logits, ids, self.recipe.rollout.sampling.temperature)
        entropy = None
        if with_entropy:  # a metric, not a loss term: no graph through the full-vocabulary softmax
            with torch.no_grad():
                entropy = entropy_from_logits(logits, self.recipe.rollout.sampling.temperature)
        return logprobs, entropy

    def _values(self, ids, attn) -> torch.Tensor:
        scores = self.critic(input_ids=ids, attention_mask=attn).logits.squeeze(-1).float()
        return torch.nn.functional.pad(scores[:, :-1], (1, 0))  # V before token t, aligned like logprobs

    def _chunks(self, n: int, size: int, shuffle: bool):
        order = torch.randperm(n).tolist() if shuffle else list(range(n))
        return [order[i:i + size] for i in range(0, n, size)]


def _last_index(mask_row: torch.Tensor) -> int | None:
    nonzero = torch.nonzero(mask_row).flatten()
    return int(nonzero[-1]) if len(nonzero) else None


def _add(sums: dict[str, list[float]], key: str, value: float) -> None:
    sums.setdefault(key, []).append(float(value))
