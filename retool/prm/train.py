"""``retool prm train``: a verifier trained on step labels, resumable, with validation AUROC.

TRL removed its PRMTrainer (2026-09), and a PRM here must read scores at the trajectory's own step
boundaries on exact ids, so the loop is ours and small: AdamW on the trainable parameters
(``train_blocks`` / LoRA), binary cross-entropy on soft targets —

* ``process``: at every step boundary; ``outcome``: at the final one (the ORM baseline);
* ``implicit``: on the whole trajectory's summed log-ratio, outcome labels only (PRIME) —

with the validation split's numbers every ``eval_steps``: AUROC of step scores against hard
step labels, AUROC of the final score against the outcome, and the log-loss against the targets.

Files under ``output_dir``: ``metrics.jsonl`` and ``tb/`` (``RunLog``), ``checkpoints/step-N/``
(the trainable parameters, the optimizer, the data position and RNG state: a rerun resumes from
the newest; Ctrl-C finishes the step, saves and stops), ``prm/`` (the trained verifier,
``load_prm``) and ``eval.json`` (the final validation numbers).

Not here: labels (``labels.py``), the models (``model.py``), selection (``retool.search``).
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from retool.prm.data import PRMExample, load_examples
from retool.prm.metrics import auroc, log_loss
from retool.prm.model import PRM, build_prm, freeze_below
from retool.training.checkpoint import DataCursor, latest_checkpoint
from retool.training.interrupt import StopRequest
from retool.training.recipe import PRMRecipe
from retool.training.run_log import RunLog

log = logging.getLogger(__name__)


@dataclass
class PRMRunResult:
    output_dir: Path
    steps: int  # optimizer steps done in total (resumed ones included)
    stopped: bool  # a stop was requested (Ctrl-C): a checkpoint was saved, the verifier was not
    metrics: dict[str, Any]  # the last validation numbers


class _Cached:
    """For ``train_blocks: 0``: the frozen trunk's hidden states at each example's positions,
    computed once; the head alone then trains on them."""

    def __init__(self, prm: PRM) -> None:
        self.prm = prm
        self.features: dict[int, torch.Tensor] = {}

    @torch.no_grad()
    def _features(self, ex: PRMExample) -> torch.Tensor:
        key = id(ex)
        if key not in self.features:
            ids = torch.tensor([ex.input_ids], device=self.prm.device)
            hidden = self.prm.model.base_model(input_ids=ids).last_hidden_state[0]  # [T, H]
            self.features[key] = hidden[list(ex.positions)]  # [P, H]
        return self.features[key]

    def logits(self, batch: list[PRMExample]) -> list[torch.Tensor]:
        head = self.prm.model.score if hasattr(self.prm.model, "score") else self.prm.model.classifier
        return [head(self._features(ex))[:, 0] for ex in batch]


def _loss(prm: PRM, logits: list[torch.Tensor], batch: list[PRMExample]) -> torch.Tensor:
    """Mean BCE over the batch's targets (implicit: one per trajectory, its outcome)."""
    if prm.objective == "implicit":
        pred = torch.stack([lg[-1] for lg in logits])
        target = torch.tensor([float(ex.outcome) for ex in batch], device=pred.device)
    else:
        pred = torch.cat(logits)
        target = torch.tensor([t for ex in batch for t in ex.targets], device=pred.device, dtype=pred.dtype)
    return torch.nn.functional.binary_cross_entropy_with_logits(pred.float(), target.float())


@torch.no_grad()
def evaluate(prm: PRM, examples: list[PRMExample], logits_of=None, batch_size: int = 4) -> dict[str, Any]:
    """Validation numbers of ``prm`` on ``examples`` (None where a class is absent)."""
    logits_of = logits_of or prm.logits
    step_scores, step_hard, step_targets, final, outcomes = [], [], [], [], []
    for i in range(0, len(examples), batch_size):
        batch = examples[i:i + batch_size]
        for ex, logit in zip(batch, logits_of(batch)):
            scores = torch.sigmoid(logit.float()).tolist()[: len(ex.positions)]
            step_scores += scores
            step_hard += list(ex.hard)
            step_targets += list(ex.targets)
            if scores:
                final.append(scores[-1])
                outcomes.append(ex.outcome)
    return {"val/auroc_step": auroc(step_scores, step_hard) if step_scores else None,
            "val/auroc_outcome": auroc(final, outcomes) if final else None,
            "val/log_loss": log_loss(step_scores, step_targets) if step_scores else None,
            "val/examples": len(examples)}


