"""``retool bench``: the performance benchmarks (numbers printed, JSON with ``--json``)."""

from __future__ import annotations

import json

import typer
from rich.table import Table

from retool.bench.rollout import BENCH_ROLLOUT
from retool.cli.common import console, nothing
from retool.cli.options import defaults_of, with_settings
from retool.engines.spec import EngineSpec
from retool.rollout import RolloutConfig
from retool.sandbox.spec import SandboxSpec

app = typer.Typer(help="Performance benchmarks (numbers printed, JSON with --json).", no_args_is_help=True)
JsonOption = typer.Option(False, "--json", help="Print the numbers as JSON.")


def print_numbers(title: str, report: dict) -> None:
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in report.items():
        table.add_row(key, f"{value:.3f}" if isinstance(value, float) else str(value))
    console.print(table)


@app.command("grading")
def bench_grading(rounds: int = typer.Option(3, help="Timed passes over the speed pairs."),
                  json_output: bool = JsonOption) -> None:
    """Answers graded per second, and agreement with math-verify's default configuration."""
    from retool.bench.grading import print_report, run_grading_bench

    report = run_grading_bench(rounds=rounds)
    if json_output:
        console.print_json(json.dumps(report))
    else:
        print_report(report)


# varied, seeded trajectories in the fenced dialect (the embedded model writes code in it)
@app.command("rollout")
@with_settings("sandbox", "rollout", defaults=defaults_of(rollout=BENCH_ROLLOUT))
def bench_rollout(
    problems: int = typer.Option(8, help="Problems (up to 8 built in)."),
    samples: int = typer.Option(4, help="Samples per problem."),
    naive: int = typer.Option(4, help="Trajectories to run through the naive loop for comparison."),
    json_output: bool = JsonOption,
    sandbox: SandboxSpec = None, rollout: RolloutConfig = None,
) -> None:
    """Embedded model on CPU: tokens/s, prefill ratio, engine idle share, speedup over a naive loop."""
    from retool.bench.rollout import as_dict, run_rollout_bench

    with console.status("running the rollout benchmark…") if not json_output else nothing():
        report = as_dict(run_rollout_bench(problems, samples, naive, rollout, sandbox))
    if json_output:
        console.print_json(json.dumps(report))
    else:
        print_numbers("rollout bench (embedded model, CPU)", report)


@app.command("serve")
@with_settings("engine")
def bench_serve(
    clients: list[int] = typer.Option([1, 4, 16], "--clients", help="Concurrency levels (repeatable)."),
    requests: int = typer.Option(2, help="Requests per client per level."),
    max_total_tokens: int = typer.Option(96, help="Each request's budget (model and interpreter tokens)."),
    json_output: bool = JsonOption,
    engine: EngineSpec = None,
) -> None:
    """`retool serve` on the embedded model: requests/s and p50/p99 latency at 1, 4 and 16 clients."""
    from retool.bench.serve import run_serve_bench

    with console.status("running the server benchmark…") if not json_output else nothing():
        report = run_serve_bench(tuple(clients), requests, max_total_tokens, engine=engine)
    if json_output:
        console.print_json(json.dumps(report))
        return
    table = Table(title=f"serve bench ({report['model']}, CPU, {max_total_tokens} tokens/request)")
    columns = ("clients", "requests", "errors", "requests_per_s", "p50_s", "p99_s", "tokens_per_s",
               "tool_calls_per_request")
    for column in columns:
        table.add_column(column, justify="right")
    for level in report["levels"]:
        table.add_row(*(str(level[c]) for c in columns))
    console.print(table)


