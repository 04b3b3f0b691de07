"""The attacks of the outside pass: the jail's own pid 1 and limits, the host's trust in jail paths,
kernel quotas, hostile kernel messages, output that would exhaust the host, what a cell leaves
running, text no encoder accepts, a cell lowering its own CPU limit, socket families beyond IP,
and a process that changes its pid faster than a sweep can list it.

Each runs on every backend. Where an attack's target does not exist in a backend (there are no
IPC sockets to swap in a container), the code says so and the attack counts as contained only if
it still got nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import time

from retool.sandbox.attacks.base import Attack, Evidence, brief, said
from retool.sandbox.base import ExecStatus

_LIBC = "import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"


def _host_paths_code(bait, limits):
    return (
        "import os\nseen = []\n"
        "for path in ['/proc/1/environ', '/proc/1/cmdline', '/proc/self/environ', '/proc/self/mountinfo',"
        " '/proc/self/cgroup', '/proc/1/mountinfo']:\n"
        "    try:\n        seen.append(open(path, 'rb').read().decode('utf-8', 'replace'))\n"
        "    except OSError as e:\n        seen.append(f'{path}: {e}')\n"
        "for d in ['/run/retool', '/run', '/']:\n"
        "    try:\n"
        "        for name in os.listdir(d):\n"
        "            p = os.path.join(d, name)\n"
        "            seen.append(p)\n"
        "            if os.path.isfile(p) and os.path.getsize(p) < 1 << 20:\n"
        "                seen.append(open(p, 'rb').read().decode('utf-8', 'replace'))\n"
        "    except OSError as e:\n        seen.append(f'{d}: {e}')\n"
        "print('SEEN', len(seen))\nprint('\\n'.join(seen))"
    )


def _judge_host_paths(e: Evidence):
    out = e.result.stdout
    leaks = [what for what, text in (("the host's secret", e.bait.secret), ("the host's runtime dir", "retool-sandbox-"),
                                     ("the bait's home file", e.bait.marker)) if text in out]
    return (said(e.result, "SEEN") and not leaks, f"{brief(e.result)[:80]}; leaked: {leaks or 'nothing'}")


_NESTED_NAMESPACES = _LIBC + (
    "NEWNS, NEWCGROUP, NEWUSER, NEWPID, NEWNET = 0x20000, 0x02000000, 0x10000000, 0x20000000, 0x40000000\n"
    "for flags in (NEWUSER, NEWUSER | NEWNS | NEWCGROUP, NEWCGROUP, NEWNS, NEWPID, NEWNET):\n"
    "    rc = libc.unshare(flags)\n"
    "    print('ESCAPED unshare' if rc == 0 else 'BLOCKED unshare', hex(flags), ctypes.get_errno())\n"
    "    if rc == 0:\n"
    "        os.makedirs('/tmp/cg', exist_ok=True)\n"
    "        print('mount', libc.mount(b'cgroup2', b'/tmp/cg', b'cgroup2', 0, None), ctypes.get_errno())\n"
    "        for f in ('/tmp/cg/pids.max', '/tmp/cg/memory.max'):\n"
    "            try:\n                open(f, 'w').write('max'); print('ESCAPED wrote', f)\n"
    "            except OSError as e:\n                print('BLOCKED', f, e)\n"
    "for f in ('/sys/fs/cgroup/pids/pids.max', '/sys/fs/cgroup/pids.max', '/sys/fs/cgroup/memory/memory.limit_in_bytes'):\n"
    "    try:\n        open(f, 'w').write('max'); print('ESCAPED wrote', f)\n"
    "    except OSError as e:\n        print('BLOCKED', f, type(e).__name__)\n"
)


def _fork_count_code(bait, limits):
    return _NESTED_NAMESPACES + (
        "import time\nchildren = []\n"
        f"for _ in range({limits.max_processes + 16}):\n"
        "    try:\n        pid = os.fork()\n    except OSError:\n        break\n"
        "    if pid == 0:\n        time.sleep(5)\n        os._exit(0)\n"
        "    children.append(pid)\n"
        "print('FORKED', len(children))\n"
        "for pid in children:\n    os.kill(pid, 9)\n    os.waitpid(pid, 0)\n"
    )


def _judge_limits(e: Evidence):
    forked = [int(line.split()[1]) for line in e.result.stdout.splitlines() if line.startswith("FORKED")]
    ok = said(e.result, "BLOCKED") and not said(e.result, "ESCAPED") and bool(forked) and forked[0] <= e.limits.max_processes
    return (ok, f"{brief(e.result)[:100]}; forked {forked[0] if forked else '?'} of {e.limits.max_processes} allowed")


_PID1 = _LIBC + (
    "status = open('/proc/1/status').read()\n"
    "print('PID1 seccomp', [l.split()[1] for l in status.splitlines() if l.startswith('Seccomp:')])\n"
    "print('PID1 nnp', [l.split()[1] for l in status.splitlines() if l.startswith('NoNewPrivs:')])\n"
    "print('PID1 nproc', [l.split()[2] for l in open('/proc/1/limits') if l.startswith('Max processes')])\n"
    "r, w = os.pipe()\n"
    "pid = os.fork()\n"
    "if pid == 0:\n"
    "    out = []\n"
    "    for req, name in ((16, 'attach'), (0x4206, 'seize')):\n"
    "        rc = libc.ptrace(req, 1, 0, 0)\n"
    "        out.append(f'{\"ESCAPED\" if rc == 0 else \"BLOCKED\"} ptrace {name} {ctypes.get_errno()}')\n"
    "    try:\n"
    "        with open('/proc/1/mem', 'r+b', buffering=0) as mem:\n"
    "            out.append('OPENED /proc/1/mem')\n"
    "    except OSError as e:\n"
    "        out.append(f'BLOCKED mem {e.errno}')\n"
    "    os.write(w, '\\n'.join(out).encode()); os._exit(0)\n"
    "os.close(w); os.waitpid(pid, 0)\n"
    "print(os.read(r, 4096).decode())\n"
)


def _judge_pid1(e: Evidence):
    """Contained when pid 1 is out of reach, or holds nothing the cell does not (it runs under the
    sandbox's seccomp filter with no_new_privs: a container's own init, for instance)."""
    out = e.result.stdout
    confined = "PID1 seccomp ['0']" not in out and "PID1 seccomp []" not in out and "PID1 nnp ['1']" in out
    return (confined, brief(e.result)[:200])


def _quota_code(bait, limits):
    return _LIBC + (
        "keys = 0\n"
        "for i in range(300):\n"
        "    if libc.syscall(248, b'user', f'k{i}'.encode(), b'v', 1, -3) >= 0:\n"  # add_key, session keyring
        "        keys += 1\n"
        "notifies = []\n"
        "for i in range(300):\n"
        "    fd = libc.inotify_init1(0)\n"
        "    if fd < 0:\n        break\n"
        "    notifies.append(fd)\n"
        "print('KEYS', keys, 'INOTIFY', len(notifies))\n"
    )


def _judge_quota(e: Evidence):
    keys = [int(line.split()[1]) for line in e.result.stdout.splitlines() if line.startswith("KEYS")]
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    fd = libc.inotify_init1(0)  # the host's own quota must still have room
    host_ok = fd >= 0
    if host_ok:
        import os

        os.close(fd)
    return (bool(keys) and keys[0] == 0 and host_ok, f"{brief(e.result)}; host can still make inotify instances: {host_ok}")


def _swap_sockets_code(bait, limits):
    return (
        "import os, gc, time\n"
        "swapped = 0\n"
        "for d in ('/run/ipc', '/run', '/tmp'):\n"
        "    try:\n        names = os.listdir(d)\n    except OSError:\n        continue\n"
        "    for name in names:\n"
        "        p = os.path.join(d, name)\n"
        "        try:\n"
        "            if os.path.islink(p) or not os.path.isdir(p):\n"
        f"                os.unlink(p); os.symlink({bait.unix_path!r}, p); swapped += 1\n"
        "        except OSError:\n            pass\n"
        "print('SWAPPED', swapped)\n"
        "try:\n"  # make the host reconnect: close the kernel's own sockets
        "    import zmq\n"
        "    for s in [o for o in gc.get_objects() if isinstance(o, zmq.Socket)]:\n"
        "        if s.type in (zmq.ROUTER, zmq.PUB, zmq.REP, zmq.XPUB):\n"
        "            s.close(linger=0)\n"
        "except Exception as e:\n    print('no kernel sockets', type(e).__name__)\n"
        "time.sleep(1.0)\n"
    )


def _judge_swap(e: Evidence):
    time.sleep(0.5)  # room for a reconnect to land
    return (e.bait.unix_accepted == 0, f"{brief(e.result)}; host Unix socket accepted {e.bait.unix_accepted}")


_FLOOD = (
    "import sys, threading\n"
    "def flood():\n"
    "    chunk = 'F' * (1 << 20)\n"
    "    while True:\n"
    "        try:\n"
    "            while True:\n                sys.stdout.write(chunk); sys.stdout.flush()\n"
    "        except BaseException:\n            continue\n"  # deaf to being stopped
    "threading.Thread(target=flood, daemon=True).start()\n"
    "print('FLOODING')\n"
)


def _judge_flood(e: Evidence):
    grew = e.host_rss_growth_mb
    f = e.followup
    clean = f is not None and f.stdout.count("F") < 2 * e.limits.max_output_bytes and f.duration_s < 10
    return (grew < 96 and clean, f"host grew {grew:.0f} MB; follow-up {brief(f)[:80]} in {f.duration_s if f else 0:.1f} s")


_CHATTER = (
    "import sys, threading, time\n"
    "def chatter():\n"
    "    while True:\n        print('chatter', time.time())\n"
    "threading.Thread(target=chatter, daemon=True).start()\n"
    "time.sleep(60)\n"
)


def _judge_chatter(e: Evidence):
    r = e.result
    bound = 2.0 + e.limits.interrupt_grace_s + 2.0
    on_time = r.duration_s <= bound and r.status in (ExecStatus.TIMEOUT, ExecStatus.OUTPUT_LIMIT)
    return (on_time, f"{r.status.value} after {r.duration_s:.1f} s (bound {bound:.1f} s)")


_BACKGROUND = (
    "import threading, time\n"
    "def spin():\n"
    "    n = 0\n"
    "    while True:\n"
    "        n += 1\n"
    "        if n % 200000 == 0:\n"
    "            print('TICK', n)\n"
    "            open('/tmp/ticks', 'w').write(str(n))\n"
    "threading.Thread(target=spin, daemon=True).start()\n"
    "time.sleep(0.3)\n"
    "print('STARTED')\n"
)
_BACKGROUND_AFTER = (
    "import time\n"
    "def ticks():\n"
    "    try:\n        return int(open('/tmp/ticks').read() or 0)\n"
    "    except (OSError, ValueError):\n        return 0\n"
    "a = ticks(); time.sleep(0.5); b = ticks()\n"
    "print('STILL SPINNING' if b > a else 'QUIET', a, b)\n"
)


def _judge_background(e: Evidence):
    f = e.followup
    stopped_or_told = said(f, "QUIET") or any("background thread" in n for n in e.result.notes)
    leaked = f is not None and "TICK" in f.stdout
    return (stopped_or_told and not leaked, f"notes {list(e.result.notes)}; follow-up {brief(f)}")


def _judge_lone_surrogate_code(e: Evidence):
    r = e.result
    return (r.status is ExecStatus.ERROR and "surrogates not allowed" in (r.error or ""), brief(r))


def _judge_lone_surrogate_output(e: Evidence):
    r = e.result
    return (r.ok and "a\ufffdb" in r.stdout and "BEFORE" in r.stdout and "AFTER" in r.stdout, brief(r))


_FORGED = (
    "try:\n"
    "    k = get_ipython().kernel\n"
    "except NameError:\n"
    "    import os, sys\n"
    "    for fd in (1, 2):\n"  # the docker runner's and the subprocess jail's wires instead
    "        try:\n            os.write(fd, b'\\x01\\x00\\x00\\x00\\xff\\xff\\xff\\xff{not json\\n')\n"
    "        except OSError:\n            pass\n"
    "    print('NOT A KERNEL')\n"
    "else:\n"
    "    sock, s = k.iopub_socket, k.session\n"
    "    me = k.get_parent('shell')['header']\n"
    "    sock.send_multipart([b'garbage'])\n"
    "    sock.send_multipart([b'<IDS|MSG>', b'bad-signature', b'{}', b'{}', b'{}', b'{}'])\n"
    "    sock.send_multipart([b'<IDS|MSG>', b'', b'[', b'{', b'', b'x'])\n"
    "    for parent, content in (([], 'x'), ({'msg_id': 7}, []), ({'msg_id': me['msg_id']}, {'name': 3, 'text': None}),\n"
    "                            ({'msg_id': me['msg_id']}, {'execution_state': []}),\n"
    "                            ({'msg_id': me['msg_id']}, {'name': 'stdout', 'text': 'x', 'retool_dropped': 'lots'})):\n"
    "        msg = s.msg('stream', content={}, parent={})\n"
    "        msg['parent_header'], msg['content'] = parent, content\n"
    "        s.send(sock, msg)\n"
    "    print('FORGED')\n"
)


def _judge_forged(e: Evidence):
    return (e.result.status is not ExecStatus.INFRA_ERROR and e.result.duration_s < 10, brief(e.result))


# The kernel SIGKILLs a process at its hard CPU limit: a cell that lowers its own would pass its
# death off as a kill from outside (infra_error, never scored) unless the change is refused.
_OWN_CPU_LIMIT = (
    "import resource, time\n"
    "used = resource.getrusage(resource.RUSAGE_SELF)\n"
    "lim = int(used.ru_utime + used.ru_stime) + 2\n"
    "changed = False\n"
    "for how, call in (('setrlimit', lambda: resource.setrlimit(resource.RLIMIT_CPU, (lim, lim))),\n"
    "                  ('prlimit', lambda: resource.prlimit(0, resource.RLIMIT_CPU, (lim, lim)))):\n"
    "    try:\n        call(); changed = True; print('CHANGED', how)\n"
    "    except (ValueError, OSError) as e:\n        print('REFUSED', how, e)\n"
    "print('READ', resource.prlimit(0, resource.RLIMIT_CPU))\n"
    "t = time.time()\n"
    "while changed and time.time() - t < 6:\n    pass\n"
)


def _judge_own_cpu_limit(e: Evidence):
    r = e.result
    return (r.status is not ExecStatus.INFRA_ERROR and said(r, "READ"), brief(r)[:160])


# Socket families beyond Unix, IP and netlink, with the family also passed with the register's
# upper half set (the kernel reads an int; a 64-bit compare in the filter would miss it).
_SOCKET_FAMILIES = _LIBC + (
    "import socket\n"
    "libc.syscall.restype = ctypes.c_long\n"
    "for name, family, kind in (('AF_VSOCK', 40, 1), ('AF_ALG', 38, 5), ('AF_PACKET', 17, 2),\n"
    "                           ('AF_BLUETOOTH', 31, 1), ('AF_KEY', 15, 3), ('AF_TIPC', 30, 2)):\n"
    "    for high in (0, 1 << 32):\n"
    "        fd = libc.syscall(41, ctypes.c_long(family | high), kind, 0)\n"
    "        if fd >= 0:\n            print('OPENED', name, hex(high)); os.close(fd)\n"
    "        else:\n            print('BLOCKED', name, hex(high), ctypes.get_errno())\n"
    "socket.socket(socket.AF_INET, socket.SOCK_STREAM).close()\n"
    "socket.socket(socket.AF_UNIX, socket.SOCK_STREAM).close()\n"
    "print('IP AND UNIX STILL WORK')\n"
)


def _judge_socket_families(e: Evidence):
    r = e.result
    return (said(r, "IP AND UNIX STILL WORK") and not said(r, "OPENED"), brief(r)[:200])


# A process that forks a successor every few milliseconds and lets its parent exit: one listing
# of the jail's processes is stale before the kill lands, and RLIMIT_CPU (per process) never adds up.
_HOPPER = """
import os, time
n = 0
while True:
    if os.fork():
        os._exit(0)
    n += 1
    if n % 50 == 0:
        open('/tmp/hop', 'w').write(f'{time.time()} {n}')
