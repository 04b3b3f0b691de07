"""Sandbox sessions by conversation, for a server holding one interpreter per conversation.

A session belongs to an **owner** (the client's bearer token when the server has tokens, else the
client's address) and an id the client chose or was given; another owner using the same id gets a
session of its own. A session comes from a ``SandboxPool`` the first time its (owner, id) is used
and goes back (closed and replaced, as the pool does) when it has been idle for ``ttl_s`` (``expire``,
called by the owner periodically) or when room is needed.

Sessions never vanish silently: the store remembers the last ``TOMBSTONES`` ids it closed and why
(``expired``, ``evicted``), and the next request on such an id gets a fresh interpreter *and* that
reason (``Lease.reset``), which the server passes to the client and to the model.

Room, fairly: an owner holds at most ``per_owner`` sessions (past that, its own least recently used
idle one goes). When the store is full, a new session may only push out an idle session of an owner
holding more than its fair share (``max_sessions`` / owners with sessions): one client cannot wipe
another's state at will. With nothing to push out: ``SessionsFull``.

Requests on one session are served one at a time (a session runs one cell at a time). Used from one
asyncio event loop. Not here: HTTP (``retool.apps.serve``), what runs in the sessions.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import AsyncIterator

from retool.sandbox import SandboxPool
from retool.sandbox.base import Session

TOMBSTONES = 4096  # closed ids remembered, to tell their owners why the interpreter is fresh

Key = tuple[str, str]  # (owner, session id)


class SessionsFull(RuntimeError):
    """No session can be had without pushing out someone else's: retry later."""


@dataclass
class _Entry:
    session: Session
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    last_used: float = field(default_factory=time.monotonic)
    users: int = 0  # requests holding or waiting for it


@dataclass(frozen=True)
class Lease:
    """A session for one request. ``fresh``: made for this request; ``reset`` says why its
    interpreter is fresh although the id was used before (``expired``, ``evicted``)."""

    session: Session
    fresh: bool
    reset: str | None


class SessionStore:
    """Sandbox sessions by (owner, id), taken from a pool, closed when idle or pushed out."""

    def __init__(self, pool: SandboxPool, ttl_s: float, max_sessions: int, per_owner: int | None = None) -> None:
        self.pool, self.ttl_s, self.max_sessions = pool, ttl_s, max_sessions
        self.per_owner = per_owner or max_sessions
        self._entries: dict[Key, _Entry] = {}
        self._closed: OrderedDict[Key, str] = OrderedDict()
        self._creating = asyncio.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    @contextlib.asynccontextmanager
    async def use(self, owner: str, session_id: str) -> AsyncIterator[Lease]:
        """The session of (owner, id), made if needed; held exclusively inside the block."""
        key = (owner, session_id)
        reset, fresh = None, False
        entry = self._entries.get(key)
        if entry is None:
            async with self._creating:
                entry = self._entries.get(key)
                if entry is None:
                    self._make_room(owner)
                    entry = _Entry(await self.pool.aacquire(timeout=120))
                    self._entries[key] = entry
                    reset, fresh = self._closed.pop(key, None), True
        entry.users += 1
        try:
            async with entry.lock:
                yield Lease(entry.session, fresh, reset)
        finally:
            entry.users -= 1
            entry.last_used = time.monotonic()

    def _make_room(self, owner: str) -> None:
        idle = {k: e.last_used for k, e in self._entries.items() if e.users == 0}
        mine = [k for k in self._entries if k[0] == owner]
        if len(mine) >= self.per_owner:
            own_idle = [k for k in mine if k in idle]
            if not own_idle:
                raise SessionsFull(f"all {self.per_owner} of this client's sandbox sessions are in use; retry later")
            self._drop(min(own_idle, key=idle.get), "evicted")
            return
        if len(self._entries) < self.max_sessions:
            return
        counts: dict[str, int] = {}
        for o, _ in self._entries:
            counts[o] = counts.get(o, 0) + 1
        fair = self.max_sessions / len(set(counts) | {owner})
        candidates = [k for k in idle if counts[k[0]] > fair and (k[0] != owner or counts[owner] >= fair)]
        if not candidates and counts.get(owner, 0) >= fair:
            candidates = [k for k in idle if k[0] == owner]
        if not candidates:
            raise SessionsFull(f"all {self.max_sessions} sandbox sessions are in use; retry later")
        self._drop(min(candidates, key=idle.get), "evicted")

    def _drop(self, key: Key, reason: str) -> None:
        entry = self._entries.pop(key)
        self._closed[key] = reason
        while len(self._closed) > TOMBSTONES:
            self._closed.popitem(last=False)
        with contextlib.suppress(Exception):
            self.pool.release(entry.session)

    def expire(self) -> int:
        """Close sessions idle for longer than the TTL; returns how many."""
        now = time.monotonic()
        old = [k for k, e in self._entries.items() if e.users == 0 and now - e.last_used > self.ttl_s]
        for key in old:
            self._drop(key, "expired")
        return len(old)

    def close(self) -> None:
        for key in list(self._entries):
            self._drop(key, "closed")
