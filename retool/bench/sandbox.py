"""Sandbox performance: start time, cell latency, pool throughput — and the unisolated baseline.

The baseline is the executor style of ReTool's released evaluation (ToRA's ``PythonExecutor``):
every tool call is a batch handed to a *new* process pool whose workers ``exec()`` the code in a
fresh globals dict with stdout redirected, under a timeout, with no isolation at all. Being
stateless, it must re-run all earlier cells of a trajectory at every turn. We also measure the
most favourable variant of that style (one persistent pool), to show the price of isolation
honestly.

Numbers are printed by ``retool sandbox bench`` and ``benchmarks/sandbox_bench.py``; they are never
asserted by tests.
"""

from __future__ import annotations

import contextlib
import io
import multiprocessing
import os
import platform
import statistics
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass

from retool.sandbox.spec import SandboxSpec

TRIVIAL_CELL = "1 + 1"
SYMPY_CELL = "import sympy\nsympy.factorint(2**64 + 1)"
TRAJECTORY = [  # a 4-turn tool-integrated trajectory: each cell uses names from the previous ones
    "import sympy as sp\nn = 2**64 + 1",
    "factors = sp.factorint(n)\nprint(factors)",
    "total = sum(p * e for p, e in factors.items())\nprint(total)",
    "print(total % 1000)",
]


@dataclass(frozen=True)
class ExecutorStats:
    start_s: float
    p50_ms: float
    p99_ms: float
    sympy_p50_ms: float
    sympy_p99_ms: float
    trajectory_ms: float  # the 4-cell trajectory, end to end
    throughput_c1: float
    throughput_c4: float
    throughput_c16: float


def _stats(start_s: float, trivial: list[float], sympy_: list[float], trajectory_ms: float, throughput: dict) -> ExecutorStats:
    return ExecutorStats(
        start_s,
        percentile(trivial, 0.5),
        percentile(trivial, 0.99),
        percentile(sympy_, 0.5),
        percentile(sympy_, 0.99),
        trajectory_ms,
        throughput[1],
        throughput[4],
        throughput[16],
    )


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(int(q * len(ordered)), len(ordered) - 1)]


def _latencies(run, code: str, n: int) -> list[float]:
    run(code)  # warm: imports, caches
    out = []
    for _ in range(n):
        t = time.perf_counter()
        run(code)
        out.append((time.perf_counter() - t) * 1000)
    return out


def _throughput(worker_factory, concurrency: int, seconds: float) -> float:
    """Cells per second with ``concurrency`` clients each running trivial cells back to back."""
    counts = [0] * concurrency
    stop = time.monotonic() + seconds
    barrier = threading.Barrier(concurrency)

    def client(i: int) -> None:
        with worker_factory() as run:
            barrier.wait()
            while time.monotonic() < stop:
                run(TRIVIAL_CELL)
                counts[i] += 1

    started = time.monotonic()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts) / max(time.monotonic() - started, 1e-9)


# -- retool sessions ----------------------------------------------------------------------------


def bench_backend(sandbox: SandboxSpec, samples: int = 200, seconds: float = 3.0) -> ExecutorStats:
    starts = []
    for _ in range(3):
        t = time.perf_counter()
        sandbox.session().close()
        starts.append(time.perf_counter() - t)

    with sandbox.session() as session:
        trivial = _latencies(session.run, TRIVIAL_CELL, samples)
        sympy_ = _latencies(session.run, SYMPY_CELL, max(samples // 4, 10))
    with sandbox.session() as session:
        t = time.perf_counter()
        for cell in TRAJECTORY:
            session.run(cell)
        trajectory_ms = (time.perf_counter() - t) * 1000

    throughput = {}
    for c in (1, 4, 16):
        with sandbox.pool(size=c) as pool:
            pool.wait_ready(300)

            @contextlib.contextmanager
            def worker():
                with pool.session() as s:
                    yield s.run

            throughput[c] = _throughput(worker, c, seconds)
    return _stats(statistics.median(starts), trivial, sympy_, trajectory_ms, throughput)


# -- the released-evaluation baseline ------------------------------------------------------------


def exec_cell(code: str) -> str:
    """What the baseline's worker does: exec in fresh globals, stdout captured. No isolation."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        exec(code, {"__name__": "__main__"})
    return buffer.getvalue()


def _fork_pool(workers: int) -> ProcessPoolExecutor:
    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("fork"))


def run_batch_new_pool(codes: list[str], timeout: float = 10.0) -> list[str]:
    """One tool call of the released style: a fresh pool for the batch, a timeout per cell."""
    with _fork_pool(len(codes)) as pool:
        futures = [pool.submit(exec_cell, code) for code in codes]
        return [f.result(timeout=timeout) for f in futures]


def bench_exec_baseline(samples: int = 200, seconds: float = 3.0, persistent: bool = False) -> ExecutorStats:
    import sympy  # noqa: F401 - the evaluation process has it loaded, so forked workers inherit it

    if persistent:
        pool = _fork_pool(16)
        run_one = lambda code: pool.submit(exec_cell, code).result(timeout=10)  # noqa: E731
        start_s = 0.0
    else:
        run_one = lambda code: run_batch_new_pool([code])[0]  # noqa: E731
        t = time.perf_counter()
        run_batch_new_pool([TRIVIAL_CELL])
        start_s = time.perf_counter() - t
    trivial = _latencies(run_one, TRIVIAL_CELL, samples)
    sympy_ = _latencies(run_one, SYMPY_CELL, max(samples // 4, 10))
    t = time.perf_counter()
    for turn in range(len(TRAJECTORY)):  # stateless: every turn re-runs the cells before it
        run_one("\n".join(TRAJECTORY[: turn + 1]))
    trajectory_ms = (time.perf_counter() - t) * 1000

    throughput = {}
    for c in (1, 4, 16):
        if persistent:

            @contextlib.contextmanager
            def worker():
                yield run_one

            throughput[c] = _throughput(worker, c, seconds)
        else:  # each round is one batch of c cells (one per trajectory) through a new pool
            done, stop = 0, time.monotonic() + seconds
            started = time.monotonic()
            while time.monotonic() < stop:
                run_batch_new_pool([TRIVIAL_CELL] * c)
                done += c
            throughput[c] = done / (time.monotonic() - started)
    if persistent:
        pool.shutdown()
    return _stats(start_s, trivial, sympy_, trajectory_ms, throughput)


def run_sandbox_bench(sandbox: SandboxSpec, samples: int = 200, seconds: float = 3.0) -> dict[str, object]:
    """Everything ``retool sandbox bench`` reports, as one JSON-ready dict."""
    ours = bench_backend(sandbox, samples, seconds)
    released = bench_exec_baseline(samples, seconds)
    persistent = bench_exec_baseline(samples, seconds, persistent=True)
    return {
        "backend": sandbox.backend,
        **asdict(ours),
        "baseline_released_exec": asdict(released),
        "baseline_persistent_exec": asdict(persistent),
        "speedup_vs_released": {
            "p50": released.p50_ms / ours.p50_ms,
            "throughput_c4": ours.throughput_c4 / released.throughput_c4,
            "trajectory": released.trajectory_ms / ours.trajectory_ms,
        },
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
    }
