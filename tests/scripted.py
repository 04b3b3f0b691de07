"""A scripted engine: the model's turns are given, everything around them (the loop, the sandbox,
the chat, the server) is real. Used where a test needs the model to write specific code."""

from __future__ import annotations

import asyncio
from typing import Callable

from retool.engines.base import Completion, Engine, SamplingParams, TokenDelta
from tiny import tiny_tokenizer

EOS = "<|im_end|>"


class ScriptedEngine(Engine):
    """Returns the scripted turns in order, honouring stop strings and max_new_tokens the way a real
    engine would; records every input. ``delay`` > 0 streams one token per ``delay`` seconds (so a
    test can stop a generation half-way); a turn of ``None`` babbles until ``max_new_tokens``; a turn
    ``"!raise MESSAGE"`` is the model's server failing (``ConnectionError``). With ``respond``, each
    turn is ``respond(decoded input)`` instead: for concurrent requests."""

    name = "scripted"

    def __init__(self, turns: list[str | None] = (), delay: float = 0.0,
                 respond: Callable[[str], str | None] | None = None, tokenizer=None):
        self.tokenizer = tokenizer if tokenizer is not None else tiny_tokenizer()
        self.turns = list(turns)
        self.delay = delay
        self.respond = respond
        self.calls: list[list[int]] = []

    def _next(self, prompt_ids, params: SamplingParams, stop) -> Completion:
        self.calls.append(list(prompt_ids))
        if self.respond is not None:
            text = self.respond(self.tokenizer.decode(prompt_ids, skip_special_tokens=False))
        else:
            text = self.turns.pop(0) if self.turns else "(script exhausted)" + EOS
        if text is None:
            text = "la " * params.max_new_tokens
        if text.startswith("!raise "):
            raise ConnectionError(text.removeprefix("!raise "))
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        if len(ids) > params.max_new_tokens:
            ids = ids[: params.max_new_tokens]
            return Completion(ids, [-0.5] * len(ids), "length")
        hit = next((s for s in stop if text.endswith(s)), None)
        reason = "stop" if hit else ("eos" if text.endswith(EOS) else "length")
        return Completion(ids, [-0.5] * len(ids), reason, hit)

    async def agenerate(self, prompt_ids, params: SamplingParams, stop=()):
        return self._next(prompt_ids, params, stop)

    async def astream(self, prompt_ids, params: SamplingParams, stop=()):
        completion = self._next(prompt_ids, params, stop)
        if self.delay <= 0:
            yield TokenDelta(tuple(completion.ids))
        else:
            for token in completion.ids:
                await asyncio.sleep(self.delay)
                yield TokenDelta((token,))
        yield completion
