"""The local jail's system-call filter: generated with libseccomp, loaded by bubblewrap.

Anchored on Docker's default profile, written as a deny list so that everything a Python
interpreter, ipykernel, NumPy and SciPy use keeps working: every call below fails with ``EPERM``
(``clone3`` with ``ENOSYS``, so that glibc falls back to ``clone``, whose flags a filter can read).
What the list takes away, by kind:

* reaching other processes: ``ptrace``, ``process_vm_readv/writev``, ``process_madvise``, ``kcmp``,
  ``pidfd_getfd``, NUMA page moves of other processes;
* new namespaces (so no nested user namespace, no private mount of a cgroup hierarchy):
  ``unshare``, ``setns``, ``clone`` with any ``CLONE_NEW*`` flag, ``clone3``;
* mounting and changing roots: ``mount``, ``umount2``, the new mount API, ``pivot_root``, ``chroot``;
* kernel-wide state and quotas: the key ring (``keyctl``, ``add_key``, ``request_key``), ``bpf``,
  ``perf_event_open``, ``userfaultfd``, modules, ``kexec``, ``reboot``, swap, accounting, quotas,
  the clock, ``syslog``;
* file handles (``open_by_handle_at`` walks around the mount namespace), ``io_uring`` (its
  requests bypass seccomp), ``fanotify``, ``AF_VSOCK`` sockets (not confined by the network
  namespace: they reach the hypervisor);
* where the jail shares the host user's uid (retool not running as root): ``inotify`` instances,
  which count against that user's quota.

A syscall made through another ABI (32-bit ``int 0x80``, x32) kills the process: libseccomp's
filter only admits the native architecture. The filter is built once per process and handed to
bubblewrap as a compiled BPF program (``--seccomp FD``), which installs it (with ``no_new_privs``)
right before it executes the jail's first program.

Not here: deciding *whether* to filter. The jail always does, and fails to start, with the fix,
where libseccomp is missing.
"""

from __future__ import annotations

import errno
import functools
import tempfile

from retool.sandbox.base import SandboxUnavailable

CLONE_NAMESPACE_FLAGS = 0x7E020000  # NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET
AF_VSOCK = 40

DENIED = (
    # other processes
    "ptrace", "process_vm_readv", "process_vm_writev", "process_madvise", "kcmp", "pidfd_getfd",
    "move_pages", "migrate_pages",
    # namespaces
    "unshare", "setns",
    # mounts and roots
    "mount", "umount2", "pivot_root", "chroot", "fsopen", "fsconfig", "fsmount", "fspick", "move_mount",
    "open_tree", "mount_setattr",
    # kernel-wide state
    "keyctl", "add_key", "request_key", "bpf", "perf_event_open", "userfaultfd", "init_module",
    "finit_module", "delete_module", "create_module", "query_module", "get_kernel_syms", "kexec_load",
    "kexec_file_load", "reboot", "swapon", "swapoff", "acct", "quotactl", "quotactl_fd", "syslog",
    "lookup_dcookie", "nfsservctl", "iopl", "ioperm", "uselib", "_sysctl", "ustat", "sysfs", "vhangup",
    "settimeofday", "clock_settime", "clock_adjtime", "adjtimex",
    # ways around the other rules
    "open_by_handle_at", "name_to_handle_at", "io_uring_setup", "io_uring_enter", "io_uring_register",
    "fanotify_init",
)
DENIED_WHEN_UID_SHARED = ("inotify_init", "inotify_init1")


def _library():
    try:
        import pyseccomp
    except ImportError as exc:  # no package, or no libseccomp.so for it to load
        raise SandboxUnavailable(
            f"the jail's seccomp filter needs libseccomp ({exc}); install it with "
            "`sudo apt-get install -y libseccomp2` and `pip install pyseccomp`"
        ) from None
    return pyseccomp


@functools.lru_cache(maxsize=2)
def filter_program(uid_shared: bool) -> bytes:
    """The compiled BPF program (``struct sock_filter`` array) that bubblewrap loads."""
    sc = _library()
    rules = sc.SyscallFilter(sc.ALLOW)
    rules.set_attr(sc.Attr.ACT_BADARCH, sc.KILL_PROCESS)  # a call through another ABI ends the process
    native = sc.system_arch()
    for name in DENIED + (DENIED_WHEN_UID_SHARED if uid_shared else ()):
        if sc.resolve_syscall(native, name) < 0:  # not a call on this architecture
            continue
        rules.add_rule(sc.ERRNO(errno.EPERM), name)
    rules.add_rule(sc.ERRNO(errno.ENOSYS), "clone3")
    for flag in _single_bits(CLONE_NAMESPACE_FLAGS):
        rules.add_rule(sc.ERRNO(errno.EPERM), "clone", sc.Arg(0, sc.MASKED_EQ, flag, flag))
    for call in ("socket", "socketpair"):
        rules.add_rule(sc.ERRNO(errno.EPERM), call, sc.Arg(0, sc.EQ, AF_VSOCK))
    with tempfile.TemporaryFile() as out:
        rules.export_bpf(out)
        out.seek(0)
        return out.read()


def _single_bits(mask: int) -> list[int]:
    return [1 << i for i in range(mask.bit_length()) if mask >> i & 1]


def seccomp_unavailable() -> str | None:
    """Why the filter cannot be built here, or None when it can."""
    try:
        filter_program(False)
    except SandboxUnavailable as exc:
        return str(exc)
    return None
