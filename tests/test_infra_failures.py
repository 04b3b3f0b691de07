"""Failures that are not the model's doing, injected for real: kernels killed from outside the jail,
an engine that goes away, a Docker engine that stops answering. Each must come back as
``infra_error`` (never as the code's crash), stop the trajectory, stay out of scores and losses,
and be retried when an evaluation is resumed; nothing the code does may produce it."""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import threading
import time
from pathlib import Path

import pytest
import torch

from retool.datasets import Problem
from retool.evals.harness import EvalConfig, run_eval
from retool.rollout import Rollout, RolloutConfig
from retool.sandbox import ExecStatus, SandboxLimits, SandboxPool, create_session
from retool.sandbox.spec import SandboxSpec
from retool.training.advantages import zero_advantage_group_share
from retool.training.grpo import outcome_reward
from retool.training.rl_rollout import RolloutBatch, summarize
from retool.trajectory import Trajectory
from scripted import EOS, ScriptedEngine

LIMITS = SandboxLimits(timeout_s=20, interrupt_grace_s=1.0)


def _kill_jail_soon(session, delay: float = 1.0) -> threading.Thread:
    def kill():
        time.sleep(delay)
        os.kill(session._jail.child_pid, signal.SIGKILL)  # the host (an admin, the OOM killer) kills it

    thread = threading.Thread(target=kill)
    thread.start()
    return thread


def _kill_new_jail_soon(known: set[Path], delay: float = 0.8) -> threading.Thread:
    """For the subprocess backend, whose every run is a new jail: kill the one that appears."""
    from retool.sandbox.isolation import runtime_root

    def kill():
        time.sleep(delay)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            new = [d for d in runtime_root().iterdir() if d not in known and (d / "child").exists()]
            if new:
                os.kill(int((new[0] / "child").read_text()), signal.SIGKILL)
                return
            time.sleep(0.05)

    thread = threading.Thread(target=kill)
    thread.start()
    return thread


@pytest.mark.parametrize("backend", ["jupyter", "subprocess"])
def test_a_kernel_killed_from_outside_is_an_infra_failure(backend):
    from retool.sandbox.isolation import runtime_root

    with create_session(backend, LIMITS) as session:
        known = set(runtime_root().iterdir())
        killer = _kill_jail_soon(session) if backend == "jupyter" else _kill_new_jail_soon(known)
        result = session.run("import time\ntime.sleep(10)\nprint('finished')")
        killer.join()
        assert result.status is ExecStatus.INFRA_ERROR, result
        assert session.run("print(6 * 7)").stdout == "42\n"


@pytest.mark.parametrize("backend", ["jupyter", "subprocess"])
@pytest.mark.parametrize("code", [
    "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\nprint('survived')",  # pid 1 ignores it
    "import os\nos._exit(137)",  # looks like a SIGKILL to bubblewrap, but the pidfd knows better
    "import os, signal, subprocess, sys\n"
    "subprocess.run([sys.executable, '-c', 'import os, signal; os.kill(1, signal.SIGKILL)'])\nprint('survived')",
    "import signal\nsignal.raise_signal(signal.SIGTERM)\nprint('survived')",
    "import ctypes\nctypes.string_at(0)",  # a real segfault: the code's crash
])
def test_nothing_the_code_does_is_an_infra_failure(backend, code):
    with create_session(backend, LIMITS) as session:
        result = session.run(code)
        assert result.status is not ExecStatus.INFRA_ERROR, result
        assert result.status in (ExecStatus.OK, ExecStatus.CRASHED), result
        assert session.run("print(6 * 7)").stdout == "42\n"


def test_a_rollout_stops_at_an_infra_failure_and_shows_the_model_nothing():
    engine = ScriptedEngine(["Let me wait.\n<code>\n```python\nimport time\ntime.sleep(10)\n```\n</code>",
                             "Should not be asked." + EOS])
    with SandboxPool("jupyter", size=1, limits=LIMITS) as pool:
        session = pool.acquire(timeout=60)
        try:
            killer = _kill_jail_soon(session)
            rollout = Rollout(engine, pool, RolloutConfig())
            traj = asyncio_run(rollout.run_one(rollout.prompt_ids("wait"), session=session))
            killer.join()
        finally:
            pool.release(session)
    assert traj.finish_reason == "infra_error" and traj.infra_failure
    assert "killed from outside" in traj.finish_detail
    assert traj.num_tool_tokens == 0 and len(engine.calls) == 1  # no fake output, no second turn
    assert traj.tool_calls[0].result.status is ExecStatus.INFRA_ERROR


def asyncio_run(coro):
    import asyncio

    return asyncio.run(coro)


class FlakyEngine(ScriptedEngine):
    """The model's server fails for the first ``failures`` requests, then answers."""

    def __init__(self, failures: int):
        super().__init__(respond=lambda prompt: "The answer is \\boxed{4}." + EOS)
        self.failures = failures

    async def agenerate(self, prompt_ids, params, stop=()):
        if self.failures > 0:
            self.failures -= 1
            raise ConnectionError("connection to the model server was reset")
        return await super().agenerate(prompt_ids, params, stop)


