"""Budget forcing in the loop (s1) with a scripted model and a real sandbox: the cap opens the answer
with exactly the dialect's tag (mask 0), a block cut by the cap never runs, an early answer is
suppressed exactly N times with "Wait", and the trajectory's invariants hold throughout."""

from __future__ import annotations

import pytest

from retool.engines.base import SamplingParams
from retool.grading import extract_answer_from_trajectory
from retool.rollout import Rollout, RolloutConfig
from retool.sandbox import SandboxPool
from retool.trajectory import Trajectory
from retool.trajectory_stats import trajectory_stats
from retool.budget import FORCED_OPENING
from scripted import EOS, ScriptedEngine
from tiny import tiny_chat_tokenizer

ANSWER = "\\boxed{7}\n</answer>"


@pytest.fixture(scope="module")
def pool():
    with SandboxPool("jupyter", size=1) as pool:
        yield pool


def run(pool, turns, **config):
    engine = ScriptedEngine(turns)
    settings = {"sampling": SamplingParams(temperature=0), "max_total_tokens": 400, **config}
    rollout = Rollout(engine, pool, RolloutConfig(**settings))
    traj = rollout.run([engine.tokenizer.encode("What is 3+4?")])[0]
    return traj, rollout, engine


def text_of(rollout, traj, span):
    return rollout.tokenizer.decode(traj.ids[span[0]:span[1]])


def test_at_the_cap_the_loop_opens_the_answer_with_the_tag_alone(pool):
    traj, rollout, engine = run(pool, [None, ANSWER], max_thinking_tokens=20)  # None: babbles to the limit
    assert engine.calls and traj.finish_reason == "answer"
    (start, end, kind), = traj.forced
    assert kind == "answer" and text_of(rollout, traj, (start, end)) == "<answer>\n"
    assert traj.loss_mask[start:end] == [0] * (end - start)
    assert traj.thinking_tokens == 20 == sum(traj.loss_mask[:start])  # every thinking token within the cap
    assert extract_answer_from_trajectory(traj, rollout.tokenizer, rollout.dialect) == "7"  # the model's own box
    stats = trajectory_stats([traj])
    assert stats.forced_answer_share == 1.0 and stats.answer_present_rate == 1.0


def test_a_block_cut_by_the_cap_is_never_run(pool):
    cut = "Let me compute it.\n<code>\n```python\nopen('/tmp/ran', 'w')\nprint(3 + 4)\n```\n</code>"
    traj, rollout, _ = run(pool, [cut, ANSWER], max_thinking_tokens=12)
    assert traj.tool_calls == [] and traj.forced[0][2] == "answer" and traj.finish_reason == "answer"
    assert extract_answer_from_trajectory(traj, rollout.tokenizer, rollout.dialect) == "7"  # not swallowed by the cut block
    fenced, rollout, _ = run(pool, [cut.replace("<code>\n", "").replace("\n</code>", ""), "\\boxed{7}"],
                             dialect="fenced", max_thinking_tokens=12)
    assert fenced.tool_calls == [] and extract_answer_from_trajectory(fenced, rollout.tokenizer, rollout.dialect) == "7"


def test_the_cap_counts_thinking_across_tool_turns(pool):
    cell = "Compute.\n<code>\n```python\nprint(3 + 4)\n```\n</code>"
    traj, rollout, engine = run(pool, [cell, None, ANSWER], max_thinking_tokens=30)
    assert len(traj.tool_calls) == 1
    start = traj.forced[0][0]
    assert sum(traj.loss_mask[:start]) == 30  # the cell's tokens counted; its output did not
    assert traj.num_tool_tokens > (traj.forced[0][1] - start)


def test_an_early_answer_is_suppressed_exactly_n_times(pool):
    turns = ["I think 6.\n<answer>", "Hmm, 3+4 is 7.\n<answer>", "No doubt.\n<answer>", ANSWER]
    traj, rollout, engine = run(pool, turns, extend=2)
    kinds = [kind for *_, kind in traj.forced]
    assert kinds == ["extend", "extend"] and traj.finish_reason == "answer"
    for start, end, _ in traj.forced:
        assert text_of(rollout, traj, (start, end)) == "Wait" and traj.loss_mask[start:end] == [0] * (end - start)
    text = rollout.tokenizer.decode(traj.ids)
    assert text.count("<answer>") == 1  # the two suppressed openings were cut before being appended
    assert text.startswith("I think 6.\nWait") and "No doubt.\n<answer>" + ANSWER in text
    assert len(engine.calls) == 4
    for fed in engine.calls:
        assert fed == traj.input_ids[:len(fed)]  # append-only: every turn continued what was there
    assert traj.thinking_tokens is not None


