"""``retool sft``: cold-start supervised fine-tuning with TRL's SFTTrainer.

The dataset is pre-tokenized (``sft_data``: ``input_ids`` + ``labels`` with −100 on the prompt and
on interpreter output), so TRL applies no chat template and no masking of its own — our
``Trajectory`` rendering is the single source of truth. LoRA (peft) is optional: with ``lora:``
(or when ``model`` is already an adapter, which is then trained further) the final model is saved
as an adapter folder naming its base, else as a plain checkpoint; ``retool rl`` / ``retool eval
--model`` take either. Both carry the prompt card (``retool.model_card``) of the recipe's rollout.

Layout of ``output_dir``: ``checkpoints/checkpoint-N`` (Trainer checkpoints: weights, optimizer,
scheduler, RNG, step, data position), ``final/`` (model + tokenizer), ``metrics.jsonl``, ``tb/``.
Running the same command again resumes from the newest checkpoint; Ctrl-C saves one and stops.

Not here: data rendering (``sft_data``), RL (``grpo``, ``ppo``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from retool.model_card import write_card
from retool.models import ADAPTER_CONFIG, BASE_MODEL, EMBEDDED_ALIASES, adapter_base, load_tokenizer, load_trainable, model_folder, training_device
from retool.training.interrupt import StopOnRequestCallback, StopRequest
from retool.training.recipe import SFTRecipe
from retool.training.run_log import RunLog
from retool.training.sft_data import build_dataset, iter_examples
from retool.training.trainer_callbacks import RunLogCallback, prepare_trainer, trainer_device_args

log = logging.getLogger(__name__)

SFT_METRIC_NAMES = {"loss": "sft/loss", "learning_rate": "lr", "grad_norm": "grad_norm"}


@dataclass(frozen=True)
class SFTResult:
    output_dir: Path
    final_dir: Path | None  # None when the run was stopped before the end
    steps: int
    examples: int
    trained_tokens: int
    interrupted: bool


def resume_point(out: Path, run_log: RunLog) -> str | None:
    """The newest HF Trainer checkpoint under ``out/checkpoints`` (None: start afresh); the run log is
    cut back to its step so resumed curves do not double up."""
    from transformers.trainer_utils import get_last_checkpoint

    checkpoints = out / "checkpoints"
    resume = get_last_checkpoint(str(checkpoints)) if checkpoints.is_dir() else None
    if resume:
        log.info("resuming from %s", resume)
        run_log.truncate_after(int(Path(resume).name.split("-")[-1]))
    return resume


def run_sft(recipe: SFTRecipe, model=None, tokenizer=None) -> SFTResult:
    """Train as the recipe says (``model``/``tokenizer`` objects override ``recipe.model``: tests)."""
    from trl import SFTConfig, SFTTrainer

    out = Path(recipe.output_dir)
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(recipe.model)
    examples = list(iter_examples(recipe.data, tokenizer, recipe.rollout, max_length=recipe.max_length,
                                  max_examples=recipe.max_examples))
    dataset = build_dataset(iter(examples))
    if model is None:
        model = load_trainable(recipe.model, device=training_device())
        model.train()
    if recipe.lora is not None and hasattr(model, "peft_config"):
        raise ValueError(f"{recipe.model} is an adapter, which SFT trains further as it is; drop `lora:` from the recipe")
    if recipe.lora is not None:
        from peft import LoraConfig, get_peft_model

        lora = recipe.lora
        model = get_peft_model(model, LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                                 target_modules=lora.target_modules, task_type="CAUSAL_LM"))
    prepare_trainer(out, tokenizer)
    args = SFTConfig(
        output_dir=str(out / "checkpoints"),
        max_length=recipe.max_length,
        num_train_epochs=recipe.epochs,
        max_steps=recipe.max_steps,
        learning_rate=recipe.learning_rate,
        lr_scheduler_type=recipe.lr_scheduler,
        warmup_steps=recipe.warmup_ratio,  # a float < 1 is a ratio of the total steps
        weight_decay=recipe.weight_decay,
        per_device_train_batch_size=recipe.batch_size,
        gradient_accumulation_steps=recipe.grad_accum,
        seed=recipe.seed,
        data_seed=recipe.seed,
        save_steps=recipe.save_steps,
        save_total_limit=2,
        logging_steps=recipe.logging_steps,
        report_to=list(recipe.report_to),
        packing=False,
        dataloader_num_workers=0,
        disable_tqdm=False,
        **trainer_device_args(),
    )
    run_log = RunLog(out, report_to=(), config=recipe.model_dump())
    stop = StopRequest()
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                         callbacks=[StopOnRequestCallback(stop), RunLogCallback(run_log, SFT_METRIC_NAMES)])
    resume = resume_point(out, run_log)
    try:
        with stop:
            trainer.train(resume_from_checkpoint=resume)
    finally:
        run_log.close()
    trained = sum(e.num_trained for e in examples)
    if stop.requested:
        return SFTResult(out, None, trainer.state.global_step, len(examples), trained, True)
    final = out / "final"
    save_model(trainer.model, tokenizer, final, recipe.model, recipe.rollout)
    return SFTResult(out, final, trainer.state.global_step, len(examples), trained, False)


def base_name(model_name: str | None) -> str:
    """What a trained adapter names as its base: the base of an adapter trained further, else the
    model it was trained from (a local path made absolute, so the adapter loads from anywhere)."""
    folder = model_folder(model_name)
    if folder is not None and (folder / ADAPTER_CONFIG).is_file():
        return adapter_base(folder)
    if model_name is None or model_name in EMBEDDED_ALIASES:
        return BASE_MODEL
    return str(Path(model_name).expanduser().resolve()) if Path(model_name).expanduser().exists() else model_name


def save_model(model, tokenizer, path: Path, trained_from: str | None, rollout) -> None:
    """An adapter folder (peft model) or a plain checkpoint, with the tokenizer and the prompt card."""
    import json

    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(path), safe_serialization=True)
    if hasattr(model, "peft_config"):  # point the adapter at its base by name, not at this machine's cache
        config_file = path / ADAPTER_CONFIG
        config = json.loads(config_file.read_text())
        config["base_model_name_or_path"] = base_name(trained_from)
        config_file.write_text(json.dumps(config, indent=2) + "\n")
    tokenizer.save_pretrained(str(path))
    write_card(path, rollout)
