"""A host uid of its own for every jail, when retool runs as root.

Why: a jail started by root would otherwise *be* root to the kernel wherever it reaches something
that is not namespaced — files owned by uid 0 (the session's own cgroup files among them), root's
per-user quotas (keys, inotify instances), processes of root. Running each jail as an otherwise
unused uid makes all of those someone else's, and gives every jail its own RLIMIT_NPROC count.

Uids come from a fixed range far above any real account (``UID_BASE`` + slot). A slot is taken by
holding an exclusive ``flock`` on ``<runtime root>/uids/<slot>.lock`` for the jail's life, so
several retool processes share the range without talking to each other, and a crashed process's
slots free themselves. Whatever still runs under a uid when its slot is given back, or when a slot
that was not given back cleanly is taken again, is killed (``sweep``): nothing a jail started can
outlive it, even if it left the jail's cgroup.

Not here: starting the jail (``jail.Jail``). Without root there is nothing to allocate: the
jail runs as the invoking user (see ``isolation``).
"""

from __future__ import annotations

import fcntl
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

UID_BASE = 1_879_048_192  # 0x70000000: above the ranges distributions and subuid files hand out
SLOTS = 4096


@dataclass
class JailUid:
    """A claimed uid; ``release()`` kills what still runs as it and frees the slot."""

    uid: int
    _lock_fd: int | None

    def release(self) -> None:
        if self._lock_fd is None:
            return
        sweep(self.uid)
        os.ftruncate(self._lock_fd, 0)  # given back cleanly: the next owner need not sweep
        os.close(self._lock_fd)
        self._lock_fd = None


def _lock_dir(runtime_root: Path) -> Path:
    path = runtime_root / "uids"
    path.mkdir(mode=0o700, exist_ok=True)
    return path


def claim(runtime_root: Path) -> JailUid:
    """The first free slot's uid (``RuntimeError`` when all are taken)."""
    locks = _lock_dir(runtime_root)
    for slot in range(SLOTS):
        fd = os.open(locks / f"{slot}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        uid = UID_BASE + slot
        if os.pread(fd, 1, 0):  # the last owner died holding it: kill what it left
            sweep(uid)
        os.pwrite(fd, b"1", 0)
        return JailUid(uid, fd)
    raise RuntimeError(f"all {SLOTS} sandbox uids are in use")


def processes_of(uid: int) -> list[int]:
    """Live pids with ``uid`` as real, effective, saved or filesystem uid. Read from each process's
    ``status``, not from who owns its /proc entry: a process that made itself non-dumpable shows
    an entry owned by root. Zombies are left out: they run nothing and wait only to be reaped."""
    wanted = str(uid).encode()
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/status", "rb") as f:
                status = f.read(2048)
        except OSError:
            continue
        state = status.find(b"\nState:")
        if state >= 0 and status[state + 7 : state + 12].strip()[:1] in (b"Z", b"X"):
            continue
        at = status.find(b"\nUid:")
        if at >= 0 and wanted in status[at + 5 : status.find(b"\n", at + 1)].split():
            found.append(int(entry.name))
    return found


def sweep(uid: int, attempts: int = 50) -> int:
    """SIGKILL every process running as ``uid`` until none is left (a fork race may refill it)."""
    killed = 0
    for _ in range(attempts):
        pids = processes_of(uid)
        if not pids:
            return killed
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
                killed += 1
            except ProcessLookupError:
                pass
        time.sleep(0.01)
    return killed


def reap_free_slots(runtime_root: Path) -> int:
    """Kill what runs under slots nobody holds (their owners crashed). Returns processes killed."""
    killed = 0
    for lock in _lock_dir(runtime_root).glob("*.lock"):
        if not lock.stem.isdigit():
            continue
        fd = os.open(lock, os.O_RDWR | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            continue  # held: a live jail
        else:
            killed += sweep(UID_BASE + int(lock.stem))
            os.ftruncate(fd, 0)
        finally:
            os.close(fd)
    return killed
