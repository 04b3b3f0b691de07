"""The containment attacks: network, host files and secrets, writes, bombs, limits, crashes, children.

Each is code a model could write; ``base.run_attack`` runs it and the judge here decides, from the
host, whether it was contained (see ``base`` for the whole procedure).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from retool.sandbox.attacks.base import Attack, Evidence, brief, judge_status, said
from retool.sandbox.base import ExecStatus

OUTSIDE_ADDRESS = "192.0.2.1"  # TEST-NET-1 (RFC 5737): never routed; only tried when no route exists


def _judge_network_outside(e: Evidence):
    return (said(e.result, "BLOCKED") and not said(e.result, "LEAK"), brief(e.result))


def _judge_loopback(e: Evidence):
    accepted = e.bait.accepted
    return (said(e.result, "BLOCKED") and accepted == 0, f"{brief(e.result)}; host listener accepted {accepted}")


def _judge_host_files(e: Evidence):
    out = e.result.stdout
    leaked = e.bait.secret in out or "[project]" in out or "root:" in out or said(e.result, "READ ")
    return (not leaked and said(e.result, "DONE"), brief(e.result))


def _judge_env(e: Evidence):
    return (e.bait.secret not in e.result.stdout and said(e.result, "ENV"), brief(e.result))


def _judge_writes(e: Evidence):
    host_written = [p for p in ("/etc/retool-pwned", "/usr/retool-pwned", "/retool-pwned") if os.path.exists(p)]
    home_intact = e.bait.home_file.read_text() == e.bait.secret
    ok = said(e.result, "DONE") and not said(e.result, "WROTE ") and not host_written and home_intact
    return (ok, f"{brief(e.result)}; host files written: {host_written or 'none'}")


def _judge_fork_bomb(e: Evidence):
    return (e.result.status is not ExecStatus.OK or said(e.result, "LIMITED"), brief(e.result))


def _judge_huge_print(e: Evidence):
    r = e.result
    small = len(r.stdout.encode()) <= e.limits.max_output_bytes + 200
    return (r.status is ExecStatus.OUTPUT_LIMIT and r.truncated and small, f"{brief(r)[:60]}; kept {len(r.stdout):,} chars")


def _judge_disk(e: Evidence):
    written = [int(line.split()[-1]) for line in e.result.stdout.splitlines() if line.startswith("WRITTEN")]
    bound = e.limits.disk_mb + 3 * 64 + 64
    host_drop_mb = (e.bait.disk_free - shutil.disk_usage(Path.home()).free) / 2**20
    ok = bool(written) and written[0] <= bound and host_drop_mb < bound
    return (ok, f"{brief(e.result)}; host disk free changed by {-host_drop_mb:.0f} MB")


def _judge_kill_parent(e: Evidence):
    return (True, brief(e.result))  # this process judging at all shows the host survived; recovery is checked after


def _judge_child(e: Evidence):
    time.sleep(0.3)
    host = e.bait.host_processes_with_marker()
    return (not host, f"{brief(e.result)}; host processes with the marker after the cell: {host or 'none'}")


def _child_code(bait, limits):
    return (
        "import subprocess, sys\n"
        f"p = subprocess.Popen([sys.executable, '-c', 'import time\\nwhile True: time.sleep(0.05)', '{bait.marker}'],"
        " start_new_session=True)\n"
        "print('STARTED', p.pid)"
    )


CONTAINMENT: list[Attack] = [
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
        judge_status(ExecStatus.OOM),
        timeout=20.0,
    ),
    Attack("busy_loop", lambda b, l: "while True:\n    pass", judge_status(ExecStatus.TIMEOUT), timeout=2.0),
    Attack("sleep_past_timeout", lambda b, l: "import time\ntime.sleep(3600)", judge_status(ExecStatus.TIMEOUT), timeout=2.0),
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
        judge_status(ExecStatus.CRASHED),
    ),
    Attack("os_exit", lambda b, l: "import os\nos._exit(7)", judge_status(ExecStatus.CRASHED)),
    Attack(
        "kill_parent",
        lambda b, l: "import os, signal\nprint('parent', os.getppid())\nos.kill(os.getppid(), signal.SIGKILL)\nprint('after')",
        _judge_kill_parent,
    ),
    Attack("child_left_running", _child_code, _judge_child),
    Attack(
        "ignores_sigint",
        lambda b, l: "import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True:\n    pass",
        judge_status(ExecStatus.TIMEOUT),
        timeout=2.0,
    ),
]
