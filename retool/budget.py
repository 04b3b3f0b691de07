"""Budget forcing (s1): how long the model thinks before it answers, controlled from the loop.

*Thinking* is every model token written before the answer opens (across tool turns; interpreter
tokens do not count). The answer opens at the dialect's answer marker (``<answer>`` in ReTool's
dialect, ``\\boxed`` where the box stands in the prose). With budget forcing on, the marker is a
stop string, so the loop sees the moment the model opens its answer:

* **A cap** (``max_thinking_tokens``): each generate call gets at most what is left of it. When a
  call ends at the cap, the loop appends the dialect's answer opening (``<answer>\\n``, or
  ``FORCED_OPENING`` in dialects without an answer tag) as loss-mask-0 tokens and lets the model
  write the answer itself (``forced_answer_tokens`` at most), so grading still reads the model's
  own ``\\boxed{}``. A code block cut by the cap was never closed, so it is never executed.
* **Extension** (``min_thinking_tokens``, ``extend`` with ``extend_with``): when the model opens its
  answer too early (before ``min_thinking_tokens``, or while fewer than ``extend`` extensions were
  made), the completion is cut just before the marker — at a token boundary: the token holding the
  marker's first character goes too — and ``extend_with`` ("Wait") is appended with mask 0, so the
  trajectory stays append-only and the model keeps thinking.

Every forced span is recorded on the trajectory (``Trajectory.forced``: start, end, "answer" or
"extend"), and ``Trajectory.thinking_tokens`` says how many thinking tokens were spent when the
answer opened.

**The chat dialect** (tool calls in the model's own template) has no answer tag: the marker is
``\\boxed`` and the forced opening ``FORCED_OPENING``, written inside the assistant turn; when the
turn is still inside an open ``<think>`` block (Qwen3-style thinking), the forced opening closes it
first. Generation stops at the template's end-of-turn token as usual; once the answer is open the
turn is written to its end (no call in it is run) and the template's text after the turn follows,
so the transcript stays the template's own. A tool call cut by the cap is never run.

Not here: the loop itself (``rollout.py`` calls ``plan`` before and ``after`` after each generation).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from retool.engines.base import Completion
from retool.grading import extract_answer_from_trajectory
from retool.protocol import Dialect
from retool.trajectory import Trajectory

FORCED_OPENING = "\n\nFinal answer: "  # dialects whose answer is a box in the prose: the model writes \boxed{} next


@dataclass
class BudgetForcing:
    tokenizer: Any
    dialect: Dialect
    max_thinking_tokens: int | None
    min_thinking_tokens: int
    extend: int
    extend_with: str
    forced_answer_tokens: int
    chat: Any = None  # the chat dialect's ``ChatFormat`` (end of turn, the text after it), else None

    @property
    def marker(self) -> str:
        return self.dialect.answer_open.strip() or "\\boxed"

    def opening(self, traj: Trajectory) -> str:
        """What is forced in to open the answer: the dialect's tag, or ``FORCED_OPENING`` (closing an
        open ``<think>`` block of a chat template first)."""
        if self.dialect.answer_open:
            return self.dialect.answer_open
        if self.chat is not None and self.chat.thinking:
            text = self.tokenizer.decode(traj.input_ids, skip_special_tokens=False)  # once per trajectory
            if text.rfind("<think>") > text.rfind("</think>"):
                return "\n</think>" + FORCED_OPENING
        return FORCED_OPENING

    @property
    def turn_stops(self) -> tuple[str, ...]:
        return (self.chat.end_of_turn,) if self.chat is not None else self.dialect.stop_strings

    @property
    def answer_stops(self) -> tuple[str, ...]:
        if self.chat is not None:
            return (self.chat.end_of_turn,)
        return (self.dialect.answer_stop,) if self.dialect.answer_stop else ()

    def plan(self, traj: Trajectory, max_total_tokens: int) -> tuple[int, tuple[str, ...]]:
        """``(max_new_tokens, stop strings)`` for the next call (0 tokens: the budget is spent); forces
        the answer open first when the thinking cap is already spent (after an interpreter turn)."""
        if traj.thinking_tokens is None and self.max_thinking_tokens is not None \
                and traj.num_model_tokens >= self.max_thinking_tokens:
            self.force_answer(traj)
        remaining = max_total_tokens - len(traj.ids)
        if traj.thinking_tokens is not None:  # the answer is open: write it, nothing else
            return min(remaining, self.forced_answer_tokens), self.answer_stops
        budget = remaining
        if self.max_thinking_tokens is not None:
            budget = min(budget, self.max_thinking_tokens - traj.num_model_tokens)
        return budget, (*self.turn_stops, self.marker)

    def force_answer(self, traj: Trajectory) -> None:
        traj.thinking_tokens = traj.num_model_tokens
        start, end = traj.append_tool(self.tokenizer.encode(self.opening(traj), add_special_tokens=False))
        traj.forced.append((start, end, "answer"))

    def after(self, traj: Trajectory, completion: Completion) -> bool:
        """Handle ``completion`` where budget forcing decides (it is then appended here): True when
        it did, False when the loop's usual handling applies (a code block closed, EOS, …)."""
        ids, lps = completion.ids, completion.logprobs
        if traj.thinking_tokens is not None:  # the answer phase: whatever came, the answer is done
            traj.append_model(ids, lps)
            answered = extract_answer_from_trajectory(traj, self.tokenizer, self.dialect) is not None
            if self.chat is not None:  # the turn ended: the template's text after it closes the transcript
                if ids and self.tokenizer.decode(ids[-1:], skip_special_tokens=False) == self.chat.end_of_turn:
                    traj.append_tool(self.chat.encode(self.chat.after_turn))
            else:
                answered = answered or completion.end == "stop"
            traj.finish("answer" if answered else "eos" if completion.end == "eos" else "length")
            return True
        if completion.end == "stop" and completion.stop == self.marker:
            cut = self.cut_before_marker(ids)
            if self._suppress(traj, cut):
                traj.append_model(ids[:cut], lps[:cut])
                start, end = traj.append_tool(self.tokenizer.encode(self.extend_with, add_special_tokens=False))
                traj.forced.append((start, end, "extend"))
            else:  # the model opened its answer: the next call writes it
                traj.thinking_tokens = traj.num_model_tokens + cut
                traj.append_model(ids, lps)
            return True
        if completion.end == "length" and self.max_thinking_tokens is not None \
                and traj.num_model_tokens + len(ids) >= self.max_thinking_tokens:
            traj.append_model(ids, lps)  # an unclosed block in it is not run
            self.force_answer(traj)
            return True
        return False

    def _suppress(self, traj: Trajectory, cut: int) -> bool:
        extended = sum(kind == "extend" for *_, kind in traj.forced)
        return extended < self.extend or traj.num_model_tokens + cut < self.min_thinking_tokens

    def cut_before_marker(self, ids: list[int]) -> int:
        """The longest prefix of ``ids`` whose text ends before the marker's last occurrence."""
        text = self.tokenizer.decode(ids, skip_special_tokens=False)
        at = text.rfind(self.marker)
        cut = len(ids)
        while cut > 0 and len(self.tokenizer.decode(ids[:cut], skip_special_tokens=False)) > at:
            cut -= 1
        return cut
