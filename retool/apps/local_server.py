"""A uvicorn server on a free loopback port, in a background thread: for the server benchmark and
for tests that talk HTTP to a live server. Not for serving users (``retool serve`` runs uvicorn in
the foreground)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from typing import Iterator


@contextlib.contextmanager
def local_server(app, startup_timeout: float = 600.0) -> Iterator[str]:
    """Serve the ASGI ``app``; yields its base URL (``http://127.0.0.1:PORT``), stops it afterwards."""
    import uvicorn

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True, name="local-uvicorn")
    thread.start()
    deadline = time.monotonic() + startup_timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the local server did not start (see the log above)")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(60)
