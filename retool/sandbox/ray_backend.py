"""The ``ray`` backend: sandbox hosts as Ray actors, one per node, sessions kept on their actor.

``--sandbox ray`` (``retool[ray]``) joins the Ray cluster at ``--sandbox-url`` (default ``auto``: the
cluster this machine is part of; ``local`` starts one here) and starts one ``SandboxHostActor`` on every
alive node — or, with ``--ray-label NAME``, on the nodes that offer the custom resource ``NAME``
(``ray start --resources '{"NAME": 1}'``: the CPU hosts, not the GPU ones). Each actor keeps a local
jailed pool (the ``jupyter`` backend) on its node; a session is opened on the actor with the most
room and stays there, its cells running in the actor's threads.

A node that dies takes its actor along: the next call of each of its sessions comes back as
``infra_error`` (never scored or trained on), the actor is left out of placement, and new sessions
go to the others. Ray places, the actor runs cells, nothing else is distributed by hand.

Not here: the HTTP service (``service.py``) and its client (``remote.py``).
"""

from __future__ import annotations

import logging
import threading
import uuid
from dataclasses import asdict, dataclass
from typing import Any

from retool.sandbox.base import ExecResult, SandboxLimits, SandboxUnavailable, Session
from retool.sandbox.remote import RUN_SLACK_S, RemoteHostError

log = logging.getLogger(__name__)

SESSIONS_PER_HOST = 32  # each actor's pool size


def _ray():
    try:
        import ray
    except ImportError:
        raise SandboxUnavailable("the ray backend needs Ray: pip install 'retool[ray]'") from None
    return ray


class SandboxHostActor:
    """Runs on one node: a local pool, the sessions opened on it. Threaded (``max_concurrency``),
    so one node's sessions run their cells at once."""

    def __init__(self, limits: dict[str, Any], size: int) -> None:
        import socket

        from retool.sandbox.pool import SandboxPool

        self.pool = SandboxPool("jupyter", size=size, limits=SandboxLimits(**limits), warm=min(size, 2))
        self.size, self.sessions, self.hostname = size, {}, socket.gethostname()
        self.starting = 0
        self._lock = threading.Lock()

    def open(self) -> dict[str, Any]:
        with self._lock:  # the slot is reserved before the (slow) start, so the count never overshoots
            if len(self.sessions) + self.starting >= self.size:
                return {"full": True}
            self.starting += 1
        try:
            session = self.pool.acquire(timeout=120)
        except Exception as exc:  # noqa: BLE001 - told to the driver as a refusal, not as a dead node
            return {"unavailable": f"{type(exc).__name__}: {exc}".splitlines()[0]}
        finally:
            with self._lock:
                self.starting -= 1
        sid = uuid.uuid4().hex
        with self._lock:
            self.sessions[sid] = session
        return {"id": sid, "stateful": session.stateful}

    def run(self, sid: str, code: str, timeout: float) -> dict[str, Any] | None:
        session = self.sessions.get(sid)
        return None if session is None else session.run(code, timeout).to_dict()

    def interrupt(self, sid: str) -> None:
        if (session := self.sessions.get(sid)) is not None:
            session.interrupt()

    def close(self, sid: str) -> None:
        with self._lock:
            session = self.sessions.pop(sid, None)
        if session is not None:
            self.pool.release(session)

    def load(self) -> dict[str, Any]:
        import ray

        return {"in_use": len(self.sessions), "capacity": self.size, "node": ray.get_runtime_context().get_node_id(),
                "hostname": self.hostname}


@dataclass
class _Actor:
    node: str
    handle: Any
    capacity: int
    sessions: int = 0
    dead: bool = False


