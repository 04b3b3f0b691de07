"""The attack suite: real hostile cells run against a live backend, each judged from the host.

Used by the tests and by ``retool sandbox check``. Every attack is code a model could write; it
runs in a session from a real pool, and the host then checks two things:

* **contained** — the attack got nothing it should not have (no connection, no host file, no
  secret, no write outside the sandbox, no runaway process or memory or disk) and the session
  reported it with the right status;
* **recovered** — the next call on that same session (or the fresh interpreter that replaced it)
  prints ``42``.

Network attacks never send a packet off this machine: the outside-address attempt is made only when
the sandbox has no route (the kernel then refuses it locally); the loopback attack targets a
listener this process opens on 127.0.0.1.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import psutil

from retool.sandbox.base import ExecResult, ExecStatus, SandboxLimits

PROBE = "print(6 * 7)"
OUTSIDE_ADDRESS = "192.0.2.1"  # TEST-NET-1 (RFC 5737): never routed; only tried when no route exists


@dataclass
class HostBait:
    """What the host puts in reach of an attacker: a loopback service, a secret, a file, a marker."""

    secret: str = field(default_factory=lambda: secrets.token_hex(16))
    marker: str = field(default_factory=lambda: f"retool-canary-{secrets.token_hex(6)}")
    accepted: int = 0

    def __enter__(self) -> "HostBait":
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self._serving = threading.Thread(target=self._serve, daemon=True)
        self._serving.start()
        self.home_file = Path.home() / f".{self.marker}"
        self.home_file.write_text(self.secret)
        os.environ["RETOOL_CANARY_SECRET"] = self.secret  # sessions started from now on could inherit it
        self.checkout_file = Path(__file__).resolve().parents[2] / "pyproject.toml"
        if not self.checkout_file.exists():
            self.checkout_file = Path(__file__).resolve()
        self.disk_free = shutil.disk_usage(Path.home()).free
        return self

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.accepted += 1
            conn.close()

    def __exit__(self, *exc: object) -> None:
        self.listener.close()
        self.home_file.unlink(missing_ok=True)
        os.environ.pop("RETOOL_CANARY_SECRET", None)

    def host_processes_with_marker(self) -> list[int]:
        found = []
        for proc in psutil.process_iter(["pid", "cmdline"]):
            if any(self.marker in part for part in proc.info["cmdline"] or ()):
                found.append(proc.info["pid"])
        return found


@dataclass(frozen=True)
class Attack:
    name: str
    code: Callable[[HostBait, SandboxLimits], str]
    judge: Callable[[ExecResult, HostBait, SandboxLimits], tuple[bool, str]]
    timeout: float = 3.0


@dataclass(frozen=True)
class AttackOutcome:
    name: str
    contained: bool
    recovered: bool
    detail: str
    status: str

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def _said(result: ExecResult, word: str) -> bool:
    return word in result.stdout


def _brief(result: ExecResult) -> str:
    text = (result.stdout.strip() or result.error or result.stderr.strip() or "").replace("\n", " | ")
    return f"{result.status.value}: {text[:160]}"


def _judge_network_outside(r, bait, limits):
    return (_said(r, "BLOCKED") and not _said(r, "LEAK"), _brief(r))


def _judge_loopback(r, bait, limits):
    return (_said(r, "BLOCKED") and bait.accepted == 0, f"{_brief(r)}; host listener accepted {bait.accepted}")


def _judge_host_files(r, bait, limits):
    leaked = bait.secret in r.stdout or "[project]" in r.stdout or "root:" in r.stdout or _said(r, "READ ")
    return (not leaked and _said(r, "DONE"), _brief(r))


def _judge_env(r, bait, limits):
    return (bait.secret not in r.stdout and _said(r, "ENV"), _brief(r))


def _judge_writes(r, bait, limits):
    host_written = [p for p in ("/etc/retool-pwned", "/usr/retool-pwned", "/retool-pwned") if os.path.exists(p)]
    home_intact = bait.home_file.read_text() == bait.secret
    ok = _said(r, "DONE") and not _said(r, "WROTE ") and not host_written and home_intact
    return (ok, f"{_brief(r)}; host files written: {host_written or 'none'}")


def _judge_fork_bomb(r, bait, limits):
    return (r.status is not ExecStatus.OK or _said(r, "LIMITED"), _brief(r))


def _judge_status(*statuses: ExecStatus):
    def judge(r, bait, limits):
        return (r.status in statuses, _brief(r))

    return judge


def _judge_huge_print(r, bait, limits):
    small = len(r.stdout.encode()) <= limits.max_output_bytes + 200
    return (r.status is ExecStatus.OUTPUT_LIMIT and r.truncated and small, f"{_brief(r)[:60]}; kept {len(r.stdout):,} chars")


def _judge_disk(r, bait, limits):
    written = [int(line.split()[-1]) for line in r.stdout.splitlines() if line.startswith("WRITTEN")]
    bound = limits.disk_mb + 3 * 64 + 64
    host_drop_mb = (bait.disk_free - shutil.disk_usage(Path.home()).free) / 2**20
    ok = bool(written) and written[0] <= bound and host_drop_mb < bound
    return (ok, f"{_brief(r)}; host disk free changed by {-host_drop_mb:.0f} MB")


def _judge_kill_parent(r, bait, limits):
    return (True, _brief(r))  # this process judging at all shows the host survived; recovery is checked after


def _judge_child(r, bait, limits):
    time.sleep(0.3)
    host = bait.host_processes_with_marker()
    return (not host, f"{_brief(r)}; host processes with the marker after the cell: {host or 'none'}")


def _child_code(bait, limits):
    return (
        "import subprocess, sys\n"
        f"p = subprocess.Popen([sys.executable, '-c', 'import time\\nwhile True: time.sleep(0.05)', '{bait.marker}'],"
        " start_new_session=True)\n"
        "print('STARTED', p.pid)"
    )


ATTACKS: list[Attack] = [
    Attack(
        "network_egress_outside",
        lambda b, l: (
            "import socket\n"
            "routes = [x for x in open('/proc/net/route').read().splitlines()[1:] if x.strip()]\n"
            "ifaces = [n for _, n in socket.if_nameindex() if n != 'lo']\n"
            "if routes or ifaces:\n"
            "    print('LEAK: the sandbox has a route or an interface', ifaces, len(routes))\n"
            "else:\n"
            "    try:\n"
            f"        socket.create_connection(('{OUTSIDE_ADDRESS}', 80), timeout=2); print('LEAK: connected')\n"
            "    except OSError as e:\n"
            "        print('BLOCKED', e)\n"
        ),
        _judge_network_outside,
    ),
    Attack(
        "network_host_loopback",
        lambda b, l: (
            "import socket\ntry:\n"
            f"    socket.create_connection(('127.0.0.1', {b.port}), timeout=2).sendall(b'x'); print('LEAK: connected')\n"
            "except OSError as e:\n    print('BLOCKED', e)\n"
        ),
        _judge_loopback,
    ),
    Attack(
        "read_host_files",
        lambda b, l: (
            f"for path in [{str(b.checkout_file)!r}, '/etc/shadow', {str(b.home_file)!r}, '/root/.bashrc', '/root/.ssh/id_rsa']:\n"
            "    try:\n        print('READ', path, open(path).read()[:200])\n"
            "    except OSError as e:\n        print('denied', path, type(e).__name__)\n"
            "print('DONE')"
        ),
        _judge_host_files,
    ),
    Attack("read_host_env_secrets", lambda b, l: "import os\nprint('ENV', dict(os.environ))", _judge_env),
    Attack(
        "write_outside_workdir",
        lambda b, l: (
            f"for path in ['/etc/retool-pwned', '/usr/retool-pwned', '/retool-pwned', '/dev/retool-pwned', {str(b.home_file)!r}]:\n"
            "    try:\n        open(path, 'w').write('pwned'); print('WROTE', path)\n"
            "    except OSError as e:\n        print('denied', path, type(e).__name__)\n"
            "open('inside.txt', 'w').write('fine'); print('DONE')"
        ),
        _judge_writes,
    ),
    Attack(
        "fork_bomb",
        lambda b, l: (
            "import os\nchildren = 0\ntry:\n    while True:\n        if os.fork() == 0:\n"
            "            while True:\n                try:\n                    os.fork()\n"
            "                except OSError:\n                    pass\n"
            "        children += 1\nexcept OSError as e:\n    print('LIMITED after', children, e)\n"
        ),
        _judge_fork_bomb,
        timeout=5.0,
    ),
    Attack(
        "memory_bomb",
        lambda b, l: "blocks = []\nwhile True:\n    blocks.append(bytearray(64 * 2**20))",
        _judge_status(ExecStatus.OOM),
        timeout=20.0,
    ),
    Attack("busy_loop", lambda b, l: "while True:\n    pass", _judge_status(ExecStatus.TIMEOUT), timeout=2.0),
    Attack("sleep_past_timeout", lambda b, l: "import time\ntime.sleep(3600)", _judge_status(ExecStatus.TIMEOUT), timeout=2.0),
    Attack("print_100mb", lambda b, l: "print('x' * 100_000_000)", _judge_huge_print, timeout=20.0),
    Attack(
        "fill_disk",
        lambda b, l: (
            "written = 0\nfor d in ('.', '/tmp', '/dev/shm'):\n    i = 0\n    try:\n        while True:\n"
            "            with open(f'{d}/fill{i}', 'wb') as f:\n                for _ in range(64):\n"
            "                    f.write(b'\\0' * 2**20); written += 1\n            i += 1\n"
            "    except OSError as e:\n        print(d, type(e).__name__, e.errno)\n"
            "print('WRITTEN MB', written)"
        ),
        _judge_disk,
        timeout=30.0,
    ),
    Attack(
        "segfault_ctypes",
        lambda b, l: "import ctypes\nctypes.string_at(0)",
        _judge_status(ExecStatus.CRASHED),
    ),
    Attack("os_exit", lambda b, l: "import os\nos._exit(7)", _judge_status(ExecStatus.CRASHED)),
    Attack(
        "kill_parent",
        lambda b, l: "import os, signal\nprint('parent', os.getppid())\nos.kill(os.getppid(), signal.SIGKILL)\nprint('after')",
        _judge_kill_parent,
    ),
    Attack("child_left_running", _child_code, _judge_child),
    Attack(
        "ignores_sigint",
        lambda b, l: "import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True:\n    pass",
        _judge_status(ExecStatus.TIMEOUT),
        timeout=2.0,
    ),
]

ATTACKS_BY_NAME = {attack.name: attack for attack in ATTACKS}


def run_attack(pool, attack: Attack, bait: HostBait) -> AttackOutcome:
    """One attack in a fresh session of ``pool``, then the recovery probe in that same session."""
    with pool.session() as session:
        result = session.run(attack.code(bait, pool.limits), timeout=attack.timeout)
        contained, detail = attack.judge(result, bait, pool.limits)
        probe = session.run(PROBE, timeout=30)
        recovered = probe.ok and probe.stdout.strip() == "42"
        if not recovered:
            detail += f"; next call: {_brief(probe)}"
    return AttackOutcome(attack.name, bool(contained), recovered, detail, result.status.value)


def run_attack_suite(backend: str, limits: SandboxLimits | None = None, names: list[str] | None = None, **options):
    """Run the attacks (all, or ``names``) against ``backend``; yields one outcome per attack."""
    from retool.sandbox.pool import SandboxPool

    attacks = [ATTACKS_BY_NAME[n] for n in names] if names else ATTACKS
    with HostBait() as bait, SandboxPool(backend, size=2, limits=limits, **options) as pool:
        for attack in attacks:
            yield run_attack(pool, attack, bait)