def test_min_thinking_suppresses_until_enough_was_written(pool):
    turns = ["Short.\n<answer>", "Now a much longer line of thought about three plus four.\n<answer>", ANSWER]
    traj, rollout, _ = run(pool, turns, min_thinking_tokens=10)
    assert [kind for *_, kind in traj.forced] == ["extend"] and traj.finish_reason == "answer"


def test_fenced_dialect_is_forced_with_a_final_answer_line(pool):
    traj, rollout, _ = run(pool, [None, "\\boxed{7}"], dialect="fenced", max_thinking_tokens=15)
    assert text_of(rollout, traj, traj.forced[0][:2]) == "\n\nFinal answer: "
    assert traj.finish_reason == "answer"


def test_forced_spans_survive_a_round_trip(pool):
    traj, _, _ = run(pool, [None, ANSWER], max_thinking_tokens=20)
    again = Trajectory.from_dict(traj.to_dict())
    assert again.forced == traj.forced and again.thinking_tokens == traj.thinking_tokens
    with pytest.raises(ValueError, match=">= 1"):
        RolloutConfig(max_thinking_tokens=0)


# -- the chat dialect: the model's own template, the answer a box in the prose ----------------------

def run_chat(pool, template, turns, **config):
    engine = ScriptedEngine(turns, tokenizer=tiny_chat_tokenizer(template))
    rollout = Rollout(engine, pool, RolloutConfig(dialect="chat", few_shot=False, max_total_tokens=400,
                                                  sampling=SamplingParams(temperature=0), **config))
    traj = rollout.run([rollout.prompt_ids("What is 3+4?")])[0]
    return traj, rollout, engine


def test_chat_at_the_cap_the_answer_is_opened_inside_the_turn_and_the_turn_closes(pool):
    traj, rollout, engine = run_chat(pool, "qwen2_5", [None, "\\boxed{7}." + EOS], max_thinking_tokens=20)
    (start, end, kind), = traj.forced
    assert kind == "answer" and text_of(rollout, traj, (start, end)) == FORCED_OPENING
    assert traj.loss_mask[start:end] == [0] * (end - start) and traj.thinking_tokens == 20
    assert traj.finish_reason == "answer"
    assert extract_answer_from_trajectory(traj, rollout.tokenizer, rollout.dialect) == "7"
    text = rollout.tokenizer.decode(traj.input_ids, skip_special_tokens=False)
    assert text.endswith("Final answer: \\boxed{7}." + EOS + rollout.chat.after_turn)  # the template's own close
    assert engine.calls[-1] == traj.input_ids[:len(engine.calls[-1])]


def test_chat_forcing_closes_an_open_think_block_first(pool):
    thinking = "<think>\nLet me think about it " + "la " * 40
    traj, rollout, _ = run_chat(pool, "qwen3_training", [thinking, "\\boxed{7}" + EOS], max_thinking_tokens=16)
    assert rollout.chat.thinking
    assert text_of(rollout, traj, traj.forced[0][:2]) == "\n</think>" + FORCED_OPENING
    assert extract_answer_from_trajectory(traj, rollout.tokenizer, rollout.dialect) == "7"


def test_chat_a_tool_call_cut_by_the_cap_is_never_run(pool):
    cut = '<tool_call>\n{"name": "python", "arguments": {"code": "open(\'/tmp/ran\', \'w\')\\nprint(3 + 4)"}}\n</tool_call>'
    traj, rollout, _ = run_chat(pool, "qwen2_5", [cut + EOS, "\\boxed{7}" + EOS], max_thinking_tokens=8)
    assert traj.tool_calls == [] and traj.forced[0][2] == "answer" and traj.finish_reason == "answer"


def test_chat_an_early_box_is_suppressed_exactly_n_times(pool):
    turns = ["I think \\boxed", "Hmm, 3+4 is 7, so \\boxed", "{7}." + EOS]
    traj, rollout, engine = run_chat(pool, "qwen2_5", turns, extend=1)
    assert [kind for *_, kind in traj.forced] == ["extend"] and traj.finish_reason == "answer"
    assert text_of(rollout, traj, traj.forced[0][:2]) == "Wait"
    text = rollout.tokenizer.decode(traj.ids, skip_special_tokens=False)
    assert text.count("\\boxed") == 1 and text.startswith("I think Wait")
    assert extract_answer_from_trajectory(traj, rollout.tokenizer, rollout.dialect) == "7"
    for fed in engine.calls:
        assert fed == traj.input_ids[:len(fed)]
