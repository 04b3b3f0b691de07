"""The ``remote`` backend: sessions on ``retool sandbox serve`` services, spread over many hosts.

``SandboxPool("remote", urls="http://a:8765,http://b:8765")`` (``--sandbox remote --sandbox-url ...``)
makes sessions as any backend does; each one is opened on the least-loaded live host and stays
there for its life (its interpreter's state lives there). The token is ``$RETOOL_SANDBOX_TOKEN``
(never a command-line argument: those show in ``ps``).

* **Placement**: a host's load is the share of its interpreters in use (its ``/health``, read at
  most once a second, plus what this process placed since); full hosts are skipped, a refused
  open (429, 503) tries the next host.
* **A host that dies** or stops answering: the next call of each of its sessions comes back as
  ``infra_error`` (``Session.run`` turns the client's error into one), so no score or loss is ever
  computed from it; the host is left out of placement for ``DOWN_S`` seconds and new sessions go
  to the others. No host at all: ``SandboxUnavailable``, with each host's reason.
* The cell's own outcome is the host's ``ExecResult``, field for field (``ExecResult.from_dict``).
* The client is urllib3 (keep-alive pools, a dropped idle connection detected before reuse, never
  a retry: a cell must not run twice): per cell it costs a third of what httpx did.

Not here: the service (``service.py``), Ray placement (``ray_backend.py``).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from retool.sandbox.base import ExecResult, SandboxLimits, SandboxUnavailable, Session

log = logging.getLogger(__name__)

TOKEN_ENV = "RETOOL_SANDBOX_TOKEN"  # the client's token and the service's (space-separated); never argv
HEALTH_TTL_S = 1.0
DOWN_S = 30.0  # a host that failed is not offered new sessions for this long
CONNECT_TIMEOUT_S = 5.0
RUN_SLACK_S = 30.0  # beyond the cell timeout: the host's interrupt, restart and the network
FULL_WAIT_S = 60.0  # how long opening a session waits while every live host is full
OPEN_TIMEOUT_S = 150.0  # a service waits up to 120 s for an interpreter to start (acquire_timeout_s)


class RemoteHostError(RuntimeError):
    """A host did not answer, or answered that the session is gone: not the code's doing."""


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def message(self) -> str:
        """The service's error message, or the raw text, cut."""
        try:
            return str(self.json()["error"]["message"])
        except Exception:  # noqa: BLE001 - not our shape
            return self.body[:200].decode("utf-8", "replace")


class HostUnreachable(RuntimeError):
    """The request got no answer (refused, reset, timed out)."""


