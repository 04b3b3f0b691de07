"""What every ``retool`` command module shares: the consoles and the one way a command fails."""

from __future__ import annotations

import typer
from rich.console import Console

console = Console()
err_console = Console(stderr=True)

# the library's own errors a command reports (as text) instead of a traceback
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, RuntimeError, OSError)


def fail(exc: BaseException, code: int) -> typer.Exit:
    """Print the error (as text: messages hold brackets such as ``retool[gpu]``) and exit ``code``."""
    err_console.print(f"error: {exc}", style="red", markup=False, highlight=False)
    return typer.Exit(code)


class nothing:
    """A context manager that does nothing (in place of a spinner when printing JSON)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
