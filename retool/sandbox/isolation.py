"""Start a process tree in a local jail: bubblewrap namespaces, size-capped tmpfs, prlimit, cgroups.

The jail, from the outside in:

    sh (writes its pid into the session's cgroup, then execs)
     └─ bwrap --unshare-all  (new user, pid, net, ipc, uts, cgroup and mount namespaces)
         │   /            an empty root; /usr, the Python install and a few /etc files bound read-only
         │   /proc /dev   fresh, of the new pid namespace
         └─ sh (inside, with CAP_SYS_ADMIN of its own user namespace only)
              mounts size-capped tmpfs on /sandbox (cwd, HOME), /tmp, /dev/shm and /run/ipc,
              then execs setpriv (drop every capability, no_new_privs)
               └─ prlimit --as --cpu --nproc --fsize --nofile --core=0
                   └─ the program (python -m ipykernel_launcher / python -c)

* No network: the net namespace has only a downed loopback. No host home, no project checkout,
  no /etc/shadow: nothing is visible that is not bound on purpose. A clean environment.
* Nothing of the host is writable: every writable path is a tmpfs of bounded size inside the
  jail, so filling the disk fills only the jail's tmpfs. Sockets that the host must reach (the
  Jupyter kernel's IPC files) live in /run/ipc and are reached from the host through
  ``/proc/<jail pid>/root/run/ipc``.
* Every jail records its owner in a runtime directory, so that ``reap_orphans`` in a later process
  can kill what a crashed host process left behind; ``--die-with-parent`` covers the common case.

What this module does not do: decide what runs inside, or speak to it. The backends do that.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from retool.sandbox.base import CappedText, SandboxLimits, SandboxUnavailable
from retool.sandbox.cgroups import CgroupBox, cgroup_version, reap_orphan_groups

log = logging.getLogger(__name__)

WORKDIR = "/sandbox"
IPC_DIR = "/run/ipc"
CONFIG_DIR = "/run/retool"  # read-only view of the jail's host runtime dir (kernel connection file)
STAGE_DIR = "/run/retool-stage"  # where a Python install under a jail tmpfs waits to be bound back
JAIL_TMPFS = (WORKDIR, "/tmp", "/dev/shm", IPC_DIR)  # mounted by the jail itself, size-capped
SYSTEM_DIRS = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")
ETC_FILES = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "alternatives", "localtime")
HEADROOM_MB = 512  # cgroup memory above RLIMIT_AS: room for tmpfs pages and child processes


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


def python_roots() -> list[str]:
    """Directories the jailed interpreter needs, read-only: this Python's install and its venv."""
    roots = {os.path.realpath(p) for p in (sys.base_prefix, sys.prefix, os.path.dirname(os.path.realpath(sys.executable)))}
    # nested paths need only their outermost directory
    return sorted(r for r in roots if not any(r != o and r.startswith(o + os.sep) for o in roots))


def jail_env(extra: dict[str, str] | None = None) -> dict[str, str]:
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
    }
    env.update(extra or {})
    return env


_INNER = (
    "set -e; "
    "mount -t tmpfs -o size={disk}m,mode=1777,nosuid,nodev tmpfs {work}; "
    "mount -t tmpfs -o size={small}m,mode=1777,nosuid,nodev tmpfs /tmp; "
    "mount -t tmpfs -o size={small}m,mode=1777,nosuid,nodev tmpfs /dev/shm; "
    "mount -t tmpfs -o size=1m,mode=700,nosuid,nodev tmpfs {ipc}; "
    "{rebind}"
    "cd {work}; "
    'exec setpriv --bounding-set=-all --inh-caps=-all --no-new-privs "$@"'
)


def prlimit_args(limits: SandboxLimits) -> list[str]:
    mib = 1024 * 1024
    return [
        "prlimit",
        f"--as={limits.memory_mb * mib}",
        f"--cpu={limits.cpu_seconds}",
        f"--nproc={limits.max_processes}",
        f"--fsize={limits.max_file_mb * mib}",
        "--nofile=1024",
        "--core=0",
        "--",
    ]


