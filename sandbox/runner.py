"""The stateful Python interpreter that runs inside a retool sandbox container.

Why a runner of our own instead of a Jupyter kernel: the container talks to the host over nothing
but its stdin/stdout (no network, read-only root), and a kernel needs sockets and ~60 MB of
dependencies. This file is the whole server, with the jails' boot module beside it for stopping a
cell's stray threads (``retool_boot.py``, from ``retool/sandbox/jail_boot.py``): stdlib only, Python >= 3.9.

Protocol, one JSON object per line in each direction:

    host -> runner   {"code": "x = 1\\nx + 1", "max_output": 131072}      run a cell
                     {"ping": true}                                        liveness check
                     {"status": true}                                      output dropped since the last cell
    runner -> host   {"stdout": "2\\n", "stderr": "", "error": null,
                      "ename": null, "truncated": false,
                      "notes": [], "unstoppable": false}                   cell done
                     {"pong": true}
                     {"stale": 0}

What a cell leaves behind: threads it started that still run when it ends are stopped
(``SystemExit`` raised in them); one that will not stop is reported (``unstoppable``), and from
then on the host asks, before each cell, how much output was written between cells (``stale``) and
replaces the container if any was. Output written while no cell runs is dropped and counted.

How the protocol is kept safe from the code it runs: at startup the real stdin/stdout are
duplicated to private descriptors for the protocol; fd 0 then points at /dev/null and fds 1/2 at
pipes drained by reader threads. Whatever the cell writes (``print``, ``os.write(1, ...)``, a child
process) lands in those pipes, is capped at ``max_output`` bytes per stream (head + tail, like
``retool.sandbox.base.CappedText``), and can never corrupt a protocol line. A cell that prints past
the cap is interrupted. Cells share one globals dict, and a trailing expression is displayed like a
notebook cell. SIGINT (sent by the host on timeout) surfaces as ``KeyboardInterrupt`` in the cell
and the runner keeps serving.

What it deliberately does not do: isolation. Limits (memory, pids, network, read-only root) are the
container's job; this process only keeps the stream and the state tidy.
"""

from __future__ import annotations

import ast
import codecs
import json
import os
import signal
import sys
import threading
from typing import Any, Callable, Dict, List, Optional, Tuple

from retool_boot import stop_strays  # retool/sandbox/jail_boot.py, installed beside this file by the image build

TRUNCATION_MARK = "\n…[{n} bytes of output truncated]…\n"
SYNC_TIMEOUT_S = 5.0  # how long to wait for the pipes to drain after a cell