def train_prm(recipe: PRMRecipe, stop: StopRequest | None = None, device: str | None = None) -> PRMRunResult:
    from retool.models import load_model, training_device

    out = Path(recipe.output_dir)
    train, val, dropped = load_examples(recipe.labels, recipe.objective, recipe.max_length, recipe.val_fraction)
    if dropped:
        log.warning("%d step boundaries lie past max_length=%d and are not trained on", dropped, recipe.max_length)
    torch.manual_seed(recipe.seed)
    policy, tokenizer = load_model(recipe.model, device=device or training_device())
    prm = build_prm(policy, tokenizer, recipe.objective, recipe.beta, recipe.model)
    if recipe.lora is not None:
        _apply_lora(prm, recipe)
    else:
        freeze_below(prm, recipe.train_blocks)
    cached = _Cached(prm) if recipe.train_blocks == 0 and recipe.objective != "implicit" else None
    logits_of = cached.logits if cached is not None else prm.logits
    params = [p for p in prm.model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=recipe.learning_rate, weight_decay=recipe.weight_decay)
    total = recipe.max_steps if recipe.max_steps > 0 else math.ceil(recipe.epochs * len(train) / recipe.batch_size)
    cursor = DataCursor(len(train), recipe.seed)
    checkpoints = out / "checkpoints"
    start = 0
    if (latest := latest_checkpoint(checkpoints)) is not None:
        start = _load(latest, prm, optimizer, cursor)
        log.info("resuming from %s (step %d of %d)", latest, start, total)
    config = {**recipe.model_dump(), "train_examples": len(train), "val_examples": len(val),
              "trainable_parameters": sum(p.numel() for p in params)}
    metrics: dict[str, Any] = {}
    stop = stop or StopRequest()
    step = start
    with RunLog(out, recipe.report_to, config=config) as run_log:
        if start:
            run_log.truncate_after(start)
        for step in range(start + 1, total + 1):
            prm.model.train()
            batch = [train[i] for i in cursor.take(recipe.batch_size)]
            loss = _loss(prm, logits_of(batch), batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            if step % recipe.logging_steps == 0:
                run_log.scalars(step, {"loss/prm": loss.item(), "grad_norm": float(grad_norm)})
            if val and (step % recipe.eval_steps == 0 or step == total):
                metrics = evaluate(prm, val, logits_of, recipe.batch_size)
                run_log.scalars(step, metrics)
            if step % recipe.save_steps == 0 or stop.requested or step == total:
                _save(checkpoints, step, prm, optimizer, cursor)
            if stop.requested:
                return PRMRunResult(out, step, True, metrics)
    if recipe.lora is not None:  # the verifier is saved whole: it loads without peft or the base
        prm.model = prm.model.merge_and_unload()
    prm.save(out / "prm")
    (out / "eval.json").write_text(json.dumps({"steps": step, **metrics}, indent=2))
    return PRMRunResult(out, step, False, metrics)


def _apply_lora(prm: PRM, recipe: PRMRecipe) -> None:
    from peft import LoraConfig, get_peft_model

    lora = recipe.lora
    if prm.objective == "implicit":
        config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                            target_modules=lora.target_modules, task_type="CAUSAL_LM")
    else:  # the head trains in full (it starts at zero): not a LoRA target
        head = "score" if hasattr(prm.model, "score") else "classifier"
        config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                            target_modules=lora.target_modules, exclude_modules=[head], modules_to_save=[head],
                            task_type="TOKEN_CLS")
    prm.model = get_peft_model(prm.model, config)


def _trainable_state(prm: PRM) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu() for n, p in prm.model.named_parameters() if p.requires_grad}


def _save(root: Path, step: int, prm: PRM, optimizer, cursor: DataCursor, keep: int = 2) -> Path:
    """``checkpoints/step-N``: written to a temporary folder and renamed, so a crash mid-save keeps the last one."""
    root.mkdir(parents=True, exist_ok=True)
    final, tmp = root / f"step-{step}", root / f".tmp-step-{step}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    torch.save({"params": _trainable_state(prm), "optimizer": optimizer.state_dict(), "step": step,
                "cursor": cursor.state_dict(), "rng": torch.get_rng_state()}, tmp / "state.pt")
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    for old in sorted(root.glob("step-*"), key=lambda p: int(p.name.split("-")[1]))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _load(path: Path, prm: PRM, optimizer, cursor: DataCursor) -> int:
    state = torch.load(path / "state.pt", weights_only=False)
    missing = set(state["params"]) - {n for n, _ in prm.model.named_parameters()}
    if missing:
        raise ValueError(f"{path} was saved from another model ({len(missing)} parameters unknown here)")
    prm.model.load_state_dict(state["params"], strict=False)
    optimizer.load_state_dict(state["optimizer"])
    cursor.load_state_dict(state["cursor"])
    torch.set_rng_state(state["rng"])
    return int(state["step"])
