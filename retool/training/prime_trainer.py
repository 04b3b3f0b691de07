"""``retool rl`` with ``algorithm: prime`` — PRIME on the PPO trainer's machinery.

One step::

    sample (group_size answers per problem, the interpreter in the loop, outcome reward)
    → old log-probs (policy) and πref log-probs (the frozen starting model, or the old policy)
    → implicit PRM πφ: r_t = β · log(πφ/πref) on model tokens only (interpreter tokens are no actions)
      prm_update "before": a BCE(σ(Σ r), correct) step first, then r read again (two forwards);
                 "after":  r read from the same forward whose loss then steps the PRM
    → (granularity step: each tool-integrated step's sum at its last model token)
    → RLOO on r (token level) and on the outcome; returns = reverse cumsum of
      process_coef · r̂ + outcome_coef · ŝ; whitened → PPO's clipped policy loss (KL 0 by default)

The implicit PRM starts as a copy of the policy and takes the critic's place (its optimizer, its
checkpoint slot), so accelerate, collation, checkpoints, resume and logs are PPO's. Groups with an
infrastructure failure are dropped whole: leave-one-out baselines need the whole group.

Logged: ``prm/loss``, ``prm/pairwise_acc_before`` (and ``_after`` with ``before``), ``prime/
process_return_mean``, ``prime/process_outcome_corr`` (Σ r against the outcome), and the rollout's
``tokens/model_mean`` (the watch for length hacking).

Not here: the math (``prime.py``), sampling, online prompt filtering (``online_filter.py``).
"""

from __future__ import annotations

import copy

import torch

from retool.training.advantages import masked_whiten
from retool.training.ppo import PPOTrainer, Rollouts
from retool.training.prime import (implicit_prm_loss, implicit_token_rewards, pairwise_ranking_accuracy, pearson,
                                   prime_returns, rloo_outcome, rloo_process, step_rewards)
from retool.training.rl_rollout import RolloutBatch


class PRIMETrainer(PPOTrainer):
    def needs_reference(self) -> bool:
        return self.recipe.beta > 0 or self.recipe.prime.reference == "sft"

    def build_helper(self, model):
        """The implicit PRM: a trainable copy of the starting policy (a causal LM)."""
        prm = copy.deepcopy(model).train()
        return prm, torch.optim.AdamW(prm.parameters(), lr=self.recipe.prime.prm_learning_rate)

    def save_prm(self, path) -> None:
        """The trained implicit PRM as a verifier (``retool.prm.load_prm``; ``retool eval --verifier``):
        πφ, with the recipe's starting model as πref (also when training read πref from the old policy)."""
        from retool.prm.model import PRM

        prm = self.accelerator.unwrap_model(self.critic)
        PRM("implicit", prm, self.tokenizer, None, self.recipe.prime.beta, self.recipe.model).save(path)

    def usable(self, batch: RolloutBatch) -> RolloutBatch:
        k = self.recipe.group_size
        groups = [batch.samples[i:i + k] for i in range(0, len(batch.samples), k)]
        whole = [s for g in groups if len(g) == k and not any(x.trajectory.infra_failure for x in g) for s in g]
        return RolloutBatch(whole, batch.metrics)

    def update(self, batch: RolloutBatch) -> dict[str, float]:
        recipe, settings = self.recipe, self.recipe.prime
        r, numbers = self.prepare_prime(batch)
        sums: dict[str, list[float]] = {}
        for _ in range(settings.ppo_epochs):
            for rows in self._chunks(len(r.input_ids), settings.minibatch_size, shuffle=True):
                self.actor_step(r, rows, sums)
        numbers.update({k: sum(v) / len(v) for k, v in sums.items()})
        numbers["lr"] = recipe.learning_rate
        return numbers

    def prepare_prime(self, batch: RolloutBatch) -> tuple[Rollouts, dict[str, float]]:
        recipe, settings = self.recipe, self.recipe.prime
        packed, ids, attn, mask = self.pack(batch)
        device = self.accelerator.device
        mask = mask.float()
        model_mask = packed.loss_mask.to(device).float()  # every model token: the PRM's actions
        old, ref = [], []
        with torch.no_grad():
            for rows in self._chunks(len(ids), recipe.micro_batch_size, shuffle=False):
                old.append(self._logprobs(self.policy, ids[rows], attn[rows])[0])
                if settings.reference == "sft":
                    ref.append(self._logprobs(self.reference, ids[rows], attn[rows])[0])
        old_logprobs = torch.cat(old)
        ref_logprobs = torch.cat(ref) if ref else old_logprobs
        correct = torch.tensor([float(s.correct) for s in batch.samples], device=device)
        outcome = torch.tensor(batch.rewards, device=device, dtype=torch.float32)
        k = recipe.group_size

        rewards, loss = self._prm_step(ids, attn, model_mask, ref_logprobs, correct)
        numbers = {"prm/loss": loss, "prm/pairwise_acc_before": pairwise_ranking_accuracy(rewards.sum(-1), correct, k)}
        if settings.prm_update == "before":  # read the rewards again from the updated PRM
            with torch.no_grad():
                rewards = self._prm_rewards(ids, attn, model_mask, ref_logprobs)
            numbers["prm/pairwise_acc_after"] = pairwise_ranking_accuracy(rewards.sum(-1), correct, k)
        if settings.granularity == "step":
            rewards = step_rewards(rewards, model_mask)
        process = rloo_process(rewards, model_mask, k)
        returns = prime_returns(process, rloo_outcome(outcome, k), mask, settings.process_coef, settings.outcome_coef)
        advantages = masked_whiten(returns, mask)
        process_returns = prime_returns(process, torch.zeros_like(outcome), mask, 1.0, 0.0)
        valid = mask.bool()
        numbers["prime/process_return_mean"] = float(process_returns[valid].mean()) if valid.any() else 0.0
        numbers["prime/process_outcome_corr"] = pearson(rewards.sum(-1), outcome)
        zeros = torch.zeros_like(old_logprobs)
        return Rollouts(ids, attn, mask, old_logprobs, zeros, advantages, returns), numbers

    def _prm_rewards(self, ids, attn, mask, ref_logprobs) -> torch.Tensor:
        out = []
        for rows in self._chunks(len(ids), self.recipe.micro_batch_size, shuffle=False):
            lp, _ = self._logprobs(self.critic, ids[rows], attn[rows])
            out.append(implicit_token_rewards(lp, ref_logprobs[rows], mask[rows], self.recipe.prime.beta))
        return torch.cat(out)

    def _prm_step(self, ids, attn, mask, ref_logprobs, correct) -> tuple[torch.Tensor, float]:
        """One optimizer step of the implicit PRM on this batch's outcomes (micro-batches accumulated);
        returns the rewards its forward gave (detached, before the step) and the loss."""
        self.critic_opt.zero_grad(set_to_none=True)
        rewards, total = [], 0.0
        for rows in self._chunks(len(ids), self.recipe.micro_batch_size, shuffle=False):
            lp, _ = self._logprobs(self.critic, ids[rows], attn[rows])
            r = implicit_token_rewards(lp, ref_logprobs[rows], mask[rows], self.recipe.prime.beta)
            loss = implicit_prm_loss(r, mask[rows], correct[rows]) * (len(rows) / len(ids))
            self.accelerator.backward(loss)
            rewards.append(r.detach())
            total += loss.item()
        self.accelerator.clip_grad_norm_(self.critic.parameters(), self.recipe.max_grad_norm)
        self.critic_opt.step()
        return torch.cat(rewards), total

