"""SFT examples rendered through ``Trajectory``, so SFT sees exactly the tokens RL will.

A cold-start record (``{"messages": [user, assistant], ...}``) becomes:

* ``prompt_ids``: the chat-templated prompt the *rollout* uses for that problem (system prompt of
  the dialect, optional one-shot example, the problem) — not the record's bare user message;
* the assistant reply cut at the dialect's block ends: the model's text up to and including the
  stop string (``</code>``) is ``append_model``, the interpreter span after it is ``append_tool``,
  each piece tokenized on its own — as the rollout does (it never re-tokenizes the history).

``labels`` are the ids where the loss mask is 1 and −100 elsewhere (prompt and interpreter output).

Not here: training (``sft.py``); checking that traces are right (``retool.coldstart.verify`` did).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from retool.coldstart.convert import in_dialect
from retool.coldstart.verify import parse_blocks
from retool.protocol import get_dialect
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


def render_trajectory(problem: str, reply: str, tokenizer: Any, rollout: RolloutConfig) -> Trajectory:
    """The trajectory a perfect rollout under ``rollout`` would have produced for ``reply``."""
    dialect, tools = get_dialect(rollout.dialect), rollout.tools
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


def _exchange(record: Any) -> tuple[str, str]:
    if not isinstance(record, dict) or not isinstance(record.get("messages"), list):
        raise ValueError("expected an object with a 'messages' list")
    messages = record["messages"]
    users = [m["content"] for m in messages if m.get("role") == "user"]
    replies = [m["content"] for m in messages if m.get("role") == "assistant"]
    if len(users) != 1 or len(replies) != 1:
        raise ValueError("expected exactly one user and one assistant message")
    return users[0], replies[0]


def _encode(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer.encode(text, add_special_tokens=False))
