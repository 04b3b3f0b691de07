"""An engine over a synchronous ``vllm.LLM`` that someone else owns: TRL's colocated vLLM in training.

Why: in TRL's colocate mode the trainer builds one ``vllm.LLM`` per training GPU and pushes the live
weights into it before each rollout. The RL loop must sample from *that* object: a second vLLM
would hold stale weights and a second share of the GPU. ``LLM.generate`` blocks and takes a whole
batch, while the rollout asks for one turn per trajectory from many asyncio tasks, each pausing
while its code runs. So requests are gathered: whatever is pending when the engine is free goes
into one ``LLM.generate`` call (each request with its own sampling parameters and seed), run in a
worker thread so the event loop keeps feeding the sandboxes; requests that arrive meanwhile form
the next batch. One call at a time (``LLM`` is not thread-safe). Continuations come back from the
sandboxes a few milliseconds apart, so an idle engine waits ``gather_s`` after the first request
before calling vLLM, rather than starting a batch of one.

Output mapping (stop strings kept, finish reasons, the sampled tokens' logprobs) is
``retool.engines.vllm``'s, so both vLLM engines answer alike. TRL builds its colocated ``LLM``
with ``logprobs_mode="processed_logprobs"``: the logprobs then are those of the distribution
actually sampled (after temperature), which is what TRL's importance-sampling correction wants.

Not here: building, sleeping/waking or weight-syncing the ``LLM`` (the trainer's job), and tensor
parallelism across ranks: every rank of a TP group would have to call ``generate`` in lock-step
with the same prompts, which a multi-turn loop with per-trajectory turns does not do.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, replace
from typing import Any

from retool.engines.base import Completion, Engine, EngineStats, SamplingParams
from retool.engines.vllm import _INSTALL_HINT, completion_from_output, sampling_kwargs


@dataclass
class _Request:
    prompt_ids: list[int]
    kwargs: dict[str, Any]  # for vllm.SamplingParams
    future: asyncio.Future


class ColocatedVLLMEngine(Engine):
    """``ColocatedVLLMEngine(llm)``: ``llm`` is a built ``vllm.LLM``; ``max_batch`` caps one call;
    ``gather_s`` is how long an idle engine collects requests before it calls vLLM."""

    name = "vllm-colocated"

    def __init__(self, llm: Any, tokenizer: Any = None, max_batch: int = 1024, gather_s: float = 0.05) -> None:
        self.llm, self.gather_s = llm, gather_s
        self.tokenizer = tokenizer if tokenizer is not None else llm.get_tokenizer()
        self.max_batch = max_batch
        config = getattr(getattr(llm, "llm_engine", None), "model_config", None)
        self.max_model_len: int | None = getattr(config, "max_model_len", None)
        self._pending: list[_Request] = []
        self._runner: asyncio.Task | None = None
        self._lock = threading.Lock()  # guards stats; LLM calls are serialised by the single runner
        self._stats = EngineStats()
        self._closed = False

    async def agenerate(self, prompt_ids: list[int], params: SamplingParams, stop: tuple[str, ...] = ()) -> Completion:
        if self._closed:
            raise RuntimeError("ColocatedVLLMEngine is closed")
        n = len(prompt_ids)
        max_tokens = params.max_new_tokens if self.max_model_len is None else min(params.max_new_tokens, self.max_model_len - n)
        if max_tokens <= 0:  # the context is full: nothing to generate (vLLM would reject the request)
            return Completion([], [], "length", prompt_tokens=n)
        loop = asyncio.get_running_loop()
        request = _Request(list(prompt_ids), sampling_kwargs(params, stop, max_tokens), loop.create_future())
        if self._runner is None or self._runner.done() or self._runner.get_loop() is not loop:
            # one event loop at a time: requests left by an ended loop have no one to answer
            self._pending = [r for r in self._pending if r.future.get_loop() is loop]
            self._runner = loop.create_task(self._drain())
        self._pending.append(request)
        return await request.future

    async def _drain(self) -> None:
        """Run batches until nothing is pending. Tasks that became ready together have all queued
        their request before this task first runs (it was scheduled after them)."""
        if self.gather_s > 0:
            await asyncio.sleep(self.gather_s)
        while self._pending:
            batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch:]
            batch = [r for r in batch if not r.future.done()]  # a cancelled caller needs no tokens
            if not batch:
                continue
            try:
                completions = await asyncio.to_thread(self._generate, batch)
            except asyncio.CancelledError:
                for r in batch + self._pending:
                    if not r.future.done():
                        r.future.set_exception(RuntimeError("the engine's event loop ended mid-generation"))
                raise
            except Exception as e:  # noqa: BLE001 - the failure belongs to every request of the batch
                for r in batch:
                    if not r.future.done():
                        r.future.set_exception(e)
                continue
            for r, completion in zip(batch, completions):
                if not r.future.done():
                    r.future.set_result(completion)

    def _generate(self, batch: list[_Request]) -> list[Completion]:
        try:
            from vllm import SamplingParams as VSamplingParams, TokensPrompt
        except ImportError as e:
            raise ImportError(_INSTALL_HINT) from e
        prompts = [TokensPrompt(prompt_token_ids=r.prompt_ids) for r in batch]
        params = [VSamplingParams(**r.kwargs) for r in batch]
        started = time.monotonic()
        outputs = self.llm.generate(prompts, sampling_params=params, use_tqdm=False)
        elapsed = time.monotonic() - started
        if len(outputs) != len(batch):
            raise RuntimeError(f"vLLM answered {len(outputs)} of {len(batch)} requests")
        completions = [
            completion_from_output(out.outputs[0], len(r.prompt_ids), int(getattr(out, "num_cached_tokens", 0) or 0))
            for r, out in zip(batch, outputs)]
        with self._lock:
            s = self._stats
            s.requests += len(batch)
            s.busy_s += elapsed
            s.extra["batches"] = s.extra.get("batches", 0) + 1
            for c in completions:
                s.decode_tokens += len(c.ids)
                s.cached_tokens += c.cached_tokens
                s.prefill_tokens += c.prompt_tokens - c.cached_tokens
        return completions

    @property
    def stats(self) -> EngineStats:
        with self._lock:
            return replace(self._stats, extra=dict(self._stats.extra))

    def close(self) -> None:
        """Stop taking requests. The ``LLM`` is left alone: it belongs to the trainer."""
        self._closed = True
