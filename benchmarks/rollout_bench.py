"""Rollout benchmark: the embedded model on CPU, 8 problems x 4 samples with tool calls, against a
naive loop (decode, re-tokenize, generate from scratch, one trajectory at a time).

    python benchmarks/rollout_bench.py [--json] [--problems 8 --samples 4 --naive 4]

Same numbers as ``retool bench rollout``.
"""

from retool.cli import app

if __name__ == "__main__":
    import sys

    app(["bench", "rollout", *sys.argv[1:]])
