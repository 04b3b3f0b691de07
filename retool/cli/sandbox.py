"""``retool sandbox``: run code in a sandbox, attack-test a backend, benchmark it, reap leftovers."""

from __future__ import annotations

import json
import sys
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from retool.cli.common import console, err_console, fail, nothing
from retool.cli.options import with_settings
from retool.sandbox import ExecResult, SandboxUnavailable
from retool.sandbox.remote import TOKEN_ENV
from retool.sandbox.spec import SandboxSpec
from retool.terminal import for_terminal

app = typer.Typer(help="Run, attack-test and benchmark the code sandboxes.", no_args_is_help=True)
JsonOption = typer.Option(False, "--json", help="Print the result as JSON.")


def print_result(result: ExecResult) -> None:
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


@app.command("run")
@with_settings("sandbox")
def sandbox_run(
    code: str = typer.Argument(..., help="Python code to run; '-' reads it from standard input."),
    json_output: bool = JsonOption,
    sandbox: SandboxSpec = None,
) -> None:
    """Run CODE in a fresh sandbox session and print its output."""
    source = sys.stdin.read() if code == "-" else code
    try:
        with sandbox.session() as session:
            result = session.run(source)
    except SandboxUnavailable as exc:
        raise fail(exc, 3) from None
    if json_output:
        console.print_json(json.dumps(result.to_dict()))
    else:
        print_result(result)
    raise typer.Exit(0 if result.ok else 1)


@app.command("check")
@with_settings("sandbox")
def sandbox_check(
    attack: Optional[list[str]] = typer.Option(None, "--attack", "-a", help="Run only these attacks (repeatable)."),
    json_output: bool = JsonOption,
    sandbox: SandboxSpec = None,
) -> None:
    """Run the attack suite against a live backend; exit 1 if any attack was not contained."""
    from retool.sandbox.attacks import ATTACKS_BY_NAME, run_attack_suite
    from retool.sandbox.isolation import isolation_features

    unknown = [a for a in attack or [] if a not in ATTACKS_BY_NAME]
    if unknown:
        raise fail(ValueError(f"unknown attack(s): {', '.join(unknown)}; known: {', '.join(ATTACKS_BY_NAME)}"), 2)
    outcomes = []
    try:
        with console.status("running attacks…") if not json_output else nothing():
            for outcome in run_attack_suite(sandbox, names=attack):
                outcomes.append(outcome)
                if not json_output:
                    mark = "[green]contained[/green]" if outcome.contained else "[red]NOT CONTAINED[/red]"
                    again = "[green]recovered[/green]" if outcome.recovered else "[red]NOT RECOVERED[/red]"
                    console.print(f"{outcome.name:<24} {mark}  {again}  {escape(for_terminal(outcome.detail))}",
                                  highlight=False, soft_wrap=True)
    except SandboxUnavailable as exc:
        raise fail(exc, 3) from None
    failed = [o for o in outcomes if not (o.contained and o.recovered)]
    if json_output:
        report = {"backend": sandbox.backend, "isolation": isolation_features(),
                  "attacks": [o.to_dict() for o in outcomes]}
        console.print_json(json.dumps(report))
    else:
        console.print(f"{len(outcomes) - len(failed)}/{len(outcomes)} attacks contained with recovery")
    raise typer.Exit(1 if failed else 0)


@app.command("bench")
@with_settings("sandbox")
def sandbox_bench(
    samples: int = typer.Option(200, help="Cells per latency measurement."),
    seconds: float = typer.Option(3.0, help="Seconds per throughput measurement."),
    json_output: bool = JsonOption,
    sandbox: SandboxSpec = None,
) -> None:
    """Session start, p50/p99 latency, pool throughput at 1/4/16, against the unisolated baseline."""
    from retool.bench.sandbox import run_sandbox_bench

    try:
        with console.status("benchmarking…") if not json_output else nothing():
            report = run_sandbox_bench(sandbox, samples, seconds)
    except SandboxUnavailable as exc:
        raise fail(exc, 3) from None
    if json_output:
        console.print_json(json.dumps(report))
        return
    table = Table(title=f"sandbox bench: {sandbox.backend} vs. unisolated exec() pools")
    table.add_column("metric")
    for name in (sandbox.backend, "released exec (new pool/call)", "persistent exec pool"):
        table.add_column(name, justify="right")
    rows = [report, report["baseline_released_exec"], report["baseline_persistent_exec"]]
    for key in ("start_s", "p50_ms", "p99_ms", "sympy_p50_ms", "sympy_p99_ms", "trajectory_ms",
                "throughput_c1", "throughput_c4", "throughput_c16"):
        table.add_row(key, *(f"{row[key]:.3f}" if key == "start_s" else f"{row[key]:.1f}" for row in rows))
    console.print(table)


@app.command("serve")
@with_settings("sandbox")
def sandbox_serve(
    host: str = typer.Option("127.0.0.1", help="Interface to listen on (beyond loopback a token is required)."),
    port: int = typer.Option(8765, help="Port to listen on."),
    size: int = typer.Option(16, help="Interpreters at once: open sessions and one-shot requests together."),
    warm: Optional[int] = typer.Option(None, help="Interpreters started ahead of need (default: min(size, 4))."),
    idle_timeout: float = typer.Option(600.0, help="Seconds of idleness after which a session is closed."),
    token: Optional[list[str]] = typer.Option(None, "--token", envvar=TOKEN_ENV,
                                              help="Bearer token clients must send (repeatable; env: space-separated)."),
    sandbox: SandboxSpec = None,
) -> None:
    """Serve this machine's sandboxes over HTTP: a sessions API for the `remote` backend, and
    SandboxFusion's /run_code and /run_jupyter for verl / SkyRL's sandbox_fusion_url."""
    from retool.sandbox.service import ServiceConfig, serve

    try:
        config = ServiceConfig(sandbox=sandbox, host=host, port=port, size=size, warm=warm, idle_timeout_s=idle_timeout,
                               tokens=tuple(t for item in token or () for t in item.split()))
    except ValueError as exc:
        raise fail(exc, 2) from None
    serve(config)


@app.command("reap")
def sandbox_reap() -> None:
    """Kill sandboxes left behind by retool processes that are gone (after a crash)."""
    from retool.sandbox.isolation import reap_orphans

    count = reap_orphans()
    try:
        from retool.sandbox.docker_engine import reap_orphans as reap_containers

        count += reap_containers()
    except (ImportError, SandboxUnavailable):
        pass
    console.print(f"reaped {count} orphaned sandbox(es)")
