"""The ``remote`` backend over two real ``retool sandbox serve`` processes on loopback: placement by
load, sessions that stay on their host, a host killed mid-run (its sessions' next calls are
infrastructure errors, nothing else fails, new sessions go to the survivor), an eval resumed
afterwards that loses and doubles nothing, and attacks through it."""

from __future__ import annotations

import asyncio
import json
from collections import Counter

import pytest

from retool.datasets import Problem
from retool.evals.harness import EvalConfig, run_eval
from retool.rollout import RolloutConfig
from retool.sandbox.base import ExecStatus, SandboxUnavailable
from retool.sandbox.service_process import ServiceProcess
from retool.sandbox.spec import SandboxSpec
from scripted import EOS, ScriptedEngine


@pytest.fixture
def two_services():
    services = [ServiceProcess(), ServiceProcess()]
    try:
        yield services
    finally:
        for s in services:
            s.stop()


def test_sessions_spread_by_load_stay_on_their_host_and_a_dead_host_fails_only_its_own(two_services):
    a, b = two_services
    spec = SandboxSpec("remote", urls=f"{a.url},{b.url}")
    with spec.pool(size=4, warm=0) as pool:
        sessions = [pool.acquire(timeout=60) for _ in range(4)]
        assert Counter(s.host for s in sessions) == {a.url: 2, b.url: 2}  # by load, not all on the first
        for i, s in enumerate(sessions):
            assert s.run(f"x = {i}").ok
        assert [s.run("print(x)").stdout for s in sessions] == [f"{i}\n" for i in range(4)]  # each kept its state
        b.kill()
        results = [s.run("print(x + 10)") for s in sessions]
        for s, r in zip(sessions, results):
            if s.host == b.url:
                assert r.status is ExecStatus.INFRA_ERROR and not s.alive  # never a fake failure of the code
            else:
                assert r.ok and r.stdout == f"{sessions.index(s) + 10}\n"
        for s in sessions:
            pool.release(s)
        fresh = [pool.acquire(timeout=60) for _ in range(2)]
        assert {s.host for s in fresh} == {a.url} and all(s.run("print(1)").ok for s in fresh)
        for s in fresh:
            pool.release(s)
    a.kill()
    with pytest.raises(SandboxUnavailable, match="no remote sandbox"):
        spec.session()


def test_an_eval_across_two_hosts_survives_one_dying_and_its_resume_loses_and_doubles_nothing(two_services, tmp_path):
    a, b = two_services
    problems = [Problem(f"p{i}", f"What is {i} + {4 - i}?", "4") for i in range(4)]

    def cells_ran(text: str) -> int:
        return text.split("<|im_start|>assistant")[-1].count("</interpreter>")

    def respond(prompt: str) -> str:  # two cells, then the answer
        if cells_ran(prompt) < 2:
            return "<code>\n```python\nx = 2 + 2\nprint(x)\n```\n</code>"
        return "So the answer is\n<answer>\n\\boxed{4}\n</answer>" + EOS

    class KillsMidRun(ScriptedEngine):
        """Holds each of the first four trajectories before its second turn; when all four have run
        their first cell (each holds an open session, on either host), b dies: the sessions on it
        have a cell still to run."""

        def __init__(self):
            super().__init__(respond=respond)
            self.waiting, self.gate = 0, None

        async def agenerate(self, prompt_ids, params, stop=()):
            if killing and cells_ran(self.tokenizer.decode(prompt_ids, skip_special_tokens=False)) == 1:
                self.gate = self.gate or asyncio.Event()
                self.waiting += 1
                if self.waiting == 4:
                    b.kill()
                    self.gate.set()
                await asyncio.wait_for(self.gate.wait(), 60)
            return await super().agenerate(prompt_ids, params, stop)

    config = EvalConfig(benchmark="inline", k=2, out=str(tmp_path / "run"), concurrency=4,
                        sandbox=SandboxSpec("remote", urls=f"{a.url},{b.url}"), rollout=RolloutConfig(max_total_tokens=200))
    killing = True
    first = run_eval(config, engine=KillsMidRun(), problems=problems, show_progress=False)
    assert first.metrics["infra_failures"] >= 1 and first.metrics["samples"] == 8 - first.metrics["infra_failures"]
    killing = False
    again = run_eval(config, engine=ScriptedEngine(respond=respond), problems=problems, show_progress=False)
    lines = [json.loads(x) for x in (tmp_path / "run" / "trajectories.jsonl").read_text().splitlines()]
    assert again.metrics["infra_failures"] == 0 and again.metrics["samples"] == 8 and again.metrics["avg@2"] == 1.0
    assert sorted((x["problem_id"], x["sample"]) for x in lines) == sorted((p.id, s) for p in problems for s in range(2))


def test_attacks_through_the_remote_backend_are_contained():
    """A sample of the suite here; ``retool sandbox check --sandbox remote --sandbox-url URL`` runs it all."""
    from retool.sandbox.attacks import run_attack_suite

    service = ServiceProcess(size=2)
    try:
        names = ["read_host_files", "network_host_loopback", "fork_bomb", "sleep_past_timeout", "print_100mb",
                 "kill_parent", "iopub_flood_between_cells"]
        outcomes = list(run_attack_suite(SandboxSpec("remote", urls=service.url), names=names))
        assert outcomes and all(o.contained and o.recovered for o in outcomes), [o.detail for o in outcomes]
    finally:
        service.stop()


def test_the_attack_suite_judges_a_remote_host_by_the_service_process():
    """Memory and CPU that an attack costs "the host" are read where the interpreter's client lives:
    the service, not the process running the suite."""
    import psutil

    from retool.sandbox.attacks.meter import ServiceMeter, meter_for

    service = ServiceProcess(size=1)
    try:
        with SandboxSpec("remote", urls=service.url).session() as session:
            meter = meter_for(session)
            assert isinstance(meter, ServiceMeter) and meter.url == service.url
            there = psutil.Process(service.proc.pid)
            assert abs(meter.rss_mb() - there.memory_info().rss / 2**20) < 16
            cpu = there.cpu_times()
            assert abs(meter.cpu_s() - (cpu.user + cpu.system)) < 0.5
            meter.start_peak()
            assert meter.peak_mb() >= meter.rss_mb() - 16
    finally:
        service.stop()


def test_a_token_is_sent_from_the_environment_and_a_wrong_one_is_refused(monkeypatch):
    from retool.sandbox import remote

    service = ServiceProcess(size=2, token="sesame")
    try:
        monkeypatch.setenv("RETOOL_SANDBOX_TOKEN", "wrong")
        with pytest.raises(SandboxUnavailable, match="token"):
            SandboxSpec("remote", urls=service.url).session()
        monkeypatch.setenv("RETOOL_SANDBOX_TOKEN", "sesame")
        with SandboxSpec("remote", urls=service.url).session() as session:
            assert session.run("print(6 * 7)").stdout == "42\n"
    finally:
        remote._SHARED.clear()
        service.stop()


def test_remote_settings_are_checked_before_anything_starts():
    with pytest.raises(ValueError, match="sandbox-url"):
        SandboxSpec("remote")
    with pytest.raises(ValueError, match="sandbox-url"):
        SandboxSpec("remote", urls="ftp://x")
    with pytest.raises(ValueError, match="--sandbox remote or ray"):
        SandboxSpec("jupyter", urls="http://127.0.0.1:1")
