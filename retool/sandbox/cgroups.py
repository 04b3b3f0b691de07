"""Per-session control groups: a hard cap on processes, memory and CPU for a whole sandbox tree.

Why, on top of prlimit: RLIMIT_NPROC is not enforced for processes whose real uid is root, and a
sandbox started by root maps to root outside its user namespace; RLIMIT_AS does not see tmpfs pages
or the memory of child processes; RLIMIT_CPU is per process (one that forks a successor every few
milliseconds never reaches it). A cgroup bounds all of those, lets us stop every process of a
session at once (``frozen``: none can fork away from a kill) or kill them all, and tells an
out-of-memory kill from any other death.

Works with cgroup v1 (the ``memory`` and ``pids`` hierarchies, and ``cpu`` and ``freezer`` where
mounted) and v2 (the unified hierarchy, where ``/sys/fs/cgroup`` accepts a ``retool`` child with the
memory, pids and cpu controllers; freezing is built in). Where neither is writable (an unprivileged
user without delegation) ``CgroupBox.create`` returns ``None`` and the caller reports that the
cgroup layer is off; nothing here falls back silently. A missing cpu or freezer controller leaves
that one layer off (``cpu_limited``, ``can_freeze`` say so).

Group names are ``<owner pid>-<id>`` so that a later process can find and reap the groups of a host
process that crashed (``reap_orphan_groups``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

CGROUP_ROOT = Path("/sys/fs/cgroup")
PARENT_NAME = "retool"
CPU_PERIOD_US = 100_000
FREEZE_TIMEOUT_S = 1.0


def _write(path: Path, value: str) -> None:
    path.write_text(value)


def _v1_dirs() -> dict[str, Path] | None:
    dirs = {c: CGROUP_ROOT / c for c in ("memory", "pids")}
    if all((d / "cgroup.procs").exists() for d in dirs.values()):
        return dirs
    return None


def _v2_parent() -> Path | None:
    if not (CGROUP_ROOT / "cgroup.controllers").exists():
        return None
    parent = CGROUP_ROOT / PARENT_NAME
    try:
        _write(CGROUP_ROOT / "cgroup.subtree_control", "+memory +pids")
        parent.mkdir(exist_ok=True)
        _write(parent / "cgroup.subtree_control", "+memory +pids")
    except OSError:
        return None
    with contextlib.suppress(OSError):  # optional: without it CPU is bounded per process only
        _write(CGROUP_ROOT / "cgroup.subtree_control", "+cpu")
        _write(parent / "cgroup.subtree_control", "+cpu")
    return parent


def _v1_optional(controller: str, name: str) -> Path | None:
    """This session's group in the v1 ``controller`` hierarchy, made if the hierarchy is there."""
    root = CGROUP_ROOT / controller
    if not (root / "cgroup.procs").exists() or not os.access(root, os.W_OK):
        return None
    try:
        group = root / PARENT_NAME / name
        group.mkdir(parents=True)
        return group
    except OSError:
        return None


def cgroup_version() -> int | None:
    """1 or 2 when this process can create sandbox groups, else None."""
    if _v1_dirs() is not None and os.access(CGROUP_ROOT / "memory", os.W_OK):
        return 1
    if _v2_parent() is not None:
        return 2
    return None


