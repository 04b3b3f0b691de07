"""Prefill accounting: how many prompt tokens an engine computed against how many it had to.

A search sends the same prefixes again and again (every child of a beam re-sends its parent's
trajectory), so what matters is not the prompt tokens sent but the ones the engine *computed*
(``Completion.prompt_tokens - cached_tokens``: the hf engine's slot reuse, vLLM's prefix caching,
an OpenAI-compatible server's ``cached_tokens``) against the *distinct* prefix tokens — the
positions of the trie of every prompt sent. The **prefill ratio** is computed ÷ distinct: 1.0 when
each distinct prefix token was computed once; ≫ 1 for an engine that re-prefills every request.
Tokens the engine computed while sampling (a previous turn's completion, re-sent as part of the
next prompt) come back as cached, so a perfect cache scores at or below 1.

``track(ledger)`` makes ``ledger`` the current one for the asyncio tasks started inside it (a
context variable: concurrent searches each keep their own); ``Rollout`` records every completion
into the current ledger, whichever engine made it.

Not here: the engines' own counters (``EngineStats``: the whole engine, every caller together).
"""

from __future__ import annotations

import contextlib
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Iterator

from retool.engines.base import Completion


class PrefixTrie:
    """The distinct prefixes of a set of token sequences, as a trie of dicts; counts its nodes."""

    def __init__(self) -> None:
        self.root: dict[int, dict] = {}
        self.nodes = 0

    def insert(self, ids: list[int]) -> int:
        """Add ``ids``; return how many of its positions no earlier sequence had."""
        node, new = self.root, 0
        for token in ids:
            child = node.get(token)
            if child is None:
                child = node[token] = {}
                new += 1
            node = child
        self.nodes += new
        return new


@dataclass
class PrefillLedger:
    requests: int = 0
    prompt_tokens: int = 0  # sent, over every request
    computed_tokens: int = 0  # of those, computed by the engine (not served from its cache)
    trie: PrefixTrie = field(default_factory=PrefixTrie, repr=False)

    @property
    def distinct_tokens(self) -> int:
        """Positions of the trie of all prompts sent."""
        return self.trie.nodes

    def record(self, prompt_ids: list[int], completion: Completion) -> None:
        sent = completion.prompt_tokens or len(prompt_ids)
        self.requests += 1
        self.prompt_tokens += sent
        self.computed_tokens += max(sent - completion.cached_tokens, 0)
        self.trie.insert(prompt_ids)

    @property
    def ratio(self) -> float | None:
        """Prompt tokens computed ÷ distinct prefix tokens (None before any request)."""
        return self.computed_tokens / self.distinct_tokens if self.distinct_tokens else None

    def counts(self) -> dict[str, int]:
        return {"requests": self.requests, "prompt_tokens": self.prompt_tokens,
                "computed_tokens": self.computed_tokens, "distinct_tokens": self.distinct_tokens}


CURRENT: ContextVar[PrefillLedger | None] = ContextVar("retool_prefill_ledger", default=None)


@contextlib.contextmanager
def track(ledger: PrefillLedger) -> Iterator[PrefillLedger]:
    """Record the completions of this context (and of the tasks it starts) into ``ledger``."""
    token = CURRENT.set(ledger)
    try:
        yield ledger
    finally:
        CURRENT.reset(token)


def record(prompt_ids: list[int], completion: Completion) -> None:
    """Into the current ledger, if there is one."""
    ledger = CURRENT.get()
    if ledger is not None:
        ledger.record(prompt_ids, completion)
