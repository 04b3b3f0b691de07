"""Several servers behind one engine (``--base-url A,B``): a trajectory's turns all go to the server
of its first turn (its prefix cache), new trajectories are balanced, a server that cannot be reached
gets no new trajectories. Real rollouts, scripted servers, a real sandbox."""

from __future__ import annotations

from collections import defaultdict

from retool.engines.base import SamplingParams
from retool.engines.routed import RoutedEngine
from retool.rollout import Rollout, RolloutConfig
from retool.sandbox import SandboxPool
from scripted import EOS, ScriptedEngine

CODE = "<code>\n```python\nprint(6 * 7)\n```\n</code>"
ANSWER = "<answer>\n\\boxed{42}\n</answer>" + EOS


def respond(text: str) -> str:
    return ANSWER if "</interpreter>" in text.split("<|im_start|>assistant")[-1] else CODE


class Unreachable(ScriptedEngine):
    async def agenerate(self, prompt_ids, params, stop=()):
        self.calls.append(list(prompt_ids))
        raise ConnectionError("connection refused")


def _run(engine, problems):
    with SandboxPool("subprocess", size=4) as pool:
        rollout = Rollout(engine, pool, RolloutConfig(max_total_tokens=200, few_shot=False,
                                                      sampling=SamplingParams(temperature=0)))
        return rollout.run([rollout.prompt_ids(p) for p in problems])


class Recording(RoutedEngine):
    """Records, at each placement, every live server's load and the server chosen."""

    def __init__(self, engines):
        super().__init__(engines)
        self.placements: list[tuple[list[tuple], int]] = []

    def server_for(self, key):
        if key is not None and key in self.placed:
            return self.placed[key]
        loads = [self.load(i) for i in range(len(self.engines))]
        chosen = super().server_for(key)
        self.placements.append((loads, chosen))
        return chosen


def test_each_trajectory_stays_on_one_server_and_new_ones_are_balanced():
    servers = [ScriptedEngine(respond=respond), ScriptedEngine(respond=respond)]
    engine = Recording(servers)
    problems = [f"What is 6 times 7, case {i}?" for i in range(6)]
    trajs = _run(engine, problems)
    assert all(t.finish_reason == "answer" for t in trajs)
    where = defaultdict(set)  # problem -> the servers that saw one of its turns
    for index, server in enumerate(servers):
        for call in server.calls:
            text = server.tokenizer.decode(call)
            where[next(p for p in problems if p in text)].add(index)
    assert all(len(s) == 1 for s in where.values()) and len(where) == 6  # two turns each, one server each
    # each new trajectory went to the least loaded server at that moment (how many are under way at
    # once depends on timing, so the totals need not be equal), and both servers took some
    assert len(engine.placements) == 6
    assert all(loads[chosen] == min(loads) for loads, chosen in engine.placements)
    assert {chosen for _, chosen in engine.placements} == {0, 1}
    assert engine.placed == {} and engine.active == [0, 0]  # ended trajectories are forgotten


def test_a_server_that_cannot_be_reached_gets_no_new_trajectories():
    dead, alive = Unreachable(), ScriptedEngine(respond=respond)
    engine = RoutedEngine([dead, alive])
    first = _run(engine, ["What is 6 times 7, first?"])[0]
    assert first.finish_reason == "infra_error" and len(dead.calls) == 1  # its failure is not the model's
    later = _run(engine, [f"What is 6 times 7, later {i}?" for i in range(3)])
    assert all(t.finish_reason == "answer" for t in later) and len(dead.calls) == 1


def test_the_routed_stats_add_up_every_counter_of_its_servers():
    from dataclasses import fields

    from retool.engines.base import EngineStats

    class Counted(ScriptedEngine):
        def __init__(self, value):
            super().__init__()
            self.value = value

        @property
        def stats(self):
            return EngineStats(**{f.name: self.value for f in fields(EngineStats) if f.name != "extra"})

    total = RoutedEngine([Counted(1), Counted(2)]).stats
    assert all(getattr(total, f.name) == 3 for f in fields(EngineStats) if f.name != "extra")
