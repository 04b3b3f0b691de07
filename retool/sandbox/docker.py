"""Docker backend: one locked-down container per session, running ``sandbox/runner.py``.

Why containers: no network, a read-only root, no capabilities, the jails' seccomp rules
(``seccomp.docker_profile``), a pids limit and a memory cgroup
that tells an OOM kill apart from other deaths, all without trusting the interpreter; and
``docker.from_env()`` honours ``DOCKER_HOST``, so sandboxes can live on other machines than the
model. The wire is the container's own stdin/stdout, attached once: one JSON line per cell each
way (see ``sandbox/runner.py``), so a warm cell costs well under a millisecond of overhead.

How failures map to ``ExecResult`` (``run`` never raises):

* the cell raised              → ``error`` (``oom`` for MemoryError); state kept
* past the deadline            → SIGINT; answered within ``interrupt_grace_s`` → ``timeout``, state
                                 kept; else the container is replaced → ``timeout``, ``session_reset``
* the runner died (``os._exit``, segfault, RLIMIT_CPU, kernel OOM kill) → ``crashed`` / ``oom``;
                                 a fresh container serves the next call; ``session_reset``
* more output than the cap     → the runner stops the cell → ``output_limit``, ``truncated``

What it deliberately does not do: build or pull the image (``sandbox/build_offline_image.sh`` or
``sandbox/Dockerfile``), keep containers warm (``SandboxPool``), or retry a broken engine: if Docker
goes away the call returns ``crashed`` and the next call tries a fresh container.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import threading
import time
import weakref
from dataclasses import replace
from typing import Any

from retool.sandbox.base import ExecResult, ExecStatus, SandboxLimits, SandboxUnavailable, Session, Stopwatch
from retool.sandbox.base import INTERRUPTED_ERROR, status_for_exception
from retool.sandbox.docker_engine import BUILD_HINT, LABEL, connect, reap_orphans, remove_container, runner_sha
from retool.sandbox.seccomp import docker_profile

STARTUP_TIMEOUT_S = 30.0
STATUS_WAIT_S = 2.0  # how long a runner with a thread that would not stop may take to say it is free
SEND_TIMEOUT_S = 5.0
POLL_S = 0.05  # how often a waiting cell checks for an interrupt request

_reap_lock = threading.Lock()
_reaped = False


class _RunnerGone(Exception):
    """The runner cannot answer any more: its stream ended, broke, or carried garbage."""


class _RunnerGarbage(_RunnerGone):
    """The runner's stream carried something that is not the protocol: the cell wrote it (it runs
    in the runner's process), and the runner may well be alive."""


def _parse(line: bytes) -> dict[str, Any]:
    """The JSON object on ``line``. Anything else, including lines no parser survives (a
    100,000-deep array), means the runner sent garbage: the cell runs in the runner's process and
    can write any line it likes."""
    try:
        reply = json.loads(line)
    except Exception:  # noqa: BLE001 - ValueError, RecursionError, MemoryError: all garbage
        reply = None
    if not isinstance(reply, dict):
        raise _RunnerGarbage(f"unreadable reply from the runner: {line[:120]!r}")
    return reply


def _get(reply: dict[str, Any], name: str, kind: type, optional: bool = False) -> Any:
    """``reply[name]``, which must be a ``kind`` (or absent/null where ``optional``)."""
    value = reply.get(name)
    if value is None and optional:
        return None
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise _RunnerGarbage(f"unreadable reply from the runner: {name!r} is not {kind.__name__}")
    return value