class Capture:
    """At most ``limit`` bytes of a stream: the first 3/4 of the budget and the latest 1/4."""

    def __init__(self, limit: int, on_overflow: Callable[[], None]) -> None:
        self.limit = max(int(limit), 16)
        self.head = bytearray()
        self.tail = bytearray()
        self.dropped = 0
        self.on_overflow = on_overflow

    def write(self, data: bytes) -> None:
        head_room = max(self.limit * 3 // 4 - len(self.head), 0)
        self.head += data[:head_room]
        rest = data[head_room:]
        if not rest:
            return
        tail_limit = self.limit - self.limit * 3 // 4
        self.tail += rest
        if len(self.tail) > tail_limit:
            first_overflow = self.dropped == 0
            excess = len(self.tail) - tail_limit
            self.dropped += excess
            del self.tail[:excess]
            if first_overflow:
                self.on_overflow()

    def text(self) -> str:
        head = self.head.decode("utf-8", "replace")
        tail = self.tail.decode("utf-8", "replace")
        if not self.dropped:
            return head + tail
        return head + TRUNCATION_MARK.format(n=f"{self.dropped:,}") + tail


class PipeStream:
    """fd ``target`` (1 or 2) redirected into a pipe that a daemon thread drains into a Capture.

    ``sync()`` writes a unique marker through the pipe and waits until the reader has seen it, so
    everything written before the call is in the capture when it returns.
    """

    def __init__(self, target: int) -> None:
        read_fd, write_fd = os.pipe()
        self._read_fd = read_fd
        self.write_fd = write_fd  # a private writer: survives the cell closing or re-pointing fd 1/2
        self._lock = threading.Lock()
        self._capture: Optional[Capture] = None
        self.stale = 0  # bytes written while no cell was running (dropped)
        self._marker = b""
        self._synced = threading.Event()
        threading.Thread(target=self._drain, name=f"drain-fd{target}", daemon=True).start()

    def start(self, capture: Optional[Capture]) -> None:
        """Capture into ``capture`` from now on; ``None``: drop (and count) what comes."""
        with self._lock:
            self._capture = capture

    def sync(self) -> bool:
        marker = b"\x1e\x1fretool-sync-" + os.urandom(8).hex().encode() + b"\x1f\x1e"
        with self._lock:
            self._marker = marker
            self._synced.clear()
        os.write(self.write_fd, marker)  # < PIPE_BUF bytes: one atomic write
        return self._synced.wait(SYNC_TIMEOUT_S)

    def _emit(self, data: bytes) -> None:
        if not data:
            return
        if self._capture is not None:
            self._capture.write(data)
        else:
            self.stale += len(data)

    def _drain(self) -> None:
        pending = b""
        while True:
            try:
                chunk = os.read(self._read_fd, 1 << 16)
            except InterruptedError:
                continue
            if not chunk:
                return
            pending += chunk
            with self._lock:
                while True:
                    marker = self._marker
                    at = pending.find(marker) if marker else -1
                    if at < 0:
                        break
                    self._emit(pending[:at])
                    pending = pending[at + len(marker):]
                    self._marker = b""
                    self._synced.set()
                # Hold back only what could be the start of a marker split across reads.
                keep = min(len(pending), len(self._marker) - 1) if self._marker else 0
                self._emit(pending[: len(pending) - keep])
                pending = pending[len(pending) - keep:]


class Runner:
    """One persistent namespace and the two captured streams; runs cells on the main thread."""

    def __init__(self) -> None:
        self.proto_in = os.fdopen(os.dup(0), "rb")
        self.proto_out = os.fdopen(os.dup(1), "wb")
        self.devnull = os.open(os.devnull, os.O_RDONLY)
        self.out = PipeStream(1)
        self.err = PipeStream(2)
        self._reset_streams(replace=True)
        self.namespace: Dict[str, Any] = {"__name__": "__main__", "__builtins__": __builtins__}
        self.main_thread = threading.get_ident()
        self.cell_running = threading.Event()
        self.output_stopped = False
        self.own_threads = {t.ident for t in threading.enumerate()}
        sys.argv = [""]
        self.pid = os.getpid()
        os.register_at_fork(after_in_child=self._in_forked_child)
        signal.signal(signal.SIGINT, _between_cells)

    def _stop_for_output(self) -> None:
        """Called from a reader thread when a stream overflows: interrupt the cell, once."""
        if self.cell_running.is_set() and not self.output_stopped:
            self.output_stopped = True
            signal.pthread_kill(self.main_thread, signal.SIGINT)

    def _in_forked_child(self) -> None:
        """A cell's ``os.fork()`` child must never speak the protocol: drop its copies of the wire."""
        self.proto_in.close()
        self.proto_out.close()

    def serve(self) -> None:
        while True:
            line = self.proto_in.readline()
            if not line:
                return
            try:
                request = json.loads(line)
            except ValueError:
                self.reply({"stdout": "", "stderr": "", "error": "ProtocolError: bad request line",
                            "ename": "ProtocolError", "truncated": False})
                continue
            if request.get("ping"):
                self.reply({"pong": True, "id": request.get("id")})
            elif request.get("status"):
                self.reply({"stale": self.out.stale + self.err.stale, "id": request.get("id")})
            else:
                answer = self.run_cell(str(request.get("code", "")), int(request.get("max_output", 1 << 17)))
                self.reply({**answer, "id": request.get("id")})

    def reply(self, message: Dict[str, Any]) -> None:
        self.proto_out.write((json.dumps(message) + "\n").encode())
        self.proto_out.flush()

    def run_cell(self, code: str, max_output: int) -> Dict[str, Any]:
        stdout = Capture(max_output, self._stop_for_output)
        stderr = Capture(max_output, self._stop_for_output)
        notes: List[str] = []
        stale = self.out.stale + self.err.stale
        if stale:
            notes.append(f"{stale:,} bytes of output written while no cell was running were dropped")
            self.out.stale = self.err.stale = 0
        self.output_stopped = False
        self.out.start(stdout)
        self.err.start(stderr)
        ename: Optional[str] = None
        error: Optional[str] = None
        try:
            try:
                signal.signal(signal.SIGINT, signal.default_int_handler)
                self.cell_running.set()
                self._execute(code)
            finally:
                # From here to the next cell an interrupt is moot: it must not cost the answer.
                signal.signal(signal.SIGINT, _between_cells)
                self.cell_running.clear()
                self._flush_user_streams()
        except BaseException as exc:  # noqa: BLE001 - the cell's failure is the answer
            ename, error = describe(exc)
        if os.getpid() != self.pid:  # an os.fork() child ran off the end of the cell: nothing to answer
            os._exit(1 if ename else 0)
        kill_strays(keep={1, self.pid})
        stopped, running = self.stop_threads()
        if stopped:
            notes.append(f"{stopped} background thread(s) the cell left running were stopped")
        if running:
            notes.append(f"{running} background thread(s) the cell left running could not be stopped")
        if self.output_stopped:
            ename = "OutputLimitExceeded"
            error = f"OutputLimitExceeded: the cell printed more than {max_output:,} bytes and was stopped"
        self.out.sync()
        self.err.sync()
        self.out.start(None)  # until the next cell, output is dropped and counted
        self.err.start(None)
        self._reset_streams()
        return {"stdout": stdout.text(), "stderr": stderr.text(), "error": error, "ename": ename,
                "truncated": stdout.dropped > 0 or stderr.dropped > 0, "notes": notes, "unstoppable": running > 0}

    def stop_threads(self, wait_s: float = 0.2) -> Tuple[int, int]:
        """Raise SystemExit in the threads the cell started that still run; (stopped, still running).
        One that will not stop (blocked in C, or catching everything) is reported once."""
        return stop_strays(self.own_threads, wait_s)

    def _execute(self, code: str) -> None:
        tree = ast.parse(code, "<cell>", "exec")
        display: Optional[ast.Expression] = None
        if tree.body and isinstance(tree.body[-1], ast.Expr) and not _silenced(code, tree.body[-1]):
            display = ast.Expression(tree.body.pop().value)
        exec(compile(tree, "<cell>", "exec"), self.namespace)
        if display is not None:
            value = eval(compile(display, "<cell>", "eval"), self.namespace)
            if value is not None:
                sys.displayhook(value)

    def _reset_streams(self, replace: bool = False) -> None:
        """Point fds 0/1/2 and sys.std* back at the sandbox's own, whatever the last cell did to them.

        The text streams are UTF-8, writing U+FFFD for a lone surrogate, so that printing any string works.
        """
        os.dup2(self.devnull, 0)
        os.dup2(self.out.write_fd, 1)
        os.dup2(self.err.write_fd, 2)
        if replace or getattr(sys.stdin, "closed", True):
            sys.stdin = sys.__stdin__ = open(0, "r", closefd=False)  # noqa: SIM115 - lives forever
        for name, fd in (("stdout", 1), ("stderr", 2)):
            if replace or getattr(getattr(sys, name), "closed", True):
                stream = open(fd, "w", encoding="utf-8", errors="retool-replace", buffering=1, closefd=False)
                setattr(sys, name, stream)
                setattr(sys, f"__{name}__", stream)

    def _flush_user_streams(self) -> None:
        for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001 - a replaced or closed stream is the cell's business
                pass


def kill_strays(keep: set) -> None:
    """Nothing a cell started may outlive it: kill every other process in the container (its pid
    namespace holds only docker-init, this runner and what cells started), then reap our children.

    kill(-1) signals every process but pid 1 and the caller in one step that a fork cannot race (a
    process forking as it dies, to hop pids, is caught with its child); the sweep after it is for
    anything ``keep`` does not cover."""
    try:
        os.kill(-1, signal.SIGKILL)
    except OSError:
        pass
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) not in keep:
            try:
                os.kill(int(entry), signal.SIGKILL)
            except OSError:
                pass
    try:
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass
    except ChildProcessError:
        pass


