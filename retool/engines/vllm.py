"""vLLM engine: continuous batching and prefix caching on a GPU, behind the ``Engine`` contract.

Why: a rollout is hundreds of trajectories that each pause while their code runs. vLLM's async
engine batches whatever is in flight, and with prefix caching a continuation (prompt + previous turn
+ interpreter output) reuses the previous turn's KV blocks; ``Completion.cached_tokens`` says how many.

Event loops: an ``AsyncLLM`` binds to the loop it first runs on: its output handler and its
engine-core socket reader are ``asyncio`` tasks there. ``asyncio.run`` cancels leftover tasks on exit,
after which every request fails with ``EngineDeadError`` (vllm-project/vllm PR #36941); newer
in-process clients refuse a second loop outright. ``Engine.generate`` is an ``asyncio.run`` per call,
and rebuilding per loop would reload the weights. So the ``AsyncLLM`` lives on a private loop in a
daemon thread, built lazily on first use inside that loop; ``agenerate`` hands it each request with
``run_coroutine_threadsafe`` and awaits the answer from any caller loop. Cancelling the caller's
task cancels (aborts) the vLLM request.

Deliberately not done: streaming (vLLM is asked for the final output only), ``n > 1`` (one request
per trajectory), tensor parallelism/LoRA beyond ``**engine_kwargs`` for ``AsyncEngineArgs``, weight
sync for RL, trimming tokens past a stop string (without speculative decoding the stop string ends
in the last token). ``logprobs`` follow vLLM's default ``logprobs_mode="raw_logprobs"``: the raw
model distribution, before temperature/top-p/top-k.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
import uuid
from dataclasses import replace
from typing import Any

from retool.engines.base import Completion, Engine, EngineStats, SamplingParams

_INSTALL_HINT = "VLLMEngine needs vLLM (and a CUDA GPU): pip install 'retool[gpu]'"


def sampling_kwargs(params: SamplingParams, stop: tuple[str, ...], max_tokens: int) -> dict[str, Any]:
    """Our sampling parameters as keyword arguments for ``vllm.SamplingParams``."""
    return dict(
        max_tokens=max_tokens, temperature=params.temperature, top_p=params.top_p,
        top_k=params.top_k if params.top_k > 0 else -1,  # -1 (and, in newer vLLM, 0) = off
        seed=params.seed, stop=list(stop), include_stop_str_in_output=True,
        logprobs=0,  # vLLM always adds the sampled token's logprob to the top-0
        skip_special_tokens=False,  # detokenize stays on: vLLM matches stop strings on the text
    )


def _sampled_logprob(entry: Any, token_id: int) -> float:
    """One position of vLLM's ``logprobs`` (``dict[token_id, Logprob]``) -> the sampled token's."""
    lp = entry[token_id]
    return float(getattr(lp, "logprob", lp))


def completion_from_output(output: Any, prompt_tokens: int = 0, cached_tokens: int = 0) -> Completion:
    """Map a vLLM ``CompletionOutput`` to our ``Completion``.

    ``finish_reason`` "length" -> "length"; "stop" with a string ``stop_reason`` -> "stop" (that
    string); "stop" with ``stop_reason`` None (EOS) or an int (a stop token such as ``<|im_end|>``
    from the generation config) -> "eos". Anything else ("abort", "error") raises ``RuntimeError``.
    """
    ids = [int(t) for t in output.token_ids]
    if output.logprobs is None:
        raise ValueError("vLLM returned no logprobs; the request must set logprobs=0")
    if len(output.logprobs) != len(ids):
        raise ValueError(f"vLLM returned {len(output.logprobs)} logprobs for {len(ids)} tokens")
    logprobs = [_sampled_logprob(entry, t) for entry, t in zip(output.logprobs, ids)]
    reason, stop_reason = output.finish_reason, output.stop_reason
    if reason == "length":
        finish, stop = "length", None
    elif reason == "stop":
        finish, stop = ("stop", stop_reason) if isinstance(stop_reason, str) else ("eos", None)
    else:
        raise RuntimeError(f"vLLM request ended with finish_reason={reason!r}")
    return Completion(ids, logprobs, finish, stop, prompt_tokens=prompt_tokens, cached_tokens=cached_tokens)


class VLLMEngine(Engine):
    name = "vllm"

    def __init__(
        self,
        model: str,
        tokenizer: Any = None,
        gpu_memory_utilization: float = 0.85,
        max_model_len: int | None = None,
        dtype: str = "auto",
        enable_prefix_caching: bool = True,
        seed: int = 0,
        **engine_kwargs: Any,
    ) -> None:
        try:
            from vllm import SamplingParams as VSamplingParams, TokensPrompt
            from vllm.engine.arg_utils import AsyncEngineArgs
            from vllm.sampling_params import RequestOutputKind
        except ImportError as e:
            raise ImportError(_INSTALL_HINT) from e
        try:  # the v1 engine; in vLLM >= 0.10 ``AsyncLLMEngine`` is an alias of it
            from vllm.v1.engine.async_llm import AsyncLLM as engine_cls
        except ImportError:
            from vllm import AsyncLLMEngine as engine_cls
        self._engine_cls, self._vsp, self._prompt = engine_cls, VSamplingParams, TokensPrompt
        self._final_only = RequestOutputKind.FINAL_ONLY
        self.model = model
        tokenizer_name = tokenizer if isinstance(tokenizer, str) else None
        self._tokenizer = None if tokenizer_name else tokenizer
        self._tokenizer_name = tokenizer_name or model
        self._trust_remote_code = bool(engine_kwargs.get("trust_remote_code", False))
        args: dict[str, Any] = dict(
            model=model, gpu_memory_utilization=gpu_memory_utilization, max_model_len=max_model_len,
            dtype=dtype, enable_prefix_caching=enable_prefix_caching, seed=seed,
        )
        args.update({"tokenizer": tokenizer_name} if tokenizer_name else {}, **engine_kwargs)
        self._engine_args = AsyncEngineArgs(**args)  # unknown keywords fail here, not on first use
        self._lock = threading.Lock()
        self._ready: concurrent.futures.Future | None = None  # resolves to the built AsyncLLM
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._closed, self._stats, self._in_flight, self._busy_since = False, EngineStats(), 0, 0.0

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            name, remote = self._tokenizer_name, self._trust_remote_code
            self._tokenizer = AutoTokenizer.from_pretrained(name, trust_remote_code=remote)
        return self._tokenizer

    @property
    def stats(self) -> EngineStats:
        """``busy_s``: wall time with a request in flight (vLLM does not report forward-pass time)."""
        with self._lock:
            busy = self._stats.busy_s + (time.monotonic() - self._busy_since if self._in_flight else 0.0)
            return replace(self._stats, busy_s=busy, extra=dict(self._stats.extra))

    def _start(self) -> concurrent.futures.Future:
        with self._lock:
            if self._closed:
                raise RuntimeError("VLLMEngine is closed")
            if self._ready is None:
                self._ready = concurrent.futures.Future()
                self._ready.set_running_or_notify_cancel()  # a cancelled waiter must not cancel it
                self._loop = asyncio.new_event_loop()
                self._thread = threading.Thread(target=self._serve, name="retool-vllm", daemon=True)
                self._thread.start()
            return self._ready

    def _serve(self) -> None:
        loop, ready = self._loop, self._ready
        assert loop is not None and ready is not None
        asyncio.set_event_loop(loop)

        async def build() -> Any:  # inside the running loop, so vLLM starts its tasks on it
            return self._engine_cls.from_engine_args(self._engine_args)

        try:
            ready.set_result(loop.run_until_complete(build()))
            loop.run_forever()  # until close()
        except BaseException as e:  # noqa: BLE001 - a failed build goes to every waiting caller
            if not ready.done():
                ready.set_exception(e)
        finally:
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _run(self, llm: Any, prompt_ids: list[int], sp: Any) -> Any:
        final = None
        try:
            async for out in llm.generate(self._prompt(prompt_token_ids=prompt_ids), sp, uuid.uuid4().hex):
                final = out
        except asyncio.CancelledError:
            if self._closed:
                raise RuntimeError("VLLMEngine was closed while the request was running") from None
            raise
        if final is None or not final.finished:
            raise RuntimeError("vLLM ended the request without a final output")
        return final

    async def agenerate(self, prompt_ids: list[int], params: SamplingParams, stop: tuple[str, ...] = ()) -> Completion:
        ready = self._start()
        llm = ready.result() if ready.done() else await asyncio.wrap_future(ready)
        n = len(prompt_ids)
        max_model_len = getattr(getattr(llm, "model_config", None), "max_model_len", None)
        max_tokens = params.max_new_tokens if max_model_len is None else min(params.max_new_tokens, max_model_len - n)
        if max_tokens <= 0:  # the context is full: nothing to generate (vLLM would reject it)
            return Completion([], [], "length", prompt_tokens=n)
        sp = self._vsp(**sampling_kwargs(params, stop, max_tokens), output_kind=self._final_only)
        assert self._loop is not None
        future = asyncio.run_coroutine_threadsafe(self._run(llm, list(prompt_ids), sp), self._loop)
        self._track(+1)
        try:
            out = await asyncio.wrap_future(future)
        finally:
            self._track(-1)
        completion = completion_from_output(out.outputs[0], n, int(getattr(out, "num_cached_tokens", 0) or 0))
        with self._lock:
            s = self._stats
            s.requests, s.decode_tokens = s.requests + 1, s.decode_tokens + len(completion.ids)
            s.cached_tokens += completion.cached_tokens
            s.prefill_tokens += n - completion.cached_tokens
        return completion

    def _track(self, delta: int) -> None:
        with self._lock:
            now = time.monotonic()
            if self._in_flight == 0:
                self._busy_since = now
            self._in_flight += delta
            if self._in_flight == 0:
                self._stats.busy_s += now - self._busy_since

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            ready, loop, thread = self._ready, self._loop, self._thread
        if ready is None or loop is None or thread is None:
            return
        try:
            llm = ready.result()  # waits for a build in progress
        except BaseException:  # noqa: BLE001 - the build failed; its thread has already ended
            llm = None
        if llm is not None:  # shut vLLM down on its own loop, then stop that loop

            def stop() -> None:
                try:
                    llm.shutdown()
                finally:
                    loop.stop()

            loop.call_soon_threadsafe(stop)
        thread.join(timeout=120)