"""
_PID_HOPPER = (
    "import os, signal, subprocess, sys, time\n"
    "signal.signal(signal.SIGCHLD, signal.SIG_IGN)\n"
    f"subprocess.Popen([sys.executable, '-c', {_HOPPER!r}], start_new_session=True)\n"
    "t = time.time()\n"
    "while not os.path.exists('/tmp/hop') and time.time() - t < 3:\n    time.sleep(0.05)\n"
    "print('HOPPING' if os.path.exists('/tmp/hop') else 'NEVER HOPPED')\n"
)
_PID_HOPPER_AFTER = (
    "import time\n"
    "def hop():\n"
    "    try:\n        return open('/tmp/hop').read()\n"
    "    except OSError:\n        return ''\n"
    "a = hop(); time.sleep(1.0); b = hop()\n"
    "print('STILL HOPPING' if a != b else 'GONE', repr(a), repr(b))\n"
)


def _judge_pid_hopper(e: Evidence):
    return (said(e.followup, "GONE"), f"{brief(e.result)[:40]}; follow-up {brief(e.followup)[:100]}")


HARDENING: list[Attack] = [
    Attack("host_env_and_paths", _host_paths_code, _judge_host_paths),
    Attack("nested_namespaces_and_limits", _fork_count_code, _judge_limits, timeout=15.0),
    Attack("take_over_pid1", lambda b, l: _PID1, _judge_pid1),
    Attack("exhaust_kernel_quotas", _quota_code, _judge_quota, timeout=10.0),
    Attack("swap_ipc_sockets_for_host_ones", _swap_sockets_code, _judge_swap, timeout=5.0),
    Attack("iopub_flood_between_cells", lambda b, l: _FLOOD, _judge_flood, timeout=5.0,
           followup="print('after the flood')", settle_s=3.0),
    Attack("chatter_defeats_timeout", lambda b, l: _CHATTER, _judge_chatter, timeout=2.0),
    Attack("busy_background_thread", lambda b, l: _BACKGROUND, _judge_background, timeout=5.0,
           followup=_BACKGROUND_AFTER, settle_s=0.5),
    Attack("lone_surrogate_in_code", lambda b, l: "x = 'a\ud800b'\nprint(x)", _judge_lone_surrogate_code),
    Attack("lone_surrogate_in_output", lambda b, l: "print('BEFORE')\nprint('a\\ud800b')\nprint('AFTER')",
           _judge_lone_surrogate_output),
    Attack("forged_kernel_messages", lambda b, l: _FORGED, _judge_forged, timeout=5.0),
    Attack("lower_own_cpu_limit", lambda b, l: _OWN_CPU_LIMIT, _judge_own_cpu_limit, timeout=10.0),
    Attack("socket_families_beyond_ip", lambda b, l: _SOCKET_FAMILIES, _judge_socket_families),
    Attack("pid_hopping_process", lambda b, l: _PID_HOPPER, _judge_pid_hopper, timeout=5.0,
           followup=_PID_HOPPER_AFTER, settle_s=0.2),
]
