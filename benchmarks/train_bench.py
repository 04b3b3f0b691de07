"""Training throughput: trained tokens per second of one SFT step and of one PPO update, and the
peak resident memory, on the embedded model (or ``--model``), CPU or GPU.

    python benchmarks/train_bench.py [--json] [--batch 8] [--steps 3] [--model PATH]

Same numbers as ``retool bench train``.
"""

from retool.cli import app

if __name__ == "__main__":
    import sys

    app(["bench", "train", *sys.argv[1:]])
