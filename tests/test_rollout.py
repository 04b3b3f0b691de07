"""The interpreter loop with a scripted engine and real sandboxes: exact ids, masks and spans."""

from __future__ import annotations

import pytest

from retool.engines.base import SamplingParams
from retool.rollout import Rollout, RolloutConfig
from retool.sandbox import SandboxLimits, SandboxPool
from scripted import EOS, ScriptedEngine

@pytest.fixture(scope="module")
def pool():
    with SandboxPool("jupyter", size=2) as pool:
        yield pool


def rollout(engine, pool, **config):
    return Rollout(engine, pool, RolloutConfig(**{"sampling": SamplingParams(temperature=0), **config}))


TURN_CODE = "Let me compute.\n<code>\n```python\nx = 6 * 7\nprint(x)\n```\n</code>"
TURN_ANSWER = "So the answer is\n<answer>\n\\boxed{42}\n</answer>"


def test_ids_masks_and_spans_are_exact(pool):
    engine = ScriptedEngine([TURN_CODE, TURN_ANSWER])
    tok = engine.tokenizer
    prompt = tok.encode("Problem: what is 6*7?")
    traj = rollout(engine, pool).run([prompt])[0]

    ids1 = tok.encode(TURN_CODE, add_special_tokens=False)
    out = tok.encode("\n<interpreter>\n42\n</interpreter>\n", add_special_tokens=False)
    ids2 = tok.encode(TURN_ANSWER, add_special_tokens=False)
    assert traj.ids == ids1 + out + ids2
    assert traj.loss_mask == [1] * len(ids1) + [0] * len(out) + [1] * len(ids2)
    assert traj.logprobs == [-0.5] * len(ids1) + [0.0] * len(out) + [-0.5] * len(ids2)
    assert traj.finish_reason == "answer"
    (call,) = traj.tool_calls
    assert call.code == "x = 6 * 7\nprint(x)" and call.result.ok
    assert call.code_end == len(ids1) and call.output_span == (len(ids1), len(ids1) + len(out))
    # turn 2 was fed exactly the prompt, turn 1's ids and the interpreter ids: nothing re-tokenized
    assert engine.calls[1] == prompt + ids1 + out


def test_state_persists_across_tool_calls_in_one_trajectory(pool):
    turns = [
        "<code>\n```python\nsecret = 1234\n```\n</code>",
        "<code>\n```python\nprint(secret + 1)\n```\n</code>",
        "<answer>\n\\boxed{1235}\n</answer>",
    ]
    engine = ScriptedEngine(turns)
    traj = rollout(engine, pool).run([engine.tokenizer.encode("p")])[0]
    assert [c.result.stdout for c in traj.tool_calls] == ["", "1235\n"]
    assert "(no output)" in engine.tokenizer.decode(traj.ids[slice(*traj.tool_calls[0].output_span)])


def test_a_code_block_cut_by_the_budget_is_not_executed(pool):
    engine = ScriptedEngine(["Let me compute.\n<code>\n```python\nimport os\nos.system('touch /sandbox/ran')\nprint(1)\n```\n</code>"])
    traj = rollout(engine, pool, max_total_tokens=12).run([engine.tokenizer.encode("p")])[0]
    assert traj.finish_reason == "length"
    assert traj.tool_calls == [] and len(traj.ids) == 12 and all(traj.loss_mask)


def test_sandbox_timeout_and_crash_are_rendered_to_the_model():
    turns = [
        "<code>\n```python\nimport time\ntime.sleep(30)\n```\n</code>",
        "<code>\n```python\nimport os\nos._exit(1)\n```\n</code>",
        "<code>\n```python\nprint('alive')\n```\n</code>",
        "done" + EOS,
    ]
    engine = ScriptedEngine(turns)
    tok = engine.tokenizer
    with SandboxPool("jupyter", size=1, limits=SandboxLimits(timeout_s=1.0)) as short:  # the one cell timeout
        traj = rollout(engine, short).run([tok.encode("p")])[0]
    rendered = [tok.decode(traj.ids[slice(*c.output_span)]) for c in traj.tool_calls]
    assert [c.result.status.value for c in traj.tool_calls] == ["timeout", "crashed", "ok"]
    assert "TimeoutError" in rendered[0]
    assert "KernelDied" in rendered[1] and "earlier variables are gone" in rendered[1]
    assert rendered[2] == "\n<interpreter>\nalive\n</interpreter>\n"
    assert traj.finish_reason == "eos"  # no boxed answer


