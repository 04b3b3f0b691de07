"""The `retool sandbox` commands, end to end against real sandboxes."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from retool.cli import app

runner = CliRunner()


def test_sandbox_run_prints_output_and_exits_zero():
    result = runner.invoke(app, ["sandbox", "run", "x = 6\nx * 7"])
    assert result.exit_code == 0, result.output
    assert "42" in result.stdout


def test_sandbox_run_reads_stdin_and_reports_errors_as_json():
    result = runner.invoke(app, ["sandbox", "run", "--backend", "subprocess", "--json", "-"], input="1/0\n")
    assert result.exit_code == 1
    payload = json.loads(result.stdout)
    assert payload["status"] == "error" and payload["error"] == "ZeroDivisionError: division by zero"


def test_unknown_backend_is_a_usage_error():
    result = runner.invoke(app, ["sandbox", "run", "--backend", "nope", "1"])
    assert result.exit_code == 2
    assert "unknown sandbox backend" in result.output


def test_sandbox_check_json_schema():
    result = runner.invoke(app, ["sandbox", "check", "-a", "busy_loop", "-a", "os_exit", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["backend"] == "jupyter"
    assert [a["name"] for a in report["attacks"]] == ["busy_loop", "os_exit"]
    for attack in report["attacks"]:
        assert set(attack) >= {"name", "contained", "recovered", "detail"}
        assert attack["contained"] is True and attack["recovered"] is True


def test_sandbox_check_rejects_unknown_attacks():
    result = runner.invoke(app, ["sandbox", "check", "-a", "no_such_attack"])
    assert result.exit_code == 2


def test_sandbox_bench_json_has_the_documented_keys():
    result = runner.invoke(
        app, ["sandbox", "bench", "--backend", "subprocess", "--samples", "4", "--seconds", "0.3", "--json"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    for key in ("p50_ms", "p99_ms", "throughput_c1", "throughput_c4", "throughput_c16", "start_s", "sympy_p50_ms"):
        assert report[key] > 0, key
    assert report["baseline_released_exec"]["p50_ms"] > 0
    assert report["baseline_persistent_exec"]["throughput_c4"] > 0


def test_sandbox_run_shows_terminal_escapes_instead_of_obeying_them():
    import subprocess
    import sys
    from pathlib import Path

    code = "print('\\x1b]52;c;cHduZWQ=\\x07\\x1b[2J\\x9b31m\\u202eevil\\rover')"
    retool = Path(sys.executable).with_name("retool")
    done = subprocess.run([str(retool), "sandbox", "run", "--backend", "subprocess", code],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert not any(c in done.stdout for c in "\x1b\x07\x9b\u202e\r")  # nothing a terminal would act on
    assert "\\x1b]52;c;cHduZWQ=\\x07\\x1b[2J\\x9b31m\\u202eevil\\x0dover" in done.stdout  # all of it, visible


def test_for_terminal_keeps_text_newlines_and_tabs():
    from retool.terminal import for_terminal

    assert for_terminal("naïve ∑\tdone\r\nnext\n") == "naïve ∑\tdone\nnext\n"
    assert for_terminal("\x1b[31mred\x08") == "\\x1b[31mred\\x08"


def test_sandbox_check_json_reports_the_jail_layers():
    result = runner.invoke(app, ["sandbox", "check", "-a", "take_over_pid1", "--json"])
    assert result.exit_code == 0, result.output
    isolation = json.loads(result.stdout)["isolation"]
    assert isolation["seccomp"] is True and isolation["seccomp_error"] is None
    assert isolation["pid1"] == "the sandboxed program" and "userns" in isolation and "jail_uid" in isolation


def test_nested_option_defaults_are_the_settings_own():
    """``--temperature`` defaults to the rollout's greedy 0, not to SamplingParams' own 1.0 (which made
    ``retool solve`` sample the embedded model at temperature 1)."""
    from retool.cli.options import GROUPS, _options
    from retool.rollout import RolloutConfig

    cls, only_cli = GROUPS["rollout"]
    defaults = {o.name: o.default for o in _options("rollout", cls, only_cli)}
    assert defaults["temperature"] == RolloutConfig().sampling.temperature == 0.0
    assert defaults["top_p"] == RolloutConfig().sampling.top_p
