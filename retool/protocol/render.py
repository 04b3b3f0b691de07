"""What the model reads of a cell, and where its answer is: output rendering and box matching.

Not here: the markers around an output (``Dialect.render_output`` wraps what this renders).
"""

from __future__ import annotations

import re

from retool.sandbox.base import ExecResult, ExecStatus


def last_boxed_span(text: str) -> tuple[int, int, str] | None:
    """Where the last closed ``\\boxed{…}`` (or ``\\fbox{…}``) is, braces matched: (start of the
    command, end after its closing brace, its content stripped); None without one."""
    best = None
    for match in re.finditer(r"\\(?:boxed|fbox)\s*\{", text):
        depth, start = 1, match.end()
        for i in range(start, len(text)):
            if text[i] == "{":
                depth += 1
            elif text[i] == "}":
                depth -= 1
                if depth == 0:
                    best = (match.start(), i + 1, text[start:i].strip())
                    break
    return best


def last_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{…}`` (or ``\\fbox{…}``), braces matched, or None."""
    span = last_boxed_span(text)
    return span[2] if span is not None else None


def truncate_middle(text: str, head: int, tail: int) -> str:
    """Keep ``head`` characters and the last ``tail``, with a marker saying what was cut."""
    if len(text) <= head + tail:
        return text
    cut = len(text) - head - tail
    return f"{text[:head]}\n… [{cut} characters truncated] …\n{text[len(text) - tail:]}"


def output_text(result: ExecResult, head: int = 1024, tail: int = 1024) -> str:
    """What the model reads of a cell: its output, then one line saying what went wrong (if anything).

    Interpreter-side truncation (``ExecResult.truncated``) already happened in the sandbox; this is
    the second, model-facing cut, sized for the context window.
    """
    body = result.stdout
    if result.stderr and not result.ok:
        body += result.stderr if not body else "\n" + result.stderr
    body = body.rstrip("\n")
    if result.status is not ExecStatus.OK and result.error:
        note = result.error
        if result.session_reset:
            note += " (the interpreter was restarted: earlier variables are gone)"
        body = f"{body}\n{note}" if body else note
    for note in result.notes:  # what the sandbox did beside the cell (a thread it stopped, say)
        body = f"{body}\n[sandbox: {note}]" if body else f"[sandbox: {note}]"
    if not body:
        body = "(no output)"
    return truncate_middle(body, head, tail)
