"""A byte-counting relay between the host's ZeroMQ client and a jailed kernel's sockets.

Why: everything the kernel sends is the cell's to forge, and libzmq bounds neither the size of a
message (``ZMQ_MAXMSGSIZE`` is per frame, and a message may have a thousand frames) nor the bytes
that wait on a channel the host is not reading. So the host's client does not connect to the kernel:
it connects to listening sockets of a ``ByteRelay``, which moves the bytes of each connection pair
and counts what comes from the kernel. From one ``open`` (a cell starts) to the next, each channel
may bring at most its budget of bytes; past it the relay stops reading that channel and records it
in ``exhausted``, and what the kernel sends waits in the kernel's own queues, in the jail's memory
(its PUB socket drops it at its limit). The host so holds, and parses, at most the budgets of one
cell, however the kernel frames its messages and whenever it sends them.

All relays of a process share one thread (``_Hub``): a pool of sixteen sessions costs one more
thread, not sixteen, and one wake-up serves every channel that is ready.

It knows nothing of ZeroMQ framing or of Jupyter messages: it moves bytes, with back-pressure (a
side that does not read stops the other side being read). Only connections from this very process
are accepted (``SO_PEERCRED``); the listening sockets live in the jail's host-side runtime directory,
which the jail cannot see.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import selectors
import socket
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

CHUNK = 256 * 1024  # the most either direction of a pair holds in the relay at once
READ, WRITE = selectors.EVENT_READ, selectors.EVENT_WRITE


@dataclass(eq=False)
class _Pair:
    relay: "ByteRelay"
    channel: str
    host: socket.socket
    kernel: socket.socket
    to_kernel: bytearray = field(default_factory=bytearray)
    to_host: bytearray = field(default_factory=bytearray)


class _Hub:
    """The one thread that serves every relay of this process; all socket work happens on it."""

    def __init__(self) -> None:
        self._selector = selectors.DefaultSelector()
        self._calls: collections.deque[Callable[[], None]] = collections.deque()
        self._masks: dict[socket.socket, int] = {}
        self.dirty: set[_Pair] = set()  # pairs whose interest may have changed
        self._wake_read, self._wake_write = socket.socketpair()
        self._wake_read.setblocking(False)
        self.want(self._wake_read, READ, None)
        threading.Thread(target=self._loop, daemon=True, name="retool-relay").start()

    def call(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the hub's thread, soon."""
        self._calls.append(fn)
        with contextlib.suppress(OSError):
            self._wake_write.send(b"\0")

    def want(self, sock: socket.socket, mask: int, data: object) -> None:
        old = self._masks.get(sock, 0)
        if mask == old:
            return
        if not old:
            self._selector.register(sock, mask, data)
        elif not mask:
            self._selector.unregister(sock)
        else:
            self._selector.modify(sock, mask, data)
        self._masks[sock] = mask

    def forget(self, sock: socket.socket) -> None:
        self.want(sock, 0, None)
        self._masks.pop(sock, None)
        with contextlib.suppress(OSError):
            sock.close()

    def _loop(self) -> None:
        while True:
            try:
                self._turn()
            except Exception:  # noqa: BLE001 - one relay's trouble must not stop every session's
                log.exception("sandbox relay: a step failed")

    def _turn(self) -> None:
        while self._calls:
            self._calls.popleft()()
        while self.dirty:
            pair = self.dirty.pop()
            pair.relay._update_interest(pair)
        for key, events in self._selector.select():
            if key.fileobj is self._wake_read:
                with contextlib.suppress(OSError):
                    self._wake_read.recv(4096)
            elif isinstance(key.data, _Pair):
                key.data.relay._serve(key.data, key.fileobj, events)
            else:
                key.data(key.fileobj)  # a listener's accept


_hub: _Hub | None = None
_hub_lock = threading.Lock()


def _the_hub() -> _Hub:
    global _hub
    with _hub_lock:
        if _hub is None:
            _hub = _Hub()
        return _hub


def _forget_hub_in_child() -> None:  # a forked child has no hub thread
    global _hub
    _hub = None


os.register_at_fork(after_in_child=_forget_hub_in_child)


