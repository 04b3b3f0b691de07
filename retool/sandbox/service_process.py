"""``retool sandbox serve`` as a child process on a free loopback port: for the service benchmark
and the tests that need a host they can kill (SIGKILL to its process group, like a machine that
dies). Not a way to deploy the service: run ``retool sandbox serve`` (``docs/deployment.md``)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

from retool.sandbox.remote import TOKEN_ENV


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class ServiceProcess:
    def __init__(self, size: int = 4, warm: int = 2, backend: str = "jupyter", token: str | None = None,
                 extra: tuple[str, ...] = (), startup_timeout: float = 300.0) -> None:
        import httpx

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, **({TOKEN_ENV: token} if token else {})}
        self.log = tempfile.TemporaryFile()  # its log: a pipe nobody reads would stall it once full
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "retool.cli", "sandbox", "serve", "--port", str(self.port), "--size", str(size),
             "--warm", str(warm), "--sandbox", backend, *extra],
            env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + startup_timeout
        while True:
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                self.log.seek(0)
                raise RuntimeError(f"the sandbox service did not start: {self.log.read().decode()[-2000:]}")
            time.sleep(0.2)

    def pids(self) -> list[int]:
        """The service and every process under it (its interpreters)."""
        import psutil

        try:
            root = psutil.Process(self.proc.pid)
            return [root.pid] + [c.pid for c in root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def kill(self) -> None:
        """The service and everything it started, at once."""
        if self.proc.poll() is None:
            try:
                os.killpg(os.getpgid(self.proc.pid), signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()

    def __enter__(self) -> "ServiceProcess":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self.log.close()
