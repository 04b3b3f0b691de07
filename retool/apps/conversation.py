"""A multi-turn conversation with a tool-integrated model: the part the chat and the server share.

An assistant turn is one trajectory of the rollout loop, run in the conversation's own sandbox
session (so a name defined in turn 1 is still there in turn 3), prompted with the dialect's system
prompt, its one-shot example and the conversation so far. While the turn is written, a callback
receives ``Chunk``s of readable text tagged ``text`` / ``code`` / ``output``: the chat colours
them, the server sends them as SSE deltas.

The history is kept as messages (the assistant's content is the whole transcript, interpreter
output included, as an OpenAI client would send it back; in the chat dialect, the assistant's
calls and the tool messages, as the template renders them back exactly); each turn re-renders it with the chat
template, and the engine's prefix cache makes that cheap.

Not here: terminals (``retool.apps.chat``), HTTP (``retool.apps.serve``), who owns the sandbox session.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

from retool.engines.base import TokenDelta
from retool.grading import extract_answer_from_trajectory
from retool.protocol import Dialect, TranscriptParser
from retool.rollout import Rollout, ToolCallDone
from retool.sandbox.base import Session
from retool.trajectory import ToolCall, Trajectory

ChunkKind = Literal["text", "code", "output"]
ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class Chunk:
    kind: ChunkKind
    text: str


@dataclass
class Turn:
    """One assistant turn. ``text`` is everything shown (model text and interpreter output);
    ``finish_reason`` adds ``interrupted`` (Ctrl-C, a dropped client) to the trajectory's reasons."""

    user: str
    text: str
    trajectory: Trajectory
    finish_reason: str
    answer: str | None = None

    @property
    def tool_calls(self) -> list[ToolCall]:
        return self.trajectory.tool_calls


class TextStream:
    """Token ids in, new text out: decodes the whole run so far and returns what is new, holding
    back an incomplete UTF-8 character (decoding token by token would garble multi-byte characters
    and drop the spaces some tokenizers encode in the next token)."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.shown = 0

    def feed(self, ids: tuple[int, ...] | list[int]) -> str:
        self.ids.extend(ids)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):
            return ""
        new, self.shown = text[self.shown :], len(text)
        return new

    def flush(self) -> str:
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        new, self.shown = text[self.shown :], len(text)
        return new


RESET_NOTE = ("Note: the Python interpreter was restarted since the earlier turns of this conversation "
              "({why}); the variables, functions and imports they defined are gone. Define again what you need.")


def prompt_messages(messages: list[dict[str, str]], dialect: Dialect, few_shot: bool = True,
                    reset: str | None = None, system_prompt: str | None = None) -> list[dict[str, str]]:
    """The dialect's system prompt (a caller's system message is appended to it), the one-shot
    example, then the conversation. ``reset`` (why the interpreter is fresh although the
    conversation has earlier turns) adds ``RESET_NOTE`` to the system prompt, so the model knows."""
    system = [m["content"] for m in messages if m["role"] == "system"]
    rest = [m for m in messages if m["role"] != "system"]
    if not rest or rest[-1]["role"] not in ("user", "tool"):
        raise ValueError("the conversation must end with a user message (or, in the chat dialect, a tool result)")
    if rest[-1]["role"] == "tool" and not dialect.structured:
        raise ValueError("tool messages need the chat dialect")
    if rest[0]["role"] != "user":
        raise ValueError("the conversation must start with a user message (after any system messages)")
    opening = dialect.messages(rest[0]["content"], few_shot=few_shot, system_prompt=system_prompt)
    if reset:
        system = [*system, RESET_NOTE.format(why=reset)]
    if system:
        opening[0] = {"role": "system", "content": opening[0]["content"] + "\n\n" + "\n\n".join(system)}
    return opening + rest[1:]


class TurnCollector:
    """Runs one turn for ``messages`` and keeps what was shown so far, so a cancelled turn can
    still be recorded. Building it renders the prompt: a malformed conversation (``ValueError``)
    and the prompt's length are known before any work starts."""

    def __init__(self, rollout: Rollout, messages: list[dict[str, str]],
                 on_chunk: Callable[[Chunk], None] | None = None, reset: str | None = None) -> None:
        self.rollout = rollout
        self.on_chunk = on_chunk
        conversation = prompt_messages(messages, rollout.dialect, rollout.config.few_shot, reset,
                                       rollout.config.system_prompt)
        self.user = conversation[-1]["content"]
        self.trajectory = Trajectory(rollout.messages_ids(conversation), meta={"user": self.user})
        self.stream = TextStream(rollout.tokenizer)
        self.tracker = TranscriptParser(rollout.dialect, outputs=False)
        self.parts: list[str] = []

    @property
    def text(self) -> str:
        return "".join(self.parts)

    def _emit(self, kind: ChunkKind, text: str) -> None:
        if not text:
            return
        self.parts.append(text)
        if self.on_chunk is not None:
            self.on_chunk(Chunk(kind, text))

    def _emit_model_text(self, text: str) -> None:
        if text:
            self._emit("code" if self.tracker.feed(text) == "code" else "text", text)

    def _listen(self, event: TokenDelta | ToolCallDone) -> None:
        if isinstance(event, TokenDelta):
            self._emit_model_text(self.stream.feed(event.ids))
            return
        self._emit_model_text(self.stream.flush())
        if self.rollout.chat is not None:  # the tool message's content, not the template around it
            self._emit("output", f"\n{event.rendered}\n")
        else:
            self._emit("output", self.rollout.tokenizer.decode(list(event.output_ids), skip_special_tokens=True))
        self.stream = TextStream(self.rollout.tokenizer)  # the parser reads on: it knows the output is not in its text

    async def run(self, session: Session) -> Turn:
        traj = self.trajectory
        try:
            await self.rollout.run_one(traj.prompt_ids, session=session, listener=self._listen, traj=traj)
        finally:
            self._emit_model_text(self.stream.flush())
        answer = extract_answer_from_trajectory(traj, self.rollout.tokenizer, self.rollout.dialect)
        return Turn(self.user, self.text, traj, traj.finish_reason or "eos", answer)

    def partial(self) -> Turn:
        """The turn as far as it got (after a cancellation)."""
        return Turn(self.user, self.text, self.trajectory, "interrupted", None)


