"""Beam search and best-of-N over tool-integrated steps with a scripted model, a scripted verifier and a
real Jupyter sandbox: pruning order, bookkeeping, inherited and lazily replayed sessions, child seeds."""

from __future__ import annotations

import asyncio
import re
from collections import defaultdict

import pytest

from retool.engines.base import SamplingParams
from retool.rollout import Rollout, RolloutConfig
from retool.sandbox import SandboxPool
from retool.search.steps import steps
from retool.search.strategies import SearchSettings, beam, best_of_n, dvts
from scripted import ScriptedEngine

PROBLEM = "What is 3+4?"


def cell(tag: str, code: str) -> str:
    return f"{tag}.\n<code>\n```python\n{code}\n```\n</code>"


def answer(tag: str, value: int) -> str:
    return f"{tag}: \n<answer>\n\\boxed{{{value}}}\n</answer>"


# what the policy writes, in turn, after each prefix (keyed by the interpreter outputs so far)
SCRIPT = {(): [cell("good one", "x = 21\nprint(x)"), cell("bad one", "print(0)"), cell("bad two", "print(1)"),
               cell("good two", "y = 7\nprint(y)")],
          ("21",): [answer("good", 7), cell("good", "print(x * 2)")],
          ("7",): [answer("bad", 9), answer("good", 7)],
          ("21", "42"): [answer("good", 7), answer("good", 7)],
          ("0",): [answer("bad", 0)], ("1",): [answer("bad", 1)]}


class Policy(ScriptedEngine):
    def __init__(self):
        super().__init__(respond=self.reply)
        self.seen = defaultdict(int)
        self.seeds = []

    def reply(self, prompt: str) -> str:
        tail = prompt[prompt.rindex(PROBLEM):]
        key = tuple(re.findall(r"<interpreter>\n(.*?)\n</interpreter>", tail))
        turn = SCRIPT[key][self.seen[key] % len(SCRIPT[key])]
        self.seen[key] += 1
        return turn

    def _next(self, prompt_ids, params, stop):
        self.seeds.append(params.seed)
        return super()._next(prompt_ids, params, stop)


class TagVerifier:
    """Scores a step 0.9 when its text says "good", else 0.1."""

    name = "tags"

    def __init__(self, tokenizer):
        self.tokenizer, self.verifier_tokens, self.calls = tokenizer, 0, []

    def score(self, problem, trajs):
        self.calls.append(len(trajs))
        self.verifier_tokens += sum(len(t.ids) for t in trajs)
        return [[0.9 if "good" in self.tokenizer.decode(t.ids[s.start:s.end]) else 0.1 for s in steps(t)]
                for t in trajs]


@pytest.fixture(scope="module")
def pool():
    with SandboxPool("jupyter", size=4) as pool:
        yield pool


def setup(pool):
    engine = Policy()
    rollout = Rollout(engine, pool, RolloutConfig(sampling=SamplingParams(temperature=1.0, seed=0), max_total_tokens=400))
    return engine, rollout, TagVerifier(engine.tokenizer), rollout.prompt_ids(PROBLEM)


def test_beam_keeps_the_best_prefixes_and_carries_their_interpreter_state(pool):
    engine, rollout, verifier, prompt = setup(pool)
    result = asyncio.run(beam(PROBLEM, prompt, rollout, pool, verifier, SearchSettings(n=4, m=2)))
    # round 0: four first steps, "good one" and "good two" kept; round 1: three answers finish, the
    # cell child of "good one" survives; round 2: it finishes (twice) and the search has its four
    assert result.rounds == [[0.9, 0.9], [0.9]]
    assert len(result.candidates) == 4 and all(t.finished for t in result.candidates)
    texts = [engine.tokenizer.decode(t.ids) for t in result.candidates]
    assert not any("bad one" in t or "bad two" in t for t in texts)  # pruned prefixes never continued
    deep = next(t for t in result.candidates if len(t.tool_calls) == 2)
    assert deep.tool_calls[1].result.stdout.strip() == "42"  # x from its parent's cell: the replayed state
    cost = result.cost
    assert cost.cells == 5  # four first cells and print(x * 2): replays are counted apart
    assert cost.replayed_cells == 1  # the second child of "good one" replayed its parent's one cell
    assert (cost.replays, cost.replay_mismatches) == (1, 0)
    assert cost.model_tokens > sum(t.num_model_tokens for t in result.candidates)  # pruned branches count too
    # every request is in the prefill ledger; the scripted engine has no cache, so it computed all it was sent
    assert cost.prompt_tokens == cost.prefilled_tokens > cost.distinct_prefix_tokens > len(prompt)
    assert cost.prefill_ratio == cost.prefilled_tokens / cost.distinct_prefix_tokens
    chosen = result.candidates[result.selected]
    assert "good" in engine.tokenizer.decode(chosen.ids[steps(chosen)[-1].start:])
    seeds = engine.seeds[:4]
    assert len(set(seeds)) == 4  # children of one prefix differ in seed


