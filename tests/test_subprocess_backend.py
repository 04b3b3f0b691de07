"""The stateless subprocess backend: one jailed ``python -c`` per call."""

from retool.sandbox import ExecStatus, SandboxLimits, create_session


def test_each_call_is_a_fresh_program(subprocess_session):
    assert subprocess_session.run("x = 1\nx + 41").stdout == "42\n"
    result = subprocess_session.run("print(x)")
    assert result.status is ExecStatus.ERROR and result.error == "NameError: name 'x' is not defined"


def test_statuses(subprocess_session):
    assert subprocess_session.run("1/0").error == "ZeroDivisionError: division by zero"
    assert subprocess_session.run("def f(:\n  pass").error.startswith("SyntaxError")
    assert subprocess_session.run("import time\ntime.sleep(30)", timeout=1).status is ExecStatus.TIMEOUT
    assert subprocess_session.run("import os\nos._exit(4)").status is ExecStatus.CRASHED
    assert subprocess_session.run("import ctypes\nctypes.string_at(0)").status is ExecStatus.CRASHED
    assert subprocess_session.run("bytearray(10**11)").status is ExecStatus.OOM
    assert subprocess_session.run("import sys\nsys.exit(0)").status is ExecStatus.OK


def test_output_cap():
    with create_session("subprocess", SandboxLimits(max_output_bytes=4096)) as session:
        result = session.run("print('y' * 10**7)")
    assert result.status is ExecStatus.OUTPUT_LIMIT and result.truncated and len(result.stdout) < 4300


def test_large_code_travels_as_a_file_not_argv(subprocess_session):
    code = "values = [\n" + ",\n".join(str(i) for i in range(60_000)) + "]\nprint(sum(values))"
    assert len(code) > 300_000
    assert subprocess_session.run(code).stdout == f"{sum(range(60_000))}\n"


def test_interrupt_from_another_thread_kills_the_program(subprocess_session):
    import threading

    threading.Timer(0.5, subprocess_session.interrupt).start()
    result = subprocess_session.run("import time\nprint('started', flush=True)\ntime.sleep(60)", timeout=30)
    assert result.status is ExecStatus.INTERRUPTED and result.duration_s < 5
    assert subprocess_session.run("print(1)").ok
