"""Server benchmark: `retool serve` on the embedded model (CPU, Jupyter sandboxes) driven by the
openai client; requests/s and p50/p99 latency with 1, 4 and 16 concurrent clients.

    python benchmarks/serve_bench.py [--json] [--clients 1 --clients 4 --clients 16 --requests 2]

Same numbers as ``retool bench serve``.
"""

from retool.cli import app

if __name__ == "__main__":
    import sys

    app(["bench", "serve", *sys.argv[1:]])
