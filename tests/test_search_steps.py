"""Steps of real trajectories (a scripted model, a real sandbox), exact prefixes, and branches that
get their interpreter state by lazy replay — matched and mismatched, on jupyter and subprocess."""

from __future__ import annotations

import asyncio

import pytest

from retool.engines.base import SamplingParams
from retool.protocol.chat import ChatFormat, call_item
from retool.rollout import Rollout, RolloutConfig
from retool.sandbox import SandboxPool
from retool.search.replay import ReplaySession
from retool.search.steps import boundaries, fork, prefix, steps
from scripted import EOS, ScriptedEngine
from tiny import tiny_chat_tokenizer

CELL_1 = "First the square.\n<code>\n```python\nx = 6 * 7\nprint(x)\n```\n</code>"
CELL_2 = "Then one more.\n<code>\n```python\nprint(x + 1)\n```\n</code>"
ANSWER = "So the answer is\n<answer>\n\\boxed{43}\n</answer>"


@pytest.fixture(scope="module", params=["jupyter", "subprocess"])
def pool(request):
    with SandboxPool(request.param, size=2) as pool:
        yield pool


@pytest.fixture(scope="module")
def jupyter():
    with SandboxPool("jupyter", size=2) as pool:
        yield pool


def run(pool, turns, **config):
    engine = ScriptedEngine(turns)
    rollout = Rollout(engine, pool, RolloutConfig(sampling=SamplingParams(temperature=0), **config))
    traj = rollout.run([engine.tokenizer.encode("What is 6*7+1?")])[0]
    return traj, rollout, engine


def test_steps_are_the_rollouts_own_boundaries_and_partition_the_ids(jupyter):
    traj, rollout, _ = run(jupyter, [CELL_1, CELL_2, ANSWER])
    spans = steps(traj)
    assert [s.index for s in spans] == [0, 1, 2]
    assert spans[0].start == 0 and spans[-1].end == len(traj.ids)
    assert all(a.end == b.start for a, b in zip(spans, spans[1:]))
    c1, c2 = traj.tool_calls
    assert (spans[0].end, spans[0].calls) == (c1.output_span[1], (c1,))
    assert (spans[1].end, spans[1].calls) == (c2.output_span[1], (c2,))
    assert spans[2].calls == () and not spans[2].runs_code
    tok = rollout.tokenizer
    assert tok.decode(traj.ids[spans[0].start:spans[0].end]).endswith("</interpreter>\n")
    assert tok.decode(traj.ids[spans[2].start:spans[2].end]) == ANSWER
    assert boundaries(traj) == [len(traj.prompt_ids) + s.end - 1 for s in spans]


def test_prefixes_are_exact_and_forks_independent(jupyter):
    traj, _, _ = run(jupyter, [CELL_1, CELL_2, ANSWER])
    spans = steps(traj)
    for k in range(len(spans) + 1):
        p = prefix(traj, k)
        end = spans[k - 1].end if k else 0
        assert p.ids == traj.ids[:end] and p.loss_mask == traj.loss_mask[:end] and p.logprobs == traj.logprobs[:end]
        assert p.prompt_ids == traj.prompt_ids and not p.finished
        assert p.tool_calls == traj.tool_calls[:min(k, 2)]
    with pytest.raises(ValueError, match="out of range"):
        prefix(traj, 4)
    p = prefix(traj, 1)
    twin = fork(p)
    twin.append_model([5, 6], [-0.1, -0.2])
    assert len(p.ids) == spans[0].end and len(twin.ids) == spans[0].end + 2
    with pytest.raises(ValueError, match="finished"):
        fork(traj)


def test_calls_of_one_chat_turn_are_one_step(jupyter):
    tok = tiny_chat_tokenizer("qwen2_5")
    fmt = ChatFormat.of(tok)
    turns = [fmt.model_turn({"role": "assistant", "content": "Two at once.",
                             "tool_calls": [call_item("python", {"code": "x = 6 * 7\nprint(x)"}),
                                            call_item("python", {"code": "print(x + 1)"})]}),
             fmt.model_turn({"role": "assistant", "content": "The answer is \\boxed{43}."})]
    engine = ScriptedEngine(turns, tokenizer=tok)
    rollout = Rollout(engine, jupyter, RolloutConfig(dialect="chat", few_shot=False, sampling=SamplingParams(temperature=0)))
    traj = rollout.run([rollout.prompt_ids("What is 6*7+1?")])[0]
    spans = steps(traj)
    assert len(traj.tool_calls) == 2 and len(spans) == 2
    assert spans[0].calls == tuple(traj.tool_calls)
    assert spans[0].end == traj.tool_calls[1].output_span[1]  # the whole tool message
    assert tok.decode(traj.ids[spans[1].start:spans[1].end], skip_special_tokens=False).startswith("The answer")


