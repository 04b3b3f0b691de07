"""LazySession with a real jailed pool: a session is taken at the first cell, not before; waiting
for one can time out (infra_error), be interrupted, or end in close without leaking the session; a
rollout with more trajectories than sessions decodes all of them from the start."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from retool.engines.base import SamplingParams
from retool.rollout import Rollout, RolloutConfig
from retool.sandbox import SandboxLimits, SandboxPool
from retool.sandbox.base import ExecStatus
from retool.sandbox.lease import LazySession
from scripted import EOS, ScriptedEngine


@pytest.fixture(scope="module")
def pool():
    with SandboxPool("jupyter", size=1, limits=SandboxLimits(timeout_s=5)) as pool:
        pool.wait_ready()
        yield pool


def test_no_session_is_taken_before_the_first_cell_and_state_persists_after(pool):
    lease = LazySession(pool, wait_s=30)
    assert lease.inner is None and len(pool._busy) == 0
    assert lease.run("x = 41").ok and lease.inner is not None and len(pool._busy) == 1
    assert lease.run("print(x + 1)").stdout == "42\n"
    lease.close()
    assert lease.inner is None and len(pool._busy) == 0


def test_no_free_session_within_the_wait_is_an_infra_error(pool):
    with pool.session():  # the only session is taken
        lease = LazySession(pool, wait_s=0.6)
        started = time.monotonic()
        result = lease.run("print(1)")
        assert result.status is ExecStatus.INFRA_ERROR and result.infra_failure
        assert "no sandbox session within" in result.error and 0.5 < time.monotonic() - started < 5
        lease.close()


def test_an_interrupt_ends_the_wait_and_close_returns_a_session_a_cancelled_wait_obtained_later(pool):
    holder = pool.acquire(timeout=30)
    lease = LazySession(pool, wait_s=60)
    results = []
    waiter = threading.Thread(target=lambda: results.append(lease.run("print(1)")))
    waiter.start()
    time.sleep(0.5)
    lease.interrupt()
    waiter.join(timeout=5)
    assert not waiter.is_alive() and results[0].status is ExecStatus.INTERRUPTED
    # a wait that is closed before it obtains the session hands it straight back
    late = LazySession(pool, wait_s=60)
    waiter = threading.Thread(target=lambda: late.run("print(2)"))
    waiter.start()
    time.sleep(0.3)
    late.close()
    pool.release(holder)
    waiter.join(timeout=30)
    assert late.inner is None
    deadline = time.monotonic() + 30
    while len(pool._busy) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(pool._busy) == 0  # nothing leaked: the pool can hand its one session out again
    with pool.session(timeout=30) as session:
        assert session.run("print(3)").stdout == "3\n"


CELL = "<code>\n```python\nimport time\ntime.sleep(1)\nprint(7)\n```\n</code>"


class TimedEngine(ScriptedEngine):
    """Writes one cell per trajectory, then answers; records when each trajectory's first turn began."""

    def __init__(self) -> None:
        super().__init__(respond=lambda text: "done" + EOS if "<code>" in text else CELL)
        self.first_turn: list[float] = []

    async def agenerate(self, prompt_ids, params, stop=()):
        if len(prompt_ids) <= 2:  # a prompt, not a continuation
            self.first_turn.append(time.monotonic())
        await asyncio.sleep(0.2)
        return await super().agenerate(prompt_ids, params, stop)


def test_a_rollout_with_more_trajectories_than_sessions_starts_them_all_at_once(pool):
    engine = TimedEngine()
    rollout = Rollout(engine, pool, RolloutConfig(sampling=SamplingParams(temperature=0)))
    prompts = [engine.tokenizer.encode(p) for p in "abc"]
    trajs = rollout.run(prompts)
    assert [len(t.tool_calls) for t in trajs] == [1, 1, 1] and all(t.tool_calls[0].result.ok for t in trajs)
    starts = sorted(engine.first_turn)
    # with the session taken up front, the 2nd and 3rd would begin only after a 1 s cell and a release
    assert len(starts) == 3 and starts[-1] - starts[0] < 0.5