@dataclass
class Conversation:
    """The chat's state: messages so far, finished turns, and the sandbox session they share."""

    rollout: Rollout
    session: Session
    system: str | None = None
    messages: list[dict[str, str]] = field(default_factory=list)
    turns: list[Turn] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.system:
            self.messages.append({"role": "system", "content": self.system})

    async def send(self, user_text: str, on_chunk: Callable[[Chunk], None] | None = None) -> Turn:
        """Ask; the turn is recorded even when cancelled (with what was written before the stop)."""
        asked = self.messages + [{"role": "user", "content": user_text}]
        collector = TurnCollector(self.rollout, asked, on_chunk)
        try:
            turn = await collector.run(self.session)
        except asyncio.CancelledError:
            self._record(asked, collector.partial())
            raise
        self._record(asked, turn)
        return turn

    def _record(self, asked: list[dict[str, str]], turn: Turn) -> None:
        chat = self.rollout.chat
        if chat is not None and turn.finish_reason != "interrupted":  # calls and tool messages, as the template renders them
            self.messages = asked + chat.messages_of(turn.trajectory)
        else:
            self.messages = asked + [{"role": "assistant", "content": turn.text}]
        self.turns.append(turn)

    def reset(self) -> None:
        """Forget the conversation and give the interpreter a fresh start."""
        self.messages = [{"role": "system", "content": self.system}] if self.system else []
        self.turns = []
        self.session.restart()

    def save_jsonl(self, path: Path) -> int:
        """One JSON object per message (role, content; assistant turns add tool calls, answer and
        finish reason). Returns the number of lines written."""
        path.parent.mkdir(parents=True, exist_ok=True)
        turns = iter(self.turns)
        lines = []
        for i, message in enumerate(self.messages):
            record: dict[str, Any] = dict(message)
            following = self.messages[i + 1]["role"] if i + 1 < len(self.messages) else None
            if message["role"] == "assistant" and following not in ("assistant", "tool"):  # a turn's last message
                turn = next(turns)
                record.update(
                    finish_reason=turn.finish_reason,
                    answer=turn.answer,
                    tool_calls=[c.to_dict() for c in turn.tool_calls],
                )
            lines.append(json.dumps(record, ensure_ascii=False))
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return len(lines)

    def save_notebook(self, path: Path) -> int:
        """The conversation as a notebook: user turns and reasoning as markdown, every executed
        block as a code cell carrying its real output. Returns the number of cells."""
        import nbformat
        from nbformat.v4 import new_markdown_cell

        from retool.transcript import new_notebook_of, trajectory_cells

        cells = []
        for turn in self.turns:
            cells.append(new_markdown_cell(f"**User:** {turn.user}"))
            if turn.trajectory.ids:
                cells += trajectory_cells(turn.trajectory, self.rollout.tokenizer, self.rollout.dialect)
            elif turn.text.strip():
                cells.append(new_markdown_cell(turn.text.strip()))
            if turn.finish_reason == "interrupted":
                cells.append(new_markdown_cell("*(interrupted)*"))
        notebook = new_notebook_of(cells)
        path.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(notebook, path)
        return len(cells)
