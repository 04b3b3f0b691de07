"""``retool search``: verifier-guided selection over a finished run. Argument parsing only."""

from __future__ import annotations

from pathlib import Path

import typer

from retool.cli.common import USER_ERRORS, console, fail

app = typer.Typer(help="Verifiers and selection over sampled trajectories (OpenR's names).", no_args_is_help=True)


@app.command("rerank")
def rerank(
    run: Path = typer.Option(..., "--run", help="A finished `retool eval --out` directory."),
    out: Path = typer.Option(..., "--out", help="Where results.json, report.md and the curves go."),
    verifier: list[str] = typer.Option(["exec"], "--verifier", help="exec (the execution heuristic), a trained "
                                                                    "PRM's directory, or text-prm:PATH (an external "
                                                                    "PRM such as Qwen2.5-Math-PRM; repeatable)."),
    select: str = typer.Option(",".join(("majority", "orm_max", "orm_vote", "prm_min_max", "prm_min_vote",
                                         "prm_last_max", "prm_last_vote")),
                               "--select", help="Comma-separated selections."),
    subsets: int = typer.Option(8, help="Random subsets per budget n, for the scaling curves."),
    resamples: int = typer.Option(2000, help="Bootstrap resamples over problems."),
    seed: int = typer.Option(0, help="Seed of the subsets and the bootstrap."),
    device: str = typer.Option("cpu", help="Where a trained verifier runs (cpu, cuda)."),
) -> None:
    """Score every step of a run's samples with each verifier, compare selections at n = 1, 2, 4, …, N
    against measured tokens per problem, and write the report."""
    from retool.models import ModelNotFound
    from retool.search.rerank import RerankConfig
    from retool.search.rerank import rerank as run_rerank

    try:
        config = RerankConfig(str(run), str(out), tuple(verifier), tuple(s.strip() for s in select.split(",") if s.strip()),
                              subsets=subsets, resamples=resamples, seed=seed, device=device)
        results = run_rerank(config)
    except (*USER_ERRORS, ModelNotFound) as exc:
        raise fail(exc, 3 if isinstance(exc, (FileNotFoundError, ModelNotFound)) else 1) from None
    for name, rep in results["verifiers"].items():
        shown = ", ".join(f"{m} {a:.3f}" for m, a in rep["accuracy"].items())
        console.print(f"{name}: {shown}")
    console.print(f"report: {out}/report.md")
