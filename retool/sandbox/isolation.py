"""Start a process tree in a local jail: bubblewrap namespaces, a seccomp filter, size-capped tmpfs,
prlimit, a cgroup, and (when retool runs as root) a host uid of its own.

The jail, from the outside in::

    sh                   joins the session's cgroup, then execs bwrap (no shell when cgroups are off)
     └─ bwrap            new pid, net, ipc, uts, cgroup and mount namespaces (+ user, when not root);
         │               an empty root: /usr, the Python install, a few /etc files read-only; tmpfs
         │               of bounded size on /sandbox (cwd, HOME), /tmp, /dev/shm, /run/ipc; the
         │               config files copied in read-only at /run/retool; the seccomp filter
         └─ setpriv      pid 1 of the jail (``--as-pid-1``): as root, becomes the jail's own uid;
             │           drops every capability and sets no_new_privs
             └─ prlimit  address space, CPU time, processes, file size, open files, no core dumps
                 └─ the program (python retool_boot.py … → ipykernel, or one cell), still pid 1

Decisions, each against an attack that worked on the earlier jail:

* **The program is the jail's pid 1.** There is no bubblewrap init inside to take over (it ran
  outside prlimit and the filter), and the program cannot be killed from inside (a pid
  namespace's init ignores signals it has no handler for), so a SIGKILL death that is not an
  out-of-memory kill or the CPU limit came from outside the jail: the host's doing.
* **As root, a uid of its own** (``jail_uid``): files owned by uid 0 — its cgroup's files among
  them — are not the jail's, root's quotas are not its quotas, and its RLIMIT_NPROC counts only its
  own processes. bubblewrap then runs privileged without a user namespace (it must reach the
  Python install wherever it lives, /root included) and ``setpriv`` drops to the uid.
  Without root, the jail runs as the invoking user in a user namespace with further user
  namespaces disabled (``--disable-userns``).
* **The seccomp filter** (``seccomp``) forbids ptrace, new namespaces, mounts, the key ring, BPF,
  perf, io_uring and the rest of Docker's list, in both modes.
* **Nothing of the host is in reach.** bubblewrap starts from an emptied environment; the config
  files are copied into the jail (``--ro-bind-data``), so no host directory (and no host path in
  ``/proc/self/mountinfo``) is shared; the owner records stay in a runtime directory the jail never
  sees. Only the Python install keeps its real path: the interpreter needs it.
* **The host never follows a path the jail can write.** What the host must reach inside (the
  kernel's sockets) is opened with ``open_inside``: component by component, no symlinks, from a
  descriptor of the jail's root; the host then talks through the descriptor, not the name.
* **Nothing outlives its cell, nor its session.** After each cell, processes other than the
  program are killed (``kill_strays``); at the end, the jail's pid 1, its bubblewrap, its cgroup
  and every process of its uid. A host that dies takes its jails along (``retool_boot``'s watch
  pipe, bubblewrap's ``--die-with-parent``); what a crash still leaves is reaped by
  ``reap_orphans``.

What this module does not do: decide what runs inside, or speak to it. The backends do that.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import signal
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from retool.sandbox import jail_uid
from retool.sandbox.base import CappedText, SandboxLimits, SandboxUnavailable
from retool.sandbox.cgroups import CgroupBox, cgroup_version, reap_orphan_groups
from retool.sandbox.seccomp import filter_program, late_filter_program, seccomp_unavailable

log = logging.getLogger(__name__)

WORKDIR = "/sandbox"
IPC_DIR = "/run/ipc"
CONFIG_DIR = "/run/retool"  # the config files, copied in read-only (kernel connection file, cell, boot)
BOOT_FILE = f"{CONFIG_DIR}/retool_boot.py"
SYSTEM_DIRS = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")
ETC_FILES = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "alternatives", "localtime")
HEADROOM_MB = 512  # cgroup memory above RLIMIT_AS: room for tmpfs pages and child processes
SMALL_TMPFS_MB = 64  # /tmp and /dev/shm (the working directory gets limits.disk_mb)
STRAY_SWEEPS = 20  # without a freezer: how many times the stray sweep lists and kills
QUIET_READ_PAUSE_S = 0.25  # between reads of a quiet program's output: at most 256 KiB/s
HOST_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}  # all bubblewrap itself sees
CPU_GRACE_S = 5  # hard CPU limit above the soft one: SIGXCPU first, so the limit is told from a kill
# pidfd_info (linux/pidfd.h, Linux >= 6.15): how a process that is not our child ended
PIDFD_GET_INFO = (3 << 30) | (64 << 16) | (0xFF << 8) | 11  # _IOWR(0xFF, 11, struct pidfd_info), 64 bytes
PIDFD_INFO_EXIT = 1 << 3
PIDFD_EXIT_CODE_OFFSET = 8 + 8 + 11 * 4  # after mask, cgroupid and eleven u32 ids


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


def _memfd(name: str, data: bytes) -> int:
    """A sealed-off in-memory file holding ``data``, for bubblewrap to copy into the jail."""
    fd = os.memfd_create(f"retool-{name}", os.MFD_CLOEXEC)
    os.write(fd, data)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def boot_argv(mode: str, *args: str) -> list[str]:
    """The jail program for a backend: ``retool_boot.py`` in ``mode`` (see ``jail_boot``)."""
    return [sys.executable, "-s", BOOT_FILE, "{watch_fd}", mode, *args]


@dataclass
class Jail:
    """One jailed process tree. ``start()`` launches it; ``kill()`` ends everything it started.

    ``argv`` is the program (it becomes pid 1); ``{watch_fd}`` in it is replaced by the descriptor
    of the host-watch pipe. ``config_files`` are copied, read-only, to ``CONFIG_DIR/<name>``."""

    argv: list[str]
    limits: SandboxLimits
    config_files: dict[str, str] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    output_limit: int = 16 * 1024  # bytes kept of the jail's own stdout and stderr (head + tail)

    def __post_init__(self) -> None:
        self.name = f"{_owner_token()}-{uuid.uuid4().hex[:8]}"
        self.runtime_dir = runtime_root() / self.name  # the host's records of this jail; never inside
        self.process: subprocess.Popen | None = None
        self.child_pid: int | None = None  # the jail's pid 1 (the program), seen from the host
        self.cgroup: CgroupBox | None = None
        self.uid: int = os.getuid()
        self._uid_claim: jail_uid.JailUid | None = None
        self._watch_fd: int | None = None  # the host's end of the watch pipe: closing it ends the jail
        self._pidfd: int | None = None  # of pid 1, to learn how it ended (it is bwrap's child, not ours)
        self.stdout = CappedText(self.output_limit)
        self.stderr = CappedText(self.output_limit)
        self.output_overflow = threading.Event()
        self._quiet = threading.Event()
        self._drains: list[threading.Thread] = []

    # -- the command ------------------------------------------------------------------------------

    def _files(self) -> dict[str, bytes]:
        uid = 0 if not as_root() else self.uid
        files = {
            "passwd": f"sandbox:x:{uid}:{uid}:sandbox:{WORKDIR}:/bin/sh\n",
            "group": f"sandbox:x:{uid}:\n",
            "hosts": "127.0.0.1 localhost sandbox\n",
            "hostname": "sandbox\n",
        }
        data = {f"etc/{k}": v.encode() for k, v in files.items()}
        data["boot"] = (Path(__file__).with_name("jail_boot.py")).read_bytes()
        data["config/late.bpf"] = late_filter_program()
        data.update({f"config/{k}": v.encode("utf-8") for k, v in self.config_files.items()})
        return data

    def command(self, fds: dict[str, int], seccomp_fd: int, info_fd: int) -> list[str]:
        """The bwrap command line (``fds``: memfds of ``_files``, by key)."""
        privileged = as_root()
        cmd = [find_bwrap(), "--die-with-parent", "--new-session", "--as-pid-1", "--clearenv"]
        if privileged:  # no user namespace: bubblewrap is root for the set-up, setpriv drops to the uid
            cmd += ["--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup"]
            cmd += ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID", "--cap-add", "CAP_SETPCAP"]
        else:
            cmd += ["--unshare-all", "--unshare-user", "--disable-userns", "--uid", "0", "--gid", "0"]
        for key, value in jail_env(self.limits, self.env).items():
            cmd += ["--setenv", key, value]
        cmd += ["--ro-bind", "/usr", "/usr"]
        for name in SYSTEM_DIRS:
            host = Path("/") / name
            if host.is_symlink():
                cmd += ["--symlink", os.readlink(host), str(host)]
            elif host.is_dir():
                cmd += ["--ro-bind", str(host), str(host)]
        for name in ETC_FILES:
            if (Path("/etc") / name).exists():
                cmd += ["--ro-bind", f"/etc/{name}", f"/etc/{name}"]
        cmd += ["--proc", "/proc", "--dev", "/dev"]
        mib = 1024 * 1024
        for path, size_mb in ((WORKDIR, self.limits.disk_mb), ("/tmp", min(self.limits.disk_mb, SMALL_TMPFS_MB)),
                              ("/dev/shm", min(self.limits.disk_mb, SMALL_TMPFS_MB)), (IPC_DIR, 1)):
            cmd += ["--perms", "1777", "--size", str(size_mb * mib), "--tmpfs", path]
        made: set[str] = set()
        for root in python_roots():  # after the tmpfs: a venv under /tmp is bound inside the jail's /tmp
            for parent in reversed(Path(root).parents[:-1]):  # traversable by the jail's uid (bwrap makes 0700)
                if str(parent) not in made:
                    made.add(str(parent))
                    cmd += ["--perms", "0755", "--dir", str(parent)]
            cmd += ["--ro-bind", root, root]
        for key, fd in fds.items():
            kind, _, name = key.partition("/")
            target = BOOT_FILE if key == "boot" else f"/etc/{name}" if kind == "etc" else f"{CONFIG_DIR}/{name}"
            cmd += ["--perms", "0444", "--ro-bind-data", str(fd), target]
        cmd += ["--hostname", "sandbox", "--chdir", WORKDIR, "--remount-ro", "/dev", "--remount-ro", "/"]
        cmd += ["--seccomp", str(seccomp_fd), "--info-fd", str(info_fd), "--"]
        drop = ["setpriv", "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs"]
        if privileged:
            drop[1:1] = [f"--reuid={self.uid}", f"--regid={self.uid}", "--clear-groups"]
        return cmd + drop + ["--", *prlimit_args(self.limits), *self.argv]

    # -- starting ---------------------------------------------------------------------------------

    def start(self) -> "Jail":
        why = seccomp_unavailable() or (unreadable_python() if as_root() else None)
        if why:
            raise SandboxUnavailable(why)
        self.runtime_dir.mkdir(mode=0o700)
        if as_root():
            self._uid_claim = jail_uid.claim(runtime_root())
            self.uid = self._uid_claim.uid
        mib = 1024 * 1024
        tmpfs_mb = self.limits.disk_mb + 2 * min(self.limits.disk_mb, SMALL_TMPFS_MB)
        self.cgroup = CgroupBox.create(self.name, (self.limits.memory_mb + HEADROOM_MB + tmpfs_mb) * mib,
                                       self.limits.max_processes, self.limits.cpus)
        self._record(uid=self.uid, cgroup=self.cgroup.name if self.cgroup else "")
        fds = {key: _memfd(key, data) for key, data in self._files().items()}
        seccomp_fd = _memfd("seccomp", filter_program(uid_shared=not as_root()))
        info_read, info_write = os.pipe()
        watch_read, self._watch_fd = os.pipe()
        os.set_blocking(self._watch_fd, False)
        passed = [*fds.values(), seccomp_fd, info_write, watch_read]
        cmd = [a.replace("{watch_fd}", str(watch_read)) for a in self.command(fds, seccomp_fd, info_write)]
        if self.cgroup is not None:  # enter the group before bwrap runs, so its whole tree is inside
            joins = " && ".join(f'echo $$ > "{f}"' for f in self.cgroup.procs_files)
            cmd = ["/bin/sh", "-c", f'{joins} && exec "$@"', "sh", *cmd]
        try:
            for fd in passed:
                os.set_inheritable(fd, True)
            self.process = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                pass_fds=passed,
                close_fds=True,
                env=dict(HOST_ENV),
                start_new_session=True,  # a terminal's Ctrl-C is for the chat, not for the jail
            )
        finally:
            for fd in passed:
                if fd != info_read:
                    os.close(fd)
        for pipe, buf in ((self.process.stdout, self.stdout), (self.process.stderr, self.stderr)):
            drain = threading.Thread(target=self._drain, args=(pipe, buf), daemon=True, name=f"drain-{self.name}")
            drain.start()
            self._drains.append(drain)
        with os.fdopen(info_read, "rb") as info:
            raw = info.read()
        try:
            self.child_pid = int(json.loads(raw)["child-pid"])
        except (ValueError, KeyError):
            raise SandboxUnavailable(self._why_it_failed()) from None
        self._started_mono = time.monotonic()
        with contextlib.suppress(OSError):
            self._pidfd = os.pidfd_open(self.child_pid)
        self._record(pid=self.process.pid, child=self.child_pid, started=time.time())
        return self

    def _record(self, **values: object) -> None:
        for key, value in values.items():
            (self.runtime_dir / key).write_text(str(value))

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
        """Read the jail's output as it comes, keeping a bounded head and tail of it; once
        ``quiet_output`` was called, slowly (a writer then waits on a full pipe instead of spending
        the host's CPU)."""
        while chunk := pipe.read1(65536):
            buf.write(chunk)
            if buf.overflowed:
                self.output_overflow.set()
            if self._quiet.is_set():
                time.sleep(QUIET_READ_PAUSE_S)
        pipe.close()

    def quiet_output(self) -> None:
        """The program's own stdout and stderr matter no more (it talks over other channels now):
        read them at a trickle from here on."""
        self._quiet.set()

    def wait_output(self, timeout: float = 2.0) -> None:
        """After the process exited: wait until its last output has been read."""
        for drain in self._drains:
            drain.join(timeout)

    # -- reaching inside, safely ------------------------------------------------------------------

    def open_inside(self, path: str, want=stat.S_ISSOCK) -> int:
        """An ``O_PATH`` descriptor of ``path`` inside the jail, opened one component at a time from
        the jail's root without following any symlink; ``OSError`` unless it is what ``want`` says.
        Use it as ``/proc/self/fd/N``: the jail cannot swap what the name points to."""
        fd = os.open(f"/proc/{self.child_pid}/root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            parts = [p for p in path.split("/") if p]
            for i, part in enumerate(parts):
                if part in (".", ".."):
                    raise OSError(f"refusing {path!r}")
                flags = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC | (os.O_DIRECTORY if i < len(parts) - 1 else 0)
                next_fd = os.open(part, flags, dir_fd=fd)
                os.close(fd)
                fd = next_fd
            if not want(os.fstat(fd).st_mode):
                raise OSError(f"{path} inside the jail is not what the host expects")
            return fd
        except BaseException:
            os.close(fd)
            raise

    # -- state ------------------------------------------------------------------------------------

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def cpu_seconds(self) -> float | None:
        """CPU time the program (pid 1) has used, or None once it is gone."""
        try:
            times = psutil.Process(self.child_pid).cpu_times()
            return times.user + times.system
        except psutil.Error:
            return None

    def could_reach_cpu_limit(self, within_s: float) -> bool:
        """Whether the program could use up its CPU time within ``within_s`` more seconds (all cores
        busy since it started): only then is its CPU time worth reading."""
        age = time.monotonic() - self._started_mono + within_s
        return age * (os.cpu_count() or 1) >= self.limits.cpu_seconds

    def thread_count(self) -> int:
        """Threads of the program (pid 1), from one small /proc read; 0 once it is gone."""
        try:
            with open(f"/proc/{self.child_pid}/status", "rb") as f:
                for line in f:
                    if line.startswith(b"Threads:"):
                        return int(line.split()[1])
        except (OSError, ValueError):
            pass
        return 0

    def census(self) -> tuple[int, bool]:
        """(threads of the program, whether anything else runs in the jail): two small reads with a
        cgroup (its task count is the program's threads plus bubblewrap's one), else the children."""
        threads = self.thread_count()
        tasks = self.cgroup.task_count() if self.cgroup is not None else None
        if tasks is not None:
            return threads, tasks > threads + 1
        return threads, bool(_children(self.child_pid))

    def kill_strays(self) -> int:
        """Kill every process in the jail except its program (pid 1); returns how many.

        Called after each cell (when ``census`` says there are any) so that nothing a cell started
        (a forgotten server, a fork bomb's survivors) outlives it. The group is frozen while the
        kill is sent, so that a process which forks a successor every few milliseconds cannot slip
        out between the listing and the kill; where it cannot be frozen, the sweep repeats.
        """
        if self.cgroup is not None and self.cgroup.can_freeze:
            keep = {self.process.pid if self.process else None, self.child_pid}
            with self.cgroup.frozen() as froze:
                strays = [pid for pid in self.cgroup.pids() if pid not in keep] if froze else []
                for pid in strays:
                    with contextlib.suppress(OSError):
                        os.kill(pid, signal.SIGKILL)
            if froze:
                wait_until(lambda: not _live_children(self.child_pid), 1.0)
                return len(strays)
        killed = 0
        for _ in range(STRAY_SWEEPS):
            try:
                strays = psutil.Process(self.child_pid).children(recursive=True)
            except psutil.Error:
                return killed
            if not strays:
                break
            for proc in strays:
                with contextlib.suppress(psutil.Error):
                    proc.kill()
            psutil.wait_procs(strays, timeout=0.2)
            killed += len(strays)
        return killed

    def oom_killed(self) -> bool:
        return self.cgroup is not None and self.cgroup.oom_kills() > 0

    def _wait_status(self) -> int | None:
        """pid 1's wait status once it has ended (from its pidfd), or None where the kernel cannot say."""
        if self._pidfd is None:
            return None
        info = bytearray(64)
        struct.pack_into("Q", info, 0, PIDFD_INFO_EXIT)
        try:
            fcntl.ioctl(self._pidfd, PIDFD_GET_INFO, info)
        except OSError:
            return None
        if not struct.unpack_from("Q", info, 0)[0] & PIDFD_INFO_EXIT:
            return None
        return struct.unpack_from("i", info, PIDFD_EXIT_CODE_OFFSET)[0]

    def death_signal(self) -> int | None:
        """The signal that ended pid 1, if a signal did and the kernel can tell (Linux >= 6.15)."""
        status = self._wait_status()
        return os.WTERMSIG(status) if status is not None and os.WIFSIGNALED(status) else None

    def exit_code(self) -> int | None:
        """pid 1's exit code, if it exited by itself; else bubblewrap's (128 + signal)."""
        status = self._wait_status()
        if status is not None and os.WIFEXITED(status):
            return os.WEXITSTATUS(status)
        return self.process.returncode if self.process is not None else None

    # -- ending -----------------------------------------------------------------------------------

    def kill(self) -> None:
        """End the whole tree (the pid namespace dies with its pid 1), then clean up."""
        if self.process is not None and self.process.poll() is None:
            if self.child_pid is not None:
                with contextlib.suppress(OSError):
                    os.kill(self.child_pid, signal.SIGKILL)  # bwrap still waits for it: the pid is its
            self.process.send_signal(signal.SIGKILL)
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                log.error("jail %s did not exit after SIGKILL", self.name)
        for name in ("_watch_fd", "_pidfd"):
            fd = getattr(self, name)
            if fd is not None:
                os.close(fd)
                setattr(self, name, None)
        if self.cgroup is not None:
            self.cgroup.destroy()
        if self._uid_claim is not None:
            self._uid_claim.release()
            self._uid_claim = None
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


def _live_children(pid: int | None) -> list[int]:
    """``_children`` that have not exited (zombies wait for pid 1 to reap them, and do no harm)."""
    live = []
    for child in _children(pid):
        try:
            with open(f"/proc/{child}/stat", "rb") as f:
                if f.read().rpartition(b")")[2].split()[0] != b"Z":
                    live.append(child)
        except (OSError, IndexError):
            pass
    return live


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
