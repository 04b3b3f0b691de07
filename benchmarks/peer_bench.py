"""Peer benchmark: retool's rollout against TRL's own tool-calling generation (``GRPOTrainer`` with
``tools=[python]``), the embedded model on CPU, 8 problems x 4 samples, the same prompts, chat
template, sampling, budgets and Jupyter sandbox on both sides.

    python benchmarks/peer_bench.py [--json] [--problems 8 --samples 4]

Same numbers as ``retool bench peer``.
"""

from retool.cli import app

if __name__ == "__main__":
    import sys

    app(["bench", "peer", *sys.argv[1:]])
