"""What surrounds the local jails (``jail.Jail``): where they live on the host and who owns them,
the bubblewrap binary and the Python install they mount, their environment and prlimit, and the
reaping of what a crashed host left (its jails, cgroups and uids).

Not here: the jail itself (``jail``), or what runs inside (the backends).
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import struct
import sys
import tempfile
import time
from pathlib import Path

import psutil

from retool.sandbox import jail_uid
from retool.sandbox.base import SandboxLimits, SandboxUnavailable
from retool.sandbox.cgroups import cgroup_version, reap_orphan_groups
from retool.sandbox.seccomp import seccomp_unavailable

log = logging.getLogger(__name__)

WORKDIR = "/sandbox"
IPC_DIR = "/run/ipc"
CONFIG_DIR = "/run/retool"  # the config files, copied in read-only (kernel connection file, cell, boot)
BOOT_FILE = f"{CONFIG_DIR}/retool_boot.py"
SYSTEM_DIRS = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")
ETC_FILES = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "alternatives", "localtime")
HEADROOM_MB = 512  # cgroup memory above RLIMIT_AS: room for tmpfs pages and child processes
SMALL_TMPFS_MB = 64  # /tmp and /dev/shm (the working directory gets limits.disk_mb)
HOST_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}  # all bubblewrap itself sees
CPU_GRACE_S = 5  # hard CPU limit above the soft one: SIGXCPU first, so the limit is told from a kill
# pidfd_info (linux/pidfd.h, Linux >= 6.15): how a process that is not our child ended
PIDFD_GET_INFO = (3 << 30) | (64 << 16) | (0xFF << 8) | 11  # _IOWR(0xFF, 11, struct pidfd_info), 64 bytes
PIDFD_INFO_EXIT = 1 << 3
PIDFD_EXIT_CODE_OFFSET = 8 + 8 + 11 * 4  # after mask, cgroupid and eleven u32 ids


def pidfd_wait_status(pidfd: int) -> int | None:
    """The wait status of the process behind ``pidfd`` once it has ended, or None where the kernel
    cannot say (pidfd_info needs Linux >= 6.15): how a process that is not our child ended."""
    info = bytearray(64)
    struct.pack_into("Q", info, 0, PIDFD_INFO_EXIT)
    try:
        fcntl.ioctl(pidfd, PIDFD_GET_INFO, info)
    except OSError:
        return None
    if not struct.unpack_from("Q", info, 0)[0] & PIDFD_INFO_EXIT:
        return None
    return struct.unpack_from("i", info, PIDFD_EXIT_CODE_OFFSET)[0]


def memfd(name: str, data: bytes) -> int:
    """A sealed-off in-memory file holding ``data``, for bubblewrap to copy into the jail."""
    fd = os.memfd_create(f"retool-{name}", os.MFD_CLOEXEC)
    os.write(fd, data)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def children(pid: int | None) -> list[int]:
    """Direct children of ``pid`` from /proc (all threads), without scanning every process."""
    found: list[int] = []
    try:
        for task in os.scandir(f"/proc/{pid}/task"):
            with open(f"{task.path}/children") as f:
                found += [int(c) for c in f.read().split()]
    except OSError:
        pass
    return found


def live_children(pid: int | None) -> list[int]:
    """``children`` that have not exited (zombies wait for pid 1 to reap them, and do no harm)."""
    live = []
    for child in children(pid):
        try:
            with open(f"/proc/{child}/stat", "rb") as f:
                if f.read().rpartition(b")")[2].split()[0] != b"Z":
                    live.append(child)
        except (OSError, IndexError):
            pass
    return live


def _owner_token(pid: int | None = None) -> str:
    """``<pid>-<start time>``: names this process uniquely, even after its pid is reused."""
    proc = psutil.Process(pid or os.getpid())
    return f"{proc.pid}-{int(proc.create_time() * 100)}"


def owner_alive(name: str) -> bool:
    """Whether the host process named at the start of ``name`` (``<pid>-<start>-…``) still runs."""
    pid, _, rest = name.partition("-")
    start = rest.split("-", 1)[0]
    try:
        return _owner_token(int(pid)) == f"{pid}-{start}"
    except (psutil.Error, ValueError):
        return False


def runtime_root() -> Path:
    base = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    root = Path(base) / f"retool-sandbox-{os.getuid()}"
    root.mkdir(mode=0o700, exist_ok=True)
    return root


def find_bwrap() -> str:
    path = shutil.which("bwrap")
    if path is None:
        raise SandboxUnavailable(
            "bubblewrap is not installed; the jupyter and subprocess sandboxes need it. "
            "Install it with: sudo apt-get install -y bubblewrap"
        )
    return path


def as_root() -> bool:
    """Whether jails are started by root (and so get a uid of their own)."""
    return os.geteuid() == 0


def python_roots() -> list[str]:
    """Directories the jailed interpreter needs, read-only: this Python's install and its venv."""
    roots = {os.path.realpath(p) for p in (sys.base_prefix, sys.prefix, os.path.dirname(os.path.realpath(sys.executable)))}
    # nested paths need only their outermost directory
    return sorted(r for r in roots if not any(r != o and r.startswith(o + os.sep) for o in roots))


