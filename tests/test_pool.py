"""SandboxPool with real jailed kernels: freshness, replacement, deadlines, threads, asyncio, reaping."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import psutil
import pytest

from retool.sandbox import SandboxLimits, SandboxPool
from retool.sandbox.cgroups import CGROUP_ROOT
from retool.sandbox.isolation import reap_orphans, runtime_root
from retool.sandbox.jail import Jail


@pytest.fixture(scope="module")
def pool():
    with SandboxPool("jupyter", size=2, limits=SandboxLimits(timeout_s=5)) as pool:
        yield pool


def test_release_resets_state(pool):
    with pool.session() as session:
        session.run("secret = 'from trajectory one'")
        first = session
    with pool.session() as session:
        assert session is not first
        assert session.run("print('secret' in globals())").stdout == "False\n"


def test_dead_idle_session_is_replaced_at_acquire(pool):
    pool.wait_ready()
    victim = pool._idle[0]
    victim._jail.process.kill()
    victim._jail.process.wait()
    sessions = [pool.acquire(timeout=60), pool.acquire(timeout=60)]
    try:
        assert victim not in sessions
        assert all(s.alive and s.run("print(1)").stdout == "1\n" for s in sessions)
    finally:
        for s in sessions:
            pool.release(s)


def test_acquire_deadline(pool):
    held = [pool.acquire(timeout=60), pool.acquire(timeout=60)]
    try:
        with pytest.raises(TimeoutError):
            pool.acquire(timeout=0.2)
    finally:
        for s in held:
            pool.release(s)


def test_threads_share_the_pool_safely(pool):
    results, errors = [], []

    def trajectory(i: int) -> None:
        try:
            with pool.session(timeout=120) as s:
                s.run(f"v = {i}")
                results.append(s.run("v * v").stdout.strip())
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=trajectory, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(results, key=int) == [str(i * i) for i in range(6)]


def test_asyncio_sessions_overlap(pool):
    # each trajectory's cell records when it ran, by the sandbox's own clock: they must overlap
    async def trajectory(i: int) -> tuple[float, float]:
        async with pool.asession(timeout=120) as s:
            ran = await s.arun("import time\na = time.time()\ntime.sleep(0.5)\nprint(a, time.time())")
            return tuple(map(float, ran.stdout.split()))

    async def main():
        return await asyncio.gather(*(trajectory(i) for i in range(2)))

    pool.wait_ready()
    loop = asyncio.new_event_loop()
    try:
        (s1, e1), (s2, e2) = loop.run_until_complete(main())
    finally:
        loop.close()
    assert max(s1, s2) < min(e1, e2), "the sessions ran one after another"


def test_release_of_a_foreign_session_is_an_error(pool):
    from retool.sandbox import create_session

    with create_session("subprocess") as stranger:
        with pytest.raises(ValueError):
            pool.release(stranger)


def test_close_ends_every_jail():
    pool = SandboxPool("jupyter", size=2)
    pool.wait_ready()
    busy = pool.acquire()
    pids = [s._jail.process.pid for s in [*pool._idle, busy]]
    pool.close()
    for pid in pids:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_jails_of_a_killed_host_process_die_and_are_reaped():
    script = textwrap.dedent(
        """
        from retool.sandbox import SandboxPool
        pool = SandboxPool("jupyter", size=1)
        pool.wait_ready()
        s = pool.acquire()
        print(s._jail.process.pid, s._jail.runtime_dir, s._jail.cgroup.name if s._jail.cgroup else "", flush=True)
        import time; time.sleep(600)
        """
    )
    host = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    jail_pid, runtime_dir, cgroup = (host.stdout.readline().split() + [""])[:3]
    host.send_signal(signal.SIGKILL)  # a crash: no atexit, no close()
    host.wait()
    psutil.wait_procs([psutil.Process(int(jail_pid))], timeout=10) if psutil.pid_exists(int(jail_pid)) else None
    assert not psutil.pid_exists(int(jail_pid))  # --die-with-parent took the jail down with its host
    assert Path(runtime_dir).exists()  # ...but its records are still there until reaped
    reap_orphans()
    assert not Path(runtime_dir).exists()
    if cgroup:
        assert not any((CGROUP_ROOT / c / "retool" / cgroup).exists() for c in ("memory", "pids", ""))


def test_reaper_kills_a_live_jail_whose_owner_is_gone():
    jail = Jail([sys.executable, "-c", "import time; time.sleep(600)"], SandboxLimits())
    jail.name = "999999999-1-0rphan00"  # an owner pid that cannot exist
    jail.runtime_dir = runtime_root() / jail.name
    jail.start()
    assert jail.alive
    assert reap_orphans() >= 1
    assert jail.process.wait(timeout=10) is not None
    assert not jail.runtime_dir.exists()
    if jail.cgroup is not None:
        assert not any(d.exists() for d in jail.cgroup.dirs)
