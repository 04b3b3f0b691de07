"""GRPO-RoC (rStar2-Agent's Resample-on-Correct): hand-computed selections and penalties, and one
real RL sampling step (scripted policy, real sandbox, real grading) that draws 2G and keeps G."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from retool.protocol import get_dialect
from retool.sandbox.base import ExecResult, ExecStatus
from retool.training.roc import (ResampleOnCorrect, answers_written, format_problems, resample_on_correct,
                                 tool_error_share, trace_penalty)
from retool.trajectory import Trajectory
from tiny import tiny_tokenizer

OK, ERR = ExecResult(ExecStatus.OK), ExecResult(ExecStatus.ERROR, error="ZeroDivisionError: division by zero")
PARSE = ExecResult(ExecStatus.ERROR, error="SyntaxError: '(' was never closed")


def _traj(*results: ExecResult) -> Trajectory:
    traj = Trajectory([1])
    for result in results:
        traj.append_model([5, 6])
        start, end = traj.append_tool([7])
        traj.record_tool_call("x", result, start, (start, end))
    return traj


def test_the_cleanest_correct_traces_are_kept_in_the_sampled_proportion():
    correct = [True, False, True, False, True, False, True, False]
    penalties = [0.5, 9.0, 0.0, 9.0, 1.0, 9.0, 0.25, 9.0]
    for seed in range(20):
        kept = resample_on_correct(correct, penalties, keep=4, rng=random.Random(seed))
        # 4 of 8 right → 2 of 4 kept right: the two lowest penalties (indices 2 and 6); 2 wrong at random
        assert [i for i in kept if correct[i]] == [2, 6]
        assert len([i for i in kept if not correct[i]]) == 2 and kept == sorted(kept)


def test_wrong_traces_are_kept_uniformly_whatever_their_penalty():
    correct = [False] * 8
    penalties = [0.0, 5.0, 5.0, 5.0, 5.0, 5.0, 5.0, 5.0]
    seen = Counter(i for seed in range(200) for i in resample_on_correct(correct, penalties, 2, random.Random(seed)))
    assert set(seen) == set(range(8))  # the penalised ones are kept as often as chance says
    assert max(seen.values()) < 2.5 * min(seen.values())


@pytest.mark.parametrize("correct,right", [([True] + [False] * 7, 1),  # 4·1/8 = 0.5 → 1
                                           ([True] * 7 + [False], 3),  # 4·7/8 = 3.5 → 4, capped at 3: one wrong stays
                                           ([True] * 8, 4), ([False] * 8, 0),
                                           ([True, True, False, False, False, False, False, False], 1)])
def test_the_kept_share_of_right_answers_follows_the_sample_and_keeps_the_spread(correct, right):
    kept = resample_on_correct(correct, [0.0] * len(correct), 4, random.Random(0))
    assert len(kept) == 4 and sum(correct[i] for i in kept) == right


def test_unscored_traces_fill_in_only_when_too_few_were_scored():
    assert resample_on_correct([True, None, False, None, None], [0.0] * 5, 3, random.Random(0)) == [0, 1, 2]
    assert None not in [[True, None, False, True, False][i] for i in
                        resample_on_correct([True, None, False, True, False], [0.0] * 5, 3, random.Random(0))]
    with pytest.raises(ValueError):
        resample_on_correct([True], [0.0, 1.0], 1, random.Random(0))
    with pytest.raises(ValueError, match="oversample"):
        ResampleOnCorrect(oversample=1)


def test_penalties_are_the_error_share_plus_one_for_a_format_problem():
    assert tool_error_share(_traj(OK, ERR)) == 0.5 and tool_error_share(_traj(OK, OK)) == 0.0
    assert tool_error_share(_traj()) == 0.5  # no call at all: rStar2's convention
    assert trace_penalty(_traj(OK, OK), answers=1) == 0.0
    assert trace_penalty(_traj(OK, ERR, ERR, OK), answers=1) == 0.5
    assert format_problems(_traj(OK, PARSE), answers=1) == 1 and trace_penalty(_traj(OK, PARSE), answers=1) == 1.5
    assert format_problems(_traj(OK), answers=3) == 2 and trace_penalty(_traj(OK), answers=3) == 1.0  # capped at +1
    assert trace_penalty(_traj(OK, PARSE), answers=2) == 1.5


def test_answers_are_counted_in_the_models_own_tokens():
    tok = tiny_tokenizer()
    traj = Trajectory([1])
    traj.append_model(tok.encode("<answer>\n\\boxed{1}\n</answer> or <answer>\\boxed{2}</answer>", add_special_tokens=False))
    traj.append_tool(tok.encode("<answer>\\boxed{3}</answer>", add_special_tokens=False))  # the interpreter's: not counted
    assert answers_written(traj, tok, get_dialect("retool")) == 2
    assert answers_written(traj, tok, get_dialect("fenced")) == 2  # the box stands in the prose


def test_an_rl_step_draws_twice_the_group_and_keeps_the_clean_correct_trace(tmp_path):
    """Per problem, four scripted traces are drawn for a group of two: right with one clean call,
    right after a failing call, wrong after a call, wrong without one. RoC keeps one right (the
    clean one) and one wrong, and logs what it saw."""
    from scripted import EOS, ScriptedEngine

    from retool.datasets import Problem
    from retool.training.rl_rollout import sample
    from test_training import _rl_recipe

    def code(source: str) -> str:
        return f"<code>\n```python\n{source}\n```\n</code>"

    def answer(value: int) -> str:
        return f"<answer>\n\\boxed{{{value}}}\n</answer>" + EOS

    variants = [[code("print(3 + 4)"), answer(7)], [code("1 / 0"), code("print(3 + 4)"), answer(7)],
                [code("print(3 + 5)"), answer(8)], [answer(9)]]
    started = []

    def respond(text: str) -> str:
        turn_text = text.split("<|im_start|>assistant")[-1]
        turn = turn_text.count("</interpreter>")
        if turn == 0:
            started.append(len(started) % len(variants))
            return variants[started[-1]][0]
        _, which = min((turn_text.find(v[0]), i) for i, v in enumerate(variants) if v[0] in turn_text)
        return variants[which][turn]

    from tiny import tiny_model

    model, tok = tiny_model()
    recipe = _rl_recipe(tmp_path, "dapo", group_size=2, prompts_per_step=1, rollout={"max_total_tokens": 600},
                        resample_on_correct={"oversample": 2})
    with recipe.sandbox.pool(size=4) as pool:
        batch = sample(model, tok, pool, [Problem("a", "What is 3 plus 4?", "7")], recipe, step=0,
                       engine=ScriptedEngine(respond=respond))
    assert len(started) == 4 and len(batch.samples) == 2
    right = [s for s in batch.samples if s.correct]
    assert len(right) == 1 and [c.result.ok for c in right[0].trajectory.tool_calls] == [True]
    scalars = batch.metrics.as_scalars()
    assert scalars["roc/accuracy_sampled"] == 0.5 and scalars["accuracy"] == 0.5
    assert scalars["roc/penalty_kept_correct"] == 0.0 and scalars["roc/penalty_dropped_correct"] == 0.5
