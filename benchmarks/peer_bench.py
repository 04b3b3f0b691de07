"""Peer benchmark: retool's rollout against TRL's own tool-calling generation (``GRPOTrainer`` with
``tools=[python]``), on CPU, 8 problems x 4 samples, the same prompts, chat template, sampling,
budgets and Jupyter sandbox on both sides. The model is ``peer-chat-smollm2`` (a SmolLM2-135M LoRA
that calls the tool through that template; built on first use, or ahead with
``python -m retool.training.peer_chat_model``); ``--model embedded`` or any other name still works.

    python benchmarks/peer_bench.py [--json] [--problems 8 --samples 4] [--model NAME]

Same numbers as ``retool bench peer``.
"""

from retool.cli import app

if __name__ == "__main__":
    import sys

    app(["bench", "peer", *sys.argv[1:]])
