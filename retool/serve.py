"""``retool serve``: an OpenAI-compatible HTTP server that runs the tool loop server-side.

Any OpenAI client can talk to a tool-integrated model: ``POST /v1/chat/completions`` (JSON or SSE
stream) returns an assistant message holding the interleaved transcript (reasoning, code, the
interpreter's real output) and the final answer; ``GET /v1/models``; ``GET /health``.

Sessions: each conversation has one sandbox session, keyed by a session id sent as the
``X-Session-Id`` header or a ``session_id`` body field (the openai client: ``extra_headers`` /
``extra_body``). A request without one starts a new session; its id comes back in the
``X-Session-Id`` header and the ``session_id`` field, so the next request can continue it. Sessions
idle for ``session_ttl_s`` are closed; past ``max_sessions`` the least recently used idle one goes.
Requests on one session are served one at a time (``retool.session_store``).

Limits: ``max_concurrency`` turns run at once (more wait; past ``max_queue`` waiting: 429), a
per-request cap on tokens and tool calls, a prompt-length cap. Validation errors are 400s in
OpenAI's error shape. Model-written code only ever runs in the sandbox; nothing in a request names
a host path, a model to load or a command.

Not here: the loop itself (``retool.rollout``), conversation prompts (``retool.conversation``),
authentication (put it behind a proxy), function calling (the tool is Python, run server-side).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
import uuid
from dataclasses import dataclass
from typing import Any, AsyncIterator, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator

from retool.conversation import Chunk, TurnCollector
from retool.engines.base import Engine, SamplingParams
from retool.rollout import Rollout, RolloutConfig
from retool.sandbox import SandboxLimits, SandboxPool
from retool.sandbox.base import SandboxUnavailable, Session
from retool.session_store import SessionStore, SessionsFull

log = logging.getLogger(__name__)

SESSION_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
SESSION_HEADER = "X-Session-Id"


@dataclass(frozen=True)
class ServeConfig:
    model: str | None = None
    engine: str = "hf"
    base_url: str | None = None
    api_key: str | None = None
    served_name: str | None = None  # the id in /v1/models (default: the model's name)
    sandbox: str = "jupyter"
    dialect: str = "retool"
    host: str = "127.0.0.1"
    port: int = 8000
    max_concurrency: int = 4
    max_queue: int = 64
    max_tokens: int = 2048  # per request, model + interpreter tokens
    default_max_tokens: int = 1024
    max_tool_calls: int = 8
    max_prompt_tokens: int = 8192
    temperature: float = 0.0  # when a request does not say
    sandbox_timeout: float = 30.0
    session_ttl_s: float = 600.0
    max_sessions: int = 32
    warm_sessions: int = 2


# -- the request --------------------------------------------------------------------------------


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class ChatRequest(BaseModel):
    """The fields of OpenAI's chat request that mean something here; others are ignored, and
    the few that cannot be honoured (``n`` > 1, ``tools``, ``stop``) are rejected, not ignored."""

    model_config = ConfigDict(extra="ignore")

    model: str
    messages: list[Message] = Field(min_length=1)
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    seed: int | None = None
    n: int = 1
    stop: str | list[str] | None = None
    tools: list[Any] | None = None
    session_id: str | None = None
    max_tool_calls: int | None = Field(None, ge=0)

    @field_validator("n")
    @classmethod
    def _one_choice(cls, n: int) -> int:
        if n != 1:
            raise ValueError("only n=1 is supported: each choice would need its own sandbox session")
        return n

    @field_validator("tools")
    @classmethod
    def _no_tools(cls, tools: list[Any] | None) -> list[Any] | None:
        if tools:
            raise ValueError("function tools are not supported: the model's tool is Python, run by the server")
        return tools

    @field_validator("stop")
    @classmethod
    def _no_stop(cls, stop: str | list[str] | None) -> None:
        if stop:
            raise ValueError("custom stop strings are not supported: the server stops at code blocks and answers")
        return None

    @field_validator("session_id")
    @classmethod
    def _session_id(cls, value: str | None) -> str | None:
        if value is not None and not SESSION_ID.match(value):
            raise ValueError("a session id is 1-128 characters of letters, digits, '_', '.', ':' or '-'")
        return value


class APIError(Exception):
    """An error for the client, in OpenAI's shape."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.param, self.code = status, message, kind, param, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


