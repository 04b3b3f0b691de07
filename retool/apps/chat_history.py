"""What an OpenAI client cannot send back: the chat dialect's server-side history.

A client sends back the assistant message as it got it — the transcript as ``content`` and, after
function calling, the calls meant for it. The model wrote more than that: the python calls the
server ran and the tool messages it read. Re-rendered from the client's copy, the conversation
would no longer be what the model saw (and the engine's prefix cache would miss). So the server
remembers, per client, the messages behind each assistant message it returned and puts them back
when a later request carries that message; the client's results for its own calls go where the
model's calls put them, beside the python replies of the same turn. A message the server does not
know (another server's, an edited one, an expired entry) is used as the client sent it.

Not here: running the turn (``retool.apps.conversation``), HTTP (``retool.apps.serve``).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from retool.protocol.chat import template_message


@dataclass(frozen=True)
class Remembered:
    """One returned assistant message's real history: ``messages`` as the model saw them (the last
    assistant message carrying all of its turn's calls); ``pending``: python replies of that turn,
    by the call's position, waiting for the client's results; ``client_ids``: the ids given to the
    client's calls, in order."""

    messages: tuple[dict[str, Any], ...]
    pending: tuple[tuple[int, str], ...] = ()
    client_ids: tuple[str, ...] = ()


class ChatHistory:
    """An LRU of ``Remembered`` turns keyed by (client, returned content, call ids)."""

    def __init__(self, capacity: int = 4096) -> None:
        self.capacity = capacity
        self._items: OrderedDict[str, Remembered] = OrderedDict()

    @staticmethod
    def _key(owner: str, content: str, call_ids: tuple[str, ...]) -> str:
        return hashlib.sha256("\0".join((owner, content, *call_ids)).encode()).hexdigest()

    def remember(self, owner: str, content: str, item: Remembered) -> None:
        key = self._key(owner, content, item.client_ids)
        self._items[key] = item
        self._items.move_to_end(key)
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)

    def restore(self, owner: str, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """``messages`` (as a client sent them) with every assistant message this server returned
        replaced by what the model saw; raises ``ValueError`` when a client call has no result."""
        out: list[dict[str, Any]] = []
        i = 0
        while i < len(messages):
            message = messages[i]
            if message["role"] != "assistant":
                out.append(message)
                i += 1
                continue
            ids = tuple(str(c.get("id", "")) for c in message.get("tool_calls") or ())
            key = self._key(owner, message.get("content") or "", ids)
            hit = self._items.get(key)
            if hit is None:
                out.append(template_message(message))
                i += 1
                continue
            self._items.move_to_end(key)
            out += [dict(m) for m in hit.messages]
            i += 1
            if not hit.client_ids:
                continue
            results: dict[str, str] = {}
            while i < len(messages) and messages[i]["role"] == "tool":
                results[str(messages[i].get("tool_call_id"))] = messages[i]["content"]
                i += 1
            pending, client = dict(hit.pending), iter(hit.client_ids)
            for position in range(len(hit.messages[-1].get("tool_calls", ()))):
                if position in pending:
                    out.append({"role": "tool", "content": pending[position]})
                    continue
                call_id = next(client)
                if call_id not in results:
                    raise ValueError(f"no tool message answers the call {call_id}")
                out.append({"role": "tool", "content": results[call_id]})
        return out
