"""VLLMEngine: the output mapping and the cross-loop bridge run anywhere (the bridge against a stand-in
``vllm`` package); real generation runs only where a CUDA GPU and vLLM are present (``-m gpu``)."""

from __future__ import annotations

import asyncio
import math
import os
import sys
import threading
import time
import types
from types import SimpleNamespace as NS

import pytest

from retool.engines.base import SamplingParams
from retool.engines.vllm import VLLMEngine, completion_from_output, sampling_kwargs

# -- output mapping (no vLLM needed) ---------------------------------------------------------------


def lp(value: float) -> NS:
    return NS(logprob=value, rank=1, decoded_token=None)


def output(token_ids, finish_reason, stop_reason=None, logprobs="auto") -> NS:
    """Shaped like vllm.outputs.CompletionOutput."""
    if logprobs == "auto":  # logprobs=0: the sampled token, sometimes with a higher-ranked one beside it
        logprobs = [{t: lp(-0.25 * (i + 1)), t + 1000: lp(-0.01)} for i, t in enumerate(token_ids)]
    return NS(index=0, text="", token_ids=token_ids, cumulative_logprob=None, logprobs=logprobs,
              finish_reason=finish_reason, stop_reason=stop_reason)


def test_stop_string_maps_to_stop_with_the_string():
    c = completion_from_output(output([5, 6, 7], "stop", "</code>"), prompt_tokens=11, cached_tokens=8)
    assert (c.ids, c.end, c.stop) == ([5, 6, 7], "stop", "</code>")
    assert c.logprobs == [-0.25, -0.5, -0.75]  # the sampled token's, not the higher-ranked neighbour's
    assert (c.prompt_tokens, c.cached_tokens) == (11, 8)


@pytest.mark.parametrize("stop_reason", [None, 151645])  # EOS, or a stop token id such as <|im_end|>
def test_eos_and_stop_token_map_to_eos(stop_reason):
    c = completion_from_output(output([5, 151645], "stop", stop_reason))
    assert (c.end, c.stop, c.ids) == ("eos", None, [5, 151645])


def test_length():
    c = completion_from_output(output((1, 2), "length"))  # token_ids may be any sequence
    assert (c.end, c.stop, c.ids, len(c.logprobs)) == ("length", None, [1, 2], 2)


def test_bare_float_logprobs_are_accepted():
    c = completion_from_output(output([3], "length", logprobs=[{3: -1.5}]))
    assert c.logprobs == [-1.5]


@pytest.mark.parametrize("logprobs", [None, [{1: lp(-1.0)}]])
def test_missing_or_short_logprobs_raise(logprobs):
    with pytest.raises(ValueError):
        completion_from_output(output([1, 2], "length", logprobs=logprobs))


def test_abort_raises():
    with pytest.raises(RuntimeError, match="abort"):
        completion_from_output(output([1], "abort"))


def test_sampling_kwargs():
    kw = sampling_kwargs(SamplingParams(max_new_tokens=9, temperature=0.7, top_p=0.9, top_k=0, seed=3), ("</code>",), 9)
    assert kw == dict(max_tokens=9, temperature=0.7, top_p=0.9, top_k=-1, seed=3, stop=["</code>"],
                      include_stop_str_in_output=True, logprobs=0, skip_special_tokens=False)
    assert sampling_kwargs(SamplingParams(top_k=20), (), 4)["top_k"] == 20


def test_missing_vllm_raises_import_error_with_the_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # `import vllm` fails even where it is installed
    with pytest.raises(ImportError, match=r"retool\[gpu\]"):
        VLLMEngine("some/model")


# -- the cross-loop bridge, against a stand-in vllm package ----------------------------------------


