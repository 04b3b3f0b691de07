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
