"""A pool of warm sandbox sessions: one per trajectory, fresh for every trajectory.

Starting an interpreter in a jail costs ~0.5–1 s, far more than a cell, so the pool keeps
``size`` sessions started ahead of need. ``acquire`` hands one out; ``release`` throws it away and
starts its replacement in the background, so no state (names, files, monkey-patched builtins,
stray threads) can leak from one trajectory into the next. A session found dead at ``acquire`` is
replaced too.

Thread-safe (a lock and a condition around the idle list) and usable from asyncio
(``aacquire``/``session()`` run the blocking wait on a worker thread). Sessions are started on the
pool's own long-lived worker threads: the jails use parent-death signals, which fire when the
*thread* that started them ends.

``warm`` (default ``size``) sessions are kept started ahead; the rest of ``size`` start on demand.
A server that holds one session per conversation sets ``size`` to its session cap and ``warm`` low.

Not here: scheduling cells across sessions, or sharing one session between trajectories.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, AsyncIterator, Iterator

from retool.sandbox import create_session
from retool.sandbox.base import ExecResult, SandboxLimits, SandboxUnavailable, Session

log = logging.getLogger(__name__)

_reaped_once = threading.Lock()
_reaped = False


def reap_orphans_once() -> None:
    """Once per process: clean up the jails and cgroups that crashed earlier processes left.
    (Containers: the docker backend reaps its own, once per process, when its first session starts.)"""
    global _reaped
    with _reaped_once:
        if _reaped:
            return
        _reaped = True
    from retool.sandbox.isolation import reap_orphans

    count = reap_orphans()
    if count:
        log.warning("reaped %d sandbox(es) left behind by a process that is gone", count)


class SandboxPool:
    """``size`` warm sessions of one backend. Use ``with pool.session() as s: s.run(code)``."""

    def __init__(
        self,
        backend: str = "jupyter",
        size: int = 4,
        limits: SandboxLimits | None = None,
        start_workers: int = 2,
        warm: int | None = None,
        **options: Any,
    ) -> None:
        if size < 1:
            raise ValueError("a pool needs at least one session")
        self.backend, self.size, self.limits, self.options = backend, size, limits or SandboxLimits(), options
        self.warm = size if warm is None else max(0, min(warm, size))
        reap_orphans_once()
        self._lock = threading.Condition()
        self._idle: list[Session] = []
        self._busy: set[Session] = set()
        self._starting = 0
        self._closed = False
        self._last_error: BaseException | None = None
        self._starter = ThreadPoolExecutor(max_workers=start_workers, thread_name_prefix=f"sandbox-{backend}")
        for _ in range(self.warm):
            self._start_one()

    # -- filling -------------------------------------------------------------------------------

    def _start_one(self) -> None:
        with self._lock:
            self._starting += 1
        self._starter.submit(create_session, self.backend, self.limits, **self.options).add_done_callback(self._started)

    def _started(self, future: Future) -> None:
        with self._lock:
            self._starting -= 1
            error = future.exception()
            if error is not None:
                self._last_error = error
                log.error("could not start a %s sandbox: %s", self.backend, error)
            elif self._closed:
                future.result().close()
            else:
                self._idle.append(future.result())
            self._lock.notify_all()

    def _retire(self, session: Session) -> None:
        """Close ``session`` and start its replacement (if fewer than ``warm`` are ready), both off
        the caller's thread."""
        with self._lock:
            short = not self._closed and len(self._idle) + self._starting < self.warm
        if short:
            self._start_one()
        self._starter.submit(session.close)

    # -- handing out ---------------------------------------------------------------------------

    def acquire(self, timeout: float | None = None) -> Session:
        """A fresh, live session. Raises ``TimeoutError`` past ``timeout`` seconds, and
        ``SandboxUnavailable`` when no session can be started at all."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._lock:
                while not self._idle:
                    if self._closed:
                        raise RuntimeError("the sandbox pool is closed")
                    if self._starting == 0 and self._last_error is not None:
                        error, self._last_error = self._last_error, None
                        self._start_one()  # try again next time, but tell this caller why it failed
                        raise SandboxUnavailable(f"no {self.backend} sandbox could be started: {error}") from error
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        raise TimeoutError(f"no {self.backend} sandbox became free within {timeout} s")
                    if self._starting == 0 and len(self._busy) + len(self._idle) < self.size:
                        self._start_one()
                    self._lock.wait(remaining)
                session = self._idle.pop(0)
                if session.alive:
                    self._busy.add(session)
                    return session
            self._retire(session)  # died while idle: replace it and look again

    def release(self, session: Session) -> None:
        """Give a session back. It is discarded and replaced by a fresh one (no state leaks)."""
        with self._lock:
            if self._closed:
                return  # close() already closed it
            if session not in self._busy:
                raise ValueError("this session does not belong to the pool or was already released")
            self._busy.discard(session)
        self._retire(session)

    @contextlib.contextmanager
    def session(self, timeout: float | None = None) -> Iterator[Session]:
        session = self.acquire(timeout)
        try:
            yield session
        finally:
            self.release(session)

    async def aacquire(self, timeout: float | None = None) -> Session:
        return await asyncio.to_thread(self.acquire, timeout)

    @contextlib.asynccontextmanager
    async def asession(self, timeout: float | None = None) -> AsyncIterator[Session]:
        session = await self.aacquire(timeout)
        try:
            yield session
        finally:
            self.release(session)

    def run(self, code: str, timeout: float | None = None) -> ExecResult:
        """One cell in a fresh session (acquire, run, release): for stateless checks."""
        with self.session() as session:
            return session.run(code, timeout)

    def wait_ready(self, timeout: float = 120.0) -> int:
        """Block until every slot is warm (or ``timeout``); returns how many are idle."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._starting and time.monotonic() < deadline:
                self._lock.wait(deadline - time.monotonic())
            return len(self._idle)

    # -- shutting down -------------------------------------------------------------------------

    def close(self) -> None:
        """Close every session, busy ones included. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            sessions = self._idle + list(self._busy)
            self._idle.clear()
            self._busy.clear()
            self._lock.notify_all()
        for session in sessions:
            self._starter.submit(session.close)
        self._starter.shutdown(wait=True)

    def __enter__(self) -> "SandboxPool":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if not getattr(self, "_closed", True):
            with contextlib.suppress(Exception):
                self.close()
