"""Sandbox service benchmark: 64 concurrent sessions × 20 cells through the local pool, through one
`retool sandbox serve` and through two (the remote backend), in one run: cells/s, p50/p99 added
latency per cell (target: p50 overhead ≤ 2 ms on loopback), lost or crossed results, memory per session.

    python benchmarks/sandbox_service_bench.py [--json] [--sessions 64 --cells 20]

Same numbers as ``retool bench sandbox-service``.
"""

from retool.cli import app

if __name__ == "__main__":
    import sys

    app(["bench", "sandbox-service", *sys.argv[1:]])
