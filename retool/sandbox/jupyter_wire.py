"""The host's side of the Jupyter wire to a jailed kernel: a client pinned to the relay, with
bounded queues and message sizes, and readers that take nothing the kernel sends on trust.

Why apart from the session: these are the pieces that face forged input (the cell runs inside the
kernel and knows the signing key), each small enough to check on its own — a message that is not
shaped like one is dropped, a reply is matched by its parent id, a count is an int or zero.

Not here: when to interrupt, restart or give up (``jupyter.JupyterSession``), moving and counting
the bytes (``relay.ByteRelay``).
"""

from __future__ import annotations

import json
import os
import queue
import time
from dataclasses import dataclass
from typing import Any

import zmq
from jupyter_client.blocking import BlockingKernelClient
from jupyter_client.connect import channel_socket_types

from retool.sandbox.base import CappedText, SandboxLimits, Stopwatch
from retool.sandbox.isolation import IPC_DIR
from retool.sandbox.jail import Jail
from retool.sandbox.relay import ByteRelay

CHANNELS = {"shell": 1, "iopub": 2, "stdin": 3, "control": 4, "hb": 5}
RELAYED = ("shell", "iopub", "control")  # the host never opens stdin (no input) or hb (it watches the process)
IOPUB_QUEUE = 16  # messages the host holds between reads (ZeroMQ's receive high-water mark)
DRAIN_S = 1.0  # the most a cell's start spends dropping what an earlier one left on IOPub
KERNEL_ARGS = [
    "--HistoryManager.enabled=False",  # no sqlite history file, faster start
    "--IPKernelApp.quiet=True",
    "--InteractiveShell.colors=nocolor",
    "--Application.log_level=WARN",
    "--Session.packer=retool_boot.pack",  # ASCII JSON, size-capped (see jail_boot)
]
REAP_CHILDREN = """
import os as _os
try:
    while _os.waitpid(-1, _os.WNOHANG)[0]:
        pass
except ChildProcessError:
    pass
del _os
"""
MARK_THREADS = "__import__('retool_boot').mark_threads()"  # no name is bound in the user's namespace
STOP_THREADS = "__import__('retool_boot').stop_threads()"


class PinnedClient(BlockingKernelClient):
    """A kernel client whose channels connect to the relay (never to names the jail controls), with
    bounded receive queues and message sizes. Messages are read from the channels themselves
    (``iopub_channel.get_msg``: a plain ZeroMQ poll), not through the client's ``get_*_msg``, which
    spin up an asyncio loop for every message."""

    def setup(self, relay: ByteRelay, max_message_bytes: int) -> None:
        self._relay, self._max_message_bytes = relay, max_message_bytes

    def _make_url(self, channel: str) -> str:
        return self._relay.url(channel)

    def stop_channels(self) -> None:
        """Only the relayed channels exist (the base class would make the others to stop them)."""
        for name in RELAYED:
            channel = getattr(self, f"_{name}_channel", None)
            if channel is not None and channel.is_alive():
                channel.stop()
        if self._created_context and not self.context.closed:
            self.context.destroy(linger=100)

    def _create_connected_socket(self, channel: str, identity: bytes | None = None) -> zmq.Socket:
        sock = self.context.socket(channel_socket_types[channel])
        sock.linger = 0
        sock.rcvhwm = IOPUB_QUEUE if channel == "iopub" else 4
        sock.setsockopt(zmq.MAXMSGSIZE, self._max_message_bytes)  # a bigger one drops the connection
        if identity:
            sock.identity = identity
        sock.connect(self._make_url(channel))
        return sock


def max_message_bytes(limits: SandboxLimits) -> int:
    """The largest message a channel takes (ZeroMQ drops the connection past it): the kernel's packer
    cuts strings to the output cap, and ASCII escapes take up to 6 bytes a character."""
    return 6 * limits.max_output_bytes + (256 << 10)


def wire_budgets(limits: SandboxLimits) -> dict[str, int]:
    """Bytes each channel may bring per cell: room for several of the largest messages (output
    past the cap is stopped anyway), never what a forged multi-frame message asks for."""
    cap = limits.max_output_bytes
    return {"iopub": (4 << 20) + 16 * cap, "shell": (1 << 20) + 4 * cap, "control": 256 << 10}


def open_kernel_sockets(jail: Jail, timeout: float) -> list[int]:
    """Wait for the kernel to bind its sockets, then hold a descriptor of each relayed one (see
    the module doc), in ``RELAYED`` order."""
    watch = Stopwatch()
    fds: list[int] = []
    while len(fds) < len(RELAYED):
        port = CHANNELS[RELAYED[len(fds)]]
        try:
            fds.append(jail.open_inside(f"{IPC_DIR}/kernel-{port}"))
            continue
        except FileNotFoundError:
            pass
        except OSError:
            for fd in fds:
                os.close(fd)
            raise
        if not jail.alive or watch.elapsed > timeout:
            for fd in fds:
                os.close(fd)
            return []
        time.sleep(0.01)
    return fds


