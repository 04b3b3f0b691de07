"""``retool eval --strategy``: each problem searched once, graded, written as it ends, resumed."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from retool.datasets import Problem
from retool.evals.harness import EVAL_ROLLOUT
from retool.sandbox import SandboxPool  # noqa: F401 - the pool comes from the config's sandbox
from retool.search.search_eval import SearchEvalConfig, run_search_eval
from test_search_strategies import PROBLEM, Policy, TagVerifier

PROBLEMS = [Problem("p1", PROBLEM, "7")]


@pytest.mark.parametrize("strategy", ["best_of_n", "beam", "dvts", "mcts"])
def test_a_search_per_problem_is_graded_written_and_resumed(tmp_path, strategy):
    engine = Policy()
    rollout = replace(EVAL_ROLLOUT, max_total_tokens=400, few_shot=False)
    config = SearchEvalConfig(benchmark="constructed", strategy=strategy, n=4, m=2, rollout=rollout,
                              out=str(tmp_path / "run"), concurrency=1)
    results = run_search_eval(config, engine=engine, problems=PROBLEMS, verifier=TagVerifier(engine.tokenizer))
    (record,) = [json.loads(line) for line in (tmp_path / "run" / "search.jsonl").read_text().splitlines()]
    assert record["problem_id"] == "p1" and record["candidates"]
    assert record["correct"] == (record["answer"] == "7")
    assert results["problems"] == 1 and results["cost_per_problem"]["model_tokens"] > 0
    assert (tmp_path / "run" / "trees.jsonl").exists() == (strategy == "mcts")
    calls = len(engine.calls)
    again = run_search_eval(config, engine=engine, problems=PROBLEMS, verifier=TagVerifier(engine.tokenizer))
    assert len(engine.calls) == calls and again == results  # resumed: nothing searched twice
    with pytest.raises(ValueError, match="other settings"):
        run_search_eval(replace(config, n=2), engine=engine, problems=PROBLEMS, verifier=TagVerifier(engine.tokenizer))


def test_unknown_strategies_are_refused():
    with pytest.raises(ValueError, match="unknown strategy"):
        SearchEvalConfig(benchmark="x", strategy="greedy")


def test_a_budget_curve_is_one_search_run_per_budget_against_measured_tokens(tmp_path):
    from retool.search.curves import run_budget_curve

    engine = Policy()
    rollout = replace(EVAL_ROLLOUT, max_total_tokens=400, few_shot=False)
    config = SearchEvalConfig(benchmark="constructed", strategy="beam", m=2, rollout=rollout,
                              out=str(tmp_path / "curve"), concurrency=1)
    curve = run_budget_curve(config, [4, 2], engine=engine, problems=PROBLEMS, verifier=TagVerifier(engine.tokenizer))
    small, large = curve["points"]
    assert (small["n"], large["n"]) == (2, 4)
    assert 0 < small["model_tokens"] < large["model_tokens"]  # the x-axis is what the searches spent
    assert small["all_tokens"] > small["model_tokens"] and small["prefill_ratio"] > 0
    assert small["ci"][0] <= small["accuracy"] <= small["ci"][1]
    for n in (2, 4):
        assert json.loads((tmp_path / "curve" / f"n{n}" / "results.json").read_text())["config"]["n"] == n
    assert json.loads((tmp_path / "curve" / "curve.json").read_text()) == curve
    assert (tmp_path / "curve" / "curve.png").stat().st_size > 0
    with pytest.raises(ValueError, match="output directory"):
        run_budget_curve(replace(config, out=None), [2])


def test_retool_eval_strategy_from_the_command_line(tmp_path):
    """The CLI end to end: a real (tiny, random) hf model, a real sandbox, a budget curve; bad input refused."""
    from typer.testing import CliRunner

    from retool.cli import app
    from tiny import tiny_model

    model, tokenizer = tiny_model()
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    bench = tmp_path / "bench.jsonl"
    bench.write_text(json.dumps({"id": "p1", "problem": "What is 3+4?", "answer": "7"}) + "\n")
    runner = CliRunner()
    base = ["eval", "-b", str(bench), "--model", str(tmp_path / "model"), "--sandbox", "subprocess",
            "--max-total-tokens", "16", "--no-few-shot"]
    result = runner.invoke(app, [*base, "--strategy", "beam", "--search-n", "2,4", "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    curve = json.loads((tmp_path / "out" / "curve.json").read_text())
    assert [p["n"] for p in curve["points"]] == [2, 4] and "beam n=4" in result.output
    result = runner.invoke(app, [*base, "--strategy", "greedy"])
    assert result.exit_code != 0 and "unknown strategy" in result.output
    result = runner.invoke(app, [*base, "--strategy", "beam", "--search-n", "two"])
    assert result.exit_code != 0 and "--search-n takes numbers" in result.output
