"""Verification of a code-integrated trace, in stages; a trace is kept only if it passes all four.

1. **format**: the dialect's tags are well formed and in order (every block closed, every
   interpreter span right after a block, no stray or nested tags), every block parses (``ast``),
   an answer section is present.
2. **execution**: the blocks run in order in one sandbox session; every interpreter span is
   replaced by the real output. A block that fails (error, timeout, crash) rejects the trace when
   text follows it (the text relies on its result) — unless the trace itself claimed that error.
   A claimed output that differs from the real one also rejects: the reasoning after it was built
   on a number the code does not print.
3. **answer**: the final answer equals the gold answer (``retool.grading.is_equivalent``).

``Verdict`` says which stage dropped a trace and why, for ``stats.json``.
Not here: producing traces (``synth``, ``rewrite``), writing datasets.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field

from retool.grading import extract_answer, is_equivalent
from retool.protocol import Dialect, output_text
from retool.sandbox.base import Session

STAGES = ("format", "execution", "answer")


@dataclass(frozen=True)
class Block:
    code: str
    start: int  # span of the block in the text
    end: int
    claimed: str | None  # the interpreter output the trace wrote after it, if any
    claimed_end: int  # where the claimed span ends (== end without one)


@dataclass(frozen=True)
class Verdict:
    ok: bool
    text: str  # the trace with real interpreter outputs (when execution ran)
    stage: str | None = None  # the stage that rejected it
    reason: str | None = None
    answer: str | None = None
    outputs: list[str] = field(default_factory=list)


def _tags(dialect: Dialect) -> tuple[str, str, str, str]:
    code_open = dialect.code_open.strip().split("\n")[0]
    return code_open, dialect.stop, dialect.output_open.strip(), dialect.output_close.strip()


def parse_blocks(text: str, dialect: Dialect) -> list[Block]:
    """The code blocks with their claimed outputs; raises ``ValueError`` naming the format fault."""
    code_open, code_close, out_open, out_close = _tags(dialect)
    if dialect.name != "retool":
        raise ValueError("trace verification supports the retool dialect")
    tag = re.compile("|".join(re.escape(t) for t in (code_open, code_close, out_open, out_close, "<answer>", "</answer>")))
    state, opened_at, blocks, answer_seen = "text", 0, [], False
    for match in tag.finditer(text):
        token, at = match.group(0), match.start()
        if state == "text":
            if token == code_open:
                state, opened_at = "code", at
            elif token == out_open:
                if not blocks or blocks[-1].claimed is not None or text[blocks[-1].end:at].strip():
                    raise ValueError(f"an interpreter span that does not follow a code block, at character {at}")
                state, opened_at = "output", match.end()
            elif token == "<answer>":
                state = "answer"
            else:
                raise ValueError(f"unexpected {token} at character {at}")
        elif state == "code":
            if token != code_close:
                raise ValueError(f"{token} inside a code block at character {at}")
            source = dialect.extract_code(text[opened_at:match.end()])
            if source is None:
                raise ValueError(f"malformed code block at character {opened_at}")
            blocks.append(Block(source, opened_at, match.end(), None, match.end()))
            state = "text"
        elif state == "output":
            if token != out_close:
                raise ValueError(f"{token} inside an interpreter span at character {at}")
            last = blocks[-1]
            blocks[-1] = Block(last.code, last.start, last.end, text[opened_at:at].strip("\n"), match.end())
            state = "text"
        else:  # answer
            if token != "</answer>":
                raise ValueError(f"{token} inside the answer at character {at}")
            state, answer_seen = "text", True
    if state != "text":
        raise ValueError(f"unclosed {state} section at the end")
    if not answer_seen:
        raise ValueError("no <answer>…</answer> section")
    for index, block in enumerate(blocks):
        try:
            ast.parse(block.code)
        except SyntaxError as exc:
            raise ValueError(f"block {index + 1} does not parse: {exc.msg} (line {exc.lineno})") from None
    return blocks


def _same_output(claimed: str, real: str) -> bool:
    squash = lambda s: re.sub(r"\s+", " ", s).strip()  # noqa: E731
    return squash(claimed) == squash(real)


def verify_trace(text: str, gold: str, dialect: Dialect, session: Session, require_code: bool = True) -> Verdict:
    """Run the stages on ``text``; the kept trace carries the real outputs."""
    try:
        blocks = parse_blocks(text, dialect)
    except ValueError as exc:
        return Verdict(False, text, "format", str(exc))
    if require_code and not blocks:
        return Verdict(False, text, "format", "no code block")
    pieces, cursor, outputs = [], 0, []
    for index, block in enumerate(blocks):
        result = session.run(block.code)  # the session's cell timeout
        real = output_text(result)
        outputs.append(real)
        follows = text[block.claimed_end:].strip()
        if not result.ok and follows:
            claimed_error = block.claimed is not None and result.error and result.error.split(":")[0] in block.claimed
            if not claimed_error:
                return Verdict(False, text, "execution", f"block {index + 1} failed: {result.error}", outputs=outputs)
        if block.claimed is not None and not _same_output(block.claimed, real):
            return Verdict(False, text, "execution",
                           f"block {index + 1} claims {block.claimed[:60]!r} but prints {real[:60]!r}", outputs=outputs)
        pieces.append(text[cursor:block.end])
        pieces.append(dialect.render_output(result).rstrip("\n"))
        cursor = block.claimed_end  # a block without an interpreter span gets ours
    pieces.append(text[cursor:])
    rebuilt = "".join(pieces)
    answer = extract_answer(rebuilt, dialect)
    if answer is None:
        return Verdict(False, rebuilt, "answer", "no \\boxed{} answer", outputs=outputs)
    if not is_equivalent(answer, gold):
        return Verdict(False, rebuilt, "answer", f"answer {answer!r} is not the gold {gold!r}", answer, outputs)
    return Verdict(True, rebuilt, None, None, answer, outputs)
