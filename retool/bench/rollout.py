"""Rollout throughput: retool's loop against the naive one, on the embedded model and a real sandbox.

retool's loop: every trajectory at once on the continuous-batching engine, token ids appended,
the KV cache kept across tool turns. The naive loop, as many first implementations are written:
one trajectory at a time; each turn decodes the history to text, re-tokenizes it and calls
``model.generate`` from scratch (stop strings through transformers), then runs the code.

Reported: model tokens per second for both (sampled trajectories differ, so throughput is the fair
comparison) and their ratio ``speedup_vs_naive``; ``prefill_ratio``, prompt tokens the engine
computed relative to the minimum (every distinct prefix of the prompts once, plus, for each
continuation, the token that ended the previous turn and the interpreter tokens); ``engine_idle_frac``,
the share of wall time with no generation in flight while a trajectory waited on its sandbox.

The hardware's own ceiling: ``ceiling_tokens_per_s``, plain batched decoding of the same model with
transformers' KV cache and no tools at the rollout's mean batch in flight (same torch threads and
dtype), and ``decode_efficiency``, the rollout's model tokens/s over it (the rollout's wall time
includes its prefills and its sequences finishing, the ceiling's does not). ``engine_time`` splits
the engine's passes into forward, bookkeeping (inputs, mask, cache indices), sampling and
admission. The naive loop and the ceiling run with the engine's torch threads. Numbers are printed,
never asserted by tests.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import asdict, dataclass

from retool.engines.base import SamplingParams
from retool.models import load_model
from retool.rollout import Rollout, RolloutConfig
from retool.sandbox.spec import SandboxSpec
from retool.seeds import derive_seed
from retool.trajectory_stats import trajectory_stats

PROBLEMS = [
    "What is the remainder when 2 to the power 100 is divided by 97?",
    "What is 123456789 multiplied by 987654321?",
    "What is the sum of the squares of the first 50 positive integers?",
    "What is 17 factorial?",
    "How many prime numbers are there below 1000?",
    "What is the greatest common divisor of 1071 and 462?",
    "What is 3 to the power 40?",
    "What is the sum of the digits of 2 to the power 50?",
]


@dataclass(frozen=True)
class RolloutBench:
    trajectories: int
    model_tokens: int
    interpreter_tokens: int
    tool_calls: int
    wall_s: float
    tokens_per_s: float
    prefill_tokens: int
    prefill_minimum: int
    prefill_ratio: float
    engine_idle_frac: float
    mean_batch: float  # sequences decoding per decode pass, over the rollout
    ceiling_tokens_per_s: float  # plain batched decode of the same model at that batch (KV cache, no tools)
    decode_efficiency: float  # tokens_per_s / ceiling_tokens_per_s
    engine_time: dict[str, float]  # the engine's time per pass, split: forward, bookkeeping, sampling, admission
    naive_trajectories: int
    naive_model_tokens: int
    naive_wall_s: float
    naive_tokens_per_s: float
    speedup_vs_naive: float
    tools: dict[str, object]  # how the trajectories used the interpreter (``retool.trajectory_stats``)


CEILING_TOKENS = 64  # decode passes timed for the ceiling, after the prompt (trajectories here average ~90 tokens)

# the benchmark's sampling: varied trajectories (temperature 0.7, top-p 0.95), seeded, fenced dialect
BENCH_ROLLOUT = RolloutConfig(dialect="fenced", max_total_tokens=320, max_tool_calls=4,
                              sampling=SamplingParams(temperature=0.7, top_p=0.95, seed=0))


def run_rollout_bench(problems: int = 8, samples: int = 4, naive_trajectories: int = 4,
                      config: RolloutConfig = BENCH_ROLLOUT, sandbox: SandboxSpec = SandboxSpec()) -> RolloutBench:
    import torch  # imported when the benchmark runs, not for the CLI's --help

    from retool.engines.hf import HFEngine

    model, tokenizer = load_model(None)
    chosen = PROBLEMS[:problems]
    with sandbox.pool(size=min(problems * samples, 16)) as pool:
        pool.wait_ready()
        engine = HFEngine(model, tokenizer, max_batch=problems * samples)
        threads = torch.get_num_threads()  # the engine's: the references below run with the same
        try:
            rollout = Rollout(engine, pool, config)
            prompts = [rollout.prompt_ids(p) for p in chosen]
            trajectories = rollout.run([p for p in prompts for _ in range(samples)])
            stats = engine.stats
        finally:
            engine.close()
        model_tokens = sum(t.num_model_tokens for t in trajectories)
        tool_tokens = sum(t.num_tool_tokens for t in trajectories)
        turns = sum(len(t.tool_calls) for t in trajectories)
        continuations = rollout.stats.generate_calls - len(trajectories)  # each feeds the token that ended its turn
        minimum = distinct_prefixes(prompts) + tool_tokens + continuations
        with torch_threads(threads):
            naive_tokens, naive_wall = _naive(model, tokenizer, pool, rollout, chosen, naive_trajectories, config)
    ours = model_tokens / rollout.stats.wall_s
    naive = naive_tokens / naive_wall
    mean_batch = stats.decode_tokens / max(stats.decode_passes, 1)
    with torch_threads(threads):
        ceiling = plain_decode_tokens_per_s(model, prompts[0], max(round(mean_batch), 1), CEILING_TOKENS)
    return RolloutBench(len(trajectories), model_tokens, tool_tokens, turns, rollout.stats.wall_s, ours,
                        stats.prefill_tokens, minimum, stats.prefill_tokens / minimum, rollout.stats.engine_idle_frac,
                        round(mean_batch, 2), ceiling, ours / ceiling, engine_time(stats),
                        naive_trajectories, naive_tokens, naive_wall, naive, ours / naive,
                        trajectory_stats(trajectories).as_dict())


@contextlib.contextmanager
def torch_threads(count: int):
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def engine_time(stats) -> dict[str, float]:
    """Where the engine's time went, per pass (ms) and in total (s)."""
    passes = max(stats.passes, 1)
    parts = {"forward": stats.busy_s, "bookkeeping": stats.bookkeeping_s, "sampling": stats.sampling_s,
             "admission": stats.admission_s}
    report = {f"{name}_ms_per_pass": round(1000 * seconds / passes, 3) for name, seconds in parts.items()}
    report.update({f"{name}_s": round(seconds, 2) for name, seconds in parts.items()})
    report.update({"prefill_forward_s": round(stats.prefill_s, 2), "passes": stats.passes,
                   "decode_passes": stats.decode_passes,
                   "idle_row_share": round(1 - stats.decode_tokens / max(stats.decode_rows, 1), 3),
                   "slot_moves": stats.slot_moves})
    return report