def _replace_surrogates(error: UnicodeError) -> Tuple[bytes, int]:
    """One U+FFFD per character that cannot be encoded (as bytes: the UTF-8 encoder wants them so)."""
    return "\ufffd".encode("utf-8") * (error.end - error.start), error.end


codecs.register_error("retool-replace", _replace_surrogates)


def _between_cells(signum: int, frame: object) -> None:
    """SIGINT outside a cell (a timeout that raced the cell's end) is ignored."""


def _silenced(code: str, node: ast.stmt) -> bool:
    """A trailing ``;`` suppresses the display, as in Jupyter."""
    lines = code.splitlines()
    if node.end_lineno is None or node.end_col_offset is None or node.end_lineno > len(lines):
        return False
    rest = lines[node.end_lineno - 1][node.end_col_offset:]
    return rest.split("#", 1)[0].strip().startswith(";")


def describe(exc: BaseException) -> Tuple[str, str]:
    """``(ename, "Type: first line of message")`` for an exception raised by a cell."""
    ename = type(exc).__name__
    if isinstance(exc, SyntaxError):
        message = f"{exc.msg} (line {exc.lineno})" if exc.lineno else str(exc.msg)
    else:
        try:
            message = str(exc)
        except Exception:  # noqa: BLE001 - a broken __str__ must not kill the runner
            message = "<unprintable exception>"
    lines = message.strip().splitlines()
    return ename, f"{ename}: {lines[0]}" if lines else ename


def preload() -> None:
    """Import the modules named in RETOOL_PRELOAD (comma-separated) before answering the first
    ping, so a trajectory's first ``import sympy`` is a lookup, paid while the pool warms up."""
    for name in filter(None, os.environ.get("RETOOL_PRELOAD", "").split(",")):
        try:
            __import__(name.strip())
        except ImportError:
            pass


def main() -> None:
    preload()
    runner = Runner()
    runner.serve()


if __name__ == "__main__":
    main()
