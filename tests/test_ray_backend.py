"""The ``ray`` backend on a two-node Ray cluster on this machine (``ray start --head`` and a second
``ray start --address … --block`` with a resource label of its own): sessions placed on both nodes
and kept there, one node stopped mid-run (its sessions' next calls are infrastructure errors,
nothing else fails, new sessions go to the survivor), and a label that keeps sandboxes off a node."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from retool.sandbox.base import ExecStatus
from retool.sandbox.service_process import free_port
from retool.sandbox.spec import SandboxSpec

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.slow  # two raylets on two cores: about a minute

RAY = str(Path(sys.executable).with_name("ray")) if Path(sys.executable).with_name("ray").exists() else shutil.which("ray")


@pytest.fixture
def cluster(tmp_path):
    port = free_port()
    address = f"127.0.0.1:{port}"
    common = ["--num-cpus", "1", "--disable-usage-stats"]
    env = {**os.environ, "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0"}
    subprocess.run([RAY, "start", "--head", "--port", str(port), "--include-dashboard=false", *common,
                    "--resources", '{"sandbox_head": 1}'], check=True, env=env, capture_output=True, timeout=180)
    worker = subprocess.Popen([RAY, "start", "--address", address, "--block", *common,
                               "--resources", '{"sandbox_worker": 1}'], env=env, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        ray.init(address=address, log_to_driver=False)
        deadline = time.monotonic() + 120
        while sum(n["Alive"] for n in ray.nodes()) < 2:
            assert time.monotonic() < deadline, "the second Ray node did not join"
            time.sleep(0.5)
        yield address, worker
    finally:
        from retool.sandbox import ray_backend

        ray_backend._SHARED.clear()
        ray.shutdown()
        if worker.poll() is None:
            os.killpg(os.getpgid(worker.pid), signal.SIGKILL)
        subprocess.run([RAY, "stop", "--force"], env=env, capture_output=True, timeout=120)


def kill_node(node: dict) -> None:
    """SIGKILL the node's raylet and every process under it (its workers: the sandbox actor and
    its jails), as when the machine goes away."""
    import psutil

    flag = f"--raylet_socket_name={node['RayletSocketName']}"
    raylets = [p for p in psutil.process_iter(["cmdline"]) if flag in (p.info["cmdline"] or [])]
    assert raylets, f"no raylet with {flag}"
    for raylet in raylets:
        for process in [*raylet.children(recursive=True), raylet]:
            try:
                process.kill()
            except psutil.NoSuchProcess:
                pass


def test_sessions_on_both_nodes_stay_there_and_a_dead_node_fails_only_its_own(cluster):
    address, worker = cluster
    with SandboxSpec("ray", urls=address).pool(size=4, warm=0) as pool:
        sessions = [pool.acquire(timeout=180) for _ in range(4)]
        nodes = Counter(s.host for s in sessions)
        assert len(nodes) == 2 and set(nodes.values()) == {2}
        for i, s in enumerate(sessions):
            assert s.run(f"x = {i}").ok
        assert [s.run("print(x)").stdout for s in sessions] == [f"{i}\n" for i in range(4)]
        head = next(n["NodeID"] for n in ray.nodes() if n["Resources"].get("sandbox_head"))
        kill_node(next(n for n in ray.nodes() if n["Resources"].get("sandbox_worker")))  # the second node dies
        results = [s.run("print(x + 10)", timeout=5) for s in sessions]
        for i, (s, r) in enumerate(zip(sessions, results)):
            if s.host == head:
                assert r.ok and r.stdout == f"{i + 10}\n"
            else:
                assert r.status is ExecStatus.INFRA_ERROR
        for s in sessions:
            pool.release(s)
        fresh = [pool.acquire(timeout=180) for _ in range(2)]
        assert {s.host for s in fresh} == {head} and all(s.run("print(1)").ok for s in fresh)
        for s in fresh:
            pool.release(s)


def test_a_resource_label_keeps_sandboxes_on_the_labelled_nodes(cluster):
    address, _ = cluster
    worker_node = next(n["NodeID"] for n in ray.nodes() if n["Resources"].get("sandbox_worker"))
    with SandboxSpec("ray", urls=address, ray_label="sandbox_worker").pool(size=2, warm=0) as pool:
        held = [pool.acquire(timeout=180) for _ in range(2)]
        assert {s.host for s in held} == {worker_node} and all(s.run("print(2)").stdout == "2\n" for s in held)
        for s in held:
            pool.release(s)
