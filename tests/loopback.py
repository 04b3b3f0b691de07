"""Serve an ASGI app on a free loopback port in a background thread, for tests that need a real
HTTP server (an OpenAI-compatible completions server standing in for vLLM), and the body of the
``POST /v1/completions`` requests such a server takes (vLLM's fields that retool sends)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

from pydantic import BaseModel


class CompletionRequest(BaseModel):
    model: str
    prompt: str | list[int]
    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: str | list[str] | None = None
    logprobs: int | None = None
    logit_bias: dict[str, float] | None = None
    return_token_ids: bool | None = None
    include_stop_str_in_output: bool = False
    skip_special_tokens: bool = True


@contextlib.contextmanager
def serve_in_thread(app, start_timeout: float = 20.0) -> Iterator[str]:
    """Yields the base URL (``http://127.0.0.1:PORT/v1``) while ``app`` is served; stops it after."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + start_timeout
    try:
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "test server did not start"
            time.sleep(0.02)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
