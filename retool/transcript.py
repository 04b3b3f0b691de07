"""A trajectory for people: readable pieces (reasoning, code, interpreter output), printed on a
terminal or as notebook cells.

The split follows the loss mask (interpreter output is exactly the mask-0 spans) and, inside the
model's text, the dialect's code blocks. ``print_transcript`` colours it for ``retool solve``;
``trajectory_cells`` makes notebook cells of it — reasoning as markdown, code as code cells
carrying the outputs the sandbox really produced (the evaluation's notebooks and the chat's
``/notebook``). Code the model wrote but that never ran (cut by the budget, or past the tool-call
limit) becomes a code cell without outputs.
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
    source: str = ""  # code: the block's source
    ran: bool = False  # code: it reached the stop string (the loop ran it, unless a limit said no)


def pieces(traj: Trajectory, tokenizer, dialect: Dialect) -> list[Piece]:
    """The trajectory as an ordered list of text / code / output pieces: interpreter output is the
    mask-0 spans, code the dialect's blocks in the model's text (``Dialect.parse``)."""
    out: list[Piece] = []
    for mask, ids in traj.segments():
        text = tokenizer.decode(ids, skip_special_tokens=True)
        if mask == 0:
            if dialect.structured:  # chat: the tool messages' contents, not the template's scaffolding
                shown = "\n".join(s.body for s in dialect.parse(text) if s.kind == "output")
                if shown:
                    out.append(Piece("output", f"\n{shown}\n"))
                continue
            out.append(Piece("output", text))
            continue
        for segment in dialect.parse(text, outputs=False):
            piece = text[segment.start:segment.end]
            if segment.kind == "code":
                out.append(Piece("code", piece, segment.body, segment.closed))
            else:
                out.append(Piece("text", piece))
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


def trajectory_cells(trajectory, tokenizer, dialect: Dialect) -> list:
    """Markdown cells for the reasoning, code cells (with their real outputs) for the blocks."""
    from nbformat.v4 import new_code_cell, new_markdown_cell, new_output

    cells = []
    calls = iter(trajectory.tool_calls)
    for piece in pieces(trajectory, tokenizer, dialect):
        if piece.kind == "text" and piece.text.strip():
            cells.append(new_markdown_cell(piece.text.strip()))
        elif piece.kind == "code":
            source = piece.source
            call = next(calls, None) if piece.ran else None
            outputs = []
            if call is not None and call.code == source:
                if call.result.stdout:
                    outputs.append(new_output("stream", name="stdout", text=call.result.stdout))
                if call.result.stderr:
                    outputs.append(new_output("stream", name="stderr", text=call.result.stderr))
                if call.result.error:
                    name, _, value = call.result.error.partition(": ")
                    outputs.append(new_output("error", ename=name, evalue=value, traceback=[call.result.error]))
            cells.append(new_code_cell(source, outputs=outputs))
    return cells


def new_notebook_of(cells: list):
    """A validated Python 3 notebook holding ``cells``."""
    import nbformat
    from nbformat.v4 import new_notebook

    notebook = new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                                  "language": "python"}})
    nbformat.validate(notebook)
    return notebook
