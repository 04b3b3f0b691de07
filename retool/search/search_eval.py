"""``retool eval --strategy best_of_n|beam|dvts|mcts``: a benchmark where each answer is a search.

A problem's search is one unit: its record (the selected answer graded, every finished candidate
graded, the cost) is appended to ``OUT/search.jsonl`` as soon as it ends, and a rerun skips the
problems already there; ``mcts`` also writes its tree to ``OUT/trees.jsonl``. Many problems are
searched at once (``concurrency``), so the engine batches across them. ``OUT/results.json`` holds
the accuracy of the selected answers, pass@candidates, and the mean cost per problem (model and
interpreter tokens, cells, replayed cells, verifier tokens, prompt tokens sent and computed, wall
seconds) with the prefill ratio (prompt tokens computed ÷ distinct prefix tokens, over all searches).

Not here: the strategies (``strategies.py``, ``mcts.py``), plain sampling (``retool.evals.harness``).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from retool.datasets import Problem, load_benchmark
from retool.engines.spec import EngineSpec
from retool.evals.harness import EVAL_ROLLOUT, check_settings
from retool.grading import grade_trajectory
from retool.rollout import Rollout, RolloutConfig
from retool.sandbox.spec import SandboxSpec
from retool.search.mcts import MCTSSettings, mcts
from retool.search.strategies import STRATEGIES, SearchSettings
from retool.search.verifiers import build_verifier

SEARCHES = (*STRATEGIES, "mcts")


@dataclass(frozen=True)
class SearchEvalConfig:
    benchmark: str
    strategy: str = "best_of_n"
    verifier: str = "exec"  # exec, a trained PRM's directory, or text-prm:PATH
    n: int = 4  # candidates (best-of-N, beam, DVTS) or MCTS iterations ÷ 4
    m: int = 2  # beam / DVTS: children per kept prefix; MCTS: children per node
    max_steps: int = 8
    selection: str = "prm_last_max"
    engine: EngineSpec = EngineSpec()
    sandbox: SandboxSpec = SandboxSpec()
    rollout: RolloutConfig = EVAL_ROLLOUT
    limit: int | None = None
    out: str | None = None
    concurrency: int = 4  # problems searched at once

    def __post_init__(self) -> None:
        if self.strategy not in SEARCHES:
            raise ValueError(f"unknown strategy {self.strategy!r}; choose one of {', '.join(SEARCHES)}")

    def defining(self) -> dict[str, Any]:
        r, s = self.rollout, self.rollout.sampling
        return {"benchmark": self.benchmark, "model": self.engine.model, "strategy": self.strategy,
                "verifier": self.verifier, "n": self.n, "m": self.m, "max_steps": self.max_steps,
                "selection": self.selection, "dialect": r.dialect, "temperature": s.temperature, "top_p": s.top_p,
                "seed": s.seed, "max_total_tokens": r.max_total_tokens}


async def search_one(config: SearchEvalConfig, problem: Problem, rollout: Rollout, pool, verifier
                     ) -> tuple[dict[str, Any], dict | None]:
    """One problem's search, graded: (its record, its tree or None)."""
    prompt = rollout.prompt_ids(problem.problem)
    tree = None
    if config.strategy == "mcts":
        settings = MCTSSettings(iterations=4 * config.n, max_children=config.m, selection=config.selection)
        result, tree = await mcts(problem.problem, prompt, rollout, pool, verifier, settings, seed=problem.id)
    else:
        settings = SearchSettings(n=config.n, m=config.m if config.strategy != "best_of_n" else 1,
                                  max_steps=config.max_steps, selection=config.selection)
        result = await STRATEGIES[config.strategy](problem.problem, prompt, rollout, pool, verifier, settings,
                                                   seed=problem.id)
    verdicts = [grade_trajectory(t, rollout.tokenizer, rollout.dialect, problem.answer) for t in result.candidates]
    chosen = verdicts[result.selected] if result.selected is not None else None
    record = {"problem_id": problem.id, "gold": problem.answer, "answer": chosen.answer if chosen else None,
              "correct": bool(chosen and chosen.correct), "candidates": [
                  {"answer": v.answer, "correct": v.correct, "scores": s} for v, s in zip(verdicts, result.scores)],
              "cost": asdict(result.cost), "trajectories": [t.to_dict() for t in result.candidates]}
    return record, tree


