"""The routes of ``retool serve`` (see ``retool.apps.serve`` for what the server does): the FastAPI app,
OpenAI-shaped error handlers, the body-size middleware, SSE streaming, and watching plain requests'
clients so a hang-up stops the turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from typing import Any, AsyncIterator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from retool.apps.conversation import Chunk, Turn
from retool.engines.base import Engine
from retool.sandbox.base import SandboxUnavailable
from retool.apps.serve import FINISH, Prepared, Server, ServeConfig, default_name, infra_error, reply_message
from retool.apps.serve_schema import APIError, ChatRequest, error_for_status
from retool.http_limits import BodyLimit

log = logging.getLogger(__name__)

DISCONNECT_POLL_S = 0.25  # how often a plain (non-streaming) request checks that its client is still there


def _extension(turn: Turn, prepared: Prepared) -> dict[str, Any]:
    traj = turn.trajectory
    return {
        "session_id": prepared.session_id,
        "session_reset": prepared.reset,
        "answer": turn.answer,
        "finish_reason": turn.finish_reason,
        "model_tokens": traj.num_model_tokens,
        "interpreter_tokens": traj.num_tool_tokens,
        "tool_calls": [c.to_dict() for c in traj.tool_calls],
    }


def _usage(turn: Turn) -> dict[str, int]:
    traj = turn.trajectory
    return {"prompt_tokens": len(traj.prompt_ids), "completion_tokens": len(traj.ids),
            "total_tokens": len(traj.prompt_ids) + len(traj.ids)}


def create_app(config: ServeConfig, engine: Engine | None = None, model_name: str | None = None):
    """The FastAPI app. ``engine`` (tests, embedding) skips building one from ``config``."""
    holder: dict[str, Server] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        own_engine = engine is None
        served = await asyncio.to_thread(config.engine.build, max_batch=config.max_concurrency) if own_engine else engine
        name = model_name or config.served_name or default_name(config)
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
    app.add_middleware(BodyLimit, limit=config.max_body_bytes,
                       error_body=lambda message: error_for_status(413, message).body())

    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError):
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException):
        detail = str(exc.detail)
        if exc.status_code == 400:  # the framework could not read the body (not UTF-8, not JSON)
            detail = f"the request body is not valid JSON in UTF-8 ({detail})"
        error = error_for_status(exc.status_code, detail)
        return JSONResponse(error.body(), status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError):
        errors = exc.errors()
        first = errors[0] if errors else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        what = str(first.get("msg", "invalid request")).removeprefix("Value error, ")
        message = f"{where}: {what}" if where else what
        if first.get("type") == "json_invalid":
            message = "the request body is not valid JSON"
        return JSONResponse(APIError(400, message, param=where or None).body(), status_code=400)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception):
        log.exception("request failed")
        return JSONResponse(APIError(500, f"internal error ({type(exc).__name__}); see the server's log",
                                     "server_error").body(), status_code=500)

    @app.get("/health")
    async def health():
        return holder["server"].health()

    @app.get("/v1/models")
    async def models(request: Request):
        server = holder["server"]
        server.owner_of(request)
        return {"object": "list", "data": [{"id": server.model_name, "object": "model", "created": int(server.started),
                                            "owned_by": "retool"}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatRequest, request: Request):
        server = holder["server"]
        prepared = await server.prepare(body, request)
        completion_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        if body.stream:
            include_usage = bool((body.stream_options or {}).get("include_usage"))
            events = _stream(server, prepared, completion_id, created, include_usage)
            return StreamingResponse(events, media_type="text/event-stream", headers=prepared.headers)
        turn = await _run_while_connected(server, prepared, request)
        if turn is None:  # the client went away; nobody reads an answer
            return JSONResponse({}, status_code=499)
        if (failure := infra_error(turn)) is not None:
            return JSONResponse(failure.body(), status_code=failure.status, headers=prepared.headers)
        payload = {
            "id": completion_id, "object": "chat.completion", "created": created, "model": server.model_name,
            "choices": [{"index": 0, "message": reply_message(server, turn, prepared),
                         "finish_reason": FINISH.get(turn.finish_reason, "stop"), "logprobs": None}],
            "usage": _usage(turn), "session_id": prepared.session_id, "retool": _extension(turn, prepared),
        }
        return JSONResponse(payload, headers=prepared.headers)

    return app


async def _run_while_connected(server: Server, prepared: Prepared, request: Request) -> Turn | None:
    """Run the turn and give its session and slot back; if the client hangs up first, stop the
    turn (generation, cell) and return None."""
    task = asyncio.create_task(prepared.collector.run(prepared.session))
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=DISCONNECT_POLL_S)
            if done:
                await prepared.close()
                return task.result()
            if await request.is_disconnected():
                await server.stop(task, prepared)
                return None
    except asyncio.CancelledError:  # the server itself is stopping this request
        await server.stop(task, prepared)
        raise


async def _stream(server: Server, prepared: Prepared, completion_id: str, created: int,
                  include_usage: bool) -> AsyncIterator[str]:
    """SSE: a role chunk, content chunks as the transcript is written, a finish chunk (with the
    retool extension), a usage chunk when asked for, ``[DONE]``. A dropped client cancels the turn."""

    def sse(choices: list[dict[str, Any]], **extra: Any) -> str:
        body = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": server.model_name,
                "choices": choices, "session_id": prepared.session_id, **extra}
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

    def event(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> str:
        return sse([{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}], **extra)

    def error_event(error: APIError) -> str:
        return f"data: {json.dumps(error.body())}\n\ndata: [DONE]\n\n"

    queue: asyncio.Queue[Chunk | None] = asyncio.Queue()
    prepared.collector.on_chunk = queue.put_nowait

    async def run():
        try:
            return await prepared.collector.run(prepared.session)
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
            yield error_event(exc if isinstance(exc, APIError) else APIError(500, str(exc), "server_error"))
            return
        if (failure := infra_error(turn)) is not None:
            yield error_event(failure)
            return
        message = reply_message(server, turn, prepared)
        if message.get("tool_calls"):
            yield event({"tool_calls": [{"index": i, **c} for i, c in enumerate(message["tool_calls"])]})
        yield event({}, FINISH.get(turn.finish_reason, "stop"), retool=_extension(turn, prepared))
        if include_usage:
            yield sse([], usage=_usage(turn))
        yield "data: [DONE]\n\n"
    finally:
        if not task.done():  # the client went away: stop generating, interrupt the cell, then free the session
            await server.stop(task, prepared)
        else:
            await prepared.close()


