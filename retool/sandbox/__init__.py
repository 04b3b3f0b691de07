"""Sandboxed, stateful Python sessions for model-written code.

Backends (each in its own module, imported only when asked for):

* ``jupyter``    — an ipykernel over IPC, launched under bubblewrap + prlimit (+ cgroups where writable)
* ``docker``     — a container per session from the image in the top-level ``sandbox/`` folder
* ``subprocess`` — a fresh ``python -c`` per call under bubblewrap + prlimit; stateless, cheapest
* ``remote``     — a session on a ``retool sandbox serve`` service on another host (``urls``: many)
* ``ray``        — a session on a Ray actor, one per node of a Ray cluster (``retool[ray]``)

``create_session(backend)`` makes one session; ``SandboxPool`` keeps N of them warm.
"""

from __future__ import annotations

import importlib
from typing import Any

from retool.sandbox.base import (
    ExecResult,
    ExecStatus,
    SandboxLimits,
    SandboxUnavailable,
    Session,
)

BACKENDS: dict[str, str] = {
    "jupyter": "retool.sandbox.jupyter:JupyterSession",
    "docker": "retool.sandbox.docker:DockerSession",
    "subprocess": "retool.sandbox.subprocess:SubprocessSession",
    "remote": "retool.sandbox.remote:RemoteSession",
    "ray": "retool.sandbox.ray_backend:RaySession",
}


def session_class(backend: str) -> type[Session]:
    """The ``Session`` subclass for a backend name, with a clear error for an unknown one."""
    try:
        target = BACKENDS[backend]
    except KeyError:
        raise ValueError(f"unknown sandbox backend {backend!r}; choose one of {', '.join(BACKENDS)}") from None
    module_name, class_name = target.split(":")
    return getattr(importlib.import_module(module_name), class_name)


def create_session(backend: str = "jupyter", limits: SandboxLimits | None = None, **options: Any) -> Session:
    """Start one session of ``backend``. Raises ``SandboxUnavailable`` when it cannot start here."""
    return session_class(backend)(limits=limits, **options)


def __getattr__(name: str) -> Any:  # keep `import retool.sandbox` cheap: the pool loads on first use
    if name == "SandboxPool":
        from retool.sandbox.pool import SandboxPool

        return SandboxPool
    raise AttributeError(name)


__all__ = [
    "BACKENDS",
    "ExecResult",
    "ExecStatus",
    "SandboxLimits",
    "SandboxUnavailable",
    "SandboxPool",
    "Session",
    "create_session",
    "session_class",
]
