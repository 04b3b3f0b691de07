"""Automatic step labels on a scripted policy with known continuations: exact soft and hard labels,
the binary search's evaluated prefixes, resume, and distinct seeds per branch."""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import replace

import pytest

from retool.datasets import Problem
from retool.engines.base import Completion
from retool.evals.harness import EVAL_ROLLOUT, EvalConfig, run_eval
from retool.evals.run_dir import load_run
from retool.prm.labels import LabelConfig, Labeller, label_run, load_labels
from retool.rollout import Rollout
from retool.sandbox import SandboxPool
from retool.search.steps import steps
from scripted import ScriptedEngine

WRONG = Problem("w", "What is 6*7+1?", "43")
RIGHT = Problem("r", "What is 2+3?", "5")


def cell(code: str) -> str:
    return f"Compute.\n<code>\n```python\n{code}\n```\n</code>"


def answer(value: int) -> str:
    return f"So\n<answer>\n\\boxed{{{value}}}\n</answer>"


class Policy(ScriptedEngine):
    """The sampled trajectory of WRONG prints 42, 44, 45, 46 and answers 46 (five steps). After 42
    the policy writes, in turn, the wrong cell (the original sample) and then right, wrong, right,
    wrong (so a prefix through step 1 completes correctly 2 times in 4); after 43 it answers 43;
    after 44 or more it keeps going wrong. RIGHT is one cell and a correct answer. Records seeds."""

    def __init__(self):
        super().__init__(respond=self.reply)
        self.after_42 = [cell("print(x + 2)"), cell("print(43)"), cell("print(44)"), cell("print(43)"),
                         cell("print(44)")] * 3
        self.seeds: list[int | None] = []

    def reply(self, prompt: str) -> str:
        if RIGHT.problem in prompt:
            tail = prompt[prompt.rindex(RIGHT.problem):]
            return answer(5) if "</interpreter>" in tail else cell("print(2 + 3)")
        tail = prompt[prompt.rindex(WRONG.problem):]
        outputs = re.findall(r"<interpreter>\n(.*?)\n</interpreter>", tail)
        last = int(outputs[-1]) if outputs else None
        if last is None:
            return cell("x = 6 * 7\nprint(x)")
        if last == 42:
            return self.after_42.pop(0)
        if last == 43:
            return answer(43)
        return cell(f"print({last + 1})") if last < 46 else answer(46)

    def _next(self, prompt_ids, params, stop) -> Completion:
        self.seeds.append(params.seed)
        return super()._next(prompt_ids, params, stop)


@pytest.fixture(scope="module")
def pool():
    with SandboxPool("jupyter", size=4) as pool:
        yield pool


def make_run(tmp_path, engine) -> str:
    rollout = replace(EVAL_ROLLOUT, max_total_tokens=512)
    config = EvalConfig(benchmark="constructed", k=1, out=str(tmp_path / "run"), concurrency=1, rollout=rollout)
    result = run_eval(config, engine=engine, problems=[WRONG, RIGHT], show_progress=False)
    assert result.metrics["avg@1"] == 0.5
    return config.out


def labels_of(out, problem_id):
    (row,) = [r for r in load_labels(f"{out}/labels.jsonl") if r.problem_id == problem_id]
    return row


def test_linear_labels_are_the_share_of_correct_continuations(tmp_path):
    engine = Policy()
    run = make_run(tmp_path, engine)
    traj = next(s for s in load_run(run).samples if s.problem_id == "w").trajectory
    assert len(steps(traj)) == 5
    stats = label_run(LabelConfig(run, str(tmp_path / "labels"), mc=4, concurrency=4), engine=engine,
                      show_progress=False)

    row = labels_of(tmp_path / "labels", "w")
    assert not row.correct
    assert [(lab.soft, lab.hard, lab.rollouts, lab.correct, lab.source) for lab in row.labels] == [
        (2 / 5, 1, 4, 2, "mc"),  # 2 of 4 continuations right, the trajectory's own wrong outcome the 5th
        (0.0, 0, 4, 0, "mc"), (0.0, 0, 4, 0, "mc"), (0.0, 0, 4, 0, "mc"),
        (0.0, 0, 0, 0, "outcome")]  # the last step's label is the outcome
    assert [lab.boundary for lab in row.labels] == [len(traj.prompt_ids) + s.end - 1 for s in steps(traj)]
    right = labels_of(tmp_path / "labels", "r")  # correct: every prefix led to a right answer, no rollouts
    assert [(lab.hard, lab.rollouts, lab.source) for lab in right.labels] == [(1, 0, "outcome")] * 2
    assert stats["rollouts"] == 16 and stats["labels"] == 7
    assert stats["rollouts_per_label"] == pytest.approx(16 / 7)
    assert stats["positive_rate_by_step"] == {"0": 1.0, "1": 0.5, "2": 0.0, "3": 0.0, "4": 0.0}
    assert stats["branches_replayed"] == 12 and stats["replay_mismatch_rate"] == 0.0  # after 46 it answers: no code, no replay
    assert json.loads((tmp_path / "labels" / "stats.json").read_text()) == stats


