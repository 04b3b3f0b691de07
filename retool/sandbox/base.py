"""What every sandbox backend shares: the result of a cell, the limits, and the session contract.

The contract that the rest of retool leans on is simple and strict:

* ``Session.run(code, timeout)`` **never raises**. Errors, timeouts, memory exhaustion, a dead
  interpreter and runaway output all come back as an ``ExecResult`` whose ``status`` says which, so
  the rollout can render it to the model and carry on. ``run`` is written once, here: it refuses
  source that is not valid UTF-8, turns any exception of a backend into a result, and cleans the
  text it returns; backends implement ``_run``.
* A failure that is **not the code's doing** (the interpreter cannot be started, the Docker engine
  or a remote host is gone, the host itself failed) has its own status, ``infra_error``: it is never
  scored and never trained on. Nothing the code can do may produce it.
* A session is stateful like notebook cells: names defined in one ``run`` are visible in the next,
  until the session is reset (``ExecResult.session_reset`` tells when a failure cost the state).
  The one exception says so: ``Session.stateful`` is ``False`` for ``subprocess`` (a fresh process
  per ``run``), so a caller whose cells depend on each other can refuse it up front.

This module deliberately knows nothing about *how* code is isolated; see ``isolation.py`` and the
backends for that.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import re
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field, replace
from typing import Any

log = logging.getLogger(__name__)


class ExecStatus(str, enum.Enum):
    """How a cell ended. ``str`` so it serialises as plain text in JSON."""

    OK = "ok"
    ERROR = "error"  # the code raised (SyntaxError, ZeroDivisionError, ...)
    TIMEOUT = "timeout"  # wall-clock deadline passed; the cell was interrupted or the session restarted
    OOM = "oom"  # the memory limit was hit (MemoryError or the interpreter killed for memory)
    CRASHED = "crashed"  # the interpreter died (segfault, os._exit, killed); a fresh one serves the next call
    OUTPUT_LIMIT = "output_limit"  # the cell printed more than the output cap and was stopped
    INTERRUPTED = "interrupted"  # stopped on request (``Session.interrupt``: a user's Ctrl-C); state kept
    INFRA_ERROR = "infra_error"  # not the code's doing: no interpreter could be had, the host or engine failed


@dataclass(frozen=True)
class ExecResult:
    """The outcome of one cell. ``error`` is one line (``"ZeroDivisionError: division by zero"``),
    never a 40-line traceback: that is what the model and the analytics need."""

    status: ExecStatus
    stdout: str = ""
    stderr: str = ""
    error: str | None = None
    duration_s: float = 0.0
    truncated: bool = False
    session_reset: bool = False  # the interpreter was replaced: earlier names are gone
    notes: tuple[str, ...] = ()  # what the sandbox did beside the cell (a leftover thread stopped, stale output dropped)

    @property
    def ok(self) -> bool:
        return self.status is ExecStatus.OK

    @property
    def infra_failure(self) -> bool:
        """The sandbox failed, not the code: this call must not be scored or trained on."""
        return self.status is ExecStatus.INFRA_ERROR

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["status"] = self.status.value
        data["notes"] = list(self.notes)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ExecResult":
        return cls(**{**data, "status": ExecStatus(data["status"]), "notes": tuple(data.get("notes", ()))})


@dataclass(frozen=True)
class SandboxLimits:
    """Resource limits applied to every session of a backend — the one place they are declared.

    ``cpu_seconds`` is a lifetime budget of the interpreter process (RLIMIT_CPU); the per-cell
    wall-clock deadline is ``timeout_s`` (the only cell timeout: rollouts, chat, server and eval
    all use it). ``max_output_bytes`` caps what one cell may print: past it the cell is stopped and
    the output keeps its head and tail. Fields with ``cli`` metadata are command-line options.
    """

    timeout_s: float = field(default=10.0, metadata={"cli": True, "flag": "--timeout",
                                                      "help": "Seconds a code cell may run."})
    memory_mb: int = field(default=2048, metadata={"cli": True, "help": "Memory a sandbox may use, in MiB."})
    cpu_seconds: int = 600
    cpus: float = 1.0  # cores' worth of CPU time the whole sandbox may use at once (its cgroup, or Docker's)
    max_processes: int = 64
    max_file_mb: int = 64
    disk_mb: int = 256
    max_output_bytes: int = 128 * 1024
    interrupt_grace_s: float = 2.0  # after a timeout: how long an interrupt may take before a restart

    def __post_init__(self) -> None:
        numbers = {k: getattr(self, k) for k in ("timeout_s", "memory_mb", "cpu_seconds", "cpus", "max_processes",
                                                    "max_file_mb", "disk_mb", "max_output_bytes")}
        bad = [k for k, v in numbers.items() if not v > 0]
        if bad or self.interrupt_grace_s < 0:
            raise ValueError(f"sandbox limits must be positive: {', '.join(bad) or 'interrupt_grace_s'}")


_TRUNCATION_MARK = "\n…[{n} bytes of output truncated]…\n"
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


MAX_ERROR_CHARS = 1000
MAX_NOTE_CHARS = 500
MAX_NOTES = 8
CAP_SLACK_BYTES = 1024  # a backend's capped text carries a truncation mark beyond the cap


def _bounded_line(text: str, limit: int) -> str:
    """The first line of ``text``, clean, cut to ``limit`` characters."""
    line = (clean_text(text).strip().splitlines() or [""])[0]
    return line if len(line) <= limit else line[: limit - 1] + "…"


def clean_text(text: str) -> str:
    """``text`` as valid Unicode: each lone surrogate (which no UTF-8 encoder accepts, and which
    JSON and terminals choke on) becomes U+FFFD, the replacement character; the rest is kept."""
    return _LONE_SURROGATE.sub("\ufffd", text)


@dataclass
class CappedText:
    """Collects a stream of text, keeping at most ``limit`` bytes: the head and a tail.

    Used by every backend so that a 100 MB print never reaches the host's memory whole.
    """

    limit: int
    head: bytearray = field(default_factory=bytearray)
    tail: bytearray = field(default_factory=bytearray)
    dropped: int = 0

    @property
    def overflowed(self) -> bool:
        return self.dropped > 0

    def write(self, text: str | bytes) -> None:
        data = clean_text(text).encode("utf-8") if isinstance(text, str) else text
        head_room = max(self.limit * 3 // 4 - len(self.head), 0)
        self.head += data[:head_room]
        rest = data[head_room:]
        if not rest:
            return
        tail_limit = self.limit - self.limit * 3 // 4
        self.tail += rest
        if len(self.tail) > tail_limit:
            excess = len(self.tail) - tail_limit
            self.dropped += excess
            del self.tail[:excess]

    def text(self) -> str:
        head = self.head.decode("utf-8", "replace")
        tail = self.tail.decode("utf-8", "replace")
        if not self.dropped:
            return head + tail
        return head + _TRUNCATION_MARK.format(n=f"{self.dropped:,}") + tail


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def summarize_error(ename: str, evalue: str) -> str:
    """``ZeroDivisionError: division by zero`` — the one line a model needs, ANSI colours removed."""
    evalue = _ANSI.sub("", evalue or "").strip().splitlines()
    return f"{ename}: {evalue[0]}" if evalue else ename


def status_for_exception(ename: str) -> ExecStatus:
    """Exceptions that mean a limit was hit map to that limit's status rather than ``error``."""
    if ename == "MemoryError":
        return ExecStatus.OOM
    if ename == "KeyboardInterrupt":
        return ExecStatus.TIMEOUT
    return ExecStatus.ERROR