class DockerSession(Session):
    """A stateful Python interpreter in its own container."""

    backend = "docker"

    def __init__(self, limits: SandboxLimits | None = None, image: str = "retool-sandbox:latest",
                 client: Any | None = None, preload: tuple[str, ...] = ("numpy", "sympy")) -> None:
        super().__init__(limits)
        self.image = image
        self.preload = preload
        self._client = connect(client)
        global _reaped
        with _reap_lock:
            if not _reaped:
                _reaped = True
                reap_orphans(self._client)
        import docker.errors

        try:
            built_from = self._client.images.get(image).labels.get("retool.runner")
        except docker.errors.ImageNotFound:
            raise SandboxUnavailable(f"Docker image {image!r} not found; {BUILD_HINT}") from None
        expected = runner_sha()
        if expected is not None and built_from is not None and built_from != expected:
            raise SandboxUnavailable(f"Docker image {image!r} was built from an older sandbox/runner.py; {BUILD_HINT}")
        self._container: Any | None = None
        self._stream: Any | None = None  # docker's SocketIO; it owns the HTTP response behind the socket
        self._sock: Any | None = None
        self._finalizer: weakref.finalize | None = None  # removes the container if the session is dropped
        self._raw = bytearray()  # undecoded bytes of the multiplexed attach stream
        self._out = bytearray()  # the runner's stdout up to the next newline
        self._max_line = max(8 << 20, 16 * self.limits.max_output_bytes)
        self._closed = False
        try:
            self._start()
        except Exception as exc:  # noqa: BLE001 - setup failures are the user's to fix
            self.close()
            raise SandboxUnavailable(f"could not start a sandbox container from {image!r}: {exc}") from None

    def _start(self) -> None:
        from docker.types import LogConfig, Ulimit

        lim = self.limits
        file_bytes = lim.max_file_mb << 20
        container = self._client.containers.create(
            self.image, network_mode="none", read_only=True, user="1000:1000", init=True,
            mem_limit=f"{lim.memory_mb}m", memswap_limit=f"{lim.memory_mb}m",
            pids_limit=lim.max_processes, nano_cpus=int(lim.cpus * 1e9),
            tmpfs={"/work": f"size={lim.disk_mb}m,mode=1777", "/tmp": "size=64m,mode=1777"},
            cap_drop=["ALL"], security_opt=["no-new-privileges", f"seccomp={docker_profile()}"],
            ulimits=[Ulimit(name="fsize", soft=file_bytes, hard=file_bytes), Ulimit(name="core", soft=0, hard=0),
                     Ulimit(name="cpu", soft=lim.cpu_seconds, hard=lim.cpu_seconds + 5)],
            stdin_open=True, detach=True, auto_remove=False, environment={"RETOOL_PRELOAD": ",".join(self.preload)},
            labels={LABEL: "1", "retool.owner_pid": str(os.getpid()), "retool.owner_host": socket.gethostname()},
            log_config=LogConfig(type="json-file", config={"max-size": "1m", "max-file": "1"}),
        )
        self._container = container
        self._finalizer = weakref.finalize(self, remove_container, self._client, container.id)
        # Attach before start, so nothing the runner writes can be missed.
        self._stream = container.attach_socket(params={"stdin": 1, "stdout": 1, "stream": 1})
        self._sock = getattr(self._stream, "_sock", self._stream)  # the socket itself (unix, tcp or tls)
        self._raw.clear()
        self._out.clear()
        self._unstoppable = False  # a thread that would not stop was reported: ask about stale output
        self._started_at = time.time() - 1
        container.start()
        self._request_id = 0
        self._send({"ping": True})
        reply = self._read_reply(STARTUP_TIMEOUT_S)
        if reply is None or reply.get("pong") is not True:
            raise _RunnerGone(f"the runner did not answer a ping within {STARTUP_TIMEOUT_S:g} s")

    def _discard(self) -> None:
        """Kill and remove the current container, if any. Idempotent."""
        if self._sock is not None:
            try:
                self._sock.close()
            except OSError:
                pass
        if self._finalizer is not None:
            self._finalizer()  # runs at most once
        self._sock = self._stream = self._finalizer = self._container = None

    def restart(self) -> None:
        self._discard()
        self._closed = False
        self._start()

    def close(self) -> None:
        self._closed = True
        self._discard()

    @property
    def alive(self) -> bool:
        if self._container is None:
            return False
        try:
            self._container.reload()
            return self._container.status == "running"
        except Exception:  # noqa: BLE001 - gone from the engine
            return False

    def _run(self, code: str, timeout: float) -> ExecResult:
        watch = Stopwatch()
        if self._closed:
            return ExecResult(ExecStatus.INFRA_ERROR, error="SandboxClosed: the session was closed",
                              duration_s=watch.elapsed)
        notes: list[str] = []
        try:
            if self._container is None:  # an earlier replacement failed: try again
                self._start()
                notes.append("the interpreter was restarted (earlier variables are gone)")
            elif self._unstoppable and (why := self._stale_output()):
                self._discard()
                self._start()
                notes.append(f"a background thread left by an earlier cell {why}; the interpreter was restarted "
                             "(earlier variables are gone)")
        except Exception as exc:  # noqa: BLE001 - no container can be had: the engine's trouble, not the code's
            self._discard()
            return ExecResult(ExecStatus.INFRA_ERROR, error=f"SandboxUnavailable: {exc}".splitlines()[0],
                              duration_s=watch.elapsed, session_reset=True)
        try:
            result = self._run_cell(code, timeout, watch)
        except Exception as exc:  # noqa: BLE001 - engine trouble must not reach the rollout
            self._discard()
            return ExecResult(ExecStatus.INFRA_ERROR, error=f"SandboxError: {exc}".splitlines()[0],
                              duration_s=watch.elapsed, session_reset=True)
        if notes:
            result = replace(result, notes=(*notes, *result.notes), session_reset=True)
        return result

    def _stale_output(self) -> str | None:
        """Why the runner must be replaced before the next cell, if it must (asked only once a thread
        would not stop): it wrote output between cells, or it did not answer within ``STATUS_WAIT_S``
        (that thread holds the interpreter)."""
        try:
            self._send({"status": True})
            reply = self._read_reply(STATUS_WAIT_S)
        except _RunnerGone:
            return "broke the runner"
        if reply is None:
            return f"kept the runner from answering for {STATUS_WAIT_S:g} s"
        try:
            stale = _get(reply, "stale", int)
        except _RunnerGone:
            return "broke the runner"
        return None if stale == 0 else "kept writing output"

    def _run_cell(self, code: str, timeout: float, watch: Stopwatch) -> ExecResult:
        try:
            self._send({"code": code, "max_output": self.limits.max_output_bytes})
            reply = self._wait_reply(timeout)
            if reply is not None:
                return self._result(reply, watch)
            status = ExecStatus.INTERRUPTED if self._take_interrupt() else ExecStatus.TIMEOUT
            why = (INTERRUPTED_ERROR if status is ExecStatus.INTERRUPTED
                   else f"TimeoutError: the cell ran longer than {timeout:g} s")
            try:
                self._container.kill(signal="SIGINT")  # docker-init forwards it to the runner
            except Exception as exc:  # noqa: BLE001 - 409: the container is not running any more
                raise _RunnerGone(str(exc)) from None
            reply = self._read_reply(self.limits.interrupt_grace_s)
            if reply is not None:
                return self._result(reply, watch, (status, f"{why} (interrupted; state kept)"))
        except _RunnerGone as gone:
            return self._after_death(watch, gone)
        self._discard()
        self._start()
        return ExecResult(status, duration_s=watch.elapsed, session_reset=True,
                          error=f"{why} and ignored the interrupt (interpreter restarted)")

    def _wait_reply(self, timeout: float) -> dict[str, Any] | None:
        """The reply, or ``None`` once ``timeout`` passes or an interrupt is requested."""
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            reply = self._read_reply(min(remaining, POLL_S))
            if reply is not None or self._take_interrupt():
                return reply
        return None

    def _result(self, reply: dict[str, Any], watch: Stopwatch, interrupted: tuple[ExecStatus, str] | None = None) -> ExecResult:
        """An ``ExecResult`` from the runner's reply; ``interrupted`` is why we sent SIGINT.

        The reply is untrusted (the cell runs in the runner's process and can write one): a field of
        the wrong type makes it garbage (``_RunnerGone``: the interpreter is replaced), and
        ``Session.run`` caps and cleans the text it carries."""
        stdout, stderr = _get(reply, "stdout", str), _get(reply, "stderr", str)
        ename, error = _get(reply, "ename", str, optional=True), _get(reply, "error", str, optional=True)
        truncated = _get(reply, "truncated", bool)
        notes = _get(reply, "notes", list, optional=True) or []
        if not all(isinstance(note, str) for note in notes):
            raise _RunnerGarbage("unreadable reply from the runner: a note that is not text")
        self._unstoppable = self._unstoppable or bool(_get(reply, "unstoppable", bool, optional=True))
        error = ((error or "").strip().splitlines() or [ename])[0]
        if truncated:
            status = ExecStatus.OUTPUT_LIMIT
        elif interrupted and ename == "KeyboardInterrupt":
            status, error = interrupted[0], interrupted[1]
        else:  # ename None: ok, or finished just as the deadline passed
            status = ExecStatus.OK if ename is None else status_for_exception(ename)
        return ExecResult(status, stdout, stderr, error, watch.elapsed, truncated, notes=tuple(notes))

    def _after_death(self, watch: Stopwatch, gone: _RunnerGone) -> ExecResult:
        """The runner is gone: learn why (an OOM kill, a kill from outside, or the code), then
        start a fresh container (if that fails, ``_run`` reports the engine's trouble)."""
        if isinstance(gone, _RunnerGarbage):  # the code wrote on the wire: the runner is no use any more
            self._discard()
            self._start()
            return ExecResult(ExecStatus.CRASHED, error=f"InterpreterDied: {gone}; it was restarted",
                              duration_s=watch.elapsed, session_reset=True)
        state: dict[str, Any] = {}
        try:
            self._container.wait(timeout=5)  # exits right after its stream ends
            self._container.reload()
            state = self._container.attrs.get("State", {})
        except Exception:  # noqa: BLE001 - removed under us or stuck: reported as a plain crash
            pass
        code = int(state.get("ExitCode") or 0)
        signals = {int(sig): sig.name for sig in signal.Signals}
        how = f"killed by {signals[code - 128]}" if code - 128 in signals else f"exit code {code}"
        if state.get("OOMKilled"):
            status, error = ExecStatus.OOM, f"MemoryError: the sandbox ran out of memory ({self.limits.memory_mb} MB)"
        elif self._killed_from_outside():
            status, error = ExecStatus.INFRA_ERROR, "SandboxKilled: the container was killed from outside"
        else:
            status, error = ExecStatus.CRASHED, f"InterpreterDied: the interpreter stopped ({how})"
        self._discard()
        self._start()
        return ExecResult(status, error=error + "; it was restarted", duration_s=watch.elapsed, session_reset=True)

    def _killed_from_outside(self) -> bool:
        """Whether the engine recorded a kill of this container that we did not send (we only ever
        send SIGINT; ``docker kill``/``stop`` send KILL or TERM). The code cannot make such an event."""
        try:
            events = self._client.events(since=self._started_at, until=time.time() + 0.5, decode=True,
                                         filters={"container": self._container.id, "event": "kill"})
            return any(str(e.get("Actor", {}).get("Attributes", {}).get("signal")) not in ("2", "SIGINT")
                       for e in events)
        except Exception:  # noqa: BLE001 - no events to read: not shown to be from outside
            return False

    def _send(self, message: dict[str, Any]) -> None:
        """Send a request; each carries a fresh id that its reply must echo (see ``_read_reply``)."""
        self._request_id += 1
        message = {**message, "id": self._request_id}
        try:
            self._sock.settimeout(SEND_TIMEOUT_S)  # a runner that does not read its stdin is stuck
            self._sock.sendall((json.dumps(message) + "\n").encode())
        except OSError as exc:
            raise _RunnerGone(f"cannot write to the runner: {exc}") from None

    def _read_reply(self, timeout: float) -> dict[str, Any] | None:
        """The reply to the last request, or ``None`` when ``timeout`` passes first. Lines with
        another id (a late reply, or one a cell forged on the wire) are skipped, so the session
        can never get out of step with the runner."""
        deadline = time.monotonic() + timeout
        while True:
            line = self._next_line(deadline)
            if line is None:
                return None
            reply = _parse(line)
            if reply.get("id") == self._request_id:
                return reply

    def _next_line(self, deadline: float) -> bytes | None:
        while (newline := self._out.find(b"\n")) < 0:
            if len(self._out) > self._max_line or len(self._raw) > self._max_line:
                raise _RunnerGarbage("the runner sent a line larger than the protocol allows")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            self._sock.settimeout(remaining)
            try:
                chunk = self._sock.recv(1 << 16)
            except socket.timeout:
                return None
            except OSError as exc:
                raise _RunnerGone(f"lost the runner's stream: {exc}") from None
            if not chunk:
                raise _RunnerGone("the runner closed its output")
            self._demux(chunk)
        line = bytes(self._out[:newline])
        del self._out[: newline + 1]
        return line

    def _demux(self, chunk: bytes) -> None:
        """Split Docker's multiplexed stream: frames of (stream id, 3 zero bytes, 4-byte length, payload)."""
        self._raw += chunk
        while len(self._raw) >= 8:
            stream, size = struct.unpack(">BxxxL", self._raw[:8])
            if stream not in (0, 1, 2):
                raise _RunnerGarbage("garbage on the attach stream")
            if len(self._raw) < 8 + size:
                return
            if stream != 2:
                self._out += self._raw[8 : 8 + size]
            del self._raw[: 8 + size]
