"""The ``retool`` command. Each subcommand parses arguments and hands off to a library module."""

from __future__ import annotations

import json
import sys
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from retool.cli_training import register as register_training_commands
from retool.sandbox import BACKENDS, ExecResult, SandboxLimits, SandboxUnavailable
from retool.terminal import for_terminal

app = typer.Typer(help="Tool-integrated reasoning: models that think in text and run Python in a sandbox.", no_args_is_help=True)
sandbox_app = typer.Typer(help="Run, attack-test and benchmark the code sandboxes.", no_args_is_help=True)
app.add_typer(sandbox_app, name="sandbox")
coldstart_app = typer.Typer(help="Cold-start SFT data: verified code-integrated traces.", no_args_is_help=True)
app.add_typer(coldstart_app, name="coldstart")
bench_app = typer.Typer(help="Performance benchmarks (numbers printed, JSON with --json).", no_args_is_help=True)
app.add_typer(bench_app, name="bench")
register_training_commands(app)

console = Console()
err_console = Console(stderr=True)

BackendOption = typer.Option("jupyter", "--backend", "-b", help=f"Sandbox backend: {', '.join(BACKENDS)}.")
ModelOption = typer.Option(None, "--model", "-m", help="Local path, hub name, or the embedded default.")
EngineOption = typer.Option("hf", help="Engine: hf (transformers), vllm (GPU) or openai (a served model).")
BaseUrlOption = typer.Option(None, help="Base URL of an OpenAI-compatible server (engine openai).")
ApiKeyOption = typer.Option(None, envvar="OPENAI_API_KEY", help="API key for --base-url.")
SandboxOption = typer.Option("jupyter", help=f"Sandbox backend: {', '.join(BACKENDS)}.")
DialectOption = typer.Option("retool", help="Protocol dialect: retool (<code>…</code>) or fenced (```python).")


def _check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        err_console.print(f"[red]unknown backend {backend!r}[/red]; choose one of {', '.join(BACKENDS)}")
        raise typer.Exit(2)
    return backend


def _print_result(result: ExecResult) -> None:
    """The cell's output as text, its escape sequences shown rather than obeyed (``for_terminal``)."""
    if result.stdout:
        console.out(for_terminal(result.stdout), end="" if result.stdout.endswith("\n") else "\n", highlight=False)
    if result.stderr:
        err_console.out(for_terminal(result.stderr), end="" if result.stderr.endswith("\n") else "\n", highlight=False)
    colour = "green" if result.ok else "red"
    summary = f"[{colour}]{result.status.value}[/{colour}] in {result.duration_s * 1000:.1f} ms"
    if result.error:
        summary += f" — {escape(for_terminal(result.error))}"
    if result.session_reset:
        summary += " (interpreter restarted)"
    for note in result.notes:
        summary += f"\n[dim]sandbox: {escape(for_terminal(note))}[/dim]"
    err_console.print(summary, highlight=False)


@sandbox_app.command("run")
def sandbox_run(
    code: str = typer.Argument(..., help="Python code to run; '-' reads it from standard input."),
    backend: str = BackendOption,
    timeout: float = typer.Option(10.0, help="Wall-clock limit in seconds."),
    memory_mb: int = typer.Option(SandboxLimits.memory_mb, help="Memory limit in MiB."),
    json_output: bool = typer.Option(False, "--json", help="Print the ExecResult as JSON."),
) -> None:
    """Run CODE in a fresh sandbox session and print its output."""
    from retool.sandbox import create_session

    source = sys.stdin.read() if code == "-" else code
    limits = SandboxLimits(timeout_s=timeout, memory_mb=memory_mb)
    try:
        with create_session(_check_backend(backend), limits) as session:
            result = session.run(source)
    except SandboxUnavailable as exc:
        err_console.print(f"[red]sandbox unavailable:[/red] {escape(str(exc))}")
        raise typer.Exit(3)
    if json_output:
        console.print_json(json.dumps(result.to_dict()))
    else:
        _print_result(result)
    raise typer.Exit(0 if result.ok else 1)