def unreadable_python() -> str | None:
    """Why the jail's own uid could not run this Python (an install only its owner may read)."""
    for path in (*python_roots(), os.path.realpath(sys.executable)):
        if os.stat(path).st_mode & 0o005 != 0o005:
            return (f"{path} is not readable by other users, so the sandbox (which runs as a uid of its own "
                    f"when retool runs as root) cannot use it: `chmod o+rx {path}` (and o+r on its files), or "
                    "run retool as a normal user")
    return None


def jail_env(limits: SandboxLimits, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The whole environment inside: nothing from the host leaks in (no tokens, no HOME)."""
    env = {
        "PATH": f"{os.path.dirname(sys.executable)}:/usr/local/bin:/usr/bin:/bin",
        "HOME": WORKDIR,
        "USER": "sandbox",
        "LANG": "C.UTF-8",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONNOUSERSITE": "1",
        "MPLBACKEND": "Agg",
        "MALLOC_ARENA_MAX": "2",  # keeps the address space small, so RLIMIT_AS measures real use
        "OPENBLAS_NUM_THREADS": "1",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "IPYTHONDIR": "/tmp/.ipython",
        "JUPYTER_RUNTIME_DIR": "/tmp/.jupyter",
        "RETOOL_MAX_OUTPUT": str(limits.max_output_bytes),
    }
    env.update(extra or {})
    return env


def prlimit_args(limits: SandboxLimits) -> list[str]:
    mib = 1024 * 1024
    return [
        "prlimit",
        f"--as={limits.memory_mb * mib}",
        f"--cpu={limits.cpu_seconds}:{limits.cpu_seconds + CPU_GRACE_S}",
        f"--nproc={limits.max_processes}",
        f"--fsize={limits.max_file_mb * mib}",
        "--nofile=1024",
        "--core=0",
        "--",
    ]


def boot_argv(mode: str, *args: str) -> list[str]:
    """The jail program for a backend: ``retool_boot.py`` in ``mode`` (see ``jail_boot``)."""
    return [sys.executable, "-s", BOOT_FILE, "{watch_fd}", mode, *args]


def _kill_recorded(jail_dir: Path) -> None:
    """Kill the jail a crashed owner left: its pid 1 (the namespace goes with it) and its bwrap."""
    try:
        started = float((jail_dir / "started").read_text())
    except (OSError, ValueError):
        return
    for record in ("child", "pid"):
        try:
            proc = psutil.Process(int((jail_dir / record).read_text()))
            if abs(proc.create_time() - started) < 10:  # the same process, not a pid reused since
                proc.kill()
        except (OSError, ValueError, psutil.Error):
            pass


def reap_orphans() -> int:
    """Kill the jails (their processes, cgroups and uids) of host processes that are gone.
    Returns how many jails were removed."""
    removed = 0
    root = runtime_root()
    for jail_dir in root.iterdir():
        if jail_dir.is_dir() and jail_dir.name != "uids" and not owner_alive(jail_dir.name):
            _kill_recorded(jail_dir)
            shutil.rmtree(jail_dir, ignore_errors=True)
            removed += 1
    if as_root():
        jail_uid.reap_free_slots(root)
    if cgroup_version() is not None:
        reap_orphan_groups(owner_alive)
    return removed


def isolation_features() -> dict[str, object]:
    """What the local jail enforces on this machine, for ``retool sandbox check`` and logs."""
    why_not = seccomp_unavailable()
    root = as_root()
    return {
        "bwrap": shutil.which("bwrap") is not None,
        "cgroup": cgroup_version(),
        "seccomp": why_not is None,
        "seccomp_error": why_not,
        "userns": "none (privileged bubblewrap; new ones refused by seccomp)" if root
        else "own, further ones disabled (--disable-userns and seccomp)",
        "jail_uid": f"own per jail ({jail_uid.UID_BASE}+slot)" if root else f"the invoking user ({os.getuid()})",
        "pid1": "the sandboxed program",
        "nproc_enforced": True,
        "uid": os.getuid(),
    }


def wait_until(predicate, timeout: float, interval: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()
