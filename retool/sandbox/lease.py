"""A pool session taken at the first cell, not before: ``LazySession``.

A trajectory holds its interpreter from its first cell to its end (state must persist), but
before its first cell it needs none. Taking the session up front made a rollout with more
trajectories than sessions generate in waves: the trajectories without a session waited for one
before writing a single token, while the engine had room for them (and most of a trajectory is
text). Taken lazily, every trajectory decodes from the start and only those that reach a cell wait,
at that cell, for a session; one that never runs code costs no interpreter at all.

``LazySession`` is a ``Session``: a cell that cannot get a session within ``wait_s`` (or from a pool
that cannot start one) is an ``infra_error`` result, never scored or trained on; ``interrupt``
while it waits abandons the wait (the cell returns ``INTERRUPTED``); ``close`` gives the session
back to the pool, also one that a cancelled wait obtains later.

Not here: which session (``SandboxPool``), replaying a prefix's cells (``retool.search.replay``).
"""

from __future__ import annotations

import threading
import time

from retool.sandbox.base import ExecResult, ExecStatus, SandboxLimits, SandboxUnavailable, Session

WAIT_SLICE_S = 0.25  # an interrupt or close ends a wait for a session within this


class LazySession(Session):
    """A session of ``pool`` acquired by the first cell (see the module doc)."""

    backend = "lazy"

    def __init__(self, pool, wait_s: float, limits: SandboxLimits | None = None) -> None:
        super().__init__(limits or getattr(pool, "limits", None))
        self.pool, self.wait_s = pool, wait_s
        self.inner: Session | None = None
        self._guard = threading.Lock()
        self._closed = False

    def _inner(self) -> Session | ExecResult:
        """The pool's session, taking it now if need be; a result when none can be had."""
        if self.inner is not None:
            return self.inner
        deadline = time.monotonic() + self.wait_s
        while True:
            if self._take_interrupt() or self._closed:
                return ExecResult(ExecStatus.INTERRUPTED, error="interrupted while waiting for a sandbox session")
            try:
                session = self.pool.acquire(timeout=max(min(WAIT_SLICE_S, deadline - time.monotonic()), 0.0))
            except TimeoutError:
                if time.monotonic() >= deadline:
                    return ExecResult(ExecStatus.INFRA_ERROR, error=f"no sandbox session within {self.wait_s:g} s")
                continue
            except (SandboxUnavailable, RuntimeError) as exc:
                return ExecResult(ExecStatus.INFRA_ERROR, error=f"no sandbox session: {exc}".splitlines()[0])
            with self._guard:
                if not self._closed:
                    self.inner = session
                    return session
            self.pool.release(session)  # closed while this thread waited: nobody will use it
            return ExecResult(ExecStatus.INTERRUPTED, error="closed while waiting for a sandbox session")

    def _run(self, code: str, timeout: float) -> ExecResult:
        inner = self._inner()
        return inner if isinstance(inner, ExecResult) else inner.run(code, timeout)

    def interrupt(self) -> None:
        super().interrupt()
        if self.inner is not None:
            self.inner.interrupt()

    def restart(self) -> None:
        if self.inner is not None:
            self.inner.restart()

    def close(self) -> None:
        """Give the session back to the pool (a fresh one replaces it). Idempotent."""
        with self._guard:
            self._closed = True
            inner, self.inner = self.inner, None
        if inner is not None:
            self.pool.release(inner)

    @property
    def alive(self) -> bool:
        return self.inner is None or self.inner.alive
