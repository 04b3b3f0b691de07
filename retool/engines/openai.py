"""Generation through any OpenAI-compatible *completions* server (vLLM, SGLang, retool's own).

Why: evals and data generation against a model already served elsewhere (a bigger GPU, a shared
cluster) without loading it in this process, and RL rollouts against a vLLM server that the trainer
pushes weights to (TRL's ``trl vllm-serve``). Two modes, chosen by ``token_ids``:

**Text mode** (default, any server). The prompt ids are decoded to text and sent as ``prompt`` to
``POST /v1/completions``; the returned text is re-encoded with ``add_special_tokens=False``.
What that costs, and what it deliberately does not do:

* The ids are the canonical tokenization of the returned text, not necessarily the tokens the
  server sampled. The server's per-token logprobs (``logprobs=1``) are used only when its token
  strings re-join to the text and their count equals the re-encoded id count; otherwise the
  logprobs are zeros and ``logprobs_available`` turns False (and ``stats.extra
  ["logprobs_missing"]`` counts it). A text-level engine cannot guarantee token alignment: fine
  for evals, wrong for RL, whose importance ratios need the sampled tokens' logprobs.
* Servers strip the matched stop string; it is appended back, as the contract keeps stops in the
  output. vLLM's ``stop_reason`` (SGLang's ``matched_stop``) names it; without that field a single
  stop string can only be that one; with several, ``stop`` is None but the finish is still "stop".
  "stop" with no stop string (EOS) maps to "eos", and the tokenizer's EOS id is appended to the
  ids, as vLLM's ``token_ids`` have it.

**Token mode** (``token_ids=True``, vLLM >= 0.10.2 only). Exact tokens for RL: the prompt goes out
as the list of ids itself (vLLM adds no BOS to a token prompt, so ours is kept), and the request
asks for ``return_token_ids``, ``include_stop_str_in_output`` and ``skip_special_tokens=False``.
The completion's ids are vLLM's ``token_ids`` (the sampled tokens, the EOS or stop token included
when it ended on one; after a stop string, the last token may run a few characters past it), and
its logprobs are ``token_logprobs``, which must be one finite value per id. Nothing is decoded or
re-encoded, and nothing falls back: a server without ``token_ids`` or with misaligned logprobs
raises ``EngineError``. The finish comes from ``finish_reason`` + ``stop_reason`` alone.

Neither mode does streaming, chat completions, ``n > 1``, or retries beyond the client's own
``max_retries``: connection failures, timeouts and HTTP 4xx/5xx raise ``EngineError`` with the URL
and the server's message, and the caller decides.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
import weakref
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlparse

import openai
from openai import AsyncOpenAI

from retool.engines.base import Completion, Engine, EngineStats, CompletionEnd, SamplingParams, find_stop

_MISSING = object()


class EngineError(RuntimeError):
    """The server could not be reached, refused the request, or answered something unusable."""


def _field(choice: Any, name: str) -> Any:
    """A server-specific field of a choice (pydantic keeps unknown fields in ``model_extra``), or
    ``_MISSING`` when the server did not send it (which differs from sending null)."""
    extra = getattr(choice, "model_extra", None) or {}
    return getattr(choice, name, extra.get(name, _MISSING))


def parse_choice(choice: Any, stop: tuple[str, ...]) -> tuple[str, CompletionEnd, str | None]:
    """``(text with the stop string put back, finish reason, matched stop)`` for one choice."""
    text = choice.text or ""
    hit = find_stop(text, stop)
    if hit is not None:  # the server kept the stop (include_stop_str_in_output) or ignored ``stop``
        return text[: text.find(hit) + len(hit)], "stop", hit
    if choice.finish_reason == "length":
        return text, "length", None
    if choice.finish_reason != "stop":
        raise EngineError(f"unexpected finish_reason {choice.finish_reason!r}")
    reason = _field(choice, "stop_reason")
    if reason is _MISSING:
        reason = _field(choice, "matched_stop")  # SGLang's name for it
    if isinstance(reason, str):
        return text + reason, "stop", reason
    if reason is not _MISSING or not stop:  # vLLM: None = EOS, int = a stop token id
        return text, "eos", None
    if len(stop) == 1:
        return text + stop[0], "stop", stop[0]
    return text, "stop", None  # several stops and the server does not say which


def align_logprobs(tokens: Any, token_logprobs: Any, text: str, n_ids: int, eos: bool) -> list[float] | None:
    """The server's logprobs for ``n_ids`` text ids (plus the EOS when ``eos``), or None when its
    tokens do not re-join to ``text`` one for one."""
    if not tokens or token_logprobs is None or len(tokens) != len(token_logprobs):
        return None
    if len(tokens) != n_ids + eos or "".join(tokens[:n_ids]) != text:
        return None
    if any(lp is None or not math.isfinite(lp) for lp in token_logprobs):
        return None
    return [min(float(lp), 0.0) for lp in token_logprobs]


def parse_token_choice(choice: Any) -> tuple[list[int], list[float], CompletionEnd, str | None]:
    """``(sampled ids, their logprobs, finish reason, matched stop)`` for one choice of a vLLM server
    asked for ``return_token_ids``. The ids are kept as sampled: on EOS (or a stop token id) vLLM
    already includes that token, so nothing is appended."""
    ids = _field(choice, "token_ids")
    if ids is None or ids is _MISSING:
        raise EngineError("the response has no token_ids: token_ids mode needs a vLLM server that supports "
                          "return_token_ids (vLLM >= 0.10.2)")
    ids = [int(t) for t in ids]
    finish, stop = token_finish(choice.finish_reason, _field(choice, "stop_reason"))
    lp = getattr(choice, "logprobs", None)
    return ids, exact_logprobs(lp and lp.token_logprobs, len(ids)), finish, stop


def token_finish(finish_reason: Any, stop_reason: Any) -> tuple[CompletionEnd, str | None]:
    """vLLM's ``finish_reason`` + ``stop_reason`` as ``(finish, stop)``: a string stop_reason is the
    stop string that matched; None (EOS) or an int (a stop token id) is an "eos" finish."""
    if finish_reason == "length":
        return "length", None
    if finish_reason != "stop":
        raise EngineError(f"unexpected finish_reason {finish_reason!r}")
    if isinstance(stop_reason, str):
        return "stop", stop_reason
    if stop_reason is None or (isinstance(stop_reason, int) and not isinstance(stop_reason, bool)):
        return "eos", None
    # absent (not vLLM) or of an unknown type: EOS and a stop string cannot be told apart
    shown = "absent" if stop_reason is _MISSING else repr(stop_reason)
    raise EngineError(f"finish_reason 'stop' with stop_reason {shown}: cannot tell EOS from a stop string")


def exact_logprobs(token_logprobs: Any, n_ids: int) -> list[float]:
    """One finite logprob per sampled id (clamped to <= 0), or ``EngineError``: RL's importance
    ratios cannot use logprobs that are missing or shifted against the ids."""
    if token_logprobs is None or len(token_logprobs) != n_ids:
        got = "none" if token_logprobs is None else len(token_logprobs)
        raise EngineError(f"logprobs do not line up with token_ids: {got} logprobs for {n_ids} ids")
    if any(lp is None or not math.isfinite(lp) for lp in token_logprobs):
        raise EngineError(f"non-finite or missing logprob in {list(token_logprobs)}")
    return [min(float(lp), 0.0) for lp in token_logprobs]


class OpenAIEngine(Engine):
    """``OpenAIEngine("http://host:8000/v1", tokenizer)``; ``model=None`` takes the first served id;
    ``extra_body`` adds server-specific fields to every request; ``token_ids=True`` is the exact-token
    mode for RL against vLLM (see the module docstring). In a long-lived loop, ``await aclose()`` at
    the end; ``asyncio.run`` and ``generate`` close their loop's client themselves."""

    name = "openai"

    def __init__(self, base_url: str, tokenizer: Any, model: str | None = None, api_key: str | None = None, *,
                 timeout: float = 600.0, max_retries: int = 2, extra_body: dict[str, Any] | None = None,
                 token_ids: bool = False) -> None:
        if tokenizer is None:
            raise ValueError("OpenAIEngine needs the served model's tokenizer (to render prompts and outputs)")
        url = base_url.rstrip("/")
        self.base_url = url + "/v1" if urlparse(url).path == "" else url
        self.tokenizer, self.model = tokenizer, model
        self.api_key = api_key or os.environ.get("OPENAI_API_KEY") or "EMPTY"
        self.timeout, self.max_retries = timeout, max_retries
        self.extra_body = dict(extra_body or {})  # server-specific request fields, sent every time
        self.token_ids = token_ids  # exact sampled tokens (vLLM) instead of re-encoded text
        self.logprobs_available = True
        self._stats = EngineStats()
        self._closed = False
        # one client per event loop (its connection pool belongs to the loop that opened it), closed
        # when that loop ends (asyncio.run, asyncio.Runner) or by close()/aclose(), whichever is first
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, tuple[AsyncOpenAI, Any]] = (
            weakref.WeakKeyDictionary())
        bos = getattr(tokenizer, "bos_token_id", None)
        # the server tokenizes the prompt text itself and adds its own BOS; do not send ours twice
        self._bos = bos if bos is not None and tokenizer.encode("a")[:1] == [bos] else None

    async def _client(self) -> AsyncOpenAI:
        if self._closed:
            raise EngineError("engine is closed")
        loop = asyncio.get_running_loop()
        if loop not in self._clients:
            client = AsyncOpenAI(base_url=self.base_url, api_key=self.api_key, timeout=self.timeout,
                                 max_retries=self.max_retries)
            keeper = _close_at_loop_end(client)
            self._clients[loop] = (client, keeper)
            await keeper.asend(None)  # now the loop tracks it: asyncio.run's shutdown_asyncgens closes it
        return self._clients[loop][0]

    async def _call(self, what: str, request: Any) -> Any:
        where = f"{self.base_url}{what}"
        try:
            return await request
        except openai.APIStatusError as e:
            raise EngineError(f"{where}: {e.message}") from e  # "Error code: 404 - <server's message>"
        except openai.APIConnectionError as e:  # also timeouts
            cause = f" ({e.__cause__})" if e.__cause__ else ""
            raise EngineError(f"{where}: {e.message}{cause}") from e
        except openai.OpenAIError as e:
            raise EngineError(f"{where}: {e}") from e

    async def _model_name(self, client: AsyncOpenAI) -> str:
        if self.model is None:
            page = await self._call("/models", client.models.list())
            if not page.data:
                raise EngineError(f"{self.base_url}/models lists no model")
            self.model = page.data[0].id
        return self.model

    async def agenerate(self, prompt_ids: list[int], params: SamplingParams, stop: tuple[str, ...] = ()) -> Completion:
        client = await self._client()
        kwargs = self._request(await self._model_name(client), prompt_ids, params, tuple(stop))
        start = time.perf_counter()
        response = await self._call("/completions", client.completions.create(**kwargs))
        elapsed = time.perf_counter() - start
        if not response.choices:
            raise EngineError(f"{self.base_url}/completions: the response has no choices")
        try:
            if self.token_ids:
                out, logprobs, finish, matched = parse_token_choice(response.choices[0])
            else:
                out, logprobs, finish, matched = self._parse_text(response.choices[0], tuple(stop))
        except EngineError as e:
            raise EngineError(f"{self.base_url}/completions: {e}") from None
        prompt_tokens, cached = self._count(response.usage, len(prompt_ids), len(out), elapsed)
        return Completion(out, logprobs, finish, matched, prompt_tokens, cached)

    def _request(self, model: str, prompt_ids: list[int], params: SamplingParams,
                 stop: tuple[str, ...]) -> dict[str, Any]:
        """The ``completions.create`` keyword arguments for one prompt."""
        body = dict(self.extra_body)
        if params.top_k > 0:
            body["top_k"] = params.top_k
        if self.token_ids:
            prompt: str | list[int] = list(prompt_ids)
            body.update(return_token_ids=True, include_stop_str_in_output=True, skip_special_tokens=False)
        else:
            ids = list(prompt_ids)
            if self._bos is not None and ids[:1] == [self._bos]:
                ids = ids[1:]
            prompt = self.tokenizer.decode(ids, skip_special_tokens=False)
        kwargs: dict[str, Any] = dict(model=model, prompt=prompt, max_tokens=params.max_new_tokens,
                                      temperature=params.temperature, top_p=params.top_p, logprobs=1,
                                      extra_body=body or None)
        if params.seed is not None:
            kwargs["seed"] = params.seed
        if stop:
            kwargs["stop"] = list(stop)
        return kwargs

    def _parse_text(self, choice: Any, stop: tuple[str, ...]
                    ) -> tuple[list[int], list[float], CompletionEnd, str | None]:
        """Text mode: re-encode the text (stop put back), append EOS, and take the server's
        logprobs only where they line up; zeros (and ``logprobs_available = False``) otherwise."""
        text, finish, matched = parse_choice(choice, stop)
        out = list(self.tokenizer.encode(text, add_special_tokens=False))
        eos_id = getattr(self.tokenizer, "eos_token_id", None)
        eos = finish == "eos" and eos_id is not None
        lp = choice.logprobs
        logprobs = align_logprobs(lp and lp.tokens, lp and lp.token_logprobs, text, len(out), eos)
        if eos:
            out.append(eos_id)
        if logprobs is None:
            self.logprobs_available = False
            self._stats.extra["logprobs_missing"] = self._stats.extra.get("logprobs_missing", 0) + 1
            logprobs = [0.0] * len(out)
        return out, logprobs, finish, matched

    def _count(self, usage: Any, n_prompt: int, n_out: int, elapsed: float) -> tuple[int, int]:
        """Add one request to the stats; ``(prompt tokens, cached prompt tokens)`` as the server saw them."""
        prompt_tokens = usage.prompt_tokens if usage else n_prompt
        details = usage and usage.prompt_tokens_details
        cached = (details.cached_tokens or 0) if details else 0
        s = self._stats
        s.requests += 1
        s.prefill_tokens += prompt_tokens - cached
        s.cached_tokens += cached
        s.decode_tokens += usage.completion_tokens if usage else n_out
        s.extra["request_s"] = s.extra.get("request_s", 0.0) + elapsed
        return prompt_tokens, cached

    @property
    def stats(self) -> EngineStats:
        return self._stats

    async def aclose(self) -> None:
        """``close`` from inside a running loop, awaiting this loop's client."""
        entry = self._clients.pop(asyncio.get_running_loop(), None)
        if entry is not None:
            await entry[1].aclose()
        self.close()

    def close(self) -> None:
        self._closed = True
        for loop, (_, keeper) in list(self._clients.items()):
            if loop.is_closed():
                continue  # its shutdown_asyncgens closed the client
            if loop.is_running():
                asyncio.run_coroutine_threadsafe(keeper.aclose(), loop)
            else:
                loop.run_until_complete(keeper.aclose())
        self._clients.clear()


async def _close_at_loop_end(client: AsyncOpenAI) -> AsyncIterator[None]:
    try:
        yield
    finally:
        await client.close()
