"""`retool solve` end to end: the embedded model with a real sandbox, and the CLI's JSON."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from retool.cli import app
from retool.apps.solve import run_solve
from retool.engines.spec import EngineSpec
from retool.rollout import RolloutConfig
from retool.sandbox.spec import SandboxSpec
from tiny import tiny_model

SAMPLE = "What is the remainder when 2 to the power 100 is divided by 97?"


def test_the_embedded_default_solves_the_demo_problem_with_the_interpreter():
    """What `make demo` runs: the shipped adapter, prompted by its card, writes code, reads the
    interpreter's 16 and boxes it."""
    result = CliRunner().invoke(app, ["solve", SAMPLE, "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output[result.output.index("{"):])
    calls = report["tool_calls"]
    assert calls, report["text"]
    assert calls[0]["result"]["status"] == "ok" and calls[0]["result"]["stdout"].strip() == str(pow(2, 100, 97))
    # the interpreter's tokens are masked, the model's are not
    start, end = calls[0]["output_span"]
    assert set(report["loss_mask"][start:end]) == {0} and report["loss_mask"][0] == 1
    assert report["answer"] == "16" and report["finish_reason"] == "answer"
    assert report["config"]["rollout"]["few_shot"] is False  # the card's prompt, not the library default


def test_the_bare_base_stays_reachable_and_follows_the_fenced_demonstration():
    report = run_solve(SAMPLE, EngineSpec(model="smollm2-135m-instruct"), SandboxSpec(),
                       RolloutConfig(dialect="fenced", max_total_tokens=256))
    calls = report["tool_calls"]
    assert calls and calls[0]["result"]["stdout"].strip() == str(pow(2, 100, 97)), report["text"]


def test_cli_solve_json_with_a_local_model(tmp_path):
    model, tokenizer = tiny_model()
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    result = CliRunner().invoke(
        app, ["solve", "What is 2+2?", "--model", str(tmp_path), "--max-total-tokens", "24", "--sandbox", "subprocess", "--json"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["finish_reason"] in ("length", "eos", "answer", "max_tool_calls")
    assert len(report["ids"]) == len(report["loss_mask"]) == len(report["logprobs"]) <= 24
    assert report["config"]["engine"]["model"] == str(tmp_path)


def test_cli_solve_reports_a_missing_model_clearly(tmp_path):
    result = CliRunner().invoke(app, ["solve", "1+1", "--model", str(tmp_path / "nowhere")])
    assert result.exit_code == 3
    assert "nowhere" in result.output


def test_cli_solve_in_the_chat_dialect_with_a_tool_calling_template(tmp_path):
    from tiny import tiny_chat_tokenizer

    tokenizer = tiny_chat_tokenizer("qwen2_5")
    model, _ = tiny_model(tokenizer=tokenizer)
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    result = CliRunner().invoke(app, ["solve", "What is 2+2?", "--model", str(tmp_path), "--dialect", "chat",
                                      "--max-total-tokens", "24", "--sandbox", "subprocess", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["config"]["rollout"]["dialect"] == "chat"
    prompt = tokenizer.decode(report["prompt_ids"], skip_special_tokens=False)
    assert '"name": "python"' in prompt and prompt.endswith("<|im_start|>assistant\n")  # the tool, declared by the template


def test_cli_solve_refuses_a_template_without_tools_and_names_the_fix():
    result = CliRunner().invoke(app, ["solve", "1+1", "--dialect", "chat"])  # SmolLM2's template has no tools
    assert result.exit_code == 3, result.output  # a user error, like a missing model
    assert "does not render tools" in result.output and "--chat-template" in result.output
