"""The hf engine's bookkeeping records: a KV slot's state and contents, a request in flight, and
the small pure helpers the scheduler uses (prefix length, capacity rounding, end-of-sequence ids).

Not here: scheduling (``retool.engines.hf``), the cache tensors (``retool.engines.kv_slots``).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from enum import Enum

import torch

from retool.engines.base import SamplingParams


class SlotState(Enum):
    """Where a KV slot stands: free, holding a prompt still to prefill, decoding, or parked (its
    cache kept for the trajectory's next turn until someone needs the slot)."""

    FREE = "free"
    PENDING = "pending"
    DECODING = "decoding"
    PARKED = "parked"


@dataclass
class Request:
    prompt: list[int]
    params: SamplingParams
    stop: tuple[str, ...]
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    generator: torch.Generator | None
    cached: int = 0
    stream: asyncio.Queue | None = None  # receives each sampled token, then the Completion (astream)
    cancelled: bool = False  # the streaming consumer went away: stop at the next token


@dataclass
class Slot:
    index: int
    state: SlotState = SlotState.FREE
    fed: list[int] = field(default_factory=list)  # tokens whose keys/values fill columns [0, len(fed))
    pending: list[int] = field(default_factory=list)  # tokens to feed next pass
    request: Request | None = None
    generated: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    parked_at: float = 0.0
    parked_pass: int = 0  # the engine's decode pass count when it was parked
    prompt_logits: tuple[int, torch.Tensor] | None = None  # (prompt length, next-token logits after it)


def common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def next_pow2(n: int) -> int:
    return 1 << (max(n, 1) - 1).bit_length()


def eos_ids(model, tokenizer) -> list[int]:
    ids: list[int] = []
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for value in (configured, tokenizer.eos_token_id):
        for token in value if isinstance(value, (list, tuple)) else [value]:
            if token is not None and token not in ids:
                ids.append(int(token))
    return ids
