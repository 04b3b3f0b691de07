"""The commands that run a model with its interpreter: ``solve``, ``chat``, ``serve``, ``eval``.

Each takes the shared engine, sandbox and rollout options (``options.with_settings``) and hands
the built settings to its app; where a command deliberately differs from the library's defaults,
the difference is declared here, with why.
"""

from __future__ import annotations

import json
import sys
from typing import Optional

import typer
from rich.table import Table

from retool.cli.common import USER_ERRORS, console, err_console, fail
from retool.cli.options import defaults_of, with_settings
from retool.engines.spec import EngineSpec
from retool.evals.harness import EVAL_ROLLOUT
from retool.rollout import RolloutConfig
from retool.sandbox.spec import SandboxSpec


def register(app: typer.Typer) -> None:
    app.command("solve")(solve)
    app.command("chat")(chat)
    app.command("serve")(serve)
    app.command("eval")(evaluate)


@with_settings("engine", "sandbox", "rollout")
def solve(
    problem: str = typer.Argument(..., help="The problem to solve ('-' reads it from standard input)."),
    json_output: bool = typer.Option(False, "--json", help="Print the trajectory as JSON."),
    engine: EngineSpec = None, sandbox: SandboxSpec = None, rollout: RolloutConfig = None,
) -> None:
    """Solve PROBLEM with tool-integrated reasoning and print the interleaved transcript."""
    from retool.apps.solve import run_solve

    text = sys.stdin.read() if problem == "-" else problem
    try:
        report = run_solve(text, engine, sandbox, rollout, console=None if json_output else console)
    except (*USER_ERRORS, ImportError) as exc:
        raise fail(exc, 3) from None
    if json_output:
        console.print_json(json.dumps(report))


@with_settings("engine", "sandbox", "rollout")
def chat(
    system: Optional[str] = typer.Option(None, help="Extra system instructions, after the tool protocol's."),
    engine: EngineSpec = None, sandbox: SandboxSpec = None, rollout: RolloutConfig = None,
) -> None:
    """Chat with a tool-integrated model; one sandbox session lasts the whole conversation."""
    from retool.apps.chat import run_chat

    try:
        run_chat(engine, sandbox, rollout, console, system=system)
    except (*USER_ERRORS, ImportError) as exc:
        raise fail(exc, 3) from None


@with_settings("engine", "sandbox", "rollout")
def serve(
    served_name: Optional[str] = typer.Option(None, help="Model id in /v1/models (default: the model's name)."),
    host: str = typer.Option("127.0.0.1", help="Interface to listen on."),
    port: int = typer.Option(8000, help="Port to listen on."),
    max_concurrency: int = typer.Option(4, help="Turns generated at once (more requests wait)."),
    max_request_tokens: int = typer.Option(2048, help="The most a request's max_tokens may be (model and interpreter)."),
    max_sessions: int = typer.Option(32, help="Most open sandbox sessions (conversations)."),
    max_sessions_per_client: Optional[int] = typer.Option(None, help="Most sessions of one client (token or address)."),
    session_ttl: float = typer.Option(600.0, help="Seconds of idleness after which a session is closed."),
    token: Optional[list[str]] = typer.Option(None, "--token", envvar="RETOOL_SERVE_TOKENS",
                                              help="Bearer token clients must send (repeatable; env: space-separated)."),
    max_body_bytes: int = typer.Option(2 << 20, help="Largest request body accepted (413 past it)."),
    engine: EngineSpec = None, sandbox: SandboxSpec = None, rollout: RolloutConfig = None,
) -> None:
    """Serve the model over an OpenAI-compatible API that runs the tool loop server-side. The rollout
    options are what a request gets when it does not say (--max-tool-calls is also its cap)."""
    from retool.apps.serve import ServeConfig, run_server

    try:
        config = ServeConfig(engine=engine, sandbox=sandbox, rollout=rollout, served_name=served_name, host=host,
                             port=port, max_concurrency=max_concurrency, max_request_tokens=max_request_tokens,
                             max_sessions=max_sessions, max_sessions_per_client=max_sessions_per_client,
                             session_ttl_s=session_ttl, tokens=tuple(token or ()), max_body_bytes=max_body_bytes)
        run_server(config)
    except (*USER_ERRORS, ImportError) as exc:
        raise fail(exc, 3) from None


