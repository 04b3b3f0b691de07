"""The evaluation harness end to end: exact metrics on a constructed case, resume, report files."""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import replace

import nbformat
import pytest

from retool.datasets import Problem
from retool.engines.base import Completion, Engine
from retool.evals.harness import EVAL_ROLLOUT, EvalConfig, run_eval
from tiny import tiny_tokenizer

PROBLEMS = [Problem("p1", "What is 5 squared?", "25"), Problem("p2", "What is 3+4?", "7"),
            Problem("p3", "What is 10 squared?", "100")]
CODE = "<code>\n```python\nprint(5*5)\n```\n</code>"
FIRST_TURNS = {
    "p1": [CODE, "<answer>\\boxed{025}</answer>", "<answer>\\boxed{24}</answer>", "<answer>\\boxed{\\frac{50}{2}}</answer>"],
    "p2": ["<answer>\\boxed{3}</answer>", "<answer>\\boxed{3}</answer>", "<answer>\\boxed{7}</answer>", "I do not know.<|im_end|>"],
    "p3": ["<answer>\\boxed{1}</answer>", "<answer>\\boxed{2}</answer>", "<answer>\\boxed{3}</answer>", "<answer>\\boxed{4}</answer>"],
}


class ScriptedEngine(Engine):
    """Answers each problem's samples from its script (order-independent metrics); a continuation
    after the interpreter answers 25."""

    name = "scripted"

    def __init__(self):
        self.tokenizer = tiny_tokenizer()
        self.scripts = {pid: list(turns) for pid, turns in FIRST_TURNS.items()}
        self.calls = defaultdict(int)

    async def agenerate(self, prompt_ids, params, stop=()):
        prompt = self.tokenizer.decode(prompt_ids)
        if prompt.rstrip().endswith("</interpreter>"):  # a continuation (the few-shot example has one too)
            text = "<answer>\\boxed{25}</answer>"
        else:
            pid = next(p.id for p in PROBLEMS if p.problem in prompt)
            self.calls[pid] += 1
            text = self.scripts[pid].pop(0)
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        hit = next((s for s in stop if text.endswith(s)), None)
        return Completion(ids, [-0.1] * len(ids), "stop" if hit else "eos", hit)


def config(tmp_path, temperature: float = 1.0, **changes):
    rollout = replace(EVAL_ROLLOUT, max_total_tokens=256, sampling=EVAL_ROLLOUT.sampling.with_(temperature=temperature))
    return EvalConfig(**{"benchmark": "constructed", "k": 4, "out": str(tmp_path / "run"), "concurrency": 4,
                         "rollout": rollout, **changes})


def test_metrics_on_a_constructed_case(tmp_path):
    result = run_eval(config(tmp_path), engine=ScriptedEngine(), problems=PROBLEMS, show_progress=False)
    # p1: 25, 025, \frac{50}{2} right, 24 wrong -> 3/4, majority 25; p2: 1/4, majority 3 (wrong); p3: 0/4
    assert result.metrics["avg@4"] == pytest.approx((3 / 4 + 1 / 4 + 0) / 3)
    assert result.metrics["pass@4"] == pytest.approx((1 + 1 + 0) / 3)
    assert result.metrics["maj@4"] == pytest.approx(1 / 3)
    rows = {r["id"]: r for r in result.per_problem}
    assert rows["p1"]["correct"] == 3 and rows["p1"]["pass@1"] == pytest.approx(0.75) and rows["p1"]["maj_correct"]
    assert rows["p2"]["majority"] == "3" and not rows["p2"]["maj_correct"] and None in rows["p2"]["answers"]
    a = result.analytics
    assert a["responses"] == 12 and a["code_ratio"] == pytest.approx(1 / 12)
    assert a["code_pass_rate"] == 1.0 and a["last_code_pass_rate_correct"] == 1.0
    assert a["sandbox_status"] == {"ok": 1} and a["finish_reasons"] == {"answer": 11, "eos": 1}


def test_outputs_and_notebooks(tmp_path):
    run_eval(config(tmp_path, notebooks=True), engine=ScriptedEngine(), problems=PROBLEMS, show_progress=False)
    run = tmp_path / "run"
    results = json.loads((run / "results.json").read_text())
    assert results["metrics"]["avg@4"] == pytest.approx(1 / 3) and len(results["per_problem"]) == 3
    assert len((run / "trajectories.jsonl").read_text().splitlines()) == 12
    report = (run / "report.md").read_text()
    for png in ("per_problem_accuracy.png", "response_lengths.png", "tool_calls.png"):
        assert (run / png).stat().st_size > 1000 and f"]({png})" in report
    notebooks = sorted((run / "notebooks").glob("p1-*.ipynb"))
    assert len(notebooks) == 4
    cells = [c for nb in notebooks for c in nbformat.read(nb, as_version=4).cells if c.cell_type == "code"]
    assert [c.source for c in cells] == ["print(5*5)"]
    assert cells[0].outputs[0]["text"] == "25\n"  # the real output of the real sandbox


def test_an_interrupted_run_resumes_without_redoing_finished_samples(tmp_path):
    first = run_eval(config(tmp_path), engine=ScriptedEngine(), problems=PROBLEMS, show_progress=False)
    path = tmp_path / "run" / "trajectories.jsonl"
    lines = path.read_text().splitlines()
    kept = [line for line in lines if json.loads(line)["problem_id"] != "p3"]
    path.write_text("\n".join(kept) + "\n" + lines[-1][:40])  # p3 lost, and a half-written line
    engine = ScriptedEngine()
    second = run_eval(config(tmp_path), engine=engine, problems=PROBLEMS, show_progress=False)
    assert dict(engine.calls) == {"p3": 4}  # only the missing samples were generated
    assert second.metrics == first.metrics
    assert len(path.read_text().splitlines()) == 12


def test_resuming_with_other_settings_is_refused(tmp_path):
    run_eval(config(tmp_path), engine=ScriptedEngine(), problems=PROBLEMS, show_progress=False)
    with pytest.raises(ValueError, match="temperature"):
        run_eval(config(tmp_path, temperature=0.5), engine=ScriptedEngine(), problems=PROBLEMS, show_progress=False)


def test_the_embedded_model_on_two_aime_problems(tmp_path):
    rollout = replace(EVAL_ROLLOUT, max_total_tokens=96, dialect="fenced")
    result = run_eval(EvalConfig(benchmark="aime24", limit=2, k=2, rollout=rollout, concurrency=4,
                                 out=str(tmp_path / "aime")), show_progress=False)
    assert result.metrics["problems"] == 2 and result.metrics["samples"] == 4
    assert 0.0 <= result.metrics["avg@2"] <= 1.0
    saved = json.loads((tmp_path / "aime" / "results.json").read_text())
    assert [r["id"] for r in saved["per_problem"]] == [r["id"] for r in result.per_problem]
    assert all(len(r["answers"]) == 2 for r in saved["per_problem"])


def test_two_runs_cannot_write_one_directory_at_once(tmp_path):
    import fcntl

    run = tmp_path / "run"
    run.mkdir()
    with (run / ".lock").open("w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # another process's run, in effect
        with pytest.raises(ValueError, match="another retool eval"):
            run_eval(config(tmp_path), engine=ScriptedEngine(), problems=PROBLEMS, show_progress=False)
    assert run_eval(config(tmp_path), engine=ScriptedEngine(), problems=PROBLEMS, show_progress=False).metrics["samples"] == 12
