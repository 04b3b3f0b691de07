"""The default backend: an IPython kernel (ipykernel) in a local jail, spoken to with jupyter-client.

Why a kernel: it is the interpreter people already know (names persist across cells, the last
expression is displayed, errors come back as structured ``ename``/``evalue``), and jupyter-client
does the protocol for us. We launch the kernel ourselves rather than through ``KernelManager``
because the process must start inside the jail (``isolation.Jail``) and be killed as a whole tree.

Transport is IPC only: the kernel binds Unix sockets inside the jail's private ``/run/ipc`` tmpfs,
which the host reaches through ``/proc/<jail pid>/root``. No TCP port is opened anywhere.

Failure handling, all inside ``run`` (which never raises):

* deadline passed   → ``interrupt_request`` on the control channel (works through the jail, unlike a
  signal to the launcher); if the cell is not back within ``interrupt_grace_s`` the kernel is
  replaced → ``timeout`` (``session_reset`` when replaced)
* kernel died       → ``crashed`` (or ``oom`` when the cgroup saw an OOM kill); a fresh kernel
  serves the next call
* ``MemoryError``   → ``oom``; the kernel is replaced if it still holds most of its memory
* output over cap   → the cell is interrupted → ``output_limit`` with head and tail kept
"""

from __future__ import annotations

import contextvars
import json
import logging
import queue
import sys
import uuid

import psutil
from jupyter_client.blocking import BlockingKernelClient
from jupyter_core.utils import ensure_event_loop

from retool.sandbox.base import (
    INTERRUPTED_ERROR,
    CappedText,
    ExecResult,
    ExecStatus,
    SandboxLimits,
    SandboxUnavailable,
    Session,
    Stopwatch,
    status_for_exception,
    summarize_error,
)
from retool.sandbox.isolation import CONFIG_DIR, IPC_DIR, Jail

log = logging.getLogger(__name__)

KERNEL_ARGS = [
    "--HistoryManager.enabled=False",  # no sqlite history file, faster start
    "--IPKernelApp.quiet=True",
    "--InteractiveShell.colors=nocolor",
    "--Application.log_level=WARN",
]
REAP_CHILDREN = """
import os as _os
try:
    while _os.waitpid(-1, _os.WNOHANG)[0]:
        pass
except ChildProcessError:
    pass
del _os
"""
DEFAULT_PRELOAD = ("numpy", "sympy")
POLL_S = 0.05  # how often a waiting cell checks that the kernel is still alive


