"""Reading the tool calls a model wrote in its chat template's format: hermes JSON or Qwen's XML.

Two formats cover the templates people train tool-integrated models with::

    hermes (Qwen2.5, Qwen3):   <tool_call>
                               {"name": "python", "arguments": {"code": "print(1)"}}
                               </tool_call>
    xml (Qwen3-Coder, 3.5, 3.6): <tool_call>
                               <function=python>
                               <parameter=code>
                               print(1)
                               </parameter>
                               </function>
                               </tool_call>

Models write code inside JSON carelessly: raw newlines and unescaped quotes in the ``code``
string are common, and arguments are sometimes a JSON *string* holding the object. The reader is
tolerant of exactly those (``strict=False``, then a repair of the ``code`` string), and says in
one line what is wrong when it cannot read a call, so the loop can answer the model with that
line instead of crashing. Which format a template uses is decided from the template itself
(``retool.protocol.chat``).

Not here: validating a call against the declared tools, running it, rendering the reply.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Literal

ToolSyntax = Literal["hermes", "xml"]
SYNTAXES: tuple[str, ...] = ("hermes", "xml")
CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"

_CALL = re.compile(r"<tool_call>(?P<body>.*?)(?P<close></tool_call>|\Z)", re.DOTALL)
_FUNCTION = re.compile(r"<function=(?P<name>[^>\n]*)>(?P<body>.*?)(?:</function>|\Z)", re.DOTALL)
_PARAMETER = re.compile(r"<parameter=(?P<name>[^>\n]*)>(?P<value>.*?)(?:</parameter>|(?=<parameter=)|\Z)", re.DOTALL)
# {"name": "python", "arguments": {"code": "<anything>"}} when the code string is not valid JSON
_HERMES_CODE = re.compile(r'^\{\s*"name"\s*:\s*"(?P<name>[^"]*)"\s*,\s*"(?:arguments|parameters)"\s*:\s*'
                          r'\{\s*"code"\s*:\s*"(?P<code>.*)"\s*\}\s*\}$', re.DOTALL)


@dataclass(frozen=True)
class ParsedCall:
    """One ``<tool_call>`` of a turn: the function and its arguments, or why they could not be read.
    ``start``/``end`` are character offsets of the whole call in the turn's text."""

    name: str | None
    arguments: dict[str, Any] = field(default_factory=dict)
    error: str | None = None  # one line: the call could not be read
    start: int = 0
    end: int = 0


def parse_calls(text: str, syntax: ToolSyntax) -> list[ParsedCall]:
    """Every tool call in ``text`` (one model turn), in order; an unclosed last call is a call with
    an error (the turn ended inside it)."""
    calls = []
    for match in _CALL.finditer(text):
        if not match.group("close"):
            calls.append(ParsedCall(None, error="the tool call is not closed with </tool_call>",
                                    start=match.start(), end=match.end()))
            continue
        body = match.group("body").strip()
        call = _parse_xml(body) if syntax == "xml" else _parse_hermes(body)
        calls.append(ParsedCall(call.name, call.arguments, call.error, match.start(), match.end()))
    return calls


def call_source(body: str) -> str:
    """The ``code`` argument of one call's body (hermes or xml, whichever it is written in), or the
    body itself when it has none: what a transcript shows as the call's code."""
    body = body.strip()
    call = _parse_xml(body) if body.startswith("<function=") else _parse_hermes(body)
    code = call.arguments.get("code")
    return code if isinstance(code, str) else body


def _parse_hermes(body: str) -> ParsedCall:
    data: Any = None
    for strict in (True, False):  # strict=False admits raw newlines and tabs inside strings
        try:
            data = json.loads(body, strict=strict)
            break
        except json.JSONDecodeError:
            continue
    if data is None:
        repaired = _HERMES_CODE.match(body)
        if repaired is None:
            return ParsedCall(None, error=f"the tool call is not valid JSON: {_snippet(body)}")
        return ParsedCall(repaired.group("name"), {"code": _loose_string(repaired.group("code"))})
    if not isinstance(data, dict):
        return ParsedCall(None, error="the tool call must be a JSON object with \"name\" and \"arguments\"")
    name = data.get("name")
    arguments = data.get("arguments", data.get("parameters", {}))
    if isinstance(arguments, str):  # arguments written as a JSON string holding the object
        try:
            arguments = json.loads(arguments, strict=False)
        except json.JSONDecodeError:
            return ParsedCall(name if isinstance(name, str) else None,
                              error=f"the tool call's arguments are not a JSON object: {_snippet(arguments)}")
    if not isinstance(name, str):
        return ParsedCall(None, error="the tool call has no \"name\"")
    if not isinstance(arguments, dict):
        return ParsedCall(name, error="the tool call's \"arguments\" must be a JSON object")
    return ParsedCall(name, arguments)


def _loose_string(raw: str) -> str:
    """The content of a JSON string written carelessly: escapes honoured where they are valid,
    bare quotes and raw newlines kept as written."""
    try:
        return json.loads('"' + re.sub(r'(?<!\\)((?:\\\\)*)"', r'\1\\"', raw) + '"', strict=False)
    except json.JSONDecodeError:
        return raw


def _parse_xml(body: str) -> ParsedCall:
    function = _FUNCTION.search(body)
    if function is None:
        return ParsedCall(None, error=f"the tool call has no <function=NAME> block: {_snippet(body)}")
    arguments: dict[str, Any] = {}
    for parameter in _PARAMETER.finditer(function.group("body")):
        value = parameter.group("value")
        value = value[1:] if value.startswith("\n") else value
        value = value[:-1] if value.endswith("\n") else value
        arguments[parameter.group("name").strip()] = value
    return ParsedCall(function.group("name").strip(), arguments)


def _snippet(text: str, limit: int = 60) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[:limit] + "…"