@dataclass
class Jail:
    """One jailed process tree. ``start()`` launches it; ``kill()`` ends everything it started."""

    argv: list[str]
    limits: SandboxLimits
    config_files: dict[str, str] = field(default_factory=dict)  # name -> text, visible at CONFIG_DIR
    env: dict[str, str] = field(default_factory=dict)
    output_limit: int = 16 * 1024  # bytes kept of the jail's own stdout and stderr (head + tail)

    def __post_init__(self) -> None:
        self.name = f"{_owner_token()}-{uuid.uuid4().hex[:8]}"
        self.runtime_dir = runtime_root() / self.name
        self.process: subprocess.Popen | None = None
        self.child_pid: int | None = None  # the jail's pid 1, seen from the host
        self.cgroup: CgroupBox | None = None
        self.stdout = CappedText(self.output_limit)
        self.stderr = CappedText(self.output_limit)
        self.output_overflow = threading.Event()
        self._drains: list[threading.Thread] = []

    def command(self) -> list[str]:
        bwrap = [find_bwrap(), "--unshare-all", "--die-with-parent", "--new-session", "--clearenv"]
        for key, value in jail_env(self.env).items():
            bwrap += ["--setenv", key, value]
        bwrap += ["--ro-bind", "/usr", "/usr"]
        for name in SYSTEM_DIRS:
            host = Path("/") / name
            if host.is_symlink():
                bwrap += ["--symlink", os.readlink(host), str(host)]
            elif host.is_dir():
                bwrap += ["--ro-bind", str(host), str(host)]
        for name in ETC_FILES:
            if (Path("/etc") / name).exists():
                bwrap += ["--ro-bind", f"/etc/{name}", f"/etc/{name}"]
        staged = []
        for i, root in enumerate(python_roots()):
            if any(root == m or root.startswith(m + "/") for m in JAIL_TMPFS):
                staged.append((f"{STAGE_DIR}/{i}", root))  # the jail's own tmpfs would hide it
                bwrap += ["--ro-bind", root, staged[-1][0]]
            else:
                bwrap += ["--ro-bind", root, root]
        bwrap += ["--ro-bind", str(self.runtime_dir), CONFIG_DIR]
        for name in ("passwd", "group", "hosts", "hostname"):
            bwrap += ["--ro-bind", str(self.runtime_dir / name), f"/etc/{name}"]
        bwrap += ["--proc", "/proc", "--dev", "/dev", "--dir", "/dev/shm", "--dir", WORKDIR, "--dir", "/tmp"]
        bwrap += ["--dir", IPC_DIR, "--remount-ro", "/dev", "--remount-ro", "/"]
        bwrap += ["--hostname", "sandbox", "--uid", "0", "--gid", "0", "--cap-add", "CAP_SYS_ADMIN"]
        small = min(self.limits.disk_mb, 64)
        rebind = "".join(
            f"mkdir -p {root} && mount --rbind {stage} {root} && mount -o remount,bind,ro {root}; " for stage, root in staged
        )
        inner = _INNER.format(disk=self.limits.disk_mb, small=small, work=WORKDIR, ipc=IPC_DIR, rebind=rebind)
        return bwrap + ["--info-fd", "{info_fd}", "--", "/bin/sh", "-c", inner, "sh", *prlimit_args(self.limits), *self.argv]

    def _write_runtime_files(self) -> None:
        self.runtime_dir.mkdir(mode=0o700)
        files = {
            "passwd": "root:x:0:0:sandbox:/sandbox:/bin/sh\nsandbox:x:0:0:sandbox:/sandbox:/bin/sh\n",
            "group": "root:x:0:\n",
            "hosts": "127.0.0.1 localhost sandbox\n",
            "hostname": "sandbox\n",
            **self.config_files,
        }
        for name, text in files.items():
            (self.runtime_dir / name).write_text(text)

    def start(self) -> "Jail":
        self._write_runtime_files()
        mib = 1024 * 1024
        self.cgroup = CgroupBox.create(
            self.name, (self.limits.memory_mb + HEADROOM_MB + 2 * self.limits.disk_mb) * mib, self.limits.max_processes
        )
        (self.runtime_dir / "cgroup").write_text(self.cgroup.name if self.cgroup else "")
        read_fd, write_fd = os.pipe()
        cmd = [a.replace("{info_fd}", str(write_fd)) for a in self.command()]
        if self.cgroup is not None:  # enter the group before bwrap runs, so its whole tree is inside
            joins = " && ".join(f'echo $$ > "{f}"' for f in self.cgroup.procs_files)
            cmd = ["/bin/sh", "-c", f'{joins} && exec "$@"', "sh", *cmd]
        try:
            self.process = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                pass_fds=[write_fd],
                close_fds=True,
                start_new_session=True,  # a terminal's Ctrl-C is for the chat, not for the jail
            )
        finally:
            os.close(write_fd)
        for pipe, buf in ((self.process.stdout, self.stdout), (self.process.stderr, self.stderr)):
            drain = threading.Thread(target=self._drain, args=(pipe, buf), daemon=True, name=f"drain-{self.name}")
            drain.start()
            self._drains.append(drain)
        with os.fdopen(read_fd, "rb") as info:
            raw = info.read()
        (self.runtime_dir / "pid").write_text(str(self.process.pid))
        try:
            self.child_pid = int(json.loads(raw)["child-pid"])
        except (ValueError, KeyError):
            raise SandboxUnavailable(self._why_it_failed()) from None
        return self

    def _why_it_failed(self) -> str:
        """bwrap's own words, plus the usual cause, for a jail that never started."""
        try:
            code = self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            code = None
        self.wait_output()
        said = (self.stderr.text() + self.stdout.text()).strip()[-1500:] or "(no message)"
        self.kill()
        return (
            f"bubblewrap could not start the sandbox (exit {code}): {said}\n"
            "If it mentions user namespaces: this machine forbids unprivileged ones (e.g. Ubuntu's AppArmor "
            "restriction; `sudo sysctl kernel.apparmor_restrict_unprivileged_userns=0`), or use --backend docker."
        )

    def _drain(self, pipe, buf: CappedText) -> None:
        """Read the jail's output as it comes, keeping a bounded head and tail of it."""
        while chunk := pipe.read1(65536):
            buf.write(chunk)
            if buf.overflowed:
                self.output_overflow.set()
        pipe.close()

    def wait_output(self, timeout: float = 2.0) -> None:
        """After the process exited: wait until its last output has been read."""
        for drain in self._drains:
            drain.join(timeout)

    def host_path(self, inside: str) -> str:
        """A path inside the jail as the host reaches it (through the jail's pid 1 root)."""
        return f"/proc/{self.child_pid}/root{inside}"

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def main_pid(self) -> int | None:
        """Host pid of the program the jail runs (the only child of the jail's pid 1)."""
        children = _children(self.child_pid)
        return children[0] if len(children) == 1 else None

    def kill_strays(self, keep: int) -> int:
        """Kill every process in the jail except its pid 1 and ``keep``; returns how many.

        Called after each cell so that nothing a cell started (a forgotten server, a fork bomb's
        survivors) outlives it. The check costs two small reads when there is nothing to do.
        """
        if _children(self.child_pid) == [keep] and not _children(keep):
            return 0
        try:
            strays = [p for p in psutil.Process(self.child_pid).children(recursive=True) if p.pid != keep]
        except psutil.Error:
            return 0
        for proc in strays:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        psutil.wait_procs(strays, timeout=1)
        return len(strays)

    def oom_killed(self) -> bool:
        return self.cgroup is not None and self.cgroup.oom_kills() > 0

    def kill(self) -> None:
        """End the whole tree (bwrap takes its pid namespace down with it), then clean up."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                log.error("jail %s did not exit after SIGKILL", self.name)
        if self.cgroup is not None:
            self.cgroup.destroy()
        shutil.rmtree(self.runtime_dir, ignore_errors=True)


def _children(pid: int | None) -> list[int]:
    """Direct children of ``pid`` from /proc (all threads), without scanning every process."""
    found: list[int] = []
    try:
        for task in os.scandir(f"/proc/{pid}/task"):
            with open(f"{task.path}/children") as f:
                found += [int(c) for c in f.read().split()]
    except OSError:
        pass
    return found


def _kill_recorded(jail_dir: Path) -> None:
    try:
        pid = int((jail_dir / "pid").read_text())
        proc = psutil.Process(pid)
        if str(jail_dir) in " ".join(proc.cmdline()):  # the pid was not reused by something else
            proc.kill()
    except (OSError, ValueError, psutil.Error):
        pass


def reap_orphans() -> int:
    """Kill the jails (and their cgroups) of host processes that are gone. Returns how many."""
    removed = 0
    for jail_dir in runtime_root().iterdir():
        if jail_dir.is_dir() and not owner_alive(jail_dir.name):
            _kill_recorded(jail_dir)
            shutil.rmtree(jail_dir, ignore_errors=True)
            removed += 1
    if cgroup_version() is not None:
        reap_orphan_groups(owner_alive)
    return removed


def isolation_features() -> dict[str, object]:
    """What the local jail enforces on this machine, for ``retool sandbox check`` and logs."""
    return {
        "bwrap": shutil.which("bwrap") is not None,
        "cgroup": cgroup_version(),
        "nproc_enforced": os.getuid() != 0 or cgroup_version() is not None,
        "uid": os.getuid(),
    }


def wait_until(predicate, timeout: float, interval: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()
