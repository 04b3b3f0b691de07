"""ColocatedVLLMEngine: request gathering, per-request parameters, failures, and a real interpreter loop.

Where no GPU is, ``vllm.LLM`` is a stand-in with vLLM's ``generate(prompts, sampling_params=[...])``
batch interface whose turns are answered by a tiny real model (greedy) or by a script; the
engine's own work (batching concurrent turns, mapping outputs, the rollout on top) is what runs.
The real ``vllm.LLM`` is exercised with ``-m gpu``.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import types
from types import SimpleNamespace as NS

import pytest

from retool.engines.base import SamplingParams
from retool.engines.hf import HFEngine
from retool.engines.vllm_colocated import ColocatedVLLMEngine
from retool.rollout import Rollout, RolloutConfig
from retool.sandbox import SandboxPool
from tiny import tiny_model

GREEDY = SamplingParams(max_new_tokens=8, temperature=0.0, seed=5)


class Args:
    def __init__(self, **kw):
        self.__dict__.update(kw)


@pytest.fixture
def stand_in_vllm(monkeypatch):
    mod = types.ModuleType("vllm")
    mod.SamplingParams, mod.TokensPrompt = Args, dict
    monkeypatch.setitem(sys.modules, "vllm", mod)


def vllm_output(completion, stop_reason=None) -> NS:
    """Our Completion as vLLM's RequestOutput (EOS / stop string / length)."""
    finish = "length" if completion.end == "length" else "stop"
    logprobs = [{t: NS(logprob=lp)} for t, lp in zip(completion.ids, completion.logprobs)]
    out = NS(token_ids=list(completion.ids), logprobs=logprobs, finish_reason=finish,
             stop_reason=completion.stop if completion.end == "stop" else stop_reason)
    return NS(outputs=[out], num_cached_tokens=0)


class ModelLLM:
    """``vllm.LLM``'s batch interface over the tiny model; records every call; ``gate`` holds calls."""

    def __init__(self, max_model_len: int = 4096):
        model, tokenizer = tiny_model()
        self.hf = HFEngine(model, tokenizer)
        self.tokenizer = tokenizer
        self.llm_engine = NS(model_config=NS(max_model_len=max_model_len))
        self.calls: list[list[Args]] = []
        self.gate: threading.Event | None = None
        self.started = threading.Event()

    def get_tokenizer(self):
        return self.tokenizer

    def generate(self, prompts, sampling_params, use_tqdm):
        assert use_tqdm is False and len(prompts) == len(sampling_params)
        self.calls.append(list(sampling_params))
        self.started.set()
        if self.gate is not None:
            self.gate.wait(10)
        outs = []
        for prompt, sp in zip(prompts, sampling_params):
            params = SamplingParams(max_new_tokens=sp.max_tokens, temperature=sp.temperature, top_p=sp.top_p, seed=sp.seed)
            (completion,) = self.hf.generate([prompt["prompt_token_ids"]], params, tuple(sp.stop))
            outs.append(vllm_output(completion))
        return outs


@pytest.fixture
def llm(stand_in_vllm):
    llm = ModelLLM()
    yield llm
    llm.hf.close()


def test_concurrent_turns_go_into_one_call_and_match_the_model(llm):
    prompts = [llm.tokenizer.encode(t) for t in ("2 ** 10", "The answer is", "Let me compute", "x = sum")]
    engine = ColocatedVLLMEngine(llm)
    got = engine.generate(prompts, GREEDY)
    assert len(llm.calls) == 1 and len(llm.calls[0]) == 4
    want = llm.hf.generate(prompts, GREEDY)
    assert [c.ids for c in got] == [c.ids for c in want]
    assert [lp for c in got for lp in c.logprobs] == pytest.approx([lp for c in want for lp in c.logprobs])
    assert all(c.prompt_tokens == len(p) for c, p in zip(got, prompts))
    assert engine.stats.requests == 4 and engine.stats.extra["batches"] == 1
    assert engine.stats.decode_tokens == sum(len(c.ids) for c in got)


def test_each_request_keeps_its_own_parameters(llm):
    engine = ColocatedVLLMEngine(llm)
    prompt = llm.tokenizer.encode("Let me compute")

    async def both():
        return await asyncio.gather(engine.agenerate(prompt, GREEDY.with_(seed=1, max_new_tokens=3), ("</code>",)),
                                    engine.agenerate(prompt, GREEDY.with_(seed=2, max_new_tokens=5)))

    asyncio.run(both())
    (first, second), = llm.calls
    assert (first.seed, first.max_tokens, first.stop) == (1, 3, ["</code>"])
    assert (second.seed, second.max_tokens, second.stop) == (2, 5, [])
    assert first.include_stop_str_in_output and first.logprobs == 0 and first.skip_special_tokens is False


