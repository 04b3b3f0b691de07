"""The local jail's own mechanics: failure messages, owner tokens, cgroup limits."""

from __future__ import annotations

import os
import sys

import pytest

from retool.sandbox import SandboxLimits, SandboxUnavailable
from retool.sandbox import isolation
from retool.sandbox import jail as jail_module
from retool.sandbox.cgroups import cgroup_version
from retool.sandbox.isolation import owner_alive, python_roots
from retool.sandbox.jail import Jail


def test_a_jail_that_cannot_start_says_why_in_bwraps_words(monkeypatch):
    original = Jail.command

    def broken(self, *args):
        cmd = original(self, *args)
        cmd.insert(1, "--no-such-flag")
        return cmd

    monkeypatch.setattr(Jail, "command", broken)
    jail = Jail(["true"], SandboxLimits())
    with pytest.raises(SandboxUnavailable, match="Unknown option --no-such-flag"):
        jail.start()
    assert not jail.runtime_dir.exists()


def test_owner_tokens_tell_live_owners_from_gone_ones():
    me = isolation._owner_token()
    assert owner_alive(f"{me}-abcd1234")
    pid, start = me.split("-")
    assert not owner_alive(f"{pid}-{int(start) + 1}-abcd1234")  # same pid, another start: reused pid
    assert not owner_alive("999999999-1-abcd1234")


def test_python_roots_cover_this_interpreter_without_nesting():
    roots = python_roots()
    assert any(os.path.realpath(sys.executable).startswith(r + os.sep) for r in roots)
    assert not any(a != b and a.startswith(b + os.sep) for a in roots for b in roots)


@pytest.mark.skipif(cgroup_version() is None, reason="cgroups are not writable on this machine")
def test_cgroup_limits_are_set_and_removed():
    limits = SandboxLimits(memory_mb=512, max_processes=32, disk_mb=64)
    jail = Jail([sys.executable, "-c", "import time; time.sleep(30)"], limits).start()
    try:
        box = jail.cgroup
        assert box is not None and jail.process.pid in box.pids()
        files = {p.name: p.read_text().strip() for d in box.dirs for p in d.iterdir() if p.name in
                 ("pids.max", "memory.limit_in_bytes", "memory.max")}
        assert files["pids.max"] == "32"
        memory = int(files.get("memory.limit_in_bytes") or files["memory.max"])
        tmpfs = 64 + 2 * isolation.SMALL_TMPFS_MB  # the working directory, /tmp and /dev/shm
        assert memory == (512 + isolation.HEADROOM_MB + tmpfs) * 2**20
        if box.cpu_limited:  # one core's worth of CPU time for the whole tree
            quota = {p.name: p.read_text().strip() for d in box.dirs for p in d.iterdir()
                     if p.name in ("cpu.cfs_quota_us", "cpu.cfs_period_us", "cpu.max")}
            assert quota.get("cpu.max", f"{quota.get('cpu.cfs_quota_us')} {quota.get('cpu.cfs_period_us')}") \
                == "100000 100000"
        if box.can_freeze:
            with box.frozen() as froze:
                assert froze
    finally:
        jail.kill()
    assert not any(d.exists() for d in box.dirs)


def test_a_python_install_under_a_jail_tmpfs_stays_visible_and_read_only(monkeypatch, tmp_path_factory):
    """A venv under /tmp (CI clones often live there) must not be hidden by the jail's own /tmp."""
    import tempfile
    from pathlib import Path

    from retool.sandbox import create_session

    install = Path(tempfile.mkdtemp(prefix="retool-fake-prefix-", dir="/tmp"))
    install.chmod(0o755)  # as a real install is: readable by the sandbox's own uid
    (install / "marker.txt").write_text("visible")
    roots = python_roots()
    monkeypatch.setattr(jail_module, "python_roots", lambda: [*roots, str(install)])
    try:
        with create_session("subprocess") as session:
            result = session.run(
                f"print(open('{install}/marker.txt').read())\n"
                f"try:\n    open('{install}/pwned', 'w')\nexcept OSError as e:\n    print('read-only', e.errno)"
            )
        assert result.stdout == "visible\nread-only 30\n", result
        assert not (install / "pwned").exists()
    finally:
        import shutil

        shutil.rmtree(install)


@pytest.mark.skipif(os.geteuid() != 0, reason="jails get a uid of their own only when retool runs as root")
def test_each_jail_runs_as_a_uid_of_its_own_and_nothing_of_it_survives_release(tmp_path):
    import subprocess

    from retool.sandbox import jail_uid

    first, second = jail_uid.claim(tmp_path), jail_uid.claim(tmp_path)
    assert first.uid != second.uid and jail_uid.UID_BASE <= first.uid < jail_uid.UID_BASE + jail_uid.SLOTS
    # a process that left the jail's cgroup (or escaped it somehow) still runs as the jail's uid
    runaway = subprocess.Popen(["setpriv", f"--reuid={first.uid}", f"--regid={first.uid}", "--clear-groups",
                                "sleep", "600"], start_new_session=True)
    assert isolation.wait_until(lambda: runaway.pid in jail_uid.processes_of(first.uid), 5)
    first.release()
    assert runaway.wait(timeout=5) == -9
    again = jail_uid.claim(tmp_path)  # the freed slot is taken again, without a sweep (it was given back)
    assert again.uid == first.uid
    again.release()
    second.release()


@pytest.mark.skipif(os.geteuid() != 0, reason="jails get a uid of their own only when retool runs as root")
def test_a_slot_its_owner_died_holding_is_swept(tmp_path):
    import subprocess

    from retool.sandbox import jail_uid

    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\nfrom pathlib import Path\nfrom retool.sandbox import jail_uid\n"
        f"c = jail_uid.claim(Path({str(tmp_path)!r}))\nprint(c.uid, flush=True)\ntime.sleep(600)")],
        stdout=subprocess.PIPE, text=True)
    uid = int(holder.stdout.readline())
    orphan = subprocess.Popen(["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "sleep", "600"],
                              start_new_session=True)
    # setpriv switches uid after it starts: sweep only once the orphan really runs as the slot's uid
    assert isolation.wait_until(lambda: orphan.pid in jail_uid.processes_of(uid), 5)
    holder.kill()  # crashed while holding the slot: its lock is gone, its process is not
    holder.wait()
    assert jail_uid.reap_free_slots(tmp_path) >= 1
    assert orphan.wait(timeout=5) == -9