# -- the server ---------------------------------------------------------------------------------


FINISH = {"answer": "stop", "eos": "stop", "length": "length", "max_tool_calls": "length", "interrupted": "stop"}


class Server:
    """The state behind the routes: one engine, one sandbox pool, the sessions, the limits."""

    def __init__(self, config: ServeConfig, engine: Engine, model_name: str) -> None:
        self.config, self.engine, self.model_name = config, engine, model_name
        self.pool = SandboxPool(config.sandbox, size=config.max_sessions, warm=config.warm_sessions,
                                limits=SandboxLimits(timeout_s=config.sandbox_timeout))
        self.sessions = SessionStore(self.pool, config.session_ttl_s, config.max_sessions)
        self.slots = asyncio.Semaphore(config.max_concurrency)
        self.waiting = 0
        self.running = 0
        self.served = 0
        self.started = time.time()
        self._janitor: asyncio.Task | None = None
        self.background: set[asyncio.Task] = set()  # cancelled turns still stopping their cells

    async def start(self) -> None:
        self._janitor = asyncio.create_task(self._expire_forever())

    async def _expire_forever(self) -> None:
        while True:
            await asyncio.sleep(max(min(self.config.session_ttl_s / 4, 30.0), 0.05))
            if self.sessions.expire():
                log.info("closed idle sandbox sessions; %d open", len(self.sessions))

    def close(self) -> None:
        if self._janitor is not None:
            self._janitor.cancel()
        self.sessions.close()
        self.pool.close()

    def health(self) -> dict[str, Any]:
        return {"status": "ok", "model": self.model_name, "engine": self.engine.name, "sandbox": self.config.sandbox,
                "dialect": self.config.dialect, "sessions": len(self.sessions), "running": self.running,
                "waiting": self.waiting, "served": self.served, "uptime_s": round(time.time() - self.started, 1)}

    # -- a request ------------------------------------------------------------------------------

    def check(self, request: ChatRequest, header_session: str | None) -> tuple[str, Rollout, list[dict[str, str]]]:
        """Everything that can be refused before any work: returns (session id, rollout, messages)."""
        cfg = self.config
        if request.model != self.model_name:
            raise APIError(404, f"the model {request.model!r} does not exist; this server serves {self.model_name!r}",
                           param="model", code="model_not_found")
        if header_session is not None and not SESSION_ID.match(header_session):
            raise APIError(400, f"bad {SESSION_HEADER} header: 1-128 letters, digits, '_', '.', ':' or '-'",
                           param=SESSION_HEADER)
        if header_session and request.session_id and header_session != request.session_id:
            raise APIError(400, f"the {SESSION_HEADER} header and the session_id field disagree", param="session_id")
        session_id = request.session_id or header_session or f"sess-{uuid.uuid4().hex}"
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()}
                    for m in request.messages]
        if messages[-1]["role"] != "user":
            raise APIError(400, "the last message must be the user's", param="messages")
        max_tokens = request.max_completion_tokens or request.max_tokens or cfg.default_max_tokens
        if max_tokens > cfg.max_tokens:
            raise APIError(400, f"max_tokens {max_tokens} is over this server's limit of {cfg.max_tokens}",
                           param="max_tokens")
        tool_calls = cfg.max_tool_calls if request.max_tool_calls is None else request.max_tool_calls
        if tool_calls > cfg.max_tool_calls:
            raise APIError(400, f"max_tool_calls {tool_calls} is over this server's limit of {cfg.max_tool_calls}",
                           param="max_tool_calls")
        if self.waiting >= cfg.max_queue:
            raise APIError(429, f"the server is busy ({self.waiting} requests waiting); retry later",
                           "rate_limit_error", code="server_busy")
        sampling = SamplingParams(
            temperature=cfg.temperature if request.temperature is None else request.temperature,
            top_p=1.0 if request.top_p is None else request.top_p,
            seed=request.seed,
        )
        rollout = Rollout(self.engine, self.pool, RolloutConfig(
            dialect=cfg.dialect, max_tool_calls=tool_calls, max_total_tokens=max_tokens, sampling=sampling,
            sandbox_timeout=cfg.sandbox_timeout))
        return session_id, rollout, messages

    @contextlib.asynccontextmanager
    async def turn_slot(self, session_id: str) -> AsyncIterator[Session]:
        """Wait for a free concurrency slot, then for the conversation's session."""
        self.waiting += 1
        try:
            await self.slots.acquire()
        finally:
            self.waiting -= 1
        self.running += 1
        try:
            async with self.sessions.use(session_id) as session:  # raises SessionsFull before, never after
                yield session
        except SessionsFull as exc:
            raise APIError(429, str(exc), "rate_limit_error", code="too_many_sessions") from None
        finally:
            self.running -= 1
            self.served += 1
            self.slots.release()

    def start_turn(self, rollout: Rollout, messages: list[dict[str, str]]) -> TurnCollector:
        """The turn's collector (its prompt rendered once, here), or a 400 for a conversation the
        prompt cannot be built from or that is too long."""
        try:
            collector = TurnCollector(rollout, messages)
        except ValueError as exc:
            raise APIError(400, str(exc), param="messages") from None
        length = len(collector.trajectory.prompt_ids)
        if length > self.config.max_prompt_tokens:
            raise APIError(400, f"the conversation is {length} tokens; this server takes at most "
                                f"{self.config.max_prompt_tokens}", param="messages", code="context_length_exceeded")
        return collector


