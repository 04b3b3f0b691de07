"""The docker backend against real containers: isolation, limits and the never-raise contract.

Needs a reachable Docker engine and the ``retool-sandbox:latest`` image
(``sudo dockerd &`` then ``sudo bash sandbox/build_offline_image.sh``); every test is skipped,
with the reason, where either is missing.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from collections.abc import Iterator

import pytest

from retool.sandbox.base import ExecStatus, SandboxLimits, SandboxUnavailable

pytestmark = pytest.mark.docker

docker_backend = pytest.importorskip("retool.sandbox.docker")


@pytest.fixture(scope="module")
def engine() -> Iterator[object]:
    """The Docker client, once we know a session can start here (else skip the module)."""
    try:
        probe = docker_backend.DockerSession()
    except SandboxUnavailable as exc:
        pytest.skip(str(exc))
    client = probe._client
    probe.close()
    yield client


@pytest.fixture
def session(engine: object) -> Iterator[docker_backend.DockerSession]:
    with docker_backend.DockerSession(SandboxLimits(timeout_s=20), client=engine) as s:
        yield s


def own_containers(client) -> list[str]:
    """Ids of the sandbox containers this test process owns."""
    labels = [f"{docker_backend.LABEL}=1", f"retool.owner_pid={os.getpid()}"]
    return [c.id for c in client.containers.list(all=True, filters={"label": labels})]


def test_state_persists_across_cells(session) -> None:
    assert session.run("x = 40\ndef f(y):\n    return y + 2").ok
    result = session.run("print(f(x))")
    assert result.status is ExecStatus.OK
    assert result.stdout == "42\n"


def test_last_expression_is_displayed(session) -> None:
    assert session.run("a = 6\na * 7").stdout == "42\n"
    assert session.run("'text'").stdout == "'text'\n"
    assert session.run("a * 7;").stdout == ""  # a trailing semicolon silences it, as in Jupyter
    assert session.run("None").stdout == ""


def test_every_kind_of_write_is_captured(session) -> None:
    result = session.run("import os, sys\nprint('p')\nos.write(1, b'raw\\n')\nos.system('echo sh; echo e >&2')\nsys.stderr.write('err\\n')")
    assert result.ok
    assert result.stdout.splitlines()[:3] == ["p", "raw", "sh"]
    assert "e\n" in result.stderr and "err\n" in result.stderr


def test_scientific_stack_imports(session) -> None:
    result = session.run(
        "import numpy as np, sympy as sp, scipy.optimize as so\n"
        "print(int(np.arange(10).sum()), sp.factorint(2**32 + 1), round(so.brentq(lambda t: t*t - 2, 0, 2), 6))"
    )
    assert result.status is ExecStatus.OK, result.error
    assert result.stdout == "45 {641: 1, 6700417: 1} 1.414214\n"


def test_errors_are_one_line(session) -> None:
    result = session.run("1 / 0")
    assert result.status is ExecStatus.ERROR
    assert result.error == "ZeroDivisionError: division by zero"
    syntax = session.run("def f(:\n    pass")
    assert syntax.status is ExecStatus.ERROR
    assert syntax.error.startswith("SyntaxError:") and "\n" not in syntax.error
    assert session.run("1 + 1").stdout == "2\n"  # errors cost no state


def test_timeout_interrupts_and_keeps_state(session) -> None:
    session.run("kept = 'yes'")
    result = session.run("import time\ntime.sleep(60)", timeout=1)
    assert result.status is ExecStatus.TIMEOUT
    assert not result.session_reset
    assert result.duration_s < 1 + session.limits.interrupt_grace_s
    assert session.run("kept").stdout == "'yes'\n"


def test_interrupt_from_another_thread_stops_the_cell_and_keeps_state(session) -> None:
    import threading

    session.run("kept = 'yes'")
    threading.Timer(0.5, session.interrupt).start()
    result = session.run("import time\ntime.sleep(60)", timeout=30)
    assert result.status is ExecStatus.INTERRUPTED and not result.session_reset
    assert result.duration_s < 5
    assert session.run("kept").stdout == "'yes'\n"


def test_cell_that_ignores_sigint_costs_a_reset(session) -> None:
    session.run("kept = 1")
    result = session.run("import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True:\n    pass", timeout=1)
    assert result.status is ExecStatus.TIMEOUT
    assert result.session_reset
    assert session.run("'kept' in globals()").stdout == "False\n"
    assert session.run("1 + 1").stdout == "2\n"


def test_hard_exit_is_a_crash_and_the_next_call_works(session) -> None:
    result = session.run("import os\nos._exit(3)")
    assert result.status is ExecStatus.CRASHED
    assert result.session_reset
    assert "exit code 3" in result.error
    assert session.alive
    assert session.run("6 * 7").stdout == "42\n"


def test_memory_bomb_is_contained(engine) -> None:
    with docker_backend.DockerSession(SandboxLimits(memory_mb=256), client=engine) as small:
        python_refusal = small.run("x = [0] * 10**10")  # malloc refuses: MemoryError, state kept
        assert python_refusal.status is ExecStatus.OOM
        assert not python_refusal.session_reset
        kernel_kill = small.run("blocks = []\nwhile True:\n    blocks.append(bytearray(50 * 2**20))", timeout=30)
        assert kernel_kill.status is ExecStatus.OOM, kernel_kill
        assert small.run("1 + 1").stdout == "2\n"


def test_no_network(session) -> None:
    result = session.run("import socket\nsocket.create_connection(('1.1.1.1', 80), timeout=2)")
    assert result.status is ExecStatus.ERROR
    assert result.error.startswith(("OSError", "TimeoutError", "ConnectionRefusedError"))


def test_root_is_read_only_and_work_is_writable(session) -> None:
    denied = session.run("open('/etc/owned', 'w')")
    assert denied.status is ExecStatus.ERROR and "Read-only file system" in denied.error
    result = session.run("import os\nopen('/work/note.txt', 'w').write('hi')\nos.getcwd(), open('note.txt').read()")
    assert result.stdout == "('/work', 'hi')\n"


def test_runs_as_unprivileged_user(session) -> None:
    assert session.run("import os\nos.getuid(), os.getgid()").stdout == "(1000, 1000)\n"


def test_fork_bomb_is_contained(session) -> None:
    result = session.run("import os\nwhile True:\n    os.fork()", timeout=10)
    assert result.status in (ExecStatus.ERROR, ExecStatus.TIMEOUT), result
    assert session.run("6 * 7").stdout == "42\n"


def test_huge_output_is_capped_without_reaching_the_host(session) -> None:
    before_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result = session.run("print('x' * 100_000_000)")
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before_kb) / 1024
    assert result.status is ExecStatus.OUTPUT_LIMIT
    assert result.truncated
    assert "bytes of output truncated" in result.stdout
    assert len(result.stdout.encode()) < session.limits.max_output_bytes + 100
    assert grown_mb < 50
    assert session.run("1 + 1").stdout == "2\n"


def test_close_removes_the_container(engine) -> None:
    before = set(own_containers(engine))
    s = docker_backend.DockerSession(client=engine)
    mine = set(own_containers(engine)) - before
    assert len(mine) == 1
    s.close()
    s.close()  # idempotent
    assert not s.alive
    assert not mine & set(own_containers(engine))
    assert s.run("1").status is ExecStatus.INFRA_ERROR  # a closed session answers, never raises


def test_reap_orphans_removes_containers_of_dead_owners(engine) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    import socket

    orphan = engine.containers.create(
        "retool-sandbox:latest",
        labels={docker_backend.LABEL: "1", "retool.owner_pid": str(dead.pid), "retool.owner_host": socket.gethostname()},
    )
    assert docker_backend.reap_orphans(engine) >= 1
    assert orphan.id not in [c.id for c in engine.containers.list(all=True)]


def test_missing_image_says_how_to_build_it(engine) -> None:
    with pytest.raises(SandboxUnavailable, match="build_offline_image.sh"):
        docker_backend.DockerSession(image="retool-sandbox:no-such-tag", client=engine)
