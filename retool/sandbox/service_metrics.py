"""The sandbox service's Prometheus series (``GET /metrics``), in a registry of their own so that
several services in one process (tests, benchmarks) do not share counters; with the process's own
series (resident memory, CPU seconds), which the attack suite reads to judge a remote host."""

from __future__ import annotations


class Metrics:
    """Sessions, interpreters in use, capacity, cells by status, cell latency, refusals, expiries."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        self.sessions = Gauge("retool_sandbox_sessions", "Sessions open (kept for clients)", registry=self.registry)
        self.in_use = Gauge("retool_sandbox_interpreters_in_use", "Interpreters held: sessions and one-shot requests",
                            registry=self.registry)
        self.capacity = Gauge("retool_sandbox_capacity", "Interpreters this service may hold at once",
                              registry=self.registry)
        self.cells = Counter("retool_sandbox_cells", "Cells run, by how they ended", ["status"], registry=self.registry)
        self.latency = Histogram("retool_sandbox_cell_seconds", "Wall time of a cell as the service saw it",
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
                                 registry=self.registry)
        self.refused = Counter("retool_sandbox_refused", "Requests refused, by reason", ["reason"],
                               registry=self.registry)
        self.expired = Counter("retool_sandbox_sessions_expired", "Sessions closed for idleness", registry=self.registry)

    def text(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)
