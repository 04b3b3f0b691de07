"""The byte relay between the host's ZeroMQ client and a kernel: bytes pass both ways, the
kernel's side stops at its budget until the next cell, and only this process may connect."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from retool.sandbox.relay import ByteRelay


@pytest.fixture
def kernel(tmp_path):
    """A stand-in kernel socket: echoes what it gets, and sends 3000 bytes for ``blast``."""
    path = str(tmp_path / "kernel.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(4)

    def serve():
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn, contextlib.suppress(OSError):  # the relay hung up
                while data := conn.recv(65536):
                    conn.sendall(b"x" * 3000 if data == b"blast" else data)

    threading.Thread(target=serve, daemon=True).start()
    yield path
    server.close()


def _connect(relay: ByteRelay) -> socket.socket:
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.connect(relay.url("shell").removeprefix("ipc://"))
    client.settimeout(0.5)
    return client


def _read_all(client: socket.socket) -> bytes:
    got = b""
    try:
        while chunk := client.recv(65536):
            got += chunk
    except TimeoutError:
        pass
    return got


def test_bytes_pass_both_ways_and_the_kernel_side_stops_at_its_budget(tmp_path, kernel):
    relay = ByteRelay(tmp_path, {"shell": kernel}, {"shell": 1200})
    try:
        client = _connect(relay)
        client.sendall(b"hello")
        assert client.recv(100) == b"hello"
        client.sendall(b"blast")
        assert len(_read_all(client)) == 1200 - 5  # the echo counted too
        assert relay.exhausted == {"shell"}
        relay.open()  # the next cell: a fresh budget, and what waited comes through, up to it
        assert len(_read_all(client)) == 1200
        relay.open()
        assert len(_read_all(client)) == 5 + 3000 - 2 * 1200
        assert relay.exhausted == set()
    finally:
        relay.close()


def test_only_this_process_may_connect(tmp_path, kernel):
    relay = ByteRelay(tmp_path, {"shell": kernel}, {"shell": 1 << 20})
    try:
        path = relay.url("shell").removeprefix("ipc://").replace("/proc/self/", f"/proc/{os.getpid()}/")
        probe = ("import socket, sys\n"  # the relay may hang up before the send: that is a refusal too
                 "s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); s.settimeout(2)\n"
                 "try:\n    s.sendall(b'hello'); print(repr(s.recv(100)))\nexcept OSError as e:\n    print('closed', e)\n")
        out = subprocess.run([sys.executable, "-c", probe, path], capture_output=True, text=True, timeout=10).stdout
        assert "hello" not in out and ("b''" in out or "closed" in out), out  # it reached the relay, got nothing
        client = _connect(relay)  # this process still gets through
        client.sendall(b"hello")
        assert client.recv(100) == b"hello"
    finally:
        relay.close()


def test_a_side_that_goes_away_takes_the_pair_with_it_and_a_new_client_gets_through(tmp_path, kernel):
    relay = ByteRelay(tmp_path, {"shell": kernel}, {"shell": 1 << 20})
    try:
        _connect(relay).close()
        time.sleep(0.1)
        client = _connect(relay)
        client.sendall(b"again")
        assert client.recv(100) == b"again"
    finally:
        relay.close()
