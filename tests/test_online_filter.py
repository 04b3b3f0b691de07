"""Online prompt filtering's bookkeeping by hand: which groups are kept, full batches only, surplus
carried to the next step, what was dropped counted."""

from __future__ import annotations

import pytest

from retool.training.online_filter import FilterBuffer, OnlineFilter


def test_groups_outside_the_accuracy_window_are_dropped():
    f = OnlineFilter(accuracy=(0.2, 0.8))
    assert f.keeps([1, 0, 0, 0]) and f.keeps([1, 1, 1, 0]) and f.keeps([1, 0])
    assert not f.keeps([1, 1, 1, 1]) and not f.keeps([0, 0, 0, 0]) and not f.keeps([])
    assert not OnlineFilter(accuracy=(0.3, 0.7)).keeps([1, 0, 0, 0])  # 0.25 < 0.3
    assert f.to_sample(3) == 6 and OnlineFilter(oversample=1.0).to_sample(3) == 3
    with pytest.raises(ValueError):
        OnlineFilter(accuracy=(0.8, 0.2))


def test_the_buffer_fills_whole_batches_and_carries_the_surplus():
    buf = FilterBuffer(OnlineFilter())
    offers = [("a", [1, 1, 1, 1]), ("b", [1, 0, 1, 0]), ("c", [0, 0, 0, 0]), ("d", [0, 0, 0, 1])]
    kept = [buf.offer(g, r) for g, r in offers]
    assert kept == [False, True, False, True]
    assert buf.take(3) is None and buf.needed(3) == 1  # not enough yet: sample another round
    buf.offer("e", [1, 0, 0, 0])
    buf.offer("f", [1, 1, 0, 0])
    assert buf.take(3) == ["b", "d", "e"]
    assert buf.kept == ["f"]  # carried to the next step
    assert buf.take(2) is None and buf.take(2, force=True) == ["f"]
    stats = buf.stats()
    assert stats["filter/offered"] == 6 and stats["filter/dropped"] == 2
    assert stats["filter/dropped_all_correct"] == 1 and stats["filter/dropped_all_wrong"] == 1
    assert stats["filter/kept_share"] == pytest.approx(4 / 6)


def _round(outcomes: dict[str, list[bool]], calls: list[tuple[list[str], int]]):
    """A sampler whose groups' outcomes are given per problem (real ScoredSamples, no model)."""
    from retool.grading import ScoredSample, Verdict
    from retool.training.rl_rollout import RolloutBatch, summarize
    from retool.trajectory import Trajectory

    def sample_round(problems, round_):
        calls.append(([p.id for p in problems], round_))
        samples = []
        for p in problems:
            for k, right in enumerate(outcomes[p.id]):
                traj = Trajectory([1], [5], [1], [0.0], finish_reason="answer")
                samples.append(ScoredSample(p, k, traj, Verdict(p.answer, right, "string"), 1.0 if right else -1.0))
        return RolloutBatch(samples, summarize(samples, 2))

    return sample_round


def test_trls_batch_is_filled_from_its_own_prompts_then_seeded_draws_and_padded_when_short():
    """The TRL side (``grpo.filtered_batch``): its prompts open round 0, further prompts are drawn
    from the problem set (the same ones for the same step: resume-safe), the step always hands TRL
    as many groups as it asked for, and rows it pads with sit outside the loss."""
    from retool.datasets import Problem
    from retool.training.grpo import filtered_batch

    problems = [Problem(f"p{i}", f"problem {i}", "1") for i in range(6)]
    outcomes = {"p0": [True, True], "p1": [True, False], "p2": [False, False], "p3": [True, False],
                "p4": [False, False], "p5": [True, True]}
    settings = OnlineFilter(accuracy=(0.5, 0.5), oversample=1.0, max_rounds=20)
    calls: list = []
    batch, stats, padded = filtered_batch(FilterBuffer(settings), [problems[0], problems[2]], problems, 2, seed=0,
                                          step=3, sample_round=_round(outcomes, calls))
    assert calls[0] == (["p0", "p2"], 0) and all(r == i for i, (_, r) in enumerate(calls))
    assert {s.problem_id for s in batch.samples} <= {"p1", "p3"} and len(batch.samples) == 4 and not padded
    again: list = []
    filtered_batch(FilterBuffer(settings), [problems[0], problems[2]], problems, 2, 0, 3, _round(outcomes, again))
    assert again == calls  # the same step draws the same problems
    never = OnlineFilter(accuracy=(0.9, 1.0), oversample=1.0, max_rounds=2)
    batch, stats, padded = filtered_batch(FilterBuffer(never), [problems[1], problems[2]], problems, 2, 0, 3,
                                          _round({**outcomes, "p0": [False, False], "p5": [False, True]}, []))
    assert len(batch.samples) == 4 and padded == {0, 1, 2, 3} and stats["filter/padded_groups"] == 2
