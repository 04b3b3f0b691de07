"""The Jupyter backend against a real, jailed ipykernel."""

from __future__ import annotations

import os

import psutil
import pytest

from retool.sandbox import ExecStatus, SandboxLimits, create_session


def test_names_persist_across_cells_and_last_expression_is_shown(jupyter_session):
    assert jupyter_session.run("x = 20\ndef double(v):\n    return 2 * v").ok
    result = jupyter_session.run("double(x) + 2")
    assert result.status is ExecStatus.OK and result.stdout == "42\n"


def test_scientific_stack_is_importable(jupyter_session):
    result = jupyter_session.run(
        "import numpy as np, sympy as sp, scipy.optimize as so\n"
        "print(int(np.arange(5).sum()), sp.factorint(360), round(float(so.brentq(lambda t: t*t - 2, 0, 2)), 6))"
    )
    assert result.ok, result
    assert result.stdout == "10 {2: 3, 3: 2, 5: 1} 1.414214\n"


def test_error_is_one_line_and_session_survives(jupyter_session):
    jupyter_session.run("kept = 'yes'")
    result = jupyter_session.run("undefined_name + 1")
    assert result.status is ExecStatus.ERROR
    assert result.error == "NameError: name 'undefined_name' is not defined"
    assert jupyter_session.run("print(kept)").stdout == "yes\n"


def test_syntax_error_is_reported(jupyter_session):
    result = jupyter_session.run("def f(:\n    pass")
    assert result.status is ExecStatus.ERROR and result.error.startswith("SyntaxError")


def test_stdout_and_stderr_are_separate(jupyter_session):
    result = jupyter_session.run("import sys\nprint('out')\nprint('err', file=sys.stderr)")
    assert result.stdout == "out\n" and result.stderr == "err\n"


def test_timeout_interrupts_and_keeps_state(jupyter_session):
    jupyter_session.run("before = 1")
    result = jupyter_session.run("import time\nprint('started', flush=True)\ntime.sleep(60)", timeout=1.0)
    assert result.status is ExecStatus.TIMEOUT and not result.session_reset
    assert "started" in result.stdout
    assert 1.0 <= result.duration_s < 3.0
    assert jupyter_session.run("print(before)").stdout == "1\n"


def test_interrupt_from_another_thread_stops_the_cell_and_keeps_state(jupyter_session):
    import threading

    jupyter_session.run("before = 1")
    threading.Timer(0.5, jupyter_session.interrupt).start()
    result = jupyter_session.run("import time\nprint('started', flush=True)\ntime.sleep(60)", timeout=30)
    assert result.status is ExecStatus.INTERRUPTED and not result.session_reset
    assert "started" in result.stdout and result.error.startswith("KeyboardInterrupt")
    assert result.duration_s < 5
    assert jupyter_session.run("print(before)").stdout == "1\n"  # and the next cell is not interrupted


def test_sigint_ignoring_cell_gets_a_fresh_kernel(jupyter_session):
    jupyter_session.run("before = 1")
    result = jupyter_session.run("import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True: pass", timeout=1.0)
    assert result.status is ExecStatus.TIMEOUT and result.session_reset
    follow = jupyter_session.run("print('before' in globals())")
    assert follow.ok and follow.stdout == "False\n"


def test_dead_kernel_is_crashed_then_replaced(jupyter_session):
    result = jupyter_session.run("import os\nos._exit(3)")
    assert result.status is ExecStatus.CRASHED and result.session_reset
    assert "exit status 3" in result.error
    assert jupyter_session.run("print(6 * 7)").stdout == "42\n"


def test_memory_error_maps_to_oom():
    with create_session("jupyter", SandboxLimits(memory_mb=1024, timeout_s=20)) as session:
        result = session.run("blocks = []\nwhile True:\n    blocks.append(bytearray(32 * 2**20))")
        assert result.status is ExecStatus.OOM
        assert session.run("print('fine')").stdout == "fine\n"


def test_output_over_the_cap_is_stopped_and_truncated():
    with create_session("jupyter", SandboxLimits(max_output_bytes=10_000)) as session:
        result = session.run("import sys\nfor i in range(10**7):\n    print(i)")
        assert result.status is ExecStatus.OUTPUT_LIMIT and result.truncated
        assert len(result.stdout) < 10_200 and result.stdout.startswith("0\n1\n2\n")
        assert session.run("print('next')").stdout == "next\n"


def test_kernel_runs_jailed_without_tcp_or_host_environment(jupyter_session, monkeypatch):
    result = jupyter_session.run(
        "import os, socket\n"
        "print(os.getcwd(), os.environ.get('HOME'), sorted(socket.if_nameindex()))\n"
        "print('HOST_TOKEN' in os.environ, os.path.exists('/etc/shadow'))"
    )
    assert result.stdout == "/sandbox /sandbox [(1, 'lo')]\nFalse False\n"
    kernel = psutil.Process(jupyter_session._jail.child_pid)  # the jail's pid 1 is the kernel itself
    assert kernel.net_connections(kind="inet") == []  # IPC transport only
    assert "--no-new-privs" not in kernel.cmdline()  # setpriv exec'd into prlimit, then python
    assert kernel.cmdline()[1:3] == ["-s", "/run/retool/retool_boot.py"] and kernel.cmdline()[4] == "kernel"


def test_restart_and_close_end_the_process_tree():
    session = create_session("jupyter")
    first = session._jail.process.pid
    session.restart()
    assert not psutil.pid_exists(first) or psutil.Process(first).status() == psutil.STATUS_ZOMBIE
    jail_pid, runtime = session._jail.process.pid, session._jail.runtime_dir
    session.close()
    session.close()  # idempotent
    assert not session.alive
    assert not psutil.pid_exists(jail_pid) or psutil.Process(jail_pid).status() == psutil.STATUS_ZOMBIE
    assert not runtime.exists()


def test_children_started_by_a_cell_do_not_outlive_it(jupyter_session):
    result = jupyter_session.run(
        "import subprocess, sys\n"
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'], start_new_session=True)\n"
        "print(p.pid)"
    )
    inner_pid = int(result.stdout)
    listing = jupyter_session.run(f"import os\nprint(os.path.exists('/proc/{inner_pid}'))")
    assert listing.stdout == "False\n"


@pytest.mark.parametrize("backend", ["jupyter", "subprocess"])
def test_host_secrets_in_the_environment_never_reach_the_sandbox(backend, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_super_secret_value")
    with create_session(backend) as session:
        result = session.run("import os\nprint(sorted(os.environ))")
    assert "HF_TOKEN" not in result.stdout and os.environ["HF_TOKEN"] not in result.stdout