@app.command("sandbox-service")
def bench_sandbox_service(
    sessions: int = typer.Option(64, help="Concurrent sessions."),
    cells: int = typer.Option(20, help="Cells per session."),
    backend: str = typer.Option("jupyter", help="The services' backend (and the local pool's)."),
    json_output: bool = JsonOption,
) -> None:
    """Sessions × cells through the local pool, one `retool sandbox serve` and two: cells/s, added
    latency per cell (p50/p99), lost or crossed results, memory per session."""
    from retool.bench.sandbox_service import run_service_bench

    with console.status("running the sandbox service benchmark…") if not json_output else nothing():
        report = run_service_bench(sessions, cells, backend)
    if json_output:
        console.print_json(json.dumps(report))
        return
    table = Table(title=f"sandbox service bench ({backend}, {sessions} sessions × {cells} cells)")
    columns = ("cells_per_s", "p50_ms", "p99_ms", "added_p50_ms", "added_p99_ms", "lost", "crossed",
               "memory_mib_per_session")
    table.add_column("path")
    for column in columns:
        table.add_column(column, justify="right")
    for name in ("local", "one_service", "two_services"):
        table.add_row(name, *(str(report[name].get(c, "")) for c in columns))
    console.print(table)
    serial = report["serial"]
    console.print(f"serial, cells alternating: local p50 {serial['local_p50_ms']} ms, through the service "
                  f"{serial['remote_p50_ms']} ms")
    console.print(f"service overhead p50 {report['service_overhead_p50_ms']} ms (target ≤ "
                  f"{report['target_p50_overhead_ms']} ms: {'met' if report['p50_overhead_met'] else 'missed'})")


@app.command("train")
@with_settings("engine")
def bench_train(
    batch: int = typer.Option(8, help="Sequences per step."),
    steps: int = typer.Option(3, help="Timed steps (after one warm-up step)."),
    json_output: bool = JsonOption,
    engine: EngineSpec = None,
) -> None:
    """Trained tokens per second of an SFT step and a PPO actor update (the --model, on the training
    device), and peak memory."""
    from retool.bench.train import run_train_bench

    with console.status("running the training benchmark…") if not json_output else nothing():
        report = run_train_bench(engine.model, batch, steps)
    if json_output:
        console.print_json(json.dumps(report))
    else:
        print_numbers("training bench", report)


@app.command("peer")
def bench_peer(
    problems: int = typer.Option(8, help="Problems (up to 8 built in)."),
    samples: int = typer.Option(4, help="Samples per problem (TRL: num_generations)."),
    max_total_tokens: int = typer.Option(320, help="Each trajectory's budget, model and tool tokens after the prompt "
                                                   "(TRL: max_completion_length)."),
    max_tool_calls: int = typer.Option(4, help="Most tool calls per trajectory (TRL: max_tool_calling_iterations)."),
    model: str = typer.Option(None, help="The model both sides run (default: peer-chat-smollm2, a SmolLM2 LoRA that "
                                         "calls the tool in this template, built on first use; 'embedded' for the "
                                         "embedded default)."),
    json_output: bool = JsonOption,
) -> None:
    """retool's rollout against TRL's own tool-calling generation (GRPOTrainer with tools=), same
    model, prompts, template, sampling, budgets and Jupyter sandbox: tokens/s each, speedup_vs_trl."""
    from retool.bench.peer import as_dict, peer_config, peer_model, run_peer_bench

    peer_model(model)  # the default model built (if it is not yet) before the spinner: it says so on stderr
    with console.status("running retool's rollout, then TRL's…") if not json_output else nothing():
        report = as_dict(run_peer_bench(problems, samples, peer_config(max_total_tokens, max_tool_calls), model=model))
    if json_output:
        console.print_json(json.dumps(report))
    else:
        print_peer(report)


def print_peer(report: dict) -> None:
    table = Table(title=f"peer bench ({report['model']}, CPU, {report['chat_template']}, "
                        f"{report['problems']} problems × {report['samples']} samples)")
    for column in ("metric", "retool", "trl"):
        table.add_column(column, justify="left" if column == "metric" else "right")
    for key, value in report["retool"].items():
        table.add_row(key, *(f"{v:.3f}" if isinstance(v, float) else str(v) for v in (value, report["trl"][key])))
    console.print(table)
    comparable = report["comparable"]
    console.print(f"speedup_vs_trl {report['speedup_vs_trl']:.2f}×; same prompts: {report['same_prompts']}; "
                  f"comparable ({comparable['tolerance']}): {comparable['within_tolerance']}")
    for note in report["notes"]:
        console.print(f"• {note}", markup=False)
