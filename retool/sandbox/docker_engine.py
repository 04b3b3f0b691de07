"""The Docker engine behind the docker backend: reaching it, the image's identity, and the
containers a crashed host left behind.

Not here: a session's container and its wire (``docker.DockerSession``).
"""

from __future__ import annotations

import hashlib
import os
import socket
from pathlib import Path
from typing import Any

from retool.sandbox.base import SandboxUnavailable

LABEL = "retool.sandbox"
BUILD_HINT = ("build it with `sudo bash sandbox/build_offline_image.sh` (no registry needed) "
              "or, from the repository root, `docker build -f sandbox/Dockerfile -t retool-sandbox:latest .`")
ENGINE_HINT = "start the engine with `sudo dockerd &` (or point DOCKER_HOST at a reachable one)"


def connect(client: Any | None) -> Any:
    """A Docker client that answers a ping, or ``SandboxUnavailable`` saying how to get one."""
    try:
        import docker
    except ImportError:
        raise SandboxUnavailable("the docker backend needs the Docker SDK: pip install 'retool[docker]'") from None
    try:
        client = client or docker.from_env()
        client.ping()
    except Exception as exc:  # noqa: BLE001 - whatever the cause, there is no engine to talk to
        raise SandboxUnavailable(f"Docker engine not reachable ({exc}); {ENGINE_HINT}") from None
    return client


def reap_orphans(client: Any | None = None) -> int:
    """Remove sandbox containers whose owner process on this host has died; return how many.

    A host process killed with SIGKILL never runs its cleanup, and its containers would hold memory
    forever. Containers owned by other hosts (a shared ``DOCKER_HOST``) are left alone.
    """
    client = connect(client)
    labels = [f"{LABEL}=1", f"retool.owner_host={socket.gethostname()}"]
    removed = 0
    for container in client.containers.list(all=True, filters={"label": labels}):
        owner = container.labels.get("retool.owner_pid", "")
        if not owner.isdigit() or _pid_alive(int(owner)):
            continue
        try:
            container.remove(force=True)
            removed += 1
        except Exception:  # noqa: BLE001 - already removed by another reaper
            pass
    return removed


def runner_sha() -> str | None:
    """The hash the offline build stamps on the image (runner.py, then the boot module it imports),
    when this checkout has sandbox/runner.py."""
    runner = Path(__file__).resolve().parents[2] / "sandbox" / "runner.py"
    if not runner.exists():
        return None
    return hashlib.sha256(runner.read_bytes() + Path(__file__).with_name("jail_boot.py").read_bytes()).hexdigest()[:16]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        pass
    return True


def remove_container(client: Any, container_id: str) -> None:
    try:
        client.api.remove_container(container_id, force=True)
    except Exception:  # noqa: BLE001 - already gone
        pass
