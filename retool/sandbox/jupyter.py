"""The default backend: an IPython kernel (ipykernel) in a local jail, spoken to with jupyter-client.

Why a kernel: it is the interpreter people already know (names persist across cells, the last
expression is displayed, errors come back as structured ``ename``/``evalue``), and jupyter-client
does the protocol for us. We launch the kernel ourselves rather than through ``KernelManager``
because the process must start inside the jail (``isolation.Jail``) and be killed as a whole tree.

Transport is IPC only: the kernel binds Unix sockets inside the jail's private ``/run/ipc`` tmpfs.
The host never connects by name (the jail could swap a socket for a symlink to one of the host's):
each socket is opened once, without following links (``Jail.open_inside``), and the channels
connect to ``/proc/self/fd/N``. No TCP port is opened anywhere.

Everything the kernel sends is untrusted (the cell runs inside it and can forge messages): a
message that does not parse, is unsigned or has the wrong shape is dropped and counted; at most
``IOPUB_QUEUE`` messages of at most ``_max_message_bytes`` wait in the host between reads, so a
chattering kernel cannot grow the host; deadlines are kept by the clock, however busy IOPub is.
Output written while no cell runs (a thread a cell left behind) is dropped at the next cell and
counted in the result's ``notes``; threads a cell started are stopped when it ends (or reported).

Failure handling, all inside ``run`` (which never raises):

* deadline passed   → ``interrupt_request`` on the control channel; if the cell is not back within
  ``interrupt_grace_s`` the kernel is replaced → ``timeout`` (``session_reset`` when replaced)
* kernel died       → ``crashed`` (``oom`` when the cgroup saw an OOM kill; ``infra_error`` when it
  was killed from outside the jail, which the cell cannot do: the jail's pid 1 ignores its signals);
  a fresh kernel serves the next call
* kernel stopped publishing (its IOPub socket broken by the cell) → ``crashed``, kernel replaced
* ``MemoryError``   → ``oom``; the kernel is replaced if it still holds most of its memory
* output over cap   → the cell is interrupted → ``output_limit`` with head and tail kept
* no kernel can be started → ``infra_error``
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import queue
import signal
import time
import uuid
from dataclasses import replace
from typing import Any

import psutil
import zmq
from jupyter_client.blocking import BlockingKernelClient
from jupyter_client.connect import channel_socket_types
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
from retool.sandbox.isolation import CONFIG_DIR, IPC_DIR, Jail, boot_argv

log = logging.getLogger(__name__)

CHANNELS = {"shell": 1, "iopub": 2, "stdin": 3, "control": 4, "hb": 5}
KERNEL_ARGS = [
    "--HistoryManager.enabled=False",  # no sqlite history file, faster start
    "--IPKernelApp.quiet=True",
    "--InteractiveShell.colors=nocolor",
    "--Application.log_level=WARN",
    "--Session.packer=retool_boot.pack",  # ASCII JSON, size-capped (see jail_boot)
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
MARK_THREADS = "__import__('retool_boot').mark_threads()"  # no name is bound in the user's namespace
STOP_THREADS = "__import__('retool_boot').stop_threads()"
DEFAULT_PRELOAD = ("numpy", "sympy")
POLL_S = 0.05  # how often a waiting cell checks the clock, the kernel and the shell channel
IOPUB_QUEUE = 16  # messages the host holds between reads (ZeroMQ's receive high-water mark)
REPLY_GRACE_S = 0.5  # after the execute_reply: how long to wait for the idle status before giving up on it


class _PinnedClient(BlockingKernelClient):
    """A kernel client whose channels connect to descriptors of the kernel's sockets (never to
    names the jail controls), with bounded receive queues and message sizes. Messages are read
    from the channels themselves (``iopub_channel.get_msg``: a plain ZeroMQ poll), not through the
    client's ``get_*_msg``, which spin up an asyncio loop for every message."""

    def setup(self, fds: dict[str, int], max_message_bytes: int) -> None:
        self._fds, self._max_message_bytes = fds, max_message_bytes

    def _make_url(self, channel: str) -> str:
        return f"ipc:///proc/self/fd/{self._fds[channel]}"

    def _create_connected_socket(self, channel: str, identity: bytes | None = None) -> zmq.Socket:
        sock = self.context.socket(channel_socket_types[channel])
        sock.linger = 0
        sock.rcvhwm = IOPUB_QUEUE if channel == "iopub" else 64
        sock.setsockopt(zmq.MAXMSGSIZE, self._max_message_bytes)  # a bigger one drops the connection
        if identity:
            sock.identity = identity
        sock.connect(self._make_url(channel))
        return sock


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
        self._client: _PinnedClient | None = None
        self._socket_fds: list[int] = []
        # jupyter-client's blocking calls keep their event loop in a context variable; a private
        # context gives this session one loop of its own, whichever thread (or asyncio.to_thread,
        # which copies the caller's context) calls it. Entering it from two threads at once fails
        # loudly: a session serves one caller at a time.
        self._context = contextvars.Context()
        self._context.run(self._start)

    # -- lifecycle -------------------------------------------------------------------------------

    def _start(self) -> None:
        conn = {"transport": "ipc", "ip": f"{IPC_DIR}/kernel", **{f"{c}_port": p for c, p in CHANNELS.items()},
                "key": uuid.uuid4().hex, "signature_scheme": "hmac-sha256", "kernel_name": "retool-sandbox"}
        argv = boot_argv("kernel", "-f", f"{CONFIG_DIR}/kernel.json", *KERNEL_ARGS)
        jail = Jail(argv, self.limits, config_files={"kernel.json": json.dumps(conn)})
        self._jail = jail
        try:
            jail.start()
            self._socket_fds = self._open_sockets(jail)
            client = _PinnedClient()
            client.load_connection_info(conn)
            client.setup(dict(zip(CHANNELS, self._socket_fds)), self._max_message_bytes())
            client.start_channels()
            self._client = client
            ready = self._wait_ready()
        except SandboxUnavailable:
            self._stop()
            raise
        except Exception as exc:  # noqa: BLE001 - whatever broke, this kernel cannot be used
            self._stop()
            raise SandboxUnavailable(f"the jupyter kernel could not be started: {exc}") from exc
        if not ready:
            if not jail.alive:
                jail.wait_output()
            how = "exited during start-up" if not jail.alive else f"did not answer within {self.startup_timeout:.0f} s"
            detail = jail.stderr.text().strip()[-2000:] or "(nothing on stderr)"
            self._stop()
            raise SandboxUnavailable(f"the jupyter kernel {how}: {detail}")

    def _max_message_bytes(self) -> int:
        # the kernel's packer cuts strings to the output cap; ASCII escapes take up to 6 bytes a character
        return 6 * self.limits.max_output_bytes + (256 << 10)

    def _open_sockets(self, jail: Jail) -> list[int]:
        """Wait for the kernel to bind its sockets, then hold a descriptor of each (see module doc)."""
        watch = Stopwatch()
        fds: list[int] = []
        while len(fds) < len(CHANNELS):
            port = list(CHANNELS.values())[len(fds)]
            try:
                fds.append(jail.open_inside(f"{IPC_DIR}/kernel-{port}"))
                continue
            except FileNotFoundError:
                pass
            except OSError:
                for fd in fds:
                    os.close(fd)
                raise
            if not jail.alive or watch.elapsed > self.startup_timeout:
                for fd in fds:
                    os.close(fd)
                return []
            time.sleep(0.01)
        return fds

    def _wait_ready(self) -> bool:
        """Ready means the shell answers *and* IOPub delivers: a SUB socket joins late, and output
        published before it joined is lost. So send kernel_info until its IOPub status arrives."""
        if not self._socket_fds:
            return False
        watch = Stopwatch()
        while watch.elapsed < self.startup_timeout and self._jail.alive:
            msg_id = self._client.kernel_info()
            try:
                while True:
                    msg = self._client.iopub_channel.get_msg(timeout=0.25)
                    if _parent_id(msg) == msg_id:
                        break
            except queue.Empty:
                continue
            self._discard_reply(msg_id)
            self._drain_iopub()
            self._preload()
            self._base_threads = self._jail.thread_count()
            self._unstoppable = False
            return True
        return False

    def _preload(self) -> None:
        """Import the usual modules while the session is still warming in the pool, so the
        trajectory's first ``import sympy`` is a dictionary lookup. The user namespace stays empty.
        Then remember which threads are the kernel's own."""
        code = "\n".join(f"try:\n    __import__({m!r})\nexcept ImportError:\n    pass" for m in self.preload)
        self._discard_reply(self._client.execute(f"{code}\n{MARK_THREADS}", silent=True, store_history=False),
                            timeout=self.startup_timeout)

    def _drain_iopub(self) -> int:
        """Drop everything waiting on IOPub; returns the bytes of output text that were dropped."""
        dropped = 0
        while True:
            try:
                msg = self._client.iopub_channel.get_msg(timeout=0)
            except queue.Empty:
                return dropped
            except Exception:  # noqa: BLE001 - a message the kernel garbled: dropped all the same
                continue
            fields = _fields(msg)
            if fields is not None and fields[1] == "stream":
                dropped += len(str(fields[2].get("text", "")).encode("utf-8", "replace"))

    def _stop(self) -> None:
        if self._client is not None:
            self._client.stop_channels()
            self._client = None
            ensure_event_loop().close()  # the loop jupyter-client made in this session's context
        for fd in self._socket_fds:
            os.close(fd)
        self._socket_fds = []
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

    def _run(self, code: str, timeout: float) -> ExecResult:
        return self._context.run(self._run_in_context, code, timeout)

    def _run_in_context(self, code: str, timeout: float) -> ExecResult:
        watch = Stopwatch()
        reset = False
        if not self.alive or self._client is None:
            failure = self._try_restart()
            if failure:
                return ExecResult(ExecStatus.INFRA_ERROR, error=f"SandboxUnavailable: {failure}", session_reset=True)
            reset = True
        result = self._execute(code, timeout, watch)
        return ExecResult(**{**result.__dict__, "session_reset": result.session_reset or reset})

    def _execute(self, code: str, timeout: float, watch: Stopwatch) -> ExecResult:
        notes, reset = [], False
        stale = self._drain_iopub()
        if stale and self._unstoppable:  # a thread that would not stop keeps writing: start clean
            failure = self._try_restart()
            if failure:
                return ExecResult(ExecStatus.INFRA_ERROR, error=f"SandboxUnavailable: {failure}", session_reset=True)
            notes.append("a background thread left by an earlier cell kept writing output; the interpreter was "
                         "restarted (earlier variables are gone)")
            reset = True
        elif stale:
            notes.append(f"{stale:,} bytes of output written while no cell was running were dropped")
        result = self._execute_cell(code, timeout, watch, notes)
        return replace(result, session_reset=True) if reset else result

    def _execute_cell(self, code: str, timeout: float, watch: Stopwatch, notes: list[str]) -> ExecResult:
        client, jail = self._client, self._jail
        out, err = CappedText(self.limits.max_output_bytes), CappedText(self.limits.max_output_bytes)
        self._cpu_before = jail.cpu_seconds() if jail.could_reach_cpu_limit(timeout) else 0.0
        msg_id = client.execute(code, silent=False, store_history=False, allow_stdin=False, stop_on_error=False)
        ename = evalue = None
        stopped_for: ExecStatus | None = None  # set once we interrupted the cell ourselves
        deadline = timeout
        replied_at: float | None = None  # when the shell's execute_reply came
        published = False  # any IOPub message for this cell at all

        while True:
            if stopped_for is None and self._take_interrupt():
                stopped_for, deadline = ExecStatus.INTERRUPTED, watch.elapsed + self.limits.interrupt_grace_s
                self._interrupt()
            if watch.elapsed >= deadline:  # by the clock, however busy IOPub is
                if stopped_for is not None:  # the interrupt did not bring the cell back
                    return self._replace_after(stopped_for, out, err, watch)
                stopped_for, deadline = ExecStatus.TIMEOUT, watch.elapsed + self.limits.interrupt_grace_s
                self._interrupt()
                continue
            if replied_at is not None and watch.elapsed - replied_at > REPLY_GRACE_S:
                if not published:  # the reply came, but IOPub is dead: the cell broke the kernel's wire
                    return self._broken_wire(out, err, watch)
                break
            try:
                msg = client.iopub_channel.get_msg(timeout=min(POLL_S, max(watch.remaining(deadline), 0.001)))
            except queue.Empty:
                if not jail.alive:
                    return self._after_death(out, err, watch)
                if replied_at is None and self._reply_arrived(msg_id):
                    replied_at = watch.elapsed
                continue
            except Exception:  # noqa: BLE001 - unsigned, garbled or forged: dropped
                continue
            fields = _fields(msg)
            if fields is None or fields[0] != msg_id:
                continue
            published = True
            _, kind, content = fields
            if kind == "stream":
                target = out if content.get("name") == "stdout" else err
                target.write(str(content.get("text", "")))
                target.dropped += _int(content.get("retool_dropped"))
            elif kind in ("execute_result", "display_data"):
                data = content.get("data")
                text = data.get("text/plain") if isinstance(data, dict) else None
                if text is not None:
                    out.write(str(text) + "\n")
                    out.dropped += _int(content.get("retool_dropped"))
            elif kind == "error":
                ename, evalue = str(content.get("ename", "Error")), str(content.get("evalue", ""))
            elif kind == "status" and content.get("execution_state") == "idle":
                break
            if stopped_for is None and (out.overflowed or err.overflowed):
                stopped_for, deadline = ExecStatus.OUTPUT_LIMIT, watch.elapsed + self.limits.interrupt_grace_s
                self._interrupt()

        if replied_at is None:
            self._discard_reply(msg_id)
        threads, others = jail.census()
        if others and jail.kill_strays():
            self._silent(REAP_CHILDREN)
            threads = jail.thread_count()
        notes += self._stop_leftover_threads(threads)
        return self._finish(out, err, ename, evalue, stopped_for, watch, tuple(notes))

    def _finish(self, out, err, ename, evalue, stopped_for, watch, notes=()) -> ExecResult:
        truncated = out.overflowed or err.overflowed
        if truncated:
            stopped_for = ExecStatus.OUTPUT_LIMIT
        if stopped_for is ExecStatus.TIMEOUT:
            error = "TimeoutError: the cell ran past its time limit and was interrupted"
            return ExecResult(ExecStatus.TIMEOUT, out.text(), err.text(), error, watch.elapsed, truncated, notes=notes)
        if stopped_for is ExecStatus.INTERRUPTED:
            return ExecResult(ExecStatus.INTERRUPTED, out.text(), err.text(), INTERRUPTED_ERROR, watch.elapsed,
                              truncated, notes=notes)
        if stopped_for is ExecStatus.OUTPUT_LIMIT:
            error = f"OutputLimitError: the cell printed more than {self.limits.max_output_bytes:,} bytes and was stopped"
            return ExecResult(ExecStatus.OUTPUT_LIMIT, out.text(), err.text(), error, watch.elapsed, True, notes=notes)
        if ename is None:
            return ExecResult(ExecStatus.OK, out.text(), err.text(), None, watch.elapsed, notes=notes)
        status = status_for_exception(ename)
        reset = status is ExecStatus.OOM and self._memory_mostly_used() and self._try_restart() is None
        return ExecResult(status, out.text(), err.text(), summarize_error(ename, evalue), watch.elapsed, False, reset,
                          notes)

    # -- what a cell leaves behind ----------------------------------------------------------------

    def _stop_leftover_threads(self, threads: int) -> list[str]:
        """Threads the cell started and left running are stopped (``SystemExit`` raised in them);
        one that will not stop is reported once. ``threads``: the kernel's thread count now."""
        if threads <= self._base_threads:
            return []
        said = self._silent(STOP_THREADS, "__import__('retool_boot').last_stop")
        try:
            stopped, running = (int(n) for n in json.loads(said.strip("'\"")))
        except (ValueError, TypeError, AttributeError):
            stopped = running = 0
        self._base_threads = self._jail.thread_count()  # native threads, and the ones that would not stop
        self._unstoppable = self._unstoppable or running > 0
        notes = []
        if stopped:
            notes.append(f"{stopped} background thread(s) the cell left running were stopped")
        if running:
            notes.append(f"{running} background thread(s) the cell left running could not be stopped")
        return notes

    def _silent(self, code: str, expression: str | None = None, timeout: float = 2.0) -> str | None:
        """Run bookkeeping code in the kernel; returns ``expression``'s repr, read from the
        execute_reply on the shell channel (which no output of the cell's threads can pollute)."""
        msg_id = self._client.execute(code, silent=True, store_history=False,
                                      user_expressions={"r": expression} if expression else None)
        watch = Stopwatch()
        while watch.elapsed < timeout:
            try:
                msg = self._client.shell_channel.get_msg(timeout=max(watch.remaining(timeout), 0.001))
            except queue.Empty:
                return None
            except Exception:  # noqa: BLE001 - garbled: dropped
                continue
            if _parent_id(msg) != msg_id:
                continue
            fields = _fields(msg)
            value = fields[2].get("user_expressions", {}).get("r") if fields else None
            data = value.get("data") if isinstance(value, dict) else None
            text = data.get("text/plain") if isinstance(data, dict) else None
            return text if isinstance(text, str) else None
        return None

    # -- the wire ---------------------------------------------------------------------------------

    def _interrupt(self) -> None:
        """Ask the kernel to interrupt itself (SIGINT to its process group, sent from inside)."""
        self._client.control_channel.send(self._client.session.msg("interrupt_request", {}))

    def _reply_arrived(self, msg_id: str) -> bool:
        """Whether the shell channel has the execute_reply to ``msg_id`` (others are discarded)."""
        while True:
            try:
                msg = self._client.shell_channel.get_msg(timeout=0)
            except queue.Empty:
                return False
            except Exception:  # noqa: BLE001 - garbled: dropped
                continue
            if _parent_id(msg) == msg_id:
                return True

    def _discard_reply(self, msg_id: str, timeout: float = 1.0) -> None:
        """Consume the execute_reply so replies never pile up in the shell queue."""
        watch = Stopwatch()
        while watch.elapsed < timeout:
            try:
                msg = self._client.shell_channel.get_msg(timeout=watch.remaining(timeout))
            except queue.Empty:
                return
            except Exception:  # noqa: BLE001 - garbled: dropped
                continue
            if _parent_id(msg) == msg_id:
                return

    # -- after a failure --------------------------------------------------------------------------

    def _memory_mostly_used(self) -> bool:
        try:
            tree = psutil.Process(self._jail.child_pid)
            rss = sum(p.memory_info().rss for p in [tree, *tree.children(recursive=True)])
        except psutil.Error:
            return True
        return rss > self.limits.memory_mb * 1024 * 1024 // 2

    def _after_death(self, out: CappedText, err: CappedText, watch: Stopwatch) -> ExecResult:
        jail = self._jail
        jail.wait_output(0.5)
        died_of = jail.death_signal()
        cpu_spent = (self._cpu_before or 0.0) + watch.elapsed * (os.cpu_count() or 1) >= self.limits.cpu_seconds
        if jail.oom_killed():
            status, error = ExecStatus.OOM, "the interpreter was killed for using too much memory"
        elif died_of == signal.SIGKILL and not cpu_spent:
            # the jail's pid 1 cannot be sent SIGKILL from inside: this came from the host
            status, error = ExecStatus.INFRA_ERROR, "the interpreter was killed from outside the sandbox"
        elif died_of in (signal.SIGXCPU, signal.SIGKILL):
            status, error = ExecStatus.CRASHED, f"the interpreter used up its CPU time ({self.limits.cpu_seconds} s)"
        else:
            how = f"killed by {signal.Signals(died_of).name}" if died_of else f"exit status {jail.exit_code()}"
            status, error = ExecStatus.CRASHED, f"the interpreter died ({how})"
        failure = self._try_restart()
        if failure:
            error += f"; restart failed: {failure}"
        return ExecResult(status, out.text(), err.text(), f"KernelDied: {error}", watch.elapsed, out.overflowed, True)

    def _broken_wire(self, out: CappedText, err: CappedText, watch: Stopwatch) -> ExecResult:
        failure = self._try_restart()
        error = "KernelProtocolError: the interpreter stopped publishing its output and was restarted"
        if failure:
            error += f"; restart failed: {failure}"
        return ExecResult(ExecStatus.CRASHED, out.text(), err.text(), error, watch.elapsed, False, True)

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


def _fields(msg: Any) -> tuple[str | None, str, dict] | None:
    """``(parent msg_id, msg_type, content)`` of a message, or None if it is not shaped like one."""
    if not isinstance(msg, dict):
        return None
    kind, content = msg.get("msg_type"), msg.get("content")
    if not isinstance(kind, str) or not isinstance(content, dict):
        return None
    return _parent_id(msg), kind, content


def _parent_id(msg: Any) -> str | None:
    parent = msg.get("parent_header") if isinstance(msg, dict) else None
    value = parent.get("msg_id") if isinstance(parent, dict) else None
    return value if isinstance(value, str) else None


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 1 << 62 else 0
