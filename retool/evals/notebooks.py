"""Each trajectory as a Jupyter notebook: reasoning as markdown, code as code cells carrying the
outputs the sandbox really produced (written with nbformat); the chat's ``/notebook`` uses the same cells. Code the model wrote but that never
ran (cut by the budget, or past the tool-call limit) becomes a code cell without outputs."""

from __future__ import annotations

from pathlib import Path

from retool.protocol import Dialect, get_dialect
from retool.transcript import pieces


def trajectory_cells(trajectory, tokenizer, dialect: Dialect) -> list:
    """Markdown cells for the reasoning, code cells (with their real outputs) for the blocks."""
    from nbformat.v4 import new_code_cell, new_markdown_cell, new_output

    cells = []
    calls = iter(trajectory.tool_calls)
    for piece in pieces(trajectory, tokenizer, dialect):
        if piece.kind == "text" and piece.text.strip():
            cells.append(new_markdown_cell(piece.text.strip()))
        elif piece.kind == "code":
            source = dialect.extract_code(piece.text) or piece.text
            call = next(calls, None)
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


def trajectory_notebook(sample, tokenizer, dialect_name: str):
    from nbformat.v4 import new_markdown_cell

    header = new_markdown_cell(f"**{sample.problem_id}** (sample {sample.sample}) — answer `{sample.answer}`, "
                               f"gold `{sample.gold}`, {'correct' if sample.correct else 'wrong'}")
    return new_notebook_of([header, *trajectory_cells(sample.trajectory, tokenizer, get_dialect(dialect_name))])


def write_notebooks(folder: Path, samples, tokenizer, dialect_name: str) -> None:
    import nbformat

    folder.mkdir(parents=True, exist_ok=True)
    for sample in samples:
        name = f"{sample.problem_id}-{sample.sample}.ipynb".replace("/", "_")
        nbformat.write(trajectory_notebook(sample, tokenizer, dialect_name), folder / name)