class RayHosts:
    """The driver's view: one actor per node, and how many sessions each holds."""

    def __init__(self, address: str, label: str, limits: SandboxLimits) -> None:
        ray = _ray()
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        self.address, self.label, self.actors = address or "auto", label, []
        self._lock = threading.Lock()
        if not ray.is_initialized():
            try:
                ray.init(address=None if self.address == "local" else self.address, ignore_reinit_error=True,
                         log_to_driver=False, include_dashboard=False)
            except ConnectionError as exc:
                raise SandboxUnavailable(f"no Ray cluster at {self.address!r}: {exc}") from None
        nodes = [n for n in ray.nodes() if n.get("Alive") and (not label or n.get("Resources", {}).get(label))]
        if not nodes:
            where = f" with resource {label!r}" if label else ""
            raise SandboxUnavailable(f"the Ray cluster has no alive node{where}")
        remote_class = ray.remote(max_concurrency=SESSIONS_PER_HOST + 8, num_cpus=0)(SandboxHostActor)
        for node in nodes:
            node_id = node["NodeID"]
            options: dict[str, Any] = {"scheduling_strategy": NodeAffinitySchedulingStrategy(node_id, soft=False)}
            if label:
                options["resources"] = {label: 0.001}
            handle = remote_class.options(**options).remote(asdict(limits), SESSIONS_PER_HOST)
            self.actors.append(_Actor(node_id, handle, SESSIONS_PER_HOST))

    def open(self) -> tuple[_Actor, dict[str, Any]]:
        ray = _ray()
        reasons = []
        with self._lock:
            ranked = sorted((a for a in self.actors if not a.dead and a.sessions < a.capacity),
                            key=lambda a: a.sessions / a.capacity)
        for actor in ranked:
            try:
                info = ray.get(actor.handle.open.remote(), timeout=180)
            except Exception as exc:  # noqa: BLE001 - gone (marked dead), or slow this once: not this one now
                if actor_died(exc):
                    self.mark_dead(actor, exc)
                reasons.append(f"node {actor.node[:12]}: {type(exc).__name__}")
                continue
            if info.get("full") or info.get("unavailable"):
                reasons.append(f"node {actor.node[:12]}: {info.get('unavailable') or 'full'}")
                continue
            with self._lock:
                actor.sessions += 1
            return actor, info
        raise SandboxUnavailable(f"no Ray sandbox host could open a session ({'; '.join(reasons) or 'all are full'})")

    def mark_dead(self, actor: _Actor, why: BaseException) -> None:
        """The actor (or its node) died: no new sessions there, and whatever is left of it is killed."""
        if not actor.dead:
            actor.dead = True
            log.warning("sandbox actor on node %s is gone (%s); new sessions go elsewhere", actor.node[:12],
                        type(why).__name__)
            try:
                _ray().kill(actor.handle)
            except Exception:  # noqa: BLE001 - already gone with its node
                pass

    def closed(self, actor: _Actor) -> None:
        with self._lock:
            actor.sessions = max(0, actor.sessions - 1)


_SHARED: dict[tuple[str, str, SandboxLimits], RayHosts] = {}
_SHARED_LOCK = threading.Lock()


def hosts_for(address: str, label: str, limits: SandboxLimits) -> RayHosts:
    """The one ``RayHosts`` of this process for a cluster, label and limits (its actors are started once)."""
    key = (address or "auto", label, limits)
    with _SHARED_LOCK:
        if key not in _SHARED:
            _SHARED[key] = RayHosts(*key)
        return _SHARED[key]


def actor_died(exc: BaseException) -> bool:
    """Whether ``exc`` says the actor or its node is gone (not a slow call, not a refusal)."""
    ray = _ray()
    return isinstance(exc, (ray.exceptions.RayActorError, ray.exceptions.NodeDiedError))


class RaySession(Session):
    """A session kept by a ``SandboxHostActor`` on some node of the cluster."""

    backend = "ray"

    def __init__(self, limits: SandboxLimits | None = None, urls: str = "", label: str = "") -> None:
        super().__init__(limits)
        self.hosts = hosts_for(urls, label, self.limits)
        self.actor, info = self.hosts.open()
        self.id, self.stateful = info["id"], bool(info.get("stateful", True))
        self._alive, self._closed = True, False

    @property
    def host(self) -> str:
        return self.actor.node

    def _run(self, code: str, timeout: float) -> ExecResult:
        ray = _ray()
        if not self._alive:
            raise RemoteHostError(f"the session on node {self.actor.node[:12]} was lost earlier")
        try:
            reply = ray.get(self.actor.handle.run.remote(self.id, code, timeout),
                            timeout=timeout + self.limits.interrupt_grace_s + RUN_SLACK_S)
        except Exception as exc:  # noqa: BLE001 - RayActorError, NodeDiedError, GetTimeoutError: the host, not the code
            self._alive = False
            if actor_died(exc):
                self.hosts.mark_dead(self.actor, exc)
            raise RemoteHostError(f"sandbox node {self.actor.node[:12]} failed: {type(exc).__name__}") from None
        if reply is None:
            self._alive = False
            raise RemoteHostError(f"the session is gone on node {self.actor.node[:12]}")
        return ExecResult.from_dict(reply)

    def interrupt(self) -> None:
        super().interrupt()
        if self._alive:
            try:
                self.actor.handle.interrupt.remote(self.id)
            except Exception:  # noqa: BLE001 - a dead actor fails the cell anyway
                pass

    def restart(self) -> None:
        """A fresh interpreter on the same actor (the session does not move)."""
        ray = _ray()
        self.close()
        if self.actor.dead:
            raise RemoteHostError(f"node {self.actor.node[:12]} is gone")
        info = ray.get(self.actor.handle.open.remote(), timeout=180)
        if info.get("full") or info.get("unavailable"):
            raise RemoteHostError(f"node {self.actor.node[:12]} has no fresh interpreter: "
                                  f"{info.get('unavailable') or 'full'}")
        with self.hosts._lock:
            self.actor.sessions += 1
        self.id, self._alive, self._closed = info["id"], True, False

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.hosts.closed(self.actor)
        if self._alive and not self.actor.dead:
            try:
                self.actor.handle.close.remote(self.id)
            except Exception:  # noqa: BLE001 - best effort: a dead actor took its sessions along
                pass
        self._alive = False

    @property
    def alive(self) -> bool:
        return self._alive and not self._closed and not self.actor.dead