def test_eval_does_not_score_infra_failures_and_a_resume_retries_them(tmp_path):
    problems = [Problem(f"p{i}", f"What is {i} + {4 - i}?", "4") for i in range(3)]
    config = EvalConfig(benchmark="inline", k=2, out=str(tmp_path / "run"), sandbox=SandboxSpec("subprocess"),
                        concurrency=2, rollout=RolloutConfig(max_total_tokens=64))
    first = run_eval(config, engine=FlakyEngine(failures=3), problems=problems, show_progress=False)
    assert first.metrics["infra_failures"] == 3
    assert first.metrics["samples"] == 3 and first.metrics["avg@2"] == 1.0  # only what was scored
    lines = (tmp_path / "run" / "trajectories.jsonl").read_text().splitlines()
    assert len(lines) == 3 and all(json.loads(line)["trajectory"]["finish_reason"] != "infra_error" for line in lines)
    again = run_eval(config, engine=FlakyEngine(failures=0), problems=problems, show_progress=False)
    lines = (tmp_path / "run" / "trajectories.jsonl").read_text().splitlines()
    keys = [(json.loads(line)["problem_id"], json.loads(line)["sample"]) for line in lines]
    assert again.metrics["infra_failures"] == 0 and again.metrics["samples"] == 6
    assert sorted(keys) == sorted({(p.id, s) for p in problems for s in range(2)})  # nothing lost, nothing doubled


def _traj(infra: bool = False) -> Trajectory:
    t = Trajectory([1, 2])
    t.append_model([3, 4, 5], [-0.1] * 3)
    t.finish("infra_error", "sandbox: SandboxFailure: gone") if infra else t.finish("answer")
    return t


def test_rl_leaves_infra_failures_out_of_group_statistics_and_logs_the_rate():
    from retool.grading import ScoredSample, Verdict

    trajs = [_traj(), _traj(infra=True), _traj(), _traj()]
    rewards = [1.0, math.nan, -1.0, 1.0]
    problem = Problem("p", "q", "7")
    samples = [ScoredSample(problem, k, t, Verdict("7" if r == 1.0 else None, r == 1.0, "string"), r)
               for k, (t, r) in enumerate(zip(trajs, rewards))]
    metrics = summarize(samples, group=4)
    assert metrics.infra_failure_rate == 0.25 and metrics.stats.infra_failures == 1 and metrics.stats.responses == 3
    assert metrics.reward_mean == pytest.approx(1 / 3) and metrics.accuracy == pytest.approx(2 / 3)
    assert outcome_reward(None, None, rewards) == [1.0, None, -1.0, 1.0]  # TRL: unscorable, advantage 0
    batch = RolloutBatch(samples, metrics)
    assert [t.infra_failure for t in batch.scored().trajectories] == [False, False, False]  # PPO updates on these
    # a group whose only other samples agree has no signal once the failure is left out
    assert zero_advantage_group_share(torch.tensor([1.0, math.nan, 1.0, 1.0]), 4) == 1.0
    assert zero_advantage_group_share(torch.tensor([1.0, math.nan, -1.0, 1.0]), 4) == 0.0


def test_trl_gives_an_unscored_sample_no_advantage_and_no_say_in_the_baseline(tmp_path):
    from test_grpo_contract import _trainer

    trainer, pool, model = _trainer(tmp_path)
    ours = trainer.rollout_func

    def one_failure(prompts, trl_trainer):
        out = ours(prompts, trl_trainer)
        out["retool_reward"] = [math.nan, 1.0, -1.0, 1.0]
        return out

    trainer.rollout_func = one_failure
    try:
        batch = trainer._generate_and_score_completions([dict(trainer.train_dataset[0]) for _ in range(4)])
    finally:
        pool.close()
    advantages = batch["advantages"]
    assert advantages[0] == 0
    assert float(advantages[1:].sum()) == pytest.approx(0.0, abs=1e-5)  # centred on the three scored ones


# -- the Docker engine goes away mid-cell -----------------------------------------------------------


class SocketProxy:
    """A Unix-socket proxy in front of the Docker engine: ``cut()`` is the engine going away."""

    def __init__(self, target: str, path: Path):
        self.target, self.path = target, str(path)
        self.listener = socket.socket(socket.AF_UNIX)
        self.listener.bind(self.path)
        self.listener.listen(64)
        self.open: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.socket(socket.AF_UNIX)
            upstream.connect(self.target)
            self.open += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src, dst):
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self):
        self.listener.close()
        for s in self.open:
            try:
                s.shutdown(socket.SHUT_RDWR)
                s.close()
            except OSError:
                pass


@pytest.mark.docker
def test_a_docker_engine_that_goes_away_mid_cell_is_an_infra_failure(tmp_path):
    docker = pytest.importorskip("docker")
    from retool.sandbox.docker import DockerSession

    engine_socket = "/var/run/docker.sock"
    if not os.path.exists(engine_socket):
        pytest.skip("no local Docker engine socket")
    try:
        DockerSession().close()
    except Exception as exc:  # noqa: BLE001 - no engine or no image here
        pytest.skip(str(exc))
    proxy = SocketProxy(engine_socket, tmp_path / "docker.sock")
    session = DockerSession(client=docker.DockerClient(base_url=f"unix://{proxy.path}"), limits=LIMITS)
    container = session._container.id
    try:
        assert session.run("print(1)").stdout == "1\n"
        threading.Timer(1.0, proxy.cut).start()
        result = session.run("import time\ntime.sleep(10)")
        assert result.status is ExecStatus.INFRA_ERROR, result
        assert session.run("print(2)").status is ExecStatus.INFRA_ERROR  # still no engine: still not the code
    finally:
        session.close()
        docker.from_env().api.remove_container(container, force=True)