def test_turns_that_arrive_during_a_call_form_the_next_batch(llm):
    engine = ColocatedVLLMEngine(llm)
    llm.gate = threading.Event()
    prompt = llm.tokenizer.encode("x = sum")

    async def waves():
        first = [asyncio.create_task(engine.agenerate(prompt, GREEDY)) for _ in range(3)]
        while not llm.started.is_set():
            await asyncio.sleep(0.01)
        second = [asyncio.create_task(engine.agenerate(prompt, GREEDY)) for _ in range(2)]
        await asyncio.sleep(0.05)
        llm.gate.set()
        return await asyncio.gather(*first, *second)

    results = asyncio.run(waves())
    assert [len(c) for c in llm.calls] == [3, 2]
    assert len({tuple(c.ids) for c in results}) == 1  # same prompt, greedy


def test_a_failed_call_fails_its_batch_and_the_engine_goes_on(llm):
    engine = ColocatedVLLMEngine(llm)
    real = llm.generate
    llm.generate = lambda *a, **k: (_ for _ in ()).throw(RuntimeError("CUDA out of memory (stand-in)"))
    prompt = llm.tokenizer.encode("2 ** 10")
    with pytest.raises(RuntimeError, match="out of memory"):
        engine.generate([prompt, prompt], GREEDY)
    llm.generate = real
    assert len(engine.generate([prompt], GREEDY)[0].ids) > 0


def test_a_full_context_returns_length_without_asking_vllm(stand_in_vllm):
    llm = ModelLLM(max_model_len=6)
    try:
        engine = ColocatedVLLMEngine(llm)
        (c,) = engine.generate([list(range(6))], GREEDY)
        assert (c.ids, c.end) == ([], "length") and llm.calls == []
        engine.generate([[1, 2]], GREEDY.with_(max_new_tokens=100))
        assert llm.calls[0][0].max_tokens == 4  # clipped to the room left in the context
    finally:
        llm.hf.close()


def test_successive_event_loops_and_close(llm):
    engine = ColocatedVLLMEngine(llm)
    prompt = llm.tokenizer.encode("The answer is")
    assert engine.generate([prompt], GREEDY)[0].ids == engine.generate([prompt], GREEDY)[0].ids
    engine.close()
    with pytest.raises(RuntimeError, match="closed"):
        engine.generate([prompt], GREEDY)


class ScriptLLM:
    """Writes code until the interpreter has answered, then the answer: vLLM's outputs, our loop."""

    def __init__(self, tokenizer):
        self.tokenizer, self.calls = tokenizer, []
        self.llm_engine = NS(model_config=NS(max_model_len=4096))

    def generate(self, prompts, sampling_params, use_tqdm):
        self.calls.append(len(prompts))
        outs = []
        for prompt, sp in zip(prompts, sampling_params):
            seen = self.tokenizer.decode(prompt["prompt_token_ids"])
            if "<interpreter>" not in seen:
                text, stop = "Let me compute.\n<code>\n```python\nprint(6 * 7)\n```\n</code>", "</code>"
            else:
                text, stop = "So\n<answer>\n\\boxed{42}\n</answer>", None
            ids = self.tokenizer.encode(text, add_special_tokens=False)
            if stop is None:
                ids.append(self.tokenizer.eos_token_id)
            logprobs = [{t: NS(logprob=-0.25)} for t in ids]
            outs.append(NS(outputs=[NS(token_ids=ids, logprobs=logprobs, finish_reason="stop", stop_reason=stop)],
                           num_cached_tokens=0))
        return outs


def test_the_interpreter_loop_runs_on_it(stand_in_vllm):
    _, tokenizer = tiny_model()
    llm = ScriptLLM(tokenizer)
    engine = ColocatedVLLMEngine(llm, tokenizer)
    with SandboxPool("subprocess", size=3) as pool:
        rollout = Rollout(engine, pool, RolloutConfig(sampling=SamplingParams(temperature=1.0, seed=3)))
        trajectories = rollout.run([tokenizer.encode(f"problem {i}") for i in range(3)])
    # the three first turns in one call; the continuations as they come back from the sandbox
    assert llm.calls[0] == 3 and sum(llm.calls) == 6
    for traj in trajectories:
        assert traj.finish_reason == "answer" and [c.result.stdout for c in traj.tool_calls] == ["42\n"]
        model_lp = [lp for lp, m in zip(traj.logprobs, traj.loss_mask) if m]
        assert model_lp == [-0.25] * len(model_lp)
