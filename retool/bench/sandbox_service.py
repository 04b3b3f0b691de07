"""The sandbox service benchmark: ``sessions`` concurrent sessions × ``cells`` cells through the local
pool, through one ``retool sandbox serve`` and through two (the ``remote`` backend spreading them), in
one run on this machine.

Per configuration: cells/s; per-cell wall time as the caller saw it (p50, p99) and wall − the time
the interpreter reported (``added_*``); the service's overhead per cell is the median of paired
differences, one session each, their cells alternating (so the machine's drift hits both alike):
a cell's wall time through the service minus the next local one; under load, the 64-session p50s'
difference; lost results (a cell without a result) and crossed ones (a result whose output belongs to
another session or cell: each cell prints its own token); the services' resident memory per session
(the service process and its interpreters, with every session open).

Target (fixed in the issue): p50 overhead ≤ 2 ms per cell on loopback, zero lost or crossed results.
Not here: the sandbox's own latency benchmark (``sandbox.py``).
"""

from __future__ import annotations

import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from retool.sandbox.service_process import ServiceProcess
from retool.sandbox.spec import SandboxSpec

TARGET_P50_OVERHEAD_MS = 2.0


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * (len(ordered) - 1) + 0.5))]


def drive(spec: SandboxSpec, sessions: int, cells: int, memory_of=None) -> dict[str, Any]:
    """Open ``sessions`` at once, then each runs ``cells`` cells in its own thread."""
    with spec.pool(size=sessions, warm=0) as pool:
        opened = time.monotonic()
        with ThreadPoolExecutor(sessions) as starter:
            held = list(starter.map(lambda _: pool.acquire(timeout=600), range(sessions)))
        open_s = time.monotonic() - opened
        for s in held:  # a first cell each, untimed: the interpreter's own warm-up
            s.run("pass")
        memory = memory_of() if memory_of is not None else None
        walls, added, lost, crossed = [], [], 0, 0
        lock = threading.Lock()
        barrier = threading.Barrier(sessions)

        def work(index: int) -> None:
            nonlocal lost, crossed
            session = held[index]
            barrier.wait()
            for j in range(cells):
                token = f"s{index}c{j}"
                started = time.perf_counter()
                result = session.run(f"print({token!r})")
                wall = time.perf_counter() - started
                with lock:
                    if result is None or not result.ok:
                        lost += 1
                    elif result.stdout != token + "\n":
                        crossed += 1
                    walls.append(wall)
                    added.append(max(0.0, wall - result.duration_s))

        started = time.monotonic()
        with ThreadPoolExecutor(sessions) as runners:
            list(runners.map(work, range(sessions)))
        elapsed = time.monotonic() - started
        for s in held:
            pool.release(s)
    report = {"sessions": sessions, "cells": sessions * cells, "open_s": round(open_s, 2),
              "cells_per_s": round(sessions * cells / elapsed, 1),
              "p50_ms": round(statistics.median(walls) * 1000, 2), "p99_ms": round(_quantile(walls, 0.99) * 1000, 2),
              "added_p50_ms": round(statistics.median(added) * 1000, 2),
              "added_p99_ms": round(_quantile(added, 0.99) * 1000, 2), "lost": lost, "crossed": crossed}
    if memory is not None:
        report["memory_mib_per_session"] = round(memory / sessions / 2**20, 1)
    return report


def paired_serial(local: SandboxSpec, remote: SandboxSpec, cells: int) -> dict[str, Any]:
    """One local session and one through the service, their cells alternating."""
    with local.pool(size=1, warm=0) as local_pool, remote.pool(size=1, warm=0) as remote_pool:
        here, there = local_pool.acquire(timeout=600), remote_pool.acquire(timeout=600)
        for _ in range(20):  # the interpreters' own warm-up, untimed
            here.run("pass")
            there.run("pass")
        walls: dict[str, list[float]] = {"local": [], "remote": []}
        for j in range(cells):
            for name, session in (("local", here), ("remote", there)):
                started = time.perf_counter()
                result = session.run(f"print({j})")
                walls[name].append(time.perf_counter() - started)
                if not result.ok or result.stdout != f"{j}\n":
                    raise RuntimeError(f"the serial {name} cell {j} came back wrong: {result.status.value}")
        local_pool.release(here)
        remote_pool.release(there)
    differences = [b - a for a, b in zip(walls["local"], walls["remote"])]
    ms = lambda v: round(v * 1000, 2)  # noqa: E731
    return {"cells": cells, "local_p50_ms": ms(statistics.median(walls["local"])),
            "remote_p50_ms": ms(statistics.median(walls["remote"])),
            "local_p99_ms": ms(_quantile(walls["local"], 0.99)), "remote_p99_ms": ms(_quantile(walls["remote"], 0.99)),
            "overhead_p50_ms": ms(statistics.median(differences)), "overhead_p99_ms": ms(_quantile(differences, 0.99))}


def _rss(services: list[ServiceProcess]) -> int:
    import psutil

    total = 0
    for service in services:
        for pid in service.pids():
            try:
                total += psutil.Process(pid).memory_info().rss
            except psutil.NoSuchProcess:
                pass
    return total


def run_service_bench(sessions: int = 64, cells: int = 20, backend: str = "jupyter") -> dict[str, Any]:
    with ServiceProcess(size=sessions, warm=0, backend=backend) as one:
        # the service's cost per cell: one session, one cell at a time, measured first on a quiet
        # machine (after a 64-session run its kernels are still being reaped)
        serial = paired_serial(SandboxSpec(backend), SandboxSpec("remote", urls=one.url), max(cells, 200))
        local = drive(SandboxSpec(backend), sessions, cells)
        through_one = drive(SandboxSpec("remote", urls=one.url), sessions, cells, lambda: _rss([one]))
    half = (sessions + 1) // 2
    with ServiceProcess(size=half, warm=0, backend=backend) as a, ServiceProcess(size=half, warm=0, backend=backend) as b:
        through_two = drive(SandboxSpec("remote", urls=f"{a.url},{b.url}"), sessions, cells, lambda: _rss([a, b]))
    overhead = serial["overhead_p50_ms"]
    return {"backend": backend, "serial": serial, "local": local, "one_service": through_one,
            "two_services": through_two, "service_overhead_p50_ms": overhead,
            "service_overhead_p99_ms": serial["overhead_p99_ms"],
            "loaded_overhead_p50_ms": round(through_one["p50_ms"] - local["p50_ms"], 2),
            "target_p50_overhead_ms": TARGET_P50_OVERHEAD_MS, "p50_overhead_met": overhead <= TARGET_P50_OVERHEAD_MS,
            "lost_or_crossed": sum(r["lost"] + r["crossed"] for r in (local, through_one, through_two))}