def drain(client: PinnedClient, relay: ByteRelay) -> tuple[int, bool]:
    """Drop everything waiting on IOPub (and the control channel's replies). Returns the bytes
    of output text dropped, and whether it would not end (``DRAIN_S`` passed, or more came than
    a cell's budget): something in the kernel floods it."""
    dropped, watch = 0, Stopwatch()
    while watch.elapsed < DRAIN_S and "iopub" not in relay.exhausted:
        try:
            msg = client.iopub_channel.get_msg(timeout=0)
        except queue.Empty:
            break
        except Exception:  # noqa: BLE001 - a message the kernel garbled: dropped all the same
            continue
        parsed = fields(msg)
        if parsed is not None and parsed[1] == "stream":
            dropped += len(str(parsed[2].get("text", "")).encode("utf-8", "replace"))
    else:
        return dropped, True
    for _ in range(16):
        try:
            client.control_channel.get_msg(timeout=0)
        except queue.Empty:
            break
        except Exception:  # noqa: BLE001 - garbled: dropped
            continue
    return dropped, False


def silent(client: PinnedClient, code: str, expression: str | None = None, timeout: float = 2.0) -> str | None:
    """Run bookkeeping code in the kernel; returns ``expression``'s repr, read from the
    execute_reply on the shell channel (which no output of the cell's threads can pollute)."""
    msg_id = client.execute(code, silent=True, store_history=False,
                                  user_expressions={"r": expression} if expression else None)
    watch = Stopwatch()
    while watch.elapsed < timeout:
        try:
            msg = client.shell_channel.get_msg(timeout=max(watch.remaining(timeout), 0.001))
        except queue.Empty:
            return None
        except Exception:  # noqa: BLE001 - garbled: dropped
            continue
        if parent_id(msg) != msg_id:
            continue
        parsed = fields(msg)
        expressions = parsed[2].get("user_expressions") if parsed else None
        value = expressions.get("r") if isinstance(expressions, dict) else None
        data = value.get("data") if isinstance(value, dict) else None
        text = data.get("text/plain") if isinstance(data, dict) else None
        return text if isinstance(text, str) else None
    return None


def reply_arrived(client: PinnedClient, msg_id: str, wait: float = 0.0) -> bool:
    """Whether the shell channel has the execute_reply to ``msg_id`` (others are discarded),
    waiting up to ``wait`` seconds for the first message."""
    while True:
        try:
            msg = client.shell_channel.get_msg(timeout=wait)
            wait = 0.0
        except queue.Empty:
            return False
        except Exception:  # noqa: BLE001 - garbled: dropped
            continue
        if parent_id(msg) == msg_id:
            return True

def discard_reply(client: PinnedClient, msg_id: str, timeout: float = 1.0) -> None:
    """Consume the execute_reply so replies never pile up in the shell queue."""
    watch = Stopwatch()
    while watch.elapsed < timeout:
        try:
            msg = client.shell_channel.get_msg(timeout=watch.remaining(timeout))
        except queue.Empty:
            return
        except Exception:  # noqa: BLE001 - garbled: dropped
            continue
        if parent_id(msg) == msg_id:
            return


@dataclass
class CellOutput:
    """What one cell's IOPub messages said so far."""

    msg_id: str
    out: CappedText
    err: CappedText
    ename: str | None = None
    evalue: str | None = None
    published: bool = False  # any IOPub message for this cell at all

    def take(self, msg: Any) -> bool:
        """Record ``msg`` if it belongs to this cell; whether it was the cell's idle status."""
        parsed = fields(msg)
        if parsed is None or parsed[0] != self.msg_id:
            return False
        self.published = True
        _, kind, content = parsed
        if kind == "stream":
            target = self.out if content.get("name") == "stdout" else self.err
            target.write(str(content.get("text", "")))
            target.dropped += _int(content.get("retool_dropped"))
        elif kind in ("execute_result", "display_data"):
            data = content.get("data")
            text = data.get("text/plain") if isinstance(data, dict) else None
            if text is not None:
                self.out.write(str(text) + "\n")
                self.out.dropped += _int(content.get("retool_dropped"))
        elif kind == "error":
            self.ename, self.evalue = str(content.get("ename", "Error")), str(content.get("evalue", ""))
        return kind == "status" and content.get("execution_state") == "idle"


def counts(said: str | None) -> tuple[int, int]:
    """``(stopped, still running)`` from the kernel's repr of ``retool_boot.last_stop`` (a JSON
    pair); (0, 0) for anything else (the cell can replace what the kernel answers)."""
    try:
        pair = json.loads(said.strip("'\"")) if isinstance(said, str) and len(said) < 100 else None
    except ValueError:
        pair = None
    if not isinstance(pair, list) or len(pair) != 2:
        return 0, 0
    return _int(pair[0]), _int(pair[1])


def fields(msg: Any) -> tuple[str | None, str, dict] | None:
    """``(parent msg_id, msg_type, content)`` of a message, or None if it is not shaped like one."""
    if not isinstance(msg, dict):
        return None
    kind, content = msg.get("msg_type"), msg.get("content")
    if not isinstance(kind, str) or not isinstance(content, dict):
        return None
    return parent_id(msg), kind, content


def parent_id(msg: Any) -> str | None:
    parent = msg.get("parent_header") if isinstance(msg, dict) else None
    value = parent.get("msg_id") if isinstance(parent, dict) else None
    return value if isinstance(value, str) else None


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 1 << 62 else 0
