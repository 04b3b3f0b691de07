"""``retool prm``: automatic step labels through the sandbox, and PRM training. Argument parsing only."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from retool.cli.common import USER_ERRORS, console, fail
from retool.cli.options import with_settings
from retool.engines.spec import EngineSpec
from retool.sandbox.spec import SandboxSpec

app = typer.Typer(help="Process reward models: step labels from Monte-Carlo continuations, and training.",
                  no_args_is_help=True)


@app.command("label")
@with_settings("engine", "sandbox")
def label(
    run: Path = typer.Option(..., "--run", help="A finished `retool eval --out` directory."),
    out: Path = typer.Option(..., "--out", help="Where labels.jsonl and stats.json go (resumable)."),
    mc: int = typer.Option(4, "--mc", help="Continuations per evaluated step prefix."),
    method: str = typer.Option("linear", help="linear (every prefix) or binary (OmegaPRM: search for the first bad step)."),
    mc_correct: bool = typer.Option(False, "--mc-correct", help="Roll out prefixes of correct trajectories too "
                                                                "(else their labels are their outcome)."),
    concurrency: int = typer.Option(8, help="Continuations in flight (each may hold a sandbox session)."),
    limit: Optional[int] = typer.Option(None, help="Only the first N trajectories of the run."),
    engine: EngineSpec = None, sandbox: SandboxSpec = None,
) -> None:
    """Label every step of a run's trajectories with the share of correct continuations from it.
    The run's own engine, sampling and sandbox are used unless engine / sandbox options are given."""
    from retool.models import ModelNotFound
    from retool.prm.labels import LabelConfig, label_run

    try:
        config = LabelConfig(str(run), str(out), mc=mc, method=method, mc_correct=mc_correct,
                             engine=None if engine == EngineSpec() else engine,
                             sandbox=None if sandbox == SandboxSpec() else sandbox,
                             concurrency=concurrency, limit=limit)
        stats = label_run(config)
    except KeyboardInterrupt:
        console.print(f"interrupted; labelled trajectories are in {out}/labels.jsonl: run the same command to resume")
        raise typer.Exit(130) from None
    except (*USER_ERRORS, ModelNotFound) as exc:
        raise fail(exc, 3 if isinstance(exc, (FileNotFoundError, ModelNotFound)) else 1) from None
    console.print(f"{stats['trajectories']} trajectories, {stats['labels']} step labels, {stats['rollouts']} rollouts "
                  f"({stats['rollouts_per_label']:.2f} per label), positive rate {stats['positive_rate']:.3f}, "
                  f"replay mismatch rate {stats['replay_mismatch_rate']:.3f} → {out}/labels.jsonl")


@app.command("train")
def train(recipe: Path = typer.Option(..., "--recipe", "-r", help="A YAML recipe (training/recipes/prm_*.yaml)."),
          output_dir: Optional[str] = typer.Option(None, "--output-dir", "-o", help="Override the recipe's output_dir."),
          model: Optional[str] = typer.Option(None, "--model", "-m", help="Override the recipe's model.")) -> None:
    """Train a verifier on step labels: objective process (PRM), outcome (ORM) or implicit (PRIME).
    Rerun to resume; Ctrl-C saves."""
    from retool.models import ModelNotFound
    from retool.prm.train import train_prm
    from retool.training.interrupt import StopRequest
    from retool.training.recipe import PRMRecipe, RecipeError, load_recipe

    try:
        config = load_recipe(recipe, PRMRecipe, output_dir=output_dir, model=model)
    except RecipeError as exc:
        raise fail(exc, 2) from None
    try:
        with StopRequest() as stop:
            result = train_prm(config, stop=stop)
    except (*USER_ERRORS, ModelNotFound) as exc:
        raise fail(exc, 1) from None
    if result.stopped:
        console.print(f"stopped at step {result.steps}; checkpoint saved — run the same command to resume")
        raise typer.Exit(130)
    shown = ", ".join(f"{k} {v:.3f}" for k, v in result.metrics.items() if isinstance(v, float))
    console.print(f"{config.objective}: {result.steps} steps → {result.output_dir}/prm ({shown or 'no validation split'})")
