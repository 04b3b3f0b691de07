"""Several servers of one model behind one engine (``--base-url URL,URL,…``).

A trajectory's requests all go to the server that served its first one: that server's prefix cache
holds the trajectory so far, so each later turn prefills only the interpreter's output. A new
trajectory goes to the server with the fewest requests in flight (ties: the fewest trajectories under way,
then the fewest requests served, so that servers idle alike still take turns). The
trajectory is named by ``AFFINITY``, a context variable the rollout sets around each trajectory
(``Rollout.run_one``), so concurrent trajectories keep theirs apart; a request outside any
trajectory is simply balanced.

A server whose request fails (connection refused, reset) is offered no new trajectories for
``DOWN_S`` seconds; the failed request itself fails as it would have on that server (the rollout
makes it an infrastructure failure). Trajectories already placed on it stay there (their prefix is
nowhere else).

Not here: the servers' protocol (``openai.py``).
"""

from __future__ import annotations

import contextlib
import time
from contextvars import ContextVar
from dataclasses import fields
from typing import Any, AsyncIterator, Callable, Iterator

from retool.engines.base import Completion, Engine, EngineStats, SamplingParams, TokenDelta

DOWN_S = 30.0


class TrajectoryKey:
    """Names one trajectory for routing; engines that placed it are told when it ends."""

    __slots__ = ("_ended",)

    def __init__(self) -> None:
        self._ended: list[Callable[[], None]] = []

    def when_ended(self, callback: Callable[[], None]) -> None:
        self._ended.append(callback)

    def end(self) -> None:
        callbacks, self._ended = self._ended, []
        for callback in callbacks:
            callback()


AFFINITY: ContextVar[TrajectoryKey | None] = ContextVar("retool_engine_affinity", default=None)


@contextlib.contextmanager
def affinity() -> Iterator[TrajectoryKey]:
    """Requests made inside this block (in this task) belong to one trajectory, placed at its first."""
    key = TrajectoryKey()
    token = AFFINITY.set(key)
    try:
        yield key
    finally:
        AFFINITY.reset(token)
        key.end()


class RoutedEngine(Engine):
    name = "routed"

    def __init__(self, engines: list[Engine]) -> None:
        if not engines:
            raise ValueError("RoutedEngine needs at least one engine")
        self.engines = list(engines)
        self.tokenizer = engines[0].tokenizer
        self.logprobs_available = all(getattr(e, "logprobs_available", True) for e in engines)
        self.in_flight = [0] * len(engines)
        self.served = [0] * len(engines)  # requests
        self.active = [0] * len(engines)  # trajectories placed and not ended
        self.down_until = [0.0] * len(engines)
        self.placed: dict[TrajectoryKey, int] = {}

    def server_for(self, key: TrajectoryKey | None) -> int:
        """The server of trajectory ``key`` (placing it if new; forgotten when it ends)."""
        if key is not None and key in self.placed:
            return self.placed[key]
        now = time.monotonic()
        live = [i for i in range(len(self.engines)) if now >= self.down_until[i]] or list(range(len(self.engines)))
        chosen = min(live, key=lambda i: self.load(i))
        if key is not None:
            self.placed[key] = chosen
            self.active[chosen] += 1
            key.when_ended(lambda: self._ended(key))
        return chosen

    def load(self, index: int) -> tuple[int, int, int, int]:
        """What placement minimises: requests in flight, trajectories under way, requests served."""
        return (self.in_flight[index], self.active[index], self.served[index], index)

    def _ended(self, key: TrajectoryKey) -> None:
        index = self.placed.pop(key, None)
        if index is not None:
            self.active[index] -= 1

    @contextlib.contextmanager
    def _on(self, index: int) -> Iterator[Engine]:
        self.in_flight[index] += 1
        self.served[index] += 1
        try:
            yield self.engines[index]
        except Exception as exc:
            if _unreachable(exc):
                self.down_until[index] = time.monotonic() + DOWN_S
            raise
        finally:
            self.in_flight[index] -= 1

    async def agenerate(self, prompt_ids: list[int], params: SamplingParams, stop: tuple[str, ...] = ()) -> Completion:
        with self._on(self.server_for(AFFINITY.get())) as engine:
            return await engine.agenerate(prompt_ids, params, stop)

    async def astream(self, prompt_ids: list[int], params: SamplingParams,
                      stop: tuple[str, ...] = ()) -> AsyncIterator[TokenDelta | Completion]:
        with self._on(self.server_for(AFFINITY.get())) as engine:
            async for item in engine.astream(prompt_ids, params, stop):
                yield item

    @property
    def stats(self) -> EngineStats:
        parts = [e.stats for e in self.engines]
        counters = {f.name: sum(getattr(p, f.name) for p in parts) for f in fields(EngineStats) if f.name != "extra"}
        return EngineStats(**counters, extra={f"server{i}_requests": float(n) for i, n in enumerate(self.served)})

    def close(self) -> None:
        for engine in self.engines:
            engine.close()

    async def aclose(self) -> None:
        for engine in self.engines:
            closer: Any = getattr(engine, "aclose", None)
            if closer is not None:
                await closer()


def _unreachable(exc: BaseException) -> bool:
    """The server could not be reached (refused, reset, timed out): the error or what caused it."""
    try:
        from openai import APIConnectionError
    except ImportError:  # the openai client is a core dependency; this only keeps the check total
        APIConnectionError = ConnectionError  # noqa: N806
    return any(isinstance(e, (ConnectionError, APIConnectionError)) for e in (exc, exc.__cause__) if e is not None)
