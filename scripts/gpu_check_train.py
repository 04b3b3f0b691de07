"""The GPU check's training steps (``scripts/gpu_check.py`` runs them): one SFT step through TRL,
the sharpening that gives RL groups mixed answers, one DAPO step (TRL's GRPOTrainer, our rollouts)
and one PPO step (ours, on accelerate), each on the driver's model, reporting whether it moved."""

from __future__ import annotations

import json
import math
import shutil
import tempfile
import time
from pathlib import Path

CODE_REPLY = ("I will compute it.\n<code>\n```python\nprint(3 + 4)\n```\n</code>\n<interpreter>\n7\n</interpreter>\n"
              "So the answer is 7.\n<answer>\n\\boxed{7}\n</answer>")  # as tests/test_training.py
ANSWER_ONLY = "<answer>\n\\boxed{7}\n</answer>"
PROBLEM = "What is 3 plus 4?"


def _records(path: Path, reply: str, n: int) -> Path:
    with path.open("w") as fh:
        for i in range(n):
            fh.write(json.dumps({"id": f"p{i}", "answer": "7", "messages": [
                {"role": "user", "content": PROBLEM}, {"role": "assistant", "content": reply}]}) + "\n")
    return path


def _snapshot(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _changes(before: dict, model) -> dict:
    after = model.state_dict()
    changed = [k for k, v in after.items() if not before[k].equal(v)]
    delta = max((float((after[k].float() - before[k].float()).abs().max()) for k in changed), default=0.0)
    return {"tensors_changed": len(changed), "tensors": len(after), "max_abs_change": delta}


def _metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def free_memory(state) -> None:
    import gc

    import torch

    gc.collect()
    if state.device.startswith("cuda"):
        torch.cuda.empty_cache()


def sft_step(state) -> dict:
    from retool.training.recipe import SFTRecipe
    from retool.training.sft import run_sft

    work = Path(tempfile.mkdtemp(dir=state.work, prefix="sft-"))
    before = _snapshot(state.model)
    recipe = SFTRecipe(data=[str(_records(work / "d.jsonl", CODE_REPLY, state.sizes.batch))], output_dir=str(work / "run"),
                       max_steps=1, batch_size=state.sizes.batch, learning_rate=state.sizes.sft_lr, report_to=[],
                       max_length=4096, logging_steps=1, save_steps=10**6, rollout={"few_shot": False})
    started = time.monotonic()
    result = run_sft(recipe, model=state.model, tokenizer=state.tokenizer)
    took = time.monotonic() - started
    loss = next((x["sft/loss"] for x in _metrics(work / "run" / "metrics.jsonl") if "sft/loss" in x), None)
    changes = _changes(before, state.model)
    del before
    shutil.rmtree(work, ignore_errors=True)
    free_memory(state)
    return {"ok": result.steps == 1 and changes["tensors_changed"] > 0 and loss is not None and math.isfinite(loss),
            "loss": loss, "steps": result.steps, "trained_tokens": result.trained_tokens, "run_sft_s": round(took, 2),
            "learning_rate": state.sizes.sft_lr, **changes}


def _rl_recipe(state, algorithm: str, work: Path, **changes):
    from retool.training.recipe import RLRecipe

    s = state.sizes
    return RLRecipe(algorithm=algorithm, data=[str(_records(work / "problems.jsonl", CODE_REPLY, 6))],
                    output_dir=str(work / "run"), steps=1, prompts_per_step=1, group_size=s.batch,
                    micro_batch_size=s.batch, rollout={"max_total_tokens": s.rl_tokens}, learning_rate=s.rl_lr,
                    sandbox={"backend": state.backend}, report_to=[], mask_truncated=False, save_steps=10**6,
                    seed=2, **changes)


def sharpen(state) -> dict:
    """Plain AdamW steps on the answer alone, in rounds, until RL's own sampler (at its temperature,
    on other seeds than the RL steps') answers right 20-90 % of the time."""
    import torch

    from retool.rollout import RolloutConfig
    from retool.sandbox.spec import SandboxSpec
    from retool.training.rl import load_problems
    from retool.training.rl_rollout import sample
    from retool.training.sft_data import iter_examples

    s, model, work = state.sizes, state.model, Path(tempfile.mkdtemp(dir=state.work, prefix="sharpen-"))
    recipe = _rl_recipe(state, "dapo", work)
    problems = load_problems(recipe)[:1] * 2  # two groups: 2 x group_size samples per estimate
    example = next(iter_examples([_records(work / "sharp.jsonl", ANSWER_ONLY, 1)], state.tokenizer,
                                 RolloutConfig(few_shot=False)))
    ids = torch.tensor([example.input_ids], device=state.device)
    labels = torch.tensor([example.labels], device=state.device)
    optim = torch.optim.AdamW(model.parameters(), lr=s.sharpen_lr, weight_decay=0.0)
    backend = "subprocess" if state.backend == "jupyter" else state.backend  # idle sessions that start nothing
    accuracy, losses = [], []
    with SandboxSpec(backend=backend).pool(size=len(problems) * s.batch) as pool:
        for round_ in range(s.sharpen_rounds + 1):
            accuracy.append(sample(model, state.tokenizer, pool, problems, recipe, step=10_000 + round_).metrics.accuracy)
            if accuracy[-1] >= 0.2 or round_ == s.sharpen_rounds or time.monotonic() > state.report.deadline - 120:
                break
            model.train()
            for _ in range(s.sharpen_steps):
                loss = model(input_ids=ids, labels=labels).loss
                loss.backward()
                optim.step()
                optim.zero_grad(set_to_none=True)
                losses.append(round(loss.item(), 4))
    del optim
    shutil.rmtree(work, ignore_errors=True)
    free_memory(state)
    ok = 0.2 <= accuracy[-1] <= 0.9
    return {"ok": ok, "accuracy": accuracy, "steps": len(losses), "losses": losses[-5:], "learning_rate": s.sharpen_lr,
            "note": None if ok else f"accuracy {accuracy[-1]}: RL groups will likely all agree (no gradient)"}


def _rl_step(state, algorithm: str, **changes) -> dict:
    from retool.training.rl import run_rl

    s, work = state.sizes, Path(tempfile.mkdtemp(dir=state.work, prefix=f"{algorithm}-"))
    recipe = _rl_recipe(state, algorithm, work, **changes)
    before = _snapshot(state.model)
    result = run_rl(recipe, model=state.model, tokenizer=state.tokenizer)
    changes_ = _changes(before, state.model)
    del before
    lines = _metrics(work / "run" / "metrics.jsonl")
    shutil.rmtree(work, ignore_errors=True)
    free_memory(state)
    rolled = next((x for x in lines if "accuracy" in x), {})
    keys = ("accuracy", "reward/mean", "loss/policy", "loss/value", "entropy", "kl", "clip_frac", "tokens/model_mean",
            "time/rollout_s", "time/update_s")
    merged = {k: v for line in lines for k, v in line.items() if k in keys}
    ok = result.steps == 1 and not result.interrupted and changes_["tensors_changed"] > 0
    accuracy = rolled.get("accuracy")
    note = None
    if not ok and accuracy in (0.0, 1.0):
        note = f"accuracy {accuracy}: every sample got the same reward, so there was no gradient"
    return {"ok": ok, "steps": result.steps, "note": note, "learning_rate": s.rl_lr, "group_size": s.batch,
            **merged, **changes_}


def dapo_step(state) -> dict:
    return _rl_step(state, "dapo")


def ppo_step(state) -> dict:
    return _rl_step(state, "ppo", ppo={"minibatch_size": max(state.sizes.batch // 2, 1)})