INTERRUPTED_ERROR = "KeyboardInterrupt: the cell was stopped on request"


class SandboxUnavailable(RuntimeError):
    """The backend cannot start on this machine (missing bwrap, no Docker engine, no image).

    Raised when a session is *created*, never from ``run``: setup problems are the user's to fix,
    with the message telling how.
    """


class Session(ABC):
    """A stateful interpreter in a sandbox. One per trajectory; not shared between threads at once."""

    backend: str = "?"
    stateful: bool = True  # names survive between ``run`` calls (False: every run starts empty)

    def __init__(self, limits: SandboxLimits | None = None) -> None:
        self.limits = limits or SandboxLimits()
        self._interrupt_requested = threading.Event()

    def interrupt(self) -> None:
        """Stop the cell that is running now, from any thread (a chat user's Ctrl-C, a dropped HTTP
        client). The cell returns ``INTERRUPTED`` with the output it had printed; the interpreter and
        its variables stay (unless the cell ignores the interrupt: then it is replaced, as on a
        timeout). Without a running cell this does nothing."""
        self._interrupt_requested.set()

    def _take_interrupt(self) -> bool:
        """Backends poll this while a cell runs; it is cleared when ``run`` starts a new cell."""
        return self._interrupt_requested.is_set()

    def run(self, code: str, timeout: float | None = None) -> ExecResult:
        """Execute ``code`` as the next cell. Never raises.

        Source that is not valid UTF-8 (a lone surrogate) is refused the way Python itself refuses
        it, before anything runs. An exception out of the backend is a host-side failure: the
        interpreter is replaced and the result says ``infra_error``. All text is returned clean
        (``clean_text``), so callers can encode, print and serialise it."""
        watch = Stopwatch()
        try:
            code.encode("utf-8")
        except UnicodeEncodeError as exc:
            return ExecResult(ExecStatus.ERROR, error=f"UnicodeEncodeError: {exc}", duration_s=watch.elapsed)
        self._interrupt_requested.clear()
        try:
            return self._sealed(self._run(code, self.limits.timeout_s if timeout is None else timeout))
        except Exception as exc:  # noqa: BLE001 - the contract: a result, whatever went wrong
            log.exception("%s sandbox failed while running a cell", self.backend)
            return self._infra_failure(f"{type(exc).__name__}: {exc}", watch)

    def _sealed(self, result: ExecResult) -> ExecResult:
        """``result`` with every text in bounds and clean, whatever the backend passed on (parts of
        it may come from the cell: a forged reply, a 400,000-character exception name): stdout and
        stderr within ``max_output_bytes`` (head and tail, ``truncated``), the error one line of at
        most ``MAX_ERROR_CHARS``, at most ``MAX_NOTES`` notes of at most ``MAX_NOTE_CHARS``."""
        limit = self.limits.max_output_bytes
        streams = {}
        for name in ("stdout", "stderr"):
            text = clean_text(str(getattr(result, name) or ""))
            if len(text) > limit // 4 and len(text.encode("utf-8")) > limit + CAP_SLACK_BYTES:
                capped = CappedText(limit)  # the backends cap already; this is the host's own bound
                capped.write(text)
                text = capped.text()
                streams["truncated"] = True
            streams[name] = text
        error = None if result.error is None else _bounded_line(str(result.error), MAX_ERROR_CHARS)
        notes = tuple(_bounded_line(str(note), MAX_NOTE_CHARS) for note in tuple(result.notes)[:MAX_NOTES])
        return replace(result, **streams, error=error, notes=notes)

    @abstractmethod
    def _run(self, code: str, timeout: float) -> ExecResult:
        """The backend's cell: may raise only for host-side trouble (``run`` reports it)."""

    def _infra_failure(self, why: str, watch: Stopwatch) -> ExecResult:
        """The host side failed: replace the interpreter (if that works) and say so."""
        try:
            self.restart()
        except Exception as exc:  # noqa: BLE001 - reported in the result; the next call tries again
            why += f"; restarting the interpreter failed too: {exc}"
        line = why.strip().splitlines()[0] if why.strip() else "unknown failure"
        return ExecResult(ExecStatus.INFRA_ERROR, error=f"SandboxFailure: {line}", duration_s=watch.elapsed,
                          session_reset=True)

    @abstractmethod
    def restart(self) -> None:
        """Replace the interpreter with a fresh one (all state gone)."""

    @abstractmethod
    def close(self) -> None:
        """Stop the interpreter and everything it started. Idempotent."""

    @property
    @abstractmethod
    def alive(self) -> bool:
        """Whether the interpreter process is still running."""

    async def arun(self, code: str, timeout: float | None = None) -> ExecResult:
        """``run`` from asyncio code, on a worker thread so the event loop keeps going."""
        return await asyncio.to_thread(self.run, code, timeout)

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Stopwatch:
    """Monotonic elapsed time, for ``ExecResult.duration_s``."""

    def __init__(self) -> None:
        self.start = time.monotonic()

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def remaining(self, budget: float) -> float:
        return max(budget - self.elapsed, 0.0)
