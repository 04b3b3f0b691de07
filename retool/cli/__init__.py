"""The ``retool`` command: one module per command group, each parsing arguments and handing off to
the library. Shared options (engine, sandbox, rollout) are made once from the settings' own fields
(``options``); errors print as one line and exit non-zero (``common.fail``)."""

from __future__ import annotations

import typer

from retool.cli import bench, coldstart, prm, run, sandbox, search, training

app = typer.Typer(help="Tool-integrated reasoning: models that think in text and run Python in a sandbox.",
                  no_args_is_help=True)


@app.callback()
def _root(verbose: bool = typer.Option(False, "--verbose", "-v", envvar="RETOOL_VERBOSE",
                                       help="Show the libraries' warnings and loading progress bars too.")) -> None:
    if not verbose:
        from retool.cli.common import quiet_libraries

        quiet_libraries()


run.register(app)
training.register(app)
app.add_typer(sandbox.app, name="sandbox")
app.add_typer(coldstart.app, name="coldstart")
app.add_typer(bench.app, name="bench")
app.add_typer(prm.app, name="prm")
app.add_typer(search.app, name="search")



def main() -> None:
    """The ``retool`` entry point: the app, with a missing optional install told as the
    ``pip install`` that fixes it (``retool.extras``)."""
    from retool.cli.common import err_console
    from retool.extras import install_hint

    try:
        app()
    except ModuleNotFoundError as exc:
        hint = install_hint(exc)
        if hint is None:
            raise
        err_console.print(f"error: {hint}", style="red", markup=False, highlight=False, soft_wrap=True)
        raise SystemExit(4) from None


__all__ = ["app", "main"]

