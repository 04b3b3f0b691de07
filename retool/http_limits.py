"""ASGI middleware both HTTP servers share (``retool serve``, ``retool sandbox serve``).

Not here: the servers' routes and error shapes (each passes its own).
"""

from __future__ import annotations

from typing import Any, Callable

from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse


class BodyLimit:
    """A request body over ``limit`` bytes is refused (413) before anything parses it — by its
    Content-Length at once, or as soon as a chunked body passes the limit. ``error_body(message)``
    is the server's own error shape."""

    def __init__(self, app, limit: int, error_body: Callable[[str], dict[str, Any]]) -> None:
        self.app, self.limit, self.error_body = app, limit, error_body

    @property
    def message(self) -> str:
        return f"the request body is over this server's limit of {self.limit:,} bytes"

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or ()).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            await JSONResponse(self.error_body(self.message), status_code=413)(scope, receive, send)
            return
        seen = 0

        async def limited():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise HTTPException(413, self.message)
            return message

        await self.app(scope, limited, send)
