"""The cheapest cold path: every ``run`` is a fresh ``python -c`` in a local jail.

Stateless on purpose: nothing survives between calls (``run`` is one whole program), which makes
it the right backend for single-shot checks such as cold-start trace verification and graders,
and the wrong one for multi-turn rollouts (use ``jupyter``). It shares the jail of the Jupyter
backend (``jail.Jail``): no network, read-only root, size-capped tmpfs, prlimit, cgroups.

The code travels as a read-only file in the jail's config directory, not on the command line
(argv is limited to 128 KiB per argument and shows in ``ps``); ``retool_boot.py`` runs it like a
notebook cell, printing the last expression, so both local backends answer ``1+1`` with ``2``.
"""

from __future__ import annotations

import re
import signal

from retool.sandbox.base import INTERRUPTED_ERROR, ExecResult, ExecStatus, SandboxLimits, Session, Stopwatch
from retool.sandbox.base import SandboxUnavailable, status_for_exception
from retool.sandbox.isolation import boot_argv, find_bwrap
from retool.sandbox.jail import Jail

# the last line of a Python traceback: "ZeroDivisionError: division by zero" (or a bare name)
_EXCEPTION_LINE = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Interrupt|Exit|Warning)?)(?::\s?(.*))?$")


def exception_from_stderr(stderr: str) -> tuple[str, str] | None:
    """``(ename, evalue)`` from the traceback Python printed, if it printed one."""
    if "Traceback (most recent call last)" not in stderr and "SyntaxError" not in stderr:
        return None
    for line in reversed(stderr.strip().splitlines()):
        match = _EXCEPTION_LINE.match(line.strip())
        if match and not line.startswith(" "):
            return match.group(1).rsplit(".", 1)[-1], match.group(2) or ""
    return None


class SubprocessSession(Session):
    """A jailed ``python -c`` per call. ``restart`` and ``close`` have nothing to keep."""

    backend = "subprocess"
    stateful = False

    def __init__(self, limits: SandboxLimits | None = None) -> None:
        super().__init__(limits)
        find_bwrap()  # fail at construction, with the fix, when the jail cannot work here
        self._closed = False

    def _run(self, code: str, timeout: float) -> ExecResult:
        watch = Stopwatch()
        jail = Jail(boot_argv("cell"), self.limits, config_files={"cell.py": code},
                    output_limit=self.limits.max_output_bytes)
        try:
            jail.start()
        except (SandboxUnavailable, OSError, RuntimeError) as exc:  # no jail: not the code's doing
            jail.kill()
            return ExecResult(ExecStatus.INFRA_ERROR, error=f"SandboxUnavailable: {exc}".splitlines()[0],
                              duration_s=watch.elapsed)
        stopped_for = None
        try:
            while jail.process.poll() is None:
                if watch.elapsed >= timeout:
                    stopped_for = ExecStatus.TIMEOUT
                    break
                if self._take_interrupt():
                    stopped_for = ExecStatus.INTERRUPTED
                    break
                if jail.output_overflow.wait(min(0.01, watch.remaining(timeout))):
                    stopped_for = ExecStatus.OUTPUT_LIMIT
                    break
            returncode = jail.process.returncode
            oom = jail.oom_killed()
            died_of = jail.death_signal() if returncode and stopped_for is None else None
        finally:
            jail.kill()
            jail.wait_output()
        if died_of == signal.SIGKILL and not oom and watch.elapsed < self.limits.cpu_seconds:
            # the jail's pid 1 ignores SIGKILL from inside: this one came from the host
            return ExecResult(ExecStatus.INFRA_ERROR, jail.stdout.text(), jail.stderr.text(),
                              "ProcessKilled: the interpreter was killed from outside the sandbox", watch.elapsed)
        return self._result(jail, returncode, oom, stopped_for, watch)

    def _result(self, jail: Jail, returncode, oom: bool, stopped_for, watch: Stopwatch) -> ExecResult:
        out, err = jail.stdout, jail.stderr
        stdout, stderr, truncated = out.text(), err.text(), out.overflowed or err.overflowed
        if stopped_for is ExecStatus.TIMEOUT:
            error = "TimeoutError: the program ran past its time limit and was killed"
            return ExecResult(ExecStatus.TIMEOUT, stdout, stderr, error, watch.elapsed, truncated)
        if stopped_for is ExecStatus.INTERRUPTED:
            return ExecResult(ExecStatus.INTERRUPTED, stdout, stderr, INTERRUPTED_ERROR, watch.elapsed, truncated)
        if stopped_for is ExecStatus.OUTPUT_LIMIT or truncated:
            error = f"OutputLimitError: the program printed more than {self.limits.max_output_bytes:,} bytes and was stopped"
            return ExecResult(ExecStatus.OUTPUT_LIMIT, stdout, stderr, error, watch.elapsed, True)
        if oom:
            error = "MemoryError: the program was killed for using too much memory"
            return ExecResult(ExecStatus.OOM, stdout, stderr, error, watch.elapsed)
        if returncode == 0:
            return ExecResult(ExecStatus.OK, stdout, stderr, None, watch.elapsed)
        exception = exception_from_stderr(stderr)
        if exception is not None:
            ename, evalue = exception
            error = f"{ename}: {evalue}" if evalue else ename
            return ExecResult(status_for_exception(ename), stdout, stderr, error, watch.elapsed)
        error = f"ProcessDied: the interpreter exited with status {returncode}"
        return ExecResult(ExecStatus.CRASHED, stdout, stderr, error, watch.elapsed)

    def restart(self) -> None:
        """Nothing persists between calls, so there is nothing to restart."""

    def close(self) -> None:
        self._closed = True

    @property
    def alive(self) -> bool:
        return not self._closed

