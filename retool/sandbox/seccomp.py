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
  requests bypass seccomp), ``fanotify``;
* sockets of any family but Unix, IPv4, IPv6 and netlink (``AF_VSOCK`` above all: it is not
  confined by the network namespace and reaches the hypervisor; ``AF_ALG``, ``AF_PACKET``, …);
* lowering its own CPU-time limit (``setrlimit``/``prlimit64`` of ``RLIMIT_CPU``): the kernel would
  then SIGKILL the jail's pid 1 itself, and that death must mean "killed from outside";
* where the jail shares a host user's uid (retool not running as root, or a container's uid 1000):
  ``inotify`` instances, which count against that user's quota.

An argument the kernel reads as an ``int`` (a socket family, a resource number) is compared on its
low 32 bits only: a caller can set the upper half of the register, which the kernel ignores.

A syscall made through another ABI (32-bit ``int 0x80``, x32) kills the process: libseccomp's
filter only admits the native architecture. The rules (``rules``) are written once and given out
two ways: compiled to BPF for bubblewrap (``filter_program``; ``--seccomp FD``, installed with
``no_new_privs`` right before the jail's first program; the RLIMIT_CPU rules, ``late_rules``, are
stacked on it by ``retool_boot.py`` once ``prlimit`` has set the limits), and as a Docker seccomp
profile (``docker_profile``) for the container backend.

Not here: deciding *whether* to filter. The jail always does, and fails to start, with the fix,
where libseccomp is missing.
"""

from __future__ import annotations

import errno
import functools
import json
import tempfile
from dataclasses import dataclass

from retool.sandbox.base import SandboxUnavailable

CLONE_NAMESPACE_FLAGS = 0x7E020000  # NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET
SOCKET_FAMILIES = {1: "AF_UNIX", 2: "AF_INET", 10: "AF_INET6", 16: "AF_NETLINK"}  # all others refused
FAMILY_RANGE = 64  # Linux has fewer families (AF_MAX is 46); a larger number is refused by the kernel
RLIMIT_CPU = 0
LOW32 = 0xFFFFFFFF

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


@dataclass(frozen=True)
class Rule:
    """Refuse ``call`` with ``errno`` when every condition ``(arg index, op, value, mask)`` holds:
    ``eq``: arg == value; ``masked_eq``: arg & mask == value; ``ne``: arg != value."""

    call: str
    errno: int = errno.EPERM
    conditions: tuple[tuple[int, str, int, int], ...] = ()


def rules(uid_shared: bool) -> list[Rule]:
    """The whole filter, as data (see the module docstring for why each rule is there)."""
    out = [Rule(name) for name in DENIED + (DENIED_WHEN_UID_SHARED if uid_shared else ())]
    out.append(Rule("clone3", errno.ENOSYS))  # glibc falls back to clone, whose flags are readable
    out += [Rule("clone", conditions=((0, "masked_eq", flag, flag),)) for flag in _single_bits(CLONE_NAMESPACE_FLAGS)]
    for call in ("socket", "socketpair"):
        out += [Rule(call, conditions=((0, "masked_eq", family, LOW32),))
                for family in range(FAMILY_RANGE) if family not in SOCKET_FAMILIES]
    return out


def late_rules() -> list[Rule]:
    """Rules that must wait until the jail's own limits are set (``prlimit`` sets RLIMIT_CPU under the
    first filter): ``retool_boot.py`` loads them, before any model-written code runs."""
    return [Rule("setrlimit", conditions=((0, "masked_eq", RLIMIT_CPU, LOW32),)),
            # prlimit64(pid, RLIMIT_CPU, new, old): refused when it sets a limit; reading one stays allowed
            Rule("prlimit64", conditions=((1, "masked_eq", RLIMIT_CPU, LOW32), (2, "ne", 0, 0)))]


@functools.lru_cache(maxsize=2)
def filter_program(uid_shared: bool) -> bytes:
    """The compiled BPF program (``struct sock_filter`` array) that bubblewrap loads."""
    return _compile(rules(uid_shared))


@functools.lru_cache(maxsize=1)
def late_filter_program() -> bytes:
    """The compiled ``late_rules``, which ``retool_boot.py`` stacks on the first filter."""
    return _compile(late_rules())


def _compile(rule_list: list[Rule]) -> bytes:
    sc = _library()
    ops = {"eq": sc.EQ, "masked_eq": sc.MASKED_EQ, "ne": sc.NE}
    program = sc.SyscallFilter(sc.ALLOW)
    program.set_attr(sc.Attr.ACT_BADARCH, sc.KILL_PROCESS)  # a call through another ABI ends the process
    native = sc.system_arch()
    for rule in rule_list:
        if sc.resolve_syscall(native, rule.call) < 0:  # not a call on this architecture
            continue
        args = []
        for index, op, value, mask in rule.conditions:
            # libseccomp's masked compare takes (mask, value); plain compares take the value alone
            args.append(sc.Arg(index, ops[op], mask, value) if op == "masked_eq" else sc.Arg(index, ops[op], value))
        program.add_rule(sc.ERRNO(rule.errno), rule.call, *args)
    with tempfile.TemporaryFile() as out:
        program.export_bpf(out)
        out.seek(0)
        return out.read()


@functools.lru_cache(maxsize=2)
def docker_profile(uid_shared: bool = True) -> str:
    """The same rules as a Docker seccomp profile (JSON), for ``--security-opt seccomp=``."""
    ops = {"eq": "SCMP_CMP_EQ", "masked_eq": "SCMP_CMP_MASKED_EQ", "ne": "SCMP_CMP_NE"}
    syscalls = []
    for rule in rules(uid_shared) + late_rules():  # Docker sets the container's limits before its filter
        entry = {"names": [rule.call], "action": "SCMP_ACT_ERRNO", "errnoRet": rule.errno}
        if rule.conditions:
            entry["args"] = [{"index": index, "value": mask if op == "masked_eq" else value,
                              "valueTwo": value if op == "masked_eq" else 0, "op": ops[op]}
                             for index, op, value, mask in rule.conditions]
        syscalls.append(entry)
    # no "architectures": the engine's native ABI only (it may be another machine's), so a call
    # through another ABI is refused there too
    return json.dumps({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": syscalls})


def _single_bits(mask: int) -> list[int]:
    return [1 << i for i in range(mask.bit_length()) if mask >> i & 1]


def seccomp_unavailable() -> str | None:
    """Why the filter cannot be built here, or None when it can."""
    try:
        filter_program(False)
    except SandboxUnavailable as exc:
        return str(exc)
    return None
