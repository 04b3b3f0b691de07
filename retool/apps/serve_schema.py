"""What ``retool serve`` accepts and how it says no: the request schema and OpenAI's error shape.

The request is OpenAI's chat request, with the fields that mean something here; others are ignored,
and the few that cannot be honoured (``n`` > 1, ``stop``) are refused, not ignored. ``tools``
(function tools the client runs) are taken by a server in the chat dialect (``retool.apps.serve``
says where else they are refused); ``python`` is the server's own and cannot be declared. Every
string must be valid Unicode (a lone surrogate, which JSON's ``\\ud800`` escape can carry, is a 400
rather than a failure later), and ``seed`` is any 64-bit integer.

Every refusal, whatever raised it, leaves as ``{"error": {"message", "type", "param", "code"}}``
(``APIError.body``), so an OpenAI client raises its typed exception.

Not here: what a request does (``retool.apps.serve``).
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

SESSION_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
SESSION_HEADER = "X-Session-Id"
RESET_HEADER = "X-Session-Reset"  # why the conversation's interpreter is fresh: expired, evicted, unknown
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class FunctionCall(BaseModel):
    name: str
    arguments: str  # JSON, as OpenAI writes it


class ToolCallItem(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class FunctionSpec(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = None


class Tool(BaseModel):
    type: Literal["function"]
    function: FunctionSpec


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    tool_calls: list[ToolCallItem] | None = None  # assistant: the calls it made (function calling)
    tool_call_id: str | None = None  # tool: the call this message answers

    def as_dict(self) -> dict[str, Any]:
        """The message as the conversation keeps it (``developer`` is a system message)."""
        message: dict[str, Any] = {"role": "system" if self.role == "developer" else self.role, "content": self.text()}
        if self.tool_calls:
            message["tool_calls"] = [c.model_dump() for c in self.tool_calls]
        if self.tool_call_id is not None:
            message["tool_call_id"] = self.tool_call_id
        return message

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str
    messages: list[Message] = Field(min_length=1)
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    seed: int | None = Field(None, ge=-(2**63), lt=2**64)
    n: int = 1
    stop: str | list[str] | None = None
    tools: list[Tool] | None = None
    tool_choice: Any = None  # "auto" is what is honoured: the model decides
    session_id: str | None = None
    max_tool_calls: int | None = Field(None, ge=0)

    @model_validator(mode="before")
    @classmethod
    def _valid_unicode(cls, data: Any) -> Any:
        if _has_lone_surrogate(data):
            raise ValueError("the request holds a lone surrogate (an unpaired \\ud800-\\udfff escape): not valid Unicode")
        return data

    @field_validator("n")
    @classmethod
    def _one_choice(cls, n: int) -> int:
        if n != 1:
            raise ValueError("only n=1 is supported: each choice would need its own sandbox session")
        return n

    @field_validator("tools")
    @classmethod
    def _not_python(cls, tools: list[Tool] | None) -> list[Tool] | None:
        names = [t.function.name for t in tools or ()]
        if "python" in names:
            raise ValueError("the python tool is the server's own (it runs the code in its sandbox); do not declare it")
        if len(set(names)) != len(names):
            raise ValueError("two tools with the same name")
        return tools

    @field_validator("tool_choice")
    @classmethod
    def _auto(cls, choice: Any) -> Any:
        if choice not in (None, "auto"):
            raise ValueError("only tool_choice 'auto' is supported: the model decides which tool to call")
        return choice

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


def _has_lone_surrogate(value: Any, depth: int = 0) -> bool:
    if isinstance(value, str):
        return _LONE_SURROGATE.search(value) is not None
    if depth > 32:
        return False
    if isinstance(value, dict):
        return any(_has_lone_surrogate(k, depth + 1) or _has_lone_surrogate(v, depth + 1) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_lone_surrogate(v, depth + 1) for v in value)
    return False


class APIError(Exception):
    """An error for the client, in OpenAI's shape."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.param, self.code = status, message, kind, param, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


def error_for_status(status: int, message: str) -> APIError:
    """A framework's HTTP error (404 route, 405 method, 413 body) as an ``APIError`` of that status."""
    kinds = {401: ("authentication_error", "invalid_api_key"), 404: ("invalid_request_error", "not_found"),
             405: ("invalid_request_error", "method_not_allowed"), 413: ("invalid_request_error", "body_too_large"),
             429: ("rate_limit_error", None)}
    kind, code = kinds.get(status, ("server_error" if status >= 500 else "invalid_request_error", None))
    return APIError(status, message, kind, code=code)
