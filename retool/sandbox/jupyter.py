"""The default backend: an IPython kernel (ipykernel) in a local jail, spoken to with jupyter-client.

Why a kernel: it is the interpreter people already know (names persist across cells, the last
expression is displayed, errors come back as structured ``ename``/``evalue``), and jupyter-client
does the protocol for us. We launch the kernel ourselves rather than through ``KernelManager``
because the process must start inside the jail (``jail.Jail``) and be killed as a whole tree.

Transport is IPC only: the kernel binds Unix sockets inside the jail's private ``/run/ipc`` tmpfs.
The host never connects by name (the jail could swap a socket for a symlink to one of the host's):
each socket is opened once, without following links (``Jail.open_inside``), and reached through
``/proc/self/fd/N``. No TCP port is opened anywhere. Only the shell, IOPub and control channels are
used (stdin is refused, liveness is the process itself), and they pass through a ``ByteRelay``
that lets each bring at most a budget of bytes from one cell's start to the next
(``jupyter_wire.wire_budgets``).

Everything the kernel sends is untrusted (the cell runs inside it and can forge messages): a
message that does not parse, is unsigned or has the wrong shape is dropped and counted; a cell
ends only on its own execute_reply *and* its idle status; deadlines are kept by the clock, however
busy IOPub is, and the host's memory and parsing per cell are bounded by the relay's budgets.
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
import uuid
from dataclasses import replace

import psutil
from jupyter_core.utils import ensure_event_loop

from retool.sandbox.base import (INTERRUPTED_ERROR, CappedText, ExecResult, ExecStatus, SandboxLimits,
                                 SandboxUnavailable, Session, Stopwatch, status_for_exception, summarize_error)
from retool.sandbox.isolation import CONFIG_DIR, IPC_DIR, boot_argv
from retool.sandbox.jail import Jail
from retool.sandbox.jupyter_wire import (CHANNELS, KERNEL_ARGS, MARK_THREADS, RELAYED, REAP_CHILDREN, STOP_THREADS,
                                         CellOutput, PinnedClient, counts, discard_reply, drain, max_message_bytes,
                                         open_kernel_sockets, parent_id, reply_arrived, silent, wire_budgets)
from retool.sandbox.relay import ByteRelay

log = logging.getLogger(__name__)

DEFAULT_PRELOAD = ("numpy", "sympy")
POLL_S = 0.05  # how often a waiting cell checks the clock, the kernel and the shell channel
REPLY_GRACE_S = 0.5  # after the execute_reply: how long to wait for the idle status before giving up on it


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
        self._client: PinnedClient | None = None
        self._socket_fds: list[int] = []
        self._relay: ByteRelay | None = None
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
            self._socket_fds = open_kernel_sockets(jail, self.startup_timeout)
            if self._socket_fds:
                targets = {c: f"/proc/self/fd/{fd}" for c, fd in zip(RELAYED, self._socket_fds)}
                self._relay = ByteRelay(jail.runtime_dir, targets, wire_budgets(self.limits))
                self._relay.open()
                client = PinnedClient()
                client.load_connection_info(conn)
                client.setup(self._relay, max_message_bytes(self.limits))
                client.start_channels(shell=True, iopub=True, stdin=False, hb=False, control=True)
                self._client = client
            ready = self._wait_ready()
            if ready:
                jail.quiet_output()  # its own stdout/stderr matter only for start-up failures
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

    def _wait_ready(self) -> bool:
        """Ready means the shell answers *and* IOPub delivers: a SUB socket joins late, and output
        published before it joined is lost. So send kernel_info until its IOPub status arrives."""
        if self._client is None:
            return False
        watch = Stopwatch()
        while watch.elapsed < self.startup_timeout and self._jail.alive:
            msg_id = self._client.kernel_info()
            try:
                while True:
                    msg = self._client.iopub_channel.get_msg(timeout=0.25)
                    if parent_id(msg) == msg_id:
                        break
            except queue.Empty:
                continue
            discard_reply(self._client, msg_id)
            drain(self._client, self._relay)
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
        discard_reply(self._client, self._client.execute(f"{code}\n{MARK_THREADS}", silent=True, store_history=False),
                            timeout=self.startup_timeout)

    def _stop(self) -> None:
        if self._client is not None:
            self._client.stop_channels()
            self._client = None
            ensure_event_loop().close()  # the loop jupyter-client made in this session's context
        if self._relay is not None:
            self._relay.close()
            self._relay = None
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
        self._relay.open()
        stale, flooded = drain(self._client, self._relay)
        if flooded or (stale and self._unstoppable):  # something left running keeps writing: start clean
            failure = self._try_restart()
            if failure:
                return ExecResult(ExecStatus.INFRA_ERROR, error=f"SandboxUnavailable: {failure}", session_reset=True)
            what = "flooded the interpreter's output channel" if flooded else "kept writing output"
            notes.append(f"a background thread left by an earlier cell {what}; the interpreter was restarted "
                         "(earlier variables are gone)")
            reset = True
        elif stale:
            notes.append(f"{stale:,} bytes of output written while no cell was running were dropped")
        self._relay.open()  # the cell's own budget
        result = self._execute_cell(code, timeout, watch, notes)
        return replace(result, session_reset=True) if reset else result

    def _execute_cell(self, code: str, timeout: float, watch: Stopwatch, notes: list[str]) -> ExecResult:
        client, jail = self._client, self._jail
        cell = CellOutput(msg_id="", out=CappedText(self.limits.max_output_bytes),
                           err=CappedText(self.limits.max_output_bytes))
        self._cpu_before = jail.cpu_seconds() if jail.could_reach_cpu_limit(timeout) else 0.0
        cell.msg_id = client.execute(code, silent=False, store_history=False, allow_stdin=False, stop_on_error=False)
        stopped_for: ExecStatus | None = None  # set once we interrupted the cell ourselves
        deadline = timeout
        replied_at: float | None = None  # when the shell's execute_reply came
        idle = False  # the cell's idle status came (alone it proves nothing: the cell can forge it)

        while not (idle and replied_at is not None):
            if stopped_for is None and self._take_interrupt():
                stopped_for, deadline = ExecStatus.INTERRUPTED, watch.elapsed + self.limits.interrupt_grace_s
                self._interrupt()
            if self._relay.exhausted:  # more than a cell may send; the rest waits in the kernel's queues
                return self._flooded(cell, watch, notes)
            if watch.elapsed >= deadline:  # by the clock, however busy IOPub is
                if stopped_for is not None:  # the interrupt did not bring the cell back
                    return self._replace_after(stopped_for, cell.out, cell.err, watch)
                stopped_for, deadline = ExecStatus.TIMEOUT, watch.elapsed + self.limits.interrupt_grace_s
                self._interrupt()
                continue
            if replied_at is not None and watch.elapsed - replied_at > REPLY_GRACE_S:
                if not cell.published:  # the reply came, but IOPub is dead: the cell broke the kernel's wire
                    return self._broken_wire(cell.out, cell.err, watch)
                break
            # once the idle came only the reply is missing: wait for it on the shell channel, and
            # just take what IOPub has (after a forged idle, the cell's output goes on)
            wait = min(POLL_S, max(watch.remaining(deadline), 0.001))
            if idle and reply_arrived(self._client, cell.msg_id, wait):
                replied_at = watch.elapsed
                continue
            try:
                msg = client.iopub_channel.get_msg(timeout=0 if idle else wait)
            except queue.Empty:
                if not jail.alive:
                    return self._after_death(cell.out, cell.err, watch)
                msg = None
            except Exception:  # noqa: BLE001 - unsigned, garbled or forged: dropped
                continue
            if msg is not None:
                idle = cell.take(msg) or idle
            if replied_at is None and (msg is None or idle) and reply_arrived(self._client, cell.msg_id):
                replied_at = watch.elapsed
            if stopped_for is None and (cell.out.overflowed or cell.err.overflowed):
                stopped_for, deadline = ExecStatus.OUTPUT_LIMIT, watch.elapsed + self.limits.interrupt_grace_s
                self._interrupt()

        notes += self._after_cell()
        if self._relay.exhausted:
            return self._flooded(cell, watch, notes)
        return self._finish(cell.out, cell.err, cell.ename, cell.evalue, stopped_for, watch, tuple(notes))

    def _after_cell(self) -> list[str]:
        """Stop what the cell left behind (stray processes, threads); the notes that say so. Never
        raises: whatever the kernel answers to this bookkeeping, the cell's result stands."""
        try:
            jail = self._jail
            threads, others = jail.census()
            if others and jail.kill_strays():
                silent(self._client, REAP_CHILDREN)
                threads = jail.thread_count()
            return self._stop_leftover_threads(threads)
        except Exception:  # noqa: BLE001 - the kernel's answers are the cell's to forge
            log.exception("jupyter sandbox: bookkeeping after a cell failed")
            return []

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
        said = silent(self._client, STOP_THREADS, "__import__('retool_boot').last_stop")
        stopped, running = counts(said)
        self._base_threads = self._jail.thread_count()  # native threads, and the ones that would not stop
        self._unstoppable = self._unstoppable or running > 0
        notes = []
        if stopped:
            notes.append(f"{stopped} background thread(s) the cell left running were stopped")
        if running:
            notes.append(f"{running} background thread(s) the cell left running could not be stopped")
        return notes

    def _interrupt(self) -> None:
        """Ask the kernel to interrupt itself (SIGINT to its process group, sent from inside)."""
        self._client.control_channel.send(self._client.session.msg("interrupt_request", {}))

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
        return self._replaced(status, f"KernelDied: {error}", out, err, watch, out.overflowed)

    def _flooded(self, cell: CellOutput, watch: Stopwatch, notes: list[str]) -> ExecResult:
        """The kernel sent more than a cell's budget on a channel (messages a cell forged: printed
        output is stopped long before): what it queued would flood every later cell, so it goes."""
        error = (f"OutputLimitError: the interpreter sent more than a cell may ({', '.join(sorted(self._relay.exhausted))}"
                 " channel); it was restarted")
        return self._replaced(ExecStatus.OUTPUT_LIMIT, error, cell.out, cell.err, watch, True, notes)

    def _broken_wire(self, out: CappedText, err: CappedText, watch: Stopwatch) -> ExecResult:
        error = "KernelProtocolError: the interpreter stopped publishing its output and was restarted"
        return self._replaced(ExecStatus.CRASHED, error, out, err, watch, False)

    def _replace_after(self, status: ExecStatus, out: CappedText, err: CappedText, watch: Stopwatch) -> ExecResult:
        """The interrupt was ignored (SIGINT masked, stuck in C): replace the kernel."""
        error = {ExecStatus.TIMEOUT: "TimeoutError: the cell ran past its time limit, ignored the interrupt, and the "
                                     "interpreter was restarted",
                 ExecStatus.INTERRUPTED: f"{INTERRUPTED_ERROR}; it ignored the interrupt and the interpreter was restarted"
                 }.get(status, f"OutputLimitError: the cell printed more than {self.limits.max_output_bytes:,} bytes; "
                               "the interpreter was restarted")
        return self._replaced(status, error, out, err, watch, out.overflowed or err.overflowed)

    def _replaced(self, status: ExecStatus, error: str, out: CappedText, err: CappedText, watch: Stopwatch,
                  truncated: bool, notes: list[str] | tuple[str, ...] = ()) -> ExecResult:
        """A fresh kernel for the next cell; this one's result says so (and if the restart failed)."""
        failure = self._try_restart()
        if failure:
            error += f"; restart failed: {failure}"
        return ExecResult(status, out.text(), err.text(), error, watch.elapsed, truncated, True, tuple(notes))
