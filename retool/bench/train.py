"""Training throughput: trained tokens per second of one SFT step and of one PPO update, and the
peak resident memory, on the embedded model (or another), CPU or GPU.

Each step is a real forward + backward + AdamW step on cold-start traces rendered through
``Trajectory`` (prompt and interpreter tokens masked). Rollout speed is ``retool.bench.rollout``'s.
"""

from __future__ import annotations

import json
import resource
import time

import torch

from retool.models import load_model, training_device
from retool.rollout import RolloutConfig
from retool.trajectory import collate
from retool.training.losses import policy_loss, token_logprobs
from retool.training.sft_data import iter_examples, render_trajectory

DATA = "coldstart_data/synth/code.jsonl"
PROMPT = RolloutConfig(few_shot=False)  # as the SFT recipes render their traces


def _batches(tokenizer, batch: int, steps: int):
    examples = list(iter_examples([DATA], tokenizer, PROMPT, max_examples=batch * steps))
    return [examples[i * batch:(i + 1) * batch] for i in range(steps)]


def sft_throughput(model, tokenizer, batch: int, steps: int) -> dict:
    from torch.nn.utils.rnn import pad_sequence

    optim = torch.optim.AdamW(model.parameters(), lr=1e-5)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    timings, tokens = [], 0
    for i, chunk in enumerate(_batches(tokenizer, batch, steps + 1)):
        ids = pad_sequence([torch.tensor(e.input_ids) for e in chunk], batch_first=True, padding_value=pad)
        labels = pad_sequence([torch.tensor(e.labels) for e in chunk], batch_first=True, padding_value=-100)
        attn = pad_sequence([torch.ones(len(e.input_ids), dtype=torch.long) for e in chunk], batch_first=True)
        ids, labels, attn = ids.to(model.device), labels.to(model.device), attn.to(model.device)
        started = time.perf_counter()
        model(input_ids=ids, attention_mask=attn, labels=labels).loss.backward()
        optim.step()
        optim.zero_grad(set_to_none=True)
        timings.append(time.perf_counter() - started)
        if i:  # the first step warms up allocators and kernels: not timed
            tokens += int(attn.sum())
    seconds = sum(timings[1:])
    return {"tokens_per_s": round(tokens / seconds, 1), "seconds_per_step": round(seconds / steps, 2)}


def ppo_throughput(model, tokenizer, batch: int, steps: int) -> dict:
    """The actor half of a PPO/DAPO update on the same traces (a critic roughly doubles it)."""
    optim = torch.optim.AdamW(model.parameters(), lr=1e-6)
    with open(DATA) as fh:
        records = [json.loads(line) for line, _ in zip(fh, range(batch))]
    trajs = [render_trajectory(r["messages"][0]["content"], r["messages"][1]["content"], tokenizer, PROMPT)
             for r in records]
    packed = collate(trajs, tokenizer.pad_token_id or 0)
    ids, attn, mask = (x.to(model.device) for x in (packed.input_ids, packed.attention_mask, packed.loss_mask))
    with torch.no_grad():
        old = token_logprobs(model(input_ids=ids, attention_mask=attn).logits, ids)
    advantages = torch.linspace(-1, 1, len(trajs), device=model.device)
    timings = []
    for _ in range(steps + 1):
        started = time.perf_counter()
        logprobs = token_logprobs(model(input_ids=ids, attention_mask=attn).logits, ids)
        policy_loss(logprobs, old, advantages, mask, 0.2, 0.28).loss.backward()
        optim.step()
        optim.zero_grad(set_to_none=True)
        timings.append(time.perf_counter() - started)
    seconds = sum(timings[1:])
    return {"tokens_per_s": round(int(ids.numel()) * steps / seconds, 1), "seconds_per_step": round(seconds / steps, 2)}


def run_train_bench(model_name: str | None = None, batch: int = 8, steps: int = 3) -> dict:
    device = training_device()
    model, tokenizer = load_model(model_name, device=device)
    model.train()
    return {"model": model_name or "embedded SmolLM2-135M", "device": device, "threads": torch.get_num_threads(),
            "batch": batch, "sft": sft_throughput(model, tokenizer, batch, steps),
            "ppo_actor_update": ppo_throughput(model, tokenizer, batch, steps),
            "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}