@dataclass
class CgroupBox:
    """One session's group (one directory per hierarchy in v1, one in v2)."""

    name: str
    version: int
    dirs: list[Path]  # v1: [memory dir, pids dir, then cpu and freezer dirs where mounted]; v2: [the group]
    freezer: Path | None = None  # v1: the freezer dir; v2: the group (when it has cgroup.freeze)
    cpu_limited: bool = False

    @classmethod
    def create(cls, name: str, memory_bytes: int, max_pids: int, cpus: float | None = None) -> "CgroupBox | None":
        """Make the group and set its limits (``cpus``: cores' worth of CPU time at once); ``None``
        where cgroups are not writable here."""
        try:
            v1 = _v1_dirs() if os.access(CGROUP_ROOT / "memory", os.W_OK) else None
            if v1 is not None:
                mem = v1["memory"] / PARENT_NAME / name
                pids = v1["pids"] / PARENT_NAME / name
                mem.mkdir(parents=True)
                pids.mkdir(parents=True)
                _write(mem / "memory.limit_in_bytes", str(memory_bytes))
                memsw = mem / "memory.memsw.limit_in_bytes"
                if memsw.exists():
                    _write(memsw, str(memory_bytes))
                _write(pids / "pids.max", str(max_pids))
                box = cls(name, 1, [mem, pids])
                cpu, freezer = _v1_optional("cpu", name), _v1_optional("freezer", name)
                if cpu is not None:
                    box.dirs.append(cpu)
                    if cpus:
                        _write(cpu / "cpu.cfs_period_us", str(CPU_PERIOD_US))
                        _write(cpu / "cpu.cfs_quota_us", str(max(int(cpus * CPU_PERIOD_US), 1000)))
                        box.cpu_limited = True
                if freezer is not None:
                    box.dirs.append(freezer)
                    box.freezer = freezer
                return box
            parent = _v2_parent()
            if parent is None:
                return None
            group = parent / name
            group.mkdir()
            _write(group / "memory.max", str(memory_bytes))
            if (group / "memory.swap.max").exists():
                _write(group / "memory.swap.max", "0")
            _write(group / "pids.max", str(max_pids))
            box = cls(name, 2, [group], freezer=group if (group / "cgroup.freeze").exists() else None)
            if cpus and (group / "cpu.max").exists():
                _write(group / "cpu.max", f"{max(int(cpus * CPU_PERIOD_US), 1000)} {CPU_PERIOD_US}")
                box.cpu_limited = True
            return box
        except OSError as exc:
            log.warning("cgroup %s could not be created (%s); the cgroup layer is off for it", name, exc)
            return None

    @property
    def procs_files(self) -> list[Path]:
        """Where a launcher writes its own pid before exec, so its whole tree is inside."""
        return [d / "cgroup.procs" for d in self.dirs]

    def pids(self) -> list[int]:
        found: set[int] = set()
        for procs in self.procs_files:
            try:
                found.update(int(line) for line in procs.read_text().split())
            except OSError:
                pass
        return sorted(found)

    def task_count(self) -> int | None:
        """Tasks (threads) in the group now, from one read of ``pids.current``; None if unreadable."""
        for d in self.dirs:
            try:
                return int((d / "pids.current").read_text())
            except (OSError, ValueError):
                continue
        return None

    def oom_kills(self) -> int:
        """How many processes the kernel killed in this group for memory."""
        events = self.dirs[0] / ("memory.oom_control" if self.version == 1 else "memory.events")
        try:
            for line in events.read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
        except (OSError, ValueError):
            pass
        return 0

    @property
    def can_freeze(self) -> bool:
        return self.freezer is not None

    @contextlib.contextmanager
    def frozen(self) -> Iterator[bool]:
        """Every task of the group stopped for the block (none runs, none forks); yields whether the
        group froze within ``FREEZE_TIMEOUT_S``. A fatal signal sent meanwhile ends its target as
        the group thaws (v1) or at once (v2)."""
        if self.freezer is None:
            yield False
            return
        if self.version == 1:
            state, freeze, thaw = self.freezer / "freezer.state", "FROZEN", "THAWED"
            is_frozen = lambda: state.read_text().strip() == "FROZEN"  # noqa: E731
        else:
            state, freeze, thaw = self.freezer / "cgroup.freeze", "1", "0"
            is_frozen = lambda: "frozen 1" in (self.freezer / "cgroup.events").read_text()  # noqa: E731
        try:
            _write(state, freeze)
            deadline = time.monotonic() + FREEZE_TIMEOUT_S
            while not (froze := is_frozen()) and time.monotonic() < deadline:
                time.sleep(0.001)
        except OSError:
            froze = False
        try:
            yield froze
        finally:
            with contextlib.suppress(OSError):
                _write(state, thaw)

    def kill_all(self, attempts: int = 50) -> None:
        """SIGKILL every process in the group, repeating while a fork race refills it."""
        kill_file = self.dirs[0] / "cgroup.kill"
        if self.version == 2 and kill_file.exists():
            try:
                _write(kill_file, "1")
            except OSError:
                pass
        for _ in range(attempts):
            pids = self.pids()
            if not pids:
                return
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.01)

    def destroy(self) -> None:
        for d in self.dirs:  # a frozen task would not die of its SIGKILL
            for state, thaw in (("freezer.state", "THAWED"), ("cgroup.freeze", "0")):
                if (d / state).exists():
                    with contextlib.suppress(OSError):
                        _write(d / state, thaw)
        self.kill_all()
        for d in self.dirs:
            for _ in range(100):  # rmdir fails (EBUSY) until the killed tasks are fully gone
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.01)


def reap_orphan_groups(is_owner_alive) -> int:
    """Kill and remove the groups whose owner process is gone. Returns how many were removed."""
    parents: list[tuple[int, Path]] = []
    if _v1_dirs() is not None:
        parents += [(1, CGROUP_ROOT / c / PARENT_NAME) for c in ("memory", "pids", "cpu", "freezer")]
    if (CGROUP_ROOT / "cgroup.controllers").exists():
        parents.append((2, CGROUP_ROOT / PARENT_NAME))
    removed = 0
    for version, parent in parents:
        if not parent.is_dir():
            continue
        for group in parent.iterdir():
            owner = group.name.split("-", 1)[0]
            if not group.is_dir() or not owner.isdigit() or is_owner_alive(group.name):
                continue
            CgroupBox(group.name, version, [group]).destroy()
            removed += 1
    return removed