def _extension(turn, session_id: str) -> dict[str, Any]:
    traj = turn.trajectory
    return {
        "session_id": session_id,
        "answer": turn.answer,
        "finish_reason": turn.finish_reason,
        "model_tokens": traj.num_model_tokens,
        "interpreter_tokens": traj.num_tool_tokens,
        "tool_calls": [{"code": c.code, "status": c.result.status.value, "stdout": c.result.stdout,
                        "error": c.result.error, "duration_s": round(c.result.duration_s, 4)} for c in traj.tool_calls],
    }


def _usage(turn) -> dict[str, int]:
    traj = turn.trajectory
    return {"prompt_tokens": len(traj.prompt_ids), "completion_tokens": len(traj.ids),
            "total_tokens": len(traj.prompt_ids) + len(traj.ids)}


def create_app(config: ServeConfig, engine: Engine | None = None, model_name: str | None = None):
    """The FastAPI app. ``engine`` (tests, embedding) skips building one from ``config``."""
    holder: dict[str, Server] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        own_engine = engine is None
        if own_engine:
            from retool.engines import create_engine

            served = await asyncio.to_thread(create_engine, config.engine, config.model, base_url=config.base_url,
                                             api_key=config.api_key, max_batch=config.max_concurrency)
        else:
            served = engine
        name = model_name or config.served_name or _default_name(config)
        server = Server(config, served, name)
        await server.start()
        holder["server"] = server
        try:
            yield
        finally:
            server.close()
            if own_engine:
                served.close()

    app = FastAPI(title="retool", lifespan=lifespan)

    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError):
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError):
        errors = exc.errors()
        first = errors[0] if errors else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        message = f"{where}: {first.get('msg', 'invalid request')}" if where else first.get("msg", "invalid request")
        if first.get("type") == "json_invalid":
            message = "the request body is not valid JSON"
        return JSONResponse(APIError(400, message, param=where or None).body(), status_code=400)

    @app.get("/health")
    async def health():
        return holder["server"].health()

    @app.get("/v1/models")
    async def models():
        server = holder["server"]
        return {"object": "list", "data": [{"id": server.model_name, "object": "model", "created": int(server.started),
                                            "owned_by": "retool"}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatRequest, request: Request):
        server = holder["server"]
        session_id, rollout, messages = server.check(body, request.headers.get(SESSION_HEADER))
        collector = server.start_turn(rollout, messages)
        completion_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        headers = {SESSION_HEADER: session_id}
        if body.stream:
            include_usage = bool((body.stream_options or {}).get("include_usage"))
            events = _stream(server, collector, session_id, completion_id, created, include_usage)
            return StreamingResponse(events, media_type="text/event-stream", headers=headers)
        try:
            async with server.turn_slot(session_id) as session:
                turn = await collector.run(session)
        except SandboxUnavailable as exc:
            raise APIError(503, f"no sandbox could be started: {exc}", "server_error", code="sandbox_unavailable")
        payload = {
            "id": completion_id, "object": "chat.completion", "created": created, "model": server.model_name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": turn.text},
                         "finish_reason": FINISH.get(turn.finish_reason, "stop"), "logprobs": None}],
            "usage": _usage(turn), "session_id": session_id, "retool": _extension(turn, session_id),
        }
        return JSONResponse(payload, headers=headers)

    return app