def parse_urls(urls: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    items = urls.split(",") if isinstance(urls, str) else list(urls)
    out = tuple(u.strip().rstrip("/") for u in items if u.strip())
    bad = [u for u in out if not u.startswith(("http://", "https://"))]
    if not out or bad:
        raise ValueError(f"--sandbox-url needs http(s) URLs of `retool sandbox serve` services, comma-separated; "
                         f"got {urls!r}")
    return out


@dataclass
class _Host:
    url: str
    reported_in_use: int = 0
    capacity: int = 1
    placed_since: int = 0  # sessions this process opened here since the last health report
    closed_since: int = 0  # ... and closed
    checked: float = 0.0
    down_until: float = 0.0
    reason: str = ""
    sessions: int = 0  # this process's sessions living here

    @property
    def load(self) -> float:
        return max(0, self.reported_in_use + self.placed_since - self.closed_since) / max(self.capacity, 1)


@dataclass
class RemoteHosts:
    """The services one process spreads its sessions over (shared by all of its remote sessions)."""

    urls: tuple[str, ...]
    token: str | None = None
    hosts: dict[str, _Host] = field(default_factory=dict)

    def __post_init__(self) -> None:
        import urllib3

        self.headers = {"Content-Type": "application/json"}
        if self.token:
            self.headers["Authorization"] = f"Bearer {self.token}"
        self.http = urllib3.PoolManager(maxsize=256, retries=False)
        self.hosts = {u: _Host(u) for u in self.urls}
        self._lock = threading.Lock()

    def request(self, method: str, url: str, timeout: float, payload: dict[str, Any] | None = None) -> Reply:
        """One request, never retried; ``HostUnreachable`` when no answer came."""
        import urllib3

        body = None if payload is None else json.dumps(payload).encode()
        try:
            reply = self.http.request(method, url, body=body, headers=self.headers, redirect=False,
                                      timeout=urllib3.Timeout(connect=CONNECT_TIMEOUT_S, read=timeout))
        except urllib3.exceptions.HTTPError as exc:
            raise HostUnreachable(f"{type(exc).__name__}: {exc}".splitlines()[0]) from None
        return Reply(reply.status, reply.data)

    def mark_down(self, url: str, reason: str) -> None:
        with self._lock:
            host = self.hosts[url]
            host.down_until, host.reason = time.monotonic() + DOWN_S, reason
        log.warning("sandbox host %s is down (%s); new sessions go elsewhere for %.0f s", url, reason, DOWN_S)

    def _refresh(self, host: _Host) -> None:
        now = time.monotonic()
        if now < host.down_until or now - host.checked < HEALTH_TTL_S:
            return
        try:
            reply = self.request("GET", f"{host.url}/health", CONNECT_TIMEOUT_S)
            if reply.status != 200:
                raise HostUnreachable(f"answered {reply.status}: {reply.message}")
            data = reply.json()
            with self._lock:
                host.reported_in_use, host.capacity = int(data["in_use"]), int(data["capacity"])
                host.placed_since, host.closed_since, host.checked, host.reason = 0, 0, now, ""
        except Exception as exc:  # noqa: BLE001 - any failure means: not this host, for now
            self.mark_down(host.url, f"health check failed: {type(exc).__name__}: {exc}".splitlines()[0])

    def ranked(self, only: str | None = None) -> list[_Host]:
        """Live hosts with room, least loaded first (``only``: that one host, if it is live)."""
        candidates = [self.hosts[only]] if only else list(self.hosts.values())
        for host in candidates:
            self._refresh(host)
        now = time.monotonic()
        live = [h for h in candidates if now >= h.down_until and h.load < 1.0]
        return sorted(live, key=lambda h: (h.load, h.sessions, h.url))

    def open(self, only: str | None = None, wait: float | None = None) -> tuple[str, dict[str, Any]]:
        """A new session on the least-loaded host (or on ``only``): (host url, the service's reply).
        While every live host is full, waits up to ``wait`` (``FULL_WAIT_S``) for room (sessions are
        released all the time); with no live host at all, fails at once."""
        deadline = time.monotonic() + (FULL_WAIT_S if wait is None else wait)
        while True:
            opened, reasons = self._try_open(only)
            if opened is not None:
                return opened
            live = [h for h in self.hosts.values() if time.monotonic() >= h.down_until and (only is None or h.url == only)]
            if not live or time.monotonic() > deadline:
                down = [f"{h.url}: down ({h.reason})" for h in self.hosts.values()
                        if h not in live and (only is None or h.url == only)]
                why = "; ".join(reasons + down) or "every host is full"
                raise SandboxUnavailable(f"no remote sandbox could be opened ({why})")
            time.sleep(0.1)

    def _try_open(self, only: str | None) -> tuple[tuple[str, dict[str, Any]] | None, list[str]]:
        reasons = []
        for host in self.ranked(only):
            try:
                reply = self.request("POST", f"{host.url}/v1/sessions", OPEN_TIMEOUT_S)
                info = reply.json() if reply.status == 200 else None
            except (HostUnreachable, ValueError) as exc:
                self.mark_down(host.url, f"{type(exc).__name__}: {exc}".splitlines()[0])
                reasons.append(f"{host.url}: {host.reason}")
                continue
            if info is not None:
                with self._lock:
                    host.placed_since += 1
                    host.sessions += 1
                return (host.url, info), reasons
            message = reply.message
            reasons.append(f"{host.url}: {reply.status} {message}")
            if reply.status == 401:
                raise SandboxUnavailable(f"{host.url} refused the token ({message}); set {TOKEN_ENV}")
            with self._lock:  # full or failing: skip it until its next health report
                host.checked, host.reported_in_use, host.placed_since, host.closed_since = (
                    time.monotonic(), host.capacity, 0, 0)
        return None, reasons

    def is_down(self, url: str) -> bool:
        return time.monotonic() < self.hosts[url].down_until

    def closed(self, url: str) -> None:
        with self._lock:
            host = self.hosts[url]
            host.sessions = max(0, host.sessions - 1)
            host.closed_since += 1


_SHARED: dict[tuple[tuple[str, ...], str | None], RemoteHosts] = {}
_SHARED_LOCK = threading.Lock()


def hosts_for(urls: str | tuple[str, ...], token: str | None = None) -> RemoteHosts:
    """The one ``RemoteHosts`` of this process for these URLs and token (placement sees every session)."""
    key = (parse_urls(urls), token if token is not None else (os.environ.get(TOKEN_ENV, "").split() or [None])[0])
    with _SHARED_LOCK:
        if key not in _SHARED:
            _SHARED[key] = RemoteHosts(*key)
        return _SHARED[key]


class RemoteSession(Session):
    """A session kept by a ``retool sandbox serve`` on another host."""

    backend = "remote"

    def __init__(self, limits: SandboxLimits | None = None, urls: str | tuple[str, ...] = "",
                 token: str | None = None) -> None:
        super().__init__(limits)
        self.hosts = hosts_for(urls, token)
        self.url, info = self.hosts.open()
        self._take(info)
        self._closed = False

    def _take(self, info: dict[str, Any]) -> None:
        self.id, self.stateful = str(info["id"]), bool(info.get("stateful", True))
        self._alive = True

    @property
    def host(self) -> str:
        return self.url

    def _run(self, code: str, timeout: float) -> ExecResult:
        if not self._alive:
            raise RemoteHostError(f"the session on {self.url} was lost earlier")
        try:
            reply = self.hosts.request("POST", f"{self.url}/v1/sessions/{self.id}/run",
                                       timeout + self.limits.interrupt_grace_s + RUN_SLACK_S,
                                       {"code": code, "timeout": timeout})
        except HostUnreachable as exc:
            self._alive = False
            self.hosts.mark_down(self.url, str(exc))
            raise RemoteHostError(f"sandbox host {self.url} did not answer: {str(exc).split(':')[0]}") from None
        if reply.status == 200:
            return ExecResult.from_dict(reply.json())
        if reply.status == 404:
            self._alive = False
            raise RemoteHostError(f"the session is gone on {self.url} (expired, or the service restarted)")
        raise RemoteHostError(f"sandbox host {self.url} answered {reply.status}: {reply.message}")

    def interrupt(self) -> None:
        super().interrupt()
        try:
            self.hosts.request("POST", f"{self.url}/v1/sessions/{self.id}/interrupt", CONNECT_TIMEOUT_S)
        except Exception:  # noqa: BLE001 - a host that cannot hear it will fail the cell anyway
            log.debug("interrupt of %s on %s not delivered", self.id, self.url)

    def restart(self) -> None:
        """A fresh interpreter on the same host (a session never moves: its files live there). If
        none can be had quickly, the session stays closed (not alive) and the pool replaces it."""
        self._release()
        url, info = self.hosts.open(only=self.url, wait=5.0)
        self.url, self._closed = url, False
        self._take(info)

    def _release(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.hosts.closed(self.url)
        if self._alive:
            try:
                self.hosts.request("DELETE", f"{self.url}/v1/sessions/{self.id}", CONNECT_TIMEOUT_S)
            except Exception:  # noqa: BLE001 - the host's idle expiry closes what we could not
                log.debug("could not close %s on %s", self.id, self.url)
        self._alive = False

    def close(self) -> None:
        self._release()

    @property
    def alive(self) -> bool:
        """False once this session failed, or once its host was found down by any session: a pool
        then retires it instead of handing a trajectory a session whose first cell would fail."""
        return self._alive and not self._closed and not self.hosts.is_down(self.url)
