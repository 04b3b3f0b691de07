"""The one transcript grammar: a state machine over a dialect's markers that turns a transcript,
whole or streamed, into typed ``Segment``\\ s.

Why one: the rollout's code extraction, answer location, grading, the chat's colouring, notebook
cells, cold-start verification, SFT rendering and conversion between dialects all read
transcripts; written once, they cannot disagree about where a block starts or ends. The markers
are the dialect's (``Dialect.tokens``, one named group per role); the machine is the same for all.

Not here: the markers themselves and what a dialect writes (``retool.protocol``).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from retool.protocol import Dialect

SegmentKind = Literal["text", "code", "output", "answer"]
LOOKAHEAD = 24  # characters a streamed marker may still grow by ("```" may become "```output")


@dataclass(frozen=True)
class Segment:
    """One typed piece of a transcript. ``body`` is what it holds: the source of a code block, the
    text of an interpreter output, the content of an answer section; a text segment's own text."""

    kind: SegmentKind
    start: int
    end: int
    body: str
    closed: bool = True  # code: it reached the stop string (so it runs); output, answer: closed


class TranscriptError(ValueError):
    """A transcript that breaks the dialect's grammar (strict parsing), saying where."""


@dataclass
class _State:
    mode: str = "text"  # text | code | fence_closed (fenced: prose until the stop) | other_fence | output | answer
    start: int = 0  # where the open segment began
    body_start: int = 0
    body_end: int = 0


class TranscriptParser:
    """The grammar as a state machine over the dialect's markers, fed text as it arrives.

    ``feed`` returns the kind of what was just fed (for colouring a stream); ``close`` ends the text
    and returns every segment. ``strict`` (traces to verify or train on) raises ``TranscriptError``
    on any marker out of place; otherwise the parser reads the text as the rollout would."""

    def __init__(self, dialect: Dialect, *, strict: bool = False, outputs: bool = True) -> None:
        self.dialect, self.strict, self.outputs = dialect, strict, outputs
        self.text = ""
        self.segments: list[Segment] = []
        self._state = _State()
        self._text_start = 0
        self._scan = 0
        self._kind: SegmentKind = "text"

    def feed(self, chunk: str) -> SegmentKind:
        before = self._kind
        self.text += chunk
        self._advance(final=False)
        self._kind = self._peek_kind()
        return "code" if "code" in (before, self._kind) else self._kind

    def close(self) -> list[Segment]:
        self._advance(final=True)
        self._finish()
        return self.segments

    # -- the machine --------------------------------------------------------------------------------

    def _peek_kind(self) -> SegmentKind:
        """The kind at the end of the text so far, as if it ended here (nothing is committed)."""
        saved = (copy.copy(self._state), len(self.segments), self._scan, self._text_start)
        self._advance(final=True)
        kind = self._mode_kind(self._state.mode)
        self._state, count, self._scan, self._text_start = saved
        del self.segments[count:]
        return kind

    @staticmethod
    def _mode_kind(mode: str) -> SegmentKind:
        return {"code": "code", "output": "output", "answer": "answer"}.get(mode, "text")  # type: ignore[return-value]

    def _advance(self, final: bool) -> None:
        for match in self.dialect.tokens.finditer(self.text, self._scan):
            if not final and match.end() > len(self.text) - LOOKAHEAD:
                return  # it may still grow into a longer marker
            self._scan = match.end()
            self._token(match.lastgroup or "", match.start(), match.end())
        if not final:
            self._scan = max(self._scan, len(self.text) - LOOKAHEAD)

    def _fault(self, message: str) -> None:
        if self.strict:
            raise TranscriptError(message)

    def _emit(self, kind: SegmentKind, start: int, end: int, body: str, closed: bool = True) -> None:
        if self._text_start < start:
            self.segments.append(Segment("text", self._text_start, start, self.text[self._text_start:start]))
        self.segments.append(Segment(kind, start, end, body, closed))
        self._text_start = end

    def _open(self, mode: str, start: int, body_start: int) -> None:
        self._state = _State(mode, start, body_start)

    def _token(self, role: str, at: int, end: int) -> None:
        mode, d = self._state.mode, self.dialect
        if mode == "text":
            if role == "code_open":
                self._open("code", at, end)
            elif role == "answer_open":
                self._open("answer", at, end)
            elif role == "output_open" or (role == "stop" and d.stop_opens_output):
                last = self.segments[-1] if self.segments else None
                if last is None or last.kind != "code" or self.text[last.end:at].strip():
                    self._fault(f"an interpreter output that does not follow a code block, at character {at}")
                self._open("output", at, end)
            elif role == "fence":
                self._open("other_fence", self._text_start, end)
            else:
                self._fault(f"unexpected {self.text[at:end].strip()} at character {at}")
        elif mode == "code":
            if role == "stop":
                self._close_code(at, end)
            elif role == "fence" and d.stop_opens_output:
                self._state.mode, self._state.body_end = "fence_closed", at
            else:
                self._fault(f"{self.text[at:end].strip()} inside a code block at character {at}")
        elif mode == "fence_closed":
            if role == "stop":
                self._close_code(self._state.body_end, end)
            else:  # the block was shown, not run: it ends at its fence, and the marker is read again
                self._fault(f"a code block without an output block, at character {self._state.start}")
                self._unrun_code()
                self._token(role, at, end)
        elif mode == "other_fence":
            if role == "fence":
                self._state = _State()
        elif mode == "output":
            if role == "output_close" or (role == "fence" and d.stop_opens_output):
                body = self.text[self._state.body_start:at].strip("\n")
                self._emit("output", self._state.start, end, body)
                self._state = _State()
            else:
                self._fault(f"{self.text[at:end].strip()} inside an interpreter output at character {at}")
        elif mode == "answer":
            if role == "answer_close":
                self._emit("answer", self._state.start, end, self.text[self._state.body_start:at])
                self._state = _State()
            else:
                self._fault(f"{self.text[at:end].strip()} inside the answer at character {at}")

    def _close_code(self, source_end: int, end: int) -> None:
        source = self.dialect.code_source(self.text[self._state.body_start:source_end])
        self._emit("code", self._state.start, end, source)
        if self.dialect.stop_opens_output and self.outputs:
            self._open("output", end, end)  # the output follows the stop directly
        else:
            self._state = _State()

    def _unrun_code(self) -> None:
        fence_end = self._state.body_end + 3
        source = self.dialect.code_source(self.text[self._state.body_start:self._state.body_end])
        self._emit("code", self._state.start, fence_end, source, closed=False)
        self._state = _State()

    def _finish(self) -> None:
        state, end = self._state, len(self.text)
        if state.mode == "fence_closed":
            self._fault(f"a code block without an output block, at character {state.start}")
        elif state.mode not in ("text", "other_fence"):
            self._fault(f"unclosed {state.mode} section at the end")
        if state.mode == "code":
            self._emit("code", state.start, end, self.dialect.code_source(self.text[state.body_start:]), closed=False)
        elif state.mode == "fence_closed":
            self._unrun_code()
        elif state.mode == "output":
            self._emit("output", state.start, end, self.text[state.body_start:].strip("\n"), closed=False)
        elif state.mode == "answer":
            self._emit("answer", state.start, end, self.text[state.body_start:], closed=False)
        self._state = _State()
        if self._text_start < end:
            self.segments.append(Segment("text", self._text_start, end, self.text[self._text_start:]))
            self._text_start = end
