"""One verified trace, written in another dialect: the same reasoning, code and outputs.

Why: cold-start data is expensive to make (a rewriter model, a sandbox, verification), and the
dialect is a choice of the model being trained, not of the data. So a data set is made once and
converted: the source is parsed by its dialect's grammar (strictly), and each segment is written
again with the target's markers — code blocks with ``render_code``, interpreter outputs in the
target's wrapper, the answer in the target's answer format. Prose a fenced trace puts between a
block's closing fence and its output fence moves before the block (ReTool's tags allow nothing
there). ``convert_file`` re-verifies every converted trace in a sandbox before it keeps it.

The ``chat`` dialect is not tags but messages: ``trace_messages`` turns a trace into the
conversation a tool-calling chat template renders (an assistant message with ``tool_calls`` per
block, a ``tool`` message per output, the answer in a last assistant message); ``convert_file``
with ``to="chat"`` verifies the source trace by running it, then checks that the model's template
(``model``: its tokenizer; ``chat_template``: a template file instead of its own) renders the
conversation exactly (``retool.protocol.chat``).

Not here: deciding whether the source trace was right (``verify``), making traces (``synth``,
``pipeline``).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from retool.coldstart.records import write_jsonl
from retool.coldstart.verify import TraceCheck, verify_trace
from retool.protocol import DIALECTS, Dialect, Segment, detect_dialect, last_boxed
from retool.protocol.render import last_boxed_span
from retool.sandbox.base import Session
from retool.sandbox.spec import SandboxSpec


def _output_tail(dialect: Dialect) -> str:
    """What the dialect's output wrapper writes after its closing marker (a newline)."""
    close = dialect.output_close
    return close[len(close.rstrip()):]


def _prose_before_stop(text: str, segment: Segment, dialect: Dialect) -> str:
    """Fenced: the prose between a block's closing fence and its ```` ```output ````."""
    if not dialect.stop_opens_output:
        return ""
    raw = text[segment.start:segment.end - len(dialect.stop)]
    fence = raw.rfind("```")
    return raw[fence + 3:].strip() if fence > 0 else ""


def _ran_block_prose(text: str, segments: list[Segment], index: int, source: Dialect) -> str:
    """For the code segment at ``index``: raises unless its output follows (it was run); returns
    the prose a fenced trace put between its closing fence and its output fence."""
    segment = segments[index]
    ahead = (s.kind for s in segments[index + 1:] if s.kind != "text" or s.body.strip())
    if next(ahead, None) != "output":
        raise ValueError(f"a code block without its output at character {segment.start}: was it ever run?")
    return _prose_before_stop(text, segment, source)


def in_dialect(text: str, target: Dialect) -> str:
    """``text`` in ``target``, whatever dialect it is written in (``protocol.detect_dialect``)."""
    source = detect_dialect(text)
    return text if source is target else convert_trace(text, source, target)


def convert_trace(text: str, source: Dialect, target: Dialect) -> str:
    """``text`` (a complete trace in ``source``) in ``target``; raises ``ValueError`` if ``text``
    breaks the source grammar, or if it has no final answer to carry over."""
    segments = source.parse(text, strict=True)
    out: list[str] = []
    answered = False
    for index, segment in enumerate(segments):
        following = segments[index + 1] if index + 1 < len(segments) else None
        previous = segments[index - 1] if index else None
        if segment.kind == "text":
            body = segment.body
            if previous is not None and previous.kind == "code" and following is not None \
                    and following.kind == "output" and not body.strip():
                continue  # the source's own lead-in to its output wrapper
            if previous is not None and previous.kind == "output":
                body = body.removeprefix(_output_tail(source))
            out.append(body)
        elif segment.kind == "code":
            prose = _ran_block_prose(text, segments, index, source)
            if prose:
                out.append(prose + "\n")
            out.append(target.render_code(segment.body))
        elif segment.kind == "output":
            out.append(f"{target.output_open}{segment.body}{target.output_close}")
        else:  # an answer section
            answered = True
            boxed = last_boxed(segment.body)
            out.append(target.format_answer(boxed) if boxed is not None else segment.body.strip())
    converted = "".join(out)
    if not answered:  # the source writes its answer as a bare \boxed{} in the prose: wrap the last one
        converted = _wrap_last_box(converted, target)
    return converted


def trace_messages(text: str) -> list[dict[str, Any]]:
    """A complete tag trace (any tag dialect, detected) as chat messages after the user's:
    ``[assistant + tool_calls, tool, ..., assistant]``; raises ``ValueError`` like ``convert_trace``."""
    source = detect_dialect(text)
    if source.structured:
        raise ValueError("not a tag trace")
    messages: list[dict[str, Any]] = []
    content: list[str] = []
    calls: list[dict[str, Any]] = []
    answered = False

    def flush_assistant() -> None:
        message: dict[str, Any] = {"role": "assistant", "content": "".join(content).strip()}
        if calls:
            message["tool_calls"] = list(calls)
        messages.append(message)
        content.clear()
        calls.clear()

    segments = source.parse(text, strict=True)
    for index, segment in enumerate(segments):
        previous = segments[index - 1] if index else None
        if segment.kind == "text":
            if calls:
                continue  # between a block and its output: only whitespace (the strict grammar says so)
            after_output = previous is not None and previous.kind == "output"
            content.append(segment.body.removeprefix(_output_tail(source)) if after_output else segment.body)
        elif segment.kind == "code":
            prose = _ran_block_prose(text, segments, index, source)
            if prose:
                content.append("\n" + prose)
            calls.append({"type": "function", "function": {"name": "python", "arguments": {"code": segment.body}}})
        elif segment.kind == "output":
            if calls:
                flush_assistant()
            messages.append({"role": "tool", "content": segment.body})
        else:
            answered = True
            boxed = last_boxed(segment.body)
            content.append(f"\\boxed{{{boxed}}}" if boxed is not None else segment.body.strip())
    if not answered and last_boxed("".join(content)) is None:
        raise ValueError("no \\boxed{} answer to carry over")
    flush_assistant()
    return messages