@with_settings("engine", "sandbox", "rollout", defaults=defaults_of(rollout=EVAL_ROLLOUT))  # ReTool's eval sampling
def evaluate(
    benchmark: str = typer.Option(..., "--benchmark", "-b",
                                  help="aime24, aime25, amc23, gsm8k, a .jsonl/.parquet path, or hf:NAME."),
    k: int = typer.Option(32, "-k", help="Samples per problem."),
    limit: Optional[int] = typer.Option(None, help="Only the first N problems."),
    out: Optional[str] = typer.Option(None, help="Directory for results.json, trajectories.jsonl, report.md, "
                                                 "plots (resumable)."),
    notebooks: bool = typer.Option(False, "--notebooks", help="Also write each trajectory as a Jupyter notebook."),
    concurrency: int = typer.Option(16, help="Trajectories in flight (each holds one sandbox session)."),
    strategy: str = typer.Option("sample", help="sample (k independent samples), or a search per problem: "
                                                "best_of_n, beam, dvts, mcts."),
    verifier: str = typer.Option("exec", help="Search: exec, a trained PRM's directory, or text-prm:PATH."),
    search_n: str = typer.Option("4", help="Search: candidates (best_of_n, beam, dvts; mcts runs 4 × N "
                                           "iterations); several (2,4,8) run one search per budget and write "
                                           "OUT/curve.json and curve.png: accuracy against measured tokens."),
    search_m: int = typer.Option(2, help="Search: children per kept prefix (beam, dvts) or per node (mcts)."),
    engine: EngineSpec = None, sandbox: SandboxSpec = None, rollout: RolloutConfig = None,
) -> None:
    """Sample k answers per problem with tool use, grade them, and report avg@k / pass@k / maj@k
    (or, with --strategy, search each problem and grade the selected answer)."""
    from retool.evals.harness import EvalConfig, run_eval

    if strategy != "sample":
        from retool.search.curves import run_budget_curve
        from retool.search.search_eval import SearchEvalConfig, run_search_eval

        try:
            budgets = [int(n) for n in search_n.split(",") if n.strip()]
            if not budgets:
                raise ValueError
        except ValueError:
            raise fail(ValueError(f"--search-n takes numbers of candidates, like 4 or 2,4,8: {search_n!r}"), 2) from None
        try:
            config = SearchEvalConfig(benchmark=benchmark, strategy=strategy, verifier=verifier, n=budgets[0],
                                      m=search_m, engine=engine, sandbox=sandbox, rollout=rollout, limit=limit,
                                      out=out, concurrency=max(1, concurrency // 4))
            if len(budgets) > 1:
                curve = run_budget_curve(config, budgets)
                for p in curve["points"]:
                    console.print(f"{strategy} n={p['n']}: accuracy {p['accuracy']:.4f} "
                                  f"[{p['ci'][0]:.3f}, {p['ci'][1]:.3f}], {p['model_tokens']:.0f} model tokens "
                                  f"per problem ({p['all_tokens']:.0f} in all)")
                console.print(f"curve: {out}/curve.json, {out}/curve.png")
                return
            results = run_search_eval(config)
        except KeyboardInterrupt:
            err_console.print(f"[yellow]interrupted[/yellow]; finished searches are in {out}: run it again to resume")
            raise typer.Exit(130) from None
        except (*USER_ERRORS, ImportError) as exc:
            raise fail(exc, 3) from None
        cost = ", ".join(f"{k} {v:.1f}" for k, v in results["cost_per_problem"].items())
        console.print(f"{strategy}: accuracy {results['accuracy']:.4f} on {results['problems']} problems, "
                      f"pass@candidates {results['pass@candidates']:.4f}; per problem: {cost}")
        return

    config = EvalConfig(benchmark=benchmark, engine=engine, sandbox=sandbox, rollout=rollout, k=k, limit=limit,
                        out=out, notebooks=notebooks, concurrency=concurrency)
    try:
        result = run_eval(config)
    except KeyboardInterrupt:
        where = f"; finished samples are in {out}/trajectories.jsonl: run the same command to resume" if out else ""
        err_console.print(f"[yellow]interrupted[/yellow]{where}")
        raise typer.Exit(130) from None
    except (*USER_ERRORS, ImportError) as exc:
        raise fail(exc, 3) from None
    table = Table(title=f"{benchmark}: {len(result.per_problem)} problems × {k} samples")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in {**result.metrics, **{k2: v for k2, v in result.analytics.items() if isinstance(v, float)}}.items():
        table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    console.print(table)
    if result.metrics.get("infra_failures"):
        again = "run the same command again to retry them" if out else "pass --out to keep the rest and retry them"
        err_console.print(f"[yellow]{result.metrics['infra_failures']} sample(s) were stopped by infrastructure "
                          f"failures (sandbox, engine or host) and not scored; {again}[/yellow]")
    if out:
        console.print(f"results: {out}/results.json, report: {out}/report.md")