def test_max_tool_calls_ends_the_trajectory(pool):
    block = "<code>\n```python\nprint(1)\n```\n</code>"
    engine = ScriptedEngine([block, block, block])
    traj = rollout(engine, pool, max_tool_calls=2).run([engine.tokenizer.encode("p")])[0]
    assert len(traj.tool_calls) == 2 and traj.finish_reason == "max_tool_calls"
    assert traj.loss_mask[-1] == 1  # the third block is in the transcript, not executed


def test_code_that_does_not_parse_is_capped_but_a_runtime_error_is_not(pool):
    """``max_invalid_calls_in_a_row`` in a code dialect: a cell that does not parse is a malformed
    call (no program ran); one that raises ran, and its error does not count."""
    broken, raises = "<code>\n```python\nprint(1\n```\n</code>", "<code>\n```python\n1 / 0\n```\n</code>"
    engine = ScriptedEngine([broken, raises, broken, broken, TURN_ANSWER])
    traj = rollout(engine, pool, max_invalid_calls_in_a_row=2).run([engine.tokenizer.encode("p")])[0]
    assert [c.malformed for c in traj.tool_calls] == [True, False, True, True]
    assert traj.finish_reason == "invalid_calls" and len(engine.calls) == 4
    engine = ScriptedEngine([broken, raises, broken, TURN_ANSWER])
    assert rollout(engine, pool, max_invalid_calls_in_a_row=2).run([engine.tokenizer.encode("p")])[0].finish_reason == "answer"


def test_fenced_dialect_round_trip(pool):
    turns = ["Compute:\n```python\nprint(2**10)\n```\n```output", "So \\boxed{1024}." + EOS]
    engine = ScriptedEngine(turns)
    tok = engine.tokenizer
    traj = rollout(engine, pool, dialect="fenced").run([tok.encode("p")])[0]
    assert traj.finish_reason == "answer"
    assert tok.decode(traj.ids[slice(*traj.tool_calls[0].output_span)]) == "\n1024\n```\n"


def test_a_number_only_in_interpreter_output_is_not_an_answer(pool):
    engine = ScriptedEngine(["<code>\n```python\nprint('\\\\boxed{7}')\n```\n</code>", "I am not sure." + EOS])
    traj = rollout(engine, pool).run([engine.tokenizer.encode("p")])[0]
    assert "boxed{7}" in engine.tokenizer.decode(traj.ids)
    assert traj.finish_reason == "eos"


class ByPromptEngine(ScriptedEngine):
    """First turns write a block, continuations (the prompt ends with interpreter output) finish:
    decided by the prompt, so concurrent trajectories cannot take each other's turns."""

    def __init__(self, block: str):
        super().__init__([])
        self.block = block

    async def agenerate(self, prompt_ids, params, stop=()):
        continuation = self.tokenizer.decode(prompt_ids).rstrip().endswith("</interpreter>")
        self.turns = ["done" + EOS if continuation else self.block]
        return await super().agenerate(prompt_ids, params, stop)


def test_many_trajectories_overlap_sandbox_and_generation(pool):
    # each cell says when it ran, by the sandbox's own clock: the two must overlap in time
    block = "<code>\n```python\nimport time\na = time.time()\ntime.sleep(0.5)\nprint(a, time.time())\n```\n</code>"
    engine = ByPromptEngine(block)
    r = rollout(engine, pool)
    pool.wait_ready()  # both sessions started (the earlier tests' replacements warm in the background)
    trajs = r.run([engine.tokenizer.encode("p"), engine.tokenizer.encode("q")])
    assert all(len(t.tool_calls) == 1 for t in trajs) and r.stats.tool_calls == 2
    (s1, e1), (s2, e2) = [map(float, t.tool_calls[0].result.stdout.split()) for t in trajs]
    assert max(s1, s2) < min(e1, e2), "the cells ran one after another"


def test_an_engine_without_streaming_streams_its_completion_at_once():
    import asyncio

    from retool.engines.base import TokenDelta

    engine = ScriptedEngine(["all at once" + EOS])

    async def collect():
        return [item async for item in engine.astream([1], SamplingParams())]

    delta, completion = asyncio.run(collect())
    assert isinstance(delta, TokenDelta) and list(delta.ids) == completion.ids and completion.end == "eos"
