"""The GPU check's steps, each timed and recorded in one JSON (``scripts/gpu_check.sh`` runs it).

On a random-initialised Llama of ~0.48B parameters (hidden 1024, 24 layers, MLP 4096, 16 heads, 8
KV heads, the SmolLM2 tokenizer's 49,152 tokens; untied embeddings) built in-process in bfloat16:

    build_model     the model and its tokenizer (``--tokenizer DIR``, else the tests' in-process BPE)
    reference       the hf engine's greedy tokens and logprobs against a cache-free forward pass
    reference_fp32  the same on a float32 copy (the strict one; skipped when the model is float32)
    sandbox         which jail starts here: jupyter, else subprocess (cell ``print(2**100 % 97)``)
    rollout         HFEngine + Rollout on the rollout benchmark's problems, model tokens/s
    sft_step        one SFT step through TRL: loss, parameters changed
    sharpen         AdamW steps on the answer "7" until RL's own sampler is right 20-90 % of the time,
                    so RL groups mix right and wrong answers (else every advantage is zero)
    dapo_step       one DAPO step (TRL's GRPOTrainer, our rollouts), parameters changed
    ppo_step        one PPO step (ours, on accelerate), parameters changed

A step's failure is recorded with its exception and the next step runs; the JSON is rewritten after
every step (``running`` names the step in flight, so a run stopped from outside still says where).
``--tiny --device cpu`` runs every step on a tiny model in about a minute, anywhere.

Reference tolerances (greedy; the engine's logprob of each token it chose against the cache-free
forward pass over the same tokens, and its token against the reference's best at that position, so
a near-tie that parts the two greedy sequences is no failure; tokens equal to the reference's greedy
sequence are counted, not required):

* float32: 1e-4 nats on CPU (as ``tests/test_hf_engine.py``), 1e-3 on CUDA (TF32 stays off, but the
  batched, cached kernels reduce in another order than the full forward pass, over 24 layers);
* bfloat16: 0.1 nats. With 8 significant bits every matmul and norm rounds by ~0.4 %, differently in
  the engine and in the reference; measured on CPU on random models of this shape (50-80M
  parameters, 8-24 layers, the 49,152-token vocabulary): 0.008-0.016 nats apart, 93-97 % of greedy
  tokens equal. A real cache bug is far larger: dropping one context token moved the same model's
  logprobs by 0.63 nats.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from types import SimpleNamespace

from gpu_check_train import free_memory, dapo_step, ppo_step, sft_step, sharpen

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # retool without an install; tests/tiny.py's tokenizer
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is downloaded: the model is built here
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REFERENCE_TEXTS = ("Let me compute", "We reason step by step: first, the sum", "x", "The answer")


@dataclass(frozen=True)
class Sizes:
    hidden: int
    layers: int
    intermediate: int
    heads: int
    kv_heads: int
    reference_tokens: int  # greedy tokens per reference prompt
    problems: int  # rollout: benchmark problems x samples trajectories
    samples: int
    rollout_tokens: int  # each trajectory's token budget
    batch: int  # SFT batch, RL group size
    sft_lr: float
    sharpen_lr: float
    sharpen_steps: int  # per round
    sharpen_rounds: int
    rl_lr: float
    rl_tokens: int


# ~0.48B: 24 x 15.7M (attention 3.1M, MLP 12.6M) + 2 x 50M (embeddings, head) with 49,152 tokens.
# lr 1e-4: bf16 weights of ~0.02 have a step of ~1e-4, so a smaller update would round away.
FULL = Sizes(1024, 24, 4096, 16, 8, reference_tokens=24, problems=8, samples=4, rollout_tokens=320, batch=8,
             sft_lr=1e-4, sharpen_lr=3e-4, sharpen_steps=4, sharpen_rounds=16, rl_lr=1e-4, rl_tokens=32)
TINY = Sizes(64, 2, 128, 4, 2, reference_tokens=24, problems=2, samples=2, rollout_tokens=64, batch=8,
             sft_lr=1e-3, sharpen_lr=3e-3, sharpen_steps=5, sharpen_rounds=16, rl_lr=1e-3, rl_tokens=24)
MIN_SECONDS = {"build_model": 10, "reference": 10, "reference_fp32": 10, "sandbox": 15, "rollout": 30,
               "sft_step": 20, "sharpen": 30, "dapo_step": 30, "ppo_step": 30}  # not started with less left


class Report:
    """The JSON, rewritten after every step."""

    def __init__(self, path: Path, budget_s: float, header: dict) -> None:
        self.path, self.started, self.deadline = path, time.monotonic(), time.monotonic() + budget_s
        self.data = {**header, "steps": {}, "running": None}
        self.write()

    def write(self) -> None:
        self.data["minutes"] = round((time.monotonic() - self.started) / 60, 2)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self.data, indent=2, default=str) + "\n")
        os.replace(tmp, self.path)

    def run(self, name: str, fn, state, needs: tuple[str, ...] = ()) -> None:
        missing = [n for n in needs if getattr(state, n, None) is None]
        left = self.deadline - time.monotonic()
        if missing or left < MIN_SECONDS.get(name, 0):
            why = f"needs {', '.join(missing)} (an earlier step failed)" if missing else f"out of time ({left:.0f} s left)"
            self.data["steps"][name] = {"ok": False, "seconds": 0.0, "skipped": why}
            self.write()
            return
        self.data["running"] = name
        self.write()
        _reset_peak(state)
        started = time.monotonic()
        try:
            record = {"ok": True, **(fn(state) or {})}
        except Exception as exc:  # recorded; the next step runs
            record = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:2000],
                      "traceback": traceback.format_exc()[-3000:]}
        record["seconds"] = round(time.monotonic() - started, 2)
        peak = _peak_gib(state)
        if peak is not None:
            record["peak_cuda_gib"] = peak
        self.data["steps"][name] = record
        self.data["running"] = None
        print(f"gpu_check: {name}: {'ok' if record['ok'] else 'FAILED'} in {record['seconds']} s"
              + (f" ({record.get('error') or record.get('note')})" if not record["ok"] else ""), flush=True)
        self.write()


def _reset_peak(state) -> None:
    import torch

    if state.device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def _peak_gib(state) -> float | None:
    import torch

    if not state.device.startswith("cuda"):
        return None
    torch.cuda.synchronize()
    return round(torch.cuda.max_memory_allocated() / 2**30, 2)


# -- the model ----------------------------------------------------------------------------------------


def build_model(state) -> dict:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    if state.args.tokenizer:
        tok, source = AutoTokenizer.from_pretrained(state.args.tokenizer), state.args.tokenizer
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
    else:
        from tiny import tiny_tokenizer

        tok, source = tiny_tokenizer(), "tests/tiny.py (byte-level BPE trained in-process)"
    s = state.sizes
    config = LlamaConfig(vocab_size=len(tok), hidden_size=s.hidden, intermediate_size=s.intermediate,
                         num_hidden_layers=s.layers, num_attention_heads=s.heads, num_key_value_heads=s.kv_heads,
                         max_position_embeddings=4096, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                         bos_token_id=tok.bos_token_id, tie_word_embeddings=False)
    torch.manual_seed(0)
    with torch.device(state.device):
        model = LlamaForCausalLM(config).to(state.dtype).eval()
    state.model, state.tokenizer = model, tok
    params = sum(p.numel() for p in model.parameters())
    return {"parameters": params, "parameters_b": round(params / 1e9, 3), "dtype": str(state.dtype).removeprefix("torch."),
            "tokenizer": source, "vocab": len(tok), "config": {k: getattr(config, k) for k in (
                "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads")}}


# -- the reference test -------------------------------------------------------------------------------


def reference_check(model, tok, new_tokens: int, tolerance: float) -> dict:
    import torch

    from retool.engines.base import SamplingParams
    from retool.engines.hf import HFEngine

    device = next(model.parameters()).device
    prompts = [tok.encode(t) for t in REFERENCE_TEXTS]
    with HFEngine(model, tok, max_batch=8, capacity=128) as engine:
        outs = engine.generate(prompts, SamplingParams(max_new_tokens=new_tokens, temperature=0))
    worst_lp, worst_margin, equal, total, first_split = 0.0, 0.0, 0, 0, []
    with torch.no_grad():
        for prompt, out in zip(prompts, outs):
            # the cache-free forward pass over the engine's own tokens: comparable even after a near-tie
            logits = model(torch.tensor([prompt + out.ids], device=device)).logits[0].float()
            lp = torch.log_softmax(logits, -1)[len(prompt) - 1: len(prompt) - 1 + len(out.ids)]
            chosen = lp[torch.arange(len(out.ids)), torch.tensor(out.ids, device=device)]
            worst_lp = max(worst_lp, float((chosen.cpu() - torch.tensor(out.logprobs)).abs().max()))
            worst_margin = max(worst_margin, float((lp.max(-1).values - chosen).max()))
            greedy = greedy_reference(model, prompt, len(out.ids))
            same = next((i for i, (a, b) in enumerate(zip(out.ids, greedy)) if a != b), len(out.ids))
            first_split.append(same)
            equal += sum(a == b for a, b in zip(out.ids, greedy))
            total += len(out.ids)
    ok = worst_lp <= tolerance and worst_margin <= tolerance and total == len(prompts) * new_tokens
    return {"ok": ok, "tolerance_nats": tolerance, "max_abs_logprob_diff": worst_lp,
            "max_margin_below_reference_best": worst_margin, "tokens": total,
            "greedy_tokens_equal_to_reference": equal, "greedy_agreement": round(equal / max(total, 1), 4),
            "first_divergence": first_split}


def greedy_reference(model, prompt: list[int], n: int) -> list[int]:
    import torch

    device, ids = next(model.parameters()).device, list(prompt)
    with torch.no_grad():
        for _ in range(n):
            ids.append(int(model(torch.tensor([ids], device=device)).logits[0, -1].argmax()))
    return ids[len(prompt):]


def _tolerance(dtype, device: str) -> float:
    import torch

    if dtype == torch.float32:
        return 1e-3 if device.startswith("cuda") else 1e-4
    return 0.1


def reference(state) -> dict:
    return reference_check(state.model, state.tokenizer, state.sizes.reference_tokens, _tolerance(state.dtype, state.device))


def reference_fp32(state) -> dict:
    import copy

    import torch

    if state.dtype == torch.float32:
        return {"note": "the model is float32: the reference step was this one"}
    model = copy.deepcopy(state.model).float()
    try:
        return reference_check(model, state.tokenizer, state.sizes.reference_tokens, _tolerance(torch.float32, state.device))
    finally:
        del model
        free_memory(state)


# -- the sandbox and the rollout ----------------------------------------------------------------------


def sandbox(state) -> dict:
    from retool.sandbox.isolation import isolation_features
    from retool.sandbox.spec import SandboxSpec

    tried = {}
    for backend in [state.args.sandbox] if state.args.sandbox != "auto" else ["jupyter", "subprocess"]:
        started = time.monotonic()
        try:
            with SandboxSpec(backend=backend).pool(size=1) as pool:
                pool.wait_ready(timeout=60)
                result = pool.run("print(2**100 % 97)")
            works = result.status.value == "ok" and result.stdout.strip() == "16"
            tried[backend] = {"works": works, "status": result.status.value, "stdout": result.stdout[-200:],
                              "error": result.error}
        except Exception as exc:
            works, tried[backend] = False, {"works": False, "error": f"{type(exc).__name__}: {exc}"[:1000]}
        tried[backend]["seconds"] = round(time.monotonic() - started, 2)
        if works:
            state.backend = backend
            break
    try:
        features = isolation_features()
    except Exception as exc:
        features = {"error": f"{type(exc).__name__}: {exc}"}
    return {"ok": state.backend is not None, "backend": state.backend, "tried": tried, "isolation": features}


def rollout(state) -> dict:
    import torch

    from retool.bench import rollout as bench
    from retool.engines.hf import HFEngine
    from retool.rollout import Rollout
    from retool.sandbox.spec import SandboxSpec

    s = state.sizes
    config = replace(bench.BENCH_ROLLOUT, max_total_tokens=s.rollout_tokens)
    n = s.problems * s.samples
    with SandboxSpec(backend=state.backend).pool(size=min(n, 16)) as pool:
        pool.wait_ready()
        with HFEngine(state.model, state.tokenizer, max_batch=n) as engine:
            roll = Rollout(engine, pool, config)
            prompts = [roll.prompt_ids(p) for p in bench.PROBLEMS[:s.problems]]
            trajectories = roll.run([p for p in prompts for _ in range(s.samples)])
            stats = asdict(engine.stats)
    model_tokens = sum(t.num_model_tokens for t in trajectories)
    reasons: dict[str, int] = {}
    for t in trajectories:
        reasons[t.finish_reason] = reasons.get(t.finish_reason, 0) + 1
    record = {"ok": len(trajectories) == n and "infra_error" not in reasons, "backend": state.backend,
              "trajectories": len(trajectories), "model_tokens": model_tokens,
              "interpreter_tokens": sum(t.num_tool_tokens for t in trajectories),
              "tool_calls": sum(len(t.tool_calls) for t in trajectories), "wall_s": round(roll.stats.wall_s, 2),
              "tokens_per_s": round(model_tokens / roll.stats.wall_s, 1), "engine_idle_frac": roll.stats.engine_idle_frac,
              "prefill_tokens": stats["prefill_tokens"], "prefill_minimum": bench.distinct_prefixes(prompts),
              "finish_reasons": reasons, "engine": stats, "max_total_tokens": s.rollout_tokens,
              "prompt_tokens": [len(p) for p in prompts]}
    ceiling = getattr(bench, "plain_decode_tokens_per_s", None)  # the benchmark's hardware ceiling, where it has one
    if ceiling is not None and stats.get("decode_passes"):
        batch = max(round(stats["decode_tokens"] / stats["decode_passes"]), 1)
        try:
            with torch.inference_mode():
                record["ceiling_tokens_per_s"] = round(ceiling(state.model, prompts[0], batch, s.rollout_tokens // 2), 1)
            record["decode_efficiency"] = round(record["tokens_per_s"] / record["ceiling_tokens_per_s"], 3)
        except Exception as exc:
            record["ceiling_error"] = f"{type(exc).__name__}: {exc}"[:500]
    return record


STEPS = [("build_model", build_model, ()), ("reference", reference, ("model",)),
         ("reference_fp32", reference_fp32, ("model",)), ("sandbox", sandbox, ()),
         ("rollout", rollout, ("model", "backend")), ("sft_step", sft_step, ("model",)),
         ("sharpen", sharpen, ("model", "backend")), ("dapo_step", dapo_step, ("model", "backend")),
         ("ppo_step", ppo_step, ("model", "backend"))]


def header(device: str) -> dict:
    import importlib.metadata as metadata

    import torch

    cuda = device.startswith("cuda")
    versions = {}
    for name in ("transformers", "trl", "accelerate", "peft", "tokenizers", "datasets", "ipykernel", "jupyter_client"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {"gpu": cuda and torch.cuda.is_available(), "device": torch.cuda.get_device_name(0) if cuda else "cpu",
            "torch": torch.__version__, "cuda": torch.version.cuda, "python": sys.version.split()[0],
            "capability": list(torch.cuda.get_device_capability(0)) if cuda else None,
            "bf16_supported": torch.cuda.is_bf16_supported() if cuda else None, "versions": versions}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="gpu_check_driver.json")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", choices=("bfloat16", "float32"), help="default: bfloat16 on CUDA, float32 on CPU")
    parser.add_argument("--tiny", action="store_true", help="a tiny model and tiny sizes (CPU, tests)")
    parser.add_argument("--tokenizer", help="a tokenizer folder (the wheelhouse's tokenizer/); default: the tests' BPE")
    parser.add_argument("--sandbox", default="auto", help="auto (jupyter, else subprocess), or one backend")
    parser.add_argument("--budget-s", type=float, default=330.0, help="no step starts once this is nearly spent")
    parser.add_argument("--threads", type=int, help="torch threads (CPU)")
    parser.add_argument("--steps", help="comma-separated subset of: " + ",".join(n for n, _, _ in STEPS))
    args = parser.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda, but torch.cuda.is_available() is False (use --device cpu)")
    dtype = getattr(torch, args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32"))
    out = Path(args.out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    report = Report(out, args.budget_s, {**header(args.device), "tiny": args.tiny, "dtype": str(dtype).removeprefix("torch.")})
    state = SimpleNamespace(args=args, sizes=TINY if args.tiny else FULL, device=args.device, dtype=dtype, report=report,
                            model=None, tokenizer=None, backend=None, work=tempfile.mkdtemp(prefix="gpu-check-"))
    chosen = set(args.steps.split(",")) if args.steps else None
    try:
        for name, fn, needs in STEPS:
            if chosen is None or name in chosen:
                report.run(name, fn, state, needs)
    finally:
        shutil.rmtree(state.work, ignore_errors=True)
    report.write()
    return 0 if all(s["ok"] for s in report.data["steps"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
