"""The first Python that runs in every local jail: it becomes the jail's pid 1 program.

This file is not imported by retool on the host. ``jail.Jail`` copies its text into the jail
(read-only, ``/run/retool/retool_boot.py``) and runs it; it must therefore use the standard library
only (ipykernel and jupyter_client are imported from the jail's interpreter when the mode needs them).

    python retool_boot.py WATCH_FD kernel IPYKERNEL_ARGS...   an IPython kernel
    python retool_boot.py WATCH_FD cell                       /run/retool/cell.py as one notebook cell

What it adds before any model-written code runs:

* **The last seccomp rules** (``seccomp.late_rules``: the CPU-time limit may not be changed) are
  loaded from ``/run/retool/late.bpf`` before anything else: they could not be in bubblewrap's filter,
  because ``prlimit`` sets that limit after it.
* **The jail ends with its host.** ``WATCH_FD`` is the read end of a pipe whose only writer is the
  host process; when the host dies, the read returns and this process, the jail's pid 1, exits,
  which ends every process in the jail (the parent-death signal of bubblewrap does not reach a
  program that runs as another uid than bubblewrap).
* **Messages a host can always read** (kernel mode: ``--Session.packer=retool_boot.pack``): JSON in
  pure ASCII, so a lone surrogate in printed text travels as an escape instead of killing the
  message, and strings longer than the cell's output cap (``RETOOL_MAX_OUTPUT``) cut to head and
  tail, with the number of characters cut in ``content["retool_dropped"]``, so that no single
  message needs to be larger than the host accepts.
* **Output that never breaks the program** (cell mode): stdout and stderr encode a lone surrogate
  as U+FFFD instead of raising.

The host treats everything this process says as untrusted: the cell can change any of it.
"""

import codecs
import json
import os
import sys
import threading

CONFIG_DIR = "/run/retool"
TRUNCATION_MARK = "\n…[{n} characters of output truncated]…\n"


def load_late_filter(path: str = f"{CONFIG_DIR}/late.bpf") -> None:
    """Stack the compiled BPF program at ``path`` on this process's seccomp filter (no_new_privs is
    already set); refuse to go on without it."""
    import ctypes

    program = open(path, "rb").read()

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_char_p)]

    fprog = SockFprog(len(program) // 8, program)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(22, 2, ctypes.byref(fprog), 0, 0) != 0:  # PR_SET_SECCOMP, SECCOMP_MODE_FILTER
        raise SystemExit(f"retool_boot: could not load the seccomp filter (errno {ctypes.get_errno()})")


def watch_host(fd: int) -> None:
    def wait() -> None:
        try:
            os.read(fd, 1)
        except OSError:
            pass
        os._exit(137)

    threading.Thread(target=wait, name="retool-host-watch", daemon=True).start()


_BASELINE: set = set()
last_stop = "[0, 0]"  # stop_threads' result as JSON: [stopped, still running]; read by the host


def mark_threads() -> None:
    """Remember the threads that are the kernel's own (called once, after start-up)."""
    _BASELINE.clear()
    _BASELINE.update(t.ident for t in threading.enumerate())


def stop_strays(known: set, wait_s: float = 0.2) -> tuple:
    """Raise SystemExit in every live thread not in ``known``; wait briefly for them; (stopped,
    still running). Threads blocked in C (a sleep, a lock) only see it when they return to Python;
    those that will not stop join ``known``, so they are reported once, not after every cell. The
    Docker runner (``sandbox/runner.py``) imports this too: the image carries this file."""
    import ctypes
    import time

    strays = [t for t in threading.enumerate() if t.ident not in known and t.is_alive()]
    for t in strays:
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(t.ident), ctypes.py_object(SystemExit))
    deadline = time.monotonic() + wait_s
    for t in strays:
        t.join(max(deadline - time.monotonic(), 0))
    running = [t for t in strays if t.is_alive()]
    known.update(t.ident for t in running)
    return len(strays) - len(running), len(running)


def stop_threads(wait_s: float = 0.2) -> None:
    """Stop the threads the cell started (see ``stop_strays``); the host reads ``last_stop``."""
    global last_stop
    last_stop = json.dumps(list(stop_strays(_BASELINE, wait_s)))


def _max_chars() -> int:
    try:
        return max(int(os.environ.get("RETOOL_MAX_OUTPUT", "131072")), 1024)
    except ValueError:
        return 131072


MAX_CHARS = _max_chars()


def _cut(value, limit: int, dropped: list):
    """``value`` with every string longer than ``limit`` cut to its head and tail."""
    if isinstance(value, str):
        if len(value) <= limit:
            return value
        head, tail = limit * 3 // 4, limit - limit * 3 // 4
        dropped[0] += len(value) - head - tail
        return value[:head] + TRUNCATION_MARK.format(n=f"{len(value) - head - tail:,}") + value[len(value) - tail:]
    if isinstance(value, dict):
        return {k: _cut(v, limit, dropped) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_cut(v, limit, dropped) for v in value]
    return value


def pack(obj) -> bytes:
    """jupyter_client's JSON packer, in ASCII and with a size cap (see the module docstring)."""
    try:
        text = _dumps(obj, default=_json_default, ensure_ascii=True, allow_nan=False)
    except (TypeError, ValueError):
        from jupyter_client.jsonutil import json_clean

        text = _dumps(json_clean(obj), default=_json_default, ensure_ascii=True, allow_nan=False)
    if len(text) <= 4 * MAX_CHARS:
        return text.encode("ascii")
    dropped = [0]
    cut = _cut(json.loads(text), MAX_CHARS, dropped)
    if isinstance(cut, dict) and dropped[0]:
        cut["retool_dropped"] = dropped[0]
    return _dumps(cut, ensure_ascii=True).encode("ascii")


def _json_default(obj):
    from jupyter_client.jsonutil import json_default

    global _json_default
    _json_default = json_default  # looked up once, on the first object JSON cannot write itself
    return json_default(obj)


_dumps = json.dumps


def _replace_surrogates(error: UnicodeError):
    """One U+FFFD per character that cannot be encoded (bytes: the UTF-8 encoder wants them so)."""
    return "\ufffd".encode("utf-8") * (error.end - error.start), error.end


def run_cell() -> None:
    """Run cell.py as one notebook cell: statements, then the last expression's repr."""
    import ast

    codecs.register_error("retool-replace", _replace_surrogates)
    for stream in (sys.stdout, sys.stderr):
        stream.reconfigure(errors="retool-replace")
    source = open(f"{CONFIG_DIR}/cell.py", encoding="utf-8").read()
    tree = ast.parse(source, "<cell>")
    last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
    namespace = {"__name__": "__main__", "__builtins__": __builtins__}
    exec(compile(tree, "<cell>", "exec"), namespace)
    if last is not None:
        value = eval(compile(ast.Expression(last.value), "<cell>", "eval"), namespace)
        if value is not None:
            print(repr(value))


def run_kernel(args: list) -> None:
    import runpy

    sys.argv = ["ipykernel_launcher", *args]
    runpy.run_module("ipykernel_launcher", run_name="__main__", alter_sys=True)


def main() -> None:
    load_late_filter()
    watch_host(int(sys.argv[1]))
    mode, args = sys.argv[2], sys.argv[3:]
    del sys.argv[1:]
    if mode == "kernel":
        run_kernel(args)
    elif mode == "cell":
        run_cell()
    else:
        raise SystemExit(f"retool_boot: unknown mode {mode!r}")


if __name__ == "__main__":
    main()