class JupyterSession(Session):
    """One jailed IPython kernel. Stateful across ``run`` calls until reset."""

    backend = "jupyter"

    def __init__(
        self,
        limits: SandboxLimits | None = None,
        startup_timeout: float = 60.0,
        preload: tuple[str, ...] = DEFAULT_PRELOAD,
    ) -> None:
        super().__init__(limits)
        self.startup_timeout = startup_timeout
        self.preload = preload
        self._jail: Jail | None = None
        self._client: BlockingKernelClient | None = None
        # jupyter-client's blocking calls keep their event loop in a context variable; a private
        # context gives this session one loop of its own, whichever thread (or asyncio.to_thread,
        # which copies the caller's context) calls it. Entering it from two threads at once fails
        # loudly: a session serves one caller at a time.
        self._context = contextvars.Context()
        self._context.run(self._start)

    # -- lifecycle -------------------------------------------------------------------------------

    def _start(self) -> None:
        conn = {
            "transport": "ipc",
            "ip": f"{IPC_DIR}/kernel",
            "shell_port": 1,
            "iopub_port": 2,
            "stdin_port": 3,
            "control_port": 4,
            "hb_port": 5,
            "key": uuid.uuid4().hex,
            "signature_scheme": "hmac-sha256",
            "kernel_name": "retool-sandbox",
        }
        argv = [sys.executable, "-s", "-m", "ipykernel_launcher", "-f", f"{CONFIG_DIR}/kernel.json", *KERNEL_ARGS]
        jail = Jail(argv, self.limits, config_files={"kernel.json": json.dumps(conn)}).start()
        client = BlockingKernelClient()
        client.load_connection_info({**conn, "ip": jail.host_path(f"{IPC_DIR}/kernel")})
        client.start_channels()
        self._jail, self._client = jail, client
        self._kernel_pid: int | None = None
        if not self._wait_ready():
            jail.wait_output() if not jail.alive else None
            how = "exited during start-up" if not jail.alive else f"did not answer within {self.startup_timeout:.0f} s"
            detail = jail.stderr.text().strip()[-2000:] or "(nothing on stderr)"
            self._stop()
            raise SandboxUnavailable(f"the jupyter kernel {how}: {detail}")

    def _wait_ready(self) -> bool:
        """Ready means the shell answers *and* IOPub delivers: a SUB socket joins late, and output
        published before it joined is lost. So send kernel_info until its IOPub status arrives."""
        watch = Stopwatch()
        while watch.elapsed < self.startup_timeout and self._jail.alive:
            msg_id = self._client.kernel_info()
            try:
                while True:
                    msg = self._client.get_iopub_msg(timeout=0.25)
                    if msg["parent_header"].get("msg_id") == msg_id:
                        break
            except queue.Empty:
                continue
            self._discard_reply(msg_id)
            self._drain_iopub()
            self._kernel_pid = self._jail.main_pid()
            self._preload()
            return True
        return False

    def _preload(self) -> None:
        """Import the usual modules while the session is still warming in the pool, so the
        trajectory's first ``import sympy`` is a dictionary lookup. The user namespace stays empty."""
        if self.preload:
            code = "\n".join(f"try:\n    __import__({m!r})\nexcept ImportError:\n    pass" for m in self.preload)
            self._discard_reply(self._client.execute(code, silent=True, store_history=False), timeout=self.startup_timeout)

    def _drain_iopub(self) -> None:
        while True:
            try:
                self._client.get_iopub_msg(timeout=0)
            except queue.Empty:
                return

    def _stop(self) -> None:
        if self._client is not None:
            self._client.stop_channels()
            self._client = None
            ensure_event_loop().close()  # the loop jupyter-client made in this session's context
        if self._jail is not None:
            self._jail.kill()
            self._jail = None

    def restart(self) -> None:
        self._context.run(self._restart)

    def _restart(self) -> None:
        self._stop()
        self._start()

    def close(self) -> None:
        self._context.run(self._stop)

    @property
    def alive(self) -> bool:
        return self._jail is not None and self._jail.alive

    def _try_restart(self) -> str | None:
        """Replace the kernel; returns why it failed, if it did (``run`` must not raise)."""
        try:
            self._restart()
            return None
        except Exception as exc:  # noqa: BLE001 - reported in the ExecResult instead
            log.error("jupyter sandbox restart failed: %s", exc)
            return f"{type(exc).__name__}: {exc}"

    # -- running cells ---------------------------------------------------------------------------

    def run(self, code: str, timeout: float | None = None) -> ExecResult:
        return self._context.run(self._run, code, timeout)

    def _run(self, code: str, timeout: float | None) -> ExecResult:
        timeout = self.limits.timeout_s if timeout is None else timeout
        self._interrupt_requested.clear()
        watch = Stopwatch()
        reset = False
        if not self.alive:
            failure = self._try_restart()
            if failure:
                return ExecResult(ExecStatus.CRASHED, error=f"sandbox unavailable: {failure}", session_reset=True)
            reset = True
        result = self._execute(code, timeout, watch)
        return ExecResult(**{**result.__dict__, "session_reset": result.session_reset or reset})

    def _execute(self, code: str, timeout: float, watch: Stopwatch) -> ExecResult:
        client, jail = self._client, self._jail
        out, err = CappedText(self.limits.max_output_bytes), CappedText(self.limits.max_output_bytes)
        msg_id = client.execute(code, silent=False, store_history=False, allow_stdin=False, stop_on_error=False)
        ename = evalue = None
        stopped_for: ExecStatus | None = None  # set once we interrupted the cell ourselves
        deadline = timeout

        while True:
            if stopped_for is None and self._take_interrupt():
                stopped_for, deadline = ExecStatus.INTERRUPTED, watch.elapsed + self.limits.interrupt_grace_s
                self._interrupt()
            try:
                msg = client.get_iopub_msg(timeout=min(POLL_S, max(watch.remaining(deadline), 0.001)))
            except queue.Empty:
                if not jail.alive:
                    return self._after_death(out, err, watch)
                if watch.elapsed >= deadline:
                    if stopped_for is not None:  # the interrupt did not bring the cell back
                        return self._replace_after(stopped_for, out, err, watch)
                    stopped_for, deadline = ExecStatus.TIMEOUT, watch.elapsed + self.limits.interrupt_grace_s
                    self._interrupt()
                continue
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            kind, content = msg["msg_type"], msg["content"]
            if kind == "stream":
                (out if content.get("name") == "stdout" else err).write(content.get("text", ""))
            elif kind in ("execute_result", "display_data"):
                text = content.get("data", {}).get("text/plain")
                if text is not None:
                    out.write(text + "\n")
            elif kind == "error":
                ename, evalue = content.get("ename", "Error"), content.get("evalue", "")
            elif kind == "status" and content.get("execution_state") == "idle":
                break
            if stopped_for is None and (out.overflowed or err.overflowed):
                stopped_for, deadline = ExecStatus.OUTPUT_LIMIT, watch.elapsed + self.limits.interrupt_grace_s
                self._interrupt()

        self._discard_reply(msg_id)
        if self._kernel_pid is not None and jail.kill_strays(keep=self._kernel_pid):
            self._reap_zombies()
        return self._finish(out, err, ename, evalue, stopped_for, watch)

    def _finish(self, out, err, ename, evalue, stopped_for, watch) -> ExecResult:
        truncated = out.overflowed or err.overflowed
        if truncated:
            stopped_for = ExecStatus.OUTPUT_LIMIT
        if stopped_for is ExecStatus.TIMEOUT:
            error = "TimeoutError: the cell ran past its time limit and was interrupted"
            return ExecResult(ExecStatus.TIMEOUT, out.text(), err.text(), error, watch.elapsed, truncated)
        if stopped_for is ExecStatus.INTERRUPTED:
            return ExecResult(ExecStatus.INTERRUPTED, out.text(), err.text(), INTERRUPTED_ERROR, watch.elapsed, truncated)
        if stopped_for is ExecStatus.OUTPUT_LIMIT:
            error = f"OutputLimitError: the cell printed more than {self.limits.max_output_bytes:,} bytes and was stopped"
            return ExecResult(ExecStatus.OUTPUT_LIMIT, out.text(), err.text(), error, watch.elapsed, True)
        if ename is None:
            return ExecResult(ExecStatus.OK, out.text(), err.text(), None, watch.elapsed)
        status = status_for_exception(ename)
        reset = status is ExecStatus.OOM and self._memory_mostly_used() and self._try_restart() is None
        return ExecResult(status, out.text(), err.text(), summarize_error(ename, evalue), watch.elapsed, False, reset)

    def _reap_zombies(self) -> None:
        """Killed children of the kernel stay zombies (holding pids) until the kernel waits for them."""
        reap_id = self._client.execute(REAP_CHILDREN, silent=True, store_history=False)
        self._discard_reply(reap_id)

    def _interrupt(self) -> None:
        """Ask the kernel to interrupt itself (SIGINT to its process group, sent from inside)."""
        self._client.control_channel.send(self._client.session.msg("interrupt_request", {}))

    def _discard_reply(self, msg_id: str, timeout: float = 1.0) -> None:
        """Consume the execute_reply so replies never pile up in the shell queue."""
        try:
            while self._client.get_shell_msg(timeout=timeout)["parent_header"].get("msg_id") != msg_id:
                pass
        except queue.Empty:
            pass

    def _memory_mostly_used(self) -> bool:
        try:
            tree = psutil.Process(self._jail.child_pid)
            rss = sum(p.memory_info().rss for p in [tree, *tree.children(recursive=True)])
        except psutil.Error:
            return True
        return rss > self.limits.memory_mb * 1024 * 1024 // 2

    def _after_death(self, out: CappedText, err: CappedText, watch: Stopwatch) -> ExecResult:
        status = ExecStatus.OOM if self._jail.oom_killed() else ExecStatus.CRASHED
        code = self._jail.process.returncode
        error = "the interpreter was killed for using too much memory" if status is ExecStatus.OOM else (
            f"the interpreter died (exit status {code})"
        )
        failure = self._try_restart()
        if failure:
            error += f"; restart failed: {failure}"
        return ExecResult(status, out.text(), err.text(), f"KernelDied: {error}", watch.elapsed, out.overflowed, True)

    def _replace_after(self, status: ExecStatus, out: CappedText, err: CappedText, watch: Stopwatch) -> ExecResult:
        """The interrupt was ignored (SIGINT masked, stuck in C): replace the kernel."""
        failure = self._try_restart()
        error = (
            "TimeoutError: the cell ran past its time limit, ignored the interrupt, and the interpreter was restarted"
            if status is ExecStatus.TIMEOUT
            else f"{INTERRUPTED_ERROR}; it ignored the interrupt and the interpreter was restarted"
            if status is ExecStatus.INTERRUPTED
            else f"OutputLimitError: the cell printed more than {self.limits.max_output_bytes:,} bytes; "
            "the interpreter was restarted"
        )
        if failure:
            error += f"; restart failed: {failure}"
        return ExecResult(status, out.text(), err.text(), error, watch.elapsed, out.overflowed or err.overflowed, True)