def test_prose_is_split_at_blank_lines_only_between_the_models_tokens(jupyter):
    traj, rollout, _ = run(jupyter, ["Think first.\n\nThen compute.\n<code>\n```python\nprint(1)\n```\n</code>",
                                     "Done.\n\nSo\n<answer>\n\\boxed{1}\n</answer>"])
    tok = rollout.tokenizer
    plain, fine = steps(traj), steps(traj, split_prose=True, tokenizer=tok)
    assert len(plain) == 2 and len(fine) == 4
    texts = [tok.decode(traj.ids[s.start:s.end]) for s in fine]
    assert texts[0] == "Think first.\n\n" and texts[2] == "Done.\n\n"
    assert "".join(texts) == tok.decode(traj.ids)
    assert fine[1].calls == plain[0].calls and fine[1].end == plain[0].end
    with pytest.raises(ValueError, match="tokenizer"):
        steps(traj, split_prose=True)


def continue_from(pool, traj, k: int, turns: list[str]):
    """Continue ``prefix(traj, k)`` with ``turns`` in a replaying session; (branch, session)."""
    engine = ScriptedEngine(turns)
    rollout = Rollout(engine, pool, RolloutConfig(sampling=SamplingParams(temperature=0)))
    branch = prefix(traj, k)
    session = ReplaySession.of(pool, branch)

    async def go():
        try:
            return await rollout.run_one(branch.prompt_ids, session=session, traj=branch)
        finally:
            session.close()

    return asyncio.run(go()), session


def test_a_branch_gets_the_prefixs_interpreter_state_by_replay(pool):
    traj, _, _ = run(pool, [CELL_1, CELL_2, ANSWER])
    stateful = pool.backend == "jupyter"
    probe = "print(x + 1)" if stateful else "print(6 * 7 + 1)"  # subprocess cells are stateless
    branch, session = continue_from(pool, traj, 1, [f"Check.\n<code>\n```python\n{probe}\n```\n</code>", ANSWER])
    assert session.replayed and session.mismatch is None
    assert branch.finish_reason == "answer"
    assert branch.tool_calls[0] == traj.tool_calls[0]  # the prefix's cell, as recorded
    assert branch.tool_calls[1].result.stdout.strip() == "43"


def test_a_branch_that_runs_no_code_takes_no_sandbox(pool):
    traj, _, _ = run(pool, [CELL_1, CELL_2, ANSWER])
    branch, session = continue_from(pool, traj, 2, [ANSWER])
    assert branch.finish_reason == "answer" and not session.replayed and session.inner is None


def test_a_replay_that_differs_is_reported_and_drops_the_branch(pool):
    random_cell = "Sample.\n<code>\n```python\nimport random\nprint(random.random())\n```\n</code>"
    traj, _, _ = run(pool, [random_cell, CELL_2, ANSWER])
    branch, session = continue_from(pool, traj, 1, ["Check.\n<code>\n```python\nprint(2)\n```\n</code>", ANSWER])
    assert session.mismatch is not None and session.mismatch.cell == 0
    assert traj.tool_calls[0].result.stdout.strip() in session.mismatch.recorded
    assert branch.finish_reason == "infra_error" and "ReplayMismatch" in branch.finish_detail
    assert len(branch.ids) == steps(traj)[0].end + len(ScriptedEngine().tokenizer.encode(
        "Check.\n<code>\n```python\nprint(2)\n```\n</code>", add_special_tokens=False))  # nothing shown to the model


def test_eos_after_a_prefix_keeps_the_branch_whole(jupyter):
    traj, _, _ = run(jupyter, [CELL_1, CELL_2, ANSWER])
    branch, _ = continue_from(jupyter, traj, 1, ["I give up." + EOS])
    assert branch.finish_reason == "eos" and branch.ids[:steps(traj)[0].end] == traj.ids[:steps(traj)[0].end]
