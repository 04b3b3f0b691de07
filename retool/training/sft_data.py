"""SFT examples rendered through ``Trajectory``, so SFT sees exactly the tokens RL will.

A cold-start record (``{"messages": [user, assistant], ...}``) becomes:

* ``prompt_ids``: the chat-templated prompt the *rollout* uses for that problem (system prompt of
  the dialect, optional one-shot example, the problem) — not the record's bare user message;
* the assistant reply cut at the dialect's block ends: the model's text up to and including the
  stop string (``</code>``) is ``append_model``, the interpreter span after it is ``append_tool``,
  each piece tokenized on its own — as the rollout does (it never re-tokenizes the history).

The chat dialect renders a tool-call conversation (a record of ``coldstart convert --to chat``, or
a tag trace converted on the fly) turn by turn through the template: each assistant message as the
text the model writes for it, end-of-turn token included (mask 1), each group of tool messages as
the template's reply (mask 0) — the same pieces the rollout appends, so the ids are the template's
rendering of the whole conversation.

``labels`` are the ids where the loss mask is 1 and −100 elsewhere (prompt and interpreter output).

Not here: training (``sft.py``); checking that traces are right (``retool.coldstart.verify`` did).
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from retool.coldstart.convert import in_dialect, trace_messages
from retool.coldstart.verify import parse_blocks
from retool.protocol import get_dialect
from retool.protocol.chat import template_message
from retool.rollout import RolloutConfig, render_prompt
from retool.trajectory import Trajectory

IGNORE_INDEX = -100


class SFTDataError(ValueError):
    """A training line that cannot be rendered, naming the file and line."""


@dataclass(frozen=True)
class SFTExample:
    id: str
    input_ids: list[int]
    labels: list[int]

    @property
    def num_trained(self) -> int:
        return sum(1 for t in self.labels if t != IGNORE_INDEX)


def render_trajectory(problem: str, reply: str | list[dict[str, Any]], tokenizer: Any,
                      rollout: RolloutConfig) -> Trajectory:
    """The trajectory a perfect rollout under ``rollout`` would have produced for ``reply`` (a
    trace, or the messages after the user's in a tool-call conversation)."""
    dialect, tools = get_dialect(rollout.dialect), rollout.tools
    if dialect.structured:
        return _render_chat(problem, reply if isinstance(reply, list) else trace_messages(reply), tokenizer, rollout)
    if isinstance(reply, list):
        raise ValueError("a tool-call conversation (a chat record): train it with the chat dialect")
    prompt = render_prompt(tokenizer, dialect.messages(problem, few_shot=rollout.few_shot, tools=tools,
                                                     system_prompt=rollout.system_prompt))
    traj = Trajectory(prompt)
    cursor = 0
    reply = in_dialect(reply, dialect)  # one data set serves every dialect: a trace in another is converted
    blocks = parse_blocks(reply, dialect) if tools else []
    if not tools and dialect.stop in reply:
        raise ValueError("a text-only trace contains a code block")
    for block in blocks:
        traj.append_model(_encode(tokenizer, reply[cursor:block.end]))
        if block.claimed is None:
            raise ValueError("a code block without interpreter output: the trace was never executed")
        end = block.claimed_end  # the rollout appends the whole wrapper, trailing newline included
        while not reply[block.end:end].endswith(dialect.output_close) and end < len(reply) and reply[end] in " \n":
            end += 1
        traj.append_tool(_encode(tokenizer, reply[block.end:end]))
        cursor = end
    if cursor < len(reply):
        traj.append_model(_encode(tokenizer, reply[cursor:]))
    traj.finish("answer")
    return traj


@functools.lru_cache(maxsize=4)
def _chat_format(tokenizer: Any, rollout: RolloutConfig):
    return rollout.chat_format(tokenizer)  # checked once per tokenizer and settings, not per example


def _render_chat(problem: str, messages: list[dict[str, Any]], tokenizer: Any, rollout: RolloutConfig) -> Trajectory:
    dialect, chat = get_dialect(rollout.dialect), _chat_format(tokenizer, rollout)
    opening = dialect.messages(problem, few_shot=rollout.few_shot, tools=rollout.tools, system_prompt=rollout.system_prompt)
    traj = Trajectory(chat.encode(chat.render(opening, generation_prompt=True, tools=rollout.tools)))
    i = 0
    while i < len(messages):
        message = template_message(messages[i])
        if message.get("role") != "assistant":
            raise ValueError(f"message {i + 2}: expected the assistant's, got {message.get('role')!r}")
        calls = message.get("tool_calls") or []
        if calls and not rollout.tools:
            raise ValueError("a text-only trace contains a tool call")
        traj.append_model(chat.encode(chat.model_turn(message)))
        replies = []
        i += 1
        while i < len(messages) and messages[i].get("role") == "tool":
            replies.append(str(messages[i].get("content") or ""))
            i += 1
        if len(replies) != len(calls):
            raise ValueError(f"an assistant message with {len(calls)} tool calls is followed by {len(replies)} tool messages")
        if not calls and i < len(messages):
            raise ValueError("an assistant message without tool calls before the end of the conversation")
        if replies:
            traj.append_tool(chat.encode(chat.tool_reply(replies)))
    traj.append_tool(chat.encode(chat.after_turn))
    traj.finish("answer")
    return traj


def to_example(traj: Trajectory, id: str = "") -> SFTExample:
    labels = [IGNORE_INDEX] * len(traj.prompt_ids) + [t if m else IGNORE_INDEX for t, m in zip(traj.ids, traj.loss_mask)]
    return SFTExample(id, traj.input_ids, labels)


def iter_examples(paths: list[str | Path], tokenizer: Any, rollout: RolloutConfig, *, max_length: int | None = None,
                  max_examples: int | None = None) -> Iterator[SFTExample]:
    """Every usable line of ``paths`` as an example. A malformed line raises ``SFTDataError`` with its
    location (a silently shorter dataset is worse than a stopped run); over-long examples are
    skipped, not truncated (a trace cut before its answer teaches the model to stop mid-way)."""
    produced = 0
    for path in map(Path, paths):
        if not path.is_file():
            raise SFTDataError(f"no training data at {path}")
        with path.open() as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                where = f"{path}:{lineno}"
                try:
                    record = json.loads(line)
                    user, assistant = _exchange(record)
                    traj = render_trajectory(user, assistant, tokenizer, rollout)
                except (json.JSONDecodeError, ValueError, KeyError, TypeError) as exc:
                    raise SFTDataError(f"{where}: {exc}") from None
                example = to_example(traj, str(record.get("id", where)))
                if max_length is not None and len(example.input_ids) > max_length:
                    continue
                yield example
                produced += 1
                if max_examples is not None and produced >= max_examples:
                    return


def build_dataset(examples: Iterator[SFTExample]):
    """A ``datasets.Dataset`` with ``input_ids`` and ``labels`` (what TRL's SFTTrainer takes as is)."""
    from datasets import Dataset

    rows = [{"input_ids": e.input_ids, "labels": e.labels} for e in examples]
    if not rows:
        raise SFTDataError("no training examples (all lines empty or longer than max_length)")
    return Dataset.from_list(rows)


def _exchange(record: Any) -> tuple[str, str | list[dict[str, Any]]]:
    """The problem and the reply: one assistant message's text, or (a tool-call conversation) the
    messages after the user's."""
    if not isinstance(record, dict) or not isinstance(record.get("messages"), list):
        raise ValueError("expected an object with a 'messages' list")
    messages = [m for m in record["messages"] if m.get("role") != "system"]
    users = [m["content"] for m in messages if m.get("role") == "user"]
    if len(users) != 1 or messages[0].get("role") != "user":
        raise ValueError("expected exactly one user message, first")
    after = messages[1:]
    if any(m.get("role") == "tool" or m.get("tool_calls") for m in after):
        return users[0], after
    replies = [m["content"] for m in after if m.get("role") == "assistant"]
    if len(replies) != 1:
        raise ValueError("expected exactly one user and one assistant message")
    return users[0], replies[0]


def _encode(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer.encode(text, add_special_tokens=False))
