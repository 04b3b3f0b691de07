"""Turn a trajectory into readable pieces: reasoning, code, interpreter output.

The split follows the loss mask (interpreter output is exactly the mask-0 spans) and, inside the
model's text, the dialect's code blocks. Used by ``retool solve`` and the chat; the evaluation's
notebooks and reports build on the same pieces. Rendering to a terminal is ``print_transcript``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from retool.protocol import Dialect
from retool.terminal import for_terminal
from retool.trajectory import Trajectory

Kind = Literal["text", "code", "output"]


@dataclass(frozen=True)
class Piece:
    kind: Kind
    text: str


def pieces(traj: Trajectory, tokenizer, dialect: Dialect) -> list[Piece]:
    """The trajectory as an ordered list of text / code / output pieces."""
    out: list[Piece] = []
    for mask, ids in traj.segments():
        text = tokenizer.decode(ids, skip_special_tokens=True)
        if mask == 0:
            out.append(Piece("output", text))
            continue
        cursor = 0
        for match in dialect.code_pattern.finditer(text):
            if match.start() > cursor:
                out.append(Piece("text", text[cursor : match.start()]))
            out.append(Piece("code", text[match.start() : match.end()]))
            cursor = match.end()
        if cursor < len(text):
            out.append(Piece("text", text[cursor:]))
    return out


def print_transcript(console, traj: Trajectory, tokenizer, dialect: Dialect) -> None:
    """Reasoning plain, code in yellow, interpreter output in cyan on a dark background; escape
    sequences in any of them are shown, not obeyed."""
    from rich.text import Text

    styles = {"text": "", "code": "bold yellow", "output": "cyan on grey11"}
    line = Text()
    for piece in pieces(traj, tokenizer, dialect):
        line.append(for_terminal(piece.text), style=styles[piece.kind])
    console.print(line, highlight=False, soft_wrap=True)
