"""``retool sandbox serve``: the local sandbox pool as an HTTP service, so cells can run on other hosts.

Routes (request and reply shapes in ``service_schema.py``):

* ``POST /v1/sessions`` → ``{"id", "backend", "stateful"}``: a fresh interpreter kept for this client;
  ``POST /v1/sessions/{id}/run`` ``{"code", "timeout"}`` → the ``ExecResult`` as JSON;
  ``POST /v1/sessions/{id}/interrupt``; ``DELETE /v1/sessions/{id}``; ``GET /v1/sessions`` (this
  client's). One cell at a time per session (a second is a 409). A client that hangs up while its
  cell runs gets the cell interrupted; the session is kept (its variables too).
* ``POST /run_code``, ``POST /run_jupyter``: SandboxFusion's, for ``sandbox_fusion_url`` (``service_fusion.py``).
* ``GET /health`` (load: balancers, ``remote`` placement), ``GET /metrics`` (``service_metrics.py``); no token.

Limits: ``size`` interpreters at once, sessions and one-shot requests together (past it: 429,
nothing queued); sessions idle ``idle_timeout_s`` are closed; the cell timeout and memory are the
sandbox's limits (a request may ask for less time, never more). A sandbox that cannot start is a 503.

Access: with ``tokens`` every request but ``/health`` and ``/metrics`` needs ``Authorization: Bearer
<token>``, and a session answers only to the token that opened it (another gets a 404, as for an
unknown id); ids are 128 random bits. Without tokens the service refuses to listen beyond loopback.

Not here: the jail (the backends), the client (``remote.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import ipaddress
import json
import logging
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, AsyncIterator

from fastapi import FastAPI, Header, Request
from fastapi.responses import JSONResponse, Response

from retool.http_limits import BodyLimit
from retool.sandbox.base import ExecResult, SandboxUnavailable, Session
from retool.sandbox.remote import TOKEN_ENV
from retool.sandbox import service_fusion as fusion
from retool.sandbox.service_metrics import Metrics
from retool.sandbox.service_schema import (RunCodeRequest, RunJupyterRequest, RunRequest, ServiceError,
                                           install_error_handlers)
from retool.sandbox.spec import SandboxSpec

log = logging.getLogger(__name__)

DISCONNECT_POLL_S = 0.25
MAX_BODY_BYTES = 8 << 20  # a cell's source (1M characters, up to 4 bytes each) and its JSON, or files for run_code


def is_loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class ServiceConfig:
    sandbox: SandboxSpec = SandboxSpec()
    host: str = "127.0.0.1"
    port: int = 8765
    size: int = 16  # interpreters at once: open sessions and one-shot requests together
    warm: int | None = None  # started ahead of need (default: min(size, 4))
    idle_timeout_s: float = 600.0
    tokens: tuple[str, ...] = ()
    acquire_timeout_s: float = 120.0  # how long a request waits for an interpreter to start

    def __post_init__(self) -> None:
        if self.size < 1 or self.idle_timeout_s <= 0 or self.acquire_timeout_s <= 0:
            raise ValueError("size must be >= 1 and the timeouts > 0")
        if self.sandbox.backend == "remote":
            raise ValueError("the service runs cells itself: give it a local backend (jupyter, docker, subprocess)")
        if any(not t.strip() for t in self.tokens):
            raise ValueError("an empty token would let any request in: give non-empty tokens")
        if not self.tokens and not is_loopback(self.host):
            raise ValueError(f"listening on {self.host} (beyond loopback) needs a token: --token or {TOKEN_ENV}")


@dataclass
class Hosted:
    """One session kept for a client."""

    id: str
    owner: str
    session: Session
    created: float = field(default_factory=time.time)
    last_used: float = field(default_factory=time.monotonic)
    cells: int = 0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def describe(self) -> dict[str, Any]:
        idle = round(time.monotonic() - self.last_used, 3)
        return {"id": self.id, "created": round(self.created, 3), "idle_s": idle, "cells": self.cells, "busy": self.lock.locked()}


class SandboxService:
    """The state behind the routes: the pool, the sessions kept, the counts."""

    def __init__(self, config: ServiceConfig, pool=None) -> None:
        self.config = config
        self.pool = pool
        self.own_pool = pool is None
        self.hosted: dict[str, Hosted] = {}
        self.one_shot = 0
        self.metrics = Metrics()
        self.metrics.capacity.set(config.size)
        self.started = time.monotonic()
        self._sweeper: asyncio.Task | None = None

    async def start(self) -> None:
        # a thread per interpreter: the default executor's handful would queue a full service's cells
        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(self.config.size + 8, "sandbox-cell"))
        if self.pool is None:
            warm = min(self.config.size, 4) if self.config.warm is None else self.config.warm
            self.pool = await asyncio.to_thread(self.config.sandbox.pool, self.config.size, warm)
        self._sweeper = asyncio.create_task(self._sweep_forever())

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        for hosted in list(self.hosted.values()):
            hosted.session.interrupt()
        self.hosted.clear()
        if self.own_pool and self.pool is not None:
            await asyncio.to_thread(self.pool.close)

    # -- who is asking --------------------------------------------------------------------------

    def owner_of(self, authorization: str | None) -> str:
        if not self.config.tokens:
            return "local"
        scheme, _, token = (authorization or "").partition(" ")
        given = token.strip().encode()
        if scheme.lower() != "bearer" or not any(hmac.compare_digest(given, t.encode()) for t in self.config.tokens):
            self.metrics.refused.labels("auth").inc()
            raise ServiceError(401, "this sandbox service needs a valid token: send 'Authorization: Bearer <token>'",
                               "invalid_token")
        return "token:" + hashlib.sha256(given).hexdigest()[:16]

    # -- interpreters ---------------------------------------------------------------------------

    @property
    def in_use(self) -> int:
        return len(self.hosted) + self.one_shot

    async def _acquire(self) -> Session:
        """An interpreter; the caller counted it against ``size`` before asking (no race for the last)."""
        try:
            return await self.pool.aacquire(timeout=self.config.acquire_timeout_s)
        except (SandboxUnavailable, TimeoutError, RuntimeError) as exc:
            self.metrics.refused.labels("unavailable").inc()
            raise ServiceError(503, f"no sandbox could be started: {exc}".splitlines()[0], "sandbox_unavailable") from None

    def _check_room(self) -> None:
        if self.in_use >= self.config.size:
            self.metrics.refused.labels("capacity").inc()
            raise ServiceError(429, f"all {self.config.size} interpreters of this service are in use; close a "
                                    "session or try another host", "capacity")

    async def open(self, owner: str) -> Hosted:
        self._check_room()
        self.one_shot += 1  # held while it starts
        try:
            session = await self._acquire()
        finally:
            self.one_shot -= 1
        hosted = Hosted(secrets.token_hex(16), owner, session)
        self.hosted[hosted.id] = hosted
        self._gauges()
        return hosted

    def get(self, session_id: str, owner: str) -> Hosted:
        hosted = self.hosted.get(session_id)
        if hosted is None or not hmac.compare_digest(hosted.owner, owner):
            raise ServiceError(404, f"no session {session_id[:40]!r} here (closed, expired, or never opened)",
                               "unknown_session")
        return hosted

    async def close_session(self, session_id: str, owner: str) -> None:
        """Close a session; a cell running in it is interrupted first, and the interpreter is given
        back only once that cell has returned (never closed under a running cell)."""
        hosted = self.get(session_id, owner)
        del self.hosted[hosted.id]
        self._gauges()
        hosted.session.interrupt()
        async with hosted.lock:
            await asyncio.to_thread(self._release, hosted.session)

    def _release(self, session: Session) -> None:
        with contextlib.suppress(ValueError, RuntimeError):  # the pool closed meanwhile
            self.pool.release(session)

    @contextlib.asynccontextmanager
    async def interpreter(self) -> AsyncIterator[Session]:
        """A fresh interpreter for one request (SandboxFusion's endpoints), given back after it."""
        self._check_room()
        self.one_shot += 1
        self._gauges()
        try:
            session = await self._acquire()
            try:
                yield session
            finally:
                await asyncio.to_thread(self._release, session)
        finally:
            self.one_shot -= 1
            self._gauges()

    def _gauges(self) -> None:
        self.metrics.sessions.set(len(self.hosted))
        self.metrics.in_use.set(self.in_use)

    # -- cells ----------------------------------------------------------------------------------

    def cell_timeout(self, asked: float | None) -> float:
        ceiling = self.config.sandbox.limits.timeout_s
        return ceiling if asked is None or asked <= 0 else min(asked, ceiling)

    async def run_cell(self, session: Session, code: str, timeout: float | None,
                       disconnected=None) -> ExecResult | None:
        """One cell on a worker thread; if ``disconnected()`` first: interrupt it, None (state kept).
        The cell's future is awaited directly (one thread hop); once the cell has run
        ``DISCONNECT_POLL_S``, a watcher asks every ``DISCONNECT_POLL_S`` whether the client is still there."""
        started = time.monotonic()
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(None, session.run, code, self.cell_timeout(timeout))
        gone: list[bool] = []
        watchers: list[asyncio.Future] = []  # started only once a cell outlasts the first poll (most never do)
        later = None if disconnected is None else loop.call_later(
            DISCONNECT_POLL_S, lambda: watchers.append(asyncio.ensure_future(_watch(session, disconnected, gone))))
        try:
            result = await future
        except asyncio.CancelledError:  # the service shutting down under the cell: do not leave it running
            session.interrupt()
            raise
        finally:
            if later is not None:
                later.cancel()
            for watcher in watchers:
                watcher.cancel()
        self._count(result, started)
        return None if gone else result

    def _count(self, result: ExecResult, started: float) -> None:
        self.metrics.cells.labels(result.status.value).inc()
        self.metrics.latency.observe(time.monotonic() - started)

    async def run_in_session(self, hosted: Hosted, body: RunRequest, disconnected) -> ExecResult | None:
        if hosted.lock.locked():
            raise ServiceError(409, "a cell is already running in this session; wait for it or interrupt it",
                               "session_busy")
        async with hosted.lock:
            hosted.last_used = time.monotonic()
            try:
                return await self.run_cell(hosted.session, body.code, body.timeout, disconnected)
            finally:
                hosted.cells += 1
                hosted.last_used = time.monotonic()

    # -- idle expiry ----------------------------------------------------------------------------

    def expired(self, now: float | None = None) -> list[Hosted]:
        now = time.monotonic() if now is None else now
        return [h for h in self.hosted.values() if not h.lock.locked() and now - h.last_used > self.config.idle_timeout_s]

    async def sweep(self) -> int:
        """Close idle sessions: all leave the table before any is released (no run can slip in)."""
        gone = []
        for hosted in self.expired():
            if not hosted.lock.locked() and self.hosted.pop(hosted.id, None) is not None:
                gone.append(hosted)
        if gone:
            self._gauges()
            self.metrics.expired.inc(len(gone))
        for hosted in gone:
            await asyncio.to_thread(self._release, hosted.session)
        return len(gone)

    async def _sweep_forever(self) -> None:
        period = max(0.05, min(5.0, self.config.idle_timeout_s / 4))
        while True:
            await asyncio.sleep(period)
            try:
                await self.sweep()
            except Exception:  # noqa: BLE001 - the sweeper must outlive one bad release
                log.exception("closing idle sandbox sessions failed")

    def health(self) -> dict[str, Any]:
        return {"status": "ok", "backend": self.config.sandbox.backend, "sessions": len(self.hosted),
                "in_use": self.in_use, "capacity": self.config.size,
                "timeout_s": self.config.sandbox.limits.timeout_s, "uptime_s": round(time.monotonic() - self.started, 1)}

async def _watch(session: Session, disconnected, gone: list[bool]) -> None:
    while not await disconnected():
        await asyncio.sleep(DISCONNECT_POLL_S)
    gone.append(True)
    session.interrupt()

# -- the app ---------------------------------------------------------------------------------------


def create_app(config: ServiceConfig, pool=None):
    """The FastAPI app over a pool of ``config.sandbox`` (or ``pool``: tests, embedding)."""

    service = SandboxService(config, pool)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        await service.start()
        try:
            yield
        finally:
            await service.close()

    app = FastAPI(title="retool sandbox", lifespan=lifespan)
    app.state.service = service
    app.add_middleware(BodyLimit, limit=MAX_BODY_BYTES, error_body=lambda message: ServiceError(413, message).body())

    install_error_handlers(app)

    @app.get("/health")
    async def health():
        return service.health()

    @app.get("/metrics")
    async def metrics():
        return Response(service.metrics.text(), media_type="text/plain; version=0.0.4")

    @app.post("/v1/sessions")
    async def open_session(request: Request, authorization: str | None = Header(None)):
        owner = service.owner_of(authorization)
        hosted = await service.open(owner)
        if await request.is_disconnected():  # the client gave up while the interpreter started: nobody owns it
            await service.close_session(hosted.id, owner)
            return JSONResponse({}, status_code=499)
        return {"id": hosted.id, "backend": config.sandbox.backend, "stateful": hosted.session.stateful,
                "timeout_s": config.sandbox.limits.timeout_s}

    @app.get("/v1/sessions")
    async def list_sessions(authorization: str | None = Header(None)):
        owner = service.owner_of(authorization)
        return {"sessions": [h.describe() for h in service.hosted.values() if h.owner == owner]}

    @app.post("/v1/sessions/{session_id}/run")
    async def run(session_id: str, request: Request):
        # the hot route reads its own body: FastAPI's dependency pass cost a third of the service's overhead
        hosted = service.get(session_id, service.owner_of(request.headers.get("authorization")))
        body = RunRequest.model_validate_json(await request.body())
        result = await service.run_in_session(hosted, body, request.is_disconnected)
        if result is None:
            return JSONResponse({}, status_code=499)
        return Response(json.dumps(result.to_dict()), media_type="application/json")  # no jsonable_encoder pass

    @app.post("/v1/sessions/{session_id}/interrupt")
    async def interrupt(session_id: str, authorization: str | None = Header(None)):
        hosted = service.get(session_id, service.owner_of(authorization))
        hosted.session.interrupt()
        return {"id": hosted.id, "interrupted": hosted.lock.locked()}

    @app.delete("/v1/sessions/{session_id}")
    async def close(session_id: str, authorization: str | None = Header(None)):
        await service.close_session(session_id, service.owner_of(authorization))
        return {"id": session_id, "closed": True}

    @app.post("/run_code")
    async def run_code(body: RunCodeRequest, request: Request, authorization: str | None = Header(None)):
        service.owner_of(authorization)
        return (await fusion.run_code(service, body, request.is_disconnected)).model_dump()

    @app.post("/run_jupyter")
    async def run_jupyter(body: RunJupyterRequest, request: Request, authorization: str | None = Header(None)):
        service.owner_of(authorization)
        return (await fusion.run_jupyter(service, body, request.is_disconnected)).model_dump()

    return app


def serve(config: ServiceConfig) -> None:
    """Run the service in the foreground (Ctrl-C stops it and closes every sandbox)."""
    import uvicorn

    # no access log: a line per cell costs more than the rest of the service's work on it (the
    # Prometheus series count cells); idle connections are kept 75 s, longer than a turn of generation
    uvicorn.run(create_app(config), host=config.host, port=config.port, log_level="info", access_log=False,
                timeout_keep_alive=75)
