"""``retool coldstart``: verified code-integrated SFT data (``synth``, ``rewrite``, ``convert``)."""

from __future__ import annotations

from typing import Optional

import typer

from retool.cli.common import USER_ERRORS, console, err_console, fail
from retool.cli.options import with_settings
from retool.engines.spec import EngineSpec
from retool.sandbox.spec import SandboxSpec

DIALECT_HELP = "Dialect of the data written (traces are made in ReTool's, then converted and verified again)."

app = typer.Typer(help="Cold-start SFT data: verified code-integrated traces.", no_args_is_help=True)


@app.command("synth")
@with_settings("sandbox")
def coldstart_synth(
    n: int = typer.Option(..., "--n", help="Problems to generate (held-out ones included)."),
    out: str = typer.Option(..., "--out", help="Directory for code.jsonl, text.jsonl, heldout.jsonl, stats.json."),
    seed: int = typer.Option(0, help="Generator seed: the same seed gives the same data."),
    split_heldout: float = typer.Option(0.1, help="Fraction held out (never for training)."),
    dialect: str = typer.Option("retool", help=DIALECT_HELP),
    families: str = typer.Option("synth", help="Which generator: synth (seven tight families), general "
                                              "(eighteen broad kinds of computation, varied wording) or multistep "
                                              "(two or three dependent cells per solution)."),
    sandbox: SandboxSpec = None,
) -> None:
    """Tool-necessary problems with code-integrated and text-only solutions, all verified."""
    from rich.progress import Progress

    from retool.coldstart.pipeline import SynthConfig, run_synth

    with Progress(console=err_console) as bar:
        task = bar.add_task("verifying", total=n)
        try:
            stats = run_synth(SynthConfig(n, out, seed, split_heldout, sandbox, dialect, families),
                              progress=lambda done, total: bar.update(task, completed=done))
        except USER_ERRORS as exc:
            raise fail(exc, 3) from None
    console.print(f"train {stats['train']} · held out {stats['heldout']} · dropped {stats['dropped'] or 'none'} → {out}",
                  highlight=False)


# the rewriter is usually a large model on a server: --engine openai, not the library's hf default
@app.command("rewrite")
@with_settings("engine", "sandbox", defaults={"engine": "openai"})
def coldstart_rewrite(
    input: str = typer.Option(..., "--input", help="jsonl/json/parquet (question, solution, answer) or hf:NAME."),
    out: str = typer.Option(..., "--out", help="Directory for rewritten.jsonl, dataset/, stats.json (resumable)."),
    concurrency: int = typer.Option(4, help="Traces in flight."),
    limit: Optional[int] = typer.Option(None, help="Only the first N new traces."),
    max_new_tokens: int = typer.Option(4096, help="Most tokens the rewriter writes per trace."),
    dialect: str = typer.Option("retool", help=DIALECT_HELP),
    engine: EngineSpec = None, sandbox: SandboxSpec = None,
) -> None:
    """Rewrite text solutions into code-integrated traces; keep only those that pass every check.
    The rewriter is --model (served at --base-url, or a local model with --engine hf|vllm)."""
    import asyncio

    from rich.progress import Progress

    from retool.coldstart.pipeline import RewriteConfig, make_rewriter, run_rewrite

    local = None
    try:
        rewriter, local = make_rewriter(engine, max_new_tokens, concurrency)
        with Progress(console=err_console) as bar:
            task = bar.add_task("rewriting", total=None)
            stats = asyncio.run(run_rewrite(
                RewriteConfig(input, out, concurrency, limit, sandbox, dialect), rewriter,
                progress=lambda done, total: bar.update(task, completed=done, total=total)))
    except (*USER_ERRORS, ImportError) as exc:
        raise fail(exc, 3) from None
    finally:
        if local is not None:
            local.close()
    console.print(f"kept {stats['kept']} · dropped {stats['dropped'] or 'none'} → {out}", highlight=False)


@app.command("convert")
@with_settings("sandbox")
def coldstart_convert(
    input: str = typer.Option(..., "--input", help="A cold-start jsonl file (any dialect; each trace's is detected)."),
    to: str = typer.Option(..., "--to", help="The dialect to write: retool, fenced, or chat (tool-call conversations)."),
    out: str = typer.Option(..., "--out", help="Directory: OUT/<input's name> gets the converted traces."),
    model: str = typer.Option(None, "--model", help="--to chat: the model (or tokenizer folder) whose chat "
                                                   "template must render the conversations exactly."),
    chat_template: str = typer.Option(None, "--chat-template", help="--to chat: a Jinja chat template file to "
                                                                   "render them with instead of the model's own."),
    sandbox: SandboxSpec = None,
) -> None:
    """Write verified traces in another dialect; every converted trace is run and verified again."""
    from rich.progress import Progress

    from retool.coldstart.convert import ConvertConfig, convert_file

    with Progress(console=err_console) as bar:
        task = bar.add_task("converting", total=None)
        try:
            stats = convert_file(ConvertConfig(input, to, out, sandbox, model, chat_template),
                                 progress=lambda done, total: bar.update(task, completed=done, total=total))
        except USER_ERRORS as exc:
            raise fail(exc, 3) from None
    console.print(f"kept {stats['kept']} · dropped {stats['dropped'] or 'none'} → {out}", highlight=False)
