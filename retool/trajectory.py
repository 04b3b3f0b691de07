"""A trajectory: the token ids of one answer, built only by appending, with its loss mask.

Layout (``prompt_ids`` are not part of ``ids``)::

    prompt_ids | ids ----------------------------------------------------------------->
               | model turn 1 ... </code> | <interpreter> out </interpreter> | model turn 2 ...
    loss_mask  | 1 1 1 1 1 1 1 1 1 1 1 1  | 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0  | 1 1 1 1 1 ...
    logprobs   | sampled-token logprobs   | 0.0 (not sampled)                | ...

The mask is written in exactly two places: ``append_model`` (1) and ``append_tool`` (0). SFT data
is rendered through the same class (``append_model`` with zero logprobs), so SFT and RL can never
disagree about which tokens are the model's. The history is never decoded and re-tokenized: the
next turn's input is ``prompt_ids + ids``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

from retool.sandbox.base import ExecResult

FinishReason = Literal["answer", "eos", "length", "max_tool_calls", "invalid_calls", "infra_error", "tool_calls"]
FINISH_REASONS = ("answer", "eos", "length", "max_tool_calls", "invalid_calls", "infra_error", "tool_calls")
# "invalid_calls": the model wrote ``RolloutConfig.max_invalid_calls_in_a_row`` malformed calls in a row
# "tool_calls" (chat dialect, ``retool serve``): the model called a function the client runs; the
# calls are in ``meta["client_calls"]`` and the client's next request carries their results
# "infra_error": the sandbox, the engine or the host failed (not the model): never scored, never trained on

PARSE_ERRORS = ("SyntaxError", "IndentationError", "TabError")  # the interpreter could not parse the cell


@dataclass(frozen=True)
class ToolCall:
    """One executed block: its code, what the sandbox said, and where both sit in ``ids``."""

    code: str
    result: ExecResult
    code_end: int  # index in ids just past the model token that closed the block
    output_span: tuple[int, int]  # [start, end) of the appended interpreter tokens in ids
    response: str | None = None  # chat dialect: the tool message's content as the model read it
    invalid: str | None = None  # chat dialect: the call could not run (bad JSON, unknown function): why

    @property
    def malformed(self) -> bool:
        """The call was not a program the interpreter could start: a chat call that could not be read
        (bad JSON, unknown function) or code that does not parse. A runtime error is not malformed:
        the code ran, and its error is feedback the model can use."""
        return self.invalid is not None or (self.result.error or "").startswith(PARSE_ERRORS)

    def to_dict(self) -> dict[str, Any]:
        data = {"code": self.code, "result": self.result.to_dict(), "code_end": self.code_end,
                "output_span": list(self.output_span)}
        data.update({k: v for k, v in (("response", self.response), ("invalid", self.invalid)) if v is not None})
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ToolCall":
        return cls(data["code"], ExecResult.from_dict(data["result"]), data["code_end"], tuple(data["output_span"]),
                   data.get("response"), data.get("invalid"))


class TrajectoryError(ValueError):
    """A broken invariant: a bug in whatever built the trajectory. Never silenced."""


@dataclass
class Trajectory:
    prompt_ids: list[int]
    ids: list[int] = field(default_factory=list)
    loss_mask: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    tool_calls: list[ToolCall] = field(default_factory=list)
    finish_reason: FinishReason | None = None
    finish_detail: str | None = None  # for "infra_error": what failed, in one line
    meta: dict[str, Any] = field(default_factory=dict)  # problem id, sample index, timings: reporting only
    # budget forcing (``retool.budget``): spans the loop forced in, (start, end, "answer" | "extend"),
    # and the model tokens spent thinking when the answer opened (None: not opened under forcing)
    forced: list[tuple[int, int, str]] = field(default_factory=list)
    thinking_tokens: int | None = None

    # -- the two writers of the mask ----------------------------------------------------------

    def append_model(self, ids: list[int], logprobs: list[float] | None = None) -> None:
        """Tokens the model produced (trained on): loss-mask 1."""
        logprobs = [0.0] * len(ids) if logprobs is None else list(logprobs)
        if len(logprobs) != len(ids):
            raise TrajectoryError(f"{len(ids)} model tokens but {len(logprobs)} logprobs")
        if any(not math.isfinite(lp) or lp > 1e-6 for lp in logprobs):
            raise TrajectoryError("logprobs must be finite and ≤ 0")
        self._append(ids, 1, logprobs)

    def append_tool(self, ids: list[int]) -> tuple[int, int]:
        """Tokens the loop inserted (interpreter output): loss-mask 0. Returns their span."""
        start = len(self.ids)
        self._append(ids, 0, [0.0] * len(ids))
        return start, len(self.ids)

    def _append(self, ids: list[int], mask: int, logprobs: list[float]) -> None:
        if self.finish_reason is not None:
            raise TrajectoryError(f"cannot append to a finished trajectory ({self.finish_reason})")
        if any(not isinstance(t, int) or t < 0 for t in ids):
            raise TrajectoryError("token ids must be non-negative ints")
        self.ids.extend(ids)
        self.loss_mask.extend([mask] * len(ids))
        self.logprobs.extend(logprobs)
        self.check()

    # -- the rest --------------------------------------------------------------------------------

    def record_tool_call(self, code: str, result: ExecResult, code_end: int, output_span: tuple[int, int], *,
                         response: str | None = None, invalid: str | None = None) -> "ToolCall":
        call = ToolCall(code, result, code_end, output_span, response, invalid)
        start, end = output_span
        if not (0 < code_end <= start <= end <= len(self.ids)) or any(self.loss_mask[start:end]):
            raise TrajectoryError(f"tool call spans {code_end}, {output_span} do not fit the trajectory")
        self.tool_calls.append(call)
        return call

    def finish(self, reason: FinishReason, detail: str | None = None) -> None:
        if reason not in FINISH_REASONS:
            raise TrajectoryError(f"unknown finish reason {reason!r}")
        if self.finish_reason is not None:
            raise TrajectoryError(f"trajectory already finished ({self.finish_reason})")
        self.finish_reason, self.finish_detail = reason, detail

    @property
    def infra_failure(self) -> bool:
        """The trajectory was stopped by a failure that is not the model's: not to be scored."""
        return self.finish_reason == "infra_error"

    def check(self) -> None:
        """The invariants, checked after every append."""
        n = len(self.ids)
        if not (len(self.loss_mask) == len(self.logprobs) == n):
            raise TrajectoryError(f"ids/loss_mask/logprobs lengths differ: {n}, {len(self.loss_mask)}, {len(self.logprobs)}")

    @property
    def input_ids(self) -> list[int]:
        """What the engine sees for the next turn: exactly the prompt plus everything appended."""
        return self.prompt_ids + self.ids

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    @property
    def num_model_tokens(self) -> int:
        return sum(self.loss_mask)

    @property
    def num_tool_tokens(self) -> int:
        return len(self.ids) - self.num_model_tokens

    def model_ids(self) -> list[int]:
        """Only the model's own tokens, in order (for grading: interpreter output never counts)."""
        return [t for t, m in zip(self.ids, self.loss_mask) if m]

    def segments(self) -> list[tuple[int, list[int]]]:
        """Runs of equal mask: ``[(1, model ids), (0, tool ids), ...]`` — for rendering transcripts."""
        runs: list[tuple[int, list[int]]] = []
        for token, mask in zip(self.ids, self.loss_mask):
            if runs and runs[-1][0] == mask:
                runs[-1][1].append(token)
            else:
                runs.append((mask, [token]))
        return runs

    def to_dict(self) -> dict[str, Any]:
        return {
            "prompt_ids": self.prompt_ids,
            "ids": self.ids,
            "loss_mask": self.loss_mask,
            "logprobs": self.logprobs,
            "tool_calls": [c.to_dict() for c in self.tool_calls],
            "finish_reason": self.finish_reason,
            "finish_detail": self.finish_detail,
            "meta": self.meta,
            **({"forced": [list(f) for f in self.forced]} if self.forced else {}),
            **({"thinking_tokens": self.thinking_tokens} if self.thinking_tokens is not None else {}),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Trajectory":
        traj = cls(list(data["prompt_ids"]), list(data["ids"]), list(data["loss_mask"]), list(data["logprobs"]),
                   [ToolCall.from_dict(c) for c in data.get("tool_calls", [])], data.get("finish_reason"),
                   data.get("finish_detail"), dict(data.get("meta", {})),  # a "reward" of older files: ignored
                   [tuple(f) for f in data.get("forced", [])], data.get("thinking_tokens"))
        traj.check()
        return traj


@dataclass(frozen=True)
class Batch:
    """Right-padded tensors for training. ``attention_mask`` marks real tokens (prompt included);
    ``loss_mask`` marks the model's own response tokens — never use one for the other."""

    input_ids: Any  # [B, T] long
    attention_mask: Any  # [B, T] long: 1 for prompt and response tokens
    loss_mask: Any  # [B, T] float: 1 only for model-written response tokens
    logprobs: Any  # [B, T] float: sampling logprobs at response positions, 0 elsewhere
    prompt_lengths: Any  # [B] long


def collate(trajectories: list[Trajectory], pad_id: int) -> Batch:
    """Stack trajectories as ``prompt_ids + ids``, right-padded to the longest."""
    import torch

    if not trajectories:
        raise ValueError("collate needs at least one trajectory")
    width = max(len(t.prompt_ids) + len(t.ids) for t in trajectories)
    b = len(trajectories)
    input_ids = torch.full((b, width), pad_id, dtype=torch.long)
    attention = torch.zeros((b, width), dtype=torch.long)
    loss_mask = torch.zeros((b, width), dtype=torch.float32)
    logprobs = torch.zeros((b, width), dtype=torch.float32)
    for row, t in enumerate(trajectories):
        p, n = len(t.prompt_ids), len(t.ids)
        input_ids[row, : p + n] = torch.tensor(t.prompt_ids + t.ids, dtype=torch.long)
        attention[row, : p + n] = 1
        loss_mask[row, p : p + n] = torch.tensor(t.loss_mask, dtype=torch.float32)
        logprobs[row, p : p + n] = torch.tensor(t.logprobs, dtype=torch.float32)
    prompt_lengths = torch.tensor([len(t.prompt_ids) for t in trajectories], dtype=torch.long)
    return Batch(input_ids, attention, loss_mask, logprobs, prompt_lengths)
