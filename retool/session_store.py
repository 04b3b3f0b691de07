"""Sandbox sessions by conversation id, for a server holding one session per conversation.

A session comes from a ``SandboxPool`` the first time its id is used and goes back (closed and
replaced, as the pool does) when it has been idle for ``ttl_s`` (``expire``, called by the owner
periodically) or when room is needed: past ``max_sessions`` the least recently used idle session
is dropped; with none idle, ``SessionsFull``. Requests on one id are served one at a time (a
session runs one cell at a time). Used from one asyncio event loop.

Not here: HTTP (``retool.serve``), what runs in the sessions.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import AsyncIterator

from retool.sandbox import SandboxPool
from retool.sandbox.base import Session


class SessionsFull(RuntimeError):
    """Every session is in use: a new conversation must wait or retry."""


@dataclass
class _Entry:
    session: Session
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    last_used: float = field(default_factory=time.monotonic)
    users: int = 0  # requests holding or waiting for it


class SessionStore:
    """Sandbox sessions by conversation id, taken from a pool, closed when idle or evicted."""

    def __init__(self, pool: SandboxPool, ttl_s: float, max_sessions: int) -> None:
        self.pool, self.ttl_s, self.max_sessions = pool, ttl_s, max_sessions
        self._entries: dict[str, _Entry] = {}
        self._creating = asyncio.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    @contextlib.asynccontextmanager
    async def use(self, session_id: str) -> AsyncIterator[Session]:
        entry = self._entries.get(session_id)
        if entry is None:
            async with self._creating:
                entry = self._entries.get(session_id)
                if entry is None:
                    self._make_room()
                    entry = _Entry(await self.pool.aacquire(timeout=120))
                    self._entries[session_id] = entry
        entry.users += 1
        try:
            async with entry.lock:
                yield entry.session
        finally:
            entry.users -= 1
            entry.last_used = time.monotonic()

    def _make_room(self) -> None:
        if len(self._entries) < self.max_sessions:
            return
        idle = [(e.last_used, k) for k, e in self._entries.items() if e.users == 0]
        if not idle:
            raise SessionsFull(f"all {self.max_sessions} sandbox sessions are in use; retry later")
        self._drop(min(idle)[1])

    def _drop(self, session_id: str) -> None:
        entry = self._entries.pop(session_id)
        with contextlib.suppress(Exception):
            self.pool.release(entry.session)

    def expire(self) -> int:
        """Close sessions idle for longer than the TTL; returns how many."""
        now = time.monotonic()
        old = [k for k, e in self._entries.items() if e.users == 0 and now - e.last_used > self.ttl_s]
        for session_id in old:
            self._drop(session_id)
        return len(old)

    def close(self) -> None:
        for session_id in list(self._entries):
            self._drop(session_id)
