"""Reranking a real eval run (a scripted policy, a real Jupyter sandbox) end to end: step labels, a
PRM trained on them, and ``retool search rerank`` with the execution heuristic and the PRM —
selections by hand, curves over measured tokens, the report and its plots."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import yaml
from typer.testing import CliRunner

from retool.cli import app
from retool.datasets import Problem
from retool.engines.base import Completion, Engine
from retool.engines.spec import EngineSpec
from retool.evals.harness import EVAL_ROLLOUT, EvalConfig, run_eval
from retool.prm.labels import LabelConfig, label_run
from retool.search.rerank import RerankConfig, rerank
from tiny import tiny_model, tiny_tokenizer

P1 = Problem("p1", "What is 6*7?", "42")
P2 = Problem("p2", "What is 2+3?", "5")
CELL = "Compute.\n<code>\n```python\nprint(6 * 7)\n```\n</code>"


def answer(value) -> str:
    return f"So\n<answer>\n\\boxed{{{value}}}\n</answer>"


# p1: one sample computes 42 (right, backed by its cell), three guess 41 in text (wrong): majority is
# wrong, the execution heuristic's max is right; p2: four right guesses
FIRST = {"p1": [CELL, answer(41), answer(41), answer(41)], "p2": [answer(5)] * 4}


class Policy(Engine):
    name = "scripted"

    def __init__(self):
        self.tokenizer = tiny_tokenizer()
        self.first = {k: list(v) for k, v in FIRST.items()}

    async def agenerate(self, prompt_ids, params, stop=()):
        prompt = self.tokenizer.decode(prompt_ids)
        pid = "p1" if P1.problem in prompt else "p2"
        tail = prompt[prompt.rindex(P1.problem if pid == "p1" else P2.problem):]
        if "</interpreter>" in tail:
            text = answer(42)  # after its cell printed 42, the policy answers 42
        else:
            text = self.first[pid].pop(0) if self.first[pid] else answer(41 if pid == "p1" else 5)
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        hit = next((s for s in stop if text.endswith(s)), None)
        return Completion(ids, [-0.1] * len(ids), "stop" if hit else "eos", hit)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("rerank")
    model, tok = tiny_model()
    model.save_pretrained(root / "policy")
    tok.save_pretrained(root / "policy")
    config = EvalConfig(benchmark="constructed", engine=EngineSpec(model=str(root / "policy")), k=4,
                        out=str(root / "run"), concurrency=1, rollout=replace(EVAL_ROLLOUT, max_total_tokens=256))
    result = run_eval(config, engine=Policy(), problems=[P1, P2], show_progress=False)
    assert result.metrics["avg@4"] == pytest.approx((1 / 4 + 1) / 2) and result.metrics["maj@4"] == 0.5
    return root


def test_rerank_with_the_execution_heuristic_by_hand(run):
    results = rerank(RerankConfig(str(run / "run"), str(run / "exec"), ("exec",), resamples=200),
                     tokenizer=tiny_tokenizer())
    rep = results["verifiers"]["exec"]
    assert results["n"] == 4 and results["problems"] == 2
    acc = rep["accuracy"]
    assert acc["avg"] == pytest.approx(5 / 8) and acc["majority"] == 0.5
    assert acc["prm_last_max"] == 1.0  # p1: the supported 42 scores 1.0 against 0.5 for the guesses
    assert acc["prm_last_vote"] == 0.5  # p1: 41 gathers 3 × 0.5 = 1.5 against 42's 1.0
    # positives score 1.0 (once) and 0.5 (p2's four), negatives 0.5: (3 + 12 / 2) of 15 pairs ordered
    assert rep["auroc"]["last"] == pytest.approx(9 / 15)
    points = rep["curves"]
    assert sorted({p["n"] for p in points}) == [1, 2, 4]
    full = next(p for p in points if p["method"] == "prm_last_max" and p["n"] == 4)
    assert full["accuracy"] == 1.0
    one = next(p for p in points if p["method"] == "majority" and p["n"] == 1)
    four = next(p for p in points if p["method"] == "majority" and p["n"] == 4)
    assert four["model_tokens"] == pytest.approx(4 * one["model_tokens"])  # tokens measured, n × per sample
    assert one["tool_tokens"] > 0 and one["verifier_tokens"] == 0  # the heuristic reads no tokens
    diffs = rep["differences"]
    assert diffs["prm_last_max-avg@4"]["diff"] == pytest.approx(1.0 - 5 / 8)
    report = (run / "exec" / "report.md").read_text()
    assert "prm_last_max" in report and (run / "exec" / "scaling_exec.png").stat().st_size > 1000
    assert json.loads((run / "exec" / "results.json").read_text()) == results


def test_labels_then_a_prm_then_rerank_from_the_command_line(run):
    stats = label_run(LabelConfig(str(run / "run"), str(run / "labels"), mc=2), engine=Policy(), show_progress=False)
    # p1's guesses are one-step trajectories (no prefix to roll out), its computed one is right: no rollouts
    assert stats["trajectories"] == 8 and stats["rollouts"] == 0 and stats["positive_rate_by_step"]["0"] == 5 / 8
    recipe = run / "prm.yaml"
    recipe.write_text(yaml.safe_dump({"model": str(run / "policy"), "labels": [str(run / "labels")],
                                      "output_dir": str(run / "prm"), "max_steps": 3, "train_blocks": 0,
                                      "val_fraction": 0.0, "report_to": [], "learning_rate": 0.05}))
    result = CliRunner().invoke(app, ["prm", "train", "--recipe", str(recipe)])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(app, ["search", "rerank", "--run", str(run / "run"), "--out", str(run / "both"),
                                      "--verifier", "exec", "--verifier", str(run / "prm"),
                                      "--select", "majority,prm_last_max,prm_last_vote", "--resamples", "100"])
    assert result.exit_code == 0, result.output
    results = json.loads((run / "both" / "results.json").read_text())
    assert set(results["verifiers"]) == {"exec", "process:prm"}
    prm = results["verifiers"]["process:prm"]
    assert set(prm["accuracy"]) == {"avg", "majority", "prm_last_max", "prm_last_vote"}
    assert prm["tokens_per_problem"]["verifier_tokens"] > 0  # a learned verifier reads tokens: a cost
    assert (run / "both" / "scaling_process_prm.png").exists()


def test_rerank_refuses_unknown_selections_and_missing_runs(tmp_path):
    with pytest.raises(ValueError, match="unknown selection"):
        RerankConfig(str(tmp_path), str(tmp_path / "o"), ("exec",), ("best_guess",))
    result = CliRunner().invoke(app, ["search", "rerank", "--run", str(tmp_path), "--out", str(tmp_path / "o")])
    assert result.exit_code == 3 and "not a finished" in " ".join(result.output.split())


def test_prm_label_from_the_command_line_uses_the_runs_own_model(run):
    out = run / "cli_labels"
    result = CliRunner().invoke(app, ["prm", "label", "--run", str(run / "run"), "--out", str(out), "--mc", "1",
                                      "--limit", "2", "--concurrency", "1"])
    assert result.exit_code == 0, result.output
    assert "2 trajectories" in " ".join(result.output.split())
    assert json.loads((out / "config.json").read_text())["mc"] == 1
    result = CliRunner().invoke(app, ["prm", "label", "--run", str(run / "run"), "--out", str(out), "--mc", "2"])
    assert result.exit_code == 1 and "other settings" in " ".join(result.output.split())
