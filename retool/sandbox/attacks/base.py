"""The attack suite's machinery: what the host puts in reach, how an attack runs, how it is judged.

Every attack is code a model could write; it runs in a session from a real pool, and the host
then checks three things:

* **contained** — the attack got nothing it should not have (no connection, no host file, no
  secret, no write outside the sandbox, no runaway process, memory, disk or output) and the session
  reported it with the right status;
* **gone** — once the session is closed, no process the attack started is left on the host;
* **recovered** — the next call on that same session (or the fresh interpreter that replaced it)
  prints ``42``.

Network attacks never send a packet off this machine: the outside-address attempt is made only when
the sandbox has no route (the kernel then refuses it locally); the loopback attacks target listeners
this process opens (a TCP port on 127.0.0.1, a Unix socket in a private directory).
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import psutil

from retool.sandbox.attacks.meter import meter_for
from retool.sandbox.base import ExecResult, SandboxLimits

PROBE = "print(6 * 7)"


@dataclass
class HostBait:
    """What the host puts in reach of an attacker: a loopback service, a Unix socket, a secret, a
    file, a marker for processes."""

    secret: str = field(default_factory=lambda: secrets.token_hex(16))
    marker: str = field(default_factory=lambda: f"retool-canary-{secrets.token_hex(6)}")
    accepted: int = 0
    unix_accepted: int = 0

    def __enter__(self) -> "HostBait":
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self._unix_dir = tempfile.mkdtemp(prefix="retool-bait-")
        self.unix_path = os.path.join(self._unix_dir, "host.sock")
        self.unix_listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.unix_listener.bind(self.unix_path)
        self.unix_listener.listen(16)
        for server, counter in ((self.listener, "accepted"), (self.unix_listener, "unix_accepted")):
            threading.Thread(target=self._serve, args=(server, counter), daemon=True).start()
        self.home_file = Path.home() / f".{self.marker}"
        self.home_file.write_text(self.secret)
        os.environ["RETOOL_CANARY_SECRET"] = self.secret  # sessions started from now on could inherit it
        self.checkout_file = Path(__file__).resolve().parents[3] / "pyproject.toml"
        if not self.checkout_file.exists():
            self.checkout_file = Path(__file__).resolve()
        self.disk_free = shutil.disk_usage(Path.home()).free
        return self

    def _serve(self, server: socket.socket, counter: str) -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            setattr(self, counter, getattr(self, counter) + 1)
            conn.close()

    def __exit__(self, *exc: object) -> None:
        self.listener.close()
        self.unix_listener.close()
        shutil.rmtree(self._unix_dir, ignore_errors=True)
        self.home_file.unlink(missing_ok=True)
        os.environ.pop("RETOOL_CANARY_SECRET", None)

    def host_processes_with_marker(self) -> list[int]:
        found = []
        for proc in psutil.process_iter(["pid", "cmdline"]):
            if any(self.marker in part for part in proc.info["cmdline"] or ()):
                found.append(proc.info["pid"])
        return found


@dataclass
class Evidence:
    """What the judge of an attack sees."""

    result: ExecResult  # the attack cell
    followup: ExecResult | None  # the attack's follow-up cell in the same session, if it has one
    bait: HostBait
    limits: SandboxLimits
    host_rss_growth_mb: float  # how much the host process grew while the attack ran (``meter.py``: this
    # process, or the service holding a remote session)
    host_peak_growth_mb: float = 0.0  # its peak memory during the attack, above where it started
    host_cpu_settle_s: float = 0.0  # CPU the host spent while it waited ``settle_s`` (no cell running)


@dataclass(frozen=True)
class Attack:
    name: str
    code: Callable[[HostBait, SandboxLimits], str]
    judge: Callable[[Evidence], tuple[bool, str]]
    timeout: float = 3.0
    followup: str | None = None  # a second cell, after ``settle_s``: what the attack left behind
    settle_s: float = 0.0


@dataclass(frozen=True)
class AttackOutcome:
    name: str
    contained: bool
    recovered: bool
    detail: str
    status: str

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def said(result: ExecResult | None, word: str) -> bool:
    return result is not None and word in result.stdout


def brief(result: ExecResult | None) -> str:
    if result is None:
        return "-"
    text = (result.stdout.strip() or result.error or result.stderr.strip() or "").replace("\n", " | ")
    return f"{result.status.value}: {text[:160]}"


def judge_status(*statuses):
    def judge(e: Evidence) -> tuple[bool, str]:
        return (e.result.status in statuses, brief(e.result))

    return judge


def run_attack(pool, attack: Attack, bait: HostBait) -> AttackOutcome:
    """One attack in a fresh session of ``pool``, its follow-up and the recovery probe in that same
    session; then, once the session is closed, a look for anything it left on the host."""
    with pool.session() as session:
        meter = meter_for(session)  # the process holding the interpreter: this one, or a service
        meter.start_peak()
        rss_before = meter.rss_mb()
        result = session.run(attack.code(bait, pool.limits), timeout=attack.timeout)
        followup, settle_cpu = None, 0.0
        if attack.followup is not None:
            meter.pause()
            cpu = meter.cpu_s()
            time.sleep(attack.settle_s)
            settle_cpu = meter.cpu_s() - cpu
            meter.resume()
            followup = session.run(attack.followup, timeout=attack.timeout)
        evidence = Evidence(result, followup, bait, pool.limits, meter.rss_mb() - rss_before,
                            meter.peak_mb() - rss_before, settle_cpu)
        contained, detail = attack.judge(evidence)
        probe = session.run(PROBE, timeout=30)
        recovered = probe.ok and probe.stdout.strip() == "42"
        if not recovered:
            detail += f"; next call: {brief(probe)}"
    deadline = time.monotonic() + 10
    while session.alive and time.monotonic() < deadline:  # the pool closes it on a worker thread
        time.sleep(0.05)
    left = bait.host_processes_with_marker()
    if left:
        contained = False
        detail += f"; still running on the host after the session closed: {left}"
    return AttackOutcome(attack.name, bool(contained), recovered, detail, result.status.value)
