"""The cheapest cold path: every ``run`` is a fresh ``python -c`` in a local jail.

Stateless on purpose: nothing survives between calls (``run`` is one whole program), which makes
it the right backend for single-shot checks such as cold-start trace verification and graders,
and the wrong one for multi-turn rollouts (use ``jupyter``). It shares the jail of the Jupyter
backend (``isolation.Jail``): no network, read-only root, size-capped tmpfs, prlimit, cgroups.

The code travels as a read-only file in the jail's config directory, not on the command line
(argv is limited to 128 KiB per argument and shows in ``ps``). The last expression of the cell
is printed like a notebook would, so both local backends answer ``1+1`` with ``2``.
"""

from __future__ import annotations

import re
import sys

from retool.sandbox.base import INTERRUPTED_ERROR, ExecResult, ExecStatus, SandboxLimits, Session, Stopwatch
from retool.sandbox.base import status_for_exception
from retool.sandbox.isolation import CONFIG_DIR, Jail, find_bwrap

BOOTSTRAP = f"""
import ast, sys
source = open("{CONFIG_DIR}/cell.py", encoding="utf-8").read()
tree = ast.parse(source, "<cell>")
last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
namespace = {{"__name__": "__main__", "__builtins__": __builtins__}}
exec(compile(tree, "<cell>", "exec"), namespace)
if last is not None:
    value = eval(compile(ast.Expression(last.value), "<cell>", "eval"), namespace)
    if value is not None:
        print(repr(value))
"""

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

    def __init__(self, limits: SandboxLimits | None = None) -> None:
        super().__init__(limits)
        find_bwrap()  # fail at construction, with the fix, when the jail cannot work here
        self._closed = False

    def run(self, code: str, timeout: float | None = None) -> ExecResult:
        timeout = self.limits.timeout_s if timeout is None else timeout
        watch = Stopwatch()
        self._interrupt_requested.clear()
        jail = Jail(
            [sys.executable, "-I", "-c", BOOTSTRAP],
            self.limits,
            config_files={"cell.py": code},
            output_limit=self.limits.max_output_bytes,
        )
        try:
            jail.start()
        except Exception as exc:  # noqa: BLE001 - run never raises; the failure is the result
            jail.kill()
            return ExecResult(ExecStatus.CRASHED, error=f"SandboxUnavailable: {exc}", duration_s=watch.elapsed)
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
        finally:
            jail.kill()
            jail.wait_output()
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

