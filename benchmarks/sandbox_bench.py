"""Sandbox benchmark: session start, p50/p99 cell latency, pool throughput at concurrency 1/4/16,
next to the unisolated executor style of ReTool's released evaluation.

    python benchmarks/sandbox_bench.py --backend jupyter [--json]

Same numbers as ``retool sandbox bench``; this script is here so every benchmark lives under
``benchmarks/``.
"""

from retool.cli import app

if __name__ == "__main__":
    import sys

    app(["sandbox", "bench", *sys.argv[1:]])