def run_search_eval(config: SearchEvalConfig, engine=None, problems: list[Problem] | None = None,
                    verifier=None) -> dict[str, Any]:
    problems = problems if problems is not None else load_benchmark(config.benchmark, config.limit)
    out = Path(config.out) if config.out else None
    done: list[dict[str, Any]] = []
    if out is not None:
        check_settings(out, config.defining(), "a search run")
        path = out / "search.jsonl"
        if path.exists():
            done = read_records(out)
            path.write_text("".join(json.dumps(r) + "\n" for r in done))
    seen = {r["problem_id"] for r in done}
    owns = engine is None
    engine = engine or config.engine.build(max_batch=32)
    try:
        # a search holds up to n branch sessions at once (beam: every child of a round), each started
        # only when its branch runs code: size for all of them, keep a few warm
        with config.sandbox.pool(size=config.concurrency * max(config.n, config.m), warm=config.concurrency) as pool:
            rollout = Rollout(engine, pool, config.rollout)
            verifier = verifier or build_verifier(config.verifier, rollout.tokenizer, rollout.dialect)
            new = asyncio.run(_search_all(config, [p for p in problems if p.id not in seen], rollout, pool,
                                          verifier, out))
    finally:
        if owns:
            engine.close()
    results = summarize(done + new)
    if out is not None:
        (out / "results.json").write_text(json.dumps({"config": config.defining(), **results}, indent=2))
    return results


def read_records(out: str | Path) -> list[dict[str, Any]]:
    """The finished searches of a run directory (a line cut by a crash is skipped: searched again)."""
    path, records = Path(out) / "search.jsonl", []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            records.append(json.loads(line))
        except ValueError:
            pass
    return records


async def _search_all(config, todo, rollout, pool, verifier, out) -> list[dict[str, Any]]:
    gate = asyncio.Semaphore(config.concurrency)
    records: list[dict[str, Any]] = []
    sink = (out / "search.jsonl").open("a") if out is not None else None
    trees = (out / "trees.jsonl").open("a") if out is not None and config.strategy == "mcts" else None

    async def one(problem: Problem) -> None:
        async with gate:
            record, tree = await search_one(config, problem, rollout, pool, verifier)
        records.append(record)
        if sink is not None:
            sink.write(json.dumps(record) + "\n")
            sink.flush()
        if trees is not None and tree is not None:
            trees.write(json.dumps({"problem_id": problem.id, "tree": tree}) + "\n")
            trees.flush()

    try:
        await asyncio.gather(*(one(p) for p in todo))
    finally:
        for f in (sink, trees):
            if f is not None:
                f.close()
    return records


def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
    if not records:
        return {"problems": 0, "accuracy": 0.0, "pass@candidates": 0.0, "cost_per_problem": {}, "prefill_ratio": None}
    costs = [r["cost"] for r in records]
    return {"problems": len(records), "accuracy": sum(r["correct"] for r in records) / len(records),
            "pass@candidates": sum(any(c["correct"] for c in r["candidates"]) for r in records) / len(records),
            "cost_per_problem": {k: sum(c[k] for c in costs) / len(costs) for k in costs[0]},
            "prefill_ratio": _ratio(sum(c.get("prefilled_tokens", 0) for c in costs),
                                    sum(c.get("distinct_prefix_tokens", 0) for c in costs))}


def _ratio(computed: int, distinct: int) -> float | None:
    return computed / distinct if distinct else None
