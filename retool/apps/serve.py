"""``retool serve``: an OpenAI-compatible HTTP server that runs the tool loop server-side.

Any OpenAI client can talk to a tool-integrated model: ``POST /v1/chat/completions`` (JSON or SSE
stream) returns an assistant message holding the interleaved transcript (reasoning, code, the
interpreter's real output) and the final answer; ``GET /v1/models``; ``GET /health``.

Sessions: each conversation has one sandbox session, keyed by a session id sent as the
``X-Session-Id`` header or a ``session_id`` body field (the openai client: ``extra_headers`` /
``extra_body``), and by its owner (the bearer token, or the client's address): another client's
request with the same id gets a session of its own. A request without an id starts a new session;
its id comes back in the ``X-Session-Id`` header and the ``session_id`` field. Sessions idle for
``session_ttl_s`` are closed; room is made fairly (``retool.apps.session_store``). A session never
vanishes silently: when a conversation's interpreter is fresh although the conversation is not
(the session expired, was evicted, or the id is unknown here), the reply says so
(``X-Session-Reset`` and ``retool.session_reset``) and the model's prompt tells it.

Limits: ``max_concurrency`` turns run at once; a request first waits for its own session, *then* for
a slot, so requests queued behind one conversation never hold slots others could use (past
``max_queue`` waiting: 429); request bodies over ``max_body_bytes`` are refused before they are
parsed (413); prompts are rendered off the event loop; per-request caps on tokens
(``max_request_tokens``) and tool calls (the rollout's ``max_tool_calls``); a prompt-length cap. With ``tokens``, every request needs ``Authorization: Bearer <token>``.
A client that goes away — a dropped stream or a plain request whose connection closes — stops the
generation and interrupts the running cell. A turn stopped by an infrastructure failure (the
sandbox or the engine failed, not the model) is a 503. Every error is in OpenAI's shape
(``retool.apps.serve_schema``). Model-written code only ever runs in the sandbox; nothing in a request
names a host path, a model to load or a command.

This module holds the settings and the state behind the routes; the routes, the streaming and the
middleware are in ``retool.apps.serve_app``, the request schema in ``retool.apps.serve_schema``.

Function calling (chat dialect only): a request may declare OpenAI function tools; the python tool
stays the server's (run in the sandbox), and a call to one of the client's functions ends the
turn with ``tool_calls`` and ``finish_reason: "tool_calls"``; the client's next request carries
the ``tool`` messages back. What the model saw of the server-side calls is kept here
(``retool.apps.chat_history``) so the conversation is re-rendered exactly.

Not here: the loop itself (``retool.rollout``), conversation prompts (``retool.apps.conversation``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import time
import uuid
from dataclasses import dataclass, replace
from typing import Any

from fastapi import Request

from retool.apps.chat_history import ChatHistory, Remembered
from retool.apps.conversation import Turn, TurnCollector
from retool.protocol import get_dialect
from retool.protocol.chat import ChatTemplateError
from retool.engines.base import Engine
from retool.engines.spec import EngineSpec
from retool.rollout import Rollout, RolloutConfig
from retool.sandbox.base import SandboxUnavailable, Session
from retool.sandbox.spec import SandboxSpec
from retool.apps.serve_schema import RESET_HEADER, SESSION_HEADER, SESSION_ID, APIError, ChatRequest
from retool.apps.session_store import SessionsFull, SessionStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServeConfig:
    """The server's own settings; the model, the sandbox and how turns are written are the shared
    ``EngineSpec``, ``SandboxSpec`` and ``RolloutConfig`` (the rollout's budgets, dialect and
    sampling are what a request gets when it does not say; ``max_tool_calls`` is also its cap)."""

    engine: EngineSpec = EngineSpec()
    sandbox: SandboxSpec = SandboxSpec()
    rollout: RolloutConfig = RolloutConfig()
    served_name: str | None = None  # the id in /v1/models (default: the model's name)
    host: str = "127.0.0.1"
    port: int = 8000
    max_concurrency: int = 4
    max_queue: int = 64
    max_request_tokens: int = 2048  # the most a request's max_tokens may ask for (model + interpreter)
    max_prompt_tokens: int = 8192
    max_body_bytes: int = 2 << 20  # refused before parsing: a prompt of max_prompt_tokens is far smaller
    session_ttl_s: float = 600.0
    max_sessions: int = 32
    max_sessions_per_client: int | None = None  # default: max_sessions (fair sharing still applies)
    warm_sessions: int = 2
    tokens: tuple[str, ...] = ()  # bearer tokens clients must send; empty: no authentication


FINISH = {"answer": "stop", "eos": "stop", "length": "length", "max_tool_calls": "length", "invalid_calls": "stop",
          "interrupted": "stop",
          "tool_calls": "tool_calls"}


@dataclass
class Prepared:
    """A request that passed every check and holds its session and a slot (until ``close``)."""

    collector: TurnCollector
    session: Session
    session_id: str
    reset: str | None
    stack: contextlib.AsyncExitStack
    owner: str = ""

    @property
    def headers(self) -> dict[str, str]:
        return {SESSION_HEADER: self.session_id, **({RESET_HEADER: self.reset} if self.reset else {})}

    async def close(self) -> None:
        await self.stack.aclose()


class Server:
    """The state behind the routes: one engine, one sandbox pool, the sessions, the limits."""

    def __init__(self, config: ServeConfig, engine: Engine, model_name: str) -> None:
        self.config, self.engine, self.model_name = config, engine, model_name
        self.pool = config.sandbox.pool(size=config.max_sessions, warm=config.warm_sessions)
        self.sessions = SessionStore(self.pool, config.session_ttl_s, config.max_sessions,
                                     config.max_sessions_per_client)
        self.slots = asyncio.Semaphore(config.max_concurrency)
        self.waiting = 0
        self.running = 0
        self.served = 0
        self.started = time.time()
        self.history = ChatHistory()  # the chat dialect's structured history behind returned messages
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
        return {"status": "ok", "model": self.model_name, "engine": self.engine.name,
                "sandbox": self.config.sandbox.backend, "dialect": self.config.rollout.dialect, "sessions": len(self.sessions), "running": self.running,
                "waiting": self.waiting, "served": self.served, "uptime_s": round(time.time() - self.started, 1)}

    # -- a request ------------------------------------------------------------------------------

    def owner_of(self, http: Request) -> str:
        """Who is asking: the bearer token (required when the server has tokens), else the address."""
        if self.config.tokens:
            scheme, _, token = http.headers.get("authorization", "").partition(" ")
            given = token.strip().encode()
            if scheme.lower() != "bearer" or not any(hmac.compare_digest(given, t.encode()) for t in self.config.tokens):
                raise APIError(401, "this server needs a valid token: send 'Authorization: Bearer <token>'",
                               "authentication_error", code="invalid_api_key")
            return "token:" + hashlib.sha256(given).hexdigest()[:16]
        return "client:" + (http.client.host if http.client else "unknown")

    def check(self, request: ChatRequest, header_session: str | None,
              owner: str = "") -> tuple[str, Rollout, list[dict[str, Any]]]:
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
        defaults = cfg.rollout
        chat = get_dialect(defaults.dialect).structured  # calls and tool results are messages
        if request.tools and not chat:
            raise APIError(400, "function tools need a server in the chat dialect (retool serve --dialect chat): "
                                f"this one writes tool calls in the {defaults.dialect!r} dialect, run server-side",
                           param="tools")
        messages = [m.as_dict() for m in request.messages]
        if not chat and any(m["role"] == "tool" or m.get("tool_calls") for m in messages):
            raise APIError(400, "tool messages and tool calls need a server in the chat dialect", param="messages")
        if messages[-1]["role"] not in (("user", "tool") if chat else ("user",)):
            raise APIError(400, "the last message must be the user's" + (" or a tool result" if chat else ""),
                           param="messages")
        if chat:
            try:
                messages = self.history.restore(owner, messages)
            except ValueError as exc:
                raise APIError(400, str(exc), param="messages") from None
        max_tokens = request.max_completion_tokens or request.max_tokens or defaults.max_total_tokens
        if max_tokens > cfg.max_request_tokens:
            raise APIError(400, f"max_tokens {max_tokens} is over this server's limit of {cfg.max_request_tokens}",
                           param="max_tokens")
        tool_calls = defaults.max_tool_calls if request.max_tool_calls is None else request.max_tool_calls
        if tool_calls > defaults.max_tool_calls:
            raise APIError(400, f"max_tool_calls {tool_calls} is over this server's limit of {defaults.max_tool_calls}",
                           param="max_tool_calls")
        if self.waiting >= cfg.max_queue:
            raise APIError(429, f"the server is busy ({self.waiting} requests waiting); retry later",
                           "rate_limit_error", code="server_busy")
        sampling = defaults.sampling.with_(
            temperature=defaults.sampling.temperature if request.temperature is None else request.temperature,
            top_p=defaults.sampling.top_p if request.top_p is None else request.top_p,
            seed=request.seed,
        )
        client_tools = tuple(t.model_dump(exclude_none=True) for t in request.tools or ())
        try:
            rollout = Rollout(self.engine, self.pool, replace(defaults, max_tool_calls=tool_calls, max_total_tokens=max_tokens,
                                                              sampling=sampling, client_tools=client_tools))
        except ChatTemplateError as exc:
            raise APIError(400, str(exc), param="tools") from None
        return session_id, rollout, messages

    async def prepare(self, request: ChatRequest, http: Request) -> Prepared:
        """Check the request, then wait for its conversation's session, then for a slot. Raises an
        ``APIError`` (nothing held) for anything refused on the way."""
        owner = self.owner_of(http)
        session_id, rollout, messages = self.check(request, http.headers.get(SESSION_HEADER), owner)
        stack = contextlib.AsyncExitStack()
        self.waiting += 1
        try:
            try:
                lease = await stack.enter_async_context(self.sessions.use(owner, session_id))
            except SessionsFull as exc:
                raise APIError(429, str(exc), "rate_limit_error", code="too_many_sessions") from None
            except (SandboxUnavailable, TimeoutError) as exc:
                raise APIError(503, f"no sandbox could be started: {exc}", "server_error",
                               code="sandbox_unavailable") from None
            continued = any(m["role"] == "assistant" for m in messages)
            reset = lease.reset or ("unknown" if lease.fresh and continued else None)
            collector = await asyncio.to_thread(self.start_turn, rollout, messages, reset if continued else None)
            await self.slots.acquire()
            stack.callback(self.slots.release)
        except BaseException:
            await stack.aclose()
            raise
        finally:
            self.waiting -= 1
        self.running += 1
        stack.callback(self._turn_done)
        return Prepared(collector, lease.session, session_id, reset, stack, owner)

    def _turn_done(self) -> None:
        self.running -= 1
        self.served += 1

    def start_turn(self, rollout: Rollout, messages: list[dict[str, str]], reset: str | None) -> TurnCollector:
        """The turn's collector (its prompt rendered once, here), or a 400 for a conversation the
        prompt cannot be built from or that is too long."""
        try:
            collector = TurnCollector(rollout, messages, reset=reset)
        except ValueError as exc:
            raise APIError(400, str(exc), param="messages") from None
        length = len(collector.trajectory.prompt_ids)
        if length > self.config.max_prompt_tokens:
            raise APIError(400, f"the conversation is {length} tokens; this server takes at most "
                                f"{self.config.max_prompt_tokens}", param="messages", code="context_length_exceeded")
        return collector

    async def stop(self, task: asyncio.Task, prepared: Prepared) -> None:
        """Cancel a turn whose client went away. It stops its cell on its own; only then are its
        session and slot given back (so the next request on the session finds it idle)."""
        task.cancel()

        async def release_when_stopped() -> None:
            with contextlib.suppress(BaseException):
                await task
            await prepared.close()

        closer = asyncio.create_task(release_when_stopped())
        self.background.add(closer)
        closer.add_done_callback(self.background.discard)
        with contextlib.suppress(BaseException):
            await asyncio.shield(closer)


def reply_message(server: "Server", turn: Turn, prepared: Prepared) -> dict[str, Any]:
    """The assistant message returned for ``turn``: the transcript as content and, when the model
    called the client's functions, OpenAI's ``tool_calls``. In the chat dialect the server remembers
    what the model really saw behind it (``retool.apps.chat_history``)."""
    message: dict[str, Any] = {"role": "assistant", "content": turn.text}
    traj, rollout = turn.trajectory, prepared.collector.rollout
    client_calls = traj.meta.get("client_calls") or []
    if client_calls:
        message["tool_calls"] = [{"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
                                  "function": {"name": c["name"], "arguments": json.dumps(c["arguments"], ensure_ascii=False)}}
                                 for c in client_calls]
    if rollout.chat is not None and turn.finish_reason != "interrupted":
        seen = rollout.chat.messages_of(traj)
        client_at = {c["index"] for c in client_calls}
        ran = iter(c for c in traj.tool_calls if c.output_span == (len(traj.ids), len(traj.ids)))
        pending = tuple((i, next(ran).response or "") for i in range(len(seen[-1].get("tool_calls", ())))
                        if client_calls and i not in client_at)
        ids = tuple(c["id"] for c in message.get("tool_calls", ()))
        server.history.remember(prepared.owner, turn.text, Remembered(tuple(seen), pending, ids))
    return message


def infra_error(turn: Turn) -> APIError | None:
    """The 503 for a turn an infrastructure failure stopped (the model did nothing wrong)."""
    if not turn.trajectory.infra_failure:
        return None
    return APIError(503, f"the turn was stopped by an infrastructure failure, not by the model "
                         f"({turn.trajectory.finish_detail}); retry the request", "server_error",
                    code="infrastructure_failure")


def default_name(config: ServeConfig) -> str:
    """The embedded model's name, a local model's folder name, or the hub name as given."""
    from pathlib import Path

    from retool.models import EMBEDDED_ALIASES, EMBEDDED_DEFAULT

    model = config.engine.model
    if model is None or model in EMBEDDED_ALIASES:
        return EMBEDDED_DEFAULT
    path = Path(model).expanduser()
    return path.resolve().name if path.exists() else model


def run_server(config: ServeConfig) -> None:
    import uvicorn

    from retool.apps.serve_app import create_app

    if not config.tokens and config.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("serving on %s without --token: anyone who can reach it can run code in its sandboxes", config.host)
    uvicorn.run(create_app(config), host=config.host, port=config.port, log_level="info")
