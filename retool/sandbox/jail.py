"""The local jail, one process tree: bubblewrap namespaces, a seccomp filter, size-capped tmpfs,
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
* **As root, a uid of its own** (``jail_uid``): root's files (its cgroup's among them) and quotas
  are not the jail's, and RLIMIT_NPROC counts only its processes; bubblewrap runs privileged and
  ``setpriv`` drops to the uid. Without root: the user's uid in a user namespace, no further ones.
* **The seccomp filter** (``seccomp``) forbids ptrace, new namespaces, mounts, the key ring, BPF,
  perf, io_uring and the rest of Docker's list, in both modes.
* **Nothing of the host is in reach.** bubblewrap starts from an emptied environment; the config
  files are copied into the jail (``--ro-bind-data``), so no host directory (and no host path in
  ``/proc/self/mountinfo``) is shared; the owner records stay in a runtime directory the jail never
  sees. Only the Python install keeps its real path: the interpreter needs it.
* **The host never follows a path the jail can write.** What the host must reach inside (the
  kernel's sockets) is opened with ``open_inside``: component by component, no symlinks, from a
  descriptor of the jail's root; the host then talks through the descriptor, not the name.
* **Nothing outlives its cell, nor its session.** After each cell, strays are killed (frozen
  first); at the end, pid 1, bubblewrap, the cgroup and every process of the uid. A host that dies
  takes its jails along (a watch pipe, ``--die-with-parent``); ``reap_orphans`` takes the rest.

What this module does not do: decide what runs inside, or speak to it (the backends do), or the
host-wide helpers around jails — paths, owners, limits, reaping (``isolation``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import stat
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from retool.sandbox import jail_uid
from retool.sandbox.base import CappedText, SandboxLimits, SandboxUnavailable
from retool.sandbox.cgroups import CgroupBox
from retool.sandbox.isolation import (BOOT_FILE, CONFIG_DIR, ETC_FILES, HEADROOM_MB, HOST_ENV, IPC_DIR, SMALL_TMPFS_MB,
                                      SYSTEM_DIRS, WORKDIR, _owner_token, as_root, children, find_bwrap, jail_env,
                                      live_children, memfd, pidfd_wait_status, prlimit_args,
                                      python_roots, runtime_root, unreadable_python, wait_until)
from retool.sandbox.seccomp import filter_program, late_filter_program, seccomp_unavailable

log = logging.getLogger(__name__)

STRAY_SWEEPS = 20  # without a freezer: how many times the stray sweep lists and kills
QUIET_READ_PAUSE_S = 0.25  # between reads of a quiet program's output: at most 256 KiB/s


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
        fds = {key: memfd(key, data) for key, data in self._files().items()}
        seccomp_fd = memfd("seccomp", filter_program(uid_shared=not as_root()))
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
        return threads, bool(children(self.child_pid))

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
                wait_until(lambda: not live_children(self.child_pid), 1.0)
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
        return pidfd_wait_status(self._pidfd) if self._pidfd is not None else None

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