class FakeAsyncLLM:
    """Binds to the loop it is built on, like vLLM's AsyncLLM: used from another loop it is 'dead'."""

    def __init__(self, args):
        self.args, self.loop = args, asyncio.get_running_loop()
        self.model_config = NS(max_model_len=64)
        self.active = self.peak = 0
        self.seen, self.aborted, self.shut_down = [], [], False

    @classmethod
    def from_engine_args(cls, args):
        return cls(args)

    async def generate(self, prompt, sp, request_id):
        assert asyncio.get_running_loop() is self.loop, "EngineDeadError: used from a foreign loop"
        self.seen.append((prompt["prompt_token_ids"], sp, request_id, threading.current_thread().name))
        self.active += 1
        self.peak = max(self.peak, self.active)
        try:
            await asyncio.sleep(30 if prompt["prompt_token_ids"][0] == 999 else 0.05)
        except asyncio.CancelledError:
            self.aborted.append(request_id)
            raise
        finally:
            self.active -= 1
        n = min(sp.max_tokens, 3)
        ids = [42] * n
        yield NS(outputs=[output(ids, "stop" if sp.stop else "length", sp.stop[0] if sp.stop else None)],
                 finished=True, num_cached_tokens=len(prompt["prompt_token_ids"]) // 2)

    def shutdown(self):
        self.shut_down = True


@pytest.fixture
def fake_vllm(monkeypatch):
    def module(name, **attrs):
        mod = types.ModuleType(name)
        mod.__dict__.update(attrs)
        monkeypatch.setitem(sys.modules, name, mod)

    class FakeArgs:
        def __init__(self, **kw):
            self.__dict__.update(kw)

    module("vllm", SamplingParams=FakeArgs, TokensPrompt=dict)
    module("vllm.engine")
    module("vllm.engine.arg_utils", AsyncEngineArgs=FakeArgs)
    module("vllm.sampling_params", RequestOutputKind=NS(FINAL_ONLY="final-only"))
    module("vllm.v1")
    module("vllm.v1.engine")
    module("vllm.v1.engine.async_llm", AsyncLLM=FakeAsyncLLM)


def test_one_engine_serves_successive_event_loops(fake_vllm):
    with VLLMEngine("m", max_model_len=64, enforce_eager=True) as engine:
        first = engine.generate([[1, 2, 3, 4]], SamplingParams(max_new_tokens=5), stop=("</code>",))
        second = engine.generate([[1, 2], [3]], SamplingParams(max_new_tokens=2))  # a second asyncio.run
        llm = engine._ready.result()
        assert llm.args.enforce_eager and llm.args.enable_prefix_caching and llm.args.model == "m"
        assert [c.end for c in first + second] == ["stop", "length", "length"]
        assert first[0].stop == "</code>" and first[0].cached_tokens == 2
        assert {thread for *_, thread in llm.seen} == {"retool-vllm"}
        sp = llm.seen[0][1]
        assert (sp.output_kind, sp.logprobs, sp.include_stop_str_in_output) == ("final-only", 0, True)
        stats = engine.stats
        assert (stats.requests, stats.prefill_tokens, stats.cached_tokens, stats.decode_tokens) == (3, 4, 3, 7)
        assert stats.busy_s > 0
    assert llm.shut_down and not engine._thread.is_alive()
    engine.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        engine.generate([[1]], SamplingParams())


def test_concurrent_requests_are_in_flight_together(fake_vllm):
    with VLLMEngine("m") as engine:
        engine.generate([[1]] * 8, SamplingParams(max_new_tokens=2))
        assert engine._ready.result().peak == 8


def test_max_tokens_is_clamped_to_the_context(fake_vllm):
    with VLLMEngine("m") as engine:
        full = engine.generate([list(range(64))], SamplingParams(max_new_tokens=5))[0]
        assert (full.ids, full.end, full.prompt_tokens) == ([], "length", 64)
        engine.generate([list(range(62))], SamplingParams(max_new_tokens=5))
        assert engine._ready.result().seen[-1][1].max_tokens == 2


def test_cancelling_the_caller_aborts_the_request(fake_vllm):
    with VLLMEngine("m") as engine:

        async def main():
            task = asyncio.create_task(engine.agenerate([999], SamplingParams(max_new_tokens=5)))
            await asyncio.sleep(0.3)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

        asyncio.run(main())
        llm = engine._ready.result()
        deadline = time.monotonic() + 5
        while not llm.aborted and time.monotonic() < deadline:
            time.sleep(0.01)
        assert llm.aborted == [llm.seen[0][2]]


def test_close_fails_requests_in_flight(fake_vllm):
    engine = VLLMEngine("m")

    async def main():
        task = asyncio.create_task(engine.agenerate([999], SamplingParams(max_new_tokens=5)))
        await asyncio.sleep(0.3)
        await asyncio.to_thread(engine.close)
        with pytest.raises(RuntimeError, match="closed"):
            await task

    asyncio.run(main())


def test_a_failed_build_reaches_every_caller(fake_vllm, monkeypatch):
    def broken(args):
        raise ValueError("CUDA out of memory (stand-in)")

    monkeypatch.setattr(FakeAsyncLLM, "from_engine_args", staticmethod(broken))
    with VLLMEngine("m") as engine:
        for _ in range(2):
            with pytest.raises(ValueError, match="out of memory"):
                engine.generate([[1], [2]], SamplingParams())
    assert not engine._thread.is_alive()


def test_a_given_tokenizer_is_used_as_is(fake_vllm):
    tok = object()
    with VLLMEngine("m", tokenizer=tok) as engine:
        assert engine.tokenizer is tok


# -- real vLLM on a GPU ----------------------------------------------------------------------------


def _gpu_skip_reason() -> str | None:
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    if not torch.cuda.is_available():
        return "needs a CUDA GPU"
    try:
        import vllm  # noqa: F401
    except ImportError:
        return "vLLM is not installed (pip install 'retool[gpu]')"
    return None


_SKIP = _gpu_skip_reason()
requires_gpu = pytest.mark.skipif(_SKIP is not None, reason=_SKIP or "")
MODEL = os.environ.get("RETOOL_TEST_VLLM_MODEL", "Qwen/Qwen2.5-0.5B-Instruct")
GREEDY = SamplingParams(max_new_tokens=48, temperature=0.0, seed=0)
CODE_SHOTS = "".join(f"<code>\nprint({i} * {i})\n</code>\n" for i in range(1, 6)) + "<code>\nprint(6 * 6)\n"
LONG_SYSTEM = "You are a careful assistant who solves problems by writing Python. " * 8


@pytest.fixture(scope="module")
def engine():
    eng = VLLMEngine(MODEL, gpu_memory_utilization=0.4, max_model_len=4096)
    yield eng
    eng.close()
    eng.close()  # idempotent


def chat(engine, text: str, system: str = "You are a helpful assistant.") -> list[int]:
    messages = [{"role": "system", "content": system}, {"role": "user", "content": text}]
    return list(engine.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True))