@sandbox_app.command("check")
def sandbox_check(
    backend: str = BackendOption,
    attack: Optional[list[str]] = typer.Option(None, "--attack", "-a", help="Run only these attacks (repeatable)."),
    json_output: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Run the attack suite against a live backend; exit 1 if any attack was not contained."""
    from retool.sandbox.attacks import ATTACKS_BY_NAME, run_attack_suite
    from retool.sandbox.isolation import isolation_features

    unknown = [a for a in attack or [] if a not in ATTACKS_BY_NAME]
    if unknown:
        err_console.print(f"[red]unknown attack(s): {', '.join(unknown)}[/red]; known: {', '.join(ATTACKS_BY_NAME)}")
        raise typer.Exit(2)
    outcomes = []
    try:
        with console.status("running attacks…") if not json_output else _nothing():
            for outcome in run_attack_suite(_check_backend(backend), names=attack):
                outcomes.append(outcome)
                if not json_output:
                    mark = "[green]contained[/green]" if outcome.contained else "[red]NOT CONTAINED[/red]"
                    again = "[green]recovered[/green]" if outcome.recovered else "[red]NOT RECOVERED[/red]"
                    console.print(f"{outcome.name:<24} {mark}  {again}  {escape(for_terminal(outcome.detail))}",
                                  highlight=False, soft_wrap=True)
    except SandboxUnavailable as exc:
        err_console.print(f"[red]sandbox unavailable:[/red] {escape(str(exc))}")
        raise typer.Exit(3)
    failed = [o for o in outcomes if not (o.contained and o.recovered)]
    if json_output:
        report = {"backend": backend, "isolation": isolation_features(), "attacks": [o.to_dict() for o in outcomes]}
        console.print_json(json.dumps(report))
    else:
        console.print(f"{len(outcomes) - len(failed)}/{len(outcomes)} attacks contained with recovery")
    raise typer.Exit(1 if failed else 0)


@sandbox_app.command("bench")
def sandbox_bench(
    backend: str = BackendOption,
    samples: int = typer.Option(200, help="Cells per latency measurement."),
    seconds: float = typer.Option(3.0, help="Seconds per throughput measurement."),
    json_output: bool = typer.Option(False, "--json", help="Print the numbers as JSON."),
) -> None:
    """Session start, p50/p99 latency, pool throughput at 1/4/16, against the unisolated baseline."""
    from retool.sandbox.bench import run_sandbox_bench

    try:
        with console.status("benchmarking…") if not json_output else _nothing():
            report = run_sandbox_bench(_check_backend(backend), samples, seconds)
    except SandboxUnavailable as exc:
        err_console.print(f"[red]sandbox unavailable:[/red] {escape(str(exc))}")
        raise typer.Exit(3)
    if json_output:
        console.print_json(json.dumps(report))
        return
    table = Table(title=f"sandbox bench: {backend} vs. unisolated exec() pools")
    table.add_column("metric")
    for name in (backend, "released exec (new pool/call)", "persistent exec pool"):
        table.add_column(name, justify="right")
    rows = [report, report["baseline_released_exec"], report["baseline_persistent_exec"]]
    for key in ("start_s", "p50_ms", "p99_ms", "sympy_p50_ms", "sympy_p99_ms", "trajectory_ms",
                "throughput_c1", "throughput_c4", "throughput_c16"):
        table.add_row(key, *(f"{row[key]:.3f}" if key == "start_s" else f"{row[key]:.1f}" for row in rows))
    console.print(table)


@sandbox_app.command("reap")
def sandbox_reap() -> None:
    """Kill sandboxes left behind by retool processes that are gone (after a crash)."""
    from retool.sandbox.isolation import reap_orphans

    count = reap_orphans()
    try:
        from retool.sandbox.docker import reap_orphans as reap_containers

        count += reap_containers()
    except (ImportError, SandboxUnavailable):
        pass
    console.print(f"reaped {count} orphaned sandbox(es)")


@app.command("solve")
def solve(
    problem: str = typer.Argument(..., help="The problem to solve ('-' reads it from standard input)."),
    model: Optional[str] = ModelOption,
    engine: str = EngineOption,
    base_url: Optional[str] = BaseUrlOption,
    api_key: Optional[str] = ApiKeyOption,
    sandbox: str = SandboxOption,
    dialect: str = DialectOption,
    max_tool_calls: int = typer.Option(8, help="Most code executions in the answer."),
    max_tokens: int = typer.Option(1024, help="Most tokens after the prompt (model and interpreter)."),
    temperature: float = typer.Option(0.0, help="Sampling temperature (0: greedy)."),
    top_p: float = typer.Option(1.0, help="Nucleus sampling."),
    seed: int = typer.Option(0, help="Sampling seed."),
    timeout: float = typer.Option(10.0, help="Seconds per code execution."),
    json_output: bool = typer.Option(False, "--json", help="Print the trajectory as JSON."),
) -> None:
    """Solve PROBLEM with tool-integrated reasoning and print the interleaved transcript."""
    from retool.solve import SolveConfig, run_solve

    text = sys.stdin.read() if problem == "-" else problem
    config = SolveConfig(model=model, engine=engine, base_url=base_url, api_key=api_key, sandbox=_check_backend(sandbox),
                         dialect=dialect, max_tool_calls=max_tool_calls, max_tokens=max_tokens,
                         temperature=temperature, top_p=top_p, seed=seed, timeout=timeout)
    try:
        report = run_solve(text, config, console=None if json_output else console)
    except (SandboxUnavailable, ValueError, RuntimeError, ImportError) as exc:
        err_console.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(3)
    if json_output:
        console.print_json(json.dumps(report))


@app.command("chat")
def chat(
    model: Optional[str] = ModelOption,
    engine: str = EngineOption,
    base_url: Optional[str] = BaseUrlOption,
    api_key: Optional[str] = ApiKeyOption,
    sandbox: str = SandboxOption,
    dialect: str = DialectOption,
    max_tool_calls: int = typer.Option(8, help="Most code executions per answer."),
    max_tokens: int = typer.Option(1024, help="Most tokens per answer (model and interpreter)."),
    temperature: float = typer.Option(0.0, help="Sampling temperature (0: greedy)."),
    top_p: float = typer.Option(1.0, help="Nucleus sampling."),
    seed: int = typer.Option(0, help="Sampling seed."),
    timeout: float = typer.Option(30.0, help="Seconds per code execution."),
    system: Optional[str] = typer.Option(None, help="Extra system instructions, after the tool protocol's."),
) -> None:
    """Chat with a tool-integrated model; one sandbox session lasts the whole conversation."""
    from retool.chat import ChatConfig, run_chat

    config = ChatConfig(model=model, engine=engine, base_url=base_url, api_key=api_key, sandbox=_check_backend(sandbox),
                        dialect=dialect, max_tool_calls=max_tool_calls, max_tokens=max_tokens, temperature=temperature,
                        top_p=top_p, seed=seed, timeout=timeout, system=system)
    try:
        run_chat(config, console)
    except (SandboxUnavailable, ValueError, RuntimeError, ImportError) as exc:
        err_console.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(3)


@app.command("serve")
def serve(
    model: Optional[str] = ModelOption,
    engine: str = EngineOption,
    base_url: Optional[str] = BaseUrlOption,
    api_key: Optional[str] = ApiKeyOption,
    served_name: Optional[str] = typer.Option(None, help="Model id in /v1/models (default: the model's name)."),
    host: str = typer.Option("127.0.0.1", help="Interface to listen on."),
    port: int = typer.Option(8000, help="Port to listen on."),
    sandbox: str = SandboxOption,
    dialect: str = DialectOption,
    max_concurrency: int = typer.Option(4, help="Turns generated at once (more requests wait)."),
    max_tokens: int = typer.Option(2048, help="Most tokens a request may ask for (model and interpreter)."),
    max_tool_calls: int = typer.Option(8, help="Most code executions per request."),
    max_sessions: int = typer.Option(32, help="Most open sandbox sessions (conversations)."),
    max_sessions_per_client: Optional[int] = typer.Option(None, help="Most sessions of one client (token or address)."),
    session_ttl: float = typer.Option(600.0, help="Seconds of idleness after which a session is closed."),
    timeout: float = typer.Option(30.0, help="Seconds per code execution."),
    temperature: float = typer.Option(0.0, help="Temperature for requests that do not set one."),
    token: Optional[list[str]] = typer.Option(None, "--token", envvar="RETOOL_SERVE_TOKENS",
                                              help="Bearer token clients must send (repeatable; env: space-separated)."),
    max_body_bytes: int = typer.Option(2 << 20, help="Largest request body accepted (413 past it)."),
) -> None:
    """Serve the model over an OpenAI-compatible API that runs the tool loop server-side."""
    from retool.serve import ServeConfig, run_server

    config = ServeConfig(model=model, engine=engine, base_url=base_url, api_key=api_key, served_name=served_name,
                         sandbox=_check_backend(sandbox), dialect=dialect, host=host, port=port,
                         max_concurrency=max_concurrency, max_tokens=max_tokens,
                         default_max_tokens=min(1024, max_tokens), max_tool_calls=max_tool_calls,
                         max_sessions=max_sessions, session_ttl_s=session_ttl, sandbox_timeout=timeout,
                         temperature=temperature, tokens=tuple(token or ()),
                         max_sessions_per_client=max_sessions_per_client, max_body_bytes=max_body_bytes)
    try:
        run_server(config)
    except (SandboxUnavailable, ValueError, RuntimeError, ImportError) as exc:
        err_console.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(3)


@app.command("eval")
def evaluate(
    benchmark: str = typer.Option(..., "--benchmark", "-b", help="aime24, aime25, amc23, gsm8k, a .jsonl/.parquet path, or hf:NAME."),
    model: Optional[str] = ModelOption,
    engine: str = typer.Option("hf", help="Engine: hf, vllm or openai."),
    base_url: Optional[str] = BaseUrlOption,
    k: int = typer.Option(32, "-k", help="Samples per problem."),
    temperature: float = typer.Option(1.0, help="Sampling temperature (ReTool: 1.0)."),
    top_p: float = typer.Option(0.7, help="Nucleus sampling (ReTool: 0.7)."),
    max_tokens: int = typer.Option(4096, help="Token budget per response (model + interpreter)."),
    max_tool_calls: int = typer.Option(8, help="Most code executions per response."),
    sandbox: str = SandboxOption,
    dialect: str = typer.Option("retool", help="Protocol dialect: retool or fenced."),
    limit: Optional[int] = typer.Option(None, help="Only the first N problems."),
    out: Optional[str] = typer.Option(None, help="Directory for results.json, trajectories.jsonl, report.md, plots (resumable)."),
    notebooks: bool = typer.Option(False, "--notebooks", help="Also write each trajectory as a Jupyter notebook."),
    seed: int = typer.Option(0, help="Sampling seed."),
    concurrency: int = typer.Option(16, help="Trajectories in flight (each holds one sandbox session)."),
    few_shot: bool = typer.Option(True, help="Show the one-shot demonstration (--no-few-shot for models trained without it)."),
) -> None:
    """Sample k answers per problem with tool use, grade them, and report avg@k / pass@k / maj@k."""
    from retool.evals.harness import EvalConfig, run_eval

    config = EvalConfig(benchmark=benchmark, model=model, engine=engine, base_url=base_url, k=k, temperature=temperature,
                        top_p=top_p, max_tokens=max_tokens, max_tool_calls=max_tool_calls, sandbox=_check_backend(sandbox),
                        dialect=dialect, limit=limit, out=out, notebooks=notebooks, seed=seed, concurrency=concurrency,
                        few_shot=few_shot)
    try:
        result = run_eval(config)
    except KeyboardInterrupt:
        where = f"; finished samples are in {out}/trajectories.jsonl: run the same command to resume" if out else ""
        err_console.print(f"[yellow]interrupted[/yellow]{where}")
        raise typer.Exit(130)
    except (SandboxUnavailable, ValueError, RuntimeError, ImportError) as exc:
        err_console.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(3)
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


@coldstart_app.command("synth")
def coldstart_synth(
    n: int = typer.Option(..., "--n", help="Problems to generate (held-out ones included)."),
    out: str = typer.Option(..., "--out", help="Directory for code.jsonl, text.jsonl, heldout.jsonl, stats.json."),
    seed: int = typer.Option(0, help="Generator seed: the same seed gives the same data."),
    split_heldout: float = typer.Option(0.1, help="Fraction held out (never for training)."),
    sandbox: str = typer.Option("jupyter", help=f"Sandbox backend for the verification: {', '.join(BACKENDS)}."),
) -> None:
    """Tool-necessary problems with code-integrated and text-only solutions, all verified."""
    from rich.progress import Progress

    from retool.coldstart.pipeline import SynthConfig, run_synth

    with Progress(console=err_console) as bar:
        task = bar.add_task("verifying", total=n)
        stats = run_synth(SynthConfig(n, out, seed, split_heldout, _check_backend(sandbox)),
                          progress=lambda done, total: bar.update(task, completed=done))
    console.print(f"train {stats['train']} · held out {stats['heldout']} · dropped {stats['dropped'] or 'none'} → {out}",
                  highlight=False)


@coldstart_app.command("rewrite")
def coldstart_rewrite(
    input: str = typer.Option(..., "--input", help="jsonl/json/parquet (question, solution, answer) or hf:NAME."),
    out: str = typer.Option(..., "--out", help="Directory for rewritten.jsonl, dataset/, stats.json (resumable)."),
    rewriter: str = typer.Option(..., "--rewriter", help="The rewriting model: a model name served at --base-url, "
                                                        "or with --engine hf/vllm a local path or hub name."),
    base_url: Optional[str] = typer.Option(None, help="OpenAI-compatible base URL of the rewriter."),
    api_key: Optional[str] = ApiKeyOption,
    engine: str = typer.Option("openai", help="openai (with --base-url), hf or vllm."),
    concurrency: int = typer.Option(4, help="Traces in flight."),
    limit: Optional[int] = typer.Option(None, help="Only the first N new traces."),
    max_tokens: int = typer.Option(4096, help="Most tokens per rewrite."),
    sandbox: str = SandboxOption,
) -> None:
    """Rewrite text solutions into code-integrated traces; keep only those that pass every check."""
    import asyncio

    from rich.progress import Progress

    from retool.coldstart.pipeline import ChatRewriter, EngineRewriter, RewriteConfig, run_rewrite

    local = None
    try:
        if engine == "openai":
            if not base_url:
                err_console.print("[red]error:[/red] --engine openai needs --base-url")
                raise typer.Exit(2)
            model_call = ChatRewriter(base_url, rewriter, api_key, max_tokens=max_tokens)
        else:
            from retool.engines import create_engine

            local = create_engine(engine, rewriter, max_batch=concurrency)
            model_call = EngineRewriter(local, max_tokens=max_tokens)
        with Progress(console=err_console) as bar:
            task = bar.add_task("rewriting", total=None)
            stats = asyncio.run(run_rewrite(
                RewriteConfig(input, out, concurrency, limit, _check_backend(sandbox)), model_call,
                progress=lambda done, total: bar.update(task, completed=done, total=total)))
    except (SandboxUnavailable, ValueError, RuntimeError, ImportError) as exc:
        err_console.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(3)
    finally:
        if local is not None:
            local.close()
    console.print(f"kept {stats['kept']} · dropped {stats['dropped'] or 'none'} → {out}", highlight=False)


@bench_app.command("grading")
def bench_grading(json_output: bool = typer.Option(False, "--json", help="Print the numbers as JSON.")) -> None:
    """Answers graded per second, and agreement with math-verify's default configuration."""
    from retool.grading_bench import print_report, run_grading_bench

    report = run_grading_bench()
    if json_output:
        console.print_json(json.dumps(report))
    else:
        print_report(report)


@bench_app.command("rollout")
def bench_rollout(
    problems: int = typer.Option(8, help="Problems (up to 8 built in)."),
    samples: int = typer.Option(4, help="Samples per problem."),
    max_tokens: int = typer.Option(320, help="Token budget per trajectory."),
    naive: int = typer.Option(4, help="Trajectories to run through the naive loop for comparison."),
    json_output: bool = typer.Option(False, "--json", help="Print the numbers as JSON."),
) -> None:
    """Embedded model on CPU: tokens/s, prefill ratio, engine idle share, speedup over a naive loop."""
    from retool.rollout_bench import as_dict, run_rollout_bench

    with console.status("running the rollout benchmark…") if not json_output else _nothing():
        report = as_dict(run_rollout_bench(problems, samples, max_tokens, naive))
    if json_output:
        console.print_json(json.dumps(report))
        return
    table = Table(title="rollout bench (embedded model, CPU)")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in report.items():
        table.add_row(key, f"{value:.3f}" if isinstance(value, float) else str(value))
    console.print(table)


@bench_app.command("serve")
def bench_serve(
    clients: list[int] = typer.Option([1, 4, 16], "--clients", help="Concurrency levels (repeatable)."),
    requests: int = typer.Option(2, help="Requests per client per level."),
    max_tokens: int = typer.Option(96, help="Token budget per request."),
    json_output: bool = typer.Option(False, "--json", help="Print the numbers as JSON."),
) -> None:
    """`retool serve` on the embedded model: requests/s and p50/p99 latency at 1, 4 and 16 clients."""
    from retool.serve_bench import run_serve_bench

    with console.status("running the server benchmark…") if not json_output else _nothing():
        report = run_serve_bench(tuple(clients), requests, max_tokens)
    if json_output:
        console.print_json(json.dumps(report))
        return
    table = Table(title=f"serve bench ({report['model']}, CPU, {max_tokens} tokens/request)")
    for column in ("clients", "requests", "errors", "requests_per_s", "p50_s", "p99_s", "tokens_per_s",
                   "tool_calls_per_request"):
        table.add_column(column, justify="right")
    for level in report["levels"]:
        table.add_row(*(str(level[c]) for c in ("clients", "requests", "errors", "requests_per_s", "p50_s", "p99_s",
                                                 "tokens_per_s", "tool_calls_per_request")))
    console.print(table)


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


if __name__ == "__main__":
    app()