async def _stream(server: Server, collector: TurnCollector, session_id: str, completion_id: str, created: int,
                  include_usage: bool) -> AsyncIterator[str]:
    """SSE: a role chunk, content chunks as the transcript is written, a finish chunk (with the
    retool extension), a usage chunk when asked for, ``[DONE]``. A dropped client cancels the turn."""

    def sse(choices: list[dict[str, Any]], **extra: Any) -> str:
        body = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": server.model_name,
                "choices": choices, "session_id": session_id, **extra}
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

    def event(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> str:
        return sse([{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}], **extra)

    queue: asyncio.Queue[Chunk | None] = asyncio.Queue()
    collector.on_chunk = queue.put_nowait

    async def run():
        try:
            async with server.turn_slot(session_id) as session:
                return await collector.run(session)
        finally:
            queue.put_nowait(None)

    task = asyncio.create_task(run())
    try:
        yield event({"role": "assistant", "content": ""})
        while (chunk := await queue.get()) is not None:
            yield event({"content": chunk.text})
        try:
            turn = await task
        except (SandboxUnavailable, APIError, RuntimeError, ValueError) as exc:
            error = exc if isinstance(exc, APIError) else APIError(500, str(exc), "server_error")
            yield f"data: {json.dumps(error.body())}\n\n"
            yield "data: [DONE]\n\n"
            return
        yield event({}, FINISH.get(turn.finish_reason, "stop"), retool=_extension(turn, session_id))
        if include_usage:
            yield sse([], usage=_usage(turn))
        yield "data: [DONE]\n\n"
    finally:
        if not task.done():  # the client went away: stop generating, interrupt the cell, free the session
            task.cancel()
            server.background.add(task)  # it finishes on its own (the shield keeps further cancels off it)
            task.add_done_callback(server.background.discard)
            with contextlib.suppress(BaseException):
                await asyncio.shield(task)


def _default_name(config: ServeConfig) -> str:
    """The embedded model's name, a local model's folder name, or the hub name as given."""
    from pathlib import Path

    from retool.models import EMBEDDED_ALIASES, EMBEDDED_DEFAULT

    if config.model is None or config.model in EMBEDDED_ALIASES:
        return EMBEDDED_DEFAULT
    path = Path(config.model).expanduser()
    return path.resolve().name if path.exists() else config.model


def run_server(config: ServeConfig) -> None:
    import uvicorn

    uvicorn.run(create_app(config), host=config.host, port=config.port, log_level="info")