@pytest.mark.gpu
@requires_gpu
def test_gpu_stop_string_is_kept_and_ids_match_logprobs(engine):
    tok = engine.tokenizer
    prompt = tok.encode(CODE_SHOTS)
    c = engine.generate([prompt], GREEDY, stop=("</code>",))[0]
    text = tok.decode(c.ids)
    assert (c.end, c.stop) == ("stop", "</code>"), text
    assert "</code>" in text and "</code>" not in tok.decode(c.ids[:-1])  # kept, and completed by the last token
    assert len(c.logprobs) == len(c.ids) > 0
    assert all(math.isfinite(x) and x <= 0.0 for x in c.logprobs)
    assert c.prompt_tokens == len(prompt)


@pytest.mark.gpu
@requires_gpu
def test_gpu_length_and_eos(engine):
    tok = engine.tokenizer
    cut = engine.generate([chat(engine, "Write a long story about a dragon.")], GREEDY.with_(max_new_tokens=3))[0]
    assert (cut.finish_reason, len(cut.ids), len(cut.logprobs)) == ("length", 3, 3)
    done = engine.generate([chat(engine, "Reply with exactly one word: yes")], GREEDY.with_(max_new_tokens=64))[0]
    assert (done.end, done.stop) == ("eos", None), tok.decode(done.ids)
    assert done.ids[-1] in tok.all_special_ids  # the EOS / <|im_end|> token is part of the output
    assert len(done.logprobs) == len(done.ids) and all(x <= 0.0 for x in done.logprobs)


@pytest.mark.gpu
@requires_gpu
def test_gpu_continuation_reuses_the_prefix_cache(engine):
    tok = engine.tokenizer
    first_prompt = chat(engine, "Compute 17 * 23 with Python.", system=LONG_SYSTEM)
    first = engine.generate([first_prompt], GREEDY, stop=("</code>",))[0]
    before = engine.stats.cached_tokens
    second_prompt = first_prompt + first.ids + tok.encode("\n<output>\n391\n</output>\n")
    second = engine.generate([second_prompt], GREEDY, stop=("</code>",))[0]  # a new event loop, too
    assert second.prompt_tokens == len(second_prompt)
    assert 0 < second.cached_tokens <= len(second_prompt)
    assert second.cached_tokens >= len(first_prompt) // 2  # at least the shared prompt's full blocks
    assert engine.stats.cached_tokens >= before + second.cached_tokens


@pytest.mark.gpu
@requires_gpu
def test_gpu_concurrent_requests_overlap(engine):
    prompt = chat(engine, "Count from 1 to 200, separated by commas.")
    params = GREEDY.with_(max_new_tokens=128)
    engine.generate([prompt], params)  # warm-up

    async def timed(n: int) -> float:
        start = time.perf_counter()
        await asyncio.gather(*(engine.agenerate(prompt, params) for _ in range(n)))
        return time.perf_counter() - start

    single = asyncio.run(timed(1))
    eight = asyncio.run(timed(8))
    assert eight < 8 * single, (single, eight)