def plain_decode_tokens_per_s(model, prompt: list[int], batch: int, tokens: int) -> float:
    """The ceiling: ``batch`` copies of ``prompt`` prefilled into transformers' own KV cache, then
    ``tokens`` plain decode passes (argmax, no slot masks, no stop checks, no tools), timed alone;
    the better of its two caches (``DynamicCache`` appends with a copy, ``StaticCache`` writes in
    place but attends over its whole length), each after an untimed warm-up."""
    import torch
    from transformers import DynamicCache, StaticCache

    device = next(model.parameters()).device
    ids = torch.tensor([prompt] * batch, device=device)
    best = 0.0
    with torch.inference_mode():
        for make in (DynamicCache, lambda: StaticCache(config=model.config, max_cache_len=len(prompt) + tokens + 8)):
            cache = make()
            positions = torch.arange(len(prompt), device=device)
            out = model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1, cache_position=positions)
            token = out.logits[:, -1].argmax(-1, keepdim=True)
            for step in range(tokens + 4):
                if step == 4:  # the first passes warm the allocator
                    started = time.perf_counter()
                at = torch.tensor([len(prompt) + step], device=device)
                out = model(input_ids=token, past_key_values=cache, use_cache=True, cache_position=at)
                token = out.logits[:, -1].argmax(-1, keepdim=True)
            best = max(best, batch * tokens / (time.perf_counter() - started))
    return best


def distinct_prefixes(prompts: list[list[int]]) -> int:
    """Tokens that must enter the model at least once: the nodes of the prompts' prefix trie
    (a system prompt and example shared by every problem count once)."""
    ordered = sorted(set(map(tuple, prompts)))
    total, previous = 0, ()
    for prompt in ordered:
        shared = next((i for i, (a, b) in enumerate(zip(prompt, previous)) if a != b), min(len(prompt), len(previous)))
        total += len(prompt) - shared
        previous = prompt
    return total


def _naive(model, tokenizer, pool, rollout: Rollout, problems, count, config) -> tuple[int, float]:
    """The naive loop on the first ``count`` trajectories: text in, text out, generate from scratch."""
    import torch

    dialect = rollout.dialect
    generated, started = 0, time.monotonic()
    for index in range(count):
        problem = problems[index % len(problems)]  # spread over the problems
        torch.manual_seed(derive_seed(config.sampling.seed or 0, "naive", index))
        text = tokenizer.decode(rollout.prompt_ids(problem), skip_special_tokens=False)
        response_tokens, calls = 0, 0
        with pool.session() as session:
            while response_tokens < config.max_total_tokens:
                ids = tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids  # re-tokenize it all
                with torch.inference_mode():
                    out = model.generate(ids, max_new_tokens=config.max_total_tokens - response_tokens, do_sample=True,
                                         temperature=config.sampling.temperature, top_p=config.sampling.top_p,
                                         stop_strings=list(dialect.stop_strings), tokenizer=tokenizer,
                                         pad_token_id=tokenizer.pad_token_id)
                new = out[0, ids.shape[1]:].tolist()
                generated += len(new)
                response_tokens += len(new)
                turn = tokenizer.decode(new, skip_special_tokens=False)
                text += turn
                code = dialect.extract_code(turn)
                if code is None or calls >= config.max_tool_calls:
                    break
                calls += 1
                rendered = dialect.render_output(session.run(code))
                text += rendered
                response_tokens += len(tokenizer.encode(rendered, add_special_tokens=False))
    return generated, time.monotonic() - started


def as_dict(bench: RolloutBench) -> dict[str, float]:
    return asdict(bench)
