"""Verification of a code-integrated trace, in stages; a trace is kept only if it passes all three.

1. **format**: the dialect's tags are well formed and in order (every block closed, every
   interpreter span right after a block, no stray or nested tags), every block parses (``ast``),
   an answer section is present where the dialect has one (the grammar is `Dialect.parse`, strict).
2. **execution**: the blocks run in order in one sandbox session; every interpreter span is
   replaced by the real output. A block that fails (error, timeout, crash) rejects the trace when
   text follows it (the text relies on its result) — unless the trace itself claimed that error.
   A claimed output that differs from the real one also rejects: the reasoning after it was built
   on a number the code does not print.
3. **answer**: the final answer equals the gold answer (``retool.grading.is_equivalent``).

``TraceCheck`` says which stage dropped a trace and why, for ``stats.json``.
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
class TraceCheck:
    """What verification made of one trace (not a grade: ``retool.grading.Verdict`` is that)."""

    ok: bool
    text: str  # the trace with real interpreter outputs (when execution ran)
    stage: str | None = None  # the stage that rejected it
    reason: str | None = None
    answer: str | None = None
    outputs: list[str] = field(default_factory=list)


def parse_blocks(text: str, dialect: Dialect) -> list[Block]:
    """The code blocks with their claimed outputs, read by the dialect's grammar (strictly); raises
    ``ValueError`` naming the format fault."""
    segments = dialect.parse(text, strict=True)
    blocks: list[Block] = []
    for segment in segments:
        if segment.kind == "code":
            blocks.append(Block(segment.body, segment.start, segment.end, None, segment.end))
        elif segment.kind == "output":
            last = blocks[-1]
            blocks[-1] = Block(last.code, last.start, last.end, segment.body, segment.end)
    if dialect.answer_open and not any(s.kind == "answer" for s in segments):
        raise ValueError(f"no {dialect.answer_open.strip()}…{dialect.answer_close.strip()} section")
    for index, block in enumerate(blocks):
        try:
            ast.parse(block.code)
        except SyntaxError as exc:
            raise ValueError(f"block {index + 1} does not parse: {exc.msg} (line {exc.lineno})") from None
    return blocks


def _same_output(claimed: str, real: str) -> bool:
    squash = lambda s: re.sub(r"\s+", " ", s).strip()  # noqa: E731
    return squash(claimed) == squash(real)


def verify_trace(text: str, gold: str, dialect: Dialect, session: Session, require_code: bool = True) -> TraceCheck:
    """Run the stages on ``text``; the kept trace carries the real outputs."""
    try:
        blocks = parse_blocks(text, dialect)
    except ValueError as exc:
        return TraceCheck(False, text, "format", str(exc))
    if require_code and not blocks:
        return TraceCheck(False, text, "format", "no code block")
    pieces, cursor, outputs = [], 0, []
    for index, block in enumerate(blocks):
        result = session.run(block.code)  # the session's cell timeout
        real = output_text(result)
        outputs.append(real)
        follows = text[block.claimed_end:].strip()
        if not result.ok and follows:
            claimed_error = block.claimed is not None and result.error and result.error.split(":")[0] in block.claimed
            if not claimed_error:
                return TraceCheck(False, text, "execution", f"block {index + 1} failed: {result.error}", outputs=outputs)
        if block.claimed is not None and not _same_output(block.claimed, real):
            return TraceCheck(False, text, "execution",
                           f"block {index + 1} claims {block.claimed[:60]!r} but prints {real[:60]!r}", outputs=outputs)
        pieces.append(text[cursor:block.end])
        pieces.append(dialect.render_output(result).rstrip("\n"))
        cursor = block.claimed_end  # a block without an interpreter span gets ours
    pieces.append(text[cursor:])
    rebuilt = "".join(pieces)
    answer = extract_answer(rebuilt, dialect)
    if answer is None:
        return TraceCheck(False, rebuilt, "answer", "no \\boxed{} answer", outputs=outputs)
    if not is_equivalent(answer, gold):
        return TraceCheck(False, rebuilt, "answer", f"answer {answer!r} is not the gold {gold!r}", answer, outputs)
    return TraceCheck(True, rebuilt, None, None, answer, outputs)