class ByteRelay:
    """Relays each channel in ``targets`` (name → the path the kernel's socket is reached by)."""

    def __init__(self, directory: Path, targets: dict[str, str], budgets: dict[str, int]) -> None:
        self._hub = _the_hub()
        self._targets, self._budgets = dict(targets), dict(budgets)
        self._used = dict.fromkeys(targets, 0)
        self._exhausted: set[str] = set()
        self._lock = threading.Lock()
        self._dir_fd = os.open(directory, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        self._paths: dict[str, str] = {}
        self._listeners: dict[socket.socket, str] = {}
        self._pairs: dict[str, _Pair] = {}
        for channel in targets:
            # bound through the directory's descriptor: short, whatever the directory's own path is
            path = f"/proc/self/fd/{self._dir_fd}/relay-{channel}"
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            listener.bind(path)
            listener.listen(4)
            listener.setblocking(False)
            self._paths[channel] = path
            self._listeners[listener] = channel
        self._hub.call(lambda: [self._hub.want(s, READ, self._accept) for s in self._listeners])

    def url(self, channel: str) -> str:
        """Where the host's ZeroMQ socket for ``channel`` connects."""
        return f"ipc://{self._paths[channel]}"

    @property
    def exhausted(self) -> set[str]:
        """The channels that brought their whole budget since the last ``open``."""
        with self._lock:
            return set(self._exhausted)

    def open(self) -> None:
        """A cell starts: fresh budgets (what is left of the last ones bounds what may come between cells)."""
        with self._lock:
            self._used = dict.fromkeys(self._targets, 0)
            reopened, self._exhausted = self._exhausted, set()
        if reopened:
            self._hub.call(lambda: self._hub.dirty.update(self._pairs.values()))

    def close(self) -> None:
        """Close every socket of this relay (on the hub's thread; waits for it, briefly)."""
        done = threading.Event()

        def close_all() -> None:
            for sock in [*self._listeners, *(s for p in self._pairs.values() for s in (p.host, p.kernel))]:
                self._hub.forget(sock)
            self._pairs.clear()
            done.set()

        self._hub.call(close_all)
        done.wait(2)
        with contextlib.suppress(OSError):
            os.close(self._dir_fd)

    # -- on the hub's thread -----------------------------------------------------------------------

    def _update_interest(self, pair: _Pair) -> None:
        if self._pairs.get(pair.channel) is not pair:
            return
        with self._lock:
            readable = pair.channel not in self._exhausted and len(pair.to_host) < CHUNK
        self._hub.want(pair.host, (READ if len(pair.to_kernel) < CHUNK else 0) | (WRITE if pair.to_host else 0), pair)
        self._hub.want(pair.kernel, (READ if readable else 0) | (WRITE if pair.to_kernel else 0), pair)

    def _accept(self, listener: socket.socket) -> None:
        channel = self._listeners[listener]
        try:
            host, _ = listener.accept()
        except OSError:
            return
        pid = struct.unpack("3i", host.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[0]
        if pid != os.getpid():  # only this process's client may reach the kernel
            host.close()
            return
        kernel = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            kernel.connect(self._targets[channel])
        except OSError:  # the kernel is gone or not listening yet: the client will connect again
            kernel.close()
            host.close()
            return
        if channel in self._pairs:
            self._drop(self._pairs[channel])
        host.setblocking(False)
        kernel.setblocking(False)
        pair = self._pairs[channel] = _Pair(self, channel, host, kernel)
        self._hub.dirty.add(pair)

    def _serve(self, pair: _Pair, sock: socket.socket, events: int) -> None:
        if self._pairs.get(pair.channel) is not pair:
            return
        self._hub.dirty.add(pair)
        try:
            if events & READ:
                if sock is pair.host:
                    data = sock.recv(CHUNK - len(pair.to_kernel))
                    pair.to_kernel += data
                else:
                    data = sock.recv(self._allowance(pair))
                    self._charge(pair.channel, len(data))
                    pair.to_host += data
                if not data:
                    raise ConnectionResetError
            for buffer, target in ((pair.to_kernel, pair.kernel), (pair.to_host, pair.host)):
                if buffer:
                    del buffer[: target.send(buffer)]
        except BlockingIOError:
            pass
        except OSError:  # either side went away: both go, and the client connects again
            self._drop(pair)

    def _allowance(self, pair: _Pair) -> int:
        """How many bytes may be read from the kernel on ``pair`` now."""
        with self._lock:
            left = self._budgets[pair.channel] - self._used[pair.channel]
        return max(min(CHUNK - len(pair.to_host), left), 1)

    def _charge(self, channel: str, size: int) -> None:
        with self._lock:
            self._used[channel] += size
            if self._used[channel] >= self._budgets[channel]:
                self._exhausted.add(channel)

    def _drop(self, pair: _Pair) -> None:
        self._hub.forget(pair.host)
        self._hub.forget(pair.kernel)
        self._hub.dirty.discard(pair)
        if self._pairs.get(pair.channel) is pair:
            del self._pairs[pair.channel]