def test_binary_search_evaluates_log_k_prefixes_and_infers_the_rest(tmp_path, pool):
    engine = Policy()
    run = load_run(make_run(tmp_path, engine))
    sample = next(s for s in run.samples if s.problem_id == "w")
    config = LabelConfig(str(tmp_path / "run"), str(tmp_path / "labels"), mc=4, method="binary")
    labeller = Labeller(Rollout(engine, pool, run.config.rollout), pool, config, asyncio.Semaphore(4))
    row = asyncio.run(labeller.label(sample))
    assert [k for _, _, k in labeller.evaluated] == [2, 1]  # lo=0, hi=5: mid 2 fails, mid 1 completes
    assert [(lab.soft, lab.hard, lab.source) for lab in row.labels] == [
        (2 / 5, 1, "mc"), (0.0, 0, "mc"), (None, 0, "inferred"), (None, 0, "inferred"), (0.0, 0, "outcome")]
    assert sum(lab.rollouts for lab in row.labels) == 8  # against 16 for the linear method


def test_each_branch_has_its_own_seed(tmp_path, pool):
    engine = Policy()
    run = load_run(make_run(tmp_path, engine))
    sample = next(s for s in run.samples if s.problem_id == "w")
    config = LabelConfig(str(tmp_path / "run"), str(tmp_path / "labels"), mc=4)
    labeller = Labeller(Rollout(engine, pool, run.config.rollout), pool, config, asyncio.Semaphore(4))
    engine.seeds.clear()
    asyncio.run(labeller.continuations(sample, steps(sample.trajectory), 2))
    first_calls = engine.seeds[:4]  # each branch's first generation, from the same prefix
    assert len(set(first_calls)) == 4 and None not in first_calls


def test_labelling_resumes_and_refuses_other_settings(tmp_path):
    engine = Policy()
    run = make_run(tmp_path, engine)
    out = tmp_path / "labels"
    label_run(LabelConfig(run, str(out), mc=4, limit=1), engine=engine, show_progress=False)
    assert len(load_labels(out / "labels.jsonl")) == 1
    with (out / "labels.jsonl").open("a") as f:
        f.write('{"problem_id": "r", "sam')  # a crash mid-write
    stats = label_run(LabelConfig(run, str(out), mc=4), engine=engine, show_progress=False)
    assert stats["trajectories"] == 2 and len((out / "labels.jsonl").read_text().splitlines()) == 2
    with pytest.raises(ValueError, match="other settings"):
        label_run(LabelConfig(run, str(out), mc=2), engine=engine, show_progress=False)
    with pytest.raises(FileNotFoundError, match="not a finished"):
        label_run(LabelConfig(str(tmp_path), str(tmp_path / "x"), mc=2), engine=engine, show_progress=False)


class RandomPolicy(ScriptedEngine):
    """Samples a random number in its first cell, then answers wrong: every replay of that cell differs."""

    def __init__(self):
        super().__init__(respond=self.reply)

    def reply(self, prompt: str) -> str:
        tail = prompt[prompt.rindex(WRONG.problem):]
        if "</interpreter>" not in tail:
            return cell("import random\nprint(random.random())")
        if tail.count("</interpreter>") == 1:
            return cell("print(7)")
        return answer(7)


def test_a_prefix_whose_replays_all_differ_is_labelled_dropped_and_counted(tmp_path):
    engine = RandomPolicy()
    rollout = replace(EVAL_ROLLOUT, max_total_tokens=512)
    config = EvalConfig(benchmark="constructed", k=1, out=str(tmp_path / "run"), concurrency=1, rollout=rollout)
    run_eval(config, engine=engine, problems=[WRONG], show_progress=False)
    stats = label_run(LabelConfig(config.out, str(tmp_path / "labels"), mc=2), engine=engine, show_progress=False)
    (row,) = load_labels(tmp_path / "labels" / "labels.jsonl")
    # prefix 1 continues with print(7): its replay of the random cell differs, both branches dropped;
    # prefix 2 answers without running code: no replay, two wrong answers
    assert [(lab.source, lab.soft, lab.rollouts) for lab in row.labels] == [
        ("dropped", None, 0), ("mc", 0.0, 2), ("outcome", 0.0, 0)]
    assert row.mismatches == 2 and row.dropped == 2
    assert stats["replay_mismatches"] == 2 and stats["replay_mismatch_rate"] == 1.0
    assert stats["sources"]["dropped"] == 1