def _wrap_last_box(text: str, target: Dialect) -> str:
    span = last_boxed_span(text)
    if span is None:
        raise ValueError("no \\boxed{} answer to carry over")
    start, end, value = span
    return text[:start] + target.format_answer(value) + text[end:]


def verify_as(text: str, gold: str, written_in: Dialect, target: Dialect, session: Session,
              require_code: bool = True) -> TraceCheck:
    """Verify a trace written in ``written_in`` and, when the data is for another dialect, convert
    the verified trace and verify it again there (the stage ``convert`` names a conversion fault)."""
    check = verify_trace(text, gold, written_in, session, require_code)
    if not check.ok or target is written_in:
        return check
    try:
        converted = convert_trace(check.text, written_in, target)
    except ValueError as exc:
        return TraceCheck(False, check.text, "convert", str(exc))
    return verify_trace(converted, gold, target, session, require_code)


@dataclass(frozen=True)
class ConvertConfig:
    input: str
    to: str
    out: str
    sandbox: SandboxSpec = SandboxSpec()
    model: str | None = None  # to="chat": whose chat template the conversations are checked against
    chat_template: str | None = None  # to="chat": a Jinja template file to check against instead of the model's own


def convert_file(config: ConvertConfig, progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Convert every trace of ``config.input`` (cold-start jsonl records) to ``config.to``, re-verify
    each in one sandbox session, write the kept ones to ``OUT/<input's name>`` and the rest, with
    why, to ``OUT/<stem>.rejects.jsonl``. Returns the counts."""
    source_path, target = Path(config.input), DIALECTS.get(config.to)
    if target is None:
        raise ValueError(f"unknown dialect {config.to!r}; choose one of {', '.join(DIALECTS)}")
    if not source_path.is_file():
        raise FileNotFoundError(f"no cold-start data at {source_path}")
    chat = None
    if target.structured:
        if config.model is None:
            raise ValueError("converting to chat needs --model: the tokenizer whose chat template renders the calls")
        from retool.models import load_tokenizer
        from retool.protocol.chat import ChatFormat, load_template

        chat = ChatFormat.of(load_tokenizer(config.model), template=load_template(config.chat_template))
    lines = [line for line in source_path.read_text(encoding="utf-8").splitlines() if line.strip()]
    out_dir = Path(config.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    kept, rejected = [], []
    with config.sandbox.session() as session:
        for number, line in enumerate(lines, 1):
            where = f"{source_path}:{number}"
            try:
                record = json.loads(line)
                reply = record["messages"][-1]["content"]
                converted = reply if chat is not None else in_dialect(reply, target)
            except (json.JSONDecodeError, KeyError, IndexError, TypeError, ValueError) as exc:
                rejected.append({"where": where, "stage": "convert", "reason": str(exc)[:300]})
            else:
                if chat is not None:
                    _to_chat(record, reply, chat, session, kept, rejected, where)
                else:
                    check = verify_trace(converted, str(record.get("answer", "")), target, session)
                    if check.ok:
                        messages = [*record["messages"][:-1], {"role": "assistant", "content": check.text}]
                        kept.append({**record, "messages": messages, "dialect": target.name})
                    else:
                        rejected.append({"where": where, "stage": check.stage, "reason": check.reason})
            if progress:
                progress(number, len(lines))
    write_jsonl(out_dir / source_path.name, kept)
    write_jsonl(out_dir / f"{source_path.stem}.rejects.jsonl", rejected)
    if chat is not None:
        (out_dir / "chat_template.jinja").write_text(chat.template or str(chat.tokenizer.chat_template))
    return {"input": str(source_path), "to": target.name, "kept": len(kept),
            "dropped": dict(Counter(r["stage"] for r in rejected))}


def _to_chat(record: dict[str, Any], reply: str, chat, session: Session, kept: list, rejected: list, where: str) -> None:
    """One record as a verified tool-call conversation, or a rejection saying which stage failed."""
    from retool.protocol.chat import ChatTemplateError

    source = detect_dialect(reply)
    check = verify_trace(reply, str(record.get("answer", "")), source, session)
    if not check.ok:
        rejected.append({"where": where, "stage": check.stage, "reason": check.reason})
        return
    try:
        messages = [*record["messages"][:-1], *trace_messages(check.text)]
        chat.render(messages, generation_prompt=False)  # the template renders it (or says why not)
    except (ValueError, ChatTemplateError) as exc:
        rejected.append({"where": where, "stage": "convert", "reason": str(exc)[:300]})
        return
    kept.append({**record, "messages": messages, "dialect": "chat"})
