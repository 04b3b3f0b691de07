"""What every ``retool`` command module shares: the consoles and the one way a command fails."""

from __future__ import annotations

import os
import warnings

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


# libraries whose advisory output (deprecation notices, load-time progress bars) a user of retool
# did not ask for; ``retool --verbose`` keeps all of it
QUIET_MODULES = ("transformers", "torch", "trl", "peft", "accelerate", "datasets", "huggingface_hub", "jupyter_client")


def quiet_libraries() -> None:
    """Only what retool itself prints: the libraries' warnings and load-time progress bars are off
    (set before they are imported; training keeps its own step progress bar)."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    for category in (FutureWarning, DeprecationWarning, UserWarning):
        for module in QUIET_MODULES:
            warnings.filterwarnings("ignore", category=category, module=rf"{module}(\..*)?")
