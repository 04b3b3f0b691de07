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
    urls: str = field(default="", metadata={"flag": "--sandbox-url", "help": "--sandbox remote: the `retool sandbox "
                                                                            "serve` services, comma-separated (token: "
                                                                            "$RETOOL_SANDBOX_TOKEN); --sandbox ray: the "
                                                                            "cluster's address (default auto)."})
    ray_label: str = field(default="", metadata={"help": "--sandbox ray: only nodes offering this custom resource "
                                                         "host sandboxes (ray start --resources '{\"NAME\": 1}')."})

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"unknown sandbox backend {self.backend!r}; choose one of {', '.join(BACKENDS)}")
        if self.backend == "remote":
            from retool.sandbox.remote import parse_urls

            parse_urls(self.urls)  # none, or not URLs: refused here, before anything starts
        elif self.urls and self.backend != "ray":
            raise ValueError(f"--sandbox-url is for --sandbox remote or ray, not {self.backend}")
        if self.ray_label and self.backend != "ray":
            raise ValueError(f"--ray-label is for --sandbox ray, not {self.backend}")

    def _options(self, options: dict[str, Any]) -> dict[str, Any]:
        if self.backend == "remote":
            return {"urls": self.urls, **options}
        if self.backend == "ray":
            return {"urls": self.urls, "label": self.ray_label, **options}
        return options

    def pool(self, size: int, warm: int | None = None, **options: Any):
        """A ``SandboxPool`` of ``size`` sessions (``warm`` of them started ahead)."""
        from retool.sandbox.pool import SandboxPool

        return SandboxPool(self.backend, size=size, limits=self.limits, warm=warm, **self._options(options))

    def session(self, **options: Any) -> Session:
        """One session, outside any pool (``retool sandbox run``, cold-start checks)."""
        return create_session(self.backend, self.limits, **self._options(options))
