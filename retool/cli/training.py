"""The training subcommands of ``retool``: ``sft``, ``rl``, ``plot``. Argument parsing only."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from retool.cli.common import console, fail

RecipeOption = typer.Option(..., "--recipe", "-r", help="A YAML recipe (see training/recipes/).")
OutputOption = typer.Option(None, "--output-dir", "-o", help="Override the recipe's output_dir.")
ModelOverride = typer.Option(None, "--model", "-m", help="Override the recipe's model.")


def _load(path: Path, kind, **overrides):
    from retool.training.recipe import RecipeError, load_recipe

    try:
        return load_recipe(path, kind, **overrides)
    except RecipeError as exc:
        raise fail(exc, 2) from None


def sft(recipe: Path = RecipeOption, output_dir: Optional[str] = OutputOption,
        model: Optional[str] = ModelOverride) -> None:
    """Cold-start SFT (TRL SFTTrainer; prompt and interpreter tokens masked). Rerun to resume; Ctrl-C saves."""
    from retool.models import ModelNotFound
    from retool.training.recipe import SFTRecipe
    from retool.training.sft import run_sft
    from retool.training.sft_data import SFTDataError

    config = _load(recipe, SFTRecipe, output_dir=output_dir, model=model)
    try:
        result = run_sft(config)
    except (SFTDataError, ModelNotFound) as exc:
        raise fail(exc, 1) from None
    if result.interrupted:
        console.print(f"stopped at step {result.steps}; checkpoint saved — run the same command to resume")
        raise typer.Exit(130)
    console.print(f"trained {result.steps} steps on {result.examples} examples "
                  f"({result.trained_tokens} trained tokens) → {result.final_dir}")


def rl(recipe: Path = RecipeOption, output_dir: Optional[str] = OutputOption,
       model: Optional[str] = ModelOverride) -> None:
    """Tool-integrated RL: algorithm grpo | dapo (on TRL) or ppo (actor–critic). Rerun to resume; Ctrl-C saves."""
    from retool.datasets import DatasetError
    from retool.models import ModelNotFound
    from retool.sandbox import SandboxUnavailable
    from retool.training.recipe import RecipeError, RLRecipe
    from retool.training.rl import run_rl

    config = _load(recipe, RLRecipe, output_dir=output_dir, model=model)
    try:
        result = run_rl(config)
    except RecipeError as exc:  # asks for what this machine lacks (vLLM, a GPU)
        raise fail(exc, 2) from None
    except (DatasetError, ModelNotFound, SandboxUnavailable) as exc:
        raise fail(exc, 1) from None
    if result.interrupted:
        console.print(f"stopped at step {result.steps}; checkpoint saved — run the same command to resume")
        raise typer.Exit(130)
    console.print(f"{config.algorithm}: {result.steps} steps → {result.final_dir}")


def plot(run_dir: Path = typer.Argument(..., help="A training run's output_dir (holds metrics.jsonl)."),
         out: Optional[Path] = typer.Option(None, help="Where to write the PNGs (default RUN_DIR/plots).")) -> None:
    """Training curves as PNG files, from RUN_DIR/metrics.jsonl."""
    from retool.training.plot import NoMetricsError, plot_run

    try:
        paths = plot_run(run_dir, out)
    except NoMetricsError as exc:
        raise fail(exc, 1) from None
    for path in paths:
        console.print(str(path))


def register(app: typer.Typer) -> None:
    app.command("sft")(sft)
    app.command("rl")(rl)
    app.command("plot")(plot)
