"""The engine contract: token ids in, token ids (with logprobs) out, stopping on strings.

Every backend (transformers, vLLM, an OpenAI-compatible server) implements ``agenerate`` for one
prompt; the rollout calls it from many asyncio tasks at once, so an engine batches whatever is in
flight (continuous batching) and a trajectory whose code is running in the sandbox does not hold
up the others. ``generate`` is the synchronous many-prompt convenience built on it.

Stop strings are kept in the output (the protocol needs ``</code>`` in the transcript) and found
even when split across tokens. A completion says how it ended (``Completion.end``: a stop string,
EOS, or ``max_new_tokens``); how a whole *trajectory* finished is ``Trajectory.finish_reason``.
``logprobs`` are those of the sampled tokens under the model's raw
distribution (temperature 1, no top-p/top-k), as vLLM reports them by default; they are what RL's
importance ratios need.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from dataclasses import dataclass, field, replace
from typing import Any, AsyncIterator, Literal

CompletionEnd = Literal["stop", "eos", "length"]


@dataclass(frozen=True)
class SamplingParams:
    """How one generate call samples. ``max_new_tokens`` limits that call (the rollout sets it to
    what is left of the trajectory's budget, ``RolloutConfig.max_total_tokens``)."""

    max_new_tokens: int = 1024
    temperature: float = field(default=1.0, metadata={"cli": True, "help": "Sampling temperature (0: greedy)."})
    top_p: float = field(default=1.0, metadata={"cli": True, "help": "Nucleus sampling: the smallest set of tokens "
                                                                      "with this much probability."})
    top_k: int = field(default=0, metadata={"cli": True, "help": "Sample among the k likeliest tokens (0: off)."})
    seed: int | None = field(default=None, metadata={
        "cli": True, "help": "Sampling seed; every sample's and step's seed derives from it (unset: unseeded)."})

    def __post_init__(self) -> None:
        if self.max_new_tokens < 0 or self.temperature < 0 or not 0 < self.top_p <= 1 or self.top_k < 0:
            raise ValueError(f"sampling needs max_new_tokens >= 0, temperature >= 0, 0 < top_p <= 1, top_k >= 0: {self}")

    def with_(self, **changes: Any) -> "SamplingParams":
        return replace(self, **changes)


@dataclass(frozen=True)
class Completion:
    ids: list[int]
    logprobs: list[float]
    end: CompletionEnd  # "stop": a stop string (``stop``), "eos", or "length": max_new_tokens
    stop: str | None = None  # the stop string that ended it, when end == "stop"
    prompt_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens served from the KV cache instead of computed


@dataclass(frozen=True)
class TokenDelta:
    """New tokens of a completion in progress (``Engine.astream``); the stream ends with the
    ``Completion`` itself."""

    ids: tuple[int, ...]


@dataclass
class EngineStats:
    """Counters for benchmarks and logs. ``busy_s`` is time spent in model forward passes; the
    engines that own their scheduler (hf) also split the rest of a pass's time, so a benchmark can
    say where the time between forwards goes."""

    prefill_tokens: int = 0  # prompt tokens actually computed
    cached_tokens: int = 0  # prompt tokens reused from the cache
    decode_tokens: int = 0
    busy_s: float = 0.0
    requests: int = 0
    passes: int = 0  # forward passes (prefill and decode)
    decode_passes: int = 0  # of those, decode passes: decode_tokens / decode_passes = mean batch in flight
    decode_rows: int = 0  # rows the decode passes computed, idle ones in the batch included
    prefill_s: float = 0.0  # of busy_s, the prefill passes'
    bookkeeping_s: float = 0.0  # building a pass's inputs: ids, positions, the attention mask, cache indices
    sampling_s: float = 0.0  # choosing tokens, their logprobs, stop and end checks
    admission_s: float = 0.0  # placing requests in slots: prefix matching, column copies
    slot_moves: int = 0  # decoding sequences moved to a lower free slot (hf: packing the batch)
    extra: dict[str, float] = field(default_factory=dict)


class Engine(ABC):
    """A text generator over token ids. ``tokenizer`` is a Hugging Face tokenizer (or one with
    ``encode``/``decode`` and ``apply_chat_template``) so the rollout can render prompts and
    interpreter output."""

    tokenizer: Any
    name: str = "?"

    @abstractmethod
    async def agenerate(self, prompt_ids: list[int], params: SamplingParams, stop: tuple[str, ...] = ()) -> Completion:
        """Continue ``prompt_ids``; returns when a stop string, EOS or ``max_new_tokens`` is reached."""

    async def astream(
        self, prompt_ids: list[int], params: SamplingParams, stop: tuple[str, ...] = ()
    ) -> AsyncIterator[TokenDelta | Completion]:
        """Like ``agenerate``, yielding ``TokenDelta``s as tokens are sampled, then the ``Completion``.
        Engines that cannot stream yield all tokens at once at the end (this default)."""
        completion = await self.agenerate(prompt_ids, params, stop)
        yield TokenDelta(tuple(completion.ids))
        yield completion

    def generate(
        self, prompts: list[list[int]], params: SamplingParams, stop: tuple[str, ...] = ()
    ) -> list[Completion]:
        """Many prompts at once (batched by the engine), in order."""

        async def run_all() -> list[Completion]:
            return list(await asyncio.gather(*(self.agenerate(p, params, stop) for p in prompts)))

        return asyncio.run(run_all())

    @property
    def stats(self) -> EngineStats:
        return EngineStats()

    def close(self) -> None:
        """Release the model and any background workers. Idempotent."""

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def find_stop(text: str, stops: tuple[str, ...]) -> str | None:
    """The stop string that occurs in ``text`` earliest, if any."""
    best, best_at = None, len(text) + 1
    for stop in stops:
        at = text.find(stop)
        if 0 <= at < best_at:
            best, best_at = stop, at
    return best
