"""``SandboxSpec``: which backend runs model-written code, and its limits — declared once.

Every command that runs code (``solve``, ``chat``, ``serve``, ``eval``, cold-start, the RL
recipes, the benchmarks) holds a ``SandboxSpec`` and opens its pool or session from it; the CLI
makes ``--sandbox``, ``--timeout`` and ``--memory-mb`` from these fields (``retool.cli.options``).

Not here: the backends (``jupyter``, ``docker``, ``subprocess``) and the pool itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from retool.sandbox import BACKENDS, create_session
from retool.sandbox.base import SandboxLimits, Session


@dataclass(frozen=True)
class SandboxSpec:
    backend: str = field(default="jupyter", metadata={"flag": "--sandbox", "also": "--backend",
                                                      "help": f"Sandbox backend: {', '.join(BACKENDS)}."})
    limits: SandboxLimits = SandboxLimits()

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"unknown sandbox backend {self.backend!r}; choose one of {', '.join(BACKENDS)}")

    def pool(self, size: int, warm: int | None = None, **options: Any):
        """A ``SandboxPool`` of ``size`` sessions (``warm`` of them started ahead)."""
        from retool.sandbox.pool import SandboxPool

        return SandboxPool(self.backend, size=size, limits=self.limits, warm=warm, **options)

    def session(self, **options: Any) -> Session:
        """One session, outside any pool (``retool sandbox run``, cold-start checks)."""
        return create_session(self.backend, self.limits, **options)