def test_a_child_that_writes_no_code_never_starts_a_session(pool, monkeypatch):
    engine, rollout, verifier, prompt = setup(pool)
    engine.respond = lambda text: answer("good", 7)
    acquired = []
    real = pool.acquire
    monkeypatch.setattr(pool, "acquire", lambda *a, **k: acquired.append(1) or real(*a, **k))
    result = asyncio.run(beam(PROBLEM, prompt, rollout, pool, verifier, SearchSettings(n=4, m=2)))
    assert len(result.candidates) == 4 and result.cost.cells == 0 and result.cost.replayed_cells == 0
    assert acquired == []  # no branch ran code: no sandbox session was ever taken


def test_best_of_n_scores_every_sample_once_and_selects(pool):
    engine, rollout, verifier, prompt = setup(pool)
    result = asyncio.run(best_of_n(PROBLEM, prompt, rollout, pool, verifier, SearchSettings(n=4, m=1)))
    assert len(result.candidates) == 4 and verifier.calls == [4]
    assert result.cost.verifier_tokens == sum(len(t.ids) for t in result.candidates)
    assert result.selected is not None


def test_settings_are_checked():
    with pytest.raises(ValueError, match="m dividing n"):
        SearchSettings(n=4, m=3)


def test_dvts_grows_independent_greedy_subtrees(pool):
    engine, rollout, verifier, prompt = setup(pool)
    result = asyncio.run(dvts(PROBLEM, prompt, rollout, pool, verifier, SearchSettings(n=4, m=2)))
    # two subtrees, each keeps one of its two children per round (a width-1 beam)
    assert all(r == [0.9] for r in result.rounds) and len(result.candidates) >= 2
    assert all(t.finished for t in result.candidates)
    texts = [engine.tokenizer.decode(t.ids) for t in result.candidates]
    assert not any("bad one" in t or "bad two" in t for t in texts)  # each subtree dropped its bad first step
    assert result.cost.cells >= 4 and result.selected is not None


def test_a_replay_that_comes_out_differently_is_counted_as_a_mismatch(pool):
    from retool.sandbox.base import ExecResult, ExecStatus
    from retool.search.replay import ReplaySession
    from retool.search.strategies import SearchCost, account_replay
    from retool.trajectory import ToolCall

    recorded = [ToolCall("x = 5\nprint(x)", ExecResult(ExecStatus.OK, stdout="5\n"), 0, (0, 0)),
                ToolCall("import random\nprint(random.random())", ExecResult(ExecStatus.OK, stdout="0.25\n"), 0, (0, 0))]
    cost = SearchCost()
    good = ReplaySession(pool, recorded[:1])
    assert good.run("print(x + 1)").stdout.strip() == "6"
    account_replay(cost, good)
    good.close()
    bad = ReplaySession(pool, recorded)
    assert bad.run("print(x)").status == ExecStatus.INFRA_ERROR
    account_replay(cost, bad)
    bad.close()
    untouched = ReplaySession(pool, recorded)  # never ran code: no replay at all
    account_replay(cost, untouched)
    assert (cost.replays, cost.replay_mismatches, cost.replayed_cells) == (2, 1, 3)
